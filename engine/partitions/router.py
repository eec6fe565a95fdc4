"""The router: one ingest and one api address for a partitioned service.

Clients see the protocol of PROTOCOL.md unchanged ("Partitions"). One thread
owns every socket: the ingest ``PULL`` and the api ``ROUTER`` it binds, and a
``DEALER`` to each partition's api socket (engine.partitions.links). Requests
are parsed once, as the gateway parses them (same checks, same messages), then:

- a user's request (`interests`, `recommend`, `explain`, `forget`, ...) goes to
  the user's partition as it came, and its reply comes back as it came;
- `ingest` is split in order (engine.partitions.split): each run of user events
  to the owners, each run of item events to every partition; the reply
  (accepted, duplicates, rejected with the request's own indices) is sent once
  every part has answered, so it keeps read-your-writes;
- `ping`, `stats` and `flush` go to every partition and are combined
  (engine.partitions.fanout); `flush` waits behind the events queued before it;
- events from the ingest socket are queued per partition and sent as `ingest`
  requests, one batch in flight per partition (links.py says why).

A partition that is not connected is ``unavailable`` at once for its users;
the others carry on. Every forwarded request has a deadline (its own
``deadline_ms``/``timeout_ms``: ``deadline_exceeded``; else
``partitions.request_timeout_ms``, or ``flush_timeout_ms`` for `flush`:
``unavailable``), and a partition that goes away fails what it had not
answered, so no request waits for ever. Events for a partition that is down
wait in its queue; past ``partitions.queue_events`` queued events the ingest
socket is not read (producers block at ZeroMQ's high-water mark, as with a
service that is behind).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Callable

import zmq

from interest.engine.errors import (BadRequest, DeadlineExceeded, InterestError, Overloaded,
                                    Unavailable)
from interest.engine.journal.codec import decode_frame, encode_frame
from interest.engine.logs import RateLimitedLog
from interest.engine.partitions.fanout import combine_flush, combine_ping, combine_stats
from interest.engine.partitions.layout import partition_of
from interest.engine.partitions.links import Chunk, Link, Marker
from interest.engine.partitions.split import by_partition, combine_ingest, ingest_parts, is_catalog
from interest.engine.serving.loops import SocketThread, drain_requests
from interest.engine.serving.metrics import Metrics, op_key
from interest.engine.serving.requests import (Flush, Ingest, Ping, Stats, UserRequest,
                                              check_batch_size, parse_request)

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MAX_REPLY_BYTES = 1 << 30


class WireError(InterestError):
    """An error a partition answered, passed on as it came."""

    def __init__(self, wire: dict):
        super().__init__(str(wire.get("message", "")))
        self.code = str(wire.get("code", "internal"))
        self.wire = wire

    def to_wire(self) -> dict:
        return dict(self.wire)


@dataclass(slots=True)
class Pending:
    """A request sent to (or queued for) a partition, waiting for its answer."""

    link: int
    deadline: float
    own: bool                 # the client's own deadline: `deadline_exceeded`, else `unavailable`
    done: Callable            # done(reply payload bytes | InterestError)


class Gather:
    """Calls ``on_done(results)`` once each of ``n`` slots has a result."""

    def __init__(self, n: int, on_done: Callable[[list], None]):
        self.results: list = [None] * n
        self.left = n
        self.on_done = on_done
        if n == 0:
            on_done([])

    def slot(self, index: int) -> Callable:
        def fill(result) -> None:
            self.results[index] = result
            self.left -= 1
            if self.left == 0:
                self.on_done(self.results)
        return fill


class ClientReply:
    """Answers one client request once (router thread only)."""

    __slots__ = ("router", "envelope", "rid", "op", "size", "t0", "sent")

    def __init__(self, router: "Router", envelope: list, rid, op: str, size: int):
        self.router, self.envelope, self.rid, self.op, self.size = router, envelope, rid, op, size
        self.t0 = time.perf_counter()
        self.sent = False

    def __call__(self, result) -> None:
        if isinstance(result, InterestError):
            self.router.metrics.add(f"error.{result.code}")
            body = {"rid": self.rid, "ok": False, "error": result.to_wire()}
        else:
            body = {"rid": self.rid, "ok": True, **result}
        try:
            payload = encode_frame(body)
        except (TypeError, ValueError, OverflowError) as exc:
            payload = encode_frame({"rid": None, "ok": False, "error": {
                "code": "internal", "message": f"the reply cannot be encoded: {exc}"}})
        self.raw(payload)

    def raw(self, payload: bytes) -> None:
        """Send a reply payload as it is (a partition's reply, passed through)."""
        if self.sent:
            return
        self.sent = True
        self.router.metrics.latency(self.op, (time.perf_counter() - self.t0) * 1000)
        self.router.finished(self)
        self.router.deliver(self.envelope + [payload])


class Router(SocketThread):
    name = "router"

    def __init__(self, partitions: list[str], config: dict, *, ingest: str, api: str,
                 context: zmq.Context, secure=None, authorize=None, may_ingest=None,
                 on_fatal=None):
        if not partitions:
            raise ValueError("a router needs at least one partition address")
        self.addresses = list(partitions)
        self.n = len(self.addresses)
        self.config = config
        self.limits = config["limits"]
        self.cfg = config["partitions"]
        self.ctx = context
        self.ingest_addr, self.api_addr = ingest, api
        self.secure, self.authorize, self.may_ingest = secure, authorize, may_ingest
        self.on_fatal = on_fatal
        self.metrics = Metrics()
        self.warn = RateLimitedLog(logger)
        self.started_at = time.time()
        self.links: list[Link] = []
        self._pending: dict[bytes, Pending] = {}
        self._deadlines: list = []
        self._tokens = itertools.count(1)
        self._inflight = self._inflight_bytes = 0
        self.bound_ingest = self.bound_api = ""
        super().__init__()

    # ---------------------------------------------------------- lifecycle

    def stop(self, timeout: float | None = None) -> None:
        """Stop reading clients, give queued events ``partitions.stop_drain_s`` to reach
        their partitions, answer what is left ``unavailable``, close."""
        super().stop(timeout if timeout is not None else self.cfg["stop_drain_s"] + 5.0)

    def wait_up(self, timeout: float) -> bool:
        """True once every partition is connected (read from another thread)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.links and all(link.up for link in self.links):
                return True
            time.sleep(0.05)
        return False

    # --------------------------------------------------------- sockets

    def _bind(self) -> None:
        max_bytes = 4 * self.limits["max_message_bytes"]
        self._api = self.ctx.socket(zmq.ROUTER)
        self._api.setsockopt(zmq.LINGER, 0)
        self._api.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._api.setsockopt(zmq.SNDHWM, self.limits["max_inflight_requests"])
        self._api.setsockopt(zmq.MAXMSGSIZE, max_bytes)
        self._pull = self.ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.LINGER, 0)
        self._pull.setsockopt(zmq.MAXMSGSIZE, max_bytes)
        self._pull.setsockopt(zmq.RCVHWM, max(1, self.limits["ingest_queue_bytes"] // max_bytes))
        try:
            for sock, address in ((self._api, self.api_addr), (self._pull, self.ingest_addr)):
                if self.secure is not None:
                    self.secure(sock)
                sock.bind(address)
            hwm = self.limits["max_inflight_requests"] + 16
            for i, address in enumerate(self.addresses):
                self.links.append(Link(i, address, self.ctx, hwm=hwm,
                                       heartbeat_ms=self.cfg["heartbeat_ms"],
                                       server_key=self.cfg["server_key"],
                                       client_key=self.cfg["client_key"]))
        except BaseException:
            self._close()
            raise
        self.bound_api = self._api.getsockopt_string(zmq.LAST_ENDPOINT)
        self.bound_ingest = self._pull.getsockopt_string(zmq.LAST_ENDPOINT)

    def _close(self) -> None:
        for link in self.links:
            link.close()
        for sock in (self._api, self._pull):
            sock.close(linger=0)

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._api, zmq.POLLIN)
        for link in self.links:
            poller.register(link.sock, zmq.POLLIN)
            poller.register(link.monitor, zmq.POLLIN)
        reading = False
        try:
            while not self._stop.is_set():
                reading = self._read_ingest(poller, reading)
                ready = dict(poller.poll(self._poll_ms()))
                self._serve_links(ready)
                if self._api in ready:
                    self._drain_api()
                if self._pull in ready:
                    self._drain_ingest()
                self._pump()
                self._expire()
            self._drain_queues(poller)
        except Exception as exc:  # noqa: BLE001 - the loop cannot go on: let a supervisor restart
            logger.exception("the router failed")
            if self.on_fatal is not None:
                self.on_fatal(exc)
        finally:
            self._close()

    def _read_ingest(self, poller: zmq.Poller, reading: bool) -> bool:
        """Poll the ingest socket unless a partition's queue is full."""
        paused = self._paused()
        if paused and reading:
            poller.unregister(self._pull)
            self.metrics.add("ingest_paused")
        elif not paused and not reading:
            poller.register(self._pull, zmq.POLLIN)
        return not paused

    def _serve_links(self, ready: dict) -> None:
        for link in self.links:
            if link.monitor in ready:
                for up in link.state_changes():
                    if up:
                        logger.info("partition %d is up (%s)", link.index, link.address)
                    else:
                        logger.warning("partition %d went away (%s)", link.index, link.address)
                        self._lost(link)
            if link.sock in ready:
                self._drain_link(link)

    def _poll_ms(self) -> int:
        wake = [d[0] for d in self._deadlines[:1]]
        wake += [link.retry_at for link in self.links if link.queue and link.batch is None]
        if not wake:
            return 50
        return max(0, min(50, int((min(wake) - time.monotonic()) * 1000) + 1))

    def _drain_queues(self, poller: zmq.Poller) -> None:
        """After stop: let queued events reach their partitions, within stop_drain_s."""
        deadline = time.monotonic() + self.cfg["stop_drain_s"]
        while time.monotonic() < deadline and any(
                link.up and (link.queue or link.batch) for link in self.links):
            self._serve_links(dict(poller.poll(20)))
            self._pump()
            self._expire()
        left = sum(link.queued + sum(len(c.events) for c in link.batch or ())
                   for link in self.links)
        if left:
            logger.warning("router stopped with %d queued events not sent to their partitions",
                           left)
        for token in list(self._pending):
            pending = self._pending.pop(token)
            pending.done(Unavailable("the router is stopping"))

    # ------------------------------------------------------ partitions

    def _token(self) -> bytes:
        return next(self._tokens).to_bytes(8, "big")

    def _register(self, link: int, ms: float, own: bool, done: Callable) -> bytes:
        token = self._token()
        deadline = time.monotonic() + ms / 1000
        self._pending[token] = Pending(link, deadline, own, done)
        heapq.heappush(self._deadlines, (deadline, token))
        return token

    def _forward(self, index: int, payload: bytes, ms: float, own: bool, done: Callable) -> None:
        """Send ``payload`` to partition ``index``; ``done(reply bytes | error)`` later
        (at once with ``unavailable`` when the partition is not connected)."""
        token = self._register(index, ms, own, done)
        if not self.links[index].send([token, payload]):
            self._fail(token, Unavailable(f"partition {index} is unavailable (not connected)"))

    def _fail(self, token: bytes, error: InterestError) -> None:
        pending = self._pending.pop(token, None)
        if pending is not None:
            pending.done(error)

    def _drain_link(self, link: Link, budget: int = 1000) -> None:
        for _ in range(budget):
            try:
                frames = link.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            pending = self._pending.pop(frames[0], None)
            if pending is None:
                self.metrics.add("late_replies")        # answered after its deadline
                continue
            pending.done(frames[-1])

    def _lost(self, link: Link) -> None:
        """A partition went away: what it had not answered is answered `unavailable`."""
        error = Unavailable(f"partition {link.index} went away before answering")
        for token in [t for t, p in self._pending.items() if p.link == link.index]:
            self._fail(token, error)

    def _expire(self) -> None:
        if len(self._deadlines) > 4 * max(256, len(self._pending)):     # drop answered ones
            self._deadlines = [d for d in self._deadlines if d[1] in self._pending]
            heapq.heapify(self._deadlines)
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, token = heapq.heappop(self._deadlines)
            pending = self._pending.get(token)
            if pending is None:
                continue
            self._fail(token, DeadlineExceeded("no answer within the request's deadline")
                       if pending.own else Unavailable(
                           f"partition {pending.link} did not answer in time"))

    # ------------------------------------------------- client requests

    def deliver(self, frames: list) -> None:
        try:
            self._api.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            self.metrics.add("replies_dropped")
            self.warn.warning("router: a client is not reading its replies; a reply was dropped")
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.metrics.add("replies_undeliverable")

    def finished(self, reply: ClientReply) -> None:
        self._inflight -= 1
        self._inflight_bytes -= reply.size

    def _drain_api(self) -> None:
        drain_requests(self._api, self._request, self.metrics, logger)

    def _request(self, frames: list) -> None:
        envelope, frame = [f.bytes for f in frames[:-1]], frames[-1]
        payload = frame.bytes
        obj = None
        try:
            obj = decode_frame(payload, self.limits["max_message_bytes"])
            request = parse_request(obj, self.limits, self.config["recommend"]["default_k"])
        except Exception as exc:  # noqa: BLE001 - whatever the request holds, it gets an answer
            is_map = isinstance(obj, dict)
            error = exc if isinstance(exc, BadRequest) else \
                BadRequest(f"the request cannot be parsed ({type(exc).__name__})")
            self.metrics.add("rejected_requests")
            self._admit(envelope, obj.get("rid") if is_map else None,
                        op_key(obj.get("op")) if is_map else "invalid", 0)(error)
            return
        reply = self._admit(envelope, request.rid, request.op, len(payload))
        try:
            if self.authorize is not None:
                self.authorize(frame, request)
            if self._inflight > self.limits["max_inflight_requests"] \
                    or self._inflight_bytes > self.limits["max_inflight_bytes"]:
                raise Overloaded(f"{self._inflight} requests are waiting for an answer; retry later",
                                 retry_after_ms=self.config["projections"]["retry_after_ms"])
            self._route(request, payload, reply)
        except InterestError as exc:
            reply(exc)
        except Exception as exc:  # noqa: BLE001 - one request never stops the router
            logger.exception("unexpected failure routing %s", request.op)
            reply(InterestError(f"{type(exc).__name__}: {exc}"))

    def _admit(self, envelope, rid, op: str, size: int) -> ClientReply:
        self._inflight += 1
        self._inflight_bytes += size
        self.metrics.add(f"op.{op_key(op)}")
        return ClientReply(self, envelope, rid, op, size)

    def _route(self, request, payload: bytes, reply: ClientReply) -> None:
        timeout = self.cfg["request_timeout_ms"]
        if isinstance(request, UserRequest):
            own = request.deadline_ms
            self._forward(partition_of(request.user, self.n), payload,
                          own or timeout, own is not None,
                          lambda result: reply.raw(result) if isinstance(result, bytes)
                          else reply(result))
        elif isinstance(request, Ingest):
            self._ingest(list(request.events), reply)
        elif isinstance(request, Flush):
            self._flush(request, payload, reply)
        elif isinstance(request, (Ping, Stats)):
            uptime = time.time() - self.started_at
            combine = (lambda rs: combine_ping(rs, PROTOCOL_VERSION, uptime)) \
                if isinstance(request, Ping) else (lambda rs: combine_stats(rs, self.own_stats()))
            gather = Gather(self.n, lambda rs: reply(combine(rs)))
            for link in self.links:
                self._forward(link.index, payload, timeout, False, _decoded(gather.slot(link.index)))
        else:
            raise BadRequest(f"op {request.op!r} is not routed across partitions")

    def _ingest(self, events: list, reply: ClientReply) -> None:
        parts = ingest_parts(events, self.n)
        down = sorted({p.partition for p in parts if not self.links[p.partition].up})
        if down:
            raise Unavailable(f"partition(s) {down} of these events' users are unavailable; "
                              "none of the events was sent")
        self.metrics.add("received", len(events))

        def done(results: list) -> None:
            error = next((r for r in results if isinstance(r, InterestError)), None)
            if error is not None:
                reply(error)
                return
            combined = combine_ingest(parts, results)
            self.metrics.add("rejected_by_partitions", len(combined["rejected"]))
            reply(combined)
        gather = Gather(len(parts), done)
        for i, part in enumerate(parts):
            body = encode_frame({"op": "ingest", "events": [events[j] for j in part.indices]})
            self._forward(part.partition, body, self.cfg["request_timeout_ms"], False,
                          _decoded(gather.slot(i)))

    def _flush(self, request: Flush, payload: bytes, reply: ClientReply) -> None:
        own = request.timeout_ms
        ms = own or self.cfg["flush_timeout_ms"]
        gather = Gather(self.n, lambda rs: reply(combine_flush(rs)))
        for link in self.links:
            done = _decoded(gather.slot(link.index))
            if not link.up:
                done(Unavailable(f"partition {link.index} is unavailable (not connected)"))
                continue
            token = self._register(link.index, ms, own is not None, done)
            link.queue.append(Marker(token, payload))

    # --------------------------------------------------- ingest socket

    def _paused(self) -> bool:
        return any(link.queued >= self.cfg["queue_events"] for link in self.links)

    def _drain_ingest(self, budget: int = 512) -> None:
        for _ in range(budget):
            try:
                frame = self._pull.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if self.may_ingest is not None and not self.may_ingest(frame):
                self.metrics.add("forbidden")
                self.warn.warning("ingest: dropped a message from a client whose role may not "
                                  "send events")
                continue
            self._ingest_frame(frame.bytes)
            if self._paused():
                return

    def _ingest_frame(self, data: bytes) -> None:
        self.metrics.add("ingest_messages")
        batch = [None]
        try:
            obj = decode_frame(data, self.limits["max_message_bytes"])
            batch = obj if isinstance(obj, list) else [obj]
            check_batch_size(len(batch), "a message", "events", self.limits)
        except BadRequest as exc:
            self.metrics.add("rejected", len(batch))
            self.metrics.add("rejected_messages")
            self.warn.warning("ingest: rejected a message: %s", exc)
            return
        self.metrics.add("received", len(batch))
        for index, events in by_partition(batch, self.n).items():
            self.links[index].enqueue(events, len(data))

    def _pump(self) -> None:
        """Send each partition its next queued batch (or flush) when it has none in flight."""
        now = time.monotonic()
        max_events = self.limits["max_batch_events"]
        max_bytes = self.limits["max_message_bytes"] - 1024
        for link in self.links:
            while link.up and link.batch is None and link.queue and now >= link.retry_at:
                head = link.queue[0]
                if isinstance(head, Marker):
                    link.queue.popleft()
                    if head.token in self._pending and not link.send([head.token, head.payload]):
                        self._fail(head.token, Unavailable(
                            f"partition {link.index} is unavailable (not connected)"))
                    continue
                self._send_batch(link, link.next_batch(max_events, max_bytes))

    def _send_batch(self, link: Link, chunks: list[Chunk]) -> None:
        events = [event for chunk in chunks for event in chunk.events]
        body = encode_frame({"op": "ingest", "events": events})

        def done(result) -> None:
            link.batch = None
            result = _result(result)
            if isinstance(result, InterestError):
                self._batch_failed(link, chunks, events, result)
                return
            self.metrics.add("forwarded", len(events))
            rejected = [r for r in result.get("rejected", ())
                        if link.index == 0 or not is_catalog(events[r["index"]])]
            self.metrics.add("rejected_by_partitions", len(rejected))
        link.batch = chunks
        self._forward(link.index, body, self.cfg["request_timeout_ms"], False, done)

    def _batch_failed(self, link: Link, chunks: list, events: list, error: InterestError) -> None:
        if error.code == "bad_request":       # the batch as a whole was refused: sending it again
            self.metrics.add("dropped_events", len(events))     # would not help
            logger.error("partition %d refused a batch of %d events: %s", link.index,
                         len(events), error)
            return
        link.requeue(chunks)
        retry_ms = (error.wire.get("retry_after_ms") if isinstance(error, WireError) else None) \
            or self.config["projections"]["retry_after_ms"] or 100
        link.retry_at = time.monotonic() + retry_ms / 1000
        self.metrics.add("batch_retries")
        self.warn.warning("partition %d did not take a batch (%s: %s); it is sent again",
                          link.index, error.code, error)

    # ----------------------------------------------------------- stats

    def own_stats(self) -> dict:
        counters = self.metrics.counters()
        return {"counters": counters, "latency": self.metrics.latencies(),
                "links": [link.state() for link in self.links],
                "pending_requests": len(self._pending), "ingest_paused": self._paused(),
                "uptime_s": time.time() - self.started_at}


def _result(result):
    """A partition's reply payload as a map, or the error it is (or already was)."""
    if isinstance(result, InterestError):
        return result
    try:
        body = decode_frame(result, MAX_REPLY_BYTES)
    except BadRequest as exc:
        return InterestError(f"a partition's reply cannot be decoded: {exc}")
    if not isinstance(body, dict):
        return InterestError("a partition's reply is not a map")
    if body.get("ok"):
        return body
    return WireError(body.get("error") or {})


def _decoded(slot: Callable) -> Callable:
    return lambda result: slot(_result(result))
