"""Erasure (`forget`): the store contract for both stores, and the service over real sockets."""

from __future__ import annotations

import json
import time

import pytest

from interest.actors.inference import Inference
from interest.engine.config import load_config
from interest.engine.journal.codec import CATALOG_STREAM
from interest.engine.journal.events import FORGET_TYPE
from interest.engine.journal.store import (APPENDED, DUPLICATE, LmdbStore, MemoryStore,
                                           WriteBatch)
from interest.engine.llm import prompts
from interest.engine.llm.backends import FakeBackend
from interest.engine.llm.result_cache import ResultCache
from interest.engine.projections.state import FoldParams, InterestState, replay
from interest.engine.serving.client import Client
from interest.engine.serving.server import Server
from interest.tools import forget as forget_tool
from interest.tools import replay as replay_tool
from tests.conftest import RANDOM_PORT, event, item_event, wait_for


@pytest.fixture(params=["memory", "lmdb"])
def store(request, tmp_path):
    s = MemoryStore() if request.param == "memory" else LmdbStore(tmp_path / "j", sync=False)
    yield s
    s.close()


def tombstone(user, id_="f1", ts=500.0):
    return {"v": 1, "id": id_, "type": FORGET_TYPE, "ts": ts, "user": user}


def attrs_event(user, id_, age):
    return {"v": 1, "id": id_, "type": "user_attrs", "ts": 1.0, "user": user,
            "attrs": {"age": age}}


def commit(store, *events):
    def stream(e):
        return CATALOG_STREAM if e["type"] in ("item", "user_attrs") else e["user"]
    return store.commit(WriteBatch(events=[(stream(e), e) for e in events], recorded_at=1.0))


def history(store):
    commit(store, item_event("m1", ["Drama"]), attrs_event("u1", "a1", 30),
           attrs_event("u2", "a2", 40))
    commit(store, event("e1"), event("e2", ts=101.0), event("x1", user="u2"),
           event("e3", ts=102.0))
    store.commit(WriteBatch(snapshots=[("u1", 3, InterestState(user="u1", version=3).encode())],
                            dead_letters=[(4, "u1", "users", "boom", 1.0),
                                          (3, "u2", "users", "bang", 1.0)]))


# ------------------------------------------------------------- store contract


def test_forget_erases_the_stream_ids_log_snapshot_attrs_and_dead_letters(store):
    history(store)
    head = store.head()
    [result] = commit(store, tombstone("u1"))
    assert result.status == APPENDED
    assert result.stored.event["forgotten"] == 4        # three events and the user_attrs
    assert sorted(e.event["id"] for e in result.erased) == ["a1", "e1", "e2", "e3"]
    assert [(e.seq, e.type) for e in store.read("u1")] == [(4, FORGET_TYPE)]
    assert store.last_seq("u1") == 4                    # seq goes on after the erased ones
    assert store.snapshot("u1") is None
    assert store.user_attrs("u1") is None and store.user_attrs("u2") == {"age": 40}
    assert result.stored.gseq == head + 1
    everything = [(e.stream, e.event["id"]) for e in store.read_all()]
    assert ("u1", "e1") not in everything and ("", "a1") not in everything
    assert ("u2", "x1") in everything and ("", "a2") in everything
    assert [e.event["id"] for e in store.read("u2")] == ["x1"]
    assert [d["stream"] for d in store.dead_letters()] == ["u2"]
    assert store.dead_letter_count() == 1


def test_an_erased_event_id_is_a_new_event_again(store):
    history(store)
    commit(store, tombstone("u1"))
    [again] = commit(store, event("e1", ts=200.0))
    assert again.status == APPENDED and again.stored.seq == 5
    assert commit(store, event("x1", user="u2"))[0].status == DUPLICATE   # others keep theirs
    assert commit(store, event("e1", ts=200.0))[0].status == DUPLICATE


def test_forget_in_a_batch_erases_what_came_before_it_only(store):
    results = commit(store, event("b1"), tombstone("u1"), event("b2"))
    assert [r.status for r in results] == [APPENDED] * 3
    assert results[1].stored.event["forgotten"] == 1
    assert [e.event["id"] for e in store.read("u1")] == ["f1", "b2"]
    assert commit(store, event("b1"))[0].status == APPENDED


def test_a_snapshot_from_before_the_erasure_is_refused(store):
    history(store)
    commit(store, tombstone("u1"))
    stale = InterestState(user="u1", version=3, events=3).encode()
    store.commit(WriteBatch(snapshots=[("u1", 3, stale)]))
    assert store.snapshot("u1") is None
    store.commit(WriteBatch(snapshots=[("u1", 4, InterestState(user="u1", version=4).encode())]))
    assert store.snapshot("u1")[0] == 4


def test_forget_again_counts_only_what_came_since(store):
    history(store)
    commit(store, tombstone("u1"))
    commit(store, event("n1", ts=300.0))
    [second] = commit(store, tombstone("u1", id_="f2"))
    assert second.stored.event["forgotten"] == 1
    assert [e.event["id"] for e in store.read("u1")] == ["f2"]


def test_the_fold_resets_at_the_tombstone_and_replay_agrees(store):
    history(store)
    commit(store, tombstone("u1"), event("e9", item="m1", ts=600.0))
    params = FoldParams.from_config(load_config())
    state = replay("u1", store.read("u1"), params)
    assert state.events == 1 and state.version == 5 and state.seen == {"m1"}
    report = replay_tool.check(store, params, progress=False)
    assert report["ok"], report


def test_lmdb_keeps_the_erasure_across_reopen(tmp_path):
    s = LmdbStore(tmp_path / "j", sync=False)
    history(s)
    commit(s, tombstone("u1"))
    s.close()
    s = LmdbStore(tmp_path / "j", sync=False)
    try:
        assert [e.type for e in s.read("u1")] == [FORGET_TYPE]
        assert all(e.stream != "u1" or e.type == FORGET_TYPE for e in s.read_all())
        assert commit(s, event("e2", ts=700.0))[0].status == APPENDED
    finally:
        s.close()


# ------------------------------------------------------- service, real sockets


@pytest.fixture
def config():
    return load_config(store={"sync": False}, inference={"enabled": False},
                       runtime={"sweep_seconds": 0.2, "snapshot_every": 2},
                       projections={"learner": "thread"})


def serve(config, data):
    return Server(config, data, ingest=RANDOM_PORT, api=RANDOM_PORT)


def ingest_history(client):
    client.ingest([item_event("m1", ["Drama"]), item_event("m2", ["Comedy"]),
                   attrs_event("u1", "a1", 30)])
    reply = client.ingest([event("e1", item="m1"), event("e2", item="m2", ts=101.0),
                           event("e3", item="m1", ts=102.0), event("x1", user="u2")])
    assert reply["accepted"] == 4


@pytest.mark.integration
def test_forget_over_the_api_survives_restart_and_replay(config, tmp_path, context):
    data = tmp_path / "data"
    srv = serve(config, data)
    try:
        with Client(srv.api, timeout=10, context=context) as client:
            ingest_history(client)
            assert client.interests("u1")["events"] == 3
            reply = client.forget("u1")
            assert reply["forgotten"] == 4 and reply["user"] == "u1"
            after = client.interests("u1")
            assert (after["events"], after["tags"], after["summary"]) == (0, [], None)
            assert client.interests("u2")["events"] == 1
            assert srv.service.users.peek("u1") is None        # the actor was dropped
            assert "u1" not in srv.service.catalog.attrs
            explain = client.explain("u1")
            assert explain["events"] == 0 and not explain.get("timeline")
    finally:
        srv.stop()
    srv = serve(config, data)
    try:
        with Client(srv.api, timeout=10, context=context) as client:
            assert client.interests("u1")["events"] == 0
            again = client.ingest([event("e1", item="m1", ts=200.0)])
            assert (again["accepted"], again["duplicates"]) == (1, 0)
            assert client.interests("u1")["events"] == 1
    finally:
        srv.stop()
    store = LmdbStore(data / "journal", sync=False)
    try:
        report = replay_tool.check(store, FoldParams.from_config(config), progress=False)
        assert report["ok"], report
        out = tmp_path / "export.jsonl"
        replay_tool.export(store, out, include_derived=False)
        ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
        assert "e2" not in ids and "a1" not in ids and "x1" in ids
        assert ids.count("e1") == 1                              # the re-ingested one
        assert not any(i.startswith("forget-") for i in ids)     # tombstones are derived
    finally:
        store.close()


@pytest.mark.integration
def test_forget_of_an_unknown_user_and_the_command(config, tmp_path, context, capsys):
    srv = serve(config, tmp_path / "data")
    try:
        with Client(srv.api, timeout=10, context=context) as client:
            assert client.forget("nobody")["forgotten"] == 0
            reply = client.raw({"op": "forget", "user": ""})
            assert reply["error"]["code"] == "bad_request"
            reply = client.raw({"op": "forget", "user": "a\x00b"})
            assert reply["error"]["code"] == "bad_request"
            client.ingest([event("e1", user="u7")])
            capsys.readouterr()
            assert forget_tool.main(["u7", "--api", srv.api]) == 0       # `interest forget`
            assert json.loads(capsys.readouterr().out) == {"user": "u7", "forgotten": 1}
            assert client.interests("u7")["events"] == 0
    finally:
        srv.stop()
    assert forget_tool.main(["u7", "--api", srv.api, "--timeout", "0.3"]) == 3
    assert "no service at" in capsys.readouterr().err


@pytest.mark.integration
def test_forget_erases_model_profiles_and_their_cached_results(tmp_path, context):
    config = load_config(store={"sync": False},
                         inference={"refresh_min_events": 3, "refresh_quiet_s": 0.1})
    backend = FakeBackend(lambda prompt: '{"tags": ["Drama"], "summary": "into dramas"}')
    inference = Inference.start(config, str(tmp_path / "cache"), backend=backend)
    srv = Server(config, tmp_path / "data", ingest=RANDOM_PORT, api=RANDOM_PORT,
                 inference=inference)
    try:
        with Client(srv.api, timeout=10, context=context) as client:
            client.ingest([item_event("m1", ["Drama"])] +
                          [event(f"e{i}", item="m1", ts=100.0 + i) for i in range(3)])
            wait_for(lambda: client.interests("u1")["summary"], timeout=10,
                     reason="the model profile")
            [profile] = [e for e in srv.service.store.read("u1") if e.type == "profile"]
            key = (profile.event["model"], prompts.TASK_PROFILE, prompts.TEMPLATE_VERSION,
                   profile.event["input_hash"])
            assert key in srv.service.inference._cache                 # noqa: SLF001
            assert client.forget("u1")["forgotten"] == 4               # 3 events + the profile
            reply = client.interests("u1")
            assert (reply["events"], reply["summary"]) == (0, None)
            assert not (reply["llm"] or {}).get("model")               # no profile left
            assert key not in srv.service.inference._cache             # noqa: SLF001
    finally:
        srv.stop()
    cache = ResultCache(tmp_path / "cache")
    try:
        assert key not in cache
    finally:
        cache.close()


@pytest.mark.integration
def test_a_model_answer_for_work_before_the_erasure_is_not_journaled(tmp_path, context):
    slow = FakeBackend(lambda p: '{"tags": ["x"], "summary": "from erased data"}',
                       token_delay_s=0.05, tokens=20)
    config = load_config(store={"sync": False}, projections={"learner": "thread"},
                         inference={"refresh_min_events": 1, "refresh_quiet_s": 0.05})
    inference = Inference.start(config, None, backend=slow)
    srv = Server(config, tmp_path / "data", ingest=RANDOM_PORT, api=RANDOM_PORT,
                 inference=inference)
    try:
        with Client(srv.api, timeout=10, context=context) as client:
            client.ingest([event("a", item="m1")])
            profiles = srv.service.profiles
            wait_for(lambda: profiles.counters["refresh_requests"] >= 1, timeout=10,
                     reason="a background refresh at the model")            # it takes ~1 s
            assert client.forget("u1")["forgotten"] == 1
            wait_for(lambda: profiles.counters["discarded_after_forget"] >= 1, timeout=10,
                     reason="the late model answer to be discarded")
            time.sleep(0.2)
            assert [e.type for e in srv.service.store.read("u1")] == [FORGET_TYPE]
            assert client.interests("u1")["summary"] is None
    finally:
        srv.stop()
