"""Run the tutorial notebooks headless, in order, as `make demo` does."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

NOTEBOOK_TIMEOUT_S = 1800  # per cell; the tiny profile needs far less


def _kernel_config(socket_dir: str):
    """Kernels talk over Unix sockets in ``socket_dir`` where there are some, not TCP on
    127.0.0.1, which ipykernel warns is unencrypted (once per notebook). The path is absolute:
    the kernel runs in the notebook's folder, the client here."""
    import os

    from traitlets.config import Config

    if os.name != "posix":
        return Config()
    return Config({"KernelManager": {"transport": "ipc", "ip": f"{socket_dir}/kernel"}})


def list_notebooks(notebook_dir: Path) -> list[Path]:
    """The numbered notebooks (``NN_verb_noun.ipynb``) in reading order."""
    return sorted(p for p in Path(notebook_dir).glob("[0-9][0-9]_*.ipynb"))


def run_notebooks(notebook_dir: Path, out_dir: Path, kernel_name: str = "python3") -> list[dict]:
    """Execute each notebook with its own folder as working directory; save executed copies.

    Each runs in a fresh kernel, so none depends on another's state, only on files the earlier
    ones wrote. Stops at the first failure, after saving the failing copy for inspection.
    Returns one ``{"notebook", "executed", "seconds"}`` per notebook run.
    """
    import nbformat
    from nbclient import NotebookClient

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="speechlm-kernels-") as sockets:
        for path in list_notebooks(notebook_dir):
            nb = nbformat.read(path, as_version=4)
            client = NotebookClient(
                nb, timeout=NOTEBOOK_TIMEOUT_S, kernel_name=kernel_name,
                resources={"metadata": {"path": str(path.parent)}}, config=_kernel_config(sockets),
            )  # fmt: skip
            start = time.perf_counter()
            print(f"▶ {path.name} ...", flush=True)
            try:
                client.execute()
            finally:
                executed = out_dir / path.name
                tmp = executed.with_suffix(".ipynb.tmp")
                nbformat.write(nb, tmp)
                tmp.replace(executed)
            seconds = time.perf_counter() - start
            print(f"  done in {seconds:.0f} s -> {executed}", flush=True)
            results.append({"notebook": path, "executed": executed, "seconds": seconds})
    return results
