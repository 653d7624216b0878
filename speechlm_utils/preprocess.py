"""Stage 03's run: audio chunks -> interleaved token files, ready for training.

A torch DataLoader's worker processes read and decode chunks (ffmpeg; 24 kHz for Mimi, 16 kHz
for Whisper) while the main process runs Mimi and Whisper on the device, on batches of chunks
of similar length. Each chunk becomes ``tokens/<hh>/<hash>.npy`` (uint16 ids for the default
layout), where the hash covers the chunk's bytes and everything that changes the ids (layout,
text tokenizer, models), and one line in ``tokens.jsonl``: chunk, video id, hash, n_tokens,
duration, the words and their times, status and reason. Empty, corrupt, silent and too-short
chunks are recorded and skipped. A re-run skips chunks already recorded with the same config.
Under ``torchrun``, each rank takes its shard on its own GPU.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .align import Aligner
from .audio import (
    MIMI_FRAME_SAMPLES,
    MIMI_SAMPLE_RATE_HZ,
    WHISPER_SAMPLE_RATE_HZ,
    AudioDecodeError,
    load_audio,
)
from .codec import Codec
from .config import ModelsConfig, TokenizeConfig
from .manifest import JsonlWriter, atomic_path, in_shard, read_jsonl, write_json_atomic
from .scrape import read_chunk_listings
from .tokenizer import SpeechTokenizer
from .words import Word


def list_chunk_items(chunks_root: str | Path) -> list[dict]:
    """Every chunk the scrape stage finished: path, path relative to the root, video id,
    nominal duration."""
    root = Path(chunks_root)
    items = []
    for listing in read_chunk_listings(root):
        for chunk in listing["chunks"]:
            path = listing["folder"] / chunk["file"]
            items.append({"path": str(path), "chunk": str(path.relative_to(root)),
                          "video_id": listing["id"], "start_s": chunk["start_s"],
                          "duration_s": chunk["end_s"] - chunk["start_s"],
                          "stored_text": listing.get("text_source") if "words" in chunk else None,
                          "stored_words": chunk.get("words")})  # fmt: skip
    return items


TEXT_SOURCES = ("whisper", "captions", "sidecar")


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


def manifest_path(tokens_root: str | Path, shard: tuple[int, int] = (0, 1),
                  rank: tuple[int, int] = (0, 1)) -> Path:  # fmt: skip
    """``data/tokens.jsonl`` beside ``data/tokens``; a shard or a torchrun rank writes its own
    (``tokens.i-of-n.jsonl``, ``tokens.i-of-n.rank-r-of-w.jsonl``)."""
    name = "tokens"
    if shard[1] > 1 or rank[1] > 1:
        name += f".{shard[0]}-of-{shard[1]}"
    if rank[1] > 1:
        name += f".rank-{rank[0]}-of-{rank[1]}"
    return Path(tokens_root).parent / f"{name}.jsonl"


def read_token_manifests(tokens_root: str | Path) -> list[dict]:
    """Every record of every shard's manifest; the last record of a chunk+config wins."""
    records = {}
    for path in sorted(Path(tokens_root).parent.glob("tokens*.jsonl")):
        for r in read_jsonl(path):
            records[(r.get("chunk"), r.get("config"))] = r
    return list(records.values())


def config_digest(tokenizer: SpeechTokenizer, models: ModelsConfig, text_source: str) -> str:
    """A short hash of everything that changes the ids of a chunk."""
    spec = {**tokenizer.fingerprint(), "mimi": Path(models.mimi).name,
            "whisper": Path(models.whisper).name, "text_source": text_source}  # fmt: skip
    if text_source not in TEXT_SOURCES:
        raise ValueError(f"text_source {text_source!r}: use one of {', '.join(TEXT_SOURCES)}")
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def chunk_hash(data: bytes, digest: str) -> str:
    return hashlib.sha1(data + digest.encode()).hexdigest()


class ChunkDataset(torch.utils.data.Dataset):
    """Reads and decodes one chunk per item (in DataLoader workers); never raises for a bad
    chunk: its ``status`` says what is wrong."""

    def __init__(self, items: list[dict], digest: str, min_duration_s: float,
                 silence_dbfs: float, text_source: str = "whisper"):  # fmt: skip
        self.items, self.digest = items, digest
        self.min_duration_s, self.silence_dbfs = min_duration_s, silence_dbfs
        self.text_source = text_source

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.items[i])
        path = Path(item["path"])
        try:
            data = path.read_bytes()
        except OSError as err:
            return {**item, "status": "failed", "reason": f"unreadable: {err.strerror}"}
        item["hash"] = chunk_hash(data, self.digest)
        if not data:
            return {**item, "status": "failed", "reason": "empty file (0 bytes)"}
        try:
            wav24 = load_audio(path, MIMI_SAMPLE_RATE_HZ)
            needs_whisper = stored_words(item, self.text_source) is None
            wav16 = load_audio(path, WHISPER_SAMPLE_RATE_HZ) if needs_whisper else None
        except AudioDecodeError as err:
            return {**item, "status": "failed", "reason": f"corrupt: {str(err).split(': ', 1)[-1]}"}
        item["duration_s"] = wav24.size / MIMI_SAMPLE_RATE_HZ
        if item["duration_s"] < self.min_duration_s:
            return {**item, "status": "skipped",
                    "reason": f"too short ({item['duration_s']:.2f} s)"}  # fmt: skip
        rms_db = 20 * math.log10(max(float(np.sqrt(np.mean(wav24**2))), 1e-10))
        if rms_db < self.silence_dbfs:
            return {**item, "status": "skipped", "reason": f"silent ({rms_db:.0f} dBFS)"}
        return {**item, "status": "ready", "wav24": wav24, "wav16": wav16}


def length_batches(items: list[dict], batch_size: int) -> list[list[int]]:
    """Indices in batches of similar duration (less padding in Mimi and Whisper)."""
    order = sorted(range(len(items)), key=lambda i: (-items[i]["duration_s"], items[i]["chunk"]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@dataclass
class TokenizeSummary:
    chunks_total: int = 0
    done_before: int = 0
    ok: int = 0
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
        pad = float(np.mean(self.pad_shares)) if self.pad_shares else float("nan")
        lines = [
            f"chunks: {self.ok} ok, {len(self.skipped)} skipped, {len(self.failed)} failed, "
            f"{self.done_before} done before, of {self.chunks_total}",
            f"audio: {self.audio_s / 60:.1f} min -> {self.tokens:,} tokens in {self.seconds:.1f} s "
            f"({self.realtime_factor:.1f}x realtime)",
            f"text: mean pad share {pad:.2f}, largest spill lag {self.max_lag_s:.1f} s, "
            f"{self.overflow_tokens} tokens did not fit",
        ]
        for kind, reasons in (("skipped", self.skipped), ("failed", self.failed)):
            for chunk, reason in list(reasons.items())[:5]:
                lines.append(f"  {kind}: {chunk}: {reason}")
        return "\n".join(lines)


def run_tokenize(cfg: TokenizeConfig, models: ModelsConfig, chunks_root: str | Path,
                 tokens_root: str | Path, shard: tuple[int, int] = (0, 1),
                 rank: tuple[int, int] = (0, 1), device: str | None = None,
                 codec: Codec | None = None, aligner: Aligner | None = None, text_tokenizer=None,
                 progress: bool = True) -> TokenizeSummary:  # fmt: skip
    """Tokenize every chunk under ``chunks_root`` into ``tokens_root`` (see module docstring).

    ``shard`` picks this host's videos, ``rank`` = (rank, world_size) this process's part of
    them under torchrun. Models are loaded here unless given (tests and notebooks reuse them).
    """
    from tqdm.auto import tqdm

    from .checkpoints import load_text_tokenizer
    from .config import pick_device

    device = device or pick_device()
    tokens_root = Path(tokens_root)
    tokenizer = SpeechTokenizer.from_config(text_tokenizer or load_text_tokenizer(models), cfg)
    digest = config_digest(tokenizer, models, cfg.text_source)
    items = [it for it in list_chunk_items(chunks_root) if in_shard(it["video_id"], shard, rank)]
    manifest = manifest_path(tokens_root, shard, rank)
    spec_file = tokens_root / "configs" / f"{digest}.json"
    if not spec_file.exists():  # what training needs to rebuild this layout
        write_json_atomic(spec_file, {**tokenizer.fingerprint(), "text_source": cfg.text_source})
    done = {r["chunk"] for r in read_jsonl(manifest) if r.get("config") == digest}
    todo = [it for it in items if it["chunk"] not in done]
    summary = TokenizeSummary(chunks_total=len(items), done_before=len(items) - len(todo))
    if not todo:
        return summary
    codec = codec or Codec.load(models, cfg.num_codebooks, device)
    if codec.num_codebooks != cfg.num_codebooks:
        codec.set_num_codebooks(cfg.num_codebooks)
    needs_whisper = any(stored_words(it, cfg.text_source) is None for it in todo)
    if needs_whisper and aligner is None:  # Whisper is loaded only when some chunk needs it
        aligner = Aligner.load(models, device)
    dataset = ChunkDataset(todo, digest, cfg.min_duration_s, cfg.silence_dbfs, cfg.text_source)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=length_batches(todo, cfg.batch_size), num_workers=cfg.workers,
        collate_fn=list, prefetch_factor=2 if cfg.workers else None,
        persistent_workers=False,
    )  # fmt: skip
    group_samples = cfg.frames_per_group * MIMI_FRAME_SAMPLES
    start = time.perf_counter()
    bar = tqdm(total=round(sum(it["duration_s"] for it in todo)), unit="s", desc="tokenize",
               disable=not progress)  # fmt: skip
    with JsonlWriter(manifest) as writer:
        for batch in loader:
            ready = [b for b in batch if b["status"] == "ready"]
            for b in batch:
                if b["status"] != "ready":
                    writer.write(_record(b, digest))
                    (summary.failed if b["status"] == "failed" else summary.skipped)[
                        b["chunk"]] = b["reason"]  # fmt: skip
            if ready:
                padded = [math.ceil(b["wav24"].size / group_samples) * group_samples for b in ready]
                wav = torch.zeros(len(ready), 1, max(padded))
                for i, b in enumerate(ready):
                    wav[i, 0, : b["wav24"].size] = torch.from_numpy(b["wav24"])
                codes = codec.encode(wav, padded)
                texts = [stored_words(b, cfg.text_source) for b in ready]
                need = [i for i, t in enumerate(texts) if t is None]
                if need:
                    for i, words in zip(need, aligner.align([ready[i]["wav16"] for i in need])):
                        texts[i] = ("whisper", words)
                for b, c, (source, w) in zip(ready, codes, texts):
                    encoded = tokenizer.encode(c.numpy(), w)
                    rel = _save_tokens(tokens_root, b["hash"], encoded.ids, tokenizer)
                    writer.write(_record(b, digest, rel, encoded, w, source))
                    summary.ok += 1
                    summary.audio_s += b["duration_s"]
                    summary.tokens += int(encoded.ids.size)
                    summary.max_lag_s = max(summary.max_lag_s, encoded.stats["max_lag_s"])
                    summary.overflow_tokens += encoded.stats["overflow_tokens"]
                    summary.pad_shares.append(encoded.stats["pad_share"])
            bar.update(round(sum(b["duration_s"] for b in batch)))
    bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _save_tokens(tokens_root: Path, digest_hash: str, ids: np.ndarray, tokenizer) -> str:
    rel = f"{digest_hash[:2]}/{digest_hash}.npy"
    with atomic_path(tokens_root / rel) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, ids.astype(tokenizer.layout.storage_dtype))
    return rel


def _record(item: dict, digest: str, tokens: str | None = None, encoded=None,
            words: list[Word] | None = None, text_source: str | None = None) -> dict:  # fmt: skip
    """A manifest line; ``text_source`` is what made this chunk's words (whisper,
    captions:<lang>:<format> or sidecar:<format>)."""
    record = {"chunk": item["chunk"], "video_id": item["video_id"], "hash": item.get("hash"),
              "config": digest, "status": "ok" if tokens else item["status"],
              "reason": item.get("reason"), "duration_s": round(item["duration_s"], 3),
              "start_s": item.get("start_s")}  # fmt: skip
    if tokens:
        record.update({
            "tokens": tokens, "n_tokens": int(encoded.ids.size), "text_source": text_source,
            "words": [[w.text, round(w.start_s, 3), round(w.end_s, 3), round(w.probability, 3)]
                      for w in words],
            **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in encoded.stats.items()},
        })  # fmt: skip
    return record


def load_tokens(tokens_root: str | Path, record: dict) -> np.ndarray:
    """A chunk's ids as int64, from its manifest record."""
    return np.load(Path(tokens_root) / record["tokens"]).astype(np.int64)


def words_of(record: dict) -> list[Word]:
    """The timed words stored in a manifest record."""
    return [Word(t, s, e, p) for t, s, e, p in record.get("words", [])]


def ensure_tokens(cfg: TokenizeConfig, models: ModelsConfig) -> Path:
    """``<data>/tokens``, tokenized here first if it holds nothing (tiny profile: from the demo
    podcast, itself scraped first if needed), so later notebooks run on their own."""
    from .scrape import ensure_chunks

    tokens_root = cfg.data_dir / "tokens"
    if any(r.get("status") == "ok" for r in read_token_manifests(tokens_root)):
        return tokens_root
    chunks = ensure_chunks(cfg.data_dir, cfg.profile)
    run_tokenize(cfg, models, chunks, tokens_root, progress=False)
    return tokens_root
