"""The pooled runtime: many actors, few threads, one message at a time per actor."""

import threading
import time

import pytest

from interest.actors.runtime import ActorDirectory, Dispatcher, PooledActor


class Recorder(PooledActor):
    def __init__(self, log=None):
        super().__init__()
        self.seen = []
        self.active = 0
        self.overlaps = 0
        self.log = log

    def on_receive(self, message):
        """Runs on a dispatcher worker."""
        self.active += 1
        if self.active > 1:
            self.overlaps += 1
        self.seen.append(message)
        time.sleep(0)
        self.active -= 1
        return (list(self.seen), self.overlaps, threading.current_thread().name)

    def on_stop(self):
        if self.log is not None:
            self.log.append("stopped")


@pytest.fixture
def dispatcher():
    d = Dispatcher(workers=2, throughput=4, name="test")
    yield d
    d.shutdown(timeout=5)


@pytest.fixture
def refs(dispatcher):
    made = []
    yield made
    for ref in made:
        if ref.is_alive():
            ref.stop(timeout=5)


def test_messages_are_handled_in_order_one_at_a_time(dispatcher, refs):
    ref = Recorder.spawn(dispatcher)
    refs.append(ref)
    for i in range(500):
        ref.tell(i)
    seen, overlaps, thread = ref.ask("last", timeout=5)   # the last future is the barrier
    assert seen == list(range(500)) + ["last"]
    assert overlaps == 0
    assert thread.startswith("test-")


def test_many_actors_share_a_bounded_set_of_threads(dispatcher, refs):
    before = threading.active_count()
    refs.extend(Recorder.spawn(dispatcher) for _ in range(2000))
    for n in range(3):
        for ref in refs:
            ref.tell(n)
    futures = [ref.ask("end", block=False) for ref in refs]
    results = [f.get(timeout=10) for f in futures]
    assert all(seen == [0, 1, 2, "end"] for seen, _, _ in results)
    assert {thread for _, _, thread in results} <= {"test-0", "test-1"}
    assert threading.active_count() == before


def test_failure_in_ask_is_returned_to_the_caller(dispatcher, refs):
    class Boom(PooledActor):
        def on_receive(self, message):
            raise ValueError(message)

    ref = Boom.spawn(dispatcher)
    refs.append(ref)
    with pytest.raises(ValueError, match="bad"):
        ref.ask("bad", timeout=5)
    assert ref.is_alive()


def test_directory_activates_passivates_and_reactivates(dispatcher):
    """max_live is a hard cap (enforced at activation), idle actors go at the sweep."""
    log = []
    directory = ActorDirectory(lambda key: Recorder.spawn(dispatcher, log),
                               idle_seconds=60, max_live=2)
    try:
        for key in ("a", "b"):
            directory.ask(key, key).get(timeout=5)
        directory.tell("c", "c")        # beyond max_live: the least recently used goes at once
        assert sorted(directory.keys()) == ["b", "c"]
        assert directory.passivations == 1
        directory.ask("c", "sync").get(timeout=5)
        assert directory.sweep() == 0                                 # nothing idle yet
        assert directory.sweep(now=time.monotonic() + 120) == 2   # idle
        deadline = time.monotonic() + 5
        while len(log) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log == ["stopped"] * 3
        seen, _, _ = directory.ask("a", "again").get(timeout=5)
        assert seen == ["again"]                  # a fresh activation
        assert directory.activations == 4 and directory.passivations == 3
    finally:
        directory.stop_all(timeout=5)


class Slow(PooledActor):
    """Holds each message until ``gate`` opens, then records it."""

    def __init__(self, key, gate, handled):
        super().__init__()
        self.key, self.gate, self.handled = key, gate, handled

    def on_receive(self, message):
        """Runs on a dispatcher worker."""
        self.gate.wait(5)
        self.handled.append((self.key, message))


def test_max_live_is_a_hard_cap_even_when_every_actor_is_busy(dispatcher):
    gate, handled = threading.Event(), []
    directory = ActorDirectory(lambda key: Slow.spawn(dispatcher, key, gate, handled),
                               idle_seconds=60, max_live=3)
    try:
        for n in range(40):
            directory.tell(f"k{n % 10}", n)
            assert len(directory) <= 3
        gate.set()
        deadline = time.monotonic() + 10
        while len(handled) < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(n for _, n in handled) == list(range(40))   # every message, once
        assert all(key == f"k{n % 10}" for key, n in handled)
    finally:
        gate.set()
        directory.stop_all(timeout=5)
