"""Clients of the wire protocol: ``Client`` (api, DEALER) and ``Publisher`` (ingest, PUSH).

Applications import them as ``from interest.client import Client``; the
asyncio client is ``interest.client.AsyncClient`` (engine/serving/aio.py).
Errors are mapped to classes by their wire code (client_errors.py) and
idempotent requests are retried with backoff (retry.py).
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid

import zmq

from interest.engine.journal.codec import decode_frame, encode_frame
from interest.engine.serving.auth import AuthConfigError, secure_client_socket
from interest.engine.serving.client_errors import (BadAddress, NoService, RequestError,
                                                   Timeout, error_from_reply, normalize_address)
from interest.engine.serving.retry import NO_RETRY, RetryPolicy

MAX_REPLY_BYTES = 1 << 30

CURVE_HINT = (" (CurveZMQ: check the server key, and that this client's public "
              "certificate is in the service's clients_dir)")


def connect(sock: zmq.Socket, address: str, server_key=None, client_key=None) -> str:
    """Connect ``sock`` (a CURVE client when both key paths are given); the address used.
    The socket is closed again if anything is wrong."""
    try:
        address = normalize_address(address)
        if (server_key is None) != (client_key is None):
            raise AuthConfigError("server_key and client_key go together (CurveZMQ needs both)")
        if server_key is not None:
            secure_client_socket(sock, server_key, client_key)
        try:
            sock.connect(address)
        except zmq.ZMQError as exc:
            raise BadAddress(f"bad address {address!r}: {exc.strerror}; expected "
                             "tcp://HOST:PORT, ipc://PATH or HOST:PORT") from exc
    except BaseException:
        sock.close(linger=0)
        raise
    return address


WATCH_S = 0.5          # while waiting for a reply, how often the connection is looked at


class ConnectionWatch:
    """While a reply is awaited: a socket with ZMQ_IMMEDIATE is writable only while it is
    connected, so one that stays unwritable for ``connect_timeout`` lost its service (it
    stopped or crashed): ``NoService`` then, instead of waiting out the whole timeout."""

    def __init__(self, address: str, connect_timeout: float):
        self.address, self.connect_timeout = address, connect_timeout
        self.lost_at: float | None = None

    def check(self, sock) -> None:
        self.seen(bool(sock.poll(0, zmq.POLLOUT)))

    def seen(self, connected: bool) -> None:
        now = time.monotonic()
        if connected:
            self.lost_at = None
        elif self.lost_at is None:
            self.lost_at = now
        elif now - self.lost_at >= self.connect_timeout:
            raise NoService(f"the service at {self.address} went away before it answered "
                            "(the request may or may not have been carried out): is "
                            "`interest serve` running?")


def no_service(address: str, secure: bool) -> NoService:
    return NoService(f"no service at {address}: is `interest serve` running?"
                     + (CURVE_HINT if secure else ""))


def no_reply(address: str, wait: float, secure: bool) -> Timeout:
    """The error of a request that got no reply within ``wait`` seconds."""
    return Timeout(f"no reply from {address} within {wait:g} s" + (CURVE_HINT if secure else ""))


class Operations:
    """One method per api op; each returns ``self.call(...)`` (a reply map, or for the
    asyncio client a coroutine of one). Fields left as None are not sent."""

    def call(self, op: str, timeout: float | None = None, retries: int | None = None,
             **fields):
        raise NotImplementedError

    def ping(self, *, timeout=None, retries=None):
        return self.call("ping", timeout, retries)

    def interests(self, user: str, *, fresh=None, deadline_ms=None, timeout=None, retries=None):
        return self.call("interests", timeout, retries,
                         **_given(user=user, fresh=fresh, deadline_ms=deadline_ms))

    def recommend(self, user: str, k=None, *, exclude_seen=None, candidates=None,
                  deadline_ms=None, timeout=None, retries=None):
        return self.call("recommend", timeout, retries,
                         **_given(user=user, k=k, exclude_seen=exclude_seen,
                                  candidates=candidates, deadline_ms=deadline_ms))

    def explain(self, user: str, item=None, *, timeout=None, retries=None):
        return self.call("explain", timeout, retries, **_given(user=user, item=item))

    def ingest(self, events: list, *, timeout=None, retries=None):
        """Acknowledged ingest: the reply (accepted, duplicates, rejected) comes once the
        accepted events are durable and applied. Resent only after ``overloaded``."""
        return self.call("ingest", timeout, retries, events=list(events))

    def flush(self, timeout_ms=None, *, timeout=None, retries=None):
        return self.call("flush", timeout, retries, **_given(timeout_ms=timeout_ms))

    def stats(self, *, timeout=None, retries=None):
        return self.call("stats", timeout, retries)

    def forget(self, user: str, *, timeout=None, retries=None):
        return self.call("forget", timeout, retries, user=user)


def _given(**fields) -> dict:
    return {key: value for key, value in fields.items() if value is not None}


class Client(Operations):
    """A request/reply client of the api socket. Thread-safe: a pool of DEALER sockets,
    each call borrows one (or opens one) for itself, so calls from many threads run at
    once, each on its own socket; a socket is never used by two threads at a time.

    ``timeout`` (seconds) bounds the wait for each reply and ``connect_timeout``
    (default: ``timeout``) the wait for a connection: with nothing listening, a call
    raises ``NoService`` after it. Sockets use ZMQ_IMMEDIATE, so no request is queued
    for a service that is not there; a socket whose reply did not come is closed, so a
    late reply never answers a later call. Idempotent ops are retried (``RetryPolicy``):
    one call takes at most (retries + 1) x (connect_timeout + timeout) plus the backoff.
    With ``server_key`` (the service's public certificate) and ``client_key`` (this
    client's ``NAME.key_secret``) every socket uses CurveZMQ.
    """

    def __init__(self, api: str = "tcp://127.0.0.1:7101", *, timeout: float = 10.0,
                 connect_timeout: float | None = None, retry: RetryPolicy = RetryPolicy(),
                 context: zmq.Context | None = None, server_key=None, client_key=None):
        if (server_key is None) != (client_key is None):
            raise AuthConfigError("server_key and client_key go together (CurveZMQ needs both)")
        self.api = normalize_address(api)
        self.timeout = timeout
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        self.retry = retry
        self.secure = server_key is not None
        self._keys = (server_key, client_key)
        self.ctx = context or zmq.Context.instance()
        self._idle: list[zmq.Socket] = []
        self._lock = threading.Lock()
        self._closed = False
        self._rids = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:8]
        self._give(self._open())        # a bad address or key fails here, not at the first call

    # ---------------------------------------------------------------- requests

    def call(self, op: str, timeout: float | None = None, retries: int | None = None,
             **fields) -> dict:
        """Send one request and return its reply map; raise the error class of its code
        (``RequestError`` subclasses), ``Timeout`` or ``NoService``."""
        policy = self.retry if retries is None else RetryPolicy(
            retries, self.retry.backoff_s, self.retry.max_backoff_s)
        attempt = 0
        while True:
            try:
                reply = self.raw({"op": op, **fields}, timeout=timeout)
                if not reply.get("ok"):
                    raise error_from_reply(reply)
                return reply
            except (RequestError, Timeout) as exc:
                if not policy.should_retry(op, exc, attempt):
                    raise
                time.sleep(policy.delay(exc, attempt))
                attempt += 1

    def raw(self, request: dict | bytes, timeout: float | None = None) -> dict:
        """Send a map (or raw bytes) once and return the reply map as is."""
        rid = None
        if isinstance(request, dict):
            request = dict(request)
            rid = request.setdefault("rid", f"{self._prefix}-{next(self._rids)}")
            request = encode_frame(request)
        wait = self.timeout if timeout is None else timeout
        sock = self._take()
        try:
            self._send(sock, request)
            reply = self._receive(sock, rid, wait)
        except BaseException:
            sock.close(linger=0)        # a late reply or a queued request dies with it
            raise
        self._give(sock)
        return reply

    def _send(self, sock: zmq.Socket, frame: bytes) -> None:
        if not sock.poll(int(self.connect_timeout * 1000), zmq.POLLOUT):
            raise no_service(self.api, self.secure)
        sock.send(frame, zmq.NOBLOCK)

    def _receive(self, sock: zmq.Socket, rid, wait: float) -> dict:
        deadline = time.monotonic() + wait
        watch = ConnectionWatch(self.api, self.connect_timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise no_reply(self.api, wait, self.secure)
            if not sock.poll(int(min(left, WATCH_S) * 1000), zmq.POLLIN):
                watch.check(sock)
                continue
            reply = decode_frame(sock.recv(), MAX_REPLY_BYTES)
            if rid is None or reply.get("rid") == rid:
                return reply

    # ----------------------------------------------------------------- sockets

    def _open(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        connect(sock, self.api, *self._keys)
        return sock

    def _take(self) -> zmq.Socket:
        with self._lock:
            if self._closed:
                raise RuntimeError("the client is closed")
            if self._idle:
                return self._idle.pop()
        return self._open()

    def _give(self, sock: zmq.Socket) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(sock)
                return
        sock.close(linger=0)

    def close(self) -> None:
        """Close the idle sockets now; a socket in use closes when its call returns."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close(linger=0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Publisher:
    """Fire-and-forget events over PUSH (CurveZMQ with ``server_key``/``client_key``).
    Not thread-safe: one per thread. ``send`` blocks while the service does not read
    (backpressure at the high-water mark); with ``timeout`` it raises ``Timeout`` instead."""

    def __init__(self, ingest: str = "tcp://127.0.0.1:7100", *, hwm: int = 100000,
                 context: zmq.Context | None = None, server_key=None, client_key=None):
        self.ctx = context or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, hwm)
        self.sock.setsockopt(zmq.LINGER, 5000)
        self.ingest = connect(self.sock, ingest, server_key, client_key)

    def send(self, events: dict | list, timeout: float | None = None) -> None:
        self.send_raw(encode_frame(events), timeout)

    def send_raw(self, frame: bytes, timeout: float | None = None) -> None:
        if timeout is not None and not self.sock.poll(int(timeout * 1000), zmq.POLLOUT):
            raise Timeout(f"the service at {self.ingest} took no events for {timeout:g} s")
        self.sock.send(frame)

    def close(self, linger_ms: int = 5000) -> None:
        self.sock.close(linger=linger_ms)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["Client", "Publisher", "Operations", "RequestError", "NO_RETRY", "RetryPolicy"]
