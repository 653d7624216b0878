"""Stage 05 benchmark on the tiny model (CPU here; the same script measures a GPU).

Prints: tokens/s of our training loop (kind-restricted weighted loss, clipping, scheduler)
vs a bare loop (the model's own full-vocabulary loss, forward + backward + AdamW step) on the
same batches, and their ratio; the share of window tokens that carry a loss (packing); peak
memory; and the paper plan for Mistral-7B (memory per option, tokens/s from FLOPs).

    python benchmarks/bench_train.py [--steps 30] [--seq-len 440] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

from speechlm_utils import train
from speechlm_utils.config import ModelsConfig, TokenizeConfig, TrainConfig
from speechlm_utils.preprocess import ensure_tokens


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seq-len", type=int, default=440)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    models = ModelsConfig.from_profile("tiny")
    tokens = ensure_tokens(TokenizeConfig.from_profile("tiny"), models)
    cfg = TrainConfig.from_profile("tiny", seq_len=args.seq_len, batch_size=args.batch_size,
                                   wandb_mode="disabled", train_chunks=None, max_steps=1000,
                                   eval_every=10**9, save_every=10**9)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        trainer = train.Trainer(cfg, models, tokens, Path(tmp) / "run")
        batches = [trainer._next_batch() for _ in range(args.steps)]
        tokens_per_batch = batches[0]["input_ids"].numel()

        trainer.train_step()  # warm-up
        it = iter(batches)
        trainer._next_batch = lambda: next(it)
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step()
        ours_s = time.perf_counter() - start

        lm = trainer.lm  # the bare loop: HF's own loss over all 40 256 logits
        opt = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=1e-4)
        lm.train()
        start = time.perf_counter()
        for batch in batches:
            loss = lm(input_ids=batch["input_ids"], labels=batch["labels"]).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        bare_s = time.perf_counter() - start

    total_tokens = tokens_per_batch * args.steps
    print(f"tiny Mistral ({trainer.params['trainable'] / 1e6:.1f} M params), {args.steps} steps "
          f"of {args.batch_size} x {args.seq_len} tokens, CPU\n")
    print("| loop | tokens/s | relative |")
    print("|---|---:|---:|")
    print(f"| bare forward/backward/AdamW (full-vocabulary loss) | {total_tokens / bare_s:,.0f} "
          f"| 1.00 |")
    print(f"| ours (kind-restricted weighted loss, clip, schedule) | "
          f"{total_tokens / ours_s:,.0f} | {bare_s / ours_s:.2f} |")
    print(f"\npacking efficiency (tokens carrying a loss): "
          f"{trainer.splits.packing_efficiency:.1%}")
    print(f"peak memory (process RSS): {peak_rss_gb():.2f} GiB")
    print("\nMistral-7B paper plan, 4 x 4092-token windows, gradient checkpointing:\n")
    rows = train.memory_plan(trainer.layout)
    print("| option | trainable M | weights GB | grads+Adam GB | activations GB | total GB |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['option']} | {r['trainable_params_M']:,} | {r['weights_GB']} | "
              f"{r['grads_adam_GB']} | {r['activations_GB']} | {r['total_GB']} |")
    print("\n| GPU | tokens/s (LoRA, 40% MFU) | audio hours per hour | hours per 1000 h |")
    print("|---|---:|---:|---:|")
    for r in train.throughput_plan():
        print(f"| {r['gpu']} | {r['tokens_per_s']:,} | {r['audio_h_per_h']} | "
              f"{r['hours_per_1000h_audio']} |")


if __name__ == "__main__":
    main()
