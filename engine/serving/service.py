"""The service without its sockets: the log, its projections, the read path, the ops.

Shape (ARCHITECTURE.md, "The log is the spine"):

    ingest_events ─▶ Writer (commit only) ─▶ CommittedLog ─┬▶ users     (actors; required)
                                                           ├▶ catalog   (─▶ item profiler)
                                                           ├▶ learner   (publishes Models)
                                                           └▶ profiles  (when a model is used)
    handle(request) ─▶ Reader (user state copy + Models) ─▶ reply

``handle(request, reply)`` answers one typed request (engine.serving.requests)
through ``reply(result | InterestError)``, possibly later and from another
thread; ``call(obj, reply)`` parses a request map first. ``ingest_events``
takes validated events. An `ingest` reply and `flush` wait until the events
are durable and the user-state projection has applied them.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import psutil

from interest.actors.item_profiles import ItemProfiler, item_profile_event
from interest.actors.messages import Query
from interest.actors.profiles import ProfileScheduler, llm_reason
from interest.actors.projections import CatalogProjection, ProfileProjection, UserStateProjection
from interest.actors.runtime import ActorDirectory, Dispatcher
from interest.actors.user import UserActor, UserEnv, interests_reply
from interest.engine.errors import BadRequest, InterestError, Overloaded, Unavailable
from interest.engine.journal.codec import CATALOG_STREAM
from interest.engine.journal.events import (CATALOG_STREAM_TYPES, FORGET_TYPE, PROFILE_TYPE,
                                              Event, ForgetEvent, parse_item_profile)
from interest.engine.journal.store import APPENDED, Store, open_store
from interest.engine.journal.writer import WriteJob, Writer
from interest.engine.llm.item_profiles import ItemProfile
from interest.engine.projections.catalog import Catalog
from interest.engine.projections.learner import LearnerProjection
from interest.engine.projections.global_link import GlobalModels
from interest.engine.projections.learner_process import LearnerProcess
from interest.engine.projections.log import CommittedLog
from interest.engine.projections.runner import DeadLetters, ProjectionRunner
from interest.engine.projections.state import FoldParams
from interest.engine.recommend import Recommender, model_path
from interest.engine.serving.metrics import Metrics, op_key
from interest.engine.serving.reader import Reader
from interest.engine.serving.requests import (Explain, Flush, Forget, Ingest, Interests, Ping, Recommend,
                                     Request, Stats, parse_batch, parse_request)

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
#: what an `ingest` reply and `flush` wait for: a later read sees the events
REQUIRED = ("users", "catalog")


class Service:
    def __init__(self, config: dict, data_dir: str | Path | None = None, *,
                 store: Store | None = None, inference: Any = None):
        self.config = config
        self.limits = config["limits"]
        self.started_at = time.time()
        self.data_dir = Path(data_dir or config["service"]["data_dir"])
        sys.setswitchinterval(config["runtime"]["switch_interval_ms"] / 1000)
        self._gc_every = _gc_policy(config["runtime"]["gc_full_every_s"])
        self.store = store if store is not None else open_store(config, self.data_dir)
        self.metrics = Metrics()
        self.params = FoldParams.from_config(config)
        self.log = CommittedLog(self.store, config["projections"]["tail_entries"])
        self.writer = Writer(self.store, config["writer"]["max_batch"], on_commit=self.log.append)
        self.dead = DeadLetters(lambda letter: self.writer.submit(WriteJob(dead_letters=[letter])))
        self.inference = inference
        self._build_models()
        self._build_learner()
        self._build_actors()
        self._build_projections()
        self.reader = Reader(self.store, self.users, self.params, self.catalog,
                             lambda: self.learner.models)
        self.last_gc_ms = 0.0
        self._stopping = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="sweeper", daemon=True)
        self._sweeper.start()

    # ------------------------------------------------------------ wiring

    def _build_models(self) -> None:
        self.catalog = Catalog()
        self.recommender = Recommender.from_config(self.catalog, self.params, self.config)
        path = model_path(self.data_dir)
        try:
            if self.recommender.load(path):
                logger.info("loaded the recommender checkpoint %s (position %d)", path,
                            self.recommender.gseq)
        except Exception as exc:  # noqa: BLE001 - a rebuildable checkpoint: any failure, rebuild
            self._discard_models(f"the recommender checkpoint {path} is unusable ({exc})")
            return
        if self.recommender.gseq > self.store.head():
            self._discard_models(f"the recommender checkpoint {path} has learned up to position "
                                 f"{self.recommender.gseq}, past the journal's head "
                                 f"{self.store.head()} (a checkpoint from another data directory?)")

    def _discard_models(self, why: str) -> None:
        logger.warning("%s; rebuilding the models from the journal", why)
        self.recommender = Recommender.from_config(self.catalog, self.params, self.config)

    def _build_learner(self) -> None:
        """The model learner: a projection thread here, a process of its own, or the one
        learner of every partition (``global``: this partition only takes its snapshots)."""
        if self.config["projections"]["learner"] == "global":
            self.learner = GlobalModels(self.recommender, self.config, self.data_dir, self.log,
                                        self.dead)
            self.item_vectors = self.learner
        elif self.config["projections"]["learner"] == "process":
            self.learner = LearnerProcess(self.recommender, self.config, self.data_dir, self.log,
                                          self.dead)
            self.item_vectors = self.learner
        else:
            self.learner = LearnerProjection(self.recommender, self.dead,
                                             model_path(self.data_dir),
                                             publish_s=self.config["projections"]["publish_ms"] / 1000)
            self.item_vectors = self.recommender

    def _build_actors(self) -> None:
        rt = self.config["runtime"]
        self.dispatcher = Dispatcher(rt["workers"], rt["throughput"], name="users")
        self.env = UserEnv(store=self.store, writer=self.writer, params=self.params,
                           metrics=self.metrics, dead=self.dead,
                           snapshot_every=rt["snapshot_every"])
        self.users = ActorDirectory(lambda user: UserActor.spawn(self.dispatcher, user, self.env),
                                    idle_seconds=rt["idle_seconds"],
                                    max_live=rt["max_live_actors"])
        self.profiles = None
        self.item_profiler = None
        if self.inference is not None and self.inference.available:
            self.profiles = ProfileScheduler(
                self.inference, self.catalog, self.config, tell_user=self.users.tell,
                append_events=self.ingest_events, recommender=self.item_vectors)
            self.env.profiles = self.profiles
            if self.config["inference"]["item_profiles"]:
                self.item_profiler = self._item_profiler()

    def _item_profiler(self) -> ItemProfiler:
        """LLM item profiles (``[inference] item_profiles``): journaled, then embedded."""
        icfg = self.config["inference"]
        return ItemProfiler(self.inference, self.catalog.get, self.catalog.vocabulary,
                            self.item_vectors.set_item_vector, embed_batch=icfg["embed_batch"],
                            deadline_s=icfg["background_deadline_s"] * 10,
                            on_profile=self._journal_item_profile)

    def _journal_item_profile(self, profile: ItemProfile) -> None:
        """Inference thread: append ``profile`` to the catalog stream as an ``item_profile``
        event through the writer, like the profile scheduler's ``profile`` events (raises
        ValidationError, and journals nothing, for a profile that is not schema-valid)."""
        event = item_profile_event(profile, time.time())
        parse_item_profile(event.to_wire(), self.limits)
        self.ingest_events([event])

    def _build_projections(self) -> None:
        cfg = self.config["projections"]
        on_items = None
        if self.item_profiler is not None:
            on_items = self.item_profiler.catalog_changed
        elif self.profiles is not None:
            on_items = self.profiles.embed_items
        projections = [
            (UserStateProjection(self.store, self.writer, self.users.tell), cfg["checkpoint_s"]),
            (CatalogProjection(self.store, self.catalog, self.dead, on_items), cfg["checkpoint_s"]),
        ]
        if isinstance(self.learner, LearnerProjection):
            projections.append((self.learner, self.config["recommend"]["checkpoint_seconds"]))
        if self.profiles is not None:
            projections.append((ProfileProjection(self.store, self.writer, self.profiles,
                                                  self.dead), cfg["checkpoint_s"]))
        self.runners = {p.name: ProjectionRunner(p, self.log, self.dead, batch=cfg["batch"],
                                                 max_ahead=cfg["max_ahead"], checkpoint_s=every)
                        for p, every in projections}
        if isinstance(self.learner, (LearnerProcess, GlobalModels)):
            self.runners["learner"] = self.learner.start()
        else:
            self.learner.catalog_at = self._catalog_at
        if on_items is not None:
            on_items(list(self.catalog.ids))
        for runner in self.runners.values():
            if runner is not self.learner:
                runner.start()

    def _catalog_at(self, position: int, timeout: float) -> None:
        done = threading.Event()
        self.runners["catalog"].when_at(position, lambda _applied: done.set())
        done.wait(timeout)

    # ------------------------------------------------------------ ingest

    def ingest_events(self, events: list[Event], done: Callable | None = None) -> None:
        """Commit ``events``; ``done(results | InterestError)`` once durable and applied."""
        self.metrics.add("received", len(events))
        job = WriteJob(events=[(_stream_of(e), e.to_wire()) for e in events])
        if done is not None:
            job.done = lambda results, head: self._committed(results, head, done)
        else:
            job.done = self._count_committed
        self.writer.submit(job)

    def _count_committed(self, results, _head) -> None:
        """Writer thread: count what a fire-and-forget commit did."""
        if isinstance(results, InterestError):
            self.metrics.add("commit_failures")
            return
        duplicates = sum(1 for r in results if r.status != APPENDED)
        if duplicates:
            self.metrics.add("duplicates", duplicates)

    def _committed(self, results, head: int, done: Callable) -> None:
        """Writer thread: answer once the required projections (user state and the
        catalog: read-your-writes) have reached ``head``."""
        self._count_committed(results, head)
        if isinstance(results, InterestError):
            done(results)
            return
        _when_all([self.runners[name] for name in REQUIRED], head,
                  lambda applied: done(results if applied else _stopping_error()))

    def busy(self) -> bool:
        """True while the backlog (head minus the slowest required projection, plus what
        waits to be committed) or the learner's lag is past its limit."""
        cfg = self.config["projections"]
        if self.backlog() > cfg["max_lag_events"]:
            return True
        learner = self.runners["learner"]
        if not getattr(learner, "connected", True):
            return False      # a global learner that is away catches up from the logs later
        return self.log.head - learner.position > cfg["max_learner_lag_events"]

    def retry_after_ms(self) -> int:
        return int(self.config["projections"]["retry_after_ms"])

    def flush(self, on_done: Callable[[bool], None], projections=None) -> None:
        """``on_done(True)`` once everything submitted before now is durable and applied
        by ``projections`` (``on_done(False)`` if the service stops first)."""
        names = REQUIRED if projections is None else projections

        def at_barrier(head: int) -> None:
            _when_all([self.runners[name] for name in names], head, on_done)
        self.writer.barrier(at_barrier)

    # ------------------------------------------------------------ api ops

    def call(self, obj: dict, reply: Callable[[Any], None]) -> None:
        """Parse a request map, then ``handle`` it (in-process callers)."""
        try:
            request = parse_request(obj, self.limits, self.config["recommend"]["default_k"])
        except BadRequest as exc:
            reply(exc)
            return
        self.handle(request, reply)

    def handle(self, request: Request, reply: Callable[[Any], None]) -> None:
        self.metrics.add(f"op.{op_key(request.op)}")
        try:
            if isinstance(request, Recommend):
                reply(self.reader.recommend(request))
            elif isinstance(request, Interests):
                self._interests(request, reply)
            elif isinstance(request, Explain):
                self.reader.explain(request, reply)
            elif isinstance(request, Ingest):
                self._ingest(request, reply)
            elif isinstance(request, Flush):
                self.flush(lambda ok: reply({"applied": self.metrics.get("applied")} if ok
                                            else _stopping_error()))
            elif isinstance(request, Ping):
                reply({"version": PROTOCOL_VERSION, "uptime_s": time.time() - self.started_at})
            elif isinstance(request, Stats):
                reply(self.stats())
            elif isinstance(request, Forget):
                self.forget(request.user, reply)
            else:
                raise BadRequest(f"op {request.op!r} is not handled")
        except InterestError as exc:
            reply(exc)

    def _interests(self, request: Interests, reply) -> None:
        if request.fresh and self.profiles is not None and self.store.last_seq(request.user):
            self.users.tell(request.user, Query("interests", request, reply))
            return
        state = self.reader.state_of(request.user)
        reply(interests_reply(state, self.params,
                              reason=llm_reason(state, self.profiles, self.inference)))

    def _ingest(self, request: Ingest, reply) -> None:
        if self.busy():
            raise Overloaded(f"the service is {self.backlog()} events behind; retry later",
                             retry_after_ms=self.retry_after_ms())
        events, rejected = parse_batch(list(request.events), self.limits)
        self.metrics.add("rejected", len(rejected))

        def done(results):
            if isinstance(results, InterestError):
                reply(results)
                return
            duplicates = sum(1 for r in results if r.status != APPENDED)
            reply({"accepted": len(results) - duplicates, "duplicates": duplicates,
                   "rejected": rejected})
        self.ingest_events(events, done)

    def forget(self, user: str, reply: Callable[[Any], None]) -> None:
        """Erase ``user`` (PROTOCOL.md, `forget`): commit the tombstone (the store erases
        the user's journal, event ids, snapshot and attributes in that transaction),
        wait until the required projections have applied it (the user's state is empty),
        then drop what memory still holds: the actor, the model's cached results."""
        event = ForgetEvent(id=f"forget-{uuid.uuid4().hex}", type=FORGET_TYPE, ts=time.time(),
                            user=user)

        def done(results):
            if isinstance(results, InterestError):
                reply(results)
                return
            self._forgotten(user, results[0].erased)
            reply({"user": user, "forgotten": results[0].stored.event["forgotten"]})

        def committed(results, head: int) -> None:
            if not isinstance(results, InterestError) and results[0].erased:
                self.log.erase({e.gseq for e in results[0].erased})   # memory, like the store
            self._committed(results, head, done)

        def commit() -> None:
            self.writer.submit(WriteJob(events=[(user, event.to_wire())], done=committed))
        self.metrics.add("forgets")
        if self.profiles is not None:
            self.profiles.forget(user, commit)
        else:
            commit()

    def _forgotten(self, user: str, erased) -> None:
        """The tombstone is applied: drop the user's actor (its last snapshot is the empty
        state) and the model results cached for its profiles."""
        self.users.drop(user)
        inputs = {e.event.get("input_hash") for e in erased if e.event["type"] == PROFILE_TYPE}
        inputs.discard(None)
        if inputs and self.inference is not None and self.inference.available:
            try:
                self.inference.forget_results(sorted(inputs))
            except Exception:  # noqa: BLE001 - the journal is erased; say what was left
                logger.exception("could not erase %d cached model results of an erased user",
                                 len(inputs))

    def backlog(self) -> int:
        """Events received and not yet applied by the user projection. Pending is read
        before the head: an event leaves ``pending`` only once it is in the log, so a
        commit between the two reads counts it twice, never zero times."""
        pending = self.writer.pending_events()
        return self.log.head - self.runners["users"].position + pending

    # -------------------------------------------------------------- stats

    def stats(self) -> dict:
        counters = self.metrics.counters()
        return {
            "counters": counters,
            "received": counters.get("received", 0),
            "applied": counters.get("applied", 0),
            "duplicates": counters.get("duplicates", 0),
            "rejected": counters.get("rejected", 0),
            "head": self.log.head,
            "projections": {name: {**r.lag(), **r.projection.stats()}
                            for name, r in self.runners.items()},
            "dead_letters": {"total": self.store.dead_letter_count(),
                             "by_projection": dict(self.dead.counts)},
            "live_actors": len(self.users),
            "activations": self.users.activations,
            "passivations": self.users.passivations,
            "snapshots": counters.get("snapshots", 0),
            "catalog_items": len(self.catalog),
            "writer": {"commits": self.writer.commits, "events": self.writer.committed_events,
                       "failed": self.writer.failed_commits, "queue": self.writer.depth(),
                       "pending_events": self.writer.pending_events()},
            "latency": self.metrics.latencies(),
            "recommender": (self.learner.recommender_stats()
                            if isinstance(self.learner, (LearnerProcess, GlobalModels))
                            else self.recommender.stats()),
            "threads": threading.active_count(),
            "last_gc_ms": round(self.last_gc_ms, 1),
            "rss_mb": psutil.Process().memory_info().rss / 2**20,
            "inference": self._inference_stats(),
        }

    def _inference_stats(self) -> dict:
        if self.inference is None:
            return {"available": False, "reason": "inference disabled"}
        out = {"available": self.inference.available, **self.inference.stats()}
        if self.profiles is not None:
            out["profiles"] = self.profiles.stats()
        if self.item_profiler is not None:
            out["item_profiles"] = self.item_profiler.stats()
        return out

    # ---------------------------------------------------------- lifecycle

    def _sweep_loop(self) -> None:
        period = self.config["runtime"]["sweep_seconds"]
        next_gc = time.monotonic() + self._gc_every if self._gc_every else None
        while not self._stopping.wait(period):
            try:
                self.users.sweep()
                if next_gc is not None and time.monotonic() >= next_gc:
                    t0 = time.perf_counter()
                    gc.collect()
                    self.metrics.add("gc_full_collections")
                    self.last_gc_ms = (time.perf_counter() - t0) * 1000
                    next_gc = time.monotonic() + self._gc_every
            except Exception:  # noqa: BLE001
                logger.exception("passivation sweep failed")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop in dependency order, each step bounded by ``timeout``: model work first
        (its answers go to user actors), then let the projections apply what was
        committed, stop them (saving their positions), passivate every actor (final
        snapshots), commit what is queued, and close the store only once the writer
        has stopped."""
        self._stopping.set()
        if self.item_profiler is not None:
            self.item_profiler.stop()
        if self.profiles is not None:
            self.profiles.stop()
        if self.inference is not None:
            try:
                self.inference.stop(timeout)
            except Exception:      # noqa: BLE001 - a stuck model must not keep the rest running
                logger.exception("the model actor did not stop cleanly; stopping the rest")
        deadline = time.monotonic() + timeout
        for name in ("users", "catalog"):       # the learner may lag: it resumes at restart
            self.runners[name].drain(max(0.1, deadline - time.monotonic()))
        for name, runner in self.runners.items():
            # the learner gets time to write its checkpoint whatever the drains took
            runner.stop(max(5.0 if name == "learner" else 0.1, deadline - time.monotonic()))
        self.log.close()
        self.reader.stop()
        self.users.stop_all(max(0.1, deadline - time.monotonic()))
        self._sweeper.join(1.0)
        stopped = self.writer.stop(max(1.0, deadline - time.monotonic()))
        self.dispatcher.shutdown(1.0)
        if stopped:
            self.store.close()
        else:
            raise Unavailable("the writer did not stop in time; the store was left open")


def _gc_policy(full_every_s: float) -> float:
    """Python's full (oldest-generation) garbage collection scans every live object:
    with hundreds of thousands of user states it pauses every thread for tens of
    milliseconds at unpredictable moments. With ``gc_full_every_s > 0`` young
    collections stay automatic and the full one runs on the sweeper's schedule
    instead (its pause shows in ``stats.last_gc_ms``); 0 keeps Python's default."""
    if full_every_s > 0:
        young, middle, _old = gc.get_threshold()
        gc.set_threshold(young, middle, 1_000_000)
    return full_every_s


def _stream_of(event: Event) -> str:
    return CATALOG_STREAM if event.type in CATALOG_STREAM_TYPES else event.user


def _stopping_error() -> Unavailable:
    return Unavailable("the service stopped before the events were applied; they are durable "
                       "and will be applied at the next start")


def _when_all(runners: list, position: int, on_done: Callable[[bool], None]) -> None:
    """``on_done(all applied)`` once every runner has answered for ``position``."""
    left = [len(runners)]
    ok = [True]
    lock = threading.Lock()

    def one(applied: bool) -> None:
        with lock:
            ok[0] = ok[0] and applied
            left[0] -= 1
            fire = left[0] == 0
        if fire:
            on_done(ok[0])
    for runner in runners:
        runner.when_at(position, one)
