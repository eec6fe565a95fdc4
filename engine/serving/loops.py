"""A thread that owns ZeroMQ sockets: bound on its own thread, started and stopped in one way.

Subclasses implement ``_bind()`` (create and bind the sockets; runs on the
thread) and ``_loop()`` (until ``self._stop`` is set; runs on the thread);
``start()`` waits until the sockets are bound and raises what binding
raised (an address in use, a bad address), so a service never runs half-bound.
"""

from __future__ import annotations

import logging
import threading

import zmq


class SocketThread:
    name = "sockets"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def start(self, timeout: float = 10.0):
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise self._error or RuntimeError(f"the {self.name} loop did not start")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self._bind()
        except Exception as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop()

    def _bind(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        raise NotImplementedError


def drain_requests(sock: zmq.Socket, handle, metrics, log: logging.Logger,
                   budget: int = 256) -> None:
    """Hand up to ``budget`` waiting messages of ``sock`` to ``handle`` without blocking.
    One that escapes ``handle`` is counted (``internal_errors``) and logged: one request
    never stops a socket loop."""
    for _ in range(budget):
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        try:
            handle(frames)
        except Exception:  # noqa: BLE001 - one request never stops the loop
            metrics.add("internal_errors")
            log.exception("a request escaped handling; it was not answered")
