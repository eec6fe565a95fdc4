"""Reading and writing event files: JSON lines, msgpack streams, CSV, MovieLens-100K folders.

CSV (``.csv``, ``.tsv``): a header row names the columns; ``CsvMapping`` says
which column holds which event key (``user=user_id,item=movie,ts=timestamp``;
by default a column named like an event key is that key) and which keys are
fixed for every row (``type=rate``). ``ts`` and ``value`` become numbers
(``ts`` may also be ISO 8601; without a zone it is UTC), ``tags`` splits on
``|``, ``v`` defaults to 1. Without an ``id`` column each event gets
``csv-`` + a hash of its mapped fields, so publishing the same file twice
gives duplicates, not new events. A cell that does not convert is sent as
it is, and the service rejects that event with its reason.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import msgpack

from interest.engine import movielens
from interest.tools.options import InputError

FORMATS = ("auto", "jsonl", "msgpack", "csv", "movielens")
EVENT_KEYS = ("v", "id", "type", "ts", "user", "item", "value", "query", "title", "tags", "text")


@dataclass(frozen=True)
class CsvMapping:
    columns: dict = field(default_factory=dict)     # event key -> CSV column name
    fixed: dict = field(default_factory=dict)       # event key -> value for every row
    delimiter: str | None = None                    # None: tab for .tsv, else comma


def parse_csv_map(text: str | None) -> dict:
    """``"user=user_id,item=movie"`` -> ``{"user": "user_id", "item": "movie"}``."""
    columns = {}
    for pair in filter(None, (p.strip() for p in (text or "").split(","))):
        key, sep, column = pair.partition("=")
        if not sep or not key.strip() or not column.strip():
            raise InputError(f"--csv-map: expected KEY=COLUMN, got {pair!r}")
        columns[key.strip()] = column.strip()
    return columns


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "movielens"
    if path.suffix in (".msgpack", ".mpk", ".log"):
        return "msgpack"
    if path.suffix in (".csv", ".tsv"):
        return "csv"
    return "jsonl"


def read_events(path: str | Path, fmt: str = "auto",
                mapping: CsvMapping | None = None) -> Iterator[dict]:
    """Every event map in the file (or MovieLens folder), in file order."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"no such file or folder: {path}")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt != "movielens" and path.is_dir():
        raise InputError(f"{path} is a folder; only a MovieLens-100K folder (u.data, u.item, "
                         "u.user) can be published as one")
    if fmt == "movielens":
        missing = [name for name in ("u.data", "u.item", "u.user") if not (path / name).is_file()]
        if missing:
            raise InputError(f"{path} is a folder but not a MovieLens-100K one: no "
                             f"{', '.join(missing)}")
        yield from movielens.load(path).events()
    elif fmt == "csv":
        yield from read_csv(path, mapping or CsvMapping())
    elif fmt == "msgpack":
        with path.open("rb") as fh:
            try:
                for obj in msgpack.Unpacker(fh, raw=False):
                    yield from (obj if isinstance(obj, list) else [obj])
            except (msgpack.exceptions.UnpackException, ValueError) as exc:
                raise InputError(f"{path}: not a msgpack stream of events "
                                 f"({str(exc) or type(exc).__name__})") from exc
    elif fmt == "jsonl":
        with path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise InputError(f"{path}:{number}: not JSON: {exc}") from exc
    else:
        raise InputError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS[1:])}")


def count_events(path: str | Path, fmt: str = "auto", mapping: CsvMapping | None = None) -> int:
    """How many events ``read_events`` gives; reading the whole file once finds a bad line
    (not JSON, not msgpack, a missing CSV column) before anything is sent."""
    return sum(1 for _ in read_events(path, fmt, mapping))


def read_csv(path: Path, mapping: CsvMapping) -> Iterator[dict]:
    delimiter = mapping.delimiter or ("\t" if path.suffix == ".tsv" else ",")
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        header = reader.fieldnames
        if not header:
            raise InputError(f"{path}: empty, no header row")
        columns = mapping.columns or {k: k for k in EVENT_KEYS if k in header}
        missing = [c for c in columns.values() if c not in header]
        if missing:
            raise InputError(f"{path}: no column {missing[0]!r}; the header has "
                             f"{', '.join(header)}")
        if not columns:
            raise InputError(f"{path}: no column is named like an event key "
                             f"({', '.join(EVENT_KEYS)}); give --csv-map KEY=COLUMN,...")
        for row in reader:
            yield csv_event(row, columns, mapping.fixed)


def csv_event(row: dict, columns: dict, fixed: dict) -> dict:
    """One CSV row as an event map (see the module's notes)."""
    event = {"v": 1, **fixed}
    for key, column in columns.items():
        cell = row.get(column)
        if cell is not None and cell != "":
            event[key] = _convert(key, cell)
    if "id" not in event:
        digest = hashlib.sha1(json.dumps(event, sort_keys=True, default=str).encode())
        event["id"] = "csv-" + digest.hexdigest()[:20]
    return event


def _convert(key: str, cell: str):
    try:
        if key == "v":
            return int(cell)
        if key == "value":
            return float(cell)
        if key == "ts":
            return _timestamp(cell)
    except ValueError:
        return cell                 # sent as is: the service rejects it, with its reason
    if key == "tags":
        return [tag.strip() for tag in cell.split("|") if tag.strip()]
    return cell


def _timestamp(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        when = datetime.fromisoformat(cell)
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return when.timestamp()


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
