"""A partition's side of the global model learner (``[projections] learner = "global"``).

In a partitioned data directory (engine.partitions.layout) one learner
process (engine.projections.global_learner, ``interest learner --data DIR``)
learns from every partition's log and sends each partition the same model
snapshots. A partition service in this mode learns nothing itself:
``GlobalModels`` takes the snapshots in (re-attached to the partition's own
catalog and fusion object, exactly like ``LearnerProcess``),
moves its ``position`` to the partition's own position in the snapshot and
fires the waiters, and sends the item vectors
of the language model to the learner in batches.

Transport: one ZeroMQ socket pair over ``ipc://`` (``learner_address``: a
socket file under ``DIR/learner/``, mode 0600, so only processes of the same
user on the same host can connect); the learner binds a ROUTER, each
partition connects a DEALER. Messages are pickled, which is safe only because
the socket never leaves this host's file system and this user: it is never
bound to TCP. Frames:

* partition -> learner: ``hello`` (partition index, pid, resync), every
  ``HELLO_S``; ``batch`` (item vectors);
* learner -> partition: ``models`` (meta: learner epoch, the partition's
  position and checkpointed position, fusion delta, stats; body: the
  snapshot packed by ``Shipper``: arrays the partition already has go as
  references), ``alive`` (the answer to each hello), ``dead`` (an entry of
  this partition the learner could not learn).

A learner sends a partition it has not heard from before (a new learner, a
restarted partition, a resync after a message was lost) every array of the
snapshot, so a partition never needs anything it did not receive. The epoch
(random per learner process) tells a partition that a new learner started:
it drops the arrays of the old one.

Absence: with no word from the learner for ``learner_absent_s`` the
partition reports ``connected: false`` (``stats.projections.learner``),
keeps serving its last snapshot, and stops pausing ingest for the learner's
lag (the learner catches up from the logs when it is back).
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
import threading
import time
import zlib
from pathlib import Path

import zmq

from interest.engine.errors import ConfigError
from interest.engine.partitions.layout import read_layout
from interest.engine.projections.learner_process import Receiver, apply_fusion_delta
from interest.engine.projections.log import CommittedLog
from interest.engine.projections.runner import DeadLetters, Positioned

logger = logging.getLogger(__name__)

#: a partition says hello (and learns whether the learner is there) this often
HELLO_S = 0.5
#: item vectors go to the learner at most this often
SEND_S = 0.05
LEARNER_DIR = "learner"
#: a socket path longer than this does not fit ``sockaddr_un`` (108 bytes with the NUL)
MAX_IPC_PATH = 100


def learner_dir(root: str | Path) -> Path:
    """Where the global learner of the partitioned directory ``root`` keeps its files."""
    return Path(root) / LEARNER_DIR


def learner_address(root: str | Path) -> str:
    """The learner's socket: ``ipc://ROOT/learner/socket``, or, when that path is too long
    for a Unix socket, a name in the temp folder derived from it."""
    path = (learner_dir(root) / "socket").resolve()
    if len(str(path)) <= MAX_IPC_PATH:
        return f"ipc://{path}"
    digest = zlib.crc32(str(path).encode("utf-8"))
    return f"ipc://{tempfile.gettempdir()}/interest-learner-{digest:08x}"


def partition_of_dir(data_dir: str | Path) -> tuple[Path, int, int]:
    """(root, index, partitions) of a partition directory ``ROOT/p{index}``."""
    data_dir = Path(data_dir).resolve()
    root, name = data_dir.parent, data_dir.name
    count = read_layout(root)
    if count is None or not name.startswith("p") or not name[1:].isdigit() \
            or int(name[1:]) >= count:
        raise ConfigError(f'[projections] learner = "global" needs a partition directory '
                          f'(DIR/pN of a partitioned DIR); {data_dir} is not one')
    return root, int(name[1:]), count


def dumps(obj) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


class GlobalModels(Positioned):
    """The partition's view of the global learner; quacks like a ``ProjectionRunner``."""

    name = "learner"

    def __init__(self, recommender, config: dict, data_dir: Path, log: CommittedLog,
                 dead: DeadLetters):
        self.root, self.index, self.partitions = partition_of_dir(data_dir)
        self.address = learner_address(self.root)
        self.absent_s = config["projections"]["learner_absent_s"]
        self.recommender = recommender
        self.catalog, self.fusion = recommender.catalog, recommender.fusion
        self.log, self.dead = log, dead
        self.projection = self
        self.models = self._attach(recommender.learner.publish())
        self.position = self.saved = 0
        self._init_waiting()
        self._outbox: list = []
        self.receiver = Receiver()
        self.epoch = None
        self.heard_at = None          # monotonic time of the learner's last message
        self.publishes = self.resyncs = self.learners = 0
        self.unpack_ms = 0.0
        self.child_stats: dict = {}
        self._resync = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="global-learner-link",
                                        daemon=True)

    def start(self) -> "GlobalModels":
        self._thread.start()
        return self

    def _attach(self, models):
        models.catalog, models.fusion = self.catalog, self.fusion
        return models

    # ------------------------------------------------ what the service calls

    def set_item_vector(self, item: str, vector) -> None:
        self._outbox.append(("vector", (item, vector)))

    @property
    def connected(self) -> bool:
        """Whether the learner was heard from within ``learner_absent_s``."""
        return self.heard_at is not None and time.monotonic() - self.heard_at < self.absent_s

    def stats(self) -> dict:
        out = {k: v for k, v in self.child_stats.items() if k != "recommender"}
        heard = None if self.heard_at is None else round(time.monotonic() - self.heard_at, 3)
        return {**out, "mode": "global", "partition": self.index, "address": self.address,
                "connected": self.connected, "last_heard_s": heard,
                "publishes": self.publishes, "learner_starts_seen": self.learners,
                "resyncs": self.resyncs, "last_unpack_ms": round(self.unpack_ms, 2)}

    def recommender_stats(self) -> dict:
        return self.child_stats.get("recommender") or self.recommender.stats()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the link (the learner goes on for the other partitions); release waiters."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._release_waiters()

    # ----------------------------------------------------------- channel

    def _run(self) -> None:
        context = zmq.Context.instance()
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 1000)
        sock.connect(self.address)
        next_hello = next_send = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_hello:
                    self._say(sock, b"hello", {"partition": self.index, "pid": os.getpid(),
                                                "resync": self._resync})
                    self._resync = False
                    next_hello = now + HELLO_S
                if now >= next_send:
                    self._flush_outbox(sock)
                    next_send = now + SEND_S
                if sock.poll(int(SEND_S * 1000)):
                    self._receive(sock.recv_multipart())
            self._flush_outbox(sock)
        except zmq.ZMQError as exc:
            if not self._stop.is_set():
                logger.error("the link to the global learner failed: %s", exc)
        finally:
            sock.close(linger=0)

    def _say(self, sock, kind: bytes, payload) -> None:
        try:
            sock.send_multipart([kind, dumps(payload)], flags=zmq.NOBLOCK)
        except zmq.Again:
            pass                   # no learner for a while: the queue is full, hello again later

    def _flush_outbox(self, sock) -> None:
        batch, self._outbox = self._outbox, []
        if batch:
            self._say(sock, b"batch", (self.index, batch))

    def _receive(self, frames: list) -> None:
        self.heard_at = time.monotonic()
        kind = frames[0]
        try:
            if kind == b"models":
                self._take_models(pickle.loads(frames[1]), frames[2])
            elif kind == b"dead":
                self.dead.record_letter(*pickle.loads(frames[1]))
        except Exception:  # noqa: BLE001 - a bad message asks for a whole snapshot again
            logger.exception("could not use the global learner's %r; asking for a resync", kind)
            self._resync_now()

    def _take_models(self, meta: tuple, body: bytes) -> None:
        epoch, position, saved, delta, stats = meta
        if epoch != self.epoch:               # a learner we have not heard: its arrays only
            self.receiver = Receiver()
            self.epoch = epoch
            self.learners += 1
        t0 = time.perf_counter()
        try:
            models = self.receiver.unpack(*pickle.loads(body))
        except KeyError:                      # an array we never got (a message was lost)
            self._resync_now()
            return
        self.unpack_ms = (time.perf_counter() - t0) * 1000
        self.child_stats = stats
        if position < self.position:
            # a learner started again from an older checkpoint: the snapshot served stays
            # the newer one until this learner has caught up with it (never serve older)
            return
        apply_fusion_delta(self.fusion, delta)
        self.models = self._attach(models)
        self.publishes += 1
        self.saved = saved
        self._advance(position)

    def _resync_now(self) -> None:
        self.resyncs += 1
        self._resync = True
