"""Host memory of the model load paths, on a mid-size random Mistral saved in bf16 (430 M
parameters, `checkpoints.MID_MISTRAL`): peak RSS above the interpreter's baseline, as a ratio
to the checkpoint's bf16 size, for

- ``fp32 then cast``: the old path (``from_pretrained`` in fp32 on the CPU, then cast to bf16),
  the baseline;
- ``build for training``: `model.build_speech_lm` in bf16 with LoRA (what trains in fp32);
- ``load for chat``: `train.load_run` in bf16, LoRA and the new rows merged.

Each path runs in a fresh process and touches every weight (one forward pass), so mapped pages
count. For 7B multiply the bf16 size (14.5 GB): a ratio of 1.1 means 16 GB of host RAM, 2.9
means 42 GB (Colab's standard runtime has 12.7 GB; on a GPU the lean paths stream the weights
to the device and stay far below that).

    python benchmarks/bench_memory.py [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

PATHS = ("fp32 then cast", "build for training", "load for chat")


def rss_mb() -> float:
    """Resident set size of this process now, MB."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 1e6


def peak_rss_mb() -> float:
    """Peak resident set size of this process image so far, MB: ``VmHWM``. (Not ru_maxrss,
    which Linux carries across exec: a child forked from a big parent inherits its peak.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e3
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def measure(path: str, lm_dir: Path, run_dir: Path) -> dict:
    """Load ``lm_dir`` along ``path`` in this process; peak RSS above the post-import baseline."""
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401  (imports count in the baseline, not in the load)

    from speechlm_utils import model as speech_model
    from speechlm_utils import train
    from speechlm_utils.checkpoints import load_text_tokenizer
    from speechlm_utils.config import ModelsConfig
    from speechlm_utils.tokenizer import SpeechTokenizer

    models = ModelsConfig(profile="full", data_dir=lm_dir.parent, lm=str(lm_dir),
                          chosen=("lm",))  # fmt: skip
    tokenizer = SpeechTokenizer(load_text_tokenizer(models))
    ids = torch.arange(22)[None] + tokenizer.layout.text_vocab_size
    base = rss_mb()
    if path == "fp32 then cast":
        from transformers import MistralForCausalLM

        lm = MistralForCausalLM.from_pretrained(str(lm_dir), dtype=torch.float32)
        lm = lm.to(torch.bfloat16)
    elif path == "build for training":
        lm = speech_model.build_speech_lm(models, tokenizer.layout, lora_r=16,
                                          dtype=torch.bfloat16)  # fmt: skip
    else:
        lm, _ = train.load_run(run_dir, models, dtype=torch.bfloat16)
    with torch.no_grad():
        lm(input_ids=ids[:, : 22 if path != "fp32 then cast" else 1].clamp(max=31999))
    peak = peak_rss_mb()
    if path == "build for training":
        if not (run_dir / "final" / "weights.pt").exists():  # the chat path loads these
            (run_dir / "final").mkdir(parents=True, exist_ok=True)
            torch.save(train._trainable_state(lm), run_dir / "final" / "weights.pt")
            (run_dir / "run.json").write_text(json.dumps({
                "layout": tokenizer.fingerprint(), "lora_r": 16, "keep_every": None,
                "keep_layers": None, "lm": str(lm_dir), "mimi": "", "whisper": ""}))
    size = sum(f.stat().st_size for f in lm_dir.glob("*.safetensors")) / 1e6
    return {"path": path, "bf16_MB": round(size), "baseline_MB": round(base),
            "peak_above_baseline_MB": round(peak - base), "ratio": round((peak - base) / size, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, help="where to keep the mid-size checkpoint")
    parser.add_argument("--one", choices=PATHS, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.dir / "mid-mistral", args.dir / "run")))
        return
    from speechlm_utils.checkpoints import MID_MISTRAL, build_random_mistral

    with tempfile.TemporaryDirectory() as tmp:
        root = args.dir or Path(tmp)
        build_random_mistral(root / "mid-mistral", MID_MISTRAL)
        rows = []
        for path in PATHS:
            out = subprocess.run([sys.executable, __file__, "--dir", str(root), "--one", path],
                                 capture_output=True, text=True, check=True)  # fmt: skip
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'load path':20s} {'bf16 size':>10s} {'peak RSS above baseline':>24s} {'ratio':>6s}")
    for r in rows:
        print(f"{r['path']:20s} {r['bf16_MB']:>7d} MB {r['peak_above_baseline_MB']:>21d} MB "
              f"{r['ratio']:>5.2f}x")
    old = rows[0]["peak_above_baseline_MB"]
    for r in rows[1:]:
        print(f"{r['path']}: {old / max(r['peak_above_baseline_MB'], 1):.1f}x less than "
              f"fp32 then cast")


if __name__ == "__main__":
    main()
