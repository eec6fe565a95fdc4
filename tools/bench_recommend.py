"""``interest bench recommend``: recommend latency over the api socket under ingest.

Starts a real service in-process (engine.serving.server.Server on ephemeral ports),
loads MovieLens (items, users and the first ``--preload`` share of ratings),
then for ``--seconds`` sends recommend requests at ``--rate`` per second
(open loop, from a separate load-generator process: one DEALER, requests
sent on schedule whether or not earlier ones were answered, matched by
``rid``) while a publisher PROCESS sends the remaining ratings through the
ingest socket at ``--ingest-rate`` (when they run out it sends them again
under new ids, so every event stays new). Prints one JSON object: p50_ms,
p99_ms, requests_per_s, ingest_events_per_s (and details).

``--max-rate`` then repeats the measurement at each rate of ``--ladder``
(same service, same ingest) and adds ``max_rate_p99_5ms``: the highest rate
whose p99 stayed at or under 5 ms with no errors.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import random
import sys
import tempfile
import time


def load_generator(api: str, users: list[str], rate: float, seconds: float, k: int,
                   results) -> None:
    """Runs in its own process: open-loop recommend requests; puts (latencies, errors, sent)."""
    import zmq  # noqa: PLC0415

    from interest.engine.journal.codec import decode_frame, encode_frame  # noqa: PLC0415
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
        # wait for a reply or the next send time; never spin (this process shares the machine)
        wait_ms = math.ceil((t0 + sent / rate - time.perf_counter()) * 1000) if sent < total else 50
        if sock.poll(max(1, wait_ms), zmq.POLLIN):
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


def publisher(address: str, events: list, rate: float, stop) -> None:
    """Runs in its own process: publish ``events`` at ``rate`` per second until ``stop``."""
    from interest.engine.serving.client import Publisher  # noqa: PLC0415
    batch = max(1, int(rate / 100))
    sent, lap = 0, 0
    with Publisher(address) as pub:
        t0 = time.perf_counter()
        while not stop.is_set():
            for i in range(0, len(events), batch):
                if stop.is_set():
                    break
                chunk = events[i:i + batch]
                if lap:
                    chunk = [{**e, "id": f"{e['id']}-r{lap}", "ts": e["ts"] + lap * 1e7}
                             for e in chunk]
                pub.send(chunk)
                sent += len(chunk)
                delay = t0 + sent / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            lap += 1


def wait_for_learner(client, timeout: float = 300.0) -> None:
    """The preload is learned before the clock starts (as the models of a running service are)."""
    deadline = time.monotonic() + timeout
    while client.call("stats")["projections"]["learner"]["lag_events"] > 0:
        if time.monotonic() > deadline:
            raise TimeoutError("the model learner did not catch up with the preload")
        time.sleep(0.1)


def measure(api: str, users: list[str], rate: float, seconds: float, k: int) -> dict:
    """One open-loop run at ``rate``; the latencies and the throughput it got."""
    mpctx = mp.get_context("spawn")
    results = mpctx.Queue()
    loader = mpctx.Process(target=load_generator, args=(api, users, rate, seconds, k, results))
    t_start = time.perf_counter()
    loader.start()
    latencies, errors, sent = results.get(timeout=seconds + 120)
    loader.join(30)
    elapsed = time.perf_counter() - t_start
    latencies.sort()
    n = len(latencies)
    return {"rate": rate,
            "p50_ms": round(latencies[n // 2], 3) if n else None,
            "p99_ms": round(latencies[min(n - 1, int(n * 0.99))], 3) if n else None,
            "requests_per_s": round(n / elapsed, 1), "requests": n, "sent": sent,
            "errors": errors, "seconds": round(elapsed, 2)}


def main(argv: list[str] | None = None) -> int:
    from interest.engine import movielens
    from interest.engine.errors import ConfigError
    from interest.engine.serving.client import Client
    from interest.engine.config import load_config
    from interest.engine.serving.server import Server
    parser = argparse.ArgumentParser(prog="interest bench recommend",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default=str(movielens.DEFAULT_PATH), help="MovieLens-100K folder")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measured run")
    parser.add_argument("--preload", type=float, default=0.5, help="share of ratings before")
    parser.add_argument("--ingest-rate", type=float, default=2000.0, help="events per second")
    parser.add_argument("--k", type=int, default=10, help="items per recommend request")
    parser.add_argument("--sync", action="store_true", help="fsync commits (default off)")
    parser.add_argument("--config", help="service config overlaid on configs/default.toml")
    parser.add_argument("--max-rate", action="store_true",
                        help="also find the highest rate of --ladder with p99 <= 5 ms")
    parser.add_argument("--ladder", default="250,500,1000,1500,2000,3000",
                        help="request rates tried by --max-rate")
    args = parser.parse_args(argv)
    try:
        ml = movielens.load(args.data)
    except FileNotFoundError as exc:
        print(f"interest bench recommend: {exc}", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config, store={"sync": args.sync})
    except ConfigError as exc:
        print(f"interest bench recommend: {exc}", file=sys.stderr)
        return 2
    cut = int(len(ml.ratings) * args.preload)
    users = sorted({u["user"] for u in ml.users})
    with tempfile.TemporaryDirectory() as tmp, \
            Server(config, tmp, ingest="tcp://127.0.0.1:*", api="tcp://127.0.0.1:*") as server:
        with Client(server.api, timeout=60) as client:
            head = ml.items + ml.users + ml.ratings[:cut]
            for i in range(0, len(head), 5000):
                client.call("ingest", events=head[i:i + 5000])
            client.call("flush", timeout=120)
            wait_for_learner(client)
        mpctx = mp.get_context("spawn")
        stop = mpctx.Event()
        pub = mpctx.Process(target=publisher, args=(server.ingest, ml.ratings[cut:],
                                                    args.ingest_rate, stop))
        with Client(server.api) as c:
            applied0 = c.call("stats")["applied"]
        pub.start()
        t_start = time.perf_counter()
        out = measure(server.api, users, args.rate, args.seconds, args.k)
        with Client(server.api) as c:
            applied1 = c.call("stats")["applied"]
        out["ingest_events_per_s"] = round((applied1 - applied0) / (time.perf_counter() - t_start), 1)
        if args.max_rate:
            ladder = [measure(server.api, users, float(r), args.seconds, args.k)
                      for r in args.ladder.split(",")]
            good = [run["rate"] for run in ladder
                    if run["errors"] == 0 and run["p99_ms"] is not None and run["p99_ms"] <= 5.0]
            out["max_rate_p99_5ms"] = max(good, default=None)
            out["ladder"] = ladder
        stop.set()
        pub.join(10)
        with Client(server.api) as c:
            stats = c.call("stats")
        out["learner_lag_events"] = stats["projections"]["learner"]["lag_events"]
        out["learner"] = stats["projections"]["learner"]
        out["target_rate"] = args.rate
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
