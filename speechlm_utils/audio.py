"""Audio constants, ffmpeg resolution and decoding.

ffmpeg comes from the system when present, else from the static binary inside the
``imageio-ffmpeg`` wheel, so set-up needs nothing but pip. openai-whisper calls ``ffmpeg`` by
name, so `ensure_ffmpeg_on_path` exposes the chosen binary under that name.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

MIMI_SAMPLE_RATE_HZ = 24_000  # Mimi's input and output rate
MIMI_FRAME_RATE_HZ = 12.5  # Mimi frames per second (80 ms each)
MIMI_FRAME_SAMPLES = 1_920  # samples per Mimi frame at 24 kHz
WHISPER_SAMPLE_RATE_HZ = 16_000  # openai-whisper's input rate

_FFMPEG_LINK_DIR = Path.home() / ".cache" / "speechlm" / "bin"


class AudioDecodeError(RuntimeError):
    """ffmpeg could not decode a file (not audio, empty, truncated or missing)."""


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary: the system one, else the one in the imageio-ffmpeg wheel."""
    system = shutil.which("ffmpeg")
    if system:
        return system
    try:
        import imageio_ffmpeg
    except ImportError as err:  # pragma: no cover - it is a dependency
        raise RuntimeError(
            "no ffmpeg found: install it (apt/brew/conda) or `pip install imageio-ffmpeg`"
        ) from err
    return imageio_ffmpeg.get_ffmpeg_exe()


def ensure_ffmpeg_on_path() -> str:
    """Make ``ffmpeg`` callable by name (for openai-whisper); return the binary's path."""
    system = shutil.which("ffmpeg")
    if system:
        return system
    exe = ffmpeg_exe()
    _FFMPEG_LINK_DIR.mkdir(parents=True, exist_ok=True)
    link = _FFMPEG_LINK_DIR / "ffmpeg"
    if not link.exists() or link.resolve() != Path(exe).resolve():
        tmp = link.with_name(f".ffmpeg.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(exe)
        tmp.replace(link)  # atomic, so parallel callers never see a half-made link
    path = os.environ.get("PATH", "")
    if str(_FFMPEG_LINK_DIR) not in path.split(os.pathsep):  # whisper finds it by name
        os.environ["PATH"] = f"{_FFMPEG_LINK_DIR}{os.pathsep}{path}"
    return str(link)


def load_audio(path: str | Path, sample_rate_hz: int = MIMI_SAMPLE_RATE_HZ) -> np.ndarray:
    """Decode any file ffmpeg reads to mono float32 at ``sample_rate_hz``.

    Returns: ``[T]`` float32 in [-1, 1]. Raises `AudioDecodeError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioDecodeError(f"{path}: no such file")
    cmd = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error",
        "-i", str(path), "-vn", "-ac", "1", "-ar", str(sample_rate_hz),
        "-f", "f32le", "-",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        reason = proc.stderr.decode(errors="replace").strip().splitlines()
        raise AudioDecodeError(f"{path}: ffmpeg failed: {reason[-1] if reason else 'no output'}")
    wav = np.frombuffer(proc.stdout, dtype=np.float32)
    if wav.size == 0:
        raise AudioDecodeError(f"{path}: decoded to zero samples (empty or not audio)")
    return wav.copy()


def probe(path: str | Path) -> dict:
    """Container duration and the first audio stream's codec, read from ffmpeg's banner.

    Works with the ffmpeg-only imageio binary (no ffprobe). Returns
    ``{"duration_s": float | None, "codec": str | None}``.
    """
    proc = subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-hide_banner", "-i", str(path)],
        capture_output=True,
        text=True,
    )
    text = proc.stderr
    duration = re.search(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)", text)
    codec = re.search(r"Stream #\S+.*?Audio:\s*([\w-]+)", text)
    duration_s = None
    if duration:
        h, m, s = duration.groups()
        duration_s = int(h) * 3600 + int(m) * 60 + float(s)
    return {"duration_s": duration_s, "codec": codec.group(1) if codec else None}
