"""Mimi through `Codec` and Whisper through `Aligner`, on the tiny random checkpoints."""

import numpy as np
import pytest
import torch

from speechlm_utils.audio import MIMI_SAMPLE_RATE_HZ, WHISPER_SAMPLE_RATE_HZ, load_audio
from speechlm_utils.codec import rvq_residuals

from .conftest import DEMO_DIR


def test_batched_encode_equals_per_file_encode(codec):
    torch.manual_seed(0)
    lengths = [24_000 * 3, 24_000 * 2 + 700, 24_000]
    wav = torch.zeros(3, 1, max(lengths))
    for i, n in enumerate(lengths):
        wav[i, 0, :n] = 0.1 * torch.randn(n)
    batched = codec.encode(wav, lengths)
    for i, n in enumerate(lengths):
        alone = codec.encode(wav[i : i + 1, :, :n])[0]
        assert alone.shape == (4, -(-n // 1920))  # any length: a partial frame counts
        assert torch.equal(batched[i], alone)  # padding after an item never changes it


def test_streaming_decode_equals_whole_decode(codec):
    torch.manual_seed(1)
    codes = codec.encode(0.1 * torch.randn(1, 1, 24_000 * 2))[0]
    whole = codec.decode(codes)[0, 0].numpy()
    streamed = np.concatenate(list(codec.decode_stream(iter(codes.T))))
    assert streamed.shape == whole.shape == (codes.shape[1] * 1920,)
    assert np.abs(streamed - whole).max() < 1e-4


def test_fewer_codebooks(codec):
    wav = 0.1 * torch.randn(1, 1, 24_000)
    try:
        codec.set_num_codebooks(2)
        assert codec.encode(wav)[0].shape == (2, 13)
    finally:
        codec.set_num_codebooks(4)
    assert codec.encode(wav)[0].shape == (4, 13)


def test_aligner_words_are_timed_inside_the_audio(aligner):
    wavs = [load_audio(DEMO_DIR / "demo_ep_001.webm", WHISPER_SAMPLE_RATE_HZ)[: 16_000 * n]
            for n in (5, 12)]  # fmt: skip
    results = aligner.align(wavs)
    assert len(results) == 2
    for wav, words in zip(wavs, results):
        duration = wav.size / WHISPER_SAMPLE_RATE_HZ
        starts = [w.start_s for w in words]
        assert starts == sorted(starts)  # the untrained model's words are nonsense, but timed
        for w in words:
            assert 0 <= w.start_s <= w.end_s <= duration and np.isfinite(w.probability)


def test_stream_encoding_in_group_steps_matches_one_pass(codec):
    """Stage 03 encodes a video as a stream, 400 ms at a time: Mimi's one-pass codes up to
    float near-ties (frequent with random weights), while 10 s steps would break its context."""
    wav = load_audio(DEMO_DIR / "demo_ep_001.webm", MIMI_SAMPLE_RATE_HZ)[: 24000 * 16]
    whole = codec.encode(torch.from_numpy(wav)[None, None])[0]
    streamed = codec.encode_stream(wav)
    assert streamed.shape == whole.shape
    assert (streamed == whole).all(0).float().mean() > 0.95
    with codec.stream_encoder(1, step_frames=125) as encoder:  # too long a step
        x = torch.zeros(1, 1, 24000 * 20)
        x[0, 0, : wav.size] = torch.from_numpy(wav)
        coarse = encoder.encode(x)[0, :, : whole.shape[1]]
    assert (coarse == whole).all(0).float().mean() < (streamed == whole).all(0).float().mean()


def test_rvq_residuals_shrink_with_codebooks_and_match_mimis_own_decode(codec):
    wav = load_audio(DEMO_DIR / "demo_ep_001.webm", MIMI_SAMPLE_RATE_HZ)[: 24000 * 4]
    res = rvq_residuals(codec, wav, max_codebooks=8)
    assert res.codebooks == list(range(1, 9))
    assert res.acoustic[0] == 1.0  # K = 1: no acoustic code yet, all of its input is left
    assert all(b <= a + 1e-6 for a, b in zip(res.acoustic, res.acoustic[1:]))
    assert res.acoustic[-1] < 0.5 * res.acoustic[0] and 0 < res.semantic < 1
    assert codec.num_codebooks == 4  # measured without changing the codec's K
    try:  # the latent residual is what Mimi's own encode + decode of K codebooks leaves
        codec.set_num_codebooks(8)
        with torch.no_grad():
            z = codec.mimi.encode_to_latent(torch.from_numpy(wav)[None, None], quantize=False)
            codes = codec.mimi.quantizer.encode(z)
            for k in (1, 4, 8):
                z_hat = codec.mimi.quantizer.decode(codes[:, :k])
                assert abs(float((z - z_hat).norm() / z.norm()) - res.latent[k - 1]) < 1e-4
    finally:
        codec.set_num_codebooks(4)
    with pytest.raises(ValueError, match="max_codebooks"):
        rvq_residuals(codec, wav, max_codebooks=0)
