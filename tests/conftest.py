"""Shared fixtures: every socket, context, actor and server is owned by a fixture
and torn down with a time limit. Addresses use random localhost ports."""

from __future__ import annotations

import threading
import time

import pytest
import zmq

from interest.engine.serving.client import Client, Publisher
from interest.engine.config import load_config
from interest.engine.serving.server import Server
from interest.engine.projections.state import InterestState

RANDOM_PORT = "tcp://127.0.0.1:*"


def event(id_, type_="view", user="u1", item="m1", ts=100.0, **extra):
    obj = {"v": 1, "id": id_, "type": type_, "ts": ts, "user": user}
    if item is not None:
        obj["item"] = item
    obj.update(extra)
    return obj


def item_event(item, tags, title=None, ts=1.0):
    return {"v": 1, "id": f"item-{item}-{ts}", "type": "item", "ts": ts, "item": item,
            "title": title or f"Title {item}", "tags": list(tags)}


def wait_for(predicate, timeout=5.0, reason="condition"):
    """Poll ``predicate`` until it returns something true; fail with ``reason`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout}s waiting for {reason}")


def learned(client, timeout: float = 10.0) -> None:
    """Wait until the model learner (which lags the log by design) has learned the head."""
    wait_for(lambda: client.call("stats")["projections"]["learner"]["lag_events"] == 0,
             timeout=timeout, reason="the model learner to catch up")


@pytest.fixture
def config():
    """The learner runs as a thread in these tests (tests/test_learner_process.py runs it
    as a process): the same Learner, without a process start per server."""
    return load_config(store={"sync": False}, inference={"enabled": False},
                       runtime={"sweep_seconds": 0.2}, projections={"learner": "thread"})


@pytest.fixture
def stalled_users(monkeypatch):
    """Every fold waits for ``release`` (the user-state projection stalls)."""
    release = threading.Event()
    real = InterestState.update

    def update(self, entry, params):
        release.wait(10)
        real(self, entry, params)
    monkeypatch.setattr(InterestState, "update", update)
    yield release
    release.set()


@pytest.fixture
def procs():
    """Subprocesses a test starts (a real `interest serve`); killed if still running."""
    started = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def server(config, tmp_path):
    srv = Server(config, tmp_path / "data", ingest=RANDOM_PORT, api=RANDOM_PORT)
    yield srv
    srv.stop()


@pytest.fixture
def client(server, context):
    c = Client(server.api, timeout=10, context=context)
    yield c
    c.close()


@pytest.fixture
def publisher(server, context):
    p = Publisher(server.ingest, context=context)
    yield p
    p.close(linger_ms=0)
