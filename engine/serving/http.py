"""The HTTP side port (PROTOCOL.md, "HTTP side port"): operations and a JSON api.

``HttpSide(service, "host:port", config).start()`` serves a Starlette
application (``engine/serving/http_app.py``) with uvicorn (HTTP/1.1 over h11,
keep-alive) on an asyncio loop in one thread of the service process:

    GET    /metrics                          Prometheus text format (prometheus_client)
    GET    /healthz                          200 while the process runs
    GET    /readyz                           200 once ready, else 503; JSON says what is not
    GET    /dashboard                        one self-contained page polling /metrics every 2 s
    GET    /v1/users/{user}/interests        ?fresh=true|false&deadline_ms=N
    GET    /v1/users/{user}/recommendations  ?k=N&exclude_seen=true|false&deadline_ms=N
    GET    /v1/users/{user}/explain          ?item=ID&deadline_ms=N
    POST   /v1/events                        a JSON list of events; the `ingest` reply
    DELETE /v1/users/{user}                  the `forget` reply

Every ``/v1`` request becomes the api request map the ZeroMQ socket would
carry and goes through ``service.call`` (on a small thread pool, so the loop
never waits on the service), so validation and messages are the same;
``{user}`` is percent-decoded (``%2F`` is a ``/`` inside the id). Unknown or
repeated query parameters, a ``k`` that is not an integer, a boolean that is
not ``true``/``false``, a body that is not a JSON list are answered 400.
Errors are ``{"error": {"code", "message"}}`` with the protocol's code and
status: 400 bad_request (also a malformed request line or header, code
``bad_request``), 401 (no or unknown token) and 403 forbidden, 404 not_found,
405 (method not allowed, code bad_request, with ``Allow``), 429 overloaded
with ``Retry-After`` (seconds, from ``retry_after_ms``), 431 (too many or too
long header lines), 501 (an unknown method; `forget` answered "unknown op"
by a service that does not implement it: code ``unavailable``), 503
unavailable, 504 deadline_exceeded (no answer within ``[http]
request_timeout_s``, or the request's ``deadline_ms`` for `explain`), 500
internal.

Bounds: at most ``[http] max_connections`` open connections; one beyond is
answered 503 (JSON) as soon as it is accepted, and closed. At most
``max_requests`` requests in progress; beyond, 503 with ``Retry-After: 1``
(``/healthz`` is never refused). Request bodies over
``limits.max_message_bytes`` are refused (400) without being read, and the
connection is closed. A connection gets ``read_timeout_s`` in all to send a
request's line, headers and body, and again while idle before its next
request; a client that stops reading an answer is cut off after
``read_timeout_s`` with a full send buffer (a slow client cannot hold a
connection, even by sending one byte at a time). ``stop(timeout)`` stops
accepting, lets requests in progress finish within ``timeout``, then closes
every connection.

Authentication: with ``[http] tokens_file`` set, every route but
``/healthz``, ``/readyz`` and ``/dashboard`` (a static page; its script sends
the token it finds in the page's ``#token=...`` fragment) needs
``Authorization: Bearer TOKEN``. The file has one ``TOKEN ROLE`` per line
(``#`` comments; roles as the api socket's: producer, reader, admin; a token
has at least 16 characters); tokens are compared with ``hmac.compare_digest``.
No or an unknown token is 401, a role that may not do the route's op 403
(``/metrics`` counts as `stats`: admin). With ``[security] curve = true`` the
HTTP port refuses to start without a tokens file, so it never bypasses the
CurveZMQ authentication of the sockets. Binding a non-loopback address logs a
warning (without tokens: anyone can read and write; with tokens: plain HTTP,
tokens in clear, put TLS in front).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
import stat
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path
from typing import Any

import h11
import uvicorn
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from uvicorn.protocols.http.h11_impl import H11Protocol

from interest.engine.errors import ConfigError, DeadlineExceeded, InterestError, Unavailable
from interest.engine.serving.auth import ROLES, is_loopback
from interest.engine.serving.exporter import ServiceCollector
from interest.engine.serving.http_app import Gate, routes
from interest.engine.serving.metrics import op_key

logger = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16
MAX_HEAD_BYTES = 65536             # request line and headers together (h11's receive buffer)
CALL_THREADS = 4                   # threads that hand requests to service.call
START_TIMEOUT_S = 10.0
GIVE_UP_S = 0.5                    # of stop's time: answering what still waits, then closing


class HttpConfigError(ConfigError):
    """The HTTP side cannot start as configured (address, tokens file, security)."""


# ------------------------------------------------------------ addresses, tokens


def parse_address(address: str) -> tuple[str, int, int]:
    """(host, port, address family) of ``"host:port"`` (``"[::1]:0"`` for IPv6)."""
    text = address.strip()
    if text.startswith("http://"):
        text = text[len("http://"):].rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise HttpConfigError(f"http address {address!r} must be HOST:PORT, e.g. 127.0.0.1:7102")
    family = socket.AF_INET
    if host.startswith("[") and host.endswith("]"):
        host, family = host[1:-1], socket.AF_INET6
    elif ":" in host:
        raise HttpConfigError(f"http address {address!r}: write an IPv6 host in brackets, "
                              "e.g. [::1]:7102")
    return host, int(port), family


def load_tokens(path: str | Path) -> list[tuple[bytes, str]]:
    """(token, role) pairs of a tokens file: one ``TOKEN ROLE`` per line, ``#`` comments."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise HttpConfigError(f"http.tokens_file {path}: cannot read: {exc}") from None
    tokens: list[tuple[bytes, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or parts[1] not in ROLES:
            raise HttpConfigError(f"http.tokens_file {path}:{number}: expected 'TOKEN ROLE' "
                                  f"with ROLE one of {', '.join(ROLES)}")
        if len(parts[0]) < MIN_TOKEN_CHARS:
            raise HttpConfigError(f"http.tokens_file {path}:{number}: a token must have at "
                                  f"least {MIN_TOKEN_CHARS} characters")
        token = parts[0].encode("utf-8")
        if any(hmac.compare_digest(token, known) for known, _ in tokens):
            raise HttpConfigError(f"http.tokens_file {path}:{number}: a repeated token")
        tokens.append((token, parts[1]))
    if not tokens:
        raise HttpConfigError(f"http.tokens_file {path}: no tokens")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("http.tokens_file %s is readable by other users; chmod 600 it", path)
    return tokens


def tokens_from_config(config: dict) -> list[tuple[bytes, str]] | None:
    """The configured tokens, None when HTTP authentication is off; refuses to run an
    unauthenticated HTTP port next to CurveZMQ-protected sockets."""
    path = config["http"]["tokens_file"]
    if path:
        return load_tokens(path)
    if (config.get("security") or {}).get("curve"):
        raise HttpConfigError("security.curve = true but http.tokens_file is empty: the HTTP "
                              "port would bypass authentication; set [http] tokens_file "
                              "(README, HTTP side port) or turn the HTTP port off")
    return None


# ------------------------------------------------------------------ the side


class HttpSide:
    """The HTTP side port of one ``Service``; ``start()``, ``stop(timeout)``, ``bound``."""

    def __init__(self, service, address: str, config: dict):
        self.service = service
        self.config = config
        cfg = config["http"]
        self.max_requests = cfg["max_requests"]
        self.max_connections = cfg["max_connections"]
        self.read_timeout_s = cfg["read_timeout_s"]
        self.request_timeout_s = cfg["request_timeout_s"]
        self.max_body = config["limits"]["max_message_bytes"]
        self.address = address
        self.host, self.port, self.family = parse_address(address)
        self.tokens = tokens_from_config(config)
        # start-up replay: every projection must reach the head the log had now
        self.start_head = service.log.head
        self._caught_up: set[str] = set()
        self._lock = threading.Lock()
        self._in_progress = 0
        self._statuses: dict[int, int] = {}
        self.refused_connections = 0
        self.refused_requests = 0
        self.stopping = threading.Event()
        self._closed = threading.Event()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ServiceCollector(self._figures))
        ProcessCollector(registry=self.registry)
        self._pool = ThreadPoolExecutor(CALL_THREADS, thread_name_prefix="http-call")
        self._sock: socket.socket | None = None
        self._bound = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[asyncio.Future] = set()      # answers awaited (loop thread only)

    # ---------------------------------------------------------- lifecycle

    def start(self) -> "HttpSide":
        self._sock = self._bind()
        host, port = self._sock.getsockname()[:2]
        self._bound = f"[{host}]:{port}" if self.family == socket.AF_INET6 else f"{host}:{port}"
        uvicorn_log = logging.getLogger("uvicorn.error")
        if uvicorn_log.level == logging.NOTSET:       # its INFO lines and its warnings about
            uvicorn_log.setLevel(logging.ERROR)        # malformed requests would flood the log
        config = uvicorn.Config(
            Gate(routes(self), self), lifespan="off", log_config=None, access_log=False,
            http=_protocol_for(self), timeout_keep_alive=max(1, int(self.read_timeout_s)),
            h11_max_incomplete_event_size=MAX_HEAD_BYTES, server_header=False,
            timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started and self._thread.is_alive() \
                and time.monotonic() < deadline:
            time.sleep(0.005)
        if not self._server.started:
            self.stop(1.0)
            self._sock.close()
            raise OSError(f"the HTTP port {self.address} did not start: "
                          f"{self._failure or 'no answer in time'}")
        self._warn_if_exposed()
        logger.info("http side port on %s", self.bound)
        return self

    def _bind(self) -> socket.socket:
        # proto IPPROTO_TCP (not 0): asyncio sets TCP_NODELAY only on such sockets, and
        # without it every answer waits for a delayed ACK (40 ms) on keep-alive connections
        sock = socket.socket(self.family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"cannot bind the HTTP port {self.address}: "
                                     f"{exc.strerror or exc}") from None
        return sock

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported by start() and logged
            self._failure = exc
            logger.exception("the HTTP side port stopped on an error")

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        server = self._server
        try:
            await server.serve(sockets=[self._sock])
        finally:
            for connection in list(server.server_state.connections):
                if connection.transport is not None:
                    connection.transport.abort()        # past the graceful time: cut
            await asyncio.sleep(0)

    @property
    def bound(self) -> str:
        """The address actually bound, ``host:port`` (the real port when asked for 0)."""
        return self._bound

    @property
    def url(self) -> str:
        return f"http://{self.bound}"

    def _warn_if_exposed(self) -> None:
        if is_loopback(f"tcp://{self.bound}"):
            return
        if self.tokens is None:
            logger.warning("HTTP side port bound to %s without authentication: anyone who can "
                           "reach it can read and write every user's data; set [http] "
                           "tokens_file (README, HTTP side port)", self.bound)
        else:
            logger.warning("HTTP side port bound to %s: plain HTTP, bearer tokens cross the "
                           "network in clear; put a TLS-terminating proxy in front", self.bound)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let requests in progress finish (within ``timeout``), then close
        every connection still open (idempotent)."""
        if self._server is None or self.stopping.is_set():
            return
        self.stopping.set()
        server, thread = self._server, self._thread
        server.config.timeout_graceful_shutdown = timeout
        server.should_exit = True
        thread.join(max(0.1, timeout - GIVE_UP_S))
        if thread.is_alive() and self._loop is not None:
            try:                  # what still waits for the service is answered 503 now
                self._loop.call_soon_threadsafe(self._give_up)
            except RuntimeError:
                pass
            thread.join(GIVE_UP_S)
        if thread.is_alive():
            server.force_exit = True
            thread.join(1.0)
        self._closed.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if thread.is_alive():
            logger.warning("the HTTP side port did not stop within %.1f s", timeout + 1.0)

    def _give_up(self) -> None:
        for answer in list(self._pending):
            if not answer.done():
                answer.set_result(Unavailable("the HTTP side port is stopping; no answer came "
                                              "in time (the request may still be applied)"))

    # --------------------------------------------------------- admission

    def admit(self) -> bool:
        with self._lock:
            if self._in_progress >= self.max_requests:
                self.refused_requests += 1
                return False
            self._in_progress += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._in_progress -= 1

    def count(self, status: int) -> None:
        with self._lock:
            self._statuses[status] = self._statuses.get(status, 0) + 1

    def refused_connection(self) -> None:
        with self._lock:
            self.refused_connections += 1
            self._statuses[503] = self._statuses.get(503, 0) + 1

    def http_stats(self) -> dict:
        connections = len(self._server.server_state.connections) if self._server else 0
        with self._lock:
            return {"in_progress": self._in_progress, "connections": connections,
                    "responses": dict(self._statuses),
                    "refused_requests": self.refused_requests,
                    "refused_connections": self.refused_connections}

    def role_of(self, authorization: str | None) -> str | None:
        """The role of a ``Bearer`` token, or None when it is missing or unknown."""
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        given = token.strip().encode("utf-8", "replace")
        role = None
        for known, known_role in self.tokens:          # no early exit: same time for every token
            if hmac.compare_digest(given, known):
                role = known_role
        return role

    # ---------------------------------------------------------- the service

    async def call(self, request: dict, wait_s: float | None = None) -> Any:
        """Send one api request map through ``service.call``; its result or an
        ``InterestError`` (``DeadlineExceeded`` when no answer comes within ``wait_s``,
        at most ``request_timeout_s``)."""
        if self._closed.is_set():
            return Unavailable("the HTTP side port is stopping")
        op = op_key(request.get("op"))
        loop = asyncio.get_running_loop()
        answer = loop.create_future()

        def settle(result) -> None:
            if not answer.done():
                answer.set_result(result)

        def reply(result) -> None:                   # any thread, maybe after the loop ended
            try:
                loop.call_soon_threadsafe(settle, result)
            except RuntimeError:
                pass
        t0 = time.perf_counter()
        wait = self.request_timeout_s if wait_s is None else min(wait_s, self.request_timeout_s)
        self._pending.add(answer)
        try:
            self._pool.submit(self._send, request, reply)
            result = await asyncio.wait_for(answer, wait)
        except asyncio.TimeoutError:
            result = DeadlineExceeded(f"no answer within {wait:g} s ({request.get('op')})" + (
                "; the events may still be applied: re-send them, the same ids are duplicates"
                if op == "ingest" else ""))
        except RuntimeError:                          # the pool is shut: stopping
            result = Unavailable("the HTTP side port is stopping")
        finally:
            self._pending.discard(answer)
        metrics = self.service.metrics
        metrics.latency(op, (time.perf_counter() - t0) * 1000)
        if isinstance(result, InterestError):
            metrics.add(f"error.{result.code}")
        return result

    def _send(self, request: dict, reply) -> None:
        try:
            self.service.call(request, reply)
        except InterestError as exc:
            reply(exc)
        except Exception as exc:  # noqa: BLE001 - one request never stops the port
            logger.exception("unexpected failure answering %s over HTTP", request.get("op"))
            reply(InterestError(f"{type(exc).__name__}: {exc}"))

    # ---------------------------------------------------------- readiness

    def readiness(self) -> tuple[bool, dict]:
        """(ready, body): the store is open, start-up replay is done (every projection
        has reached the head the log had when the port started, or has no lag), and a
        required model is loaded."""
        not_ready = []
        replay = {}
        for name, runner in list(self.service.runners.items()):
            lag = runner.lag()
            if name not in self._caught_up and (lag["lag_events"] == 0
                                                or lag["position"] >= self.start_head):
                self._caught_up.add(name)
            done = name in self._caught_up
            replay[name] = {"done": done, "position": lag["position"],
                            "start_head": self.start_head, "lag_events": lag["lag_events"]}
            if not done:
                not_ready.append(f"projection {name} is replaying: at {lag['position']} of "
                                 f"{self.start_head}")
        store_open = getattr(self.service, "store", None) is not None and not self._closed.is_set()
        if not store_open:
            not_ready.append("the store is not open")
        inference = self.service.inference
        loaded = inference is not None and bool(getattr(inference, "available", False))
        required = bool(self.config["model"]["required"])
        if required and not loaded:
            not_ready.append("a model is required ([model] required = true) and none is loaded")
        ready = not not_ready
        return ready, {"ready": ready, "not_ready": not_ready,
                       "checks": {"store": store_open, "replay": replay,
                                  "model": {"required": required, "loaded": loaded}}}

    # ------------------------------------------------------------- metrics

    def _figures(self) -> dict:
        """What the exporter reads at each scrape (one ``stats()`` call)."""
        return {"stats": self.service.stats(), "histograms": self.service.metrics.histograms(),
                "http": self.http_stats(), "ready": self.readiness()[0],
                "uptime_s": time.time() - self.service.started_at}

    async def metrics_text(self, accept: str = "") -> tuple[bytes, str]:
        """(body, content type) of a scrape: the text format 0.0.4, or OpenMetrics when
        the scraper asks for it; collected on the pool (``stats()`` is not free)."""
        encoder, content_type = choose_encoder(accept)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, encoder, self.registry), content_type


# ------------------------------------------------------------- the protocol


_REFUSAL_BODY = json.dumps({"error": {"code": "unavailable", "message":
                                      "too many open HTTP connections; retry later"}}).encode()
_REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
            + str(len(_REFUSAL_BODY)).encode() + b"\r\n\r\n" + _REFUSAL_BODY)


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol with the side's bounds: the connection cap (refused at
    accept, in JSON), a total time to receive each request (and to wait for the next),
    a time limit on a client that does not read its answer, and JSON for the requests
    h11 cannot parse."""

    side: HttpSide                     # set on the per-side subclass (_protocol_for)
    _refused = False
    _read_clock: asyncio.TimerHandle | None = None
    _write_clock: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.side.max_connections:
            self._refused, self.transport = True, transport
            self.side.refused_connection()
            transport.write(_REFUSAL)
            transport.close()
            return
        super().connection_made(transport)
        self._arm_read()

    def connection_lost(self, exc) -> None:
        self._read_clock = _cancel(self._read_clock)
        self._write_clock = _cancel(self._write_clock)
        if not self._refused:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        cycle = self.cycle
        if cycle is not None and not cycle.more_body and not cycle.response_complete:
            self._read_clock = _cancel(self._read_clock)   # request in: the service's bound now

    def on_response_complete(self) -> None:
        self._arm_read()                    # the next request (or idleness) has its own clock
        super().on_response_complete()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._write_clock = _cancel(self._write_clock)
        self._write_clock = self.loop.call_later(self.side.read_timeout_s, self._cut)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._write_clock = _cancel(self._write_clock)

    def _arm_read(self) -> None:
        _cancel(self._read_clock)
        self._read_clock = self.loop.call_later(self.side.read_timeout_s, self._cut)

    def _cut(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """A request h11 refused (called while its RemoteProtocolError is handled)."""
        exc = sys.exc_info()[1]
        status = getattr(exc, "error_status_hint", 400)
        text = f"{msg} ({exc})" if isinstance(exc, h11.RemoteProtocolError) else msg
        if status == 431:
            text = (f"the request line and headers are over {MAX_HEAD_BYTES} bytes "
                    "(or never end)")
        body = json.dumps({"error": {"code": "bad_request", "message": text}}).encode()
        self.side.count(status)
        headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                   (b"content-length", str(len(body)).encode())]
        try:
            for event in (h11.Response(status_code=status, headers=headers,
                                       reason=_reason(status)),
                          h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
        except h11.LocalProtocolError:
            pass
        self.transport.close()


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _cancel(handle: asyncio.TimerHandle | None) -> None:
    if handle is not None:
        handle.cancel()
    return None


def _protocol_for(side: HttpSide) -> type:
    return type("HttpSideProtocol", (_Protocol,), {"side": side})
