"""The single writer: group commit of everything the service writes to the store.

Callers ``submit`` jobs from any thread; the writer thread takes every job
waiting (up to ``max_batch`` events), commits them in ONE store transaction,
then calls each job's ``done`` with its results, in submission order. Nothing
is acknowledged before the transaction is durable. A ``barrier`` job commits
nothing: its ``done`` runs once every job submitted before it has finished.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from engine.errors import InterestError, StoreError
from engine.journal.store import Store, WriteBatch

logger = logging.getLogger(__name__)


@dataclass
class WriteJob:
    events: list = field(default_factory=list)       # (stream, wire map)
    snapshots: list = field(default_factory=list)    # (stream, seq, bytes)
    meta: list = field(default_factory=list)         # (key, bytes)
    done: Callable | None = None                     # done(results | InterestError)


_STOP = object()


class Writer:
    """One thread, one transaction per group of jobs."""

    def __init__(self, store: Store, max_batch: int = 4096):
        self.store = store
        self.max_batch = max_batch
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.commits = 0
        self.committed_events = 0
        self.failed_commits = 0
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self._thread.start()

    def submit(self, job: WriteJob) -> None:
        self._jobs.put(job)

    def barrier(self, done: Callable[[], None]) -> None:
        self._jobs.put(WriteJob(done=lambda _results: done()))

    def depth(self) -> int:
        return self._jobs.qsize()

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
            try:
                results = self.store.commit(batch) if len(batch) else []
            except InterestError as exc:
                self.failed_commits += 1
                logger.error("commit of %d events failed: %s", len(batch.events), exc)
                self._finish(jobs, None, exc)
                continue
            except Exception as exc:  # noqa: BLE001 - the writer must survive anything
                self.failed_commits += 1
                logger.exception("unexpected commit failure")
                self._finish(jobs, None, StoreError(f"commit failed: {exc}"))
                continue
            self.commits += 1
            self.committed_events += len(batch.events)
            self._finish(jobs, results, None)

    @staticmethod
    def _finish(jobs, results, error) -> None:
        offset = 0
        for job in jobs:
            n = len(job.events)
            if job.done is not None:
                try:
                    job.done(error if error is not None else results[offset:offset + n])
                except Exception:  # noqa: BLE001
                    logger.exception("write callback failed")
            offset += n

    def stop(self, timeout: float = 10.0) -> None:
        self._jobs.put(_STOP)
        self._thread.join(timeout)
