"""Shared fixtures: the tiny profile's models, built once per machine and cached in data/."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "data" / "demo"

os.environ.setdefault("SPEECHLM_PROFILE", "tiny")


@pytest.fixture(scope="session")
def tiny_models():
    """ModelsConfig of the tiny profile, with its checkpoints built (cached in data/models)."""
    from speechlm_utils.checkpoints import ensure_tiny_checkpoints
    from speechlm_utils.config import ModelsConfig

    models = ModelsConfig.from_profile("tiny", data_dir=REPO / "data" / "tiny")
    ensure_tiny_checkpoints(models)
    return models


@pytest.fixture(scope="session")
def codec(tiny_models):
    from speechlm_utils.codec import Codec

    return Codec.load(tiny_models, num_codebooks=4)


@pytest.fixture(scope="session")
def aligner(tiny_models):
    from speechlm_utils.align import Aligner

    return Aligner.load(tiny_models)


@pytest.fixture(scope="session")
def text_tokenizer(tiny_models):
    from speechlm_utils.checkpoints import load_text_tokenizer

    return load_text_tokenizer(tiny_models)


def in_pipeline(item) -> bool:
    """Whether a test runs the tiny pipeline's shared stages in ``data/tiny`` (the notebooks,
    the browser tests on their outputs, tests marked ``pipeline``): those run in order in one
    process, never beside each other."""
    path = str(item.fspath)
    return path.endswith(".ipynb") or "tests/browser" in path or \
        item.get_closest_marker("pipeline") is not None  # fmt: skip


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """Browser tests last: by then the notebooks have made the demo data they reuse. Under
    pytest-xdist (``-n 2 --dist loadgroup``, as `make test` runs) the pipeline is one group on
    one worker, in this order, while the other worker takes the independent tests."""
    items.sort(key=lambda item: "tests/browser" in str(item.fspath))
    for item in items:
        if in_pipeline(item):
            item.add_marker(pytest.mark.xdist_group("pipeline"))


# -- notebooks: quiet outputs ------------------------------------------------------------------

_PROGRESS = re.compile(r"\d+%\|.*\|\s*\d+/\d+|^\s*$")  # a tqdm bar drawn as text
_NOISE_STDOUT = re.compile(r"\bnan\b|\b0(\.0+)?x real\s?time")


def notebook_noise(nb) -> list[str]:
    """What an executed notebook should not show: anything on stderr but a progress bar
    (warnings, library banners, logging) and ``nan`` or ``0x realtime`` lines on stdout;
    one ``"cell N: text"`` line each."""
    found = []
    for index, cell in enumerate(nb.get("cells", [])):
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            if output.get("output_type") != "stream":
                continue
            lines = output.get("text", "").replace("\r", "\n").splitlines()
            if output.get("name") == "stderr":
                bad = [line for line in lines if not _PROGRESS.search(line)]
            else:
                bad = [line for line in lines if _NOISE_STDOUT.search(line)]
            found += [f"cell {index}: {line.strip()[:200]}" for line in bad]
    return found


def pytest_configure(config):
    """nbmake's run also fails a notebook whose outputs are noisy (`notebook_noise`). Under
    pytest-xdist the controller builds the tiny checkpoints before any worker starts, so no
    two workers build them at once."""
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        from speechlm_utils.checkpoints import ensure_tiny_checkpoints
        from speechlm_utils.config import ModelsConfig

        ensure_tiny_checkpoints(ModelsConfig.from_profile("tiny", data_dir=REPO / "data" / "tiny"))
    try:
        from nbmake import nb_run
        from nbmake.nb_result import NotebookError
    except ImportError:
        return
    if getattr(nb_run.NotebookRun.execute, "checks_noise", False):
        return
    execute = nb_run.NotebookRun.execute

    def execute_quietly(self, *args, **kwargs):
        result = execute(self, *args, **kwargs)
        if result.error is None and (noise := notebook_noise(result.nb)):
            cell = int(noise[0].split(":")[0].split()[1])
            result.error = NotebookError(summary="noisy output: " + noise[0],
                                         trace="\n".join(noise), failing_cell_index=cell)
        return result

    execute_quietly.checks_noise = True
    nb_run.NotebookRun.execute = execute_quietly


@pytest.fixture(autouse=True)
def _torch_threads_unchanged():
    """A test (and so the library call it makes) leaves torch's thread count as it found it:
    a library that sets one thread for the process (silero-vad's import does) would slow every
    later cell of a notebook, and change the numerics of later tests."""
    import torch

    threads = torch.get_num_threads()
    yield
    leaked = torch.get_num_threads()
    torch.set_num_threads(threads)
    assert leaked == threads, f"torch's thread count changed from {threads} to {leaked}"
