"""The read path: `interests`, `recommend` and `explain` from user state and published models.

A read never goes through the actors' mailboxes, so it never queues behind
`Apply` work: the user's state is a private copy taken under the live
actor's lock (``UserActor.read_state``), or loaded from the store (snapshot
plus journal tail) when the user is not live, or empty for a user with no
journal (the cold-start answer). Scoring uses the learner's latest
immutable snapshot (``models()``), which no other thread changes.

``interests`` and ``recommend`` run on the caller's thread (the gateway's:
no thread hop). ``explain`` replays the user's journal, so it runs on a
small pool of its own and answers through ``reply``.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from interest.actors.runtime import ActorDirectory
from interest.actors.user import interests_reply, load_state
from interest.engine.errors import InterestError, NotFound
from interest.engine.journal.store import Store
from interest.engine.projections.catalog import Catalog
from interest.engine.projections.state import FoldParams, InterestState
from interest.engine.recommend.explain import explain_user, title_of
from interest.engine.serving.requests import Explain, Interests, Recommend

logger = logging.getLogger(__name__)


@dataclass
class ExplainEnv:
    """What ``explain_user`` reads: the fold parameters, the journal, the models."""

    params: FoldParams
    store: Store
    recommender: Any


class Reader:
    def __init__(self, store: Store, users: ActorDirectory, params: FoldParams,
                 catalog: Catalog, models: Callable[[], Any], *, explain_threads: int = 1):
        self.store = store
        self.users = users
        self.params = params
        self.catalog = catalog
        self.models = models                  # () -> the latest published Models
        self._explain = ThreadPoolExecutor(max(1, explain_threads), thread_name_prefix="explain")

    def state_of(self, user: str) -> InterestState:
        """The user's current state: live copy, else stored, else empty (cold)."""
        actor = self.users.peek(user)
        if actor is not None:
            state = actor.read_state()
            if state is not None:
                return state
        if self.store.last_seq(user) > 0:
            return load_state(self.store, user, self.params)
        return InterestState(user=user)

    def interests(self, request: Interests) -> dict:
        return interests_reply(self.state_of(request.user), self.params)

    def recommend(self, request: Recommend) -> dict:
        candidates, unknown = request.candidates, []
        if candidates is not None:
            index = self.catalog.index
            unknown = [c for c in candidates if c not in index]
            candidates = [c for c in candidates if c in index]
        state = self.state_of(request.user)
        reply = self.models().recommend(state, k=request.k, exclude_seen=request.exclude_seen,
                                        candidates=candidates)
        reply["items"] = [{"item": row["item"], "title": title_of(self.catalog, row["item"]),
                           **row} for row in reply["items"]]
        out = {"user": request.user, **reply}
        if unknown:
            out["unknown_candidates"] = unknown     # not in the catalog: not ranked
        return out

    def explain(self, request: Explain, reply: Callable[[Any], None]) -> None:
        """Answer on the explain pool (it reads the user's whole journal)."""
        if request.item is not None and request.item not in self.catalog.index:
            raise NotFound(f"item {request.item!r} is not in the catalog")
        self._explain.submit(self._explain_now, request, reply)

    def _explain_now(self, request: Explain, reply) -> None:
        try:
            env = ExplainEnv(self.params, self.store, self.models())
            reply(explain_user(self.state_of(request.user), env, request.item))
        except InterestError as exc:
            reply(exc)
        except Exception as exc:  # noqa: BLE001 - a bad query must not kill the pool
            logger.exception("explain for %r failed", request.user)
            reply(InterestError(f"{type(exc).__name__}: {exc}"))

    def stop(self) -> None:
        self._explain.shutdown(wait=False, cancel_futures=True)
