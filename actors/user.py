"""The per-user interest actor: the user-state projection's unit of work.

One actor per active user, hosted on the shared dispatcher. It is activated
on its first message from its snapshot plus the journal tail, applies its
committed entries one at a time in journal order, snapshots every
``snapshot_every`` entries and when it is passivated.

Reads do not go through the mailbox: ``read_state()`` hands the reader a
private copy of the state taken under the actor's lock (held while a batch
is folded), so an `interests` or `recommend` never waits behind other
users' (or this user's queued) `Apply` work. Only `interests` with
``fresh: true`` comes here, because it waits for the model.

An entry the fold cannot apply is dead-lettered and skipped; every `Apply`
is acknowledged (``done``) whatever happens, so the projection never stalls.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from interest.actors.messages import Apply, ProfileDone, Query
from interest.actors.runtime import PooledActor
from interest.engine.errors import InterestError
from interest.engine.journal.events import DERIVED_TYPES
from interest.engine.journal.store import Store
from interest.engine.journal.writer import WriteJob, Writer
from interest.engine.projections.runner import DeadLetters
from interest.engine.projections.state import FoldParams, InterestState

logger = logging.getLogger(__name__)

PROJECTION = "users"


@dataclass
class UserEnv:
    """What every user actor shares."""

    store: Store
    writer: Writer
    params: FoldParams
    metrics: Any                       # engine.serving.metrics.Metrics or equivalent
    dead: DeadLetters
    snapshot_every: int = 50
    profiles: Any = None               # actors.profiles.ProfileScheduler, when a model is used


def load_state(store: Store, user: str, params: FoldParams) -> InterestState:
    """Snapshot plus journal tail; a bad snapshot is ignored and the journal replayed."""
    return _load(store, user, params)[0]


def _load(store: Store, user: str, params: FoldParams,
          next_seq: int | None = None) -> tuple[InterestState, int]:
    """(state, seq of the stored snapshot or 0). When the caller holds the entries from
    ``next_seq`` on and the snapshot ends just before them, the journal is not read."""
    state, snap_seq = InterestState(user=user), 0
    snap = store.snapshot(user)
    if snap is not None:
        try:
            state, snap_seq = InterestState.decode(snap[1]), snap[0]
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("snapshot of %r unusable (%s); replaying its journal", user, exc)
    if next_seq is None or state.version + 1 < next_seq:
        for entry in store.read(user, after_seq=state.version):
            state.update(entry, params)
    return state, snap_seq


class UserActor(PooledActor):
    def __init__(self, user: str, env: UserEnv):
        super().__init__()
        self.user = user
        self.env = env
        self.lock = threading.Lock()       # held while folding; readers copy under it
        self.state: InterestState | None = None
        self.snapshot_version = 0
        self.last_event_at = 0.0          # monotonic time of the last behaviour entry

    def read_state(self) -> InterestState | None:
        """Any thread: a private copy of the current state (None before activation)."""
        with self.lock:
            return None if self.state is None else self.state.copy()

    def _activate(self, message) -> None:
        """Load the state on the first message: snapshot + journal tail.

        A first ``Apply`` that starts at seq 1 belongs to a brand-new user:
        there is nothing to read, which keeps first contact cheap; one whose
        entries follow the snapshot right away needs no journal read either.
        """
        first = message.entries[0].seq if isinstance(message, Apply) and message.entries else None
        if first == 1:
            state, snap = InterestState(user=self.user), 0
        else:
            state, snap = _load(self.env.store, self.user, self.env.params, next_seq=first)
        with self.lock:
            self.state, self.snapshot_version = state, snap

    def on_stop(self) -> None:
        """Runs on a dispatcher worker when passivated: write a final snapshot."""
        if self.state is not None and self.state.version > self.snapshot_version:
            self._snapshot()

    def on_receive(self, message):
        """Runs on a dispatcher worker, one message at a time."""
        if isinstance(message, Apply):
            self._on_apply(message)
            return None
        if self.state is None:
            self._activate(message)
        if isinstance(message, Query):
            self._answer(message)
        elif isinstance(message, ProfileDone):
            if self.env.profiles is not None:
                self.env.profiles.on_result(self, message.result)
        elif self.env.profiles is not None:
            self.env.profiles.on_message(self, message)
        return None

    # ------------------------------------------------------------ events

    def _on_apply(self, message: Apply) -> None:
        try:
            if self.state is None:
                self._activate(message)
            self._apply(message.entries)
        except Exception as exc:  # noqa: BLE001 - activation failed: the batch is dead-lettered
            for entry in message.entries:
                self.env.dead.record(entry, PROJECTION, exc)
        finally:
            if message.done is not None:
                message.done()

    def _apply(self, entries) -> None:
        env = self.env
        behaviour = False
        with self.lock:
            state = self.state
            for entry in entries:
                if entry.seq <= state.version:
                    continue
                try:
                    state.update(entry, env.params)
                except Exception as exc:  # noqa: BLE001 - one bad entry never stalls the user
                    state.version = entry.seq          # skipped, on record
                    env.dead.record(entry, PROJECTION, exc)
                    continue
                behaviour = behaviour or entry.event["type"] not in DERIVED_TYPES
        env.metrics.add("applied", len(entries))
        if behaviour:
            self.last_event_at = time.monotonic()
        if state.version - self.snapshot_version >= env.snapshot_every:
            self._snapshot()

    def _snapshot(self) -> None:
        with self.lock:
            data, version = self.state.encode(), self.state.version
        self.env.writer.submit(WriteJob(snapshots=[(self.user, version, data)]))
        self.snapshot_version = version
        self.env.metrics.add("snapshots")

    # ----------------------------------------------------------- queries

    def _answer(self, message: Query) -> None:
        """`interests` with ``fresh: true`` (the only query that waits for the model)."""
        try:
            if self.env.profiles is None:
                message.reply(interests_reply(self.state, self.env.params))
                return
            self.env.profiles.fresh(self, message)
        except InterestError as exc:
            message.reply(exc)
        except Exception as exc:  # noqa: BLE001 - a bad query must not kill the actor
            logger.exception("query %s for %r failed", message.op, self.user)
            message.reply(InterestError(f"{type(exc).__name__}: {exc}"))


def interests_reply(state: InterestState, params: FoldParams, stale: bool | None = None,
                    reason: str | None = None) -> dict:
    """The `interests` reply of PROTOCOL.md from a user's state. ``llm`` is always an
    object: ``stale`` is true when the summary is missing or older than the user's last
    event, and ``reason`` (actors.profiles.llm_reason) says why (null when current)."""
    profile = state.profile or {}
    if stale is None:
        stale = not profile or state.since_profile > 0
    llm = {"model": profile.get("model"), "version": profile.get("version"),
           "at": profile.get("at"), "stale": bool(stale), "reason": reason if stale else None}
    return {
        "user": state.user, "events": state.events, "version": state.version,
        "tags": state.tag_weights(params)[:50],
        "summary": profile.get("summary"),
        "llm": llm, "updated_at": state.last_ts,
    }
