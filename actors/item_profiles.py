"""Generating item profiles through the inference actor and embedding the enriched text.

``ItemProfiler.catalog_changed(items)`` is the service's catalog embedding path
when ``[inference] item_profiles`` is on (the catalog projection calls it for
new or changed items, and the service once at start for the whole catalog):

* an item whose journaled profile is current (``current_profile``: it was
  written from the item's present title and tags) is embedded from its
  enriched text at once; the model is not asked again;
* any other item is embedded from its catalog text at once (so it is never
  left without a vector while it waits) and queued for a profile.

``profile_items(items)`` queues items for a profile. At most ``max_in_flight``
profile requests are at the inference actor at once, at ``background``
priority, so interactive and online work always overtakes them and a large
catalog never fills the model's inbox (a queue of aged background jobs would
outrank fresh user refreshes). Each request uses the one-item user-profile
prompt (``engine.llm.item_profiles``), so the result cache answers an item
seen before without running the model. Each profile goes to
``on_profile(profile)`` (the service journals it as an ``item_profile``
event), then the item's enriched text is embedded in batches and the vectors
go to ``on_vector(item, vector)`` (the recommender's ``set_item_vector``: the
semantic source's item side). An item whose profile fails, or whose title or
tags changed while it was profiled (it is queued again by that change), is
embedded from its plain catalog text, so it is never left without a vector.

Threads: ``catalog_changed`` runs on the catalog projection's thread (and the
service's, at start); ``_profiled`` and ``_vectors_ready`` run on the
inference thread (or the caller's, when the model answers at once, e.g.
unavailable); ``on_profile`` and ``on_vector`` are called from them and must
not block. The queue and the counters are under one lock.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from interest.actors.inference_requests import EmbedRequest, ProfileRequest, ProfileResult
from interest.engine.errors import Unavailable
from interest.engine.journal.events import ITEM_PROFILE_TYPE, ItemProfileEvent
from interest.engine.llm.item_profiles import (ItemProfile, current_profile, profile_key,
                                               profile_text, prompt_items, source_hash)

logger = logging.getLogger(__name__)

COUNTERS = ("requested", "profiled", "cached", "failed", "superseded", "journal_errors",
            "from_journal", "embedded", "embed_errors")


class ItemProfiler:
    def __init__(self, inference, catalog_get: Callable[[str], dict | None],
                 vocabulary: Callable[[], Sequence[str]], on_vector: Callable[[str, Any], None], *,
                 embed_batch: int = 32, deadline_s: float = 6000.0,
                 on_profile: Callable[[ItemProfile], None] | None = None,
                 max_in_flight: int = 1) -> None:
        self.inference = inference
        self.catalog_get = catalog_get
        self.vocabulary = vocabulary
        self.on_vector = on_vector
        self.on_profile = on_profile
        self.embed_batch = max(1, int(embed_batch))
        self.deadline_s = float(deadline_s)
        self.max_in_flight = max(1, int(max_in_flight))
        self.counters = dict.fromkeys(COUNTERS, 0)
        self._lock = threading.Lock()
        self._texts: dict[str, str] = {}     # item -> enriched text waiting to be embedded
        self._queue: dict[str, None] = {}    # items waiting for a profile request, oldest first
        self._in_flight = 0                  # profile requests at the model, not answered yet
        self._pumping = False                # one thread submits at a time (see _pump)
        self._stopped = False

    # ------------------------------------------------------------ entry points

    def catalog_changed(self, items: Sequence[str]) -> None:
        """Catalog projection thread: embed new or changed ``items`` now (from a current
        journaled profile, else from their catalog text) and queue the ones without a
        current profile for one."""
        texts, missing = {}, []
        for item in items:
            record = self._record(item)
            profile = current_profile(item, record)
            texts[item] = profile_text(item, record, profile)
            if profile is None:
                missing.append(item)
        self._count("from_journal", len(texts) - len(missing))
        self._embed(texts)
        self.profile_items(missing)

    def profile_items(self, items: Sequence[str]) -> None:
        """Any thread: queue ``items`` for a profile (an item already queued keeps its
        place; the prompt is built from the catalog when its request is submitted)."""
        if not items or not self.inference.available:
            return
        with self._lock:
            if self._stopped:
                return
            for item in items:
                if item not in self._queue:
                    self._queue[item] = None
                    self.counters["requested"] += 1
        self._pump()

    def stop(self) -> None:
        """Any thread: submit nothing more (answers still arriving are handled)."""
        with self._lock:
            self._stopped = True
            self._queue.clear()

    # ------------------------------------------------------------ profiles

    def _pump(self) -> None:
        """Submit queued items while fewer than ``max_in_flight`` are at the model. One
        thread pumps at a time, in a loop, so a model that answers at once (unavailable)
        never recurses through ``_profiled``; a call meanwhile leaves its work to it."""
        with self._lock:
            if self._pumping:
                return
            self._pumping = True
        while True:
            with self._lock:
                if self._stopped or self._in_flight >= self.max_in_flight or not self._queue:
                    self._pumping = False
                    return
                item = next(iter(self._queue))
                del self._queue[item]
                self._in_flight += 1
            self._submit(item)

    def _submit(self, item: str) -> None:
        """Ask for ``item``'s profile; a request that cannot be built or sent is answered
        as failed at once, so its slot is never lost."""
        record = self._record(item)
        done = partial(self._profiled, item, source_hash(item, record))
        try:
            request = ProfileRequest(
                profile_key(item), prompt_items(item, record), (), tuple(self.vocabulary()),
                "background", time.monotonic() + self.deadline_s, done)
        except Exception as exc:  # noqa: BLE001 - e.g. the vocabulary changing under us
            done(exc)
            return
        self.inference.submit_profile(request)

    def _record(self, item: str) -> dict:
        return self.catalog_get(item) or {}

    def _profiled(self, item: str, source: str, result: ProfileResult | Exception) -> None:
        """Inference thread: journal the profile, queue the item's enriched text."""
        record = self._record(item)
        profile = self._accepted(item, source, record, result)
        with self._lock:
            self._texts[item] = profile_text(item, record, profile)
            self._in_flight -= 1
            idle = self._in_flight == 0 and not self._queue
            ready = len(self._texts) >= self.embed_batch or idle
            batch, self._texts = (self._texts, {}) if ready else ({}, self._texts)
        self._embed(batch)
        self._pump()

    def _accepted(self, item: str, source: str, record: dict,
                  result: ProfileResult | Exception) -> ItemProfile | None:
        """The profile to embed ``item`` with, journaled; None when there is none."""
        if isinstance(result, Exception):
            self._count("failed")
            log = logger.debug if isinstance(result, Unavailable) else logger.warning
            log("profile of item %r failed (embedded from its catalog text): %s", item, result)
            return None
        self._count("cached" if result.cached else "profiled")
        if source != source_hash(item, record):
            self._count("superseded")      # its title or tags changed meanwhile: queued again
            return None
        profile = ItemProfile(item, tuple(result.tags), result.summary, result.model,
                              result.input_hash, source)
        if self.on_profile is not None:
            try:
                self.on_profile(profile)
            except Exception:  # noqa: BLE001 - the item still gets a vector
                self._count("journal_errors")
                logger.exception("the profile of item %r could not be journaled", item)
                return None
        return profile

    # ------------------------------------------------------------ embeddings

    def _embed(self, texts: dict[str, str]) -> None:
        """Submit ``texts`` (item -> text) for embedding, ``embed_batch`` per request: an
        embedding call cannot be pre-empted, so small requests let other work in between."""
        keys = list(texts)
        for start in range(0, len(keys), self.embed_batch):
            chunk = keys[start:start + self.embed_batch]
            self.inference.submit_embed(EmbedRequest(
                tuple(chunk), tuple(texts[k] for k in chunk), "background",
                time.monotonic() + self.deadline_s, self._vectors_ready))

    def _vectors_ready(self, vectors: dict[str, list[float]] | Exception) -> None:
        """Inference thread: hand each vector to ``on_vector``."""
        if isinstance(vectors, Exception):
            self._count("embed_errors")
            log = logger.debug if isinstance(vectors, Unavailable) else logger.warning
            log("item embeddings failed: %s", vectors)
            return
        self._count("embedded", len(vectors))
        for item, vector in vectors.items():
            self.on_vector(item, vector)

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def stats(self) -> dict:
        """Counters, plus ``queued`` (waiting for a request), ``in_flight`` (at the model),
        ``outstanding`` (both) and ``waiting_embed`` (profiled, not yet embedded)."""
        with self._lock:
            return {**self.counters, "queued": len(self._queue), "in_flight": self._in_flight,
                    "outstanding": len(self._queue) + self._in_flight,
                    "waiting_embed": len(self._texts)}


def item_profile_event(profile: ItemProfile, ts: float) -> ItemProfileEvent:
    """The ``item_profile`` event that journals ``profile`` (catalog stream)."""
    return ItemProfileEvent(
        id=f"item-profile-{uuid.uuid4().hex}", type=ITEM_PROFILE_TYPE, ts=ts, item=profile.item,
        keywords=profile.keywords, description=profile.description, model=profile.model,
        input_hash=profile.input_hash, source_hash=profile.source_hash)
