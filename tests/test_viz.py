"""Every plot returns a figure with the expected axes and artists; the widgets react."""

import json
import shutil

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.image import AxesImage  # noqa: E402

from speechlm_utils import viz  # noqa: E402
from speechlm_utils.align import AttentionMap, Word, word_start_errors  # noqa: E402
from speechlm_utils.audio import MIMI_SAMPLE_RATE_HZ, load_audio  # noqa: E402
from speechlm_utils.tokenizer import SpeechTokenizer  # noqa: E402

from .conftest import DEMO_DIR  # noqa: E402

WORDS = [Word("Hello", 0.3, 0.7), Word("there,", 0.8, 1.2), Word("friend.", 2.5, 3.0),
         Word("How", 4.6, 4.8), Word("are", 4.9, 5.1), Word("you?", 5.2, 5.6)]  # fmt: skip


@pytest.fixture(scope="module")
def tok(text_tokenizer):
    return SpeechTokenizer(text_tokenizer)


@pytest.fixture()
def ids(tok):
    return tok.encode(np.random.default_rng(0).integers(0, 2048, (4, 100)), WORDS).ids


def test_words_plot_has_one_span_per_word():
    wav = np.random.default_rng(0).normal(0, 0.1, 8 * 16_000).astype(np.float32)
    fig = viz.plot_words(wav, 16_000, WORDS)
    ax_wav, ax_spec = fig.axes[:2]
    assert len(ax_wav.patches) == len(WORDS)
    assert [t.get_text() for t in ax_wav.texts] == [w.text for w in WORDS]
    assert len(ax_spec.lines) == len(WORDS)  # a start marker per word on the spectrogram


def test_token_timeline_shows_slots_codes_words_and_the_lead(tok, ids):
    fig = viz.plot_token_timeline(tok, ids, WORDS, 0.0, 8.0, "sidecar:json")
    ax_text, ax_codes, ax_words = fig.axes
    pieces = tok.text_pieces(ids)
    shown = pieces[: 8 * 5]  # 5 text slots per second
    assert len(ax_text.patches) == len(shown)
    greys = [p for p in ax_text.patches if p.get_facecolor()[:3] == matplotlib.colors.to_rgb(
        "lightgrey")]  # fmt: skip
    assert len(greys) == sum(p is None for p in shown)  # TEXT_PAD greyed
    image = next(a for a in ax_codes.get_children() if isinstance(a, AxesImage))
    assert image.get_array().shape == (4, 100)
    assert len(ax_words.patches) == len(WORDS)
    arrows = [a for a in fig.artists if isinstance(a, matplotlib.patches.ConnectionPatch)]
    assert len(arrows) == 1  # the text lead
    assert "sidecar:json" in ax_text.get_title()


def test_attention_plot_draws_matrix_path_and_truth_boxes():
    matrix = np.random.default_rng(0).random((7, 150))
    path = (np.array([0, 1, 2, 3, 4, 5, 6]), np.array([0, 20, 40, 60, 80, 100, 140]))
    amap = AttentionMap(matrix, path, ["<nt>", " a", " b", "c", " d", " e", "."],
                        [Word(" a", 0.4, 0.8), Word(" bc", 0.8, 1.6), Word(" d", 1.6, 2.0)],
                        rows=[(1, 1), (2, 2), (4, 1)])  # fmt: skip
    fig = viz.plot_attention(amap, truth=[Word("a", 0.5, 0.7), Word("bc", 0.9, 1.5),
                                          Word("d", 1.7, 2.0)])  # fmt: skip
    ax = fig.axes[0]
    assert any(isinstance(a, AxesImage) for a in ax.get_children())
    assert len(ax.patches) == 3  # one box per true word
    assert ax.patches[1].get_height() == 2  # spanning both tokens of "bc"
    path_line = ax.lines[0]
    assert np.allclose(path_line.get_xdata(), path[1] / 50.0)


def test_word_start_errors_on_a_hand_made_case():
    truth = [Word("So,", 1.05, 1.3), Word("bread", 2.0, 2.4), Word("is", 3.2, 3.3),
             Word("easy", 4.0, 4.5)]  # fmt: skip
    predicted = [Word(" so", 1.0, 1.2), Word(" bread", 2.1, 2.4), Word(" um", 2.5, 2.6),
                 Word(" is", 3.0, 3.1)]  # fmt: skip
    report = word_start_errors(predicted, truth)
    assert report["matched"] == 3 and report["n_truth"] == 4  # "um" extra, "easy" missed
    assert np.allclose(report["errors_ms"], [-50, 100, -200])
    assert report["median_abs_ms"] == pytest.approx(100)
    assert report["p90_abs_ms"] == pytest.approx(np.percentile([50, 100, 200], 90))
    none = word_start_errors([Word("!!!!", 0, 1)], truth)
    assert none["matched"] == 0 and none["median_abs_ms"] is None
    fig = viz.plot_start_errors(report)
    assert "median |err| 100 ms" in fig.axes[0].get_title()
    assert "no word matched" in viz.plot_start_errors(none).axes[0].get_title()


def test_code_usage_and_dataset_plot(tok):
    codes = np.zeros((4, 20), dtype=int)
    codes[0] = np.tile([0, 1, 2, 3], 5)  # 4 codes, evenly: 2 bits
    codes[1] = 7  # one code: 0 bits
    ids = tok.encode(codes, WORDS).ids
    usage = viz.code_usage(tok, [ids])
    assert usage[0] == {"codebook": 0, "used": 4, "entropy_bits": pytest.approx(2.0)}
    assert usage[1]["used"] == 1 and usage[1]["entropy_bits"] == pytest.approx(0.0)
    records = [{"status": "ok", "n_words": 40, "duration_s": 20.0, "max_lag_s": 0.8,
                "pad_share": 0.5}, {"status": "skipped"}]  # fmt: skip
    fig = viz.plot_dataset_stats(records, usage)
    assert len(fig.axes) == 4
    assert len(fig.axes[3].patches) == 4  # a bar per codebook


def test_layout_plots(tok):
    fig = viz.plot_group_layout(tok.layout, groups=2)
    assert len(fig.axes[0].patches) == 2 * 22
    fig = viz.plot_vocab_layout(tok.layout)
    assert len(fig.axes[0].patches) == 1 + 4 + 1  # text, 4 codebooks, pad + spare rows


def test_alignment_explorer_steps_through_groups(tmp_path, tok):
    chunks = tmp_path / "chunks"
    tokens = tmp_path / "tokens"
    (chunks / "de").mkdir(parents=True)
    shutil.copy(DEMO_DIR / "demo_ep_001.webm", chunks / "de" / "a.webm")
    wav = load_audio(chunks / "de" / "a.webm", MIMI_SAMPLE_RATE_HZ)
    truth = json.loads((DEMO_DIR / "demo_ep_001.json").read_text())["words"]
    words = [Word(w["word"], w["start_s"], w["end_s"]) for w in truth]
    frames = wav.size // 1920 // 5 * 5
    records = []
    for i, n in enumerate((frames, 50)):
        ids = tok.encode(np.random.default_rng(i).integers(0, 2048, (4, n)), words).ids
        (tokens / "ab").mkdir(parents=True, exist_ok=True)
        np.save(tokens / "ab" / f"{i}.npy", ids.astype(np.uint16))
        records.append({"status": "ok", "chunk": "de/a.webm", "tokens": f"ab/{i}.npy",
                        "text_source": "sidecar:json",
                        "words": [[w.text, w.start_s, w.end_s, 1.0] for w in words]})  # fmt: skip
    explorer = viz.AlignmentExplorer(tok, records, tokens, chunks)
    assert explorer.time.max == pytest.approx((frames // 5 - 1) * 0.4)
    explorer.time.value = 2.0  # what a user's drag does
    group = explorer.group_at(2.0)
    assert group["group"] == 5 and group["codes"].shape == (4, 5)
    assert "group 5: 2.0-2.4 s" in explorer.info.value and "sidecar:json" in explorer.info.value
    sounding = [w.text for w in words if 2.0 <= w.start_s < 2.4]
    assert group["words"] == sounding
    assert len(explorer.audio.outputs) == 1 and len(explorer.plot.outputs) == 1
    explorer.chunk.value = 1  # the dropdown: a shorter chunk clamps the slider
    assert explorer.time.max == pytest.approx(9 * 0.4) and explorer.ids.size == 10 * 22
