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


@pytest.fixture(autouse=True)
def _close_figures():
    """Each test's figures closed after it (pyplot keeps every open figure)."""
    yield
    matplotlib.pyplot.close("all")


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
    ax_text, ax_codes, ax_words = fig.axes[:3]  # then the codes' colour bar
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
    assert ax.get_xlim() == pytest.approx((0, 150 / amap.frames_per_s))  # the audio it covers
    assert ax.get_legend() is None and len(fig.legends) == 1  # above the axes, off the path
    assert min(t.get_fontsize() for t in ax.get_yticklabels()) >= 8
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
    assert viz.plot_start_errors(none) is None  # no empty axes: the text says it
    assert "no word matched" in viz.start_error_summary(none)


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
    assert min(t.get_fontsize() for t in fig.axes[0].texts) >= 8  # readable cell labels
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
    sounding = [w.text for w in words if w.start_s < 2.4 and w.end_s > 2.0]  # any overlap
    assert group["words"] == sounding and sounding
    assert len(explorer.audio.outputs) == 1 and len(explorer.plot.outputs) == 1
    explorer.chunk.value = 1  # the dropdown: a shorter chunk clamps the slider
    assert explorer.time.max == pytest.approx(9 * 0.4) and explorer.ids.size == 10 * 22
    still = explorer.still_html()  # what a page without a kernel shows: this view's image
    assert "<img src='data:image/png;base64," in still and explorer.info.value in still
    bundle = viz.with_still(explorer.widget, still)._repr_mimebundle_()
    assert bundle["text/html"] == still  # beside the live view, in one output
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == \
        explorer.widget.model_id  # fmt: skip


def test_one_kind_palette_in_group_layout_timeline_masks_and_vocab(tok, ids):
    rgb = matplotlib.colors.to_rgb
    assert viz.kind_color(0) == viz.KIND_COLORS["text"] and viz.kind_color("pad") == "lightgrey"
    assert viz.kind_color(1) == viz.KIND_COLORS["cb0"] and viz.kind_color(9) == viz.kind_color(1)
    layout_ax = viz.plot_group_layout(tok.layout, groups=1).axes[0]
    cells = [rgb(p.get_facecolor()) for p in layout_ax.patches]
    kinds = tok.layout.kinds(22)
    assert cells == [rgb(viz.kind_color(int(k))) for k in kinds]
    assert len(set(cells)) == 1 + 4  # text and 4 codebooks, each its own colour
    timeline = viz.plot_token_timeline(tok, ids, WORDS, 0.0, 8.0)
    ax_text, ax_codes = timeline.axes[:2]
    texts = {rgb(p.get_facecolor()) for p in ax_text.patches} - {rgb("lightgrey")}
    assert texts == {rgb(viz.kind_color("text"))}  # the same text colour as the layout figure
    ticks = [rgb(t.get_color()) for t in ax_codes.get_yticklabels()]
    assert ticks == cells[2:6]  # codebook k's label in its layout colour
    vocab_ax = viz.plot_vocab_layout(tok.layout).axes[0]
    assert [rgb(p.get_facecolor()) for p in vocab_ax.patches[1:5]] == cells[2:6]
    masks = viz.plot_group_masks(tok, ids, group=1).axes[0]
    bars = [rgb(p.get_facecolor()) for p in masks.patches]
    assert set(bars) == set(cells)


def test_timeline_codes_use_a_categorical_map_with_its_colour_bar(tok, ids):
    fig = viz.plot_token_timeline(tok, ids, WORDS, 0.0, 8.0)
    image = next(a for a in fig.axes[1].get_children() if isinstance(a, AxesImage))
    cmap = image.get_cmap()
    assert isinstance(cmap, matplotlib.colors.ListedColormap) and cmap.N == 2048
    assert image.get_clim() == (-0.5, 2047.5)  # one colour per code id, none shared
    assert len({tuple(c) for c in np.round(cmap.colors, 6)}) == 2048
    hues = matplotlib.colors.rgb_to_hsv(cmap.colors[:50])[:, 0]
    assert np.abs(np.diff(hues)).mean() > 0.1  # neighbouring ids do not look alike
    bars = [ax for ax in fig.axes if "code id" in ax.get_ylabel()]
    assert len(bars) == 1 and "categor" in bars[0].get_ylabel()
    assert image.colorbar is not None and image.colorbar.ax is bars[0]
    marked = viz.plot_token_timeline(tok, ids, WORDS, 0.0, 8.0, marks_s=(3.2,))
    for ax in marked.axes[:3]:  # a seam's line on each row, none on the colour bar
        assert [tuple(line.get_xdata()) for line in ax.lines] == [(3.2, 3.2)]


def test_start_errors_draw_no_empty_axes():
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    none = {"errors_ms": np.array([]), "matched": 0, "n_truth": 12, "median_abs_ms": None,
            "p90_abs_ms": None}  # fmt: skip
    assert viz.plot_start_errors(none, "Whisper vs truth") is None
    assert len(plt.get_fignums()) == before  # no figure was opened at all
    assert viz.start_error_summary(none, "Whisper vs truth") == (
        "Whisper vs truth: no word matched (12 true words), nothing to measure")
    some = {"errors_ms": np.array([-40.0, 60.0]), "matched": 2, "n_truth": 3,
            "median_abs_ms": 50.0, "p90_abs_ms": 58.0}  # fmt: skip
    fig = viz.plot_start_errors(some, "forced")
    assert fig.axes[0].get_title() == viz.start_error_summary(some, "forced")
    assert "2/3 words matched" in fig.axes[0].get_title()


def test_words_sounding_lists_every_word_overlapping_the_span():
    words = [Word("long", 0.1, 1.9), Word("ends", 1.5, 2.0), Word("inside", 2.05, 2.2),
             Word("starts", 2.3, 2.9), Word("later", 2.4, 2.6), Word("tick", 2.1, 2.1)]  # fmt: skip
    sounding = [w.text for w in viz.words_sounding(words, 2.0, 2.4)]
    # "long" and "ends" end at or before 2.0 ([start, end) spans); "later" starts at 2.4
    assert sounding == ["inside", "starts", "tick"]
    assert [w.text for w in viz.words_sounding(words, 1.6, 2.0)] == ["long", "ends"]


def test_alignment_explorer_lists_words_begun_before_the_group(tmp_path, tok):
    chunks, tokens = tmp_path / "chunks", tmp_path / "tokens"
    (chunks / "de").mkdir(parents=True)
    (tokens / "ab").mkdir(parents=True)
    shutil.copy(DEMO_DIR / "demo_ep_001.webm", chunks / "de" / "a.webm")
    words = [Word("extraordinary", 1.7, 2.6), Word("yes", 2.9, 3.1)]  # spans groups 4 to 6
    ids = tok.encode(np.zeros((4, 50), dtype=int), words).ids
    np.save(tokens / "ab" / "0.npy", ids.astype(np.uint16))
    record = {"status": "ok", "chunk": "de/a.webm", "tokens": "ab/0.npy", "text_source": "t",
              "words": [[w.text, w.start_s, w.end_s, 1.0] for w in words]}  # fmt: skip
    explorer = viz.AlignmentExplorer(tok, [record], tokens, chunks)
    assert explorer.group_at(1.8)["words"] == ["extraordinary"]  # group 4: it starts here
    assert explorer.group_at(2.1)["words"] == ["extraordinary"]  # group 5: still sounding
    assert explorer.group_at(2.5)["words"] == ["extraordinary"]  # group 6: ends at 2.6
    explorer.time.value = 2.8  # group 7, 2.8-3.2 s: only "yes"
    assert "words sounding now: <i>yes</i>" in explorer.info.value


def test_text_leads_plot_shows_the_same_word_ahead_by_each_lead(text_tokenizer):
    codes = np.random.default_rng(1).integers(0, 2048, (4, 100))
    toks = [SpeechTokenizer(text_tokenizer, text_lead_s=lead) for lead in (0.0, 2.0)]
    fig = viz.plot_text_leads(toks, codes, WORDS, 0.0, 8.0)
    assert len(fig.axes) == 3
    assert "text_lead_s = 0 s" in fig.axes[0].get_title()
    assert "text_lead_s = 2 s" in fig.axes[1].get_title()
    arrows = [a for a in fig.artists if isinstance(a, matplotlib.patches.ConnectionPatch)]
    assert len(arrows) == 2  # one per lead, from the same word's sound
    assert {a.xy1 for a in arrows} == {(2.5, 1.0)}  # "friend.", the first word after 2 s
    slot_mid = sorted(a.xy2[0] for a in arrows)
    # lead 2: group 1's second slot ("Hello there," fill its first three); lead 0: group 6
    assert slot_mid == pytest.approx([0.6 + 0.1, 2.4 + 0.1])
    note = fig.axes[2].texts[-1].get_text()
    assert note.startswith('"friend.": its text')
    assert "0.1 s ahead with lead 0 s" in note and "1.9 s ahead with lead 2 s" in note


def test_show_source_is_the_library_source():
    import inspect

    shown = viz.show_source(SpeechTokenizer.place_text).data
    assert shown.startswith("```python\ndef place_text(")
    assert inspect.getsource(SpeechTokenizer.place_text).strip().splitlines()[-1].strip() in shown



def test_table_numbers_stay_readable():
    rows = [{"ppl": 20049702.79, "loss": 0.0007, "zero": 0.0, "wer": 0.25, "n": 3, "none": None}]
    html = viz.table(rows).data
    cells = html.split("<td>")[1:]
    assert [c.split("</td>")[0] for c in cells] == ["2e+07", "0.0007", "0.00", "0.25", "3", ""]


def test_plot_index_draws_the_rejected_videos_by_reason():
    kept = [{"id": f"k{i}", "query": "t", "duration_s": 3600.0 + i} for i in range(5)]
    rejected = [{"id": "s1", "reason": "too_short", "duration_s": 600.0},
                {"id": "s2", "reason": "too_short", "duration_s": 900.0},
                {"id": "l1", "reason": "too_long", "duration_s": 5 * 3600.0},
                {"id": "v1", "reason": "live", "duration_s": None}]  # fmt: skip
    fig = viz.plot_index(kept, rejected=rejected, bounds_s=(1800, 4 * 3600))
    ax_dur, ax_rej = fig.axes[1], fig.axes[2]
    bars = {t.get_text(): p.get_width() for t, p in zip(ax_rej.get_yticklabels(), ax_rej.patches)}
    assert bars == {"too_short": 2, "too_long": 1, "live": 1}
    assert sorted(t.get_text() for t in ax_rej.texts) == ["1", "1 (no duration)", "2"]
    _, labels = ax_dur.get_legend_handles_labels()
    assert labels == ["kept (5)", "too_short (2)", "too_long (1)"]  # stacked on the same bins
    heights = [sum(p.get_height() for p in c) for c in ax_dur.containers]
    assert heights == [5, 2, 1]
    assert [ln.get_xdata()[0] for ln in ax_dur.lines] == [30, 240]  # the bounds, in minutes
    assert len(viz.plot_index(kept).axes) == 2  # without rejected: as before


def test_plot_scrape_puts_each_cut_start_on_the_packet_grid():
    listing = {"id": "vid", "codec": "opus", "chunk_s": 20.0, "packet_s": 0.02, "duration_s": 50,
               "chunks": [{"file": f"c{k}", "start_s": s, "end_s": s + 20}
                          for k, s in enumerate([0.0, 20.001, 40.001])]}  # fmt: skip
    records = [{"id": "vid", "status": "ok", "duration_s": 50.0, "seconds_taken": 5.0}]
    fig = viz.plot_scrape(records, [listing])
    ax_cuts, ax_rtf = fig.axes
    starts = [ln.get_xdata()[0] for ln in ax_cuts.lines if ln.get_marker() == "o"]
    assert starts == pytest.approx([1.0, 1.0])  # ms after each 20 s mark
    edges = ax_cuts.collections[0].get_segments()
    assert {round(seg[0][0], 6) for seg in edges} >= {-20.0, 0.0, 20.0}  # 20 ms packet edges
    assert "packet edge" in ax_cuts.get_title() and "speech filter" not in ax_rtf.get_title()
    assert [p.get_height() for p in ax_rtf.patches] == [10.0]


def test_plot_requests_draws_each_run_and_the_limit():
    fig = viz.plot_requests({"fast": [0.0, 0.01, 0.02], "slow": [5.0, 5.5, 6.0]}, limit_per_s=2)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["fast: 3 requests in 0.0 s", "slow: 3 requests in 1.0 s",
                      "the limit: 2 requests/s"]  # fmt: skip
    limit = fig.axes[0].lines[-1]
    assert list(limit.get_ydata()) == [1, 3]  # 2 more requests in the 1 s the slowest run took


def test_training_plot_draws_the_uniform_guess_and_shares_add_up():
    import math

    metrics = [{"step": s, "loss": 8.0 / s, "loss_text": 7.0 / s, "val_loss_semantic": 9.0}
               for s in range(1, 4)]  # fmt: skip
    fig = viz.plot_training(metrics, text_vocab_size=32000)
    for chance in (math.log(2048), math.log(32001)):  # audio, and a text slot (+ TEXT_PAD)
        guesses = [line for ax in fig.axes for line in ax.get_lines()
                   if line.get_ydata()[0] == pytest.approx(chance)]  # fmt: skip
        assert len(guesses) == 2  # on the training and the validation axes
    assert "ln 32001" in " ".join(t.get_text() for t in fig.axes[1].get_legend().get_texts())
    rows = [{"weights": "1, 1, 1, 1", "text": 0.1, "pad": 0.1, "semantic": 0.2, "acoustic": 0.6}]
    fig = viz.plot_loss_shares(rows)
    widths = [patch.get_width() for patch in fig.axes[0].patches]
    assert sum(widths) == pytest.approx(1.0) and len(widths) == 4
    timeline = {"decode": "static", "first_audio_s": 0.2, "realtime_factor": 2.0,
                "groups": [{"group": 0, "audio_end_s": 0.4, "wall_s": 0.2}]}  # fmt: skip
    fig = viz.plot_realtime([timeline])
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert any(label.startswith("real time") for label in labels)


def test_rvq_plot_has_one_point_per_codebook_count():
    from speechlm_utils.codec import RVQResiduals

    res = RVQResiduals([1, 2, 3, 4], latent=[0.9, 0.6, 0.5, 0.45], acoustic=[1.0, 0.5, 0.3, 0.2],
                       semantic=0.7)  # fmt: skip
    fig = viz.plot_rvq_residuals(res, kept=2, note="random weights")
    ax = fig.axes[0]
    curves = [line for line in ax.get_lines() if len(line.get_xdata()) == 4]
    assert [list(line.get_ydata()) for line in curves] == [res.acoustic, res.latent]
    assert all(list(line.get_xdata()) == [1, 2, 3, 4] for line in curves)
    assert any(list(line.get_xdata()) == [2, 2] for line in ax.get_lines())  # K kept
    assert "random weights" in ax.get_title()


def test_widget_outline_lists_the_controls_and_leaves_out_empty_parts():
    import ipywidgets as w

    box = w.VBox([w.HTML("<b>Talk</b>"), w.HTML(""), w.Output(), w.VBox(),
                  w.HBox([w.FloatSlider(value=6.0, description="reply (s)"),
                          w.Button(description="Respond")]),
                  w.Dropdown(options=[("a.webm", 0), ("b.webm", 1)], description="chunk")])
    items = viz.widget_outline(box).split("<li>")[1:]
    assert [i.removesuffix("</ul>").removesuffix("</li>") for i in items] == [
        "<b>Talk</b>", "reply (s): 6.0", "[Respond]", "chunk: a.webm (2 choices)"]
    assert viz.with_still(box)._repr_mimebundle_()["text/html"] == viz.widget_outline(box)


def test_duplex_figures_show_speakers_tracks_codes_and_the_budget(text_tokenizer):
    from types import SimpleNamespace

    from speechlm_utils.speakers import Turn
    from speechlm_utils.tokenizer import SpeechTokenizer

    turns = [Turn("host", 0.0, 2.0), Turn("guest", 2.5, 6.0)]
    fig = viz.plot_speaker_timeline(turns, assistant="host")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[0].startswith("guest") and "(assistant)" in labels[1]  # most talkative first
    assert len(fig.axes[0].patches) == 2
    wav = np.ones(6000, np.float32)
    fig = viz.plot_tracks(wav, {"host": wav * 0, "guest": wav}, 1000, turns)
    assert len(fig.axes) == 3
    tok = SpeechTokenizer(text_tokenizer, user_codebooks=2)
    rng = np.random.default_rng(0)
    codes, user = rng.integers(0, 2048, (4, 10)), rng.integers(0, 2048, (2, 10))
    truth = tok.encode(codes, [], user_codes=user).ids
    changed = codes.copy()
    changed[1, [3, 7]] += 1  # two frames differ
    got = tok.encode(changed, [], user_codes=user).ids
    fig = viz.plot_duplex_codes(tok, got, truth)
    assert len(fig.axes[1].lines) == 2 and "2 of 10 frames" in fig.axes[1].get_title(loc="left")
    steps = [SimpleNamespace(encode_s=0.1, generate_s=0.2, decode_s=0.05)] * 3
    fig = viz.plot_duplex_timing(steps)
    assert [line.get_ydata()[0] for line in fig.axes[0].lines] == [400.0]
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert sum(heights) == pytest.approx(3 * 350.0)
    fig = viz.plot_group_layout(tok.layout, groups=1)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts.count("T") == 2 and "f0\nu1" in texts and "f4\nc3" in texts
    assert "2 of the user" in fig.axes[0].get_title()


def test_evaluation_plot_hides_a_quick_look_once_the_suite_is_scored_whole():
    rows = [{"suite": "sblimp", "metric": "acc_text_semantic", "step": 50, "value": 0.9,
             "limit": 20},
            {"suite": "sblimp", "metric": "acc_text_semantic", "step": 50, "value": 0.6},
            {"suite": "demo", "metric": "acc_text_semantic", "step": 50, "value": 0.7,
             "limit": 5}]  # fmt: skip
    fig = viz.plot_evaluation(rows)
    plotted = {line.get_label(): list(line.get_ydata()) for line in fig.axes[1].lines
               if not line.get_label().startswith("_")}  # fmt: skip
    assert plotted == {"demo": [70.0], "sblimp": [60.0]}  # demo was only ever a quick look
