"""Stage 08: a duplex session hears the user exactly and answers group by group; its outputs,
its widget and its command line."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from speechlm_utils import duplex
from speechlm_utils.audio import MIMI_SAMPLE_RATE_HZ, load_audio
from speechlm_utils.chat import wav_bytes
from speechlm_utils.generate import Sampling
from speechlm_utils.model import build_speech_lm
from speechlm_utils.tokenizer import TEXT_KIND, SpeechTokenizer

from .conftest import DEMO_DIR

GROUP = 9600  # samples per 400 ms group at 24 kHz


@pytest.fixture(scope="module")
def dtok(text_tokenizer):
    return SpeechTokenizer(text_tokenizer, user_codebooks=2)


@pytest.fixture(scope="module")
def dlm(tiny_models, dtok):
    torch.manual_seed(0)
    return build_speech_lm(tiny_models, dtok.layout).eval()  # untrained: the shapes are real


@pytest.fixture(scope="module")
def voice():
    return load_audio(DEMO_DIR / "demo_ep_001.webm", MIMI_SAMPLE_RATE_HZ)[: 3 * 24000]


def test_a_session_hears_the_input_exactly_and_answers_every_group(dlm, dtok, codec, voice):
    session = duplex.DuplexSession(dlm, dtok, codec, Sampling(seed=0), decode="eager")
    result = duplex.run_file(session, voice)  # 7.5 groups: the last is padded
    lay = dtok.layout
    assert len(result.steps) == 8 and result.user.size == result.assistant.size == 8 * GROUP
    assert [s.group for s in result.steps] == list(range(1, 9))  # after the silent opening
    ids = np.concatenate([s.ids for s in result.steps])
    assert (lay.kinds_of_ids(ids) == lay.kinds(ids.size)).all()  # every id of its kind
    heard = np.concatenate([s.user_codes for s in result.steps], axis=1)
    padded = np.zeros(9 * GROUP, np.float32)  # the opening's silent group, then the input
    padded[GROUP : GROUP + voice.size] = voice
    truth = codec.encode_stream(padded, 5).numpy()[:2, 5:]  # Mimi streamed over the whole
    assert np.array_equal(heard, truth)  # the user's positions hold the input, exactly
    assert all(s.audio.size == GROUP and s.compute_s > 0 for s in result.steps)
    assert set(result.timing()) >= {"mean_encode_s", "mean_generate_s", "mean_decode_s",
                                    "keeps_up"}  # fmt: skip
    codec.encode_stream(voice[:GROUP], 5)  # the session closed: the codec serves others again


def test_a_prompted_session_continues_the_users_track_as_stage_03_encoded_it(dlm, dtok, codec,
                                                                             voice):
    """Warmed with the user's audio under the prompt, the encoder gives the next groups the
    codes that encoding the whole track gives (what memorised_check compares against)."""
    track = voice[: 7 * GROUP]
    codes = codec.encode_stream(track, 5).numpy()
    prompt = dtok.encode(codes[:, :20], [], user_codes=codes[:2, :20]).ids  # 4 groups
    session = duplex.DuplexSession(dlm, dtok, codec, Sampling.greedy(), decode="eager")
    result = duplex.run_file(session, track[4 * GROUP :], prompt_ids=prompt,
                             prompt_user_wav=track[: 4 * GROUP])  # fmt: skip
    heard = np.concatenate([s.user_codes for s in result.steps], axis=1)
    assert np.array_equal(heard, codes[:2, 20:35])
    assert result.start_s == pytest.approx(1.6)


def test_outputs_are_a_stereo_wav_and_the_text_channel_with_times(dlm, dtok, codec, voice,
                                                                  tmp_path):
    session = duplex.DuplexSession(dlm, dtok, codec, Sampling(seed=1), decode="eager")
    result = duplex.run_file(session, voice)
    wav, text = duplex.write_outputs(result, tmp_path / "out.wav")
    stereo, rate = sf.read(wav)
    assert rate == 24000 and stereo.shape == (result.user.size, 2)
    assert np.abs(stereo[:, 0] - result.user).max() < 1e-3  # you left
    assert np.abs(stereo[:, 1] - np.clip(result.assistant, -1, 1)).max() < 1e-3  # it right
    lines = text.read_text().splitlines()
    assert lines[0].startswith("#") and len(lines) - 1 == len(result.text_timeline())
    for line, (t, words) in zip(lines[1:], result.text_timeline()):
        assert float(line.split()[0]) == t and line.endswith(words)
        i = round(t / 0.4)  # the time is the wav's own: group i is samples i*9600 onwards
        assert result.steps[i].text.strip() == words
        right = stereo[i * GROUP : (i + 1) * GROUP, 1]
        assert np.abs(right - np.clip(result.steps[i].audio, -1, 1)).max() < 1e-3
    timeline_steps = [s for s in result.steps if s.text.strip()]
    lay = dtok.layout
    for s in timeline_steps:  # the words of a group are its text slots' pieces
        slots = np.asarray(s.ids)[lay.kinds(len(s.ids)) == TEXT_KIND]
        assert (slots != lay.text_pad_id).any()


def test_the_widget_streams_each_whole_group_back_and_explains_bad_files(dlm, dtok, codec,
                                                                         voice, tmp_path):
    session = duplex.DuplexSession(dlm, dtok, codec, Sampling(seed=0), decode="eager")
    ui = duplex.DuplexWidget(session)
    sent = []
    ui.live.send = sent.append
    ui._on_message(None, {"kind": "start"}, [])
    pcm = lambda x: {"kind": "pcm", "seq": 7, "pcm": __import__("base64").b64encode(  # noqa: E731
        np.asarray(x, np.float32).tobytes()).decode()}
    for piece in (voice[:5000], voice[5000:21000], voice[21000:30000]):  # 1.25 s in 3 pieces
        ui._on_message(None, pcm(piece), [])
    assert [m["group"] for m in sent] == [1, 2, 3]  # every whole 400 ms, the rest waits
    assert all(len(m["pcm"]) > 0 and m["compute_ms"] > 0 and m["seq"] == 7 for m in sent)
    assert "3 groups" in ui.timing.value and "400 ms" in ui.timing.value
    ui._on_message(None, {"kind": "stop"}, [])
    assert "3 groups" in ui.status.value
    assert session._stack is None  # stop frees Mimi's streaming state: the codec serves others
    ui._on_message(None, pcm(voice[30000:50000]), [])  # a piece posted before the stop arrived
    assert len(sent) == 3 and len(session.steps) == 3  # ignored
    assert ui.play_file("empty.wav", b"") is None and "empty" in ui.status.value
    assert ui.play_file("noise.bin", b"not audio at all") is None
    assert "not audio" in ui.status.value
    result = ui.play_file("you.wav", wav_bytes(voice[: 2 * GROUP]))
    assert result is not None and len(result.steps) == 2 and ui.result.outputs
    assert "text channel" in ui.transcript.value


def test_a_prompt_and_its_audio_must_agree_and_a_bad_start_frees_mimi(dlm, dtok, codec, voice):
    session = duplex.DuplexSession(dlm, dtok, codec, decode="eager")
    prompt = dtok.encode(np.zeros((4, 10), np.int64), [], user_codes=np.zeros((2, 10))).ids
    with pytest.raises(ValueError, match="covers 3.00 groups, the prompt 2"):
        session.start(prompt, voice[: 3 * GROUP])
    assert session._stack is None
    codec.encode_stream(voice[:GROUP], 5)  # Mimi is not left streaming


def test_a_mono_model_is_refused_with_what_to_do(dlm, text_tokenizer, codec):
    with pytest.raises(duplex.NotDuplexError, match="--user-codebooks"):
        duplex.DuplexSession(dlm, SpeechTokenizer(text_tokenizer), codec)


@pytest.fixture(scope="module")
def duplex_run(tiny_models, dtok, tmp_path_factory):
    """A duplex run trained for two steps on synthetic duplex tokens."""
    from speechlm_utils import train
    from speechlm_utils.config import TrainConfig

    from .test_train import make_tokens

    root = tmp_path_factory.mktemp("duplex")
    tokens = make_tokens(root, dtok)
    cfg = TrainConfig.from_profile("tiny", max_steps=2, seq_len=dtok.layout.group_len * 10,
                                   wandb_mode="disabled", eval_every=2, save_every=2,
                                   warmup_steps=1, train_chunks=None)  # fmt: skip
    train.Trainer(cfg, tiny_models, tokens, root / "run").fit(progress=False)
    return root / "run"


def test_chat_duplex_plays_a_file_into_a_duplex_run(duplex_run, voice, tmp_path, capsys):
    from speechlm_utils.__main__ import main

    question = tmp_path / "you.wav"
    question.write_bytes(wav_bytes(voice[: 2 * 24000]))
    out = tmp_path / "talk.wav"
    main(["--profile", "tiny", "chat", "--run", str(duplex_run), "--duplex", "--audio",
          str(question), "--out", str(out), "--no-realtime", "--seed", "0"])  # fmt: skip
    stereo, _ = sf.read(out)
    assert stereo.shape == (5 * GROUP, 2)
    assert out.with_suffix(".txt").exists()
    printed = capsys.readouterr().out
    assert "5 groups of 400 ms" in printed and "you left, the model right" in printed
    with pytest.raises(SystemExit, match="--duplex"):  # the mono chat refuses a duplex run
        main(["--profile", "tiny", "chat", "--run", str(duplex_run), "--audio", str(question),
              "--out", str(tmp_path / "x.wav")])  # fmt: skip
    assert json.loads((duplex_run / "run.json").read_text())  # a real run


def test_a_duplex_run_is_evaluated_with_the_user_silent(duplex_run):
    """Stage 07 on a duplex run: its held-out loss has the user's kind, the sanity suite
    shuffles whole frames (both streams), and a likelihood clip is the assistant speaking
    while the user is silent."""
    from speechlm_utils.evaluate import evaluate_run

    result = evaluate_run(duplex_run, ["loss", "sanity", "demo"], limit=2, progress=False)
    metrics = {(r["suite"], r["metric"]) for r in result.rows}
    assert ("loss", "loss_user") in metrics and ("loss", "loss_semantic") in metrics
    assert any(s == "sanity" for s, _ in metrics) and any(s == "demo" for s, _ in metrics)


def test_the_latency_plan_leaves_mimi_what_the_lm_does_not_take(dtok):
    rows = {(r["gpu"], r["decode"]): r for r in duplex.latency_plan(dtok.layout, mimi_ms=50.0)}
    h100, a100 = rows["H100 80GB SXM", "compiled"], rows["A100 80GB", "compiled"]
    assert 0 < a100["left for Mimi ms"] < h100["left for Mimi ms"] < 400
    assert h100["with Mimi as measured, ms"] == h100["think and talk ms"] + 50
    assert h100["keeps up"] == "yes" and rows["A100 80GB", "eager"]["keeps up"] == "no"
    assert rows["A100 80GB", "eager"]["left for Mimi ms"] == 0  # the LM alone overruns 400 ms
    assert "keeps up" not in duplex.latency_plan(dtok.layout)[0]
