"""Reading and writing event files: JSON lines, msgpack streams, MovieLens-100K folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import msgpack

from interest.engine import movielens


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "movielens"
    if path.suffix in (".msgpack", ".mpk", ".log"):
        return "msgpack"
    return "jsonl"


def read_events(path: str | Path, fmt: str = "auto") -> Iterator[dict]:
    """Every event map in the file (or MovieLens folder), in file order."""
    path = Path(path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "movielens":
        yield from movielens.load(path).events()
    elif fmt == "msgpack":
        with path.open("rb") as fh:
            for obj in msgpack.Unpacker(fh, raw=False):
                yield from (obj if isinstance(obj, list) else [obj])
    elif fmt == "jsonl":
        with path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path}:{number}: not JSON: {exc}") from exc
    else:
        raise ValueError(f"unknown format {fmt!r}: expected jsonl, msgpack or movielens")


def count_events(path: str | Path, fmt: str = "auto") -> int | None:
    path = Path(path)
    if (detect_format(path) if fmt == "auto" else fmt) == "jsonl":
        with path.open(encoding="utf-8") as fh:
            return sum(1 for line in fh if line.strip())
    return None


def write_events(path: str | Path, events, fmt: str = "auto") -> int:
    path = Path(path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    n = 0
    if fmt == "msgpack":
        packer = msgpack.Packer(use_bin_type=True)
        with path.open("wb") as fh:
            for event in events:
                fh.write(packer.pack(event))
                n += 1
    else:
        with path.open("w", encoding="utf-8") as fh:
            for event in events:
                fh.write(json.dumps(event, ensure_ascii=False) + "\n")
                n += 1
    return n
