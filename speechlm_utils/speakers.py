"""Who speaks when, and two speaker tracks from one mono mix (the duplex layout's input).

A podcast is one mixed recording. A model that listens while it talks (Moshi's two streams)
needs the assistant's voice and the user's voice apart. This module gets a **speaker
timeline** per video from a source chosen like the text source:

- ``sidecar``: speaker labels that come with a transcript: our demo's ``speaker`` field per
  word, or WebVTT voice tags (``<v Name>``) in captions;
- ``diarization``: pyannote.audio's pretrained pipeline (full profile; its weights need a
  Hugging Face token, so it is optional and its absence is a clear message).

Then `split_tracks` builds the two tracks from the mix: each keeps the mix while its speaker
talks and is silent elsewhere (short fades at the edges, no clicks). **Overlap policy:** a mono
mix cannot separate two voices talking at once, so an overlap goes to both tracks by default
(``overlap="both"``: the assistant hears the interruption, and the user track keeps it too);
``"assistant"`` or ``"user"`` gives it to one side only. Between turns both tracks are silent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .words import Word

SPEAKER_SOURCES = ("sidecar", "diarization")
OVERLAP_POLICIES = ("both", "assistant", "user")
MERGE_GAP_S = 1.0  # a speaker's words this close together make one turn
FADE_S = 0.01  # at each turn edge of a track
DIARIZATION_PIPELINE = "pyannote/speaker-diarization-community-1"  # pyannote.audio 4


@dataclass
class Turn:
    """One speaker talking from ``start_s`` to ``end_s`` (video or chunk time)."""

    speaker: str
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def merge_turns(turns: Iterable[Turn], gap_s: float = MERGE_GAP_S) -> list[Turn]:
    """Sorted turns, a speaker's consecutive turns closer than ``gap_s`` joined into one."""
    out: list[Turn] = []
    for t in sorted(turns, key=lambda t: (t.start_s, t.end_s)):
        last = out[-1] if out else None
        if last and last.speaker == t.speaker and t.start_s - last.end_s < gap_s:
            last.end_s = max(last.end_s, t.end_s)
        else:
            out.append(Turn(t.speaker, float(t.start_s), float(t.end_s)))
    return out


def turns_from_transcript(data: dict | str | Path, gap_s: float = MERGE_GAP_S) -> list[Turn]:
    """Turns from our transcript JSON (``{"words": [{"word", "start_s", "end_s",
    "speaker"}]}``, the demo podcast's): each run of a speaker's words."""
    if not isinstance(data, dict):
        data = json.loads(Path(data).read_text())
    words = [w for w in data.get("words", []) if w.get("speaker")]
    return merge_turns((Turn(str(w["speaker"]), float(w["start_s"]), float(w["end_s"]))
                        for w in words), gap_s)  # fmt: skip


_VOICE = re.compile(r"<v(?:\.[^ >]*)?\s+([^>]+)>")
_CUE = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{2})[.,](\d{3})\s*-->\s*"
                  r"(?:(\d+):)?(\d{1,2}):(\d{2})[.,](\d{3})")  # fmt: skip


def turns_from_vtt(text: str, gap_s: float = MERGE_GAP_S) -> list[Turn]:
    """Turns from WebVTT voice tags: a cue ``<v Name>…`` is Name talking for the cue's time
    (a cue with several voices is shared between them in order, by text length)."""
    turns = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        match = _CUE.search(block)
        if not match:
            continue
        g = [int(x or 0) for x in match.groups()]
        start = g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000
        end = g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000
        body = block[match.end() :]
        parts = [(m.group(1).strip(), m.end()) for m in _VOICE.finditer(body)]
        if not parts:
            continue
        lengths = [len(re.sub(r"<[^>]+>", "", body[a : (parts[i + 1][1] if i + 1 < len(parts)
                                                        else len(body))]).strip()) or 1
                   for i, (_, a) in enumerate(parts)]  # fmt: skip
        cursor = start
        for (name, _), n in zip(parts, lengths):
            span = (end - start) * n / sum(lengths)
            turns.append(Turn(name, cursor, cursor + span))
            cursor += span
    return merge_turns(turns, gap_s)


def load_diarization(token: str | None = None, device: str = "cpu"):
    """pyannote.audio's pretrained diarization pipeline (`DIARIZATION_PIPELINE`) on
    ``device``. It needs ``pip install -e '.[diarize]'`` (pyannote.audio 4) and a Hugging Face
    token that accepted the pipeline's terms; without them this raises a message saying so and
    why (the ``sidecar`` source needs neither)."""
    try:
        from pyannote.audio import Pipeline
    except ImportError as err:
        raise RuntimeError("speaker diarization needs pyannote.audio: pip install -e "
                           "'.[diarize]', or use the speaker labels a transcript carries "
                           "(the sidecar source: scrape without --diarize)") from err  # fmt: skip
    try:
        pipeline = Pipeline.from_pretrained(DIARIZATION_PIPELINE, token=token)
        if pipeline is None:  # gated weights without a token that accepted them
            raise PermissionError("the hub refused the download")
    except Exception as err:
        raise RuntimeError(f"could not load {DIARIZATION_PIPELINE} ({type(err).__name__}: "
                           f"{str(err)[:300]}): accept its terms on huggingface.co and set "
                           "HF_TOKEN, check that pyannote.audio 4 is installed (pip install -e "
                           "'.[diarize]'), or use the sidecar source (scrape without "
                           "--diarize)") from err  # fmt: skip
    import torch

    return pipeline.to(torch.device(device)) or pipeline


def diarize(wav16: np.ndarray, token: str | None = None, pipeline=None,
            device: str = "cpu") -> list[Turn]:  # fmt: skip
    """Turns found by a diarization ``pipeline`` (default: `load_diarization`'s) on 16 kHz
    mono audio ``[T]``. Overlapping speech stays overlapping (the tracks' overlap policy
    decides what to do with it)."""
    import torch

    pipeline = pipeline or load_diarization(token, device)
    result = pipeline({"waveform": torch.from_numpy(np.asarray(wav16, np.float32))[None],
                       "sample_rate": 16_000})  # fmt: skip
    annotation = getattr(result, "speaker_diarization", result)  # pyannote 4: an output object
    return merge_turns(Turn(str(label), float(seg.start), float(seg.end))
                       for seg, _, label in annotation.itertracks(yield_label=True))


class Diarizer:
    """One diarization pipeline for a whole run, shared by its threads: one recording at a
    time, decoded only once its turn comes (a 3 h episode is 0.7 GB at 16 kHz; the pipeline is
    not thread-safe, and a GPU holds one copy)."""

    def __init__(self, token: str | None = None, device: str | None = None, pipeline=None):
        import threading

        from .config import pick_device

        self.pipeline = pipeline or load_diarization(token, device or pick_device())
        self._lock = threading.Lock()

    def turns(self, audio) -> list[Turn]:
        """Turns of ``audio``: a media file's path, or a callable giving 16 kHz samples."""
        from .audio import WHISPER_SAMPLE_RATE_HZ, load_audio

        with self._lock:
            wav16 = audio() if callable(audio) else load_audio(audio, WHISPER_SAMPLE_RATE_HZ)
            try:
                return diarize(wav16, pipeline=self.pipeline)
            finally:
                del wav16


def speaking_time(turns: list[Turn]) -> dict[str, float]:
    """Seconds each speaker talks, most talkative first."""
    totals: dict[str, float] = {}
    for t in turns:
        totals[t.speaker] = totals.get(t.speaker, 0.0) + t.duration_s
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


ASSISTANT_POLICIES = ("most_talkative", "least_talkative", "both")


def pick_assistant(turns: list[Turn], policy: str = "most_talkative") -> str:
    """The speaker whose voice the model learns to produce: ``most_talkative`` (the guest of
    an interview, usually), ``least_talkative``, or a speaker's name."""
    totals = speaking_time(turns)
    if not totals:
        raise ValueError("no speaker turns: nothing to pick the assistant from")
    if policy == "most_talkative":
        return next(iter(totals))
    if policy == "least_talkative":
        return list(totals)[-1]
    if policy in totals:
        return policy
    raise ValueError(f"assistant {policy!r} is not a speaker here ({', '.join(totals)}); use "
                     "most_talkative, least_talkative, both or one of those names")  # fmt: skip


def pick_assistants(turns: list[Turn], policy: str = "most_talkative") -> list[str]:
    """The assistant of each training example a video gives: one (`pick_assistant`), or for
    ``both`` the two most talkative speakers in turn (each one the assistant once, everyone
    else the user: a conversation seen from both sides)."""
    if policy == "both":
        totals = speaking_time(turns)
        if not totals:
            raise ValueError("no speaker turns: nothing to pick the assistant from")
        return list(totals)[:2]
    return [pick_assistant(turns, policy)]


def speaker_of(word: Word, turns: list[Turn]) -> str | None:
    """The speaker of the turn holding the word's midpoint (else the nearest turn's)."""
    if not turns:
        return None
    mid = (word.start_s + word.end_s) / 2
    inside = [t for t in turns if t.start_s <= mid <= t.end_s]
    if inside:
        return min(inside, key=lambda t: t.duration_s).speaker
    return min(turns, key=lambda t: min(abs(t.start_s - mid), abs(t.end_s - mid))).speaker


def words_of(words: list[Word], turns: list[Turn], speaker: str) -> list[Word]:
    """The words ``speaker`` says: the duplex layout's text slots hold the assistant's only."""
    return [w for w in words if speaker_of(w, turns) == speaker]


def track_gains(turns: list[Turn], assistant: str, sample_rate_hz: int, start: int,
                n_samples: int, overlap: str = "both"
                ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Gains ``[n_samples]`` in [0, 1] of the assistant's and the user's track (every other
    speaker is the user) for samples ``start .. start + n_samples`` of the turns' timeline,
    with `FADE_S` ramps at turn edges; see the overlap policy in the module doc. Any window
    gives the same gains as the whole timeline cut there (a stream is encoded in pieces)."""
    if overlap not in OVERLAP_POLICIES:
        raise ValueError(f"overlap must be one of {OVERLAP_POLICIES}, got {overlap!r}")
    fade = max(1, int(FADE_S * sample_rate_hz))
    lo = start - fade  # a margin on each side, so the ramps do not depend on the window
    size = n_samples + 2 * fade
    masks = {True: np.zeros(size, np.float32), False: np.zeros(size, np.float32)}
    for t in turns:
        a = max(0, int(round(t.start_s * sample_rate_hz)) - lo)
        b = min(size, int(round(t.end_s * sample_rate_hz)) - lo)
        if a < b:
            masks[t.speaker == assistant][a:b] = 1.0
    mine, theirs = masks[True], masks[False]
    both = (mine > 0) & (theirs > 0)
    if overlap == "assistant":
        theirs[both] = 0.0
    elif overlap == "user":
        mine[both] = 0.0
    kernel = np.ones(fade, np.float32) / fade
    cut = slice(fade, fade + n_samples)
    return (np.convolve(mine, kernel, "same")[cut].clip(0, 1),
            np.convolve(theirs, kernel, "same")[cut].clip(0, 1))  # fmt: skip


def track_masks(turns: list[Turn], assistant: str, n_samples: int, sample_rate_hz: int,
                overlap: str = "both") -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """`track_gains` over a whole recording of ``n_samples``."""
    return track_gains(turns, assistant, sample_rate_hz, 0, n_samples, overlap)


def split_tracks(wav: np.ndarray, sample_rate_hz: int, turns: list[Turn], assistant: str,
                 overlap: str = "both") -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The assistant's and the user's track ``[T]`` each, from the mono mix ``wav[T]``."""
    wav = np.asarray(wav, np.float32)
    mine, theirs = track_masks(turns, assistant, wav.size, sample_rate_hz, overlap)
    return wav * mine, wav * theirs


def shift_turns(turns: list[Turn], offset_s: float) -> list[Turn]:
    """The turns ``offset_s`` later (e.g. from a chunk's time to its video's)."""
    return [Turn(t.speaker, t.start_s + offset_s, t.end_s + offset_s) for t in turns]


def split_turns_by_chunks(turns: list[Turn], chunk_starts_s: list[float],
                          end_s: float | None = None) -> list[list[Turn]]:  # fmt: skip
    """Turns per chunk in chunk time, cut at the chunks' real starts (a turn across a seam is
    in both chunks, each with its part), like `captions.split_by_chunks` for words."""
    bounds = list(chunk_starts_s) + [end_s if end_s is not None else float("inf")]
    out: list[list[Turn]] = [[] for _ in chunk_starts_s]
    for i, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        for t in turns:
            a, b = max(t.start_s, lo), min(t.end_s, hi)
            if a < b:
                out[i].append(Turn(t.speaker, round(a - lo, 3), round(b - lo, 3)))
    return out


def turns_from_file(path: str | Path) -> list[Turn]:
    """Speaker turns a caption or transcript file carries (our JSON's ``speaker`` fields, VTT
    voice tags); none for formats without speaker labels."""
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    if path.suffix.lower() == ".json":
        data = json.loads(text)
        return turns_from_transcript(data) if isinstance(data, dict) and "words" in data else []
    if path.suffix.lower() == ".vtt":
        return turns_from_vtt(text)
    return []


def to_json(turns: list[Turn], source: str) -> dict:
    """What is stored beside the chunks: ``{"source", "turns": [{speaker, start_s, end_s}]}``."""
    return {"source": source, "turns": [asdict(t) for t in turns]}


def from_json(data: dict) -> list[Turn]:
    return [Turn(str(t["speaker"]), float(t["start_s"]), float(t["end_s"]))
            for t in data.get("turns", [])]  # fmt: skip


@dataclass
class DiarizeSummary:
    videos: int = 0  # in this shard
    diarized: int = 0
    had_turns: int = 0  # a transcript's labels, or diarized before
    failed: dict | None = None  # video id -> reason

    def __str__(self) -> str:
        lines = [f"videos: {self.diarized} diarized, {self.had_turns} had speaker turns "
                 f"already, {len(self.failed or {})} failed, of {self.videos}"]  # fmt: skip
        lines += [f"  failed: {vid}: {why}" for vid, why in list((self.failed or {}).items())[:5]]
        return "\n".join(lines)


def video_audio16(listing: dict) -> np.ndarray:
    """A scraped video rebuilt at 16 kHz from its chunks, each at its real start (a dropped
    chunk's span is silence), for diarizing a video after it was scraped."""
    from .audio import WHISPER_SAMPLE_RATE_HZ, load_audio

    rate = WHISPER_SAMPLE_RATE_HZ
    chunks = sorted(listing["chunks"], key=lambda c: c["start_s"])
    end = max((c["end_s"] for c in chunks), default=0.0)
    wav = np.zeros(int(round(end * rate)) + rate, np.float32)
    for c in chunks:
        piece = load_audio(Path(listing["folder"]) / c["file"], rate)
        a = int(round(c["start_s"] * rate))
        wav[a : a + piece.size] = piece[: wav.size - a]
    return wav


def run_diarize(chunks_root: str | Path, diarizer: Diarizer | None = None,
                shard: tuple[int, int] = (0, 1), rank: tuple[int, int] = (0, 1),
                progress: bool = True) -> DiarizeSummary:  # fmt: skip
    """Give the scraped videos under ``chunks_root`` that have no speaker turns yet pyannote's
    (`diarize`), split at their chunks' real starts into each chunk's ``turns`` of
    ``chunks.json`` (rewritten atomically, ``speaker_source`` diarization): for videos scraped
    before ``--diarize`` was asked for (the download is gone, so the chunks are joined again).
    Resumable (a video with turns is skipped), one video at a time; a video that fails keeps
    no turns and ``speaker_error`` says why (retried on the next run). ``shard``/``rank``
    split the videos like the other stages."""
    from tqdm.auto import tqdm

    from .manifest import in_shard, write_json_atomic
    from .scrape import read_chunk_listings

    listings = [x for x in read_chunk_listings(chunks_root) if in_shard(str(x["id"]), shard, rank)]
    summary = DiarizeSummary(videos=len(listings), failed={})
    todo = [x for x in listings if not any(c.get("turns") for c in x["chunks"])]
    summary.had_turns = len(listings) - len(todo)
    if not todo:
        return summary
    if diarizer is None:
        from .config import hf_token

        diarizer = Diarizer(hf_token())
    for listing in tqdm(todo, desc="diarize", unit="video", disable=not progress):
        meta = {k: v for k, v in listing.items() if k != "folder"}
        try:
            turns = diarizer.turns(lambda listing=listing: video_audio16(listing))
        except Exception as err:  # a video fails alone (a corrupt chunk, out of memory)
            meta["speaker_error"] = f"{type(err).__name__}: {str(err)[:300]}"
            summary.failed[str(listing["id"])] = meta["speaker_error"]
        else:
            starts = [c["start_s"] for c in meta["chunks"]]
            end = max(c["end_s"] for c in meta["chunks"])
            for chunk, part in zip(meta["chunks"], split_turns_by_chunks(turns, starts, end)):
                chunk["turns"] = [[t.speaker, t.start_s, t.end_s] for t in part]
            meta["speaker_source"] = "diarization"
            meta.pop("speaker_error", None)
            summary.diarized += 1
        write_json_atomic(Path(listing["folder"]) / "chunks.json", meta)
    return summary
