"""Stage 01, offline: scrapetube's parsers over YouTube-shaped pages served on 127.0.0.1."""

import json
import subprocess
import sys
import threading
import time

import pytest

from speechlm_utils import index
from speechlm_utils.config import IndexConfig
from speechlm_utils.local_server import FakeYouTube, render_video, sample_catalog, serve_directory
from speechlm_utils.manifest import read_jsonl

from .conftest import DEMO_DIR, REPO


def video(i, prefix="v", **kw):
    return {"id": f"{prefix}{i:0{11 - len(prefix)}d}", "title": f"Conversation {i}",
            "channel": "Chan", "duration_s": 3600 + i, **kw}  # fmt: skip


CATALOG = {
    "history podcast": [video(i) for i in range(45)] + [  # 3 pages of 20
        {"id": "short000001", "kind": "short", "duration_s": 40},
        {"id": "live0000001", "kind": "live"},
        {"id": "upcoming001", "kind": "upcoming"},
        {"id": "broken", "kind": "malformed", "duration_s": 4000},
        video(900, title="Relaxing music for study"),
        video(901, duration_s=60),
        video(902, duration_s=6 * 3600),
    ],
    "science interview": [video(i, "s") for i in range(30)] + [video(3)],  # v..3 is shared
    "channel:@talks": [video(i, "c") for i in range(25)],
    "playlist:PL123": [video(i, "p") for i in range(22)],
}
TERMS = list(CATALOG)


def config(fake, **kw):
    values = dict(youtube_url=fake.url, backoff_s=0.01, requests_per_s=1000, workers=4)
    return IndexConfig.from_profile("full", **{**values, **kw})


def ids_of(path):
    entries = list(read_jsonl(path))
    ids = [e["id"] for e in entries]
    assert len(ids) == len(set(ids)), "duplicate ids in the index"
    return set(ids)


def test_parse_video_kinds_and_fields():
    parsed = index.parse_video(render_video(video(7, views=12345, duration_s=3723)))
    assert parsed["duration_s"] == 3723 and parsed["views"] == 12345
    assert parsed["title"] == "Conversation 7" and parsed["channel"] == "Chan"
    assert parsed["url"].endswith("watch?v=" + parsed["id"]) and parsed["kind"] == "video"
    for kind in ("short", "live", "upcoming"):
        assert index.parse_video(render_video({"id": "abcdefghijk", "kind": kind}))["kind"] == kind
    with pytest.raises(ValueError, match="malformed"):
        index.parse_video(render_video({"id": "abcdefghijk", "kind": "malformed"}))
    assert index.parse_duration_s("1:02:03") == 3723 and index.parse_duration_s("45:10") == 2710
    assert index.parse_duration_s("LIVE") is None and index.parse_views("No views") == 0


def test_search_channel_playlist_with_filters_and_continuations(tmp_path):
    with FakeYouTube(CATALOG) as fake:
        summary = index.run_index(config(fake), TERMS, tmp_path / "index.jsonl", progress=False)
    entries = {e["id"]: e for e in read_jsonl(tmp_path / "index.jsonl")}
    assert len(entries) == 45 + 30 + 25 + 22  # every page followed, the shared one once
    assert summary.terms_done == 4 and not summary.terms_failed
    assert summary.filtered == {"short": 1, "live": 1, "upcoming": 1, "malformed": 1,
                                "excluded_word": 1, "too_short": 1, "too_long": 1,
                                "duplicate": 1}  # fmt: skip
    one = entries["v0000000044"]
    assert {"id", "url", "title", "channel", "duration_s", "query"} <= one.keys()
    assert one["query"] == "history podcast" and one["duration_s"] == 3644
    done = {d["term"]: d for d in read_jsonl(index.done_path(tmp_path / "index.jsonl"))}
    assert all(d["status"] == "ok" for d in done.values()) and set(done) == set(TERMS)


def test_429_is_retried_and_a_dead_term_fails_alone(tmp_path):
    script = {"history podcast": ["429", "500", "drop"],  # recovers on the 4th try
              "science interview": ["drop"] * 4}  # 1 try + 3 retries all dropped
    out = tmp_path / "index.jsonl"
    with FakeYouTube(CATALOG, script=script) as fake:
        summary = index.run_index(config(fake, retries=3), TERMS, out, progress=False)
        assert list(summary.terms_failed) == ["science interview"]
        assert "Connection" in summary.terms_failed["science interview"]
        assert summary.terms_done == 3
        assert [t for _, t in fake.log].count("science interview") == 4  # 1 try + 3 retries
        assert summary.retried == {"HTTP 429": 1, "HTTP 500": 1, "ConnectionError": 4}
        assert "retried: ConnectionError 4, HTTP 429 1, HTTP 500 1" in str(summary)
        done = {d["term"]: d["status"] for d in read_jsonl(index.done_path(out))}
        assert done["science interview"] == "failed"
        # the next run skips finished terms and retries only the failed one
        again = index.run_index(config(fake), TERMS, out, progress=False)
    assert again.terms_skipped == 3 and again.terms_done == 1 and not again.terms_failed
    assert len(ids_of(out)) == 45 + 30 + 25 + 22


def test_interrupted_run_resumes_to_the_same_index(tmp_path):
    with FakeYouTube(CATALOG) as fake:
        full = tmp_path / "full.jsonl"
        index.run_index(config(fake), TERMS, full, progress=False)

        resumed = tmp_path / "resumed.jsonl"
        calls = {"n": 0}

        class CtrlC(requests_session_type()):
            def request(self, *args, **kwargs):
                calls["n"] += 1
                if calls["n"] == 6:
                    raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-run
                return super().request(*args, **kwargs)

        def factory():
            return CtrlC(index.RateLimiter(1000), base_url=fake.url)

        with pytest.raises(KeyboardInterrupt):
            index.run_index(config(fake, workers=1), TERMS, resumed, session_factory=factory,
                            progress=False)  # fmt: skip
        partial = ids_of(resumed)
        assert 0 < len(partial) < len(ids_of(full))
        with resumed.open("a") as f:
            f.write('{"id": "torn-line-from-a-cra')  # a crash mid-write leaves half a line
        index.run_index(config(fake), TERMS, resumed, progress=False)
    assert ids_of(resumed) == ids_of(full)
    by_id = {e["id"]: e for e in read_jsonl(full)}
    for entry in read_jsonl(resumed):  # same fields; `query` is any term that found it
        assert {k: v for k, v in entry.items() if k != "query"} == \
            {k: v for k, v in by_id[entry["id"]].items() if k != "query"}
        assert entry["id"] in {v["id"] for v in CATALOG[entry["query"]]}


def requests_session_type():
    return index.YouTubeSession


def test_shards_together_equal_the_whole(tmp_path):
    with FakeYouTube(CATALOG) as fake:
        index.run_index(config(fake), TERMS, tmp_path / "all.jsonl", progress=False)
        for i in range(2):
            index.run_index(config(fake), TERMS, tmp_path / f"s{i}.jsonl", shard=(i, 2),
                            progress=False)  # fmt: skip
    shard_ids = [ids_of(tmp_path / f"s{i}.jsonl") for i in range(2)]
    union = index.load_index(tmp_path / "s0.jsonl", tmp_path / "s1.jsonl")
    assert {e["id"] for e in union} == ids_of(tmp_path / "all.jsonl")
    assert len(union) == len(ids_of(tmp_path / "all.jsonl"))
    assert shard_ids[0] and shard_ids[1]


def test_rate_limit_holds_across_threads(tmp_path):
    catalog = {f"term {i}": [video(i)] for i in range(30)}  # one request per term
    rps = 20.0
    granted = []

    class Recording(index.RateLimiter):
        def acquire(self):
            super().acquire()
            granted.append(time.monotonic())

    limiter = Recording(rps)
    with FakeYouTube(catalog) as fake:
        cfg = config(fake, workers=8, requests_per_s=rps)
        start = time.monotonic()
        index.run_index(cfg, list(catalog), tmp_path / "i.jsonl", progress=False,
                        session_factory=lambda: index.YouTubeSession(limiter, base_url=fake.url))
        elapsed = time.monotonic() - start
    assert len(fake.log) == len(granted) == 30  # every request went through the one limiter
    assert elapsed >= (30 - 1) / rps * 0.95
    granted.sort()
    in_a_second = max(sum(1 for u in granted[i:] if u - t < 1.0) for i, t in enumerate(granted))
    assert in_a_second <= rps + 1  # +1: a request at each end of the window
    assert fake.max_requests_in_window(1.0) <= rps * 1.5  # the server agrees, give or take


def test_rate_limiter_spaces_calls_on_a_fake_clock():
    now = {"t": 0.0}
    lock = threading.Lock()

    def sleep(s):
        with lock:
            now["t"] += s

    limiter = index.RateLimiter(4.0, clock=lambda: now["t"], sleep=sleep)
    stamps = []
    for _ in range(9):
        limiter.acquire()
        stamps.append(now["t"])
    assert stamps == pytest.approx([i * 0.25 for i in range(9)])


def test_local_and_url_sources_make_the_same_fields(tmp_path):
    cfg = IndexConfig.from_profile("tiny")
    local = index.index_urls(cfg, index.local_media_urls(DEMO_DIR), tmp_path / "local.jsonl",
                             source="local", progress=False)  # fmt: skip
    assert local.videos_kept == 3
    with serve_directory(DEMO_DIR) as base:
        urls = [f"{base}/demo_ep_001.webm", f"{base}/demo_ep_002.m4a", f"{base}/missing.webm",
                f"{base}/demo_ep_001.json"]  # fmt: skip
        served = index.index_urls(cfg, urls, tmp_path / "urls.jsonl", progress=False)
        assert served.videos_kept == 2 and len(served.terms_failed) == 2  # 404, not audio
        rerun = index.index_urls(cfg, urls, tmp_path / "urls.jsonl", progress=False)
        assert rerun.terms_skipped == 2  # done before; failures are tried again
    entries = {e["id"]: e for e in read_jsonl(tmp_path / "urls.jsonl")}
    truth = json.loads((DEMO_DIR / "demo_ep_002.json").read_text())
    assert entries["demo_ep_002"]["title"] == truth["title"]  # from the sidecar transcript
    assert abs(entries["demo_ep_002"]["duration_s"] - truth["duration_s"]) < 0.1
    full = IndexConfig.from_profile("full")  # 30 min minimum: the demo is filtered out
    assert index.index_urls(full, index.local_media_urls(DEMO_DIR), tmp_path / "f.jsonl",
                            progress=False).filtered == {"too_short": 3}  # fmt: skip


@pytest.mark.parametrize("url,expected", [
    ("https://www.youtube.com/watch?v=dQw4w9WgXcQ&t=1", "dQw4w9WgXcQ"),
    ("https://youtu.be/dQw4w9WgXcQ", "dQw4w9WgXcQ"),
    ("https://m.youtube.com/shorts/dQw4w9WgXcQ", "dQw4w9WgXcQ"),
    ("https://www.youtube.com/watch?v=../../etc", None),
    ("https://example.com/watch?v=dQw4w9WgXcQ", None),
])  # fmt: skip
def test_youtube_ids(url, expected):
    assert index.youtube_id(url) == expected


def test_ids_from_odd_names_are_safe():
    taken = set()
    for name in ("../../etc/passwd", "a; rm -rf ~", "'quoted' \"name\"", "", "ok_name"):
        vid = index._safe_id(name, name, taken)
        assert index._SAFE_ID.match(vid.split("-")[0] + "x") and "/" not in vid and ".." not in vid
        taken.add(vid)
    assert index._safe_id("ok_name", "other-url", taken) != "ok_name"  # unique


def test_cli_indexes_a_url_list(tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_text("# my media\n" + "\n".join(index.local_media_urls(DEMO_DIR)) + "\n")
    out = tmp_path / "index.jsonl"
    proc = subprocess.run([sys.executable, "-m", "speechlm_utils", "--profile", "tiny", "index",
                           "--source", f"urls:{urls}", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "videos kept: 3" in proc.stdout and len(ids_of(out)) == 3


def test_searches_file_is_big_and_clean():
    terms = index.read_terms(REPO / "data" / "searches.txt")
    assert 450 <= len(terms) <= 600
    assert len({t.lower() for t in terms}) == len(terms)
    banned = ("audiobook", "asmr", "lyrics", "karaoke", "meditation")
    assert not [t for t in terms if any(b in t for b in banned)]


def test_rejected_videos_are_written_with_their_reason(tmp_path):
    out = tmp_path / "index.jsonl"
    with FakeYouTube(CATALOG) as fake:
        summary = index.run_index(config(fake), TERMS, out, progress=False)
    rejected = index.load_rejected(out)
    reasons = {}
    for r in rejected:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    assert reasons == {k: v for k, v in summary.filtered.items() if k != "duplicate"}
    by_id = {r["id"]: r for r in rejected if r["id"]}
    assert by_id["short000001"]["duration_s"] == 40 and by_id["live0000001"]["duration_s"] is None
    assert by_id[video(901)["id"]]["reason"] == "too_short"
    assert by_id[video(900)["id"]]["query"] == "history podcast"
    assert not set(by_id) & ids_of(out)  # a rejected video is never in the index


def test_rate_limiter_counts_the_waiting():
    now = {"t": 0.0}
    limiter = index.RateLimiter(2.0, clock=lambda: now["t"],
                                sleep=lambda s: now.update(t=now["t"] + s))  # fmt: skip
    for _ in range(4):  # back to back: each after the first waits half a second
        limiter.acquire()
    assert limiter.calls == 4 and limiter.waited_s == pytest.approx(1.5) and now["t"] == 1.5


def test_offline_search_demo_reaches_its_rate_limit():
    from speechlm_utils import index
    from speechlm_utils.config import IndexConfig

    cfg = IndexConfig.from_profile("tiny")
    terms = [f"topic {i} podcast" for i in range(20)]  # 40 pages: 4 threads want ~200/s
    script = {terms[0]: ["429", "500"]}
    fast, limited = index.offline_search_demo(cfg, terms, rates=(1000.0, 10.0), script=script)
    assert limited["max_per_s"] <= 11 < fast["max_per_s"]  # held to the limit, which it hit
    assert limited["summary"].retried == {"HTTP 429": 1, "HTTP 500": 1}  # and recovered:
    assert not limited["summary"].terms_failed and limited["summary"].terms_done == 20
    assert limited["waited_s"] > fast["waited_s"]
    assert limited["entries"] and limited["rejected"]  # the filter kept some, rejected some


def test_sample_catalog_durations_match_what_each_item_claims():
    specs = [s for specs in sample_catalog([f"term {i}" for i in range(40)]).values()
             for s in specs]  # fmt: skip
    by_kind = {}
    for spec in specs:
        by_kind.setdefault(spec.get("kind", "video"), []).append(spec["duration_s"])
    assert {"short", "live", "upcoming"} <= by_kind.keys()
    assert all(15 <= d <= 60 for d in by_kind["short"])  # a short is short
    assert by_kind["live"] + by_kind["upcoming"] == [None] * (len(by_kind["live"])
                                                              + len(by_kind["upcoming"]))
    assert sorted(by_kind["video"])[len(by_kind["video"]) // 2] > 30 * 60  # mostly long
