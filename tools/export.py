"""`interest export recommendations --k 10 --out FILE`: every user's top-k from a running service.

The users are every user with at least one event in the journal, read from
the service's data directory (--data; read-only, safe while it serves; a
partitioned directory is read partition by partition), or one user id a line
from --users FILE. Each is asked `recommend` (a few requests in flight,
--window); FILE gets one JSON line per user, in user-id order:
{"user", "strategy", "items": [{"item", "score", "sources", ...}]}. A user
whose request fails gets {"user", "error": {"code", "message"}} and the
export exits 1 at the end.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from tqdm import tqdm

from interest.engine.errors import InterestError
from interest.engine.journal.codec import CATALOG_STREAM
from interest.engine.journal.store import LmdbStore
from interest.engine.partitions.layout import partition_dir, read_layout
from interest.engine.serving.aio import AsyncClient
from interest.engine.serving.client_errors import RequestError
from interest.tools import options
from interest.tools.keys import key_options

PROG = "interest export"


def stored_users(data_dir: str | Path) -> list[str]:
    """Every user with a journal entry, sorted; the LMDB files are opened read-only."""
    data_dir = Path(data_dir)
    partitions = read_layout(data_dir)
    folders = [data_dir] if partitions is None else \
        [partition_dir(data_dir, i) for i in range(partitions)]
    users: set[str] = set()
    for folder in folders:
        users.update(_journal_streams(folder / "journal"))
    users.discard(CATALOG_STREAM)
    return sorted(users)


def _journal_streams(path: Path) -> list[str]:
    """The streams in one store (``Store.streams()``), opened beside the running service
    the way its model learner opens it (LMDB readers never block the writer)."""
    if not (path / "data.mdb").is_file():
        raise options.InputError(f"no store at {path} (is --data the service's data directory?)")
    try:
        store = LmdbStore(path)
    except InterestError as exc:
        raise options.InputError(f"cannot read the store at {path}: {exc}") from exc
    try:
        return list(store.streams())
    finally:
        store.close()


def listed_users(path: str | Path) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


async def export_recommendations(users: list[str], out, args, progress: bool) -> int:
    """Write one line per user; the number of users whose request failed."""
    failed = 0
    bar = tqdm(total=len(users), unit="user", disable=not progress, file=sys.stderr)
    async with AsyncClient(args.api, timeout=args.timeout, connect_timeout=args.wait,
                           **key_options(args)) as client:
        for start in range(0, len(users), args.window):
            chunk = users[start:start + args.window]
            replies = await asyncio.gather(
                *(client.recommend(user, args.k, exclude_seen=args.exclude_seen)
                  for user in chunk), return_exceptions=True)
            for user, reply in zip(chunk, replies):
                if isinstance(reply, RequestError):
                    failed += 1
                    line = {"user": user, "error": {"code": reply.code, "message": str(reply)}}
                elif isinstance(reply, BaseException):
                    raise reply
                else:
                    line = {"user": user, "strategy": reply.get("strategy"),
                            "items": reply["items"]}
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
            bar.update(len(chunk))
    bar.close()
    return failed


def build_parser():
    p = options.parser(PROG, __doc__)
    sub = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    rec = sub.add_parser("recommendations", help="every user's top-k as JSON lines",
                         description=__doc__, epilog=options.EXIT_CODES,
                         formatter_class=options.HelpFormatter)
    rec.add_argument("--k", type=options.positive_int, default=10, help="items per user")
    rec.add_argument("--out", required=True, metavar="FILE",
                     help="where to write (JSON lines); - for stdout")
    who = rec.add_mutually_exclusive_group()
    who.add_argument("--data", default="data", metavar="DIR",
                     help="the service's data directory, to list its users (read-only)")
    who.add_argument("--users", metavar="FILE", help="one user id a line, instead of --data")
    rec.add_argument("--include-seen", dest="exclude_seen", action="store_false",
                     help="also recommend items the user already interacted with")
    rec.add_argument("--window", type=options.positive_int, default=16,
                     help="requests in flight at once")
    rec.add_argument("--no-progress", action="store_true", help="no progress bar")
    options.add_service_options(rec, timeout=30.0)
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return options.run(PROG, lambda: _export(args))


def _export(args) -> int:
    users = listed_users(args.users) if args.users else stored_users(args.data)
    options.client(args).close()            # a short "no service at ADDR" before any work
    if args.out == "-":
        failed = asyncio.run(export_recommendations(users, sys.stdout, args, False))
    else:
        with open(args.out, "w", encoding="utf-8") as out:
            failed = asyncio.run(export_recommendations(users, out, args,
                                                        not args.no_progress))
    where = "stdout" if args.out == "-" else args.out
    print(f"{PROG}: {len(users) - failed} users written to {where}"
          + (f", {failed} failed (see their error lines)" if failed else ""), file=sys.stderr)
    return options.FAILED if failed else options.OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
