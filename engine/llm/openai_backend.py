"""A ``Backend`` that talks to a remote OpenAI-compatible server over HTTP.

``[inference] backend = "openai"`` puts the model on another process or host:
``llama_cpp.server`` (llama-cpp-python's server extra) on a CPU box, vLLM or
llama.cpp's ``llama-server`` on a GPU host. Everything that decides *what*
to run stays in the service: the inference actor's priority inbox, deadlines,
coalescing and the result cache (the servers themselves are first come, first
served). This module only turns one call into HTTP:

* ``complete``: ``POST {url}/completions`` with the prompt as a raw string
  (the prompts are hand-formatted chat turns; the server must not apply a chat
  template, or the shared prompt prefix would be lost). With ``stop_check``
  the answer is streamed (server-sent events) and ``stop_check()`` is polled
  after every streamed token: when it says stop, the connection is closed
  (llama_cpp.server then stops generating) and ``Preempted`` is raised, as
  with the in-process backend. A stream that ends without a finish reason was
  cut off by the server (llama_cpp.server's ``interrupt_requests`` when
  another client's request waits): also ``Preempted``, so the actor re-queues
  it.
* JSON-schema constrained output, by ``constrain``: ``"grammar"`` sends the
  schema as a GBNF grammar (llama_cpp.server, llama-server); ``"response_format"``
  sends OpenAI's ``{"type": "json_schema", ...}`` (vLLM); ``"none"`` sends
  nothing. Whatever the mode, a finished answer is checked against the schema;
  violations are counted (``schema_violations``) and logged, and the text is
  returned for the caller's parser to salvage or reject.
* ``embed``: ``POST {embed_url}/embeddings``. A pooled vector is used as is,
  per-token vectors (a server without pooling) are mean-pooled; both are
  L2-normalised here (llama_cpp.server does not normalise).

Errors are mapped where they happen to the service's tree: the server cannot
be reached or dropped the connection, ``Unavailable``; a timeout,
``DeadlineExceeded``; 429, ``Overloaded`` (with ``retry_after_ms`` from
``Retry-After``); other 4xx, ``BadRequest`` (404, ``ModelUnavailable``); 5xx
and malformed answers, ``InterestError``. Failing to reach the server or find
the model when the backend is built is ``ModelUnavailable``.

Identity: the server does not say which weights it serves, so ``model_id`` is
``"<model name>@openai"`` (for llama_cpp.server the name is the file name of
its ``--model``, or its ``--model_alias``). Result-cache keys and journaled
profiles carry it: give a changed model a new alias.

One ``httpx.Client`` (connection pool, keep-alive) per backend; like every
backend it is used from one thread only.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

import httpx

from interest.engine.errors import (BadRequest, DeadlineExceeded, InterestError, ModelUnavailable,
                                    Overloaded, Unavailable)
from interest.engine.llm.backends import Completion, Preempted, StopCheck, _Identity
from interest.engine.llm.schema_check import schema_problems

logger = logging.getLogger(__name__)

CONSTRAIN_MODES = ("grammar", "response_format", "none")
DIM_PROBE = "dimension probe"


# -- error mapping ------------------------------------------------------------------


def _excerpt(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _transport_error(exc: httpx.HTTPError, what: str) -> InterestError:
    """An httpx failure (no HTTP status) as the service's error."""
    if isinstance(exc, httpx.ConnectTimeout):
        return Unavailable(f"{what}: cannot connect (timed out): {exc}")
    if isinstance(exc, httpx.TimeoutException):
        return DeadlineExceeded(f"{what}: timed out ({type(exc).__name__}): {exc}")
    if isinstance(exc, (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError,
                        httpx.WriteError, httpx.CloseError)):
        return Unavailable(f"{what}: connection failed ({type(exc).__name__}): {exc}")
    return InterestError(f"{what}: {type(exc).__name__}: {exc}")


def _retry_after_ms(resp: httpx.Response) -> int | None:
    try:
        return int(float(resp.headers["retry-after"]) * 1000)
    except (KeyError, ValueError):
        return None


def _status_error(resp: httpx.Response, what: str) -> InterestError:
    """A non-2xx answer as the service's error (the body must have been read)."""
    code = resp.status_code
    msg = f"{what}: HTTP {code}: {_excerpt(resp.text)}"
    if code == 429:
        return Overloaded(msg, _retry_after_ms(resp))
    if code == 404:
        return ModelUnavailable(msg)
    if code in (401, 403):
        return Unavailable(msg + " (check [inference] api_key_env)")
    if code == 503:
        return Unavailable(msg)
    if 400 <= code < 500:
        return BadRequest(msg)
    return InterestError(msg)


def _json(resp: httpx.Response, what: str) -> Any:
    try:
        return resp.json()
    except ValueError as exc:
        raise InterestError(f"{what}: answer is not JSON: {_excerpt(resp.text)!r}") from exc


# -- the backend ------------------------------------------------------------------------


class OpenAIBackend(_Identity):
    """Completions and embeddings from an OpenAI-compatible server."""

    def __init__(
        self,
        url: str,
        *,
        model: str = "",
        embed_url: str = "",
        embed_model: str = "",
        constrain: str = "grammar",
        api_key: str = "",
        connect_timeout_s: float = 2.0,
        request_timeout_s: float = 60.0,
        temperature: float = 0.0,
        repeat_penalty: float = 1.2,
        seed: int = 42,
        embed_batch: int = 32,
    ) -> None:
        if constrain not in CONSTRAIN_MODES:
            raise ModelUnavailable(f"unknown constrain mode {constrain!r}; one of {CONSTRAIN_MODES}")
        self.url = url.rstrip("/")
        self.embed_url = (embed_url or url).rstrip("/")
        self.constrain = constrain
        self.temperature = float(temperature)
        self.repeat_penalty = float(repeat_penalty)
        self.seed = int(seed)
        self.embed_batch = max(1, int(embed_batch))
        self.request_timeout_s = float(request_timeout_s)
        self.schema_violations = 0
        self._grammars: dict[str, str] = {}
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(self.request_timeout_s, connect=float(connect_timeout_s)),
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=2),
            transport=httpx.HTTPTransport(retries=2),  # connection attempts only
        )
        try:
            self.model = self._pick_model(self.url, model)
            self.embed_model = self._pick_model(self.embed_url, embed_model)
            self._dim = len(self.embed([DIM_PROBE])[0])
        except InterestError as exc:
            self._client.close()
            raise ModelUnavailable(f"inference server not usable: {exc}") from exc
        self._model_id = f"{PurePosixPath(self.model).name}@openai"
        self._embed_model_id = f"{PurePosixPath(self.embed_model).name}@openai"

    @classmethod
    def from_config(cls, config: dict) -> OpenAIBackend:
        """Build from a full config dict (``[inference]``; ``[model] seed``)."""
        inf = config.get("inference", {})
        key_env = inf.get("api_key_env", "")
        return cls(
            inf.get("url", "http://127.0.0.1:8000/v1"),
            model=inf.get("model", ""),
            embed_url=inf.get("embed_url", ""),
            embed_model=inf.get("embed_model", ""),
            constrain=inf.get("constrain", "grammar"),
            api_key=os.environ.get(key_env, "") if key_env else "",
            connect_timeout_s=inf.get("connect_timeout_s", 2.0),
            request_timeout_s=inf.get("request_timeout_s", 60.0),
            temperature=inf.get("temperature", 0.0),
            repeat_penalty=inf.get("repeat_penalty", 1.2),
            seed=config.get("model", {}).get("seed", 42),
            embed_batch=inf.get("embed_batch", 32),
        )

    # -- HTTP ------------------------------------------------------------------------

    def _request(self, method: str, url: str, what: str, body: dict | None = None) -> Any:
        try:
            resp = self._client.request(method, url, json=body)
        except httpx.HTTPError as exc:
            raise _transport_error(exc, what) from exc
        if resp.status_code >= 300:
            raise _status_error(resp, what)
        return _json(resp, what)

    def _pick_model(self, base: str, wanted: str) -> str:
        what = f"GET {base}/models"
        listing = self._request("GET", f"{base}/models", what)
        try:
            names = [str(m["id"]) for m in listing["data"]]
        except (TypeError, KeyError) as exc:
            raise InterestError(f"{what}: unexpected answer {_excerpt(json.dumps(listing))!r}") from exc
        if wanted:
            if wanted not in names:
                raise ModelUnavailable(f"{what}: no model {wanted!r} (the server has {names})")
            return wanted
        if not names:
            raise ModelUnavailable(f"{what}: the server lists no model")
        return names[0]

    # -- completions -------------------------------------------------------------------

    def _grammar(self, schema: dict) -> str:
        key = json.dumps(schema)  # not sort_keys: property order is the output order
        gbnf = self._grammars.get(key)
        if gbnf is None:
            try:
                from llama_cpp.llama_grammar import json_schema_to_gbnf  # noqa: PLC0415
            except ImportError as exc:  # pragma: no cover - environment problem
                raise ModelUnavailable(
                    'constrain = "grammar" converts the schema with llama-cpp-python, which is '
                    'not installed; install it or set [inference] constrain = "response_format"'
                ) from exc
            gbnf = self._grammars[key] = json_schema_to_gbnf(key)
        return gbnf

    def _body(self, prompt: str, max_tokens: int, schema: dict | None, stream: bool) -> dict:
        body: dict[str, Any] = {
            "model": self.model, "prompt": prompt, "max_tokens": int(max_tokens),
            "temperature": self.temperature, "seed": self.seed,
            "repeat_penalty": self.repeat_penalty,       # llama_cpp.server, llama-server
            "repetition_penalty": self.repeat_penalty,   # vLLM
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        if schema is not None and self.constrain == "grammar":
            body["grammar"] = self._grammar(schema)
        elif schema is not None and self.constrain == "response_format":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema, "strict": True},
            }
        return body

    def complete(
        self,
        prompt: str,
        *,
        max_tokens: int,
        schema: dict | None = None,
        stop_check: StopCheck | None = None,
    ) -> Completion:
        t0 = time.perf_counter()
        if stop_check is None:
            out = self._complete_once(prompt, max_tokens, schema, t0)
        else:
            out = self._complete_streamed(prompt, max_tokens, schema, stop_check, t0)
        if schema is not None:
            self._check_schema(out, schema)
        return out

    def _complete_once(self, prompt: str, max_tokens: int, schema: dict | None, t0: float) -> Completion:
        what = f"POST {self.url}/completions"
        data = self._request("POST", f"{self.url}/completions", what,
                             self._body(prompt, max_tokens, schema, stream=False))
        try:
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            return Completion(
                str(choice["text"]), int(usage.get("prompt_tokens", 0)),
                int(usage.get("completion_tokens", 0)), time.perf_counter() - t0,
                _finish(choice.get("finish_reason")),
            )
        except (TypeError, KeyError, IndexError, ValueError) as exc:
            raise InterestError(f"{what}: unexpected answer {_excerpt(json.dumps(data))!r}") from exc

    def _complete_streamed(self, prompt: str, max_tokens: int, schema: dict | None,
                           stop_check: StopCheck, t0: float) -> Completion:
        what = f"POST {self.url}/completions (stream)"
        body = self._body(prompt, max_tokens, schema, stream=True)
        parts: list[str] = []
        tokens = prompt_tokens = 0
        finish: str | None = None
        try:
            with self._client.stream("POST", f"{self.url}/completions", json=body) as resp:
                if resp.status_code >= 300:
                    resp.read()
                    raise _status_error(resp, what)
                for chunk in _sse_events(resp, what):
                    for choice in chunk.get("choices") or ():  # one token per event ...
                        text, reason = str(choice.get("text") or ""), choice.get("finish_reason")
                        parts.append(text)
                        tokens += 1 if text or not reason else 0  # ... but an empty closing one
                        finish = reason or finish
                    usage = chunk.get("usage")  # the last event, where the server reports it
                    if usage:
                        prompt_tokens = int(usage.get("prompt_tokens", 0))
                        tokens = int(usage.get("completion_tokens", tokens))
                    if finish is None and stop_check():
                        raise Preempted(tokens, time.perf_counter() - t0)
                    if time.perf_counter() - t0 > self.request_timeout_s:
                        raise DeadlineExceeded(f"{what}: took over {self.request_timeout_s:g}s")
        except httpx.HTTPError as exc:
            raise _transport_error(exc, what) from exc
        seconds = time.perf_counter() - t0
        if finish is None:  # the server ended the stream early (another request overtook it)
            raise Preempted(tokens, seconds)
        return Completion("".join(parts), prompt_tokens, tokens, seconds, _finish(finish))

    def _check_schema(self, out: Completion, schema: dict) -> None:
        if out.finish_reason != "stop":
            return  # cut at max_tokens: the caller salvages what is complete
        try:
            problems = schema_problems(json.loads(out.text), schema)
        except ValueError as exc:
            problems = [f"not JSON ({exc})"]
        if problems:
            self.schema_violations += 1
            logger.warning("inference server answer breaks the schema (%s; constrain=%s): %s",
                           "; ".join(problems[:3]), self.constrain, _excerpt(out.text))

    # -- embeddings ----------------------------------------------------------------------

    def embed(self, texts: list[str]) -> list[list[float]]:
        out: list[list[float]] = []
        clean = [t if t.strip() else " " for t in texts]
        for i in range(0, len(clean), self.embed_batch):
            out.extend(self._embed_batch(clean[i : i + self.embed_batch]))
        return out

    def _embed_batch(self, texts: list[str]) -> list[list[float]]:
        what = f"POST {self.embed_url}/embeddings"
        data = self._request("POST", f"{self.embed_url}/embeddings", what,
                             {"model": self.embed_model, "input": texts})
        try:
            rows = sorted(data["data"], key=lambda r: int(r.get("index", 0)))
            vectors = [_pooled(r["embedding"]) for r in rows]
        except (TypeError, KeyError, ValueError, ZeroDivisionError) as exc:
            raise InterestError(f"{what}: unexpected answer {_excerpt(json.dumps(data))!r}") from exc
        if len(vectors) != len(texts):
            raise InterestError(f"{what}: {len(vectors)} embeddings for {len(texts)} texts")
        return vectors

    def close(self) -> None:
        self._client.close()


# -- helpers ----------------------------------------------------------------------------


def _finish(reason: Any) -> str:
    return "length" if reason == "length" else "stop"


def _sse_events(resp: httpx.Response, what: str) -> Iterator[dict]:
    """The JSON objects of a server-sent event stream, up to ``data: [DONE]``;
    ``Unavailable`` if the stream ends without it (the connection was lost)."""
    for line in resp.iter_lines():
        if not line.startswith("data:"):
            continue  # blank separators, ": ping" comments, event names
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        try:
            event = json.loads(payload)
        except ValueError as exc:
            raise InterestError(f"{what}: stream event is not JSON: {_excerpt(payload)!r}") from exc
        if not isinstance(event, dict):
            raise InterestError(f"{what}: stream event is not an object: {_excerpt(payload)!r}")
        if "error" in event:
            raise InterestError(f"{what}: server error in stream: {_excerpt(json.dumps(event['error']))}")
        yield event
    raise Unavailable(f"{what}: the stream ended without [DONE] (connection lost)")


def _pooled(embedding: Any) -> list[float]:
    """An L2-normalised vector from a pooled vector or a list of per-token vectors."""
    if embedding and isinstance(embedding[0], list):
        n = len(embedding)
        embedding = [sum(col) / n for col in zip(*embedding)]
    vec = [float(x) for x in embedding]
    norm = math.sqrt(sum(x * x for x in vec))
    if not vec or norm == 0 or not math.isfinite(norm):
        raise ValueError(f"degenerate embedding of {len(vec)} values")
    return [x / norm for x in vec]
