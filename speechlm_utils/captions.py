"""Timed text you already have: YouTube captions (json3, vtt), subtitles (srt) and transcripts.

Every parser returns the same thing the aligner does, a list of `Word` with ``start_s`` and
``end_s`` in the source's timeline, in order; `split_by_chunks` then cuts that list at the
chunks' real start times (from ffmpeg's segment list), so each word lands in exactly one chunk
with times relative to it.

- json3 (YouTube's own format): automatic captions time every word (``tOffsetMs``); human
  captions time each line, and its words are spread over the line by length.
- vtt / srt: cue times; words are spread inside a cue by character length. Overlapping cues
  (YouTube's rolling captions repeat the previous line) are de-duplicated.
- our transcript JSON (``{"words": [{"word", "start_s", "end_s"}]}``): exact word times.

Non-speech markers like ``[Music]`` or ``(applause)`` and speaker arrows (``>>``) are dropped;
HTML entities and tags are decoded and removed.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from .words import Word

CAPTION_EXTENSIONS = (".json3", ".vtt", ".srt", ".json")
_MARKER = re.compile(r"^[\[(♪].*[\])♪]$|^[♪\-–—]+$")  # [Music], (laughs), ♪, dialogue dashes
_INLINE_TIME = re.compile(r"<((?:\d+:)?\d{1,2}:\d{2}\.\d{3})>")
_TAG = re.compile(r"<[^>]+>")
_CUE_TIME = re.compile(
    r"(?:(\d+):)?(\d{1,2}):(\d{2})[.,](\d{3})\s*-->\s*(?:(\d+):)?(\d{1,2}):(\d{2})[.,](\d{3})"
)


def read_beside(url: str, suffix: str, timeout_s: float = 10.0) -> bytes | None:
    """The bytes of ``<media name><suffix>`` beside a ``file://`` or http(s) media URL (a
    transcript or its metadata), or None when there is none."""
    from urllib.parse import unquote, urlparse

    import requests

    parsed = urlparse(url)
    path = str(Path(unquote(parsed.path)).with_suffix(suffix))
    try:
        if parsed.scheme == "file":
            return Path(path).read_bytes() if Path(path).is_file() else None
        if parsed.scheme in ("http", "https"):
            response = requests.get(parsed._replace(path=path, query="").geturl(),
                                    timeout=timeout_s)  # fmt: skip
            return response.content if response.status_code == 200 and response.content else None
    except (OSError, requests.RequestException):
        return None
    return None


def _clean_words(text: str) -> list[str]:
    """Decode entities, strip tags, drop markers like [Music] and >> arrows; split on spaces."""
    text = _TAG.sub("", html.unescape(text)).replace("\u200b", "").replace(">>", " ")
    text = re.sub(r"\[[^\]]*\]|\([A-Za-z ]+\)|♪[^♪]*♪|♪+", " ", text)  # [Music], (applause), ♪…♪
    return [w for w in text.split() if w and not _MARKER.match(w)]


def spread_words(text: str, start_s: float, end_s: float) -> list[Word]:
    """A line's words with times spread over ``[start_s, end_s]`` by character length."""
    words = _clean_words(text)
    if not words or end_s <= start_s:
        return []
    total = sum(len(w) + 1 for w in words)
    out, cursor = [], start_s
    for w in words:
        span = (end_s - start_s) * (len(w) + 1) / total
        out.append(Word(w, round(cursor, 3), round(cursor + span * len(w) / (len(w) + 1), 3)))
        cursor += span
    return out


def parse_json3(text: str) -> list[Word]:
    """YouTube json3 captions: word offsets when present (automatic captions), else lines."""
    events = json.loads(text).get("events", [])
    words: list[Word] = []
    timed = [e for e in events if e.get("segs") and "tStartMs" in e]
    for i, event in enumerate(timed):
        start_ms = event["tStartMs"]
        end_ms = start_ms + event.get("dDurationMs", 0)
        if i + 1 < len(timed):  # rolling captions overlap the next event: stop at its start
            end_ms = min(end_ms, timed[i + 1]["tStartMs"]) if end_ms > start_ms else end_ms
        segs = [s for s in event["segs"] if s.get("utf8", "").strip()]
        if len(segs) > 1 or any("tOffsetMs" in s for s in segs):  # word-level
            for j, seg in enumerate(segs):
                seg_start = start_ms + seg.get("tOffsetMs", 0)
                next_start = (start_ms + segs[j + 1].get("tOffsetMs", 0)) if j + 1 < len(segs) \
                    else end_ms  # fmt: skip
                seg_end = max(next_start, seg_start + 1)
                words += spread_words(seg["utf8"], seg_start / 1000, seg_end / 1000)
        else:
            words += spread_words(segs[0]["utf8"] if segs else "", start_ms / 1000, end_ms / 1000)
    return _ordered(words)


def _cue_seconds(groups: tuple) -> tuple[float, float]:
    h1, m1, s1, ms1, h2, m2, s2, ms2 = (int(g or 0) for g in groups)
    return (h1 * 3600 + m1 * 60 + s1 + ms1 / 1000, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000)


def parse_cues(text: str) -> list[Word]:
    """WebVTT or SRT: each cue's words spread over its time; repeated rolling lines dropped."""
    words: list[Word] = []
    seen_lines: list[str] = []
    blocks = re.split(r"\n\s*\n", text.replace("\r\n", "\n").replace("\r", "\n"))
    for block in blocks:
        lines = block.strip().split("\n")
        timing = next((i for i, line in enumerate(lines) if _CUE_TIME.search(line)), None)
        if timing is None:
            continue
        start_s, end_s = _cue_seconds(_CUE_TIME.search(lines[timing]).groups())
        new_lines = []
        for line in lines[timing + 1 :]:
            clean = " ".join(_clean_words(_INLINE_TIME.sub("", line)))
            if clean and clean not in seen_lines[-3:]:  # rolling captions repeat lines
                new_lines.append(line)
                seen_lines.append(clean)
        words += _cue_words(" ".join(new_lines), start_s, end_s)
    return _ordered(words)


def _clock_s(text: str) -> float:
    parts = [float(p) for p in text.split(":")]
    return sum(p * 60**i for i, p in enumerate(reversed(parts)))


def _cue_words(text: str, start_s: float, end_s: float) -> list[Word]:
    """A cue's words: inline ``<00:00:01.500>`` word times (YouTube's automatic VTT) when
    present, else spread over the cue."""
    pieces = _INLINE_TIME.split(text)  # text, time, text, time, text ...
    starts = [start_s] + [_clock_s(t) for t in pieces[1::2]]
    texts = pieces[0::2]
    words = []
    for i, (piece, piece_start) in enumerate(zip(texts, starts)):
        piece_end = starts[i + 1] if i + 1 < len(starts) else end_s
        words += spread_words(piece, piece_start, max(piece_end, piece_start + 0.01))
    return words


def parse_transcript_json(text: str) -> list[Word]:
    """Our transcript format (the demo podcast's): exact times per word."""
    data = json.loads(text)
    return _ordered([Word(str(w.get("word", w.get("text", ""))), float(w["start_s"]),
                          float(w["end_s"])) for w in data.get("words", [])
                     if str(w.get("word", w.get("text", ""))).strip()])  # fmt: skip


def parse_file(path: str | Path) -> list[Word]:
    """Words of a caption, subtitle or transcript file, chosen by its extension."""
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    suffix = path.suffix.lower()
    if suffix == ".json3":
        return parse_json3(text)
    if suffix in (".vtt", ".srt"):
        return parse_cues(text)
    if suffix == ".json":
        data = json.loads(text)
        return parse_json3(text) if "events" in data else parse_transcript_json(text)
    raise ValueError(f"{path}: unknown caption format (use {', '.join(CAPTION_EXTENSIONS)})")


def _ordered(words: list[Word]) -> list[Word]:
    """Sorted by start (stable), each ending no later than the next starts."""
    words = sorted(words, key=lambda w: w.start_s)
    for a, b in zip(words, words[1:]):
        a.end_s = max(a.start_s, min(a.end_s, b.start_s))
    return words


def split_by_chunks(words: list[Word], chunk_starts_s: list[float],
                    end_s: float | None = None) -> list[list[Word]]:  # fmt: skip
    """Words per chunk, times relative to each chunk; a word belongs to the chunk its start
    falls in (so a word on a boundary goes to exactly one chunk), its end clipped there."""
    bounds = list(chunk_starts_s) + [end_s if end_s is not None else float("inf")]
    out: list[list[Word]] = [[] for _ in chunk_starts_s]
    i = 0
    for word in words:
        while i + 1 < len(bounds) - 1 and word.start_s >= bounds[i + 1]:
            i += 1
        lo, hi = bounds[i], bounds[i + 1]
        if not lo <= word.start_s < hi:
            continue  # before the first chunk or after the last one
        out[i].append(Word(word.text, round(word.start_s - lo, 3),
                           round(min(word.end_s, hi) - lo, 3), word.probability))  # fmt: skip
    return out
