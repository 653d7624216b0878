"""Stage 06: constrained generation, KV cache, rolling window, streaming, and the chat widget."""

from contextlib import contextmanager

import numpy as np
import pytest
import torch

from speechlm_utils import chat, generate
from speechlm_utils.audio import MIMI_SAMPLE_RATE_HZ, ffmpeg_exe, load_audio
from speechlm_utils.generate import Sampling
from speechlm_utils.model import build_speech_lm
from speechlm_utils.tokenizer import SpeechTokenizer

from .conftest import DEMO_DIR


@pytest.fixture(scope="module")
def tok(text_tokenizer):
    return SpeechTokenizer(text_tokenizer)


@pytest.fixture(scope="module")
def lm(tiny_models, tok):
    torch.manual_seed(0)
    return build_speech_lm(tiny_models, tok.layout).eval()


@pytest.fixture(scope="module")
def prompt(tok):
    codes = np.random.default_rng(0).integers(0, 2048, (4, 10))
    return torch.from_numpy(tok.encode(codes, []).ids)  # 2 groups


@pytest.mark.parametrize("seed", range(6))
def test_every_generated_id_is_allowed_where_it_stands(lm, tok, prompt, seed):
    sampling = generate.Sampling(1.0, 1.0, text_top_k=0, audio_top_k=0, top_p=0.95, seed=seed,
                                 audio_repetition_penalty=1.3)  # fmt: skip
    out = np.array(generate.generate(lm, tok.layout, prompt, 66 + seed, sampling))
    kinds = tok.layout.kinds(out.size, start=prompt.numel())
    assert np.array_equal(kinds, tok.layout.kinds_of_ids(out))
    full = np.concatenate([prompt.numpy(), out])
    text, codes = tok.decode(full)  # every output decodes
    assert codes.shape[0] == 4 and codes.min() >= 0 and codes.max() < 2048


def test_text_and_audio_each_have_their_own_top_k(tok):
    lay = tok.layout
    weight = torch.randn(lay.padded_vocab_size, 16)
    sampling = generate.Sampling(1.0, 1.0, text_top_k=1, audio_top_k=0)  # text: only the best
    text, audio = [], []
    for seed in range(20):
        hidden = torch.randn(16, generator=torch.Generator().manual_seed(seed))
        greedy = [generate.sample_next(hidden, weight, lay, kind, [], generate.Sampling.greedy())
                  for kind in (0, 1)]  # fmt: skip
        draw = torch.Generator().manual_seed(seed)
        got = [generate.sample_next(hidden, weight, lay, kind, [], sampling, draw)
               for kind in (0, 1)]  # fmt: skip
        text.append(got[0] == greedy[0])
        audio.append(got[1] == greedy[1])
    assert all(text) and sum(audio) < 10  # audio still draws from all 2048 codes


def test_cached_equals_uncached_past_the_sliding_window(lm, tok, prompt):
    window = lm.config.sliding_window
    n = window + 60  # goes well past the window
    sampling = generate.Sampling(0.9, 0.9, 50, 50, seed=7)
    stats = {}
    cached = list(generate.stream_tokens(lm, tok.layout, prompt, n, sampling, stats=stats))
    uncached = generate.generate(lm, tok.layout, prompt, n, sampling, use_cache=False)
    assert cached == uncached
    assert stats["cache_len"] < window  # the rolling cache keeps memory bounded
    assert len(cached) + prompt.numel() > window


def test_same_seed_same_reply_and_greedy_is_deterministic(lm, tok, prompt):
    a = generate.generate(lm, tok.layout, prompt, 44, generate.Sampling(seed=3))
    b = generate.generate(lm, tok.layout, prompt, 44, generate.Sampling(seed=3))
    c = generate.generate(lm, tok.layout, prompt, 44, generate.Sampling(seed=4))
    assert a == b and a != c
    g = generate.Sampling.greedy()
    assert generate.generate(lm, tok.layout, prompt, 30, g) == \
        generate.generate(lm, tok.layout, prompt, 30, g)  # fmt: skip


def test_streaming_audio_equals_decoding_the_whole_reply(lm, tok, codec, prompt):
    groups = []
    response = generate.respond(lm, tok, codec, prompt, max_s=2.0,
                                sampling=generate.Sampling(seed=1), stop_silence_s=None,
                                on_group=groups.append)  # fmt: skip
    assert len(groups) == 5 and response.stopped == "length"
    assert all(g["audio"].size == 5 * 1920 for g in groups)  # 400 ms each, as soon as ready
    whole = codec.decode(torch.from_numpy(response.codes))[0, 0].numpy()
    assert response.audio.shape == whole.shape
    assert np.abs(response.audio - whole).max() < 1e-4
    assert 0 < response.first_audio_s <= response.seconds


def test_prompt_from_audio_is_whole_groups(codec, tok):
    wav = load_audio(DEMO_DIR / "demo_ep_002.m4a", MIMI_SAMPLE_RATE_HZ)[: 24_000 * 3 + 500]
    ids = generate.prompt_from_audio(wav, codec, tok)
    assert ids.size % 22 == 0 and ids.size == 22 * 8  # 3.02 s -> 8 groups of 400 ms
    assert tok.decode(ids)[1].shape == (4, 40)


def _wav_file(seconds, tmp_path, name="q.wav", silent=False):
    import subprocess

    source = "anullsrc=r=24000:cl=mono" if silent else "sine=f=220:r=24000"
    path = tmp_path / name
    subprocess.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi",
                    "-t", str(seconds), "-i", source, str(path)], check=True)  # fmt: skip
    return path.read_bytes()


def test_chat_widget_answers_a_file_and_explains_bad_input(lm, tok, codec, tmp_path):
    session = chat.ChatSession(lm, tok, codec)  # no aligner: prompt text slots stay empty
    ui = chat.ChatWidget(session, max_s=0.8, podcast=[{"label": "demo", "audio": None,
                                                      "ids": generate.prompt_from_audio(
        load_audio(DEMO_DIR / "demo_ep_001.webm", MIMI_SAMPLE_RATE_HZ)[:24_000 * 2], codec,
        tok)}])  # fmt: skip
    assert ui.respond() is None and "first" in ui.status.value  # nothing to answer yet
    for name, data, expected in [
        ("notes.txt", b"just some text, not audio\n" * 20, "not audio"),
        ("empty.wav", b"", "empty"),
        ("quiet.wav", _wav_file(2, tmp_path, "quiet.wav", silent=True), "silent"),
        ("long.wav", _wav_file(61, tmp_path, "long.wav"), "limit is 60 s"),
    ]:  # fmt: skip
        assert not ui.load_file(name, data)
        assert expected in ui.status.value and "b00020" in ui.status.value  # shown as an error
    question = _wav_file(1.2, tmp_path)  # a tone is audio enough for the pipeline
    assert ui.load_file("q.wav", question) and ui.pending is not None
    response = ui.respond()
    assert response is not None and response.audio.size == 2 * 5 * 1920
    assert "model" in ui.transcript.value and len(ui.history.children) == 2
    assert len(ui.reply_audio.outputs) == 1
    ui.upload.value = ({"name": "q2.wav", "type": "audio/wav", "size": len(question),
                        "content": memoryview(question),
                        "last_modified": __import__("datetime").datetime.now()},)  # fmt: skip
    assert ui.pending is not None and "q2.wav" in ui.status.value  # the upload callback
    ui.recorder.mime = "audio/webm"
    ui.recorder.b64 = __import__("base64").b64encode(b"not a recording").decode()
    assert ui.pending is None and "not audio" in ui.status.value  # the recorder callback
    assert ui.continue_podcast() is not None and len(ui.history.children) == 4
    assert len(session.turns) == 2 and session.turns[0]["role"] == "podcast"
    ui.reset()
    assert ui.history.children == () and session.ids == []


# -- the reply boundary: the model writes the text slots of the prompt's last lead -----------


def _mid_sentence_prompt(tok, groups=10, seed=0):
    """A prompt of ``groups`` groups whose words run past its end: the last lead's text slots
    hold a few real tokens (words said at or after the end) among pads."""
    from speechlm_utils.words import Word

    codes = np.random.default_rng(seed).integers(0, 2048, (4, 5 * groups))
    end_s = groups * 0.4
    words = [Word(" so", 0.3, 0.5), Word(" the", 0.9, 1.1), Word(" weather", end_s - 1.2, end_s),
             Word(" tomorrow", end_s + 0.1, end_s + 0.6),
             Word(" looks", end_s + 1.3, end_s + 1.6)]  # fmt: skip
    return tok.encode(codes, words).ids


def _reference_open_text(lm, tok, prompt, open_from):
    """The completed prompt, one full forward per open slot, greedy over text + TEXT_PAD."""
    lay = tok.layout
    text_mask = torch.from_numpy(lay.kind_masks()[0])
    ids = [int(i) for i in prompt]
    for i in np.flatnonzero(generate.open_text_slots(lay, prompt, open_from)):
        with torch.no_grad():
            logits = lm(input_ids=torch.tensor([ids[:i]])).logits[0, -1]
        ids[i] = int(logits.masked_fill(~text_mask, float("-inf")).argmax())
    return ids


def test_open_text_slots_are_the_pads_of_the_lead(tok):
    lay = tok.layout
    prompt = _mid_sentence_prompt(tok)
    open_from = prompt.size - 5 * lay.group_len  # the last 2 s
    opened = generate.open_text_slots(lay, prompt, open_from)
    text = lay.kinds(prompt.size) == 0
    lead = np.arange(prompt.size) >= open_from
    words = text & lead & (prompt != lay.text_pad_id)
    assert words.sum() >= 2  # " tomorrow" and " looks" were placed in the lead's groups
    assert np.array_equal(opened, text & lead & ~words)
    assert not generate.open_text_slots(lay, prompt, None).any()
    assert not generate.open_text_slots(lay, prompt, 0)[0]  # nothing to predict position 0 from
    assert generate.lead_groups(2.0, lay) == 5 and generate.lead_groups(0.5, lay) == 2


def test_open_text_boundary_greedy_equals_step_by_step_reference(lm, tok):
    lay = tok.layout
    prompt = _mid_sentence_prompt(tok)
    open_from = prompt.size - 5 * lay.group_len
    n_new = 2 * lay.group_len
    out = list(generate.stream_tokens(lm, lay, prompt, n_new, generate.Sampling.greedy(),
                                      open_text_from=open_from))  # fmt: skip
    assert len(out) == prompt.size - open_from + n_new
    completed = np.concatenate([prompt[:open_from], out[: prompt.size - open_from]])
    reference = _reference_open_text(lm, tok, prompt, open_from)
    assert completed.tolist() == reference
    opened = generate.open_text_slots(lay, prompt, open_from)
    assert (completed[opened] != lay.text_pad_id).any()  # the model wrote words there
    assert np.all(lay.kinds_of_ids(completed[opened]) == 0)  # text or TEXT_PAD only
    assert np.array_equal(completed[~opened], prompt[~opened])  # audio and real words kept
    # what follows is the plain continuation of the completed prompt
    following = generate.generate(lm, lay, completed, n_new, generate.Sampling.greedy())
    assert out[prompt.size - open_from :] == following
    # without an open boundary the prompt stays as given and only new ids come
    plain = generate.generate(lm, lay, prompt, n_new, generate.Sampling.greedy())
    assert len(plain) == n_new


def test_open_text_boundary_cached_equals_uncached_past_the_window(lm, tok):
    lay = tok.layout
    prompt = _mid_sentence_prompt(tok, groups=13, seed=1)  # 286 tokens > the 256 window
    assert prompt.size > lm.config.sliding_window
    open_from = prompt.size - 5 * lay.group_len
    sampling = generate.Sampling(0.9, 0.9, 50, 50, seed=5)
    stats = {}
    cached = list(generate.stream_tokens(lm, lay, prompt, 30, sampling, stats=stats,
                                         open_text_from=open_from))  # fmt: skip
    uncached = list(generate.stream_tokens(lm, lay, prompt, 30, sampling, use_cache=False,
                                           open_text_from=open_from))  # fmt: skip
    assert cached == uncached
    assert stats["cache_len"] < lm.config.sliding_window
    tail = np.array(cached[: prompt.size - open_from])
    opened = generate.open_text_slots(lay, prompt, open_from)[open_from:]
    assert np.all(lay.kinds_of_ids(tail[opened]) == 0)
    assert np.array_equal(tail[~opened], prompt[open_from:][~opened])


def test_response_exposes_the_completed_prompt(lm, tok, codec):
    lay = tok.layout
    prompt = _mid_sentence_prompt(tok)
    open_from = prompt.size - 5 * lay.group_len
    groups = []
    response = generate.respond(lm, tok, codec, prompt, max_s=0.8,
                                sampling=generate.Sampling.greedy(), stop_silence_s=None,
                                on_group=groups.append)  # fmt: skip
    assert response.prompt_ids == _reference_open_text(lm, tok, prompt, open_from)
    assert all(g["prompt_ids"] == response.prompt_ids for g in groups)
    completed = np.array(response.prompt_ids)
    opened = generate.open_text_slots(lay, prompt, open_from)
    written = [int(i) for i in completed[opened] if i != lay.text_pad_id]
    assert written and groups[0]["lead_ids"] == written
    assert response.lead_text == tok.sp.decode(written) != ""
    reply_words = [i for i in np.array(response.ids)[lay.kinds(len(response.ids)) == 0]
                   if i != lay.text_pad_id]  # fmt: skip
    assert response.text == tok.sp.decode(written + [int(i) for i in reply_words])
    closed = generate.respond(lm, tok, codec, prompt, max_s=0.8,
                              sampling=generate.Sampling.greedy(), stop_silence_s=None,
                              open_text_s=0)  # fmt: skip
    assert closed.prompt_ids == prompt.tolist() and closed.lead_text == ""
    today = generate.generate(lm, lay, prompt, 2 * lay.group_len, generate.Sampling.greedy())
    assert closed.ids == today  # open_text_s=0 is the old behaviour


class _SilentCodec:
    """Decodes every group to silence (the stop's worst case)."""

    @contextmanager
    def streaming_decoder(self):
        yield lambda codes: np.zeros(codes.shape[1] * 1920, np.float32)


def test_silence_stop_waits_for_the_lead(lm, tok):
    prompt = _mid_sentence_prompt(tok)
    sampling = generate.Sampling(seed=0)
    response = generate.respond(lm, tok, _SilentCodec(), prompt, max_s=8.0, sampling=sampling,
                                stop_silence_s=1.2)  # fmt: skip
    assert response.stopped == "silence"
    assert response.audio_s == pytest.approx(tok.text_lead_s + 1.2)  # lead, then 1.2 s quiet
    early = generate.respond(lm, tok, _SilentCodec(), prompt, max_s=8.0, sampling=sampling,
                             stop_silence_s=1.2, silence_from_s=0)  # fmt: skip
    assert early.stopped == "silence" and early.audio_s == pytest.approx(1.2)


def test_continuation_check_keeps_the_prompt_and_gives_back_a_memorised_stream(lm, tok, codec):
    lay = tok.layout
    prompt = _mid_sentence_prompt(tok)
    truth = generate.generate(lm, lay, prompt, 5 * lay.group_len, generate.Sampling.greedy())
    ids = np.concatenate([prompt, truth])  # a stream this model "memorised" (greedily)
    check = generate.continuation_check(lm, tok, codec, ids, prompt_s=4.0, continue_s=2.0)
    assert check["exact_share"] == 1.0
    assert check["response"].prompt_ids == prompt.tolist()  # its text slots are the truth's


def test_chat_reply_writes_the_lead_of_the_unanswered_audio(lm, tok, codec, monkeypatch):
    lay = tok.layout
    opened_s = []
    respond = generate.respond
    monkeypatch.setattr(chat, "respond", lambda *a, **kw: opened_s.append(kw["open_text_s"])
                        or respond(*a, **kw))  # fmt: skip
    session = chat.ChatSession(lm, tok, codec)  # no aligner: the prompt's text slots are pads
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(24_000 * 3) / 24_000)).astype(np.float32)
    said = session.say(tone[: int(24_000 * 2.8)])  # 7 groups
    sampling = generate.Sampling(seed=2)
    first = session.reply(0.8, sampling)
    assert session.ids == first.prompt_ids + first.ids
    before = np.array(said)
    opened = generate.open_text_slots(lay, before, before.size - 5 * lay.group_len)
    after = np.array(first.prompt_ids)
    assert np.array_equal(after[~opened], before[~opened])  # the user's audio is untouched
    assert (after[opened] != lay.text_pad_id).any() and first.lead_text
    assert session.turns[-1]["text"] == first.text and first.text.startswith(first.lead_text)
    # the next question is 0.8 s long: only its own 2 groups open, the earlier stream is kept
    stream = list(session.ids)
    session.say(tone[: 24_000 * 8 // 10])
    second = session.reply(0.8, sampling)
    assert second.prompt_ids[: len(stream)] == stream
    # a reply right after a reply continues the model's own text as it is
    third_prompt = list(session.ids)
    assert session.reply(0.4, sampling).prompt_ids == third_prompt
    assert opened_s == pytest.approx([tok.text_lead_s, 0.8, 0.0])
    session.continue_from(said)  # a tokenized stream's text slots are complete already
    session.reply(0.4, sampling)
    assert opened_s[-1] == 0.0


def test_an_lm_without_a_sliding_window_gets_a_bounded_one(tiny_models, tok, tmp_path):
    """Mistral-7B-v0.3 has ``sliding_window: null``: chat loads it with an attention window of
    its own, so the KV cache stops growing past it."""
    import json
    import shutil

    plain = tmp_path / "no-window"
    shutil.copytree(tiny_models.lm, plain)
    config = json.loads((plain / "config.json").read_text())
    config["sliding_window"] = None
    (plain / "config.json").write_text(json.dumps(config))
    models = tiny_models.replace(lm=str(plain), chosen=("lm",))
    start = [tok.layout.text_pad_id] * tok.layout.group_len
    lengths = {}
    for window in (None, 110):
        model = build_speech_lm(models, tok.layout, attention_window=window).eval()
        stats = {}
        out = list(generate.stream_tokens(model, tok.layout, start, 300, generate.Sampling(seed=0),
                                          stats=stats))  # fmt: skip
        assert len(out) == 300
        lengths[window] = stats["cache_len"]
    assert lengths[None] == 22 + 300 - 1  # unbounded: every position stays
    assert lengths[110] <= 110  # bounded by the window it was given


def _long_prompt(tok, frames=70, seed=0):
    codes = np.random.default_rng(seed).integers(0, 2048, (4, frames))
    return tok.encode(codes, []).ids  # 14 groups = 308 tokens > the 256 window


@pytest.mark.parametrize("decode", ["static", "compiled"])
def test_fast_decode_gives_the_eager_tokens_past_the_window(lm, tok, decode):
    """The ring-cache decoder (and its compiled step) continue a prompt longer than the sliding
    window exactly as transformers' own forward does, greedy, and with the text boundary open
    (runs of fixed ids between sampled ones go through in one pass)."""
    lay = tok.layout
    prompt = _long_prompt(tok)
    window = lm.config.sliding_window
    assert prompt.size > window
    n = 2 * window  # the ring wraps around twice
    eager = generate.generate(lm, lay, prompt, n, generate.Sampling.greedy())
    stats = {}
    fast = list(generate.stream_tokens(lm, lay, prompt, n, generate.Sampling.greedy(),
                                       stats=stats, decode=decode))  # fmt: skip
    assert fast == eager
    assert stats["cache_len"] == window  # the ring holds exactly the window
    if decode == "compiled":  # really compiled, not fallen back to the eager step
        fast_decoder = generate.fast_decoder(lm)
        assert fast_decoder.compiled and fast_decoder.compiled_step not in (None, False)
    open_from = prompt.size - 5 * lay.group_len
    sampling = generate.Sampling(0.9, 0.9, 50, 50, seed=5)
    runs = [list(generate.stream_tokens(lm, lay, prompt, 44, sampling, open_text_from=open_from,
                                        decode=d)) for d in ("eager", decode)]  # fmt: skip
    assert runs[0] == runs[1]
    short = prompt[:44]  # a prompt inside the window: the ring fills before it wraps
    assert generate.generate(lm, lay, short, 300, generate.Sampling.greedy(), decode=decode) \
        == generate.generate(lm, lay, short, 300, generate.Sampling.greedy())  # fmt: skip


def test_fast_decoder_is_made_once_per_model_and_serves_one_stream(lm, tok):
    a = generate.fast_decoder(lm)
    first = a.begin()
    a.feed(_long_prompt(tok)[:30], first)
    b = generate.fast_decoder(lm)
    assert b is a  # one ring per model, for compiled and uncompiled streams alike
    second = b.begin()
    assert b.length == 0 and b.cache_len == 0
    with pytest.raises(RuntimeError, match="another stream"):
        a.feed([5], first)  # the first stream was overtaken: refused, not silently wrong
    assert generate.pick_decode("auto", "cpu") == "eager"
    assert generate.pick_decode("auto", "cuda") == "compiled"
    with pytest.raises(ValueError, match="choose"):
        generate.pick_decode("fast", "cpu")
    b.feed([5], second)


def test_a_failing_compilation_falls_back_with_a_warning(lm, tok, monkeypatch):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    decoder = generate.FastDecoder(lm)
    stream = decoder.begin(compiled=True)
    prompt = _long_prompt(tok)[:44]
    with pytest.warns(UserWarning, match="no compiler here"):
        first = decoder.feed(prompt[:-1], stream), decoder.feed(prompt[-1:], stream)
    reference = generate.FastDecoder(lm)
    stream = reference.begin()
    expected = reference.feed(prompt[:-1], stream), reference.feed(prompt[-1:], stream)
    assert torch.equal(first[1], expected[1])


def test_fast_decoder_in_bf16_agrees_up_to_rounding(tiny_models, tok):
    """In bf16 (a GPU's dtype) the ring decoder computes what transformers computes, up to
    bf16 rounding: the last hidden state after a prompt longer than the window."""
    model = build_speech_lm(tiny_models, tok.layout, dtype=torch.bfloat16, upcast=False).eval()
    prompt = torch.as_tensor(_long_prompt(tok)[:300])
    with torch.no_grad():
        out = generate.core_model_output(model, prompt)
    decoder = generate.FastDecoder(model)
    stream = decoder.begin()
    decoder.feed(prompt[:-1], stream)
    fast = decoder.feed(prompt[-1:], stream).float()
    assert torch.allclose(fast, out.float(), rtol=0.05, atol=0.05)
    assert torch.nn.functional.cosine_similarity(fast, out.float(), dim=0) > 0.999


def test_fast_decode_refuses_an_lm_without_a_window(tiny_models, tok, tmp_path):
    import json
    import shutil

    plain = tmp_path / "no-window"
    shutil.copytree(tiny_models.lm, plain)
    config = json.loads((plain / "config.json").read_text())
    config["sliding_window"] = None
    (plain / "config.json").write_text(json.dumps(config))
    model = build_speech_lm(tiny_models.replace(lm=str(plain), chosen=("lm",)), tok.layout)
    with pytest.raises(ValueError, match="attention window"):
        generate.FastDecoder(model)
    assert generate.FastDecoder(model, window=64).window == 64


def test_explain_step_picks_what_generation_picks(lm, tok):
    prompt = _long_prompt(tok)[:89]  # the next position is a text slot
    step = generate.explain_step(lm, tok, prompt, top=3)
    first = generate.generate(lm, tok.layout, prompt, 1, generate.Sampling.greedy())[0]
    assert step["picked"] == first == step["candidates"][0]["id"]
    assert step["kind"].startswith("text") and step["allowed_rows"] == 32_001
    probs = [c["probability"] for c in step["candidates"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    audio_at = int(np.flatnonzero(tok.layout.kinds(120) > 0)[-1])  # an audio slot
    audio = generate.explain_step(lm, tok, _long_prompt(tok)[:audio_at])
    assert audio["allowed_rows"] == 2048 and "codebook" in audio["picked_means"]


def test_group_timeline_times_every_group(lm, tok, codec):
    timeline = generate.group_timeline(lm, tok, codec, _long_prompt(tok)[:88], max_s=1.2,
                                       decode="static")  # fmt: skip
    groups = timeline["groups"]
    assert [g["group"] for g in groups] == [0, 1, 2]
    assert [g["audio_end_s"] for g in groups] == pytest.approx([0.4, 0.8, 1.2])
    walls = [g["wall_s"] for g in groups]
    assert walls == sorted(walls) and timeline["first_audio_s"] <= walls[0] + 1e-6
    assert timeline["realtime_factor"] > 0


def test_a_dropped_model_frees_its_weights_after_fast_decoding(tiny_models, tok):
    """The decoder kept on the model must not hold it in a reference cycle: on a GPU a
    re-run notebook cell would load a second 7B before the first one's 14 GB are freed."""
    import gc
    import weakref

    model = build_speech_lm(tiny_models, tok.layout, upcast=False).eval()
    generate.generate(model, tok.layout, _long_prompt(tok)[:44], 3, decode="static")
    weights = weakref.ref(model.model)
    gc.disable()
    try:
        del model
        assert weights() is None  # freed by reference counting, no collector needed
    finally:
        gc.enable()


def test_duplex_generation_forces_the_users_stream_and_samples_the_rest(tiny_models,
                                                                        text_tokenizer):
    tok = SpeechTokenizer(text_tokenizer, user_codebooks=1)
    lay = tok.layout
    torch.manual_seed(0)
    lm = build_speech_lm(tiny_models, lay).eval()
    rng = np.random.default_rng(3)
    prompt = tok.encode(rng.integers(0, 2048, (4, 10)), [], rng.integers(0, 2048, (1, 10))).ids
    user = [rng.integers(0, 2048, (1, 5)) for _ in range(8)]  # 2 + 8 groups of 27 tokens:
    assert (2 + 8) * lay.group_len > lm.config.sliding_window  # past the window (256)
    runs = {}
    for decode in ("eager", "static", "compiled"):
        groups = list(generate.duplex_tokens(lm, lay, prompt, iter(user), Sampling.greedy(),
                                             decode=decode))  # fmt: skip
        if decode == "compiled":  # the forced codes' short passes ran compiled too
            assert generate.fast_decoder(lm).compiled_run not in (None, False)
        assert [g["group"] for g in groups] == list(range(2, 10))  # the input's groups, then stop
        ids = np.concatenate([g["ids"] for g in groups])
        assert (lay.kinds_of_ids(ids) == lay.kinds(ids.size, prompt.size)).all()
        _, codes, heard = tok.decode_streams(ids)
        assert (heard == np.concatenate(user, axis=1)).all()  # the input, exactly
        assert codes.shape == (4, 40)
        runs[decode] = ids
    assert (runs["eager"] == runs["static"]).all() and (runs["eager"] == runs["compiled"]).all()
    with pytest.raises(ValueError, match="duplex layout"):
        next(generate.duplex_tokens(lm, SpeechTokenizer(text_tokenizer).layout, prompt, user))
