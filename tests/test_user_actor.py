"""Actor-level tests of the user actor against a real LMDB store in a temp dir."""

import threading

import pytest

from interest.actors.messages import Apply, Query
from interest.actors.runtime import Dispatcher
from interest.actors.user import UserActor, UserEnv
from interest.engine.config import load_config
from interest.engine.journal.codec import StoredEvent
from interest.engine.journal.store import LmdbStore, WriteBatch
from interest.engine.journal.writer import Writer
from interest.engine.projections.runner import DeadLetters
from interest.engine.projections.state import FoldParams, replay
from interest.engine.serving.metrics import Metrics
from interest.engine.serving.requests import Interests
from tests.conftest import event, item_event


@pytest.fixture
def letters():
    return []


@pytest.fixture
def env(tmp_path, letters):
    config = load_config()
    store = LmdbStore(tmp_path / "j", sync=False)
    writer = Writer(store)
    env = UserEnv(store=store, writer=writer, params=FoldParams.from_config(config),
                  metrics=Metrics(), dead=DeadLetters(letters.append), snapshot_every=3)
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


def apply(ref, entries):
    """Tell an Apply and wait for its acknowledgement (the barrier of these tests)."""
    done = threading.Event()
    ref.tell(Apply(entries, done.set))
    assert done.wait(5), "the Apply was never acknowledged"


def state_of(ref):
    ref.ask(None, timeout=5)                   # the actor has handled everything before
    return ref._actor_weakref().read_state()   # noqa: SLF001 - what the read path does


def test_apply_then_read_state(env, spawn):
    commit(env, item_event("m1", ["Drama"]))
    entries = commit(env, event("a", item="m1"), event("b", "purchase", item="m1", ts=200.0))
    ref = spawn("u1")
    apply(ref, entries)
    state = state_of(ref)
    assert state.events == 2 and state.version == 2
    assert state.tag_weights(env.params)[0]["tag"] == "Drama"
    assert env.metrics.get("applied") == 2


def test_read_state_is_a_private_copy(env, spawn):
    commit(env, item_event("m1", ["Drama"]))
    ref = spawn("u1")
    apply(ref, commit(env, event("a", item="m1")))
    copy = state_of(ref)
    apply(ref, commit(env, event("b", item="m1", ts=300.0)))
    assert copy.events == 1 and state_of(ref).events == 2


def test_activation_from_snapshot_and_tail_matches_replay(env, spawn):
    commit(env, item_event("m1", ["Drama"]), item_event("m2", ["Comedy"]))
    entries = commit(env, *[event(f"e{i}", item=f"m{1 + i % 2}", ts=100.0 + i) for i in range(7)])
    ref = spawn("u1")
    apply(ref, entries)
    ref.stop(timeout=5)                          # passivation writes a snapshot
    flushed = threading.Event()
    env.writer.barrier(lambda _head: flushed.set())
    assert flushed.wait(5)
    assert env.store.snapshot("u1")[0] == 7
    more = commit(env, event("late", item="m2", ts=500.0))
    again = spawn("u1")                          # snapshot (7) + journal tail (8)
    state = state_of(again)
    expected = replay("u1", entries + more, env.params)
    assert state.version == 8
    assert state.tag_weights(env.params) == expected.tag_weights(env.params)


def test_an_entry_the_fold_cannot_apply_is_dead_lettered_and_the_rest_applied(env, spawn, letters):
    commit(env, item_event("m1", ["Drama"]))
    good = commit(env, event("a", item="m1"), event("c", item="m1", ts=300.0))
    broken = StoredEvent(stream="u1", seq=2, gseq=99, recorded_at=0.0,
                         event={"v": 1, "id": "b", "type": "view", "user": "u1"})  # no ts
    ref = spawn("u1")
    apply(ref, [good[0], broken, StoredEvent(stream="u1", seq=3, gseq=100, recorded_at=0.0,
                                             event=good[1].event, tags=good[1].tags)])
    state = state_of(ref)
    assert state.version == 3 and state.events == 2
    assert [(p, s, name) for p, s, name, _e, _at in letters] == [(99, "u1", "users")]
    assert "KeyError" in letters[0][3]
    apply(ref, [])                               # the actor lives on


def test_an_activation_failure_dead_letters_the_batch_and_still_acknowledges(env, spawn,
                                                                             letters, monkeypatch):
    commit(env, item_event("m1", ["Drama"]))
    entries = commit(env, event("a", item="m1"), event("b", item="m1", ts=200.0))

    def unreadable(_user):
        raise OSError("disk on fire")
    monkeypatch.setattr(env.store, "snapshot", unreadable)
    ref = spawn("u1")
    apply(ref, entries[1:])                      # not a first contact: activation reads the store
    assert [letter[0] for letter in letters] == [entries[1].gseq]
    monkeypatch.undo()
    apply(ref, entries[1:])                      # the next message activates it
    assert state_of(ref).version == 2


def test_fresh_interests_without_a_model_is_answered_from_state(env, spawn):
    commit(env, item_event("m1", ["Drama"]))
    ref = spawn("u1")
    apply(ref, commit(env, event("a", item="m1")))
    box, done = [], threading.Event()
    ref.tell(Query("interests", Interests(user="u1", fresh=True),
                   lambda r: (box.append(r), done.set())))
    assert done.wait(5)
    assert box[0]["events"] == 1 and box[0]["summary"] is None


def test_an_unreadable_snapshot_is_rebuilt_from_the_journal(env, spawn):
    commit(env, item_event("m1", ["Drama"]))
    entries = commit(env, event("a", item="m1"), event("b", "purchase", item="m1", ts=200.0))
    env.store.commit(WriteBatch(snapshots=[("u1", 2, b"\xc1 not a state")]))
    ref = spawn("u1")
    ref.tell(Query("interests", Interests(user="u1"), lambda _r: None))
    state = state_of(ref)
    assert state.version == 2
    assert state.tag_weights(env.params) == replay("u1", entries, env.params).tag_weights(env.params)
