"""The journal store: per-stream journals, the event-id index, snapshots, catalog, metadata.

One set of rules, two implementations. ``Store.commit`` takes a ``WriteBatch``
and applies it atomically: every event is checked against the event-id index
of its stream (a re-sent id is a duplicate, even inside the same batch), given
the next sequence number of its stream and the next global commit position,
enriched with its item's tags as they are at that moment, and written; catalog
events also update the materialised catalog. Snapshots (with a checksum),
metadata, projection positions and dead letters go in the same transaction.
``MemoryStore`` keeps it all in dicts; ``LmdbStore`` keeps it in one LMDB
environment and grows the map when it fills, retrying the whole batch so no
write is lost.

Streams: a user's id for user events, ``""`` (``CATALOG_STREAM``) for
``item`` and ``user_attrs`` events and the service's ``item_profile`` events
(folded into their item's record: ``catalog_records``). Event ids are scoped
to their stream: the same id under two users is two events.

Erasure: committing a ``forget`` event (``events.FORGET_TYPE``, the `forget`
op's tombstone) to a user's stream first erases, in the same transaction,
every entry of that stream (journal, event-id index, global log position),
its snapshot and dead letters, and the user's ``user_attrs`` entries and
attributes in the catalog stream; then appends the tombstone with ``forgotten`` (entries
erased, earlier tombstones not counted) filled in. The stream's sequence
numbers go on after the erased ones, so anything computed before the
erasure (a snapshot, an entry still held in memory) is ordered before the
tombstone: a snapshot older than the stream's first remaining entry is
refused, and the fold resets the state at the tombstone. The global log has
gaps where entries were erased; readers skip them. Erased event ids are
free again: a re-sent one is a new event.

Snapshots are stored as ``codec.encode_snapshot`` records (seq + crc32);
``snapshot()`` returns None for one that fails its check, logs a warning and
counts it in ``corrupt_snapshots``, so its user is rebuilt from the journal.

LMDB store format, kept in the meta key ``store_format`` (absent = 1):

* 1: event-id keys are the bare id (global), snapshots have no checksum.
* 2: event-id keys are ``stream NUL id`` (``stream NUL NUL blake2b(id)`` when
  that would exceed LMDB's 511-byte key limit), snapshots are checksummed.

Opening a format-1 store upgrades it in place once: every id key is rewritten
under its stream (read from the journal key it points to) and snapshots
without a checksum are dropped (their users rebuild from the journal). The
rewrite is resumable: new keys contain a NUL, old keys never do, and the
format key is written last.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import logging
import os
import struct
import threading
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import lmdb
import msgpack

from interest.engine.errors import DiskFull, InterestError, StoreError, StoreFull
from interest.engine.journal.codec import (CATALOG_STREAM, SNAPSHOT_MAGIC, StoredEvent, decode_snapshot,
                                  encode_snapshot, snapshot_seq)
from interest.engine.journal.catalog_records import fold_catalog_entry
from interest.engine.journal.events import FORGET_TYPE, ITEM_PROFILE_TYPE
from interest.engine.journal.lock import DataDirLock
from interest.engine.logs import RateLimitedLog

logger = logging.getLogger(__name__)
_warn = RateLimitedLog(logger)

APPENDED = "appended"
DUPLICATE = "duplicate"
POSITION_PREFIX = "position/"


def position_key(name: str) -> str:
    """The meta key a projection's position is stored under."""
    return POSITION_PREFIX + name


@dataclass(frozen=True, slots=True)
class AppendResult:
    status: str                      # APPENDED or DUPLICATE
    stored: StoredEvent | None       # the new entry, when appended
    #: for a ``forget`` tombstone: the entries it erased (their content, for the caller to
    #: clear what it derived from them; never stored again)
    erased: tuple[StoredEvent, ...] = ()


@dataclass
class WriteBatch:
    """Everything one group commit writes."""

    events: list[tuple[str, dict]] = field(default_factory=list)   # (stream, wire map)
    snapshots: list[tuple[str, int, bytes]] = field(default_factory=list)
    meta: list[tuple[str, bytes]] = field(default_factory=list)
    #: (position, stream, projection, error, at): an entry a projection could not apply
    dead_letters: list[tuple[int, str, str, str, float]] = field(default_factory=list)
    #: (projection name, position): written as meta ``position/<name>``, 8 bytes big-endian
    positions: list[tuple[str, int]] = field(default_factory=list)
    recorded_at: float = 0.0
    #: entries of another store, copied as they are (stream, seq, tags, recorded_at, event)
    #: under new global positions after ``events``; see ``_restore``
    restored: list[StoredEvent] = field(default_factory=list)

    def __len__(self) -> int:
        return (len(self.events) + len(self.snapshots) + len(self.meta)
                + len(self.dead_letters) + len(self.positions) + len(self.restored))


class _Txn(ABC):
    """The primitive reads and writes one commit needs (inside one transaction)."""

    @abstractmethod
    def id_exists(self, stream: str, event_id: str) -> bool: ...

    @abstractmethod
    def last_seq(self, stream: str) -> int: ...

    @abstractmethod
    def next_gseq(self) -> int: ...

    @abstractmethod
    def item_tags(self, item: str) -> tuple[str, ...]: ...

    @abstractmethod
    def item_record(self, item: str) -> dict | None:
        """The item's materialised record as this transaction sees it (None if unknown)."""

    @abstractmethod
    def put_event(self, entry: StoredEvent) -> None: ...

    @abstractmethod
    def put_item(self, item: str, record: dict) -> None: ...

    @abstractmethod
    def put_user_attrs(self, user: str, attrs: dict) -> None: ...

    @abstractmethod
    def snapshot_record(self, stream: str) -> bytes | None: ...

    @abstractmethod
    def put_snapshot(self, stream: str, record: bytes) -> None: ...

    @abstractmethod
    def put_meta(self, key: str, value: bytes) -> None: ...

    @abstractmethod
    def put_dead_letter(self, record: dict) -> None: ...

    # -- erasure

    @abstractmethod
    def stream_entries(self, stream: str) -> list[StoredEvent]:
        """Every entry the stream still has, in seq order (this transaction's included)."""

    @abstractmethod
    def first_seq(self, stream: str) -> int:
        """The seq of the stream's first remaining entry, 0 when it has none."""

    @abstractmethod
    def delete_entry(self, entry: StoredEvent) -> None:
        """Erase one entry: its journal record, its event-id key and its log position."""

    @abstractmethod
    def delete_snapshot(self, stream: str) -> None: ...

    @abstractmethod
    def delete_user_attrs(self, user: str) -> bool:
        """Erase the user's attributes; True if there were any."""

    @abstractmethod
    def delete_dead_letters(self, stream: str) -> None:
        """Erase the dead letters of the stream's entries."""


def _erase(txn: _Txn, user: str) -> list[StoredEvent]:
    """Erase the user's stream, snapshot and ``user_attrs`` (see the module docstring)."""
    erased = [e for e in txn.stream_entries(user) if e.stream == user]
    if txn.delete_user_attrs(user):
        erased += [e for e in txn.stream_entries(CATALOG_STREAM)
                   if e.event["type"] == "user_attrs" and e.event.get("user") == user]
    for entry in erased:
        txn.delete_entry(entry)
    txn.delete_snapshot(user)
    txn.delete_dead_letters(user)
    return erased


def _append(txn: _Txn, stream: str, event: dict, recorded_at: float) -> AppendResult:
    if txn.id_exists(stream, event["id"]):
        return AppendResult(DUPLICATE, None)
    erased = ()
    if event["type"] == FORGET_TYPE and stream != CATALOG_STREAM:
        erased = tuple(_erase(txn, stream))
        event = {**event, "forgotten": sum(1 for e in erased if e.type != FORGET_TYPE)}
    item = event.get("item")
    tags = txn.item_tags(item) if item and stream != CATALOG_STREAM else ()
    entry = StoredEvent(stream=stream, seq=txn.last_seq(stream) + 1, gseq=txn.next_gseq(),
                        recorded_at=recorded_at, event=event, tags=tags)
    txn.put_event(entry)
    _materialise(txn, event)
    return AppendResult(APPENDED, entry, erased)


def _materialise(txn: _Txn, event: dict) -> None:
    """Fold a catalog-stream event into the items or user-attributes table
    (``catalog_records`` for items and their profiles)."""
    if event["type"] in ("item", ITEM_PROFILE_TYPE):
        record = fold_catalog_entry(txn.item_record(event["item"]), event)
        if record is not None:
            txn.put_item(event["item"], record)
    elif event["type"] == "user_attrs":
        txn.put_user_attrs(event["user"], event["attrs"])


def _intact(record: bytes) -> bool:
    try:
        decode_snapshot(record)
    except StoreError:
        return False
    return True


def _put_snapshot(txn: _Txn, stream: str, seq: int, state: bytes) -> None:
    """Snapshots only move forward, except over one that fails its check, and never
    reach back before an erasure (a state folded from erased entries is refused)."""
    if seq < txn.first_seq(stream):
        return
    current = txn.snapshot_record(stream)
    if current is None or snapshot_seq(current) < seq or not _intact(current):
        txn.put_snapshot(stream, encode_snapshot(seq, state))


def _restore(txn: _Txn, entry: StoredEvent) -> AppendResult:
    """Copy an entry of another store (``interest replay repartition``): its stream, seq,
    tags and recorded_at stay as first committed (so a fold of the copy is the fold of
    the original, erasure gaps in seq included), its event id goes into the index (a
    re-sent id stays a duplicate), it gets the next global position. An erasure already
    happened in the source: a restored tombstone erases nothing again. The catalog stream
    is numbered afresh (no fold reads its seq; its copies may come from several stores)."""
    if txn.id_exists(entry.stream, entry.event["id"]):
        return AppendResult(DUPLICATE, None)
    last = txn.last_seq(entry.stream)
    seq = last + 1 if entry.stream == CATALOG_STREAM else entry.seq
    if seq <= last:
        raise StoreError(f"restored entry {entry.stream!r}/{seq} is not after the "
                         f"stream's last seq {last}")
    copy = StoredEvent(stream=entry.stream, seq=seq, gseq=txn.next_gseq(),
                       recorded_at=entry.recorded_at, event=entry.event, tags=entry.tags)
    txn.put_event(copy)
    _materialise(txn, entry.event)
    return AppendResult(APPENDED, copy)


def _dead_letter(item: tuple) -> dict:
    position, stream, projection, error, at = item
    return {"position": int(position), "stream": str(stream), "projection": str(projection),
            "error": str(error), "at": float(at)}


def _apply_batch(txn: _Txn, batch: WriteBatch) -> list[AppendResult]:
    """The commit rules shared by every store implementation."""
    results = [_append(txn, stream, event, batch.recorded_at) for stream, event in batch.events]
    results += [_restore(txn, entry) for entry in batch.restored]
    for stream, seq, state in batch.snapshots:
        _put_snapshot(txn, stream, seq, state)
    for key, value in batch.meta:
        txn.put_meta(key, value)
    for name, position in batch.positions:
        txn.put_meta(position_key(name), _u64(position))
    for item in batch.dead_letters:
        txn.put_dead_letter(_dead_letter(item))
    return results


_count_lock = threading.Lock()


class Store(ABC):
    """What the service needs from durable storage. See the module docstring."""

    #: snapshots that failed their checksum when read (each was returned as None)
    corrupt_snapshots: int = 0

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
    def snapshot_record(self, stream: str) -> bytes | None:
        """The stored snapshot record, unchecked (``snapshot`` is the checked read)."""

    def snapshot(self, stream: str) -> tuple[int, bytes] | None:
        """(seq, state) of the stream's snapshot; None when absent or failing its checksum."""
        record = self.snapshot_record(stream)
        if record is None:
            return None
        try:
            return decode_snapshot(record)
        except StoreError as exc:
            with _count_lock:
                self.corrupt_snapshots += 1
            _warn.warning("snapshot of stream %r is unusable (%s); rebuilding it from the "
                          "journal", stream, exc)
            return None

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

    @abstractmethod
    def head(self) -> int:
        """The global position of the last committed entry (0 for an empty store)."""

    def position(self, name: str) -> int:
        """The position stored for projection ``name`` (``WriteBatch.positions``), 0 if none."""
        raw = self.meta(position_key(name))
        return int.from_bytes(raw, "big") if raw else 0

    @abstractmethod
    def dead_letters(self, limit: int | None = None) -> Iterator[dict]:
        """Dead letters oldest first, at most ``limit``: dicts of position, stream,
        projection, error, at."""

    @abstractmethod
    def dead_letter_count(self) -> int: ...

    def close(self) -> None:  # noqa: B027
        """Release resources; the default has none."""


# ------------------------------------------------------------------ memory


class _MemoryTxn(_Txn):
    """Staged writes, published at the end. Erased entries become None in the journal
    lists and the log (list index = seq - 1 and gseq - 1), so positions stay as stored."""

    def __init__(self, store: "MemoryStore"):
        self.s = store
        self.ids: set[tuple[str, str]] = set()
        self.unids: set[tuple[str, str]] = set()          # stored ids erased
        self.heads: dict[str, int] = {}
        self.entries: list[list] = []                     # [stream, seq, bytes or None]
        self.items: dict[str, dict] = {}
        self.attrs: dict[str, dict | None] = {}           # None: erased
        self.snapshots: dict[str, bytes | None] = {}      # None: erased
        self.meta: dict[str, bytes] = {}
        self.dead: list[dict] = []
        self.erased: set[tuple[str, int]] = set()         # stored (stream, seq) erased
        self.erased_gseqs: set[int] = set()
        self.undead: set[str] = set()                     # streams whose dead letters go
        self.gseq = store._gseq

    def id_exists(self, stream, event_id):
        key = (stream, event_id)
        return key in self.ids or (key in self.s._ids and key not in self.unids)

    def last_seq(self, stream):
        return self.heads.get(stream) or len(self.s._journal.get(stream, ()))

    def next_gseq(self):
        self.gseq += 1
        return self.gseq

    def item_tags(self, item):
        record = self.items.get(item) or self.s._items.get(item)
        return tuple(record.get("tags") or ()) if record else ()

    def item_record(self, item):
        return self.items.get(item) or self.s._items.get(item)

    def put_event(self, entry):
        self.ids.add((entry.stream, entry.event["id"]))
        self.heads[entry.stream] = entry.seq
        self.entries.append([entry.stream, entry.seq, entry.encode()])  # bytes, like LMDB

    def put_item(self, item, record):
        self.items[item] = record

    def put_user_attrs(self, user, attrs):
        self.attrs[user] = attrs

    def snapshot_record(self, stream):
        if stream in self.snapshots:
            return self.snapshots[stream]
        return self.s._snapshots.get(stream)

    def stream_entries(self, stream):
        stored = [StoredEvent.decode(data) for seq, data in
                  enumerate(self.s._journal.get(stream, ()), 1)
                  if data is not None and (stream, seq) not in self.erased]
        staged = [StoredEvent.decode(row[2]) for row in self.entries
                  if row[0] == stream and row[2] is not None]
        return stored + staged

    def first_seq(self, stream):
        for seq, data in enumerate(self.s._journal.get(stream, ()), 1):
            if data is not None and (stream, seq) not in self.erased:
                return seq
        return next((row[1] for row in self.entries if row[0] == stream and row[2] is not None),
                    0)

    def delete_entry(self, entry):
        key = (entry.stream, entry.event["id"])
        for row in self.entries:
            if row[0] == entry.stream and row[1] == entry.seq and row[2] is not None:
                row[2] = None                               # staged in this transaction
                self.ids.discard(key)
                return
        self.erased.add((entry.stream, entry.seq))
        self.erased_gseqs.add(entry.gseq)
        self.unids.add(key)

    def delete_snapshot(self, stream):
        self.snapshots[stream] = None

    def delete_user_attrs(self, user):
        had = self.attrs[user] is not None if user in self.attrs else user in self.s._attrs
        self.attrs[user] = None
        return had

    def delete_dead_letters(self, stream):
        self.dead = [d for d in self.dead if _unpack(d)["stream"] != stream]
        self.undead.add(stream)

    def put_snapshot(self, stream, record):
        self.snapshots[stream] = record

    def put_meta(self, key, value):
        self.meta[key] = value

    def put_dead_letter(self, record):
        self.dead.append(msgpack.packb(record))

    def publish(self):
        s = self.s
        s._ids -= self.unids
        s._ids |= self.ids
        for stream, seq in self.erased:
            s._journal[stream][seq - 1] = None
        for gseq in self.erased_gseqs:
            s._log[gseq - 1] = None
        for stream, seq, data in self.entries:
            journal = s._journal.setdefault(stream, [])
            journal.extend([None] * (seq - 1 - len(journal)))   # a restored stream's gaps
            journal.append(data)
            s._log.append(data)
        s._items.update(self.items)
        _update(s._attrs, self.attrs)
        _update(s._snapshots, self.snapshots)
        s._meta.update(self.meta)
        if self.undead:
            s._dead = [d for d in s._dead if _unpack(d)["stream"] not in self.undead]
        s._dead.extend(self.dead)
        s._gseq = self.gseq


def _update(target: dict, changes: dict) -> None:
    """``target.update(changes)`` where a None value deletes the key."""
    for key, value in changes.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value


class MemoryStore(Store):
    """Dict-backed store with the same rules as LmdbStore (not durable)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._ids: set[tuple[str, str]] = set()
        self._journal: dict[str, list[bytes]] = {}
        self._log: list[bytes] = []
        self._items: dict[str, dict] = {}
        self._attrs: dict[str, dict] = {}
        self._snapshots: dict[str, bytes] = {}
        self._meta: dict[str, bytes] = {}
        self._dead: list[bytes] = []
        self._gseq = 0

    def commit(self, batch):
        with self._lock:
            txn = _MemoryTxn(self)
            results = _apply_batch(txn, batch)
            txn.publish()
            return results

    def read(self, stream, after_seq=0):
        with self._lock:
            entries = [e for e in self._journal.get(stream, ())[after_seq:] if e is not None]
        return map(StoredEvent.decode, entries)

    def read_all(self, after_gseq=0):
        with self._lock:
            entries = [e for e in self._log[after_gseq:] if e is not None]
        return map(StoredEvent.decode, entries)

    def last_seq(self, stream):
        with self._lock:
            return len(self._journal.get(stream, ()))

    def streams(self):
        with self._lock:
            return iter(sorted(self._journal))

    def snapshot_record(self, stream):
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

    def head(self):
        with self._lock:
            return self._gseq

    def dead_letters(self, limit=None):
        with self._lock:
            records = self._dead[:limit]
        return map(_unpack, records)

    def dead_letter_count(self):
        with self._lock:
            return len(self._dead)


# -------------------------------------------------------------------- LMDB


STORE_FORMAT = 2
FORMAT_KEY = b"store_format"
_MAX_KEY = 511                    # LMDB's default maximum key size


def _u64(n: int) -> bytes:
    return n.to_bytes(8, "big")


def _skey(stream: str) -> bytes:
    """Key of a stream in heads/snapshots (LMDB keys may not be empty)."""
    return b"s" + stream.encode("utf-8")


def _journal_key(stream: str, seq: int) -> bytes:
    return stream.encode("utf-8") + b"\x00" + _u64(seq)


def id_key(stream: str, event_id: str) -> bytes:
    """Key of an event id in the id index (format 2): every key of a stream starts
    with ``stream NUL``; ids never contain NUL, so a hashed long id cannot collide."""
    prefix = stream.encode("utf-8") + b"\x00"
    raw = event_id.encode("utf-8")
    if len(prefix) + len(raw) <= _MAX_KEY:
        return prefix + raw
    return prefix + b"\x00" + hashlib.blake2b(raw, digest_size=32).digest()


_pack = msgpack.Packer(use_bin_type=True).pack


def _unpack(data: bytes):
    return msgpack.unpackb(data, raw=False)


class _LmdbTxn(_Txn):
    def __init__(self, store: "LmdbStore", txn: lmdb.Transaction):
        self.s = store
        self.txn = txn
        self.gseq = int.from_bytes(txn.get(b"gseq", db=store._meta) or _u64(0), "big")
        self.tag_updates: dict[str, tuple[str, ...]] = {}
        self.next_dead: int | None = None

    def id_exists(self, stream, event_id):
        return self.txn.get(id_key(stream, event_id), db=self.s._ids) is not None

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

    def item_record(self, item):
        raw = self.txn.get(item.encode("utf-8"), db=self.s._items)    # sees this txn's writes
        return _unpack(raw) if raw else None

    def put_event(self, entry):
        key = _journal_key(entry.stream, entry.seq)
        self.txn.put(key, entry.encode(), db=self.s._journal)
        self.txn.put(id_key(entry.stream, entry.event["id"]), key, db=self.s._ids)
        self.txn.put(_u64(entry.gseq), key, db=self.s._log)
        self.txn.put(_skey(entry.stream), _u64(entry.seq), db=self.s._heads)

    def put_item(self, item, record):
        self.txn.put(item.encode("utf-8"), _pack(record), db=self.s._items)
        self.tag_updates[item] = tuple(record.get("tags") or ())

    def put_user_attrs(self, user, attrs):
        self.txn.put(user.encode("utf-8"), _pack(attrs), db=self.s._attrs)

    def snapshot_record(self, stream):
        return self.txn.get(_skey(stream), db=self.s._snapshots)

    def put_snapshot(self, stream, record):
        self.txn.put(_skey(stream), record, db=self.s._snapshots)

    def put_meta(self, key, value):
        self.txn.put(key.encode("utf-8"), value, db=self.s._meta)

    def put_dead_letter(self, record):
        if self.next_dead is None:
            cursor = self.txn.cursor(db=self.s._dead)
            self.next_dead = int.from_bytes(cursor.key(), "big") + 1 if cursor.last() else 1
        self.txn.put(_u64(self.next_dead), _pack(record), db=self.s._dead)
        self.next_dead += 1

    def stream_entries(self, stream):
        prefix = stream.encode("utf-8") + b"\x00"
        cursor = self.txn.cursor(db=self.s._journal)
        out = []
        if cursor.set_range(prefix):
            for key, value in cursor:
                if not key.startswith(prefix):
                    break
                out.append(StoredEvent.decode(value))
        return out

    def first_seq(self, stream):
        prefix = stream.encode("utf-8") + b"\x00"
        cursor = self.txn.cursor(db=self.s._journal)
        if cursor.set_range(prefix) and cursor.key().startswith(prefix):
            return int.from_bytes(cursor.key()[-8:], "big")
        return 0

    def delete_entry(self, entry):
        self.txn.delete(_journal_key(entry.stream, entry.seq), db=self.s._journal)
        self.txn.delete(id_key(entry.stream, entry.event["id"]), db=self.s._ids)
        self.txn.delete(_u64(entry.gseq), db=self.s._log)

    def delete_snapshot(self, stream):
        self.txn.delete(_skey(stream), db=self.s._snapshots)

    def delete_user_attrs(self, user):
        return self.txn.delete(user.encode("utf-8"), db=self.s._attrs)

    def delete_dead_letters(self, stream):
        cursor = self.txn.cursor(db=self.s._dead)
        doomed = [key for key, value in cursor if _unpack(value)["stream"] == stream]
        for key in doomed:
            self.txn.delete(key, db=self.s._dead)

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


# -- the LMDB file header (lmdb 0.9, mdb.c): checked before mapping the file

_MDB_MAGIC = 0xBEEFC0DE
_MDB_DATA_VERSION = 1
_PAGE_SIZES = frozenset(1 << n for n in range(9, 17))
# A meta page: page header (16 bytes: mp_pgno 8, mp_pad 2, mp_flags 2, lower/upper 4), then
# MDB_meta: mm_magic 4, mm_version 4, mm_address 8, mm_mapsize 8, mm_dbs[2] (48 bytes each;
# the free DB's md_pad holds the page size), mm_last_pg 8, mm_txnid 8. Native byte order.
_META_HEAD = struct.Struct("=II")           # at 16: magic, version
_META_PSIZE = struct.Struct("=I")           # at 40: mm_dbs[FREE_DBI].md_pad
_META_TAIL = struct.Struct("=QQ")           # at 136: mm_last_pg, mm_txnid
_META_BYTES = 152


def _read_meta(fh, offset: int) -> tuple[int, int, int] | None:
    """(page size, last page number, txn id) of the meta page at ``offset``, None if not one."""
    fh.seek(offset)
    page = fh.read(_META_BYTES)
    if len(page) < _META_BYTES:
        return None
    magic, version = _META_HEAD.unpack_from(page, 16)
    if magic != _MDB_MAGIC or version != _MDB_DATA_VERSION:
        return None
    (psize,) = _META_PSIZE.unpack_from(page, 40)
    last_pg, txnid = _META_TAIL.unpack_from(page, 136)
    return psize, last_pg, txnid


def check_data_file(path: str | Path) -> None:
    """Refuse an LMDB data file its own header contradicts: mapping a file shorter than
    the pages it claims dies with SIGBUS on the first read past its end."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            return                                   # a new environment
        with path.open("rb") as fh:
            first = _read_meta(fh, 0)
            second = _read_meta(fh, first[0]) if first and first[0] in _PAGE_SIZES else None
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"cannot read the LMDB file {path}: {exc.strerror or exc}") from exc
    if first is None or first[0] not in _PAGE_SIZES:
        raise StoreError(f"{path} is damaged or not an LMDB data file (its header is unreadable);"
                         f" refusing to open it")
    psize, last_pg, _ = max((m for m in (first, second) if m), key=lambda m: m[2])
    needed = (last_pg + 1) * psize
    if size < needed:
        raise StoreError(f"{path} is truncated: its header records {last_pg + 1} pages of "
                         f"{psize} bytes ({needed} bytes) but the file has {size} bytes; "
                         f"refusing to map it (restore the data directory from a backup)")


def _scoped_id(key: bytes, value: bytes):
    """Format 1 -> 2: a bare id key moves under the stream of the journal key it points to."""
    if b"\x00" in key:
        return None                                  # already format 2
    return id_key(value[:-9].decode("utf-8"), key.decode("utf-8")), value


def _checked_snapshot(key: bytes, value: bytes):
    """Format 1 -> 2: snapshots without a checksum are dropped (rebuilt from the journal)."""
    return None if value[8:12] == SNAPSHOT_MAGIC else ()


def _errno(exc: BaseException) -> int | None:
    if isinstance(exc, OSError):
        return exc.errno
    if "No space left on device" in str(exc):
        return errno.ENOSPC
    return getattr(exc, "code", None)


class LmdbStore(Store):
    """The durable store: one LMDB environment in ``path``.

    ``lock``, when given (``open_store`` does), is released by ``close()``.
    """

    REWRITE_CHUNK = 20000             # entries changed per transaction by a format upgrade

    def __init__(self, path: str | Path, *, map_size_mb: int = 256,
                 max_map_size_mb: int = 65536, sync: bool = True,
                 lock: DataDirLock | None = None):
        self.path = str(path)
        self.max_map_size = max_map_size_mb << 20
        self._lock_file = lock
        self._closed = False
        self._tags_cache: dict[str, tuple[str, ...]] = {}
        self._write_lock = threading.Lock()
        self._resize = _ResizeLock()
        self.env = self._open(Path(path), map_size_mb << 20, sync)
        try:
            names = ("journal", "ids", "log", "heads", "snapshots", "items", "attrs", "meta",
                     "dead")
            for name in names:
                setattr(self, "_" + name, self.env.open_db(name.encode()))
            self._upgrade()
        except lmdb.Error as exc:
            self.env.close()
            raise StoreError(f"cannot open LMDB store at {path}: {exc}") from exc
        except BaseException:
            self.env.close()
            raise

    @staticmethod
    def _open(path: Path, map_size: int, sync: bool) -> lmdb.Environment:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the store folder {path}: {exc.strerror}") from exc
        check_data_file(path / "data.mdb")
        try:
            env = lmdb.open(str(path), map_size=map_size, max_dbs=16, sync=sync,
                            metasync=sync, readahead=False, max_readers=512)
            env.set_mapsize(max(env.info()["map_size"], map_size))
        except lmdb.Error as exc:
            raise StoreError(f"cannot open LMDB store at {path}: {exc}") from exc
        return env

    # -- format upgrade

    def _upgrade(self) -> None:
        raw = self._get(self._meta, FORMAT_KEY)
        version = int.from_bytes(raw, "big") if raw else 1
        if version > STORE_FORMAT:
            raise StoreError(f"the store at {self.path} has format {version}; this build reads "
                             f"format {STORE_FORMAT} and older")
        if version == STORE_FORMAT:
            return
        ids = self._rewrite(self._ids, _scoped_id)
        dropped = self._rewrite(self._snapshots, _checked_snapshot)
        self._with_growth(lambda: self._put_raw_meta(FORMAT_KEY, _u64(STORE_FORMAT)))
        if ids or dropped:
            logger.warning("upgraded the store at %s to format %d: %d event ids scoped to their "
                           "stream, %d snapshots without checksum dropped (rebuilt from the "
                           "journal)", self.path, STORE_FORMAT, ids, dropped)

    def _put_raw_meta(self, key: bytes, value: bytes) -> None:
        with self._resize, self.env.begin(write=True, db=self._meta) as txn:
            txn.put(key, value)

    def _rewrite(self, db, convert: Callable) -> int:
        """Apply ``convert(key, value)`` to every entry of ``db``: None keeps it, () deletes
        it, (key, value) replaces it; one write transaction per ``REWRITE_CHUNK`` changes."""
        changed, resume, chunk = 0, None, self.REWRITE_CHUNK
        while True:
            todo = self._with_growth(lambda: self._rewrite_chunk(db, convert, resume, chunk))
            changed += len(todo)
            if len(todo) < chunk:
                return changed
            resume = todo[-1][0]

    def _rewrite_chunk(self, db, convert, resume: bytes | None, chunk: int) -> list:
        with self._resize, self.env.begin(write=True, db=db) as txn:
            cursor = txn.cursor()
            found = cursor.set_range(resume) if resume else cursor.first()
            todo = []
            while found and len(todo) < chunk:
                change = convert(cursor.key(), cursor.value())
                if change is not None:
                    todo.append((cursor.key(), change))
                found = cursor.next()
            for key, change in todo:
                txn.delete(key)
                if change:
                    txn.put(*change)
        return todo

    # -- writes

    def commit(self, batch):
        with self._write_lock:
            try:
                return self._with_growth(lambda: self._commit_once(batch))
            except (lmdb.Error, OSError) as exc:
                raise self._commit_error(exc) from exc

    def _commit_once(self, batch):
        with self._resize, self.env.begin(write=True) as txn:
            ltxn = _LmdbTxn(self, txn)
            results = _apply_batch(ltxn, batch)
            ltxn.finish()
        self._tags_cache.update(ltxn.tag_updates)
        return results

    def _with_growth(self, fn):
        """``fn()``, growing the map and calling it again each time LMDB reports it full."""
        while True:
            try:
                return fn()
            except lmdb.MapFullError:
                self._grow()

    def _grow(self):
        current = self.env.info()["map_size"]
        if current >= self.max_map_size:
            raise StoreFull(f"LMDB map is full at {current >> 20} MiB and may not grow past "
                            f"max_map_size_mb={self.max_map_size >> 20}; the batch was not written")
        new_size = min(current * 2, self.max_map_size)
        self._resize.exclusive(lambda: self.env.set_mapsize(new_size))

    def _free_bytes(self) -> int | None:
        try:
            st = os.statvfs(self.path)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def _commit_error(self, exc: BaseException) -> InterestError:
        """ENOSPC (or LMDB's short write, EIO, on a full disk) is ``DiskFull``."""
        code = _errno(exc)
        free = self._free_bytes()
        nearly_full = free is not None and free < (4 << 20)
        if code == errno.ENOSPC or isinstance(exc, lmdb.DiskError) or \
                (code == errno.EIO and nearly_full):
            shown = f"{free} bytes free" if free is not None else "free space unknown"
            return DiskFull(f"no space left on device for the store at {self.path} ({shown}); "
                            f"the batch was not written")
        return StoreError(f"LMDB commit failed: {exc}")

    # -- reads

    @contextmanager
    def _reading(self, db=None):
        try:
            with self._resize, self._begin_read(db) as txn:
                yield txn
        except lmdb.Error as exc:
            raise StoreError(f"LMDB read failed at {self.path}: {exc}") from exc

    def _begin_read(self, db):
        """A read transaction. A reader in another process (the model learner) sees the
        writer's map growth as MapResizedError: adopt the new size and begin again (that
        process reads from one thread, so no transaction of its own is open)."""
        try:
            return self.env.begin(db=db, buffers=False)
        except lmdb.MapResizedError:
            self.env.set_mapsize(0)
            return self.env.begin(db=db, buffers=False)

    def _get(self, db, key: bytes):
        with self._reading(db) as txn:
            return txn.get(key)

    def read(self, stream, after_seq=0):
        prefix = stream.encode("utf-8") + b"\x00"
        with self._reading(self._journal) as txn:
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
            with self._reading() as txn:
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
        with self._reading(self._heads) as txn:
            keys = [key[1:].decode("utf-8") for key in txn.cursor().iternext(values=False)]
        return iter(keys)

    def snapshot_record(self, stream):
        return self._get(self._snapshots, _skey(stream))

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
        with self._reading(db) as txn:
            out = [(k.decode("utf-8"), _unpack(v)) for k, v in txn.cursor()]
        return iter(out)

    def meta(self, key):
        return self._get(self._meta, key.encode("utf-8"))

    def head(self):
        raw = self._get(self._meta, b"gseq")
        return int.from_bytes(raw, "big") if raw else 0

    def dead_letters(self, limit=None):
        with self._reading(self._dead) as txn:
            out = [_unpack(v) for _, v in itertools.islice(txn.cursor(), limit)]
        return iter(out)

    def dead_letter_count(self):
        with self._reading() as txn:
            return txn.stat(self._dead)["entries"]

    def info(self) -> dict:
        info = self.env.info()
        return {"map_size_mb": info["map_size"] >> 20, "path": self.path}

    def close(self):
        """Close once no commit or read is running; then release the data directory lock."""
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            self._resize.exclusive(self.env.close)
        if self._lock_file is not None:
            self._lock_file.release()


def open_store(config: dict, data_dir: str | Path) -> LmdbStore:
    """The store a service uses: LMDB under ``data_dir/journal``, holding ``data_dir/LOCK``
    (``DataDirLocked`` if another process has it) until ``close()``."""
    cfg = config["store"]
    lock = DataDirLock(data_dir).acquire()
    try:
        return LmdbStore(Path(data_dir) / "journal", map_size_mb=cfg["map_size_mb"],
                         max_map_size_mb=cfg["max_map_size_mb"], sync=cfg["sync"], lock=lock)
    except BaseException:
        lock.release()
        raise
