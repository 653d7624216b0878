"""Mimi, kyutai's neural audio codec: 24 kHz audio <-> 12.5 frames/s of discrete codes.

Mimi compresses each 80 ms frame with a split residual vector quantizer (RVQ): codebook 0 holds
the *semantic* code (distilled from a speech model, a quantizer of its own), codebooks 1..7 the
*acoustic* detail, each one quantizing what the previous ones left over (`rvq_residuals`
measures it); the decoder sums both. We keep the first K (default 4).

Mimi is causal, so a long recording is encoded as a stream: `StreamEncoder` feeds it 400 ms
(one group of frames) at a time with Mimi's streaming state carried over, several recordings
side by side in one batch, each lane reset on its own when a new recording starts. Steps of one
group match Mimi's one-pass encode (up to float near-ties); much longer steps do not, because
the encoder transformer's streaming cache then drops part of its 250-step context.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from .audio import MIMI_FRAME_SAMPLES, MIMI_SAMPLE_RATE_HZ
from .checkpoints import load_mimi
from .config import ModelsConfig

CODEBOOK_SIZE = 2048  # codes per Mimi codebook
MAX_CODEBOOKS = 8  # Mimi is trained with 8 (of 32 in the checkpoint) for Moshi


def frames_for(num_samples: int) -> int:
    """Mimi frames covering ``num_samples`` at 24 kHz (a partial frame counts as one)."""
    return math.ceil(num_samples / MIMI_FRAME_SAMPLES)


class Codec:
    """Batched Mimi encode/decode with K codebooks, plus frame-by-frame streaming decode."""

    def __init__(self, mimi, num_codebooks: int = 4, device: str = "cpu"):
        if not 1 <= num_codebooks <= MAX_CODEBOOKS:
            raise ValueError(f"num_codebooks must be 1..{MAX_CODEBOOKS}, got {num_codebooks}")
        self.mimi, self.num_codebooks, self.device = mimi, num_codebooks, device
        self.mimi.set_num_codebooks(num_codebooks)
        self.sample_rate_hz = MIMI_SAMPLE_RATE_HZ
        self.frame_samples = MIMI_FRAME_SAMPLES

    @classmethod
    def load(cls, models: ModelsConfig, num_codebooks: int = 4, device: str = "cpu") -> Codec:
        return cls(load_mimi(models, device=device, num_codebooks=MAX_CODEBOOKS),
                   num_codebooks, device)  # fmt: skip

    def set_num_codebooks(self, num_codebooks: int) -> None:
        """Change K in place (e.g. to hear 1, 2, 4 or 8 codebooks)."""
        self.mimi.set_num_codebooks(num_codebooks)
        self.num_codebooks = num_codebooks

    @torch.no_grad()
    def encode(self, wav: torch.Tensor, lengths: list[int] | None = None) -> list[torch.Tensor]:
        """``wav[B, 1, T]`` at 24 kHz (zero-padded) -> one ``codes[K, F_i]`` per item.

        ``lengths`` are the true sample counts; item i keeps ``ceil(len_i / 1920)`` frames.
        Mimi is causal, so the padding after an item never changes its codes.
        """
        wav = wav.to(self.device, torch.float32)
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise ValueError(f"expected wav [B, 1, T], got {tuple(wav.shape)}")
        lengths = lengths or [wav.shape[-1]] * wav.shape[0]
        pad = (-wav.shape[-1]) % self.frame_samples
        if pad:
            wav = torch.nn.functional.pad(wav, (0, pad))
        codes = self.mimi.encode(wav)  # [B, K, F]
        return [codes[i, :, : frames_for(n)].cpu() for i, n in enumerate(lengths)]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes[B, K, F]`` (or ``[K, F]``) -> ``wav[B, 1, F * 1920]`` at 24 kHz."""
        if codes.dim() == 2:
            codes = codes[None]
        return self.mimi.decode(codes.to(self.device, torch.long)).float().cpu()

    @torch.no_grad()
    def decode_stream(self, frames: Iterator[torch.Tensor]) -> Iterator[np.ndarray]:
        """Decode frame by frame with Mimi's streaming state: each ``codes[K]`` or ``[K, n]``
        yields its 80 ms (x n) of audio as soon as it is given. ``[T]`` float32 per step."""
        with self.mimi.streaming(batch_size=1):
            for codes in frames:
                yield self._decode_step(codes)

    def _decode_step(self, codes) -> np.ndarray:
        codes = torch.as_tensor(codes).reshape(self.num_codebooks, -1)[None]
        return self.mimi.decode(codes.to(self.device, torch.long))[0, 0].float().cpu().numpy()

    @contextmanager
    def stream_encoder(self, batch_size: int = 1, step_frames: int = 5) -> Iterator[StreamEncoder]:
        """A context yielding a `StreamEncoder` over ``batch_size`` lanes."""
        with torch.no_grad(), self.mimi.streaming(batch_size=batch_size):
            yield StreamEncoder(self, batch_size, step_frames)

    def encode_stream(self, wav: np.ndarray, step_frames: int = 5) -> torch.Tensor:
        """One ``[T]`` 24 kHz waveform, zero-padded to whole steps, encoded as a stream (the way
        stage 03 encodes videos) -> ``codes[K, ceil(T / 1920)]``."""
        step = step_frames * self.frame_samples
        padded = max(step, math.ceil(wav.size / step) * step)
        x = torch.zeros(1, 1, padded)
        x[0, 0, : wav.size] = torch.from_numpy(np.asarray(wav, dtype=np.float32))
        with self.stream_encoder(1, step_frames) as encoder:
            codes = encoder.encode(x)
        return codes[0, :, : frames_for(wav.size)]

    @contextmanager
    def streaming_decoder(self):
        """A context yielding ``decode(codes[K, n]) -> audio[n * 1920]`` that keeps Mimi's
        streaming state between calls (for audio that arrives group by group)."""
        with torch.no_grad(), self.mimi.streaming(batch_size=1):
            yield self._decode_step


@contextmanager
def small_steps(device) -> Iterator[None]:
    """One CPU thread for Mimi's 400 ms streaming steps: they are small operations, and with
    two threads they ran 15x slower when another process competed for the cores."""
    threads = torch.get_num_threads()
    if str(device) == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class StreamEncoder:
    """Mimi's streaming encoder over ``batch_size`` lanes (see the module doc)."""

    def __init__(self, codec: Codec, batch_size: int, step_frames: int):
        self.codec, self.batch_size = codec, batch_size
        self.step_samples = step_frames * codec.frame_samples

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav[B, 1, T]`` (T a multiple of the step), continuing each lane's stream ->
        ``codes[B, K, T / 1920]`` on the CPU."""
        if wav.dim() != 3 or wav.shape[0] != self.batch_size or wav.shape[-1] % self.step_samples:
            raise ValueError(f"expected wav [{self.batch_size}, 1, n * {self.step_samples}], "
                             f"got {tuple(wav.shape)}")  # fmt: skip
        wav = wav.to(self.codec.device, torch.float32)
        with small_steps(self.codec.device):
            steps = [self.codec.mimi.encode(wav[..., i : i + self.step_samples])
                     for i in range(0, wav.shape[-1], self.step_samples)]  # fmt: skip
        return torch.cat(steps, dim=-1).cpu()

    def reset(self, lanes: list[int]) -> None:
        """Start fresh streams in ``lanes`` (the others keep their state)."""
        if lanes:
            mask = torch.zeros(self.batch_size, dtype=torch.bool)
            mask[lanes] = True
            self.codec.mimi.reset_streaming(mask)


@dataclass
class RVQResiduals:
    """What Mimi's quantizer leaves of one recording's latent, for K = 1, 2, ... codebooks."""

    codebooks: list[int]  # K = 1 .. max_codebooks
    latent: list[float]  # ||z - z_hat_K|| / ||z||: how far the decoder's input is from z
    acoustic: list[float]  # the acoustic RVQ's residual after codebooks 1..K-1 (1.0 at K = 1)
    semantic: float  # codebook 0's residual of its own input (a one-level quantizer of its own)


@torch.no_grad()
def rvq_residuals(codec: Codec, wav: np.ndarray,
                  max_codebooks: int = MAX_CODEBOOKS) -> RVQResiduals:  # fmt: skip
    """Quantize a ``[T]`` 24 kHz waveform's latent ``z[1, 512, F]`` with 1..``max_codebooks``
    codebooks through Mimi's own quantizer modules, and measure what each K leaves.

    Mimi's quantizer is split: codebook 0 quantizes its own projection of z (semantic), and
    codebooks 1.. are a residual VQ over another projection: each picks the code nearest to
    what the ones before it left. The decoder gets back the sum of both halves, projected.
    """
    first, rest = codec.mimi.quantizer.rvq_first, codec.mimi.quantizer.rvq_rest
    if not 1 <= max_codebooks <= 1 + len(rest.vq.layers):
        raise ValueError(f"max_codebooks must be 1..{1 + len(rest.vq.layers)}, got {max_codebooks}")
    x = torch.as_tensor(np.asarray(wav, dtype=np.float32)).reshape(1, 1, -1).to(codec.device)
    z = codec.mimi.encode_to_latent(x, quantize=False)  # [1, 512, F], before quantization
    sem_in = first.input_proj(z)
    sem_q = first.vq.layers[0].decode(first.vq.layers[0].encode(sem_in))
    out = RVQResiduals([], [], [], _relative(sem_in - sem_q, sem_in))
    residual = acoustic_in = rest.input_proj(z)  # [1, 256, F]
    acoustic_q = torch.zeros_like(acoustic_in)
    for k in range(max_codebooks):
        if k:  # one residual step: quantize what is left, take it away
            layer = rest.vq.layers[k - 1]
            step = layer.decode(layer.encode(residual))
            residual, acoustic_q = residual - step, acoustic_q + step
        z_hat = first.output_proj(sem_q) + (rest.output_proj(acoustic_q) if k else 0)
        out.codebooks.append(k + 1)
        out.latent.append(_relative(z - z_hat, z))
        out.acoustic.append(_relative(residual, acoustic_in))
    return out


def _relative(diff: torch.Tensor, ref: torch.Tensor) -> float:
    """``||diff|| / ||ref||`` as a float."""
    return float(diff.norm() / ref.norm().clamp_min(1e-12))
