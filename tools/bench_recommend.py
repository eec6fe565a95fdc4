"""``interest bench recommend``: recommend latency over the api socket under ingest.

Starts a real service in-process (engine.serving.server.Server on ephemeral ports),
loads MovieLens (items, users and the first ``--preload`` share of ratings),
then for ``--seconds`` sends recommend requests at ``--rate`` per second
(open loop, from a separate load-generator process: one DEALER, requests
sent on schedule whether or not earlier ones were answered, matched by
``rid``) while a thread publishes the remaining ratings through the ingest
socket. Prints one JSON
object: p50_ms, p99_ms, requests_per_s, ingest_events_per_s (and details).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import sys
import tempfile
import threading
import time


def load_generator(api: str, users: list[str], rate: float, seconds: float, k: int,
                   results) -> None:
    """Runs in its own process: open-loop recommend requests; puts (latencies, errors, sent)."""
    import zmq  # noqa: PLC0415

    from engine.journal.codec import decode_frame, encode_frame  # noqa: PLC0415
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(api)
    rng = random.Random(1)
    total = int(rate * seconds)
    pending: dict[int, float] = {}
    latencies: list[float] = []
    errors = sent = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds + 10
    while (sent < total or pending) and time.perf_counter() < deadline:
        now = time.perf_counter()
        while sent < total and t0 + sent / rate <= now:
            sock.send(encode_frame({"op": "recommend", "rid": sent, "user": rng.choice(users),
                                    "k": k}))
            pending[sent] = time.perf_counter()
            sent += 1
        wait_ms = max(0, int((t0 + sent / rate - time.perf_counter()) * 1000)) if sent < total else 50
        if sock.poll(wait_ms, zmq.POLLIN):
            while True:
                try:
                    reply = decode_frame(sock.recv(zmq.NOBLOCK), 1 << 26)
                except zmq.Again:
                    break
                started = pending.pop(reply.get("rid"), None)
                if started is None:
                    continue
                if reply.get("ok"):
                    latencies.append((time.perf_counter() - started) * 1000)
                else:
                    errors += 1
    errors += len(pending)        # never answered
    sock.close()
    ctx.term()
    results.put((latencies, errors, sent))


def main(argv: list[str] | None = None) -> int:
    from engine import movielens
    from engine.serving.client import Client, Publisher
    from engine.config import load_config
    from engine.serving.server import Server
    parser = argparse.ArgumentParser(prog="interest bench recommend")
    parser.add_argument("--data", default=str(movielens.DEFAULT_PATH))
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0)
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
        mpctx = mp.get_context("spawn")
        results = mpctx.Queue()
        loader = mpctx.Process(target=load_generator, args=(
            server.api, users, args.rate, args.seconds, args.k, results))
        with Client(server.api) as c:
            applied0 = c.call("stats")["applied"]
        pub_thread = threading.Thread(target=publish, daemon=True)
        pub_thread.start()
        t_start = time.perf_counter()
        loader.start()
        latencies, errors, sent = results.get(timeout=args.seconds + 120)
        loader.join(30)
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
        "requests": n, "sent": sent, "errors": errors, "seconds": round(elapsed, 2),
        "target_rate": args.rate, "published": published[0],
    }
    if rec_stats:
        out["recommender"] = rec_stats
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
