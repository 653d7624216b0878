"""The Colab set-up cell: one source in every notebook, and a run under a stand-in google.colab
in a Python that does not have the package installed, cloning from a copy of this checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import types
from pathlib import Path

import nbformat
import pytest

from speechlm_utils import colab, config

from .conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-c",
       "init.defaultBranch=main", "-c", "advice.detachedHead=false"]  # fmt: skip

# google.colab as the cell and setup() use it; calls are logged to $FAKE_COLAB_LOG (one JSON a
# line). `google` stays a namespace package, so google.protobuf still imports.
FAKE_COLAB = {
    "__init__.py": "",
    "_log.py": """\
        import json, os
        def log(*event):
            with open(os.environ["FAKE_COLAB_LOG"], "a") as f:
                f.write(json.dumps(event) + "\\n")
        """,
    "drive.py": """\
        import os
        from ._log import log
        def mount(mountpoint, force_remount=False):
            os.makedirs(os.path.join(mountpoint, "MyDrive"), exist_ok=True)
            log("mount", mountpoint)
        """,
    "userdata.py": """\
        import os
        from ._log import log
        class SecretNotFoundError(Exception):
            pass
        def get(key):
            log("secret", key)
            if "FAKE_SECRET_" + key not in os.environ:
                raise SecretNotFoundError(key)
            return os.environ["FAKE_SECRET_" + key]
        """,
    "output.py": """\
        from ._log import log
        def enable_custom_widget_manager():
            log("widgets")
        """,
}


def write_fake_colab(folder: Path) -> Path:
    package = folder / "google" / "colab"
    package.mkdir(parents=True)
    for name, text in FAKE_COLAB.items():
        (package / name).write_text(textwrap.dedent(text))
    return folder


@pytest.fixture
def fake_colab(tmp_path, monkeypatch):
    """The stand-in google.colab, imported in this process."""
    folder = write_fake_colab(tmp_path / "fake")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("FAKE_COLAB_LOG", str(tmp_path / "colab.log"))
    for name in [n for n in sys.modules if n == "google.colab" or n.startswith("google.colab.")]:
        monkeypatch.delitem(sys.modules, name)
    import google.colab  # noqa: F401

    yield tmp_path / "colab.log"
    for name in [n for n in sys.modules if n == "google.colab" or n.startswith("google.colab.")]:
        del sys.modules[name]


def events(log: Path) -> list[list]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def git(*args, cwd: Path) -> str:
    return subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip


def snapshot_of_checkout(dest: Path) -> Path:
    """A one-commit repository (branch main) with this checkout's files as they are now."""
    command = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    listed = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True).stdout
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    git("init", "-q", cwd=dest)
    git("add", "-A", cwd=dest)
    git("commit", "-q", "-m", "snapshot", cwd=dest)
    return dest


def test_every_notebook_has_the_one_setup_cell():
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert numbers == list(range(1, len(NOTEBOOKS) + 1)) and len(NOTEBOOKS) >= 7, numbers
    for path in NOTEBOOKS:
        cell = nbformat.read(path, as_version=4).cells[1]
        assert cell.cell_type == "code" and cell.source == colab.COLAB_CELL, (
            f"{path.name}: cell 2 differs from speechlm_utils.colab.COLAB_CELL; run "
            "`python -c 'from speechlm_utils.colab import sync_notebooks; "
            "sync_notebooks(\"notebooks\")'`")


def test_cell_is_plain_python_with_form_fields_and_defaults():
    code = colab.COLAB_CELL
    compile(code, "setup-cell", "exec")
    assert not any(line.lstrip().startswith(("!", "%")) for line in code.splitlines())
    assert 'REPO_URL = "https://github.com/speechlm/speechlm"  # @param' in code
    assert 'REF = "main"  # @param' in code and "KEEP_DATA_ON_DRIVE = True  # @param" in code
    assert len(code.splitlines()) <= 30
    assert colab.DATA_DIR_ENV == config.DATA_DIR_ENV


def test_cell_does_nothing_outside_colab(monkeypatch, tmp_path):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"ran {a}"))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(colab.COLAB_CELL, namespace)
    assert namespace["IN_COLAB"] is False and Path.cwd() == tmp_path


def test_cell_names_the_url_it_could_not_clone(fake_colab, monkeypatch, tmp_path):
    monkeypatch.setenv("SPEECHLM_COLAB_DIR", str(tmp_path / "content"))
    monkeypatch.setenv("SPEECHLM_REPO_URL", str(tmp_path / "no-such-repo"))
    with pytest.raises(RuntimeError, match="could not clone REPO_URL .*no-such-repo"):
        exec(colab.COLAB_CELL, {})


def test_checkout_takes_a_branch_or_a_short_hash_and_names_a_bad_ref(tmp_path):
    origin = tmp_path / "origin"
    origin.mkdir()
    (origin / "a.txt").write_text("1")
    git("init", "-q", cwd=origin)
    git("add", "a.txt", cwd=origin)
    git("commit", "-q", "-m", "one", cwd=origin)
    first = git("rev-parse", "HEAD", cwd=origin)
    git("clone", "-q", str(origin), str(tmp_path / "clone"), cwd=tmp_path)
    (origin / "a.txt").write_text("2")
    git("commit", "-q", "-am", "two", cwd=origin)
    clone = tmp_path / "clone"
    second = colab.checkout(clone, str(origin), "main")
    assert second == git("rev-parse", "HEAD", cwd=origin) != first
    assert (clone / "a.txt").read_text() == "2"
    assert colab.checkout(clone, str(origin), first[:9]) == first  # not served by name: history
    assert (clone / "a.txt").read_text() == "1"
    with pytest.raises(ValueError, match="REF 'no-such-branch'.*SPEECHLM_REF"):
        colab.checkout(clone, str(origin), "no-such-branch")


def test_hub_token_from_env_then_secret(fake_colab, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "")  # restored after the test, even when set here
    monkeypatch.delenv("FAKE_SECRET_HF_TOKEN", raising=False)
    assert colab.hub_token() is None  # the secret is missing: no exception, no prompt
    monkeypatch.setenv("FAKE_SECRET_HF_TOKEN", " hf_secret\n")
    assert colab.hub_token() == "hf_secret"
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    assert colab.hub_token() == "hf_env"


def test_wandb_key_from_the_secret_else_training_logs_offline(fake_colab, monkeypatch,
                                                               tmp_path, capsys):  # fmt: skip
    from speechlm_utils.train import wandb_mode

    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no `wandb login` on this host
    monkeypatch.setenv("WANDB_API_KEY", "")  # restored after the test, even when set here
    monkeypatch.delenv("FAKE_SECRET_WANDB_API_KEY", raising=False)
    assert colab.login_to_wandb() is False and "logs offline" in capsys.readouterr().out
    assert wandb_mode("online")[0] == "offline"  # no key prompt in the middle of Run All
    monkeypatch.setenv("FAKE_SECRET_WANDB_API_KEY", "k" * 40)
    assert colab.login_to_wandb() is True and os.environ["WANDB_API_KEY"] == "k" * 40
    assert wandb_mode("online") == ("online", None)


def test_hub_login_says_how_to_add_a_token_and_never_asks(fake_colab, monkeypatch, capsys):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    class Gated(GatedRepoError):
        def __init__(self):
            Exception.__init__(self, "gated")

    def gated(*args, **kwargs):
        raise Gated()

    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("asked for input"))
    monkeypatch.setattr(huggingface_hub, "model_info",
                        lambda *a, **k: types.SimpleNamespace(gated="manual"))  # fmt: skip
    monkeypatch.setattr(huggingface_hub, "auth_check", gated)
    monkeypatch.setenv("HF_TOKEN", "")  # restored after the test, even when set here
    monkeypatch.delenv("FAKE_SECRET_HF_TOKEN", raising=False)
    lm = "mistralai/Mistral-7B-v0.1"
    assert colab.login_to_hub(lm, "tiny") is True  # the tiny profile needs no token
    assert not capsys.readouterr().out
    assert colab.login_to_hub(lm, "full") is False
    out = capsys.readouterr().out
    assert f"https://huggingface.co/{lm}" in out and "HF_TOKEN" in out and "Secrets" in out
    assert not os.environ["HF_TOKEN"]

    monkeypatch.setenv("FAKE_SECRET_HF_TOKEN", "hf_secret")
    assert colab.login_to_hub(lm, "full") is False  # a token, but the terms are not accepted
    assert "accept the terms" in capsys.readouterr().out
    assert os.environ["HF_TOKEN"] == "hf_secret"  # downloads (and subprocesses) get it
    monkeypatch.setattr(huggingface_hub, "auth_check", lambda *a, **k: None)
    assert colab.login_to_hub(lm, "full") is True


RUN_NOTEBOOK = """\
import importlib.util, json, os, sys
import google.colab  # on Colab it is imported before the first cell runs

assert importlib.util.find_spec("speechlm_utils") is None, "the package is installed already"

cells = [c["source"] for c in json.load(open(sys.argv[1]))["cells"]]
cells = ["".join(c) if isinstance(c, list) else c for c in cells]
namespace = {}
for label, code in (("setup", cells[1]), ("config", cells[2]), ("setup again", cells[1])):
    print(f"=== {label}", flush=True)
    exec(compile(code, label, "exec"), namespace)
import speechlm_utils
print("RESULT", json.dumps({"package": speechlm_utils.__file__, "cwd": os.getcwd(),
      "data_dir": os.environ.get("SPEECHLM_DATA_DIR"), "hf_token": os.environ.get("HF_TOKEN"),
      "cfg_data_dir": str(namespace["cfg"].data_dir)}))
"""


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_setup_cell_installs_the_clone_in_a_fresh_python(tmp_path):
    """Notebook 01's set-up cell, its next cell, and the set-up cell again, in a venv that sees
    this environment's dependencies but not the package; pip works offline."""
    deps = Path(sysconfig.get_paths()["purelib"])
    before = sorted(p.name for p in deps.iterdir())
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = subprocess.run([python, "-c", purelib], check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip
    Path(site, "deps.pth").write_text(f"{deps}\n")  # not scanned for .pth: no editable install
    source = snapshot_of_checkout(tmp_path / "source")
    content = tmp_path / "content"
    content.mkdir()
    fake = write_fake_colab(tmp_path / "fake")
    log = tmp_path / "colab.log"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SPEECHLM_", "PIP_", "PYTHON", "HF_"))}  # fmt: skip
    env.update(
        PYTHONPATH=str(fake), FAKE_COLAB_LOG=str(log), FAKE_SECRET_HF_TOKEN="hf_secret",
        SPEECHLM_COLAB_DIR=str(content), SPEECHLM_REPO_URL=str(source),
        SPEECHLM_PROFILE="full",  # the profile that needs the gated LM, so the login runs
        HF_HUB_OFFLINE="1", PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0",  # "0": no isolation
        PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_CACHE_DIR=str(tmp_path / "pip-cache"),
        PIP_CONFIG_FILE=os.devnull,
    )  # fmt: skip
    script = tmp_path / "run_notebook.py"
    script.write_text(RUN_NOTEBOOK)
    done = subprocess.run([python, script, REPO / "notebooks" / NOTEBOOKS[0].name], cwd=content,
                          env=env, capture_output=True, text=True, timeout=170)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    result = json.loads(out.split("RESULT ", 1)[1])
    clone = content / "speechlm"
    assert Path(result["package"]).resolve().is_relative_to(clone)
    assert Path(result["cwd"]) == clone / "notebooks"
    drive_data = content / "drive" / "MyDrive" / "speechlm" / "data"
    assert result["data_dir"] == str(drive_data) and drive_data.is_dir()
    assert Path(result["cfg_data_dir"]).is_relative_to(drive_data)  # notebook 01 writes there
    assert result["hf_token"] == "hf_secret"
    assert out.count("Installing the clone") == 1, out  # the second run installs nothing
    assert out.split("=== setup again")[1].count("speechlm: ") == 1  # but runs all the rest
    calls = [e[0] for e in events(log)]
    assert calls.count("mount") == 2 and calls.count("widgets") == 2
    assert git("rev-parse", "HEAD", cwd=clone) == git("rev-parse", "HEAD", cwd=source)
    assert sorted(p.name for p in deps.iterdir()) == before  # this environment is untouched
