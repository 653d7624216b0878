"""Training windows over the token files: split by video, cut at group boundaries, packed.

Stage 03 stores each video's token stream in pieces (one per chunk); joined in order they are
the stream itself (see `preprocess`), so windows cross piece boundaries freely. A video may
hold several streams where its audio broke (a dropped or bad chunk). Every stream is cut into
windows of ``seq_len`` tokens, a whole number of groups, so every window starts at a group
boundary and a position's kind is the same in every window. The last window of a stream is
filled by ending it at the stream's end (overlapping the previous window) instead of padding;
streams shorter than a window are packed together. Padding (label -100) appears only when a
whole split is shorter than one window. Train and validation are split by video id, so no
episode is on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .manifest import shard_of
from .preprocess import stream_pieces
from .tokenizer import TokenLayout

IGNORE = -100  # label of a padded position


def split_videos(video_ids: list[str], val_fraction: float, seed: int = 0) -> set[str]:
    """The validation videos: a stable hash picks ~``val_fraction`` of them (at least one when
    there are two or more, never all)."""
    ids = sorted(set(video_ids))
    if len(ids) < 2 or val_fraction <= 0:
        return set()
    buckets = 1000
    val = {v for v in ids if shard_of(f"{seed}:{v}", buckets) < val_fraction * buckets}
    if not val:
        val = {min(ids, key=lambda v: shard_of(f"{seed}:{v}", buckets))}
    if len(val) == len(ids):
        val.discard(max(ids, key=lambda v: shard_of(f"{seed}:{v}", buckets)))
    return val


def video_streams(records: list[dict], tokens_root: str | Path) -> list[tuple[str, list[Path]]]:
    """(video id, token files in order) per stream, from piece records (`stream_pieces`); a
    duplex root's two examples of a stream (one per assistant) are two streams."""
    streams: dict[tuple[str, str, int], list[dict]] = {}
    for r in records:
        if r.get("type") == "piece" and r.get("status") == "ok":
            key = (r["video_id"], r.get("role") or "", r.get("stream", 0))
            streams.setdefault(key, []).append(r)
    root = Path(tokens_root)
    return [(vid, [root / r["tokens"] for r in sorted(pieces, key=lambda r: r["piece"])])
            for (vid, _, _), pieces in sorted(streams.items())]  # fmt: skip


@dataclass
class Window:
    """Where one training window comes from: ``(file, start, stop)`` pieces in order."""

    pieces: list[tuple[Path, int, int]]


def cut_windows(streams: list[tuple[str, list[Path]]], seq_len: int) -> tuple[list[Window], int]:
    """Windows of ``seq_len`` tokens over the streams (see module doc); also the number of
    padding tokens the last window needs (0 unless the data is shorter than one window)."""
    lengths = {}

    def length(path: Path) -> int:
        if path not in lengths:
            lengths[path] = np.load(path, mmap_mode="r").shape[0]
        return lengths[path]

    windows, leftovers = [], []
    for _, files in streams:
        total = sum(length(f) for f in files)
        if total < seq_len:
            leftovers.append([(f, 0, length(f)) for f in files])
            continue
        starts = list(range(0, total - seq_len + 1, seq_len))
        if starts[-1] + seq_len < total:
            starts.append(total - seq_len)  # fill, don't pad: end exactly at the stream's end
        for s in starts:
            windows.append(Window(_slice(files, length, s, s + seq_len)))
    pieces, filled = [], 0
    for stream in leftovers:  # pack short streams together
        for f, a, b in stream:
            while a < b:
                take = min(b - a, seq_len - filled)
                pieces.append((f, a, a + take))
                a += take
                filled += take
                if filled == seq_len:
                    windows.append(Window(pieces))
                    pieces, filled = [], 0
    padding = 0
    if pieces:
        if windows:  # fill the tail from the start of the packed data instead of padding
            for f, a, b in (piece for stream in leftovers for piece in stream):
                take = min(b - a, seq_len - filled)
                pieces.append((f, a, a + take))
                filled += take
                if filled == seq_len:
                    break
        padding = seq_len - filled
        windows.append(Window(pieces))
    return windows, padding


def _slice(files: list[Path], length, start: int, stop: int) -> list[tuple[Path, int, int]]:
    pieces, offset = [], 0
    for f in files:
        n = length(f)
        a, b = max(start, offset), min(stop, offset + n)
        if a < b:
            pieces.append((f, a - offset, b - offset))
        offset += n
    return pieces


class TokenWindows(torch.utils.data.Dataset):
    """Windows of one split as ``input_ids`` [L] (int64) and ``labels`` [L] (-100 on padding),
    read through memory maps."""

    def __init__(self, windows: list[Window], seq_len: int, pad_id: int):
        self.windows, self.seq_len, self.pad_id = windows, seq_len, pad_id
        self._maps: dict[Path, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.windows)

    def _map(self, path: Path) -> np.ndarray:
        if path not in self._maps:
            self._maps[path] = np.load(path, mmap_mode="r")
        return self._maps[path]

    def __getitem__(self, i: int) -> dict:
        parts = [self._map(f)[a:b] for f, a, b in self.windows[i].pieces]
        ids = np.concatenate(parts).astype(np.int64)
        labels = ids.copy()
        if ids.size < self.seq_len:
            pad = self.seq_len - ids.size
            ids = np.concatenate([ids, np.full(pad, self.pad_id, dtype=np.int64)])
            labels = np.concatenate([labels, np.full(pad, IGNORE, dtype=np.int64)])
        return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels)}


@dataclass
class Splits:
    train: TokenWindows
    val: TokenWindows
    val_videos: set[str]
    train_videos: set[str]
    padding_tokens: int  # in all windows together; 0 whenever the data can fill them

    @property
    def packing_efficiency(self) -> float:
        """Share of window tokens that carry a loss."""
        total = (len(self.train) + len(self.val)) * self.train.seq_len
        return 1 - self.padding_tokens / total if total else 0.0


def load_splits(tokens_root: str | Path, layout: TokenLayout, seq_len: int,
                val_fraction: float = 0.1, seed: int = 0,
                train_chunks: int | None = None) -> Splits:  # fmt: skip
    """Train/validation windows from the pieces stored in ``tokens_root``.
    ``train_chunks`` keeps only the first N training pieces (to overfit on purpose)."""
    if seq_len % layout.group_len:
        fit = seq_len // layout.group_len * layout.group_len
        raise ValueError(f"seq_len {seq_len} must be a multiple of the group length "
                         f"{layout.group_len} (e.g. {fit})")
    records = stream_pieces(tokens_root)
    if not records:
        raise FileNotFoundError(f"no tokenized chunks under {tokens_root}: run `tokenize` first")
    val_videos = split_videos([r["video_id"] for r in records], val_fraction, seed)
    parts, padding = {}, 0
    for name, is_val in (("train", False), ("val", True)):
        mine = [r for r in records if (r["video_id"] in val_videos) == is_val]
        if not is_val and train_chunks:
            mine = mine[:train_chunks]  # stream order: the first pieces of the first video
        streams = video_streams(mine, tokens_root)
        streams = [s for s in streams if s[1]]
        windows, pad = cut_windows(streams, seq_len) if streams else ([], 0)
        padding += pad
        parts[name] = TokenWindows(windows, seq_len, layout.text_pad_id)
    train_videos = {r["video_id"] for r in records} - val_videos
    return Splits(parts["train"], parts["val"], val_videos, train_videos, padding)
