"""Actor-level tests of the user actor against a real LMDB store in a temp dir."""

import threading

import pytest

from actors.messages import Apply, Query
from actors.runtime import Dispatcher
from actors.user import UserActor, UserEnv
from engine.projections.catalog import Catalog
from engine.config import load_config
from engine.recommend import Recommender
from engine.projections.state import FoldParams, replay
from engine.journal.store import LmdbStore, WriteBatch
from engine.journal.writer import Writer
from tests.conftest import event, item_event


@pytest.fixture
def env(tmp_path):
    config = load_config()
    store = LmdbStore(tmp_path / "j", sync=False)
    writer = Writer(store)
    params = FoldParams.from_config(config)
    catalog = Catalog()
    env = UserEnv(store=store, writer=writer, params=params, snapshot_every=3,
                  recommender=Recommender(catalog, params, 3600.0))
    yield env
    writer.stop()
    store.close()


@pytest.fixture
def dispatcher():
    d = Dispatcher(workers=2, name="users")
    yield d
    d.shutdown(timeout=5)


@pytest.fixture
def spawn(dispatcher, env):
    refs = []

    def make(user):
        ref = UserActor.spawn(dispatcher, user, env)
        refs.append(ref)
        return ref
    yield make
    for ref in refs:
        if ref.is_alive():
            ref.stop(timeout=5)


def commit(env, *events):
    results = env.store.commit(WriteBatch(events=[
        ("" if e["type"] == "item" else e["user"], e) for e in events]))
    return [r.stored for r in results if r.stored is not None and r.stored.stream]


def ask(ref, op, **request):
    box = []
    done = threading.Event()
    ref.tell(Query(op, request, lambda r: (box.append(r), done.set())))
    assert done.wait(5), f"no reply to {op}"
    return box[0]


def test_apply_then_interests(env, spawn):
    commit(env, item_event("m1", ["Drama"]))
    entries = commit(env, event("a", item="m1"), event("b", "purchase", item="m1", ts=200.0))
    ref = spawn("u1")
    ref.tell(Apply(entries))
    reply = ask(ref, "interests", user="u1")
    assert reply["events"] == 2 and reply["version"] == 2
    assert reply["tags"][0]["tag"] == "Drama"


def test_activation_from_snapshot_and_tail_matches_replay(env, spawn):
    commit(env, item_event("m1", ["Drama"]), item_event("m2", ["Comedy"]))
    entries = commit(env, *[event(f"e{i}", item=f"m{1 + i % 2}", ts=100.0 + i) for i in range(7)])
    ref = spawn("u1")
    ref.tell(Apply(entries))
    ref.stop(timeout=5)                          # passivation writes a snapshot
    flushed = threading.Event()
    env.writer.barrier(flushed.set)
    assert flushed.wait(5)
    assert env.store.snapshot("u1")[0] == 7
    more = commit(env, event("late", item="m2", ts=500.0))
    again = spawn("u1")                          # snapshot (7) + journal tail (8)
    reply = ask(again, "interests", user="u1")
    expected = replay("u1", entries + more, env.params)
    assert reply["version"] == 8
    assert reply["tags"] == expected.tag_weights(env.params)[:50]


def test_recommend_excludes_seen_and_honours_candidates(env, spawn):
    commit(env, item_event("m1", ["Drama"]), item_event("m2", ["Drama"]),
           item_event("m3", ["Comedy"]))
    for item in ("m1", "m2", "m3"):
        env.recommender.catalog.put_item(item, env.store.item(item))
    entries = commit(env, event("a", item="m1"))
    ref = spawn("u1")
    ref.tell(Apply(entries))
    reply = ask(ref, "recommend", user="u1")
    assert [row["item"] for row in reply["items"]] == ["m2", "m3"]
    assert all(abs(row["score"] - sum(row["sources"].values())) < 1e-9 for row in reply["items"])
    reply = ask(ref, "recommend", user="u1", candidates=["m3", "m1"], exclude_seen=False)
    assert {row["item"] for row in reply["items"]} == {"m1", "m3"}


def test_bad_query_is_answered_and_the_actor_lives(env, spawn):
    ref = spawn("u1")
    error = ask(ref, "recommend", user="u1", k="many")
    assert error.code == "bad_request" and "'k'" in str(error)
    assert ask(ref, "interests", user="u1")["events"] == 0


def test_an_unreadable_snapshot_is_rebuilt_from_the_journal(env, spawn):
    commit(env, item_event("m1", ["Drama"]))
    entries = commit(env, event("a", item="m1"), event("b", "purchase", item="m1", ts=200.0))
    env.store.commit(WriteBatch(snapshots=[("u1", 2, b"\xc1 not a state")]))
    reply = ask(spawn("u1"), "interests", user="u1")
    assert reply["version"] == 2
    assert reply["tags"] == replay("u1", entries, env.params).tag_weights(env.params)[:50]
