"""Recommendation sources: each learns from committed events and scores items.

A source has ``observe(obs)`` (writer thread, global commit order),
``score(query, extra) -> {item: raw score >= 0}`` (pure: it reads the model
and never changes it), ``stats()`` and ``to_dict()``/``from_dict()`` with
msgpack-safe values. ``score`` returns the source's own candidates (its
neighbour lists, its top lists) plus, for every item in ``extra``, that
item's score under the same rule, so a score never depends on the pool asked
for. The Recommender holds one lock around observe and score.

Sources:

* ``sequential``  what tends to follow the user's last items (skip-gram
  transitions within a small window, distance-decayed, learned per event).
* ``collaborative`` item co-occurrence over each user's recent history,
  cosine-normalised, with bounded top-K neighbour lists kept on the write path.
* ``content``     item tag vectors against the user's short- and long-term tags.
* ``semantic``    language-model signals: item vectors (``item_vectors`` hook)
  against the model's summary embedding and the centroid of the user's recent
  items, and the model's interest tags against item tags.
* ``popularity``  time-decayed trending counts.
* ``demographic`` popularity within the user's declared attribute segments.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from operator import itemgetter

import numpy as np

from engine.recommend.popularity import Popularity

_SECOND = itemgetter(1)


@dataclass(frozen=True, slots=True)
class Obs:
    """One positive interaction, as the sources see it."""

    user: str
    item: str
    ts: float
    history: tuple          # the user's previous items, oldest first (bounded)
    attrs: dict | None = None
    weight: float = 1.0


@dataclass(slots=True)
class Query:
    """What a source may read about the user asking."""

    user: str
    recent: list            # the user's recent positive items, oldest first
    tags: list = field(default_factory=list)    # state.tag_weights rows
    attrs: dict | None = None
    profile: dict | None = None


# ----------------------------------------------------------------- neighbours

class NeighbourTable:
    """Sparse weighted item->item counts with bounded top-K neighbour lists.

    ``rows[a][b]`` is exact. ``top[a]`` holds at most ``k`` of a's neighbours
    with their exact current counts; its membership is rebuilt on the write
    path whenever a's row total has grown by ``grow`` since the last rebuild,
    so it is a function of the event sequence (replay gives the same lists).
    """

    def __init__(self, k: int = 100, grow: float = 1.25):
        self.k = k
        self.grow = grow
        self.rows: dict[str, dict[str, float]] = {}
        self.top: dict[str, dict[str, float]] = {}
        self.totals: dict[str, float] = {}
        self.built: dict[str, float] = {}

    def add(self, a: str, b: str, w: float) -> None:
        row = self.rows.get(a)
        if row is None:
            row = self.rows[a] = {}
            self.top[a] = {}
        value = row.get(b, 0.0) + w
        row[b] = value
        total = self.totals.get(a, 0.0) + w
        self.totals[a] = total
        top = self.top[a]
        if b in top or len(top) < self.k:
            top[b] = value
        elif total >= self.built.get(a, 0.0) * self.grow:
            self.top[a] = dict(heapq.nlargest(self.k, row.items(), key=_SECOND))
            self.built[a] = total

    def neighbours(self, a: str) -> dict[str, float]:
        return self.top.get(a) or {}

    def pairs(self) -> int:
        return sum(len(r) for r in self.rows.values())

    def to_dict(self) -> dict:
        return {"k": self.k, "grow": self.grow, "rows": self.rows,
                "top": {a: list(t) for a, t in self.top.items()},
                "totals": self.totals, "built": self.built}

    @classmethod
    def from_dict(cls, obj: dict) -> "NeighbourTable":
        table = cls(obj["k"], obj["grow"])
        table.rows = {a: dict(r) for a, r in obj["rows"].items()}
        table.top = {a: {b: table.rows[a][b] for b in members}
                     for a, members in obj["top"].items()}
        table.totals = dict(obj["totals"])
        table.built = dict(obj["built"])
        return table


def _recency(items: list, n: int, decay: float):
    """(item, weight) for the last ``n`` distinct items, newest first."""
    out, seen = [], set()
    w = 1.0
    for item in reversed(items):
        if item in seen:
            continue
        seen.add(item)
        out.append((item, w))
        w *= decay
        if len(out) >= n:
            break
    return out


class Source:
    name = "source"

    def observe(self, obs: Obs) -> None:
        pass

    def score(self, q: Query, extra=None) -> dict[str, float]:
        return {}

    def stats(self) -> dict:
        return {}

    def to_dict(self) -> dict:
        return {}

    def load_dict(self, obj: dict) -> None:
        pass


class Sequential(Source):
    """P(next = b | previous = a), learned within a window, recency-weighted at query."""

    name = "sequential"

    def __init__(self, window: int = 5, gap_decay: float = 0.7, k: int = 100,
                 query_items: int = 8, recency: float = 0.7):
        self.window, self.gap_decay, self.query_items, self.recency = \
            window, gap_decay, query_items, recency
        self.table = NeighbourTable(k)

    def observe(self, obs: Obs) -> None:
        b = obs.item
        w = 1.0
        for a in reversed(obs.history[-self.window:]):
            if a != b:
                self.table.add(a, b, w)
            w *= self.gap_decay

    def score(self, q: Query, extra=None) -> dict[str, float]:
        out: dict[str, float] = {}
        totals = self.table.totals
        for a, r in _recency(q.recent, self.query_items, self.recency):
            top = self.table.neighbours(a)
            if not top:
                continue
            f = r / totals[a]
            for b, c in top.items():
                out[b] = out.get(b, 0.0) + f * c
        return out

    def stats(self) -> dict:
        return {"items": len(self.table.rows), "pairs": self.table.pairs()}

    def to_dict(self) -> dict:
        return {"table": self.table.to_dict()}

    def load_dict(self, obj: dict) -> None:
        self.table = NeighbourTable.from_dict(obj["table"])


class Collaborative(Source):
    """Item-item cosine over co-occurrence in users' recent histories."""

    name = "collaborative"

    def __init__(self, window: int = 20, k: int = 100, query_items: int = 12,
                 recency: float = 0.85):
        self.window, self.query_items, self.recency = window, query_items, recency
        self.table = NeighbourTable(k)
        self.counts: dict[str, float] = {}
        self.inv_sqrt: dict[str, float] = {}     # 1/sqrt(count), kept with the counts

    def observe(self, obs: Obs) -> None:
        b = obs.item
        n = self.counts[b] = self.counts.get(b, 0.0) + 1.0
        self.inv_sqrt[b] = 1.0 / math.sqrt(n)
        for a in dict.fromkeys(reversed(obs.history[-self.window:])):
            if a != b:
                self.table.add(a, b, 1.0)
                self.table.add(b, a, 1.0)

    def score(self, q: Query, extra=None) -> dict[str, float]:
        out: dict[str, float] = {}
        inv = self.inv_sqrt
        get = out.get
        for a, r in _recency(q.recent, self.query_items, self.recency):
            top = self.table.neighbours(a)
            if not top:
                continue
            f = r * inv[a]
            for b, c in top.items():
                out[b] = get(b, 0.0) + f * c * inv[b]
        return out

    def stats(self) -> dict:
        return {"items": len(self.counts), "pairs": self.table.pairs()}

    def to_dict(self) -> dict:
        return {"table": self.table.to_dict(), "counts": self.counts}

    def load_dict(self, obj: dict) -> None:
        self.table = NeighbourTable.from_dict(obj["table"])
        self.counts = dict(obj["counts"])
        self.inv_sqrt = {b: 1.0 / math.sqrt(n) for b, n in self.counts.items()}


def _top_of(vector: np.ndarray, ids: list, m: int, extra, index: dict) -> dict[str, float]:
    """The ``m`` best positive entries of ``vector`` plus those of ``extra``."""
    out: dict[str, float] = {}
    n = len(vector)
    if n == 0:
        return out
    m = min(m, n)
    part = np.argpartition(-vector, m - 1)[:m] if m < n else np.arange(n)
    for i in part.tolist():
        v = float(vector[i])
        if v > 0:
            out[ids[i]] = v
    if extra:
        for item in extra:
            i = index.get(item)
            if i is not None and i < n:
                v = float(vector[i])
                if v > 0:
                    out[item] = v
    return out


class TagMatrix:
    """Item x tag matrix (rows L2-normalised), rebuilt when the catalog grows."""

    def __init__(self, catalog):
        self.catalog = catalog
        self.n = -1
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.vocab: dict[str, int] = {}
        self.folded: dict[str, int] = {}          # casefolded tag -> column
        self.matrix = np.zeros((0, 0), dtype=np.float32)

    def get(self):
        n = len(self.catalog)
        if n != self.n:
            ids = self.catalog.ids[:n]
            records = self.catalog.records[:n]
            vocab: dict[str, int] = {}
            for record in records:
                for tag in record.get("tags") or ():
                    vocab.setdefault(tag, len(vocab))
            matrix = np.zeros((n, max(1, len(vocab))), dtype=np.float32)
            for i, record in enumerate(records):
                tags = record.get("tags") or ()
                if tags:
                    matrix[i, [vocab[t] for t in tags]] = 1.0 / math.sqrt(len(set(tags)))
            self.ids, self.vocab, self.matrix = list(ids), vocab, matrix
            self.folded = {}
            for tag, col in vocab.items():
                self.folded.setdefault(tag.casefold(), col)
            self.index = {item: i for i, item in enumerate(self.ids)}
            self.n = n
        return self

    def user_vector(self, weights: dict[str, float]) -> np.ndarray | None:
        u = np.zeros(self.matrix.shape[1], dtype=np.float32)
        for tag, w in weights.items():
            col = self.vocab.get(tag)
            if col is None:     # the model writes tags in lower case ("sci-fi" for "Sci-Fi")
                col = self.folded.get(tag.casefold())
            if col is not None:
                u[col] = w
        norm = float(np.linalg.norm(u))
        return u / norm if norm > 0 else None


class Content(Source):
    """Cosine of item tag vectors with the user's blended short/long-term tag weights."""

    name = "content"

    def __init__(self, tags: TagMatrix, top_m: int = 100, short_share: float = 0.5):
        self.tags, self.top_m, self.short_share = tags, top_m, short_share

    def user_weights(self, rows: list) -> dict[str, float]:
        if not rows:
            return {}
        top_s = max((abs(r["short"]) for r in rows), default=0.0) or 1.0
        top_l = max((abs(r["long"]) for r in rows), default=0.0) or 1.0
        a = self.short_share
        return {r["tag"]: a * r["short"] / top_s + (1 - a) * r["long"] / top_l for r in rows}

    def score(self, q: Query, extra=None) -> dict[str, float]:
        weights = self.user_weights(q.tags)
        if not weights:
            return {}
        tm = self.tags.get()
        u = tm.user_vector(weights)
        if u is None:
            return {}
        return _top_of(tm.matrix @ u, tm.ids, self.top_m, extra, tm.index)

    def stats(self) -> dict:
        return {"items": self.tags.n, "tags": len(self.tags.vocab)}


class Semantic(Source):
    """Language-model signals: item vectors vs. the profile embedding and recent-item
    centroid, and the model's interest tags vs. item tags.

    ``item_vectors`` is the hook the inference work fills (item -> 1-d array, one
    dimension for all); it may be set or extended at any time (``set_vector``).
    """

    name = "semantic"

    def __init__(self, tags: TagMatrix, top_m: int = 100, centroid_items: int = 10):
        self.tags, self.top_m, self.centroid_items = tags, top_m, centroid_items
        self.vectors: dict[str, np.ndarray] = {}
        self._version = 0
        self._built = -1
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        self._matrix = np.zeros((0, 0), dtype=np.float32)

    def set_vector(self, item: str, vector) -> None:
        v = np.asarray(vector, dtype=np.float32).ravel()
        norm = float(np.linalg.norm(v))
        self.vectors[item] = v / norm if norm > 0 else v
        self._version += 1

    def _get(self):
        if self._built != self._version:
            self._ids = list(self.vectors)
            self._index = {item: i for i, item in enumerate(self._ids)}
            self._matrix = (np.stack([self.vectors[i] for i in self._ids])
                            if self._ids else np.zeros((0, 0), dtype=np.float32))
            self._built = self._version
        return self._ids, self._index, self._matrix

    def score(self, q: Query, extra=None) -> dict[str, float]:
        out: dict[str, float] = {}
        ids, index, matrix = self._get()
        if len(ids):
            query = np.zeros(matrix.shape[1], dtype=np.float32)
            emb = (q.profile or {}).get("embedding")
            if emb is not None and len(emb) == matrix.shape[1]:
                e = np.asarray(emb, dtype=np.float32)
                n = float(np.linalg.norm(e))
                if n > 0:
                    query += e / n
            centroid = np.zeros_like(query)
            for item, r in _recency(q.recent, self.centroid_items, 0.8):
                i = index.get(item)
                if i is not None:
                    centroid += r * matrix[i]
            n = float(np.linalg.norm(centroid))
            if n > 0:
                query += centroid / n
            if float(np.linalg.norm(query)) > 0:
                out = _top_of(matrix @ query, ids, self.top_m, extra, index)
        ptags = (q.profile or {}).get("tags") or []
        if ptags:
            tm = self.tags.get()
            u = tm.user_vector({t: 1.0 for t in ptags if isinstance(t, str)})
            if u is not None:
                for item, v in _top_of(tm.matrix @ u, tm.ids, self.top_m, extra,
                                       tm.index).items():
                    out[item] = out.get(item, 0.0) + 0.5 * v
        return out

    def stats(self) -> dict:
        return {"item_vectors": len(self.vectors)}

    def to_dict(self) -> dict:
        return {"vectors": {k: v.astype(np.float32).tobytes() for k, v in self.vectors.items()}}

    def load_dict(self, obj: dict) -> None:
        for item, raw in (obj.get("vectors") or {}).items():
            self.set_vector(item, np.frombuffer(raw, dtype=np.float32))


class PopularitySource(Source):
    name = "popularity"

    def __init__(self, half_life_s: float, top_n: int = 200):
        self.pop = Popularity(half_life_s, top_n)

    def observe(self, obs: Obs) -> None:
        self.pop.add(obs.item, obs.ts, obs.weight)

    def score(self, q: Query, extra=None) -> dict[str, float]:
        get = self.pop.get
        out = {item: get(item) for item in self.pop.candidates()}
        if extra:
            for item in extra:
                v = get(item)
                if v > 0:
                    out[item] = v
        return out

    def stats(self) -> dict:
        return {"items": len(self.pop)}

    def to_dict(self) -> dict:
        return {"pop": self.pop.to_dict()}

    def load_dict(self, obj: dict) -> None:
        self.pop = Popularity.from_dict(obj["pop"])


def age_bucket(age) -> str | None:
    try:
        age = int(age)
    except (TypeError, ValueError):
        return None
    for limit, name in ((18, "<18"), (25, "18-24"), (35, "25-34"), (45, "35-44"),
                        (56, "45-55")):
        if age < limit:
            return name
    return "56+"


def segments_of(attrs: dict | None) -> list[str]:
    """Attribute segments of a user: age bucket x gender, gender, occupation, age."""
    if not attrs:
        return []
    out = []
    age = age_bucket(attrs.get("age"))
    gender = attrs.get("gender")
    occupation = attrs.get("occupation")
    if age and gender:
        out.append(f"age*gender:{age}*{gender}")
    if age:
        out.append(f"age:{age}")
    if gender:
        out.append(f"gender:{gender}")
    if occupation:
        out.append(f"occupation:{occupation}")
    for key in sorted(attrs):
        if key not in ("age", "gender", "occupation", "zip") and isinstance(attrs[key], str):
            out.append(f"{key}:{attrs[key]}")
    return out


class Demographic(Source):
    """Time-decayed popularity within each attribute segment the user declares."""

    name = "demographic"

    def __init__(self, half_life_s: float, top_n: int = 100):
        self.half_life, self.top_n = half_life_s, top_n
        self.segments: dict[str, Popularity] = {}

    def observe(self, obs: Obs) -> None:
        for seg in segments_of(obs.attrs):
            pop = self.segments.get(seg)
            if pop is None:
                pop = self.segments[seg] = Popularity(self.half_life, self.top_n, 64)
            pop.add(obs.item, obs.ts, obs.weight)

    def score(self, q: Query, extra=None) -> dict[str, float]:
        pops = [self.segments[s] for s in segments_of(q.attrs) if s in self.segments]
        if not pops:
            return {}
        share = 1.0 / len(pops)
        keys: dict[str, None] = {}
        for pop in pops:
            keys.update(dict.fromkeys(pop.candidates()))
        if extra:
            keys.update(dict.fromkeys(extra))
        out: dict[str, float] = {}
        for pop in pops:          # out[item] = share * sum of the segments' normalised scores
            if pop.max_score <= 0:
                continue
            factor, scores = share / pop.max_score, pop.scores
            for item in keys:
                v = scores.get(item)
                if v:
                    out[item] = out.get(item, 0.0) + factor * v
        return {k: v for k, v in out.items() if v > 0}

    def stats(self) -> dict:
        return {"segments": len(self.segments)}

    def to_dict(self) -> dict:
        return {"segments": {k: p.to_dict() for k, p in self.segments.items()}}

    def load_dict(self, obj: dict) -> None:
        self.segments = {k: Popularity.from_dict(v) for k, v in obj["segments"].items()}
