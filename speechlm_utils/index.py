"""Stage 01: from search terms to a deduplicated index of long conversational videos.

YouTube is read with scrapetube's page parsers (``ytInitialData`` on the first page, then
continuation JSON), through our own `YouTubeSession` so that every request goes through one
global rate limit (requests per second across all threads) and is retried with exponential
backoff and jitter on network errors, HTTP 429 and 5xx. Each term runs on a thread pool; the
main thread alone writes, so ``index.jsonl`` gets one video a line, deduplicated across terms
and runs, ``<out>.done.jsonl`` records each finished term and ``<out>.rejected.jsonl`` each
video the filter turned away, with its reason. A crash or Ctrl-C loses only the terms in flight.

Terms are search queries, or ``channel:@handle`` / ``channel:UC…`` / ``playlist:PL…``.
Local sources (``local:DIR``, ``urls:FILE``) turn media you already have into entries with
the same fields.
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote_plus, unquote, urlparse

import requests

from .config import IndexConfig
from .manifest import JsonlWriter, read_jsonl, take_shard

YOUTUBE_URL = "https://www.youtube.com"
MEDIA_EXTENSIONS = (".webm", ".m4a", ".mp3", ".opus", ".ogg", ".wav", ".flac", ".aac", ".mp4",
                    ".mkv", ".mka")  # fmt: skip
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")


class RateLimiter:
    """Spaces calls at least ``1 / rate_per_s`` apart, across every thread that shares it.

    ``calls`` and ``waited_s`` (the seconds all callers together slept for a slot) show how
    hard the limit held a run back.
    """

    def __init__(self, rate_per_s: float, clock=time.monotonic, sleep=time.sleep):
        if rate_per_s <= 0:
            raise ValueError(f"rate limit must be positive, got {rate_per_s}")
        self.interval_s = 1.0 / rate_per_s
        self._clock, self._sleep = clock, sleep
        self._next_s = -float("inf")
        self._lock = threading.Lock()
        self.calls, self.waited_s = 0, 0.0

    def acquire(self) -> None:
        with self._lock:
            now = self._clock()
            slot = max(now, self._next_s)
            self._next_s = slot + self.interval_s
            self.calls += 1
            self.waited_s += slot - now
        if slot > now:
            self._sleep(slot - now)  # outside the lock: other threads book later slots


class RetryableError(RuntimeError):
    """A request failed in a way worth retrying (429, 5xx), after the retries ran out."""


class YouTubeSession(requests.Session):
    """A requests session with a shared rate limit, retries with backoff, and a timeout.

    ``base_url`` replaces ``https://www.youtube.com`` (tests and the offline demo point it at a
    server on 127.0.0.1). scrapetube's helpers take it like any session.
    """

    def __init__(self, limiter: RateLimiter, retries: int = 5, backoff_s: float = 1.0,
                 timeout_s: float = 30.0, base_url: str = YOUTUBE_URL,
                 proxies: dict | None = None, sleep=time.sleep):  # fmt: skip
        super().__init__()
        self.limiter, self.retries, self.backoff_s = limiter, retries, backoff_s
        self.timeout_s, self.base_url, self._sleep = timeout_s, base_url.rstrip("/"), sleep
        self.retried: Counter = Counter()  # what was retried: "HTTP 429", "ConnectionError"...
        self.headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36"
        self.headers["Accept-Language"] = "en"
        if proxies:
            self.proxies.update(proxies)

    def request(self, method, url, *args, **kwargs):
        if self.base_url != YOUTUBE_URL and url.startswith(YOUTUBE_URL):
            url = self.base_url + url[len(YOUTUBE_URL) :]
        kwargs.setdefault("timeout", self.timeout_s)
        for attempt in range(self.retries + 1):
            self.limiter.acquire()
            retry_after = None
            try:
                response = super().request(method, url, *args, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as err:
                error: Exception = err
                why = type(err).__name__
            else:
                if response.status_code != 429 and response.status_code < 500:
                    response.raise_for_status()  # 4xx other than 429: retrying won't help
                    return response
                error = RetryableError(f"HTTP {response.status_code} from {url.split('?')[0]}")
                retry_after = _retry_after_s(response)
                why = f"HTTP {response.status_code}"
            if attempt == self.retries:
                raise error
            self.retried[why] += 1
            backoff = self.backoff_s * 2**attempt * (1 + random.random())  # full jitter
            self._sleep(max(backoff, retry_after or 0.0))
        raise AssertionError("unreachable")


def _retry_after_s(response: requests.Response) -> float | None:
    try:
        return float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None


# -- listing pages ---------------------------------------------------------------------------


def _listing(term: str) -> tuple[str, str, str, str]:
    """(first page URL, continuation endpoint, list key, item key) for a term, as scrapetube."""
    kind, _, value = term.partition(":")
    if kind == "playlist" and value:
        return (f"{YOUTUBE_URL}/playlist?list={quote_plus(value)}",
                f"{YOUTUBE_URL}/youtubei/v1/browse", "playlistVideoListRenderer",
                "playlistVideoRenderer")  # fmt: skip
    if kind == "channel" and value:
        if value.startswith("http"):
            base = value.rstrip("/")
        elif value.startswith("@"):
            base = f"{YOUTUBE_URL}/{value}"
        else:
            base = f"{YOUTUBE_URL}/channel/{value}"
        return (f"{base}/videos?view=0&flow=grid", f"{YOUTUBE_URL}/youtubei/v1/browse",
                "contents", "videoRenderer")  # fmt: skip
    # search, long videos (sp=EgIQAQ%3D%3D would be "type video"; scrapetube's CAASAhAB too)
    return (f"{YOUTUBE_URL}/results?search_query={quote_plus(term)}&sp=CAASAhAB",
            f"{YOUTUBE_URL}/youtubei/v1/search", "contents", "videoRenderer")  # fmt: skip


def iter_listing(session: requests.Session, term: str, limit: int | None) -> Iterator[dict]:
    """Raw video objects of a search, channel or playlist, following continuation pages."""
    import json

    from scrapetube import scrapetube as st

    url, api_endpoint, list_key, item_key = _listing(term)
    html = st.get_initial_data(session, url)
    if "ytInitialData" not in html or "innertubeApiKey" not in html:
        raise ValueError("unexpected page (no ytInitialData): consent page or block?")
    client = json.loads(st.get_json_from_html(html, "INNERTUBE_CONTEXT", 2, '"}},') + '"}}')
    client = client["client"]
    api_key = st.get_json_from_html(html, "innertubeApiKey", 3)
    session.headers["X-YouTube-Client-Name"] = "1"
    session.headers["X-YouTube-Client-Version"] = client["clientVersion"]
    data = json.loads(st.get_json_from_html(html, "var ytInitialData = ", 0, "};") + "}")
    data = next(st.search_dict(data, list_key), None)
    count = 0
    while data is not None:
        next_data = st.get_next_data(data)
        for item in st.get_videos_items(data, item_key):
            yield item
            count += 1
            if limit is not None and count >= limit:
                return
        if not next_data:
            return
        data = st.get_ajax_data(session, api_endpoint, api_key, next_data, client)


# -- parsing and filtering -------------------------------------------------------------------


def _text(obj) -> str | None:
    if not isinstance(obj, dict):
        return None
    if "simpleText" in obj:
        return str(obj["simpleText"])
    runs = obj.get("runs")
    if isinstance(runs, list):
        return "".join(str(r.get("text", "")) for r in runs if isinstance(r, dict))
    return None


def parse_duration_s(text: str | None) -> float | None:
    """``"1:02:03"`` → 3723.0; None when absent or not a clock time."""
    if not text or not re.fullmatch(r"\d+(:\d{1,2}){0,2}", text.strip()):
        return None
    seconds = 0
    for part in text.strip().split(":"):
        seconds = seconds * 60 + int(part)
    return float(seconds)


def parse_views(text: str | None) -> int | None:
    if not text:
        return None
    if text.lower().startswith("no views"):
        return 0
    digits = re.sub(r"[^\d]", "", text.split(" ")[0])
    return int(digits) if digits else None


def parse_video(raw: dict) -> dict:
    """A raw ``videoRenderer`` to our fields plus ``kind`` (video, short, live, upcoming).

    Raises ValueError for an item without a usable id (malformed).
    """
    video_id = raw.get("videoId") if isinstance(raw, dict) else None
    if not isinstance(video_id, str) or not _YOUTUBE_ID.match(video_id):
        raise ValueError("malformed item: no video id")
    overlays = [o.get("thumbnailOverlayTimeStatusRenderer", {})
                for o in raw.get("thumbnailOverlays", []) if isinstance(o, dict)]  # fmt: skip
    overlay_styles = {str(o.get("style", "")) for o in overlays}
    badge_styles = {str(b.get("metadataBadgeRenderer", {}).get("style", ""))
                    for b in raw.get("badges", []) if isinstance(b, dict)}  # fmt: skip
    nav_url = (raw.get("navigationEndpoint", {}).get("commandMetadata", {})
               .get("webCommandMetadata", {}).get("url", ""))  # fmt: skip
    length = _text(raw.get("lengthText")) or next(
        (_text(o.get("text")) for o in overlays if o.get("text")), None
    )
    if "upcomingEventData" in raw or "UPCOMING" in overlay_styles:
        kind = "upcoming"
    elif "LIVE" in overlay_styles or any("LIVE" in s for s in badge_styles):
        kind = "live"
    elif nav_url.startswith("/shorts/") or "SHORTS" in overlay_styles:
        kind = "short"
    else:
        kind = "video"
    channel = _text(raw.get("ownerText")) or _text(raw.get("longBylineText")) or _text(
        raw.get("shortBylineText")
    )
    return {
        "id": video_id,
        "url": f"{YOUTUBE_URL}/watch?v={video_id}",
        "title": _text(raw.get("title")) or "",
        "channel": channel or "",
        "duration_s": parse_duration_s(length),
        "views": parse_views(_text(raw.get("viewCountText"))),
        "published": _text(raw.get("publishedTimeText")),
        "kind": kind,
    }


def filter_reason(video: dict, cfg: IndexConfig) -> str | None:
    """Why a parsed video is not kept, or None to keep it."""
    if video["kind"] != "video":
        return video["kind"]  # short, live, upcoming
    duration = video["duration_s"]
    if duration is None:
        return "no_duration"
    if duration < cfg.min_duration_s:
        return "too_short"
    if duration > cfg.max_duration_s:
        return "too_long"
    title = video["title"].lower()
    if any(re.search(rf"\b{re.escape(w.lower())}\b", title) for w in cfg.exclude_words):
        return "excluded_word"
    return None


# -- the run ---------------------------------------------------------------------------------


def read_terms(path: str | Path) -> list[str]:
    """Search terms, one a line; a line starting with ``#`` is a comment; order kept."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return list(dict.fromkeys(t for t in (line.strip() for line in lines)
                              if t and not t.startswith("#")))  # fmt: skip


def done_path(out: Path) -> Path:
    """Where the finished terms of ``out`` are recorded."""
    return out.with_name(out.name.removesuffix(".jsonl") + ".done.jsonl")


def rejected_path(out: Path) -> Path:
    """Where the videos that the filter turned away from ``out`` are recorded, with reasons."""
    return out.with_name(out.name.removesuffix(".jsonl") + ".rejected.jsonl")


def load_rejected(*paths: str | Path) -> list[dict]:
    """The rejected videos of one or more index files (``id``, ``title``, ``duration_s``,
    ``reason``, ``query``), each video once; items without an id (malformed) all count."""
    seen: dict[str, dict] = {}
    anonymous = []
    for path in paths:
        for entry in read_jsonl(rejected_path(Path(path))):
            if entry.get("id"):
                seen.setdefault(entry["id"], entry)
            else:
                anonymous.append(entry)
    return [*seen.values(), *anonymous]


def load_index(*paths: str | Path) -> list[dict]:
    """Entries of one or more index files (e.g. shards), deduplicated by id, first wins."""
    seen: dict[str, dict] = {}
    for path in paths:
        for entry in read_jsonl(path):
            if "id" in entry:
                seen.setdefault(entry["id"], entry)
    return list(seen.values())


@dataclass
class IndexSummary:
    """What a run did; ``filtered`` counts videos not kept, by reason."""

    terms_total: int = 0
    terms_skipped: int = 0  # finished in an earlier run
    terms_done: int = 0
    terms_failed: dict[str, str] = field(default_factory=dict)  # term -> reason
    videos_kept: int = 0
    hours_kept: float = 0.0
    filtered: Counter = field(default_factory=Counter)
    retried: Counter = field(default_factory=Counter)  # requests retried, by why (HTTP 429...)

    def __str__(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in self.filtered.most_common()) or "none"
        return (f"terms: {self.terms_done} done, {len(self.terms_failed)} failed, "
                f"{self.terms_skipped} skipped (done before), of {self.terms_total}\n"
                f"videos kept: {self.videos_kept} ({self.hours_kept:.2f} h)"
                + (" in this run: every term was done before\n" if self.terms_skipped and
                   not self.terms_done else "\n")
                + f"filtered: {reasons}"
                + ("\nretried: " + ", ".join(f"{k} {v}" for k, v in self.retried.most_common())
                   if self.retried else ""))  # fmt: skip


def _search_term(session: requests.Session, term: str, cfg: IndexConfig) -> dict:
    """Runs in a worker thread: fetch and parse one term. Returns the videos kept, the ones
    rejected (with their reason) and the filter counts."""
    videos, rejected, filtered = [], [], Counter()
    for raw in iter_listing(session, term, cfg.per_query):
        try:
            video = parse_video(raw)
        except ValueError:
            filtered["malformed"] += 1
            rejected.append({"id": None, "title": "", "duration_s": None, "reason": "malformed"})
            continue
        reason = filter_reason(video, cfg)
        if reason:
            filtered[reason] += 1
            rejected.append({"id": video["id"], "title": video["title"],
                             "duration_s": video["duration_s"], "reason": reason})  # fmt: skip
        else:
            videos.append(video)
    return {"videos": videos, "rejected": rejected, "filtered": filtered}


def run_index(
    cfg: IndexConfig,
    terms: Iterable[str],
    out: str | Path,
    shard: tuple[int, int] = (0, 1),
    session_factory: Callable[[], requests.Session] | None = None,
    progress: bool = True,
    limiter: RateLimiter | None = None,
) -> IndexSummary:
    """Index ``terms`` into ``out`` (JSON lines), resuming a previous run. Shard ``(i, n)``
    takes every n-th term. Each worker thread gets a session from ``session_factory``
    (default: a `YouTubeSession` sharing ``limiter``, by default one at ``cfg.requests_per_s``).
    """
    from tqdm.auto import tqdm

    out = Path(out)
    terms = take_shard(list(dict.fromkeys(terms)), shard)
    finished = {d["term"] for d in read_jsonl(done_path(out)) if d.get("status") == "ok"}
    known_ids = {e["id"] for e in read_jsonl(out) if "id" in e}
    todo = [t for t in terms if t not in finished]
    summary = IndexSummary(terms_total=len(terms), terms_skipped=len(terms) - len(todo))
    if session_factory is None:
        limiter = limiter or RateLimiter(cfg.requests_per_s)

        def session_factory() -> requests.Session:
            return YouTubeSession(limiter, retries=cfg.retries, backoff_s=cfg.backoff_s,
                                  timeout_s=cfg.timeout_s, base_url=cfg.youtube_url)  # fmt: skip

    local, sessions = threading.local(), []

    def work(term: str) -> dict:
        if not hasattr(local, "session"):
            local.session = session_factory()
            sessions.append(local.session)  # list.append is atomic
        return _search_term(local.session, term, cfg)

    bar = tqdm(total=len(todo), desc="index", unit="term", disable=not progress or not todo)
    pool = ThreadPoolExecutor(max_workers=max(1, cfg.workers))
    interrupted = False
    with (JsonlWriter(out) as index_file, JsonlWriter(done_path(out)) as done_file,
          JsonlWriter(rejected_path(out)) as rejected_file):  # fmt: skip
        files = (index_file, done_file, rejected_file)
        pending = {pool.submit(work, term): term for term in todo}
        try:
            while pending:
                finished_now, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished_now:
                    term = pending.pop(future)
                    _record_term(term, future, files, known_ids, summary)
                    bar.update(1)
                    bar.set_postfix(kept=summary.videos_kept, hours=f"{summary.hours_kept:.1f}")
        except BaseException:
            interrupted = True  # Ctrl-C: what is written stays; terms in flight are redone
            raise
        finally:
            pool.shutdown(wait=not interrupted, cancel_futures=True)
            bar.close()
    for session in sessions:
        summary.retried.update(getattr(session, "retried", {}))
    return summary


def _record_term(term, future, files, known_ids, summary) -> None:
    """Main thread only: append the term's new and rejected videos, then mark the term done."""
    index_file, done_file, rejected_file = files
    try:
        result = future.result()
    except Exception as err:  # one bad term never stops the run
        reason = f"{type(err).__name__}: {err}"[:300]
        summary.terms_failed[term] = reason
        done_file.write({"term": term, "status": "failed", "reason": reason})
        return
    new = 0
    for video in result["videos"]:
        if video["id"] in known_ids:
            summary.filtered["duplicate"] += 1
            continue
        known_ids.add(video["id"])
        index_file.write({**{k: v for k, v in video.items() if k != "kind"},
                          "query": term, "source": "youtube"})  # fmt: skip
        new += 1
        summary.videos_kept += 1
        summary.hours_kept += video["duration_s"] / 3600
    for video in result["rejected"]:
        rejected_file.write({**video, "query": term})
    summary.filtered.update(result["filtered"])
    summary.terms_done += 1
    done_file.write({"term": term, "status": "ok", "kept": new,
                     "filtered": dict(result["filtered"])})  # fmt: skip


# -- local sources ---------------------------------------------------------------------------


def _safe_id(name: str, key: str, taken: set[str]) -> str:
    """A filesystem- and shell-safe id from a name; a short hash of ``key`` keeps it unique."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:48] or "media"
    if _SAFE_ID.match(base) and base not in taken:
        return base
    return f"{base}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def youtube_id(url: str) -> str | None:
    """The video id of a YouTube watch, short or youtu.be URL, else None."""
    parsed = urlparse(url)
    host = parsed.netloc.lower().removeprefix("www.").removeprefix("m.")
    candidate = None
    if host == "youtu.be":
        candidate = parsed.path.strip("/")
    elif host.endswith("youtube.com"):
        if parsed.path == "/watch":
            candidate = parse_qs(parsed.query).get("v", [None])[0]
        elif parsed.path.startswith(("/shorts/", "/live/", "/embed/")):
            candidate = parsed.path.split("/")[2]
    return candidate if candidate and _YOUTUBE_ID.match(candidate) else None


def _describe_media(url: str) -> dict:
    """Title, channel and duration of one media URL (yt-dlp for YouTube, ffmpeg otherwise)."""
    if youtube_id(url):
        import yt_dlp

        with yt_dlp.YoutubeDL({"quiet": True, "no_warnings": True, "skip_download": True}) as ydl:
            info = ydl.extract_info(url, download=False, process=False)
        return {"title": info.get("title") or "", "channel": info.get("channel") or "",
                "duration_s": info.get("duration")}  # fmt: skip
    from .audio import probe

    info = probe(url)
    if info["duration_s"] is None or info["codec"] is None:
        raise ValueError("not readable as audio")
    title = _sidecar_title(url) or unquote(Path(urlparse(url).path).stem) or url
    return {"title": title, "channel": "", "duration_s": info["duration_s"]}


def _sidecar_title(url: str) -> str | None:
    """The ``title`` of a ``<name>.json`` transcript beside the media, if there is one."""
    import json

    from .captions import read_beside

    data = read_beside(url, ".json", timeout_s=5.0)
    try:
        title = json.loads(data).get("title") if data else None
    except (ValueError, AttributeError):
        return None
    return title if isinstance(title, str) and title.strip() else None


def index_urls(cfg: IndexConfig, urls: Iterable[str], out: str | Path, source: str = "url",
               progress: bool = True) -> IndexSummary:  # fmt: skip
    """Index a list of media URLs (YouTube or any direct link, incl. ``file://``) into ``out``,
    with the same fields and filters as search results. Resumes like `run_index`.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    existing = {e["url"]: e["id"] for e in read_jsonl(out) if "url" in e}
    taken = set(existing.values())
    rejected_before = {e["url"] for e in read_jsonl(rejected_path(out)) if "url" in e}
    urls = list(dict.fromkeys(u.strip() for u in urls if u.strip()))
    summary = IndexSummary(terms_total=len(urls))
    todo = []
    for url in urls:
        if url in existing or url in rejected_before:
            summary.terms_skipped += 1
            continue
        vid = youtube_id(url) or _safe_id(Path(urlparse(url).path).stem, url, taken)
        taken.add(vid)
        todo.append((url, vid))
    with (JsonlWriter(out) as index_file, JsonlWriter(rejected_path(out)) as rejected_file,
          ThreadPoolExecutor(max(1, cfg.workers)) as pool):  # fmt: skip
        results = pool.map(lambda item: _try(_describe_media, item[0]), todo)
        for (url, vid), (info, error) in tqdm(zip(todo, results), total=len(todo), desc="index",
                                               unit="file", disable=not progress or not todo):
            if error:
                summary.terms_failed[url] = error
                continue
            summary.terms_done += 1
            video = {"id": vid, "url": url, "views": None, "published": None, "kind": "video",
                     **info}  # fmt: skip
            reason = filter_reason(video, cfg)
            if reason:
                summary.filtered[reason] += 1
                rejected_file.write({"id": vid, "url": url, "title": video["title"],
                                     "duration_s": video["duration_s"], "reason": reason,
                                     "query": source})  # fmt: skip
                continue
            video.pop("kind")
            index_file.write({**video, "query": source, "source": source})
            summary.videos_kept += 1
            summary.hours_kept += video["duration_s"] / 3600
    return summary


def _try(fn, *args):
    try:
        return fn(*args), None
    except Exception as err:
        return None, f"{type(err).__name__}: {err}"[:300]


def index_demo(cfg: IndexConfig, out: str | Path, progress: bool = True) -> IndexSummary:
    """Index the bundled demo podcast, served on 127.0.0.1, like any list of media URLs."""
    from .config import demo_dir
    from .local_server import DEMO_PORT, serve_directory

    folder = demo_dir()
    names = [Path(u).name for u in local_media_urls(folder)]
    with serve_directory(folder, port=DEMO_PORT) as base_url:
        return index_urls(cfg, [f"{base_url}/{n}" for n in names], out, source="demo",
                          progress=progress)  # fmt: skip


def local_media_urls(folder: str | Path) -> list[str]:
    """``file://`` URLs of the media files in a folder (recursively), sorted."""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder (for --source local:DIR)")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in MEDIA_EXTENSIONS)
    return [p.as_uri() for p in files]


def read_urls(path: str | Path) -> list[str]:
    """URLs one a line; a line starting with ``#`` is a comment."""
    return read_terms(path)


def offline_search_demo(cfg: IndexConfig, terms: list[str], rates=(1000.0, 10.0),
                        workers: int = 4, delay_s: float = 0.02,
                        script: dict[str, list[str]] | None = None) -> list[dict]:  # fmt: skip
    """Index ``terms`` against `local_server.FakeYouTube` (made-up results in YouTube's page
    format) once per rate limit in ``rates`` (requests/s), each into a scratch file: per run
    the request arrival times the server saw, the most requests in any second, the threads'
    total wait, the summary, and the kept and rejected videos. ``script``: the server's first
    answers per term (`FakeYouTube`), e.g. ``{term: ["429", "500"]}``: retried with backoff
    (0.1 s here, not ``cfg.backoff_s``), counted in the summary's ``retried``."""
    import tempfile

    from .local_server import FakeYouTube, sample_catalog

    catalog, runs = sample_catalog(terms), []
    for rate in rates:
        limiter = RateLimiter(rate)
        with FakeYouTube(catalog, delay_s=delay_s, script=script) as fake, \
                tempfile.TemporaryDirectory() as scratch:  # fmt: skip
            demo = cfg.replace(youtube_url=fake.url, workers=workers, min_duration_s=30 * 60,
                               backoff_s=0.1)  # fmt: skip
            out = Path(scratch) / "index.jsonl"
            summary = run_index(demo, list(catalog), out, limiter=limiter, progress=False)
            runs.append({"rate": rate, "arrivals": [t for t, _ in fake.log],
                         "max_per_s": fake.max_requests_in_window(1.0),
                         "waited_s": limiter.waited_s, "summary": summary, "cfg": demo,
                         "entries": load_index(out), "rejected": load_rejected(out)})  # fmt: skip
    return runs
