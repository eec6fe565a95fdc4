"""Model profiles through the whole service, with the fake backend behind the real actor."""

import re
import threading
import time

import pytest

from interest.actors.inference import Inference
from interest.engine.errors import Unavailable
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
            assert reply["llm"]["stale"] is True
            assert reply["llm"]["reason"].startswith("deadline exceeded after 300 ms")
            assert c.call("stats")["inference"]["profiles"]["stale_answers"] == 1
        finally:
            c.close()


def _config(**inference):
    return load_config(store={"sync": False}, projections={"learner": "thread"},
                       inference={"refresh_min_events": 3, "refresh_quiet_s": 0.05, **inference})


def _serve(tmp_path, config, backend, data="data"):
    inference = Inference.start(config, None, backend=backend)
    return Server(config, tmp_path / data, ingest=RANDOM_PORT, api=RANDOM_PORT,
                  inference=inference)


def test_pending_refreshes_survive_a_restart(tmp_path, context):
    """A refresh armed but not yet answered is armed again after a restart, including
    one whose events start at the journal's first position (a saved position of 0)."""
    config = _config()
    down = FakeBackend(fail_with=Unavailable("model down"))
    srv = _serve(tmp_path, config, down)
    c = Client(srv.api, timeout=10, context=context)
    try:
        c.call("ingest", events=[event(f"a{i}", user="first", ts=100.0 + i) for i in range(3)])
        c.call("ingest", events=[item_event("m1", ["Drama"])] +
               [event(f"b{i}", user="second", ts=200.0 + i) for i in range(3)])
        wait_for(lambda: len(down.complete_calls) >= 2, timeout=10, reason="both refreshes to fail")
        for user in ("first", "second"):
            assert c.call("interests", user=user)["summary"] is None
    finally:
        c.close()
        srv.stop()
    up = FakeBackend(lambda prompt: '{"tags": ["drama"], "summary": "back again"}')
    with _serve(tmp_path, config, up) as srv:
        c = Client(srv.api, timeout=10, context=context)
        try:
            for user in ("first", "second"):
                reply = wait_for(lambda u=user: (r := c.call("interests", user=u))["summary"] and r,
                                 timeout=10, reason=f"{user}'s profile after the restart")
                assert reply["summary"] == "back again" and reply["llm"]["stale"] is False
                assert reply["llm"]["reason"] is None
        finally:
            c.close()


def test_most_recently_active_users_are_refreshed_first_and_say_where_they_wait(tmp_path, context):
    """With one refresh at the model at a time, the queued users go newest event first,
    and their `interests` replies say they are queued and where."""
    gate = threading.Event()
    seen = []

    def complete(prompt):
        seen.append(re.findall(r"Film of (\w+)", prompt)[-1])
        gate.wait(10)
        return '{"tags": ["drama"], "summary": "likes films"}'
    backend = FakeBackend(complete)
    # item profiles off: this gate holds every prompt, an item's too (the real model would
    # pre-empt a background item profile; a fake blocked before its first token cannot)
    config = _config(max_in_flight=1, item_profiles=False)
    users = ["old", "older", "newest", "newer"]
    stream_ts = {"older": 100.0, "old": 200.0, "newer": 300.0, "newest": 400.0}
    with _serve(tmp_path, config, backend) as srv:
        c = Client(srv.api, timeout=10, context=context)
        try:
            c.call("ingest", events=[item_event(u, ["Drama"], title=f"Film of {u}") for u in users])
            c.call("ingest", events=[event(f"{u}{i}", user=u, item=u, ts=stream_ts[u] + i)
                                     for u in users for i in range(3)])
            wait_for(lambda: c.call("stats")["inference"]["profiles"]["ready"] == 3, timeout=10,
                     reason="three users queued behind the first")
            first = seen[0]
            queued = sorted((u for u in users if u != first), key=lambda u: -stream_ts[u])
            for position, user in enumerate(queued, 1):
                llm = c.call("interests", user=user)["llm"]
                assert llm["stale"] is True
                assert llm["reason"].startswith(f"model busy: queued at position {position} of 3")
            assert c.call("interests", user=first)["llm"]["reason"] == "model busy: refresh running"
            gate.set()
            wait_for(lambda: len(seen) == 4, timeout=10, reason="every refresh")
            assert seen[1:] == queued
        finally:
            gate.set()
            c.close()


def test_interests_say_why_the_summary_is_missing(tmp_path, context):
    config = _config(refresh_min_events=5)
    with _serve(tmp_path, config, FakeBackend()) as srv:
        c = Client(srv.api, timeout=10, context=context)
        try:
            c.call("ingest", events=[event("a", item="m1")])
            llm = c.call("interests", user="u1")["llm"]
            assert llm["stale"] is True and llm["model"] is None
            assert llm["reason"] == "not enough events yet (1 of 5)"
            assert c.call("interests", user="nobody")["llm"]["reason"] == "no events yet"
        finally:
            c.close()
    no_model = load_config(store={"sync": False}, projections={"learner": "thread"},
                           inference={"enabled": False})
    with Server(no_model, tmp_path / "plain", ingest=RANDOM_PORT, api=RANDOM_PORT) as srv:
        c = Client(srv.api, timeout=10, context=context)
        try:
            c.call("ingest", events=[event("a", item="m1")])
            reply = c.call("interests", user="u1", fresh=True, deadline_ms=500)
            assert reply["summary"] is None and reply["llm"]["stale"] is True
            assert reply["llm"]["reason"] == "no model configured"
        finally:
            c.close()
