"""When and how a user's model profile is refreshed, and where the result goes.

* Debounce: the profile projection (actors.projections) calls
  ``arm(user, ts)`` for every behaviour event of a user with at least
  ``refresh_min_events`` events since the last profile; after
  ``refresh_quiet_s`` without another one, the user's actor confirms the
  refresh is due and the user joins the scheduler's ready set.
* Priority and pacing: the ready set is a heap ordered by the stream time
  (event ``ts``) of each user's newest event, most recent first, and at most
  ``max_in_flight`` refreshes are handed to the inference actor at once. So
  the model always works for the users who were active last (after a
  MovieLens replay: the users of the last hour first), the inference queue
  stays short (online requests and catalog embeddings are not stuck behind
  hundreds of refreshes, nothing expires while queued), a user queued again
  moves with their newest event instead of keeping an old place, and the
  request is built when it runs, from the user's latest state. Paced
  refreshes go at ``interactive``: at ``background`` they would wait behind
  the catalog's embedding batches while holding the scheduler's slots.
* ``interests`` with ``fresh: true``: an ``online`` refresh, waited for up to
  the request's ``deadline_ms``; past it the answer comes from state with
  ``llm.stale`` set and ``llm.reason`` saying why (``llm_reason``).
* A result is journaled as a ``profile`` event (model id, input hash,
  embedding of the summary) and folded like any event, so replay reproduces
  it without calling the model. A refresh that failed is tried again on the
  user's next event; the profile projection's durable position keeps every
  refresh that has not produced a profile across restarts.
* Catalog items are embedded at ``background`` priority; the vectors go to
  the recommender's content source (the inference cache keeps them across
  restarts).
* ``forget(user, commit)``: a user's erasure. A model answer for work
  submitted before it is discarded, never journaled after the tombstone:
  each user has an erasure count, checked under one lock when the answer is
  journaled, and ``commit`` (the tombstone's submission) runs under it.

The timer thread only tells actors; everything touching a user's state runs
on that user's actor.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from interest.engine.errors import DeadlineExceeded, InterestError, Unavailable
from interest.engine.journal.events import PROFILE_TYPE, ProfileEvent

logger = logging.getLogger(__name__)


def item_text(item: str, record: dict) -> str:
    """What an item's embedding is computed from: title, tags and text."""
    tags = ", ".join(record.get("tags") or ())
    return f"{record.get('title') or item}. {tags}. {record.get('text') or ''}".strip()


@dataclass(frozen=True, slots=True)
class RefreshDue:
    """Timer message to a user actor: check whether a debounced refresh is due."""


@dataclass(frozen=True, slots=True)
class RefreshNow:
    """Scheduler message to a user actor: the model has room, submit the refresh."""


@dataclass(frozen=True, slots=True)
class FreshTimeout:
    """Timer entry: a fresh `interests` ran out of time. Answered on the timer thread
    from a copy of the actor's state, so the deadline holds even while the user's
    actor waits behind other work."""

    actor: Any
    reply: Any
    deadline_ms: float = 0.0


class ProfileScheduler:
    def __init__(self, inference, catalog, config: dict, *, tell_user: Callable,
                 append_events: Callable, recommender=None):
        icfg = config["inference"]
        self.inference = inference
        self.catalog = catalog
        self.tell_user = tell_user              # tell_user(user, message)
        self.append_events = append_events      # append_events([Event], done)
        self.recommender = recommender
        self.min_events = int(icfg["refresh_min_events"])
        self.quiet_s = float(icfg["refresh_quiet_s"])
        self.online_deadline_ms = float(icfg["online_deadline_ms"])
        self.background_deadline_s = float(icfg["background_deadline_s"])
        self.embed_batch = int(icfg["embed_batch"])
        self.max_in_flight = int(icfg["max_in_flight"])
        self.counters = {"refresh_requests": 0, "fresh_requests": 0, "results": 0,
                         "errors": 0, "stale_answers": 0, "embedded_items": 0,
                         "skipped_not_due": 0}
        self._timers: list = []
        self._erasures: dict[str, int] = {}     # user -> forgets so far (see ``forget``)
        self._erasure_lock = threading.Lock()
        self.counters.update(forgets=0, discarded_after_forget=0)
        self._cond = threading.Condition()
        self._stop = False
        # refresh bookkeeping, under _cond: a user is in at most one of
        # _waiting (debounce timer set), _ready (heap) and _running (at the model)
        self._newest: dict[str, float] = {}     # user -> stream time of the newest event
        self._due_seq: dict[str, int] = {}      # user -> journal seq the projection armed at
        self._waiting: set[str] = set()
        self._ready: dict[str, tuple] = {}      # user -> its live heap key
        self._heap: list = []                   # (-newest ts, seq, user), stale keys skipped
        self._order: list = []                  # the live keys, sorted: a user's queue position
        self._running: set[str] = set()
        self._again: set[str] = set()           # new events while running
        self._failed: dict[str, str] = {}       # user -> why the last refresh failed
        self._seq = itertools.count()
        self._thread = threading.Thread(target=self._timer_loop, name="profile-timer",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ timers

    def _at(self, due: float, user: str, message: Any) -> None:
        with self._cond:
            heapq.heappush(self._timers, (due, next(self._seq), user, message))
            self._cond.notify()

    def _timer_loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and (not self._timers
                                          or self._timers[0][0] > time.monotonic()):
                    timeout = self._timers[0][0] - time.monotonic() if self._timers else None
                    self._cond.wait(timeout)
                if self._stop:
                    return
                _, _, user, message = heapq.heappop(self._timers)
            if isinstance(message, FreshTimeout):
                self._time_out(message)
            else:
                self._tell(user, message)

    def _tell(self, user: str, message: Any) -> None:
        try:
            self.tell_user(user, message)
        except Exception:  # noqa: BLE001
            logger.exception("profile scheduler could not reach %r", user)
            if isinstance(message, RefreshNow):
                self._finished(user, None, pump=False)

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(5)

    # ------------------------------------------- the ready set and pacing

    def arm(self, user: str, ts: float | None = None, seq: int = 0) -> None:
        """Profile projection thread: ``user`` has enough new events (the newest at stream
        time ``ts``, the ``seq``-th entry of the user's journal); the refresh is checked
        after the quiet time. Called for every such event: a user already waiting or
        queued only has their place updated."""
        with self._cond:
            self._due_seq[user] = max(self._due_seq.get(user, 0), int(seq))
            if ts is not None:
                ts = float(ts)
                self._newest[user] = max(self._newest.get(user, ts), ts)
            if user in self._running:
                self._again.add(user)
            elif user in self._ready:
                self._queue(user)
            elif user not in self._waiting:
                self._waiting.add(user)
                heapq.heappush(self._timers, (time.monotonic() + self.quiet_s, next(self._seq),
                                              user, RefreshDue()))
                self._cond.notify()

    def _queue(self, user: str) -> None:
        """(lock held) Put ``user`` in the ready heap under their newest stream time."""
        key = (-self._newest.get(user, float("-inf")), next(self._seq), user)
        old = self._ready.get(user)
        if old is not None:
            self._unorder(old)
        self._ready[user] = key
        bisect.insort(self._order, key)
        heapq.heappush(self._heap, key)
        if len(self._heap) > 4 * len(self._ready) + 64:     # mostly superseded keys
            self._heap = list(self._ready.values())
            heapq.heapify(self._heap)

    def _unorder(self, key: tuple) -> None:
        """(lock held) Drop ``key`` from the sorted live keys."""
        del self._order[bisect.bisect_left(self._order, key)]

    def _make_ready(self, user: str) -> None:
        with self._cond:
            self._waiting.discard(user)
            if user not in self._running:
                self._queue(user)
        self._pump()

    def _settle(self, user: str) -> None:
        """Nothing to do for ``user`` (not due after all)."""
        with self._cond:
            self._waiting.discard(user)
            self._forget(user)

    def _forget(self, user: str) -> None:
        """(lock held) Drop what is kept for a user no longer tracked."""
        if user not in self._ready and user not in self._running and user not in self._waiting:
            self._newest.pop(user, None)
            self._due_seq.pop(user, None)

    def _pump(self) -> None:
        """Hand the best ready users to their actors while the model has room."""
        start = []
        with self._cond:
            while not self._stop and len(self._running) < self.max_in_flight and self._heap:
                key = heapq.heappop(self._heap)
                user = key[2]
                if self._ready.get(user) != key:
                    continue                       # superseded by a newer key
                del self._ready[user]
                self._unorder(key)
                self._running.add(user)
                start.append(user)
        for user in start:
            self._tell(user, RefreshNow())

    def _finished(self, user: str, result: Any, pump: bool = True) -> None:
        """Any thread: the model is done with ``user``'s refresh (or it never started)."""
        with self._cond:
            self._running.discard(user)
            if isinstance(result, Exception):
                self._failed[user] = _why(result)
            elif result is not None:
                self._failed.pop(user, None)
            if user in self._again:
                self._again.discard(user)
                self._waiting.add(user)
                heapq.heappush(self._timers, (time.monotonic() + self.quiet_s, next(self._seq),
                                              user, RefreshDue()))
                self._cond.notify()
            else:
                self._forget(user)
        if pump:
            self._pump()

    def forget(self, user: str, commit: Callable[[], None]) -> None:
        """Any thread: ``user`` is being erased; ``commit()`` submits the tombstone. No
        model answer for earlier work is journaled after it (see ``on_result``)."""
        with self._erasure_lock:
            self._erasures[user] = self._erasures.get(user, 0) + 1
            self.counters["forgets"] += 1
            commit()

    # ---------------------------------------------- on the user's actor

    def on_message(self, actor, message) -> bool:
        """Handle scheduler messages; False if ``message`` is not one of ours."""
        if isinstance(message, RefreshDue):
            with self._cond:
                due_seq = self._due_seq.get(actor.user, 0)
            if actor.state.version < due_seq:
                # the user's actor has not folded the events the projection counted yet
                self._at(time.monotonic() + self.quiet_s, actor.user, RefreshDue())
                return True
            if actor.state.since_profile < self.min_events:
                self.counters["skipped_not_due"] += 1
                self._settle(actor.user)
                return True
            quiet_until = actor.last_event_at + self.quiet_s
            if time.monotonic() < quiet_until:
                self._at(quiet_until, actor.user, RefreshDue())
                return True
            self._make_ready(actor.user)
            return True
        if isinstance(message, RefreshNow):
            if actor.state.since_profile < self.min_events:
                self.counters["skipped_not_due"] += 1
                self._finished(actor.user, None)
                return True
            user = actor.user
            self._submit(actor, "interactive",
                         time.monotonic() + self.background_deadline_s,
                         on_result=lambda result: self._finished(user, result))
            return True
        if isinstance(message, _AnswerFresh):
            if not message.reply.sent:
                message.reply(self._interests(actor, stale=False))
            return True
        return False

    def _time_out(self, message: FreshTimeout) -> None:
        """Timer thread: answer a fresh `interests` whose deadline is near, stale."""
        from interest.actors.user import interests_reply  # noqa: PLC0415
        if message.reply.sent:
            return
        try:
            state = message.actor.read_state()
            reason = f"deadline exceeded after {message.deadline_ms:.0f} ms"
            busy = self._model_busy()
            message.reply(interests_reply(state, message.actor.env.params, stale=True,
                                          reason=f"{reason} ({busy})" if busy else reason))
            self.counters["stale_answers"] += 1
        except Exception as exc:  # noqa: BLE001 - the client must get an answer
            logger.exception("stale answer for %r failed", message.actor.user)
            message.reply(InterestError(f"{type(exc).__name__}: {exc}"))

    def fresh(self, actor, query) -> None:
        """`interests` with fresh: true: an online refresh waited for up to the deadline."""
        state = actor.state
        if state.profile is not None and state.since_profile == 0:
            query.reply(self._interests(actor, stale=False))
            return
        deadline_ms = query.request.deadline_ms or self.online_deadline_ms
        if not self.inference.available:
            query.reply(self._interests(actor, stale=True, reason=self.unavailable_reason()))
            return
        if not state.events:
            query.reply(self._interests(actor, stale=True, reason="no events yet"))
            return
        self.counters["fresh_requests"] += 1
        due = time.monotonic() + deadline_ms / 1000 * 0.9
        self._submit(actor, "online", due, waiting=query.reply)
        self._at(due, actor.user, FreshTimeout(actor, query.reply, deadline_ms))

    def _submit(self, actor, priority: str, deadline: float, waiting=None,
                on_result: Callable | None = None) -> None:
        from interest.actors.inference import ProfileRequest  # noqa: PLC0415 - loads llama.cpp
        from interest.actors.messages import ProfileDone  # noqa: PLC0415
        state, user = actor.state, actor.user
        erasures = self._erasures.get(user, 0)
        items = tuple({"item": item, "title": self.catalog.title_of(item),
                       "tags": self.catalog.tags_of(item), "type": etype}
                      for item, etype, _ts, _w in state.recent[-10:])
        queries = tuple(q for q, _ in state.queries[-3:])
        self.counters["refresh_requests"] += 1

        def done(result):
            if on_result is not None:
                on_result(result)
            self.tell_user(user, ProfileDone((result, waiting, erasures)))
        self.inference.submit_profile(ProfileRequest(
            user=user, items=items, queries=queries,
            vocabulary=tuple(self.catalog.vocabulary()), priority=priority,
            deadline=deadline, on_done=done))

    def on_result(self, actor, payload) -> None:
        """The inference answer, on the user's actor: journal it, then fold it."""
        result, waiting, erasures = payload
        if isinstance(result, Exception):
            self.counters["errors"] += 1
            if not isinstance(result, InterestError):
                logger.warning("profile refresh for %r failed: %s", actor.user, result)
            if waiting is not None and not waiting.sent:
                waiting(self._interests(actor, stale=True,
                                        reason=f"refresh failed: {_why(result)}"))
            return
        self.counters["results"] += 1
        event = ProfileEvent(
            id=f"profile-{actor.user}-{uuid.uuid4().hex}", type=PROFILE_TYPE,
            ts=actor.state.last_ts or time.time(), user=actor.user, tags=tuple(result.tags),
            summary=result.summary, model=result.model, input_hash=result.input_hash,
            embedding=tuple(result.embedding) if result.embedding else None)

        def applied(_results):
            if waiting is not None:
                self.tell_user(actor.user, _AnswerFresh(waiting))
        with self._erasure_lock:          # the user was not erased since the request: journal
            if self._erasures.get(actor.user, 0) == erasures:
                self.append_events([event], applied)
                return
        self.counters["discarded_after_forget"] += 1
        if waiting is not None and not waiting.sent:
            waiting(self._interests(actor, stale=True, reason="the user's data was erased"))

    def _interests(self, actor, stale: bool, reason: str | None = None) -> dict:
        from interest.actors.user import interests_reply  # noqa: PLC0415
        if stale and reason is None:
            reason = self.reason(actor.state)
        return interests_reply(actor.state, actor.env.params, stale=stale, reason=reason)

    # --------------------------------------------------------- reasons

    def unavailable_reason(self) -> str:
        why = getattr(self.inference, "reason", "") or "no model loaded"
        return f"model unavailable: {why}"

    def _model_busy(self) -> str:
        depth = getattr(self.inference, "queue_depth", None)
        queued = depth() if callable(depth) else 0
        return f"model busy: {queued} requests queued" if queued else ""

    def reason(self, state) -> str | None:
        """Why ``state``'s model summary is missing or stale (None when it is current)."""
        user, since = state.user, state.since_profile
        if state.profile is not None and since == 0:
            return None
        if not self.inference.available:
            return self.unavailable_reason()
        if not state.events:
            return "no events yet"
        with self._cond:
            if user in self._running:
                return "model busy: refresh running"
            if user in self._ready:
                key = self._ready[user]
                ahead = bisect.bisect_left(self._order, key)     # O(log n): a read path
                return (f"model busy: queued at position {ahead + 1} of {len(self._ready)} "
                        f"({len(self._running)} running)")
            if user in self._waiting:
                return f"refresh scheduled after {self.quiet_s:g} s without new events"
            failed = self._failed.get(user)
        if failed is not None:
            return f"last refresh failed ({failed}); retried on the next event"
        if since < self.min_events:
            if state.profile is None:
                return f"not enough events yet ({since} of {self.min_events})"
            return f"{since} events since the summary; refreshed after {self.min_events}"
        return "refresh pending"

    def queue(self) -> dict:
        """Sizes of the refresh bookkeeping (stats)."""
        with self._cond:
            return {"waiting": len(self._waiting), "ready": len(self._ready),
                    "running": len(self._running), "failed": len(self._failed)}

    # ------------------------------------------------------------ catalog

    def embed_items(self, items: list[str]) -> None:
        """Embed catalog items (title, tags, text) at background priority."""
        if not self.inference.available or self.recommender is None:
            return
        from interest.actors.inference import EmbedRequest  # noqa: PLC0415
        # one request per embed batch: an embedding call cannot be pre-empted, so small
        # requests let online and interactive work overtake between them
        for start in range(0, len(items), self.embed_batch):
            keys = tuple(items[start:start + self.embed_batch])
            texts = tuple(self._item_text(item) for item in keys)
            self.inference.submit_embed(EmbedRequest(
                keys=keys, texts=texts, priority="background",
                deadline=time.monotonic() + self.background_deadline_s * 10,
                on_done=self._vectors_ready))

    def _item_text(self, item: str) -> str:
        return item_text(item, self.catalog.get(item) or {})

    def _vectors_ready(self, vectors) -> None:
        if isinstance(vectors, Exception):
            self.counters["errors"] += 1
            log = logger.debug if isinstance(vectors, Unavailable) else logger.warning
            log("item embeddings failed: %s", vectors)
            return
        self.counters["embedded_items"] += len(vectors)
        for item, vector in vectors.items():
            self.recommender.set_item_vector(item, vector)

    def stats(self) -> dict:
        return {**self.counters, **self.queue()}


@dataclass(frozen=True, slots=True)
class _AnswerFresh:
    reply: Any


def _why(error: Exception) -> str:
    if isinstance(error, DeadlineExceeded):
        return "deadline exceeded"
    if isinstance(error, Unavailable):
        return f"model unavailable: {error}"
    return f"{type(error).__name__}: {error}"


def llm_reason(state, scheduler, inference=None) -> str | None:
    """Why the summary in an `interests` reply for ``state`` is missing or stale
    (None when it is current); the service's read path uses it."""
    if scheduler is not None:
        return scheduler.reason(state)
    if state.profile is not None and state.since_profile == 0:
        return None
    if inference is None or not getattr(inference, "available", False):
        why = getattr(inference, "reason", "") if inference is not None else ""
        return f"no model configured ({why})" if why else "no model configured"
    return "no model configured"
