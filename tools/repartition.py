"""`interest replay repartition --data DIR --to N --out DIR2`: the same logs, N partitions.

Offline (the source's data directories are locked while it runs, so a running
service refuses it and it refuses a running service). The source is an
ordinary data directory or a partitioned one (engine.partitions.layout); the
result is a partitioned directory with ``N`` partitions.

What is copied, exactly:

* every journal entry, with its stream, per-stream seq (erasure gaps
  included), the item tags it was enriched with and when it was recorded
  (``WriteBatch.restored``), so folding a user's copied journal gives the
  state the source gives; each event id goes into the destination's id index,
  so a re-sent event is still a duplicate. A user's entries go to
  ``partition_of(user, N)``, ``item`` entries to every partition, a user's
  ``user_attrs`` entries to that user's partition (as the router sends them).
* every user's snapshot record (valid one: same seq, same state), so
  activation stays cheap and ``interest replay check`` has something to
  compare.

Order: the destination logs follow the source's commit order. From a
partitioned source, the partitions' logs are merged by commit time (each
partition's own order is kept, so each user's order is); the catalog copies
the source partitions hold are taken once: ``item`` entries from partition 0,
a user's ``user_attrs`` entries from the partition that owns that user (the
only copy a ``forget`` of that user erased).

Not copied: projection positions (the user and profile projections start at
the head: a user's state comes from snapshot + journal at activation; a
refresh that was armed and not done waits for the user's next events), dead
letters (they name positions of the source), model checkpoints (the models
are rebuilt from the new logs by the learner).

With ``verify`` (the default) every user's state folded from the result is
compared with the one folded from the source before the tool says ok.
"""

from __future__ import annotations

import heapq
import itertools
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Iterator

from interest.engine.errors import ConfigError, StoreError
from interest.engine.journal.codec import CATALOG_STREAM, StoredEvent
from interest.engine.journal.lock import DataDirLock
from interest.engine.journal.store import LmdbStore, WriteBatch
from interest.engine.partitions.layout import (ensure_layout, partition_dir, partition_of,
                                               read_layout)
from interest.engine.partitions.split import EVERY, owner
from interest.engine.projections.partition_feed import counted_copy
from interest.engine.projections.state import FoldParams, replay

#: entries per destination commit
BATCH = 5000


def data_dirs(data: str | Path) -> list[Path]:
    """The single-partition data directories ``data`` is made of, in partition order."""
    data = Path(data)
    count = read_layout(data)
    return [data] if count is None else [partition_dir(data, i) for i in range(count)]


def merged(stores: list) -> Iterator[StoredEvent]:
    """Every entry of the source once, in commit order (by commit time across partitions)."""
    feeds = [_kept(i, len(stores), store) for i, store in enumerate(stores)]
    if len(feeds) == 1:
        return feeds[0]
    return heapq.merge(*feeds, key=lambda e: e.recorded_at)


def _kept(index: int, partitions: int, store) -> Iterator[StoredEvent]:
    return (e for e in store.read_all() if counted_copy(index, partitions, e))


def repartition(source: str | Path, out: str | Path, partitions: int, params: FoldParams, *,
                verify: bool = True) -> dict:
    """Write ``out`` with ``partitions`` partitions from the logs of ``source``."""
    if partitions < 1:
        raise ConfigError(f"--to must be at least 1, not {partitions}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty: repartition writes a new directory")
    sources = data_dirs(source)
    for folder in sources:
        if not (folder / "journal").exists():
            raise ConfigError(f"no journal at {folder / 'journal'}")
    with ExitStack() as stack:
        for folder in sources:
            stack.enter_context(DataDirLock(folder))
        src = [stack.enter_context(closing(LmdbStore(f / "journal", sync=False)))
               for f in sources]
        ensure_layout(out, partitions)
        dst = []
        for j in range(partitions):
            stack.enter_context(DataDirLock(partition_dir(out, j)))
            dst.append(stack.enter_context(closing(
                LmdbStore(partition_dir(out, j) / "journal", sync=False))))
        report = _copy(src, dst)
        report["snapshots"] = _copy_snapshots(src, dst)
        for store in dst:
            store.commit(WriteBatch(positions=[("users", store.head()),
                                               ("profiles", store.head())]))
            store.env.sync(True)
        if verify:
            report["verified"] = _verify(src, dst, params)
    report.update({"source_partitions": len(sources), "partitions": partitions, "out": str(out)})
    return report


def _copy(src: list, dst: list) -> dict:
    n = len(dst)
    pending: list[list[StoredEvent]] = [[] for _ in dst]
    counts = {"entries": 0, "catalog_entries": 0, "duplicates": 0}

    def flush(j: int) -> None:
        results = dst[j].commit(WriteBatch(restored=pending[j]))
        counts["duplicates"] += sum(1 for r in results if r.stored is None)
        pending[j] = []
    for entry in merged(src):
        if entry.stream == CATALOG_STREAM:     # items to every partition, user_attrs to the owner
            where = owner(entry.event, n)
            targets = range(n) if where == EVERY else (where,)
            counts["catalog_entries"] += 1
        else:
            targets = (partition_of(entry.stream, n),)
            counts["entries"] += 1
        for j in targets:
            pending[j].append(entry)
            if len(pending[j]) >= BATCH:
                flush(j)
    for j in range(n):
        if pending[j]:
            flush(j)
    if counts["duplicates"]:
        raise StoreError(f"{counts['duplicates']} entries of the source were refused as "
                         f"duplicates: its partitions hold the same event twice")
    return counts


def _copy_snapshots(src: list, dst: list) -> int:
    copied = 0
    for store in src:
        users = [s for s in store.streams() if s != CATALOG_STREAM]
        for chunk in _chunks(users, 1000):
            by_target: dict[int, list] = {}
            for user in chunk:
                snap = store.snapshot(user)           # a record failing its check is left out
                if snap is not None:
                    by_target.setdefault(partition_of(user, len(dst)), []).append((user, *snap))
            for j, snapshots in by_target.items():
                dst[j].commit(WriteBatch(snapshots=snapshots))
                copied += len(snapshots)
    return copied


def _verify(src: list, dst: list, params: FoldParams) -> dict:
    """Every user's fold from the result equals the fold from the source; the result's
    catalog tables equal partition 0's (items) and the owners' (attributes)."""
    users = mismatches = 0
    for store in src:
        for user in store.streams():
            if user == CATALOG_STREAM:
                continue
            users += 1
            target = dst[partition_of(user, len(dst))]
            mine, theirs = list(store.read(user)), list(target.read(user))
            same = [(e.seq, e.event, e.tags) for e in mine] == \
                [(e.seq, e.event, e.tags) for e in theirs]
            if not same or replay(user, mine, params) != replay(user, theirs, params):
                mismatches += 1
    if mismatches:
        raise StoreError(f"{mismatches} of {users} users fold differently after repartitioning")
    items = dict(src[0].items())
    attrs = {user: a for i, store in enumerate(src) for user, a in store.all_user_attrs()
             if partition_of(user, len(src)) == i}
    for j, store in enumerate(dst):
        mine = {user: a for user, a in attrs.items() if partition_of(user, len(dst)) == j}
        if dict(store.items()) != items or dict(store.all_user_attrs()) != mine:
            raise StoreError(f"the catalog of {store.path} differs from the source's")
    return {"users": users, "ok": True}


def _chunks(items: list, size: int):
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk
