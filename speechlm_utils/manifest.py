"""JSON-lines manifests, atomic writes and sharding: what makes every stage resumable.

A manifest is appended one object a line and flushed per item, so a crash loses at most the
line being written; a torn last line is skipped on read. Shards split work deterministically,
so any launcher can run ``--shard i/n`` side by side.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """Objects of a JSON-lines file, skipping a torn (crash-truncated) or blank line."""
    path = Path(path)
    if not path.exists():
        return
    with path.open(encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue  # only the last line can be torn; it is redone on resume
            if isinstance(obj, dict):
                yield obj


class JsonlWriter:
    """Append-only, thread-safe JSON-lines writer that flushes and fsyncs every line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_torn_tail()
        self._file = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def _repair_torn_tail(self) -> None:
        """End a crash-truncated last line, so the next record starts on its own line."""
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open("rb+") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")

    def write(self, obj: dict) -> None:
        line = json.dumps(obj, ensure_ascii=False) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``final``; rename it into place only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}.{threading.get_ident()}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(path: str | Path, obj) -> None:
    """Write JSON so that readers see the old file or the new one, never half of one."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def parse_shard(spec: str | None) -> tuple[int, int]:
    """``"i/n"`` to ``(i, n)`` with ``0 <= i < n``; None means the whole job, ``(0, 1)``."""
    if not spec:
        return (0, 1)
    try:
        index, count = (int(x) for x in spec.split("/"))
    except ValueError as err:
        raise ValueError(f"--shard {spec!r}: expected i/n, e.g. 0/4") from err
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {spec!r}: need 0 <= i < n")
    return (index, count)


def in_shard(key: str, shard: tuple[int, int], sub: tuple[int, int] = (0, 1)) -> bool:
    """Whether ``key`` is in ``shard`` (this host's ``--shard i/n``) and, within it, in
    ``sub`` (this torchrun rank's ``(rank, world_size)``). The sub-split uses an independent
    hash, so ranks split exactly the host's part, whatever the other hosts run."""
    if shard_of(key, shard[1]) != shard[0]:
        return False
    return sub[1] == 1 or shard_of(f"rank:{key}", sub[1]) == sub[0]


def shard_of(key: str, count: int) -> int:
    """The shard a key (e.g. a video id) belongs to: stable across runs, machines and Pythons."""
    digest = hashlib.sha1(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def take_shard(items: Iterable, shard: tuple[int, int], key=None) -> list:
    """Items of shard ``(i, n)``: every n-th by position, or by ``key(item)``'s hash if given."""
    index, count = shard
    items = list(items)
    if count == 1:
        return items
    if key is None:
        return items[index::count]
    return [item for item in items if shard_of(key(item), count) == index]
