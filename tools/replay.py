"""`interest replay`: the journal as the truth.

  check    rebuild every user's state from the journal alone and check it
           equals the stored snapshots (and snapshot + tail equals a full replay)
  export   write the journal as an event log (JSON lines or .msgpack), in commit order
  publish  re-publish a log to a running service (duplicates are ignored there)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from engine.journal.codec import CATALOG_STREAM
from engine.config import load_config
from engine.journal.events import PROFILE_TYPE
from engine.projections.state import FoldParams, InterestState, replay
from engine.journal.store import LmdbStore, Store


def check(store: Store, params: FoldParams, progress: bool = True) -> dict:
    users = [s for s in store.streams() if s != CATALOG_STREAM]
    report = {"users": len(users), "snapshots": 0, "entries": 0, "mismatches": []}
    for user in tqdm(users, unit="user", disable=not progress, file=sys.stderr):
        entries = list(store.read(user))
        report["entries"] += len(entries)
        full = replay(user, entries, params)
        snap = store.snapshot(user)
        if snap is None:
            continue
        report["snapshots"] += 1
        seq, data = snap
        stored = InterestState.decode(data)
        prefix = replay(user, entries[:seq], params)
        if stored != prefix:
            report["mismatches"].append({"user": user, "seq": seq, "what": "snapshot"})
        resumed = replay(user, entries[seq:], params, state=stored)
        if resumed != full:
            report["mismatches"].append({"user": user, "seq": seq, "what": "snapshot+tail"})
    report["ok"] = not report["mismatches"]
    return report


def export(store: Store, out: Path, include_derived: bool) -> int:
    from tools.event_files import write_events  # noqa: PLC0415
    events = (e.event for e in store.read_all()
              if include_derived or e.event["type"] != PROFILE_TYPE)
    return write_events(out, events)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="interest replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    for name in ("check", "export"):
        p = sub.add_parser(name)
        p.add_argument("--data", default="data", help="the service's data directory")
        p.add_argument("--config")
    sub.choices["check"].add_argument("--no-progress", action="store_true")
    sub.choices["export"].add_argument("--out", required=True, help=".jsonl or .msgpack")
    sub.choices["export"].add_argument("--include-derived", action="store_true",
                                       help="also export the model's profile events")
    pub = sub.add_parser("publish")
    pub.add_argument("file")
    pub.add_argument("--ingest", default="tcp://127.0.0.1:7100")
    pub.add_argument("--api", default="tcp://127.0.0.1:7101")
    pub.add_argument("--rate", type=float, default=0.0)
    pub.add_argument("--batch", type=int, default=100)
    args = parser.parse_args(argv)
    if args.action == "publish":
        from tools import publish  # noqa: PLC0415
        return publish.main([args.file, "--ingest", args.ingest, "--api", args.api,
                             "--rate", str(args.rate), "--batch", str(args.batch)])
    journal = Path(args.data) / "journal"
    if not journal.exists():
        print(f"interest replay: no journal at {journal}", file=sys.stderr)
        return 1
    store = LmdbStore(journal)
    try:
        if args.action == "check":
            report = check(store, FoldParams.from_config(load_config(args.config)),
                           progress=not args.no_progress)
            print(json.dumps(report))
            return 0 if report["ok"] else 1
        n = export(store, Path(args.out), args.include_derived)
        print(json.dumps({"exported": n, "out": args.out}))
        return 0
    finally:
        store.close()
