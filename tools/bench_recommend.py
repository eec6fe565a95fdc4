"""``interest bench recommend``: recommend latency over the api socket under ingest.

Starts a real service in-process (engine.server.Server on ephemeral ports),
loads MovieLens (items, users and the first ``--preload`` share of ratings),
then for ``--seconds`` sends recommend requests at ``--rate`` per second
(open loop, from ``--clients`` threads, each its own DEALER) while one thread
publishes the remaining ratings through the ingest socket. Prints one JSON
object: p50_ms, p99_ms, requests_per_s, ingest_events_per_s (and details).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time


def main(argv: list[str] | None = None) -> int:
    from engine import movielens
    from engine.client import Client, Publisher
    from engine.config import load_config
    from engine.server import Server
    parser = argparse.ArgumentParser(prog="interest bench recommend")
    parser.add_argument("--data", default=str(movielens.DEFAULT_PATH))
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--preload", type=float, default=0.5, help="share of ratings before")
    parser.add_argument("--ingest-rate", type=float, default=2000.0, help="events per second")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--sync", action="store_true", help="fsync commits (default off)")
    args = parser.parse_args(argv)
    try:
        ml = movielens.load(args.data)
    except FileNotFoundError as exc:
        print(f"interest bench recommend: {exc}", file=sys.stderr)
        return 2
    config = load_config(store={"sync": args.sync})
    cut = int(len(ml.ratings) * args.preload)
    users = sorted({u["user"] for u in ml.users})
    with tempfile.TemporaryDirectory() as tmp, \
            Server(config, tmp, ingest="tcp://127.0.0.1:*", api="tcp://127.0.0.1:*") as server:
        with Client(server.api, timeout=60) as client:
            head = ml.items + ml.users + ml.ratings[:cut]
            for i in range(0, len(head), 5000):
                client.call("ingest", events=head[i:i + 5000])
            client.call("flush", timeout=120)
        stop = threading.Event()
        published = [0]

        def publish():
            rest = ml.ratings[cut:]
            batch = max(1, int(args.ingest_rate / 100))
            with Publisher(server.ingest) as pub:
                t0 = time.perf_counter()
                for i in range(0, len(rest), batch):
                    if stop.is_set():
                        break
                    pub.send(rest[i:i + batch])
                    published[0] += len(rest[i:i + batch])
                    delay = t0 + published[0] / args.ingest_rate - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
        latencies: list[float] = []
        errors = [0]
        lock = threading.Lock()
        per_client = args.rate / args.clients
        n_each = int(per_client * args.seconds)

        def query(seed: int):
            rng = random.Random(seed)
            mine = []
            with Client(server.api, timeout=10) as c:
                t0 = time.perf_counter()
                for n in range(n_each):
                    due = t0 + n / per_client
                    delay = due - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    start = time.perf_counter()
                    try:
                        c.call("recommend", user=rng.choice(users), k=args.k)
                    except Exception:  # noqa: BLE001
                        errors[0] += 1
                        continue
                    mine.append((time.perf_counter() - start) * 1000)
            with lock:
                latencies.extend(mine)
        with Client(server.api) as c:
            applied0 = c.call("stats")["applied"]
        pub_thread = threading.Thread(target=publish, daemon=True)
        pub_thread.start()
        t_start = time.perf_counter()
        threads = [threading.Thread(target=query, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t_start
        stop.set()
        with Client(server.api) as c:
            applied1 = c.call("stats")["applied"]
            rec_stats = c.call("stats").get("recommender")
        pub_thread.join(10)
    latencies.sort()
    n = len(latencies)
    out = {
        "p50_ms": round(latencies[n // 2], 3) if n else None,
        "p99_ms": round(latencies[min(n - 1, int(n * 0.99))], 3) if n else None,
        "requests_per_s": round(n / elapsed, 1),
        "ingest_events_per_s": round((applied1 - applied0) / elapsed, 1),
        "requests": n, "errors": errors[0], "seconds": round(elapsed, 2),
        "target_rate": args.rate, "published": published[0],
    }
    if rec_stats:
        out["recommender"] = rec_stats
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
