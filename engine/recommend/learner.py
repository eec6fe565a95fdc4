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
* ``set_item_vector(item, vector)`` may be called from any thread: it queues
  the vector; the owner applies the queue at its next ``publish``.
* The shared ``Fusion`` object has its own small lock: the learner credits
  it, snapshots read the current weights.

Learning the fusion weights (engine.recommend.fusion), on the owner thread,
from the journal alone (what readers were served plays no part), so that
replaying the same journal gives the same weights:

* every ``feedback_every``-th positive event of a user (a per-user offset
  spreads them) is one example: the query is the learner's own history of
  that user before the event, its segment the user's event count, its
  context the gap between its last two events. It is scored at once with the
  snapshot published at the last mark (every ``max_stale`` learned events, a
  count, not a clock), which has not learned the event: a snapshot that had
  would flatter the sources that learn fastest (a transition seen once tops
  the sequential list). The example is every source's normalised scores over
  the items some source scored (not in the user's history) and the item the
  user acted on (``example_of``); the fusion ranks it under each of its
  candidate weightings and keeps the evidence (engine.recommend.fusion).

Replaying the journal from the start gives the same weights. A restart from a
checkpoint taken between two marks scores the examples until the next mark
with the snapshot it loaded (the learner process checkpoints on a clock).

The EASE source is refit on the owner thread too, at event counts (first at
``ease_first``, then every ``ease_every``), from the learner's histories.
"""

from __future__ import annotations

import time
import zlib
from collections import OrderedDict, deque
from pathlib import Path

import msgpack
import numpy as np

from interest.engine.journal.events import FORGET_TYPE
from interest.engine.journal.files import read_checked, write_checked
from interest.engine.recommend.fusion import Fusion, context_of, key_of, segment_of
from interest.engine.recommend.models import Models
from interest.engine.recommend.query import NOT_POSITIVE, Query
from interest.engine.recommend.scorers import Freeze, ItemIndex, frozen
from interest.engine.recommend.sources import (Collaborative, Content, Demographic, Ease, Obs,
                                               PopularitySource, Semantic, Sequential, TagMatrix)

MODEL_FORMAT = 2


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write a model file behind a checksum, fsynced, renamed into place (a checkpoint is
    rebuildable: a damaged one is refused at load, and the journal rebuilds the models)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_checked(path, data)
    return path


def example_of(scored, target: int | None, seen, sources: list[str]):
    """A fusion example (engine.recommend.fusion ``credit``): ``(features, row)`` with
    ``features`` an items x sources array of each source's score divided by its maximum
    for the query, over every item some source scored except ``seen`` (positions) and
    the target, then the target itself (the last row). None when the target is unknown
    or no source scores it (no candidate could rank it, so nothing to compare)."""
    if target is None:
        return None
    vectors = [(sources.index(name), vec, float(vec.max())) for name, vec
               in zip(scored.names, scored.vectors) if vec is not None and name in sources]
    vectors = [(j, vec, top) for j, vec, top in vectors if top > 0]
    if not any(vec[target] > 0 for _, vec, _ in vectors):
        return None
    pool = np.zeros(len(vectors[0][1]), dtype=bool)
    for _, vec, _ in vectors:
        pool |= vec > 0
    pool[seen] = False
    pool[target] = False
    rows = np.append(np.flatnonzero(pool), target)
    features = np.zeros((len(rows), len(sources)), dtype=np.float64)
    for j, vec, top in vectors:
        features[:, j] = vec[rows] / top
    return features, len(rows) - 1


class Learner:
    """The sources, the fusion weights and the per-user histories, learned from committed
    entries on one owner thread, published as immutable ``Models``.

    ``max_stale``: every this many learned events the queued fusion examples are
    credited (``observe`` publishes first). ``fusion_step``/``fusion_evidence``: the
    fusion's candidate tilt and the evidence a move needs (engine.recommend.fusion).
    ``ease_first``/``ease_every``: event counts at
    which EASE is refit; ``ease=False`` never fits it (the default config's choice).
    """

    def __init__(self, catalog, params, popularity_half_life_s: float = 604800.0, *,
                 use_llm: bool = True, history: int = 100, weights: dict | None = None,
                 adapt: bool = True, feedback_every: int = 4, max_histories: int = 200_000,
                 max_stale: int = 256, fusion_step: float = 2.0,
                 fusion_evidence: float = 2.5,
                 ease_items: int = 2000, ease_l2: float = 200.0, ease_first: int = 1000,
                 ease_every: int = 20_000, ease: bool = True):
        self.catalog = catalog
        self.params = params
        self.use_llm = use_llm
        self.history_len = history
        self.feedback_every = max(1, feedback_every)
        self.max_stale = max(1, max_stale)
        self.tag_matrix = TagMatrix(catalog)
        self.sequential = Sequential()
        self.collaborative = Collaborative()
        self.ease = Ease(ease_items, ease_l2)
        self.ease_first, self.ease_every = max(1, ease_first), max(1, ease_every)
        self.ease_on = ease        # off: never fit, so the source scores nothing
        self.content = Content()
        self.semantic = Semantic()
        self.popularity_source = PopularitySource(popularity_half_life_s)
        self.demographic = Demographic(popularity_half_life_s * 4)
        self.sources = [self.sequential, self.collaborative, self.ease, self.content,
                        self.semantic, self.popularity_source, self.demographic]
        self.names = [s.name for s in self.sources]
        self.fusion = Fusion(self.names, weights, adapt=adapt, step=fusion_step,
                             evidence=fusion_evidence)
        #: user -> recent positive items, LRU-bounded so memory follows active users;
        #: an evicted user's co-occurrence window simply starts again
        self.histories: OrderedDict[str, list[str]] = OrderedDict()
        #: user -> behaviour events observed (the fusion segment of feedback), same bound
        self.user_events: OrderedDict[str, int] = OrderedDict()
        #: user -> the gap between its last two positive events (the fusion context)
        self.user_times: OrderedDict[str, list] = OrderedDict()
        self.max_histories = max_histories
        self.gseq = 0              # last global position observed
        self.base_gseq = 0         # positions already inside a loaded model
        self.observed = 0
        self.credits = {"feedback": 0, "examples": 0}
        self._vectors: deque = deque()               # (item, vector), from any thread
        self.index = ItemIndex()
        self._tags = None
        self._cat_pos = np.zeros(0, dtype=np.intp)
        self._pending = 0          # events learned since the last publish
        self._full = True          # the next publish rebuilds everything
        self.publishes = 0
        self.publish_ms = 0.0
        self.models: Models | None = None
        #: the snapshot of the last mark, which fusion examples are scored with
        self.marked = self.publish()

    # ------------------------------------------------------- any thread

    def set_item_vector(self, item: str, vector) -> None:
        """Give an item an embedding; any thread (applied at the next publish)."""
        self._vectors.append((item, vector))

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
        if event["type"] == FORGET_TYPE:
            self.forget(user)
            return
        before = self._count_event(user)
        item = event.get("item")
        if item is None or event["type"] in NOT_POSITIVE:
            return
        self.gseq = max(self.gseq, entry.gseq or 0)
        hist = self._history(user)
        ts = float(event["ts"])
        gap = self._gap(user, ts)
        if self._sampled(user, before) and hist:
            self._credit_event(user, item, hist, before, gap)
        self._learn(user, item, ts, hist)
        if self.ease_on and (self.observed == self.ease_first or (
                self.observed > self.ease_first
                and (self.observed - self.ease_first) % self.ease_every == 0)):
            self.ease.refit(self.histories.values())
        if self.observed % self.max_stale == 0:
            self.marked = self.publish()

    def forget(self, user: str) -> None:
        """The user's `forget` tombstone (owner thread): drop what is kept per user (its
        history, event count and timing). Aggregate counts learned from its events stay
        until the models are rebuilt (``interest train``)."""
        for table in (self.histories, self.user_events, self.user_times):
            table.pop(user, None)

    def _count_event(self, user: str) -> int:
        n = self.user_events.get(user, 0)
        self.user_events[user] = n + 1
        self.user_events.move_to_end(user)
        if len(self.user_events) > self.max_histories:
            self.user_events.popitem(last=False)
        return n

    def _gap(self, user: str, ts: float) -> float | None:
        """The gap between the user's last two positive events before this one; records it."""
        times = self.user_times.get(user)
        gap = times[1] - times[0] if times and times[0] is not None else None
        self.user_times[user] = [times[1] if times else None, ts]
        self.user_times.move_to_end(user)
        if len(self.user_times) > self.max_histories:
            self.user_times.popitem(last=False)
        return gap

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

    def _sampled(self, user: str, before: int) -> bool:
        # a deterministic per-user offset spreads the sampled events over users, so cold
        # users (few events) are sampled as often as warm ones
        return (before + zlib.crc32(user.encode("utf-8"))) % self.feedback_every == 0

    def _credit_event(self, user: str, item: str, hist: list, before: int, gap) -> None:
        """One fusion example, scored with the snapshot of the last mark."""
        models = self.marked
        q = Query(user=user, recent=list(hist), attrs=self.catalog.attrs.get(user),
                  context=context_of(gap))
        key = key_of(segment_of(before), q.context)
        scored = models.scored(q, None, self.use_llm)
        example = example_of(scored, models.position(item), models.positions(hist),
                             self.fusion.sources)
        self.credits["feedback"] += 1
        if example is not None:
            self.fusion.credit(user, key, example)
            self.credits["examples"] += 1

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
                             version=self.publishes)
        self._pending = 0
        self._full = False
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
        """Everything learned."""
        return {"format": MODEL_FORMAT, "gseq": self.gseq, "observed": self.observed,
                "histories": self.histories, "user_events": self.user_events,
                "user_times": self.user_times,
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
        self.user_times = OrderedDict((u, list(t)) for u, t in obj["user_times"].items())
        self.fusion.load_dict(obj["fusion"])
        self.gseq = self.base_gseq = obj["gseq"]
        self.observed = obj["observed"]
        self._full = True
        self.marked = self.publish()

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
