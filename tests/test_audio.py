import shutil
import subprocess

import numpy as np
import pytest

from speechlm_utils import audio
from speechlm_utils.audio import AudioDecodeError, load_audio, probe

from .conftest import DEMO_DIR


def test_falls_back_to_the_wheel_ffmpeg(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    exe = audio.ffmpeg_exe()
    assert "imageio_ffmpeg" in exe
    out = subprocess.run([exe, "-version"], capture_output=True, text=True)
    assert out.returncode == 0 and "ffmpeg version" in out.stdout


def test_ffmpeg_is_callable_by_name_after_ensure(monkeypatch, tmp_path):
    real_which = shutil.which
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(audio, "_FFMPEG_LINK_DIR", tmp_path / "bin")
    assert real_which("ffmpeg") is None
    audio.ensure_ffmpeg_on_path()
    found = real_which("ffmpeg")
    assert found is not None and found.startswith(str(tmp_path))
    assert subprocess.run(["ffmpeg", "-version"], capture_output=True).returncode == 0


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
