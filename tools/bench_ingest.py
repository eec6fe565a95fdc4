"""`interest bench ingest`: end-to-end ingest throughput against the raw floor.

End to end: a publisher PROCESS sends msgpack batches over ZeroMQ PUSH to a
service running in this process (durable LMDB commits, events applied by the
pooled user actors); the clock stops when every event is applied. Raw floor,
same run, same batch size: decode + validate + LMDB group commit in one loop.
Latency: probe events sent during the run, timed from send until `interests`
shows them. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import tempfile
import threading
import time

import psutil

from interest.engine.journal.codec import decode_frame, encode_frame
from interest.engine.config import load_config
from interest.engine.serving.requests import parse_batch
from interest.engine.journal.store import LmdbStore, WriteBatch

TAGS = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller", "Crime",
        "Documentary", "Animation"]
TYPES = ["view", "view", "view", "click", "click", "cart", "purchase", "skip"]


def catalog_events(n_items: int) -> list[dict]:
    rng = random.Random(7)
    return [{"v": 1, "id": f"item-{i}", "type": "item", "ts": 0.0, "item": f"i{i}",
             "title": f"Item {i}", "tags": rng.sample(TAGS, 2)} for i in range(n_items)]


def event_frames(n_events: int, n_users: int, n_items: int, batch: int, seed: int = 1):
    rng = random.Random(seed)
    frames = []
    for start in range(0, n_events, batch):
        chunk = []
        for i in range(start, min(n_events, start + batch)):
            user = i % n_users if i < n_users else rng.randrange(n_users)
            chunk.append({"v": 1, "id": f"e{i}", "type": rng.choice(TYPES), "ts": 1000.0 + i,
                          "user": f"u{user}", "item": f"i{rng.randrange(n_items)}"})
        frames.append(encode_frame(chunk))
    return frames


def _publisher(address: str, n_events: int, n_users: int, n_items: int, batch: int,
               ready, go) -> None:
    """Runs in a child process: build the frames first, then send them as fast as possible."""
    import zmq  # noqa: PLC0415
    frames = event_frames(n_events, n_users, n_items, batch)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 1000)
    sock.connect(address)
    ready.set()
    go.wait()
    for frame in frames:
        sock.send(frame)
    sock.close(linger=-1)
    ctx.term()


def raw_floor(n_events: int, n_users: int, n_items: int, batch: int, limits: dict) -> float:
    frames = event_frames(n_events, n_users, n_items, batch, seed=2)
    with tempfile.TemporaryDirectory() as tmp:
        store = LmdbStore(tmp, sync=True)
        store.commit(WriteBatch(events=[("", e) for e in catalog_events(n_items)]))
        started = time.perf_counter()
        for frame in frames:
            events, _ = parse_batch(decode_frame(frame, limits["max_message_bytes"]), limits)
            store.commit(WriteBatch(events=[(e.user, e.to_wire()) for e in events]))
        elapsed = time.perf_counter() - started
        store.close()
    return n_events / elapsed


class PeakSampler(threading.Thread):
    """Peak memory and threads of the service: this process plus the service's own
    processes (the model learner), counted once each; not the publisher. RSS counts
    a page both processes map (the LMDB file) twice; PSS counts it once."""

    def __init__(self):
        super().__init__(daemon=True)
        self.proc = psutil.Process()
        self.service_pids = lambda: []
        self.peak_rss = 0
        self.peak_threads = 0
        self.peaks: dict[int, int] = {}      # pid -> its own peak rss
        self.peak_pss = 0
        self.stop = threading.Event()

    def _pss(self) -> None:
        """Proportional set size: a page shared by the service's processes (the LMDB
        file both map, the libraries) is counted once in the sum, split between them."""
        total = 0
        for proc in self._processes():
            try:
                total += proc.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied, AttributeError):
                return
        self.peak_pss = max(self.peak_pss, total)

    def _processes(self) -> list:
        out = [self.proc]
        for pid in self.service_pids():
            try:
                out.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        return out

    def run(self):
        ticks = 0
        while not self.stop.wait(0.05):
            ticks += 1
            if ticks % 10 == 0:             # reading smaps is slow: PSS every 0.5 s
                self._pss()
            rss = threads = 0
            for proc in self._processes():
                try:
                    one = proc.memory_info().rss
                    rss += one
                    threads += proc.num_threads()
                    self.peaks[proc.pid] = max(self.peaks.get(proc.pid, 0), one)
                except psutil.NoSuchProcess:
                    pass
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_threads = max(self.peak_threads, threads)


def probe_latencies(server, n_probes: int, stop: threading.Event) -> list[float]:
    """Send one event for a fresh probe user, poll `interests` until it is visible."""
    from interest.engine.serving.client import Client, Publisher  # noqa: PLC0415
    out = []
    with Client(server.api, timeout=30) as client, Publisher(server.ingest) as pub:
        for n in range(n_probes):
            if stop.is_set():
                break
            user = f"probe{n}"
            t0 = time.perf_counter()
            pub.send({"v": 1, "id": f"probe-{n}", "type": "click", "ts": 5000.0 + n,
                      "user": user, "item": "i1"})
            while client.call("interests", user=user)["events"] < 1:
                time.sleep(0.0005)
            out.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.02)
    return out


def _service_children(server) -> list[int]:
    proc = getattr(server.service.learner, "_proc", None)
    return [proc.pid] if proc is not None and proc.pid else []


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    data = sorted(values)
    return data[min(len(data) - 1, int(q * len(data)))]


def run(args) -> dict:
    from interest.engine.serving.client import Client  # noqa: PLC0415
    from interest.engine.serving.server import Server  # noqa: PLC0415
    config = load_config(args.config, inference={"enabled": False},
                         runtime={"max_live_actors": args.max_live, "workers": args.workers})
    floor = raw_floor(args.events, args.users, args.items, args.batch, config["limits"])
    sampler = PeakSampler()
    sampler.start()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(config, tmp, ingest="tcp://127.0.0.1:*", api="tcp://127.0.0.1:*")
        sampler.service_pids = lambda: _service_children(server)
        try:
            with Client(server.api, timeout=120) as client:
                client.call("ingest", events=catalog_events(args.items))
                base = client.call("stats")["applied"]
                mpctx = mp.get_context("spawn")
                ready, go = mpctx.Event(), mpctx.Event()
                child = mpctx.Process(target=_publisher, args=(
                    server.ingest, args.events, args.users, args.items, args.batch, ready, go))
                child.start()
                ready.wait(300)
                stop_probes = threading.Event()
                latencies: list[float] = []
                prober = threading.Thread(target=lambda: latencies.extend(
                    probe_latencies(server, args.probes, stop_probes)), daemon=True)
                started = time.perf_counter()
                go.set()
                prober.start()
                while client.call("stats")["applied"] - base < args.events:
                    time.sleep(0.1)
                elapsed = time.perf_counter() - started
                stop_probes.set()
                prober.join(60)
                child.join(60)
                learner_lag = client.call("stats")["projections"]["learner"]["lag_events"]
                client.call("flush", timeout=120)
                stats = client.call("stats")
        finally:
            server.stop()
            sampler.stop.set()
    eps = args.events / elapsed
    return {
        "events_per_s": round(eps), "floor_events_per_s": round(floor),
        "ratio": round(eps / floor, 3),
        "p50_ms": percentile(latencies, 0.50), "p99_ms": percentile(latencies, 0.99),
        "probes": len(latencies),
        "peak_rss_mb": round(sampler.peak_rss / 2**20, 1), "threads": sampler.peak_threads,
        "peak_rss_mb_by_process": [round(v / 2**20, 1) for v in sampler.peaks.values()],
        "peak_pss_mb": round(sampler.peak_pss / 2**20, 1),
        "events": args.events, "users": args.users, "batch": args.batch,
        "live_actors_at_end": stats["live_actors"], "activations": stats["activations"],
        "passivations": stats["passivations"], "commits": stats["writer"]["commits"],
        "workers": args.workers, "max_live_actors": args.max_live,
        "learner_lag_events": learner_lag,
    }


def main(argv: list[str]) -> int:
    from interest.tools.options import HelpFormatter  # noqa: PLC0415
    parser = argparse.ArgumentParser(prog="interest bench ingest", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--events", type=int, default=300_000, help="events published")
    parser.add_argument("--users", type=int, default=100_000, help="distinct users")
    parser.add_argument("--items", type=int, default=5_000, help="distinct items")
    parser.add_argument("--batch", type=int, default=100, help="events per message")
    parser.add_argument("--probes", type=int, default=200,
                        help="read-your-writes latency probes (acknowledged ingest)")
    parser.add_argument("--workers", type=int, default=2, help="actor runtime threads")
    parser.add_argument("--max-live", type=int, default=50_000,
                        help="live actor cap (passivation beyond it)")
    parser.add_argument("--config", help="service config overlaid on configs/default.toml")
    parser.add_argument("--partitions", help="comma-separated partition counts, e.g. 1,2,4: "
                        "the same workload against `interest serve --partitions P` processes, "
                        "events/s and events per CPU-second each (tools/bench_partitions.py)")
    args = parser.parse_args(argv)
    if args.partitions:
        from interest.tools import bench_partitions  # noqa: PLC0415
        counts = [int(p) for p in args.partitions.split(",") if p.strip()]
        print(json.dumps(bench_partitions.run(args, counts)))
        return 0
    print(json.dumps(run(args)))
    return 0
