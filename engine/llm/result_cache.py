"""A persistent cache of model results in its own LMDB environment.

Keys are ``(model file hash, task, template version, input hash)``: a result
is reused only for the very same model file, task, prompt template and input.
Values are msgpack (never pickle). The cache is an optimisation: it is opened
without fsync (a crash may lose the newest entries, never corrupt old ones)
and lives in a directory of its own (e.g. ``DATA_DIR/cache``), apart from the
event store.

Thread-safe: LMDB serialises writers, readers run concurrently; the hit/miss
counters are guarded by a lock. A full map is grown (doubling, up to
``max_map_size_mb``) and the write retried; past the limit the write fails
with ``StoreFull``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lmdb
import msgpack

from interest.engine.errors import StoreError, StoreFull

_SEP = b"\x1f"


def cache_key(model: str, task: str, version: str, input_hash: str) -> bytes:
    """The LMDB key for one result (well under LMDB's 511-byte key limit)."""
    parts = [model, task, version, input_hash]
    for p in parts:
        if not p or "\x1f" in p:
            raise ValueError(f"bad cache key part {p!r}")
    key = _SEP.join(p.encode("utf-8") for p in parts)
    if len(key) > 500:
        raise ValueError("cache key too long")
    return key


def _task_and_input(key: bytes) -> tuple[bytes, bytes] | None:
    parts = key.split(_SEP)
    return (parts[1], parts[3]) if len(parts) == 4 else None


class ResultCache:
    """Persistent ``(model, task, version, input_hash) -> msgpack value`` map."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        map_size_mb: int = 64,
        max_map_size_mb: int = 4096,
        sync: bool = False,
    ) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._max_map = int(max_map_size_mb) << 20
        self._lock = threading.Lock()
        self._resize_lock = threading.RLock()
        self._hits = 0
        self._misses = 0
        self._puts = 0
        self._resizes = 0
        try:
            self._env = lmdb.open(
                str(self.path),
                map_size=int(map_size_mb) << 20,
                subdir=True,
                sync=sync,
                metasync=sync,
                readahead=False,
                max_dbs=0,
            )
        except lmdb.Error as exc:
            raise StoreError(f"cannot open result cache at {str(self.path)!r}: {exc}") from exc

    # -- reads ---------------------------------------------------------------

    def get(self, model: str, task: str, version: str, input_hash: str) -> Any | None:
        """The cached value, or None (counted as a hit or a miss)."""
        return self.get_many(model, task, version, [input_hash])[0]

    def get_many(
        self, model: str, task: str, version: str, input_hashes: Sequence[str]
    ) -> list[Any | None]:
        """Values for several input hashes in one read transaction (None = miss)."""
        keys = [cache_key(model, task, version, h) for h in input_hashes]
        out: list[Any | None] = []
        try:
            with self._resize_lock, self._env.begin(write=False) as txn:
                for k in keys:
                    raw = txn.get(k)
                    out.append(None if raw is None else msgpack.unpackb(raw, raw=False))
        except lmdb.Error as exc:
            raise StoreError(f"result cache read failed: {exc}") from exc
        hits = sum(1 for v in out if v is not None)
        with self._lock:
            self._hits += hits
            self._misses += len(out) - hits
        return out

    def __contains__(self, key: tuple[str, str, str, str]) -> bool:
        try:
            with self._resize_lock, self._env.begin(write=False) as txn:
                return txn.get(cache_key(*key)) is not None
        except lmdb.Error as exc:
            raise StoreError(f"result cache read failed: {exc}") from exc

    # -- writes --------------------------------------------------------------

    def put(self, model: str, task: str, version: str, input_hash: str, value: Any) -> None:
        self.put_many(model, task, version, [(input_hash, value)])

    def put_many(
        self, model: str, task: str, version: str, items: Iterable[tuple[str, Any]]
    ) -> None:
        """Store several values in one write transaction."""
        rows = [
            (cache_key(model, task, version, h), msgpack.packb(v, use_bin_type=True))
            for h, v in items
        ]
        if not rows:
            return
        while True:
            try:
                with self._resize_lock, self._env.begin(write=True) as txn:
                    for k, v in rows:
                        txn.put(k, v)
                break
            except lmdb.MapFullError as exc:
                self._grow(exc)
            except lmdb.Error as exc:
                raise StoreError(f"result cache write failed: {exc}") from exc
        with self._lock:
            self._puts += len(rows)

    def _grow(self, exc: Exception) -> None:
        # set_mapsize needs no open transaction in this process: every txn is
        # taken under _resize_lock, which we hold here.
        with self._resize_lock:
            current = self._env.info()["map_size"]
            new = min(current * 2, self._max_map)
            if new <= current:
                raise StoreFull(
                    f"result cache at {str(self.path)!r} reached its limit of "
                    f"{self._max_map >> 20} MiB"
                ) from exc
            try:
                self._env.set_mapsize(new)
            except lmdb.Error as exc2:
                raise StoreError(f"cannot grow result cache map: {exc2}") from exc2
            with self._lock:
                self._resizes += 1

    def delete_inputs(self, task: str, input_hashes: Iterable[str]) -> int:
        """Delete every entry of ``task`` for these input hashes, whatever the model and
        template version (a user's erasure); how many were deleted."""
        task_b = task.encode("utf-8")
        wanted_keys = {(task_b, h.encode("utf-8")) for h in input_hashes}
        try:
            with self._resize_lock, self._env.begin(write=True) as txn:
                doomed = [key for key in txn.cursor().iternext(values=False)
                          if _task_and_input(key) in wanted_keys]
                for key in doomed:
                    txn.delete(key)
        except lmdb.Error as exc:
            raise StoreError(f"result cache delete failed: {exc}") from exc
        return len(doomed)

    # -- housekeeping --------------------------------------------------------

    def clear(self) -> None:
        try:
            with self._resize_lock, self._env.begin(write=True) as txn:
                txn.drop(self._env.open_db(), delete=False)
        except lmdb.Error as exc:
            raise StoreError(f"result cache clear failed: {exc}") from exc

    def stats(self) -> dict[str, Any]:
        with self._lock:
            hits, misses, puts, resizes = self._hits, self._misses, self._puts, self._resizes
        try:
            entries = self._env.stat()["entries"]
            map_size = self._env.info()["map_size"]
        except lmdb.Error:
            entries, map_size = -1, -1
        total = hits + misses
        return {
            "hits": hits,
            "misses": misses,
            "hit_rate": (hits / total) if total else 0.0,
            "puts": puts,
            "entries": entries,
            "map_size_mb": map_size / (1 << 20) if map_size > 0 else map_size,
            "resizes": resizes,
        }

    def close(self) -> None:
        with self._resize_lock:
            self._env.close()

    def __enter__(self) -> ResultCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
