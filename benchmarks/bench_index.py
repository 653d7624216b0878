"""Stage 01 benchmark: index 200 terms against a local server that answers after 100 ms.

Prints wall time with 1 worker and with the default workers, the speed-up ratio, and checks
that the rate limit held (the most requests seen in any one second).

    python benchmarks/bench_index.py [--terms 200] [--delay-s 0.1] [--rps 50]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from speechlm_utils.config import IndexConfig
from speechlm_utils.index import run_index
from speechlm_utils.local_server import FakeYouTube


def measure(terms: int, delay_s: float, workers: int, rps: float) -> dict:
    catalog = {f"term {i}": [{"id": f"b{i:010d}", "title": "t", "duration_s": 3600}]
               for i in range(terms)}  # one page each: one request per term
    with FakeYouTube(catalog, delay_s=delay_s) as fake, tempfile.TemporaryDirectory() as tmp:
        cfg = IndexConfig.from_profile("full", youtube_url=fake.url, workers=workers,
                                       requests_per_s=rps)
        start = time.perf_counter()
        summary = run_index(cfg, list(catalog), Path(tmp) / "index.jsonl", progress=False)
        seconds = time.perf_counter() - start
    assert summary.terms_done == terms, summary
    return {"workers": workers, "rps": rps, "seconds": seconds,
            "peak_per_s": fake.max_requests_in_window(1.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--terms", type=int, default=200)
    parser.add_argument("--delay-s", type=float, default=0.1)
    parser.add_argument("--rps", type=float, default=50.0)
    args = parser.parse_args()
    default_workers = IndexConfig.from_profile("full").workers
    runs = [
        measure(args.terms, args.delay_s, 1, args.rps),
        measure(args.terms, args.delay_s, default_workers, args.rps),
        measure(args.terms, args.delay_s, default_workers, 1e6),  # no limit: workers alone
    ]
    base = runs[0]["seconds"]
    print(f"{args.terms} terms, server answers after {args.delay_s * 1000:.0f} ms\n")
    print("| workers | rate limit | wall s | speed-up vs 1 worker | peak requests/s |")
    print("|---:|---:|---:|---:|---:|")
    for r in runs:
        limit = "none" if r["rps"] >= 1e6 else f"{r['rps']:.0f}/s"
        print(f"| {r['workers']} | {limit} | {r['seconds']:.2f} | {base / r['seconds']:.1f}x "
              f"| {r['peak_per_s']} |")
    for r in runs:
        if r["rps"] < 1e6:
            assert r["peak_per_s"] <= r["rps"] + 1, f"rate limit broken: {r}"
    print("\nrate limit respected in every limited run")


if __name__ == "__main__":
    main()
