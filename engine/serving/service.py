"""The service without its sockets: store, writer, actors, and the api ops.

``Service.handle(op, request, reply)`` answers one api request through
``reply(result | InterestError)``, possibly later and from another thread.
``Service.ingest_events(events)`` takes fire-and-forget events from the
ingest socket. The gateway (engine.serving.gateway) puts sockets in front of it;
tests and the evaluation harness may call it directly.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import Counter, deque
from pathlib import Path
from typing import Any, Callable

import psutil

from actors.catalog import CatalogActor
from actors.messages import Apply, Query
from actors.runtime import ActorDirectory, Dispatcher
from actors.user import ColdUserActor, UserActor, UserEnv
from engine.projections.catalog import Catalog
from engine.journal.codec import CATALOG_STREAM
from engine.errors import BadRequest, InterestError
from engine.journal.events import CATALOG_TYPES, PROFILE_TYPE, Event, parse_event
from actors.profiles import ProfileScheduler
from engine.recommend import Recommender, model_path
from engine.projections.state import FoldParams
from engine.journal.store import APPENDED, Store, open_store
from engine.journal.writer import WriteJob, Writer

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
USER_OPS = ("interests", "recommend", "explain")


class Completion:
    """Counts down deliveries; runs its callbacks (once) when all are done."""

    def __init__(self, count: int, on_done: Callable[[], None] | None = None):
        self._lock = threading.Lock()
        self._remaining = count
        self._callbacks = [on_done] if on_done else []
        if count == 0:
            self._fire()

    def done(self) -> None:
        with self._lock:
            self._remaining -= 1
            fire = self._remaining == 0
        if fire:
            self._fire()

    def add_callback(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if self._remaining > 0:
                self._callbacks.append(callback)
                return
        callback()

    def _fire(self) -> None:
        with self._lock:
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


class Latencies:
    """Bounded reservoir of recent latencies per op, for percentiles in ``stats``."""

    def __init__(self, size: int = 2048):
        self._samples: dict[str, deque] = {}
        self._size = size

    def add(self, op: str, ms: float) -> None:
        self._samples.setdefault(op, deque(maxlen=self._size)).append(ms)

    def summary(self) -> dict:
        out = {}
        for op, samples in list(self._samples.items()):
            data = sorted(samples)
            if data:
                out[op] = {"n": len(data), "p50_ms": data[len(data) // 2],
                           "p99_ms": data[min(len(data) - 1, int(len(data) * 0.99))]}
        return out


class Service:
    def __init__(self, config: dict, data_dir: str | Path | None = None, *,
                 store: Store | None = None, inference: Any = None):
        self.config = config
        self.limits = config["limits"]
        self.started_at = time.time()
        data_dir = Path(data_dir or config["service"]["data_dir"])
        self.data_dir = data_dir
        self.store = store if store is not None else open_store(config, data_dir)
        self.params = FoldParams.from_config(config)
        self.catalog = Catalog()
        rec = config["recommend"]
        self.recommender = Recommender(self.catalog, self.params, rec["popularity_half_life_s"],
                                       feedback_every=rec["feedback_every"],
                                       max_histories=rec["max_histories"])
        self.writer = Writer(self.store, config["writer"]["max_batch"])
        rt = config["runtime"]
        self.dispatcher = Dispatcher(rt["workers"], rt["throughput"], name="users")
        self.env = UserEnv(store=self.store, writer=self.writer, params=self.params,
                           recommender=self.recommender, snapshot_every=rt["snapshot_every"],
                           max_k=self.limits["max_k"],
                           default_k=config["recommend"]["default_k"])
        self.inference = inference
        self.users = ActorDirectory(lambda user: UserActor.spawn(self.dispatcher, user, self.env),
                                    idle_seconds=rt["idle_seconds"],
                                    max_live=rt["max_live_actors"])
        self.profiles = None
        if inference is not None and inference.available:
            self.profiles = ProfileScheduler(
                inference, self.catalog, config, tell_user=self.users.tell,
                append_events=self.ingest_events, recommender=self.recommender)
            self.env.profiles = self.profiles
        self._cold = [ColdUserActor.spawn(self.dispatcher, self.env)
                      for _ in range(rt["workers"])]
        self.catalog_actor = CatalogActor.spawn(
            self.dispatcher, self.catalog, self.store,
            on_items=self.profiles.embed_items if self.profiles else None, stats=self.env.stats)
        self.counters: Counter = Counter()
        self.latencies = Latencies()
        self._inflight: set[Completion] = set()
        self.max_inflight = config["writer"]["max_inflight_batches"]
        self._inflight_lock = threading.Lock()
        self._stopping = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="sweeper", daemon=True)
        self._sweeper.start()
        self._warm_recommender()

    def _warm_recommender(self) -> None:
        """Load the last checkpoint of the recommendation models, then learn the journal after it."""
        self.catalog_actor.ask(None, block=True, timeout=60)   # catalog loaded
        if self.recommender.load(model_path(self.data_dir)):
            logger.info("loaded the trained recommender from %s", model_path(self.data_dir))
        if self.profiles is not None:
            self.profiles.embed_items(list(self.catalog.ids))
        for entry in self.store.read_all(after_gseq=self.recommender.gseq):   # after the checkpoint
            self._observe(entry)

    def _observe(self, entry) -> None:
        if entry.stream != CATALOG_STREAM and entry.event["type"] != PROFILE_TYPE:
            self.recommender.observe(entry)

    # ------------------------------------------------------------ ingest

    def ingest_events(self, events: list[Event], done: Callable | None = None) -> None:
        """Commit then apply ``events``; ``done(results | InterestError)`` when applied."""
        job = WriteJob(events=[(_stream_of(e), e.to_wire()) for e in events])
        job.done = lambda results: self._committed(results, done)
        self.counters["received"] += len(events)
        self.writer.submit(job)

    def _committed(self, results, done: Callable | None) -> None:
        """Runs on the writer thread, in commit order: hand entries to their actors."""
        if isinstance(results, InterestError):
            self.counters["commit_failures"] += 1
            if done is not None:
                done(results)
            return
        by_stream: dict[str, list] = {}
        for result in results:
            if result.status == APPENDED:
                by_stream.setdefault(result.stored.stream, []).append(result.stored)
                self._observe(result.stored)
            else:
                self.counters["duplicates"] += 1
        completion = Completion(len(by_stream))
        self._track(completion)
        if done is not None:
            completion.add_callback(lambda: done(results))
        for stream, entries in by_stream.items():
            message = Apply(entries, completion.done)
            if stream == CATALOG_STREAM:
                self.catalog_actor.tell(message)
            else:
                self.users.tell(stream, message)

    def _track(self, completion: Completion) -> None:
        with self._inflight_lock:
            self._inflight.add(completion)

        def untrack():
            with self._inflight_lock:
                self._inflight.discard(completion)
        completion.add_callback(untrack)

    def busy(self) -> bool:
        """True while committed-but-unapplied work exceeds the backpressure limit."""
        return len(self._inflight) + self.writer.depth() > self.max_inflight

    def flush(self, on_done: Callable[[], None]) -> None:
        """``on_done()`` once everything submitted before now is durable and applied."""
        def at_barrier():
            with self._inflight_lock:
                pending = list(self._inflight)
            group = Completion(len(pending), on_done)
            for completion in pending:
                completion.add_callback(group.done)
        self.writer.barrier(at_barrier)

    # ------------------------------------------------------------ api ops

    def handle(self, op: Any, request: dict, reply: Callable[[Any], None]) -> None:
        self.counters[f"op.{op}"] += 1
        try:
            if op == "ping":
                reply({"version": PROTOCOL_VERSION, "uptime_s": time.time() - self.started_at})
            elif op == "stats":
                reply(self.stats())
            elif op == "ingest":
                self._op_ingest(request, reply)
            elif op == "flush":
                self.flush(lambda: reply({"applied": self.env.stats["applied"]}))
            elif op in USER_OPS:
                self._op_user(op, request, reply)
            else:
                raise BadRequest(f"unknown op {op!r}; expected one of "
                                 f"{['ping', 'ingest', 'flush', *USER_OPS, 'stats']}")
        except InterestError as exc:
            reply(exc)

    def _op_ingest(self, request: dict, reply) -> None:
        raw = request.get("events")
        if not isinstance(raw, list):
            raise BadRequest("field 'events' must be a list of event maps")
        if len(raw) > self.limits["max_batch_events"]:
            raise BadRequest(f"field 'events' has {len(raw)} events; the limit is "
                             f"{self.limits['max_batch_events']}")
        events, rejected = parse_batch(raw, self.limits)
        self.counters["rejected"] += len(rejected)

        def done(results):
            if isinstance(results, InterestError):
                reply(results)
                return
            duplicates = sum(1 for r in results if r.status != APPENDED)
            reply({"accepted": len(results) - duplicates, "duplicates": duplicates,
                   "rejected": rejected})
        self.ingest_events(events, done)

    def _op_user(self, op: str, request: dict, reply) -> None:
        user = request.get("user")
        if not isinstance(user, str) or not user:
            raise BadRequest("field 'user' is required and must be a non-empty string")
        query = Query(op, request, reply)
        if user in self.users.keys_view() or self.store.last_seq(user) > 0:
            self.users.tell(user, query)
            return
        # unknown user: the cold-start answer, without activating a per-user actor
        self.counters["unknown_user_queries"] += 1
        self._cold[zlib.crc32(user.encode("utf-8")) % len(self._cold)].tell(query)

    # -------------------------------------------------------------- stats

    def stats(self) -> dict:
        proc = psutil.Process()
        counters = dict(self.counters)
        return {
            "counters": counters,
            "received": counters.get("received", 0),
            "applied": self.env.stats["applied"],
            "duplicates": counters.get("duplicates", 0),
            "rejected": counters.get("rejected", 0),
            "live_actors": len(self.users),
            "activations": self.users.activations,
            "passivations": self.users.passivations,
            "snapshots": self.env.stats["snapshots"],
            "catalog_items": len(self.catalog),
            "writer": {"commits": self.writer.commits, "events": self.writer.committed_events,
                       "failed": self.writer.failed_commits, "queue": self.writer.depth()},
            "latency": self.latencies.summary(),
            "recommender": self.recommender.stats(),
            "threads": threading.active_count(),
            "rss_mb": proc.memory_info().rss / 2**20,
            "inference": self._inference_stats(),
        }

    def _inference_stats(self) -> dict:
        if self.inference is None:
            return {"available": False, "reason": "inference disabled"}
        out = {"available": self.inference.available, **self.inference.stats()}
        if self.profiles is not None:
            out["profiles"] = self.profiles.stats()
        return out

    # ---------------------------------------------------------- lifecycle

    def _sweep_loop(self) -> None:
        period = self.config["runtime"]["sweep_seconds"]
        every = self.config["recommend"]["checkpoint_seconds"]
        next_checkpoint = time.monotonic() + every
        while not self._stopping.wait(period):
            try:
                self.users.sweep()
                if time.monotonic() >= next_checkpoint:
                    next_checkpoint = time.monotonic() + every
                    self.checkpoint()
            except Exception:  # noqa: BLE001
                logger.exception("passivation sweep or checkpoint failed")

    def checkpoint(self) -> None:
        """Save the recommendation models and fusion weights, so that a restart replays
        only the journal after them (and the adapted weights survive)."""
        if self.recommender.gseq > self.recommender.base_gseq:
            self.recommender.save(model_path(self.data_dir))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop in dependency order: model work first (its answers go to user actors),
        then drain and apply what was received, passivate every actor (final
        snapshots), commit, checkpoint the models, and close the store."""
        self._stopping.set()
        if self.profiles is not None:
            self.profiles.stop()
        if self.inference is not None:
            self.inference.stop(timeout)
        done = threading.Event()
        self.flush(done.set)
        done.wait(timeout)
        self.users.stop_all(timeout)
        for ref in (*self._cold, self.catalog_actor):
            try:
                ref.stop(block=True, timeout=timeout)
            except Exception:  # noqa: BLE001 - already stopped
                pass
        finished = threading.Event()
        self.writer.barrier(finished.set)     # final snapshots are committed
        finished.wait(timeout)
        self.writer.stop(timeout)
        self._sweeper.join(timeout)
        try:
            self.checkpoint()                 # nothing observes after the writer stopped
        except OSError as exc:
            logger.error("could not save the recommender checkpoint: %s", exc)
        self.dispatcher.shutdown(timeout)
        self.store.close()


def _stream_of(event: Event) -> str:
    return CATALOG_STREAM if event.type in CATALOG_TYPES else event.user


def parse_batch(raw: list, limits: dict) -> tuple[list[Event], list[dict]]:
    """Validate a list of event maps: (valid events, rejected [{index, code, message}])."""
    events, rejected = [], []
    for index, obj in enumerate(raw):
        try:
            events.append(parse_event(obj, limits))
        except BadRequest as exc:
            rejected.append({"index": index, "code": exc.code, "message": str(exc)})
    return events, rejected
