"""``Learner``: the mutable recommendation models and the one thread that owns them.

Threading (the rules the service follows):

* ONE owner thread (the model learner) calls ``observe``, ``publish``,
  ``changed``, ``to_dict``/``dump``/``save``, and ``load_dict``/``load``
  (before readers start, or on that thread). Nothing else touches the
  sources, the histories or the item index's appends. ``stats`` reads sizes
  and counters only and may run on any thread.
* ``publish()`` builds a new immutable ``Models`` (engine.recommend.models)
  from what changed since the last publish and swaps ``self.models``; readers
  on any thread take ``learner.models`` (one reference read) and score from
  it without locks.
* ``served(...)`` is called by readers (``Models.recommend``) on any thread:
  a short lock around a bounded OrderedDict, never held while scoring.
* ``set_item_vector(item, vector)`` may be called from any thread: it queues
  the vector; the owner applies the queue at its next ``publish``.
* The shared ``Fusion`` object has its own small lock: the learner credits
  it, snapshots read the current weights.

Online adaptation of the fusion weights, all on the owner thread (nothing
on a reader's or a user actor's thread scores for it):

* served lists: when a user's next positive item arrives and a list was
  served to that user before it, the sources are credited by the rank each
  gives the item for the query that list was scored for (re-scored here
  with the latest snapshot, which has not learned the item yet);
* sampled feedback: otherwise, every ``feedback_every``-th event of a user
  (a per-user offset spreads them) is queued and credited the same way at
  the next ``publish``, scored with the snapshot just built (as the former
  actor-side feedback scored with models that had already learned the
  event), for a query built from the learner's own per-user history before
  the event and the user's attributes (no tag weights, no model profile:
  the content source and the profile part of the semantic source have no
  say there). ``observe`` publishes by itself when feedback is queued and
  ``max_stale`` events were learned since the last publish, and
  ``to_dict`` credits the queue first, so no credit waits long or is lost.

An entry is credited at most once.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections import OrderedDict, deque
from pathlib import Path

import msgpack
import numpy as np

from interest.engine.journal.files import read_checked, write_checked
from interest.engine.recommend.fusion import Fusion, reward_of, segment_of
from interest.engine.recommend.models import Models
from interest.engine.recommend.query import NOT_POSITIVE, Query
from interest.engine.recommend.scorers import Freeze, ItemIndex, frozen
from interest.engine.recommend.sources import (Collaborative, Content, Demographic, Obs, PopularitySource,
                                      Semantic, Sequential, TagMatrix)

MODEL_FORMAT = 1


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write a model file behind a checksum, fsynced, renamed into place (a checkpoint is
    rebuildable: a damaged one is refused at load, and the journal rebuilds the models)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_checked(path, data)
    return path


def rewards_of(raw: dict, target: int | None, unseen: np.ndarray, depth: int) -> dict:
    """Per source that had something to say, the reward of the rank it gave ``target``
    among the items not seen (``unseen``: a mask over positions)."""
    out = {}
    for name, part in raw.items():
        if part is None:
            continue            # the source had nothing to say: no reward, no penalty
        idx, vals = part
        hit = np.flatnonzero(idx == target) if target is not None else ()
        if not len(hit):
            out[name] = 0.0
            continue
        above = (vals > vals[hit[0]]) & unseen[idx]
        out[name] = reward_of(min(int(above.sum()), depth), depth)
    return out


class Learner:
    """The six sources, the fusion weights and the per-user histories, learned from
    committed entries on one owner thread, published as immutable ``Models``.

    ``max_stale``: sampled feedback waits at most this many learned events for a
    publish (``observe`` publishes by itself past it).
    """

    def __init__(self, catalog, params, popularity_half_life_s: float = 604800.0, *,
                 use_llm: bool = True, history: int = 50, weights: dict | None = None,
                 adapt: bool = True, feedback_every: int = 4, max_served: int = 20_000,
                 max_histories: int = 200_000, max_stale: int = 256):
        self.catalog = catalog
        self.params = params
        self.use_llm = use_llm
        self.history_len = history
        self.feedback_every = max(1, feedback_every)
        self.max_stale = max_stale
        self.tag_matrix = TagMatrix(catalog)
        self.sequential = Sequential()
        self.collaborative = Collaborative()
        self.content = Content()
        self.semantic = Semantic()
        self.popularity_source = PopularitySource(popularity_half_life_s)
        self.demographic = Demographic(popularity_half_life_s * 4)
        self.sources = [self.sequential, self.collaborative, self.content, self.semantic,
                        self.popularity_source, self.demographic]
        self.names = [s.name for s in self.sources]
        self.fusion = Fusion(self.names, weights, adapt=adapt)
        #: user -> recent positive items, LRU-bounded so memory follows active users;
        #: an evicted user's co-occurrence window simply starts again
        self.histories: OrderedDict[str, list[str]] = OrderedDict()
        #: user -> behaviour events observed (the fusion segment of feedback), same bound
        self.user_events: OrderedDict[str, int] = OrderedDict()
        self.max_histories = max_histories
        self.gseq = 0              # last global position observed
        self.base_gseq = 0         # positions already inside a loaded model
        self.observed = 0
        self.credits = {"served": 0, "feedback": 0}
        self.max_served = max_served
        #: user -> (state version, segment, query, seen positions, use_llm) of the last
        #: list served to that user
        self._served: OrderedDict = OrderedDict()
        self._served_lock = threading.Lock()
        self._vectors: deque = deque()               # (item, vector), from any thread
        self._feedback: deque = deque()              # sampled events, credited at publish
        self.index = ItemIndex()
        self._tags = None
        self._cat_pos = np.zeros(0, dtype=np.intp)
        self._pending = 0          # events learned since the last publish
        self._full = True          # the next publish rebuilds everything
        self.publishes = 0
        self.publish_ms = 0.0
        self.models: Models | None = None
        self.publish()

    # ------------------------------------------------------- any thread

    def set_item_vector(self, item: str, vector) -> None:
        """Give an item an embedding; any thread (applied at the next publish)."""
        self._vectors.append((item, vector))

    def served(self, user: str, version: int, segment: str, query: Query, seen,
               use_llm: bool = True) -> None:
        """Remember what was served to ``user`` at ``version`` of its state (any thread):
        credited when the user's next item arrives."""
        with self._served_lock:
            self._served[user] = (version, segment, query, seen, use_llm)
            self._served.move_to_end(user)
            if len(self._served) > self.max_served:
                self._served.popitem(last=False)

    @property
    def item_vectors(self) -> dict:
        """item -> unit float32 vector (the owner's dict; fill with ``set_item_vector``)."""
        return self.semantic.vectors

    @property
    def popularity(self):
        return self.popularity_source.pop

    # -------------------------------------------------------- learning

    def observe(self, entry) -> None:
        """Learn from one committed user entry (owner thread, in commit order)."""
        event = entry.event
        if entry.gseq and entry.gseq <= self.base_gseq:
            return
        user = entry.stream or event.get("user") or ""
        before = self._count_event(user)
        item = event.get("item")
        if item is None or event["type"] in NOT_POSITIVE:
            return
        self.gseq = max(self.gseq, entry.gseq or 0)
        hist = self._history(user)
        credited = self._credit_served(user, entry.seq, item)
        if not credited and self._sampled(user, before):
            self._feedback.append((user, item, tuple(hist), before))
        self._learn(user, item, float(event["ts"]), hist)
        if self._feedback and self._pending >= self.max_stale:
            self.publish()

    def _count_event(self, user: str) -> int:
        n = self.user_events.get(user, 0)
        self.user_events[user] = n + 1
        self.user_events.move_to_end(user)
        if len(self.user_events) > self.max_histories:
            self.user_events.popitem(last=False)
        return n

    def _history(self, user: str) -> list[str]:
        hist = self.histories.get(user)
        if hist is None:
            hist = self.histories[user] = []
            if len(self.histories) > self.max_histories:
                self.histories.popitem(last=False)
        else:
            self.histories.move_to_end(user)
        return hist

    def _learn(self, user: str, item: str, ts: float, hist: list[str]) -> None:
        self.index.add(item)
        obs = Obs(user, item, ts, tuple(hist), self.catalog.attrs.get(user))
        for source in self.sources:
            source.observe(obs)
        hist.append(item)
        if len(hist) > self.history_len:
            del hist[0]
        self.observed += 1
        self._pending += 1

    def _credit_served(self, user: str, seq: int, item: str) -> bool:
        with self._served_lock:
            served = self._served.pop(user, None)
        if served is None or served[0] >= seq:
            return False
        _version, segment, query, seen, use_llm = served
        self._credit(user, segment, query, seen, item, use_llm)
        self.credits["served"] += 1
        return True

    def _sampled(self, user: str, before: int) -> bool:
        # a deterministic per-user offset spreads the sampled events over users, so cold
        # users (few events) are sampled as often as warm ones
        return (before + zlib.crc32(user.encode("utf-8"))) % self.feedback_every == 0

    def _credit_feedback(self) -> None:
        """Credit the queued sampled events (just after a publish)."""
        while self._feedback:
            user, item, hist, before = self._feedback.popleft()
            q = Query(user=user, recent=list(hist), attrs=self.catalog.attrs.get(user))
            self._credit(user, segment_of(before), q, self.models.positions(hist), item,
                         self.use_llm)
            self.credits["feedback"] += 1

    def _credit(self, user: str, segment: str, q: Query, seen, item: str,
                use_llm: bool) -> None:
        """Score ``q`` with the latest snapshot; reward each source by the rank it gives
        ``item`` among the items not in ``seen`` (positions)."""
        raw = self.models.scored(q, None, use_llm).compact()
        unseen = np.ones(len(self.index), dtype=bool)
        unseen[seen] = False
        rewards = rewards_of(raw, self.index.pos.get(item), unseen, self.fusion.reward_depth)
        if rewards:
            self.fusion.credit(user, segment, rewards)

    # -------------------------------------------------------- publishing

    def changed(self) -> bool:
        """Whether ``publish`` would give anything new."""
        return bool(self._full or self._pending or self._vectors
                    or len(self.catalog) != self._tags.n or self.use_llm != self.models.use_llm)

    def publish(self) -> Models:
        """A new immutable snapshot from what changed since the last one (owner thread)."""
        t0 = time.perf_counter()
        while self._vectors:
            item, vector = self._vectors.popleft()
            self.semantic.set_vector(item, vector)
            self.index.add(item)
        tags = self._index_catalog()
        if self._full:
            self._index_everything()
        ctx = Freeze(self.index, len(self.index), tags, self._cat_pos)
        prev = [None] * len(self.sources) if self._full else self.models.scorers
        scorers = [s.freeze(ctx, p) for s, p in zip(self.sources, prev)]
        self.publishes += 1
        self.models = Models(scorers, self.index, ctx.n, self._cat_pos, self.fusion,
                             self.catalog, self.params, use_llm=self.use_llm,
                             served=self.served, version=self.publishes)
        self._pending = 0
        self._full = False
        self._credit_feedback()
        self.publish_ms = 1000 * (time.perf_counter() - t0)
        return self.models

    def _index_catalog(self):
        tags = self.tag_matrix.get()
        if tags is not self._tags:
            self._cat_pos = frozen(np.fromiter((self.index.add(item) for item in tags.ids),
                                               np.intp, tags.n))
            self._tags = tags
        return tags

    def _index_everything(self) -> None:
        known: set[str] = set()
        for source in self.sources:
            for items in source.item_sets():
                known.update(items)
        for hist in self.histories.values():
            known.update(hist)
        for item in sorted(known.difference(self.index.pos)):
            self.index.add(item)

    # ------------------------------------------------------------- stats

    def stats(self) -> dict:
        """Sizes and counters only: safe from any thread."""
        return {"fusion": self.fusion.stats(),
                "models": {s.name: s.stats() for s in self.sources},
                "users": len(self.histories), "observed": self.observed, "gseq": self.gseq,
                "base_gseq": self.base_gseq, "credits": dict(self.credits),
                "use_llm": self.use_llm,
                "snapshot": {**self.models.stats(), "stale_events": self._pending,
                             "publish_ms": round(self.publish_ms, 3)}}

    # ------------------------------------------------------- persistence

    def to_dict(self) -> dict:
        """Everything learned, with the fusion credit of every event it holds (so the
        queued sampled feedback is credited first: a restart skips those events)."""
        if self._feedback:
            self.publish()
        return {"format": MODEL_FORMAT, "gseq": self.gseq, "observed": self.observed,
                "histories": self.histories, "user_events": self.user_events,
                "sources": {s.name: s.to_dict() for s in self.sources},
                "fusion": self.fusion.to_dict()}

    def load_dict(self, obj: dict) -> None:
        if obj.get("format") != MODEL_FORMAT:
            raise ValueError(f"recommender model has format {obj.get('format')!r}, "
                             f"expected {MODEL_FORMAT}")
        for source in self.sources:
            if source.name in obj["sources"]:
                source.load_dict(obj["sources"][source.name])
        self.histories = OrderedDict((u, list(h)) for u, h in obj["histories"].items())
        self.user_events = OrderedDict(obj.get("user_events") or {})
        self.fusion.load_dict(obj["fusion"])
        self.gseq = self.base_gseq = obj["gseq"]
        self.observed = obj["observed"]
        self._full = True
        self.publish()

    def dump(self) -> bytes:
        """The models and fusion weights, packed (owner thread)."""
        return msgpack.packb(self.to_dict(), use_bin_type=True)

    def save(self, path: str | Path) -> Path:
        """Write the models and fusion weights atomically (owner thread)."""
        return write_atomic(path, self.dump())

    def load(self, path: str | Path) -> bool:
        """Load a trained model (``interest train``) or the last checkpoint; False when
        the file is absent. Call before replaying the journal: entries with a global
        position at or below the model's are skipped by ``observe``."""
        path = Path(path)
        if not path.exists():
            return False
        self.load_dict(msgpack.unpackb(read_checked(path), raw=False, strict_map_key=False))
        return True
