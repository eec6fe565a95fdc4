"""msgpack on the wire and in the store, kept apart from the domain.

* ``decode_frame`` / ``encode_frame``: one wire message, with the size limit.
* ``StoredEvent``: the envelope a journal entry is stored in. It wraps the
  event's wire map with what the store knows about it: the stream (user id,
  or ``""`` for the catalog stream), its per-stream sequence number, its
  global commit position, when it was recorded, and the enrichment the fold
  needs (the item's tags at the time), so that replay never depends on a
  catalog that has changed since.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from engine.errors import DecodeError, StoreError

ENVELOPE_VERSION = 1
CATALOG_STREAM = ""


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
        return msgpack.packb(
            {"s": ENVELOPE_VERSION, "stream": self.stream, "seq": self.seq,
             "gseq": self.gseq, "at": self.recorded_at, "e": self.event,
             "tags": list(self.tags)},
            use_bin_type=True,
        )

    @classmethod
    def decode(cls, data: bytes) -> "StoredEvent":
        try:
            obj = msgpack.unpackb(data, raw=False)
        except (ValueError, msgpack.UnpackException) as exc:
            raise StoreError(f"corrupt journal entry: {exc}") from exc
        version = obj.get("s")
        if version != ENVELOPE_VERSION:
            raise StoreError(f"journal entry has envelope version {version!r}, "
                             f"this build reads {ENVELOPE_VERSION}")
        return cls(stream=obj["stream"], seq=obj["seq"], gseq=obj["gseq"],
                   recorded_at=obj["at"], event=obj["e"], tags=tuple(obj["tags"]))
