"""Host memory of the model load paths, on a mid-size random Mistral saved in bf16 (the 7B path
on Colab streams the same way; see benchmarks/bench_memory.py for the table)."""

import json
import subprocess
import sys

import pytest

from .conftest import REPO

BENCH = REPO / "benchmarks" / "bench_memory.py"


@pytest.fixture(scope="module")
def mid_dir(tmp_path_factory):
    from speechlm_utils.checkpoints import MID_MISTRAL, build_random_mistral

    root = tmp_path_factory.mktemp("mid")
    build_random_mistral(root / "mid-mistral", MID_MISTRAL)
    return root


def measure(root, path: str) -> dict:
    out = subprocess.run([sys.executable, str(BENCH), "--dir", str(root), "--one", path],
                         capture_output=True, text=True, timeout=600, cwd=REPO)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_lean_loading_never_holds_a_full_precision_copy(mid_dir):
    """Peak RSS above the interpreter's baseline, each path in a fresh process with every
    weight touched by a forward pass. The old path (fp32 on the CPU, then cast) needs ~2.9x the
    bf16 size; building for training and loading a run for chat stay near 1x. What trains
    (LoRA and the new rows) is fp32 on top: 16 % of this model's bf16 size, 6 % of 7B's."""
    build = measure(mid_dir, "build for training")  # also saves the run the chat path loads
    chat = measure(mid_dir, "load for chat")
    old = measure(mid_dir, "fp32 then cast")
    assert old["ratio"] > 2.5  # the measurement sees a full fp32 copy when there is one
    assert chat["ratio"] < 1.3, chat
    assert build["ratio"] < 1.45, build
