"""The interleaved token stream: Mistral text tokens and Mimi audio tokens in one sequence.

Vocabulary (nothing hard-coded: T comes from the base tokenizer, K from the config)::

    [0, T)                      the base model's text tokens (T = 32000 for Mistral-7B-v0.1)
    T + k * 2048 + c            Mimi codebook k (0 = semantic), code c, for k < K
    T + K * 2048                TEXT_PAD: a text slot with no word
    ... up to a multiple of 64  unused rows (embedding tables like aligned sizes)

Layout: every group of F Mimi frames (default 5 = 400 ms) is S text slots (default 2), then
the F frames' audio tokens, frame-major and codebook-minor::

    [t t | f0c0 f0c1 f0c2 f0c3 | f1c0 ... | f4c3]   2 + 5 * 4 = 22 tokens per 400 ms = 55/s

so a token's position alone tells its kind. The **duplex** layout (``user_codebooks`` K_user >
0, for two speaker streams) gives each frame the assistant's K codebooks, then the user's
K_user codebooks, with their own ids after the assistant's (user codebook j: ``T + (K + j) *
2048 + c``), and TEXT_PAD after those; with K_user = 0 (the default) every id is as above.
A word's text tokens go into the first free text
slots at or after the group holding ``start_s - text_lead_s``: the text comes before the sound
(default 2 s), and tokens that do not fit spill into the next free slots (their lag is
reported), never dropped silently.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

from .audio import MIMI_FRAME_RATE_HZ
from .codec import CODEBOOK_SIZE
from .words import Word

TEXT_KIND = 0  # kind of a text slot; codebook k has kind k + 1
EMBEDDING_MULTIPLE = 64


@dataclass(frozen=True)
class TokenLayout:
    """Vocabulary ranges and the group layout; pure arithmetic, no tokenizer needed."""

    text_vocab_size: int  # T: the base tokenizer's size
    num_codebooks: int = 4  # K
    frames_per_group: int = 5  # F
    text_slots_per_group: int = 2  # S
    codebook_size: int = CODEBOOK_SIZE
    frame_rate_hz: float = MIMI_FRAME_RATE_HZ
    user_codebooks: int = 0  # K_user: the duplex layout's user stream (0: one stream, mono)

    def __post_init__(self) -> None:
        if min(self.num_codebooks, self.frames_per_group, self.text_slots_per_group) < 1:
            raise ValueError(f"layout sizes must be positive: {self}")
        if not 0 <= self.user_codebooks <= self.num_codebooks:
            raise ValueError(f"user_codebooks must be 0..{self.num_codebooks} (the user's "
                             f"stream keeps at most the assistant's codebooks): {self}")

    @property
    def duplex(self) -> bool:
        return self.user_codebooks > 0

    @property
    def frame_len(self) -> int:
        """Audio tokens per frame: K, plus K_user in the duplex layout."""
        return self.num_codebooks + self.user_codebooks

    @property
    def num_kinds(self) -> int:
        """Text, the assistant's K codebooks, the user's K_user: kinds ``0 .. num_kinds-1``."""
        return 1 + self.frame_len

    def is_user_kind(self, kind: int) -> bool:
        """Whether ``kind`` is one of the user's codebooks (kinds ``K+1 .. K+K_user``)."""
        return kind > self.num_codebooks

    @property
    def audio_offset(self) -> int:
        return self.text_vocab_size

    @property
    def text_pad_id(self) -> int:
        return self.text_vocab_size + self.frame_len * self.codebook_size

    @property
    def vocab_size(self) -> int:
        """Ids in use: text, audio, specials."""
        return self.text_pad_id + 1

    @property
    def padded_vocab_size(self) -> int:
        """Embedding rows: ``vocab_size`` rounded up to a multiple of 64."""
        return math.ceil(self.vocab_size / EMBEDDING_MULTIPLE) * EMBEDDING_MULTIPLE

    @property
    def group_len(self) -> int:
        """Tokens per group: S + F * K (duplex: S + F * (K + K_user))."""
        return self.text_slots_per_group + self.frames_per_group * self.frame_len

    @property
    def group_duration_s(self) -> float:
        return self.frames_per_group / self.frame_rate_hz

    @property
    def tokens_per_s(self) -> float:
        return self.group_len / self.group_duration_s

    @property
    def storage_dtype(self) -> np.dtype:
        """The smallest unsigned type holding every id (uint16 for the defaults)."""
        return np.dtype(np.uint16 if self.padded_vocab_size <= 2**16 else np.uint32)

    def kinds(self, length: int, start: int = 0) -> np.ndarray:
        """Kind of each position ``start .. start+length``: 0 text, k+1 codebook k (duplex: the
        user's codebook j is K+1+j). ``[N]``"""
        r = (np.arange(start, start + length) % self.group_len) - self.text_slots_per_group
        return np.where(r < 0, TEXT_KIND, r % self.frame_len + 1)

    def kind_of(self, position: int) -> int:
        return int(self.kinds(1, position)[0])

    def id_range(self, kind: int) -> tuple[int, int]:
        """``[lo, hi)`` of a codebook kind's ids; for text, the text ids (TEXT_PAD aside)."""
        if kind == TEXT_KIND:
            return (0, self.text_vocab_size)
        k = kind - 1
        lo = self.audio_offset + k * self.codebook_size
        return (lo, lo + self.codebook_size)

    def kind_masks(self) -> np.ndarray:
        """``[num_kinds, padded_vocab]`` bool: which ids each kind may take (text: text + PAD)."""
        masks = np.zeros((self.num_kinds, self.padded_vocab_size), dtype=bool)
        for kind in range(self.num_kinds):
            lo, hi = self.id_range(kind)
            masks[kind, lo:hi] = True
        masks[TEXT_KIND, self.text_pad_id] = True
        return masks

    def audio_codes(self, ids) -> np.ndarray:
        """The codes of the whole frames in ``ids`` (from a group start), unchecked:
        ``codes[frame_len, frames]``, the assistant's K rows, then the user's K_user."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        audio = ids[self.kinds(ids.size) != TEXT_KIND]
        frames = audio.size // self.frame_len
        audio = audio[: frames * self.frame_len].reshape(frames, self.frame_len)
        return (audio - self.audio_offset - np.arange(self.frame_len) * self.codebook_size).T

    def kinds_of_ids(self, ids: np.ndarray) -> np.ndarray:
        """The kind each id belongs to (text and TEXT_PAD are 0), -1 for ids out of range."""
        ids = np.asarray(ids, dtype=np.int64)
        audio = (ids - self.audio_offset) // self.codebook_size + 1
        kinds = np.where(ids < self.text_vocab_size, TEXT_KIND, audio)
        kinds = np.where(ids == self.text_pad_id, TEXT_KIND, kinds)
        return np.where((ids < 0) | (ids > self.text_pad_id), -1, kinds)


@dataclass
class Encoded:
    """A chunk's ids and how its words were placed."""

    ids: np.ndarray  # [N] int64
    stats: dict = field(default_factory=dict)
    placements: list[dict] = field(default_factory=list)  # per text token: id, word, slot, lag


def _pieces_with_offsets(sp, text: str) -> list[tuple[int, int]]:
    """(id, begin byte) of each SentencePiece piece of ``text``, across sentencepiece versions."""
    try:
        proto = sp.encode(text, out_type="immutable_proto")
    except (ValueError, TypeError):
        proto = sp.encode(text, return_type="proto")
    return [(piece.id, piece.begin) for piece in proto.pieces]


class SpeechTokenizer:
    """Encode (codes, words) to the interleaved ids and back. See the module docstring."""

    def __init__(self, text_tokenizer, num_codebooks: int = 4, frames_per_group: int = 5,
                 text_slots_per_group: int = 2, text_lead_s: float = 2.0,
                 user_codebooks: int = 0):  # fmt: skip
        if text_lead_s < 0:
            raise ValueError(f"text_lead_s must be >= 0, got {text_lead_s}")
        self.sp = text_tokenizer
        self.layout = TokenLayout(text_tokenizer.get_piece_size(), num_codebooks,
                                  frames_per_group, text_slots_per_group,
                                  user_codebooks=user_codebooks)  # fmt: skip
        self.text_lead_s = text_lead_s

    @classmethod
    def from_config(cls, text_tokenizer, cfg) -> SpeechTokenizer:
        """From a `TokenizeConfig` (or anything with its layout fields)."""
        return cls(text_tokenizer, cfg.num_codebooks, cfg.frames_per_group,
                   cfg.text_slots_per_group, cfg.text_lead_s,
                   getattr(cfg, "user_codebooks", 0))  # fmt: skip

    def fingerprint(self) -> dict:
        """Everything that changes the ids: part of each output file's content hash (the
        duplex layout's ``user_codebooks`` only when set, so mono fingerprints never change)."""
        model = self.sp.serialized_model_proto()
        spec = {"text_tokenizer_sha1": hashlib.sha1(model).hexdigest()[:16],
                "text_vocab_size": self.layout.text_vocab_size,
                "num_codebooks": self.layout.num_codebooks,
                "frames_per_group": self.layout.frames_per_group,
                "text_slots_per_group": self.layout.text_slots_per_group,
                "text_lead_s": self.text_lead_s}  # fmt: skip
        if self.layout.duplex:
            spec["user_codebooks"] = self.layout.user_codebooks
        return spec

    @classmethod
    def from_fingerprint(cls, text_tokenizer, spec: dict) -> SpeechTokenizer:
        """The tokenizer a recorded `fingerprint` describes (with its text tokenizer)."""
        return cls(text_tokenizer, spec["num_codebooks"], spec["frames_per_group"],
                   spec["text_slots_per_group"], spec["text_lead_s"],
                   spec.get("user_codebooks", 0))  # fmt: skip

    # -- text --

    def running_text(self, words: list[Word]) -> tuple[str, list[int]]:
        """The words as one text (a space between words that lack one) and each word's first
        UTF-8 byte in it."""
        text, starts = "", []
        for i, word in enumerate(words):
            piece = word.text.lstrip() if i == 0 else word.text
            if i and not piece[:1].isspace():
                piece = " " + piece
            starts.append(len(text.encode("utf-8")))
            text += piece
        return text, starts

    def tokenize_words(self, words: list[Word]) -> tuple[list[int], list[int]]:
        """Text ids of the words as running text, and the word each id belongs to."""
        text, starts = self.running_text(words)
        if not text.strip():
            return [], []
        ids, owners = [], []
        for piece_id, begin in _pieces_with_offsets(self.sp, text):
            ids.append(piece_id)
            owners.append(max(0, bisect.bisect_right(starts, begin) - 1))
        return ids, owners

    # -- encode / decode --

    def interleave_audio(self, codes: np.ndarray, user_codes: np.ndarray | None = None
                         ) -> np.ndarray:  # fmt: skip
        """``codes[K, F]`` (duplex: and ``user_codes[K_user, F]``) -> ``grid[G, group_len]``:
        each group's text slots (all TEXT_PAD for now), then its frames' audio ids,
        frame-major and codebook-minor (duplex: each frame's K, then its K_user)."""
        lay = self.layout
        n_groups = codes.shape[1] // lay.frames_per_group
        S = lay.text_slots_per_group
        if user_codes is not None:
            codes = np.concatenate([codes, user_codes])  # user codebook j is row K + j
        grid = np.full((n_groups, lay.group_len), lay.text_pad_id, dtype=np.int64)
        offsets = lay.audio_offset + np.arange(lay.frame_len)[:, None] * lay.codebook_size
        audio = (codes + offsets).reshape(lay.frame_len, n_groups, lay.frames_per_group)
        grid[:, S:] = audio.transpose(1, 2, 0).reshape(n_groups, -1)  # [G, F * (K + K_user)]
        return grid

    def place_text(self, grid: np.ndarray, words: list[Word]) -> tuple[list[dict], int]:
        """Write the words' text ids into the text slots of ``grid[G, group_len]``, in place.

        Each token goes to the first free slot at or after the group holding its word's
        ``start_s - text_lead_s``. Returns one placement per token (id, word, slot, lag_s) and
        the number of tokens that did not fit before the grid's end.
        """
        lay = self.layout
        S = lay.text_slots_per_group
        n_slots = grid.shape[0] * S
        text_ids, owners = self.tokenize_words(words)
        cursor, placements, overflow = 0, [], 0
        for tok, owner in zip(text_ids, owners):
            target_group = max(0, math.floor((words[owner].start_s - self.text_lead_s)
                                             / lay.group_duration_s + 1e-9))  # fmt: skip
            slot = max(cursor, target_group * S)  # never before a token already placed
            if slot >= n_slots:
                overflow += 1
                continue
            grid[slot // S, slot % S] = tok
            cursor = slot + 1
            placements.append({"id": int(tok), "word": owner, "slot": slot,
                               "lag_s": (slot // S - target_group) * lay.group_duration_s})
        return placements, overflow

    def encode(self, codes, words: list[Word], user_codes=None) -> Encoded:
        """``codes[K, F]`` (F a multiple of frames_per_group) and timed words -> `Encoded`;
        the duplex layout also takes the user's ``user_codes[K_user, F]`` (the words are the
        assistant's: only they go into the text slots)."""
        lay = self.layout
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[0] != lay.num_codebooks:
            raise ValueError(f"codes must be [K={lay.num_codebooks}, F], got {codes.shape}")
        if lay.duplex != (user_codes is not None):
            raise ValueError("the duplex layout needs user_codes, the mono layout takes none")
        if user_codes is not None:
            user_codes = np.asarray(user_codes, dtype=np.int64)
            if user_codes.shape != (lay.user_codebooks, codes.shape[1]):
                raise ValueError(f"user_codes must be [K_user={lay.user_codebooks}, "
                                 f"F={codes.shape[1]}], got {user_codes.shape}")
            codes_all = np.concatenate([codes, user_codes])
        else:
            codes_all = codes
        if codes.shape[1] % lay.frames_per_group:
            raise ValueError(
                f"{codes.shape[1]} frames is not a whole number of {lay.frames_per_group}-frame "
                f"groups: pad the audio to a multiple of {lay.group_duration_s:g} s first"
            )
        if codes_all.size and (codes_all.min() < 0 or codes_all.max() >= lay.codebook_size):
            raise ValueError(f"codes must lie in [0, {lay.codebook_size})")
        grid = self.interleave_audio(codes, user_codes)
        placements, overflow = self.place_text(grid, words)
        n_groups, n_slots = grid.shape[0], grid.shape[0] * lay.text_slots_per_group
        lags = [p["lag_s"] for p in placements]
        stats = {
            "n_groups": n_groups,
            "n_words": len(words),
            "text_tokens": len(placements) + overflow,
            "text_slots": n_slots,
            "pad_share": 1.0 - len(placements) / n_slots if n_slots else 1.0,
            "max_lag_s": max(lags, default=0.0),
            "mean_lag_s": float(np.mean(lags)) if lags else 0.0,
            "overflow_tokens": overflow,  # did not fit before the chunk's end
        }
        return Encoded(grid.reshape(-1), stats, placements)

    def decode(self, ids) -> tuple[str, np.ndarray]:
        """Ids (any length from a group start) -> (text of the text slots, ``codes[K, F]``).

        Raises ValueError when an id is not of its position's kind. A trailing partial frame
        (fewer than K codebooks) is left out of the codes. The duplex layout's user stream:
        `decode_streams`.
        """
        text, codes, _ = self.decode_streams(ids)
        return text, codes

    def decode_streams(self, ids) -> tuple[str, np.ndarray, np.ndarray]:
        """`decode`, and the user's ``codes[K_user, F]`` of the duplex layout (``[0, F]`` in
        the mono one)."""
        lay = self.layout
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        kinds = lay.kinds(ids.size)
        actual = lay.kinds_of_ids(ids)
        bad = np.flatnonzero(kinds != actual)
        if bad.size:
            p = int(bad[0])
            raise ValueError(f"id {int(ids[p])} at position {p} is not of kind {int(kinds[p])}")
        text_ids = ids[(kinds == TEXT_KIND) & (ids != lay.text_pad_id)]
        codes, K = lay.audio_codes(ids), lay.num_codebooks
        return self.sp.decode(text_ids.tolist()), codes[:K], codes[K:]

    def text_pieces(self, ids) -> list[str | None]:
        """For display: each text slot's piece (None for TEXT_PAD), in slot order."""
        ids = np.asarray(ids).reshape(-1)
        text = ids[self.layout.kinds(ids.size) == TEXT_KIND]
        return [None if i == self.layout.text_pad_id else self.sp.id_to_piece(int(i))
                for i in text]  # fmt: skip

    def explain_group(self, ids, group: int = 0) -> list[dict]:
        """One row per position of group ``group`` of ``ids``: the id, its position's kind
        ("text", "TEXT_PAD" or "codebook k"), what it holds, and the ids that kind's mask
        allows there (`TokenLayout.kind_masks`, what constrained generation may sample)."""
        lay = self.layout
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        start = group * lay.group_len
        if not 0 <= start < ids.size:
            raise ValueError(f"group {group} is outside the {ids.size // lay.group_len} groups")
        masks = lay.kind_masks()
        rows = []
        for pos in range(start, min(start + lay.group_len, ids.size)):
            i, kind = int(ids[pos]), lay.kind_of(pos)
            if kind == TEXT_KIND:
                name = "TEXT_PAD" if i == lay.text_pad_id else "text"
                holds = "" if i == lay.text_pad_id else self.sp.id_to_piece(i)
            else:
                frame = (pos - start - lay.text_slots_per_group) // lay.frame_len
                name = f"user codebook {kind - 1 - lay.num_codebooks}" if \
                    lay.is_user_kind(kind) else f"codebook {kind - 1}"  # fmt: skip
                holds = f"frame {frame}, code {i - lay.id_range(kind)[0]}"
            runs = true_runs(masks[kind])
            rows.append({"position": pos, "id": i, "kind": name, "holds": holds,
                         "allowed": " + ".join(f"[{lo}, {hi})" if hi - lo > 1 else str(lo)
                                               for lo, hi in runs),
                         "n_allowed": int(masks[kind].sum()),
                         "id_allowed": bool(masks[kind, i])})  # fmt: skip
        return rows


def true_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[lo, hi)`` of each run of True in a 1-D bool mask."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [(int(lo), int(hi)) for lo, hi in zip(edges[::2], edges[1::2])]
