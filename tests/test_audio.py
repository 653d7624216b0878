import shutil
import subprocess

import numpy as np
import pytest

from speechlm_utils import audio
from speechlm_utils.audio import AudioDecodeError, load_audio, probe

from .conftest import DEMO_DIR


def test_falls_back_to_the_wheel_ffmpeg(monkeypatch, tmp_path):
    monkeypatch.delenv("SPEECHLM_FFMPEG", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name, **kw: None)
    exe = audio.ffmpeg_exe()
    assert "imageio_ffmpeg" in exe
    out = subprocess.run([exe, "-version"], capture_output=True, text=True)
    assert out.returncode == 0 and "ffmpeg version" in out.stdout


def test_ffmpeg_is_callable_by_name_after_ensure(monkeypatch, tmp_path):
    real_which = shutil.which
    monkeypatch.delenv("SPEECHLM_FFMPEG", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(audio, "_FFMPEG_LINK_DIR", tmp_path / "bin")
    assert real_which("ffmpeg") is None
    audio.ensure_ffmpeg_on_path()
    found = real_which("ffmpeg")
    assert found is not None and found.startswith(str(tmp_path))
    assert subprocess.run(["ffmpeg", "-version"], capture_output=True).returncode == 0


def test_speechlm_ffmpeg_picks_the_binary_and_its_name_follows(monkeypatch, tmp_path):
    fake = tmp_path / "system" / "ffmpeg"  # stands for the system ffmpeg
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho fake ffmpeg\n")
    fake.chmod(0o755)
    monkeypatch.setattr(audio, "_FFMPEG_LINK_DIR", tmp_path / "bin")
    monkeypatch.setenv("PATH", str(fake.parent))

    def by_name():
        return subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout

    monkeypatch.delenv("SPEECHLM_FFMPEG", raising=False)
    assert audio.ffmpeg_exe() == audio.ensure_ffmpeg_on_path() == str(fake)
    assert by_name() == "fake ffmpeg\n"
    monkeypatch.setenv("SPEECHLM_FFMPEG", "bundled")  # although a system one exists
    assert "imageio_ffmpeg" in audio.ensure_ffmpeg_on_path()
    assert by_name().startswith("ffmpeg version")  # whisper gets the bundled one too
    monkeypatch.setenv("SPEECHLM_FFMPEG", "system")  # our link on PATH does not count as system
    assert audio.ffmpeg_exe() == audio.ensure_ffmpeg_on_path() == str(fake)
    assert by_name() == "fake ffmpeg\n"
    monkeypatch.setenv("SPEECHLM_FFMPEG", str(fake))
    assert audio.ffmpeg_exe() == str(fake)
    for bad in (str(tmp_path / "missing"), str(tmp_path)):
        monkeypatch.setenv("SPEECHLM_FFMPEG", bad)
        with pytest.raises(RuntimeError, match="SPEECHLM_FFMPEG"):
            audio.ffmpeg_exe()
    monkeypatch.setenv("SPEECHLM_FFMPEG", "system")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # only our link: no system ffmpeg
    with pytest.raises(RuntimeError, match="SPEECHLM_FFMPEG=system"):
        audio.ffmpeg_exe()


def test_start_skips_are_what_each_container_signals(tmp_path):
    mp3, flac = tmp_path / "lame.mp3", tmp_path / "x.flac"
    for out, args in ((mp3, ["-c:a", "libmp3lame", "-b:a", "48k"]), (flac, ["-c:a", "flac"])):
        subprocess.run([audio.ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-i",
                        str(DEMO_DIR / "demo_ep_003.webm"), "-t", "3", *args, str(out)],
                       check=True)  # fmt: skip
    cases = [(DEMO_DIR / "demo_ep_002.m4a", "aac", 1024 / 22_050),  # edit list: AAC priming
             (mp3, "mp3", (576 + 529) / 48_000),  # LAME tag: encoder delay + decoder delay
             (DEMO_DIR / "demo_ep_001.webm", "opus", 312 / 48_000),  # Opus header's pre-skip
             (flac, "flac", 0.0)]  # fmt: skip
    for path, codec, skip_s in cases:
        assert audio.start_skips_s([path], codec) == [pytest.approx(skip_s, abs=1e-6)], codec


@pytest.mark.parametrize("name,codec", [("demo_ep_001.webm", "opus"), ("demo_ep_002.m4a", "aac")])
def test_decode_and_probe_demo_media(name, codec):
    wav = load_audio(DEMO_DIR / name, 16_000)
    info = probe(DEMO_DIR / name)
    assert info["codec"] == codec
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(wav.size / 16_000 - info["duration_s"]) < 0.05
    assert 0.01 < np.abs(wav).max() <= 1.0


def test_bad_files_raise_naming_the_file(tmp_path):
    text = tmp_path / "notes.webm"
    text.write_text("this is not audio\n" * 10)
    empty = tmp_path / "empty.m4a"
    empty.write_bytes(b"")
    for bad in (text, empty, tmp_path / "missing.opus"):
        with pytest.raises(AudioDecodeError, match=bad.name):
            load_audio(bad)
