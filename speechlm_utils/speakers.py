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
DIARIZATION_PIPELINE = "pyannote/speaker-diarization-3.1"


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
    """pyannote.audio's pretrained diarization pipeline on ``device``. It needs ``pip install
    pyannote.audio`` and a Hugging Face token that accepted the pipeline's terms; without them
    this raises a message saying so (the ``sidecar`` source needs neither)."""
    try:
        from pyannote.audio import Pipeline
    except ImportError as err:
        raise RuntimeError("speaker diarization needs pyannote.audio: pip install "
                           "pyannote.audio, or use the speaker labels a transcript carries "
                           "(the sidecar source: scrape without --diarize)") from err  # fmt: skip
    try:
        try:
            pipeline = Pipeline.from_pretrained(DIARIZATION_PIPELINE, token=token)
        except TypeError:  # pyannote.audio 3.x names it use_auth_token
            pipeline = Pipeline.from_pretrained(DIARIZATION_PIPELINE, use_auth_token=token)
        if pipeline is None:  # 3.x returns None when the weights are gated
            raise PermissionError("gated")
    except Exception as err:  # gated weights: a missing or unaccepted token
        raise RuntimeError(f"could not load {DIARIZATION_PIPELINE}: accept its terms on "
                           "huggingface.co and pass a token (HF_TOKEN); or use the sidecar "
                           "source (scrape without --diarize)") from err  # fmt: skip
    import torch

    return pipeline.to(torch.device(device)) or pipeline


def diarize(wav16: np.ndarray, token: str | None = None, pipeline=None,
            device: str = "cpu") -> list[Turn]:  # fmt: skip
    """Turns found by a diarization ``pipeline`` (default: `load_diarization`'s) on 16 kHz
    mono audio ``[T]``."""
    import torch

    pipeline = pipeline or load_diarization(token, device)
    result = pipeline({"waveform": torch.from_numpy(np.asarray(wav16, np.float32))[None],
                       "sample_rate": 16_000})  # fmt: skip
    annotation = getattr(result, "speaker_diarization", result)
    return merge_turns(Turn(str(label), float(seg.start), float(seg.end))
                       for seg, _, label in annotation.itertracks(yield_label=True))


class Diarizer:
    """One diarization pipeline for a whole scrape run, shared by its threads (one video at a
    time: the pipeline is not thread-safe, and a GPU holds one copy)."""

    def __init__(self, token: str | None = None, device: str | None = None, pipeline=None):
        import threading

        from .config import pick_device

        self.pipeline = pipeline or load_diarization(token, device or pick_device())
        self._lock = threading.Lock()

    def turns(self, wav16: np.ndarray) -> list[Turn]:
        with self._lock:
            return diarize(wav16, pipeline=self.pipeline)


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
