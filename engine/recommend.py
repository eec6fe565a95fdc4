"""Recommendation from captured interests.

Two sources, each kept per item so an explanation is the decision path:
``tags`` (the user's decayed tag weights against the item's tags, normalised
by the user's strongest tag) and ``popularity`` (time-decayed interaction
counts, normalised by the most popular item). Users with no tag evidence are
``cold`` and ranked by popularity alone.
"""

from __future__ import annotations

from engine.catalog import Catalog
from engine.popularity import Popularity
from engine.state import FoldParams, InterestState

WARM_WEIGHTS = {"tags": 1.0, "popularity": 0.2}
COLD_WEIGHTS = {"tags": 0.0, "popularity": 1.0}


class Recommender:
    def __init__(self, catalog: Catalog, params: FoldParams, popularity_half_life_s: float):
        self.catalog = catalog
        self.params = params
        self.popularity = Popularity(popularity_half_life_s)

    def observe(self, entry) -> None:
        """Learn from one committed user entry (writer thread, in commit order)."""
        event = entry.event
        item = event.get("item")
        if item is None or event["type"] in ("skip", "dislike"):
            return
        self.popularity.add(item, float(event["ts"]))

    def recommend(self, state: InterestState | None, *, k: int = 10, exclude_seen: bool = True,
                  candidates: list[str] | None = None) -> dict:
        tag_weights = self._user_tags(state)
        strategy = "warm" if tag_weights else "cold"
        weights = WARM_WEIGHTS if tag_weights else COLD_WEIGHTS
        popular = self.popularity.normalised()
        seen = state.seen if (state is not None and exclude_seen) else ()
        pool = candidates if candidates is not None else self.catalog.ids[:len(self.catalog)]
        scored = []
        for item in pool:
            if item in seen:
                continue
            sources = {
                "tags": weights["tags"] * self._tag_score(item, tag_weights),
                "popularity": weights["popularity"] * popular.get(item, 0.0),
            }
            scored.append((sum(sources.values()), item, sources))
        scored.sort(key=lambda row: (-row[0], row[1]))
        items = [{"item": item, "score": score, "sources": sources}
                 for score, item, sources in scored[:k]]
        return {"items": items, "strategy": strategy, "weights": dict(weights)}

    def _user_tags(self, state: InterestState | None) -> dict[str, float]:
        if state is None:
            return {}
        rows = [row for row in state.tag_weights(self.params) if row["weight"] > 0]
        if not rows:
            return {}
        top = rows[0]["weight"]
        return {row["tag"]: row["weight"] / top for row in rows}

    def _tag_score(self, item: str, tag_weights: dict[str, float]) -> float:
        if not tag_weights:
            return 0.0
        tags = self.catalog.tags_of(item)
        if not tags:
            return 0.0
        return sum(tag_weights.get(tag, 0.0) for tag in tags) / len(tags)
