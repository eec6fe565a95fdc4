"""The one model learner of a partitioned data directory (``interest learner --data DIR``).

Partitions split users, but the co-occurrence, sequential, popularity and
demographic models must learn from everybody's events. One process does:

* it reads every partition's committed log (``PartitionFeed``: LMDB opened
  beside each partition's service, each log by its own position), fairly: a
  round takes up to ``projections.batch`` entries from each partition in
  turn; catalog entries, which every partition holds, are taken from one
  copy only (``partition_feed.counted_copy``);
* it learns every source of the usual ``Learner`` from them (a user's
  entries come in that user's order, since a user lives in one partition);
* it checkpoints the models and the P positions together in one checked
  file, ``DIR/learner/models.msgpack``, every ``checkpoint_seconds`` and at
  stop, and resumes from it (a checkpoint that does not match the
  partitions, or is past a partition's head, is dropped: rebuilt from the
  logs);
* at most every ``publish_ms`` (and never more than a fifth of its time) it
  sends the snapshot to every partition connected to it
  (engine.projections.global_link has the transport), each with its own
  position in it; the item vectors the partitions' language models computed
  come back and are learned from as in ``LearnerProcess``.

The ``Learner`` needs one increasing position per entry (it skips what a
loaded checkpoint holds): an entry is given the sum of the P positions once
it is read, which grows by at least one per entry.

The learner holds ``DIR/learner/LOCK`` (one learner per directory). In
Python: ``GlobalLearner(config, DIR).run(stop_event)`` in this process, or
``LearnerHandle(config, DIR).start()`` for a process of its own that is
started again if it dies (``.stop()`` ends it with a final checkpoint).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
import pickle
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import msgpack
import zmq

from interest.engine.errors import ConfigError
from interest.engine.journal.codec import CATALOG_STREAM
from interest.engine.journal.events import FORGET_TYPE, PROFILE_TYPE
from interest.engine.journal.files import read_checked
from interest.engine.journal.lock import DataDirLock
from interest.engine.partitions.layout import partition_of, read_layout
from interest.engine.projections.catalog import Catalog
from interest.engine.projections.global_link import dumps, learner_address, learner_dir
from interest.engine.projections.learner_process import (Shipper, detach, fusion_delta,
                                                          track_fusion)
from interest.engine.projections.partition_feed import PartitionFeed, counted_copy
from interest.engine.projections.state import FoldParams
from interest.engine.recommend import Recommender
from interest.engine.recommend.learner import write_atomic

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
CHECKPOINT = "models.msgpack"


def checkpoint_path(root: str | Path) -> Path:
    return learner_dir(root) / CHECKPOINT


@dataclass
class Peer:
    """A partition connected to the learner."""

    index: int
    seen: float
    joining: bool = True          # it needs every array of the next snapshot


class GlobalLearner:
    def __init__(self, config: dict, root: str | Path):
        self.root = Path(root)
        self.partitions = read_layout(self.root)
        if self.partitions is None:
            raise ConfigError(f"{self.root} is not a partitioned data directory (no "
                              f"partitions.json): its service learns by itself")
        self.config = config
        cfg = config["projections"]
        self.batch = cfg["batch"]
        self.publish_s = cfg["publish_ms"] / 1000
        self.absent_s = cfg["learner_absent_s"]
        self.checkpoint_s = config["recommend"]["checkpoint_seconds"]
        self.lock = DataDirLock(learner_dir(self.root)).acquire()
        self.feed = PartitionFeed(self.root, self.partitions, config["store"])
        self.catalog = Catalog()
        self.catalog_from = [None] * self.partitions   # head when its catalog part was loaded
        try:
            self.rec, self.positions = self._load()
        except BaseException:
            self.feed.close()
            self.lock.release()
            raise
        self.saved = list(self.positions)
        self.epoch = os.urandom(8)
        self.peers: dict[bytes, Peer] = {}
        self.shipper = Shipper()
        self.last = None                  # the last detached snapshot sent
        self.last_positions = list(self.positions)
        self.changed_users: set = set()
        track_fusion(self.rec.fusion, self.changed_users)
        self.publishes = 0
        self.publish_ms = 0.0
        self.sock = None

    # ------------------------------------------------------------ start

    def _fresh(self) -> Recommender:
        return Recommender.from_config(self.catalog, FoldParams.from_config(self.config),
                                       self.config)

    def _load(self) -> tuple[Recommender, list[int]]:
        """The checkpointed models and positions, or fresh ones (and why, logged)."""
        path = checkpoint_path(self.root)
        try:
            obj = msgpack.unpackb(read_checked(path), raw=False, strict_map_key=False)
        except FileNotFoundError:
            return self._fresh(), [0] * self.partitions
        except Exception as exc:  # noqa: BLE001 - a rebuildable checkpoint
            logger.warning("the global learner's checkpoint %s is unusable (%s); rebuilding "
                           "the models from the logs", path, exc)
            return self._fresh(), [0] * self.partitions
        positions = obj.get("positions") or []
        heads = [self.feed.head(i) for i in range(self.partitions)]
        if obj.get("format") != CHECKPOINT_FORMAT or len(positions) != self.partitions \
                or any(p > h for p, h in zip(positions, heads)):
            logger.warning("the global learner's checkpoint %s does not match the partitions "
                           "(positions %s, heads %s); rebuilding the models from the logs",
                           path, positions, heads)
            return self._fresh(), [0] * self.partitions
        rec = self._fresh()
        try:
            rec.learner.load_dict(obj["learner"])
        except Exception as exc:  # noqa: BLE001
            logger.warning("the global learner's checkpoint %s is unusable (%s); rebuilding",
                           path, exc)
            return self._fresh(), [0] * self.partitions
        logger.info("global learner: resuming at positions %s", positions)
        return rec, list(positions)

    def _open_catalog(self, index: int) -> bool:
        """Load partition ``index``'s part of the catalog once its journal exists: the items
        from partition 0, the attributes of the users it owns; its later catalog entries
        are applied as they are read."""
        if self.catalog_from[index] is not None:
            return True
        store = self.feed.store(index)
        if store is None:
            return False
        self.catalog_from[index] = store.head()          # read before the tables
        if index == 0:
            for item, record in store.items():
                self.catalog.put_item(item, record)
        for user, attrs in store.all_user_attrs():
            if partition_of(user, self.partitions) == index:
                self.catalog.put_user_attrs(user, attrs)
        return True

    # ------------------------------------------------------------- loop

    def run(self, stop: threading.Event) -> None:
        """Learn, publish and checkpoint until ``stop`` is set; then a last checkpoint."""
        context = zmq.Context.instance()
        self.sock = context.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100)
        try:
            address = learner_address(self.root)
            self.sock.bind(address)
            os.chmod(address[len("ipc://"):], 0o600)   # pickles: this user's processes only
            logger.info("global learner of %s (%d partitions) on %s", self.root,
                        self.partitions, address)
            self._publish()                   # what a partition that connects gets first
            published_at = saved_at = time.monotonic()
            read_since = 0
            while not stop.is_set():
                self._inbox()
                read = self._round()
                read_since += read
                now = time.monotonic()
                spacing = max(self.publish_s, self.publish_ms / 250)
                if now - published_at >= spacing and (read_since or self.rec.learner.changed()):
                    self._publish()
                    published_at, read_since = time.monotonic(), 0
                elif any(p.joining for p in self.peers.values()) and self.last is not None:
                    self._send(self.last, joiners_only=True)
                if now - saved_at >= self.checkpoint_s:
                    self._checkpoint()
                    saved_at = now
                if not read:
                    self.sock.poll(20)
            self._publish()
            self._checkpoint()
        finally:
            self.sock.close(linger=0)
            self.feed.close()
            self.lock.release()

    def _round(self) -> int:
        """Up to ``batch`` entries from each partition in turn; how many were read."""
        read = 0
        for index in range(self.partitions):
            if not self._open_catalog(index):
                continue
            entries = self.feed.read(index, self.positions[index], self.batch)
            for entry in entries:
                self._learn(index, entry)
            read += len(entries)
        return read

    def _learn(self, index: int, entry) -> None:
        merged = sum(self.positions) + entry.gseq - self.positions[index]
        self.positions[index] = entry.gseq
        try:
            event = entry.event
            if entry.stream == CATALOG_STREAM:
                if entry.gseq > self.catalog_from[index] and \
                        counted_copy(index, self.partitions, entry):
                    if event["type"] == "item":
                        self.catalog.put_item(event["item"], event)
                    elif event["type"] == "user_attrs":
                        self.catalog.put_user_attrs(event["user"], event["attrs"])
            elif event["type"] == FORGET_TYPE:
                self.catalog.attrs.pop(entry.stream, None)
                self.rec.learner.observe(dataclasses.replace(entry, gseq=merged))
            elif event["type"] != PROFILE_TYPE:
                self.rec.learner.observe(dataclasses.replace(entry, gseq=merged))
        except Exception as exc:  # noqa: BLE001 - dead-lettered in its partition
            letter = (entry.gseq, entry.stream, "learner", f"{type(exc).__name__}: {exc}"[:1000])
            logger.error("global learner: partition %d, position %d: %s", index, entry.gseq,
                         letter[3])
            for ident, peer in list(self.peers.items()):
                if peer.index == index:
                    self._post(ident, [b"dead", dumps(letter)])

    # ---------------------------------------------------------- partitions

    def _inbox(self) -> None:
        while self.sock.poll(0):
            frames = self.sock.recv_multipart()
            if len(frames) != 3:
                continue
            ident, kind, body = frames
            try:
                self._on_message(ident, kind, body)
            except Exception:  # noqa: BLE001
                logger.exception("global learner: could not use a partition's %r", kind)
        now = time.monotonic()
        for ident in [i for i, p in self.peers.items() if now - p.seen > 2 * self.absent_s]:
            del self.peers[ident]                 # gone: a new connection says hello anew

    def _on_message(self, ident: bytes, kind: bytes, body: bytes) -> None:
        payload = pickle.loads(body)          # a socket of this user on this host (global_link)
        if kind == b"hello":
            peer = self.peers.get(ident)
            if peer is None:
                index = int(payload["partition"])
                for other in [i for i, p in self.peers.items() if p.index == index]:
                    del self.peers[other]         # that partition's previous connection
                peer = self.peers[ident] = Peer(index, time.monotonic())
                logger.info("global learner: partition %d (pid %s) connected", index,
                            payload.get("pid"))
            peer.seen = time.monotonic()
            peer.joining = peer.joining or bool(payload.get("resync"))
            self._post(ident, [b"alive", dumps(self.epoch)])
        elif kind == b"batch":
            _index, batch = payload
            for what, args in batch:
                if what == "vector":
                    self.rec.learner.set_item_vector(*args)

    def _post(self, ident: bytes, frames: list) -> bool:
        try:
            self.sock.send_multipart([ident, *frames], flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:                # a peer that went away meanwhile
            logger.debug("global learner: send failed: %s", exc)
            return False

    # ---------------------------------------------------------- publishing

    def _publish(self) -> None:
        t0 = time.perf_counter()
        models = self.rec.learner.publish()
        self.last = detach(models)
        self.last_positions = list(self.positions)     # what this snapshot has learned
        self.publish_ms = (time.perf_counter() - t0) * 1000
        self.publishes += 1
        self._send(self.last, joiners_only=False)

    def _send(self, detached, *, joiners_only: bool) -> None:
        """The snapshot to every partition (or only to those that need every array: they
        get them all, and every fusion factor of their users)."""
        peers = [(i, p) for i, p in self.peers.items() if p.joining or not joiners_only]
        if not peers:
            return
        data, new, live = self.shipper.pack(detached)
        joining = any(p.joining for _, p in peers)
        full = {pid: array for pid, array in self.shipper.sent.values()} if joining else None
        bodies = {False: None if joiners_only else dumps((data, new, live)),
                  True: dumps((data, full, live)) if joining else None}
        deltas = {True: fusion_delta(self.rec.fusion, list(self.rec.fusion.users))
                  if joining else None}
        if not joiners_only:
            deltas[False] = fusion_delta(self.rec.fusion, self.changed_users)
            self.changed_users = set()
        stats = self._stats(len(data), len(new))
        for ident, peer in peers:
            delta = deltas[peer.joining]
            users = {u: f for u, f in delta["users"].items()
                     if partition_of(u, self.partitions) == peer.index}
            position = self.last_positions[peer.index]
            meta = (self.epoch, position, min(position, self.saved[peer.index]),
                    {**delta, "users": users}, stats)
            if self._post(ident, [b"models", dumps(meta), bodies[peer.joining]]):
                peer.joining = False
            else:
                peer.joining = True           # it missed arrays: the next one has them all

    def _stats(self, snapshot_bytes: int, new_arrays: int) -> dict:
        heads = [self.feed.head(i) for i in range(self.partitions)]
        return {"learner_pid": os.getpid(), "partitions": self.partitions,
                "positions": list(self.positions), "heads": heads,
                "last_publish_ms": round(self.publish_ms, 2), "snapshot_bytes": snapshot_bytes,
                "new_arrays": new_arrays, "peers": len(self.peers),
                "recommender": self.rec.stats()}

    def _checkpoint(self) -> None:
        if self.positions == self.saved and checkpoint_path(self.root).exists():
            return
        try:
            positions = list(self.positions)
            data = msgpack.packb({"format": CHECKPOINT_FORMAT, "partitions": self.partitions,
                                  "positions": positions, "learner": self.rec.learner.to_dict()},
                                 use_bin_type=True)
            write_atomic(checkpoint_path(self.root), data)
            self.saved = positions
        except OSError as exc:
            logger.error("could not save the global learner's checkpoint: %s", exc)


# ------------------------------------------------------------- a process


def run_process(config: dict, root: str) -> None:
    """A learner process: SIGTERM or SIGINT ends it with a final checkpoint."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s global-learner: %(message)s")
    GlobalLearner(config, root).run(stop)


class LearnerHandle:
    """The global learner in a process of its own, started again when it dies (after
    1, 2, ... 30 s), until ``stop``; the partitions serve their last snapshot meanwhile."""

    def __init__(self, config: dict, root: str | Path, *, restart: bool = True):
        self.config, self.root, self.restart = config, str(root), restart
        self.restarts = 0
        self.proc = None
        self._stopping = threading.Event()
        self._watch = threading.Thread(target=self._watch_loop, name="learner-watch",
                                       daemon=True)

    def start(self) -> "LearnerHandle":
        self._spawn()
        self._watch.start()
        return self

    def _spawn(self) -> None:
        ctx = mp.get_context("spawn")
        self.proc = ctx.Process(target=run_process, args=(self.config, self.root),
                                name="interest-global-learner", daemon=True)
        self.proc.start()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    def _watch_loop(self) -> None:
        while not self._stopping.is_set():
            proc = self.proc
            proc.join(0.2)
            if proc.is_alive() or self._stopping.is_set():
                continue
            if not self.restart:
                logger.error("the global learner ended (exit code %s)", proc.exitcode)
                return
            self.restarts += 1
            logger.error("the global learner ended (exit code %s); starting it again",
                         proc.exitcode)
            if self._stopping.wait(min(30.0, float(self.restarts))):
                return
            self._spawn()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM: the learner publishes, checkpoints and exits; killed past ``timeout``."""
        self._stopping.set()
        proc = self.proc
        if proc is None:
            return
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout)
        if proc.is_alive():
            logger.error("the global learner did not stop within %.0f s; killing it", timeout)
            proc.kill()
            proc.join(2)
        if self._watch.is_alive():
            self._watch.join(1)
