"""``Recommender``: today's API as a ``Learner`` plus its latest ``Models`` snapshot.

Threading: any thread may call any method. ``observe``, ``stats``,
``to_dict``/``load_dict``/``save``/``load`` and the lazy ``publish`` inside
``snapshot()`` run under one lock (the learner's owner is "whoever holds
it"); scoring (``recommend``/``explain``) runs OUTSIDE that lock on the
immutable snapshot, so readers never wait for learning, only for a publish
when something changed since the last one. ``set_item_vector`` queues and
returns at once.

A service with a dedicated learner thread instead drives
``Recommender.learner`` on that thread only (``observe``, ``publish`` on its
own schedule, ``changed``, ``save``) and gives readers ``learner.models``
(engine.recommend.learner has the rules). Then, from other threads, use only
``set_item_vector``, ``stats`` and the read-only properties of this facade:
its ``observe``/``snapshot``/``recommend``/``explain``/``save`` would learn or
publish off the learner thread. ``load`` belongs before that thread starts.

The fusion's learning is part of ``observe`` (engine.recommend.learner), so
nothing on the user-actor or read path scores for it.
"""

from __future__ import annotations

import threading
from pathlib import Path

from interest.engine.recommend.fusion import PRIORS
from interest.engine.recommend.learner import MODEL_FORMAT, Learner, write_atomic  # noqa: F401
from interest.engine.recommend.models import Models

MODEL_FILE = Path("models") / "recommender.msgpack"


def model_path(data_dir: str | Path) -> Path:
    """Where ``interest train`` saves, and the service loads, the trained model."""
    return Path(data_dir) / MODEL_FILE


class Recommender:
    def __init__(self, catalog, params, popularity_half_life_s: float = 604800.0, **options):
        """``options``: those of ``Learner`` (use_llm, history, weights, adapt,
        feedback_every, max_histories, max_stale, fusion_step, fusion_evidence, ease,
        ease_items, ease_l2, ease_first, ease_every)."""
        self.learner = Learner(catalog, params, popularity_half_life_s, **options)
        self._lock = threading.RLock()
        #: evaluation hook: {name: {"use_llm": bool}}; each recommend also ranks
        #: under these settings and leaves the items in ``shadow_results[user][name]``
        self.shadow: dict[str, dict] = {}
        self.shadow_results: dict[str, dict] = {}

    def __getattr__(self, name):
        # the learner's models and counters (sequential, collaborative, histories,
        # history_len, names, sources, observed, credits, ...): read them only where
        # no observe runs at the same time
        if name == "learner":
            raise AttributeError(name)
        return getattr(self.learner, name)

    @classmethod
    def from_config(cls, catalog, params, config: dict) -> "Recommender":
        """The recommender the service runs, with the ``[recommend]`` settings."""
        rec = config["recommend"]
        return cls(catalog, params, rec["popularity_half_life_s"],
                   feedback_every=rec["feedback_every"], max_histories=rec["max_histories"],
                   adapt=rec["fusion_learn"], weights=PRIORS[rec["fusion_prior"]],
                   fusion_step=rec["fusion_step"],
                   fusion_evidence=rec["fusion_evidence"],
                   ease_items=rec["ease_items"], ease_l2=rec["ease_l2"],
                   ease_every=rec["ease_every"], ease=rec["ease"])

    # ------------------------------------------------------------ hooks

    @property
    def catalog(self):
        return self.learner.catalog

    @property
    def fusion(self):
        return self.learner.fusion

    @property
    def gseq(self) -> int:
        return self.learner.gseq

    @property
    def base_gseq(self) -> int:
        return self.learner.base_gseq

    @property
    def use_llm(self) -> bool:
        return self.learner.use_llm

    @use_llm.setter
    def use_llm(self, value: bool) -> None:
        self.learner.use_llm = value

    @property
    def popularity(self):
        return self.learner.popularity

    @property
    def item_vectors(self) -> dict:
        """item -> unit float32 vector (read-only view; fill with ``set_item_vector``)."""
        return self.learner.item_vectors

    def set_item_vector(self, item: str, vector) -> None:
        """Give an item an embedding (from the inference work); any thread."""
        self.learner.set_item_vector(item, vector)

    # ---------------------------------------------------------- learning

    def observe(self, entry) -> None:
        """Learn from one committed user entry (in commit order)."""
        with self._lock:
            self.learner.observe(entry)

    def snapshot(self) -> Models:
        """The current immutable models, published first if anything changed."""
        with self._lock:
            if self.learner.changed():
                self.learner.publish()
            return self.learner.models

    # ----------------------------------------------------------- scoring

    def recommend(self, state, *, k: int = 10, exclude_seen: bool = True,
                  candidates: list[str] | None = None) -> dict:
        models = self.snapshot()
        use_llm = self.learner.use_llm
        reply = models.recommend(state, k=k, exclude_seen=exclude_seen, candidates=candidates,
                                 use_llm=use_llm)
        if self.shadow and state is not None:
            self.shadow_results[state.user] = {
                name: models.recommend(state, k=k, exclude_seen=exclude_seen,
                                       candidates=candidates,
                                       use_llm=opts.get("use_llm", use_llm))["items"]
                for name, opts in self.shadow.items()}
        return reply

    def explain(self, state, item: str) -> dict:
        return self.snapshot().explain(state, item, use_llm=self.learner.use_llm)

    # ------------------------------------------------------------- stats

    def stats(self) -> dict:
        with self._lock:
            return self.learner.stats()

    # ------------------------------------------------------- persistence

    def to_dict(self) -> dict:
        with self._lock:
            return self.learner.to_dict()

    def load_dict(self, obj: dict) -> None:
        with self._lock:
            self.learner.load_dict(obj)

    def save(self, path: str | Path) -> Path:
        """Write the models and fusion weights atomically (safe while others learn:
        they are packed under the lock)."""
        with self._lock:
            data = self.learner.dump()
        return write_atomic(path, data)

    def load(self, path: str | Path) -> bool:
        """Load a trained model (``interest train``) or the service's last checkpoint;
        False when the file is absent. Call before the service replays its journal:
        entries with a global position at or below the model's are skipped by ``observe``."""
        with self._lock:
            return self.learner.load(path)
