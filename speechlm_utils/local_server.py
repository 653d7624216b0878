"""HTTP servers on 127.0.0.1 for the offline demo, the tests and the benchmarks.

- `serve_directory`: a plain static file server; the tiny profile indexes and downloads the
  bundled demo podcast from it through the same yt-dlp and ffmpeg path as YouTube media.
- `FakeYouTube`: answers search, channel and playlist pages in YouTube's page format
  (``ytInitialData`` HTML, then continuation JSON) from a catalog you give it, with scripted
  failures (HTTP 429, dropped connections) and a per-request delay. Its videos do not exist:
  it shows the indexer working, it is not data.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):  # clients hang up: that's fine
            super().handle_error(request, client_address)


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep notebooks and test logs clean
        pass


DEMO_PORT = 47613  # fixed, so index entries written by notebook 01 still work in notebook 02


@contextmanager
def serve_directory(folder: str | Path, port: int = 0) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1 (``port`` 0: any free one); yields the base URL."""
    handler = partial(_QuietFiles, directory=str(Path(folder).resolve()))
    try:
        server = _QuietServer(("127.0.0.1", port), handler)
    except OSError as err:
        raise OSError(f"cannot serve {folder} on 127.0.0.1:{port} ({err}); is another "
                      "notebook's demo server still running? Restart that kernel.") from err
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def sample_catalog(terms: list[str], per_term: int = 30, seed: int = 0) -> dict[str, list[dict]]:
    """Made-up search results for `FakeYouTube`: mostly long videos, some shorts (under a
    minute), live streams and premieres (no duration), music and malformed items, and overlaps
    between terms."""
    import random

    rng = random.Random(seed)
    catalog = {}
    for t, term in enumerate(terms):
        specs = []
        for i in range(per_term):
            roll = rng.random()
            spec = {"id": f"f{t:04d}{i:06d}", "title": f"{term.title()} #{i}",
                    "channel": f"Channel {rng.randrange(50)}",
                    "duration_s": rng.lognormvariate(8.0, 0.8), "views": rng.randrange(10**6)}
            if roll < 0.05:
                spec["kind"] = rng.choice(["short", "live", "upcoming", "malformed"])
                # durations as each kind has them: a short lasts under a minute (the draw
                # folded into 15-60 s: no extra draw, so the rest of the catalog is unchanged),
                # a live stream or an upcoming premiere has none yet
                if spec["kind"] == "short":
                    spec["duration_s"] = 15.0 + spec["duration_s"] % 45.0
                elif spec["kind"] in ("live", "upcoming"):
                    spec["duration_s"] = None
            elif roll < 0.08:
                spec["title"] += " (music mix)"
            elif roll < 0.15 and t:
                spec["id"] = f"f{t - 1:04d}{i:06d}"  # also found by the previous term
            specs.append(spec)
        catalog[term] = specs
    return catalog


def _clock(seconds: float | None) -> dict | None:
    if seconds is None:
        return None
    seconds = int(seconds)
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return {"simpleText": f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"}


def render_video(spec: dict) -> dict:
    """A catalog entry as YouTube's ``videoRenderer`` object.

    ``spec``: ``id``, ``title``, ``channel``, ``duration_s``, ``views``, and ``kind`` one of
    video, short, live, upcoming, malformed.
    """
    kind = spec.get("kind", "video")
    vid = spec["id"]
    raw = {
        "videoId": vid,
        "title": {"runs": [{"text": spec.get("title", "")}]},
        "ownerText": {"runs": [{"text": spec.get("channel", "")}]},
        "publishedTimeText": {"simpleText": spec.get("published", "1 year ago")},
        "viewCountText": {"simpleText": f"{spec.get('views', 1234):,} views"},
        "navigationEndpoint": {"commandMetadata": {"webCommandMetadata": {
            "url": f"/shorts/{vid}" if kind == "short" else f"/watch?v={vid}"}}},
    }  # fmt: skip
    style = {"short": "SHORTS", "live": "LIVE", "upcoming": "UPCOMING"}.get(kind, "DEFAULT")
    overlay = {"style": style}
    if kind in ("video", "short") and spec.get("duration_s") is not None:
        raw["lengthText"] = _clock(spec["duration_s"])
        overlay["text"] = _clock(spec["duration_s"])
    raw["thumbnailOverlays"] = [{"thumbnailOverlayTimeStatusRenderer": overlay}]
    if kind == "live":
        raw["badges"] = [{"metadataBadgeRenderer": {"style": "BADGE_STYLE_TYPE_LIVE_NOW"}}]
        raw["viewCountText"] = {"runs": [{"text": "321"}, {"text": " watching"}]}
    if kind == "upcoming":
        raw["upcomingEventData"] = {"startTime": "1900000000"}
    if kind == "malformed":
        raw.pop("videoId")
    return raw


class FakeYouTube:
    """A stand-in for YouTube's listing pages on 127.0.0.1 (see the module docstring).

    ``catalog`` maps a term (a search query, ``channel:@handle`` or ``playlist:ID``) to its
    video specs. ``script`` maps a term to the answers of its first requests in order:
    ``"429"`` (Too Many Requests), ``"500"``, ``"drop"`` (close the connection unanswered);
    later requests succeed. Every request is logged in ``self.log`` as ``(time_s, term)``.
    """

    API_KEY = "FAKE_KEY"

    def __init__(self, catalog: dict[str, list[dict]], page_size: int = 20,
                 delay_s: float = 0.0, script: dict[str, list[str]] | None = None):  # fmt: skip
        self.catalog, self.page_size, self.delay_s = catalog, page_size, delay_s
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.log: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self.url = ""

    def max_requests_in_window(self, window_s: float = 1.0) -> int:
        """The most requests the server saw within any ``window_s`` seconds."""
        times = sorted(t for t, _ in self.log)
        best, start = 0, 0
        for end, t in enumerate(times):
            while t - times[start] >= window_s:
                start += 1
            best = max(best, end - start + 1)
        return best

    # -- pages --

    def _page(self, term: str, offset: int) -> tuple[list[dict], dict | None]:
        specs = self.catalog.get(term, [])
        items = [render_video(s) for s in specs[offset : offset + self.page_size]]
        if term.startswith("playlist:"):
            items = [{"playlistVideoRenderer": it} for it in items]
        elif term.startswith("channel:"):
            items = [{"richItemRenderer": {"content": {"videoRenderer": it}}} for it in items]
        else:
            items = [{"videoRenderer": it} for it in items]
        more = None
        if offset + self.page_size < len(specs):
            token = base64.urlsafe_b64encode(
                json.dumps({"term": term, "offset": offset + self.page_size}).encode()
            ).decode()
            more = {"continuationItemRenderer": {"continuationEndpoint": {
                "clickTrackingParams": "CT", "continuationCommand": {"token": token}}}}  # fmt: skip
        return items, more

    def initial_html(self, term: str) -> str:
        items, more = self._page(term, 0)
        tail = [more] if more else []
        if term.startswith("playlist:"):
            body = {"playlistVideoListRenderer": {"contents": items + tail}}
            data = {"contents": {"twoColumnBrowseResultsRenderer": {"tabs": [{"tabRenderer": {
                "content": {"sectionListRenderer": {"contents": [{"itemSectionRenderer": {
                    "contents": [body]}}]}}}}]}}}  # fmt: skip
        elif term.startswith("channel:"):
            data = {"contents": {"twoColumnBrowseResultsRenderer": {"tabs": [{"tabRenderer": {
                "content": {"richGridRenderer": {"contents": items + tail}}}}]}}}  # fmt: skip
        else:
            data = {"contents": {"twoColumnSearchResultsRenderer": {"primaryContents": {
                "sectionListRenderer": {"contents": [
                    {"itemSectionRenderer": {"contents": items}}, *tail]}}}}}  # fmt: skip
        context = {"client": {"hl": "en", "clientName": "WEB", "clientVersion": "2.20261101"}}
        return ("<!DOCTYPE html><html><head><script>ytcfg.set({"
                f'"INNERTUBE_CONTEXT":{json.dumps(context, separators=(",", ":"))},'
                f'"innertubeApiKey":"{self.API_KEY}"}});</script></head><body><script>'
                f"var ytInitialData = {json.dumps(data, separators=(',', ':'))};"
                "</script></body></html>")  # fmt: skip

    def continuation_json(self, token: str) -> dict:
        state = json.loads(base64.urlsafe_b64decode(token.encode()))
        items, more = self._page(state["term"], state["offset"])
        if not state["term"].startswith(("playlist:", "channel:")):
            items = [{"itemSectionRenderer": {"contents": items}}]
        return {"onResponseReceivedCommands": [{"appendContinuationItemsAction": {
            "continuationItems": items + ([more] if more else [])}}]}  # fmt: skip

    # -- serving --

    def _term_of(self, handler) -> str | None:
        parsed = urlparse(handler.path)
        query = parse_qs(parsed.query)
        if parsed.path == "/results":
            return query.get("search_query", [""])[0]
        if parsed.path == "/playlist":
            return "playlist:" + query.get("list", [""])[0]
        if parsed.path.endswith("/videos"):
            channel = unquote(parsed.path[: -len("/videos")]).lstrip("/")
            return "channel:" + channel.removeprefix("channel/")
        return None

    def _next_action(self, term: str) -> str:
        with self._lock:
            self.log.append((time.monotonic(), term))
            queue = self.script.get(term)
            return queue.pop(0) if queue else "ok"

    def _handler(self):
        fake = self

        class Handler(_QuietFiles):
            def _answer(self, term: str | None, make_body) -> None:
                if term is None:
                    self.send_error(404)
                    return
                action = fake._next_action(term)
                if fake.delay_s:
                    time.sleep(fake.delay_s)
                if action == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return
                if action in ("429", "500"):
                    self.send_response(int(action))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body, ctype = make_body()
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                term = fake._term_of(self)
                self._answer(term, lambda: (fake.initial_html(term), "text/html"))

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                payload = json.loads(self.rfile.read(length) or b"{}")
                token = payload.get("continuation", "")
                try:
                    term = json.loads(base64.urlsafe_b64decode(token.encode()))["term"]
                except (ValueError, KeyError):
                    term = None
                self._answer(term, lambda: (json.dumps(fake.continuation_json(token)),
                                            "application/json"))  # fmt: skip

        return Handler

    def __enter__(self) -> FakeYouTube:
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
