"""When and how a user's model profile is refreshed, and where the result goes.

* Debounce: the profile projection (actors.projections) calls ``arm(user)``
  after ``refresh_min_events`` new behaviour events; after
  ``refresh_quiet_s`` without another one, the user's actor asks the
  inference actor for an ``interactive`` refresh (the inference actor
  coalesces pending refreshes of the same user).
* ``interests`` with ``fresh: true``: an ``online`` refresh, waited for up to
  the request's ``deadline_ms``; past it the answer comes from state with
  ``llm.stale`` set.
* A result is journaled as a ``profile`` event (model id, input hash,
  embedding of the summary) and folded like any event, so replay reproduces
  it without calling the model.
* Catalog items are embedded at ``background`` priority; the vectors go to
  the recommender's content source (the inference cache keeps them across
  restarts).

The timer thread only tells actors; everything touching a user's state runs
on that user's actor.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from interest.engine.errors import InterestError, Unavailable
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
class FreshTimeout:
    """Timer message to a user actor: a fresh `interests` ran out of time."""

    reply: Any


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
        self.counters = {"refresh_requests": 0, "fresh_requests": 0, "results": 0,
                         "errors": 0, "stale_answers": 0, "embedded_items": 0}
        self._timers: list = []
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._timer_loop, name="profile-timer",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ timers

    def _at(self, due: float, user: str, message: Any) -> None:
        with self._cond:
            heapq.heappush(self._timers, (due, id(message), user, message))
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
            try:
                self.tell_user(user, message)
            except Exception:  # noqa: BLE001
                logger.exception("profile timer could not reach %r", user)

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(5)

    # ---------------------------------------------- on the user's actor

    def arm(self, user: str) -> None:
        """Profile projection thread: ``user`` has enough new events; check after the quiet time."""
        self._at(time.monotonic() + self.quiet_s, user, RefreshDue())

    def on_message(self, actor, message) -> bool:
        """Handle scheduler messages; False if ``message`` is not one of ours."""
        if isinstance(message, RefreshDue):
            if actor.state.since_profile < self.min_events:
                return True
            quiet_until = actor.last_event_at + self.quiet_s
            if time.monotonic() < quiet_until:
                self._at(quiet_until, actor.user, RefreshDue())
                return True
            self._submit(actor, "interactive", time.monotonic() + self.background_deadline_s)
            return True
        if isinstance(message, _AnswerFresh):
            if not message.reply.sent:
                message.reply(self._interests(actor, stale=False))
            return True
        if isinstance(message, FreshTimeout):
            if not message.reply.sent:
                self.counters["stale_answers"] += 1
                message.reply(self._interests(actor, stale=True))
            return True
        return False

    def fresh(self, actor, query) -> None:
        """`interests` with fresh: true: an online refresh waited for up to the deadline."""
        state = actor.state
        if state.profile is not None and state.since_profile == 0:
            query.reply(self._interests(actor, stale=False))
            return
        deadline_ms = query.request.deadline_ms or self.online_deadline_ms
        if not self.inference.available or not state.events:
            query.reply(self._interests(actor, stale=state.profile is not None))
            return
        self.counters["fresh_requests"] += 1
        due = time.monotonic() + deadline_ms / 1000 * 0.9
        self._submit(actor, "online", due, waiting=query.reply)
        self._at(due, actor.user, FreshTimeout(query.reply))

    def _submit(self, actor, priority: str, deadline: float, waiting=None) -> None:
        from interest.actors.inference import ProfileRequest  # noqa: PLC0415 - loads llama.cpp
        from interest.actors.messages import ProfileDone  # noqa: PLC0415
        state, user = actor.state, actor.user
        items = tuple({"item": item, "title": self.catalog.title_of(item),
                       "tags": self.catalog.tags_of(item), "type": etype}
                      for item, etype, _ts, _w in state.recent[-10:])
        queries = tuple(q for q, _ in state.queries[-3:])
        self.counters["refresh_requests"] += 1
        self.inference.submit_profile(ProfileRequest(
            user=user, items=items, queries=queries,
            vocabulary=tuple(self.catalog.vocabulary()), priority=priority,
            deadline=deadline,
            on_done=lambda result: self.tell_user(user, ProfileDone((result, waiting)))))

    def on_result(self, actor, payload) -> None:
        """The inference answer, on the user's actor: journal it, then fold it."""
        result, waiting = payload
        if isinstance(result, Exception):
            self.counters["errors"] += 1
            if not isinstance(result, InterestError):
                logger.warning("profile refresh for %r failed: %s", actor.user, result)
            if waiting is not None and not waiting.sent:
                waiting(self._interests(actor, stale=True))
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
        self.append_events([event], applied)

    def _interests(self, actor, stale: bool) -> dict:
        from interest.actors.user import interests_reply  # noqa: PLC0415
        return interests_reply(actor.state, actor.env.params, stale=stale)

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
        return dict(self.counters)


@dataclass(frozen=True, slots=True)
class _AnswerFresh:
    reply: Any
