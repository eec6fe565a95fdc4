"""Which partition owns a user, and where each partition's data lives.

A partitioned data directory ``DIR`` holds ``DIR/partitions.json``
(``{"format": 1, "partitions": N, "hash": "crc32-utf8"}``, written once when
the directory is created) and one directory per partition, ``DIR/p0`` ..
``DIR/p{N-1}``, each an ordinary single-partition data directory (its own
LMDB log, snapshots, projections). A directory without ``partitions.json`` is
an ordinary, unpartitioned one.

A user belongs to partition ``crc32(user id as UTF-8) mod N``: stable across
processes, hosts, Python versions and restarts (Python's own ``hash`` of a
string is salted per process, so it cannot be used). Catalog events (items)
go to every partition.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

from interest.engine.errors import ConfigError

LAYOUT_FILE = "partitions.json"
HASH_NAME = "crc32-utf8"
FORMAT = 1


def partition_of(user: str, partitions: int) -> int:
    """The partition (0 .. partitions-1) that owns ``user``."""
    return zlib.crc32(user.encode("utf-8")) % partitions


def partition_dir(data_dir: str | Path, index: int) -> Path:
    """Where partition ``index`` keeps its data."""
    return Path(data_dir) / f"p{index}"


def read_layout(data_dir: str | Path) -> int | None:
    """The partition count recorded in ``data_dir``, or None for an unpartitioned one."""
    path = Path(data_dir) / LAYOUT_FILE
    try:
        layout = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable partition layout: {e}") from e
    if layout.get("format") != FORMAT or layout.get("hash") != HASH_NAME \
            or not isinstance(layout.get("partitions"), int) or layout["partitions"] < 1:
        raise ConfigError(f"{path}: not a partition layout this version understands: {layout!r}")
    return layout["partitions"]


def ensure_layout(data_dir: str | Path, partitions: int) -> int:
    """Record ``partitions`` in a new ``data_dir``; for an existing one, check it matches.

    The count is fixed when the directory is created: changing it is
    ``interest replay repartition``, never a restart with another number.
    """
    data_dir = Path(data_dir)
    recorded = read_layout(data_dir)
    if recorded is not None:
        if recorded != partitions:
            raise ConfigError(
                f"{data_dir} holds {recorded} partitions, not {partitions}: use "
                f"`interest replay repartition --data {data_dir} --to {partitions} --out NEW_DIR`")
        return recorded
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / (LAYOUT_FILE + ".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "partitions": partitions, "hash": HASH_NAME}) + "\n")
    os.replace(tmp, data_dir / LAYOUT_FILE)
    return partitions
