"""Stage 06 benchmark on the tiny model: tokens/s with and without the KV cache (and the
ratio), time to first audio vs time to the full response with streaming, and the real-time
factor (audio seconds per wall second); plus the memory-bandwidth estimate for 7B.

    python benchmarks/bench_generate.py [--prompt-s 4] [--reply-s 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from speechlm_utils import generate, train
from speechlm_utils.codec import Codec
from speechlm_utils.config import ModelsConfig, TrainConfig
from speechlm_utils.preprocess import load_tokens, stream_pieces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompt-s", type=float, default=4.0)
    parser.add_argument("--reply-s", type=float, default=4.0)
    args = parser.parse_args()
    models = ModelsConfig.from_profile("tiny")
    with tempfile.TemporaryDirectory() as tmp:  # a briefly trained tiny model
        cfg = TrainConfig.from_profile("tiny", max_steps=20)
        run = train.ensure_run(cfg, models, Path(tmp) / "run")
        model, tokenizer = train.load_run(run, models)
    lay = tokenizer.layout
    record = stream_pieces(cfg.data_dir / "tokens")[0]
    ids = load_tokens(cfg.data_dir / "tokens", record)
    prompt = ids[: int(args.prompt_s / lay.group_duration_s) * lay.group_len]
    n = int(args.reply_s / lay.group_duration_s) * lay.group_len
    sampling = generate.Sampling(seed=0)

    rates = {}
    for cached in (True, False):
        generate.generate(model, lay, prompt, 22, sampling, use_cache=cached)  # warm-up
        start = time.perf_counter()
        generate.generate(model, lay, prompt, n, sampling, use_cache=cached)
        rates[cached] = n / (time.perf_counter() - start)
    codec = Codec.load(models, lay.num_codebooks)
    response = generate.respond(model, tokenizer, codec, prompt, args.reply_s, sampling,
                                stop_silence_s=None)  # fmt: skip
    print(f"tiny Mistral, prompt {args.prompt_s:g} s ({prompt.size} tokens), reply "
          f"{args.reply_s:g} s ({n} tokens), CPU\n")
    print("| measure | value |")
    print("|---|---:|")
    print(f"| tokens/s with KV cache | {rates[True]:,.0f} |")
    print(f"| tokens/s without cache (full forward per token) | {rates[False]:,.0f} |")
    print(f"| cache speed-up | {rates[True] / rates[False]:.1f}x |")
    print(f"| time to first audio (first 400 ms group, streaming) | "
          f"{response.first_audio_s:.2f} s |")
    print(f"| time to the full response | {response.seconds:.2f} s |")
    print(f"| real-time factor (audio s per wall s, incl. Mimi decoding) | "
          f"{response.audio_s / response.seconds:.2f} |")
    print(f"| needed for real time | {lay.tokens_per_s:.0f} tokens/s |")
    print("\nMistral-7B in bf16, batch 1, memory-bound at 60% of bandwidth:\n")
    print("| GPU | tokens/s | x real time |")
    print("|---|---:|---:|")
    for row in generate.realtime_plan():
        print(f"| {row['gpu']} | {row['tokens_per_s']} | {row['realtime_factor']} |")


if __name__ == "__main__":
    main()
