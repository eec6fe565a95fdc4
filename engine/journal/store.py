"""The journal store: per-stream journals, the event-id index, snapshots, catalog, metadata.

One set of rules, two implementations. ``Store.commit`` takes a ``WriteBatch``
and applies it atomically: every event is checked against the event-id index
(a re-sent id is a duplicate, even inside the same batch), given the next
sequence number of its stream and the next global commit position, enriched
with its item's tags as they are at that moment, and written; catalog events
also update the materialised catalog. ``MemoryStore`` keeps it all in dicts;
``LmdbStore`` keeps it in one LMDB environment and grows the map when it
fills, retrying the whole batch so no write is lost.

Streams: a user's id for user events, ``""`` (``CATALOG_STREAM``) for
``item`` and ``user_attrs`` events.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import lmdb
import msgpack

from engine.journal.codec import CATALOG_STREAM, StoredEvent
from engine.errors import StoreError, StoreFull

APPENDED = "appended"
DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class AppendResult:
    status: str                      # APPENDED or DUPLICATE
    stored: StoredEvent | None       # the new entry, when appended


@dataclass
class WriteBatch:
    """Everything one group commit writes."""

    events: list[tuple[str, dict]] = field(default_factory=list)   # (stream, wire map)
    snapshots: list[tuple[str, int, bytes]] = field(default_factory=list)
    meta: list[tuple[str, bytes]] = field(default_factory=list)
    recorded_at: float = 0.0

    def __len__(self) -> int:
        return len(self.events) + len(self.snapshots) + len(self.meta)


class _Txn(ABC):
    """The primitive reads and writes one commit needs (inside one transaction)."""

    @abstractmethod
    def id_exists(self, event_id: str) -> bool: ...

    @abstractmethod
    def last_seq(self, stream: str) -> int: ...

    @abstractmethod
    def next_gseq(self) -> int: ...

    @abstractmethod
    def item_tags(self, item: str) -> tuple[str, ...]: ...

    @abstractmethod
    def put_event(self, entry: StoredEvent) -> None: ...

    @abstractmethod
    def put_item(self, item: str, record: dict) -> None: ...

    @abstractmethod
    def put_user_attrs(self, user: str, attrs: dict) -> None: ...

    @abstractmethod
    def put_snapshot(self, stream: str, seq: int, state: bytes) -> None: ...

    @abstractmethod
    def put_meta(self, key: str, value: bytes) -> None: ...


def _apply_batch(txn: _Txn, batch: WriteBatch) -> list[AppendResult]:
    """The commit rules shared by every store implementation."""
    results = []
    for stream, event in batch.events:
        if txn.id_exists(event["id"]):
            results.append(AppendResult(DUPLICATE, None))
            continue
        item = event.get("item")
        tags = txn.item_tags(item) if item and stream != CATALOG_STREAM else ()
        entry = StoredEvent(stream=stream, seq=txn.last_seq(stream) + 1, gseq=txn.next_gseq(),
                            recorded_at=batch.recorded_at, event=event, tags=tags)
        txn.put_event(entry)
        if event["type"] == "item":
            txn.put_item(event["item"], event)
        elif event["type"] == "user_attrs":
            txn.put_user_attrs(event["user"], event["attrs"])
        results.append(AppendResult(APPENDED, entry))
    for stream, seq, state in batch.snapshots:
        txn.put_snapshot(stream, seq, state)
    for key, value in batch.meta:
        txn.put_meta(key, value)
    return results


class Store(ABC):
    """What the service needs from durable storage. See the module docstring."""

    @abstractmethod
    def commit(self, batch: WriteBatch) -> list[AppendResult]:
        """Apply ``batch`` atomically and durably; one result per event, in order."""

    @abstractmethod
    def read(self, stream: str, after_seq: int = 0) -> Iterator[StoredEvent]:
        """The stream's entries with seq > after_seq, in order."""

    @abstractmethod
    def read_all(self, after_gseq: int = 0) -> Iterator[StoredEvent]:
        """Every entry of every stream, in global commit order."""

    @abstractmethod
    def last_seq(self, stream: str) -> int: ...

    @abstractmethod
    def streams(self) -> Iterator[str]:
        """Every stream that has at least one entry (the catalog stream included)."""

    @abstractmethod
    def snapshot(self, stream: str) -> tuple[int, bytes] | None: ...

    @abstractmethod
    def item(self, item: str) -> dict | None: ...

    @abstractmethod
    def items(self) -> Iterator[tuple[str, dict]]: ...

    @abstractmethod
    def user_attrs(self, user: str) -> dict | None: ...

    @abstractmethod
    def all_user_attrs(self) -> Iterator[tuple[str, dict]]: ...

    @abstractmethod
    def meta(self, key: str) -> bytes | None: ...

    def close(self) -> None:  # noqa: B027
        """Release resources; the default has none."""


# ------------------------------------------------------------------ memory


class _MemoryTxn(_Txn):
    def __init__(self, store: "MemoryStore"):
        self.s = store
        self.ids: set[str] = set()
        self.heads: dict[str, int] = {}
        self.entries: list[StoredEvent] = []
        self.items: dict[str, dict] = {}
        self.attrs: dict[str, dict] = {}
        self.snapshots: dict[str, tuple[int, bytes]] = {}
        self.meta: dict[str, bytes] = {}
        self.gseq = store._gseq

    def id_exists(self, event_id):
        return event_id in self.ids or event_id in self.s._ids

    def last_seq(self, stream):
        return self.heads.get(stream) or len(self.s._journal.get(stream, ()))

    def next_gseq(self):
        self.gseq += 1
        return self.gseq

    def item_tags(self, item):
        record = self.items.get(item) or self.s._items.get(item)
        return tuple(record.get("tags") or ()) if record else ()

    def put_event(self, entry):
        self.ids.add(entry.event["id"])
        self.heads[entry.stream] = entry.seq
        self.entries.append((entry.stream, entry.encode()))   # stored as bytes, like LMDB

    def put_item(self, item, record):
        self.items[item] = record

    def put_user_attrs(self, user, attrs):
        self.attrs[user] = attrs

    def put_snapshot(self, stream, seq, state):
        current = self.snapshots.get(stream) or self.s._snapshots.get(stream)
        if current is None or seq > current[0]:
            self.snapshots[stream] = (seq, state)

    def put_meta(self, key, value):
        self.meta[key] = value

    def publish(self):
        s = self.s
        s._ids |= self.ids
        for stream, data in self.entries:
            s._journal.setdefault(stream, []).append(data)
            s._log.append(data)
        s._items.update(self.items)
        s._attrs.update(self.attrs)
        s._snapshots.update(self.snapshots)
        s._meta.update(self.meta)
        s._gseq = self.gseq


class MemoryStore(Store):
    """Dict-backed store with the same rules as LmdbStore (not durable)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._ids: set[str] = set()
        self._journal: dict[str, list[bytes]] = {}
        self._log: list[bytes] = []
        self._items: dict[str, dict] = {}
        self._attrs: dict[str, dict] = {}
        self._snapshots: dict[str, tuple[int, bytes]] = {}
        self._meta: dict[str, bytes] = {}
        self._gseq = 0

    def commit(self, batch):
        with self._lock:
            txn = _MemoryTxn(self)
            results = _apply_batch(txn, batch)
            txn.publish()
            return results

    def read(self, stream, after_seq=0):
        with self._lock:
            entries = list(self._journal.get(stream, ())[after_seq:])
        return map(StoredEvent.decode, entries)

    def read_all(self, after_gseq=0):
        with self._lock:
            entries = list(self._log[after_gseq:])
        return map(StoredEvent.decode, entries)

    def last_seq(self, stream):
        with self._lock:
            return len(self._journal.get(stream, ()))

    def streams(self):
        with self._lock:
            return iter(sorted(self._journal))

    def snapshot(self, stream):
        with self._lock:
            return self._snapshots.get(stream)

    def item(self, item):
        with self._lock:
            return self._items.get(item)

    def items(self):
        with self._lock:
            return iter(sorted(self._items.items()))

    def user_attrs(self, user):
        with self._lock:
            return self._attrs.get(user)

    def all_user_attrs(self):
        with self._lock:
            return iter(sorted(self._attrs.items()))

    def meta(self, key):
        with self._lock:
            return self._meta.get(key)


# -------------------------------------------------------------------- LMDB


def _u64(n: int) -> bytes:
    return n.to_bytes(8, "big")


def _skey(stream: str) -> bytes:
    """Key of a stream in heads/snapshots (LMDB keys may not be empty)."""
    return b"s" + stream.encode("utf-8")


def _journal_key(stream: str, seq: int) -> bytes:
    return stream.encode("utf-8") + b"\x00" + _u64(seq)


_pack = msgpack.Packer(use_bin_type=True).pack


def _unpack(data: bytes):
    return msgpack.unpackb(data, raw=False)


class _LmdbTxn(_Txn):
    def __init__(self, store: "LmdbStore", txn: lmdb.Transaction):
        self.s = store
        self.txn = txn
        self.gseq = int.from_bytes(txn.get(b"gseq", db=store._meta) or _u64(0), "big")
        self.tag_updates: dict[str, tuple[str, ...]] = {}

    def id_exists(self, event_id):
        return self.txn.get(event_id.encode("utf-8"), db=self.s._ids) is not None

    def last_seq(self, stream):
        raw = self.txn.get(_skey(stream), db=self.s._heads)
        return int.from_bytes(raw, "big") if raw else 0

    def next_gseq(self):
        self.gseq += 1
        return self.gseq

    def item_tags(self, item):
        if item in self.tag_updates:
            return self.tag_updates[item]
        cached = self.s._tags_cache.get(item)
        if cached is not None:
            return cached
        raw = self.txn.get(item.encode("utf-8"), db=self.s._items)
        tags = tuple(_unpack(raw).get("tags") or ()) if raw else ()
        if raw:
            self.s._tags_cache[item] = tags
        return tags

    def put_event(self, entry):
        key = _journal_key(entry.stream, entry.seq)
        self.txn.put(key, entry.encode(), db=self.s._journal)
        self.txn.put(entry.event["id"].encode("utf-8"), key, db=self.s._ids)
        self.txn.put(_u64(entry.gseq), key, db=self.s._log)
        self.txn.put(_skey(entry.stream), _u64(entry.seq), db=self.s._heads)

    def put_item(self, item, record):
        self.txn.put(item.encode("utf-8"), _pack(record), db=self.s._items)
        self.tag_updates[item] = tuple(record.get("tags") or ())

    def put_user_attrs(self, user, attrs):
        self.txn.put(user.encode("utf-8"), _pack(attrs), db=self.s._attrs)

    def put_snapshot(self, stream, seq, state):
        key = _skey(stream)
        raw = self.txn.get(key, db=self.s._snapshots)
        if raw is None or int.from_bytes(raw[:8], "big") < seq:
            self.txn.put(key, _u64(seq) + state, db=self.s._snapshots)

    def put_meta(self, key, value):
        self.txn.put(key.encode("utf-8"), value, db=self.s._meta)

    def finish(self):
        self.txn.put(b"gseq", _u64(self.gseq), db=self.s._meta)


class _ResizeLock:
    """Many readers or one map resize: LMDB may only grow with no transaction open."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._resizing = False

    def __enter__(self):
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._readers += 1

    def __exit__(self, *exc):
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    def exclusive(self, fn):
        with self._cond:
            self._resizing = True
            try:
                while self._readers:
                    self._cond.wait()
                return fn()
            finally:
                self._resizing = False
                self._cond.notify_all()


class LmdbStore(Store):
    """The durable store: one LMDB environment in ``path``."""

    def __init__(self, path: str | Path, *, map_size_mb: int = 256,
                 max_map_size_mb: int = 65536, sync: bool = True):
        Path(path).mkdir(parents=True, exist_ok=True)
        self.max_map_size = max_map_size_mb << 20
        try:
            self.env = lmdb.open(str(path), map_size=map_size_mb << 20, max_dbs=16,
                                 sync=sync, metasync=sync, readahead=False, max_readers=512)
        except lmdb.Error as exc:
            raise StoreError(f"cannot open LMDB store at {path}: {exc}") from exc
        self.env.set_mapsize(max(self.env.info()["map_size"], map_size_mb << 20))
        names = ("journal", "ids", "log", "heads", "snapshots", "items", "attrs", "meta")
        for name in names:
            setattr(self, "_" + name, self.env.open_db(name.encode()))
        self._tags_cache: dict[str, tuple[str, ...]] = {}
        self._write_lock = threading.Lock()
        self._resize = _ResizeLock()
        self.path = str(path)

    # -- writes

    def commit(self, batch):
        with self._write_lock:
            while True:
                try:
                    with self._resize:
                        return self._commit_once(batch)
                except lmdb.MapFullError:
                    self._grow()
                except lmdb.Error as exc:
                    raise StoreError(f"LMDB commit failed: {exc}") from exc

    def _commit_once(self, batch):
        with self.env.begin(write=True) as txn:
            ltxn = _LmdbTxn(self, txn)
            results = _apply_batch(ltxn, batch)
            ltxn.finish()
        self._tags_cache.update(ltxn.tag_updates)
        return results

    def _grow(self):
        current = self.env.info()["map_size"]
        if current >= self.max_map_size:
            raise StoreFull(f"LMDB map is full at {current >> 20} MiB and may not grow past "
                            f"max_map_size_mb={self.max_map_size >> 20}; the batch was not written")
        new_size = min(current * 2, self.max_map_size)
        self._resize.exclusive(lambda: self.env.set_mapsize(new_size))

    # -- reads

    def _get(self, db, key: bytes):
        with self._resize, self.env.begin(db=db, buffers=False) as txn:
            return txn.get(key)

    def read(self, stream, after_seq=0):
        prefix = stream.encode("utf-8") + b"\x00"
        with self._resize, self.env.begin(db=self._journal) as txn:
            cursor = txn.cursor()
            out = []
            if cursor.set_range(prefix + _u64(after_seq + 1)):
                for key, value in cursor:
                    if not key.startswith(prefix):
                        break
                    out.append(StoredEvent.decode(value))
        return iter(out)

    def read_all(self, after_gseq=0, chunk: int = 10000):
        position = after_gseq
        while True:
            with self._resize, self.env.begin() as txn:
                cursor = txn.cursor(db=self._log)
                out = []
                if cursor.set_range(_u64(position + 1)):
                    for _, jkey in cursor:
                        out.append(StoredEvent.decode(txn.get(jkey, db=self._journal)))
                        if len(out) >= chunk:
                            break
            yield from out
            if len(out) < chunk:
                return
            position = out[-1].gseq

    def last_seq(self, stream):
        raw = self._get(self._heads, _skey(stream))
        return int.from_bytes(raw, "big") if raw else 0

    def streams(self):
        with self._resize, self.env.begin(db=self._heads) as txn:
            keys = [key[1:].decode("utf-8") for key in txn.cursor().iternext(values=False)]
        return iter(keys)

    def snapshot(self, stream):
        raw = self._get(self._snapshots, _skey(stream))
        return (int.from_bytes(raw[:8], "big"), raw[8:]) if raw else None

    def item(self, item):
        raw = self._get(self._items, item.encode("utf-8"))
        return _unpack(raw) if raw else None

    def items(self):
        return self._scan(self._items)

    def user_attrs(self, user):
        raw = self._get(self._attrs, user.encode("utf-8"))
        return _unpack(raw) if raw else None

    def all_user_attrs(self):
        return self._scan(self._attrs)

    def _scan(self, db):
        with self._resize, self.env.begin(db=db) as txn:
            out = [(k.decode("utf-8"), _unpack(v)) for k, v in txn.cursor()]
        return iter(out)

    def meta(self, key):
        return self._get(self._meta, key.encode("utf-8"))

    def info(self) -> dict:
        info = self.env.info()
        return {"map_size_mb": info["map_size"] >> 20, "path": self.path}

    def close(self):
        self.env.close()


def open_store(config: dict, data_dir: str | Path) -> LmdbStore:
    """The store a service uses: LMDB under ``data_dir/journal``."""
    cfg = config["store"]
    return LmdbStore(Path(data_dir) / "journal", map_size_mb=cfg["map_size_mb"],
                     max_map_size_mb=cfg["max_map_size_mb"], sync=cfg["sync"])
