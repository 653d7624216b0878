"""Colab set-up: what every notebook's second cell (`COLAB_CELL`) calls after cloning the repo.

A badge opens a fresh Colab VM. The cell clones this repository into ``/content/speechlm`` and
calls `setup`, which:

- checks out the pinned ref, then hands over to that ref's own copy of this module, so a pin also
  pins how the set-up installs;
- installs the clone into the running Python (``pip install -e``, then moshi with
  ``--no-deps``: it pins an older torch) once per VM and commit, and makes it importable without
  a restart (the editable install's ``.pth`` file is only read when Python starts);
- mounts Google Drive and points ``$SPEECHLM_DATA_DIR`` there when asked, so a notebook opened
  from a later badge (a new VM) finds what the earlier ones wrote;
- gives the Hugging Face Hub the token in the Colab secret ``HF_TOKEN`` (Mistral-7B is gated),
  or says how to add one; it never waits for input;
- enables Colab's custom widget manager (notebook 06's recorder and player need it);
- prints the GPU and the recipe that fits it.

Only the standard library is imported at the top: this module runs before the dependencies are
installed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

MOSHI_VERSION = "0.2.13"  # as in the Makefile; installed with --no-deps
DIST_NAME = "speechlm-utils"
DATA_DIR_ENV = "SPEECHLM_DATA_DIR"  # config.DATA_DIR_ENV (config is not imported before install)
HF_TOKEN_NAME = "HF_TOKEN"  # the Colab secret and the environment variable the Hub reads
WANDB_KEY_NAME = "WANDB_API_KEY"  # the same for Weights & Biases (optional)
DRIVE_DATA = "MyDrive/speechlm/data"  # the data root, under Drive's mount point
INSTALLED_MARKER = "speechlm-installed"  # in the clone's .git/: "<python> <commit>" installed

COLAB_CELL = '''\
# @title Set-up (Colab only): clone, install, Google Drive, Hugging Face token
# On Colab this clones the repository at REF and calls speechlm_utils/colab.py, which installs
# it (`pip install -e .`, then `pip install --no-deps moshi==0.2.13`), mounts Google Drive for
# the data, reads your Hugging Face token from the Colab secret HF_TOKEN and prints the recipe
# for this GPU. $SPEECHLM_REPO_URL and $SPEECHLM_REF override the fields. Elsewhere: nothing.
import os
import subprocess
import sys

REPO_URL = "https://github.com/speechlm/speechlm"  # @param {type:"string"}
REF = "main"  # @param {type:"string"}
KEEP_DATA_ON_DRIVE = True  # @param {type:"boolean"}

IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:
    url = os.environ.get("SPEECHLM_REPO_URL") or REPO_URL
    ref = os.environ.get("SPEECHLM_REF") or REF
    clone = os.path.join(os.environ.get("SPEECHLM_COLAB_DIR", "/content"), "speechlm")
    if not os.path.isdir(clone):
        done = subprocess.run(["git", "clone", "-q", url, clone], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"could not clone REPO_URL {url}: {done.stderr.strip()}")
    sys.path.insert(0, clone)
    from speechlm_utils import colab

    colab.setup(clone, url, ref, keep_data_on_drive=KEEP_DATA_ON_DRIVE)
    os.chdir(os.path.join(clone, "notebooks"))'''


def setup(clone: str | Path, url: str, ref: str, keep_data_on_drive: bool = False) -> None:
    """Check out ``ref`` of ``url`` in ``clone``, then `prepare` the session with that ref's own
    copy of this module."""
    clone = Path(clone).resolve()
    commit = checkout(clone, url, ref)
    print(f"speechlm: {url} at {ref} (commit {commit[:10]}) in {clone}")
    if not (clone / "speechlm_utils" / "colab.py").is_file():
        raise RuntimeError(f"REF {ref!r} predates this set-up cell (it has no "
                           "speechlm_utils/colab.py): pin a newer ref")  # fmt: skip
    make_importable(clone, forget=True)
    importlib.import_module(__name__).prepare(clone, commit, keep_data_on_drive)


def prepare(clone: Path, commit: str, keep_data_on_drive: bool) -> None:
    """Install, choose the data root, enable widgets, log in to the Hub, print the recipe."""
    install(clone, commit)
    make_importable(clone)
    if keep_data_on_drive:
        data = use_drive(clone.parent / "drive")
        print(f"Data: {data} on Google Drive (${DATA_DIR_ENV}): notebooks opened from the other "
              "badges find it there.")  # fmt: skip
    else:
        data = forget_drive(clone.parent / "drive") or clone / "data"
        print(f"Data: {data}, on this VM only (gone with the runtime); tick KEEP_DATA_ON_DRIVE "
              "to keep it on Google Drive for the other notebooks.")  # fmt: skip
    enable_widgets()
    from .config import ModelsConfig, resolve_profile

    login_to_hub(ModelsConfig.from_profile("full").lm, resolve_profile())
    login_to_wandb()
    from .train import recipe_for_gpu

    print(recipe_for_gpu())


def _git(clone: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}  # fail, never ask for a password
    return subprocess.run(["git", "-C", str(clone), *args], capture_output=True, text=True,
                          env=env)  # fmt: skip


def checkout(clone: Path, url: str, ref: str) -> str:
    """Fetch ``ref`` (branch, tag or commit) from ``url`` and check it out, detached; returns
    the commit. A ref the remote will not serve by name (a short hash) is looked up in the
    clone's history."""
    fetched = _git(clone, "fetch", "-q", url, ref)
    target = "FETCH_HEAD" if fetched.returncode == 0 else ref
    found = _git(clone, "rev-parse", "--verify", "-q", f"{target}^{{commit}}")
    if found.returncode:
        raise ValueError(f"REF {ref!r} is neither a branch, tag or commit of {url} nor a commit "
                         f"in {clone}: set REF (or $SPEECHLM_REF) to one. git: "
                         f"{fetched.stderr.strip()}")  # fmt: skip
    if fetched.returncode:
        print(f"Could not fetch {ref!r} from {url}; using the clone's own {ref!r}.")
    commit = found.stdout.strip()
    switched = _git(clone, "checkout", "-q", "--detach", commit)
    if switched.returncode:
        raise RuntimeError(f"could not check out {ref!r} in {clone}: {switched.stderr.strip()} "
                           f"(edited files there? discard them, or delete {clone})")  # fmt: skip
    return commit


def is_installed(clone: Path, commit: str) -> bool:
    """Whether this Python has the clone installed (editable) at ``commit``, moshi included."""
    marker = clone / ".git" / INSTALLED_MARKER
    if not marker.is_file() or marker.read_text().strip() != f"{sys.executable} {commit}":
        return False
    try:
        if importlib.metadata.version("moshi") != MOSHI_VERSION:
            return False
    except importlib.metadata.PackageNotFoundError:
        return False
    for dist in importlib.metadata.distributions(name=DIST_NAME):
        direct = json.loads(dist.read_text("direct_url.json") or "{}")  # pip writes it
        if direct.get("url") == clone.as_uri():
            return True
    return False


def install(clone: Path, commit: str) -> bool:
    """``pip install -e clone`` and ``pip install --no-deps moshi`` into this Python, unless
    `is_installed`; True when pip ran."""
    if is_installed(clone, commit):
        return False
    print("Installing the clone and its dependencies (once per VM and commit; a few minutes)...")
    for args in (["-e", str(clone)], ["--no-deps", f"moshi=={MOSHI_VERSION}"]):
        command = [sys.executable, "-m", "pip", "install", "-q", *args]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"`{' '.join(command)}` failed (exit {done.returncode}):\n"
                               f"{done.stderr.strip()[-3000:]}")  # fmt: skip
    (clone / ".git" / INSTALLED_MARKER).write_text(f"{sys.executable} {commit}\n")
    importlib.invalidate_caches()
    return True


def make_importable(clone: Path, forget: bool = False) -> None:
    """Put the clone first on ``sys.path`` (the editable install's ``.pth`` is only read when
    Python starts) and, with ``forget``, drop ``speechlm_utils`` modules imported before: they
    may come from another checkout or commit."""
    sys.path[:] = [str(clone), *(p for p in sys.path if p != str(clone))]
    if forget:
        for name in [n for n in sys.modules if n == "speechlm_utils" or
                     n.startswith("speechlm_utils.")]:  # fmt: skip
            del sys.modules[name]
    importlib.invalidate_caches()


def use_drive(mount_point: Path) -> Path:
    """Mount Google Drive at ``mount_point`` and make its ``speechlm/data`` the data root."""
    from google.colab import drive

    drive.mount(str(mount_point))
    data = mount_point / DRIVE_DATA
    data.mkdir(parents=True, exist_ok=True)
    os.environ[DATA_DIR_ENV] = str(data)
    return data


def forget_drive(mount_point: Path) -> Path | None:
    """Stop using a data root on Drive that an earlier run set; the data root a user chose
    elsewhere (None: the default)."""
    chosen = os.environ.get(DATA_DIR_ENV)
    if chosen and Path(chosen).is_relative_to(mount_point):
        del os.environ[DATA_DIR_ENV]
        return None
    return Path(chosen) if chosen else None


def enable_widgets() -> None:
    """Let Colab render third-party widgets (anywidget: notebook 06's recorder and player)."""
    from google.colab import output

    output.enable_custom_widget_manager()


def secret(name: str) -> str | None:
    """``$name``, else the Colab secret ``name``, else None (never a prompt)."""
    value = os.environ.get(name, "").strip()
    if value:
        return value
    try:
        from google.colab import userdata

        return (userdata.get(name) or "").strip() or None
    except Exception:  # no such secret, or this notebook was not given access to it
        return None


def hub_token() -> str | None:
    """The Hugging Face token: ``$HF_TOKEN``, else the Colab secret ``HF_TOKEN``, else None."""
    return secret(HF_TOKEN_NAME)


def login_to_wandb() -> bool:
    """W&B's key from the Colab secret ``WANDB_API_KEY`` into ``$WANDB_API_KEY`` (what wandb
    reads, in subprocesses too). Without one, training logs offline (`train.wandb_mode`)."""
    from .train import wandb_credentials

    key = secret(WANDB_KEY_NAME)
    if key:
        os.environ[WANDB_KEY_NAME] = key
    if key or wandb_credentials():
        print("W&B: an API key is set; training logs online.")
        return True
    print("W&B: no WANDB_API_KEY secret, so training logs offline (the loss curves are drawn in "
          "the notebook either way); add the secret from https://wandb.ai/authorize to log "
          "online.")  # fmt: skip
    return False


HOW_TO_ADD_A_TOKEN = """\
Hugging Face: {lm} is gated; notebooks 03-06 download its tokenizer and weights. For access:
  1. accept the terms on https://huggingface.co/{lm} (logged in to huggingface.co);
  2. create a token with read access on https://huggingface.co/settings/tokens;
  3. in Colab, open Secrets (the key icon on the left), add HF_TOKEN with the token as its
     value and turn on "Notebook access";
  4. run this cell again."""


def login_to_hub(lm: str, profile: str) -> bool:
    """Give the Hub the token (as ``$HF_TOKEN``, read by every download, in subprocesses too)
    when the full profile needs the gated ``lm``; else say how to add one. True: access
    confirmed or not needed."""
    if profile != "full" or Path(lm).exists():  # the tiny profile and local weights need none
        return True
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    token = hub_token()
    if token is None:
        try:
            gated = huggingface_hub.model_info(lm, token=False, timeout=10).gated
        except Exception:  # offline, or an unknown repo: the download will say
            gated = True
        if gated:
            print(HOW_TO_ADD_A_TOKEN.format(lm=lm))
        return not gated
    os.environ[HF_TOKEN_NAME] = token
    try:
        huggingface_hub.auth_check(lm, token=token)
    except GatedRepoError:
        print(f"Hugging Face: the token works, but gives no access to {lm}: accept the terms on "
              f"https://huggingface.co/{lm}, then run this cell again.")  # fmt: skip
        return False
    except Exception as error:  # a bad token, no network: the download will fail the same way
        print(f"Hugging Face: could not check access to {lm} with the HF_TOKEN token: {error}")
        return False
    print(f"Hugging Face: logged in with the HF_TOKEN token; {lm} is accessible.")
    return True


def sync_notebooks(folder: str | Path) -> list[Path]:
    """Write `COLAB_CELL` as the second cell of every notebook in ``folder`` (run this after
    changing it); returns the notebooks changed."""
    import nbformat

    changed = []
    for path in sorted(Path(folder).glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        cell = nb.cells[1]
        if cell.cell_type == "code" and cell.source == COLAB_CELL:
            continue
        cell.source, cell.outputs, cell.execution_count = COLAB_CELL, [], None
        nbformat.write(nb, path)
        changed.append(path)
    return changed
