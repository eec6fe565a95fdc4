"""The HTTP side port's routes: a Starlette application over an ``HttpSide``.

Every ``/v1`` request becomes the api request map the ZeroMQ socket would
carry and goes through ``side.call`` (``service.call``), so validation and
messages are the api socket's. Routing matches the path as sent, still
percent-encoded, so a ``%2F`` inside ``{user}`` stays inside the user id; the
endpoint decodes it. Every answer, errors included, is JSON (the dashboard
and ``/metrics`` excepted); see ``engine/serving/http.py`` for the routes and
the statuses.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, unquote

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from interest.engine.errors import BadRequest, Forbidden, InterestError, NotFound, Unavailable
from interest.engine.serving.auth import allowed, forbidden
from interest.engine.serving.dashboard import CSP, DASHBOARD

logger = logging.getLogger("interest.engine.serving.http")

STATUS = {"bad_request": 400, "forbidden": 403, "not_found": 404, "overloaded": 429,
          "unavailable": 503, "deadline_exceeded": 504, "internal": 500}
MAX_QUERY_FIELDS = 16
MAX_HEADERS = 100
MAX_TARGET_BYTES = 8192            # path and query string
DRAIN_FACTOR = 4                   # bodies up to this many times the limit are read, then refused
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
QUERY_KEYS = {"interests": ("fresh", "deadline_ms"),
              "recommend": ("k", "exclude_seen", "deadline_ms"),
              "explain": ("item", "deadline_ms")}
NO_STORE = {"Cache-Control": "no-store"}


class HttpError(InterestError):
    """An error with an HTTP status of its own (401, 405, 413-like refusals, 501...),
    headers, and whether the connection must close (a body left unread)."""

    def __init__(self, cause: InterestError, status: int, headers: dict | None = None,
                 close: bool = False):
        super().__init__(str(cause))
        self.cause, self.status, self.headers, self.close = cause, status, headers or {}, close
        self.code = cause.code

    def to_wire(self) -> dict:
        return self.cause.to_wire()


# ------------------------------------------------------------------ answers


def _json_default(obj):
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if hasattr(obj, "item"):           # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def json_response(status: int, obj: Any, headers: dict | None = None) -> Response:
    try:
        body = json.dumps(obj, default=_json_default, allow_nan=False, ensure_ascii=False,
                          separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as exc:
        status, headers = 500, None
        body = json.dumps({"error": {"code": "internal", "message":
                                     f"the reply cannot be encoded as JSON: {exc}"}}).encode()
    return Response(body, status, {**NO_STORE, **(headers or {})}, "application/json")


def error_response(error: InterestError) -> Response:
    """``{"error": {"code", "message", ...}}`` with the code's status; ``Retry-After``
    (whole seconds) on 429/503 when the error carries ``retry_after_ms``."""
    wire = error.to_wire()
    if isinstance(error, HttpError):
        status, headers = error.status, dict(error.headers)
        if error.close:
            headers["Connection"] = "close"
    else:
        status, headers = STATUS.get(error.code, 500), {}
    retry_ms = wire.get("retry_after_ms")
    if status in (429, 503) and retry_ms is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_ms / 1000)))
    return json_response(status, {"error": wire}, headers)


# ---------------------------------------------------------------- requests


def _query(text: str, op: str, limits: dict) -> dict:
    """The request keys of a user route's query string; BadRequest on anything unknown."""
    try:
        fields = parse_qs(text, keep_blank_values=True, errors="strict",
                          max_num_fields=MAX_QUERY_FIELDS)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the query string cannot be parsed: {exc}") from None
    known = QUERY_KEYS[op]
    out: dict[str, Any] = {}
    for key, values in fields.items():
        if key not in known:
            raise BadRequest(f"unknown query parameter {key[:40]!r}; expected "
                             f"{', '.join(known)}")
        if len(values) != 1:
            raise BadRequest(f"query parameter {key!r} is given {len(values)} times")
        out[key] = _query_value(key, values[0], limits)
    return out


def _query_value(key: str, value: str, limits: dict) -> Any:
    if key == "k":
        if not re.fullmatch(r"[0-9]{1,9}", value) or not 1 <= int(value) <= limits["max_k"]:
            raise BadRequest(f"query parameter 'k' must be an integer from 1 to "
                             f"{limits['max_k']}, got {value[:40]!r}")
        return int(value)
    if key in ("exclude_seen", "fresh"):
        if value.lower() not in ("true", "false"):
            raise BadRequest(f"query parameter {key!r} must be true or false, "
                             f"got {value[:40]!r}")
        return value.lower() == "true"
    if key == "deadline_ms":
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number <= 0:
            raise BadRequest("query parameter 'deadline_ms' must be a positive number of "
                             f"milliseconds, got {value[:40]!r}")
        return number
    return value


def _user(request: Request) -> str:
    try:
        return unquote(request.path_params["user"], errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("the user id in the path is not percent-encoded UTF-8") from None


def _query_text(request: Request) -> str:
    try:
        return request.scope.get("query_string", b"").decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the query string is not UTF-8") from None


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


async def _body(request: Request, limit: int) -> bytes:
    """The whole body. One over ``limit`` bytes is refused and the connection closed;
    up to ``DRAIN_FACTOR`` times the limit it is read and dropped first (a client that
    sends its whole body before reading then gets the answer, not a reset)."""
    length = request.headers.get("content-length")
    declared = int(length) if length is not None else None
    if declared is not None and declared > limit:
        too_big = HttpError(BadRequest(f"the body has {declared} bytes; the limit is {limit} "
                                       "(limits.max_message_bytes)"), 400, close=True)
    else:
        too_big = HttpError(BadRequest(f"the body is over {limit} bytes, the limit "
                                       "(limits.max_message_bytes)"), 400, close=True)
    if declared is not None and declared > DRAIN_FACTOR * limit:
        raise too_big
    body, size = bytearray(), 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            body += chunk
        elif size > DRAIN_FACTOR * limit:
            break
    if size > limit:
        raise too_big
    return bytes(body)


def _events(body: bytes) -> list:
    try:
        events = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest(f"the body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(events, list):
        raise BadRequest(f"the body must be a JSON list of events, got a JSON "
                         f"{type(events).__name__}")
    return events


# ------------------------------------------------------------------ routes


class Unauthenticated(Forbidden):
    """No ``Authorization: Bearer TOKEN`` header, or an unknown token (401)."""


def _authorize(side, request: Request, op: str) -> None:
    if side.tokens is None:
        return
    role = side.role_of(request.headers.get("authorization"))
    if role is None:
        raise HttpError(Unauthenticated("a valid 'Authorization: Bearer TOKEN' header is "
                                        "required"), 401,
                        {"WWW-Authenticate": 'Bearer realm="interest"'})
    if not allowed(role, op):
        raise forbidden(role, op)


Handler = Callable[[Any, Request], Awaitable[Response]]


def _endpoint(side, op: str | None, handler: Handler):
    """A Starlette endpoint: authorization for ``op`` (None: open), then ``handler``;
    every error becomes its JSON answer, and nothing escapes to the server."""
    async def run(request: Request) -> Response:
        try:
            if op is not None:
                _authorize(side, request, op)
            return await handler(side, request)
        except InterestError as exc:
            return error_response(exc)
        except ClientDisconnect:
            return Response(status_code=400)          # nobody is left to read it
        except Exception as exc:  # noqa: BLE001 - one request never stops the port
            logger.exception("unexpected failure answering %s %s", request.method,
                             request.url.path)
            return error_response(InterestError(f"{type(exc).__name__}: {exc}"))
    return run


async def _healthz(side, _request: Request) -> Response:
    return json_response(200, {"status": "ok", "uptime_s": time.time() - side.service.started_at})


async def _readyz(side, _request: Request) -> Response:
    ready, body = side.readiness()
    return json_response(200 if ready else 503, body)


async def _dashboard(_side, _request: Request) -> Response:
    return Response(DASHBOARD, 200, {**NO_STORE, "Content-Security-Policy": CSP},
                    "text/html; charset=utf-8")


async def _metrics(side, request: Request) -> Response:
    body, content_type = await side.metrics_text(request.headers.get("accept", ""))
    return Response(body, 200, NO_STORE, content_type)


async def _ingest(side, request: Request) -> Response:
    events = _events(await _body(request, side.max_body))
    return _answer(await side.call({"op": "ingest", "events": events}))


def _user_op(op: str) -> Handler:
    async def handle(side, request: Request) -> Response:
        user = _user(request)
        fields = _query(_query_text(request), op, side.service.limits)
        wait = fields["deadline_ms"] / 1000 if op == "explain" and "deadline_ms" in fields \
            else None
        return _answer(await side.call({"op": op, "user": user, **fields}, wait))
    return handle


async def _forget(side, request: Request) -> Response:
    user = _user(request)
    if request.scope.get("query_string"):
        raise BadRequest("DELETE /v1/users/{user} takes no query parameters")
    result = await side.call({"op": "forget", "user": user})
    if isinstance(result, InterestError) and result.code == "bad_request" \
            and ("unknown op" in str(result) or "is not handled" in str(result)):
        return error_response(HttpError(Unavailable(
            f"this service does not implement forget yet (it answered: {result})"), 501))
    return _answer(result)


def _answer(result) -> Response:
    return error_response(result) if isinstance(result, InterestError) \
        else json_response(200, result)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own 404 (no route) and 405 (a route, another method) as JSON."""
    path = request.scope.get("path", "")[:200]
    if exc.status_code == 405:
        methods = sorted(m.strip() for m in (exc.headers or {}).get("Allow", "").split(","))
        return error_response(HttpError(BadRequest(
            f"{request.method} is not allowed on {path}; use "
            f"{', '.join(m for m in methods if m != 'HEAD')}"), 405,
            {"Allow": ", ".join(methods)}))
    if exc.status_code == 404:
        return error_response(NotFound(f"no route {request.method} {path}"))
    return error_response(HttpError(BadRequest(str(exc.detail)), exc.status_code))


def routes(side) -> Starlette:
    """The application: the routes of PROTOCOL.md, "HTTP side port"."""
    def route(path: str, methods: list[str], op: str | None, handler: Handler) -> Route:
        return Route(path, _endpoint(side, op, handler), methods=methods)
    return Starlette(routes=[
        route("/healthz", ["GET"], None, _healthz),
        route("/readyz", ["GET"], None, _readyz),
        route("/dashboard", ["GET"], None, _dashboard),
        route("/metrics", ["GET"], "stats", _metrics),
        route("/v1/events", ["POST"], "ingest", _ingest),
        route("/v1/users/{user}/interests", ["GET"], "interests", _user_op("interests")),
        route("/v1/users/{user}/recommendations", ["GET"], "recommend", _user_op("recommend")),
        route("/v1/users/{user}/explain", ["GET"], "explain", _user_op("explain")),
        route("/v1/users/{user}", ["DELETE"], "forget", _forget),
    ], exception_handlers={HTTPException: _http_error})


# ------------------------------------------------------------------ the gate


class Gate:
    """Pure ASGI middleware in front of the routes: routing on the path as sent,
    request admission (``max_requests``; ``/healthz`` is never refused), the refusals
    that need no route (unknown methods, too many headers) and counting statuses."""

    def __init__(self, app, side):
        self.app, self.side = app, side

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        side = self.side
        raw = scope.get("raw_path") or scope["path"].encode("utf-8")
        scope = {**scope, "path": raw.decode("latin-1")}

        async def counted(message) -> None:
            if message["type"] == "http.response.start":
                side.count(message["status"])
            await send(message)

        refusal = self._refusal(scope)
        if refusal is not None:
            await error_response(refusal)(scope, receive, counted)
            return
        if scope["path"] == "/healthz":
            await self.app(scope, receive, counted)
            return
        if not side.admit():
            await error_response(HttpError(Unavailable(
                f"more than {side.max_requests} HTTP requests in progress; retry later"), 503,
                {"Retry-After": "1"}))(scope, receive, counted)
            return
        try:
            await self.app(scope, receive, counted)
        finally:
            side.release()

    def _refusal(self, scope) -> HttpError | None:
        if scope["method"] not in METHODS:
            return HttpError(BadRequest(f"method {scope['method'][:20]!r} is not implemented"),
                             501, close=True)
        if len(scope["path"]) + len(scope.get("query_string", b"")) > MAX_TARGET_BYTES:
            return HttpError(BadRequest(f"the request target is over {MAX_TARGET_BYTES} bytes"),
                             414, close=True)
        if len(scope["headers"]) > MAX_HEADERS:
            return HttpError(BadRequest(f"more than {MAX_HEADERS} header fields"), 431,
                             close=True)
        if self.side.stopping.is_set() and scope["path"] != "/healthz":
            return HttpError(Unavailable("the HTTP side port is stopping"), 503, close=True)
        return None
