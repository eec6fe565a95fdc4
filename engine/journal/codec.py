"""msgpack on the wire and in the store, kept apart from the domain.

* ``decode_frame`` / ``encode_frame``: one wire message, with the size limit.
* ``StoredEvent``: the envelope a journal entry is stored in. It wraps the
  event's wire map with what the store knows about it: the stream (user id,
  or ``""`` for the catalog stream), its per-stream sequence number, its
  global commit position, when it was recorded, and the enrichment the fold
  needs (the item's tags at the time), so that replay never depends on a
  catalog that has changed since.
* ``encode_snapshot`` / ``decode_snapshot``: a stored snapshot record, its
  sequence number and a crc32 over both, so a flipped byte is detected.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import msgpack

from interest.engine.errors import DecodeError, StoreError

ENVELOPE_VERSION = 1
CATALOG_STREAM = ""
#: After the 8-byte seq of a snapshot record. 0xc1 never starts msgpack, so a
#: snapshot written before checksums (seq + msgpack state) never passes for one.
SNAPSHOT_MAGIC = b"\xc1SN1"


def decode_frame(frame: bytes, max_bytes: int) -> object:
    """Decode one wire frame, refusing anything larger than ``max_bytes``."""
    if len(frame) > max_bytes:
        raise DecodeError(f"message of {len(frame)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        return msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except msgpack.ExtraData as exc:
        raise DecodeError("message has trailing bytes after one msgpack object") from exc
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise DecodeError(f"message is not valid msgpack: {exc}") from exc


def encode_frame(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One journal entry: an event's wire map plus what the store knows of it."""

    stream: str
    seq: int
    gseq: int
    recorded_at: float
    event: dict
    tags: tuple[str, ...] = ()

    @property
    def type(self) -> str:
        return self.event["type"]

    def encode(self) -> bytes:
        try:
            return msgpack.packb(
                {"s": ENVELOPE_VERSION, "stream": self.stream, "seq": self.seq,
                 "gseq": self.gseq, "at": self.recorded_at, "e": self.event,
                 "tags": list(self.tags)},
                use_bin_type=True,
            )
        except (TypeError, ValueError, OverflowError) as exc:
            raise StoreError(f"cannot encode the journal entry of event "
                             f"{self.event.get('id')!r}: {exc}") from exc

    @classmethod
    def decode(cls, data: bytes) -> "StoredEvent":
        try:
            obj = msgpack.unpackb(data, raw=False)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise StoreError(f"corrupt journal entry: {exc}") from exc
        if not isinstance(obj, dict):
            raise StoreError(f"corrupt journal entry: a {type(obj).__name__}, not a map")
        version = obj.get("s")
        if version != ENVELOPE_VERSION:
            raise StoreError(f"journal entry has envelope version {version!r}, "
                             f"this build reads {ENVELOPE_VERSION}")
        try:
            return cls(stream=obj["stream"], seq=obj["seq"], gseq=obj["gseq"],
                       recorded_at=obj["at"], event=obj["e"], tags=tuple(obj["tags"]))
        except (KeyError, TypeError) as exc:
            raise StoreError(f"corrupt journal entry: missing or bad {exc}") from exc


def encode_snapshot(seq: int, state: bytes) -> bytes:
    """seq (8 bytes) + magic + crc32(seq + magic + state) (4 bytes) + state."""
    head = seq.to_bytes(8, "big") + SNAPSHOT_MAGIC
    return head + zlib.crc32(state, zlib.crc32(head)).to_bytes(4, "big") + state


def snapshot_seq(record: bytes) -> int:
    """The seq a snapshot record claims (unchecked; every format starts with it)."""
    return int.from_bytes(record[:8], "big")


def decode_snapshot(record: bytes) -> tuple[int, bytes]:
    """(seq, state) of a record from ``encode_snapshot``; StoreError if it fails its check."""
    head, crc, state = record[:12], record[12:16], record[16:]
    if len(record) < 16 or head[8:] != SNAPSHOT_MAGIC:
        raise StoreError("snapshot has no checksum header (damaged, or written before checksums)")
    if zlib.crc32(state, zlib.crc32(head)).to_bytes(4, "big") != crc:
        raise StoreError("snapshot fails its checksum")
    return snapshot_seq(record), state
