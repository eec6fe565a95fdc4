"""The ZeroMQ gateway: one thread owns the sockets of PROTOCOL.md.

* ingest ``PULL`` (and optional ``SUB`` feeds): one event map or an array of
  them per frame; bad frames and bad events are counted and logged, never fatal.
* api ``ROUTER``: one msgpack map per request, ``{"rid", "ok", ...}`` back.
  Replies produced on other threads come back through an inproc ``PULL``
  (each producing thread has its own inproc ``PUSH``: sockets are never
  shared between threads), so only this thread touches the ROUTER.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time

import zmq

from engine.journal.codec import decode_frame, encode_frame
from engine.errors import BadRequest, DeadlineExceeded, InterestError
from engine.serving.service import Service, parse_batch

logger = logging.getLogger(__name__)

_OUTBOX_IDS = itertools.count()


class Reply:
    """Answers one api request exactly once, from any thread."""

    __slots__ = ("gateway", "envelope", "rid", "op", "t0", "_lock", "sent")

    def __init__(self, gateway: "Gateway", envelope: list, rid, op: str):
        self.gateway = gateway
        self.envelope = envelope
        self.rid = rid
        self.op = op
        self.t0 = time.perf_counter()
        self._lock = threading.Lock()
        self.sent = False

    def __call__(self, result) -> None:
        with self._lock:
            if self.sent:
                return
            self.sent = True
        if isinstance(result, InterestError):
            body = {"rid": self.rid, "ok": False, "error": result.to_wire()}
            self.gateway.service.counters[f"error.{result.code}"] += 1
        else:
            body = {"rid": self.rid, "ok": True, **result}
        try:
            payload = encode_frame(body)
        except (TypeError, ValueError) as exc:
            payload = encode_frame({"rid": self.rid, "ok": False,
                                    "error": {"code": "internal", "message": str(exc)}})
        self.gateway.service.latencies.add(self.op, (time.perf_counter() - self.t0) * 1000)
        self.gateway.send(self.envelope + [payload])


class Gateway:
    def __init__(self, service: Service, ingest: str, api: str, feeds=(), *,
                 context: zmq.Context | None = None):
        self.service = service
        self.limits = service.limits
        self.job_events = service.config["writer"]["job_events"]
        self.ctx = context or zmq.Context.instance()
        self.ingest_addr, self.api_addr, self.feeds = ingest, api, list(feeds)
        self.outbox_addr = f"inproc://replies-{id(self)}-{next(_OUTBOX_IDS)}"
        self._local = threading.local()
        self._push_sockets: list[zmq.Socket] = []
        self._push_lock = threading.Lock()
        self._deadlines: list = []
        self._stop = threading.Event()
        self._paused = False
        self._ready = threading.Event()
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="gateway", daemon=True)
        self.bound: dict[str, str] = {}

    # ---------------------------------------------------------- lifecycle

    def start(self, timeout: float = 10.0) -> "Gateway":
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"gateway failed to start: {self._error}")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        with self._push_lock:
            for sock in self._push_sockets:
                sock.close(linger=0)
            self._push_sockets.clear()

    # -------------------------------------------------------- cross-thread

    def send(self, frames: list) -> None:
        """Queue a reply from any thread; the gateway thread forwards it."""
        if threading.current_thread() is self._thread:
            self._api.send_multipart(frames)
            return
        sock = getattr(self._local, "push", None)
        if sock is None:
            sock = self.ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.outbox_addr)
            self._local.push = sock
            with self._push_lock:
                self._push_sockets.append(sock)
        sock.send_multipart(frames)

    # --------------------------------------------------------------- loop

    def _bind(self):
        self._ingest = self.ctx.socket(zmq.PULL)
        self._api = self.ctx.socket(zmq.ROUTER)
        self._outbox = self.ctx.socket(zmq.PULL)
        for sock in (self._ingest, self._api, self._outbox):
            sock.setsockopt(zmq.LINGER, 0)
        self._ingest.setsockopt(zmq.MAXMSGSIZE, self.limits["max_message_bytes"] * 4)
        self._api.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self._ingest.bind(self.ingest_addr)
        self._api.bind(self.api_addr)
        self._outbox.bind(self.outbox_addr)
        self.bound = {"ingest": self._ingest.getsockopt_string(zmq.LAST_ENDPOINT),
                      "api": self._api.getsockopt_string(zmq.LAST_ENDPOINT)}
        self._subs = []
        for feed in self.feeds:
            sub = self.ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(feed)
            self._subs.append(sub)

    def _run(self) -> None:
        try:
            self._bind()
        except zmq.ZMQError as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        poller, paused = zmq.Poller(), zmq.Poller()
        for sock in (self._outbox, self._api, self._ingest, *self._subs):
            poller.register(sock, zmq.POLLIN)
        for sock in (self._outbox, self._api):
            paused.register(sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                # backpressure: while the actors are behind, ingest sockets are not read, so
                # events wait in ZeroMQ's queues and producers block at their high-water mark
                self._paused = self.service.busy()
                if self._paused:
                    self.service.counters["ingest_paused"] += 1
                ready = dict((paused if self._paused else poller).poll(self._poll_timeout_ms()))
                if self._outbox in ready:
                    self._drain_outbox()
                if self._api in ready:
                    self._drain_api()
                for sock in (self._ingest, *self._subs):
                    if sock in ready:
                        self._drain_ingest(sock)
                self._expire()
        finally:
            for sock in (self._ingest, self._api, self._outbox, *self._subs):
                sock.close(linger=0)

    def _poll_timeout_ms(self) -> int:
        if self._paused:
            return 1
        if not self._deadlines:
            return 50
        return max(0, min(50, int((self._deadlines[0][0] - time.monotonic()) * 1000) + 1))

    def _drain_outbox(self, budget: int = 1000) -> None:
        for _ in range(budget):
            try:
                frames = self._outbox.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._api.send_multipart(frames)

    def _drain_ingest(self, sock, budget: int = 512) -> None:
        events = []
        for _ in range(budget):
            try:
                frame = sock.recv(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                break
            events.extend(self._ingest_frame(frame))
            if len(events) >= self.job_events:
                break
        if events:
            self.service.ingest_events(events)

    def _ingest_frame(self, frame: bytes) -> list:
        counters = self.service.counters
        counters["ingest_messages"] += 1
        try:
            obj = decode_frame(frame, self.limits["max_message_bytes"])
        except BadRequest as exc:
            counters["rejected"] += 1
            counters["rejected_messages"] += 1
            logger.warning("ingest: rejected a message: %s", exc)
            return []
        batch = obj if isinstance(obj, list) else [obj]
        if len(batch) > self.limits["max_batch_events"]:
            counters["rejected"] += len(batch)
            logger.warning("ingest: rejected a batch of %d events (limit %d)", len(batch),
                           self.limits["max_batch_events"])
            return []
        events, rejected = parse_batch(batch, self.limits)
        if rejected:
            counters["rejected"] += len(rejected)
            logger.warning("ingest: rejected %d event(s), first: %s", len(rejected),
                           rejected[0]["message"])
        return events

    def _drain_api(self, budget: int = 256) -> None:
        for _ in range(budget):
            try:
                frames = self._api.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._request(frames)

    def _request(self, frames: list) -> None:
        envelope, frame = frames[:-1], frames[-1]
        try:
            request = decode_frame(frame, self.limits["max_message_bytes"])
            if not isinstance(request, dict):
                raise BadRequest(f"a request must be a map, got {type(request).__name__}")
        except BadRequest as exc:
            self.service.counters["rejected_requests"] += 1
            Reply(self, envelope, None, "invalid")(exc)
            return
        op = request.get("op")
        reply = Reply(self, envelope, request.get("rid"), str(op))
        try:
            self._watch_deadline(request, reply)
        except BadRequest as exc:
            reply(exc)
            return
        self.service.handle(op, request, reply)

    def _watch_deadline(self, request: dict, reply: Reply) -> None:
        key = "timeout_ms" if request.get("op") == "flush" else "deadline_ms"
        ms = request.get(key)
        if ms is None:
            return
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or ms <= 0:
            raise BadRequest(f"field '{key}' must be a positive number")
        if request.get("op") == "interests":
            return      # answers by its deadline itself: from state, with llm.stale set
        heapq.heappush(self._deadlines, (time.monotonic() + ms / 1000, id(reply), reply))

    def _expire(self) -> None:
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, reply = heapq.heappop(self._deadlines)
            if not reply.sent:
                reply(DeadlineExceeded(f"no answer within the request's deadline ({reply.op})"))
