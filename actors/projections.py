"""The projections that deliver the committed log to actors and the catalog.

* ``UserStateProjection`` (required: ingest replies and flush wait for it):
  groups each batch by user and tells every user's actor to fold its part;
  the batch is applied when every actor has acknowledged. Durable position:
  ``position/users`` in the store's meta (a restart re-delivers what came
  after it; actors skip entries they already hold, so delivery is idempotent).
* ``CatalogProjection`` (required too): folds ``item``, ``item_profile`` and
  ``user_attrs`` entries into the in-memory ``Catalog`` that readers share (an
  item's record with its profile, by the store's own rules:
  ``engine.journal.catalog_records``), tells ``on_items`` which items an
  ``item`` entry added or changed, and drops a user's attributes at the
  user's `forget` tombstone. Its durable state is the
  materialised catalog the writer keeps in the same transaction as the log,
  so it starts from the head it loaded at.
* ``ProfileProjection``: counts each user's behaviour entries since the
  user's last model profile and, past ``refresh_min_events``, asks the
  profile scheduler for a debounced refresh. Durable position: just before
  the oldest entry of a user still waiting for a profile, so a restart
  re-arms every pending refresh.

``handle`` runs on the projection's runner thread.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Callable

from interest.actors.messages import Apply
from interest.engine.journal.codec import CATALOG_STREAM
from interest.engine.journal.catalog_records import fold_catalog_entry
from interest.engine.journal.events import FORGET_TYPE, ITEM_PROFILE_TYPE, PROFILE_TYPE
from interest.engine.journal.store import Store, position_key
from interest.engine.journal.writer import WriteJob, Writer
from interest.engine.projections.catalog import Catalog
from interest.engine.projections.runner import DeadLetters, Projection


def load_position(store: Store, name: str) -> int:
    """The saved position, or the head when none was saved (see each projection)."""
    return store.position(name) or store.head()


def save_position(writer: Writer, name: str, position: int) -> None:
    writer.submit(WriteJob(positions=[(name, position)]))


class Countdown:
    """Runs ``on_done`` once ``count`` acknowledgements have arrived (any threads)."""

    __slots__ = ("_lock", "_left", "_on_done")

    def __init__(self, count: int, on_done: Callable[[], None]):
        self._lock = threading.Lock()
        self._left = count
        self._on_done = on_done

    def done(self) -> None:
        with self._lock:
            self._left -= 1
            fire = self._left == 0
        if fire:
            self._on_done()


class UserStateProjection(Projection):
    name = "users"
    required = True

    def __init__(self, store: Store, writer: Writer, tell_user: Callable):
        self.store = store
        self.writer = writer
        self.tell_user = tell_user        # tell_user(user, message), activating on demand

    def start_position(self) -> int:
        # without a saved position every actor is still exact (activation reads the journal)
        return load_position(self.store, self.name)

    def handle(self, entries, done) -> None:
        by_user: dict[str, list] = {}
        for entry in entries:
            if entry.stream != CATALOG_STREAM:
                by_user.setdefault(entry.stream, []).append(entry)
        if not by_user:
            done()
            return
        countdown = Countdown(len(by_user), done)
        for user, group in by_user.items():
            self.tell_user(user, Apply(group, countdown.done))

    def save_position(self, position: int) -> None:
        save_position(self.writer, self.name, position)


class CatalogProjection(Projection):
    name = "catalog"
    required = True

    def __init__(self, store: Store, catalog: Catalog, dead: DeadLetters,
                 on_items: Callable[[list], None] | None = None):
        self.catalog = catalog
        self.dead = dead
        self.on_items = on_items          # new or changed items (to embed them)
        self._start = store.head()        # read before the tables: replaying after it is idempotent
        for item, record in store.items():
            catalog.put_item(item, record)
        for user, attrs in store.all_user_attrs():
            catalog.put_user_attrs(user, attrs)

    def start_position(self) -> int:
        return self._start

    def handle(self, entries, done) -> None:
        changed = []
        for entry in entries:
            if entry.stream != CATALOG_STREAM:
                if entry.event["type"] == FORGET_TYPE:
                    self.catalog.attrs.pop(entry.stream, None)
                continue
            try:
                self._put(entry.event, changed)
            except Exception as exc:  # noqa: BLE001
                self.dead.record(entry, self.name, exc)
        if changed and self.on_items is not None:
            self.on_items(changed)
        done()

    def _put(self, event: dict, changed: list) -> None:
        if event["type"] in ("item", ITEM_PROFILE_TYPE):
            item = event["item"]
            record = fold_catalog_entry(self.catalog.get(item), event)
            if record is not None:
                self.catalog.put_item(item, record)
            if event["type"] == "item":
                changed.append(item)
        elif event["type"] == "user_attrs":
            self.catalog.put_user_attrs(event["user"], event["attrs"])


class ProfileProjection(Projection):
    """Which users need a model refresh. Runs only when a model is configured.

    Counts are soft state, bounded (``max_pending`` users, least recently
    active dropped first): a user below ``refresh_min_events`` loses nothing
    that matters by being forgotten. A user whose refresh is armed is what
    the durable position protects: it stays at most just before the first
    entry of the oldest armed user without a profile yet, so after a restart
    the projection re-reads that user's entries and arms the refresh again.
    An armed user is given up after ``give_up_s`` without a profile (the
    model failed or refused); new events arm it again.
    """

    name = "profiles"

    def __init__(self, store: Store, writer: Writer, scheduler, dead: DeadLetters, *,
                 max_pending: int = 100_000, give_up_s: float = 3600.0):
        self.store = store
        self.writer = writer
        self.scheduler = scheduler        # actors.profiles.ProfileScheduler
        self.dead = dead
        self.min_events = scheduler.min_events
        self.max_pending = max_pending
        self.give_up_s = give_up_s
        #: user -> [position of the first entry since the last profile, count, armed at (monotonic) or 0]
        self.pending: OrderedDict[str, list] = OrderedDict()
        self.armed_total = 0

    def start_position(self) -> int:
        # a saved 0 (the oldest pending refresh starts at the first entry) is a position
        # too, not "none saved": only a store that never saved one starts at its head
        if self.store.meta(position_key(self.name)) is None:
            return self.store.head()
        return self.store.position(self.name)

    def handle(self, entries, done) -> None:
        for entry in entries:
            if entry.stream == CATALOG_STREAM:
                continue
            try:
                self._count(entry)
            except Exception as exc:  # noqa: BLE001
                self.dead.record(entry, self.name, exc)
        done()

    def _count(self, entry) -> None:
        user = entry.stream
        if entry.event["type"] in (PROFILE_TYPE, FORGET_TYPE):
            self.pending.pop(user, None)
            return
        slot = self.pending.get(user)
        if slot is None:
            slot = self.pending[user] = [entry.gseq, 0, 0.0]
            if len(self.pending) > self.max_pending:
                self.pending.popitem(last=False)
        else:
            self.pending.move_to_end(user)
        slot[1] += 1
        if slot[1] >= self.min_events:
            if not slot[2]:
                slot[2] = time.monotonic()
                self.armed_total += 1
            # every event past the threshold: the scheduler orders users by their newest
            # event and retries a refresh that failed
            self.scheduler.arm(user, entry.event.get("ts"), entry.seq)

    def save_position(self, position: int) -> None:
        now = time.monotonic()
        for user, slot in list(self.pending.items()):
            if slot[2] and now - slot[2] > self.give_up_s:
                del self.pending[user]
        oldest = min((slot[0] for slot in self.pending.values() if slot[2]),
                     default=position + 1)
        save_position(self.writer, self.name, min(position, oldest - 1))

    def stats(self) -> dict:
        return {"users_counted": len(self.pending), "armed": self.armed_total}
