"""The Recommender: sources learned on the writer thread, fused per user segment.

Threading: ``observe`` runs on the writer thread in global commit order;
``recommend``/``explain``/``feedback`` run on user-actor threads. One RLock
guards the source models (observe and scoring); the fusion weights have
their own lock. Scoring is pure: it never changes a source.

Online adaptation: every ``recommend`` remembers, per user (bounded LRU), the
per-source scores it served. When that user's next positive item is
committed, ``observe`` credits the sources by the rank each gave that item
(see engine.recommend.fusion). ``feedback(state, entry)``, called by the user
actor before folding an entry, credits the sources for entries that had no
served list (scoring afresh every ``feedback_every``-th event), so users who
never asked still teach the weights; an entry is never credited twice.
"""

from __future__ import annotations

import heapq
import os
import threading
import zlib
from collections import OrderedDict
from pathlib import Path

import msgpack

from engine.recommend.fusion import Fusion, reward_of, segment_of
from engine.recommend.sources import (Collaborative, Content, Demographic, Obs,
                                      PopularitySource, Query, Semantic, Sequential, TagMatrix)
from engine.projections.state import FoldParams, InterestState

MODEL_FORMAT = 1
MODEL_FILE = Path("models") / "recommender.msgpack"
#: event types that are not positive interactions with an item
NOT_POSITIVE = frozenset({"skip", "dislike", "search"})
LLM_SOURCES = frozenset({"semantic"})


def model_path(data_dir: str | Path) -> Path:
    """Where ``interest train`` saves, and the service loads, the trained model."""
    return Path(data_dir) / MODEL_FILE


class Recommender:
    def __init__(self, catalog, params: FoldParams, popularity_half_life_s: float = 604800.0, *,
                 use_llm: bool = True, history: int = 50, weights: dict | None = None,
                 adapt: bool = True, feedback_every: int = 4, max_served: int = 20_000,
                 max_histories: int = 200_000):
        self.catalog = catalog
        self.params = params
        self.use_llm = use_llm
        self.history_len = history
        self.feedback_every = max(1, feedback_every)
        self._lock = threading.RLock()
        self.tag_matrix = TagMatrix(catalog)
        self.sequential = Sequential()
        self.collaborative = Collaborative()
        self.content = Content(self.tag_matrix)
        self.semantic = Semantic(self.tag_matrix)
        self.popularity_source = PopularitySource(popularity_half_life_s)
        self.demographic = Demographic(popularity_half_life_s * 4)
        self.sources = [self.sequential, self.collaborative, self.content, self.semantic,
                        self.popularity_source, self.demographic]
        self.names = [s.name for s in self.sources]
        self.fusion = Fusion(self.names, weights, adapt=adapt)
        #: user -> recent items, LRU-bounded so memory follows active users, not all users;
        #: an evicted user's co-occurrence window simply starts again
        self.histories: OrderedDict[str, list[str]] = OrderedDict()
        self.max_histories = max_histories
        self.gseq = 0              # last global position observed
        self.base_gseq = 0         # positions already inside a loaded model
        self.observed = 0
        self.max_served = max_served
        self._served: OrderedDict = OrderedDict()     # user -> (version, segment, raw, seen)
        self._credited: OrderedDict = OrderedDict()   # user -> seq credited by observe
        self.credits = {"served": 0, "feedback": 0}
        #: evaluation hook: {name: {"use_llm": bool}}; each recommend also ranks
        #: under these settings and leaves the items in ``shadow_results[user][name]``
        self.shadow: dict[str, dict] = {}
        self.shadow_results: dict[str, dict] = {}

    # ------------------------------------------------------------ hooks

    @property
    def popularity(self):
        return self.popularity_source.pop

    @property
    def item_vectors(self) -> dict:
        """item -> unit float32 vector (read-only view; fill with ``set_item_vector``)."""
        return self.semantic.vectors

    def set_item_vector(self, item: str, vector) -> None:
        """Give an item an embedding (from the inference work); thread-safe."""
        with self._lock:
            self.semantic.set_vector(item, vector)

    # ---------------------------------------------------------- learning

    def observe(self, entry) -> None:
        """Learn from one committed user entry (writer thread, in commit order)."""
        event = entry.event
        item = event.get("item")
        if entry.gseq and entry.gseq <= self.base_gseq:
            return
        if item is None or event["type"] in NOT_POSITIVE:
            return
        user = entry.stream or event.get("user") or ""
        with self._lock:
            self.gseq = max(self.gseq, entry.gseq or 0)
            served = self._served.pop(user, None)
            if served is not None and served[0] < entry.seq:
                self._credit(user, served[1], served[2], item, served[3])
                self.credits["served"] += 1
                self._credited[user] = entry.seq
                self._credited.move_to_end(user)
                if len(self._credited) > self.max_served:
                    self._credited.popitem(last=False)
            hist = self.histories.get(user)
            if hist is None:
                hist = self.histories[user] = []
                if len(self.histories) > self.max_histories:
                    self.histories.popitem(last=False)
            else:
                self.histories.move_to_end(user)
            obs = Obs(user, item, float(event["ts"]), tuple(hist), self.catalog.attrs.get(user))
            for source in self.sources:
                source.observe(obs)
            hist.append(item)
            if len(hist) > self.history_len:
                del hist[0]
            self.observed += 1

    def feedback(self, state: InterestState, entry) -> None:
        """Credit the sources for ``entry`` (user actor, before folding it into ``state``)."""
        event = entry.event
        item = event.get("item")
        if item is None or event["type"] in NOT_POSITIVE or state is None:
            return
        # a deterministic per-user offset spreads the sampled events over users, so cold
        # users (few events) are sampled as often as warm ones
        if (state.events + zlib.crc32(state.user.encode("utf-8"))) % self.feedback_every:
            return
        if self._credited.get(state.user) == entry.seq:   # one dict read: atomic, no lock
            return
        q, segment = self._query(state, self.use_llm)
        raw = self._score(q, None, self.use_llm)
        self._credit(state.user, segment, raw, item, state.seen)
        self.credits["feedback"] += 1

    def _credit(self, user, segment, raw, item, seen) -> None:
        rewards = {}
        depth = self.fusion.reward_depth
        for name, scores in raw.items():
            if not scores:
                continue            # the source had nothing to say: no reward, no penalty
            x = scores.get(item)
            if x is None:
                rewards[name] = 0.0
                continue
            rank = 0
            for other, v in scores.items():
                if v > x and other not in seen:
                    rank += 1
                    if rank >= depth:
                        break
            rewards[name] = reward_of(rank, depth)
        if rewards:
            self.fusion.credit(user, segment, rewards)

    # ----------------------------------------------------------- scoring

    def _query(self, state: InterestState | None, use_llm: bool):
        if state is None or state.events == 0:
            user = state.user if state is not None else None
            return Query(user=user, recent=[], attrs=self.catalog.attrs.get(user)), "cold"
        recent = [row[0] for row in state.recent if row[1] not in NOT_POSITIVE]
        tags = state.tag_weights(self.params) if state.tags else []
        q = Query(user=state.user, recent=recent, tags=tags,
                  attrs=self.catalog.attrs.get(state.user),
                  profile=state.profile if use_llm else None)
        return q, segment_of(state.events)

    def _score(self, q: Query, extra, use_llm: bool) -> dict[str, dict]:
        with self._lock:
            return {s.name: (s.score(q, extra) if use_llm or s.name not in LLM_SOURCES else {})
                    for s in self.sources}

    def _rank(self, raw, weights, k, seen, candidates):
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
            if len(best) < k:       # pad with the rest of the catalog at score 0
                have = {i for _, i in best}
                n = len(self.catalog)
                for item in self.catalog.ids[:n]:
                    if len(best) >= k:
                        break
                    if item not in have and item not in seen and item not in totals:
                        best.append((0.0, item))
        items = []
        for _, item in best:
            sources = {name: factors[name] * raw[name].get(item, 0.0) for name in raw}
            items.append({"item": item, "score": sum(sources.values()), "sources": sources})
        return items, factors

    def recommend(self, state: InterestState | None, *, k: int = 10, exclude_seen: bool = True,
                  candidates: list[str] | None = None) -> dict:
        q, segment = self._query(state, self.use_llm)
        weights = self.fusion.weights(q.user, segment)
        raw = self._score(q, candidates, self.use_llm)
        seen = state.seen if (state is not None and exclude_seen) else frozenset()
        items, _ = self._rank(raw, weights, k, seen, candidates)
        if state is not None and q.user is not None and candidates is None:
            with self._lock:
                self._served[q.user] = (state.version, segment, raw, state.seen)
                self._served.move_to_end(q.user)
                if len(self._served) > self.max_served:
                    self._served.popitem(last=False)
        if self.shadow and q.user is not None:
            out = {}
            for name, opts in self.shadow.items():
                use_llm = opts.get("use_llm", self.use_llm)
                sq, _ = self._query(state, use_llm)
                out[name] = self._rank(self._score(sq, candidates, use_llm), weights, k, seen,
                                       candidates)[0]
            self.shadow_results[q.user] = out
        return {"items": items, "strategy": segment, "weights": weights}

    def explain(self, state: InterestState | None, item: str) -> dict:
        """An item's rank, score and per-source contributions for this user.

        The rank is among every item the sources score (seen items included),
        the same scores ``recommend`` ranks by; items no source scores rank after.
        """
        q, segment = self._query(state, self.use_llm)
        weights = self.fusion.weights(q.user, segment)
        raw = self._score(q, [item], self.use_llm)
        items, factors = self._rank(raw, weights, 1, frozenset(), [item])
        row = items[0]
        totals: dict[str, float] = {}
        for name, scores in raw.items():
            for other, v in scores.items():
                totals[other] = totals.get(other, 0.0) + factors[name] * v
        mine = totals.get(item, 0.0)
        rank = 1 + sum(1 for other, t in totals.items() if t > mine or (t == mine and other < item))
        return {"item": item, "rank": rank, "seen": bool(state and item in state.seen),
                "score": row["score"], "sources": row["sources"], "strategy": segment,
                "weights": weights}

    # ------------------------------------------------------------- stats

    def stats(self) -> dict:
        with self._lock:
            models = {s.name: s.stats() for s in self.sources}
            users = len(self.histories)
        return {"fusion": self.fusion.stats(), "models": models, "users": users,
                "observed": self.observed, "gseq": self.gseq, "base_gseq": self.base_gseq,
                "credits": dict(self.credits), "use_llm": self.use_llm}

    # ------------------------------------------------------- persistence

    def to_dict(self) -> dict:
        with self._lock:
            return {"format": MODEL_FORMAT, "gseq": self.gseq, "observed": self.observed,
                    "histories": self.histories,
                    "sources": {s.name: s.to_dict() for s in self.sources},
                    "fusion": self.fusion.to_dict()}

    def load_dict(self, obj: dict) -> None:
        if obj.get("format") != MODEL_FORMAT:
            raise ValueError(f"recommender model has format {obj.get('format')!r}, "
                             f"expected {MODEL_FORMAT}")
        with self._lock:
            for source in self.sources:
                if source.name in obj["sources"]:
                    source.load_dict(obj["sources"][source.name])
            self.histories = OrderedDict((u, list(h)) for u, h in obj["histories"].items())
            self.fusion.load_dict(obj["fusion"])
            self.gseq = self.base_gseq = obj["gseq"]
            self.observed = obj["observed"]

    def save(self, path: str | Path) -> Path:
        """Write the models and fusion weights atomically (safe while the service runs:
        they are packed under the lock, so the writer thread cannot change them mid-way)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            data = msgpack.packb(self.to_dict(), use_bin_type=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return path

    def load(self, path: str | Path) -> bool:
        """Load a trained model (``interest train``) or the service's last checkpoint;
        False when the file is absent.

        Call before the service replays its journal: entries with a global
        position at or below the model's are skipped by ``observe``.
        """
        path = Path(path)
        if not path.exists():
            return False
        self.load_dict(msgpack.unpackb(path.read_bytes(), raw=False, strict_map_key=False))
        return True
