"""`interest bench http`: what the HTTP side port costs next to the ZeroMQ api.

One in-process service (no model, no fsync) with its HTTP side on a loopback
port. A synthetic catalog and history go in through ``POST /v1/events`` (its
throughput is reported); then, one request at a time on one keep-alive
connection each: ``/healthz``, a ``/metrics`` scrape, ``recommend`` over HTTP
and the same ``recommend`` over the ZeroMQ api with the client library.
Prints one JSON object: p50/p99 in milliseconds per route.

    interest bench http [--requests 500] [--users 500] [--items 300] [--events 20000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import tempfile
import time
from pathlib import Path

from interest.engine.config import load_config
from interest.engine.serving.client import Client
from interest.engine.serving.server import Server


def _percentiles(samples: list[float]) -> dict:
    data = sorted(samples)
    return {"n": len(data), "p50_ms": round(data[len(data) // 2], 3),
            "p99_ms": round(data[min(len(data) - 1, int(len(data) * 0.99))], 3)}


def _events(users: int, items: int, events: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    out = [{"v": 1, "id": f"item-{i}", "type": "item", "ts": 1.0, "item": str(i),
            "title": f"Item {i}", "tags": [f"tag{i % 17}", f"tag{i % 5}"]} for i in range(items)]
    for n in range(events):
        out.append({"v": 1, "id": f"e{n}", "type": rng.choice(("view", "click", "purchase")),
                    "ts": 1000.0 + n, "user": str(rng.randrange(users)),
                    "item": str(int(rng.paretovariate(1.2)) % items)})
    return out


def _timed(conn: http.client.HTTPConnection, method: str, path: str, body=None) -> float:
    t0 = time.perf_counter()
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    if resp.status != 200:
        raise RuntimeError(f"{method} {path}: HTTP {resp.status}")
    return (time.perf_counter() - t0) * 1000


def run(args) -> dict:
    config = load_config(store={"sync": False}, inference={"enabled": False},
                         projections={"learner": "thread"})
    with tempfile.TemporaryDirectory() as tmp, \
            Server(config, Path(tmp) / "data", ingest="tcp://127.0.0.1:*",
                   api="tcp://127.0.0.1:*", http="127.0.0.1:0") as srv:
        host, port = srv.http.bound.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        events = _events(args.users, args.items, args.events)
        t0 = time.perf_counter()
        for start in range(0, len(events), args.batch):
            _timed(conn, "POST", "/v1/events",
                   json.dumps(events[start:start + args.batch]).encode())
        ingest_s = time.perf_counter() - t0
        rng = random.Random(11)
        users = [str(rng.randrange(args.users)) for _ in range(args.requests)]
        out = {"events": len(events), "http_ingest_events_per_s": round(len(events) / ingest_s)}
        out["healthz"] = _percentiles([_timed(conn, "GET", "/healthz")
                                       for _ in range(args.requests)])
        out["metrics_scrape"] = _percentiles([_timed(conn, "GET", "/metrics")
                                              for _ in range(max(1, args.requests // 5))])
        out["recommend_http"] = _percentiles([
            _timed(conn, "GET", f"/v1/users/{u}/recommendations?k=10") for u in users])
        client = Client(srv.api, timeout=30)
        try:
            samples = []
            for user in users:
                t1 = time.perf_counter()
                client.recommend(user, 10)
                samples.append((time.perf_counter() - t1) * 1000)
        finally:
            client.close()
        out["recommend_zeromq"] = _percentiles(samples)
        conn.close()
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="interest bench http", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500,
                        help="requests per route (a fifth as many scrapes; default 500)")
    parser.add_argument("--users", type=int, default=500, help="distinct users (default 500)")
    parser.add_argument("--items", type=int, default=300, help="catalog items (default 300)")
    parser.add_argument("--events", type=int, default=20000,
                        help="behaviour events ingested over HTTP (default 20000)")
    parser.add_argument("--batch", type=int, default=500,
                        help="events per POST /v1/events (default 500)")
    args = parser.parse_args(argv)
    print(json.dumps(run(args), indent=1))
    return 0
