"""``AsyncClient``: the api client for asyncio applications (zmq.asyncio).

One DEALER socket per client, shared by every coroutine of one event loop:
requests go out in the order they are made (a FIFO lock around the send),
one reader task hands each reply to the call that waits for its ``rid``, so
any number of calls can be in flight at once. Use one client per event loop;
it is not thread-safe. Timeouts, retries and error classes are the sync
``Client``'s (client_errors.py, retry.py).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid

import zmq
import zmq.asyncio

from interest.engine.journal.codec import decode_frame, encode_frame
from interest.engine.serving.client import (MAX_REPLY_BYTES, WATCH_S,
                                            ConnectionWatch, Operations, connect, no_reply,
                                            no_service)
from interest.engine.serving.client_errors import (RequestError, Timeout, error_from_reply,
                                                   normalize_address)
from interest.engine.serving.retry import RetryPolicy


class AsyncClient(Operations):
    """``await client.recommend("196", k=5)``; ``async with AsyncClient(...) as client``.

    ``timeout`` bounds the wait for each reply, ``connect_timeout`` (default
    ``timeout``) the wait for a connection (then ``NoService``). A call that times
    out leaves the socket open: a late reply is dropped, unmatched.
    """

    def __init__(self, api: str = "tcp://127.0.0.1:7101", *, timeout: float = 10.0,
                 connect_timeout: float | None = None, retry: RetryPolicy = RetryPolicy(),
                 context: zmq.asyncio.Context | None = None, server_key=None, client_key=None):
        self.api = normalize_address(api)
        self.timeout = timeout
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        self.retry = retry
        self.secure = server_key is not None
        self.ctx = context or zmq.asyncio.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)
        self.sock.setsockopt(zmq.SNDHWM, 100000)    # unwritable only when not connected
        connect(self.sock, self.api, server_key, client_key)
        self._waiting: dict[str, asyncio.Future] = {}
        self._send_lock: asyncio.Lock | None = None
        self._reader: asyncio.Task | None = None
        self._rids = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:8]
        self._closed = False

    async def call(self, op: str, timeout: float | None = None, retries: int | None = None,
                   **fields) -> dict:
        """Send one request and return its reply map; raise as ``Client.call`` does."""
        policy = self.retry if retries is None else RetryPolicy(
            retries, self.retry.backoff_s, self.retry.max_backoff_s)
        attempt = 0
        while True:
            try:
                reply = await self.raw({"op": op, **fields}, timeout=timeout)
                if not reply.get("ok"):
                    raise error_from_reply(reply)
                return reply
            except (RequestError, Timeout) as exc:
                if not policy.should_retry(op, exc, attempt):
                    raise
                await asyncio.sleep(policy.delay(exc, attempt))
                attempt += 1

    async def raw(self, request: dict, timeout: float | None = None) -> dict:
        """Send a request map once; its reply map as is."""
        if self._closed:
            raise RuntimeError("the client is closed")
        self._start()
        request = dict(request)
        rid = request.setdefault("rid", f"{self._prefix}-{next(self._rids)}")
        future = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        wait = self.timeout if timeout is None else timeout
        try:
            async with self._send_lock:
                if not await self.sock.poll(int(self.connect_timeout * 1000), zmq.POLLOUT):
                    raise no_service(self.api, self.secure)
                await self.sock.send(encode_frame(request))
            return await self._reply(future, wait)
        finally:
            self._waiting.pop(rid, None)

    async def _reply(self, future: asyncio.Future, wait: float) -> dict:
        """The reply, looking at the connection every WATCH_S (ConnectionWatch)."""
        deadline = time.monotonic() + wait
        watch = ConnectionWatch(self.api, self.connect_timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise no_reply(self.api, wait, self.secure)
            done, _ = await asyncio.wait({future}, timeout=min(left, WATCH_S))
            if done:
                return future.result()
            watch.seen(bool(self.sock.getsockopt(zmq.EVENTS) & zmq.POLLOUT))

    def _start(self) -> None:
        if self._reader is None:
            self._send_lock = asyncio.Lock()
            self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        """Hand every reply to the call waiting for its rid; drop the rest."""
        while True:
            frame = await self.sock.recv()
            try:
                reply = decode_frame(frame, MAX_REPLY_BYTES)
            except Exception:  # noqa: BLE001 - a bad frame answers nobody
                continue
            future = self._waiting.get(reply.get("rid")) if isinstance(reply, dict) else None
            if future is not None and not future.done():
                future.set_result(reply)

    async def close(self) -> None:
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, zmq.ZMQError):
                pass
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(RuntimeError("the client was closed"))
        self.sock.close(linger=0)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
