"""Fusion weights per user segment, adapted online by multiplicative weights.

A user's segment follows how much the service knows: ``cold`` (fewer than 5
behaviour events), ``warming`` (5-19), ``warm`` (20+). Each segment has one
weight vector over the sources (summing to 1). When a user's next item
arrives, each source gets a reward in [0, 1] from the rank it gave that item
(``1/log2(2 + rank)`` inside its top ``reward_depth``, else 0), and the
segment's weights move by ``w_s *= exp(eta * (r_s - mean r))``, then are
renormalised with a floor, so no source is ever switched off for good. Each
user also has a bounded multiplicative factor per source (LRU of
``max_users``), learned the same way with ``user_eta`` and clipped, so the
weights a user sees are ``normalise(segment weights x user factors)``.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict

SEGMENTS = ("cold", "warming", "warm")

DEFAULT_WEIGHTS = {
    "cold": {"sequential": 0.1, "collaborative": 0.1, "content": 0.02, "semantic": 0.03,
             "popularity": 0.4, "demographic": 0.35},
    "warming": {"sequential": 0.55, "collaborative": 0.2, "content": 0.02, "semantic": 0.03,
                "popularity": 0.15, "demographic": 0.05},
    "warm": {"sequential": 0.65, "collaborative": 0.2, "content": 0.01, "semantic": 0.03,
             "popularity": 0.1, "demographic": 0.01},
}


def segment_of(events: int, cold_below: int = 5, warm_from: int = 20) -> str:
    if events < cold_below:
        return "cold"
    return "warming" if events < warm_from else "warm"


def _normalise(weights: dict[str, float], floor: float) -> dict[str, float]:
    total = sum(weights.values()) or 1.0
    out = {s: max(w / total, floor) for s, w in weights.items()}
    total = sum(out.values())
    return {s: w / total for s, w in out.items()}


def reward_of(rank: int | None, depth: int) -> float:
    return 0.0 if rank is None or rank >= depth else 1.0 / math.log2(2 + rank)


class Fusion:
    def __init__(self, sources: list[str], weights: dict | None = None, *, eta: float = 0.02,
                 user_eta: float = 0.1, floor: float = 0.01, user_clip: float = 4.0,
                 max_users: int = 100_000, reward_depth: int = 100, adapt: bool = True):
        self.sources = list(sources)
        base = weights or DEFAULT_WEIGHTS
        self.initial = {seg: _normalise({s: base[seg].get(s, 0.0) for s in self.sources}, 0.0)
                        for seg in SEGMENTS}
        self.segments = {seg: dict(w) for seg, w in self.initial.items()}
        self.eta, self.user_eta, self.floor, self.user_clip = eta, user_eta, floor, user_clip
        self.max_users, self.reward_depth, self.adapt = max_users, reward_depth, adapt
        self.users: OrderedDict[str, dict[str, float]] = OrderedDict()
        self.updates = {seg: 0 for seg in SEGMENTS}
        self._lock = threading.Lock()

    def weights(self, user: str | None, segment: str) -> dict[str, float]:
        with self._lock:
            base = self.segments[segment]
            factors = self.users.get(user) if user is not None else None
            if not factors:
                return dict(base)
            return _normalise({s: base[s] * factors.get(s, 1.0) for s in self.sources}, 0.0)

    def credit(self, user: str | None, segment: str, rewards: dict[str, float]) -> None:
        """One observed next item: ``rewards[source]`` in [0, 1]."""
        if not self.adapt or not rewards or max(rewards.values()) <= 0:
            return
        with self._lock:
            # only sources that had a say take part (a silent source is not punished
            # for having nothing to rank, e.g. demographic for a user without attributes)
            active = {s: r for s, r in rewards.items() if r is not None}
            mean = sum(active.values()) / len(active)
            seg = self.segments[segment]
            for s, r in active.items():
                seg[s] *= math.exp(self.eta * (r - mean))
            self.segments[segment] = _normalise(seg, self.floor)
            self.updates[segment] += 1
            if user is None:
                return
            factors = self.users.get(user)
            if factors is None:
                factors = self.users[user] = {s: 1.0 for s in self.sources}
                if len(self.users) > self.max_users:
                    self.users.popitem(last=False)
            else:
                self.users.move_to_end(user)
            for s, r in active.items():
                f = factors[s] * math.exp(self.user_eta * (r - mean))
                factors[s] = min(max(f, 1.0 / self.user_clip), self.user_clip)

    def stats(self) -> dict:
        with self._lock:
            return {"segments": {s: dict(w) for s, w in self.segments.items()},
                    "updates": dict(self.updates), "users_adapted": len(self.users)}

    def to_dict(self) -> dict:
        with self._lock:
            return {"segments": self.segments, "updates": self.updates,
                    "users": [[u, f] for u, f in self.users.items()]}

    def load_dict(self, obj: dict) -> None:
        with self._lock:
            for seg, w in obj["segments"].items():
                self.segments[seg] = {s: w.get(s, self.initial[seg][s]) for s in self.sources}
            self.updates = dict(obj["updates"])
            self.users = OrderedDict((u, dict(f)) for u, f in obj["users"])
