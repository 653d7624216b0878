"""Stage 07 benchmark: likelihood pairs scored per second, both variants (text slots as
trained, speech only), through the path the CLI runs (`evaluate.score_items`: items taken in
parts of a few token budgets, their clips sorted by length and packed up to the budget,
`evaluate.clip_logprobs`, each item's line written) against one clip per forward, for clips as
long as each suite's; then the estimate for the full suites on one GPU
(`evaluate.suite_cost_plan`).

    python benchmarks/bench_evaluate.py [--shape tiny|mid|7b] [--device cuda] [--pairs 64]

``tiny`` is the tiny profile's LM (4 small layers); ``mid`` a random Mistral of 8 layers of
1024; ``7b`` Mistral-7B's shape with random weights in bf16 (a GPU). On a CPU batching gains
little (one clip's matmuls already fill the cores: about 1x on 2 cores for short clips); the
ratio that matters is a GPU's, where one short clip per forward leaves it mostly idle.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from speechlm_utils import evaluate
from speechlm_utils.checkpoints import FULL_MISTRAL, load_text_tokenizer
from speechlm_utils.config import ModelsConfig, pick_device
from speechlm_utils.tokenizer import SpeechTokenizer

SHAPES = {
    "mid": dict(hidden_size=1024, num_hidden_layers=8, intermediate_size=3584,
                num_attention_heads=8, num_key_value_heads=2),  # fmt: skip
    "7b": FULL_MISTRAL,
}
SUITE_CLIP_S = {"sWUGGY-like": 1.2, "sBLIMP-like": 2.8, "StoryCloze-like": 18.0}


def build_model(shape: str, layout, device: str):
    from transformers import MistralConfig, MistralForCausalLM

    from speechlm_utils.model import build_speech_lm

    if shape == "tiny":
        torch.manual_seed(0)
        return build_speech_lm(ModelsConfig.from_profile("tiny"), layout, device=device).eval()
    fields = {k: v for k, v in SHAPES[shape].items() if k in MistralConfig().to_dict()}
    config = MistralConfig(**{**fields, "vocab_size": layout.padded_vocab_size,
                              "sliding_window": 4096})  # fmt: skip
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    with torch.device(device):
        torch.manual_seed(0)
        model = MistralForCausalLM(config).to(dtype)
    return model.eval()


def clips_of(tok, seconds: float, pairs: int, rng) -> list[np.ndarray]:
    """Two clips per pair of about ``seconds`` each (lengths jittered by +-20 %)."""
    lay = tok.layout
    out = []
    for _ in range(2 * pairs):
        groups = max(1, round(seconds * rng.uniform(0.8, 1.2) / lay.group_duration_s))
        codes = rng.integers(0, 2048, (lay.num_codebooks, groups * lay.frames_per_group))
        out.append(tok.encode(codes, []).ids)
    return out


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", choices=("tiny", "mid", "7b"), default="mid")
    parser.add_argument("--device", default=None)
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--budget", type=int, default=None,
                        help="tokens per batched forward (default 32768 on a GPU, else 4096)")
    parser.add_argument("--repeats", type=int, default=2, help="best of N")
    args = parser.parse_args()
    device = args.device or pick_device()
    budget = args.budget or (32768 if device.startswith("cuda") else 4096)
    tok = SpeechTokenizer(load_text_tokenizer(ModelsConfig.from_profile("tiny")))
    model = build_model(args.shape, tok.layout, device)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model: {args.shape} ({params:.0f} M parameters) on {device}; batch budget "
          f"{budget} tokens; both variants per pair; best of {args.repeats}")
    rng = np.random.default_rng(0)
    print(f"{'clips like':16s} {'clip s':>6s} {'pairs':>5s} {'one at a time':>14s} "
          f"{'batched':>9s} {'ratio':>6s}")
    for name, seconds in SUITE_CLIP_S.items():
        pairs = args.pairs if seconds < 10 else max(4, args.pairs // 4)
        clips = clips_of(tok, seconds, pairs, rng)
        encoded = [clips[k : k + 2] for k in range(0, len(clips), 2)]
        items = [evaluate.Item(f"{k}", [evaluate.Clip(b"")] * 2) for k in range(pairs)]
        evaluate.clip_logprobs(model, tok.layout, clips[:2], budget)  # warm-up

        def one_by_one(encoded=encoded):
            for pair in encoded:  # a clip per forward, as a simple loop does
                for variant in evaluate.VARIANTS:
                    seq = pair if variant == "text" else \
                        [evaluate.speech_only(c, tok.layout) for c in pair]  # fmt: skip
                    evaluate.clip_logprobs(model, tok.layout, seq, 1)

        def batched(encoded=encoded, items=items):
            with tempfile.TemporaryDirectory() as tmp:  # each repeat scores from scratch
                evaluate.score_items(model, tok.layout, encoded, items, Path(tmp) / "s.jsonl",
                                     max_batch_tokens=budget, progress=False)  # fmt: skip

        alone = min(timed(one_by_one, device) for _ in range(args.repeats))
        together = min(timed(batched, device) for _ in range(args.repeats))
        print(f"{name:16s} {seconds:6.1f} {pairs:5d} {pairs / alone:10.1f} p/s "
              f"{pairs / together:5.1f} p/s {alone / together:5.2f}x")
    print("\nthe full suites on one GPU (estimate: 2N FLOPs per token at 40 % of the bf16 peak, "
          "both variants; one-time Mimi and Whisper encoding not included):")
    for row in evaluate.suite_cost_plan():
        print("  " + "  ".join(f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
