"""Recommendation sources, the learning half: mutable models owned by the learner thread.

Threading: every method here runs on the learner thread only (the thread
that owns the ``Learner``): ``observe(obs)`` in global commit order,
``freeze(ctx, prev)`` at publish, ``to_dict``/``load_dict``. ``stats`` only
reads sizes and counters, so it may run on any thread.
Nothing here is read by other threads: readers score from the immutable
scorers that ``freeze`` builds (engine.recommend.scorers). ``freeze`` rebuilds
only what changed since the previous freeze and shares the rest with it.

Sources:

* ``sequential``  what tends to follow the user's last items (skip-gram
  transitions within a small window, distance-decayed, learned per event).
* ``collaborative`` item co-occurrence over each user's recent history,
  cosine-normalised, with bounded top-K neighbour lists kept on the write path.
* ``ease``        EASE (Steck 2019): item-item weights in closed form over the
  most active items, refit by the learner at event counts, scored from the
  user's recent items.
* ``content``     item tag vectors against the user's short- and long-term tags.
* ``semantic``    language-model signals: item vectors (``set_vector``)
  against the model's summary embedding and the centroid of the user's recent
  items, and the model's interest tags against item tags.
* ``popularity``  time-decayed trending counts.
* ``demographic`` popularity within the user's declared attribute segments.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from operator import itemgetter

import numpy as np

from interest.engine.recommend.popularity import Popularity
from interest.engine.recommend.query import Query, age_bucket, segments_of  # noqa: F401 - re-exported
from interest.engine.recommend.scorers import (CollaborativeScorer, ContentScorer, DemographicScorer,
                                      EaseScorer, Freeze, PopularityScorer, Rows, SemanticScorer,
                                      SequentialScorer, TagTable, Vectors, frozen, grown,
                                      pop_arrays)

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


# ----------------------------------------------------------------- neighbours

class NeighbourTable:
    """Sparse weighted item->item counts with bounded top-K neighbour lists.

    ``rows[a][b]`` is exact. ``top[a]`` holds at most ``k`` of a's neighbours
    with their exact current counts; its membership is rebuilt on the write
    path whenever a's row total has grown by ``grow`` since the last rebuild,
    so it is a function of the event sequence (replay gives the same lists).
    ``dirty`` holds the rows touched since the last ``freeze``, ``reshaped``
    those whose top-list membership changed (the others keep their positions).
    """

    def __init__(self, k: int = 100, grow: float = 1.25):
        self.k = k
        self.grow = grow
        self.rows: dict[str, dict[str, float]] = {}
        self.top: dict[str, dict[str, float]] = {}
        self.totals: dict[str, float] = {}
        self.built: dict[str, float] = {}
        self.dirty: set[str] = set()
        self.reshaped: set[str] = set()
        self.n_pairs = 0

    def add(self, a: str, b: str, w: float) -> None:
        row = self.rows.get(a)
        if row is None:
            row = self.rows[a] = {}
            self.top[a] = {}
        value = row.get(b)
        if value is None:
            value = 0.0
            self.n_pairs += 1
        value += w
        row[b] = value
        total = self.totals.get(a, 0.0) + w
        self.totals[a] = total
        self.dirty.add(a)
        top = self.top[a]
        if b in top:
            top[b] = value
        elif len(top) < self.k:
            top[b] = value
            self.reshaped.add(a)
        elif total >= self.built.get(a, 0.0) * self.grow:
            self.top[a] = dict(heapq.nlargest(self.k, row.items(), key=_SECOND))
            self.built[a] = total
            self.reshaped.add(a)

    def neighbours(self, a: str) -> dict[str, float]:
        return self.top.get(a) or {}

    def pairs(self) -> int:
        return self.n_pairs

    def item_sets(self) -> list:
        return [self.rows, *self.rows.values()]

    def freeze(self, ctx: Freeze, prev: Rows | None) -> Rows:
        """The top lists as position arrays; rows untouched since ``prev`` are shared."""
        dirty, self.dirty = self.dirty, set()
        reshaped, self.reshaped = self.reshaped, set()
        if prev is not None and not dirty and len(prev.rows) == ctx.n:
            return prev
        pos = ctx.index.pos
        if prev is None:
            rows, totals, dirty = [None] * ctx.n, np.zeros(ctx.n), self.rows
        else:
            rows = prev.rows + [None] * (ctx.n - len(prev.rows))
            totals = grown(prev.totals, ctx.n)
        for a in dirty:
            i = pos[a]
            rows[i] = self._frozen_row(a, pos, None if a in reshaped else rows[i])
            totals[i] = self.totals.get(a, 0.0)
        return Rows(rows, frozen(totals))

    def _frozen_row(self, a: str, pos: dict, old):
        """(positions, counts) of a's top list; the positions of ``old`` when given."""
        top = self.top.get(a)
        if not top:
            return None
        n = len(top)
        members = old[0] if old is not None else \
            frozen(np.fromiter((pos[b] for b in top), np.intp, n))
        return members, frozen(np.fromiter(top.values(), np.float64, n))

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
        table.n_pairs = sum(len(r) for r in table.rows.values())
        return table


class Source:
    name = "source"

    def observe(self, obs: Obs) -> None:
        pass

    def item_sets(self) -> list:
        """Collections that hold, together, every item the model knows (to index them
        after a load)."""
        return []

    def freeze(self, ctx: Freeze, prev):
        raise NotImplementedError

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

    def item_sets(self) -> list:
        return self.table.item_sets()

    def freeze(self, ctx: Freeze, prev: SequentialScorer | None) -> SequentialScorer:
        rows = self.table.freeze(ctx, prev.rows if prev is not None else None)
        if prev is not None and rows is prev.rows:
            return prev
        return SequentialScorer(rows, ctx.index.pos, ctx.n, self.query_items, self.recency)

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
        self.changed: set[str] = set()           # counts changed since the last freeze

    def observe(self, obs: Obs) -> None:
        b = obs.item
        n = self.counts[b] = self.counts.get(b, 0.0) + 1.0
        self.inv_sqrt[b] = 1.0 / math.sqrt(n)
        self.changed.add(b)
        for a in dict.fromkeys(reversed(obs.history[-self.window:])):
            if a != b:
                self.table.add(a, b, 1.0)
                self.table.add(b, a, 1.0)

    def item_sets(self) -> list:
        return [*self.table.item_sets(), self.counts]

    def _inv_array(self, ctx: Freeze, prev: np.ndarray | None) -> np.ndarray:
        changed, self.changed = self.changed, set()
        if prev is not None and not changed and len(prev) == ctx.n:
            return prev
        pos = ctx.index.pos
        inv = np.zeros(ctx.n) if prev is None else grown(prev, ctx.n)
        for b in (self.inv_sqrt if prev is None else changed):
            inv[pos[b]] = self.inv_sqrt[b]
        return frozen(inv)

    def freeze(self, ctx: Freeze, prev: CollaborativeScorer | None) -> CollaborativeScorer:
        rows = self.table.freeze(ctx, prev.rows if prev is not None else None)
        inv = self._inv_array(ctx, prev.inv if prev is not None else None)
        if prev is not None and rows is prev.rows and inv is prev.inv:
            return prev
        return CollaborativeScorer(rows, inv, ctx.index.pos, ctx.n, self.query_items,
                                   self.recency)

    def stats(self) -> dict:
        return {"items": len(self.counts), "pairs": self.table.pairs()}

    def to_dict(self) -> dict:
        return {"table": self.table.to_dict(), "counts": self.counts}

    def load_dict(self, obj: dict) -> None:
        self.table = NeighbourTable.from_dict(obj["table"])
        self.counts = dict(obj["counts"])
        self.inv_sqrt = {b: 1.0 / math.sqrt(n) for b, n in self.counts.items()}


# ---------------------------------------------------------------------- EASE

def gram(baskets: list[np.ndarray], m: int, chunk: int = 4_000_000) -> np.ndarray:
    """X^T X (float64, m x m) of the binary user x item matrix whose rows are ``baskets``
    (arrays of distinct columns), counted in chunks of about ``chunk`` pairs."""
    out = np.zeros(m * m, dtype=np.float64)
    parts, size = [], 0
    for cols in baskets:
        parts.append((cols[:, None] * m + cols[None, :]).ravel())
        size += len(parts[-1])
        if size >= chunk:
            out += np.bincount(np.concatenate(parts), minlength=m * m)
            parts, size = [], 0
    if parts:
        out += np.bincount(np.concatenate(parts), minlength=m * m)
    return out.reshape(m, m)


def ease_weights(g: np.ndarray, l2: float) -> np.ndarray:
    """EASE's closed form: P = (G + l2 I)^-1, B = -P / diag(P) by column, zero diagonal."""
    g = g.copy()
    g[np.diag_indices_from(g)] += l2
    p = np.linalg.inv(g)
    b = p / -np.diag(p)
    b[np.diag_indices_from(b)] = 0.0
    return b


class Ease(Source):
    """EASE over the ``max_items`` items in most users' histories (ties by id).

    ``refit(histories)`` is called by the learner at event counts (so it is a function of
    the journal); between refits the weights do not move and new items are not scored.
    """

    name = "ease"

    def __init__(self, max_items: int = 2000, l2: float = 200.0, query_items: int = 50,
                 decay: float = 1.0, top_m: int = 200):
        self.max_items, self.l2 = max_items, l2
        self.query_items, self.decay, self.top_m = query_items, decay, top_m
        self.items: list[str] = []
        self.weights = np.zeros((0, 0), dtype=np.float32)
        self.fits = 0
        self._changed = True

    def refit(self, histories) -> None:
        baskets = [list(dict.fromkeys(h)) for h in histories]
        counts: dict[str, int] = {}
        for basket in baskets:
            for item in basket:
                counts[item] = counts.get(item, 0) + 1
        items = sorted(counts, key=lambda i: (-counts[i], i))[:self.max_items]
        if len(items) < 2:
            return
        col = {item: j for j, item in enumerate(items)}
        rows = [np.fromiter((col[i] for i in b if i in col), np.intp) for b in baskets]
        b = ease_weights(gram([r for r in rows if len(r)], len(items)), self.l2)
        self.items, self.weights = items, frozen(b.astype(np.float32))
        self.fits += 1
        self._changed = True

    def item_sets(self) -> list:
        return [self.items]

    def freeze(self, ctx: Freeze, prev: EaseScorer | None) -> EaseScorer:
        if prev is not None and not self._changed and prev.n == ctx.n:
            return prev
        if prev is not None and not self._changed:
            pos = prev.pos
        else:
            pos = frozen(np.fromiter((ctx.index.pos[i] for i in self.items), np.intp,
                                     len(self.items)))
        self._changed = False
        return EaseScorer(self.weights, self.items, pos, ctx.n, self.query_items, self.decay,
                          self.top_m)

    def stats(self) -> dict:
        return {"items": len(self.items), "fits": self.fits}

    def to_dict(self) -> dict:
        return {"items": self.items, "weights": self.weights.tobytes(), "fits": self.fits}

    def load_dict(self, obj: dict) -> None:
        self.items = list(obj["items"])
        m = len(self.items)
        self.weights = frozen(np.frombuffer(obj["weights"], dtype=np.float32)
                              .reshape(m, m).copy())
        self.fits = obj["fits"]
        self._changed = True


# ------------------------------------------------------------ tag matrices

def build_tag_table(ids: list, records: list) -> TagTable:
    vocab: dict[str, int] = {}
    for record in records:
        for tag in record.get("tags") or ():
            vocab.setdefault(tag, len(vocab))
    matrix = np.zeros((len(ids), max(1, len(vocab))), dtype=np.float32)
    for i, record in enumerate(records):
        tags = record.get("tags") or ()
        if tags:
            matrix[i, [vocab[t] for t in tags]] = 1.0 / math.sqrt(len(set(tags)))
    folded: dict[str, int] = {}
    for tag, col in vocab.items():
        folded.setdefault(tag.casefold(), col)
    frozen(matrix)
    return TagTable(len(ids), list(ids), {item: i for i, item in enumerate(ids)}, vocab,
                    folded, matrix)


class TagMatrix:
    """The catalog's item x tag table, rebuilt when the catalog grows (learner thread)."""

    def __init__(self, catalog):
        self.catalog = catalog
        self.table: TagTable | None = None

    def get(self) -> TagTable:
        n = len(self.catalog)
        if self.table is None or n != self.table.n:
            self.table = build_tag_table(self.catalog.ids[:n], self.catalog.records[:n])
        return self.table


class Content(Source):
    """Cosine of item tag vectors with the user's blended short/long-term tag weights."""

    name = "content"

    def __init__(self, top_m: int = 100, short_share: float = 0.5):
        self.top_m, self.short_share = top_m, short_share
        self.tags_n = 0

    def freeze(self, ctx: Freeze, prev: ContentScorer | None) -> ContentScorer:
        self.tags_n = ctx.tags.n
        if prev is not None and prev.tags is ctx.tags and prev.n == ctx.n:
            return prev
        return ContentScorer(ctx.tags, ctx.cat_pos, ctx.n, self.top_m, self.short_share)

    def stats(self) -> dict:
        return {"items": self.tags_n}


class Semantic(Source):
    """Language-model signals: item vectors vs. the profile embedding and recent-item
    centroid, and the model's interest tags vs. item tags.

    ``vectors`` (item -> unit 1-d float32 array, one dimension for all) is filled by
    ``set_vector`` on the learner thread (the Learner queues vectors from other threads).
    """

    name = "semantic"

    def __init__(self, top_m: int = 100, centroid_items: int = 10):
        self.top_m, self.centroid_items = top_m, centroid_items
        self.vectors: dict[str, np.ndarray] = {}
        self._changed = True

    def set_vector(self, item: str, vector) -> None:
        v = np.asarray(vector, dtype=np.float32).ravel()
        norm = float(np.linalg.norm(v))
        self.vectors[item] = v / norm if norm > 0 else v
        self._changed = True

    def item_sets(self) -> list:
        return [self.vectors]

    def _frozen_vectors(self, ctx: Freeze) -> Vectors:
        ids = list(self.vectors)
        matrix = (np.stack([self.vectors[i] for i in ids]) if ids
                  else np.zeros((0, 0), dtype=np.float32))
        pos = np.fromiter((ctx.index.pos[i] for i in ids), np.intp, len(ids))
        return Vectors(ids, {item: i for i, item in enumerate(ids)}, frozen(matrix), frozen(pos))

    def freeze(self, ctx: Freeze, prev: SemanticScorer | None) -> SemanticScorer:
        if prev is not None and not self._changed and prev.tags is ctx.tags \
                and prev.n == ctx.n:
            return prev
        vectors = prev.vectors if prev is not None and not self._changed \
            else self._frozen_vectors(ctx)
        self._changed = False
        return SemanticScorer(vectors, ctx.tags, ctx.cat_pos, ctx.n, self.top_m,
                              self.centroid_items)

    def stats(self) -> dict:
        return {"item_vectors": len(self.vectors)}

    def to_dict(self) -> dict:
        return {"vectors": {k: v.astype(np.float32).tobytes() for k, v in self.vectors.items()}}

    def load_dict(self, obj: dict) -> None:
        for item, raw in (obj.get("vectors") or {}).items():   # saved normalised
            self.vectors[item] = np.frombuffer(raw, dtype=np.float32).copy()
        self._changed = True


# -------------------------------------------------------------- popularity

class PopularitySource(Source):
    name = "popularity"

    def __init__(self, half_life_s: float, top_n: int = 200):
        self.pop = Popularity(half_life_s, top_n)

    def observe(self, obs: Obs) -> None:
        self.pop.add(obs.item, obs.ts, obs.weight)

    def item_sets(self) -> list:
        return [self.pop.scores]

    def freeze(self, ctx: Freeze, prev: PopularityScorer | None) -> PopularityScorer:
        arrays = pop_arrays(self.pop, ctx, prev.pop if prev is not None else None)
        if prev is not None and arrays is prev.pop:
            return prev
        return PopularityScorer(arrays, ctx.n)

    def stats(self) -> dict:
        return {"items": len(self.pop)}

    def to_dict(self) -> dict:
        return {"pop": self.pop.to_dict()}

    def load_dict(self, obj: dict) -> None:
        self.pop = Popularity.from_dict(obj["pop"])


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

    def item_sets(self) -> list:
        return [pop.scores for pop in self.segments.values()]

    def freeze(self, ctx: Freeze, prev: DemographicScorer | None) -> DemographicScorer:
        old = prev.segments if prev is not None else {}
        segments = {seg: pop_arrays(pop, ctx, old.get(seg)) for seg, pop in self.segments.items()}
        if prev is not None and len(segments) == len(old) and \
                all(arrays is old[seg] for seg, arrays in segments.items()):
            return prev
        return DemographicScorer(segments, ctx.n)

    def stats(self) -> dict:
        return {"segments": len(self.segments)}

    def to_dict(self) -> dict:
        return {"segments": {k: p.to_dict() for k, p in self.segments.items()}}

    def load_dict(self, obj: dict) -> None:
        self.segments = {k: Popularity.from_dict(v) for k, v in obj["segments"].items()}
