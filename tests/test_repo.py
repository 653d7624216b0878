"""The repository's own promises: one test command, in-sync dependency lists, clean notebooks."""

import json
import re
import subprocess
import sys
import tomllib

import yaml

from .conftest import REPO


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pinned = [r for r in pip_section if not r.startswith("-e")]
    assert sorted(pinned) == sorted(project["dependencies"])  # same names and bounds
    assert "python=3.11" in env["dependencies"] and "ffmpeg" in env["dependencies"]
    assert "moshi" not in {_name(r) for r in project["dependencies"]}  # installed --no-deps


def test_ci_runs_exactly_the_readme_test_command():
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd "))]  # fmt: skip
    assert ci[-1] == "make test"  # the README's command, last and once
    others = " ".join(ci[:-1])
    assert "make" not in others and "pytest" not in others  # before it: Debian packages only
    assert not others or ("for pkg in chromium ffmpeg" in others
                          and 'apt-get install -y -qq "$pkg"' in others)  # fmt: skip
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme


def test_makefile_pins_torch_before_installing_the_package():
    makefile = (REPO / "Makefile").read_text()
    torch_at = makefile.index("install torch==$(TORCH_VERSION)")
    assert torch_at < makefile.index("install -e '.[dev]'")
    assert "TORCH_VERSION ?= 2.13.0" in makefile
    assert "--no-deps moshi==$(MOSHI_VERSION)" in makefile


def test_notebooks_are_committed_without_outputs():
    tracked = subprocess.run(["git", "ls-files", "notebooks/*.ipynb"], cwd=REPO,
                             capture_output=True, text=True).stdout.split()  # fmt: skip
    paths = sorted({*tracked, *(str(p.relative_to(REPO)) for p in REPO.glob("notebooks/*.ipynb"))})
    for path in paths:
        nb = json.loads((REPO / path).read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs") and cell.get("execution_count") is None, path


def test_cli_info_runs():
    out = subprocess.run([sys.executable, "-m", "speechlm_utils", "--profile", "tiny", "info"],
                         capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "profile: tiny" in out.stdout and "ffmpeg:" in out.stdout


def test_notebooks_follow_the_house_layout():
    notebooks = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert notebooks, "no notebooks found"
    for path in notebooks:
        cells = json.loads(path.read_text())["cells"]
        intro, install, setup = ("".join(c["source"]) for c in cells[:3])
        assert cells[0]["cell_type"] == "markdown" and f"notebooks/{path.name}" in intro
        assert "colab-badge" in intro and "**Time:**" in intro
        assert "IN_COLAB" in install and "--no-deps moshi==0.2.13" in install
        assert "cfg = " in setup and ".from_profile(" in setup
        long_cells = [c for c in cells if c["cell_type"] == "code" and c is not cells[1]
                      and len("".join(c["source"]).splitlines()) > 15]  # fmt: skip
        assert not long_cells, f"{path.name}: code cells stay short; logic lives in the library"


def test_acquisition_never_imports_torch_or_whisper():
    code = ("import sys, speechlm_utils.index, speechlm_utils.scrape, speechlm_utils.captions, "
            "speechlm_utils.words; print(sorted({'torch', 'whisper', 'transformers'} & "
            "set(sys.modules)))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_notebook_noise_finds_warnings_banners_and_nan_but_not_progress_bars():
    from .conftest import notebook_noise

    def cell(*outputs):
        return {"cell_type": "code", "outputs": [
            {"output_type": "stream", "name": name, "text": text} for name, text in outputs]}

    quiet = {"cells": [cell(("stderr", "train: 100%|##########| 150/150 [00:03<00:00]\r\n"),
                            ("stdout", "loss 0.12, 2.5x realtime\n"))]}
    assert notebook_noise(quiet) == []
    noisy = {"cells": [cell(("stdout", "fine\n")),
                       cell(("stderr", "x.py:3: FutureWarning: old\n  warnings.warn(\n")),
                       cell(("stderr", "wandb: Tracking run with wandb version 0.31.0\n")),
                       cell(("stdout", "val loss nan\n"), ("stdout", "0.0x realtime\n"))]}
    found = notebook_noise(noisy)
    assert [line.split(":")[0] for line in found] == ["cell 1", "cell 1", "cell 2", "cell 3",
                                                      "cell 3"]  # fmt: skip


def test_nbmake_fails_a_notebook_that_warns(tmp_path):
    import nbformat
    from nbmake.nb_run import NotebookRun

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("print('fine')"),
        nbformat.v4.new_code_cell("import warnings\nwarnings.warn('deprecated call')")])
    path = tmp_path / "noisy.ipynb"
    nbformat.write(nb, path)
    result = NotebookRun(path, 120).execute()
    assert result.error is not None and "deprecated call" in result.error.summary
    assert result.error.failing_cell_index == 1


def test_make_demo_runs_the_numbered_notebooks_in_order_in_their_folder_quietly(tmp_path, capfd):
    import nbformat

    from speechlm_utils.notebooks import run_notebooks

    for name in ("02_b_second", "01_a_first", "scratch"):  # scratch is not a numbered one
        cell = nbformat.v4.new_code_cell(f"import os; print(os.getcwd(), {name!r})")
        nbformat.write(nbformat.v4.new_notebook(cells=[cell]), tmp_path / f"{name}.ipynb")
    done = run_notebooks(tmp_path, tmp_path / "out")
    assert [r["notebook"].name for r in done] == ["01_a_first.ipynb", "02_b_second.ipynb"]
    text = nbformat.read(tmp_path / "out" / "02_b_second.ipynb", 4).cells[0].outputs[0]["text"]
    assert text == f"{tmp_path} 02_b_second\n"
    assert "WARNING" not in capfd.readouterr().err  # e.g. ipykernel's unencrypted TCP


def test_notebook_tables_are_displayed():
    """`viz.table` returns HTML that only the last expression of a cell shows: anywhere else it
    must go through `display(...)`, or the reader never sees the table."""
    for path in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for index, cell in enumerate(json.loads(path.read_text())["cells"]):
            lines = "".join(cell["source"]).splitlines() if cell["cell_type"] == "code" else []
            for number, line in enumerate(lines):
                last = number == len(lines) - 1 and not line.startswith((" ", "\t"))
                if "viz.table(" in line and not last and "display(viz.table(" not in line:
                    raise AssertionError(f"{path.name} cell {index}: {line.strip()}")
