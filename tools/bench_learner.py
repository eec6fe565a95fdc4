"""`interest bench learner`: the lag of the model snapshots a partition serves.

For each mode (``global``: one `interest learner` for every partition;
``process``: each partition learns its own events in its own learner process,
the unpartitioned design) it starts P `interest serve` partitions on a new
partitioned directory (inference off), publishes a synthetic workload at a
fixed rate straight to the owning partitions (catalog to all, as the router
does), and samples every partition's ``stats.projections.learner`` every
0.25 s: ``lag_events`` (head minus the position of the snapshot it serves)
and ``lag_s`` (age of the oldest entry that snapshot has not learned). After
the publisher stops it measures how long the last partition takes to serve a
snapshot that has learned its head (``catch_up_s``). With ``--backlog N`` it
also commits N events to the partitions before starting the global learner
and times how long that one process takes to learn them all (its pace, which
bounds the ingest rate of all partitions together that it can follow). One
JSON object out.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from interest.engine.partitions.layout import ensure_layout, partition_dir, partition_of
from interest.tools.options import free_port


def workload(n_users: int, n_items: int, seed: int = 1):
    """An endless stream of view/click/purchase events, items drawn with a skew."""
    rng = random.Random(seed)
    n = 0
    while True:
        n += 1
        item = min(int(rng.paretovariate(1.2)) - 1, n_items - 1)
        yield {"v": 1, "id": f"b{n}", "type": rng.choice(("view", "view", "click", "purchase")),
               "ts": time.time() - 1.0, "user": f"user{rng.randrange(n_users)}",
               "item": f"item{item}"}


def _start(mode: str, root: Path, partitions: int, config: Path) -> tuple[list, list[str]]:
    cli = [sys.executable, "-m", "interest.tools.cli"]
    procs, apis = [], []
    for i in range(partitions):
        ingest, api = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
        procs.append(subprocess.Popen([*cli, "serve", "--config", str(config), "--data",
                                       str(partition_dir(root, i)), "--ingest", ingest,
                                       "--api", api, "--http", "", "--log-level", "WARNING"]))
        apis.append((ingest, api))
    if mode == "global":
        procs.append(subprocess.Popen([*cli, "learner", "--data", str(root), "--config",
                                       str(config), "--log-level", "WARNING"]))
    return procs, apis


def run_mode(mode: str, args, workdir: Path) -> dict:
    from interest.engine.serving.client import Client, Publisher  # noqa: PLC0415
    root = workdir / mode
    ensure_layout(root, args.partitions)
    config = workdir / f"{mode}.toml"
    config.write_text(f'[projections]\nlearner = "{mode}"\n[inference]\nenabled = false\n'
                      f'[store]\nsync = false\n')
    procs, addresses = _start(mode, root, args.partitions, config)
    clients = [Client(api, timeout=30) for _, api in addresses]
    pubs = [Publisher(ingest) for ingest, _ in addresses]
    samples: list[tuple[int, float | None]] = []
    try:
        for client in clients:
            client.call("ping")
        items = [{"v": 1, "id": f"item{i}", "type": "item", "ts": 1.0, "item": f"item{i}",
                  "title": f"Item {i}", "tags": [f"g{i % 12}"]} for i in range(args.items)]
        for client in clients:
            client.call("ingest", events=items)
        stop = threading.Event()
        sampler = threading.Thread(target=_sample, args=(addresses, stop, samples), daemon=True)
        sampler.start()
        sent = _publish(pubs, args, workload(args.users, args.items))
        t0 = time.monotonic()
        while not all(c.call("stats")["projections"]["learner"]["lag_events"] == 0
                      for c in clients):
            if time.monotonic() - t0 > 120:
                break
            time.sleep(0.05)
        catch_up = time.monotonic() - t0
        stop.set()
        sampler.join(5)
        heads = [c.call("stats")["head"] for c in clients]
    finally:
        _stop(procs, pubs, clients)
    events = [e for e, _ in samples]
    seconds = [s for _, s in samples if s is not None]
    return {"mode": mode, "events_sent": sent, "heads": heads, "samples": len(samples),
            "lag_events_p50": _pct(events, 50), "lag_events_p95": _pct(events, 95),
            "lag_events_max": max(events, default=None),
            "lag_s_p50": _pct(seconds, 50), "lag_s_p95": _pct(seconds, 95),
            "lag_s_max": max(seconds, default=None), "catch_up_s": round(catch_up, 2)}


def catch_up(args, workdir: Path) -> dict:
    """The global learner's own pace: ``args.backlog`` events committed in the partitions
    before it starts, then the seconds until every partition serves a snapshot that has
    learned its head (one process learning for all partitions)."""
    from interest.engine.serving.client import Client, Publisher  # noqa: PLC0415
    root = workdir / "backlog"
    ensure_layout(root, args.partitions)
    config = workdir / "backlog.toml"
    config.write_text('[projections]\nlearner = "global"\n[inference]\nenabled = false\n'
                      '[store]\nsync = false\n')
    procs, addresses = _start("process", root, args.partitions, config)   # no learner yet
    clients = [Client(api, timeout=60) for _, api in addresses]
    pubs = [Publisher(ingest) for ingest, _ in addresses]
    try:
        for client in clients:
            client.call("ping")
        events = workload(args.users, args.items, seed=2)
        sent = 0
        while sent < args.backlog:
            sent += _publish_batch(pubs, events)
        deadline = time.monotonic() + 120
        while sum(heads := [c.call("stats")["head"] for c in clients]) < sent:
            if time.monotonic() > deadline:       # events still in the sockets: all counted
                raise TimeoutError(f"the partitions committed {sum(heads)} of {sent} events")
            time.sleep(0.1)
        t0 = time.monotonic()
        procs.append(subprocess.Popen([sys.executable, "-m", "interest.tools.cli", "learner",
                                       "--data", str(root), "--config", str(config),
                                       "--log-level", "WARNING"]))
        while not all(c.call("stats")["projections"]["learner"]["position"] >= h
                      for c, h in zip(clients, heads)):
            if time.monotonic() - t0 > 600:
                raise TimeoutError("the global learner did not catch up within 600 s")
            time.sleep(0.05)
        seconds = time.monotonic() - t0
    finally:
        _stop(procs, pubs, clients)
    return {"backlog_events": sum(heads), "learner_start_to_caught_up_s": round(seconds, 2),
            "learned_events_per_s": round(sum(heads) / seconds)}


def _publish_batch(pubs: list, events) -> int:
    batch = [next(events) for _ in range(50)]
    parts: dict[int, list] = {}
    for e in batch:
        parts.setdefault(partition_of(e["user"], len(pubs)), []).append(e)
    for i, part in parts.items():
        pubs[i].send(part)
    return len(batch)


def _stop(procs: list, pubs: list = (), clients: list = ()) -> None:
    """Close the publishers and clients, then stop the processes (SIGTERM, then kill)."""
    for pub in pubs:
        pub.close(linger_ms=0)
    for client in clients:
        client.close()
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _publish(pubs: list, args, events) -> int:
    """``args.rate`` events/s for ``args.seconds``, in batches of 50, to the owners."""
    sent, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < args.seconds:
        sent += _publish_batch(pubs, events)
        ahead = sent / args.rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
    return sent


def _sample(addresses, stop: threading.Event, out: list) -> None:
    from interest.engine.serving.client import Client  # noqa: PLC0415
    clients = [Client(api, timeout=30) for _, api in addresses]
    try:
        while not stop.wait(0.25):
            for client in clients:
                lag = client.call("stats")["projections"]["learner"]
                out.append((lag["lag_events"], lag["lag_s"]))
    finally:
        for client in clients:
            client.close()


def _pct(values: list, q: int):
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 3)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="interest bench learner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--partitions", type=int, default=2, help="partitions to spread users over")
    parser.add_argument("--rate", type=float, default=1000.0, help="events per second, in all")
    parser.add_argument("--seconds", type=float, default=15.0, help="how long to publish")
    parser.add_argument("--users", type=int, default=5000, help="distinct users")
    parser.add_argument("--items", type=int, default=1000, help="distinct items")
    parser.add_argument("--modes", default="global,process",
                        help="learner modes to compare: global (one learner), process (one per partition)")
    parser.add_argument("--backlog", type=int, default=0,
                        help="also time the global learner learning this many events "
                             "committed before it starts (its own pace)")
    args = parser.parse_args(argv)
    out = {"partitions": args.partitions, "rate": args.rate, "seconds": args.seconds,
           "users": args.users, "items": args.items, "cpus": os.cpu_count(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-learner-") as tmp:
        for mode in args.modes.split(","):
            out["runs"].append(run_mode(mode, args, Path(tmp)))
        if args.backlog:
            out["catch_up"] = catch_up(args, Path(tmp))
    print(json.dumps(out))
    return 0
