"""The single writer: group commit of everything the service writes to the store.

Callers ``submit`` jobs from any thread; the writer thread takes every job
waiting (up to ``max_batch`` events), commits them in ONE store transaction,
hands the committed entries to the ``on_commit`` hook (the committed log:
an append and a notify, nothing else), then calls each job's ``done`` with
its results and the head position after the commit, in submission order.
Nothing is acknowledged before the transaction is durable, and nothing but
committing runs on this thread: projections read the log on their own
threads. A ``barrier`` job commits nothing: its ``done`` runs once every job
submitted before it has been committed.

``stop`` lets the thread finish the commit it is in and every job already
queued (bounded by ``timeout``); jobs submitted after ``stop`` are answered
with ``Unavailable`` at once, so the store is never closed under a commit.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from interest.engine.errors import InterestError, StoreError, Unavailable
from interest.engine.journal.store import APPENDED, Store, WriteBatch

logger = logging.getLogger(__name__)


@dataclass
class WriteJob:
    events: list = field(default_factory=list)        # (stream, wire map)
    snapshots: list = field(default_factory=list)     # (stream, seq, bytes)
    meta: list = field(default_factory=list)          # (key, bytes)
    dead_letters: list = field(default_factory=list)  # (position, stream, projection, error, at)
    positions: list = field(default_factory=list)     # (projection name, position)
    done: Callable | None = None                      # done(results | InterestError, head)

    def __len__(self) -> int:
        return len(self.events)


_STOP = object()


class Writer:
    """One thread, one transaction per group of jobs."""

    def __init__(self, store: Store, max_batch: int = 4096,
                 on_commit: Callable[[list], None] | None = None):
        self.store = store
        self.max_batch = max_batch
        self.on_commit = on_commit
        self.head = store.head()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._pending_events = 0
        self._count_lock = threading.Lock()
        self._closed = False
        self.commits = 0
        self.committed_events = 0
        self.failed_commits = 0
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self._thread.start()

    def submit(self, job: WriteJob) -> None:
        """Queue ``job`` (any thread). After ``stop``, it is answered ``Unavailable``."""
        if self._closed:
            self._answer(job, Unavailable("the service is stopping; nothing was written"))
            return
        with self._count_lock:
            self._pending_events += len(job.events)
        self._jobs.put(job)

    def barrier(self, done: Callable[[int], None]) -> None:
        """``done(head)`` once every job submitted before it has been committed."""
        self.submit(WriteJob(done=lambda _results, head: done(head)))

    def depth(self) -> int:
        """Jobs waiting to be committed."""
        return self._jobs.qsize()

    def pending_events(self) -> int:
        """Events submitted and not yet committed."""
        return self._pending_events

    def _take(self) -> list[WriteJob] | None:
        first = self._jobs.get()
        if first is _STOP:
            return None
        jobs, size = [first], len(first.events)
        while size < self.max_batch:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                self._jobs.put(_STOP)
                break
            jobs.append(job)
            size += len(job.events)
        return jobs

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            batch = WriteBatch(recorded_at=time.time())
            for job in jobs:
                batch.events.extend(job.events)
                batch.snapshots.extend(job.snapshots)
                batch.meta.extend(job.meta)
                batch.dead_letters.extend(job.dead_letters)
                batch.positions.extend(job.positions)
            results = self._commit(batch)
            if not isinstance(results, InterestError):
                self._publish(results)
            with self._count_lock:      # only now: an event is always pending or in the log
                self._pending_events -= len(batch.events)
            self._finish(jobs, results)

    def _commit(self, batch: WriteBatch):
        try:
            results = self.store.commit(batch) if len(batch) else []
        except InterestError as exc:
            self.failed_commits += 1
            logger.error("commit of %d events failed: %s", len(batch.events), exc)
            return exc
        except Exception as exc:  # noqa: BLE001 - the writer must survive anything
            self.failed_commits += 1
            logger.exception("unexpected commit failure")
            return StoreError(f"commit failed: {exc}")
        self.commits += 1
        self.committed_events += len(batch.events)
        return results

    def _publish(self, results) -> None:
        entries = [r.stored for r in results if r.status == APPENDED]
        if not entries:
            return
        self.head = entries[-1].gseq
        if self.on_commit is not None:
            try:
                self.on_commit(entries)
            except Exception:  # noqa: BLE001
                logger.exception("the commit hook failed")

    def _finish(self, jobs, results) -> None:
        failed = isinstance(results, InterestError)
        offset = 0
        for job in jobs:
            n = len(job.events)
            self._answer(job, results if failed else results[offset:offset + n])
            offset += n

    def _answer(self, job: WriteJob, outcome) -> None:
        if job.done is None:
            return
        try:
            job.done(outcome, self.head)
        except Exception:  # noqa: BLE001
            logger.exception("write callback failed")

    def stop(self, timeout: float = 10.0) -> bool:
        """Commit what is queued, then stop; True if the thread ended within ``timeout``."""
        self._closed = True
        self._jobs.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error("the writer did not finish within %.0f s; the store stays open", timeout)
            return False
        self._drain_after_stop()
        return True

    def _drain_after_stop(self) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP:
                self._answer(job, Unavailable("the service is stopping; nothing was written"))
