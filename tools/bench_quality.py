"""`interest bench quality --partitions 1,2`: recommendation quality through the sockets.

For each partition count P, a fresh `interest serve --partitions P` (P = 1 is
the unpartitioned service) gets MovieLens-100K minus each user's last rating
through the acknowledged `ingest` op (whose reply means applied: read your
writes), waits for the model learner to catch up and publish, then asks one
`recommend k=10` per user. HR@10 is the share of users whose held-out item is
in the list. It is the leave-last-out protocol of `interest eval` run over the
real sockets, router and partitions included: the check that partitioning
does not change what is recommended (compare P values within one run; the
standard error at 943 users is about 0.013).
"""

from __future__ import annotations

import json
import sys
import time

from interest.tools import options
from interest.tools.bench_partitions import served
from interest.tools.event_files import read_events

DEFAULT_DATA = "../shared/data/ml-100k"


def held_out(events: list[dict]) -> tuple[list[dict], dict[str, str]]:
    """(every event but each user's last rating, user -> the held-out item)."""
    last = {e["user"]: i for i, e in enumerate(events) if e.get("type") == "rate"}
    held = {events[i]["user"]: events[i]["item"] for i in last.values()}
    drop = set(last.values())
    return [e for i, e in enumerate(events) if i not in drop], held


def hit_rate(client, train: list[dict], held: dict[str, str], batch: int) -> dict:
    started = time.monotonic()
    for start in range(0, len(train), batch):
        client.call("ingest", events=train[start:start + batch])
    client.call("flush", timeout=600)
    deadline = time.monotonic() + 600
    while client.call("stats")["projections"]["learner"]["lag_events"] > 0 \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2.5)          # one more model snapshot after the learner caught up
    hits = sum(held[user] in [x["item"] for x in client.call("recommend", user=user, k=10)["items"]]
               for user in held)
    return {"users": len(held), "hr@10": round(hits / len(held), 4),
            "seconds": round(time.monotonic() - started, 1)}


def main(argv: list[str]) -> int:
    parser = options.parser("interest bench quality", __doc__)
    parser.add_argument("--data", default=DEFAULT_DATA, help="the MovieLens-100K folder")
    parser.add_argument("--partitions", default="1,2", help="partition counts to compare")
    parser.add_argument("--batch", type=options.positive_int, default=1000,
                        help="events per ingest request")
    parser.add_argument("--config", help="TOML file overlaid on the benchmark's config")
    args = parser.parse_args(argv)
    args.workers, args.max_live = 2, 100_000

    def body() -> int:
        train, held = held_out(list(read_events(args.data, "movielens")))
        out = {}
        for count in [int(p) for p in args.partitions.split(",")]:
            with served(args, count) as (client, _server, _ingest):
                out[f"partitions_{count}"] = hit_rate(client, train, held, args.batch)
        print(json.dumps(out))
        return options.OK
    return options.run("interest bench quality", body)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
