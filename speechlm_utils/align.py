"""Word timestamps: openai-whisper's transcription with cross-attention DTW alignment.

Chunks up to 30 s (Whisper's window) are decoded in one batch (``whisper.decode`` on stacked
log-mel spectrograms); each item's words are then timed by Whisper's own DTW over its
alignment heads' cross-attention (``whisper.timing.add_word_timestamps``). Longer audio falls
back to ``whisper.transcribe`` one file at a time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from .audio import WHISPER_SAMPLE_RATE_HZ
from .checkpoints import load_whisper
from .config import ModelsConfig

WHISPER_WINDOW_S = 30.0  # Whisper always sees 30 s (padded)
MAX_TEXT_TOKENS_PER_S = 7  # generous for speech (~3-5/s); caps runaway repetition


@dataclass
class Word:
    """One word with its time in the chunk, in seconds."""

    text: str  # as in running text, usually with its leading space: " Hello"
    start_s: float
    end_s: float
    probability: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Word:
        return cls(str(d.get("text", d.get("word", ""))), float(d["start_s"]), float(d["end_s"]),
                   float(d.get("probability", 1.0)))  # fmt: skip


class Aligner:
    """Whisper word timestamps for batches of 16 kHz mono audio."""

    def __init__(self, model, language: str | None = "en"):
        import whisper

        self.model, self.language = model, language
        self.tokenizer = whisper.tokenizer.get_tokenizer(
            model.is_multilingual, num_languages=model.num_languages, language=language,
            task="transcribe",
        )  # fmt: skip
        self.fp16 = next(model.parameters()).device.type == "cuda"

    @classmethod
    def load(cls, models: ModelsConfig, device: str = "cpu", language: str | None = "en"):
        return cls(load_whisper(models, device=device), language)

    @torch.no_grad()
    def align(self, wavs: list[np.ndarray]) -> list[list[Word]]:
        """Words with times for each ``[T]`` float32 16 kHz waveform."""
        results: list[list[Word] | None] = [None] * len(wavs)
        window = WHISPER_WINDOW_S * WHISPER_SAMPLE_RATE_HZ
        short = [i for i, w in enumerate(wavs) if w.size <= window]
        for i in set(range(len(wavs))) - set(short):
            results[i] = self._transcribe_long(wavs[i])
        if short:
            for i, words in zip(short, self._align_batch([wavs[i] for i in short])):
                results[i] = words
        return results  # type: ignore[return-value]

    def _align_batch(self, wavs: list[np.ndarray]) -> list[list[Word]]:
        import whisper
        from whisper.audio import HOP_LENGTH, N_FRAMES
        from whisper.timing import add_word_timestamps

        device = next(self.model.parameters()).device
        mels = torch.stack([
            whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(w)),
                                        self.model.dims.n_mels)
            for w in wavs
        ]).to(device)  # [B, n_mels, 3000]  # fmt: skip
        # One sample_len for every batch, so an item's words never depend on its batch-mates.
        options = whisper.DecodingOptions(
            language=self.language, without_timestamps=True, fp16=self.fp16,
            sample_len=int(MAX_TEXT_TOKENS_PER_S * WHISPER_WINDOW_S),
        )  # fmt: skip
        decoded = whisper.decode(self.model, mels, options)
        out = []
        for wav, mel, result in zip(wavs, mels, decoded):
            num_frames = min(N_FRAMES, wav.size // HOP_LENGTH)
            tokens = [t for t in result.tokens if t < self.tokenizer.eot]
            segment = {"seek": 0, "start": 0.0, "end": wav.size / WHISPER_SAMPLE_RATE_HZ,
                       "tokens": tokens, "text": result.text}  # fmt: skip
            if tokens and num_frames > 0:
                add_word_timestamps(segments=[segment], model=self.model,
                                    tokenizer=self.tokenizer, mel=mel, num_frames=num_frames,
                                    last_speech_timestamp=0.0)  # fmt: skip
            out.append(_words_of([segment], wav.size / WHISPER_SAMPLE_RATE_HZ))
        return out

    def _transcribe_long(self, wav: np.ndarray) -> list[Word]:
        import whisper

        result = whisper.transcribe(self.model, wav, language=self.language,
                                    word_timestamps=True, fp16=self.fp16,
                                    condition_on_previous_text=False, verbose=None)  # fmt: skip
        return _words_of(result["segments"], wav.size / WHISPER_SAMPLE_RATE_HZ)


def _words_of(segments: list[dict], duration_s: float) -> list[Word]:
    """Whisper's words, with times clamped into the audio and kept in order (DTW can place a
    word a frame before 0 or past the end; an untrained model can place it anywhere)."""
    words, last_start = [], 0.0
    for segment in segments:
        for w in segment.get("words", []):
            if not w["word"].strip():
                continue
            start = min(max(float(w["start"]), last_start), duration_s)
            end = min(max(float(w["end"]), start), duration_s)
            prob = float(w.get("probability", 1.0))
            words.append(Word(w["word"], start, end, prob if np.isfinite(prob) else 0.0))
            last_start = start
    return words
