"""Word timestamps: openai-whisper's transcription with cross-attention DTW alignment.

Chunks up to 30 s (Whisper's window) are decoded in one batch (``whisper.decode`` on stacked
log-mel spectrograms); each item's words are then timed by Whisper's own DTW over its
alignment heads' cross-attention (``whisper.timing.add_word_timestamps``). Longer audio falls
back to ``whisper.transcribe`` one file at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .audio import WHISPER_SAMPLE_RATE_HZ
from .checkpoints import load_whisper
from .config import ModelsConfig
from .words import Word

WHISPER_WINDOW_S = 30.0  # Whisper always sees 30 s (padded)
MAX_TEXT_TOKENS_PER_S = 7  # generous for speech (~3-5/s); caps runaway repetition


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


@dataclass
class AttentionMap:
    """What Whisper's DTW aligned: the cross-attention matrix and the path through it."""

    matrix: np.ndarray  # [text tokens, audio frames]: normalised alignment-head attention
    path: tuple[np.ndarray, np.ndarray]  # (token index, frame index) along the DTW path
    tokens: list[str]  # each text token, as text
    words: list[Word]  # the words with the times the path gives them
    rows: list[tuple[int, int]] = field(default_factory=list)  # each word's (first row, n rows)
    frames_per_s: float = 50.0  # Whisper's encoder frames per second


@torch.no_grad()
def attention_map(aligner: Aligner, wav16: np.ndarray, text: str | None = None) -> AttentionMap:
    """Whisper's alignment for one chunk of at most 30 s: transcribe it (or force-align a given
    ``text``, e.g. a true transcript), capture the alignment heads' cross-attention, and run
    the same DTW as ``whisper.timing.find_alignment`` does, keeping the matrix and the path."""
    import whisper
    from whisper.audio import HOP_LENGTH, N_FRAMES
    from whisper.timing import dtw, median_filter

    model, tok = aligner.model, aligner.tokenizer
    device = next(model.parameters()).device
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(wav16)),
                                      model.dims.n_mels).to(device)  # fmt: skip
    num_frames = min(N_FRAMES, wav16.size // HOP_LENGTH)
    if text is None:
        options = whisper.DecodingOptions(language=aligner.language, without_timestamps=True,
                                          fp16=aligner.fp16,
                                          sample_len=int(MAX_TEXT_TOKENS_PER_S * WHISPER_WINDOW_S))
        text_tokens = [t for t in whisper.decode(model, mel, options).tokens if t < tok.eot]
    else:
        text_tokens = tok.encode(" " + text.strip())
    if not text_tokens:
        empty = np.zeros((0, num_frames // 2))
        return AttentionMap(empty, (np.zeros(0, int), np.zeros(0, int)), [], [])
    tokens = torch.tensor([*tok.sot_sequence, tok.no_timestamps, *text_tokens, tok.eot])
    captured = [None] * model.dims.n_text_layer
    hooks = [block.cross_attn.register_forward_hook(
        lambda _m, _i, outs, index=i: captured.__setitem__(index, outs[-1][0]))
        for i, block in enumerate(model.decoder.blocks)]  # fmt: skip
    try:
        from whisper.model import disable_sdpa

        with disable_sdpa():  # the attention weights only exist on the non-fused path
            model(mel[None], tokens[None].to(device))
    finally:
        for hook in hooks:
            hook.remove()
    indices = model.alignment_heads.indices().T
    heads = torch.stack([captured[layer][head] for layer, head in indices])
    weights = heads[:, :, : num_frames // 2].float().softmax(dim=-1)
    std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
    weights = median_filter((weights - mean) / std, 7)
    matrix = weights.mean(0)[len(tok.sot_sequence) : -1].cpu().numpy()  # [text tokens (+1), T]
    text_idx, time_idx = dtw(-torch.from_numpy(matrix).double())
    words, word_tokens = tok.split_to_word_tokens(text_tokens + [tok.eot])
    bounds = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_idx), (1, 0), constant_values=1).astype(bool)
    jump_times = np.clip(time_idx[jumps], 0, None) / 50.0
    timed, rows = [], []
    for w, a, b in zip(words[:-1], bounds[:-2], bounds[1:-1]):
        if w.strip():
            timed.append(Word(w, float(jump_times[a]), float(jump_times[b])))
            rows.append((1 + int(a), int(b - a)))  # row 0 is the no-timestamps token
    pieces = [tok.decode([t]) for t in [tok.no_timestamps, *text_tokens]]
    return AttentionMap(matrix, (text_idx, time_idx), pieces, timed, rows)


def _normalise(text: str) -> str:
    import re

    return re.sub(r"[^\w']+", "", text.lower())


def _summary(errors_ms: np.ndarray, n_truth: int) -> dict:
    abs_ms = np.abs(errors_ms)
    return {"errors_ms": errors_ms, "matched": int(errors_ms.size), "n_truth": n_truth,
            "median_abs_ms": float(np.median(abs_ms)) if abs_ms.size else None,
            "p90_abs_ms": float(np.percentile(abs_ms, 90)) if abs_ms.size else None}  # fmt: skip


def evaluate_alignment(aligner: Aligner, wavs: list[np.ndarray], truths: list[list[Word]],
                       forced: bool = False) -> dict:  # fmt: skip
    """`word_start_errors` over many chunks: Whisper's own transcription (``forced=False``)
    or the true text forced through its DTW (``forced=True``, times only)."""
    if forced:
        predicted = [attention_map(aligner, w, " ".join(x.text.strip() for x in t)).words
                     for w, t in zip(wavs, truths)]  # fmt: skip
    else:
        predicted = aligner.align(wavs)
    errors = [word_start_errors(p, t)["errors_ms"] for p, t in zip(predicted, truths)]
    return _summary(np.concatenate(errors) if errors else np.zeros(0),
                    sum(len(t) for t in truths))  # fmt: skip


def word_start_errors(predicted: list[Word], truth: list[Word]) -> dict:
    """Start-time error of ``predicted`` against ``truth``, in ms, over the words the two agree
    on (matched in order by their normalised text, so a missed or extra word is skipped).

    Returns ``errors_ms`` (predicted - true, per matched word), ``matched``, ``n_truth``,
    ``median_abs_ms`` and ``p90_abs_ms`` (None when nothing matched).
    """
    from difflib import SequenceMatcher

    a = [_normalise(w.text) for w in predicted]
    b = [_normalise(w.text) for w in truth]
    errors = []
    for block in SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks():
        for k in range(block.size):
            p, t = predicted[block.a + k], truth[block.b + k]
            errors.append(1000.0 * (p.start_s - t.start_s))
    return _summary(np.array(errors), len(truth))


def word_error_rate(predicted: list[Word], truth: list[Word]) -> float:
    """Word error rate of ``predicted`` against ``truth``: (substitutions + deletions +
    insertions) / true words, by Levenshtein distance over the words left by Whisper's English
    text normaliser (case, punctuation, British/American spelling, numbers), as Whisper's own
    WER figures are computed. 0.0 is a perfect transcript; it may exceed 1.0."""
    from whisper.normalizers import EnglishTextNormalizer

    normalise = EnglishTextNormalizer()
    a = normalise(" ".join(w.text for w in predicted)).split()
    b = normalise(" ".join(w.text for w in truth)).split()
    row = np.arange(len(b) + 1)  # edit distance from a[:i] to each prefix of b
    for i, word in enumerate(a, 1):
        prev, row[0] = row.copy(), i
        for j in range(1, len(b) + 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (word != b[j - 1]))
    return float(row[-1]) / max(1, len(b))
