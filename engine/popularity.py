"""Time-decayed popularity: each interaction adds ``weight * 2**((ts - t0) / h)``.

Scores are kept relative to a reference time ``t0`` so that adding an event
never touches the others; when the exponent grows large, every score is
rescaled and ``t0`` moves forward. Ranking by the stored score equals ranking
by the score decayed to any later time. Thread-safe (one lock).
"""

from __future__ import annotations

import math
import threading

_REBASE_AT = 256.0   # doublings before rescaling (2**256 is far from float overflow)


class Popularity:
    def __init__(self, half_life_s: float):
        self.half_life = half_life_s
        self.t0: float | None = None
        self.scores: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, item: str, ts: float, weight: float = 1.0) -> None:
        with self._lock:
            if self.t0 is None:
                self.t0 = ts
            exponent = (ts - self.t0) / self.half_life
            if exponent > _REBASE_AT:
                self._rebase(ts)
                exponent = 0.0
            self.scores[item] = self.scores.get(item, 0.0) + weight * math.exp2(exponent)
            self.counts[item] = self.counts.get(item, 0) + 1

    def _rebase(self, ts: float) -> None:
        factor = math.exp2(-(ts - self.t0) / self.half_life)
        self.scores = {k: v * factor for k, v in self.scores.items()}
        self.t0 = ts

    def top(self, n: int) -> list[tuple[str, float]]:
        with self._lock:
            ranked = sorted(self.scores.items(), key=lambda kv: (-kv[1], kv[0]))
        return ranked[:n]

    def normalised(self) -> dict[str, float]:
        """Scores divided by the largest, so the best item scores 1."""
        with self._lock:
            if not self.scores:
                return {}
            top = max(self.scores.values())
            return {k: v / top for k, v in self.scores.items()} if top > 0 else {}
