"""Files that must be whole or rejected: a checked header, and an atomic, durable replace.

``write_checked(path, data)`` writes::

    magic (8 bytes, b"INTCHK01") | length (8 bytes, big-endian) | crc32 (4 bytes, big-endian) | data

to a temporary file in the same folder, flushes and fsyncs it, renames it over
``path`` and fsyncs the folder, so after a crash ``path`` holds either the old
file or the new one. ``read_checked(path)`` returns ``data`` or raises
``CorruptFile`` when the magic, the length or the checksum is wrong (a
missing file is the usual ``FileNotFoundError``).
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

from interest.engine.errors import CorruptFile

MAGIC = b"INTCHK01"
HEADER_BYTES = len(MAGIC) + 8 + 4


def _header(data: bytes) -> bytes:
    return MAGIC + len(data).to_bytes(8, "big") + zlib.crc32(data).to_bytes(4, "big")


def fsync_dir(folder: str | Path) -> None:
    """Make a rename or a new file in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checked(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` behind a checked header, atomically and durably."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as fh:
            fh.write(_header(data))
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def read_checked(path: str | Path) -> bytes:
    """The data ``write_checked`` wrote to ``path``; ``CorruptFile`` if it fails a check."""
    raw = Path(path).read_bytes()
    if len(raw) < HEADER_BYTES or not raw.startswith(MAGIC):
        raise CorruptFile(f"{path}: not a checked file (bad magic or header)")
    length = int.from_bytes(raw[8:16], "big")
    data = raw[HEADER_BYTES:]
    if len(data) != length:
        raise CorruptFile(f"{path}: truncated or extended: header says {length} bytes, "
                          f"file has {len(data)}")
    if zlib.crc32(data).to_bytes(4, "big") != raw[16:20]:
        raise CorruptFile(f"{path}: checksum mismatch")
    return data
