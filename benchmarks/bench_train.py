"""Stage 05 benchmark on the tiny model (CPU here; the same script measures a GPU).

Prints: tokens/s of our training loop (kind-restricted weighted loss, clipping, scheduler)
vs a bare loop (the model's own full-vocabulary loss, forward + backward + AdamW step) on the
same batches, and their ratio; the share of window tokens that carry a loss (packing); peak
memory; data-parallel throughput on 2 ranks (DDP, FSDP) against 1, with gradient accumulation,
and what skipping the gradient sync on all but the last micro-batch saves; and the paper plan
for Mistral-7B (memory per option, tokens/s from FLOPs).

    python benchmarks/bench_train.py [--steps 30] [--seq-len 440] [--batch-size 4]
        [--ranks-steps 8] [--grad-accum 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.multiprocessing as mp

from speechlm_utils import train
from speechlm_utils.config import ModelsConfig, TokenizeConfig, TrainConfig
from speechlm_utils.preprocess import ensure_tokens


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def _rank_worker(rank: int, world: int, port: int, mode: str, sync_every_micro: bool,
                 tokens: str, out: str, steps: int, grad_accum: int) -> None:  # fmt: skip
    """One rank: time ``steps`` optimizer steps after a warm-up; rank 0 writes tokens/s."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))  # the same cores in all
    models = ModelsConfig.from_profile("tiny")
    cfg = TrainConfig.from_profile("tiny", seq_len=440, batch_size=2, grad_accum=grad_accum,
                                   wandb_mode="disabled", train_chunks=None, max_steps=1000,
                                   fsdp=mode == "fsdp", memory_check=False,
                                   lora_r=8)  # fmt: skip  # the GPU recipe: LoRA, new rows
    with tempfile.TemporaryDirectory() as tmp:
        trainer = train.Trainer(cfg, models, tokens, Path(tmp) / "run")
        if sync_every_micro:  # the naive loop: every micro-batch's backward communicates
            trainer._gradient_sync = lambda on: nullcontext()
        trainer.train_step()  # warm-up
        trainer._barrier()
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        trainer._barrier()
        seconds = time.perf_counter() - start
        trained = sum(p.numel() for p in trainer.lm.parameters() if p.requires_grad)
    if rank == 0:
        tokens_per_step = cfg.batch_size * grad_accum * 440 * world
        Path(out).write_text(json.dumps({"tokens_s": tokens_per_step * steps / seconds,
                                         "step_s": seconds / steps, "trainable": trained}))
    if world > 1:
        torch.distributed.destroy_process_group()


def distributed_throughput(tokens: Path, steps: int, grad_accum: int) -> list[dict]:
    """tokens/s of 1 rank and of 2 gloo ranks (DDP, FSDP), with the sync skipped on
    accumulation micro-batches (ours) and, for comparison, on every micro-batch."""
    rows = []
    runs = [("1 rank", 1, "single", False), ("2 ranks, DDP", 2, "ddp", False),
            ("2 ranks, DDP, sync every micro-batch", 2, "ddp", True),
            ("2 ranks, FSDP", 2, "fsdp", False),
            ("2 ranks, FSDP, sync every micro-batch", 2, "fsdp", True)]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, world, mode, naive) in enumerate(runs):
            out = Path(tmp) / f"{i}.json"
            mp.spawn(_rank_worker, args=(world, 29600 + i, mode, naive, str(tokens), str(out),
                                         steps, grad_accum), nprocs=world)  # fmt: skip
            rows.append({"setup": name, "world": world, "naive": naive,
                         **json.loads(out.read_text())})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seq-len", type=int, default=440)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--ranks-steps", type=int, default=8, help="steps per 2-rank run")
    parser.add_argument("--grad-accum", type=int, default=4, help="micro-batches per step")
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
    rows = distributed_throughput(tokens, args.ranks_steps, args.grad_accum)
    one = rows[0]["tokens_s"]
    grad_mb = rows[0]["trainable"] * 4 / 1e6
    print(f"\nData parallel on this CPU (gloo; 2 x 440 tokens per micro-batch, "
          f"{args.grad_accum} micro-batches per step, LoRA r=8 + new rows, the same "
          f"{os.cpu_count()} cores split between the ranks):\n")
    print("| setup | tokens/s | vs 1 rank | s per step | gradient MB communicated per step |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        syncs = args.grad_accum if r["naive"] else 1
        comm = "0" if r["world"] == 1 else f"{grad_mb * syncs:,.0f}"
        print(f"| {r['setup']} | {r['tokens_s']:,.0f} | {r['tokens_s'] / one:.2f}x | "
              f"{r['step_s']:.2f} | {comm} |")
    for mode in ("DDP", "FSDP"):
        ours = next(r for r in rows if r["setup"] == f"2 ranks, {mode}")
        naive = next(r for r in rows if r["setup"].startswith(f"2 ranks, {mode},"))
        print(f"\n{mode}: skipping the sync on {args.grad_accum - 1} of {args.grad_accum} "
              f"micro-batches sends {args.grad_accum}x less gradient data and makes a step "
              f"{naive['step_s'] / ours['step_s']:.2f}x as fast.")
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
