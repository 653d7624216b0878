"""Stage 03 benchmark on the demo podcast: throughput in audio seconds per wall second of
(a) Mimi encode alone, one pass per episode, and as the pipeline runs it: a stream in 400 ms
steps, one video at a time (CPU) or three side by side (GPU lanes); (b) Whisper alignment
alone; (c) the whole pipeline (decoding threads, Mimi streams, Whisper, writing).

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
                                      workers=args.workers, text_source="whisper")  # fmt: skip
    codec = Codec.load(models, cfg.num_codebooks, device)
    aligner = Aligner.load(models, device)
    with tempfile.TemporaryDirectory() as tmp:
        chunks = Path(tmp) / "chunks"
        demo_chunk_tree(chunks)
        items = [it for it in list_chunk_items(chunks) if it["duration_s"] >= 1.0]
        wav16 = [load_audio(it["path"], WHISPER_SAMPLE_RATE_HZ) for it in items]
        audio_s = sum(w.size for w in wav16) / WHISPER_SAMPLE_RATE_HZ
        episodes = [load_audio(m, MIMI_SAMPLE_RATE_HZ) for m in sorted(demo_dir().glob("*.webm"))
                    + sorted(demo_dir().glob("*.m4a"))]  # fmt: skip
        group = cfg.frames_per_group * MIMI_FRAME_SAMPLES

        def one_pass() -> float:
            start = time.perf_counter()
            for w in episodes:
                codec.encode(torch.from_numpy(w)[None, None])
            return time.perf_counter() - start

        def streamed(lanes: int) -> float:
            n = max(math.ceil(w.size / group) * group for w in episodes)
            start = time.perf_counter()
            for batch in batches(episodes, lanes):
                x = torch.zeros(lanes, 1, n)
                for i, w in enumerate(batch):
                    x[i, 0, : w.size] = torch.from_numpy(w)
                with codec.stream_encoder(lanes, cfg.frames_per_group) as encoder:
                    encoder.encode(x)
            return time.perf_counter() - start

        one_pass()  # warm-up
        mimi_s, mimi_stream_s, mimi_lanes_s = one_pass(), streamed(1), streamed(3)
        ep_s = sum(w.size for w in episodes) / MIMI_SAMPLE_RATE_HZ
        start = time.perf_counter()
        for batch in batches(wav16, args.batch_size):
            aligner.align(batch)
        whisper_s = time.perf_counter() - start
        summary = run_tokenize(cfg, models, chunks, Path(tmp) / "tokens", device=device,
                               codec=codec, aligner=aligner, progress=False)  # fmt: skip
        assert summary.ok >= len(items) - 1, summary
        pipe_s = summary.seconds

    rate = {k: ep_s / v for k, v in [("mimi", mimi_s), ("stream", mimi_stream_s),
                                     ("lanes", mimi_lanes_s)]}  # fmt: skip
    rate.update({k: audio_s / v for k, v in [("whisper", whisper_s), ("pipe", pipe_s)]})
    serial = 1 / (1 / rate["stream"] + 1 / rate["whisper"])
    print(f"{len(items)} demo chunks, {audio_s:.0f} s of audio, {args.profile} profile, "
          f"device {device}, Whisper batch {args.batch_size}, {args.workers} decoding "
          "thread(s)\n")
    print("| step | seconds | audio s per wall s |")
    print("|---|---:|---:|")
    print(f"| (a) Mimi, one pass per episode | {mimi_s:.2f} | {rate['mimi']:.1f} |")
    print(f"| (a') Mimi stream, 400 ms steps, one lane | {mimi_stream_s:.2f} | "
          f"{rate['stream']:.1f} |")
    print(f"| (a'') Mimi stream, 400 ms steps, 3 lanes | {mimi_lanes_s:.2f} | "
          f"{rate['lanes']:.1f} |")
    print(f"| (b) Whisper words, batched | {whisper_s:.2f} | {rate['whisper']:.1f} |")
    print(f"| (c) whole pipeline (decode + a + b + write) | {pipe_s:.2f} | {rate['pipe']:.1f} |")
    print(f"\nstream vs one pass: {mimi_s / mimi_stream_s:.2f}x; 3 lanes vs one: "
          f"{mimi_stream_s / mimi_lanes_s:.2f}x")
    slower = min(rate["stream"], rate["whisper"])
    print(f"pipeline vs the slower of (a), (b): {rate['pipe'] / slower:.2f}")
    print(f"pipeline vs (a) then (b) in series: {rate['pipe'] / serial:.2f} "
          "(1.0 = decoding and writing fully hidden)")


if __name__ == "__main__":
    main()
