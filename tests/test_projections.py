"""The committed log and the projection runner: positions, waiters, failures, restarts."""

from __future__ import annotations

import threading

import pytest

from interest.engine.journal.store import MemoryStore, WriteBatch
from interest.engine.projections.log import CommittedLog
from interest.engine.projections.runner import DeadLetters, Projection, ProjectionRunner


def commit(store: MemoryStore, log: CommittedLog, n: int, start: int = 0, user: str = "u1"):
    batch = WriteBatch(events=[(user, {"v": 1, "id": f"e{start + i}", "type": "view",
                                       "ts": 1.0 + start + i, "user": user, "item": "m1"})
                               for i in range(n)])
    entries = [r.stored for r in store.commit(batch)]
    log.append(entries)
    return entries


class Recording(Projection):
    """Applies synchronously; fails on the positions in ``fail_at``."""

    name = "recording"

    def __init__(self, start=0, fail_at=(), dead=None):
        self.start = start
        self.fail_at = set(fail_at)
        self.dead = dead
        self.seen: list[int] = []
        self.saved: list[int] = []

    def start_position(self):
        return self.start

    def handle(self, entries, done):
        for entry in entries:
            if entry.gseq in self.fail_at:
                self.dead.record(entry, self.name, ValueError(f"bad entry {entry.gseq}"))
                continue
            self.seen.append(entry.gseq)
        done()

    def save_position(self, position):
        self.saved.append(position)


class Deferred(Projection):
    """Keeps each batch's ``done`` so the test decides when (and in which order) it applies."""

    name = "deferred"

    def __init__(self):
        self.pending: list = []
        self.arrived = threading.Semaphore(0)

    def handle(self, entries, done):
        self.pending.append((entries[-1].gseq, done))
        self.arrived.release()


class Exploding(Projection):
    name = "exploding"

    def handle(self, entries, done):
        raise RuntimeError("boom")


@pytest.fixture
def store():
    return MemoryStore()


@pytest.fixture
def log(store):
    log = CommittedLog(store, tail_entries=1000)
    yield log
    log.close()


@pytest.fixture
def runners():
    started = []

    def start(projection, log, dead=None, **kw):
        runner = ProjectionRunner(projection, log, dead or DeadLetters(), **kw).start()
        started.append(runner)
        return runner
    yield start
    for runner in started:
        runner.stop(timeout=5)


def wait_at(runner, position, timeout=5.0) -> bool:
    done = threading.Event()
    outcome = []
    runner.when_at(position, lambda applied: (outcome.append(applied), done.set()))
    assert done.wait(timeout), f"{runner.name} never reached position {position}"
    return outcome[0]


def test_log_reads_from_the_tail_and_from_the_store_in_order(store, log):
    commit(store, log, 3000)                    # more than the tail keeps
    assert log.head == 3000
    assert [e.gseq for e in log.read(0, 5)] == [1, 2, 3, 4, 5]          # from the store
    assert [e.gseq for e in log.read(2995, 100)] == [2996, 2997, 2998, 2999, 3000]
    assert log.read(3000, 10) == []


def test_a_projection_applies_every_entry_once_in_order(store, log, runners):
    projection = Recording()
    runner = runners(projection, log, batch=7)
    commit(store, log, 50)
    assert wait_at(runner, 50) is True
    assert projection.seen == list(range(1, 51))
    assert runner.position == 50
    assert runner.lag()["lag_events"] == 0


def test_waiters_fire_in_position_order_once_applied(store, log, runners):
    projection = Deferred()
    runner = runners(projection, log, batch=10)
    commit(store, log, 10)
    assert projection.arrived.acquire(timeout=5)
    fired = []
    runner.when_at(10, lambda applied: fired.append(applied))
    assert fired == []
    projection.pending[0][1]()
    assert fired == [True]
    runner.when_at(5, lambda applied: fired.append(("late", applied)))   # already applied: now
    assert fired == [True, ("late", True)]


def test_position_only_moves_over_a_contiguous_prefix(store, log, runners):
    projection = Deferred()
    runner = runners(projection, log, batch=5)
    for start in (0, 5, 10):
        commit(store, log, 5, start=start)
        assert projection.arrived.acquire(timeout=5)
    (_, first), (_, second), (_, third) = projection.pending
    third()
    second()
    assert runner.position == 0                   # batch 1 is still out
    first()
    assert runner.position == 15


def test_a_failing_entry_is_dead_lettered_and_the_projection_moves_on(store, log, runners):
    letters = []
    dead = DeadLetters(letters.append)
    projection = Recording(fail_at={3, 7}, dead=dead)
    runner = runners(projection, log, dead)
    commit(store, log, 10)
    assert wait_at(runner, 10) is True
    assert projection.seen == [1, 2, 4, 5, 6, 8, 9, 10]
    assert [(p, s, name) for p, s, name, _error, _at in letters] == \
        [(3, "u1", "recording"), (7, "u1", "recording")]
    assert "bad entry 3" in letters[0][3]
    assert dead.counts == {"recording": 2}


def test_an_exception_escaping_handle_dead_letters_the_batch_and_never_stalls(store, log, runners):
    letters = []
    dead = DeadLetters(letters.append)
    runner = runners(Exploding(), log, dead, batch=4)
    commit(store, log, 6)
    assert wait_at(runner, 6) is True
    assert [letter[0] for letter in letters] == [1, 2, 3, 4, 5, 6]
    assert dead.total() == 6


def test_stop_answers_every_waiter_not_applied(store, log, runners):
    projection = Deferred()
    runner = runners(projection, log)
    commit(store, log, 3)
    assert projection.arrived.acquire(timeout=5)
    outcome = []
    runner.when_at(3, outcome.append)
    runner.stop(timeout=5)
    assert outcome == [False]
    runner.when_at(3, outcome.append)            # after stop: answered at once
    assert outcome == [False, False]


def test_a_projection_resumes_from_its_saved_position(store, log, runners):
    commit(store, log, 20)
    first = Recording()
    runner = runners(first, log, checkpoint_s=0.05)
    assert wait_at(runner, 20)
    runner.stop(timeout=5)
    assert first.saved[-1] == 20                  # saved at stop (and periodically before)
    commit(store, log, 5, start=20)
    again = Recording(start=first.saved[-1])
    runner = runners(again, log)
    assert wait_at(runner, 25)
    assert again.seen == [21, 22, 23, 24, 25]     # only what came after the saved position


def test_a_slow_projection_falls_behind_and_reports_its_lag(store, log, runners):
    projection = Deferred()
    runner = runners(projection, log, batch=10, max_ahead=10)
    commit(store, log, 30)
    assert projection.arrived.acquire(timeout=5)
    assert not projection.arrived.acquire(timeout=0.3)      # max_ahead: one batch out at a time
    lag = runner.lag()
    assert lag["head"] == 30 and lag["position"] == 0 and lag["lag_events"] == 30
    assert lag["lag_s"] is not None and lag["lag_s"] >= 0
    projection.pending[0][1]()
    assert projection.arrived.acquire(timeout=5)             # room again: the next batch
    assert runner.position == 10
