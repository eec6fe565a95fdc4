"""Model profiles through the whole service, with the fake backend behind the real actor."""

import time

import pytest

from interest.actors.inference import Inference
from interest.engine.llm.backends import FakeBackend
from interest.engine.serving.client import Client
from interest.engine.config import load_config
from interest.engine.serving.server import Server
from interest.engine.projections.state import replay
from interest.engine.journal.store import LmdbStore
from tests.conftest import RANDOM_PORT, event, item_event, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def backend():
    return FakeBackend(lambda prompt: '{"tags": ["Drama", "slow cinema"], '
                                      '"summary": "into quiet dramas"}')


@pytest.fixture
def server(tmp_path, backend):
    config = load_config(store={"sync": False},
                         inference={"refresh_min_events": 3, "refresh_quiet_s": 0.1})
    inference = Inference.start(config, str(tmp_path / "cache"), backend=backend)
    srv = Server(config, tmp_path / "data", ingest=RANDOM_PORT, api=RANDOM_PORT,
                 inference=inference)
    yield srv
    srv.stop()


# `client` (tests/conftest.py) talks to the `server` defined here


def test_debounced_refresh_is_journaled_and_folded(client, server, tmp_path):
    client.call("ingest", events=[item_event("m1", ["Drama"])] +
                [event(f"e{i}", item="m1", ts=100.0 + i) for i in range(3)])
    reply = wait_for(lambda: (r := client.call("interests", user="u1"))["summary"] and r,
                     timeout=10, reason="the model profile")
    assert reply["summary"] == "into quiet dramas"
    assert reply["llm"]["stale"] is False and reply["llm"]["model"].startswith("fake.gguf")
    assert reply["version"] == 4 and reply["events"] == 3     # derived entry, not a behaviour
    server.stop()
    store = LmdbStore(tmp_path / "data" / "journal")
    entries = list(store.read("u1"))
    store.close()
    assert entries[-1].event["type"] == "profile" and entries[-1].event["input_hash"]
    replayed = replay("u1", entries, server.service.params)   # no model needed
    assert replayed.profile["summary"] == "into quiet dramas"


def test_fresh_interests_waits_for_an_online_refresh(client):
    client.call("ingest", events=[item_event("m1", ["Drama"]), event("a", item="m1")])
    reply = client.call("interests", user="u1", fresh=True, deadline_ms=5000)
    assert reply["summary"] == "into quiet dramas" and reply["llm"]["stale"] is False


def test_fresh_interests_past_its_deadline_answers_stale_from_state(tmp_path, context):
    slow = FakeBackend(lambda p: '{"tags": ["x"], "summary": "late"}', token_delay_s=0.2,
                       tokens=20)
    config = load_config(store={"sync": False}, inference={"refresh_min_events": 1000})
    inference = Inference.start(config, None, backend=slow)
    with Server(config, tmp_path / "d", ingest=RANDOM_PORT, api=RANDOM_PORT,
                inference=inference) as srv:
        c = Client(srv.api, timeout=10, context=context)
        try:
            c.call("ingest", events=[event("a", item="m1")])
            started = time.monotonic()
            reply = c.call("interests", user="u1", fresh=True, deadline_ms=300)
            assert time.monotonic() - started < 2.0
            assert reply["summary"] is None and reply["events"] == 1
            assert c.call("stats")["inference"]["profiles"]["stale_answers"] == 1
        finally:
            c.close()
