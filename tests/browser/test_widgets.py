"""The notebooks' widgets in a real browser: JupyterLab + headless Chromium (see conftest)."""

from __future__ import annotations

import re

from .conftest import (
    REPO,
    assert_no_traceback,
    open_notebook,
    run_all,
    screenshot,
)


def _set_slider(page, widget, value: float) -> None:
    """Type a value into an ipywidgets slider's readout, as a user can."""
    readout = widget.locator(".widget-readout").first
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(f"{value}")
    page.keyboard.press("Enter")


def test_alignment_explorer_follows_the_slider(page, lab):
    open_notebook(page, lab, "04_token_alignment.ipynb")
    run_all(page)
    assert_no_traceback(page)
    info = page.locator(".widget-html-content", has_text="text slots:").last
    info.wait_for()
    assert "group 0: 0.0-0.4 s" in info.inner_text()
    slider = page.locator(".widget-slider", has_text="time (s)").last
    _set_slider(page, slider, 2.0)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.widget-html-content')]"
        ".some(e => e.innerText.includes('group 5: 2.0-2.4 s'))")  # fmt: skip
    assert "group 5: 2.0-2.4 s" in info.inner_text()
    assert re.search(r"cb0:\s+\d+", info.inner_text())  # the group's codes are listed
    explorer = page.locator(".jp-Cell", has_text="text slots:").last
    assert explorer.locator("audio").count() >= 1  # the span's audio player
    explorer.scroll_into_view_if_needed()
    screenshot(page, "04_alignment_explorer", explorer.locator(".jp-OutputArea").first)


def test_chat_widget_answers_an_upload_and_explains_a_bad_one(page, lab, tmp_path):
    open_notebook(page, lab, "06_chat_widget.ipynb")
    run_all(page)
    assert_no_traceback(page)
    status = page.locator(".speechlm-status").last
    status.wait_for()
    upload_button = page.locator(".widget-upload").last

    def upload(path):  # as a user does: click, pick the file in the chooser
        with page.expect_file_chooser() as chooser:
            upload_button.click()
        chooser.value.set_files(str(path))

    question = tmp_path / "question.wav"
    question.write_bytes((REPO / "tests" / "assets" / "question.wav").read_bytes())
    upload(question)
    page.wait_for_function(
        "() => document.querySelector('.speechlm-status')?.innerText.includes('question.wav')")
    page.get_by_role("button", name="Respond").click()
    transcript = page.locator(".widget-html-content", has_text="first audio after").last
    transcript.wait_for(timeout=180_000)
    chat = page.locator(".widget-vbox", has_text="Talk to the model").first
    assert chat.locator("audio").count() >= 1  # the reply's player
    assert "model" in transcript.inner_text()

    notes = tmp_path / "notes.txt"
    notes.write_text("this is not audio\n" * 50)
    upload(notes)
    page.wait_for_function(
        "() => document.querySelector('.speechlm-status')?.innerText.includes('not audio')")
    upload(question)  # the widget still works after bad input
    page.wait_for_function(
        "() => document.querySelector('.speechlm-status')?.innerText.includes('Got')")
    chat.scroll_into_view_if_needed()
    screenshot(page, "06_chat_widget", chat)


def test_microphone_recording_reaches_the_kernel(page, lab):
    open_notebook(page, lab, "06_chat_widget.ipynb")
    run_all(page)
    record = page.locator(".speechlm-record").last
    record.click()  # Chromium's fake device plays a known wav into the microphone
    page.wait_for_function(
        "() => document.querySelector('.speechlm-record-info')?.innerText.includes('recording')")
    page.wait_for_timeout(2500)
    record.click()
    page.wait_for_function(
        "() => /Got recording\\.(webm|ogg) \\(/.test("
        "document.querySelector('.speechlm-status')?.innerText || '')", timeout=60_000)
    seconds = float(re.search(r"\((\d+\.\d) s\)", page.locator(".speechlm-status").last
                              .inner_text()).group(1))  # fmt: skip
    assert 1.5 <= seconds <= 4.0  # decoded in the kernel, about as long as we recorded
    screenshot(page, "06_microphone")


def _live_info(page) -> str:
    return page.locator(".speechlm-live-info").last.inner_text()


def test_live_duplex_streams_the_microphone_and_plays_the_reply(page, lab):
    open_notebook(page, lab, "08_full_duplex.ipynb")
    run_all(page)
    assert_no_traceback(page)
    live = page.locator(".speechlm-live").last
    live.click()  # Chromium's fake device plays a known wav into the microphone
    page.wait_for_function(  # reply audio for 3 groups received and scheduled to play
        "() => +(/live: (\\d+) groups back/.exec("
        "document.querySelector('.speechlm-live-info')?.innerText || '') || [])[1] >= 3",
        timeout=120_000)  # fmt: skip
    info = _live_info(page)
    latency_ms = float(re.search(r"latency (\d+) ms \(mean (\d+) ms", info).group(2))
    assert 0 < latency_ms < 60_000, info  # measured by the browser, piece sent to reply back
    timing = page.locator(".speechlm-duplex-timing").last.inner_text()
    assert int(re.match(r"(\d+) groups, per group", timing).group(1)) >= 3, timing
    status = page.locator(".speechlm-status").last.inner_text()
    level = float(re.search(r"groups heard, the last at (-?\d+) dBFS", status).group(1))
    assert level > -50, status  # the fake microphone's speech, not silence
    box = page.locator(".widget-vbox", has_text="Full duplex").first
    box.scroll_into_view_if_needed()
    screenshot(page, "08_live_duplex", box)
    live.click()  # stop: the kernel answers the pieces it was sent, then says how many
    assert live.inner_text().endswith("Start live")
    page.wait_for_function(
        "() => /Live stopped after \\d+ groups/.test("
        "document.querySelector('.speechlm-status')?.innerText || '')", timeout=120_000)
    status = page.locator(".speechlm-status").last.inner_text()
    ran, got = map(int, re.search(r"after (\d+) groups; the browser got (\d+) back",
                                  status).groups())  # fmt: skip
    assert ran >= got >= 3, status  # groups_back reached the kernel; every reply was a group
    assert _live_info(page).startswith("stopped:")
