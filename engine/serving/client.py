"""Clients of the wire protocol: ``Client`` (api, DEALER) and ``Publisher`` (ingest, PUSH)."""

from __future__ import annotations

import itertools
import uuid

import zmq

from interest.engine.journal.codec import decode_frame, encode_frame
from interest.engine.errors import DeadlineExceeded, InterestError
from interest.engine.serving.auth import AuthConfigError, secure_client_socket

_ERRORS = {cls.code: cls for cls in InterestError.__subclasses__()}


_CURVE_HINT = (" (CurveZMQ: check the server key, and that this client's public "
               "certificate is in the service's clients_dir)")


class RequestError(InterestError):
    """The service answered ``ok: false``; ``code`` is the wire error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def _connect(sock: zmq.Socket, address: str, server_key, client_key) -> None:
    """Connect ``sock``, as a CURVE client when both key paths are given."""
    if (server_key is None) != (client_key is None):
        sock.close(linger=0)
        raise AuthConfigError("server_key and client_key go together (CurveZMQ needs both)")
    if server_key is not None:
        try:
            secure_client_socket(sock, server_key, client_key)
        except AuthConfigError:
            sock.close(linger=0)
            raise
    sock.connect(address)


class Client:
    """A request/reply client over a DEALER socket. Not thread-safe: one per thread.

    With ``server_key`` (the service's public certificate) and ``client_key``
    (this client's ``NAME.key_secret``) the socket uses CurveZMQ.
    """

    def __init__(self, api: str = "tcp://127.0.0.1:7101", *, timeout: float = 10.0,
                 context: zmq.Context | None = None, server_key=None, client_key=None):
        self.ctx = context or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        _connect(self.sock, api, server_key, client_key)
        self.secure = server_key is not None
        self.timeout = timeout
        self._rids = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:8]

    def call(self, op: str, timeout: float | None = None, **fields) -> dict:
        """Send one request and wait for its reply; raise RequestError if not ok."""
        reply = self.raw({"op": op, **fields}, timeout=timeout)
        if not reply.get("ok"):
            error = reply.get("error") or {}
            raise RequestError(error.get("code", "internal"), error.get("message", ""))
        return reply

    def raw(self, request: dict | bytes, timeout: float | None = None) -> dict:
        """Send a map (or raw bytes) and return the reply map as is."""
        rid = None
        if isinstance(request, dict):
            rid = request.setdefault("rid", f"{self._prefix}-{next(self._rids)}")
            request = encode_frame(request)
        self.sock.send(request)
        wait_ms = int((self.timeout if timeout is None else timeout) * 1000)
        while True:
            if not self.sock.poll(wait_ms, zmq.POLLIN):
                raise DeadlineExceeded(f"no reply from the service within {wait_ms} ms"
                                       + (_CURVE_HINT if self.secure else ""))
            reply = decode_frame(self.sock.recv(), 1 << 30)
            if rid is None or reply.get("rid") == rid:
                return reply

    def close(self) -> None:
        self.sock.close(linger=0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Publisher:
    """Fire-and-forget events over PUSH (CurveZMQ with ``server_key``/``client_key``)."""

    def __init__(self, ingest: str = "tcp://127.0.0.1:7100", *, hwm: int = 100000,
                 context: zmq.Context | None = None, server_key=None, client_key=None):
        self.ctx = context or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, hwm)
        self.sock.setsockopt(zmq.LINGER, 5000)
        _connect(self.sock, ingest, server_key, client_key)

    def send(self, events: dict | list) -> None:
        self.sock.send(encode_frame(events))

    def send_raw(self, frame: bytes) -> None:
        self.sock.send(frame)

    def close(self, linger_ms: int = 5000) -> None:
        self.sock.close(linger=linger_ms)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
