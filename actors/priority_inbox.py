"""The inference actor's inbox: priority classes, ageing, coalescing, deadlines.

A pykka ``ActorInbox`` (installed through ``_create_actor_inbox``): first come
first served within a class; a waiting request gains one class per
``ageing_s`` seconds, so background work is never starved; expired work is
dropped and answered ``DeadlineExceeded``; pending profile refreshes of the
same user coalesce into one. pykka's own control messages bypass the classes.
Also the actor's thread-safe statistics, read without asking the actor.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from pykka import messages as pykka_messages
from pykka._envelope import Envelope

from interest.actors.inference_requests import PRIORITIES, _Job

LATENCY_WINDOW = 2048


class PriorityInbox:
    """pykka ``ActorInbox`` with priority classes, ageing, coalescing, deadlines.

    Jobs sit in one FIFO deque per class; an entry is ``[envelope, alive]`` so
    merged or expired jobs are removed lazily. ``get`` serves control messages
    first, then the class head with the best *effective* rank (its class
    minus one per ``ageing_s`` waited; ties go to the higher class of its own,
    then to the older request: an aged background job waits behind real
    interactive work one ageing step longer, and never ahead of an online
    request). With
    ``fifo=True`` it is a plain arrival-order queue (no classes, coalescing or
    pre-emption): the baseline for the benchmark.
    """

    def __init__(self, *, ageing_s: float = 30.0, fifo: bool = False) -> None:
        self.ageing_s = float(ageing_s)
        self.fifo = fifo
        self._cond = threading.Condition(threading.Lock())
        self._control: collections.deque[Envelope[Any]] = collections.deque()
        self._classes: list[collections.deque[list]] = [collections.deque() for _ in PRIORITIES]
        self._alive = [0] * len(PRIORITIES)
        self._pending_profile: dict[str, list] = {}
        self._seq = itertools.count()
        self._closed = False
        self._on_closed: Callable[[_Job], None] | None = None
        self._last_sweep = 0.0
        self.stop_requested = False
        self.coalesced = 0

    # -- ActorInbox protocol -------------------------------------------------

    def put(self, envelope: Envelope[Any], /) -> None:
        job = envelope.message
        if not isinstance(job, _Job):
            with self._cond:
                if isinstance(job, pykka_messages._ActorStop):  # noqa: SLF001
                    self.stop_requested = True
                self._control.append(envelope)
                self._cond.notify()
            return
        rejected = False
        with self._cond:
            if self._closed:
                rejected = True
            else:
                job.enqueued_at = time.monotonic()
                job.seq = next(self._seq)
                self._insert(job, envelope, front=False)
                self._cond.notify()
        if rejected and self._on_closed is not None:
            self._on_closed(job)

    def get(self) -> Envelope[Any]:
        with self._cond:
            while True:
                if self._control:
                    return self._control.popleft()
                entry = self._pop_best(time.monotonic())
                if entry is not None:
                    return entry[0]
                self._cond.wait()

    def empty(self) -> bool:
        with self._cond:
            return not self._control and not any(self._alive)

    # -- used by the actor ---------------------------------------------------

    def requeue(self, job: _Job) -> None:
        """Put a pre-empted job back at the head of its class (or merge it)."""
        with self._cond:
            if self._closed:
                closed = True
            else:
                closed = False
                self._insert(job, Envelope(job), front=True)
                self._cond.notify()
        if closed and self._on_closed is not None:
            self._on_closed(job)

    def best_waiting_rank(self, now: float | None = None) -> int | None:
        """Best effective rank among waiting jobs (None if none, or FIFO mode)."""
        if self.fifo:
            return None
        now = time.monotonic() if now is None else now
        with self._cond:
            best = None
            for cls in self._classes:
                head = self._head(cls)
                if head is not None:
                    r = self._effective(head[0].message, now)
                    if best is None or r < best:
                        best = r
            return best

    def expire(self, now: float | None = None, *, min_interval: float = 0.0) -> list[_Job]:
        """Remove and return every waiting job whose deadline has passed."""
        now = time.monotonic() if now is None else now
        out: list[_Job] = []
        with self._cond:
            if min_interval and now - self._last_sweep < min_interval:
                return out
            self._last_sweep = now
            for i, cls in enumerate(self._classes):
                if not self._alive[i]:
                    continue
                keep: collections.deque[list] = collections.deque()
                for entry in cls:
                    if not entry[1]:
                        continue
                    job = entry[0].message
                    if job.deadline <= now:
                        entry[1] = False
                        self._alive[i] -= 1
                        self._forget(job, entry)
                        out.append(job)
                    else:
                        keep.append(entry)
                self._classes[i] = keep
        return out

    def close(self, on_closed: Callable[[_Job], None]) -> list[_Job]:
        """Refuse further jobs (``on_closed`` answers them) and return the waiting ones."""
        with self._cond:
            self._closed = True
            self._on_closed = on_closed
            out = []
            for i, cls in enumerate(self._classes):
                out.extend(e[0].message for e in cls if e[1])
                cls.clear()
                self._alive[i] = 0
            self._pending_profile.clear()
            return out

    def depth(self) -> dict[str, int]:
        with self._cond:
            if self.fifo:
                # FIFO mode keeps everything in one deque: count by class anyway.
                counts = dict.fromkeys(PRIORITIES, 0)
                for e in self._classes[0]:
                    if e[1]:
                        counts[PRIORITIES[e[0].message.rank]] += 1
                return counts
            return {name: self._alive[i] for i, name in enumerate(PRIORITIES)}

    # -- internals (lock held) -----------------------------------------------

    def _effective(self, job: _Job, now: float) -> int:
        if self.ageing_s <= 0:
            return 0
        aged = int((now - job.enqueued_at) // self.ageing_s)
        return max(0, job.rank - aged)

    def _head(self, cls: collections.deque[list]) -> list | None:
        while cls and not cls[0][1]:
            cls.popleft()
        return cls[0] if cls else None

    def _insert(self, job: _Job, envelope: Envelope[Any], *, front: bool) -> None:
        if job.kind == "profile" and not self.fifo:
            pending = self._pending_profile.get(job.user)
            if pending is not None:
                self._merge(pending, job, requeued=front)
                return
        idx = 0 if self.fifo else job.rank
        entry = [envelope, True]
        if front:
            self._classes[idx].appendleft(entry)
        else:
            self._classes[idx].append(entry)
        self._alive[idx] += 1
        if job.kind == "profile" and not self.fifo:
            self._pending_profile[job.user] = entry

    def _merge(self, pending: list, job: _Job, *, requeued: bool) -> None:
        # Invariant: an entry sits in the deque of its job's rank at insertion.
        old: _Job = pending[0].message
        old_idx = old.rank
        if requeued:
            # The re-queued job is older than the pending one: the pending
            # inputs are newer and win; the older callers and place come first.
            keep = job
            keep.items, keep.queries, keep.vocabulary = old.items, old.queries, old.vocabulary
            keep.callers = job.callers + old.callers
            keep.rank = min(job.rank, old.rank)
            keep.deadline = min(job.deadline, old.deadline)
            keep.enqueued_at = min(job.enqueued_at, old.enqueued_at)
            keep.seq = min(job.seq, old.seq)
            pending[1] = False
            self._alive[old_idx] -= 1
            entry = [Envelope(keep), True]
            self._classes[keep.rank].appendleft(entry)
            self._alive[keep.rank] += 1
            self._pending_profile[keep.user] = entry
        else:
            old.merge_newer(job)
            if old.rank != old_idx:
                # Promoted: re-file at the tail of the higher class.
                pending[1] = False
                self._alive[old_idx] -= 1
                entry = [pending[0], True]
                self._classes[old.rank].append(entry)
                self._alive[old.rank] += 1
                self._pending_profile[old.user] = entry
        self.coalesced += 1

    def _forget(self, job: _Job, entry: list) -> None:
        if job.kind == "profile" and self._pending_profile.get(job.user) is entry:
            del self._pending_profile[job.user]

    def _pop_best(self, now: float) -> list | None:
        best_i = -1
        best_key: tuple[int, int, int] | None = None
        for i, cls in enumerate(self._classes):
            head = self._head(cls)
            if head is None:
                continue
            job = head[0].message
            key = (self._effective(job, now), job.rank, job.seq)
            if best_key is None or key < best_key:
                best_i, best_key = i, key
        if best_key is None:
            return None
        entry = self._classes[best_i].popleft()
        entry[1] = False
        self._alive[best_i] -= 1
        job = entry[0].message
        job.eff_rank = best_key[0]
        self._forget(job, entry)
        return entry


class InferenceStats:
    """Thread-safe counters, read by the facade without asking the actor."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, float] = collections.defaultdict(float)
        self.latency: dict[str, collections.deque[float]] = {
            p: collections.deque(maxlen=LATENCY_WINDOW) for p in PRIORITIES
        }
        self.in_flight: str | None = None

    def add(self, **deltas: float) -> None:
        with self._lock:
            for k, v in deltas.items():
                self.counters[k] += v

    def observe(self, priority: str, latency_ms: float) -> None:
        with self._lock:
            self.latency[priority].append(latency_ms)

    def set_in_flight(self, what: str | None) -> None:
        with self._lock:
            self.in_flight = what

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            c = dict(self.counters)
            lat = {p: list(v) for p, v in self.latency.items()}
            in_flight = self.in_flight
        out: dict[str, Any] = {k: (int(v) if float(v).is_integer() else v) for k, v in c.items()}
        out["in_flight"] = 1 if in_flight else 0
        out["in_flight_job"] = in_flight
        gen_s = c.get("generation_s", 0.0)
        out["tokens_per_s"] = (c.get("tokens", 0.0) / gen_s) if gen_s > 0 else 0.0
        out["latency_ms"] = {
            p: {
                "n": len(v),
                "p50": float(np.percentile(v, 50)) if v else None,
                "p99": float(np.percentile(v, 99)) if v else None,
            }
            for p, v in lat.items()
        }
        return out
