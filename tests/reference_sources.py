"""Reference (dict-based) scoring: the former Recommender's scoring, kept as the oracle.

Each ``ref_*`` scores a query straight from a Learner's mutable models with
python dicts, exactly as the service did before the numpy snapshots
(engine.recommend.scorers and engine.recommend.models must agree with it bit
for bit). Call them only when the learner has just published: they read the
learner's current models, the snapshot holds the models as of its publish.
"""

from __future__ import annotations

import heapq
import numpy as np

from interest.engine.recommend.query import Query, recency, segments_of, tag_blend

LLM_SOURCES = frozenset({"semantic"})


def _top_of(vector, ids, m, extra, index) -> dict[str, float]:
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


def ref_sequential(src, q: Query, extra=None) -> dict:
    out: dict[str, float] = {}
    totals = src.table.totals
    for a, r in recency(q.recent, src.query_items, src.recency):
        top = src.table.neighbours(a)
        if not top:
            continue
        f = r / totals[a]
        for b, c in top.items():
            out[b] = out.get(b, 0.0) + f * c
    return out


def ref_collaborative(src, q: Query, extra=None) -> dict:
    out: dict[str, float] = {}
    inv = src.inv_sqrt
    for a, r in recency(q.recent, src.query_items, src.recency):
        top = src.table.neighbours(a)
        if not top:
            continue
        f = r * inv[a]
        for b, c in top.items():
            out[b] = out.get(b, 0.0) + f * c * inv[b]
    return out


def ref_ease(src, q: Query, extra=None) -> dict:
    index = {item: j for j, item in enumerate(src.items)}
    scores: dict[str, float] = {}
    for a, r in recency(q.recent, src.query_items, src.decay):
        j = index.get(a)
        if j is None:
            continue
        for b, w in zip(src.items, src.weights[j].tolist()):
            scores[b] = scores.get(b, 0.0) + w * r
    if not scores:
        return {}
    vector = np.array([scores.get(b, 0.0) for b in src.items])
    return _top_of(vector, src.items, src.top_m, extra, index)


def ref_content(src, tags, q: Query, extra=None) -> dict:
    weights = tag_blend(q.tags, src.short_share)
    if not weights:
        return {}
    u = tags.user_vector(weights)
    if u is None:
        return {}
    return _top_of(tags.matrix @ u, tags.ids, src.top_m, extra, tags.index)


def ref_semantic(src, tags, q: Query, extra=None) -> dict:
    out: dict[str, float] = {}
    ids = list(src.vectors)
    index = {item: i for i, item in enumerate(ids)}
    if ids:
        matrix = np.stack([src.vectors[i] for i in ids])
        query = np.zeros(matrix.shape[1], dtype=np.float32)
        emb = (q.profile or {}).get("embedding")
        if emb is not None and len(emb) == matrix.shape[1]:
            e = np.asarray(emb, dtype=np.float32)
            n = float(np.linalg.norm(e))
            if n > 0:
                query += e / n
        centroid = np.zeros_like(query)
        for item, r in recency(q.recent, src.centroid_items, 0.8):
            i = index.get(item)
            if i is not None:
                centroid += r * matrix[i]
        n = float(np.linalg.norm(centroid))
        if n > 0:
            query += centroid / n
        if float(np.linalg.norm(query)) > 0:
            out = _top_of(matrix @ query, ids, src.top_m, extra, index)
    ptags = (q.profile or {}).get("tags") or []
    if ptags:
        u = tags.user_vector({t: 1.0 for t in ptags if isinstance(t, str)})
        if u is not None:
            for item, v in _top_of(tags.matrix @ u, tags.ids, src.top_m, extra,
                                   tags.index).items():
                out[item] = out.get(item, 0.0) + 0.5 * v
    return out


def ref_popularity(src, q: Query, extra=None) -> dict:
    get = src.pop.get
    out = {item: get(item) for item in src.pop.candidates()}
    if extra:
        for item in extra:
            v = get(item)
            if v > 0:
                out[item] = v
    return out


def ref_demographic(src, q: Query, extra=None) -> dict:
    pops = [src.segments[s] for s in segments_of(q.attrs) if s in src.segments]
    if not pops:
        return {}
    share = 1.0 / len(pops)
    keys: dict[str, None] = {}
    for pop in pops:
        keys.update(dict.fromkeys(pop.candidates()))
    if extra:
        keys.update(dict.fromkeys(extra))
    out: dict[str, float] = {}
    for pop in pops:
        if pop.max_score <= 0:
            continue
        factor, scores = share / pop.max_score, pop.scores
        for item in keys:
            v = scores.get(item)
            if v:
                out[item] = out.get(item, 0.0) + factor * v
    return {k: v for k, v in out.items() if v > 0}


def ref_source(learner, name: str, q: Query, extra=None) -> dict:
    tags = learner.tag_matrix.get()
    return {
        "sequential": lambda: ref_sequential(learner.sequential, q, extra),
        "collaborative": lambda: ref_collaborative(learner.collaborative, q, extra),
        "ease": lambda: ref_ease(learner.ease, q, extra),
        "content": lambda: ref_content(learner.content, tags, q, extra),
        "semantic": lambda: ref_semantic(learner.semantic, tags, q, extra),
        "popularity": lambda: ref_popularity(learner.popularity_source, q, extra),
        "demographic": lambda: ref_demographic(learner.demographic, q, extra),
    }[name]()


def ref_scores(learner, q: Query, extra, use_llm: bool) -> dict[str, dict]:
    return {name: (ref_source(learner, name, q, extra)
                   if use_llm or name not in LLM_SOURCES else {})
            for name in learner.names}


def ref_rank(raw, weights, k, seen, candidates, catalog):
    factors = {}
    for name, scores in raw.items():
        top = max(scores.values()) if scores else 0.0
        factors[name] = weights.get(name, 0.0) / top if top > 0 else 0.0
    totals: dict[str, float] = {}
    for name, scores in raw.items():
        f = factors[name]
        if f == 0.0:
            continue
        for item, v in scores.items():
            totals[item] = totals.get(item, 0.0) + f * v
    if candidates is not None:
        pool = [(-totals.get(c, 0.0), c) for c in dict.fromkeys(candidates) if c not in seen]
        best = heapq.nsmallest(k, pool)
    else:
        best = heapq.nsmallest(k, ((-t, i) for i, t in totals.items() if i not in seen))
        if len(best) < k:
            have = {i for _, i in best}
            for item in catalog.ids[:len(catalog)]:
                if len(best) >= k:
                    break
                if item not in have and item not in seen and item not in totals:
                    best.append((0.0, item))
    items = []
    for _, item in best:
        sources = {name: factors[name] * raw[name].get(item, 0.0) for name in raw}
        items.append({"item": item, "score": sum(sources.values()), "sources": sources})
    return items, factors, totals


def ref_recommend(learner, state, *, k=10, exclude_seen=True, candidates=None, use_llm=True):
    q, segment = learner.models.query(state, use_llm)
    weights = learner.fusion.weights(q.user, segment, q.context)
    raw = ref_scores(learner, q, candidates, use_llm)
    seen = state.seen if (state is not None and exclude_seen) else frozenset()
    items, _, _ = ref_rank(raw, weights, k, seen, candidates, learner.catalog)
    return {"items": items, "strategy": segment, "weights": weights}


def ref_explain(learner, state, item, use_llm=True):
    q, segment = learner.models.query(state, use_llm)
    weights = learner.fusion.weights(q.user, segment, q.context)
    raw = ref_scores(learner, q, [item], use_llm)
    items, _, totals = ref_rank(raw, weights, 1, frozenset(), [item], learner.catalog)
    row = items[0]
    mine = totals.get(item, 0.0)
    rank = 1 + sum(1 for other, t in totals.items() if t > mine or (t == mine and other < item))
    return {"item": item, "rank": rank, "seen": bool(state and item in state.seen),
            "score": row["score"], "sources": row["sources"], "strategy": segment,
            "weights": weights}


def ref_rank_of(raw: dict[str, dict], weights: dict, item: str, seen) -> int | None:
    """How many items other than ``item`` and ``seen`` have a higher fused score under
    ``weights`` (each source divided by its maximum); None when no source scores the
    item: dicts all the way."""
    tops = {name: max(scores.values()) for name, scores in raw.items() if scores}
    totals: dict[str, float] = {}
    for name, scores in raw.items():
        top = tops.get(name)
        if not top:
            continue
        for other, v in scores.items():
            totals[other] = totals.get(other, 0.0) + weights[name] * (v / top)
    if not any(raw[name].get(item, 0.0) > 0 for name in tops):
        return None
    mine = totals[item]
    return sum(1 for other, t in totals.items()
               if t > mine and other != item and other not in seen)


def score_dict(models, name: str, q: Query, extra=None, use_llm: bool = True) -> dict:
    """One source's numpy scores from a snapshot, as {item: score}."""
    raw = models.scores(q, models._extra(extra), use_llm)  # noqa: SLF001
    return as_dict(models, raw[name])


def as_dict(models, vec) -> dict:
    """A dense score vector as {item: score} over its non-zero entries."""
    if vec is None:
        return {}
    ids = models.index.ids
    return {ids[i]: float(vec[i]) for i in np.flatnonzero(vec).tolist()}
