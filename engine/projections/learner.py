"""The model learner: the recommendation models as a projection of the log.

It runs on its own thread, owns the mutable models (``Recommender.learner``)
and is the only thread that changes them. Readers never touch them: every
``publish_s`` (and whenever it catches up with the head) the learner
publishes an immutable snapshot (``Models``) by swapping one reference,
``models``; scoring reads that snapshot and takes no lock the learner holds.

Its position is the position of the last *published* snapshot, so a waiter
on it (the evaluation harness, ``flush`` with the learner) sees the models
that learned everything up to it. Durable position: the model checkpoint
(``DATA/models/recommender.msgpack``, written every ``checkpoint_s``), which
records the last position it learned; a restart loads it and replays only
the log after it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from interest.engine.journal.codec import CATALOG_STREAM
from interest.engine.journal.events import PROFILE_TYPE
from interest.engine.projections.runner import DeadLetters, Projection

logger = logging.getLogger(__name__)


class LearnerProjection(Projection):
    name = "learner"

    def __init__(self, recommender, dead: DeadLetters, checkpoint_path: Path, *,
                 publish_s: float = 0.2):
        self.recommender = recommender
        self.dead = dead
        self.checkpoint_path = Path(checkpoint_path)
        self.publish_s = publish_s
        self._unpublished: list = []          # done callbacks of batches learned, not published
        self._learned = 0
        #: catalog_at(position, timeout): wait until the shared catalog holds the entries up
        #: to ``position`` (the catalog projection's thread fills it)
        self.catalog_at = None
        self._published_at = time.monotonic()
        self.publishes = 0
        self.publish_ms = 0.0
        recommender.learner.publish()

    @property
    def models(self):
        """The newest snapshot (the learner may also publish on its own while observing)."""
        return self.recommender.learner.models

    def start_position(self) -> int:
        return self.recommender.gseq

    def handle(self, entries, done) -> None:
        observe = self.recommender.learner.observe
        for entry in entries:
            if entry.stream == CATALOG_STREAM or entry.event["type"] == PROFILE_TYPE:
                continue
            try:
                observe(entry)
            except Exception as exc:  # noqa: BLE001
                self.dead.record(entry, self.name, exc)
        self._unpublished.append(done)
        self._learned = entries[-1].gseq
        # at most every publish_s, and never spending more than a fifth of the time publishing
        if time.monotonic() - self._published_at >= max(self.publish_s, self.publish_ms / 250):
            self.publish()

    def idle(self) -> None:
        """Caught up: publish what was learned (or embedded) since the last snapshot."""
        if self._unpublished or self.recommender.learner.changed():
            self.publish()

    def publish(self) -> None:
        if self.catalog_at is not None and self._learned:     # the tag matrix as of our position
            self.catalog_at(self._learned, 1.0)
        t0 = time.perf_counter()
        self.recommender.learner.publish()
        self.publish_ms = (time.perf_counter() - t0) * 1000
        self.publishes += 1
        self._published_at = time.monotonic()
        waiting, self._unpublished = self._unpublished, []
        for done in waiting:
            done()

    def save_position(self, position: int) -> None:
        """Checkpoint the models (they record the last position they learned)."""
        if self.recommender.gseq > self.recommender.base_gseq:
            self.recommender.save(self.checkpoint_path)

    def stats(self) -> dict:
        return {"publishes": self.publishes, "last_publish_ms": round(self.publish_ms, 2)}
