"""``Models``: an immutable snapshot of the learned models, scored with numpy.

Threading: the learner thread builds a ``Models`` at ``Learner.publish`` and
swaps one reference; any number of reader threads (user actors, the api)
call ``recommend``/``explain`` on the snapshot they picked up, at the same
time, without locks and while the learner keeps learning. A snapshot never
changes: later learning goes into the next one.

What a snapshot reads that is not its own:

* the shared ``Fusion`` object (live weights, under Fusion's own small lock,
  never the learner's; learned from the journal alone, engine.recommend.learner);
* the catalog's user attributes (a dict read) for the demographic source;
* the append-only ``ItemIndex``, only at positions below its own ``n``.

Scoring: every source gives a dense float64 vector over item positions
(``engine.recommend.scorers``); fusion divides each by its max, weights and
sums them, masks seen items and takes the top k with a partition; python
dicts are built only for the k items returned. The replies are those of the
former dict-based ``Recommender`` (same ranking, ties broken by item id,
per-source contributions that add up to the score, padding with catalog
items at score 0, candidates mode).
"""

from __future__ import annotations

import heapq
from itertools import repeat

import numpy as np

from interest.engine.recommend.query import Query, query_of
from interest.engine.recommend.scorers import Extra, ItemIndex

LLM_SOURCES = frozenset({"semantic"})
_NONE = np.zeros(0, dtype=np.intp)


class Scored:
    """One query's raw score vectors (``None``: the source had nothing to say) and, once
    ``fuse`` ran, the fusion factors and every item's total."""

    __slots__ = ("names", "vectors", "factors", "total")

    def __init__(self, raw: dict, n: int):
        self.names = list(raw)
        self.vectors = list(raw.values())
        self.total = np.zeros(n, dtype=np.float64)

    def fuse(self, weights: dict) -> "Scored":
        """factor = weight / the source's max; total = sum of factor x score, in source order."""
        self.factors = {}
        total, term = self.total, np.empty_like(self.total)
        for name, vec in zip(self.names, self.vectors):
            top = float(vec.max()) if vec is not None else 0.0
            f = self.factors[name] = weights.get(name, 0.0) / top if top > 0 else 0.0
            if f != 0.0:
                total += np.multiply(vec, f, out=term)
        return self

    def compact(self) -> dict:
        """Per source, (positions, values) of its non-zero scores; ``None`` when it had none."""
        out = {}
        for name, vec in zip(self.names, self.vectors):
            nz = np.flatnonzero(vec) if vec is not None else None
            out[name] = None if nz is None else (nz, vec[nz])
        return out

    def rows(self, best: list[tuple]) -> list[dict]:
        """Reply rows for (position or None, item) pairs: contributions, and their sum."""
        at = [0 if i is None else i for i, _ in best]
        cols = [(name, self.factors[name], vec[at].tolist() if vec is not None else None)
                for name, vec in zip(self.names, self.vectors)]
        rows = []
        for j, (i, item) in enumerate(best):
            sources = {name: f * (col[j] if col is not None and i is not None else 0.0)
                       for name, f, col in cols}
            rows.append({"item": item, "score": sum(sources.values()), "sources": sources})
        return rows


class Models:
    """One published snapshot. Build it with ``Learner.publish``, never by hand."""

    __slots__ = ("scorers", "names", "index", "n", "cat_pos", "fusion", "catalog", "params",
                 "use_llm", "version")

    def __init__(self, scorers, index: ItemIndex, n: int, cat_pos: np.ndarray, fusion, catalog,
                 params, *, use_llm: bool = True, version: int = 0):
        self.scorers = tuple(scorers)
        self.names = tuple(s.name for s in self.scorers)
        self.index, self.n, self.cat_pos = index, n, cat_pos
        self.fusion, self.catalog, self.params = fusion, catalog, params
        self.use_llm, self.version = use_llm, version

    # ------------------------------------------------------------ lookups

    def position(self, item: str) -> int | None:
        i = self.index.pos.get(item)
        return i if i is not None and i < self.n else None

    def positions(self, items) -> np.ndarray:
        """Positions of the known items among ``items`` (unknown ones are left out)."""
        if not items:
            return _NONE
        p = np.fromiter(map(self.index.pos.get, items, repeat(-1)), np.intp, len(items))
        return p[(p >= 0) & (p < self.n)]

    def query(self, state, use_llm: bool | None = None) -> tuple[Query, str]:
        use = self.use_llm if use_llm is None else use_llm
        user = state.user if state is not None else None
        return query_of(state, self.params, self.catalog.attrs.get(user), use)

    def scores(self, q: Query, extra: Extra | None = None,
               use_llm: bool | None = None) -> dict:
        """Per source, its raw score vector over item positions (``None``: nothing to say)."""
        use = self.use_llm if use_llm is None else use_llm
        out = {}
        for s in self.scorers:
            out[s.name] = s.vector(q, extra) if use or s.name not in LLM_SOURCES else None
        return out

    def scorer(self, name: str):
        return self.scorers[self.names.index(name)]

    def scored(self, q: Query, extra: Extra | None = None,
               use_llm: bool | None = None) -> Scored:
        return Scored(self.scores(q, extra, use_llm), self.n)

    def _extra(self, items) -> Extra | None:
        return None if items is None else Extra(list(items), self.positions(items))

    # ------------------------------------------------------------ ranking

    def _best(self, total: np.ndarray, k: int, seen: np.ndarray) -> list[int]:
        """Positions of the top ``k`` by (-score, item id), then catalog padding at 0."""
        if k <= 0:
            return []
        mask = total > 0
        mask[seen] = False
        cand = np.flatnonzero(mask)
        if len(cand) > k:
            vals = total[cand]
            kth = np.partition(vals, len(vals) - k)[len(vals) - k]
            cand = cand[vals >= kth]
        ids = self.index.ids
        best = [i for _, _, i in sorted(zip((-total[cand]).tolist(),
                                            [ids[i] for i in cand.tolist()],
                                            cand.tolist()))[:k]]
        if len(best) < k:        # pad with the rest of the catalog at score 0
            free = total <= 0
            free[seen] = False
            pad = self.cat_pos[free[self.cat_pos]]
            best.extend(pad[:k - len(best)].tolist())
        return best

    def _best_of(self, candidates: list, total: np.ndarray, k: int, seen) -> list[tuple]:
        pool = []
        for c in dict.fromkeys(candidates):
            if c in seen:
                continue
            i = self.position(c)
            pool.append((-(float(total[i]) if i is not None else 0.0), c, i))
        return [(i, c) for _, c, i in heapq.nsmallest(k, pool, key=lambda r: r[:2])]

    def recommend(self, state, *, k: int = 10, exclude_seen: bool = True,
                  candidates: list[str] | None = None, use_llm: bool | None = None,
                  fusion=None) -> dict:
        """The user's top ``k``: ``{"items": [{item, score, sources}], "strategy", "weights"}``.

        ``state``: the user's ``InterestState`` (``None``: unknown user), which must not
        change during the call (readers pass a private copy). ``candidates``: rank only
        these (unknown ones score 0); otherwise rank everything the sources score and
        pad with catalog items at score 0.

        ``fusion``: weights from this ``Fusion`` instead of the live one (an evaluation
        of fixed prior weights).
        """
        use = self.use_llm if use_llm is None else use_llm
        q, segment = self.query(state, use)
        weights = (fusion or self.fusion).weights(q.user, segment, q.context)
        scored = self.scored(q, self._extra(candidates), use).fuse(weights)
        seen = self.positions(state.seen) if state is not None else _NONE
        if candidates is not None:
            skip = state.seen if (state is not None and exclude_seen) else frozenset()
            best = self._best_of(candidates, scored.total, k, skip)
        else:
            ids = self.index.ids
            best = [(i, ids[i])
                    for i in self._best(scored.total, k, seen if exclude_seen else _NONE)]
        items = scored.rows(best)
        return {"items": items, "strategy": segment, "weights": weights}

    def explain(self, state, item: str, *, use_llm: bool | None = None) -> dict:
        """An item's rank, score and per-source contributions for this user.

        The rank is among every item the sources score (seen items included),
        the same scores ``recommend`` ranks by; items no source scores rank after.
        """
        use = self.use_llm if use_llm is None else use_llm
        q, segment = self.query(state, use)
        weights = self.fusion.weights(q.user, segment, q.context)
        scored = self.scored(q, self._extra([item]), use).fuse(weights)
        total = scored.total
        i = self.position(item)
        row = scored.rows([(i, item)])[0]
        mine = float(total[i]) if i is not None else 0.0
        ids = self.index.ids
        ties = np.flatnonzero((total == mine) & (total > 0)).tolist()
        rank = 1 + int((total > mine).sum()) + sum(1 for j in ties if ids[j] < item)
        return {"item": item, "rank": rank, "seen": state is not None and item in state.seen,
                "score": row["score"], "sources": row["sources"], "strategy": segment,
                "weights": weights}

    def content_terms(self, state, item: str, use_llm: bool | None = None) -> dict[str, float]:
        """The item's content score split by shared tag (unweighted dot-product terms)."""
        q, _ = self.query(state, use_llm)
        return self.scorer("content").terms(q, item)

    def stats(self) -> dict:
        return {"version": self.version, "items": self.n, "catalog_items": len(self.cat_pos)}
