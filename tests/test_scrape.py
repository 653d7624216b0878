"""Stage 02 on 127.0.0.1: yt-dlp downloads, ffmpeg segment copy, failures, resume, safety."""

import hashlib
import json
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from speechlm_utils import scrape
from speechlm_utils.audio import ffmpeg_exe, load_audio, probe
from speechlm_utils.config import ScrapeConfig
from speechlm_utils.local_server import serve_directory
from speechlm_utils.manifest import read_jsonl

from .conftest import DEMO_DIR

GOOD = {"opus": "a.webm", "aac": "b.m4a", "mp3": "c.mp3"}
RATE_HZ = 48_000  # sources and chunks are compared decoded at this rate

# What a stream copy keeps, per codec (measured with ffmpeg 4.2, 5.1, 7.0 and 9.0; see
# scrape.place_chunks). Exact: each chunk's decoded audio is the source's audio from its start_s
# to its end_s, and the last chunk ends where the source ends: to the sample for mp3 and aac, to
# the millisecond for opus (WebM's timestamps are whole milliseconds). Not exact: the chunks do
# not sum to the source, as a decoder drops a start skip at every cut, which the listing shows
# as gaps between chunks. mp3: the decoder delay, 529 samples (at 48 kHz), that the LAME tag of
# every later chunk says to skip; ffmpeg 4.2 to 7.0 (not 9.0) write -529 into the last chunk's
# tag, read back as 3567, so 4096 are skipped there (44.881 s of chunks for 45 s of source with
# Debian's 5.1, if one summed them). opus: the header's pre-skip, 312 samples, that every chunk
# copies. aac: nothing, but chunk 0 begins with the encoder priming (1024 samples at 22.05 kHz)
# that the source's edit list hides, so it starts before 0.
TOLERANCE_SAMPLES = {"opus": RATE_HZ // 1000 + 1, "aac": 1, "mp3": 1}
GAP_SAMPLES = {"opus": (312,), "aac": (0,), "mp3": (529, 4096)}
FIRST_START_S = {"opus": 0.0, "aac": -1024 / 22_050, "mp3": 0.0}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A served folder with good files in three codecs and four kinds of bad ones."""
    root = tmp_path_factory.mktemp("media")
    shutil.copy(DEMO_DIR / "demo_ep_001.webm", root / "a.webm")
    shutil.copy(DEMO_DIR / "demo_ep_002.m4a", root / "b.m4a")
    subprocess.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-i",
                    str(DEMO_DIR / "demo_ep_003.webm"), "-t", "45", "-c:a", "libmp3lame",
                    "-b:a", "48k", str(root / "c.mp3")], check=True)  # fmt: skip
    (root / "empty.webm").write_bytes(b"")
    data = (DEMO_DIR / "demo_ep_003.webm").read_bytes()
    (root / "trunc.webm").write_bytes(data[: len(data) * 2 // 5])
    (root / "page.html").write_text("<html><body><p>no media here</p></body></html>")
    with serve_directory(root) as base:
        yield root, base


def entries_for(base, names):
    return [{"id": n.replace(".", "_"), "url": f"{base}/{n}", "duration_s": 50.0} for n in names]


def cfg(**kw):
    return ScrapeConfig.from_profile("tiny", **kw)


def found_at(source, chunk, guess):
    """Where ``chunk``'s audio lies in ``source`` (in samples, searched 50 ms around ``guess``),
    matched by its loudest half second (not its first 0.1 s: decoders restart cold at a cut)."""
    win, step = RATE_HZ // 2, RATE_HZ // 10
    at = max(range(step, max(step + 1, chunk.size - win), step),
             key=lambda a: float(np.square(chunk[a : a + win]).sum()))  # fmt: skip
    piece = chunk[at : at + win]
    lo = max(0, guess + at - RATE_HZ // 20)
    scores = np.correlate(source[lo : guess + at + RATE_HZ // 20 + piece.size], piece, "valid")
    return lo + int(np.argmax(scores)) - at


def tree(root):
    """Relative path -> md5 of every file under a chunk root (the manifest aside)."""
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def test_three_codecs_chunked_by_copy_and_failures_recorded(media, tmp_path):
    root, base = media
    names = [*GOOD.values(), "missing.webm", "empty.webm", "trunc.webm", "page.html"]
    out = tmp_path / "chunks"
    summary = scrape.run_scrape(cfg(chunk_s=10.0), entries_for(base, names), out, progress=False)
    records = {r["id"]: r for r in read_jsonl(tmp_path / "scrape.jsonl")}
    assert summary.ok == 3 and len(summary.failed) == 4
    for codec, name in GOOD.items():
        rec = records[name.replace(".", "_")]
        assert rec["status"] == "ok" and rec["codec"] == codec and rec["n_chunks"] >= 4
        folder = scrape.chunk_dir(out, rec["id"])
        meta = json.loads((folder / "chunks.json").read_text())
        files = [folder / c["file"] for c in meta["chunks"]]
        assert all(probe(f)["codec"] == codec for f in files)  # no transcoding
        source = load_audio(root / name, RATE_HZ)
        tol, starts = TOLERANCE_SAMPLES[codec], []
        for chunk, path in zip(meta["chunks"], files):
            audio = load_audio(path, RATE_HZ)
            start = round(chunk["start_s"] * RATE_HZ)
            if audio.size > RATE_HZ:  # a sliver at the end is too short to be found by its sound
                assert abs(found_at(source, audio, start) - start) <= tol, (name, chunk)
            assert abs(round(chunk["end_s"] * RATE_HZ) - start - audio.size) <= tol, (name, chunk)
            starts.append(start)
        ends = [round(c["end_s"] * RATE_HZ) for c in meta["chunks"]]
        assert abs(ends[-1] - source.size) <= tol, (name, ends[-1], source.size)
        gaps = [b - a for a, b in zip(ends, starts[1:])]
        assert all(min(abs(g - k) for k in GAP_SAMPLES[codec]) <= tol for g in gaps), (name, gaps)
        assert meta["chunks"][0]["start_s"] == pytest.approx(FIRST_START_S[codec], abs=1e-6)
        assert meta["chunks"][1]["start_s"] >= 9.9
    reasons = {k: records[k]["reason"] for k in ("missing_webm", "empty_webm", "trunc_webm",
                                                   "page_html")}  # fmt: skip
    assert "404" in reasons["missing_webm"]
    assert reasons["empty_webm"]  # yt-dlp or our 0-byte check, either way a reason
    assert reasons["trunc_webm"].startswith("truncated")
    assert reasons["page_html"]
    assert all(records[k]["status"] == "failed" for k in reasons)
    assert not list((out / scrape.TMP_DIR).iterdir())  # nothing partial left
    assert not (out / "mi").exists() and not (out / "em").exists()


def test_ctrl_c_mid_chunking_then_resume_equals_one_run(media, tmp_path, monkeypatch):
    _, base = media
    entries = entries_for(base, list(GOOD.values()))
    clean = tmp_path / "clean" / "chunks"
    scrape.run_scrape(cfg(workers=1), entries, clean, progress=False)

    out = tmp_path / "resumed" / "chunks"
    real = scrape.segment_copy

    def interrupted(src, dest, video_id, *args, **kwargs):
        if video_id == "b_m4a":
            real(src, dest, video_id, *args, **kwargs)  # chunks half-written into .tmp...
            raise KeyboardInterrupt  # ...when the user presses Ctrl-C
        return real(src, dest, video_id, *args, **kwargs)

    monkeypatch.setattr(scrape, "segment_copy", interrupted)
    threads = set(threading.enumerate())
    with pytest.raises(KeyboardInterrupt):
        scrape.run_scrape(cfg(workers=1), entries, out, progress=False)
    assert set(threading.enumerate()) <= threads  # no worker left writing beside a re-run
    monkeypatch.setattr(scrape, "segment_copy", real)
    assert not scrape.chunk_dir(out, "b_m4a").exists()  # never a partial chunk folder

    again = scrape.run_scrape(cfg(workers=1), entries, out, progress=False)
    assert again.skipped_done == 1 and again.ok == 2
    assert tree(out) == tree(clean)
    assert not list((out / scrape.TMP_DIR).iterdir())
    lines = (tmp_path / "resumed" / "scrape.jsonl").read_text().splitlines()
    third = scrape.run_scrape(cfg(), entries, out, progress=False)  # nothing left to do
    assert third.ok == 0 and third.skipped_done == 3
    assert (tmp_path / "resumed" / "scrape.jsonl").read_text().splitlines() == lines


def test_hard_crash_leftovers_are_cleaned_and_redone(media, tmp_path):
    _, base = media
    entries = entries_for(base, list(GOOD.values()))
    clean = tmp_path / "clean" / "chunks"
    scrape.run_scrape(cfg(), entries, clean, progress=False)

    out = tmp_path / "crashed" / "chunks"
    scrape.run_scrape(cfg(), entries[:1], out, progress=False)
    # what a kill -9 leaves: a partial download, partial chunks, a torn manifest line
    part = out / scrape.TMP_DIR / "b_m4a"
    (part / "dl").mkdir(parents=True)
    (part / "dl" / "download.m4a.part").write_bytes(b"\0" * 1000)
    (part / "chunks").mkdir()
    (part / "chunks" / "b_m4a_00000.m4a").write_bytes(b"\0" * 10)
    with (tmp_path / "crashed" / "scrape.jsonl").open("a") as f:
        f.write('{"id": "b_m4a", "stat')
    summary = scrape.run_scrape(cfg(), entries, out, progress=False)
    assert summary.ok == 2 and summary.skipped_done == 1
    assert tree(out) == tree(clean)


def test_retry_failed_and_budget(media, tmp_path):
    root, base = media
    out = tmp_path / "chunks"
    entries = entries_for(base, ["a.webm", "late.webm"])
    first = scrape.run_scrape(cfg(), entries, out, progress=False)
    assert list(first.failed) == ["late_webm"]
    shutil.copy(root / "a.webm", root / "late.webm")  # the video became available
    try:
        assert scrape.run_scrape(cfg(), entries, out, progress=False).ok == 0
        assert scrape.run_scrape(cfg(), entries, out, retry_failed=True, progress=False).ok == 1
    finally:
        (root / "late.webm").unlink()
    budget = scrape.run_scrape(cfg(max_hours=0.01), entries_for(base, list(GOOD.values())),
                               tmp_path / "b" / "chunks", progress=False)  # fmt: skip
    assert budget.stopped and "max-hours" in budget.stopped and budget.ok < 3
    full_disk = scrape.run_scrape(cfg(min_free_gb=1e9), entries, tmp_path / "d" / "chunks",
                                  progress=False)  # fmt: skip
    assert "disk" in full_disk.stopped and full_disk.ok == 0


def test_shards_split_by_id_and_cover_everything(media, tmp_path):
    _, base = media
    entries = entries_for(base, list(GOOD.values()))
    ids = []
    for i in range(2):
        scrape.run_scrape(cfg(), entries, tmp_path / "chunks", shard=(i, 2), progress=False)
        ids.append({r["id"] for r in read_jsonl(tmp_path / f"scrape.{i}-of-2.jsonl")})
    assert ids[0] | ids[1] == {e["id"] for e in entries} and not ids[0] & ids[1]
    listed = {m["id"] for m in scrape.read_chunk_listings(tmp_path / "chunks")}
    assert listed == ids[0] | ids[1]  # one shared chunk tree


def test_odd_names_never_escape_the_root_or_reach_a_shell(media, tmp_path):
    _, base = media
    sandbox = tmp_path / "sandbox"
    out = sandbox / "chunks"
    canary = tmp_path / "pwned"
    evil = [
        {"id": "../../escape", "url": f"{base}/a.webm"},
        {"id": "-rf", "url": f"{base}/a.webm"},
        {"id": "ok_id", "url": f"{base}/a.webm?x=';touch {canary};'&y=$(touch {canary})",
         "title": f"\"; touch {canary}; echo \"../../"},
    ]
    summary = scrape.run_scrape(cfg(), evil, out, progress=False)
    assert summary.ok == 1 and set(summary.failed) == {"../../escape", "-rf"}
    assert all("unsafe video id" in r for r in summary.failed.values())
    assert not canary.exists()
    assert {p.name for p in tmp_path.iterdir()} == {"sandbox"}
    assert all(p.resolve().is_relative_to(sandbox.resolve()) for p in sandbox.rglob("*"))


def test_speech_filter_drops_silent_chunks(media, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m.startswith("silero_vad")]:
        monkeypatch.delitem(sys.modules, name)  # imported afresh, as in a new kernel
    root, base = media
    mixed = root / "mixed.webm"  # 20 s of speech, then 20 s of silence
    subprocess.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y",
                    "-i", str(root / "a.webm"), "-f", "lavfi", "-t", "20",
                    "-i", "anullsrc=r=48000:cl=mono", "-filter_complex",
                    "[0:a]atrim=0:20[s];[s][1:a]concat=n=2:v=0:a=1", "-c:a", "libopus",
                    str(mixed)], check=True)  # fmt: skip
    out = tmp_path / "chunks"
    threads = torch.get_num_threads()
    summary = scrape.run_scrape(cfg(speech_filter=True, chunk_s=10.0),
                                entries_for(base, ["mixed.webm"]), out, progress=False)
    assert summary.ok == 1
    assert torch.get_num_threads() == threads  # silero-vad's import sets one thread for all
    meta = json.loads((scrape.chunk_dir(out, "mixed_webm") / "chunks.json").read_text())
    assert meta["dropped_low_speech"] >= 2  # both silent 10 s chunks (and any sliver after)
    assert [c["start_s"] < 19.9 for c in meta["chunks"]] == [True, True]
    assert all(c["speech_ratio"] > 0.5 for c in meta["chunks"])
    assert len(list(scrape.chunk_dir(out, "mixed_webm").glob("*.webm"))) == 2
    assert len(meta["dropped"]) == meta["dropped_low_speech"]  # listed, files gone
    assert all(d["speech_ratio"] < 0.3 and "words" not in d for d in meta["dropped"])
    assert meta["packet_s"] == pytest.approx(0.020)


def test_packet_duration_is_read_from_the_packets():
    assert scrape.packet_duration_s(DEMO_DIR / "demo_ep_001.webm") == pytest.approx(0.020)
    assert scrape.packet_duration_s(DEMO_DIR / "demo_ep_002.m4a") == pytest.approx(1024 / 22_050)
    assert scrape.packet_duration_s(DEMO_DIR / "demo_ep_001.json") is None


LISTING = {"id": "vid", "codec": "aac", "chunk_s": 20.0, "packet_s": 1024 / 22_050,
           "duration_s": 50.2, "dropped_low_speech": 1, "min_speech_ratio": 0.3,
           "chunks": [{"file": "vid_00000.m4a", "start_s": -0.04644, "end_s": 19.969161,
                       "speech_ratio": 0.9, "words": [["Hello", 0.1, 0.4], ["there", 0.5, 0.8]]},
                      {"file": "vid_00002.m4a", "start_s": 39.984762, "end_s": 50.2,
                       "speech_ratio": 0.8, "words": []}],
           "dropped": [{"file": "vid_00001.m4a", "start_s": 19.969161, "end_s": 39.984762,
                        "speech_ratio": 0.05}]}  # fmt: skip


def test_chunk_and_cut_rows_are_readable_and_include_the_dropped_chunk():
    rows = scrape.chunk_rows(LISTING)
    assert [r["file"] for r in rows] == ["vid_00000.m4a", "vid_00001.m4a", "vid_00002.m4a"]
    assert [r["fate"] for r in rows] == ["kept", "dropped: speech 0.05 < 0.3", "kept"]
    assert rows[0]["first words"] == "Hello there" and rows[0]["words"] == 2
    assert all(not isinstance(v, list) for r in rows for v in r.values())  # no raw word lists
    cuts = scrape.cut_rows([LISTING])
    assert [(c["cut"], c["requested_s"]) for c in cuts] == [(1, 20.0), (2, 40.0)]
    assert [c["offset_ms"] for c in cuts] == pytest.approx([-30.839, -15.238])
    assert all(c["packet_ms"] == pytest.approx(46.44, abs=1e-3) for c in cuts)
    # a listing from before `dropped` was recorded: the gap it left stands in for it
    old = {k: v for k, v in LISTING.items() if k not in ("dropped", "packet_s")}
    gap = scrape.dropped_chunks(old)
    assert [(g["start_s"], g["end_s"]) for g in gap] == [(19.969161, 39.984762)]


def test_manifest_rows_and_a_rerun_summary_say_nothing_was_done():
    record = {"id": "vid", "status": "ok", "codec": "opus", "n_chunks": 3, "duration_s": 60.0,
              "bytes": 2_500_000, "seconds_taken": 4.0, "dropped_low_speech": 1}  # fmt: skip
    row = scrape.manifest_rows([record, {"id": "bad", "status": "failed", "reason": "HTTP 404"}])
    assert row[0]["audio (min)"] == 1.0 and row[0]["MB"] == 2.5 and row[0]["x realtime"] == 15.0
    assert row[1]["x realtime"] is None and row[1]["reason"] == "HTTP 404"
    text = str(scrape.ScrapeSummary(videos_total=3, skipped_done=3))
    assert "0x" not in text and "nothing new" in text
    assert "15x realtime" in str(scrape.ScrapeSummary(ok=1, hours=1 / 60, seconds=4.0))


def test_a_stopped_run_starts_no_video_and_ends_a_download_in_flight(media, tmp_path):
    import threading as th

    _, base = media
    entry = entries_for(base, list(GOOD.values()))[0]
    stop = th.Event()
    stop.set()
    record = scrape.scrape_video(entry, tmp_path / "out", cfg(), stop=stop)
    assert record["status"] == "failed" and record["reason"] == "interrupted"
    assert not (tmp_path / "out").exists()  # nothing started
    (tmp_path / "dl").mkdir()
    with pytest.raises(scrape.ScrapeError, match="interrupted"):  # yt-dlp's progress hook
        scrape.download_audio(entry["url"], tmp_path / "dl", cfg(), stop)
