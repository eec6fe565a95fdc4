"""The inference actor: one thread that owns the language model.

Its requests are in ``actors.inference_requests``, its inbox and statistics in
``actors.priority_inbox``; this module is the actor that runs the model and
the ``Inference`` facade the rest of the service uses.

Requests come in three classes, highest first: ``online`` (a client waits
with a deadline), ``interactive`` (an active session's refresh) and
``background`` (dormant users, catalog embeddings, re-profiling). The actor's
inbox is a priority queue (``PriorityInbox``, installed through pykka's
``_create_actor_inbox`` hook):

* first come first served within a class;
* ageing: a waiting request gains one class per ``ageing_s`` seconds, so
  background work is never starved;
* every request has a ``time.monotonic()`` deadline; expired work is dropped
  and answered with ``DeadlineExceeded``;
* pending profile refreshes of the same user coalesce into one (latest inputs
  win, highest class and earliest deadline of the merged requests, every
  caller gets the one result);
* a running generation polls the inbox once per token, and once per
  ``prefill_chunk`` prompt tokens while the prompt is evaluated, and yields
  (is pre-empted and re-queued at the head of its class, not lost) when a
  request of a higher effective class is waiting.

pykka's own control messages (stop, proxy calls) bypass the classes and are
served first. Results are answered through each request's ``on_done``
callback, called on the inference thread: callers must not block in it.

``Inference`` is the facade the rest of the service uses: it starts the
actor, checks the model is there, submits requests and reads statistics
without a round trip through the (possibly busy) actor.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pykka

from interest.actors.inference_requests import (PRIORITIES, RANK, EmbedRequest, ProfileRequest,
                                       ProfileResult, _Caller, _Job, deadline_in)
from interest.actors.priority_inbox import InferenceStats, PriorityInbox
from interest.engine.llm import prompts
from interest.engine.llm.backends import Backend, LlamaBackend, Preempted
from interest.engine.errors import (
    DeadlineExceeded,
    InterestError,
    ModelUnavailable,
    Unavailable,
    ValidationError,
)
from interest.engine.llm.model_files import resolve_model_paths
from interest.engine.llm.openai_backend import OpenAIBackend
from interest.engine.llm.result_cache import ResultCache

__all__ = [
    "PRIORITIES",
    "EmbedRequest",
    "FifoInferenceActor",
    "Inference",
    "InferenceActor",
    "Preempted",
    "PriorityInbox",
    "ProfileRequest",
    "ProfileResult",
    "deadline_in",
]

logger = logging.getLogger(__name__)




# the actor
# --------------------------------------------------------------------------


def _vec_to_bytes(v: Sequence[float]) -> bytes:
    return np.asarray(v, dtype=np.float32).tobytes()


def _bytes_to_vec(b: bytes) -> list[float]:
    return np.frombuffer(b, dtype=np.float32).astype(float).tolist()


class InferenceActor(pykka.ThreadingActor):
    """Owns the backend; serves ``_Job`` messages from a ``PriorityInbox``."""

    FIFO = False

    @staticmethod
    def _create_actor_inbox() -> PriorityInbox:  # type: ignore[override]
        return PriorityInbox(fifo=False)

    def __init__(
        self,
        backend_factory: Callable[[], Backend],
        cache: ResultCache | None,
        stats: InferenceStats,
        *,
        max_tokens: int = 96,
        ageing_s: float = 30.0,
        embed_batch: int = 32,
        vocab_limit: int = prompts.MAX_VOCABULARY,
    ) -> None:
        super().__init__()
        self.inbox: PriorityInbox = self.actor_inbox  # type: ignore[assignment]
        self.inbox.ageing_s = float(ageing_s)
        self._factory = backend_factory
        self.cache = cache
        self.stats = stats
        self.max_tokens = int(max_tokens)
        self.embed_batch = max(1, int(embed_batch))
        self.vocab_limit = int(vocab_limit)
        self.backend: Backend | None = None
        self.load_error: BaseException | None = None
        self.load_seconds = 0.0

    # -- lifecycle -------------------------------------------------------------

    def on_start(self) -> None:
        t0 = time.perf_counter()
        try:
            self.backend = self._factory()
        except Exception as exc:  # noqa: BLE001 - reported through ready()
            logger.error("inference backend failed to load: %s", exc)
            self.load_error = exc
        self.load_seconds = time.perf_counter() - t0

    def ready(self) -> dict[str, Any]:
        """Model facts once loaded; raises the load error if loading failed."""
        if self.backend is None:
            err = self.load_error
            if isinstance(err, ModelUnavailable):
                raise err
            raise ModelUnavailable(f"model failed to load: {err}") from err
        return {
            "model_id": self.backend.model_id,
            "embed_model_id": self.backend.embed_model_id,
            "dim": self.backend.dim,
            "load_s": self.load_seconds,
        }

    def on_stop(self) -> None:
        for job in self.inbox.close(self._answer_stopped):
            self._answer_stopped(job)
        if self.backend is not None:
            try:
                self.backend.close()
            except Exception:  # noqa: BLE001
                logger.debug("backend close failed", exc_info=True)

    def _answer_stopped(self, job: _Job) -> None:
        self._answer(job, Unavailable("inference stopped"))

    # -- message loop ----------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if not isinstance(message, _Job):
            return super().on_receive(message)
        now = time.monotonic()
        for expired in self.inbox.expire(now):
            self._drop(expired)
        if message.deadline <= now:
            self._drop(message)
            return None
        if self.backend is None:
            self._answer(message, ModelUnavailable("no model loaded"))
            return None
        self.stats.set_in_flight(repr(message))
        message.attempts += 1
        try:
            if message.kind == "profile":
                self._run_profile(message)
            else:
                self._run_embed(message)
        finally:
            self.stats.set_in_flight(None)
        return None

    def _drop(self, job: _Job) -> None:
        self.stats.add(deadline_drops=len(job.callers))
        self._answer(job, DeadlineExceeded(f"{job!r} passed its deadline"))

    def _should_yield(self, job: _Job) -> bool:
        inbox = self.inbox
        if inbox.stop_requested:
            return True
        now = time.monotonic()
        if job.deadline <= now:
            return True
        best = inbox.best_waiting_rank(now)
        return best is not None and best < job.eff_rank

    def _after_preempt(self, job: _Job) -> None:
        if job.deadline <= time.monotonic():
            self._drop(job)
        else:
            self.stats.add(preemptions=1)
            self.inbox.requeue(job)

    # -- profile -------------------------------------------------------------

    def _run_profile(self, job: _Job) -> None:
        backend = self.backend
        assert backend is not None
        model = backend.model_id
        ih = prompts.profile_input_hash(
            job.items, job.queries, job.vocabulary,
            max_tokens=self.max_tokens, vocab_limit=self.vocab_limit,
        )
        hit = self._cache_get(model, prompts.TASK_PROFILE, prompts.TEMPLATE_VERSION, ih)
        if hit is not None:
            self.stats.add(profile_hits=1)
            emb = _bytes_to_vec(hit["embedding"]) if hit.get("embedding") else None
            self._answer_profile(job, tuple(hit["tags"]), hit["summary"], model, ih, True, emb)
            return
        self.stats.add(profile_misses=1)
        prompt = prompts.profile_prompt(job.items, job.queries, job.vocabulary, self.vocab_limit)
        try:
            completion = backend.complete(
                prompt,
                max_tokens=self.max_tokens,
                schema=prompts.PROFILE_SCHEMA,
                # nothing outranks an online job: no polling, so the backend evaluates
                # its prompt in one piece (chunks cost extra thread syncs on a busy CPU)
                stop_check=None if job.eff_rank == 0 else (lambda: self._should_yield(job)),
            )
        except Preempted as p:
            self.stats.add(tokens_wasted=p.tokens_done, generation_s=p.seconds)
            self._after_preempt(job)
            return
        except InterestError as exc:
            self.stats.add(errors=1)
            self._answer(job, exc)
            return
        except Exception as exc:  # noqa: BLE001 - never let one request kill the actor
            logger.exception("profile generation failed for %r", job)
            self.stats.add(errors=1)
            self._answer(job, InterestError(f"generation failed: {exc}"))
            return
        self.stats.add(
            generations=1,
            tokens=completion.completion_tokens,
            prompt_tokens=completion.prompt_tokens,
            generation_s=completion.seconds,
        )
        try:
            tags, summary = prompts.parse_profile(completion.text)
        except prompts.ProfileParseError as exc:
            self.stats.add(errors=1)
            self._answer(job, InterestError(str(exc)))
            return
        embedding = None
        if summary and backend.dim > 0:
            try:
                embedding = self._embed_texts([summary])[0]
            except Exception:  # noqa: BLE001 - the profile is still useful without it
                logger.warning("embedding of the summary failed", exc_info=True)
        self._cache_put(
            model, prompts.TASK_PROFILE, prompts.TEMPLATE_VERSION, ih,
            {
                "tags": list(tags),
                "summary": summary,
                "embedding": _vec_to_bytes(embedding) if embedding is not None else None,
                "tokens": completion.completion_tokens,
            },
        )
        self._answer_profile(job, tags, summary, model, ih, False, embedding)

    def _answer_profile(
        self, job: _Job, tags: tuple[str, ...], summary: str, model: str, ih: str,
        cached: bool, embedding: list[float] | None,
    ) -> None:
        emb = tuple(embedding) if embedding is not None else None
        now = time.monotonic()
        for caller in job.callers:
            latency = (now - caller.submitted) * 1000.0
            result = ProfileResult(job.user, tags, summary, model, ih, cached, latency, emb)
            self.stats.observe(caller.priority, latency)
            self._call(caller, result)
        self.stats.add(completed=len(job.callers))

    # -- embeddings ------------------------------------------------------------

    def _embed_texts(self, texts: Sequence[str]) -> list[list[float]]:
        """Embeddings through the cache (no pre-emption: used for short work)."""
        backend = self.backend
        assert backend is not None
        hashes = [prompts.text_hash(t) for t in texts]
        got = self._cache_get_many(backend.embed_model_id, hashes)
        missing = [i for i, v in enumerate(got) if v is None]
        if missing:
            vecs = backend.embed([texts[i] for i in missing])
            self.stats.add(embedded=len(missing))
            self._cache_put_many(
                backend.embed_model_id, [(hashes[i], _vec_to_bytes(v)) for i, v in zip(missing, vecs)]
            )
            for i, v in zip(missing, vecs):
                got[i] = v
        return got  # type: ignore[return-value]

    def _run_embed(self, job: _Job) -> None:
        backend = self.backend
        assert backend is not None
        todo = [(k, t) for k, t in zip(job.keys, job.texts) if k not in job.partial]
        try:
            if todo and job.attempts == 1:
                hashes = [prompts.text_hash(t) for _, t in todo]
                got = self._cache_get_many(backend.embed_model_id, hashes)
                self.stats.add(embed_hits=sum(v is not None for v in got),
                               embed_misses=sum(v is None for v in got))
                for (k, _), v in zip(todo, got):
                    if v is not None:
                        job.partial[k] = v
                todo = [(k, t) for k, t in todo if k not in job.partial]
            for i in range(0, len(todo), self.embed_batch):
                if i > 0 and self._should_yield(job):
                    self._after_preempt(job)
                    return
                chunk = todo[i : i + self.embed_batch]
                t0 = time.perf_counter()
                vecs = backend.embed([t for _, t in chunk])
                self.stats.add(embedded=len(chunk), embed_s=time.perf_counter() - t0)
                self._cache_put_many(
                    backend.embed_model_id,
                    [(prompts.text_hash(t), _vec_to_bytes(v)) for (_, t), v in zip(chunk, vecs)],
                )
                for (k, _), v in zip(chunk, vecs):
                    job.partial[k] = v
        except Exception as exc:  # noqa: BLE001
            self.stats.add(errors=1)
            err = exc if isinstance(exc, InterestError) else InterestError(f"embedding failed: {exc}")
            self._answer(job, err)
            return
        result = {k: job.partial[k] for k in job.keys}
        now = time.monotonic()
        for caller in job.callers:
            latency = (now - caller.submitted) * 1000.0
            self.stats.observe(caller.priority, latency)
            self._call(caller, dict(result))
        self.stats.add(completed=len(job.callers))

    # -- cache helpers -----------------------------------------------------------

    def _cache_get(self, model: str, task: str, version: str, ih: str) -> Any | None:
        if self.cache is None:
            return None
        try:
            return self.cache.get(model, task, version, ih)
        except InterestError:
            logger.warning("result cache read failed", exc_info=True)
            return None

    def _cache_put(self, model: str, task: str, version: str, ih: str, value: Any) -> None:
        if self.cache is None:
            return
        try:
            self.cache.put(model, task, version, ih, value)
        except InterestError:
            logger.warning("result cache write failed", exc_info=True)

    def _cache_get_many(self, model: str, hashes: list[str]) -> list[list[float] | None]:
        if self.cache is None or not hashes:
            return [None] * len(hashes)
        try:
            raw = self.cache.get_many(model, prompts.TASK_EMBED, prompts.EMBED_VERSION, hashes)
        except InterestError:
            logger.warning("result cache read failed", exc_info=True)
            return [None] * len(hashes)
        return [None if r is None else _bytes_to_vec(r) for r in raw]

    def _cache_put_many(self, model: str, rows: list[tuple[str, bytes]]) -> None:
        if self.cache is None or not rows:
            return
        try:
            self.cache.put_many(model, prompts.TASK_EMBED, prompts.EMBED_VERSION, rows)
        except InterestError:
            logger.warning("result cache write failed", exc_info=True)

    # -- answering ---------------------------------------------------------------

    def _answer(self, job: _Job, error: Exception) -> None:
        for caller in job.callers:
            self._call(caller, error)

    @staticmethod
    def _call(caller: _Caller, value: Any) -> None:
        try:
            caller.on_done(value)
        except Exception:  # noqa: BLE001 - a broken callback must not stop inference
            logger.exception("on_done callback raised")


class FifoInferenceActor(InferenceActor):
    """The same actor with a plain arrival-order inbox (benchmark baseline)."""

    FIFO = True

    @staticmethod
    def _create_actor_inbox() -> PriorityInbox:  # type: ignore[override]
        return PriorityInbox(fifo=True)


# --------------------------------------------------------------------------
# facade
# --------------------------------------------------------------------------


class Inference:
    """Starts the inference actor and is the service's handle on it."""

    def __init__(
        self,
        *,
        available: bool,
        reason: str = "",
        actor_ref: pykka.ActorRef | None = None,
        inbox: PriorityInbox | None = None,
        stats: InferenceStats | None = None,
        cache: ResultCache | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        self.available = available
        self.reason = reason
        self._ref = actor_ref
        self._inbox = inbox
        self._stats = stats or InferenceStats()
        self._cache = cache
        info = dict(info or {})
        self.model_id: str = info.get("model_id", "")
        self.embed_model_id: str = info.get("embed_model_id", "")
        self.dim: int = int(info.get("dim", 0))
        self.load_s: float = float(info.get("load_s", 0.0))
        self._stopped = False

    @classmethod
    def start(
        cls,
        config: dict,
        cache_dir: str | Path | None,
        backend: Backend | None = None,
        *,
        fifo: bool = False,
        ready_timeout: float = 300.0,
    ) -> Inference:
        """Start the actor; blocks until the model is loaded.

        ``backend=None`` builds a ``LlamaBackend`` from ``config`` on the actor
        thread. A missing model gives an unavailable ``Inference`` (answers
        ``ModelUnavailable``) unless ``config["model"]["required"]``, in which
        case ``ModelUnavailable`` is raised. ``fifo=True`` uses a plain FIFO
        inbox (benchmark baseline).
        """
        mcfg = config.get("model", {})
        icfg = config.get("inference", {})
        required = bool(mcfg.get("required", False))
        if backend is None and not icfg.get("enabled", True):
            if required:
                raise ModelUnavailable("[model] required = true but [inference] enabled = false")
            return cls(available=False, reason="inference disabled by config ([inference] enabled = false)")
        if backend is None and icfg.get("backend") == "openai":  # a remote server ([inference] url)
            factory: Callable[[], Backend] = lambda: OpenAIBackend.from_config(config)  # noqa: E731
        elif backend is None:
            try:
                resolve_model_paths(mcfg)  # fast check before starting a thread
            except ModelUnavailable as exc:
                if required:
                    raise
                logger.warning("running without a language model: %s", exc)
                return cls(available=False, reason=str(exc))
            factory = lambda: LlamaBackend.from_config(config)  # noqa: E731
        else:
            factory = lambda: backend  # noqa: E731
        cache = None
        if cache_dir is not None:
            cache = ResultCache(
                cache_dir,
                map_size_mb=int(icfg.get("cache_map_size_mb", 64)),
                max_map_size_mb=int(icfg.get("cache_max_map_size_mb", 4096)),
            )
        stats = InferenceStats()
        actor_cls = FifoInferenceActor if fifo else InferenceActor
        ref = actor_cls.start(
            factory,
            cache,
            stats,
            max_tokens=int(icfg.get("max_tokens", 96)),
            ageing_s=float(icfg.get("ageing_s", 30.0)),
            embed_batch=int(icfg.get("embed_batch", 32)),
            vocab_limit=int(icfg.get("vocab_limit", prompts.MAX_VOCABULARY)),
        )
        try:
            info = ref.proxy().ready().get(timeout=ready_timeout)
        except ModelUnavailable as exc:
            ref.stop(block=True, timeout=30)
            if cache is not None:
                cache.close()
            if required:
                raise
            logger.warning("running without a language model: %s", exc)
            return cls(available=False, reason=str(exc))
        inbox = ref.actor_inbox  # our own PriorityInbox, read for stats
        return cls(available=True, actor_ref=ref, inbox=inbox, stats=stats, cache=cache, info=info)

    # -- submitting ------------------------------------------------------------

    def submit_profile(self, req: ProfileRequest) -> None:
        """Queue a profile refresh; ``req.on_done`` gets a ProfileResult or an error."""
        rank = self._rank(req.priority)
        if not self.available:
            self._unavailable(req.on_done)
            return
        job = _Job("profile", rank, float(req.deadline), [_Caller(req.on_done, time.monotonic(), req.priority)])
        job.user = str(req.user)
        job.items = tuple(req.items)
        job.queries = tuple(req.queries)
        job.vocabulary = tuple(req.vocabulary)
        self._tell(job)

    def submit_embed(self, req: EmbedRequest) -> None:
        """Queue embeddings; ``req.on_done`` gets ``{key: vector}`` or an error."""
        rank = self._rank(req.priority)
        if len(req.keys) != len(req.texts):
            raise ValidationError("EmbedRequest keys and texts differ in length")
        if not self.available:
            self._unavailable(req.on_done)
            return
        job = _Job("embed", rank, float(req.deadline), [_Caller(req.on_done, time.monotonic(), req.priority)])
        job.keys = tuple(str(k) for k in req.keys)
        job.texts = tuple(str(t) for t in req.texts)
        self._tell(job)

    def _rank(self, priority: str) -> int:
        try:
            return RANK[priority]
        except KeyError:
            raise ValidationError(
                f"unknown priority {priority!r}; expected one of {', '.join(PRIORITIES)}"
            ) from None

    def _unavailable(self, on_done: Callable[[Any], None]) -> None:
        self._stats.add(unavailable=1)
        on_done(ModelUnavailable(self.reason or "no model loaded"))

    def _tell(self, job: _Job) -> None:
        self._stats.add(**{f"submitted_{PRIORITIES[job.rank]}": 1})
        assert self._ref is not None
        try:
            self._ref.tell(job)
        except pykka.ActorDeadError:
            for c in job.callers:
                InferenceActor._call(c, Unavailable("inference stopped"))

    # -- blocking conveniences (tools, tests; not for actor threads) ------------

    def profile(
        self,
        user: str,
        items: Sequence[Mapping[str, Any]],
        queries: Sequence[str] = (),
        vocabulary: Sequence[str] = (),
        *,
        priority: str = "online",
        timeout_s: float = 60.0,
    ) -> ProfileResult:
        """Submit a profile refresh and wait for it; raises the error on failure."""
        box: list[Any] = []
        done = threading.Event()

        def on_done(r: Any) -> None:
            box.append(r)
            done.set()

        self.submit_profile(ProfileRequest(
            user, tuple(dict(i) for i in items), tuple(queries), tuple(vocabulary),
            priority, deadline_in(timeout_s), on_done,
        ))
        if not done.wait(timeout_s + 5.0):
            raise DeadlineExceeded("no answer from the inference actor")
        if isinstance(box[0], Exception):
            raise box[0]
        return box[0]

    def embed(
        self, texts: Sequence[str], *, priority: str = "online", timeout_s: float = 60.0
    ) -> list[list[float]]:
        """Embed ``texts`` and wait; returns vectors in input order."""
        box: list[Any] = []
        done = threading.Event()

        def on_done(r: Any) -> None:
            box.append(r)
            done.set()

        keys = tuple(str(i) for i in range(len(texts)))
        self.submit_embed(EmbedRequest(keys, tuple(texts), priority, deadline_in(timeout_s), on_done))
        if not done.wait(timeout_s + 5.0):
            raise DeadlineExceeded("no answer from the inference actor")
        if isinstance(box[0], Exception):
            raise box[0]
        return [box[0][k] for k in keys]

    def forget_results(self, input_hashes: Sequence[str]) -> int:
        """Erase the cached profile results for these inputs (a user's erasure)."""
        if self._cache is None:
            return 0
        return self._cache.delete_inputs(prompts.TASK_PROFILE, input_hashes)

    # -- introspection and shutdown ------------------------------------------------

    def queue_depth(self) -> int:
        """Requests waiting for the model (all classes), without asking the actor."""
        return sum(self._inbox.depth().values()) if self._inbox is not None else 0

    def stats(self) -> dict[str, Any]:
        """Counters: cache hit rates, queue depth per class, in-flight, tokens/s,
        latency p50/p99 per class, preemptions, coalesced, deadline drops."""
        s = self._stats.snapshot()
        s["available"] = self.available
        s["model"] = self.model_id
        depth = self._inbox.depth() if self._inbox is not None else dict.fromkeys(PRIORITIES, 0)
        s["queue_depth"] = depth
        s["queued"] = sum(depth.values())
        s["coalesced"] = self._inbox.coalesced if self._inbox is not None else 0
        for key in (
            "preemptions", "deadline_drops", "completed", "errors", "tokens", "tokens_wasted",
            "generations", "generation_s", "profile_hits", "profile_misses", "embed_hits",
            "embed_misses", "embedded", "unavailable",
        ):
            s.setdefault(key, 0)
        ph, pm = s.get("profile_hits", 0), s.get("profile_misses", 0)
        eh, em = s.get("embed_hits", 0), s.get("embed_misses", 0)
        s["profile_hit_rate"] = ph / (ph + pm) if ph + pm else 0.0
        s["embed_hit_rate"] = eh / (eh + em) if eh + em else 0.0
        s["cache"] = self._cache.stats() if self._cache is not None else None
        return s

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop the actor (waiting requests are answered ``Unavailable``)."""
        if self._stopped:
            return
        self._stopped = True
        if self._ref is not None:
            try:
                self._ref.stop(block=True, timeout=timeout)
            except pykka.ActorDeadError:
                pass
        if self._cache is not None:
            self._cache.close()
