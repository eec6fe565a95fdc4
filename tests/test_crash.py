"""Crash test: kill -9 the real `interest serve` mid-stream, restart on the same data."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from interest.engine.serving.client import Client
from interest.engine.errors import DeadlineExceeded

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
USERS = [f"user{i}" for i in range(20)]


def start_server(tmp_path: Path) -> subprocess.Popen:
    config = tmp_path / "crash.toml"
    config.write_text("[inference]\nenabled = false\n[runtime]\nsnapshot_every = 7\n")
    return subprocess.Popen(
        [sys.executable, "-m", "interest.tools.cli", "serve", "--config", str(config),
         "--data", str(tmp_path / "data"), "--ingest", f"ipc://{tmp_path}/ingest",
         "--api", f"ipc://{tmp_path}/api", "--log-level", "WARNING"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_ready(client: Client, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {proc.stdout.read().decode(errors='replace')}")
        try:
            client.call("ping", timeout=0.5)
            return
        except DeadlineExceeded:
            continue
    pytest.fail("server did not answer ping in time")




def batch(n: int) -> list[dict]:
    return [{"v": 1, "id": f"b{n}-{i}", "type": "click", "ts": 1000.0 + n, "user": USERS[i % 20],
             "item": f"item{(n + i) % 30}"} for i in range(40)]


def test_kill_9_loses_no_acknowledged_event_and_resending_creates_no_duplicates(
        tmp_path, context, procs):
    proc = start_server(tmp_path)
    procs.append(proc)
    client = Client(f"ipc://{tmp_path}/api", timeout=5, context=context)
    wait_ready(client, proc)
    acked, sent = [], []
    killer = threading.Timer(1.0, lambda: os.kill(proc.pid, signal.SIGKILL))
    killer.start()
    n = 0
    try:
        while True:
            events = batch(n)
            sent.append(events)
            reply = client.call("ingest", events=events, timeout=2)
            assert reply["accepted"] == len(events)
            acked.append(events)
            n += 1
    except DeadlineExceeded:
        pass                                 # the server died under us
    killer.join()
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) >= 3, "the server was killed before anything was acknowledged"
    client.close()

    proc2 = start_server(tmp_path)
    procs.append(proc2)
    client = Client(f"ipc://{tmp_path}/api", timeout=10, context=context)
    wait_ready(client, proc2)
    # every acknowledged event survived, exactly once
    for events in acked:
        again = client.call("ingest", events=events)
        assert again["duplicates"] == len(events) and again["accepted"] == 0
    # unacknowledged ones may or may not have landed; re-sending never duplicates
    for events in sent[len(acked):]:
        client.call("ingest", events=events)
    total = sum(len(events) for events in sent)
    applied = sum(client.call("interests", user=u)["events"] for u in USERS)
    assert applied == total
    stats = client.call("stats")
    assert stats["counters"].get("commit_failures", 0) == 0
    client.close()
    proc2.send_signal(signal.SIGTERM)
    assert proc2.wait(20) == 0
    check = subprocess.run([sys.executable, "-m", "interest.tools.cli", "replay", "check", "--data",
                            str(tmp_path / "data"), "--no-progress"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_sigterm_stops_the_service_promptly_even_when_repeated(tmp_path, procs):
    """A signal handler that set a threading.Event could deadlock the main thread on the
    lock its own Event.wait() held; two SIGTERMs in a row made that likely."""
    proc = start_server(tmp_path)
    procs.append(proc)
    client = Client(f"ipc://{tmp_path}/api", timeout=5)
    try:
        wait_ready(client, proc)
        client.call("ingest", events=batch(10))
    finally:
        client.close()
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
