"""Stage 02: download audio-only streams and cut them into chunks without transcoding.

For each index entry: yt-dlp downloads the best audio-only stream (``bestaudio/best``, no
post-processing) into ``<out>/.tmp/<id>/``; ffmpeg's segment muxer cuts it as it is
(``-c copy -map 0:a:0``, so a video stream is never kept) into
``<out>/<id[:2]>/<id>/<id>_%05d.<ext>`` with the codec untouched; the chunk folder appears
atomically (built in the temp folder, then renamed) with ``chunks.json`` listing each chunk's
real start and end, the source's packet length, and the chunks the speech filter dropped. A
transcript or captions found beside the media are split at the chunks' starts into each chunk's
words, and into its speaker turns when they label speakers (``speaker_source`` sidecar);
``--diarize`` gives the videos without labels turns from pyannote (``speaker_source``
diarization), for the duplex layout (stage 08). The download is removed. Each video gets one
line in ``scrape.jsonl``: ``ok``, ``failed`` (with a short reason) or ``skipped``.

Failures never stop the run; a re-run skips every video with a line (``--retry-failed`` redoes
the failed ones), and anything a crash or Ctrl-C left in ``.tmp`` is removed and redone.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from .audio import (
    WHISPER_SAMPLE_RATE_HZ,
    AudioDecodeError,
    ffmpeg_exe,
    load_audio,
    probe,
    start_skips_s,
)
from .captions import CAPTION_EXTENSIONS, parse_file, read_beside, split_by_chunks
from .config import ScrapeConfig
from .manifest import JsonlWriter, read_jsonl, take_shard, write_json_atomic

SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # ids become folder names: nothing else passes
CHUNK_EXT_BY_CODEC = {"opus": "webm", "vorbis": "webm", "aac": "m4a", "mp3": "mp3",
                      "flac": "flac"}  # fmt: skip
TMP_DIR = ".tmp"
LAST_CHUNK_RATE_HZ = 48_000  # the last chunk is decoded at this rate to time its end
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ScrapeError(Exception):
    """A video could not be scraped; the message is the manifest's short reason."""


def chunk_dir(out_root: Path, video_id: str) -> Path:
    """``<out>/<id[:2]>/<id>``: two-letter fan-out keeps folders small at millions of videos."""
    if not SAFE_ID.match(video_id) or video_id.startswith("-"):
        raise ScrapeError(f"unsafe video id {video_id!r}")
    return out_root / video_id[:2] / video_id


def read_chunk_listings(out_root: str | Path) -> list[dict]:
    """Each finished video's ``chunks.json`` under ``out_root``, with its ``folder``."""
    listings = []
    for path in sorted(Path(out_root).glob("*/*/chunks.json")):
        listings.append({**json.loads(path.read_text()), "folder": path.parent})
    return listings


class _NullLogger:
    def debug(self, msg):
        pass

    warning = info = debug

    def error(self, msg):
        pass


def download_audio(url: str, workdir: Path, cfg: ScrapeConfig, stop=None) -> Path:
    """Best audio-only stream of ``url`` into ``workdir`` via yt-dlp; the file's path. A set
    ``stop`` (a `threading.Event`: Ctrl-C in `run_scrape`) ends the download at its next piece."""
    import yt_dlp

    def stop_hook(_status: dict) -> None:
        if stop is not None and stop.is_set():
            raise ScrapeError("interrupted")

    opts = {
        "format": "bestaudio/best",
        "outtmpl": str(workdir / "download.%(ext)s"),
        "paths": {"home": str(workdir), "temp": str(workdir)},
        "postprocessors": [],
        "noplaylist": True,
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "logger": _NullLogger(),
        "retries": cfg.download_retries,
        "socket_timeout": cfg.socket_timeout_s,
        "enable_file_urls": True,  # --source local:DIR indexes file:// URLs
        "cachedir": False,
        "overwrites": True,
        "progress_hooks": [stop_hook],
    }
    if cfg.cookies_file:
        opts["cookiefile"] = str(cfg.cookies_file)
    if cfg.rate_limit_bps:
        opts["ratelimit"] = cfg.rate_limit_bps
    if cfg.proxy:
        opts["proxy"] = cfg.proxy
    if cfg.captions:
        opts.update({"writesubtitles": True, "writeautomaticsub": True,
                     "subtitleslangs": list(cfg.caption_langs),
                     "subtitlesformat": "json3/vtt/srt/best"})  # fmt: skip
    try:
        with yt_dlp.YoutubeDL(opts) as ydl:
            info = ydl.extract_info(url, download=True)
    except yt_dlp.utils.DownloadError as err:
        if cfg.captions and "subtitle" in str(err).lower():  # captions are optional
            return download_audio(url, workdir, replace(cfg, captions=False), stop)
        raise ScrapeError(_short(str(err))) from err
    if info is None:
        raise ScrapeError("yt-dlp returned nothing")
    files = [Path(d["filepath"]) for d in info.get("requested_downloads", []) if d.get("filepath")]
    files = [f for f in files if f.exists()] or [
        f for f in sorted(workdir.glob("download.*")) if f.suffix not in CAPTION_EXTENSIONS]
    if not files:
        raise ScrapeError("download produced no file")
    return files[0]


def _short(message: str) -> str:
    text = _ANSI.sub("", message).replace("ERROR: ", "").strip().splitlines()
    return (text[0] if text else "unknown error")[:200]


def segment_copy(src: Path, dest: Path, video_id: str, chunk_s: float, ext: str,
                 codec: str | None = None) -> list[dict]:  # fmt: skip
    """Cut ``src`` into ``dest/<id>_%05d.<ext>`` by stream copy; returns each chunk's ``file``
    and the ``start_s`` and ``end_s`` of its decoded audio on the source's timeline (cuts land on
    packet boundaries, not at exact multiples of ``chunk_s``; see `place_chunks`)."""
    dest.mkdir(parents=True, exist_ok=True)
    listing = dest / "segments.csv"
    cmd = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(src),
        "-map", "0:a:0", "-c", "copy", "-f", "segment", "-segment_time", f"{chunk_s:g}",
        "-reset_timestamps", "1", "-segment_list", str(listing), "-segment_list_type", "csv",
        "-map_metadata", "-1", "-fflags", "+bitexact", str(dest / f"{video_id}_%05d.{ext}"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not listing.exists():
        err = proc.stderr.strip().splitlines()
        raise ScrapeError(f"ffmpeg segment failed: {err[-1][:160] if err else proc.returncode}")
    packets = []
    for line in listing.read_text().splitlines():
        name, start, end = line.rsplit(",", 2)
        packets.append((name, float(start), float(end)))
    listing.unlink()
    if not packets:
        raise ScrapeError("ffmpeg wrote no chunks")
    try:
        return place_chunks(src, dest, packets, codec or probe(src)["codec"])
    except AudioDecodeError as err:
        raise ScrapeError(f"unreadable chunk: {_short(str(err))}") from err


def place_chunks(src: Path, dest: Path, packets: list[tuple[str, float, float]],
                 codec: str | None) -> list[dict]:  # fmt: skip
    """Where each chunk's decoded audio lies on the source's timeline (0 = the source's first
    decoded sample), from the segment list's ``(file, start, end)`` of its packets.

    The segment list times a chunk by its packets, counted from the source's first packet. A
    decoder drops a start skip (encoder priming, decoder delay) that each file signals, so a
    chunk's audio starts at ``packet start + its skip - the source's skip`` and, as no later
    chunk skips anything at its end, ends at ``packet end - the source's skip``. The skips
    differ per codec (numbers at 48 kHz; measured with ffmpeg 4.2, 5.1, 7.0 and 9.0):

    - mp3: the LAME tag that the muxer writes into every chunk. The source skips 1105 (LAME's
      576 + the decoder's 529), chunk 0 too; later chunks skip 529 of real audio, and ffmpeg
      4.2, 5.1 and 7.0 (not 9.0) write -529 into the last chunk's tag, read back as 3567, so
      4096 are skipped there.
    - aac in mp4: the edit list that hides the priming (1024 samples) is not copied: chunk 0
      begins with it (its start is negative) and the chunks tile the rest exactly.
    - opus: every chunk copies the header's pre-skip (312): each starts at its packets and
      ends 312 samples before the next one (WebM's timestamps are whole milliseconds).
    - flac and PCM skip nothing.
    - vorbis is not corrected: a chunk's first packet only primes the decoder, so its audio
      may start up to a block (about 20 ms) away from ``start_s``.

    The last chunk also loses the source's end padding: its end is measured by decoding it, and
    it is dropped if nothing decodes from it (a sliver shorter than its own start skip).
    """
    files = [dest / name for name, _, _ in packets]
    source_skip_s, *skips = start_skips_s([Path(src), *files], codec or "")
    chunks = [{"file": name, "start_s": round(start + skip - source_skip_s, 6),
               "end_s": round(end - source_skip_s, 6)}
              for (name, start, end), skip in zip(packets, skips)]  # fmt: skip
    last = chunks[-1]
    try:
        decoded_s = load_audio(dest / last["file"], LAST_CHUNK_RATE_HZ).size / LAST_CHUNK_RATE_HZ
    except AudioDecodeError:
        decoded_s = 0.0
    if decoded_s == 0 and len(chunks) > 1:
        (dest / last["file"]).unlink()
        return chunks[:-1]
    last["end_s"] = round(last["start_s"] + decoded_s, 6)
    return chunks


def packet_duration_s(path: Path) -> float | None:
    """The length of one compressed packet of the first audio stream (e.g. 0.02 for YouTube's
    Opus, 1024 samples for AAC), read from its first packets with ffmpeg's framecrc muxer."""
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(path),
           "-map", "0:a:0", "-c", "copy", "-frames:a", "8", "-f", "framecrc", "-"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    base = re.search(r"^#tb 0: (\d+)/(\d+)", proc.stdout, re.M)
    durations = sorted(int(line.split(",")[3]) for line in proc.stdout.splitlines()
                       if line.startswith("0,") and line.count(",") >= 5)  # fmt: skip
    if proc.returncode or not base or not durations or durations[len(durations) // 2] <= 0:
        return None
    return durations[len(durations) // 2] * int(base[1]) / int(base[2])  # median: no edge packet


def transcode_segments(src: Path, dest: Path, chunk_s: float, codec: str) -> None:
    """The naive alternative to `segment_copy`: decode and re-encode every chunk (for
    comparison only; it costs CPU and loses quality)."""
    encoders = {"opus": ("webm", ["-c:a", "libopus", "-b:a", "32k"]),
                "aac": ("m4a", ["-c:a", "aac", "-b:a", "48k"]),
                "mp3": ("mp3", ["-c:a", "libmp3lame", "-b:a", "64k"])}  # fmt: skip
    ext, args = encoders[codec]
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-i", str(src), "-map", "0:a:0",
           *args, "-f", "segment", "-segment_time", f"{chunk_s:g}", "-reset_timestamps", "1",
           str(dest / f"t_%05d.{ext}")]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)


def compare_copy_vs_transcode(src: Path, workdir: Path, chunk_s: float = 20.0) -> dict:
    """Time chunking ``src`` by stream copy and by re-encoding; seconds and realtime factors."""
    info = probe(src)
    ext = CHUNK_EXT_BY_CODEC.get(info["codec"], "mka")
    start = time.perf_counter()
    segment_copy(src, workdir / "copy", "x", chunk_s, ext, info["codec"])
    copy_s = time.perf_counter() - start
    start = time.perf_counter()
    transcode_segments(src, workdir / "transcode", chunk_s, info["codec"])
    transcode_s = time.perf_counter() - start
    audio_s = info["duration_s"]
    return {"codec": info["codec"], "audio_s": audio_s, "copy_s": copy_s,
            "transcode_s": transcode_s, "copy_realtime": audio_s / copy_s,
            "transcode_realtime": audio_s / transcode_s, "speedup": transcode_s / copy_s}


class SpeechFilter:
    """Speech share of a chunk with silero-vad (its model ships in the wheel: runs offline)."""

    def __init__(self):
        import torch

        threads = torch.get_num_threads()
        from silero_vad import load_silero_vad  # its import sets torch to one thread, for all

        torch.set_num_threads(threads)  # (a notebook would train at half speed after it)
        self._model = load_silero_vad()
        self._lock = threading.Lock()  # the jit model keeps state between calls

    def speech_ratio(self, path: Path) -> float:
        import torch
        from silero_vad import get_speech_timestamps

        wav = torch.from_numpy(load_audio(path, WHISPER_SAMPLE_RATE_HZ))
        with self._lock:
            spans = get_speech_timestamps(wav, self._model, sampling_rate=WHISPER_SAMPLE_RATE_HZ)
        return sum(s["end"] - s["start"] for s in spans) / max(1, wav.numel())


def scrape_video(entry: dict, out_root: Path, cfg: ScrapeConfig,
                 speech: SpeechFilter | None = None, diarizer=None, stop=None) -> dict:  # fmt: skip
    """Download and chunk one video; the manifest record (never raises for a bad video). A set
    ``stop`` (Ctrl-C in `run_scrape`) ends it early, failed "interrupted"."""
    start = time.perf_counter()
    record = {"id": entry.get("id"), "url": entry.get("url"), "status": "failed", "reason": None,
              "n_chunks": 0, "duration_s": None, "bytes": 0}  # fmt: skip
    if stop is not None and stop.is_set():
        record["reason"] = "interrupted"
        return record
    try:
        final = chunk_dir(out_root, str(entry.get("id", "")))
        tmp = out_root / TMP_DIR / final.name
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "dl").mkdir(parents=True)
        try:
            record.update(_download_and_cut(entry, final, tmp, cfg, speech, diarizer, stop))
            record["status"], record["reason"] = "ok", None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except ScrapeError as err:
        record["reason"] = str(err)
    except Exception as err:  # an unexpected error in one video must not stop the run
        record["reason"] = f"{type(err).__name__}: {_short(str(err))}"
    record["seconds_taken"] = round(time.perf_counter() - start, 3)
    return record


def _download_and_cut(entry, final: Path, tmp: Path, cfg, speech, diarizer=None,
                      stop=None) -> dict:  # fmt: skip
    src = download_audio(entry["url"], tmp / "dl", cfg, stop)
    size = src.stat().st_size
    if size == 0:
        raise ScrapeError("empty download (0 bytes)")
    info = probe(src)
    if info["codec"] is None:
        raise ScrapeError(f"not audio (no audio stream in the .{src.suffix.lstrip('.')} file)")
    ext = CHUNK_EXT_BY_CODEC.get(info["codec"], "mka")  # Matroska takes any codec
    packet_s = packet_duration_s(src)
    chunks = segment_copy(src, tmp / "chunks", final.name, cfg.chunk_s, ext, info["codec"])
    got_s = chunks[-1]["end_s"]
    if info["duration_s"] and got_s < info["duration_s"] - max(2.0, 0.02 * info["duration_s"]):
        raise ScrapeError(f"truncated: {got_s:.1f} s of {info['duration_s']:.1f} s readable")
    text = _attach_timed_text(entry["url"], tmp / "dl", tmp / "chunks", chunks, got_s, cfg)
    speaker_source = "sidecar" if any("turns" in c for c in chunks) else None
    speaker_error = None
    if diarizer is not None and speaker_source is None:  # true labels win over a model's
        from .speakers import split_turns_by_chunks

        try:  # decoded at 16 kHz only once the pipeline is free (one episode in memory)
            turns = diarizer.turns(src)
        except Exception as err:  # the video keeps its chunks; `diarize` can try again
            speaker_error = f"{type(err).__name__}: {_short(str(err))}"
        else:
            starts = [c["start_s"] for c in chunks]
            for chunk, part in zip(chunks, split_turns_by_chunks(turns, starts, got_s)):
                chunk["turns"] = [[t.speaker, t.start_s, t.end_s] for t in part]
            speaker_source = "diarization"
    src.unlink()  # the download is not kept
    dropped = []
    if speech is not None:
        kept = []
        for chunk in chunks:
            chunk["speech_ratio"] = round(speech.speech_ratio(tmp / "chunks" / chunk["file"]), 3)
            if chunk["speech_ratio"] >= cfg.min_speech_ratio:
                kept.append(chunk)
            else:
                (tmp / "chunks" / chunk["file"]).unlink()
                dropped.append({k: v for k, v in chunk.items() if k != "words"})
        chunks = kept
    meta = {"id": final.name, "codec": info["codec"], "chunk_s": cfg.chunk_s,
            "packet_s": packet_s, "duration_s": round(got_s, 3), "source_bytes": size,
            "dropped_low_speech": len(dropped), "min_speech_ratio": cfg.min_speech_ratio,
            "text_source": text, "speaker_source": speaker_source, "chunks": chunks,
            "dropped": dropped}  # fmt: skip
    if speaker_error:
        meta["speaker_error"] = speaker_error
    write_json_atomic(tmp / "chunks" / "chunks.json", meta)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():  # a crash after the rename but before the manifest line: redo it
        shutil.rmtree(final)
    (tmp / "chunks").rename(final)
    return {"n_chunks": len(chunks), "duration_s": meta["duration_s"], "bytes": size,
            "codec": info["codec"], "dropped_low_speech": len(dropped),
            "text_source": text, "speaker_source": speaker_source}  # fmt: skip


def _find_timed_text(url: str, dl_dir: Path, cfg: ScrapeConfig) -> tuple[str, Path] | None:
    """Captions yt-dlp wrote (preferred language and format first), else a sidecar transcript
    beside non-YouTube media. Returns (source label, file) or None."""
    from .index import youtube_id

    rank = {".json3": 0, ".vtt": 1, ".srt": 2}
    found = []
    for path in dl_dir.glob("download.*.*"):
        lang = path.suffixes[-2].lstrip(".") if len(path.suffixes) >= 2 else ""
        if path.suffix in rank and lang in cfg.caption_langs:
            found.append((cfg.caption_langs.index(lang), rank[path.suffix], path, lang))
    if found:
        _, _, path, lang = min(found)
        return f"captions:{lang}:{path.suffix.lstrip('.')}", path
    if not cfg.sidecar or youtube_id(url):
        return None
    for ext in (".json", ".vtt", ".srt"):
        target = dl_dir / f"sidecar{ext}"
        if _fetch_sidecar(url, ext, target):
            return f"sidecar:{ext.lstrip('.')}", target
    return None


def _fetch_sidecar(url: str, ext: str, target: Path) -> bool:
    """Copy ``<media stem><ext>`` from beside the media to ``target`` if it parses to words."""
    data = read_beside(url, ext)
    if not data:
        return False
    target.write_bytes(data)
    try:
        if parse_file(target):  # only keep what parses into words
            return True
    except (OSError, ValueError):
        pass
    target.unlink(missing_ok=True)
    return False


def _attach_timed_text(url: str, dl_dir: Path, chunk_dir_tmp: Path, chunks: list[dict],
                       duration_s: float, cfg: ScrapeConfig) -> str | None:  # fmt: skip
    """Split captions or a sidecar transcript at the chunks' real starts; store each chunk's
    words (times relative to it) in its entry, and its speaker turns when the file labels
    speakers (`speakers.turns_from_file`: who speaks when, for the duplex layout); keep the
    raw file beside the chunks."""
    from .speakers import split_turns_by_chunks, turns_from_file

    found = _find_timed_text(url, dl_dir, cfg)
    if found is None:
        return None
    source, path = found
    words = parse_file(path)
    starts = [c["start_s"] for c in chunks]
    per_chunk = split_by_chunks(words, starts, duration_s)
    for chunk, chunk_words in zip(chunks, per_chunk):
        chunk["words"] = [[w.text, w.start_s, w.end_s] for w in chunk_words]
    turns = turns_from_file(path)
    if turns:
        for chunk, chunk_turns in zip(chunks, split_turns_by_chunks(turns, starts, duration_s)):
            chunk["turns"] = [[t.speaker, t.start_s, t.end_s] for t in chunk_turns]
    shutil.copyfile(path, chunk_dir_tmp / f"{source.split(':')[0]}{path.suffix}")
    return source


@dataclass
class ScrapeSummary:
    """What a run did."""

    videos_total: int = 0
    skipped_done: int = 0  # finished in an earlier run
    ok: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # id -> reason
    hours: float = 0.0  # audio chunked in this run
    seconds: float = 0.0
    stopped: str | None = None  # why the run stopped early (budget, disk)
    reasons: Counter = field(default_factory=Counter)

    @property
    def realtime_factor(self) -> float:
        """Audio seconds chunked per wall-clock second."""
        return self.hours * 3600 / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        lines = [f"videos: {self.ok} ok, {len(self.failed)} failed, {self.skipped_done} done "
                 f"before, of {self.videos_total}"]  # fmt: skip
        if self.ok:
            lines.append(f"audio: {self.hours:.2f} h in {self.seconds:.1f} s "
                         f"({self.realtime_factor:.0f}x realtime)")  # fmt: skip
        else:  # a factor over nothing downloaded would read as 0x
            lines.append("audio: nothing new chunked in this run")
        if self.reasons:
            lines.append("failed: " + ", ".join(f"{k} {v}" for k, v in self.reasons.most_common()))
        if self.stopped:
            lines.append(f"stopped early: {self.stopped}")
        return "\n".join(lines)


def manifest_path(out_root: str | Path, shard: tuple[int, int] = (0, 1)) -> Path:
    """``data/scrape.jsonl`` for ``data/chunks`` (else inside ``out_root``); a shard ``i/n``
    gets ``scrape.i-of-n.jsonl``, so processes on several hosts never append to one file."""
    out_root = Path(out_root)
    name = "scrape.jsonl" if shard[1] == 1 else f"scrape.{shard[0]}-of-{shard[1]}.jsonl"
    return out_root.parent / name if out_root.name == "chunks" else out_root / name


def run_scrape(cfg: ScrapeConfig, entries: list[dict], out_root: str | Path,
               manifest: str | Path | None = None, shard: tuple[int, int] = (0, 1),
               retry_failed: bool = False, progress: bool = True) -> ScrapeSummary:  # fmt: skip
    """Scrape index ``entries`` into ``out_root``, resuming from ``manifest`` (default
    `manifest_path`). Shard ``(i, n)`` takes the ids that hash to i.
    """
    from tqdm.auto import tqdm

    out_root = Path(out_root)
    manifest = Path(manifest) if manifest else manifest_path(out_root, shard)
    entries = take_shard(entries, shard, key=lambda e: str(e.get("id")))
    last = {r["id"]: r for r in read_jsonl(manifest) if "id" in r}
    redo = {"failed"} if retry_failed else set()
    done_hours = sum((r.get("duration_s") or 0) for r in last.values() if r["status"] == "ok")
    done_hours /= 3600
    todo = [e for e in entries if e.get("id") not in last or last[e["id"]]["status"] in redo]
    summary = ScrapeSummary(videos_total=len(entries), skipped_done=len(entries) - len(todo))
    _clean_leftovers(out_root, todo)
    speech = SpeechFilter() if cfg.speech_filter else None
    diarizer = None
    if cfg.diarize and len(todo) < len(entries):
        import sys

        print(f"--diarize: {len(entries) - len(todo)} videos were scraped before and their "
              "downloads are gone; those without speaker turns get them from `python -m "
              "speechlm_utils diarize`", file=sys.stderr)  # fmt: skip
    if cfg.diarize and todo:
        from .config import hf_token
        from .speakers import Diarizer

        diarizer = Diarizer(hf_token())
    start = time.perf_counter()
    total_h = sum((e.get("duration_s") or 0) for e in todo) / 3600
    bar = tqdm(total=round(total_h, 3), desc="scrape", unit="h", disable=not progress or not todo,
               bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} h [{elapsed}<{remaining}]")
    queue = list(todo)
    pool = ThreadPoolExecutor(max_workers=max(1, cfg.workers))
    pending: dict = {}
    stop = threading.Event()
    try:
        with JsonlWriter(manifest) as writer:
            while queue or pending:
                while queue and len(pending) < 2 * cfg.workers and not summary.stopped:
                    in_flight_h = sum((e.get("duration_s") or 0) for e in pending.values()) / 3600
                    summary.stopped = _should_stop(cfg, out_root,
                                                   done_hours + summary.hours + in_flight_h)
                    if summary.stopped:
                        break
                    entry = queue.pop(0)
                    pending[pool.submit(scrape_video, entry, out_root, cfg, speech,
                                        diarizer, stop)] = entry  # fmt: skip
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    entry = pending.pop(future)
                    record = future.result()
                    writer.write(record)
                    if record["status"] == "ok":
                        summary.ok += 1
                        summary.hours += record["duration_s"] / 3600
                    else:
                        summary.failed[str(record["id"])] = record["reason"]
                        summary.reasons[record["reason"].split(":")[0][:40]] += 1
                    bar.update(round((entry.get("duration_s") or 0) / 3600, 3))
    except BaseException:
        stop.set()  # Ctrl-C: lines written stay; videos in flight end early, are redone next time
        raise
    finally:  # waits for the workers: one still writing would race the next run's (seen in CI)
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        summary.seconds = time.perf_counter() - start
    return summary


def manifest_rows(records: list[dict]) -> list[dict]:
    """Manifest records as readable table rows: audio in minutes, size in MB, the realtime
    factor of the download and cut, and why a video failed."""
    rows = []
    for r in records:
        audio_s, taken_s = r.get("duration_s") or 0.0, r.get("seconds_taken") or 0.0
        rows.append({"video": r.get("id"), "status": r.get("status"), "codec": r.get("codec"),
                     "chunks kept": r.get("n_chunks"),
                     "dropped (speech)": r.get("dropped_low_speech"),
                     "audio (min)": round(audio_s / 60, 2), "MB": round(r.get("bytes", 0) / 1e6, 2),
                     "took (s)": taken_s,
                     "x realtime": round(audio_s / taken_s, 1) if audio_s and taken_s else None,
                     "reason": r.get("reason") or ""})  # fmt: skip
    return rows


def dropped_chunks(listing: dict, min_gap_s: float = 0.05) -> list[dict]:
    """The chunks the speech filter dropped from a video: as ``chunks.json`` lists them, or,
    in listings written before it did, the gaps (longer than ``min_gap_s``) they left."""
    if "dropped" in listing:
        return listing["dropped"]
    if not listing.get("dropped_low_speech"):
        return []
    ends = [0.0, *(c["end_s"] for c in listing["chunks"])]
    starts = [*(c["start_s"] for c in listing["chunks"]), listing["duration_s"]]
    return [{"file": "(deleted)", "start_s": end, "end_s": start, "speech_ratio": None}
            for end, start in zip(ends, starts) if start - end > min_gap_s]  # fmt: skip


def chunk_rows(listing: dict, words_shown: int = 8) -> list[dict]:
    """One video's chunks, kept and dropped, in time order, as readable table rows: where each
    lies, its speech share and its first words (instead of the raw word list)."""
    threshold = listing.get("min_speech_ratio")
    rows = []
    for chunk, kept in sorted([(c, True) for c in listing["chunks"]] +
                              [(c, False) for c in dropped_chunks(listing)],
                              key=lambda ck: ck[0]["start_s"]):  # fmt: skip
        words = [w[0] for w in chunk.get("words", [])]
        text = " ".join(words[:words_shown]) + (" …" if len(words) > words_shown else "")
        ratio = chunk.get("speech_ratio")
        if kept:
            fate = "kept"
        elif ratio is None:
            fate = "dropped: too little speech"
        else:
            fate = f"dropped: speech {ratio:.2f}" + (f" < {threshold:g}" if threshold else "")
        rows.append({"file": chunk["file"], "start_s": chunk["start_s"], "end_s": chunk["end_s"],
                     "length (s)": round(chunk["end_s"] - chunk["start_s"], 3),
                     "speech share": ratio, "fate": fate, "words": len(words) if kept else None,
                     "first words": text})  # fmt: skip
    return rows


def cut_rows(listings: list[dict]) -> list[dict]:
    """Every cut (chunk k >= 1, kept or dropped): the requested time ``k * chunk_s``, the start
    the chunk really got (in ms: tables show 2 decimals), their difference in ms, and the
    packet length (from ``chunks.json``, else measured on the first chunk file, which has the
    source's packets)."""
    rows = []
    for meta in listings:
        packet_s = meta.get("packet_s")
        if packet_s is None and meta["chunks"] and "folder" in meta:  # listings from before
            packet_s = packet_duration_s(Path(meta["folder"]) / meta["chunks"][0]["file"])
        for chunk in sorted([*meta["chunks"], *dropped_chunks(meta)], key=lambda c: c["start_s"]):
            k = round(chunk["start_s"] / meta["chunk_s"])
            if k == 0:
                continue
            requested_s = k * meta["chunk_s"]
            rows.append({"video": meta["id"], "codec": meta.get("codec"), "cut": k,
                         "requested_s": requested_s, "start_ms": round(chunk["start_s"] * 1000, 3),
                         "offset_ms": round((chunk["start_s"] - requested_s) * 1000, 3),
                         "packet_ms": round(packet_s * 1000, 3) if packet_s else None})  # fmt: skip
    return rows


def ensure_chunks(data_dir: str | Path, profile: str) -> Path:
    """``<data>/chunks``, made from the demo podcast first if empty (tiny profile only), so
    every later notebook runs on its own."""
    from .config import IndexConfig
    from .index import index_demo, load_index

    chunks = Path(data_dir) / "chunks"
    if read_chunk_listings(chunks):
        return chunks
    if profile != "tiny":
        raise FileNotFoundError(f"no chunks in {chunks}: run notebook 02 (or `scrape`) first")
    index_path = Path(data_dir) / "index.jsonl"
    index_demo(IndexConfig.from_profile("tiny", data_dir=data_dir), index_path, progress=False)
    entries = load_index(index_path)
    cfg = ScrapeConfig.from_profile("tiny", data_dir=data_dir, speech_filter=True)
    with demo_server_if_needed(entries):
        run_scrape(cfg, entries, chunks, progress=False)
    return chunks


@contextmanager
def demo_server_if_needed(entries: list[dict]) -> Iterator[None]:
    """Serve the bundled demo podcast on its fixed port while entries that need it run."""
    if not any(e.get("source") == "demo" for e in entries):
        yield
        return
    from .config import demo_dir
    from .local_server import DEMO_PORT, serve_directory

    with serve_directory(demo_dir(), port=DEMO_PORT):
        yield


def _should_stop(cfg: ScrapeConfig, out_root: Path, hours_so_far: float) -> str | None:
    """Why no further video should start (hours include those in flight), or None."""
    if cfg.max_hours is not None and hours_so_far >= cfg.max_hours:
        return f"--max-hours {cfg.max_hours:g} reached ({hours_so_far:.2f} h done or running)"
    out_root.mkdir(parents=True, exist_ok=True)
    free_gb = shutil.disk_usage(out_root).free / 2**30
    if free_gb < cfg.min_free_gb:
        return f"disk nearly full ({free_gb:.1f} GB free < {cfg.min_free_gb:g} GB)"
    return None


def _clean_leftovers(out_root: Path, todo: list[dict]) -> None:
    """Remove partial downloads and chunk folders a crash left for the videos about to run
    (only those: other shards may be working in the same tree)."""
    for entry in todo:
        vid = str(entry.get("id", ""))
        if SAFE_ID.match(vid) and not vid.startswith("-"):
            shutil.rmtree(out_root / TMP_DIR / vid, ignore_errors=True)
