"""Immutable numpy scorers, one per source, built by the learner at publish.

Threading: a scorer is built on the learner thread (``Source.freeze``) and
never changed afterwards, so any number of reader threads may call
``vector`` at once without locks. Everything a scorer holds is either its own
array (copied when the source changed, shared with the previous snapshot
when it did not) or append-only shared data (``ItemIndex``) read only below
the scorer's ``n``.

``vector(query, extra) -> float64 array of length n | None`` gives the
source's raw score of every item position: its own candidates (neighbour
lists, top lists) plus, for every item in ``extra``, that item's score under
the same rule; 0 elsewhere; ``None`` when the source has nothing to say.
These equal the values of the dict-based reference scorers
(tests/reference_sources.py) bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from interest.engine.recommend.query import Query, recency, segments_of, tag_blend


class ItemIndex:
    """Append-only item -> position: catalog items, every item seen in events, items
    with vectors. Only the learner thread adds; readers look positions up and ignore
    any at or past their snapshot's ``n``."""

    def __init__(self):
        self.ids: list[str] = []
        self.pos: dict[str, int] = {}

    def add(self, item: str) -> int:
        i = self.pos.get(item)
        if i is None:
            i = len(self.ids)
            self.ids.append(item)
            self.pos[item] = i
        return i

    def __len__(self) -> int:
        return len(self.ids)


class Extra(NamedTuple):
    """Items whose score is wanted whatever the pool: their ids, and the positions of
    the known ones."""

    items: list
    pos: np.ndarray


class Freeze(NamedTuple):
    """What every source's ``freeze`` reads (learner thread, during publish)."""

    index: ItemIndex
    n: int
    tags: "TagTable"
    cat_pos: np.ndarray      # catalog row -> item position


@dataclass(frozen=True)
class TagTable:
    """Item x tag matrix over catalog rows (rows L2-normalised); immutable."""

    n: int
    ids: list
    index: dict
    vocab: dict
    folded: dict            # casefolded tag -> column
    matrix: np.ndarray

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


# ------------------------------------------------------------------ helpers

def frozen(*arrays: np.ndarray):
    """Make arrays read-only (a snapshot's arrays are never written); the first back."""
    for a in arrays:
        a.flags.writeable = False
    return arrays[0]


def grown(prev: np.ndarray | None, n: int, dtype=np.float64) -> np.ndarray:
    """A new writable array of length ``n`` holding ``prev`` (zeros after it)."""
    out = np.zeros(n, dtype=dtype)
    if prev is not None:
        out[:len(prev)] = prev
    return out


def _top_entries(vector: np.ndarray, m: int, extra_rows):
    """(rows, values) of the ``m`` best positive entries of ``vector`` plus those of
    ``extra_rows``; ``None`` when none is positive."""
    n = len(vector)
    if n == 0:
        return None
    m = min(m, n)
    part = np.argpartition(-vector, m - 1)[:m] if m < n else np.arange(n)
    if extra_rows:
        part = np.concatenate((part, np.asarray(extra_rows, dtype=np.intp)))
    vals = vector[part]
    keep = vals > 0
    if not keep.any():
        return None
    return part[keep], vals[keep]


def _scatter(n: int, pos: np.ndarray, vals: np.ndarray) -> np.ndarray:
    out = np.zeros(n, dtype=np.float64)
    out[pos] = vals
    return out


def _concat(rows: list, factors: list) -> tuple[np.ndarray, np.ndarray]:
    """The rows' positions end to end, and each row's counts times its factor."""
    idx = np.concatenate([r[0] for r in rows])
    f = np.repeat(np.array(factors), [len(r[0]) for r in rows])
    return idx, f * np.concatenate([r[1] for r in rows])


def _sum(idx: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
    """Per position, the sum of its weights, added in the order given."""
    return np.bincount(idx, weights=weights, minlength=n)


def _rows_of(pos: dict, extra: Extra | None) -> list | None:
    """The rows (in a matrix indexed by ``pos``) of the extra items it holds."""
    if extra is None:
        return None
    return [pos[item] for item in extra.items if item in pos]


def driver_of(contributions: list, share: float | None = None) -> tuple[str, float] | None:
    """(recent item, what it adds) of the one that adds most; with ``share``, of the one
    most tied to the item itself (the contribution's third field) among those adding at
    least ``share`` of the most. None when none adds anything."""
    tied = tied_of(contributions, share, 1) if share is not None else None
    rows = [row for row in contributions if row[1] > 0]
    if not rows:
        return None
    top = tied[0] if tied else max(rows, key=lambda row: row[1])
    return top[0], top[1]


def tied_of(contributions: list, share: float, n: int) -> list[tuple[str, float, float]]:
    """The ``n`` contributions (recent item, addition, tie) most tied to the item (ties by
    id) among those adding at least ``share`` of the most."""
    rows = [row for row in contributions if row[1] > 0]
    if not rows:
        return []
    top = max(row[1] for row in rows)
    strong = [row for row in rows if row[1] >= share * top]
    return sorted(strong, key=lambda row: (-row[2], row[0]))[:n]


# --------------------------------------------------------------- neighbours

class Rows(NamedTuple):
    """Top-K neighbour lists as per-item (positions, counts) arrays, and row totals."""

    rows: list              # position -> (np.intp positions, float64 counts) | None
    totals: np.ndarray


class NeighbourScorer:
    """Recency-weighted sums of the top lists of the user's last items."""

    name = "neighbours"

    def __init__(self, rows: Rows, pos: dict, n: int, query_items: int, decay: float):
        self.rows, self.pos, self.n = rows, pos, n
        self.query_items, self.decay = query_items, decay

    def _rows(self, q: Query) -> tuple[list, list, list]:
        """(positions, recency weights, rows) of the user's last items that have a top list."""
        at, weights, rows = [], [], []
        for a, r in recency(q.recent, self.query_items, self.decay):
            i = self.pos.get(a)
            if i is not None and i < self.n and self.rows.rows[i] is not None:
                at.append(i)
                weights.append(r)
                rows.append(self.rows.rows[i])
        return at, weights, rows


    def _factor(self, i: int, r: float) -> float:
        raise NotImplementedError

    def contributions(self, q: Query, item: str) -> list[tuple[str, float, float]]:
        """(recent item a, what it adds to ``item``'s score, how tied ``item`` is to a) for
        each recent item whose list holds ``item``."""
        b = self.pos.get(item)
        if b is None or b >= self.n:
            return []
        out = []
        for a, r in recency(q.recent, self.query_items, self.decay):
            i = self.pos.get(a)
            row = self.rows.rows[i] if i is not None and i < self.n else None
            if row is None:
                continue
            hit = np.flatnonzero(row[0] == b)
            if len(hit):
                count = float(row[1][hit[0]])
                out.append((a, self._factor(i, r) * count, self._tie(i, count)))
        return out

    def _tie(self, i: int, count: float) -> float:
        """P(item | a): the share of a's list weight that goes to the item."""
        return count / float(self.rows.totals[i])

    def driver(self, q: Query, item: str, share: float | None = None):
        return driver_of(self.contributions(q, item), share)


class SequentialScorer(NeighbourScorer):
    """score(b) = sum over the last items a of recency(a) / total(a) * count(a -> b)."""

    name = "sequential"

    def _factor(self, i: int, r: float) -> float:
        return r / float(self.rows.totals[i])

    def vector(self, q: Query, extra: Extra | None = None) -> np.ndarray | None:
        at, weights, rows = self._rows(q)
        if not rows:
            return None
        totals = self.rows.totals
        idx, w = _concat(rows, [r / float(totals[i]) for i, r in zip(at, weights)])
        return _sum(idx, w, self.n)


class CollaborativeScorer(NeighbourScorer):
    """score(b) = sum over the last items a of recency(a) * cooc(a, b) / sqrt(n(a) n(b))."""

    name = "collaborative"

    def __init__(self, rows: Rows, inv_sqrt: np.ndarray, pos: dict, n: int,
                 query_items: int, decay: float):
        super().__init__(rows, pos, n, query_items, decay)
        self.inv = inv_sqrt

    def contributions(self, q: Query, item: str) -> list[tuple[str, float, float]]:
        found = super().contributions(q, item)
        inv = float(self.inv[self.pos[item]]) if found else 0.0
        return [(a, add * inv, tie) for a, add, tie in found]

    def _tie(self, i: int, count: float) -> float:
        """P(item | a): co-occurrences over a's count."""
        return count * float(self.inv[i]) ** 2

    def _factor(self, i: int, r: float) -> float:
        return r * float(self.inv[i])

    def vector(self, q: Query, extra: Extra | None = None) -> np.ndarray | None:
        at, weights, rows = self._rows(q)
        if not rows:
            return None
        inv = self.inv
        idx, w = _concat(rows, [r * float(inv[i]) for i, r in zip(at, weights)])
        return _sum(idx, w * inv[idx], self.n)


class EaseScorer:
    """score(b) = sum over the last items a of recency(a) * B[a, b], its ``top_m`` best
    positive entries (plus the extra items) kept."""

    name = "ease"

    def __init__(self, weights: np.ndarray, items: list, pos: np.ndarray, n: int,
                 query_items: int, decay: float, top_m: int):
        self.weights, self.items, self.pos, self.n = weights, items, pos, n
        self.index = {item: j for j, item in enumerate(items)}
        self.query_items, self.decay, self.top_m = query_items, decay, top_m

    def _user(self, q: Query) -> tuple[list, list]:
        at, w = [], []
        for a, r in recency(q.recent, self.query_items, self.decay):
            j = self.index.get(a)
            if j is not None:
                at.append(j)
                w.append(r)
        return at, w

    def vector(self, q: Query, extra: Extra | None = None) -> np.ndarray | None:
        at, w = self._user(q)
        if not at:
            return None
        scores = np.zeros(len(self.items), dtype=np.float64)
        for j, r in zip(at, w):                # in order, in float64: the reference's sums
            scores += self.weights[j].astype(np.float64) * r
        hit = _top_entries(scores, self.top_m, _rows_of(self.index, extra))
        return None if hit is None else _scatter(self.n, self.pos[hit[0]], hit[1])

    def contributions(self, q: Query, item: str) -> list[tuple[str, float, float]]:
        """(recent item a, what it adds to ``item``'s score, B[a, item]), positive ones."""
        j = self.index.get(item)
        at, w = self._user(q)
        if j is None:
            return []
        adds = [(self.items[a], r * float(self.weights[a, j]), float(self.weights[a, j]))
                for a, r in zip(at, w)]
        return [row for row in adds if row[1] > 0]

    def driver(self, q: Query, item: str, share: float | None = None):
        return driver_of(self.contributions(q, item), share)


# ------------------------------------------------------------ tag matrices

class ContentScorer:
    name = "content"

    def __init__(self, tags: TagTable, cat_pos: np.ndarray, n: int, top_m: int,
                 short_share: float):
        self.tags, self.cat_pos, self.n = tags, cat_pos, n
        self.top_m, self.short_share = top_m, short_share

    def vector(self, q: Query, extra: Extra | None = None) -> np.ndarray | None:
        weights = tag_blend(q.tags, self.short_share)
        if not weights:
            return None
        u = self.tags.user_vector(weights)
        if u is None:
            return None
        hit = _top_entries(self.tags.matrix @ u, self.top_m, _rows_of(self.tags.index, extra))
        return None if hit is None else _scatter(self.n, self.cat_pos[hit[0]], hit[1])

    def terms(self, q: Query, item: str) -> dict[str, float]:
        """The item's content score split by tag (each shared tag's term of the dot product)."""
        weights = tag_blend(q.tags, self.short_share)
        user = self.tags.user_vector(weights) if weights else None
        row = self.tags.index.get(item)
        if user is None or row is None:
            return {}
        matrix = self.tags.matrix
        return {tag: float(matrix[row, col] * user[col])
                for tag, col in self.tags.vocab.items() if matrix[row, col] and user[col]}


class Vectors(NamedTuple):
    """Item vectors as one matrix: row -> item id, item id -> row, row -> position."""

    ids: list
    index: dict
    matrix: np.ndarray
    pos: np.ndarray


class SemanticScorer:
    name = "semantic"

    def __init__(self, vectors: Vectors, tags: TagTable, cat_pos: np.ndarray, n: int,
                 top_m: int, centroid_items: int):
        self.vectors, self.tags, self.cat_pos, self.n = vectors, tags, cat_pos, n
        self.top_m, self.centroid_items = top_m, centroid_items

    def _query_vector(self, q: Query) -> np.ndarray | None:
        index, matrix = self.vectors.index, self.vectors.matrix
        query = np.zeros(matrix.shape[1], dtype=np.float32)
        emb = (q.profile or {}).get("embedding")
        if emb is not None and len(emb) == matrix.shape[1]:
            e = np.asarray(emb, dtype=np.float32)
            n = float(np.linalg.norm(e))
            if n > 0:
                query += e / n
        centroid = np.zeros_like(query)
        for item, r in recency(q.recent, self.centroid_items, 0.8):
            i = index.get(item)
            if i is not None:
                centroid += r * matrix[i]
        n = float(np.linalg.norm(centroid))
        if n > 0:
            query += centroid / n
        return query if float(np.linalg.norm(query)) > 0 else None

    def _embedding_part(self, q: Query, extra) -> np.ndarray | None:
        if not len(self.vectors.ids):
            return None
        query = self._query_vector(q)
        if query is None:
            return None
        hit = _top_entries(self.vectors.matrix @ query, self.top_m,
                           _rows_of(self.vectors.index, extra))
        return None if hit is None else _scatter(self.n, self.vectors.pos[hit[0]], hit[1])

    def _tag_part(self, q: Query, extra) -> np.ndarray | None:
        ptags = (q.profile or {}).get("tags") or []
        if not ptags:
            return None
        u = self.tags.user_vector({t: 1.0 for t in ptags if isinstance(t, str)})
        if u is None:
            return None
        hit = _top_entries(self.tags.matrix @ u, self.top_m,
                           _rows_of(self.tags.index, extra))
        return None if hit is None else _scatter(self.n, self.cat_pos[hit[0]], hit[1])

    def driver(self, q: Query, item: str) -> tuple[str, float] | None:
        """The recent item whose vector is closest to ``item``'s, and the cosine."""
        index, matrix = self.vectors.index, self.vectors.matrix
        j = index.get(item)
        if j is None:
            return None
        best = None
        for a, _ in recency(q.recent, self.centroid_items, 0.8):
            i = index.get(a)
            if i is not None:
                cos = float(matrix[i] @ matrix[j])
                if cos > 0 and (best is None or cos > best[1]):
                    best = (a, cos)
        return best

    def vector(self, q: Query, extra: Extra | None = None) -> np.ndarray | None:
        out = self._embedding_part(q, extra)
        tag = self._tag_part(q, extra)
        if tag is None:
            return out
        return 0.5 * tag if out is None else out + 0.5 * tag


# -------------------------------------------------------------- popularity

class PopArrays(NamedTuple):
    """One Popularity frozen: raw scores by position, their max, candidate positions."""

    scores: np.ndarray
    top: float
    cand: np.ndarray


def pop_arrays(pop, ctx: Freeze, prev: PopArrays | None) -> PopArrays:
    """Freeze a ``Popularity``, rewriting only the items it changed since the last freeze."""
    changed = pop.take_changed()          # a set, or None for "everything"
    if prev is not None and changed is not None and not changed and len(prev.scores) == ctx.n:
        return prev
    pos = ctx.index.pos
    if prev is None or changed is None:
        scores = np.zeros(ctx.n, dtype=np.float64)
        changed = pop.scores
    else:
        scores = grown(prev.scores, ctx.n)
    for item in changed:
        scores[pos[item]] = pop.scores[item]
    cand = np.fromiter((pos[item] for item in pop.candidates()), dtype=np.intp)
    return PopArrays(frozen(scores), pop.max_score, frozen(cand))


class PopularityScorer:
    """Normalised popularity of the candidates; the same for everyone, so it is computed
    once, at freeze, and shared (read-only) by every query without extra items."""

    name = "popularity"

    def __init__(self, pop: PopArrays, n: int):
        self.pop, self.n = pop, n
        self.pool = self._vector(None)
        if self.pool is not None:
            frozen(self.pool)

    def _vector(self, extra: Extra | None) -> np.ndarray | None:
        pop = self.pop
        if pop.top <= 0:
            return None
        vals = pop.scores / pop.top
        keep = np.zeros(self.n, dtype=bool)
        keep[pop.cand] = True
        if extra is not None and len(extra.pos):
            keep[extra.pos[vals[extra.pos] > 0]] = True
        if not keep.any():
            return None
        return np.where(keep, vals, 0.0)

    def vector(self, q: Query, extra: Extra | None = None) -> np.ndarray | None:
        return self.pool if extra is None else self._vector(extra)

    def rank(self, item_pos: int | None) -> int | None:
        """1 + the candidates more popular than the item at ``item_pos``; None when unscored."""
        if item_pos is None or item_pos >= self.n or self.pop.scores[item_pos] <= 0:
            return None
        return 1 + int((self.pop.scores[self.pop.cand] > self.pop.scores[item_pos]).sum())


class DemographicScorer:
    name = "demographic"

    def __init__(self, segments: dict[str, PopArrays], n: int):
        self.segments, self.n = segments, n

    def vector(self, q: Query, extra: Extra | None = None) -> np.ndarray | None:
        pops = [self.segments[s] for s in segments_of(q.attrs) if s in self.segments]
        if not pops:
            return None
        share = 1.0 / len(pops)
        keys = np.zeros(self.n, dtype=bool)
        for pop in pops:
            keys[pop.cand] = True
        if extra is not None:
            keys[extra.pos] = True
        out = np.zeros(self.n, dtype=np.float64)
        for pop in pops:      # out = share * sum of the segments' normalised scores
            if pop.top > 0:
                out += (share / pop.top) * pop.scores
        out[~keys] = 0.0
        return out if out.any() else None
