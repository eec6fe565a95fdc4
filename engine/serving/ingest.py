"""The ingest loop: one thread owns the ingest ``PULL`` (and optional ``SUB`` feeds).

Each frame is one event map or an array of them. Frames are decoded (size
limit, msgpack) and every event validated; bad frames and bad events are
counted and logged (rate-limited), never fatal; good events go to the
writer in jobs of about ``job_events``. While the service is behind
(``service.busy()``: head minus the user-state projection, or the learner's
lag, past its limit) the sockets are not read, so events wait in ZeroMQ's
queues and producers block at the high-water mark. The PULL queue is
bounded in bytes as well as messages: ``RCVHWM`` is ``ingest_queue_bytes``
divided by the largest frame read (4x ``max_message_bytes``: up to that a
frame is read, counted and rejected; a larger one makes ZeroMQ drop the
peer, ``MAXMSGSIZE``, before any of it is buffered, which a socket monitor
counts as ``ingest_disconnects``).
"""

from __future__ import annotations

import logging
import time

import zmq

from interest.engine.errors import BadRequest
from interest.engine.journal.codec import decode_frame
from interest.engine.logs import RateLimitedLog
from interest.engine.serving.loops import SocketThread
from interest.engine.serving.requests import check_batch_size, parse_batch

logger = logging.getLogger(__name__)


class IngestLoop(SocketThread):
    name = "ingest"

    def __init__(self, service, address: str, feeds=(), *, context: zmq.Context,
                 secure=None, may_ingest=None, on_fatal=None):
        self.service = service
        self.limits = service.limits
        self.metrics = service.metrics
        self.job_events = service.config["writer"]["job_events"]
        self.ctx = context
        self.address, self.feeds = address, list(feeds)
        self.secure = secure              # callable(socket) making it a CURVE server, or None
        self.may_ingest = may_ingest      # callable(frame) -> bool (the sender's role), or None
        self.on_fatal = on_fatal
        self.warn = RateLimitedLog(logger)
        super().__init__()
        self.paused = False
        self.bound = ""

    def _bind(self) -> None:
        # up to 4x the limit is read, counted and rejected; beyond, ZeroMQ drops the peer
        max_bytes = 4 * self.limits["max_message_bytes"]
        self._pull = self.ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.LINGER, 0)
        self._pull.setsockopt(zmq.MAXMSGSIZE, max_bytes)
        self._pull.setsockopt(zmq.RCVHWM, max(1, self.limits["ingest_queue_bytes"] // max_bytes))
        if self.secure is not None:
            self.secure(self._pull)
        self._pull.bind(self.address)
        self.bound = self._pull.getsockopt_string(zmq.LAST_ENDPOINT)
        # ZeroMQ refuses a frame over MAXMSGSIZE by disconnecting its producer, unseen by
        # the loop: the monitor makes it count (ingest_disconnects)
        self._monitor = self._pull.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._subs = []
        for feed in self.feeds:
            sub = self.ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.MAXMSGSIZE, max_bytes)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(feed)
            self._subs.append(sub)

    def _loop(self) -> None:
        """On the socket thread, until stopped."""
        poller = zmq.Poller()
        for sock in (self._pull, self._monitor, *self._subs):
            poller.register(sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                self.paused = self.service.busy()
                if self.paused:
                    self.metrics.add("ingest_paused")
                    time.sleep(0.002)
                    continue
                for sock in dict(poller.poll(50)):
                    if sock is self._monitor:
                        self._disconnects()
                    else:
                        self._drain(sock)
        except Exception as exc:  # noqa: BLE001 - the loop cannot go on: let a supervisor restart
            logger.exception("the ingest loop failed")
            if self.on_fatal is not None:
                self.on_fatal(exc)
        finally:
            self._pull.disable_monitor()
            for sock in (self._pull, self._monitor, *self._subs):
                sock.close(linger=0)

    def _disconnects(self) -> None:
        while True:
            try:
                self._monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.metrics.add("ingest_disconnects")
            logger.info("ingest: a producer disconnected (it went away, or sent a frame over "
                        "4x limits.max_message_bytes)")

    def _drain(self, sock, budget: int = 512) -> None:
        events = []
        for _ in range(budget):
            try:
                frame = sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            if sock is self._pull and self.may_ingest is not None and not self.may_ingest(frame):
                self.metrics.add("forbidden")
                self.warn.warning("ingest: dropped a message from a client whose role may not "
                                  "send events")
                continue
            events.extend(self._frame(frame.bytes))
            if len(events) >= self.job_events:
                break
        if events:
            self.service.ingest_events(events)

    def _frame(self, frame: bytes) -> list:
        self.metrics.add("ingest_messages")
        try:
            obj = decode_frame(frame, self.limits["max_message_bytes"])
        except BadRequest as exc:
            self.metrics.add("rejected")
            self.metrics.add("rejected_messages")
            self.warn.warning("ingest: rejected a message: %s", exc)
            return []
        batch = obj if isinstance(obj, list) else [obj]
        try:
            check_batch_size(len(batch), "a message", "events", self.limits)
        except BadRequest as exc:
            self.metrics.add("rejected", len(batch))
            self.metrics.add("rejected_messages")
            self.warn.warning("ingest: rejected a message: %s", exc)
            return []
        events, rejected = parse_batch(batch, self.limits)
        if rejected:
            self.metrics.add("rejected", len(rejected))
            self.warn.warning("ingest: rejected %d event(s), first: %s", len(rejected),
                              rejected[0]["message"])
        return events
