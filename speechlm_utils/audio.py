"""Audio constants, ffmpeg resolution and decoding.

ffmpeg comes from the system when present, else from the static binary inside the
``imageio-ffmpeg`` wheel, so set-up needs nothing but pip; ``SPEECHLM_FFMPEG`` (``system``,
``bundled`` or a path) picks one. openai-whisper calls ``ffmpeg`` by name, so
`ensure_ffmpeg_on_path` exposes the chosen binary under that name.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .config import ffmpeg_choice

MIMI_SAMPLE_RATE_HZ = 24_000  # Mimi's input and output rate
MIMI_FRAME_RATE_HZ = 12.5  # Mimi frames per second (80 ms each)
MIMI_FRAME_SAMPLES = 1_920  # samples per Mimi frame at 24 kHz
WHISPER_SAMPLE_RATE_HZ = 16_000  # openai-whisper's input rate
OPUS_SAMPLE_RATE_HZ = 48_000  # Opus counts its pre-skip in 48 kHz samples, whatever the input

_FFMPEG_LINK_DIR = Path.home() / ".cache" / "speechlm" / "bin"
_INPUTS_PER_CALL = 64  # files one ffmpeg call opens at once (far below the usual 1024 fd limit)


class AudioDecodeError(RuntimeError):
    """ffmpeg could not decode a file (not audio, empty, truncated or missing)."""


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary: as ``$SPEECHLM_FFMPEG`` says (``system``, ``bundled`` or a
    path), else the system one, else the one in the imageio-ffmpeg wheel."""
    choice = ffmpeg_choice()
    keyword = choice.lower() if choice else None
    if keyword in (None, "system"):
        system = _system_ffmpeg()
        if system:
            return system
        if keyword == "system":
            raise RuntimeError("SPEECHLM_FFMPEG=system but no ffmpeg is on PATH: install it "
                               "(apt/brew/conda), or set SPEECHLM_FFMPEG=bundled")  # fmt: skip
        return _bundled_ffmpeg()
    if keyword == "bundled":
        return _bundled_ffmpeg()
    path = Path(choice).expanduser()
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise RuntimeError(f"SPEECHLM_FFMPEG={choice}: no executable file there; set it to "
                           "system, bundled or the path of an ffmpeg binary")  # fmt: skip
    return str(path.resolve())


def _system_ffmpeg() -> str | None:
    """``ffmpeg`` on PATH, our own link to the chosen binary left out."""
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    path = os.pathsep.join(d for d in dirs if Path(d) != _FFMPEG_LINK_DIR)
    return shutil.which("ffmpeg", path=path)


def _bundled_ffmpeg() -> str:
    try:
        import imageio_ffmpeg
    except ImportError as err:  # pragma: no cover - it is a dependency
        raise RuntimeError(
            "no ffmpeg found: install it (apt/brew/conda) or `pip install imageio-ffmpeg`"
        ) from err
    return imageio_ffmpeg.get_ffmpeg_exe()


def ensure_ffmpeg_on_path() -> str:
    """Make ``ffmpeg`` by name run the binary `ffmpeg_exe` chose (for openai-whisper), through a
    link put first on PATH when another one would be found first; return the binary's path."""
    exe = ffmpeg_exe()
    by_name = shutil.which("ffmpeg")
    if by_name and Path(by_name).resolve() == Path(exe).resolve():
        return exe
    _FFMPEG_LINK_DIR.mkdir(parents=True, exist_ok=True)
    link = _FFMPEG_LINK_DIR / "ffmpeg"
    if not link.is_symlink() or link.resolve() != Path(exe).resolve():
        tmp = link.with_name(f".ffmpeg.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(exe)
        tmp.replace(link)  # atomic, so parallel callers never see a half-made link
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if Path(d) != _FFMPEG_LINK_DIR]
    os.environ["PATH"] = os.pathsep.join([str(_FFMPEG_LINK_DIR), *dirs])  # first: whisper finds it
    return exe


def load_audio(path: str | Path, sample_rate_hz: int = MIMI_SAMPLE_RATE_HZ) -> np.ndarray:
    """Decode any file ffmpeg reads to mono float32 at ``sample_rate_hz``.

    Returns: ``[T]`` float32 in [-1, 1]. Raises `AudioDecodeError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioDecodeError(f"{path}: no such file")
    return _ffmpeg_decode(["-i", str(path)], None, sample_rate_hz, str(path))


def decode_audio_bytes(data: bytes, sample_rate_hz: int = MIMI_SAMPLE_RATE_HZ,
                       name: str = "audio bytes") -> np.ndarray:  # fmt: skip
    """`load_audio` for an encoded file held in memory (a data set's WAV, FLAC, MP3 or Opus
    bytes), through the same ffmpeg decode and resampling as the training audio."""
    return _ffmpeg_decode(["-i", "pipe:0"], data, sample_rate_hz, name)


def resample(wav: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """``wav[T]`` float32 at ``from_hz`` resampled to ``to_hz`` by ffmpeg (its resampler is
    the one every training clip went through)."""
    if from_hz == to_hz:
        return np.asarray(wav, dtype=np.float32)
    raw = np.ascontiguousarray(wav, dtype=np.float32).tobytes()
    return _ffmpeg_decode(["-f", "f32le", "-ar", str(from_hz), "-ac", "1", "-i", "pipe:0"],
                          raw, to_hz, "a waveform")  # fmt: skip


def _ffmpeg_decode(inputs: list[str], stdin: bytes | None, sample_rate_hz: int,
                   name: str) -> np.ndarray:  # fmt: skip
    cmd = [
        ffmpeg_exe(), *(["-nostdin"] if stdin is None else []), "-hide_banner",
        "-loglevel", "error", *inputs, "-vn", "-ac", "1", "-ar", str(sample_rate_hz),
        "-f", "f32le", "-",
    ]  # fmt: skip
    proc = subprocess.run(cmd, input=stdin, capture_output=True)
    if proc.returncode != 0:
        reason = proc.stderr.decode(errors="replace").strip().splitlines()
        raise AudioDecodeError(f"{name}: ffmpeg failed: {reason[-1] if reason else 'no output'}")
    wav = np.frombuffer(proc.stdout, dtype=np.float32)
    if wav.size == 0:
        raise AudioDecodeError(f"{name}: decoded to zero samples (empty or not audio)")
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


def start_skips_s(paths: list[Path], codec: str) -> list[float]:
    """Seconds of audio a decoder drops at the start of each file (all of ``codec``): the
    encoder priming and decoder delay the file signals, so its first sample comes that much
    after its first packet.

    Where the skip is signalled: mp3 in the LAME tag (the encoder's delay + 529 decoder samples;
    no tag, no skip), mp4 in the edit list, Opus in its header's pre-skip. ffmpeg applies all of
    them, and its CLI starts a file's timeline at the first decoded sample, so the first packet
    of a stream copy sits at minus the skip. Opus in WebM is the exception: Matroska's
    millisecond timestamps and codec delay are read differently by ffmpeg 5 and 9, so its
    pre-skip is read from the header itself (remuxed to Ogg, where the header leads).
    """
    fmt = "ogg" if codec == "opus" else "framecrc"
    skips: list[float] = []
    with tempfile.TemporaryDirectory(prefix="speechlm-skip-") as tmp:
        for at in range(0, len(paths), _INPUTS_PER_CALL):
            batch = paths[at : at + _INPUTS_PER_CALL]
            cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error"]
            for path in batch:
                cmd += ["-i", str(path)]
            outs = [Path(tmp) / f"{at + i}.{fmt}" for i in range(len(batch))]
            for i, out in enumerate(outs):  # one output per file: -frames ends a whole output
                cmd += ["-map", f"{i}:a:0", "-c", "copy", "-frames:a", "1", "-f", fmt, str(out)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                reason = proc.stderr.strip().splitlines()
                raise AudioDecodeError(f"{batch[0].parent}: ffmpeg could not read the first "
                                       f"packets: {reason[-1] if reason else proc.returncode}")
            for path, out in zip(batch, outs):
                skips.append(_opus_pre_skip_s(out, path) if codec == "opus" else
                             _first_packet_skip_s(out, path))  # fmt: skip
    return skips


def _first_packet_skip_s(framecrc: Path, source: Path) -> float:
    text = framecrc.read_text()
    time_base = re.search(r"^#tb 0: (\d+)/(\d+)", text, re.M)
    packets = [line for line in text.splitlines() if line and not line.startswith("#")]
    if not time_base or not packets:
        raise AudioDecodeError(f"{source}: no audio packet")
    pts = int(packets[0].split(",")[2])
    return -pts * int(time_base[1]) / int(time_base[2])


def _opus_pre_skip_s(ogg: Path, source: Path) -> float:
    data = ogg.read_bytes()
    at = data.find(b"OpusHead")  # RFC 7845: magic, version, channels, pre-skip (u16 LE)
    if at < 0:
        raise AudioDecodeError(f"{source}: no Opus header")
    return int.from_bytes(data[at + 10 : at + 12], "little") / OPUS_SAMPLE_RATE_HZ
