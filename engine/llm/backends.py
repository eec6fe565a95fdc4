"""Language-model backends: the protocol the inference actor talks to.

``LlamaBackend`` runs GGUF models in-process with llama-cpp-python: one
``llama_cpp.Llama`` for generation and a separate one (``embedding=True``) for
embeddings, since ``Llama.embed`` clears the KV cache and would throw away the
generation instance's cached prompt prefix. ``FakeBackend`` implements the same
protocol from plain functions, for tests of the code around the model.

A backend is not thread-safe: create it on the thread that uses it (the
inference actor builds it in ``on_start``) and use it only there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from interest.engine.errors import BadRequest, InterestError, ModelUnavailable
from interest.engine.llm.model_files import model_id as file_model_id
from interest.engine.llm.model_files import resolve_model_paths

logger = logging.getLogger(__name__)

StopCheck = Callable[[], bool]


class Preempted(Exception):
    """A generation was aborted because ``stop_check()`` returned True.

    Not an ``InterestError``: it never reaches a client. The inference actor
    catches it and puts the interrupted request back in its queue.
    """

    def __init__(self, tokens_done: int = 0, seconds: float = 0.0) -> None:
        super().__init__(f"generation pre-empted after {tokens_done} tokens ({seconds:.3f}s)")
        self.tokens_done = tokens_done
        self.seconds = seconds


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float               # wall time of the whole call (prompt eval + generation)
    finish_reason: str           # "stop" (end of text) or "length" (hit max_tokens)


@runtime_checkable
class Backend(Protocol):
    """What the inference actor needs from a model."""

    @property
    def model_id(self) -> str:
        """Generation model: file name + short sha256, e.g. ``x.gguf@b179c9523d0e``."""
        ...

    @property
    def embed_model_id(self) -> str:
        """Embedding model id (same form); cache keys of embeddings use it."""
        ...

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        ...

    def complete(
        self,
        prompt: str,
        *,
        max_tokens: int,
        schema: dict | None = None,
        stop_check: StopCheck | None = None,
    ) -> Completion:
        """Generate from ``prompt``; JSON-schema constrained when ``schema`` is given.

        ``stop_check()`` is polled once per generated token (and, in llama.cpp,
        between chunks of the prompt's evaluation); if it returns True the
        generation stops and ``Preempted`` is raised.
        """
        ...

    def embed(self, texts: list[str]) -> list[list[float]]:
        """L2-normalised embeddings, one per text, computed in batches."""
        ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------
# llama.cpp
# --------------------------------------------------------------------------


class _Identity:
    """The read-only identity every backend exposes (set ``_model_id``,
    ``_embed_model_id`` and ``_dim`` in ``__init__``)."""

    _model_id: str
    _embed_model_id: str
    _dim: int

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def embed_model_id(self) -> str:
        return self._embed_model_id

    @property
    def dim(self) -> int:
        return self._dim


class LlamaBackend(_Identity):
    """In-process llama.cpp (llama-cpp-python 0.3.x)."""

    def __init__(
        self,
        model_path: str | Path,
        embed_path: str | Path | None = None,
        *,
        n_ctx: int = 2048,
        n_threads: int = 2,
        n_gpu_layers: int = 0,
        seed: int = 42,
        prompt_cache_mb: int = 64,
        embed_batch: int = 32,
        embed_ctx: int = 512,
        prefill_chunk: int = 16,
        temperature: float = 0.0,
        repeat_penalty: float = 1.2,
        verbose: bool = False,
    ) -> None:
        try:
            import llama_cpp
        except ImportError as exc:  # pragma: no cover - environment problem
            raise ModelUnavailable(
                "llama-cpp-python is not installed (pip install llama-cpp-python==0.3.36)"
            ) from exc
        self._llama_cpp = llama_cpp
        self.model_path = Path(model_path)
        self.embed_path = Path(embed_path) if embed_path else self.model_path
        self._model_id = file_model_id(self.model_path)
        self._embed_model_id = file_model_id(self.embed_path)
        self.n_ctx = int(n_ctx)
        self.seed = int(seed)
        self.temperature = float(temperature)
        self.repeat_penalty = float(repeat_penalty)
        self.embed_batch = max(1, int(embed_batch))
        self.prefill_chunk = max(1, int(prefill_chunk))
        self.n_gpu_layers = int(n_gpu_layers)
        self.gpu_offload_supported = bool(llama_cpp.llama_supports_gpu_offload())
        if self.n_gpu_layers != 0 and not self.gpu_offload_supported:
            logger.warning(
                "!!! [model] n_gpu_layers=%d but this llama-cpp-python build has NO GPU "
                "support: every layer runs on the CPU. Rebuild it with "
                'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir '
                "llama-cpp-python==0.3.36 !!!",
                self.n_gpu_layers,
            )
        t0 = time.perf_counter()
        try:
            self._gen = llama_cpp.Llama(
                str(self.model_path),
                n_ctx=self.n_ctx,
                n_threads=int(n_threads),
                n_threads_batch=int(n_threads),
                n_gpu_layers=self.n_gpu_layers,
                seed=self.seed,
                verbose=verbose,
            )
            self._emb = llama_cpp.Llama(
                str(self.embed_path),
                embedding=True,
                n_ctx=int(embed_ctx),
                n_batch=int(embed_ctx),
                n_ubatch=int(embed_ctx),
                n_threads=int(n_threads),
                n_threads_batch=int(n_threads),
                n_gpu_layers=self.n_gpu_layers,
                pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                seed=self.seed,
                verbose=verbose,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelUnavailable(
                f"llama.cpp could not load {str(self.model_path)!r}: {exc}"
            ) from exc
        self.load_seconds = time.perf_counter() - t0
        if prompt_cache_mb and int(prompt_cache_mb) > 0:
            self._gen.set_cache(llama_cpp.LlamaRAMCache(capacity_bytes=int(prompt_cache_mb) << 20))
        self._dim = int(self._emb.n_embd())
        self._grammars: dict[str, Any] = {}

    @classmethod
    def from_config(cls, config: dict) -> LlamaBackend:
        """Build from a full config dict (sections ``[model]`` and ``[inference]``)."""
        m = config.get("model", {})
        inf = config.get("inference", {})
        gen_path, emb_path = resolve_model_paths(m)
        return cls(
            gen_path,
            emb_path,
            n_ctx=m.get("n_ctx", 2048),
            n_threads=m.get("n_threads", 2),
            n_gpu_layers=m.get("n_gpu_layers", 0),
            seed=m.get("seed", 42),
            prompt_cache_mb=inf.get("prompt_cache_mb", 64),
            embed_batch=inf.get("embed_batch", 32),
            embed_ctx=m.get("embed_ctx", 512),
            prefill_chunk=inf.get("prefill_chunk", 16),
            temperature=inf.get("temperature", 0.0),
            repeat_penalty=inf.get("repeat_penalty", 1.2),
            verbose=m.get("verbose", False),
        )

    def _grammar(self, schema: dict) -> Any:
        key = json.dumps(schema)  # not sort_keys: property order is the output order
        g = self._grammars.get(key)
        if g is None:
            g = self._llama_cpp.LlamaGrammar.from_json_schema(key, verbose=False)
            self._grammars[key] = g
        return g

    def complete(
        self,
        prompt: str,
        *,
        max_tokens: int,
        schema: dict | None = None,
        stop_check: StopCheck | None = None,
    ) -> Completion:
        grammar = self._grammar(schema) if schema is not None else None
        # llama-cpp-python calls the stopping criteria once per sampled token
        # and once more after the loop. Remember the call on which stop_check
        # first said yes, to tell an abort from a normal end (see below).
        state = {"calls": 0, "first_true": 0}

        def criterion(_input_ids: Any, _logits: Any) -> bool:
            state["calls"] += 1
            if state["first_true"]:
                return True
            if stop_check is not None and stop_check():
                state["first_true"] = state["calls"]
                return True
            return False

        criteria = (
            self._llama_cpp.StoppingCriteriaList([criterion]) if stop_check is not None else None
        )
        t0 = time.perf_counter()
        tokens = self._gen.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        if len(tokens) >= self.n_ctx:
            raise BadRequest(f"generation rejected: the prompt has {len(tokens)} tokens, "
                             f"the context window {self.n_ctx}")
        if stop_check is not None:
            self._prefill(tokens, stop_check, t0)
        try:
            out = self._gen.create_completion(
                tokens,
                max_tokens=int(max_tokens),
                temperature=self.temperature,
                repeat_penalty=self.repeat_penalty,
                grammar=grammar,
                stopping_criteria=criteria,
                seed=self.seed,
            )
        except ValueError as exc:  # e.g. prompt longer than the context window
            raise BadRequest(f"generation rejected: {exc}") from exc
        except RuntimeError as exc:
            raise InterestError(f"llama.cpp generation failed: {exc}") from exc
        seconds = time.perf_counter() - t0
        usage = out["usage"]
        n = int(usage["completion_tokens"])
        n_prompt = int(usage["prompt_tokens"])
        text = out["choices"][0]["text"]
        finish = out["choices"][0]["finish_reason"] or "stop"
        if state["first_true"]:
            # Aborted inside generation: call k said stop, k-1 tokens were kept.
            # Normal ends poll once more after the loop: call n+1 after a
            # max_tokens end, n+2 after an end-of-text token.
            effective_max = min(int(max_tokens), max(self.n_ctx - n_prompt, 0))
            aborted = state["first_true"] == n + 1 and n < effective_max
            if aborted and schema is not None and _is_json(text):
                aborted = False  # only the end-of-text token was missing
            if aborted:
                raise Preempted(n, seconds)
            finish = "length" if n >= effective_max else "stop"
        return Completion(text, n_prompt, n, seconds, finish)

    def _prefill(self, tokens: list[int], stop_check: StopCheck, t0: float) -> None:
        """Evaluate the prompt but its last token in chunks of ``prefill_chunk`` tokens,
        polling ``stop_check`` before each: a long prompt can be pre-empted too.

        The KV cache keeps the longest prefix shared with the previous prompt (the
        instructions and vocabulary), so only the user's own part is evaluated; an
        interrupted prompt leaves its evaluated tokens behind, and the next prompt
        reuses whatever prefix it shares with them. ``create_completion`` then finds
        all but the last token evaluated and decodes only that one.
        """
        gen = self._gen
        end = len(tokens) - 1
        done = self._llama_cpp.Llama.longest_token_prefix(gen._input_ids.tolist(), tokens)
        if done >= end:
            return
        gen.n_tokens = done          # eval drops the KV cells from n_tokens on
        try:
            for start in range(done, end, self.prefill_chunk):
                if stop_check():
                    raise Preempted(0, time.perf_counter() - t0)
                gen.eval(tokens[start:min(end, start + self.prefill_chunk)])
        except RuntimeError as exc:
            raise InterestError(f"llama.cpp prompt evaluation failed: {exc}") from exc

    def embed(self, texts: list[str]) -> list[list[float]]:
        out: list[list[float]] = []
        clean = [t if t.strip() else " " for t in texts]
        try:
            for i in range(0, len(clean), self.embed_batch):
                out.extend(self._emb.embed(clean[i : i + self.embed_batch], normalize=True, truncate=True))
        except (RuntimeError, ValueError) as exc:
            raise InterestError(f"llama.cpp embedding failed: {exc}") from exc
        return [list(map(float, v)) for v in out]

    def close(self) -> None:
        for llm in (getattr(self, "_gen", None), getattr(self, "_emb", None)):
            if llm is not None:
                try:
                    llm.close()
                except Exception:  # noqa: BLE001 - best effort at shutdown
                    logger.debug("closing llama failed", exc_info=True)
        self._gen = self._emb = None


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------
# fake
# --------------------------------------------------------------------------

_WORD_RE = re.compile(r"[a-z0-9]+")
_FREQ_RE = re.compile(r"Frequent tags: (.*)")


def hashed_bag_of_words(text: str, dim: int = 16) -> list[float]:
    """A deterministic L2-normalised bag-of-words vector (similar words, near vectors)."""
    v = [0.0] * dim
    for word in _WORD_RE.findall(text.lower()):
        h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        v[h % dim] += 1.0 if (h >> 32) & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in v))
    if norm == 0:
        v[0] = 1.0
        return v
    return [x / norm for x in v]


def fake_profile_text(prompt: str) -> str:
    """A schema-valid profile from the last ``Frequent tags:`` line of a prompt."""
    lines = _FREQ_RE.findall(prompt)
    tags = []
    if lines:
        for part in lines[-1].split(","):
            tag = part.strip().rsplit(" (", 1)[0].strip()
            if tag and tag not in tags:
                tags.append(tag)
    tags = tags[:5] or ["general"]
    return json.dumps({"tags": tags, "summary": "Likes " + " and ".join(tags[:3]) + "."})


class FakeBackend(_Identity):
    """A ``Backend`` made of plain functions, for tests.

    ``complete_fn(prompt) -> text``; the text is "generated" in
    ``tokens`` steps (default: one per 4 characters), sleeping
    ``token_delay_s`` per step and polling ``stop_check`` after each, so
    pre-emption behaves as with the real model. ``embed_fn(text) -> vector``.
    Every call is recorded in ``complete_calls`` / ``embed_calls``.
    """

    def __init__(
        self,
        complete_fn: Callable[[str], str] | None = None,
        embed_fn: Callable[[str], Sequence[float]] | None = None,
        *,
        dim: int = 16,
        token_delay_s: float = 0.0,
        tokens: int | None = None,
        model_id: str = "fake.gguf@000000000000",
        embed_model_id: str | None = None,
        fail_with: Exception | None = None,
    ) -> None:
        self.complete_fn = complete_fn or fake_profile_text
        self.embed_fn = embed_fn or (lambda t: hashed_bag_of_words(t, dim))
        self._dim = dim
        self.token_delay_s = token_delay_s
        self.tokens = tokens
        self._model_id = model_id
        self._embed_model_id = embed_model_id or model_id
        self.fail_with = fail_with
        self._lock = threading.Lock()
        self.complete_calls: list[str] = []
        self.embed_calls: list[list[str]] = []
        self.preemptions = 0
        self.tokens_emitted = 0         # across all calls: lets a test wait for progress
        self.closed = False

    def complete(
        self,
        prompt: str,
        *,
        max_tokens: int,
        schema: dict | None = None,
        stop_check: StopCheck | None = None,
    ) -> Completion:
        with self._lock:
            self.complete_calls.append(prompt)
        if self.fail_with is not None:
            raise self.fail_with
        t0 = time.perf_counter()
        text = self.complete_fn(prompt)
        n = self.tokens if self.tokens is not None else max(1, math.ceil(len(text) / 4))
        n = min(n, max(1, int(max_tokens)))
        for i in range(n):
            if self.token_delay_s:
                time.sleep(self.token_delay_s)
            self.tokens_emitted += 1
            if stop_check is not None and stop_check():
                with self._lock:
                    self.preemptions += 1
                raise Preempted(i, time.perf_counter() - t0)
        return Completion(text, max(1, len(prompt) // 4), n, time.perf_counter() - t0, "stop")

    def embed(self, texts: list[str]) -> list[list[float]]:
        with self._lock:
            self.embed_calls.append(list(texts))
        if self.fail_with is not None:
            raise self.fail_with
        return [list(map(float, self.embed_fn(t))) for t in texts]

    def close(self) -> None:
        self.closed = True
