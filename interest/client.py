"""The client library: ``from interest.client import Client``.

- ``Client``: request/reply over the api socket, thread-safe (a pool of DEALER
  sockets, one per call in progress); per-call ``timeout``; idempotent ops
  retried with backoff (``RetryPolicy``).
- ``AsyncClient``: the same for asyncio (zmq.asyncio), one socket shared by
  every coroutine of one event loop.
- ``Publisher``: fire-and-forget events over the ingest socket (PUSH).
- Errors by wire code: ``BadRequest``, ``NotFound``, ``DeadlineExceeded``,
  ``Overloaded`` (``retry_after_ms``), ``Unavailable``, ``Forbidden``,
  ``Internal``, all ``RequestError``; no answer: ``Timeout``, and ``NoService``
  when nothing listens at the address.

CurveZMQ: pass ``server_key=`` (the service's public ``.key``) and
``client_key=`` (this client's ``.key_secret``) to any of them.
"""
from interest.engine.serving.aio import AsyncClient
from interest.engine.serving.client import Client, Publisher
from interest.engine.serving.client_errors import (BadAddress, BadRequest, DeadlineExceeded,
                                                   Forbidden, Internal, NoService, NotFound,
                                                   Overloaded, RequestError, Timeout,
                                                   Unavailable)
from interest.engine.serving.retry import IDEMPOTENT, NO_RETRY, RetryPolicy

__all__ = ["Client", "AsyncClient", "Publisher", "RetryPolicy", "NO_RETRY", "IDEMPOTENT",
           "RequestError", "BadRequest", "NotFound", "DeadlineExceeded", "Overloaded",
           "Unavailable", "Forbidden", "Internal", "Timeout", "NoService", "BadAddress"]
