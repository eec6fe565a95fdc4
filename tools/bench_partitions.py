"""`interest bench ingest --partitions 1,2,4`: the ingest benchmark against P partitions.

The same workload as `interest bench ingest` (a publisher process sends the
same msgpack batches over PUSH as fast as it can; the clock stops when every
event is applied), sent to a real `interest serve` process tree for each P:
P = 1 is the unpartitioned service, P > 1 the router and P partition processes
(`serve --partitions P`). CPU is the user + system time psutil reports for
every process of the tree (service, router, partitions, their learners), not
the publisher's. Prints one JSON object: for each P, events/s and events per
CPU-second until every event is applied, and events per CPU-second until the
model learner has learned them too (it lags by design: its lag when the
events were applied is reported), each also as a ratio to P = 1.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from interest.engine.errors import InterestError
from interest.engine.serving.client import Client
from interest.tools.bench_ingest import _publisher, catalog_events
from interest.tools.options import free_port


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _cpu(procs: list[psutil.Process]) -> dict[int, float]:
    out = {}
    for proc in procs:
        try:
            times = proc.cpu_times()
            out[proc.pid] = times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return out


def _up(client: Client) -> bool:
    try:
        return not client.call("ping").get("partitions_down")
    except InterestError:
        return False


def _config_file(tmp: Path, args) -> Path:
    path = tmp / "bench.toml"
    text = (f"[inference]\nenabled = false\n[runtime]\nworkers = {args.workers}\n"
            f"max_live_actors = {args.max_live}\n")
    if args.config:
        text = Path(args.config).read_text() + "\n" + text
    path.write_text(text)
    return path


def one(args, partitions: int) -> dict:
    with served(args, partitions) as (client, server, ingest):
        return _measure(args, client, server, ingest, partitions)


@contextlib.contextmanager
def served(args, partitions: int):
    """(client, server process, ingest address) of a fresh `interest serve --partitions P`
    in a temporary directory (``args.config``, ``args.workers``, ``args.max_live``),
    stopped with SIGTERM at the end."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ingest, api = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
        argv = [sys.executable, "-m", "interest.tools.cli", "serve", "--data", str(tmp / "data"),
                "--config", str(_config_file(tmp, args)), "--ingest", ingest, "--api", api,
                "--partitions", str(partitions), "--log-level", "WARNING"]
        server = subprocess.Popen(argv)
        try:
            with Client(api, timeout=120) as client:
                deadline = time.monotonic() + 120
                while not _up(client):
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError(f"the service with {partitions} partition(s) did not start")
                    time.sleep(0.2)
                yield client, server, ingest
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(120)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)


def _measure(args, client: Client, server, ingest: str, partitions: int) -> dict:
    client.call("ingest", events=catalog_events(args.items))
    base = client.call("stats")["applied"]
    mpctx = mp.get_context("spawn")
    ready, go = mpctx.Event(), mpctx.Event()
    child = mpctx.Process(target=_publisher, args=(
        ingest, args.events, args.users, args.items, args.batch, ready, go))
    child.start()
    ready.wait(300)
    procs = _tree(server.pid)
    cpu0 = _cpu(procs)
    started = time.perf_counter()
    go.set()
    while client.call("stats")["applied"] - base < args.events:
        time.sleep(0.1)
    elapsed = time.perf_counter() - started
    cpu1 = _cpu(procs)
    lag = _learner_lag(client)
    deadline = time.monotonic() + 300          # then until the models have learned it all too
    while _learner_lag(client) > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    learned = time.perf_counter() - started
    cpu2 = _cpu(procs)
    child.join(60)
    cpu_learned = sum(cpu2[pid] - cpu0[pid] for pid in cpu2 if pid in cpu0)
    labels = {proc.pid: _label(proc) for proc in procs}
    by_process = {}
    for proc in procs:
        if proc.pid in cpu1 and proc.pid in cpu0:
            name = labels[proc.pid]
            if name is None:            # a child of the service: its learner (or a helper)
                name = f"{labels.get(_parent(proc), 'service')} learner"
            by_process[name] = round(by_process.get(name, 0.0) + cpu1[proc.pid] - cpu0[proc.pid], 2)
    cpu_s = sum(by_process.values())
    return {"partitions": partitions, "events_per_s": round(args.events / elapsed),
            "cpu_s": round(cpu_s, 2), "events_per_cpu_s": round(args.events / cpu_s),
            "seconds": round(elapsed, 2), "cpu_s_by_process": by_process,
            "learner_lag_at_applied": lag, "seconds_to_learned": round(learned, 2),
            "events_per_cpu_s_learned": round(args.events / cpu_learned)}


def _learner_lag(client: Client) -> int:
    return client.call("stats")["projections"]["learner"]["lag_events"]


def _label(proc: psutil.Process) -> str | None:
    """The service, the router or partition I; None for their helper processes."""
    try:
        cmdline = proc.cmdline()
    except psutil.NoSuchProcess:
        return None
    if "--partition" in cmdline:
        return f"partition {cmdline[cmdline.index('--partition') + 1]}"
    if "learner" in cmdline:
        return "global learner"
    if "serve" in cmdline:
        return "router" if cmdline[cmdline.index("--partitions") + 1] != "1" else "service"
    return None


def _parent(proc: psutil.Process) -> int | None:
    try:
        return proc.ppid()
    except psutil.NoSuchProcess:
        return None


def run(args, counts: list[int]) -> dict:
    rows = [one(args, p) for p in counts]
    first = rows[0]
    for row in rows:
        row["events_per_s_ratio"] = round(row["events_per_s"] / first["events_per_s"], 3)
        row["events_per_cpu_s_ratio"] = round(row["events_per_cpu_s"] / first["events_per_cpu_s"], 3)
        row["events_per_cpu_s_learned_ratio"] = round(
            row["events_per_cpu_s_learned"] / first["events_per_cpu_s_learned"], 3)
    return {"events": args.events, "users": args.users, "batch": args.batch,
            "cores": psutil.cpu_count(), "runs": rows}
