"""The api gateway: one thread owns the api ``ROUTER`` of PROTOCOL.md.

Each request is one msgpack map; it is parsed once into a typed request
(engine.serving.requests), admitted or answered ``overloaded``, and handed to
the service. `interests` and `recommend` are answered on this thread (the
read path takes no lock the writer, the actors or the learner hold); replies
produced on other threads (`ingest`, `flush`, `explain`, fresh `interests`)
come back through an inproc ``PULL`` (each producing thread has its own
inproc ``PUSH``: sockets are never shared between threads), so only this
thread touches the ROUTER.

Admission control: at most ``limits.max_inflight_requests`` requests and
``limits.max_inflight_bytes`` request bytes waiting for an answer; beyond
them a request is answered ``overloaded`` with ``retry_after_ms``. A request
with ``deadline_ms`` (``timeout_ms`` for `flush`) is answered
``deadline_exceeded`` when it runs out. Any exception while handling one
request is answered ``internal``; if the loop itself cannot go on,
``on_fatal`` is called (``interest serve`` exits non-zero so a supervisor
restarts it).

The ingest socket has its own thread (engine.serving.ingest).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time

import zmq

from interest.engine.errors import BadRequest, DeadlineExceeded, InterestError, Overloaded
from interest.engine.journal.codec import decode_frame, encode_frame
from interest.engine.logs import RateLimitedLog
from interest.engine.serving.loops import SocketThread, drain_requests
from interest.engine.serving.metrics import op_key
from interest.engine.serving.requests import Flush, Interests, Recommend, Request, parse_request

logger = logging.getLogger(__name__)

_OUTBOX_IDS = itertools.count()


class Reply:
    """Answers one api request exactly once, from any thread."""

    __slots__ = ("gateway", "envelope", "rid", "op", "t0", "size", "_lock", "sent")

    def __init__(self, gateway: "Gateway", envelope: list, rid, op: str, size: int = 0):
        self.gateway = gateway
        self.envelope = envelope
        self.rid = rid
        self.op = op
        self.size = size
        self.t0 = time.perf_counter()
        self._lock = threading.Lock()
        self.sent = False

    def __call__(self, result) -> None:
        with self._lock:
            if self.sent:
                return
            self.sent = True
        metrics = self.gateway.service.metrics
        if isinstance(result, InterestError):
            body = {"rid": self.rid, "ok": False, "error": result.to_wire()}
            metrics.add(f"error.{result.code}")
        else:
            body = {"rid": self.rid, "ok": True, **result}
        try:
            payload = encode_frame(body)
        except (TypeError, ValueError, OverflowError) as exc:
            error = {"code": "internal", "message": f"the reply cannot be encoded: {exc}"}
            try:
                payload = encode_frame({"rid": self.rid, "ok": False, "error": error})
            except (TypeError, ValueError, OverflowError):      # the rid itself cannot be
                payload = encode_frame({"rid": None, "ok": False, "error": error})
        metrics.latency(self.op, (time.perf_counter() - self.t0) * 1000)
        self.gateway.finished(self)
        self.gateway.send(self.envelope + [payload])


class Gateway(SocketThread):
    name = "gateway"

    def __init__(self, service, api: str, *, context: zmq.Context, secure=None, authorize=None,
                 on_fatal=None):
        self.service = service
        self.limits = service.limits
        self.ctx = context
        self.api_addr = api
        self.secure = secure              # callable(socket) making it a CURVE server, or None
        self.authorize = authorize        # callable(frame, request) raising Forbidden, or None
        self.on_fatal = on_fatal
        self.outbox_addr = f"inproc://replies-{id(self)}-{next(_OUTBOX_IDS)}"
        self.warn = RateLimitedLog(logger)
        super().__init__()
        self._local = threading.local()
        self._push_sockets: list[zmq.Socket] = []
        self._push_lock = threading.Lock()
        self._deadlines: list = []
        self._inflight = 0
        self._inflight_bytes = 0
        self._count_lock = threading.Lock()
        self.bound = ""

    # ---------------------------------------------------------- lifecycle

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        with self._push_lock:
            for sock in self._push_sockets:
                sock.close(linger=0)
            self._push_sockets.clear()

    # -------------------------------------------------------- cross-thread

    def send(self, frames: list) -> None:
        """Queue a reply from any thread; the gateway thread forwards it."""
        if self._stop.is_set():
            return                        # the socket is (being) closed: the reply is dropped
        if threading.current_thread() is self._thread:
            self._deliver(frames)
            return
        sock = getattr(self._local, "push", None)
        if sock is None:
            sock = self.ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.outbox_addr)
            self._local.push = sock
            with self._push_lock:
                self._push_sockets.append(sock)
        try:
            sock.send_multipart(frames)
        except zmq.ZMQError:
            pass                          # shutting down: the context is going away

    def finished(self, reply: Reply) -> None:
        with self._count_lock:
            self._inflight -= 1
            self._inflight_bytes -= reply.size

    # --------------------------------------------------------------- loop

    def _bind(self) -> None:
        self._api = self.ctx.socket(zmq.ROUTER)
        self._outbox = self.ctx.socket(zmq.PULL)
        for sock in (self._api, self._outbox):
            sock.setsockopt(zmq.LINGER, 0)
        self._api.setsockopt(zmq.ROUTER_MANDATORY, 1)      # full or gone: told, not silent
        self._api.setsockopt(zmq.SNDHWM, self.limits["max_inflight_requests"])
        # up to 4x the limit is read and answered `bad_request`; beyond, ZeroMQ drops the peer
        self._api.setsockopt(zmq.MAXMSGSIZE, 4 * self.limits["max_message_bytes"])
        if self.secure is not None:
            self.secure(self._api)
        self._api.bind(self.api_addr)
        self._outbox.bind(self.outbox_addr)
        self.bound = self._api.getsockopt_string(zmq.LAST_ENDPOINT)

    def _loop(self) -> None:
        """On the socket thread, until stopped."""
        poller = zmq.Poller()
        for sock in (self._outbox, self._api):
            poller.register(sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(self._poll_timeout_ms()))
                if self._outbox in ready:
                    self._drain_outbox()
                if self._api in ready:
                    self._drain_api()
                self._expire()
        except Exception as exc:  # noqa: BLE001 - the loop cannot go on: let a supervisor restart
            logger.exception("the api gateway failed")
            if self.on_fatal is not None:
                self.on_fatal(exc)
        finally:
            for sock in (self._api, self._outbox):
                sock.close(linger=0)

    def _poll_timeout_ms(self) -> int:
        if not self._deadlines:
            return 50
        return max(0, min(50, int((self._deadlines[0][0] - time.monotonic()) * 1000) + 1))

    def _drain_outbox(self, budget: int = 1000) -> None:
        for _ in range(budget):
            try:
                frames = self._outbox.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._deliver(frames)

    def _deliver(self, frames: list) -> None:
        """Gateway thread: send one reply. A client that does not read its replies can
        have ``max_inflight_requests`` of them queued; past that (or once it is gone) a
        reply is dropped and counted, never blocking the gateway or growing memory."""
        try:
            self._api.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            self.service.metrics.add("replies_dropped")
            self.warn.warning("api: a client is not reading its replies; a reply was dropped")
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.service.metrics.add("replies_undeliverable")    # the client has gone

    def _drain_api(self) -> None:
        drain_requests(self._api, self._request, self.service.metrics, logger)

    def _request(self, frames: list) -> None:
        envelope, frame = [f.bytes for f in frames[:-1]], frames[-1]
        try:
            obj = decode_frame(frame.bytes, self.limits["max_message_bytes"])
        except BadRequest as exc:
            self._reject(envelope, None, "invalid", exc)
            return
        try:
            request = parse_request(obj, self.limits, self.service.config["recommend"]["default_k"])
        except Exception as exc:  # noqa: BLE001 - whatever the request holds, it gets an answer
            is_map = isinstance(obj, dict)
            rid = obj.get("rid") if is_map else None
            error = exc if isinstance(exc, BadRequest) else \
                BadRequest(f"the request cannot be parsed ({type(exc).__name__})")
            self._reject(envelope, rid,
                         op_key(obj.get("op")) if is_map else "invalid", error)
            return
        reply = self._admit(envelope, request.rid, request.op, len(frame))
        try:
            if self.authorize is not None:
                self.authorize(frame, request)
            self._check_capacity(reply)
            self._watch_deadline(request, reply)
            self.service.handle(request, reply)
        except InterestError as exc:
            reply(exc)
        except Exception as exc:  # noqa: BLE001 - one request never stops the gateway
            logger.exception("unexpected failure answering %s", request.op)
            reply(InterestError(f"{type(exc).__name__}: {exc}"))

    def _reject(self, envelope, rid, op: str, error: BadRequest) -> None:
        self.service.metrics.add("rejected_requests")
        self._admit(envelope, rid, op, 0)(error)

    def _admit(self, envelope, rid, op: str, size: int) -> Reply:
        with self._count_lock:
            self._inflight += 1
            self._inflight_bytes += size
        return Reply(self, envelope, rid, op, size)

    def _check_capacity(self, reply: Reply) -> None:
        if self._inflight > self.limits["max_inflight_requests"] \
                or self._inflight_bytes > self.limits["max_inflight_bytes"]:
            raise Overloaded(f"{self._inflight} requests ({self._inflight_bytes} bytes) are "
                             "waiting for an answer; retry later",
                             retry_after_ms=self.service.retry_after_ms())

    def _watch_deadline(self, request: Request, reply: Reply) -> None:
        if isinstance(request, (Recommend, Interests)):
            return      # answered on this thread now, or (fresh) by its own deadline, llm.stale set
        ms = request.timeout_ms if isinstance(request, Flush) else getattr(request, "deadline_ms", None)
        if ms is None:
            return
        heapq.heappush(self._deadlines, (time.monotonic() + ms / 1000, id(reply), reply))

    def _expire(self) -> None:
        if len(self._deadlines) > 4 * max(256, self._inflight):     # drop answered ones
            self._deadlines = [d for d in self._deadlines if not d[2].sent]
            heapq.heapify(self._deadlines)
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, reply = heapq.heappop(self._deadlines)
            if not reply.sent:
                reply(DeadlineExceeded(f"no answer within the request's deadline ({reply.op})"))

