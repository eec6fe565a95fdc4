"""Every partition's committed log, read by position from another process.

``PartitionFeed`` opens each partition's LMDB environment (``DIR/p{i}/journal``)
beside the partition's own service, which holds its lock and is its only
writer (LMDB serves many reader processes beside one writer; nothing is ever
written through the feed). A partition whose journal does not exist yet (its
service has not started) is skipped until it does: the feed never creates one.

Catalog entries are in every partition (the router sends them to all); the
copy that counts (``counted_copy``) is the ``item`` entry of partition 0 and
the ``user_attrs`` entry of the partition that owns that user: the one whose
order against the user's own events is exact, and the only one a ``forget``
of the user erases.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from interest.engine.journal.codec import CATALOG_STREAM, StoredEvent
from interest.engine.partitions.layout import partition_dir, partition_of


def counted_copy(index: int, partitions: int, entry: StoredEvent) -> bool:
    """Whether partition ``index``'s copy of ``entry`` is the one to use (module docstring);
    True for every user entry."""
    if partitions == 1 or entry.stream != CATALOG_STREAM:
        return True
    event = entry.event
    if event["type"] == "user_attrs":
        return partition_of(str(event.get("user", "")), partitions) == index
    return index == 0


class PartitionFeed:
    def __init__(self, root: str | Path, partitions: int, store_config: dict):
        self.root = Path(root)
        self.partitions = partitions
        self.store_config = store_config
        self.stores: list = [None] * partitions

    def store(self, index: int):
        """Partition ``index``'s store, opened on first use; None while it has no journal."""
        store = self.stores[index]
        if store is None:
            journal = partition_dir(self.root, index) / "journal"
            if not (journal / "data.mdb").exists():
                return None
            from interest.engine.journal.store import LmdbStore  # noqa: PLC0415
            store = self.stores[index] = LmdbStore(
                journal, map_size_mb=self.store_config["map_size_mb"],
                max_map_size_mb=self.store_config["max_map_size_mb"], sync=False)
        return store

    def head(self, index: int) -> int:
        store = self.store(index)
        return store.head() if store is not None else 0

    def read(self, index: int, after: int, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` entries of partition ``index`` after position ``after``."""
        store = self.store(index)
        if store is None:
            return []
        return list(itertools.islice(store.read_all(after_gseq=after, chunk=limit), limit))

    def close(self) -> None:
        for store in self.stores:
            if store is not None:
                store.close()
        self.stores = [None] * self.partitions
