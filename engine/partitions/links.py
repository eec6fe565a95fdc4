"""The router's connection to one partition: a DEALER to its api socket, and its queue.

Everything the router sends a partition goes over this one connection, so the
partition reads it in order: requests forwarded for clients, and the events
from the router's ingest socket, sent as `ingest` requests one batch at a time
(the next batch leaves once the partition has answered for the last: events
stay in order, an answer means durable and applied, and a batch the partition
refused or lost by going down is sent again; event ids make that safe). A
`flush` waits in the same queue, so it covers every event queued before it.

The socket is ``ZMQ_IMMEDIATE``: while the partition is not connected a send
fails at once (the router answers ``unavailable``) instead of queueing for a
process that may never come back; ZMTP heartbeats notice a peer that went away
without closing its connection (a host that died). A socket monitor reports
connects and disconnects (``up``). With ``partitions.server_key`` and
``client_key`` the connection is a CurveZMQ client (the partitions run with
``[security] curve = true``; the router's key needs the ``admin`` role, since
it forwards every op).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import zmq
from zmq.utils.monitor import recv_monitor_message

from interest.engine.serving.auth import secure_client_socket

UP_EVENT = getattr(zmq, "EVENT_HANDSHAKE_SUCCEEDED", zmq.EVENT_CONNECTED)


@dataclass
class Chunk:
    """Events for this partition from one ingest message; ``size`` bounds their
    encoded bytes (the message they came in)."""

    events: list
    size: int


@dataclass(frozen=True)
class Marker:
    """A `flush` waiting in the queue behind the events queued before it: sent with
    ``token`` once every batch before it is answered."""

    token: bytes
    payload: bytes


class Link:
    def __init__(self, index: int, address: str, context: zmq.Context, *, hwm: int,
                 heartbeat_ms: int, server_key: str = "", client_key: str = ""):
        self.index, self.address = index, address
        self.sock = context.socket(zmq.DEALER)
        if server_key or client_key:          # the partitions run with CurveZMQ
            try:
                secure_client_socket(self.sock, server_key, client_key)
            except BaseException:
                self.sock.close(linger=0)
                raise
        for option, value in ((zmq.LINGER, 0), (zmq.IMMEDIATE, 1), (zmq.SNDHWM, hwm),
                              (zmq.RCVHWM, hwm), (zmq.RECONNECT_IVL, 100),
                              (zmq.RECONNECT_IVL_MAX, 1000),
                              (zmq.HEARTBEAT_IVL, heartbeat_ms),
                              (zmq.HEARTBEAT_TIMEOUT, 3 * heartbeat_ms),
                              (zmq.HEARTBEAT_TTL, 3 * heartbeat_ms)):
            self.sock.setsockopt(option, value)
        self.monitor = self.sock.get_monitor_socket(UP_EVENT | zmq.EVENT_DISCONNECTED)
        self.sock.connect(address)
        self.up = False
        self.queue: deque = deque()         # Chunk and Marker, in arrival order
        self.queued = 0                     # events in the queue
        self.batch: list | None = None      # the chunks in flight
        self.retry_at = 0.0
        self.connects = self.disconnects = 0

    def state_changes(self) -> list[bool]:
        """Drain the monitor: True per connect, False per disconnect, in order."""
        out = []
        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)["event"]
            except zmq.Again:
                return out
            if event == zmq.EVENT_DISCONNECTED:
                self.up = False
                self.disconnects += 1
                out.append(False)
            elif event == UP_EVENT:
                self.up = True
                self.connects += 1
                out.append(True)

    def send(self, frames: list) -> bool:
        """False when the partition is not connected (or its queue is full)."""
        if not self.up:
            return False
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    # ------------------------------------------------- queued events

    def enqueue(self, events: list, size: int) -> None:
        self.queue.append(Chunk(events, size))
        self.queued += len(events)

    def next_batch(self, max_events: int, max_bytes: int) -> list[Chunk]:
        """Take the chunks at the head of the queue (up to a marker) that fit."""
        chunks, events, size = [], 0, 0
        while self.queue and isinstance(self.queue[0], Chunk):
            chunk = self.queue[0]
            if chunks and (events + len(chunk.events) > max_events or size + chunk.size > max_bytes):
                break
            self.queue.popleft()
            chunks.append(chunk)
            events += len(chunk.events)
            size += chunk.size
        self.queued -= events
        return chunks

    def requeue(self, chunks: list[Chunk]) -> None:
        """Put a batch back at the head (it is sent again, first)."""
        for chunk in reversed(chunks):
            self.queue.appendleft(chunk)
            self.queued += len(chunk.events)

    def state(self) -> dict:
        return {"partition": self.index, "address": self.address, "up": self.up,
                "queued_events": self.queued, "batch_in_flight": self.batch is not None,
                "connects": self.connects, "disconnects": self.disconnects}

    def close(self) -> None:
        try:
            self.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(linger=0)
        self.sock.close(linger=0)
