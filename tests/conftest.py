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


def pytest_collection_modifyitems(config, items):
    """Browser tests last: by then the notebooks have made the demo data they reuse. An
    xdist worker also lists the pipeline's tests for the controller's scheduler (below)."""
    items.sort(key=lambda item: "tests/browser" in str(item.fspath))
    listing = getattr(config, "workerinput", {}).get("pipeline_ids")
    if listing:
        tmp = Path(f"{listing}.{os.getpid()}")
        tmp.write_text("".join(item.nodeid + "\n" for item in items if in_pipeline(item)))
        tmp.replace(listing)  # each worker writes the same list


# Under pytest-xdist (`make test`: ``-n 2 --dist loadgroup``) the pipeline is one group, run in
# collection order on one worker, while the other worker takes the independent tests. The
# groups are chosen here, not by xdist's ``xdist_group`` mark, which pytest 9.2 ignores (xdist
# 3.8 renames ``item._nodeid``, which pytest no longer reads): the workers list the pipeline's
# node ids in a file and the controller's scheduler groups them.


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    node.workerinput["pipeline_ids"] = node.config.pipeline_ids


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class PipelineScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if not hasattr(self, "pipeline"):  # the workers have collected by now
                self.pipeline = set(Path(config.pipeline_ids).read_text().split("\n")) - {""}
                assert self.pipeline, "the workers listed no pipeline test"
            return "pipeline" if nodeid in self.pipeline else nodeid

    return PipelineScheduling(config, log)


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
        import tempfile

        from speechlm_utils.checkpoints import ensure_tiny_checkpoints

        config.pipeline_ids = str(Path(tempfile.mkdtemp(prefix="speechlm-xdist-")) / "ids.txt")
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
