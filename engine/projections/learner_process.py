"""The model learner in a process of its own (``[projections] learner = "process"``).

Learning costs more CPU per event than anything else in the service, and in
one process it competes with the read path for Python's GIL. Here it gets a
core of its own, as ARCHITECTURE.md asks ("work that needs its own core runs
in its own process; LMDB serves many reader processes beside one writer"):

* The child process opens the same LMDB environment read-only (no lock: the
  service holds it), reads the committed log by position, keeps its own
  catalog, learns, checkpoints the models (its durable position) and, at most
  every ``publish_ms`` and never more than a fifth of its time, sends a
  snapshot: the immutable ``Models`` (numpy arrays; the live references, the
  catalog and the fusion weights, are left out) plus the
  fusion weights that changed since the last one.
* The parent (``LearnerProcess``, on the service's side) swaps the snapshot in
  as ``models`` (re-attached to its own catalog, fusion object and sink), moves
  its ``position`` and fires the waiters, like a ``ProjectionRunner``. What the
  read path serves (user, query, seen items) and item vectors from the
  language model go to the child in batches.

The two processes talk over a ``multiprocessing`` pipe between this service's
own processes (pickle, which is never used on the service's sockets).
"""

from __future__ import annotations

import copy
import io
import itertools
import logging
import multiprocessing as mp
import pickle
import signal
import threading
import time
from pathlib import Path

import numpy as np

from interest.engine.journal.codec import CATALOG_STREAM
from interest.engine.journal.events import FORGET_TYPE, PROFILE_TYPE
from interest.engine.projections.log import CommittedLog
from interest.engine.projections.runner import DeadLetters, Positioned
from interest.engine.recommend.scorers import Rows

logger = logging.getLogger(__name__)

#: the item-vector batches the parent sends at most this often
SEND_S = 0.05


def detach(models):
    """A copy of ``models`` for the service: without its live references (they do not
    cross processes), and with each neighbour table packed into three arrays."""
    out = copy.copy(models)
    out.fusion = out.catalog = None
    out.scorers = tuple(_packed(scorer) for scorer in models.scorers)
    return out


def _packed(scorer):
    rows = getattr(scorer, "rows", None)
    if not isinstance(rows, Rows):
        return scorer
    out = copy.copy(scorer)
    out.rows = Rows(PackedRows(rows.rows), rows.totals)
    return out


class PackedRows:
    """A neighbour table's rows as one CSR (offsets, positions, counts) instead of two
    small arrays per item: the service takes a snapshot in with a few large copies, not
    thousands of small objects. ``rows[i]`` is ``(positions, counts)`` or None, as in
    the list it replaces; the arrays are read-only views."""

    __slots__ = ("indptr", "idx", "vals")

    def __init__(self, rows: list):
        lengths = np.fromiter((0 if r is None else len(r[0]) for r in rows), np.intp, len(rows))
        self.indptr = np.zeros(len(rows) + 1, dtype=np.intp)
        np.cumsum(lengths, out=self.indptr[1:])
        present = [r for r in rows if r is not None]
        self.idx = np.concatenate([r[0] for r in present]) if present else \
            np.zeros(0, dtype=np.intp)
        self.vals = np.concatenate([r[1] for r in present]) if present else np.zeros(0)
        for array in (self.indptr, self.idx, self.vals):
            array.flags.writeable = False

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def __getitem__(self, i: int):
        a, b = int(self.indptr[i]), int(self.indptr[i + 1])
        return None if a == b else (self.idx[a:b], self.vals[a:b])

    def __getstate__(self):
        return self.indptr, self.idx, self.vals

    def __setstate__(self, state) -> None:
        self.indptr, self.idx, self.vals = state


def fusion_delta(fusion, users) -> dict:
    with fusion._lock:  # noqa: SLF001 - a consistent copy of what changed
        return {"segments": {s: dict(w) for s, w in fusion.segments.items()},
                "updates": dict(fusion.updates),
                "users": {u: dict(fusion.users[u]) for u in users if u in fusion.users}}


def track_fusion(fusion, changed: set) -> None:
    """Wrap ``fusion.credit`` so that every user it credits lands in ``changed`` (what
    ``fusion_delta`` ships with the next snapshot)."""
    credit = fusion.credit

    def tracked(user, segment, rewards):
        credit(user, segment, rewards)
        if user is not None:
            changed.add(user)
    fusion.credit = tracked


def apply_fusion_delta(fusion, delta: dict) -> None:
    with fusion._lock:  # noqa: SLF001
        fusion.segments.update(delta["segments"])
        fusion.updates = delta["updates"]
        for user, factors in delta["users"].items():
            fusion.users[user] = factors
            fusion.users.move_to_end(user)
        while len(fusion.users) > fusion.max_users:
            fusion.users.popitem(last=False)


# ------------------------------------------------------- structural sharing


class Shipper:
    """Child side: pickles a snapshot, sending each read-only numpy array once.

    A snapshot shares every unchanged array (a neighbour row, a popularity
    vector) with the one before, and a read-only array never changes, so an
    array already sent goes as a reference (pickle's persistent id) and only
    new arrays travel. ``live`` lists the ids the snapshot uses, so both sides
    forget the arrays no snapshot needs any more.
    """

    def __init__(self, min_bytes: int = 256):
        self.min_bytes = min_bytes       # smaller arrays are cheaper inline
        self.sent: dict[int, tuple[int, np.ndarray]] = {}   # id(array) -> (pid, array)
        self._pids = itertools.count(1)

    def pack(self, obj) -> tuple[bytes, dict, list]:
        buf = io.BytesIO()
        pickler = _SharingPickler(buf, self)
        pickler.dump(obj)
        self.sent = {id(a): (pid, a) for pid, a in pickler.used.items()}
        return buf.getvalue(), pickler.new, list(pickler.used)


class _SharingPickler(pickle.Pickler):
    def __init__(self, file, shipper: Shipper):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.shipper = shipper
        self.used: dict[int, np.ndarray] = {}    # pid -> array, every array referenced
        self.new: dict[int, np.ndarray] = {}     # pid -> array, those not sent before

    def persistent_id(self, obj):
        if type(obj) is not np.ndarray or obj.flags.writeable \
                or obj.nbytes < self.shipper.min_bytes:
            return None
        hit = self.shipper.sent.get(id(obj))
        if hit is not None and hit[1] is obj:
            pid = hit[0]
        else:
            pid = next(self.shipper._pids)  # noqa: SLF001
            self.new[pid] = obj
        self.used[pid] = obj
        return pid


class Receiver:
    """Parent side: the arrays received so far, by id, and the unpickling that uses them."""

    def __init__(self):
        self.arrays: dict[int, np.ndarray] = {}

    def unpack(self, data: bytes, new: dict, live: list):
        self.arrays.update(new)
        models = _SharingUnpickler(io.BytesIO(data), self.arrays).load()
        self.arrays = {pid: self.arrays[pid] for pid in live}
        return models


class _SharingUnpickler(pickle.Unpickler):
    def __init__(self, file, arrays: dict):
        super().__init__(file)
        self.arrays = arrays

    def persistent_load(self, pid):
        return self.arrays[pid]


# ----------------------------------------------------------------- parent


class LearnerProcess(Positioned):
    """The service's side of the learner process; quacks like a ``ProjectionRunner``."""

    name = "learner"

    def __init__(self, recommender, config: dict, data_dir: Path, log: CommittedLog,
                 dead: DeadLetters):
        self.recommender = recommender           # loaded from the checkpoint by the service
        self.catalog = recommender.catalog
        self.fusion = recommender.fusion
        self.log = log
        self.dead = dead
        self.projection = self
        self.models = self._attach(recommender.learner.publish())
        self.position = self.saved = recommender.gseq
        self._init_waiting()
        self._outbox: list = []
        self._closing = False
        self.publishes = 0
        self.unpack_ms = 0.0
        self.restarts = 0
        self.child_stats: dict = {}
        self.receiver = Receiver()
        self._config, self._data_dir = config, str(data_dir)
        self._send_lock = threading.Lock()
        self._conn = self._proc = None
        self._threads = [threading.Thread(target=self._receive, name="learner-in", daemon=True),
                         threading.Thread(target=self._send_loop, name="learner-out",
                                          daemon=True)]

    def start(self) -> "LearnerProcess":
        self._spawn()
        for thread in self._threads:
            thread.start()
        return self

    def _spawn(self) -> None:
        """Start a learner process; it resumes from the last model checkpoint."""
        self.receiver = Receiver()           # a new child ships every array afresh
        ctx = mp.get_context("spawn")
        conn, child = ctx.Pipe()
        proc = ctx.Process(target=run_child, name="interest-learner",
                           args=(child, self._config, self._data_dir), daemon=True)
        proc.start()
        child.close()
        with self._send_lock:
            self._conn, self._proc = conn, proc

    def _attach(self, models):
        models.catalog, models.fusion = self.catalog, self.fusion
        return models

    # ------------------------------------------------ what the service calls

    def set_item_vector(self, item: str, vector) -> None:
        self._outbox.append(("vector", (item, vector)))

    def stats(self) -> dict:
        out = {k: v for k, v in self.child_stats.items() if k != "recommender"}
        return {"process": self._proc.pid, "alive": self._proc.is_alive(),
                "publishes": self.publishes, "restarts": self.restarts,
                "last_unpack_ms": round(self.unpack_ms, 2), **out}

    def recommender_stats(self) -> dict:
        """The models' own statistics, as of the last snapshot the child sent."""
        return self.child_stats.get("recommender") or self.recommender.stats()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the child to checkpoint and exit; release every waiter."""
        if not self._closed.is_set() and self._proc is not None:
            self._closing = True
            self._flush_outbox()
            self._send(("stop", None))
            self._proc.join(timeout)
            if self._proc.is_alive():
                logger.error("the learner process did not stop within %.0f s; killing it",
                             timeout)
                self._proc.kill()
                self._proc.join(2)
        self._release_waiters()
        if self._conn is not None:
            self._conn.close()

    # ----------------------------------------------------------- channel

    def _send(self, message) -> None:
        with self._send_lock:
            try:
                self._conn.send(message)
            except (OSError, ValueError):
                pass                                # the child is gone: stop() reports it

    def _flush_outbox(self) -> None:
        batch, self._outbox = self._outbox, []
        if batch:
            self._send(("batch", batch))

    def _send_loop(self) -> None:
        while not self._closed.wait(SEND_S):
            self._flush_outbox()

    def _receive(self) -> None:
        """Snapshots from the child; a child that dies is started again (it resumes from
        its checkpoint; until then the last snapshot keeps serving)."""
        while True:
            try:
                kind, payload = self._conn.recv()
            except (EOFError, OSError):
                if self._closing:
                    return
                self.restarts += 1
                logger.error("the learner process ended (exit code %s); starting it again, "
                             "the models stay as they were meanwhile", self._proc.exitcode)
                self._proc.join(1)
                if self._closing or self._closed.wait(min(30.0, float(self.restarts))):
                    return
                self._spawn()
                continue
            try:
                self._on_message(kind, payload)
            except Exception:  # noqa: BLE001
                logger.exception("could not use the learner process's %s", kind)

    def _on_message(self, kind: str, payload) -> None:
        if kind == "models":
            position, packed, delta, stats = payload
            t0 = time.perf_counter()
            models = self._attach(self.receiver.unpack(*packed))
            self.unpack_ms = (time.perf_counter() - t0) * 1000
            apply_fusion_delta(self.fusion, delta)
            self.models = models
            self.publishes += 1
            self.child_stats = stats
            self._advance(position)
        elif kind == "saved":
            self.saved = payload
        elif kind == "dead":
            self.dead.record_letter(*payload)


# ------------------------------------------------------------------ child


def run_child(conn, config: dict, data_dir: str) -> None:
    """The learner process: learn from the log, publish snapshots, checkpoint, until told.

    It ignores SIGINT and SIGTERM (a Ctrl-C reaches the whole process group): the
    service stops it through the pipe, and its end of the pipe closing (the service
    was killed) ends it too."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s learner: %(message)s")
    try:
        _Child(conn, config, Path(data_dir)).run()
    except _ParentGone:
        pass                      # the service died (kill -9): exit without a checkpoint
    except Exception:  # noqa: BLE001
        logger.exception("the learner process failed")
    finally:
        conn.close()


class _ParentGone(Exception):
    """The service's end of the pipe is closed."""


class _Child:
    def __init__(self, conn, config: dict, data_dir: Path):
        from interest.engine.journal.store import LmdbStore  # noqa: PLC0415
        from interest.engine.projections.catalog import Catalog  # noqa: PLC0415
        from interest.engine.projections.state import FoldParams  # noqa: PLC0415
        from interest.engine.recommend import Recommender, model_path  # noqa: PLC0415
        cfg, rec_cfg = config["store"], config["recommend"]
        self.conn = conn
        self.store = LmdbStore(data_dir / "journal", map_size_mb=cfg["map_size_mb"],
                               max_map_size_mb=cfg["max_map_size_mb"], sync=False)
        self.catalog = Catalog()
        self.catalog_from = self.store.head()
        for item, record in self.store.items():
            self.catalog.put_item(item, record)
        for user, attrs in self.store.all_user_attrs():
            self.catalog.put_user_attrs(user, attrs)
        self.path = model_path(data_dir)
        params = FoldParams.from_config(config)
        self.rec = self._load(lambda: Recommender.from_config(self.catalog, params, config))
        self.position = self.rec.gseq
        self.publish_s = config["projections"]["publish_ms"] / 1000
        self.checkpoint_s = rec_cfg["checkpoint_seconds"]
        self.changed_users: set = set()
        self.shipper = Shipper()
        track_fusion(self.rec.fusion, self.changed_users)
        self.publish_ms = 0.0

    def _load(self, fresh):
        """The checkpointed models, or fresh ones where the service discarded them too."""
        rec = fresh()
        try:
            rec.load(self.path)
        except Exception:  # noqa: BLE001 - the service logged why and starts afresh as well
            return fresh()
        return fresh() if rec.gseq > self.store.head() else rec

    def run(self) -> None:
        published_at = saved_at = time.monotonic()
        learned = 0
        while True:
            if not self._inbox():
                break
            # chunk = what is used: read_all decodes a whole chunk before yielding any of it
            entries = list(itertools.islice(
                self.store.read_all(after_gseq=self.position, chunk=2000), 2000))
            for entry in entries:
                self._learn(entry)
            if entries:
                self.position = entries[-1].gseq
                learned += len(entries)
            now = time.monotonic()
            spacing = max(self.publish_s, self.publish_ms / 250)
            # at most every ``spacing``, caught up or not: every snapshot the service takes
            # in holds its GIL while it is unpickled
            if (learned or self.rec.learner.changed()) and now - published_at >= spacing:
                self._publish()
                published_at, learned = time.monotonic(), 0
            if now - saved_at >= self.checkpoint_s:
                self._checkpoint()
                saved_at = now
            if not entries:
                time.sleep(0.002)
        self._publish()
        self._checkpoint()

    def _inbox(self) -> bool:
        """Handle what the parent sent; False once told to stop or the parent is gone."""
        while self.conn.poll():
            try:
                kind, payload = self.conn.recv()
            except (EOFError, OSError):
                raise _ParentGone from None
            if kind == "stop":
                return False
            for what, args in payload:
                if what == "vector":
                    self.rec.learner.set_item_vector(*args)
        return True

    def _learn(self, entry) -> None:
        try:
            if entry.stream == CATALOG_STREAM:
                if entry.gseq > self.catalog_from:
                    event = entry.event
                    if event["type"] == "item":
                        self.catalog.put_item(event["item"], event)
                    elif event["type"] == "user_attrs":
                        self.catalog.put_user_attrs(event["user"], event["attrs"])
            elif entry.event["type"] == FORGET_TYPE:
                self.catalog.attrs.pop(entry.stream, None)
                self.rec.learner.observe(entry)
            elif entry.event["type"] != PROFILE_TYPE:
                self.rec.learner.observe(entry)
        except Exception as exc:  # noqa: BLE001 - dead-lettered by the parent
            text = f"{type(exc).__name__}: {exc}"[:1000]
            self.conn.send(("dead", (entry.gseq, entry.stream, "learner", text)))

    def _publish(self) -> None:
        t0 = time.perf_counter()
        models = self.rec.learner.publish()
        data, arrays, live = self.shipper.pack(detach(models))
        delta = fusion_delta(self.rec.fusion, self.changed_users)
        self.changed_users = set()
        self.publish_ms = (time.perf_counter() - t0) * 1000
        stats = {"last_publish_ms": round(self.publish_ms, 2), "snapshot_bytes": len(data),
                 "new_arrays": len(arrays), "recommender": self.rec.stats()}
        self.conn.send(("models", (self.position, (data, arrays, live), delta, stats)))

    def _checkpoint(self) -> None:
        if self.rec.gseq > self.rec.base_gseq:
            try:
                self.rec.save(self.path)
                self.conn.send(("saved", self.rec.gseq))
            except OSError as exc:
                logger.error("could not save the model checkpoint: %s", exc)
