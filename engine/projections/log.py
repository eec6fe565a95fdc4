"""The committed log as projections read it: the head and a tail of recent entries.

Every entry the writer commits has a global position (``gseq``, 1, 2, 3 ...
with no gaps). The writer thread calls ``append`` after each commit: a list
extend and a notify, nothing else. Projection threads call
``read(after, limit)`` for the entries after a position (from the in-memory
tail while it still holds them, from the store otherwise: a projection that
falls far behind, or restarts from its durable position, reads LMDB) and
``wait(after, timeout)`` to sleep until the head moves past a position.

Positions have gaps where a user's erasure (`forget`) removed entries, in the
store and, through ``erase``, in the tail; readers skip them.
"""

from __future__ import annotations

import bisect
import itertools
import threading
import time

from interest.engine.journal.codec import StoredEvent
from interest.engine.journal.store import Store


class CommittedLog:
    def __init__(self, store: Store, tail_entries: int = 100_000):
        self.store = store
        self.tail_entries = max(1000, tail_entries)
        self._cond = threading.Condition()
        self.head = store.head()
        self._tail: list[StoredEvent] = []     # ascending positions ending at head
        self._closed = False

    def append(self, entries: list[StoredEvent]) -> None:
        """Writer thread: ``entries`` were just committed (positions after ``head``)."""
        with self._cond:
            self._tail.extend(entries)
            if len(self._tail) > 2 * self.tail_entries:
                del self._tail[:len(self._tail) - self.tail_entries]
            self.head = entries[-1].gseq
            self._cond.notify_all()

    def read(self, after: int, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` entries with positions after ``after``, in order."""
        with self._cond:
            tail = self._tail
            if tail and tail[0].gseq <= after + 1:
                start = bisect.bisect_right(tail, after, key=_position)
                return tail[start:start + limit]
        return list(itertools.islice(self.store.read_all(after_gseq=after), limit))

    def wait(self, after: int, timeout: float) -> bool:
        """Block until the head is past ``after`` (True), the timeout or ``close``."""
        with self._cond:
            if self.head > after:
                return True
            if not self._closed:
                self._cond.wait(timeout)
            return self.head > after

    def recorded_at(self, position: int) -> float | None:
        """When the entry at ``position`` was committed, while the tail holds it."""
        with self._cond:
            tail = self._tail
            if tail and tail[0].gseq <= position <= tail[-1].gseq:
                entry = tail[bisect.bisect_left(tail, position, key=_position)]
                return entry.recorded_at if entry.gseq == position else None
        return None

    def erase(self, positions: set[int]) -> None:
        """Drop the entries at ``positions`` from the tail (the store has erased them)."""
        if positions:
            with self._cond:
                self._tail = [e for e in self._tail if e.gseq not in positions]

    def lag(self, position: int) -> dict:
        """How far ``position`` is behind the head: events and seconds."""
        head = self.head
        if position >= head:
            return {"position": position, "head": head, "lag_events": 0, "lag_s": 0.0}
        at = self.recorded_at(position + 1)
        lag_s = round(max(0.0, time.time() - at), 3) if at is not None else None
        return {"position": position, "head": head, "lag_events": head - position,
                "lag_s": lag_s}

    def close(self) -> None:
        """Wake every waiter for good (shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def _position(entry: StoredEvent) -> int:
    return entry.gseq
