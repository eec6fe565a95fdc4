"""The HTTP side port (PROTOCOL.md, "HTTP side port"): operations and a JSON api.

``HttpSide(service, "host:port", config).start()`` serves, on the standard
library's ``ThreadingHTTPServer`` (HTTP/1.1, keep-alive, one daemon thread
per connection):

    GET    /metrics                          Prometheus text exposition format 0.0.4
    GET    /healthz                          200 while the process runs
    GET    /readyz                           200 once ready, else 503; JSON says what is not
    GET    /dashboard                        one self-contained page polling /metrics every 2 s
    GET    /v1/users/{user}/interests        ?fresh=true|false&deadline_ms=N
    GET    /v1/users/{user}/recommendations  ?k=N&exclude_seen=true|false&deadline_ms=N
    GET    /v1/users/{user}/explain          ?item=ID&deadline_ms=N
    POST   /v1/events                        a JSON list of events; the `ingest` reply
    DELETE /v1/users/{user}                  the `forget` reply

Every ``/v1`` request becomes the api request map the ZeroMQ socket would
carry and goes through ``service.call``, so validation and messages are the
same; ``{user}`` is percent-decoded (``%2F`` is a ``/`` inside the id).
Unknown or repeated query parameters, a ``k`` that is not an integer, a
boolean that is not ``true``/``false``, a body that is not a JSON list are
answered 400. Errors are ``{"error": {"code", "message"}}`` with the
protocol's code and status: 400 bad_request, 401 (no or unknown token) and
403 forbidden, 404 not_found, 405 (method not allowed, code bad_request),
429 overloaded with ``Retry-After`` (seconds, from ``retry_after_ms``), 503
unavailable, 504 deadline_exceeded (no answer within ``[http]
request_timeout_s``, or the request's ``deadline_ms`` for `explain`), 500
internal. `forget` answered "unknown op" by a service that does not
implement it yet is 501 with code ``unavailable``: the request is fine, the
service cannot do it.

Bounds: at most ``[http] max_connections`` open connections (threads); a
connection beyond is answered 503 on the accept thread and closed. At most
``max_requests`` requests in progress; beyond, 503 with ``Retry-After: 1``
(``/healthz`` is never refused). Request bodies over ``limits.max_message_bytes``
are refused (400). A connection gets ``read_timeout_s`` in all to send a
request's line, headers and body, and again to read the answer, and the
same while idle between keep-alive requests; past it the socket is shut
(a slow client cannot hold a thread, even by sending one byte at a time).

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

import hmac
import json
import logging
import math
import re
import socket
import socketserver
import stat
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

from interest.engine.errors import (BadRequest, ConfigError, DeadlineExceeded, Forbidden, InterestError,
                           NotFound, Unavailable)
from interest.engine.serving.auth import ROLES, allowed, forbidden, is_loopback
from interest.engine.serving.metrics import op_key

logger = logging.getLogger(__name__)

STATUS = {"bad_request": 400, "forbidden": 403, "not_found": 404, "overloaded": 429,
          "unavailable": 503, "deadline_exceeded": 504, "internal": 500}
MIN_TOKEN_CHARS = 16
MAX_QUERY_FIELDS = 16
POLL_S = 0.1                       # accept loop wake-ups: stop() latency, slow-client checks


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
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------- lifecycle

    def start(self) -> "HttpSide":
        cls = _Server6 if self.family == socket.AF_INET6 else _Server
        try:
            self._httpd = cls((self.host, self.port), _Handler, side=self)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot bind the HTTP port {self.address}: "
                                     f"{exc.strerror or exc}") from None
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(POLL_S,),
                                        name="http", daemon=True)
        self._thread.start()
        self._warn_if_exposed()
        logger.info("http side port on %s", self.bound)
        return self

    @property
    def bound(self) -> str:
        """The address actually bound, ``host:port`` (the real port when asked for 0)."""
        if self._httpd is None:
            return ""
        host, port = self._httpd.server_address[:2]
        return f"[{host}]:{port}" if self.family == socket.AF_INET6 else f"{host}:{port}"

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
        """Stop accepting, let requests in progress finish (within ``timeout``), then shut
        every connection still open (idempotent)."""
        if self._httpd is None or self.stopping.is_set():
            return
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        deadline = time.monotonic() + timeout
        while self._in_progress and time.monotonic() < deadline:
            time.sleep(0.01)
        self._closed.set()
        self._httpd.shut_all()
        if self._thread is not None:
            self._thread.join(timeout)

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

    def http_stats(self) -> dict:
        with self._lock:
            return {"in_progress": self._in_progress, "connections": self._httpd.open_count()
                    if self._httpd else 0, "responses": dict(self._statuses),
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

    def call(self, request: dict, wait_s: float | None = None) -> Any:
        """Send one api request map through ``service.call``; its result or an
        ``InterestError`` (``DeadlineExceeded`` when no answer comes within ``wait_s``)."""
        if self._closed.is_set():
            return Unavailable("the HTTP side port is stopping")
        op = op_key(request.get("op"))
        done = threading.Event()
        box: list = []

        def reply(result) -> None:
            if not done.is_set():
                box.append(result)
                done.set()
        t0 = time.perf_counter()
        try:
            self.service.call(request, reply)
        except InterestError as exc:
            reply(exc)
        except Exception as exc:  # noqa: BLE001 - one request never stops the port
            logger.exception("unexpected failure answering %s over HTTP", op)
            reply(InterestError(f"{type(exc).__name__}: {exc}"))
        wait = self.request_timeout_s if wait_s is None else min(wait_s, self.request_timeout_s)
        if done.wait(wait):
            result = box[0]
        else:
            result = DeadlineExceeded(f"no answer within {wait:g} s ({request.get('op')})" + (
                "; the events may still be applied: re-send them, the same ids are duplicates"
                if op == "ingest" else ""))
        metrics = self.service.metrics
        metrics.latency(op, (time.perf_counter() - t0) * 1000)
        if isinstance(result, InterestError):
            metrics.add(f"error.{result.code}")
        return result

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

    def metrics_text(self) -> str:
        return render_metrics(self.service.stats(), self.http_stats(), self.readiness()[0],
                              time.time() - self.service.started_at)


# ---------------------------------------------------------- the HTTP server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, address, handler, *, side: HttpSide):
        self.side = side
        self._conn_lock = threading.Lock()
        self._conns: dict[socket.socket, float | None] = {}     # socket -> deadline (monotonic)
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (a DNS lookup that may hang): skip it
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def open_count(self) -> int:
        return len(self._conns)

    def process_request(self, request, client_address) -> None:
        with self._conn_lock:
            full = len(self._conns) >= self.side.max_connections
            if not full:
                self._conns[request] = time.monotonic() + self.side.read_timeout_s
            if full:
                self.side.refused_connections += 1
        if full:
            _refuse(request)
            return
        thread = threading.Thread(target=self.process_request_thread,
                                  args=(request, client_address), name="http-conn", daemon=True)
        try:
            thread.start()
        except RuntimeError:                  # cannot start a thread: refuse, never crash
            self.shutdown_request(request)

    def close_request(self, request) -> None:
        with self._conn_lock:
            self._conns.pop(request, None)
        super().close_request(request)

    def arm(self, request, armed: bool) -> None:
        """Start (or suspend) the clock of a connection: it must finish reading or writing
        within ``read_timeout_s``."""
        with self._conn_lock:
            if request in self._conns:
                self._conns[request] = (time.monotonic() + self.side.read_timeout_s
                                        if armed else None)

    def service_actions(self) -> None:
        """Accept thread, every POLL_S: shut the connections past their deadline."""
        now = time.monotonic()
        with self._conn_lock:
            late = [s for s, deadline in self._conns.items()
                    if deadline is not None and deadline < now]
            for sock in late:
                self._conns[sock] = None
        for sock in late:
            _shut(sock)

    def shut_all(self) -> None:
        with self._conn_lock:
            socks = list(self._conns)
        for sock in socks:
            _shut(sock)

    def handle_error(self, request, client_address) -> None:
        logger.debug("http connection from %s ended with an error", client_address,
                     exc_info=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


_REFUSAL_BODY = json.dumps({"error": {"code": "unavailable", "message":
                                      "too many open HTTP connections; retry later"}}).encode()
_REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
            + str(len(_REFUSAL_BODY)).encode() + b"\r\n\r\n" + _REFUSAL_BODY)


def _refuse(sock: socket.socket) -> None:
    """Accept thread: answer 503 without reading or blocking, then close."""
    try:
        sock.setblocking(False)
        sock.send(_REFUSAL)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


# ---------------------------------------------------------------- routes

USER_ROUTES = {"interests": "interests", "recommendations": "recommend", "explain": "explain"}
QUERY_KEYS = {"interests": ("fresh", "deadline_ms"),
              "recommend": ("k", "exclude_seen", "deadline_ms"),
              "explain": ("item", "deadline_ms")}


def route(path: str) -> tuple[str, tuple[str, ...], str | None] | None:
    """(route name, allowed methods, raw user segment) of a path, or None."""
    parts = path.split("/")
    if len(parts) == 2 and parts[1] in ("metrics", "healthz", "readyz", "dashboard"):
        return parts[1], ("GET", "HEAD"), None
    if parts[:2] != ["", "v1"]:
        return None
    if parts[2:] == ["events"]:
        return "events", ("POST",), None
    if len(parts) == 4 and parts[2] == "users" and parts[3]:
        return "forget", ("DELETE",), parts[3]
    if len(parts) == 5 and parts[2] == "users" and parts[3] and parts[4] in USER_ROUTES:
        return USER_ROUTES[parts[4]], ("GET",), parts[3]
    return None


ROUTE_OPS = {"metrics": "stats", "interests": "interests", "recommend": "recommend",
             "explain": "explain", "events": "ingest", "forget": "forget"}
OPEN_ROUTES = ("healthz", "readyz", "dashboard")


def _query(text: str, route_name: str, limits: dict) -> dict:
    """The request keys of a user route's query string; BadRequest on anything unknown."""
    try:
        fields = parse_qs(text, keep_blank_values=True, errors="strict",
                          max_num_fields=MAX_QUERY_FIELDS)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the query string cannot be parsed: {exc}") from None
    known = QUERY_KEYS[route_name]
    out: dict[str, Any] = {}
    for key, values in fields.items():
        if key not in known:
            raise BadRequest(f"unknown query parameter {key[:40]!r}; expected "
                             f"{', '.join(known)}")
        if len(values) != 1:
            raise BadRequest(f"query parameter {key!r} is given {len(values)} times")
        value = values[0]
        if key == "k":
            if not re.fullmatch(r"[0-9]{1,9}", value) or not 1 <= int(value) <= limits["max_k"]:
                raise BadRequest(f"query parameter 'k' must be an integer from 1 to "
                                 f"{limits['max_k']}, got {value[:40]!r}")
            out[key] = int(value)
        elif key in ("exclude_seen", "fresh"):
            if value.lower() not in ("true", "false"):
                raise BadRequest(f"query parameter {key!r} must be true or false, "
                                 f"got {value[:40]!r}")
            out[key] = value.lower() == "true"
        elif key == "deadline_ms":
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not math.isfinite(number) or number <= 0:
                raise BadRequest("query parameter 'deadline_ms' must be a positive number of "
                                 f"milliseconds, got {value[:40]!r}")
            out[key] = number
        else:
            out[key] = value
    return out


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _json_default(obj):
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if hasattr(obj, "item"):           # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "interest-http/1"
    sys_version = ""
    server: _Server

    # --------------------------------------------------------- connection

    def setup(self) -> None:
        self.timeout = self.server.side.read_timeout_s       # each recv/send, on top of the clock
        super().setup()

    def handle(self) -> None:
        self.close_connection = True
        self._one()
        while not self.close_connection:
            self._one()

    def _one(self) -> None:
        self.server.arm(self.connection, True)
        self._body_left = 0
        self.handle_one_request()

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.request_version == "HTTP/0.9":
            self.send_error(400, "HTTP/0.9 is not supported")
            return False
        return True

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, fmt, *args) -> None:
        logger.debug("%s %s", self.address_string(), fmt % args)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_DELETE = do_HEAD = do_PUT = do_PATCH = do_OPTIONS = do_GET

    # -------------------------------------------------------------- replies

    def _send(self, status: int, body: bytes, content_type: str, headers=()) -> None:
        self.server.arm(self.connection, True)
        self.server.side.count(status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in headers:
            self.send_header(name, value)
        if self._body_left:           # a body we did not read: the connection cannot go on
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj, headers=()) -> None:
        try:
            body = json.dumps(obj, default=_json_default, allow_nan=False,
                              separators=(",", ":")).encode("utf-8")
        except (TypeError, ValueError) as exc:
            status, headers = 500, ()
            body = json.dumps({"error": {"code": "internal", "message":
                                         f"the reply cannot be encoded as JSON: {exc}"}}).encode()
        self._send(status, body, "application/json", headers)

    def _error(self, error: InterestError, status: int | None = None, headers=()) -> None:
        wire = error.to_wire()
        status = status or STATUS.get(error.code, 500)
        headers = list(headers)
        retry_ms = wire.get("retry_after_ms")
        if status in (429, 503) and retry_ms is not None:
            headers.append(("Retry-After", str(max(1, math.ceil(retry_ms / 1000)))))
        self._json(status, {"error": wire}, headers)

    def send_error(self, code, message=None, explain=None) -> None:
        """Protocol-level errors of http.server (bad request line, headers too long,
        unsupported method...) as JSON too."""
        self.close_connection = True
        self._body_left = 0
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.0"       # a status line and headers, whatever came
        try:
            short = self.responses[code][0]
        except KeyError:
            short = "error"
        kind = "unavailable" if code == 503 else "internal" if code >= 500 and code != 501 \
            else "bad_request"
        body = json.dumps({"error": {"code": kind, "message": message or short}}).encode()
        self.log_error("code %d, message %s", code, message)
        self.server.side.count(code)
        self.send_response(code, message)
        self.send_header("Connection", "close")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if getattr(self, "command", None) != "HEAD":
            self.wfile.write(body)

    # -------------------------------------------------------------- routing

    def _dispatch(self) -> None:
        side = self.server.side
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or (length is not None and not length.isdigit()):
            self._body_left = 1                  # a body of unknown length: close after answering
        else:
            self._body_left = int(length or 0)
        path, _, query = self.path.partition("?")
        found = route(path)
        if found is None:
            self._error(NotFound(f"no route {self.command} {path[:200]}"))
            return
        name, methods, user = found
        if not self._body_left:
            self.server.arm(self.connection, False)     # waiting for the service: its own bound
        if self.command not in methods:
            self._error(BadRequest(f"{self.command} is not allowed on {path[:200]}; use "
                                   f"{', '.join(m for m in methods if m != 'HEAD')}"),
                        405, [("Allow", ", ".join(methods))])
            return
        if name == "healthz":
            self._json(200, {"status": "ok", "uptime_s": time.time() - side.service.started_at})
            return
        if side.stopping.is_set():
            self.close_connection = True
            self._error(Unavailable("the HTTP side port is stopping"), 503)
            return
        if not side.admit():
            self._error(Unavailable(f"more than {side.max_requests} HTTP requests in progress; "
                                    "retry later"), 503, [("Retry-After", "1")])
            return
        try:
            self._route(side, name, user, query)
        finally:
            side.release()

    def _route(self, side: HttpSide, name: str, user: str | None, query: str) -> None:
        if side.tokens is not None and name not in OPEN_ROUTES:
            role = side.role_of(self.headers.get("Authorization"))
            if role is None:
                self._error(Forbidden("a valid 'Authorization: Bearer TOKEN' header is "
                                      "required"), 401,
                            [("WWW-Authenticate", 'Bearer realm="interest"')])
                return
            if not allowed(role, ROUTE_OPS[name]):
                self._error(forbidden(role, ROUTE_OPS[name]))
                return
        if name == "metrics":
            self._send(200, side.metrics_text().encode("utf-8"),
                       "text/plain; version=0.0.4; charset=utf-8")
        elif name == "readyz":
            ready, body = side.readiness()
            self._json(200 if ready else 503, body)
        elif name == "dashboard":
            self._send(200, DASHBOARD.encode("utf-8"), "text/html; charset=utf-8",
                       [("Content-Security-Policy", CSP)])
        elif name == "events":
            self._events(side)
        else:
            self._user_op(side, name, user, query)

    def _user_op(self, side: HttpSide, op: str, raw_user: str, query: str) -> None:
        try:
            user = unquote(raw_user, errors="strict")
            request = {"op": op, "user": user}
            if op != "forget":
                request.update(_query(query, op, side.service.limits))
            elif query:
                raise BadRequest("DELETE /v1/users/{user} takes no query parameters")
        except UnicodeDecodeError:
            self._error(BadRequest("the user id in the path is not percent-encoded UTF-8"))
            return
        except BadRequest as exc:
            self._error(exc)
            return
        wait = request["deadline_ms"] / 1000 if op == "explain" and "deadline_ms" in request \
            else None
        self._answer(side.call(request, wait), op)

    def _events(self, side: HttpSide) -> None:
        events = self._read_json_body(side)
        if events is None:
            return
        self._answer(side.call({"op": "ingest", "events": events}), "ingest")

    def _answer(self, result, op: str) -> None:
        if not isinstance(result, InterestError):
            self._json(200, result)
        elif op == "forget" and result.code == "bad_request" and "unknown op" in str(result):
            self._error(Unavailable(f"this service does not implement forget yet (it answered: "
                                    f"{result})"), 501)
        else:
            self._error(result)

    def _read_json_body(self, side: HttpSide):
        """The request body as a JSON list, or None once an error has been answered."""
        if self.headers.get("Transfer-Encoding"):
            self._error(BadRequest("send the body with a Content-Length (no chunked encoding)"))
            return None
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._error(BadRequest("a Content-Length header is required"))
            return None
        size = int(length)
        if size > side.max_body:
            if size <= 4 * side.max_body:       # read it, so the client gets the answer
                self._drain(size)
            self._error(BadRequest(f"the body has {size} bytes; the limit is {side.max_body} "
                                   "(limits.max_message_bytes)"))
            return None
        body = self.rfile.read(size)
        if len(body) < size:                   # the client went away (or was timed out)
            self.close_connection = True
            self._body_left = 1
            return None
        self._body_left = 0
        self.server.arm(self.connection, False)
        try:
            events = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            self._error(BadRequest(f"the body is not valid JSON: {str(exc)[:200]}"))
            return None
        if not isinstance(events, list):
            self._error(BadRequest(f"the body must be a JSON list of events, got a JSON "
                                   f"{type(events).__name__}"))
            return None
        return events

    def _drain(self, size: int) -> None:
        left = size
        while left:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                return
            left -= len(chunk)
        self._body_left = 0


# --------------------------------------------------------------- metrics


def _escape_label(value: str) -> str:
    return str(value).replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _number(value) -> str | None:
    if value is None or isinstance(value, (str, dict, list)):
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def metric_name(name: str) -> str:
    """A stats key as a metric name part: anything outside [a-zA-Z0-9_] becomes ``_``."""
    out = re.sub(r"[^a-zA-Z0-9_]", "_", str(name))
    return f"_{out}" if out[:1].isdigit() else out


class MetricFamilies:
    """Samples grouped by family (every family's samples together, HELP and TYPE first)."""

    def __init__(self):
        self._families: dict[str, list] = {}

    def add(self, name: str, kind: str, help_text: str, value, /, **labels) -> None:
        text = _number(value)
        if text is None:
            return
        family = self._families.setdefault(name, [kind, help_text, []])
        if family[0] == kind:           # the same name with another type: the first one wins
            family[2].append((labels, text))

    def render(self) -> str:
        lines = []
        for name, (kind, help_text, samples) in self._families.items():
            lines.append(f"# HELP {name} {_escape_help(help_text)}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, text in samples:
                if labels:
                    inner = ",".join(f'{key}="{_escape_label(value)}"'
                                     for key, value in labels.items())
                    lines.append(f"{name}{{{inner}}} {text}")
                else:
                    lines.append(f"{name} {text}")
        return "\n".join(lines) + "\n"


INFERENCE_COUNTERS = ("tokens", "generations", "generation_s", "completed", "errors",
                      "preemptions", "deadline_drops", "coalesced", "tokens_wasted", "embedded",
                      "unavailable")
INFERENCE_GAUGES = ("queued", "in_flight", "tokens_per_s", "profile_hit_rate", "embed_hit_rate")


def render_metrics(stats: dict, http: dict | None = None, ready: bool | None = None,
                   uptime_s: float | None = None) -> str:
    """``service.stats()`` (and the HTTP side's own counts) in the Prometheus text format."""
    m = MetricFamilies()
    m.add("interest_up", "gauge", "1 while the service answers", 1)
    m.add("interest_ready", "gauge", "1 when /readyz answers 200", ready)
    m.add("interest_uptime_seconds", "gauge", "seconds since the service started", uptime_s)
    m.add("interest_head", "gauge", "position of the last committed entry of the log",
          stats.get("head"))
    m.add("interest_live_actors", "gauge", "user actors in memory", stats.get("live_actors"))
    m.add("interest_activations_total", "counter", "user actors activated",
          stats.get("activations"))
    m.add("interest_passivations_total", "counter", "user actors passivated",
          stats.get("passivations"))
    m.add("interest_catalog_items", "gauge", "items in the catalog", stats.get("catalog_items"))
    m.add("interest_threads", "gauge", "Python threads", stats.get("threads"))
    if stats.get("rss_mb") is not None:
        m.add("interest_rss_bytes", "gauge", "resident memory of the service process",
              int(stats["rss_mb"] * 2**20))
    writer = stats.get("writer") or {}
    m.add("interest_writer_commits_total", "counter", "group commits", writer.get("commits"))
    m.add("interest_writer_events_total", "counter", "events committed", writer.get("events"))
    m.add("interest_writer_failed_commits_total", "counter", "group commits that failed",
          writer.get("failed"))
    m.add("interest_writer_queue", "gauge", "jobs waiting for the writer", writer.get("queue"))
    m.add("interest_writer_pending_events", "gauge", "events waiting to be committed",
          writer.get("pending_events"))
    for name, p in (stats.get("projections") or {}).items():
        m.add("interest_projection_position", "gauge", "log position a projection has applied",
              p.get("position"), projection=name)
        m.add("interest_projection_lag_events", "gauge", "entries a projection is behind the head",
              p.get("lag_events"), projection=name)
        m.add("interest_projection_lag_seconds", "gauge",
              "age of the oldest entry a projection has not applied", p.get("lag_s"),
              projection=name)
    dead = stats.get("dead_letters") or {}
    m.add("interest_dead_letters", "gauge", "entries in the dead-letter table", dead.get("total"))
    for name, n in (dead.get("by_projection") or {}).items():
        m.add("interest_projection_dead_letters_total", "counter",
              "entries a projection could not apply, since start", n, projection=name)
    for op, lat in sorted((stats.get("latency") or {}).items()):
        for quantile, key in (("0.5", "p50_ms"), ("0.99", "p99_ms")):
            if lat.get(key) is not None:
                m.add("interest_request_latency_seconds", "gauge",
                      "request latency percentiles over the last requests, by op",
                      lat[key] / 1000, op=op, quantile=quantile)
        m.add("interest_request_latency_samples", "gauge",
              "requests behind the latency percentiles, by op", lat.get("n"), op=op)
    fusion = ((stats.get("recommender") or {}).get("fusion") or {}).get("segments") or {}
    for segment, weights in fusion.items():
        for source, weight in (weights or {}).items():
            m.add("interest_fusion_weight", "gauge", "source weight used for a user segment",
                  weight, segment=segment, source=source)
    inference = stats.get("inference") or {}
    m.add("interest_inference_available", "gauge", "1 when a language model is loaded",
          bool(inference.get("available")))
    for key in INFERENCE_GAUGES:
        m.add(f"interest_inference_{key}", "gauge", f"inference {key}", inference.get(key))
    for key in INFERENCE_COUNTERS:
        m.add(f"interest_inference_{key}_total", "counter", f"inference {key}",
              inference.get(key))
    for priority, depth in (inference.get("queue_depth") or {}).items():
        m.add("interest_inference_queue_depth", "gauge", "model jobs waiting, by priority",
              depth, priority=priority)
    for name, value in sorted((inference.get("profiles") or {}).items()):
        m.add(f"interest_profiles_{metric_name(name)}_total", "counter",
              f"profile scheduler counter {name}", value)
    if http is not None:
        m.add("interest_http_in_progress", "gauge", "HTTP requests being handled",
              http.get("in_progress"))
        m.add("interest_http_connections", "gauge", "open HTTP connections",
              http.get("connections"))
        for status, n in sorted((http.get("responses") or {}).items()):
            m.add("interest_http_responses_total", "counter", "HTTP responses by status", n,
                  status=str(status))
        m.add("interest_http_refused_requests_total", "counter",
              "HTTP requests refused (too many in progress)", http.get("refused_requests"))
        m.add("interest_http_refused_connections_total", "counter",
              "HTTP connections refused (too many open)", http.get("refused_connections"))
    for name, value in sorted((stats.get("counters") or {}).items()):
        m.add(f"interest_{metric_name(name)}_total", "counter",
              f"service counter {name} (stats.counters)", value)
    return m.render()


# -------------------------------------------------------------- dashboard

CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "connect-src 'self'; img-src data:")

DASHBOARD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>interest: live</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .3em}h2{font-size:1em;margin:1.2em 0 .4em}
#status{color:#666}.bad{color:#b00}
.tiles{display:flex;flex-wrap:wrap;gap:.8em}
.tile{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em .9em;min-width:9em}
.tile b{display:block;font-size:1.5em}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}svg{background:#fff;border:1px solid #ddd}
</style></head><body>
<h1>interest</h1><div id="status">loading...</div>
<div class="tiles">
<div class="tile">ingest<b id="rate">-</b>events/s received</div>
<div class="tile">applied<b id="applied">-</b>events/s</div>
<div class="tile">live actors<b id="actors">-</b></div>
<div class="tile">dead letters<b id="dead">-</b></div>
<div class="tile">head<b id="head">-</b>log position</div>
<div class="tile">memory<b id="rss">-</b>MB resident</div>
<div class="tile">model<b id="model">-</b>jobs queued</div>
</div>
<h2>Ingest rate (events/s, last 2 minutes)</h2><div id="spark"></div>
<h2>Request latency (ms)</h2><table id="latency"></table>
<h2>Projection lag</h2><table id="lags"></table>
<h2>Fusion weights by segment</h2><table id="fusion"></table>
<script>
"use strict";
const token = new URLSearchParams(location.hash.slice(1)).get("token");
const headers = token ? {Authorization: "Bearer " + token} : {};
const history = [];
let last = null;
const esc = s => String(s).replace(/[&<>"']/g, c => "&#" + c.charCodeAt(0) + ";");
const $ = id => document.getElementById(id);
function parse(text) {
  const out = {};
  for (const line of text.split("\\n")) {
    const r = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\\{(.*)\\})?\\s+(\\S+)$/.exec(line);
    if (!r || line[0] === "#") continue;
    const labels = {}, lr = /([a-zA-Z_]\\w*)="((?:[^"\\\\]|\\\\.)*)"/g;
    let x;
    while ((x = lr.exec(r[2] || ""))) labels[x[1]] = x[2].replace(/\\\\(.)/g, (_, c) => c === "n" ? "\\n" : c);
    (out[r[1]] = out[r[1]] || []).push({labels, value: Number(r[3])});
  }
  return out;
}
const one = (m, name) => (m[name] && m[name].length) ? m[name][0].value : 0;
const fmt = v => v >= 100 ? v.toFixed(0) : v >= 1 ? v.toFixed(1) : v.toFixed(3);
function spark(values) {
  const w = 600, h = 80, max = Math.max(1, ...values);
  const pts = values.map((v, i) => (i * w / 59).toFixed(1) + "," + (h - 4 - v / max * (h - 8)).toFixed(1)).join(" ");
  $("spark").innerHTML = '<svg width="' + w + '" height="' + h + '"><polyline fill="none" stroke="#2a6" stroke-width="2" points="' +
    pts + '"/><text x="4" y="14" font-size="11">max ' + fmt(max) + '</text></svg>';
}
function render(m) {
  const now = Date.now() / 1000, received = one(m, "interest_received_total"), applied = one(m, "interest_applied_total");
  if (last) {
    const dt = Math.max(0.001, now - last.t);
    const rate = Math.max(0, (received - last.received) / dt);
    $("rate").textContent = fmt(rate);
    $("applied").textContent = fmt(Math.max(0, (applied - last.applied) / dt));
    history.push(rate); if (history.length > 60) history.shift(); spark(history);
  }
  last = {t: now, received, applied};
  $("actors").textContent = one(m, "interest_live_actors");
  $("dead").textContent = one(m, "interest_dead_letters");
  $("head").textContent = one(m, "interest_head");
  $("rss").textContent = (one(m, "interest_rss_bytes") / 1048576).toFixed(0);
  $("model").textContent = one(m, "interest_inference_available") ? one(m, "interest_inference_queued") : "off";
  const lat = {};
  for (const s of m.interest_request_latency_seconds || []) (lat[s.labels.op] = lat[s.labels.op] || {})[s.labels.quantile] = s.value * 1000;
  $("latency").innerHTML = "<tr><th>op</th><th>p50</th><th>p99</th></tr>" + Object.keys(lat).sort().map(op =>
    "<tr><td>" + esc(op) + "</td><td>" + fmt(lat[op]["0.5"] || 0) + "</td><td>" + fmt(lat[op]["0.99"] || 0) + "</td></tr>").join("");
  const lags = {};
  for (const k of ["position", "lag_events", "lag_seconds"])
    for (const s of m["interest_projection_" + k] || []) (lags[s.labels.projection] = lags[s.labels.projection] || {})[k] = s.value;
  const maxLag = Math.max(1, ...Object.values(lags).map(p => p.lag_events || 0));
  $("lags").innerHTML = "<tr><th>projection</th><th>position</th><th>lag (events)</th><th>lag (s)</th><th></th></tr>" +
    Object.keys(lags).sort().map(p => { const l = lags[p], bar = Math.round(200 * (l.lag_events || 0) / maxLag);
      return "<tr><td>" + esc(p) + "</td><td>" + (l.position || 0) + "</td><td>" + (l.lag_events || 0) + "</td><td>" + fmt(l.lag_seconds || 0) +
        '</td><td><svg width="200" height="10"><rect width="' + bar + '" height="10" fill="#d73"/></svg></td></tr>'; }).join("");
  const fusion = {}, sources = new Set();
  for (const s of m.interest_fusion_weight || []) { (fusion[s.labels.segment] = fusion[s.labels.segment] || {})[s.labels.source] = s.value; sources.add(s.labels.source); }
  const cols = [...sources].sort();
  $("fusion").innerHTML = "<tr><th>segment</th>" + cols.map(c => "<th>" + esc(c) + "</th>").join("") + "</tr>" +
    Object.keys(fusion).map(g => "<tr><td>" + esc(g) + "</td>" + cols.map(c => "<td>" + fmt(fusion[g][c] || 0) + "</td>").join("") + "</tr>").join("");
  $("status").textContent = (one(m, "interest_ready") ? "ready" : "not ready") + ", updated " + new Date().toLocaleTimeString();
  $("status").className = one(m, "interest_ready") ? "" : "bad";
}
async function poll() {
  try {
    const r = await fetch("metrics", {headers, cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status + (r.status === 401 ? " (add #token=... to the address)" : ""));
    render(parse(await r.text()));
  } catch (e) { $("status").textContent = "cannot read metrics: " + e.message; $("status").className = "bad"; }
  setTimeout(poll, 2000);
}
poll();
</script></body></html>
"""
