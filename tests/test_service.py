"""The Service in process over MemoryStore: every op, failures in every projection,
backpressure, deadlines, and passivation racing new messages."""

from __future__ import annotations

import threading

import pytest

from interest.actors.inference import Inference
from interest.engine.config import load_config
from interest.engine.journal.store import MemoryStore
from interest.engine.llm.backends import FakeBackend
from interest.engine.projections.catalog import Catalog
from interest.engine.projections.state import InterestState, replay
from interest.engine.serving.service import Service
from tests.conftest import event, item_event, wait_for

POISON = "poison"


def call(service: Service, timeout: float = 10.0, **request):
    box, done = [], threading.Event()
    service.call(request, lambda result: (box.append(result), done.set()))
    assert done.wait(timeout), f"no answer to {request.get('op')}"
    return box[0]


def ok(service: Service, **request) -> dict:
    result = call(service, **request)
    assert not isinstance(result, Exception), f"{request.get('op')} failed: {result!r}"
    return result


@pytest.fixture
def config():
    return load_config(inference={"enabled": False}, store={"sync": False},
                       runtime={"sweep_seconds": 0.2}, projections={"learner": "thread"})


@pytest.fixture
def make_service(tmp_path):
    started = []

    def make(config, inference=None):
        service = Service(config, tmp_path / "data", store=MemoryStore(), inference=inference)
        started.append(service)
        return service
    yield make
    for service in started:
        service.stop(timeout=5)


def catalog_and_history(service):
    ok(service, op="ingest", events=[item_event("m1", ["Drama"]), item_event("m2", ["Drama"]),
                                     item_event("m3", ["Comedy"])])
    return ok(service, op="ingest", events=[event("a", item="m1"), event("b", item="m3", ts=200.0),
                                            event("c", user="u2", item="m1")])


def models_caught_up(service: Service, timeout: float = 10.0) -> None:
    """Wait until every projection, the model learner included, has applied everything
    committed so far. An ingest reply guarantees only the user state and the catalog
    (read-your-writes); the models that score candidates follow a moment later."""
    done = threading.Event()
    service.flush(lambda _ok: done.set(), projections=tuple(service.runners))
    assert done.wait(timeout), "the projections did not catch up"


def test_every_op_in_process(config, make_service):
    service = make_service(config)
    assert ok(service, op="ping")["version"] == 1
    assert catalog_and_history(service) == {"accepted": 3, "duplicates": 0, "rejected": []}
    assert ok(service, op="interests", user="u1")["events"] == 2
    models_caught_up(service)
    rec = ok(service, op="recommend", user="u1", k=5)
    assert [row["item"] for row in rec["items"]] == ["m2"]       # seen items are excluded
    assert all(abs(row["score"] - sum(row["sources"].values())) < 1e-9 for row in rec["items"])
    rec = ok(service, op="recommend", user="u1", candidates=["m3", "nope"], exclude_seen=False)
    assert [row["item"] for row in rec["items"]] == ["m3"] and rec["unknown_candidates"] == ["nope"]
    assert ok(service, op="recommend", user="stranger")["strategy"] == "cold"
    assert ok(service, op="explain", user="u1", item="m1")["item"]["item"] == "m1"
    assert call(service, op="explain", user="u1", item="nope").code == "not_found"
    assert ok(service, op="flush")["applied"] == 3
    stats = ok(service, op="stats")
    assert stats["head"] == 6 and stats["projections"]["users"]["lag_events"] == 0
    assert call(service, op="teleport").code == "bad_request"


@pytest.mark.parametrize("request_", [
    {"op": "recommend", "user": "u1", "deadline_ms": float("nan")},
    {"op": "recommend", "user": "u1", "deadline_ms": float("inf")},
    {"op": "flush", "timeout_ms": float("inf")},
    {"op": "interests", "user": "u1", "fresh": True, "deadline_ms": -5},
])
def test_non_finite_deadlines_are_bad_requests(config, make_service, request_):
    service = make_service(config)
    error = call(service, **request_)
    assert error.code == "bad_request" and "finite" in str(error)
    assert ok(service, op="ping")["version"] == 1


def test_unknown_op_names_do_not_grow_the_metrics(config, make_service):
    service = make_service(config)
    for i in range(300):
        assert call(service, op=f"op-{i}-" + "x" * 10_000).code == "bad_request"
    stats = ok(service, op="stats")
    assert set(stats["latency"]) <= {"ping", "ingest", "flush", "interests", "recommend",
                                     "explain", "stats", "other", "invalid"}
    assert not any(key.startswith("op.op-") for key in stats["counters"])
    assert len(str(stats)) < 20_000


# ------------------------------------------------------- failures in every projection


def poison_users(monkeypatch):
    real = InterestState.update

    def update(self, entry, params):
        if entry.event.get("id") == POISON:
            raise ValueError("the fold chokes on this entry")
        real(self, entry, params)
    monkeypatch.setattr(InterestState, "update", update)


def poison_catalog(monkeypatch):
    real = Catalog.put_item

    def put_item(self, item, record):
        if item == POISON:
            raise ValueError("the catalog chokes on this item")
        real(self, item, record)
    monkeypatch.setattr(Catalog, "put_item", put_item)


def poison_learner(monkeypatch, service):
    learner = service.recommender.learner
    real = learner.observe

    def observe(entry):
        if entry.event.get("id") == POISON:
            raise ValueError("the learner chokes on this entry")
        real(entry)
    monkeypatch.setattr(learner, "observe", observe)


@pytest.mark.parametrize("projection", ["users", "catalog", "learner"])
def test_a_failing_entry_is_dead_lettered_and_everything_keeps_working(
        config, make_service, monkeypatch, projection):
    service = make_service(config)
    if projection == "users":
        poison_users(monkeypatch)
        bad = event(POISON, item="m1", ts=150.0)
    elif projection == "catalog":
        poison_catalog(monkeypatch)
        bad = item_event(POISON, ["Drama"])
    else:
        poison_learner(monkeypatch, service)
        bad = event(POISON, item="m1", ts=150.0)
    catalog_and_history(service)
    reply = ok(service, op="ingest", events=[bad, event("after", item="m2", ts=300.0)])
    assert reply["accepted"] == 2
    ok(service, op="flush")
    assert ok(service, op="interests", user="u1")["events"] >= 3
    assert ok(service, op="recommend", user="u1")["items"] is not None
    wait_for(lambda: service.stats()["dead_letters"]["total"] == 1, reason="the dead letter")
    stats = ok(service, op="stats")
    assert stats["dead_letters"]["by_projection"] == {projection: 1}
    letter = next(iter(service.store.dead_letters()))
    assert letter["projection"] == projection and "chokes" in letter["error"]
    wait_for(lambda: all(p["lag_events"] == 0 for p in service.stats()["projections"].values()),
             reason="every projection caught up")


def test_a_failing_profile_projection_entry_is_dead_lettered(config, make_service, monkeypatch,
                                                              tmp_path):
    config = load_config(store={"sync": False}, projections={"learner": "thread"},
                         inference={"refresh_min_events": 2, "refresh_quiet_s": 0.05})
    backend = FakeBackend(lambda prompt: '{"tags": ["Drama"], "summary": "dramas"}')
    inference = Inference.start(config, str(tmp_path / "cache"), backend=backend)
    service = make_service(config, inference=inference)
    profiles = service.runners["profiles"].projection
    real = profiles._count

    def count(entry):
        if entry.event.get("id") == POISON:
            raise ValueError("the scheduler chokes on this entry")
        real(entry)
    monkeypatch.setattr(profiles, "_count", count)
    catalog_and_history(service)
    ok(service, op="ingest", events=[event(POISON, item="m2", ts=150.0)])
    wait_for(lambda: service.stats()["dead_letters"]["by_projection"].get("profiles") == 1,
             reason="the dead letter")
    wait_for(lambda: ok(service, op="interests", user="u1")["summary"] == "dramas", timeout=10,
             reason="the profile refresh still happens")


# ------------------------------------------------------------ backpressure, deadlines


def test_backpressure_pauses_ingest_and_answers_overloaded(config, make_service, stalled_users):
    config["projections"]["max_lag_events"] = 5
    service = make_service(config)
    for i in range(10):
        service.ingest_events([_event(f"e{i}", f"u{i}")])
    wait_for(service.busy, reason="the backlog past max_lag_events")
    error = call(service, op="ingest", events=[event("late", item="m1")])
    assert error.code == "overloaded" and error.retry_after_ms == 200
    assert service.backlog() >= 6
    stalled_users.set()
    ok(service, op="flush")
    assert not service.busy()
    assert ok(service, op="ingest", events=[event("late", item="m1")])["accepted"] == 1


def _event(id_, user):
    from interest.engine.journal.events import parse_event
    return parse_event(event(id_, user=user, item="m1"), load_config()["limits"])


def test_a_flush_past_its_timeout_is_answered_by_the_gateway(config, tmp_path, context,
                                                              stalled_users):
    from interest.engine.serving.client import Client, RequestError
    from interest.engine.serving.server import Server
    from tests.conftest import RANDOM_PORT
    server = Server(config, tmp_path / "data", ingest=RANDOM_PORT, api=RANDOM_PORT)
    try:
        client = Client(server.api, timeout=10, context=context)
        server.service.ingest_events([_event("e1", "u1")])
        with pytest.raises(RequestError) as info:
            client.call("flush", timeout_ms=100)
        assert info.value.code == "deadline_exceeded"
        assert client.call("ping")["version"] == 1
        stalled_users.set()
        assert client.call("flush")["applied"] == 1
        client.close()
    finally:
        stalled_users.set()
        server.stop()


# ------------------------------------------------------------------ passivation races


def test_passivation_racing_new_messages_loses_nothing(config, make_service):
    config["runtime"]["max_live_actors"] = 1          # every other message evicts someone
    service = make_service(config)
    ok(service, op="ingest", events=[item_event("m1", ["Drama"]), item_event("m2", ["Comedy"])])
    users = ["u1", "u2", "u3"]
    wires = [event(f"e{i}", user=users[i % 3], item=f"m{1 + i % 2}", ts=100.0 + i)
             for i in range(90)]

    def send(part):
        for wire in part:
            ok(service, op="ingest", events=[wire])
    threads = [threading.Thread(target=send, args=(wires[i::2],)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    ok(service, op="flush")
    assert service.users.passivations > 0 and len(service.users) <= 1
    for user in users:
        expected = replay(user, service.store.read(user), service.params)
        got = ok(service, op="interests", user=user)
        assert got["events"] == expected.events == 30
        assert got["tags"] == expected.tag_weights(service.params)[:50]


def test_replay_dead_letters_lists_what_a_projection_could_not_apply(config, tmp_path,
                                                                      monkeypatch):
    import json
    import subprocess
    import sys
    from interest.engine.serving.server import Server
    from tests.conftest import RANDOM_PORT
    poison_users(monkeypatch)
    server = Server(config, tmp_path / "data", ingest=RANDOM_PORT, api=RANDOM_PORT)
    try:
        ok(server.service, op="ingest", events=[event("a", item="m1"),
                                                event(POISON, item="m1", ts=150.0)])
        wait_for(lambda: server.service.store.dead_letter_count() == 1, reason="the letter")
    finally:
        server.stop()
    out = subprocess.run([sys.executable, "-m", "interest.tools.cli", "replay", "dead-letters",
                          "--data", str(tmp_path / "data")], capture_output=True, text=True,
                         timeout=60, check=True).stdout.splitlines()
    letter, summary = json.loads(out[0]), json.loads(out[1])
    assert (letter["position"], letter["stream"], letter["projection"]) == (2, "u1", "users")
    assert "chokes" in letter["error"] and summary == {"dead_letters": 1, "total": 1}
