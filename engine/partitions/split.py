"""Which partitions an event goes to, and a batch split into per-partition parts.

An event map goes to its user's partition (``layout.partition_of``); item
events (the catalog every partition scores from) and ``item_profile`` events
(the service's own, never from producers: they travel only when
``interest replay repartition`` copies a log) go to every partition. A
``user_attrs`` event, though in the catalog stream, belongs to one user: it
goes to the owner only, so that ``forget`` there erases its only copy (and the
global learner reads demographics from the owner).
Anything the router cannot route (not a map, no string user) goes to
partition 0, which rejects it with the same message an unpartitioned service
gives: the router never validates events itself (each partition does).
"""

from __future__ import annotations

from dataclasses import dataclass

from interest.engine.partitions.layout import partition_of

EVERY = -1          # owner of a catalog event: every partition
#: item events and the service's item profiles (``item_profile``, folded into the item's
#: record): every partition scores from the whole catalog
BROADCAST_TYPES = frozenset({"item", "item_profile"})


def owner(event, partitions: int) -> int:
    """The partition of ``event``, or ``EVERY``."""
    if not isinstance(event, dict):
        return 0
    if event.get("type") in BROADCAST_TYPES:
        return EVERY
    user = event.get("user")
    if isinstance(user, str) and user:
        return partition_of(user, partitions)
    return 0


def is_catalog(event) -> bool:
    return isinstance(event, dict) and event.get("type") in BROADCAST_TYPES


def by_partition(events: list, partitions: int) -> dict[int, list]:
    """Each partition's events in arrival order (catalog events in every list)."""
    out: dict[int, list] = {}
    for event in events:
        where = owner(event, partitions)
        if where == EVERY:
            for index in range(partitions):
                out.setdefault(index, []).append(event)
        else:
            out.setdefault(where, []).append(event)
    return out


@dataclass(frozen=True)
class Part:
    """Events of an ``ingest`` request sent to one partition: ``indices`` into the
    request's list; ``counted`` says whether its counts go into the combined reply
    (a catalog run goes to every partition but is counted once)."""

    partition: int
    indices: tuple
    counted: bool


def ingest_parts(events: list, partitions: int) -> list[Part]:
    """An ``ingest`` request's events as parts, in order: each run of catalog events
    goes to every partition (counted once, from partition 0), each run of user
    events is split by owner. Sent in this order on each partition's connection,
    every partition applies its events in the request's order."""
    parts: list[Part] = []
    run: list[int] = []
    run_catalog = None
    for index, event in enumerate(events):
        catalog = is_catalog(event)
        if run and catalog != run_catalog:
            parts.extend(_run_parts(events, run, run_catalog, partitions))
            run = []
        run.append(index)
        run_catalog = catalog
    if run:
        parts.extend(_run_parts(events, run, run_catalog, partitions))
    return parts


def _run_parts(events: list, run: list[int], catalog: bool, partitions: int) -> list[Part]:
    if catalog:
        return [Part(p, tuple(run), p == 0) for p in range(partitions)]
    owners: dict[int, list[int]] = {}
    for index in run:
        owners.setdefault(owner(events[index], partitions), []).append(index)
    return [Part(p, tuple(indices), True) for p, indices in sorted(owners.items())]


def combine_ingest(parts: list[Part], replies: list[dict]) -> dict:
    """One ``ingest`` reply from the parts' replies (indices mapped back)."""
    accepted = duplicates = 0
    rejected = []
    for part, reply in zip(parts, replies):
        if not part.counted:
            continue
        accepted += reply.get("accepted", 0)
        duplicates += reply.get("duplicates", 0)
        for entry in reply.get("rejected", ()):
            rejected.append({**entry, "index": part.indices[entry["index"]]})
    rejected.sort(key=lambda entry: entry["index"])
    return {"accepted": accepted, "duplicates": duplicates, "rejected": rejected}
