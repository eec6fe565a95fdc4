"""A pykka runtime that hosts many actors on a small, fixed set of threads.

pykka's ``Actor`` takes its runtime from three hooks: ``_create_actor_inbox``,
``_create_future`` and ``_start_actor_loop``. ``PooledActor`` fills them so
that an actor is a mailbox, not a thread: its inbox is a deque that hands the
actor to a ``Dispatcher`` when the first message arrives, a worker thread runs
up to ``throughput`` messages of that actor and then gives the worker back to
the next actor in line. One actor is never run by two workers at once, so its
messages are handled one at a time, in arrival order.

Pooled actors are not put in pykka's ``ActorRegistry`` (a plain list, O(n) to
unregister): the ``ActorDirectory`` keeps the map from key to live actor.

Never block a worker on another pooled actor's future: with few workers that
can deadlock. Reply through callbacks or plain futures read by other threads.
"""

from __future__ import annotations

import itertools
import logging
import queue
import sys
import threading
import time
from collections import deque
from typing import Any, Callable

import pykka
from pykka import ActorDeadError, ThreadingFuture, messages

logger = logging.getLogger(__name__)

_STOP = object()
_URNS = itertools.count(1)


class Dispatcher:
    """A fixed pool of worker threads running ready actors in turn."""

    def __init__(self, workers: int = 2, throughput: int = 64, name: str = "actors"):
        self.throughput = throughput
        self._ready: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def schedule(self, actor: "PooledActor") -> None:
        self._ready.put(actor)

    def _work(self) -> None:
        while True:
            actor = self._ready.get()
            if actor is _STOP:
                return
            actor._run_slice(self.throughput)  # noqa: SLF001

    def shutdown(self, timeout: float = 5.0) -> None:
        for _ in self._threads:
            self._ready.put(_STOP)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class PooledInbox:
    """A deque inbox that schedules its actor when a message arrives and it is idle."""

    __slots__ = ("_items", "_lock", "_scheduled", "actor")

    def __init__(self) -> None:
        self._items: deque = deque()
        self._lock = threading.Lock()
        self._scheduled = True          # until the actor's loop is started
        self.actor: PooledActor | None = None

    def put(self, envelope, /) -> None:
        with self._lock:
            self._items.append(envelope)
            if self._scheduled:
                return
            self._scheduled = True
        actor = self.actor
        if actor is not None:          # None once stopped: like pykka, a dead actor's mail stays unread
            actor.dispatcher.schedule(actor)

    def get(self):
        return self._items.popleft()

    def empty(self) -> bool:
        return not self._items

    def __len__(self) -> int:
        return len(self._items)

    def release(self) -> bool:
        """Called by the worker after a slice: True if the actor must run again."""
        with self._lock:
            if self._items:
                return True
            self._scheduled = False
            return False


class StopFlag:
    """The part of ``threading.Event`` pykka uses for ``actor_stopped`` (``set``,
    ``is_set``, ``wait``), without building a Condition per actor: actors are
    activated by the hundred thousand, and most are never waited for."""

    __slots__ = ("_flag", "_event")

    def __init__(self) -> None:
        self._flag = False
        self._event: threading.Event | None = None

    _lock = threading.Lock()         # one for all flags: only set() and wait() take it

    def set(self) -> None:
        with self._lock:
            self._flag = True
            event = self._event
        if event is not None:
            event.set()

    def is_set(self) -> bool:
        return self._flag

    def wait(self, timeout: float | None = None) -> bool:
        with self._lock:
            if self._event is None:
                self._event = threading.Event()
                if self._flag:
                    self._event.set()
            event = self._event
        return event.wait(timeout)


class PooledActor(pykka.Actor):
    """A pykka actor whose messages run on a shared ``Dispatcher``.

    Start one with ``MyActor.spawn(dispatcher, ...)``. ``on_start``,
    ``on_receive`` and ``on_stop`` run on one of the dispatcher's worker
    threads (any of them, one at a time).
    """

    dispatcher: Dispatcher

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        """The fields pykka's ``Actor.__init__`` sets, with a cheap counter URN
        instead of a random UUID (activations are frequent here)."""
        self.actor_urn = f"urn:pooled:{next(_URNS)}"
        self.actor_inbox = self._create_actor_inbox()
        self.actor_stopped = StopFlag()
        self._actor_ref = pykka.ActorRef(self)

    @staticmethod
    def _create_actor_inbox() -> PooledInbox:
        return PooledInbox()

    @staticmethod
    def _create_future() -> ThreadingFuture:
        return ThreadingFuture()

    @classmethod
    def spawn(cls, dispatcher: Dispatcher, *args: Any, **kwargs: Any) -> pykka.ActorRef:
        """Create and start the actor on ``dispatcher`` without registering it globally."""
        actor = cls(*args, **kwargs)
        actor.dispatcher = dispatcher
        actor.actor_inbox.actor = actor
        actor._start_actor_loop()
        return actor.actor_ref

    @classmethod
    def start(cls, *args: Any, **kwargs: Any) -> pykka.ActorRef:  # pragma: no cover
        msg = "use PooledActor.spawn(dispatcher, ...)"
        raise TypeError(msg)

    def _start_actor_loop(self) -> None:
        self._started = False
        self.dispatcher.schedule(self)

    def _stop(self) -> None:
        """Stop without touching pykka's global registry."""
        self.actor_stopped.set()
        try:
            self.on_stop()
        except Exception:  # noqa: BLE001
            logger.exception("on_stop failed in %s", self)

    def _handle_failure(self, exc_type, exc_value, tb) -> None:
        logger.error("Unhandled exception in %s", self, exc_info=(exc_type, exc_value, tb))
        self.actor_stopped.set()

    def _run_slice(self, budget: int) -> None:
        """Run on a worker: start if new, then handle up to ``budget`` messages."""
        if not self._started:
            self._started = True
            self._actor_loop_setup()
        inbox = self.actor_inbox
        for _ in range(budget):
            if self.actor_stopped.is_set() or inbox.empty():
                break
            self._handle_envelope(inbox.get())
        if self.actor_stopped.is_set():
            self._actor_loop_teardown()
            inbox.release()
            inbox.actor = None      # no actor <-> inbox cycle: a passivated actor is freed at once
            return
        if inbox.release():
            self.dispatcher.schedule(self)

    def _handle_envelope(self, envelope) -> None:
        try:
            response = self._handle_receive(envelope.message)
            if envelope.reply_to is not None:
                envelope.reply_to.set(response)
        except Exception:
            if envelope.reply_to is not None:
                envelope.reply_to.set_exception()
            else:
                self._handle_failure(*sys.exc_info())
                try:
                    self.on_failure(*sys.exc_info())
                except Exception:  # noqa: BLE001
                    logger.exception("on_failure failed in %s", self)


class ActorDirectory:
    """Live actors by key: activate on first message, passivate idle ones.

    ``factory(key)`` spawns the actor for a key. ``tell(key, message)``
    delivers to the live actor, spawning it if needed. ``sweep()`` stops
    actors idle longer than ``idle_seconds`` and, beyond ``max_live``, the
    least recently used ones; an actor is only stopped with an empty inbox,
    under the directory lock, so no message is ever lost to a stopping actor.
    """

    def __init__(self, factory: Callable[[str], pykka.ActorRef], *,
                 idle_seconds: float, max_live: int):
        self._factory = factory
        self._idle = idle_seconds
        self._max_live = max_live
        self._lock = threading.Lock()
        self._live: dict[str, list] = {}      # key -> [ref, last_used]; dict order = LRU
        self.activations = 0
        self.passivations = 0

    def __len__(self) -> int:
        return len(self._live)

    def tell(self, key: str, message: Any) -> None:
        with self._lock:
            ref = self._touch(key)
            ref.tell(message)

    def ask(self, key: str, message: Any) -> pykka.Future:
        with self._lock:
            ref = self._touch(key)
            return ref.ask(message, block=False)

    def _touch(self, key: str) -> pykka.ActorRef:
        slot = self._live.pop(key, None)
        if slot is None or not slot[0].is_alive():
            slot = [self._factory(key), 0.0]
            self.activations += 1
            self._live[key] = slot
            self._evict_over_cap(keep=key)
        slot[1] = time.monotonic()
        self._live[key] = slot
        return slot[0]

    def _evict_over_cap(self, keep: str) -> None:
        """Keep ``max_live`` a hard cap: passivate the least recently used actors, never
        ``keep`` (the actor a message is about to be told to). A busy one gets its stop
        behind the messages it already has, so it folds them, snapshots and ends; a new
        message for its key activates a fresh actor (from the store), so nothing is lost
        and nothing is applied twice (actors skip entries they already hold)."""
        excess = len(self._live) - self._max_live
        if excess <= 0:
            return
        for key in list(itertools.islice(self._live, excess + 1)):
            if excess <= 0:
                return
            if key == keep:
                continue
            ref = self._live.pop(key)[0]
            self._stop(ref)
            self.passivations += 1
            excess -= 1

    def drop(self, key: str) -> bool:
        """Passivate ``key``'s actor now, behind the messages it already has (a user's
        erasure); a later message activates a fresh one from the store."""
        with self._lock:
            slot = self._live.pop(key, None)
            if slot is None:
                return False
            self._stop(slot[0])
        self.passivations += 1
        return True

    def peek(self, key: str):
        """The live actor object for ``key`` or None; never activates (any thread)."""
        slot = self._live.get(key)
        return None if slot is None else slot[0]._actor_weakref()  # noqa: SLF001

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._live)

    def sweep(self, now: float | None = None) -> int:
        """Passivate idle and excess actors; return how many were stopped."""
        now = time.monotonic() if now is None else now
        stopped = 0
        with self._lock:
            excess = len(self._live) - self._max_live
            for key in list(self._live):
                ref, used = self._live[key]
                if excess <= 0 and now - used < self._idle:
                    break          # LRU order: everyone after this one is fresher
                if not ref.actor_inbox.empty():
                    continue
                del self._live[key]
                self._stop(ref)
                excess -= 1
                stopped += 1
        self.passivations += stopped
        return stopped

    @staticmethod
    def _stop(ref: pykka.ActorRef) -> None:
        try:
            ref.tell(messages._ActorStop())  # noqa: SLF001
        except ActorDeadError:
            pass

    def stop_all(self, timeout: float = 10.0) -> None:
        with self._lock:
            refs = [slot[0] for slot in self._live.values()]
            self._live.clear()
        futures = []
        for ref in refs:
            try:
                futures.append(ref.stop(block=False))
            except ActorDeadError:
                pass
        deadline = time.monotonic() + timeout
        for future in futures:
            try:
                future.get(timeout=max(0.01, deadline - time.monotonic()))
            except (pykka.Timeout, ActorDeadError):
                pass
