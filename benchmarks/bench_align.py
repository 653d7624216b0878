"""Stage 03's word times on real Whisper weights: the demo podcast's episodes transcribed and
timed by `align.Aligner`, against their true word times, plus the aligner's realtime factor.

    python benchmarks/bench_align.py [--whisper PATH] [--chunk-s 20] [--tuned-heads base]

PATH is an openai-whisper checkpoint file (default: $SPEECHLM_TEST_WHISPER), e.g. the real
"base" model built by `real-whisper-base/build`; the tiny profile's random Whisper makes these
numbers meaningless. Rows:
- chunks: each episode cut into ``--chunk-s`` pieces and aligned in one batch, as stage 03
  does with scraped chunks (decode, then DTW per piece); words moved to the episode's timeline;
- whole episode: the episode (53-60 s, over Whisper's 30 s window) in one call, which falls
  back to ``whisper.transcribe``;
- forced: the true text of each chunk forced through Whisper's DTW (`attention_map`): timing
  alone, no transcription.
A checkpoint loaded by path uses Whisper's default alignment heads (all heads of the decoder's
last half); ``--tuned-heads NAME`` adds the rows again with the tuned set whisper picks when it
loads NAME by name (as the full profile does). Word-start errors |predicted - true| are over
the true words the transcript matched in order (median, p90, and the share within 80 ms, one
Mimi frame, and 400 ms, one group of the token layout); bias is the median signed error
(negative: early); WER uses Whisper's English text normaliser. Timings share the CPU with
whatever else runs.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from speechlm_utils.align import Aligner, attention_map, word_error_rate, word_start_errors
from speechlm_utils.audio import WHISPER_SAMPLE_RATE_HZ as SR
from speechlm_utils.audio import load_audio
from speechlm_utils.captions import parse_file, split_by_chunks
from speechlm_utils.config import ModelsConfig, demo_dir
from speechlm_utils.words import Word

WHISPER_ENV = "SPEECHLM_TEST_WHISPER"
MIMI_FRAME_MS = 80.0
GROUP_MS = 400.0


def demo_episodes() -> list[tuple[str, np.ndarray, list[Word]]]:
    """Each demo episode's name, ``[T]`` 16 kHz audio and true words."""
    media = [p for p in sorted(demo_dir().glob("demo_ep_*.*")) if p.suffix in (".webm", ".m4a")]
    return [(p.stem, load_audio(p, SR), parse_file(p.with_suffix(".json"))) for p in media]


def chunk_starts_s(wav: np.ndarray, chunk_s: float) -> list[float]:
    return [float(s) for s in np.arange(0.0, wav.size / SR, chunk_s)]


def pieces(wav: np.ndarray, starts_s: list[float], chunk_s: float) -> list[np.ndarray]:
    return [wav[round(s * SR) : round((s + chunk_s) * SR)] for s in starts_s]


def transcribe_chunks(aligner: Aligner, wav: np.ndarray, chunk_s: float) -> list[Word]:
    """Stage 03's path: the chunks aligned in one batch, words on the episode's timeline."""
    starts = chunk_starts_s(wav, chunk_s)
    per_chunk = aligner.align(pieces(wav, starts, chunk_s))
    return [w.shifted(s) for s, words in zip(starts, per_chunk) for w in words]


def transcribe_whole(aligner: Aligner, wav: np.ndarray, chunk_s: float) -> list[Word]:
    return aligner.align([wav])[0]


def force_chunks(aligner: Aligner, wav: np.ndarray, chunk_s: float,
                 truth: list[Word]) -> list[Word]:  # fmt: skip
    """The true text of each chunk forced through Whisper's DTW, on the episode's timeline."""
    starts = chunk_starts_s(wav, chunk_s)
    out = []
    for s, piece, words in zip(starts, pieces(wav, starts, chunk_s),
                               split_by_chunks(truth, starts, wav.size / SR)):  # fmt: skip
        if words:
            text = " ".join(w.text.strip() for w in words)
            out += [w.shifted(s) for w in attention_map(aligner, piece, text).words]
    return out


def measure(way: str, aligner: Aligner, episodes, chunk_s: float) -> dict:
    """One row: word-start errors, matched share and WER over all episodes, and speed."""
    errors, predicted_all, truth_all, wall_s = [], [], [], 0.0
    for _, wav, truth in episodes:
        t0 = time.perf_counter()
        if way == "forced":
            predicted = force_chunks(aligner, wav, chunk_s, truth)
        else:
            predicted = (transcribe_chunks if way == "chunks" else transcribe_whole)(
                aligner, wav, chunk_s
            )
        wall_s += time.perf_counter() - t0
        errors.append(word_start_errors(predicted, truth)["errors_ms"])
        predicted_all += predicted
        truth_all += truth
    signed = np.concatenate(errors)
    err = np.abs(signed)
    audio_s = sum(wav.size for _, wav, _ in episodes) / SR
    return {"median_ms": float(np.median(err)), "bias_ms": float(np.median(signed)),
            "p90_ms": float(np.percentile(err, 90)),
            "within_frame": float((err <= MIMI_FRAME_MS).mean()),
            "within_group": float((err <= GROUP_MS).mean()),
            "matched": err.size / len(truth_all),
            "wer": None if way == "forced" else word_error_rate(predicted_all, truth_all),
            "wall_s": wall_s, "realtime": audio_s / wall_s}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--whisper", default=os.environ.get(WHISPER_ENV),
                        help=f"openai-whisper checkpoint file (default: ${WHISPER_ENV})")
    parser.add_argument("--chunk-s", type=float, default=20.0, help="stage 03's chunk length")
    parser.add_argument("--tuned-heads", default=None,
                        help="also measure with whisper's tuned alignment heads of this model")
    args = parser.parse_args()
    if not args.whisper or not Path(args.whisper).is_file():
        # checked here: the tiny profile would otherwise build a random Whisper at that path
        parser.error(f"--whisper {args.whisper!r} is not a checkpoint file: build the real base "
                     f"model (real-whisper-base/build OUT.pt), pass it or set ${WHISPER_ENV}")
    import torch
    import whisper

    models = ModelsConfig.from_profile("tiny", whisper=str(Path(args.whisper).resolve()))
    aligner = Aligner.load(models, "cpu")
    episodes = demo_episodes()
    audio_s = sum(wav.size for _, wav, _ in episodes) / SR
    aligner.align([episodes[0][1][: 5 * SR]])  # warm-up: the first call pays one-off costs
    heads = [("default", None)]
    if args.tuned_heads:
        heads.append((f"tuned ({args.tuned_heads})", whisper._ALIGNMENT_HEADS[args.tuned_heads]))
    rows = []
    for head_name, tuned in heads:
        if tuned is not None:
            aligner.model.set_alignment_heads(tuned)
        for way, label in (("chunks", f"{args.chunk_s:g} s chunks, batched (stage 03)"),
                           ("whole", "whole episode (whisper.transcribe)"),
                           ("forced", f"true text forced, {args.chunk_s:g} s chunks")):  # fmt: skip
            rows.append({"way": label, "heads": head_name,
                         **measure(way, aligner, episodes, args.chunk_s)})  # fmt: skip
    n_words = sum(len(t) for _, _, t in episodes)
    print(f"{Path(args.whisper).name} on the demo podcast: {len(episodes)} episodes, "
          f"{audio_s:.0f} s, {n_words} true words; CPU, {torch.get_num_threads()} threads\n")
    print("| way | heads | median | p90 | bias | within 80 ms | within 400 ms | words matched | "
          "WER | audio s per wall s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        wer = "—" if r["wer"] is None else f"{r['wer']:.1%}"
        print(f"| {r['way']} | {r['heads']} | {r['median_ms']:.0f} ms | {r['p90_ms']:.0f} ms | "
              f"{r['bias_ms']:+.0f} ms | "
              f"{r['within_frame']:.1%} | {r['within_group']:.1%} | {r['matched']:.1%} | {wer} | "
              f"{r['realtime']:.1f} |")


if __name__ == "__main__":
    main()
