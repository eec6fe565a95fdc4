"""`interest replay`: the journal as the truth.

  check    rebuild every user's state from the journal alone and check it
           equals the stored snapshots (and snapshot + tail equals a full replay)
  export   write the journal as an event log (JSON lines or .msgpack), in commit order
  publish  re-publish a log to a running service (duplicates are ignored there)
  dead-letters  list the entries a projection could not apply (position, stream,
           projection, error, time), oldest first
  repartition  rebuild the store with N partitions from its logs, exactly
           (tools/repartition.py), from an ordinary or a partitioned directory

`check`, `export` and `dead-letters` on a partitioned directory
(engine.partitions.layout) go over every partition: one report per partition.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from interest.engine.journal.codec import CATALOG_STREAM
from interest.engine.config import load_config
from interest.engine.journal.events import DERIVED_TYPES
from interest.engine.projections.state import FoldParams, InterestState, replay
from interest.engine.errors import StoreError
from interest.engine.journal.store import LmdbStore, Store


def check(store: Store, params: FoldParams, progress: bool = True) -> dict:
    """Rebuild every user from the journal and compare with the stored snapshots.

    Corruption is reported, never a crash: a snapshot that fails its checksum or
    does not decode, a journal entry that does not decode, a journal that does
    not fold, each go to ``report["corrupt"]`` and the check goes on.
    """
    report = {"users": 0, "snapshots": 0, "entries": 0, "mismatches": [], "corrupt": []}
    try:
        users = [s for s in store.streams() if s != CATALOG_STREAM]
    except StoreError as exc:
        report["corrupt"].append({"what": "streams", "error": str(exc)})
        users = []
    report["users"] = len(users)
    for user in tqdm(users, unit="user", disable=not progress, file=sys.stderr):
        _check_user(store, user, params, report)
    report["ok"] = not report["mismatches"] and not report["corrupt"]
    return report


def _check_user(store: Store, user: str, params: FoldParams, report: dict) -> None:
    try:
        entries = list(store.read(user))
        full = replay(user, entries, params)
    except Exception as exc:  # noqa: BLE001 - a damaged journal is a finding
        report["corrupt"].append({"user": user, "what": "journal", "error": _describe(exc)})
        return
    report["entries"] += len(entries)
    snap = _stored_state(store, user, report)
    if snap is None:
        return
    seq, stored = snap
    # by seq, not by index: an erasure (`forget`) leaves a stream that starts past seq 1
    prefix = replay(user, [e for e in entries if e.seq <= seq], params)
    if stored != prefix:
        report["mismatches"].append({"user": user, "seq": seq, "what": "snapshot"})
    try:
        resumed = replay(user, [e for e in entries if e.seq > seq], params, state=stored)
    except Exception as exc:  # noqa: BLE001 - a snapshot that cannot be resumed
        report["corrupt"].append({"user": user, "seq": seq, "what": "snapshot",
                                  "error": _describe(exc)})
        return
    if resumed != full:
        report["mismatches"].append({"user": user, "seq": seq, "what": "snapshot+tail"})


def _stored_state(store: Store, user: str, report: dict) -> tuple[int, InterestState] | None:
    """(seq, state) of the user's snapshot; a bad one is recorded and gives None."""
    before = store.corrupt_snapshots
    try:
        snap = store.snapshot(user)
    except StoreError as exc:
        report["corrupt"].append({"user": user, "what": "snapshot", "error": str(exc)})
        return None
    if snap is None:
        if store.corrupt_snapshots > before:
            report["corrupt"].append({"user": user, "what": "snapshot",
                                      "error": "fails its checksum (or has none)"})
        return None
    report["snapshots"] += 1
    try:
        return snap[0], InterestState.decode(snap[1])
    except Exception as exc:  # noqa: BLE001 - an undecodable snapshot is a finding
        report["corrupt"].append({"user": user, "seq": snap[0], "what": "snapshot",
                                  "error": _describe(exc)})
        return None


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"


def export(store: Store, out: Path, include_derived: bool) -> int:
    from interest.tools.event_files import write_events  # noqa: PLC0415
    events = (e.event for e in store.read_all()
              if include_derived or e.event["type"] not in DERIVED_TYPES)
    return write_events(out, events)


def dead_letters(store: Store, limit: int | None) -> int:
    """One JSON line per entry a projection could not apply, then a count line."""
    n = 0
    for letter in store.dead_letters(limit):
        print(json.dumps(letter))
        n += 1
    print(json.dumps({"dead_letters": n, "total": store.dead_letter_count()}))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="interest replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    for name in ("check", "export", "dead-letters"):
        p = sub.add_parser(name)
        p.add_argument("--data", default="data", help="the service's data directory")
        p.add_argument("--config", help="TOML file overlaid on configs/default.toml")
    sub.choices["check"].add_argument("--no-progress", action="store_true",
                                      help="no progress bar")
    sub.choices["export"].add_argument("--out", required=True, help=".jsonl or .msgpack")
    sub.choices["export"].add_argument("--include-derived", action="store_true",
                                       help="also export the model's profile events")
    sub.choices["dead-letters"].add_argument("--limit", type=int, default=None,
                                             help="list at most this many (oldest first)")
    rep = sub.add_parser("repartition")
    rep.add_argument("--data", required=True, help="the data directory to read (left as it is)")
    rep.add_argument("--to", type=int, required=True, help="partitions of the result")
    rep.add_argument("--out", required=True, help="a new (absent or empty) directory")
    rep.add_argument("--config", help="TOML file overlaid on configs/default.toml")
    rep.add_argument("--no-verify", action="store_true",
                     help="skip folding every user of the result against the source")
    pub = sub.add_parser("publish")
    pub.add_argument("file", help="an event log (.jsonl or .msgpack), e.g. from `replay export`")
    pub.add_argument("--ingest", default="tcp://127.0.0.1:7100",
                     help="the service's ingest address (default tcp://127.0.0.1:7100)")
    pub.add_argument("--api", default="tcp://127.0.0.1:7101",
                     help="the service's api address (default tcp://127.0.0.1:7101)")
    pub.add_argument("--rate", type=float, default=0.0, help="events/s; 0 = unlimited (default)")
    pub.add_argument("--batch", type=int, default=500, help="events per message (default 500)")
    from interest.tools.keys import add_key_options, key_argv  # noqa: PLC0415
    add_key_options(pub)
    args = parser.parse_args(argv)
    if args.action == "publish":
        from interest.tools import publish  # noqa: PLC0415
        return publish.main([args.file, "--ingest", args.ingest, "--api", args.api,
                             "--rate", str(args.rate), "--batch", str(args.batch),
                             *key_argv(args)])
    if args.action == "repartition":
        return _repartition(args)
    from interest.tools.repartition import data_dirs  # noqa: PLC0415
    folders = data_dirs(args.data)
    if len(folders) > 1 and args.action == "export":
        print("interest replay: export one partition at a time (--data DIR/pN)",
              file=sys.stderr)
        return 2
    codes = [_one(args, folder) for folder in folders]
    return max(codes)


def _repartition(args) -> int:
    from interest.engine.errors import ConfigError  # noqa: PLC0415
    from interest.tools.repartition import repartition  # noqa: PLC0415
    try:
        params = FoldParams.from_config(load_config(args.config))
        report = repartition(args.data, args.out, args.to, params, verify=not args.no_verify)
    except (ConfigError, StoreError) as exc:
        print(f"interest replay repartition: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report))
    return 0


def _one(args, data: Path) -> int:
    """One action on one single-partition data directory."""
    journal = Path(data) / "journal"
    if not journal.exists():
        print(f"interest replay: no journal at {journal}", file=sys.stderr)
        return 1
    try:
        store = LmdbStore(journal)
    except StoreError as exc:
        print(f"interest replay: {exc}", file=sys.stderr)
        return 1
    try:
        if args.action == "check":
            report = check(store, FoldParams.from_config(load_config(args.config)),
                           progress=not args.no_progress)
            print(json.dumps(report))
            return 0 if report["ok"] else 1
        if args.action == "dead-letters":
            return dead_letters(store, args.limit)
        n = export(store, Path(args.out), args.include_derived)
        print(json.dumps({"exported": n, "out": args.out}))
        return 0
    finally:
        store.close()
