"""Stage 03 benchmark on the demo podcast: throughput in audio seconds per wall second of
(a) Mimi encode alone, (b) Whisper alignment alone, (c) the whole pipeline (DataLoader
workers decoding while the models run), and batched vs per-file Mimi encode.

    python benchmarks/bench_tokenize.py [--profile tiny] [--batch-size 4] [--workers 1]

The tiny profile's models have the real Mimi architecture (so (a) is Mimi's true CPU cost)
and a 2-layer Whisper (so (b) is far cheaper than `small.en`).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from speechlm_utils.align import Aligner
from speechlm_utils.audio import (
    MIMI_FRAME_SAMPLES,
    MIMI_SAMPLE_RATE_HZ,
    WHISPER_SAMPLE_RATE_HZ,
    load_audio,
)
from speechlm_utils.codec import Codec
from speechlm_utils.config import ModelsConfig, TokenizeConfig, demo_dir, pick_device
from speechlm_utils.preprocess import list_chunk_items, run_tokenize
from speechlm_utils.scrape import segment_copy


def demo_chunk_tree(root: Path) -> None:
    for src in sorted(demo_dir().glob("demo_ep_*.json")):
        meta = json.loads(src.read_text())
        media = demo_dir() / meta["media"]
        vid = meta["id"]
        chunks = segment_copy(media, root / vid[:2] / vid, vid, 20.0, media.suffix[1:])
        (root / vid[:2] / vid / "chunks.json").write_text(json.dumps({"id": vid, "chunks": chunks}))


def batches(seq, size):
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    device = pick_device()
    models = ModelsConfig.from_profile(args.profile)
    cfg = TokenizeConfig.from_profile(args.profile, batch_size=args.batch_size,
                                      workers=args.workers)  # fmt: skip
    codec = Codec.load(models, cfg.num_codebooks, device)
    aligner = Aligner.load(models, device)
    with tempfile.TemporaryDirectory() as tmp:
        chunks = Path(tmp) / "chunks"
        demo_chunk_tree(chunks)
        items = [it for it in list_chunk_items(chunks) if it["duration_s"] >= 1.0]
        wav24 = [load_audio(it["path"], MIMI_SAMPLE_RATE_HZ) for it in items]
        wav16 = [load_audio(it["path"], WHISPER_SAMPLE_RATE_HZ) for it in items]
        audio_s = sum(w.size for w in wav24) / MIMI_SAMPLE_RATE_HZ
        group = cfg.frames_per_group * MIMI_FRAME_SAMPLES

        def mimi(batch_size: int) -> float:
            start = time.perf_counter()
            for batch in batches(wav24, batch_size):
                padded = [math.ceil(w.size / group) * group for w in batch]
                x = torch.zeros(len(batch), 1, max(padded))
                for i, w in enumerate(batch):
                    x[i, 0, : w.size] = torch.from_numpy(w)
                codec.encode(x, padded)
            return time.perf_counter() - start

        mimi(args.batch_size)  # warm-up
        mimi_s = mimi(args.batch_size)
        mimi_single_s = mimi(1)
        start = time.perf_counter()
        for batch in batches(wav16, args.batch_size):
            aligner.align(batch)
        whisper_s = time.perf_counter() - start
        summary = run_tokenize(cfg, models, chunks, Path(tmp) / "tokens", device=device,
                               codec=codec, aligner=aligner, progress=False)  # fmt: skip
        assert summary.ok == len(items), summary
        pipe_s = summary.seconds

    rate = {k: audio_s / v for k, v in [("mimi", mimi_s), ("mimi1", mimi_single_s),
                                        ("whisper", whisper_s), ("pipe", pipe_s)]}  # fmt: skip
    serial = 1 / (1 / rate["mimi"] + 1 / rate["whisper"])
    print(f"{len(items)} demo chunks, {audio_s:.0f} s of audio, {args.profile} profile, "
          f"device {device}, batch {args.batch_size}, {args.workers} loader worker(s)\n")
    print("| step | seconds | audio s per wall s |")
    print("|---|---:|---:|")
    print(f"| (a) Mimi encode, batched | {mimi_s:.2f} | {rate['mimi']:.1f} |")
    print(f"| (a') Mimi encode, one file at a time | {mimi_single_s:.2f} | {rate['mimi1']:.1f} |")
    print(f"| (b) Whisper words, batched | {whisper_s:.2f} | {rate['whisper']:.1f} |")
    print(f"| (c) whole pipeline (decode + a + b + write) | {pipe_s:.2f} | {rate['pipe']:.1f} |")
    print(f"\nbatched vs per-file Mimi: {mimi_single_s / mimi_s:.2f}x")
    slower = min(rate["mimi"], rate["whisper"])
    print(f"pipeline vs the slower of (a), (b): {rate['pipe'] / slower:.2f}")
    print(f"pipeline vs (a) then (b) in series: {rate['pipe'] / serial:.2f} "
          "(1.0 = decoding and writing fully hidden)")


if __name__ == "__main__":
    main()
