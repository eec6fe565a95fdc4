"""Time-decayed popularity: each interaction adds ``weight * 2**((ts - t0) / h)``.

Scores are kept relative to a reference time ``t0`` so that adding an event
never touches the others; when the exponent grows large, every score is
rescaled and ``t0`` moves forward. Ranking by the stored score equals ranking
by the score decayed to any later time. The largest score is tracked
incrementally (scores only grow between rebases), so a normalised score is
one dict lookup. Thread-safe (one lock); state survives a msgpack round trip.

``take_changed()`` returns the items added to since its last call (``None``
when every score changed: first call, after a rebase or a load), so a
snapshot rewrites only those (engine.recommend.scorers.pop_arrays).
"""

from __future__ import annotations

import heapq
import math
import threading

_REBASE_AT = 256.0   # doublings before rescaling (2**256 is far from float overflow)


class Popularity:
    def __init__(self, half_life_s: float, top_n: int = 200, top_every: int = 256):
        self.half_life = float(half_life_s)
        self.t0: float | None = None
        self.scores: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.max_score = 0.0
        self.adds = 0
        self.top_n = top_n
        self.top_every = top_every
        self._heap: list[tuple[float, str]] = []
        self._top_set: set[str] = set()
        self._changed: set[str] | None = None     # None: every item
        self._lock = threading.Lock()

    def add(self, item: str, ts: float, weight: float = 1.0) -> None:
        with self._lock:
            if self.t0 is None:
                self.t0 = ts
            exponent = (ts - self.t0) / self.half_life
            if exponent > _REBASE_AT:
                self._rebase(ts)
                exponent = 0.0
            value = self.scores.get(item, 0.0) + weight * math.exp2(exponent)
            self.scores[item] = value
            if value > self.max_score:
                self.max_score = value
            self.counts[item] = self.counts.get(item, 0) + 1
            self.adds += 1
            if self._changed is not None:
                self._changed.add(item)
            # the candidate list is refreshed on the write path, so it is a
            # function of the events seen (replay gives the same list)
            if self.adds % self.top_every == 1:
                self._refresh_top()
            elif item not in self._top_set:
                self._admit(item, value)

    def _admit(self, item: str, value: float) -> None:
        """Put ``item`` among the candidates if it beats the weakest one.

        ``_heap`` is a min-heap of (score when last checked, item); scores only
        grow between rebases, so a stale entry is only ever too low and is
        refreshed lazily when it reaches the top: O(log top_n) amortised.
        """
        heap, scores = self._heap, self.scores
        if len(heap) < self.top_n:
            heapq.heappush(heap, (value, item))
            self._top_set.add(item)
            return
        while heap[0][0] != scores[heap[0][1]]:
            heapq.heapreplace(heap, (scores[heap[0][1]], heap[0][1]))
        if value > heap[0][0]:
            self._top_set.discard(heap[0][1])
            heapq.heapreplace(heap, (value, item))
            self._top_set.add(item)

    def _refresh_top(self) -> None:
        best = heapq.nlargest(self.top_n, ((v, k) for k, v in self.scores.items()))
        heapq.heapify(best)
        self._heap = best
        self._top_set = {k for _, k in best}

    def _rebase(self, ts: float) -> None:
        factor = math.exp2(-(ts - self.t0) / self.half_life)
        self.scores = {k: v * factor for k, v in self.scores.items()}
        self.max_score = max(self.scores.values(), default=0.0)
        self.t0 = ts
        self._changed = None
        self._refresh_top()          # heap keys must never be above the real scores

    def take_changed(self) -> set[str] | None:
        """Items whose score changed since the last call (``None``: all of them)."""
        with self._lock:
            changed, self._changed = self._changed, set()
            return changed

    def candidates(self) -> list[str]:
        """The (roughly) ``top_n`` most popular items, refreshed as events arrive."""
        return [item for _, item in list(self._heap)]

    def get(self, item: str) -> float:
        """Normalised score of one item (the most popular scores 1)."""
        top = self.max_score
        return self.scores.get(item, 0.0) / top if top > 0 else 0.0

    def __len__(self) -> int:
        return len(self.scores)

    # ------------------------------------------------------ persistence

    def to_dict(self) -> dict:
        with self._lock:
            return {"half_life": self.half_life, "t0": self.t0, "scores": dict(self.scores),
                    "counts": dict(self.counts), "max": self.max_score, "adds": self.adds,
                    "top_n": self.top_n, "top_every": self.top_every,
                    "top": [[v, k] for v, k in self._heap]}

    @classmethod
    def from_dict(cls, obj: dict) -> "Popularity":
        pop = cls(obj["half_life"], obj.get("top_n", 200), obj.get("top_every", 256))
        pop.t0 = obj["t0"]
        pop.scores = dict(obj["scores"])
        pop.counts = dict(obj["counts"])
        pop.max_score = obj["max"]
        pop.adds = obj["adds"]
        pop._heap = [(v, k) for v, k in obj["top"]]
        heapq.heapify(pop._heap)
        pop._top_set = {k for _, k in pop._heap}
        return pop
