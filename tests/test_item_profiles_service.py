"""Item profiles through the whole service: real LMDB journal, real inference actor, the
fake backend as the model (counting its generate and embed calls)."""

from __future__ import annotations

import threading

import pytest

from interest.actors.inference import Inference
from interest.actors.profiles import item_text
from interest.engine.config import load_config
from interest.engine.journal.codec import CATALOG_STREAM
from interest.engine.journal.events import ITEM_PROFILE_TYPE, parse_item_profile
from interest.engine.journal.store import LmdbStore
from interest.engine.llm.backends import FakeBackend
from interest.engine.llm.item_profiles import current_profile, profile_text
from interest.engine.serving.exporter import families
from interest.engine.serving.service import Service
from tests.conftest import event, item_event, wait_for
from tests.test_item_profile_journal import fold

pytestmark = pytest.mark.integration

ITEMS = [item_event("50", ["sci-fi", "action"], title="Star Wars (1977)"),
         item_event("183", ["horror", "sci-fi"], title="Alien (1979)"),
         item_event("1", ["animation", "children"], title="Toy Story (1995)")]


def _config(item_profiles: bool = True) -> dict:
    return load_config(store={"sync": False}, projections={"learner": "thread"},
                       runtime={"sweep_seconds": 0.2},
                       inference={"item_profiles": item_profiles, "refresh_min_events": 1000,
                                  "embed_batch": 2})


@pytest.fixture
def serve(tmp_path):
    """serve(backend, item_profiles) -> a Service on tmp_path/data (stopped at the end)."""
    running = []

    def start(backend, item_profiles=True):
        config = _config(item_profiles)
        inference = Inference.start(config, None, backend=backend)     # no result cache
        service = Service(config, tmp_path / "data", inference=inference)
        running.append(service)
        return service
    yield start
    for service in running:
        if not service._stopping.is_set():
            service.stop(timeout=5)


def ask(service, **request):
    box, done = [], threading.Event()
    service.call(request, lambda result: (box.append(result), done.set()))
    assert done.wait(10), f"no answer to {request['op']}"
    assert not isinstance(box[0], Exception), box[0]
    return box[0]


def item_stats(service) -> dict:
    return ask(service, op="stats")["inference"]["item_profiles"]


def embedded_texts(backend) -> set:
    return {text for batch in backend.embed_calls for text in batch}


def journaled_profiles(tmp_path) -> list[dict]:
    store = LmdbStore(tmp_path / "data" / "journal")
    try:
        return [e.event for e in store.read(CATALOG_STREAM) if e.type == ITEM_PROFILE_TYPE]
    finally:
        store.close()


def settled(service, profiled: int):
    """Wait until ``profiled`` items have a journaled profile, folded into the catalog."""
    wait_for(lambda: (s := item_stats(service))["outstanding"] == 0
             and s["profiled"] + s["cached"] >= profiled, timeout=10, reason="item profiles")
    wait_for(lambda: sum(current_profile(i, service.catalog.get(i)) is not None
                         for i in service.catalog.ids) >= profiled,
             timeout=10, reason="the profiles folded into the catalog")


def test_items_are_profiled_journaled_and_embedded_from_the_enriched_text(serve, tmp_path):
    backend = FakeBackend()
    service = serve(backend)
    ask(service, op="ingest", events=ITEMS)
    settled(service, 3)
    for item in ("50", "183", "1"):
        record = service.catalog.get(item)
        profile = current_profile(item, record)
        assert profile.description.startswith("Likes") and profile.model.startswith("fake.gguf")
        assert profile_text(item, record, profile) in embedded_texts(backend)
    wait_for(lambda: item_stats(service)["embedded"] >= 6, reason="plain and enriched vectors")
    stats = item_stats(service)
    assert {"requested", "profiled", "cached", "failed", "embedded", "outstanding"} <= set(stats)
    assert stats["requested"] == 3 and stats["profiled"] == 3 and stats["failed"] == 0
    metrics = {f.name: f for f in families(ask(service, op="stats"), {})}
    assert metrics["interest_item_profiles_profiled"].samples[0].value == 3
    assert metrics["interest_item_profiles_outstanding"].type == "gauge"
    assert stats["from_journal"] == 0 and len(backend.complete_calls) == 3
    live = {item: service.catalog.get(item) for item in service.catalog.ids}
    service.stop(timeout=5)
    wires = journaled_profiles(tmp_path)
    assert sorted(w["item"] for w in wires) == ["1", "183", "50"]
    for wire in wires:
        parse_item_profile(wire)                           # schema-valid as journaled
    store = LmdbStore(tmp_path / "data" / "journal")
    try:
        assert fold(store.read_all()) == live == dict(store.items())   # replay = live
    finally:
        store.close()


def test_a_restart_embeds_from_the_journal_without_generating_again(serve, tmp_path):
    first = FakeBackend()
    service = serve(first)
    ask(service, op="ingest", events=ITEMS)
    settled(service, 3)
    service.stop(timeout=5)

    again = FakeBackend()
    service = serve(again)
    wait_for(lambda: item_stats(service)["embedded"] >= 3, reason="embeddings after the restart")
    stats = item_stats(service)
    assert stats["from_journal"] == 3 and stats["requested"] == 0
    assert again.complete_calls == []                     # nothing generated again
    for item in ("50", "183", "1"):
        record = service.catalog.get(item)
        assert profile_text(item, record, current_profile(item, record)) in embedded_texts(again)
    assert len(journaled_profiles_live(service)) == 3     # and nothing journaled twice


def journaled_profiles_live(service) -> list:
    return [e for e in service.store.read(CATALOG_STREAM) if e.type == ITEM_PROFILE_TYPE]


def test_a_changed_item_is_profiled_again_and_the_new_profile_replaces_the_old(serve):
    backend = FakeBackend()
    service = serve(backend)
    ask(service, op="ingest", events=ITEMS[:1])
    settled(service, 1)
    old = current_profile("50", service.catalog.get("50"))
    ask(service, op="ingest", events=[item_event("50", ["sci-fi", "space opera"],
                                                 title="Star Wars (1977)", ts=2.0)])
    assert current_profile("50", service.catalog.get("50")) is None     # stale at once
    wait_for(lambda: (p := current_profile("50", service.catalog.get("50"))) and p != old,
             timeout=10, reason="the new profile")
    assert len(journaled_profiles_live(service)) == 2 and len(backend.complete_calls) == 2
    # a text-only update keeps the profile: embedded again with it, nothing generated
    ask(service, op="ingest", events=[{**item_event("50", ["sci-fi", "space opera"],
                                                    title="Star Wars (1977)", ts=3.0),
                                       "text": "A long time ago."}])
    record = service.catalog.get("50")
    wait_for(lambda: profile_text("50", record, current_profile("50", record))
             in embedded_texts(backend), reason="the re-embedding with the kept profile")
    assert len(backend.complete_calls) == 2


def test_user_profiles_still_run_beside_item_profiles(tmp_path):
    """Refreshes of users (interactive) overtake queued item profiles (background)."""
    backend = FakeBackend(token_delay_s=0.01)
    config = load_config(store={"sync": False}, projections={"learner": "thread"},
                         inference={"refresh_min_events": 2, "refresh_quiet_s": 0.05,
                                    "item_profiles": True})
    inference = Inference.start(config, None, backend=backend)
    service = Service(config, tmp_path / "data", inference=inference)
    try:
        many = [item_event(f"m{i}", ["drama"], title=f"Film {i}") for i in range(30)]
        ask(service, op="ingest", events=many)
        ask(service, op="ingest", events=[event(f"e{i}", item="m1", ts=100.0 + i)
                                          for i in range(3)])
        wait_for(lambda: ask(service, op="interests", user="u1")["summary"], timeout=10,
                 reason="the user's profile while items wait")
        assert item_stats(service)["outstanding"] > 0     # the user did not wait for the catalog
        assert item_stats(service)["in_flight"] <= 1
    finally:
        service.stop(timeout=5)


def test_with_item_profiles_off_nothing_changes(serve, tmp_path):
    backend = FakeBackend()
    service = serve(backend, item_profiles=False)
    ask(service, op="ingest", events=ITEMS)
    texts = {item_text(e["item"], e) for e in ITEMS}
    wait_for(lambda: texts <= embedded_texts(backend), reason="the plain catalog embeddings")
    assert embedded_texts(backend) == texts and backend.complete_calls == []
    assert "item_profiles" not in ask(service, op="stats")["inference"]
    assert service.item_profiler is None
    service.stop(timeout=5)
    assert journaled_profiles(tmp_path) == []


def test_producers_sending_an_item_profile_are_rejected_with_the_reason(serve):
    service = serve(FakeBackend(), item_profiles=False)
    wire = {"v": 1, "id": "x", "type": "item_profile", "ts": 1.0, "item": "50",
            "keywords": [], "description": "", "model": "m", "input_hash": "h",
            "source_hash": "s"}
    reply = ask(service, op="ingest", events=[wire])
    assert reply["accepted"] == 0 and len(reply["rejected"]) == 1
    assert "written by the service itself" in reply["rejected"][0]["message"]
