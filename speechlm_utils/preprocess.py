"""Stage 03's run: each video's audio chunks -> one interleaved token stream, stored in pieces.

A video is tokenized as one stream, however its audio was chunked, so that its stored pieces,
joined by ``start_s``, equal tokenizing its whole audio at once:

- **Audio.** Each chunk's decoded samples go at the chunk's real start on the video's timeline,
  and Mimi encodes the video as a stream (`codec.StreamEncoder`), its causal state carried
  across chunk seams. On a GPU several videos run side by side as the lanes of one batch, a
  lane reset on its own when its next video starts (batched GPU kernels may flip a float
  near-tie between codes depending on a batch's make-up); on a CPU one lane runs, so a run's
  result never depends on how work was split or resumed. No silence is inserted at seams of
  exact chunks (PCM, FLAC); a lossy chunk that decodes on its own loses a few ms at its seam
  (Opus 6.5 ms, mp3 11 ms: see `scrape.place_chunks`), filled with zeros so the timeline stays
  true. The end of a stream is padded to a whole 400 ms group. Pieces are written when their
  video's stream ends, longest videos first: a crash redoes the videos in flight.
- **Words.** Each chunk's timed words (Whisper, captions or a transcript) move to the video's
  timeline and are placed over the whole stream, so a chunk's last text slots carry the next
  chunk's first words (the 2 s lead does not stop at a seam).
- **Storage.** The stream is cut back into pieces at the group nearest each chunk's start:
  ``<root>/<hh>/<hash>.npy`` and one manifest line per piece (``video_id``, ``stream``,
  ``piece``, ``start_s``, ``tokens``, ``n_tokens``, the words and text statistics).

**Duplex** (``user_codebooks`` > 0, stage 08): each stream is split by its speaker turns (from
the scrape's ``turns``, `speakers`) into the assistant's and the user's track, both encoded by
Mimi side by side as lanes of the same batch, with the assistant's words alone in the text
slots. ``assistant="both"`` makes two examples of every stream, each of the two most talkative
speakers once the assistant (4 tracks). A video whose chunks carry no turns is skipped with
its reason.

A stream breaks only where the audio does: a corrupt, empty or silent chunk, or a gap between
chunks (one the speech filter dropped), ends it, and the next good chunk starts a new stream.

The token root is self-contained: ``layout.json`` (everything that changes the ids: layout,
text tokenizer, models, text source) and the manifests live inside it, and a root holds one
configuration: a run with another one is refused with a message. Resume: a video's pieces count
once its closing ``video`` line is written; a video in flight at a crash is redone whole.
``--shard i/n`` and torchrun ranks split the work by video and write their own manifests.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .audio import (
    MIMI_FRAME_SAMPLES,
    MIMI_SAMPLE_RATE_HZ,
    WHISPER_SAMPLE_RATE_HZ,
    AudioDecodeError,
    load_audio,
)
from .config import ModelsConfig, TokenizeConfig
from .manifest import JsonlWriter, atomic_path, in_shard, read_jsonl
from .scrape import read_chunk_listings
from .speakers import (
    ASSISTANT_POLICIES,
    Turn,
    merge_turns,
    pick_assistants,
    shift_turns,
    speaking_time,
    track_gains,
)
from .speakers import words_of as words_of_speaker
from .tokenizer import SpeechTokenizer
from .words import Word

TEXT_SOURCES = ("whisper", "captions", "sidecar")
LAYOUT_FILE = "layout.json"  # the token root's one configuration
MAX_GAP_S = 0.5  # a larger gap between a chunk's end and the next one's start breaks the stream
ROUND_S = 20.0  # audio per lane per batch round (encoded in 400 ms streaming steps)


class TokenRootError(ValueError):
    """A token root that holds another configuration's tokens."""


class AssistantNameError(ValueError):
    """``--assistant NAME`` names nobody who speaks in the videos to tokenize."""


def list_chunk_items(chunks_root: str | Path) -> list[dict]:
    """Every chunk the scrape stage finished, in time order per video: path, path relative to
    the root, video id, start and nominal duration, stored words."""
    root = Path(chunks_root)
    items = []
    for listing in read_chunk_listings(root):
        for chunk in sorted(listing["chunks"], key=lambda c: c["start_s"]):
            path = listing["folder"] / chunk["file"]
            items.append({"path": str(path), "chunk": str(path.relative_to(root)),
                          "video_id": listing["id"], "start_s": chunk["start_s"],
                          "duration_s": chunk["end_s"] - chunk["start_s"],
                          "stored_text": listing.get("text_source") if "words" in chunk else None,
                          "stored_words": chunk.get("words"), "stored_turns": chunk.get("turns"),
                          "speaker_source": listing.get("speaker_source")})  # fmt: skip
    return items


def in_first_seconds(item: dict, seconds: float | None) -> bool:
    """Whether a chunk is among a video's first ``seconds`` (None: all are): its middle comes
    before then. Not its start: cuts land on packets, so the chunk after a 20 s one can start at
    19.95 s, and "the first 20 s" would take two."""
    return seconds is None or item["start_s"] + item["duration_s"] / 2 < seconds


def stored_words(item: dict, text_source: str) -> tuple[str, list[Word]] | None:
    """The chunk's own timed text if ``text_source`` accepts it: ``captions`` takes any stored
    text (captions or a sidecar transcript), ``sidecar`` only a transcript, ``whisper`` none."""
    if text_source not in TEXT_SOURCES:
        raise ValueError(f"text_source {text_source!r}: use one of {', '.join(TEXT_SOURCES)}")
    label = item.get("stored_text")
    if not label or text_source == "whisper":
        return None
    if text_source == "sidecar" and not label.startswith("sidecar"):
        return None
    return label, [Word(t, s, e) for t, s, e in item["stored_words"]]


# -- the token root ---------------------------------------------------------------------------


def root_spec(tokenizer: SpeechTokenizer, models: ModelsConfig, text_source: str,
              cfg: TokenizeConfig | None = None) -> dict:  # fmt: skip
    """What a token root records about its configuration (`layout.json`); from ``cfg``, the
    duplex layout's assistant policy and overlap, and ``max_video_s`` when set."""
    if text_source not in TEXT_SOURCES:
        raise ValueError(f"text_source {text_source!r}: use one of {', '.join(TEXT_SOURCES)}")
    spec = {**tokenizer.fingerprint(), "text_source": text_source, "lm": str(models.lm),
            "mimi": str(models.mimi), "whisper": str(models.whisper)}  # fmt: skip
    if cfg is not None and tokenizer.layout.duplex:
        spec.update(assistant=cfg.assistant, overlap=cfg.overlap)
    if cfg is not None and cfg.max_video_s is not None:
        spec["max_video_s"] = cfg.max_video_s
    return spec


def config_digest(tokenizer: SpeechTokenizer, models: ModelsConfig, text_source: str,
                  cfg: TokenizeConfig | None = None) -> str:  # fmt: skip
    """A short hash of everything that changes the ids (model files by name, so a moved data
    directory keeps its digest)."""
    spec = root_spec(tokenizer, models, text_source, cfg)
    spec.update(lm=None, mimi=Path(models.mimi).name, whisper=Path(models.whisper).name)
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def _describe(spec: dict) -> str:
    return (f"text tokenizer {spec.get('text_tokenizer_sha1')} from {spec.get('lm')}, "
            f"K={spec.get('num_codebooks')}, {spec.get('text_slots_per_group')} text slots, "
            f"lead {spec.get('text_lead_s')} s, text from {spec.get('text_source')}, "
            f"Mimi {Path(str(spec.get('mimi'))).name}" +
            (f", duplex with {spec['user_codebooks']} user codebooks, assistant "
             f"{spec.get('assistant')}" if spec.get("user_codebooks") else ""))  # fmt: skip


def claim_token_root(tokens_root: str | Path, spec: dict, digest: str) -> None:
    """Record ``spec`` as the root's configuration, or refuse a root that holds another one."""
    path = Path(tokens_root) / LAYOUT_FILE
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("digest") != digest:
            raise TokenRootError(
                f"{tokens_root} already holds tokens of another configuration "
                f"({_describe(old)}); this run's is ({_describe(spec)}). One token root holds "
                f"one layout: tokenize into a root of its own (--out DIR), or delete "
                f"{tokens_root} to start over.")  # fmt: skip
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{LAYOUT_FILE}.{os.getpid()}")
    tmp.write_text(json.dumps({"digest": digest, **spec}, indent=1) + "\n")
    try:  # link, not rename: of two runs starting at once, exactly one claims the root
        os.link(tmp, path)
    except FileExistsError:
        tmp.unlink()
        claim_token_root(tokens_root, spec, digest)  # the other run won: compare with it
        return
    tmp.unlink()


def read_token_layout(tokens_root: str | Path) -> dict:
    """A token root's `layout.json`: the fingerprint, text source and models it was made with."""
    path = Path(tokens_root) / LAYOUT_FILE
    if not path.exists():
        raise FileNotFoundError(f"{tokens_root} holds no tokens ({LAYOUT_FILE} is missing): "
                                "run `tokenize` (notebook 03) first")  # fmt: skip
    return json.loads(path.read_text())


def manifest_path(tokens_root: str | Path, shard: tuple[int, int] = (0, 1),
                  rank: tuple[int, int] = (0, 1)) -> Path:  # fmt: skip
    """``<root>/manifest.jsonl``; a shard or a torchrun rank writes its own
    (``manifest.i-of-n.jsonl``, ``manifest.i-of-n.rank-r-of-w.jsonl``)."""
    name = "manifest"
    if shard[1] > 1 or rank[1] > 1:
        name += f".{shard[0]}-of-{shard[1]}"
    if rank[1] > 1:
        name += f".rank-{rank[0]}-of-{rank[1]}"
    return Path(tokens_root) / f"{name}.jsonl"


def read_token_manifests(tokens_root: str | Path) -> list[dict]:
    """The latest record of everything in every manifest of the root: pieces (``status`` ok)
    of finished videos, chunks that could not be used (failed, skipped) and one ``video`` line
    per finished video. Pieces come in stream order (video, stream, piece)."""
    latest: dict[tuple, dict] = {}
    for path in sorted(Path(tokens_root).glob("manifest*.jsonl")):
        for r in read_jsonl(path):
            latest[(r.get("type"), r.get("video_id"), r.get("chunk"), r.get("role"))] = r
    done = {r["video_id"] for r in latest.values() if r.get("type") == "video"}
    records = [r for r in latest.values() if r.get("type") != "piece" or r["video_id"] in done]
    return sorted(records, key=lambda r: (r.get("video_id") or "", r.get("type") != "piece",
                                          r.get("stream", 0), r.get("piece", 0)))  # fmt: skip


def stream_pieces(tokens_root: str | Path) -> list[dict]:
    """The stored pieces of finished videos, in stream order."""
    return [r for r in read_token_manifests(tokens_root) if r.get("type") == "piece"]


def video_stream(tokens_root: str | Path, video_id: str, stream: int = 0, role: str | None = None
                 ) -> tuple[np.ndarray, list[Word], list[float]]:  # fmt: skip
    """A video's stream joined from its pieces: the ids ``[N]``, its words on the stream's
    timeline, and each piece's start in seconds on that timeline (the seams). A duplex root's
    ``role`` is the assistant of the example (default: the first one stored)."""
    pieces = [r for r in stream_pieces(tokens_root)
              if r["video_id"] == video_id and r.get("stream", 0) == stream]  # fmt: skip
    if pieces:
        role = pieces[0].get("role") if role is None else role
        pieces = [r for r in pieces if r.get("role") == role]
    if not pieces:
        raise KeyError(f"{tokens_root} holds no stream {stream} of video {video_id!r}"
                       + (f" with assistant {role!r}" if role else ""))
    t0 = pieces[0]["start_s"]
    ids = np.concatenate([load_tokens(tokens_root, r) for r in pieces])
    words = [w.shifted(r["start_s"] - t0) for r in pieces for w in words_of(r)]
    return ids, words, [r["start_s"] - t0 for r in pieces]


def load_tokens(tokens_root: str | Path, record: dict) -> np.ndarray:
    """A piece's ids as int64, from its manifest record."""
    return np.load(Path(tokens_root) / record["tokens"]).astype(np.int64)


def words_of(record: dict) -> list[Word]:
    """The timed words stored in a piece's record (times relative to the piece's start)."""
    return [Word(t, s, e, p) for t, s, e, p in record.get("words", [])]


def turns_of(record: dict) -> list[Turn]:
    """A duplex piece's speaker turns (times relative to the piece's start)."""
    return [Turn(who, s, e) for who, s, e in record.get("turns", [])]


def video_turns(chunks: list[dict]) -> list[Turn]:
    """A video's speaker turns on its timeline, from its chunk items' stored turns (chunk
    time; a turn cut at a seam is joined again)."""
    return merge_turns(t for c in chunks
                       for t in shift_turns(turns_of({"turns": c.get("stored_turns") or []}),
                                            c["start_s"]))  # fmt: skip


def piece_audio(chunks_root: str | Path, record: dict,
                sample_rate_hz: int = MIMI_SAMPLE_RATE_HZ) -> np.ndarray:  # fmt: skip
    """The audio under a piece, from its chunk's file: shifted to the piece's start (pieces
    begin on a 400 ms group, within 200 ms of their chunk's start). ``[T]`` float32."""
    wav = load_audio(Path(chunks_root) / record["chunk"], sample_rate_hz)
    offset_s = record.get("start_s", 0.0) - record.get("chunk_start_s", record.get("start_s", 0.0))
    shift = round(offset_s * sample_rate_hz)
    return wav[shift:] if shift >= 0 else np.concatenate([np.zeros(-shift, np.float32), wav])


# -- reading chunks -----------------------------------------------------------------------------


def read_chunk(item: dict, needs_whisper: bool, silence_dbfs: float,
               min_silent_s: float = 1.0) -> dict:  # fmt: skip
    """One chunk decoded (in a worker thread: ffmpeg does the work); never raises for a bad
    chunk: ``status`` is ready, failed or skipped, with a ``reason``. A silent chunk of at least
    ``min_silent_s`` is skipped (dead air ends a stream); a quiet sliver stays in its stream."""
    path = Path(item["path"])
    try:
        data = path.read_bytes()
    except OSError as err:
        return {**item, "status": "failed", "reason": f"unreadable: {err.strerror}"}
    if not data:
        return {**item, "status": "failed", "reason": "empty file (0 bytes)"}
    sha1 = hashlib.sha1(data).hexdigest()
    try:
        wav24 = load_audio(path, MIMI_SAMPLE_RATE_HZ)
        wav16 = load_audio(path, WHISPER_SAMPLE_RATE_HZ) if needs_whisper else None
    except AudioDecodeError as err:
        return {**item, "status": "failed", "reason": f"corrupt: {str(err).split(': ', 1)[-1]}"}
    rms_db = 20 * math.log10(max(float(np.sqrt(np.mean(wav24**2))), 1e-10))
    if rms_db < silence_dbfs and wav24.size >= min_silent_s * MIMI_SAMPLE_RATE_HZ:
        return {**item, "status": "skipped", "reason": f"silent ({rms_db:.0f} dBFS)"}
    return {**item, "status": "ready", "sha1": sha1, "wav24": wav24, "wav16": wav16}


# -- one stream ---------------------------------------------------------------------------------


@dataclass
class _Stream:
    """A run of consecutive good chunks of one video, encoded as one stream."""

    video_id: str
    index: int  # the stream's number in its video
    start_s: float  # video time of the stream's first sample
    chunks: list[dict] = field(default_factory=list)  # ready chunks, with ``offset`` samples
    pending: deque = field(default_factory=deque)  # audio placed, not yet fed to Mimi
    pending_samples: int = 0
    placed_samples: int = 0  # timeline length so far
    codes: list[torch.Tensor] = field(default_factory=list)  # [tracks, K, n] per round
    ending: bool = False  # no more audio comes: feed the rest, then finish
    turns: list[Turn] = field(default_factory=list)  # duplex: who speaks when (stream time)
    roles: list[str] = field(default_factory=list)  # duplex: the assistant of each example
    fed_samples: int = 0  # timeline samples given to Mimi so far

    def end_s(self) -> float:
        return self.start_s + self.placed_samples / MIMI_SAMPLE_RATE_HZ

    def add(self, chunk: dict) -> None:
        """Place a chunk's audio at its real start (a small gap becomes zeros, an overlap is cut
        from the new chunk's head, so the timeline stays true to the chunk starts)."""
        offset = round((chunk["start_s"] - self.start_s) * MIMI_SAMPLE_RATE_HZ)
        wav = chunk.pop("wav24")
        if offset > self.placed_samples:
            self._push(np.zeros(offset - self.placed_samples, np.float32))
        else:
            wav = wav[self.placed_samples - offset :]
        chunk["offset"] = offset
        self.chunks.append(chunk)
        self._push(wav)

    def _push(self, wav: np.ndarray) -> None:
        if wav.size:
            self.pending.append(wav)
            self.pending_samples += wav.size
            self.placed_samples += wav.size

    def take(self, n: int) -> np.ndarray:
        """The next up to ``n`` pending samples."""
        out, got = [], 0
        while self.pending and got < n:
            wav = self.pending.popleft()
            if got + wav.size > n:
                self.pending.appendleft(wav[n - got :])
                wav = wav[: n - got]
            out.append(wav)
            got += wav.size
        self.pending_samples -= got
        return np.concatenate(out) if out else np.zeros(0, np.float32)


@dataclass
class _Lane:
    """One batch lane: the video it works on, its decoding futures and its current stream."""

    video: dict | None = None
    position: int = 0  # next chunk to submit for decoding
    futures: deque = field(default_factory=deque)
    carry: dict | None = None  # a chunk read that belongs to the next stream
    stream: _Stream | None = None
    streams: int = 0  # streams started in this video
    pieces: int = 0


@dataclass
class TokenizeSummary:
    chunks_total: int = 0
    done_before: int = 0  # chunks of videos finished in an earlier run
    videos: int = 0  # finished in this run
    streams: int = 0
    examples: int = 0  # duplex: streams x assistants (one example per assistant)
    seams: int = 0  # chunk boundaries joined inside streams
    ok: int = 0  # pieces stored (one per good chunk)
    skipped: dict[str, str] = field(default_factory=dict)  # chunk -> reason
    failed: dict[str, str] = field(default_factory=dict)
    audio_s: float = 0.0
    tokens: int = 0
    seconds: float = 0.0
    max_lag_s: float = 0.0
    overflow_tokens: int = 0
    pad_shares: list[float] = field(default_factory=list)

    @property
    def realtime_factor(self) -> float:
        return self.audio_s / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        lines = [f"chunks: {self.ok} stored, {len(self.skipped)} skipped, {len(self.failed)} "
                 f"failed, {self.done_before} done before, of {self.chunks_total}"]  # fmt: skip
        if self.videos:
            pad = float(np.mean(self.pad_shares)) if self.pad_shares else 0.0
            lines += [
                f"videos: {self.videos} as {self.streams} stream(s), {self.seams} chunk seams "
                "joined inside them" + (f"; {self.examples} duplex example(s), one per "
                                        "assistant" if self.examples else ""),
                f"audio: {self.audio_s / 60:.1f} min -> {self.tokens:,} tokens in "
                f"{self.seconds:.1f} s ({self.realtime_factor:.1f}x realtime)",
                f"text: mean pad share {pad:.2f}, largest spill lag {self.max_lag_s:.1f} s, "
                f"{self.overflow_tokens} tokens did not fit",
            ]  # fmt: skip
        for kind, reasons in (("skipped", self.skipped), ("failed", self.failed)):
            for chunk, reason in list(reasons.items())[:5]:
                lines.append(f"  {kind}: {chunk}: {reason}")
        return "\n".join(lines)


class _Run:
    """The state of one `run_tokenize` call (see the module doc)."""

    def __init__(self, cfg, tokenizer, digest, tokens_root, writer, codec, aligner, summary,
                 bar, pool):  # fmt: skip
        self.cfg, self.tokenizer, self.digest = cfg, tokenizer, digest
        self.tokens_root, self.writer, self.codec = tokens_root, writer, codec
        self.aligner, self.summary, self.bar, self.pool = aligner, summary, bar, pool
        lay = tokenizer.layout
        self.group_samples = lay.frames_per_group * MIMI_FRAME_SAMPLES
        self.round_samples = max(1, round(ROUND_S / lay.group_duration_s)) * self.group_samples
        self.prefetch = 2 + math.ceil(ROUND_S / 10.0)  # decoded chunks kept ahead per lane
        self.to_align: list[dict] = []
        self.tracks = tracks_per_lane(cfg)  # encoder rows per lane

    # -- feeding lanes --

    def _submit(self, lane: _Lane) -> None:
        chunks = lane.video["chunks"]
        while lane.position < len(chunks) and len(lane.futures) < self.prefetch:
            item = chunks[lane.position]
            needs = stored_words(item, self.cfg.text_source) is None
            lane.futures.append(self.pool.submit(read_chunk, item, needs, self.cfg.silence_dbfs,
                                                 self.cfg.min_duration_s))  # fmt: skip
            lane.position += 1

    def _next_chunk(self, lane: _Lane) -> dict | None:
        if lane.carry is not None:
            chunk, lane.carry = lane.carry, None
            return chunk
        self._submit(lane)
        if not lane.futures:
            return None
        future: Future = lane.futures.popleft()
        chunk = future.result()
        self._submit(lane)
        return chunk

    def prepare(self, lane: _Lane, videos: deque, resets: list[int], index: int) -> None:
        """Give the lane a round of audio: pull decoded chunks until its stream holds one
        round's samples, or mark the stream ``ending``; start videos and streams as needed."""
        def wants_audio() -> bool:
            s = lane.stream
            return s is None or (not s.ending and s.pending_samples < self.round_samples)

        while wants_audio():
            if lane.video is None:
                if not videos:
                    return
                lane.video, lane.position, lane.streams, lane.pieces = videos.popleft(), 0, 0, 0
            chunk = self._next_chunk(lane)
            if chunk is None:  # the video has no more chunks
                if lane.stream is not None:
                    lane.stream.ending = True
                    return
                self.finish_video(lane)
                continue
            if chunk["status"] != "ready":
                self.record_problem(chunk)
                if lane.stream is not None:
                    lane.stream.ending = True
                    return
                continue
            stream = lane.stream
            if stream is not None and chunk["start_s"] - stream.end_s() > MAX_GAP_S:
                lane.carry, stream.ending = chunk, True  # a gap: this chunk starts the next one
                return
            if stream is None:
                lane.stream = stream = _Stream(chunk["video_id"], lane.streams, chunk["start_s"])
                if lane.video.get("roles"):
                    stream.turns = shift_turns(lane.video["turns"], -chunk["start_s"])
                    stream.roles = lane.video["roles"]
                lane.streams += 1
                resets.append(index)
            stream.add(chunk)
            if chunk.get("wav16") is not None:
                self.to_align.append(chunk)

    def align_pending(self) -> None:
        """Whisper's words for the chunks read so far that need them, in batches."""
        size = max(1, self.cfg.batch_size)
        for i in range(0, len(self.to_align), size):
            batch = self.to_align[i : i + size]
            for chunk, words in zip(batch, self.aligner.align([c.pop("wav16") for c in batch])):
                chunk["words"], chunk["text_source"] = words, "whisper"
        self.to_align = []

    # -- one round of Mimi over all lanes --

    def encode_round(self, lanes: list[_Lane], encoder, resets: list[int]) -> None:
        """One round of Mimi over every lane's next samples: the mix (mono), or each example's
        assistant and user tracks (duplex: rows ``lane * tracks + 2 * role (+ 1)``)."""
        active = [(i, lane.stream) for i, lane in enumerate(lanes) if lane.stream is not None]
        need = max(min(s.pending_samples, self.round_samples) for _, s in active)
        n = max(self.group_samples, math.ceil(need / self.group_samples) * self.group_samples)
        T = self.tracks
        wav = torch.zeros(len(lanes) * T, 1, n)
        for i, stream in active:
            piece = stream.take(n)
            for row, track in enumerate(self.split(stream, piece)):
                wav[i * T + row, 0, : piece.size] = torch.from_numpy(track)
            stream.fed_samples += piece.size
            self.bar.update(piece.size / MIMI_SAMPLE_RATE_HZ)
        encoder.reset([i * T + row for i in resets for row in range(T)])
        codes = encoder.encode(wav)  # [B * T, K, n / 1920]
        for i, stream in active:  # a clone, not a view holding the whole batch
            stream.codes.append(codes[i * T : (i + 1) * T].clone())

    def split(self, stream: _Stream, piece: np.ndarray) -> list[np.ndarray]:
        """The tracks Mimi encodes of the stream's next ``piece`` of the mix: the mix itself
        (mono), or per example the assistant's track, then the user's (duplex)."""
        if not stream.roles:
            return [piece]
        tracks = []
        for assistant in stream.roles:
            mine, theirs = track_gains(stream.turns, assistant, MIMI_SAMPLE_RATE_HZ,
                                       stream.fed_samples, piece.size, self.cfg.overlap)
            tracks += [piece * mine, piece * theirs]
        return tracks

    def finish_streams(self, lanes: list[_Lane]) -> None:
        for lane in lanes:
            stream = lane.stream
            if stream is not None and stream.ending and stream.pending_samples == 0:
                self.write_stream(lane, stream)
                lane.stream = None

    # -- writing --

    def write_stream(self, lane: _Lane, stream: _Stream) -> None:
        """Tokenize a finished stream as a whole and store it in pieces, one per chunk (and
        per example: each assistant of a duplex stream)."""
        lay, sr = self.tokenizer.layout, MIMI_SAMPLE_RATE_HZ
        seconds = stream.placed_samples / sr
        if seconds < self.cfg.min_duration_s:
            for chunk in stream.chunks:
                self.record_problem({**chunk, "status": "skipped",
                                     "reason": f"too short ({seconds:.2f} s of audio in its "
                                               "stream)"})  # fmt: skip
            return
        groups = math.ceil(stream.placed_samples / self.group_samples)
        codes = torch.cat(stream.codes, dim=-1)[..., : groups * lay.frames_per_group].numpy()
        words, sources = [], []
        for chunk in stream.chunks:
            offset_s = chunk["offset"] / sr
            chunk_words = chunk["words"] if "words" in chunk else \
                stored_words(chunk, self.cfg.text_source)[1]  # fmt: skip
            sources.append(chunk.get("text_source") or
                           stored_words(chunk, self.cfg.text_source)[0])  # fmt: skip
            words += [w.shifted(offset_s) for w in chunk_words]
        starts = [min(groups, round(c["offset"] / self.group_samples)) for c in stream.chunks]
        starts[0] = 0
        text_hash = hashlib.sha1("".join(f"{w.text}@{w.start_s:.3f}" for w in words).encode())
        turns_hash = "".join(f"{t.speaker}@{t.start_s:.3f}-{t.end_s:.3f}" for t in stream.turns)
        stream_hash = hashlib.sha1((self.digest + "".join(c["sha1"] for c in stream.chunks) +
                                    text_hash.hexdigest() + turns_hash).encode()).hexdigest()
        spans = []
        for j in range(len(stream.chunks)):
            a = max(starts[: j + 1])
            spans.append((a, groups if j + 1 == len(starts) else max(a, starts[j + 1])))
        if not stream.roles:
            encoded = self.tokenizer.encode(codes[0], words)
            self.write_pieces(lane, stream, encoded, words, spans, sources, stream_hash)
        for r, assistant in enumerate(stream.roles):
            mine = words_of_speaker(words, stream.turns, assistant)
            user = codes[2 * r + 1, : lay.user_codebooks]
            encoded = self.tokenizer.encode(codes[2 * r], mine, user_codes=user)
            self.write_pieces(lane, stream, encoded, mine, spans, sources, stream_hash,
                              role=assistant)  # fmt: skip
            self.summary.examples += 1
        self.summary.streams += 1
        self.summary.seams += len(stream.chunks) - 1
        self.summary.audio_s += seconds

    def write_pieces(self, lane: _Lane, stream: _Stream, encoded, words: list[Word],
                     spans: list[tuple[int, int]], sources: list[str], stream_hash: str,
                     role: str | None = None) -> None:  # fmt: skip
        """Store one encoded stream in pieces: chunk j's groups ``spans[j]`` each (a duplex
        example's pieces also record its assistant, the user and the turns)."""
        lay = self.tokenizer.layout
        S, G = lay.text_slots_per_group, lay.group_len
        slots = [p["slot"] for p in encoded.placements]  # both sorted: pieces by bisect
        word_starts = [w.start_s for w in words]
        last_written = max(j for j, (a, b) in enumerate(spans) if b > a)
        duplex = {} if role is None else {"role": role}
        users = sorted({t.speaker for t in stream.turns} - {role}) if role is not None else []
        for j, chunk in enumerate(stream.chunks):
            a, b = spans[j]
            if b <= a:  # a chunk shorter than half a group: its audio is in its neighbour's piece
                self.writer.write({"type": "chunk", "chunk": chunk["chunk"],
                                   "video_id": stream.video_id, "status": "merged",
                                   "reason": "under 200 ms: its audio is in the previous piece",
                                   "config": self.digest, **duplex})  # fmt: skip
                continue
            ids = encoded.ids[a * G : b * G]
            name = hashlib.sha1(f"{stream_hash}:{j}".encode() if role is None else
                                f"{stream_hash}:{role}:{j}".encode()).hexdigest()  # fmt: skip
            rel = f"{name[:2]}/{name}.npy"
            with atomic_path(self.tokens_root / rel) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, ids.astype(lay.storage_dtype))
            start_s, end_s = a * lay.group_duration_s, b * lay.group_duration_s
            placed = encoded.placements[bisect.bisect_left(slots, a * S):
                                        bisect.bisect_left(slots, b * S)]  # fmt: skip
            lags = [p["lag_s"] for p in placed]
            mine = words[bisect.bisect_left(word_starts, start_s - 1e-9):
                         bisect.bisect_left(word_starts, end_s - 1e-9)]  # fmt: skip
            last = j == last_written
            stats = {"n_groups": b - a, "n_words": len(mine), "text_tokens": len(placed),
                     "text_slots": (b - a) * S, "pad_share": 1 - len(placed) / ((b - a) * S),
                     "max_lag_s": max(lags, default=0.0),
                     "mean_lag_s": float(np.mean(lags)) if lags else 0.0,
                     "overflow_tokens": encoded.stats["overflow_tokens"] if last else 0,
                     }  # fmt: skip
            record = {
                "type": "piece", "chunk": chunk["chunk"], "video_id": stream.video_id,
                "stream": stream.index, "piece": lane.pieces, "status": "ok",
                "config": self.digest, "hash": name, "tokens": rel, "n_tokens": int(ids.size),
                "start_s": round(stream.start_s + start_s, 3),
                "chunk_start_s": round(chunk["start_s"], 3),
                "duration_s": round(end_s - start_s, 3), "text_source": sources[j],
                "words": [[w.text, round(w.start_s - start_s, 3), round(w.end_s - start_s, 3),
                           round(w.probability, 3)] for w in mine],
                **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in stats.items()},
            }  # fmt: skip
            if role is not None:
                record.update(role=role, user=users, turns=[
                    [t.speaker, round(max(t.start_s, start_s) - start_s, 3),
                     round(min(t.end_s, end_s) - start_s, 3)]
                    for t in stream.turns if t.end_s > start_s and t.start_s < end_s])
            self.writer.write(record)
            lane.pieces += 1
            self.summary.ok += 1
            self.summary.tokens += int(ids.size)
            self.summary.pad_shares.append(stats["pad_share"])
        self.summary.max_lag_s = max(self.summary.max_lag_s, encoded.stats["max_lag_s"])
        self.summary.overflow_tokens += encoded.stats["overflow_tokens"]

    def record_problem(self, chunk: dict) -> None:
        self.writer.write({"type": "chunk", "chunk": chunk["chunk"],
                           "video_id": chunk["video_id"], "status": chunk["status"],
                           "reason": chunk["reason"], "config": self.digest})  # fmt: skip
        kind = self.summary.failed if chunk["status"] == "failed" else self.summary.skipped
        kind[chunk["chunk"]] = chunk["reason"]
        self.bar.update(chunk.get("duration_s") or 0.0)

    def finish_video(self, lane: _Lane) -> None:
        video = lane.video
        self.writer.write({"type": "video", "video_id": video["video_id"], "status": "done",
                           "config": self.digest, "chunks": len(video["chunks"]),
                           "streams": lane.streams, "pieces": lane.pieces})  # fmt: skip
        self.summary.videos += 1
        lane.video = None


def tracks_per_lane(cfg: TokenizeConfig) -> int:
    """Mimi rows per video in a batch: the mix (mono); an assistant's and a user's track per
    example (duplex: 2, or 4 for ``assistant="both"``)."""
    if not cfg.user_codebooks:
        return 1
    return 4 if cfg.assistant == "both" else 2


def speaker_roles(video: dict, cfg: TokenizeConfig) -> tuple[str, bool] | None:
    """Give a duplex video its turns (video time) and the assistant of each example (`roles`);
    or why it cannot be tokenized in the duplex layout, and whether that is final (a named
    assistant the video lacks: its speakers will not change) or may pass on a later run (no
    turns yet: diarize may give them)."""
    turns = video_turns(video["chunks"])
    video["speakers"] = list(speaking_time(turns))
    if not turns:
        return ("no speaker turns (the duplex layout needs who speaks when): give them with "
                "`python -m speechlm_utils diarize` (pyannote), or scrape with a transcript "
                "that labels speakers; the video is tried again on the next run",
                False)  # fmt: skip
    if cfg.assistant not in ASSISTANT_POLICIES and cfg.assistant not in video["speakers"]:
        return (f"assistant {cfg.assistant!r} is not a speaker of this video (its speakers: "
                f"{', '.join(video['speakers'])}); skipped for good in this root, which holds "
                "one assistant policy", True)  # fmt: skip
    video["roles"] = pick_assistants(turns, cfg.assistant)
    video["turns"] = turns
    return None


def duplex_problems(todo: list[dict], cfg: TokenizeConfig, done_before: bool,
                    sees_all: bool = True) -> dict:  # fmt: skip
    """`speaker_roles` of each video to tokenize: video id -> (reason, final) for those that
    cannot be. A named assistant that no video has, in a root with nothing done yet, is a
    mistyped name: a ValueError listing the speakers there, before anything is written. Only
    a process that sees every video (``sees_all``: no --shard, one rank) can tell: one shard
    or rank may just hold none of that speaker's videos, and its raising would end them all."""
    problems = {}
    for video in todo:
        problem = speaker_roles(video, cfg)
        if problem:
            problems[video["video_id"]] = problem
    named = cfg.assistant not in ASSISTANT_POLICIES
    with_turns = [v for v in todo if v["speakers"]]
    if named and sees_all and not done_before and with_turns and all(
            problems.get(v["video_id"], ("", False))[1] for v in with_turns):  # fmt: skip
        seen = sorted({s for v in with_turns for s in v["speakers"]})
        raise AssistantNameError(
            f"--assistant {cfg.assistant!r} is not a speaker of any of the {len(with_turns)} "
            f"videos with speaker turns here (their speakers: {', '.join(seen[:20])}"
            f"{' ...' if len(seen) > 20 else ''}): use {', '.join(ASSISTANT_POLICIES)} or one "
            "of those names")  # fmt: skip
    return problems


def group_videos(items: list[dict]) -> list[dict]:
    """Chunk items grouped by video, each video's chunks in time order."""
    videos: dict[str, list[dict]] = {}
    for item in items:
        videos.setdefault(item["video_id"], []).append(item)
    return [{"video_id": vid, "chunks": sorted(chunks, key=lambda c: c["start_s"])}
            for vid, chunks in videos.items()]  # fmt: skip


def run_tokenize(cfg: TokenizeConfig, models: ModelsConfig, chunks_root: str | Path,
                 tokens_root: str | Path, shard: tuple[int, int] = (0, 1),
                 rank: tuple[int, int] = (0, 1), device: str | None = None,
                 codec=None, aligner=None, text_tokenizer=None, progress: bool = True,
                 lanes: int | None = None) -> TokenizeSummary:  # fmt: skip
    """Tokenize every video under ``chunks_root`` into ``tokens_root`` (see the module doc).

    ``shard`` picks this host's videos, ``rank`` = (rank, world_size) this process's part of
    them under torchrun. Models are loaded here unless given (tests and notebooks reuse them);
    a root that already holds tokens continues with the models it recorded unless ``models``
    chose others on purpose (`ModelsConfig.follow`). ``lanes`` videos are encoded side by side
    (default: ``cfg.batch_size`` on a GPU, 1 on a CPU); ``cfg.workers`` threads decode chunks.
    """
    from tqdm.auto import tqdm

    from .align import Aligner
    from .checkpoints import load_text_tokenizer
    from .codec import Codec
    from .config import pick_device

    device = device or pick_device()
    if str(device).startswith("cuda:"):  # torchrun: moshi's CUDA graphs capture on the current
        torch.cuda.set_device(device)  # device, which must be this rank's
    tokens_root = Path(tokens_root)
    if (tokens_root / LAYOUT_FILE).exists():  # resume with the models the root was made with
        recorded = read_token_layout(tokens_root)
        followed = models.follow(recorded)
        moved = [k for k in ("mimi", "whisper") if getattr(followed, k) != getattr(models, k)]
        if moved and (codec is not None and "mimi" in moved or
                      aligner is not None and "whisper" in moved):  # fmt: skip
            raise TokenRootError(
                f"{tokens_root} holds tokens made with " +
                ", ".join(f"{k} {recorded[k]}" for k in moved) + ", but the models passed in "
                "come from " + ", ".join(f"{getattr(models, k)}" for k in moved) + ": load them "
                "from the root's own (models.follow(preprocess.read_token_layout(root))) or "
                "tokenize into a new root")  # fmt: skip
        models = followed
    tokenizer = SpeechTokenizer.from_config(text_tokenizer or load_text_tokenizer(models), cfg)
    digest = config_digest(tokenizer, models, cfg.text_source, cfg)
    items = [it for it in list_chunk_items(chunks_root) if in_shard(it["video_id"], shard, rank)
             and in_first_seconds(it, cfg.max_video_s)]
    manifest = manifest_path(tokens_root, shard, rank)
    done = {r["video_id"] for r in read_jsonl(manifest) if r.get("type") == "video"}
    videos = group_videos(items)
    todo = [v for v in videos if v["video_id"] not in done]
    problems = {}  # duplex: checked before the root is claimed (a mistyped name claims nothing)
    if tokenizer.layout.duplex:
        problems = duplex_problems(todo, cfg, bool(done), shard[1] == 1 and rank[1] == 1)
    claim_token_root(tokens_root, root_spec(tokenizer, models, cfg.text_source, cfg), digest)
    summary = TokenizeSummary(chunks_total=len(items),
                              done_before=sum(len(v["chunks"]) for v in videos) -
                              sum(len(v["chunks"]) for v in todo))  # fmt: skip
    if not todo:
        return summary
    unusable = {vid: reason for vid, (reason, _) in problems.items()}
    todo.sort(key=lambda v: (-sum(c["duration_s"] for c in v["chunks"]), v["video_id"]))
    codec = codec or Codec.load(models, cfg.num_codebooks, device)
    if codec.num_codebooks != cfg.num_codebooks:
        codec.set_num_codebooks(cfg.num_codebooks)
    needs_whisper = any(stored_words(c, cfg.text_source) is None for v in todo
                        if v["video_id"] not in unusable for c in v["chunks"])  # fmt: skip
    if needs_whisper and aligner is None:  # Whisper is loaded only when some chunk needs it
        aligner = Aligner.load(models, device)
    if lanes is None:
        lanes = cfg.batch_size if str(device).startswith("cuda") else 1
    lanes_n = max(1, min(lanes, len(todo) - len(unusable)))
    start = time.perf_counter()
    total_s = sum(c["duration_s"] for v in todo for c in v["chunks"])
    bar = tqdm(total=round(total_s, 1), unit="s", desc="tokenize", disable=not progress,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}]")
    queue = deque(v for v in todo if v["video_id"] not in unusable)
    with JsonlWriter(manifest) as writer, \
            ThreadPoolExecutor(max_workers=max(1, cfg.workers)) as pool, \
            codec.stream_encoder(lanes_n * tracks_per_lane(cfg),
                                 cfg.frames_per_group) as encoder:  # fmt: skip
        run = _Run(cfg, tokenizer, digest, tokens_root, writer, codec, aligner, summary, bar,
                   pool)  # fmt: skip
        for video in [v for v in todo if v["video_id"] in unusable]:
            for chunk in video["chunks"]:
                run.record_problem({**chunk, "status": "skipped",
                                    "reason": unusable[video["video_id"]]})
            if problems[video["video_id"]][1]:  # final: a video line, so it is not tried again
                writer.write({"type": "video", "video_id": video["video_id"],
                              "status": "skipped", "reason": unusable[video["video_id"]],
                              "config": digest, "chunks": len(video["chunks"])})  # fmt: skip
            # else not done: turns may come (diarize), and the video is tried again
        lanes = [_Lane() for _ in range(lanes_n)]
        try:
            while True:
                resets: list[int] = []
                for i, lane in enumerate(lanes):
                    run.prepare(lane, queue, resets, i)
                run.align_pending()
                if not any(lane.stream is not None for lane in lanes):
                    break
                run.encode_round(lanes, encoder, resets)
                run.finish_streams(lanes)
        finally:
            for lane in lanes:
                for future in lane.futures:
                    future.cancel()
            bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def ensure_tokens(cfg: TokenizeConfig, models: ModelsConfig) -> Path:
    """``<data>/tokens``, tokenized here first if it holds nothing (tiny profile: from the demo
    podcast, itself scraped first if needed), so later notebooks run on their own."""
    from .scrape import ensure_chunks

    tokens_root = cfg.data_dir / "tokens"
    if stream_pieces(tokens_root):
        return tokens_root
    chunks = ensure_chunks(cfg.data_dir, cfg.profile)
    run_tokenize(cfg, models, chunks, tokens_root, progress=False)
    return tokens_root
