"""Generating item profiles through the inference actor and embedding the enriched text.

``ItemProfiler.profile_items(items)`` asks the inference actor, at
``background`` priority, for each item's profile (``engine.llm.item_profiles``:
the one-item user-profile prompt, so the result cache answers an item seen
before without running the model), then embeds each item's enriched text in
batches and hands the vectors to ``on_vector(item, vector)`` (the
recommender's ``set_item_vector``: the semantic source's item side). An item
whose profile fails is embedded from its plain catalog text, so it is never
left without a vector. ``on_profile(profile)``, if given, receives each
``ItemProfile`` (to journal it).

Callbacks run on the inference thread; nothing here blocks in them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from interest.actors.inference_requests import EmbedRequest, ProfileRequest, ProfileResult
from interest.engine.errors import Unavailable
from interest.engine.llm.item_profiles import ItemProfile, profile_key, profile_text, prompt_items

logger = logging.getLogger(__name__)


class ItemProfiler:
    def __init__(self, inference, catalog_get: Callable[[str], dict | None],
                 vocabulary: Callable[[], Sequence[str]], on_vector: Callable[[str, Any], None], *,
                 embed_batch: int = 32, deadline_s: float = 6000.0,
                 on_profile: Callable[[ItemProfile], None] | None = None) -> None:
        self.inference = inference
        self.catalog_get = catalog_get
        self.vocabulary = vocabulary
        self.on_vector = on_vector
        self.on_profile = on_profile
        self.embed_batch = max(1, int(embed_batch))
        self.deadline_s = float(deadline_s)
        self.counters = {"requested": 0, "profiled": 0, "cached": 0, "failed": 0, "embedded": 0,
                         "embed_errors": 0}
        self._lock = threading.Lock()
        self._texts: dict[str, str] = {}     # item -> text waiting to be embedded
        self._outstanding = 0                # profile requests not answered yet

    def profile_items(self, items: Sequence[str]) -> None:
        """Profile and embed ``items`` (at background priority; returns at once)."""
        if not self.inference.available:
            return
        vocab = tuple(self.vocabulary())
        with self._lock:
            self._outstanding += len(items)
            self.counters["requested"] += len(items)
        for item in items:
            self.inference.submit_profile(ProfileRequest(
                profile_key(item), prompt_items(item, self._record(item)), (), vocab,
                "background", time.monotonic() + self.deadline_s, partial(self._profiled, item)))

    def _record(self, item: str) -> dict:
        return self.catalog_get(item) or {}

    def _profiled(self, item: str, result: ProfileResult | Exception) -> None:
        profile = None
        if isinstance(result, Exception):
            self.counters["failed"] += 1
            log = logger.debug if isinstance(result, Unavailable) else logger.warning
            log("profile of item %r failed (embedded from its catalog text): %s", item, result)
        else:
            profile = ItemProfile(item, tuple(result.tags), result.summary, result.model,
                                  result.input_hash)
            self.counters["cached" if result.cached else "profiled"] += 1
            if self.on_profile is not None:
                self.on_profile(profile)
        with self._lock:
            self._texts[item] = profile_text(item, self._record(item), profile)
            self._outstanding -= 1
            ready = len(self._texts) >= self.embed_batch or self._outstanding == 0
            batch, self._texts = (self._texts, {}) if ready else ({}, self._texts)
        if batch:
            self.inference.submit_embed(EmbedRequest(
                tuple(batch), tuple(batch.values()), "background",
                time.monotonic() + self.deadline_s, self._vectors_ready))

    def _vectors_ready(self, vectors: dict[str, list[float]] | Exception) -> None:
        if isinstance(vectors, Exception):
            self.counters["embed_errors"] += 1
            logger.warning("item profile embeddings failed: %s", vectors)
            return
        self.counters["embedded"] += len(vectors)
        for item, vector in vectors.items():
            self.on_vector(item, vector)

    def stats(self) -> dict:
        with self._lock:
            return {**self.counters, "outstanding": self._outstanding, "waiting_embed": len(self._texts)}
