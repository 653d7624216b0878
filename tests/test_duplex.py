"""Stage 08: a duplex session hears the user exactly and answers group by group; its outputs,
its widget and its command line."""

import base64
import json
from contextlib import contextmanager

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


def _pcm(samples, seq: int) -> dict:
    """A live piece as the browser sends it."""
    return {"kind": "pcm", "seq": seq,
            "pcm": base64.b64encode(np.asarray(samples, np.float32).tobytes()).decode()}


@contextmanager
def _failing(model, message: str = "boom"):
    """The LM raises ``message`` on every forward while inside (a GPU out of memory, say)."""

    def fail(*_):
        raise RuntimeError(message)

    hook = model.get_input_embeddings().register_forward_pre_hook(fail)
    try:
        yield
    finally:
        hook.remove()


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
    for seq, piece in enumerate((voice[:5000], voice[5000:21000], voice[21000:30000])):
        ui._on_message(None, _pcm(piece, seq), [])  # 1.25 s in 3 pieces
    assert sent[0] == {"kind": "held", "seq": 0}  # less than a group so far: answered anyway
    replies = sent[1:]
    assert [m["group"] for m in replies] == [1, 2, 3]  # every whole 400 ms, the rest waits
    assert [m["seq"] for m in replies] == [1, 1, 2]
    assert all(len(m["pcm"]) > 0 and m["compute_ms"] > 0 for m in replies)
    assert "3 groups" in ui.timing.value and "400 ms" in ui.timing.value
    ui._on_message(None, {"kind": "stop"}, [])
    assert "3 groups" in ui.status.value
    assert session._stack is None  # stop frees Mimi's streaming state: the codec serves others
    ui._on_message(None, _pcm(voice[30000:50000], 3), [])  # posted before the stop arrived
    assert sent[-1] == {"kind": "off", "seq": 3} and len(session.steps) == 3  # not heard
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
def duplex_tokens_root(dtok, tmp_path_factory):
    """Synthetic duplex tokens (random codes for both streams, the demo's words)."""
    from .test_train import make_tokens

    return make_tokens(tmp_path_factory.mktemp("duplex"), dtok)


def _duplex_train_config(dtok):
    from speechlm_utils.config import TrainConfig

    return TrainConfig.from_profile("tiny", max_steps=2, seq_len=dtok.layout.group_len * 10,
                                    wandb_mode="disabled", eval_every=2, save_every=2,
                                    warmup_steps=1, train_chunks=None)  # fmt: skip


@pytest.fixture(scope="module")
def duplex_run(tiny_models, dtok, duplex_tokens_root):
    """A duplex run trained for two steps on synthetic duplex tokens."""
    from speechlm_utils import train

    run = duplex_tokens_root.parent / "run"
    train.Trainer(_duplex_train_config(dtok), tiny_models, duplex_tokens_root, run).fit(
        progress=False)  # fmt: skip
    return run


def test_a_duplex_runs_training_sample_forces_the_windows_user_stream(tiny_models, dtok,
                                                                     duplex_tokens_root,
                                                                     tmp_path):  # fmt: skip
    """The run does not learn the user's stream (loss weight 0): its training samples hear the
    window's own user codes, as duplex generation hears live input, and sample the rest."""
    from speechlm_utils import train

    trainer = train.Trainer(_duplex_train_config(dtok), tiny_models, duplex_tokens_root,
                            tmp_path / "run")  # fmt: skip
    sample = train.make_sample_fn(tiny_models, prompt_s=0.8, continue_s=1.2)(trainer)["sample"]
    lay = dtok.layout
    window = trainer.splits.val[0]["input_ids"].numpy()
    new = np.asarray(sample["ids"])
    truth = window[2 * lay.group_len : 5 * lay.group_len]  # after the 2 groups of the prompt
    kinds = lay.kinds(new.size)
    user = kinds > lay.num_codebooks
    assert new.size == truth.size and user.sum() == 3 * 5 * 2
    assert np.array_equal(new[user], truth[user])  # heard as stored, never sampled
    assert (lay.kinds_of_ids(new) == kinds).all()  # the assistant's positions: sampled, in kind
    assert sample["audio"].size > 0 and isinstance(sample["text"], str)


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


def test_a_failed_step_ends_the_session_and_nothing_restarts_it_silently(dlm, dtok, codec,
                                                                          voice):  # fmt: skip
    session = duplex.DuplexSession(dlm, dtok, codec, Sampling(seed=0), decode="eager")
    session.step(voice[:GROUP])  # a session never started starts on its first step
    with _failing(dlm), pytest.raises(RuntimeError, match="boom"):
        session.step(voice[GROUP : 2 * GROUP])
    assert session._stack is None and "boom" in session.failed  # Mimi freed, the reason kept
    with pytest.raises(RuntimeError, match=r"ended after an error \(RuntimeError: boom\)"):
        session.step(voice[GROUP : 2 * GROUP])  # no new silent conversation behind our back
    assert session._stack is None and len(session.steps) == 1
    codec.encode_stream(voice[:GROUP], 5)  # the codec serves others meanwhile
    session.start()  # starting again is explicit
    assert session.failed is None and session.step(voice[:GROUP]).group == 1
    session.close()


def test_the_live_widget_answers_every_piece_and_stops_with_the_reason_on_an_error(
        dlm, dtok, codec, voice):  # fmt: skip
    """The browser keeps at most 3 pieces in flight, freeing one only when the kernel answers
    it: a piece whose step failed must be answered too, and live must stop, not carry on."""
    session = duplex.DuplexSession(dlm, dtok, codec, Sampling(seed=0), decode="eager")
    ui = duplex.DuplexWidget(session)
    sent = []
    ui.live.send = sent.append
    ui._on_message(None, {"kind": "start"}, [])
    ui._on_message(None, _pcm(voice[:GROUP], 0), [])
    with _failing(dlm):
        ui._on_message(None, _pcm(voice[GROUP : 2 * GROUP], 1), [])
    ui._on_message(None, _pcm(voice[2 * GROUP : 3 * GROUP], 2), [])  # in flight at the error
    ui._on_message(None, _pcm(voice[3 * GROUP : 4 * GROUP], 3), [])
    assert [(m["kind"], m["seq"]) for m in sent] == [("pcm", 0), ("error", 1), ("off", 2),
                                                     ("off", 3)]  # fmt: skip
    assert "boom" in sent[1]["message"]
    assert "Live stopped" in ui.status.value and "boom" in ui.status.value
    assert "Start live" in ui.status.value and "#b00020" in ui.status.value  # shown as an error
    assert not ui._live_on and session._stack is None and len(session.steps) == 1
    ui._on_message(None, {"kind": "start"}, [])  # the user starts again: a new conversation
    ui._on_message(None, _pcm(voice[:GROUP], 4), [])
    assert (sent[-1]["kind"], sent[-1]["seq"], sent[-1]["group"]) == ("pcm", 4, 1)
    assert "Live: 1 groups heard" in ui.status.value
    ui._on_message(None, {"kind": "stop"}, [])


def test_a_live_start_that_fails_tells_the_page(dlm, dtok, codec, monkeypatch):
    session = duplex.DuplexSession(dlm, dtok, codec, Sampling(seed=0), decode="eager")
    ui = duplex.DuplexWidget(session)
    sent = []
    ui.live.send = sent.append

    def out_of_memory():
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(session, "start", out_of_memory)
    ui._on_message(None, {"kind": "start"}, [])
    assert [(m["kind"], m["seq"]) for m in sent] == [("error", None)]  # the page stops
    assert "out of memory" in sent[0]["message"] and not ui._live_on


def _step(compute_s: float) -> duplex.GroupStep:
    return duplex.GroupStep(0, [], np.zeros((2, 5)), np.zeros((4, 5)), np.zeros(GROUP), "",
                            0.0, compute_s, 0.0)  # fmt: skip


def test_keeping_up_is_judged_by_the_worst_group():
    def timing(*compute_s):
        return duplex.DuplexResult(np.zeros(1), np.zeros(1), [_step(c) for c in compute_s],
                                   0.0).timing()  # fmt: skip

    bursty = timing(*[0.1] * 9, 0.6)  # on average 150 ms, but one group took 600 ms
    assert bursty["mean_compute_s"] < 0.4 and bursty["max_compute_s"] == pytest.approx(0.6)
    assert not bursty["keeps_up"] and bursty["groups_over"] == 1
    assert "1 of 10 groups took longer than the 400 ms" in duplex.timing_verdict(bursty)
    fast = timing(0.1, 0.39)
    assert fast["keeps_up"] and duplex.timing_verdict(fast).startswith("keeps up")
    slow = timing(0.5, 0.45)
    assert not slow["keeps_up"] and "on average" in duplex.timing_verdict(slow)
    assert not timing()["keeps_up"]


def test_the_readme_layout_table_is_the_layouts_arithmetic():
    import re

    from .conftest import REPO

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Stage 08") : readme.index("## Two profiles")]
    rows = re.findall(r"^  \| (mono|duplex, K_user = (\d)[^|]*) \| (\d+) \| ([\d.]+) \| (\d+) \| "
                      r"([\d.]+) s \|$", section, re.M)  # fmt: skip
    table = {row["layout"]: row for row in duplex.layout_table()}
    assert len(rows) == len(table) == 4
    for name, k_user, group, per_s, sampled, window_s in rows:
        row = table["mono" if name == "mono" else f"duplex, K_user={k_user}"]
        assert int(group) == row["tokens per group"] == 2 + 5 * (4 + int(k_user or 0))
        assert float(per_s) == row["tokens/s"] == int(group) / 0.4
        assert int(sampled) == row["sampled per group"] == 22
        assert float(window_s) == row["4096-token window (s)"] == round(4096 / float(per_s), 1)


def test_notebook_08s_token_root_must_be_its_configuration_and_gives_its_overlap(
        tiny_models, text_tokenizer, tmp_path):  # fmt: skip
    """A root made with another overlap policy (or assistant, ...) is refused, not used as if it
    were the notebook's; the user's track under a piece is cut with the root's own policy."""
    from speechlm_utils import preprocess
    from speechlm_utils.speakers import split_tracks

    cfg = duplex.tokenize_config("tiny", data_dir=tmp_path)
    root = duplex.tokens_dir(cfg)

    def claim(overlap):
        other = cfg.replace(overlap=overlap)
        tok = SpeechTokenizer.from_config(text_tokenizer, other)
        preprocess.claim_token_root(
            root, preprocess.root_spec(tok, tiny_models, other.text_source, other),
            preprocess.config_digest(tok, tiny_models, other.text_source, other))  # fmt: skip

    claim("user")
    with pytest.raises(preprocess.TokenRootError, match="another configuration"):
        duplex.ensure_duplex_tokens(cfg, tiny_models)
    wav = np.ones(MIMI_SAMPLE_RATE_HZ, np.float32)  # 1 s; the assistant a, then b over it
    sf.write(tmp_path / "c.wav", wav, MIMI_SAMPLE_RATE_HZ, subtype="FLOAT")
    record = {"chunk": "c.wav", "start_s": 0.0, "chunk_start_s": 0.0, "role": "a",
              "turns": [["a", 0.0, 0.6], ["b", 0.4, 1.0]]}  # fmt: skip
    turns = preprocess.turns_of(record)
    got = duplex.user_track(tmp_path, root, record)
    assert np.allclose(got, split_tracks(wav, MIMI_SAMPLE_RATE_HZ, turns, "a", "user")[1])
    assert got[12000] == 1.0  # 0.5 s: both talk, and the root gives the overlap to the user
    (root / "layout.json").unlink()
    claim("assistant")
    assert duplex.user_track(tmp_path, root, record)[12000] == 0.0
    (root / "layout.json").unlink()
    claim(cfg.overlap)  # the notebook's own configuration, with a finished video: used as is
    (root / "manifest.jsonl").write_text(json.dumps(
        {"type": "piece", "video_id": "v", "chunk": "c.wav", "status": "ok"}) + "\n" +
        json.dumps({"type": "video", "video_id": "v", "status": "done"}) + "\n")  # fmt: skip
    assert duplex.ensure_duplex_tokens(cfg, tiny_models) == root


@pytest.mark.pipeline  # it trains (or reuses) notebook 08's run in data/tiny
def test_notebook_08s_memorised_run_gives_back_the_hosts_side(tiny_models):
    """The README's figures for notebook 08's check: prompted with 4 s of the stream it
    memorised, greedily, fed the stream's own user codes it gives back the host's next 8 s
    token for token; fed the guest's audio live, Mimi hears most user codes as stage 03 stored
    them (a batch of one row against two tips near ties), and the host's side holds."""
    from speechlm_utils import preprocess, train
    from speechlm_utils.codec import Codec
    from speechlm_utils.scrape import ensure_chunks

    cfg = duplex.tokenize_config("tiny", data_dir=tiny_models.data_dir)
    tokens_root = duplex.ensure_duplex_tokens(cfg, tiny_models)
    tok = SpeechTokenizer.from_config(text_tokenizer_of(tiny_models), cfg)
    run, _, _ = duplex.ensure_duplex_run(cfg, tiny_models, tokens_root, tok.layout)
    model, tokenizer = train.load_run(run, tiny_models)
    codec = Codec.load(train.run_models(run, tiny_models), tokenizer.layout.num_codebooks)
    session = duplex.DuplexSession(model, tokenizer, codec, decode="eager")
    record = train.training_records(run, tokens_root)[0]
    assert record["role"] == "host"
    chunks_root = ensure_chunks(cfg.data_dir, cfg.profile)
    check = duplex.memorised_check(session, preprocess.load_tokens(tokens_root, record),
                                   duplex.user_track(chunks_root, tokens_root, record),
                                   prompt_s=4.0, continue_s=8.0)  # fmt: skip
    assert len(check["result"].steps) == 20
    assert check["stored_assistant_codes_equal"] == 1.0  # README: 100 %
    assert check["stored_text_slots_equal"] == 1.0
    assert check["stored_text"] == check["true_text"] != ""
    assert check["user_codes_equal"] >= 0.95  # README: 99.5 %
    assert check["assistant_codes_equal"] >= 0.9  # README: 100 %
    assert check["text_slots_equal"] >= 0.9  # README: 100 %


def text_tokenizer_of(models):
    from speechlm_utils.checkpoints import load_text_tokenizer

    return load_text_tokenizer(models)


LIVE_JS_HARNESS = r"""
const sent = [], handlers = {}, els = [];
const el = () => { const e = { style: {}, textContent: "", append() {} }; els.push(e); return e; };
globalThis.document = { createElement: el };
let port = null;
globalThis.AudioContext = class {
  constructor() { this.sampleRate = 24000; this.currentTime = 0; this.destination = {};
    this.audioWorklet = { addModule: async () => {} }; }
  async resume() {}
  createMediaStreamSource() { return { connect() {} }; }
  createBuffer(c, n) { return { duration: n / 24000, copyToChannel() {} }; }
  createBufferSource() { return { connect() {}, start() {} }; }
};
globalThis.AudioWorkletNode = class {
  constructor() { this.port = {}; port = this.port; }
  connect() {} disconnect() {}
};
globalThis.URL.createObjectURL = () => "blob:";
globalThis.navigator = { mediaDevices: { getUserMedia: async () => ({ getTracks: () => [] }) } };
const traits = { rate: 24000, piece_samples: 4, max_in_flight: 3 };
const model = { get: (k) => traits[k], set() {}, save_changes() {},
  send: (m) => sent.push(m), on: (name, f) => { handlers[name] = f; } };
const { default: widget } = await import(process.argv[2]);
widget.render({ model, el: el() });
const [button, info] = els.slice(1);
await button.onclick();
const piece = () => port.onmessage({ data: new Float32Array(4) });
const seqs = () => sent.filter((m) => m.kind === "pcm").map((m) => m.seq);
const out = {};
for (let i = 0; i < 4; i++) piece();
out.first = seqs();  // three in flight, the fourth dropped
handlers["msg:custom"]({ kind: "error", seq: 99, message: "old" });
out.after_stale = button.textContent;  // an error for a piece from before a restart: ignored
handlers["msg:custom"]({ kind: "held", seq: 0 });
piece();
out.after_held = seqs();  // an answer frees a slot
handlers["msg:custom"]({ kind: "error", seq: 1, message: "boom" });
piece();
out.after_error = seqs();  // live stopped: nothing more is sent
out.button = button.textContent;
out.info = info.textContent;
out.stop_sent = sent.some((m) => m.kind === "stop");
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(__import__("shutil").which("node") is None, reason="needs node")
def test_the_live_pages_in_flight_slots_are_freed_by_every_answer(tmp_path):
    """The page's side, in node with stand-ins for the browser's audio: three pieces wait at
    most, an answer of any kind frees one, and an error stops live with the reason."""
    import subprocess

    module, harness = tmp_path / "live.mjs", tmp_path / "harness.mjs"
    module.write_text(duplex._LIVE_JS)
    harness.write_text(LIVE_JS_HARNESS)
    done = subprocess.run(["node", str(harness), str(module)], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["first"] == [0, 1, 2]
    assert out["after_stale"].endswith("Stop")  # still live
    assert out["after_held"] == [0, 1, 2, 3]
    assert out["after_error"] == [0, 1, 2, 3]
    assert out["button"].endswith("Start live") and "the model failed (boom)" in out["info"]
    assert not out["stop_sent"]  # the kernel stopped already: its status keeps the reason
