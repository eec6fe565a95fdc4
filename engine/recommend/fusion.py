"""Fusion weights per user segment and context, learned online by pairwise ranking.

A user's segment follows how much the service knows: ``cold`` (fewer than 5
behaviour events), ``warming`` (5-19), ``warm`` (20+). The context is what
the query shows about the moment: ``session`` when the user's last two
positive events are at most ``SESSION_GAP_S`` apart (a binge), else
``visit``. Each key ``segment/context`` has one weight vector over the
sources (non-negative, summing to 1); a score is ``sum_s w_s * x_s`` with
``x_s`` the source's score divided by its maximum for the query, so every
source's contribution is exact and they add up to the score.

Learning (``credit``): one example is the item the user acted on (features
``x_pos``, one per source) against the items the service ranked above it
(``x_neg``, the best of them). The loss is the listwise softmax one,
``-log(exp(s w.x_pos) / sum_j exp(s w.x_j))`` over the item and its negatives
(with one negative it is the pairwise logistic loss), whose gradient
``g = x_pos - sum_j p_j x_j`` weighs each negative by how strongly it is
ranked, so the top of the list, what a user sees, matters most. The weights
take an exponentiated-gradient step shrunk toward the prior (in log space)::

    log w_s += rate * g_s - shrink * (log w_s - log prior_s)

Only the sources that had something to say for the query move, and they
share the weight they had together (a source with nothing to say is neither
rewarded nor punished); then the weights are renormalised with a floor. The
shrinkage keeps every source near enough to its prior that none dies for
good; the floor bounds how far one can fall. Everything here is a pure
function of the examples in order, so replaying the same journal gives the
same weights.

The priors and ``rate``/``shrink`` were chosen on the validation splits of
``interest eval --split validation`` (MovieLens-100K), never on the reported
points: item co-occurrence (``collaborative``) leads every segment there, and
``ease`` did not measure better (validation HR@10 with it at 0.05: prequential
0.1973 fixed / 0.1947 learned, leave-one-out 0.2375 / 0.2397; at 0.01: 0.2003 /
0.1987, 0.2407 / 0.2439), so it keeps only the floor of a prior.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict

SEGMENTS = ("cold", "warming", "warm")
CONTEXTS = ("session", "visit")
#: two positive events at most this far apart are one session
SESSION_GAP_S = 1800.0

DEFAULT_WEIGHTS = {
    "cold": {"sequential": 0.05, "collaborative": 0.55, "ease": 0.01, "content": 0.02,
             "semantic": 0.03, "popularity": 0.2, "demographic": 0.15},
    "warming": {"sequential": 0.1, "collaborative": 0.75, "ease": 0.01, "content": 0.02,
                "semantic": 0.03, "popularity": 0.07, "demographic": 0.03},
    "warm": {"sequential": 0.1, "collaborative": 0.8, "ease": 0.01, "content": 0.02,
             "semantic": 0.03, "popularity": 0.03, "demographic": 0.02},
}


def segment_of(events: int, cold_below: int = 5, warm_from: int = 20) -> str:
    if events < cold_below:
        return "cold"
    return "warming" if events < warm_from else "warm"


def context_of(gap_s: float | None) -> str:
    """``session`` when the last two positive events are at most SESSION_GAP_S apart."""
    return "session" if gap_s is not None and 0 <= gap_s <= SESSION_GAP_S else "visit"


def key_of(segment: str, context: str | None = None) -> str:
    return f"{segment}/{context or 'visit'}"


KEYS = tuple(key_of(s, c) for s in SEGMENTS for c in CONTEXTS)


def _normalise(weights: dict[str, float], floor: float) -> dict[str, float]:
    total = sum(weights.values()) or 1.0
    out = {s: max(w / total, floor) for s, w in weights.items()}
    total = sum(out.values())
    return {s: w / total for s, w in out.items()}


def list_gradient(weights: dict[str, float], pos: dict[str, float], negs: list[dict],
                  scale: float) -> dict[str, float]:
    """Ascent direction of the listwise softmax log-likelihood of the item acted on among it
    and the items ranked above it: ``x_pos - sum_j p_j x_j`` with ``p = softmax(scale w.x)``
    over all of them, so each negative counts by how strongly it is ranked (the top of the
    list matters most; one pair is the pairwise logistic loss)."""
    rows = [pos, *negs]
    scores = [scale * sum(w * x.get(s, 0.0) for s, w in weights.items()) for x in rows]
    top = max(scores)
    e = [math.exp(v - top) for v in scores]
    z = sum(e)
    return {s: pos.get(s, 0.0) - sum(p / z * x.get(s, 0.0) for p, x in zip(e, rows))
            for s in weights}


def _mean(rows: list[tuple[dict, int]]) -> dict[str, float]:
    """Weight vectors averaged by their update counts (plainly when none was updated)."""
    total = sum(n for _, n in rows)
    share = [(w, (n / total) if total else 1.0 / len(rows)) for w, n in rows]
    return {s: sum(w[s] * a for w, a in share) for s in rows[0][0]}


class Fusion:
    """Per key (segment/context) weights, learned from pairwise examples.

    ``users`` is kept (empty) for the learner process's delta, which copies it; the
    weights are per key, not per user.
    """

    def __init__(self, sources: list[str], weights: dict | None = None, *, rate: float = 0.03,
                 shrink: float = 0.01, scale: float = 10.0, floor: float = 0.005,
                 adapt: bool = True, max_users: int = 100_000):
        self.sources = list(sources)
        base = weights or DEFAULT_WEIGHTS
        self.prior = {seg: _normalise({s: base[seg].get(s, 0.0) or 0.01 for s in self.sources},
                                      0.0) for seg in SEGMENTS}
        self.initial = {key: dict(self.prior[key.split("/")[0]]) for key in KEYS}
        #: key -> weights (the learner process copies this dict of dicts)
        self.segments = {key: dict(w) for key, w in self.initial.items()}
        self.rate, self.shrink, self.scale, self.floor = rate, shrink, scale, floor
        self.adapt = adapt
        self.updates = {key: 0 for key in KEYS}
        self.users: OrderedDict = OrderedDict()
        self.max_users = max_users
        self._lock = threading.Lock()

    def weights(self, user: str | None, segment: str, context: str | None = None) -> dict:
        """The weights for a segment (``"warm"``) in a context, or for a full key."""
        key = segment if "/" in segment else key_of(segment, context)
        with self._lock:
            return dict(self.segments[key])

    def credit(self, user: str | None, key: str, pairs) -> None:
        """One example: ``pairs`` is a list of (features of the item acted on, features of an
        item ranked above it), each {source: normalised score}, the first the same in all."""
        if not self.adapt or not pairs:
            return
        if "/" not in key:
            key = key_of(key)
        active = [s for s in self.sources if any(s in pos or s in neg for pos, neg in pairs)]
        if not active:
            return
        with self._lock:
            w = self.segments[key]
            full = list_gradient(w, pairs[0][0], [neg for _, neg in pairs], self.scale)
            grad = {s: full[s] for s in active}
            prior = self.prior[key.split("/")[0]]
            logs = {s: math.log(w[s]) + self.rate * grad[s]
                    - self.shrink * (math.log(w[s]) - math.log(prior[s])) for s in active}
            top = max(logs.values())
            # only the sources that had a say move, and they share the mass they had:
            # a source with nothing to say is neither rewarded nor punished
            moved = {s: math.exp(v - top) for s, v in logs.items()}
            mass = sum(w[s] for s in active) / sum(moved.values())
            new = dict(w)
            new.update({s: v * mass for s, v in moved.items()})
            self.segments[key] = _normalise(new, self.floor)
            self.updates[key] += 1

    def stats(self) -> dict:
        """``segments``: per segment, its contexts' weights averaged by their updates (what
        the dashboard shows); ``keys``: the weights per segment/context."""
        with self._lock:
            keys = {k: dict(w) for k, w in self.segments.items()}
            updates = dict(self.updates)
        return {"segments": {seg: _mean([(keys[k], updates[k]) for k in KEYS
                                         if k.startswith(seg + "/")]) for seg in SEGMENTS},
                "keys": keys, "updates": updates,
                "prior": {k: dict(w) for k, w in self.prior.items()}}

    def to_dict(self) -> dict:
        with self._lock:
            return {"segments": self.segments, "updates": self.updates}

    def load_dict(self, obj: dict) -> None:
        with self._lock:
            for key, w in obj["segments"].items():
                if key in self.initial:
                    self.segments[key] = {s: w.get(s, self.initial[key][s])
                                          for s in self.sources}
            self.updates = {key: obj["updates"].get(key, 0) for key in KEYS}
