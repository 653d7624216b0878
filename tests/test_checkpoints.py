"""Each tiny checkpoint loads through the loader the full profile uses, and runs."""

import torch

from speechlm_utils import checkpoints
from speechlm_utils.audio import MIMI_SAMPLE_RATE_HZ


def test_mimi_encodes_one_second_to_13_frames_of_varying_codes(tiny_models):
    mimi = checkpoints.load_mimi(tiny_models, num_codebooks=4)  # via loaders.get_mimi(path)
    torch.manual_seed(0)
    t = torch.arange(MIMI_SAMPLE_RATE_HZ) / MIMI_SAMPLE_RATE_HZ
    chirp = 0.3 * torch.sin(2 * torch.pi * (200 + 1500 * t) * t)
    noise = 0.1 * torch.randn(MIMI_SAMPLE_RATE_HZ)
    with torch.no_grad():
        codes = mimi.encode(torch.stack([chirp, noise])[:, None])
    assert codes.shape == (2, 4, 13)
    assert codes.min() >= 0 and codes.max() < 2048
    for k in range(4):  # codes change over time and with the input, in every codebook
        assert len(set(codes[0, k].tolist())) > 3
        assert not torch.equal(codes[0, k], codes[1, k])
    with torch.no_grad():
        wav = mimi.decode(codes)
    assert wav.shape == (2, 1, 13 * 1920) and torch.isfinite(wav).all()


def test_whisper_loads_from_file_and_decodes(tiny_models):
    import whisper

    model = checkpoints.load_whisper(tiny_models)  # via whisper.load_model(path)
    assert model.dims.n_audio_state == checkpoints.TINY_WHISPER["n_audio_state"]
    assert not model.is_multilingual
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(0.1 * torch.randn(16_000)))
    result = whisper.decode(model, mel, whisper.DecodingOptions(language="en", fp16=False))
    assert isinstance(result, whisper.DecodingResult)
    assert len(result.tokens) > 0 and isinstance(result.text, str)


def test_mistral_gives_logits_over_the_real_vocabulary(tiny_models):
    lm = checkpoints.load_lm(tiny_models)  # via MistralForCausalLM.from_pretrained(dir)
    sp = checkpoints.load_text_tokenizer(tiny_models)
    assert sp.get_piece_size() == 32_000  # Mistral-7B-v0.1's tokenizer, from the wheel
    assert sp.encode("Hello world", out_type=str) == ["▁Hello", "▁world"]
    ids = torch.tensor([[sp.bos_id(), *sp.encode("Hello world")]])
    with torch.no_grad():
        logits = lm(ids).logits
    assert logits.shape == (1, 3, 32_000)
    assert lm.config.sliding_window == checkpoints.TINY_MISTRAL["sliding_window"]
    assert lm.config.num_hidden_layers == checkpoints.TINY_MISTRAL["num_hidden_layers"]


def test_building_is_idempotent(tiny_models):
    paths = checkpoints.ensure_tiny_checkpoints(tiny_models)
    before = {k: p.stat().st_mtime_ns for k, p in paths.items()}
    again = checkpoints.ensure_tiny_checkpoints(tiny_models)
    assert {k: p.stat().st_mtime_ns for k, p in again.items()} == before


def test_missing_tokenizer_in_a_local_dir_is_a_clear_error(tmp_path):
    import pytest

    from speechlm_utils.config import ModelsConfig

    models = ModelsConfig.from_profile("full", lm=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        checkpoints.text_tokenizer_file(models)
