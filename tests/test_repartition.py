"""`interest replay repartition`: the same logs under another partition count, exactly.

Real LMDB stores in temp dirs: a source written through the store's own commit
rules (tags enriched at commit, duplicates refused, snapshots, an erasure that
leaves a gap in a user's seq), repartitioned, then checked with `replay check`
on every partition and user by user against the source."""

from __future__ import annotations

import json
import random

import pytest

from interest.engine.config import load_config
from interest.engine.errors import ConfigError, DataDirLocked
from interest.engine.journal.codec import CATALOG_STREAM
from interest.engine.journal.lock import DataDirLock
from interest.engine.journal.store import LmdbStore, WriteBatch
from interest.engine.partitions.layout import (ensure_layout, partition_dir, partition_of,
                                               read_layout)
from interest.engine.projections.state import FoldParams, replay
from interest.tools import replay as replay_tool
from interest.tools.repartition import repartition
from tests.conftest import event, item_event

PARAMS = FoldParams.from_config(load_config())
USERS = [f"u{n}" for n in range(12)]


def catalog_events() -> list[dict]:
    out = [item_event(f"m{i}", ["Drama" if i % 2 else "Comedy", f"t{i % 3}"]) for i in range(8)]
    # a retag after some events: entries before and after it carry different tags
    out.append(item_event("m0", ["Thriller"], ts=50.0))
    out += [{"v": 1, "id": f"attrs-{u}", "type": "user_attrs", "ts": 1.0, "user": u,
             "attrs": {"age": 20 + n, "gender": "F" if n % 2 else "M"}}
            for n, u in enumerate(USERS)]
    return out


def user_events(rng: random.Random) -> list[dict]:
    out = []
    for n in range(160):
        user = rng.choice(USERS)
        kind = rng.choice(["view", "click", "purchase", "rate"])
        extra = {"value": float(rng.randint(1, 5))} if kind == "rate" else {}
        out.append(event(f"e{n}", kind, user=user, item=f"m{rng.randrange(8)}",
                         ts=100.0 + n, **extra))
    return out


def write_source(store: LmdbStore, partitions: int | None = None) -> None:
    """Commit the history in small group commits; a partitioned source gets the catalog in
    every partition (as the router sends it) and each user's events in its own."""
    rng = random.Random(7)
    history = catalog_events()[:9] + user_events(rng)[:80] + catalog_events()[9:] \
        + user_events(random.Random(8))[80:]
    for start in range(0, len(history), 7):
        chunk = history[start:start + 7]
        store.commit(WriteBatch(events=[(_stream(e), e) for e in chunk],
                                recorded_at=1000.0 + start))
    # a re-sent event is a duplicate, not a second entry
    again = store.commit(WriteBatch(events=[(_stream(history[20]), history[20])]))
    assert again[0].stored is None


def _stream(wire: dict) -> str:
    return CATALOG_STREAM if wire["type"] in ("item", "user_attrs") else wire["user"]


def snapshot_some(store: LmdbStore) -> None:
    for user in USERS[::3]:
        entries = list(store.read(user))
        seq = len(entries) // 2
        if seq:
            state = replay(user, entries[:seq], PARAMS)
            store.commit(WriteBatch(snapshots=[(user, entries[seq - 1].seq, state.encode())]))


def plain_source(root) -> LmdbStore:
    store = LmdbStore(root / "journal", sync=False)
    write_source(store)
    snapshot_some(store)
    return store


def folds(data) -> dict:
    """user -> (entries as (seq, event, tags, recorded_at), folded state) over every partition."""
    out = {}
    count = read_layout(data)
    dirs = [data] if count is None else [partition_dir(data, i) for i in range(count)]
    for folder in dirs:
        store = LmdbStore(folder / "journal")
        try:
            for user in store.streams():
                if user != CATALOG_STREAM:
                    entries = list(store.read(user))
                    assert user not in out, f"{user} is in two partitions"
                    out[user] = ([(e.seq, e.event, e.tags, e.recorded_at) for e in entries],
                                 replay(user, entries, PARAMS))
        finally:
            store.close()
    return out


def check_every_partition(data, capsys) -> list[dict]:
    assert replay_tool.main(["check", "--data", str(data), "--no-progress"]) == 0
    reports = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert reports and all(r["ok"] for r in reports)
    return reports


def test_an_unpartitioned_store_becomes_three_partitions_exactly(tmp_path, capsys):
    source = tmp_path / "src"
    plain_source(source).close()
    report = repartition(source, tmp_path / "out", 3, PARAMS)
    assert report["verified"]["ok"] and report["snapshots"] == 4
    out = tmp_path / "out"
    assert read_layout(out) == 3
    assert folds(out) == folds(source)                       # every user, every entry
    reports = check_every_partition(out, capsys)
    assert len(reports) == 3 and sum(r["snapshots"] for r in reports) == 4
    for i in range(3):
        store = LmdbStore(partition_dir(out, i) / "journal")
        try:
            users = [s for s in store.streams() if s != CATALOG_STREAM]
            assert users and all(partition_of(u, 3) == i for u in users)
            assert len(dict(store.items())) == 8                 # the catalog is everywhere
            assert dict(store.items())["m0"]["tags"] == ["Thriller"]
            # ids were carried: re-sending an old event is still a duplicate
            user = users[0]
            first = next(store.read(user)).event
            assert store.commit(WriteBatch(events=[(user, first)]))[0].stored is None
            head = store.head()
            assert store.position("users") == head and store.position("profiles") == head
        finally:
            store.close()


def test_a_partitioned_store_goes_to_another_count_and_back(tmp_path, capsys):
    two = tmp_path / "two"
    plain_source(tmp_path / "src").close()
    repartition(tmp_path / "src", two, 2, PARAMS)
    five = tmp_path / "five"
    report = repartition(two, five, 5, PARAMS)
    assert report["source_partitions"] == 2 and report["verified"]["ok"]
    one = tmp_path / "one"
    repartition(five, one, 1, PARAMS)
    want = folds(tmp_path / "src")
    assert folds(five) == want and folds(one) == want
    check_every_partition(five, capsys)
    check_every_partition(one, capsys)


def test_an_erased_user_keeps_its_seq_gap_and_its_attributes_stay_erased(tmp_path, capsys):
    source = tmp_path / "src"
    store = plain_source(source)
    victim = USERS[1]
    tomb = {"v": 1, "id": "forget-1", "type": "forget", "ts": 500.0, "user": victim}
    result = store.commit(WriteBatch(events=[(victim, tomb)]))[0]
    assert result.stored.seq > 1                      # the seq goes on after the erased ones
    store.commit(WriteBatch(events=[(victim, event("late", user=victim, item="m3", ts=600.0))]))
    store.close()
    repartition(source, tmp_path / "out", 2, PARAMS)
    assert folds(tmp_path / "out") == folds(source)
    target = LmdbStore(partition_dir(tmp_path / "out", partition_of(victim, 2)) / "journal")
    try:
        seqs = [e.seq for e in target.read(victim)]
        assert seqs[0] == result.stored.seq and len(seqs) == 2
        assert target.user_attrs(victim) is None
    finally:
        target.close()
    check_every_partition(tmp_path / "out", capsys)


def test_it_refuses_a_store_in_use_and_an_output_that_is_not_empty(tmp_path, capsys):
    source = tmp_path / "src"
    plain_source(source).close()
    with DataDirLock(source), pytest.raises(DataDirLocked):
        repartition(source, tmp_path / "out", 2, PARAMS)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ConfigError):
        repartition(source, tmp_path / "full", 2, PARAMS)
    code = replay_tool.main(["repartition", "--data", str(source), "--to", "2",
                             "--out", str(tmp_path / "cli")])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["partitions"] == 2 and printed["verified"]["ok"]


def test_a_partitioned_source_takes_each_catalog_copy_once(tmp_path):
    """Two partitions written as the router writes them: the catalog in both; the result
    holds each catalog entry once per partition, not twice."""
    root = tmp_path / "src"
    ensure_layout(root, 2)
    stores = [LmdbStore(partition_dir(root, i) / "journal", sync=False) for i in range(2)]
    try:
        rng = random.Random(3)
        cat = catalog_events()
        events = user_events(rng)
        for i, store in enumerate(stores):
            store.commit(WriteBatch(events=[(CATALOG_STREAM, e) for e in cat], recorded_at=1.0))
            mine = [e for e in events if partition_of(e["user"], 2) == i]
            for start in range(0, len(mine), 5):
                store.commit(WriteBatch(events=[(e["user"], e) for e in mine[start:start + 5]],
                                        recorded_at=2.0 + start + i / 10))
    finally:
        for store in stores:
            store.close()
    report = repartition(root, tmp_path / "out", 3, PARAMS)
    assert report["catalog_entries"] == len(cat) and report["entries"] == len(events)
    assert folds(tmp_path / "out") == folds(root)


@pytest.mark.parametrize("kind", ["memory", "lmdb"])
def test_a_restored_entry_keeps_its_seq_tags_and_time_and_its_id(kind, tmp_path):
    from interest.engine.journal.codec import StoredEvent
    from interest.engine.journal.store import MemoryStore
    store = MemoryStore() if kind == "memory" else LmdbStore(tmp_path / "j", sync=False)
    try:
        copies = [StoredEvent(stream="u1", seq=seq, gseq=900 + seq, recorded_at=5.0 + seq,
                              event=event(f"e{seq}", user="u1", item="m1"), tags=("a", "b"))
                  for seq in (3, 4)]                 # seq 1 and 2 were erased in the source
        results = store.commit(WriteBatch(restored=copies))
        assert [r.stored.gseq for r in results] == [1, 2]
        got = list(store.read("u1"))
        assert [(e.seq, e.tags, e.recorded_at) for e in got] == [(3, ("a", "b"), 8.0),
                                                               (4, ("a", "b"), 9.0)]
        assert store.last_seq("u1") == 4 and [e.gseq for e in store.read_all()] == [1, 2]
        again = store.commit(WriteBatch(events=[("u1", copies[0].event)]))
        assert again[0].stored is None                # the id came along: a duplicate
        nxt = store.commit(WriteBatch(events=[("u1", event("e5", user="u1"))]))
        assert nxt[0].stored.seq == 5
    finally:
        store.close()
