"""Running projections: consumers of the committed log, each at its own position.

A ``Projection`` turns log entries into something (user states, the catalog,
recommendation models, profile refreshes). A ``ProjectionRunner`` gives it a
thread that reads the log from the projection's position and hands it
batches; the projection says when a batch is applied by calling
``done(last position)``, at once or later from another thread (the user
projection's actors finish batches out of order; the runner advances the
applied position only over a contiguous prefix).

* ``position``: every entry up to it has been applied. Readers wait on it
  with ``when_at(position, callback)`` (read-your-writes, flush).
* Durable position: ``Projection.save_position`` is called every
  ``checkpoint_s`` and at stop; on restart the projection resumes from what
  ``Projection.start_position`` returns, so it can fall behind, catch up and
  restart.
* Failures: a projection records an entry it cannot handle with
  ``DeadLetters.record`` (logged once with its position, counted, and stored
  in the journal's dead-letter table) and moves on. An exception that
  escapes ``handle`` dead-letters the whole batch and the runner moves on:
  nothing ever waits for a callback that will not come.

``handle`` and ``save_position`` run on the runner's thread.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from typing import Callable

from interest.engine.journal.codec import StoredEvent
from interest.engine.projections.log import CommittedLog

logger = logging.getLogger(__name__)


class DeadLetters:
    """Entries a projection failed on: logged once, counted, stored."""

    def __init__(self, store_letter: Callable[[tuple], None] | None = None):
        self._store_letter = store_letter     # e.g. a writer job with dead_letters=[letter]
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def record(self, entry: StoredEvent, projection: str, error: BaseException) -> None:
        """Any thread: one entry ``projection`` could not handle."""
        self.record_letter(entry.gseq, entry.stream, projection,
                           f"{type(error).__name__}: {error}"[:1000])

    def record_letter(self, position: int, stream: str, projection: str, error: str) -> None:
        """Any thread: the same, from its fields (a projection in another process)."""
        with self._lock:
            self.counts[projection] = self.counts.get(projection, 0) + 1
        logger.error("projection %s failed on the entry at position %d (stream %r): %s",
                     projection, position, stream, error)
        if self._store_letter is not None:
            self._store_letter((position, stream, projection, error, time.time()))

    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())


class Projection(ABC):
    """A log consumer. Subclasses set ``name`` and implement ``handle``."""

    name = "projection"
    #: ingest replies and flush wait for it, backpressure counts its lag
    required = False

    def start_position(self) -> int:
        """Where to resume: every entry up to this position is already reflected."""
        return 0

    @abstractmethod
    def handle(self, entries: list[StoredEvent], done: Callable[[int], None]) -> None:
        """Apply ``entries`` in order; call ``done(entries[-1].gseq)`` once applied."""

    def save_position(self, position: int) -> None:  # noqa: B027
        """Make ``position`` durable (the default keeps nothing)."""

    def idle(self) -> None:  # noqa: B027
        """Called when the projection has caught up with the head."""

    def stats(self) -> dict:
        return {}


class _Waiters:
    """Callbacks waiting for a position, fired in position order."""

    def __init__(self):
        self._heap: list = []
        self._ids = itertools.count()

    def add(self, position: int, callback) -> None:
        heapq.heappush(self._heap, (position, next(self._ids), callback))

    def pop_until(self, position: int) -> list:
        out = []
        while self._heap and self._heap[0][0] <= position:
            out.append(heapq.heappop(self._heap)[2])
        return out

    def pop_all(self) -> list:
        out = [cb for _, _, cb in self._heap]
        self._heap.clear()
        return out


class Positioned:
    """A position in the log that only moves forward, with its waiters and its lag.

    Subclasses set ``log``, ``position`` and ``saved`` and call ``_init_waiting``;
    they move the position with ``_advance`` and end with ``_release_waiters``.
    """

    def _init_waiting(self) -> None:
        self._lock = threading.Lock()
        self._waiters = _Waiters()
        self._closed = threading.Event()

    def when_at(self, position: int, callback: Callable[[bool], None]) -> None:
        """``callback(True)`` once every entry up to ``position`` is applied (maybe now),
        ``callback(False)`` if it stops first."""
        with self._lock:
            if self.position < position:
                if not self._closed.is_set():
                    self._waiters.add(position, callback)
                    return
                applied = False
            else:
                applied = True
        callback(applied)

    def lag(self) -> dict:
        out = self.log.lag(self.position)
        out["saved_position"] = self.saved
        return out

    def drain(self, timeout: float) -> bool:
        """Wait until everything up to the current head is applied."""
        target = self.log.head
        done = threading.Event()
        self.when_at(target, lambda _applied: done.set())
        return done.wait(timeout) and self.position >= target

    def _advance(self, position: int) -> None:
        """Move to ``position`` (never back) and fire the waiters it satisfies."""
        with self._lock:
            self.position = max(self.position, position)
            callbacks = self._waiters.pop_until(self.position)
        for callback in callbacks:
            _safe(callback, True)

    def _release_waiters(self) -> None:
        """Closing: every waiter is answered ``False`` (its entries are durable, not applied)."""
        self._closed.set()
        with self._lock:
            callbacks = self._waiters.pop_all()
        for callback in callbacks:
            _safe(callback, False)


class ProjectionRunner(Positioned):
    """One thread feeding one projection from the committed log."""

    def __init__(self, projection: Projection, log: CommittedLog, dead: DeadLetters, *,
                 batch: int = 1000, max_ahead: int = 20_000, checkpoint_s: float = 1.0):
        self.projection = projection
        self.name = projection.name
        self.log = log
        self.dead = dead
        self.batch = batch
        self.max_ahead = max(batch, max_ahead)
        self.checkpoint_s = checkpoint_s
        self._init_waiting()
        self._space = threading.Condition(self._lock)
        self.position = projection.start_position()
        self.saved = self.position
        self.dispatched = self.position
        self._pending: deque = deque()          # [last position, applied?] in log order
        self._stop = threading.Event()
        self.batches = 0
        self._thread = threading.Thread(target=self._run, name=f"projection-{self.name}",
                                        daemon=True)

    def start(self) -> "ProjectionRunner":
        self._thread.start()
        return self

    # -------------------------------------------------------------- loop

    def _run(self) -> None:
        next_save = time.monotonic() + self.checkpoint_s
        while not self._stop.is_set():
            if time.monotonic() >= next_save:
                next_save = time.monotonic() + self.checkpoint_s
                self._save()
            if not self._room():
                continue
            entries = self.log.read(self.dispatched, self.batch)
            if not entries:
                self._call(self.projection.idle)
                self.log.wait(self.dispatched, min(0.2, self.checkpoint_s))
                continue
            self._dispatch(entries)

    def _room(self) -> bool:
        """Wait (briefly) while too much is dispatched and not yet applied."""
        with self._space:
            if self.dispatched - self.position < self.max_ahead:
                return True
            self._space.wait(0.1)
            return False

    def _dispatch(self, entries: list[StoredEvent]) -> None:
        last = entries[-1].gseq
        slot = [last, False]
        with self._lock:
            self._pending.append(slot)
            self.dispatched = last
        self.batches += 1
        fired = []

        def done(_position: int = last) -> None:
            if fired:
                return          # a batch is applied once, whatever the projection does
            fired.append(True)
            self._applied(slot)
        try:
            self.projection.handle(entries, done)
        except Exception as exc:  # noqa: BLE001 - a projection never stalls the service
            for entry in entries:
                self.dead.record(entry, self.name, exc)
            done()

    def _applied(self, slot: list) -> None:
        with self._lock:
            slot[1] = True
            pending = self._pending
            last = None
            while pending and pending[0][1]:
                last = pending.popleft()[0]
            if last is not None:
                self._space.notify_all()
        if last is not None:
            self._advance(last)

    def _save(self) -> None:
        position = self.position
        if position != self.saved and self._call(self.projection.save_position, position):
            self.saved = position

    def _call(self, fn, *args) -> bool:
        try:
            fn(*args)
            return True
        except Exception:  # noqa: BLE001
            logger.exception("projection %s: %s failed", self.name, fn.__name__)
            return False

    # --------------------------------------------------------- lifecycle

    def stop(self, timeout: float = 5.0) -> None:
        """Stop reading, save the position, and release every waiter (they fire now)."""
        self._stop.set()
        with self._space:
            self._space.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._save()
        self._release_waiters()


def _safe(callback, applied: bool) -> None:
    try:
        callback(applied)
    except Exception:  # noqa: BLE001
        logger.exception("a projection waiter failed")
