"""A JupyterLab server on 127.0.0.1 and headless Chromium driven by Playwright.

Skipped, with the reason, when Chromium (Debian's ``chromium``; or ``$CHROMIUM_PATH``) or the
``playwright`` package is missing. The server runs on copies of the notebooks in a temp dir,
so executing them never writes outputs into the repository.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "data" / "screenshots"
CHROMIUM_ENV = "CHROMIUM_PATH"
BROWSER_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--use-fake-ui-for-media-stream",  # allow the microphone without asking
                 "--use-fake-device-for-media-stream"]  # a fake microphone (see browser())


def chromium_path() -> str | None:
    """``$CHROMIUM_PATH``, else chromium on PATH."""
    if os.environ.get(CHROMIUM_ENV):
        return os.environ[CHROMIUM_ENV]
    return shutil.which("chromium") or shutil.which("chromium-browser")


def pytest_collection_modifyitems(config, items):
    reason = None
    if chromium_path() is None:
        reason = ("browser tests skipped: no Chromium (apt-get install chromium, or set "
                  "CHROMIUM_PATH)")
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "browser tests skipped: no playwright package (pip install playwright)"
    if reason:
        for item in items:
            if "tests/browser" in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=reason))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """A running JupyterLab: yields ``(base_url, token, root_dir)``; stopped afterwards."""
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    settings = root / "user-settings" / "@jupyterlab"
    for plugin, values in (("apputils-extension/notification", {"fetchNews": "false",
                                                                 "checkForUpdates": False}),
                           ("notebook-extension/tracker", {"windowingMode": "none"})):
        path = settings / f"{plugin}.jupyterlab-settings"  # no news prompt; render all cells
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    token, port = secrets.token_hex(16), _free_port()
    env = {**os.environ, "SPEECHLM_PROFILE": "tiny", "SPEECHLM_DATA_DIR": str(REPO / "data"),
           "JUPYTERLAB_SETTINGS_DIR": str(root / "user-settings"),
           "JUPYTER_RUNTIME_DIR": str(root / "runtime")}  # fmt: skip
    log = open(root / "lab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.news_url=None", "--ServerApp.open_browser=False", "--allow-root",
         "--MappingKernelManager.kernel_info_timeout=300"],  # 60 s: too short on a busy CPU
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if server.poll() is not None:
                raise RuntimeError((root / "lab.log").read_text()[-3000:]) from None
            time.sleep(0.5)
    else:
        server.kill()
        raise RuntimeError("JupyterLab did not start within 90 s")
    try:
        yield base, token, root
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="session")
def fake_mic_wav(tmp_path_factory) -> Path:
    """A 6 s tone-and-speech wav that Chromium's fake microphone plays."""
    from speechlm_utils.audio import MIMI_SAMPLE_RATE_HZ, load_audio
    from speechlm_utils.chat import wav_bytes

    wav = load_audio(REPO / "data" / "demo" / "demo_ep_002.m4a", MIMI_SAMPLE_RATE_HZ)
    path = tmp_path_factory.mktemp("mic") / "mic.wav"
    path.write_bytes(wav_bytes(wav[: 6 * MIMI_SAMPLE_RATE_HZ]))
    return path


@pytest.fixture(scope="session")
def browser(fake_mic_wav):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium_path(), headless=True,
            args=[*BROWSER_FLAGS, f"--use-file-for-fake-audio-capture={fake_mic_wav}"])  # fmt: skip
        yield browser
        browser.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000},
                                  permissions=["microphone"])  # fmt: skip
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()


def open_notebook(page, lab, name: str) -> None:
    """Open a notebook in JupyterLab and wait for its kernel to be idle."""
    base, token, _ = lab
    workspace = f"ws-{secrets.token_hex(4)}"  # a fresh workspace: no tabs restored
    page.goto(f"{base}/lab/workspaces/{workspace}/tree/notebooks/{name}?token={token}&reset")
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=90_000)
    dismiss_dialogs(page)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)


def dismiss_dialogs(page) -> None:
    """Accept whatever JupyterLab asks on a fresh profile (kernel picker, news, ...)."""
    for _ in range(3):
        dialog = page.locator(".jp-Dialog")
        if not dialog.count():
            return
        dialog.locator(".jp-Dialog-button.jp-mod-accept").first.click()
        page.wait_for_timeout(300)


def _click_run_all(page) -> None:
    page.locator(".jp-NotebookPanel:visible .jp-Notebook").first.click()
    page.keyboard.press("Escape")
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    dismiss_dialogs(page)


def run_all(page, timeout_s: float = 480) -> None:
    """Run > Run All Cells, then wait until no cell is queued or running. A click that a
    still-starting JupyterLab swallowed (no cell queued after 30 s) is repeated."""
    _click_run_all(page)
    deadline = time.time() + timeout_s
    clicked = time.time()
    page.wait_for_timeout(1000)
    while time.time() < deadline:
        texts = page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
        prompts = [p.strip() for p in texts]
        if prompts and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts):
            return
        if all(p in ("[ ]:", "") for p in prompts) and time.time() - clicked > 30:
            _click_run_all(page)  # nothing started: the menu click was lost
            clicked = time.time()
        page.wait_for_timeout(1000)
    raise TimeoutError(f"cells still running after {timeout_s} s")


def assert_no_traceback(page) -> None:
    stderr = "application/vnd.jupyter.stderr"
    errors = page.locator(f".jp-OutputArea-output[data-mime-type='{stderr}']")
    texts = errors.all_inner_texts()
    assert not [t for t in texts if "Traceback" in t or "Error" in t.split("\n")[0]], texts


def screenshot(page, name: str, locator=None) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    (locator or page).screenshot(path=str(path))
    return path
