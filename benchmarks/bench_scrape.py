"""Stage 02 benchmark: segment copy vs transcoding, and end-to-end scraping with 1 vs N workers.

1. Makes a 60-minute Opus/WebM and a 60-minute AAC/M4A file (the demo podcast, looped), cuts
   each into 20 s chunks by stream copy (what `scrape` does) and by re-encoding (the naive
   way), and reports seconds, realtime factor (audio s per wall s) and the ratio.
2. Serves N demo files on 127.0.0.1 and scrapes them (yt-dlp + segment copy) with 1 worker and
   with many; reports the realtime factor of each and the ratio.

    python benchmarks/bench_scrape.py [--minutes 60] [--files 24] [--workers 8]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from speechlm_utils.audio import ffmpeg_exe, probe
from speechlm_utils.config import ScrapeConfig, demo_dir
from speechlm_utils.local_server import serve_directory
from speechlm_utils.scrape import compare_copy_vs_transcode, run_scrape

CODECS = {"opus": ("webm", ["-c:a", "libopus", "-b:a", "32k"]),
          "aac": ("m4a", ["-c:a", "aac", "-b:a", "48k"])}  # fmt: skip


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def make_long(codec: str, minutes: float, workdir: Path) -> Path:
    ext, enc = CODECS[codec]
    out = workdir / f"long_{codec}.{ext}"
    ffmpeg("-stream_loop", "-1", "-i", str(demo_dir() / "demo_ep_001.webm"),
           "-t", str(minutes * 60), "-vn", *enc, str(out))  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(f"## segment copy vs transcode ({args.minutes:g} min source, 20 s chunks)\n")
        print("| codec | method | seconds | realtime factor | copy speed-up |")
        print("|---|---|---:|---:|---:|")
        for codec in CODECS:
            src = make_long(codec, args.minutes, work)
            r = compare_copy_vs_transcode(src, work / codec, 20.0)
            print(f"| {codec} | segment copy | {r['copy_s']:.2f} | {r['copy_realtime']:,.0f}x | "
                  f"{r['speedup']:,.0f}x |")
            print(f"| {codec} | transcode | {r['transcode_s']:.2f} | "
                  f"{r['transcode_realtime']:,.0f}x | 1x |")

        served = work / "served"
        served.mkdir()
        names = []
        for i in range(args.files):
            src = sorted(demo_dir().glob("demo_ep_*.*[!n]"))[i % 3]  # .webm/.m4a, not .json
            names.append(f"f{i:03d}{src.suffix}")
            shutil.copy(src, served / names[-1])
        total_s = sum(probe(served / n)["duration_s"] for n in names)
        print(f"\n## end to end: {args.files} files ({total_s / 60:.0f} min) served on "
              "127.0.0.1, yt-dlp + segment copy\n")
        print("| workers | seconds | realtime factor | speed-up |")
        print("|---:|---:|---:|---:|")
        base = None
        with serve_directory(served) as url:
            entries = [{"id": n.replace(".", "_"), "url": f"{url}/{n}", "duration_s": 60}
                       for n in names]  # fmt: skip
            for workers in (1, args.workers):
                cfg = ScrapeConfig.from_profile("tiny", workers=workers)
                summary = run_scrape(cfg, entries, work / f"e2e{workers}" / "chunks",
                                     progress=False)  # fmt: skip
                assert summary.ok == args.files, summary
                base = base or summary.seconds
                print(f"| {workers} | {summary.seconds:.2f} | "
                      f"{summary.realtime_factor:,.0f}x | {base / summary.seconds:.1f}x |")


if __name__ == "__main__":
    main()
