"""Stage 06: constrained generation, KV cache, rolling window, streaming, and the chat widget."""

import numpy as np
import pytest
import torch

from speechlm_utils import chat, generate
from speechlm_utils.audio import MIMI_SAMPLE_RATE_HZ, ffmpeg_exe, load_audio
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
    sampling = generate.Sampling(1.0, 1.0, top_k=0, top_p=0.95, seed=seed,
                                 audio_repetition_penalty=1.3)  # fmt: skip
    out = np.array(generate.generate(lm, tok.layout, prompt, 66 + seed, sampling))
    kinds = tok.layout.kinds(out.size, start=prompt.numel())
    assert np.array_equal(kinds, tok.layout.kinds_of_ids(out))
    full = np.concatenate([prompt.numpy(), out])
    text, codes = tok.decode(full)  # every output decodes
    assert codes.shape[0] == 4 and codes.min() >= 0 and codes.max() < 2048


def test_cached_equals_uncached_past_the_sliding_window(lm, tok, prompt):
    window = lm.config.sliding_window
    n = window + 60  # goes well past the window
    sampling = generate.Sampling(0.9, 0.9, top_k=50, seed=7)
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
