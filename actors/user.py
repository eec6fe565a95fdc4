"""The per-user interest actor: folds its user's journal and answers queries.

One actor per active user, hosted on the shared dispatcher. It is activated
on its first message from its snapshot plus the journal tail, applies its
committed entries one at a time in journal order, snapshots every
``snapshot_every`` entries and when it is passivated.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from actors.messages import Apply, ProfileDone, Query
from actors.runtime import PooledActor
from engine.errors import BadRequest, InterestError, NotFound
from engine.recommend.explain import explain_user
from engine.projections.state import FoldParams, InterestState
from engine.journal.store import Store
from engine.journal.writer import WriteJob, Writer

logger = logging.getLogger(__name__)


@dataclass
class UserEnv:
    """What every user actor shares."""

    store: Store
    writer: Writer
    params: FoldParams
    recommender: Any
    snapshot_every: int = 50
    max_k: int = 1000
    default_k: int = 10
    profiles: Any = None               # actors.profiles.ProfileScheduler, when a model is used
    stats: dict = field(default_factory=lambda: {"applied": 0, "snapshots": 0})


def load_state(store: Store, user: str, params: FoldParams) -> InterestState:
    """Snapshot plus journal tail; a bad snapshot is ignored and the journal replayed."""
    return _load(store, user, params)[0]


def _load(store: Store, user: str, params: FoldParams) -> tuple[InterestState, int]:
    """(state, seq of the stored snapshot or 0)."""
    state, snap_seq = InterestState(user=user), 0
    snap = store.snapshot(user)
    if snap is not None:
        try:
            state, snap_seq = InterestState.decode(snap[1]), snap[0]
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("snapshot of %r unusable (%s); replaying its journal", user, exc)
    for entry in store.read(user, after_seq=state.version):
        state.update(entry, params)
    return state, snap_seq


class UserActor(PooledActor):
    def __init__(self, user: str, env: UserEnv):
        super().__init__()
        self.user = user
        self.env = env
        self.state: InterestState | None = None
        self.snapshot_version = 0
        self.last_event_at = 0.0          # monotonic time of the last behaviour entry
        self.refresh_armed = False        # a debounced profile refresh is scheduled

    def _activate(self, message) -> None:
        """Load the state on the first message: snapshot + journal tail.

        A first ``Apply`` that starts at seq 1 belongs to a brand-new user:
        there is nothing to read, which keeps first contact cheap.
        """
        if isinstance(message, Apply) and message.entries and message.entries[0].seq == 1:
            self.state = InterestState(user=self.user)
            return
        self.state, self.snapshot_version = _load(self.env.store, self.user, self.env.params)

    def on_stop(self) -> None:
        """Runs on a dispatcher worker when passivated: write a final snapshot."""
        if self.state is not None and self.state.version > self.snapshot_version:
            self._snapshot()

    def on_receive(self, message):
        """Runs on a dispatcher worker, one message at a time."""
        if self.state is None:
            self._activate(message)
        if isinstance(message, Apply):
            self._apply(message.entries)
            if message.done is not None:
                message.done()
        elif isinstance(message, Query):
            self._answer(message)
        elif isinstance(message, ProfileDone):
            if self.env.profiles is not None:
                self.env.profiles.on_result(self, message.result)
        elif self.env.profiles is not None:
            self.env.profiles.on_message(self, message)
        return None

    # ------------------------------------------------------------ events

    def _apply(self, entries) -> None:
        state, env = self.state, self.env
        for entry in entries:
            if entry.seq <= state.version:
                continue
            env.recommender.feedback(state, entry)    # online fusion weights, before folding
            state.update(entry, env.params)
        env.stats["applied"] += len(entries)
        if state.version - self.snapshot_version >= env.snapshot_every:
            self._snapshot()
        if env.profiles is not None:
            env.profiles.on_applied(self)

    def _snapshot(self) -> None:
        self.env.writer.submit(WriteJob(snapshots=[(self.user, self.state.version,
                                                    self.state.encode())]))
        self.snapshot_version = self.state.version
        self.env.stats["snapshots"] += 1

    # ----------------------------------------------------------- queries

    def _answer(self, message: Query) -> None:
        try:
            if message.op == "interests" and message.request.get("fresh") is True \
                    and self.env.profiles is not None:
                self.env.profiles.fresh(self, message)
                return
            message.reply(answer(message.op, message.request, self.state, self.env))
        except InterestError as exc:
            message.reply(exc)
        except Exception as exc:  # noqa: BLE001 - a bad query must not kill the actor
            logger.exception("query %s for %r failed", message.op, self.user)
            message.reply(InterestError(f"{type(exc).__name__}: {exc}"))


class ColdUserActor(PooledActor):
    """Answers queries for users with no journal from an empty state, on a worker
    thread (never the gateway's), without activating a per-user actor for them."""

    def __init__(self, env: UserEnv):
        super().__init__()
        self.env = env

    def on_receive(self, message):
        """Runs on a dispatcher worker."""
        if isinstance(message, Query):
            try:
                state = InterestState(user=message.request["user"])
                message.reply(answer(message.op, message.request, state, self.env))
            except InterestError as exc:
                message.reply(exc)
            except Exception as exc:  # noqa: BLE001 - a bad query must not kill the actor
                logger.exception("cold query %s failed", message.op)
                message.reply(InterestError(f"{type(exc).__name__}: {exc}"))
        return None


def interests_reply(state: InterestState, env: UserEnv, stale: bool | None = None) -> dict:
    profile = state.profile
    llm = None
    if profile is not None:
        llm = {"model": profile["model"], "version": profile["version"], "at": profile["at"],
               "stale": state.since_profile > 0 if stale is None else stale}
    return {
        "user": state.user, "events": state.events, "version": state.version,
        "tags": state.tag_weights(env.params)[:50],
        "summary": profile["summary"] if profile else None,
        "llm": llm, "updated_at": state.last_ts,
    }


def _k(request: dict, env: UserEnv) -> int:
    k = request.get("k", env.default_k)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= env.max_k:
        raise BadRequest(f"field 'k' must be an integer from 1 to {env.max_k}")
    return k


def _candidates(request: dict) -> list[str] | None:
    candidates = request.get("candidates")
    if candidates is None:
        return None
    if not isinstance(candidates, list) or not all(isinstance(c, str) for c in candidates):
        raise BadRequest("field 'candidates' must be a list of item ids")
    return candidates


def answer(op: str, request: dict, state: InterestState, env: UserEnv) -> dict:
    """Answer a read op from a user's state (the state of an unknown user is empty)."""
    if op == "interests":
        if not isinstance(request.get("fresh", False), bool):
            raise BadRequest("field 'fresh' must be a boolean")
        return interests_reply(state, env)
    if op == "recommend":
        exclude_seen = request.get("exclude_seen", True)
        if not isinstance(exclude_seen, bool):
            raise BadRequest("field 'exclude_seen' must be a boolean")
        candidates = _candidates(request)
        unknown = []
        if candidates is not None:
            index = env.recommender.catalog.index
            unknown = [c for c in candidates if c not in index]
            candidates = [c for c in candidates if c in index]
        reply = env.recommender.recommend(state, k=_k(request, env), exclude_seen=exclude_seen,
                                          candidates=candidates)
        out = {"user": state.user, **reply}
        if unknown:
            out["unknown_candidates"] = unknown     # not in the catalog: not ranked
        return out
    if op == "explain":
        item = request.get("item")
        if item is not None and not isinstance(item, str):
            raise BadRequest("field 'item' must be a string")
        if item is not None and item not in env.recommender.catalog.index:
            raise NotFound(f"item {item!r} is not in the catalog")
        return explain_user(state, env, item)
    raise BadRequest(f"unknown op {op!r}")
