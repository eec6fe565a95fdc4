"""Fusion weights per user segment and context, chosen online by the ranks they give.

A user's segment follows how much the service knows: ``cold`` (fewer than 5
behaviour events), ``warming`` (5-19), ``warm`` (20+). The context is what
the query shows about the moment: ``session`` when the user's last two
positive events are at most ``SESSION_GAP_S`` apart (a binge), else
``visit``. Each key ``segment/context`` has one weight vector over the
sources (non-negative, summing to 1); a score is ``sum_s w_s * x_s`` with
``x_s`` the source's score divided by its maximum for the query, so every
source's contribution is exact and they add up to the score.

Learning (``credit``) is online selection by measured ranking quality. Around
each key's current weights (the ``center``) stand candidates: the center
itself, for every source the center with that source's weight multiplied and
divided by ``step`` (renormalised, with a floor), and the prior. One example
is an event the user acted on, scored by every source with the snapshot that
had not learned it: for each candidate, the rank the item would have had
among the items the sources scored (the user's own items left out), and the
gain of that rank (``1 / log2(rank + 2)`` inside the first ``cutoff``, else
0: the top of the list is what users see). The learner keeps, per candidate,
the sum and sum of squares of its gain minus the center's on the same
examples (a paired comparison). Every ``check_every`` examples, a candidate
whose mean difference is more than ``evidence`` standard errors above zero
becomes the new center (the best such), and the evidence starts again. So
the weights move only where the data shows a better ranking, towards the
sources that rank what users go on to choose; the floor keeps every source
alive; the prior stays a candidate, so the weights go back when it ranks
better. Everything here is a pure function of the examples in order:
replaying the same journal gives the same weights.

An earlier learner took gradient steps on a softmax loss over the items ranked
above the acted-on one; those negatives are picked by the dominant source,
so it kept moving weight away from the best source (from neutral priors it
fell below collaborative alone on the validation split). This one measures
ranks directly.

The priors were chosen on the validation splits of ``interest eval --split
validation`` (MovieLens-100K), never on the reported points: item
co-occurrence (``collaborative``) leads every segment there, and ``ease`` did
not measure better, so it keeps only the floor of a prior. ``step``,
``evidence``, ``check_every`` and ``cutoff`` are statistical settings, not fit
to a dataset (``evidence`` 2.5 is about a 5 % false-move rate over the ~15
candidates, Bonferroni).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict

import numpy as np

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


#: ``[recommend] fusion_prior = "even"``: every source alike in every segment
EVEN_WEIGHTS = {seg: {s: 1.0 for s in DEFAULT_WEIGHTS[seg]} for seg in SEGMENTS}
PRIORS = {"validated": DEFAULT_WEIGHTS, "even": EVEN_WEIGHTS}


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


def candidates(center: dict[str, float], prior: dict[str, float], step: float,
               floor: float) -> list[dict[str, float]]:
    """The center first, then for each source (in order) the center with its weight times
    and divided by ``step`` (renormalised, floored), then the prior if it differs."""
    out = [dict(center)]
    for s in center:
        for factor in (step, 1.0 / step):
            tilted = dict(center)
            tilted[s] *= factor
            out.append(_normalise(tilted, floor))
    if prior != center:
        out.append(dict(prior))
    return out


def rank_gain(rank: int, cutoff: int) -> float:
    """What a rank (0 = first) is worth: ``1 / log2(rank + 2)`` inside ``cutoff``, else 0."""
    return 1.0 / math.log2(rank + 2) if rank < cutoff else 0.0


def ranks_of(features: np.ndarray, matrix: np.ndarray, target: int) -> np.ndarray:
    """Per candidate (a row of ``matrix``: weights by source), how many items of
    ``features`` (items x sources) score strictly above item ``target``."""
    totals = features @ matrix.T
    return (totals > totals[target]).sum(axis=0)


class Evidence:
    """Paired gains of a key's candidates against its center, since the last move."""

    __slots__ = ("sums", "squares", "n")

    def __init__(self, size: int, sums=None, squares=None, n: int = 0):
        self.sums = list(sums) if sums is not None else [0.0] * size
        self.squares = list(squares) if squares is not None else [0.0] * size
        self.n = n

    def add(self, gains: list[float]) -> None:
        base = gains[0]
        for c, g in enumerate(gains):
            d = g - base
            self.sums[c] += d
            self.squares[c] += d * d
        self.n += 1

    def best(self, evidence: float) -> int | None:
        """The candidate with the highest mean difference among those more than
        ``evidence`` standard errors above the center (None: none is)."""
        best, best_mean = None, 0.0
        for c in range(1, len(self.sums)):
            mean = self.sums[c] / self.n
            var = max(self.squares[c] / self.n - mean * mean, 0.0)
            if mean > 0 and (var == 0.0 or mean / math.sqrt(var / self.n) > evidence) \
                    and mean > best_mean:
                best, best_mean = c, mean
        return best

    def to_list(self) -> list:
        return [self.sums, self.squares, self.n]


def _mean(rows: list[tuple[dict, int]]) -> dict[str, float]:
    """Weight vectors averaged by their update counts (plainly when none was updated)."""
    total = sum(n for _, n in rows)
    share = [(w, (n / total) if total else 1.0 / len(rows)) for w, n in rows]
    return {s: sum(w[s] * a for w, a in share) for s in rows[0][0]}


class Fusion:
    """Per key (segment/context) weights, chosen online among candidates by their ranks.

    ``users`` is kept (empty) for the learner process's delta, which copies it; the
    weights are per key, not per user. ``segments`` maps a key to its current weights
    (the center) and ``updates`` counts each key's examples: both are read by the
    learner process's delta (engine.projections.learner_process).
    """

    def __init__(self, sources: list[str], weights: dict | None = None, *, step: float = 2.0,
                 evidence: float = 2.5, check_every: int = 100, cutoff: int = 20,
                 floor: float = 0.005, adapt: bool = True, max_users: int = 100_000):
        self.sources = list(sources)
        base = weights or DEFAULT_WEIGHTS
        self.prior = {seg: _normalise({s: base[seg].get(s, 0.0) or 0.01 for s in self.sources},
                                      0.0) for seg in SEGMENTS}
        self.initial = {key: dict(self.prior[key.split("/")[0]]) for key in KEYS}
        #: key -> weights (the learner process copies this dict of dicts)
        self.segments = {key: dict(w) for key, w in self.initial.items()}
        self.step, self.evidence, self.floor = step, evidence, floor
        self.check_every, self.cutoff = max(1, check_every), cutoff
        self.adapt = adapt
        self.updates = {key: 0 for key in KEYS}
        self.moves = {key: 0 for key in KEYS}
        self._candidates: dict[str, tuple[list, np.ndarray, Evidence]] = {}
        self.users: OrderedDict = OrderedDict()
        self.max_users = max_users
        self._lock = threading.Lock()

    def weights(self, user: str | None, segment: str, context: str | None = None) -> dict:
        """The weights for a segment (``"warm"``) in a context, or for a full key."""
        key = segment if "/" in segment else key_of(segment, context)
        with self._lock:
            return dict(self.segments[key])

    def _around(self, key: str) -> tuple[list, np.ndarray, Evidence]:
        """The key's candidates, their weight matrix (candidates x sources) and evidence."""
        found = self._candidates.get(key)
        if found is None:
            cands = candidates(self.segments[key], self.prior[key.split("/")[0]], self.step,
                               self.floor)
            matrix = np.array([[c[s] for s in self.sources] for c in cands], dtype=np.float64)
            found = self._candidates[key] = (cands, matrix, Evidence(len(cands)))
        return found

    def credit(self, user: str | None, key: str, example) -> None:
        """One example: ``(features, target)``, ``features`` an items x sources array of
        normalised scores (columns in ``sources`` order) over the items the sources
        scored, the user's own left out, and ``target`` the row of the item acted on."""
        if not self.adapt or example is None:
            return
        if "/" not in key:
            key = key_of(key)
        features, target = example
        with self._lock:
            cands, matrix, evidence = self._around(key)
            ranks = ranks_of(features, matrix, target)
            evidence.add([rank_gain(int(r), self.cutoff) for r in ranks])
            self.updates[key] += 1
            if evidence.n % self.check_every == 0:
                best = evidence.best(self.evidence)
                if best is not None:
                    self.segments[key] = cands[best]
                    self.moves[key] += 1
                    del self._candidates[key]

    def stats(self) -> dict:
        """``segments``: per segment, its contexts' weights averaged by their updates (what
        the dashboard shows); ``keys``: the weights per segment/context; ``moves``: how
        often each key's weights changed."""
        with self._lock:
            keys = {k: dict(w) for k, w in self.segments.items()}
            updates = dict(self.updates)
            moves = dict(self.moves)
        return {"segments": {seg: _mean([(keys[k], updates[k]) for k in KEYS
                                         if k.startswith(seg + "/")]) for seg in SEGMENTS},
                "keys": keys, "updates": updates, "moves": moves,
                "prior": {k: dict(w) for k, w in self.prior.items()}}

    def to_dict(self) -> dict:
        with self._lock:
            return {"segments": self.segments, "updates": self.updates, "moves": self.moves,
                    "evidence": {k: e.to_list() for k, (_, _, e) in self._candidates.items()}}

    def load_dict(self, obj: dict) -> None:
        with self._lock:
            for key, w in obj["segments"].items():
                if key in self.initial:
                    self.segments[key] = {s: w.get(s, self.initial[key][s])
                                          for s in self.sources}
            self.updates = {key: obj["updates"].get(key, 0) for key in KEYS}
            self.moves = {key: (obj.get("moves") or {}).get(key, 0) for key in KEYS}
            self._candidates = {}
            for key, (sums, squares, n) in (obj.get("evidence") or {}).items():
                cands, matrix, _ = self._around(key)
                if len(sums) == len(cands):
                    self._candidates[key] = (cands, matrix, Evidence(len(cands), sums,
                                                                      squares, n))
                else:
                    del self._candidates[key]
