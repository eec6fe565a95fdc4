"""Contract tests every Store implementation must pass."""

import errno
import logging
import threading

import lmdb
import msgpack
import pytest

from interest.engine.journal.codec import CATALOG_STREAM, encode_snapshot
from interest.engine.errors import DiskFull, StoreError, StoreFull, Unavailable
from interest.engine.journal.store import (APPENDED, DUPLICATE, STORE_FORMAT, LmdbStore, MemoryStore,
                                  WriteBatch, id_key)
from tests.conftest import event, item_event


@pytest.fixture(params=["memory", "lmdb"])
def store(request, tmp_path):
    s = MemoryStore() if request.param == "memory" else LmdbStore(tmp_path / "j", sync=False)
    yield s
    s.close()


def batch(*events):
    return WriteBatch(events=[(CATALOG_STREAM if e["type"] == "item" else e["user"], e)
                              for e in events], recorded_at=1.0)


def test_append_assigns_per_stream_and_global_sequence(store):
    results = store.commit(batch(event("a", user="u1"), event("b", user="u2"),
                                 event("c", user="u1")))
    assert [r.status for r in results] == [APPENDED] * 3
    assert [(r.stored.stream, r.stored.seq, r.stored.gseq) for r in results] == \
        [("u1", 1, 1), ("u2", 1, 2), ("u1", 2, 3)]
    assert store.last_seq("u1") == 2
    assert sorted(store.streams()) == ["u1", "u2"]


def test_duplicates_are_rejected_across_and_within_batches(store):
    store.commit(batch(event("a")))
    results = store.commit(batch(event("a"), event("b"), event("b")))
    assert [r.status for r in results] == [DUPLICATE, APPENDED, DUPLICATE]
    assert [e.event["id"] for e in store.read("u1")] == ["a", "b"]


def test_reads_are_ordered_and_resume_after_a_sequence(store):
    for i in range(30):
        store.commit(batch(event(f"e{i}", ts=float(i))))
    assert [e.seq for e in store.read("u1")] == list(range(1, 31))
    assert [e.seq for e in store.read("u1", after_seq=25)] == [26, 27, 28, 29, 30]
    assert [e.gseq for e in store.read_all(after_gseq=28)] == [29, 30]


def test_a_failing_batch_writes_nothing(store):
    store.commit(batch(event("ok")))
    poison = event("bad", weird=object())      # cannot be encoded: fails mid-batch
    with pytest.raises(StoreError, match="cannot encode the journal entry of event 'bad'"):
        store.commit(batch(event("x"), poison))
    assert [e.event["id"] for e in store.read("u1")] == ["ok"]
    assert store.commit(batch(event("x")))[0].status == APPENDED   # "x" was not half-written


def test_items_enrich_later_events_and_materialise_the_catalog(store):
    results = store.commit(batch(item_event("m1", ["Drama"]), event("a", item="m1")))
    assert results[1].stored.tags == ("Drama",)
    store.commit(batch(item_event("m1", ["Comedy"], ts=2.0), event("b", item="m1")))
    entries = list(store.read("u1"))
    assert [e.tags for e in entries] == [("Drama",), ("Comedy",)]   # the tags at the time
    assert store.item("m1")["tags"] == ["Comedy"]
    assert [i for i, _ in store.items()] == ["m1"]


def test_user_attrs_are_materialised(store):
    attrs = {"v": 1, "id": "ua", "type": "user_attrs", "ts": 1.0, "user": "u9",
             "attrs": {"age": 31}}
    store.commit(WriteBatch(events=[(CATALOG_STREAM, attrs)]))
    assert store.user_attrs("u9") == {"age": 31}
    assert dict(store.all_user_attrs()) == {"u9": {"age": 31}}


def test_snapshots_only_move_forward(store):
    store.commit(WriteBatch(snapshots=[("u1", 5, b"five")]))
    store.commit(WriteBatch(snapshots=[("u1", 3, b"three")]))
    assert store.snapshot("u1") == (5, b"five")
    store.commit(WriteBatch(snapshots=[("u1", 9, b"nine")], meta=[("k", b"v")]))
    assert store.snapshot("u1") == (9, b"nine")
    assert store.meta("k") == b"v"


def test_concurrent_readers_while_writing(store):
    errors = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            seqs = [e.seq for e in store.read("u1")]
            if seqs != list(range(1, len(seqs) + 1)):
                errors.append(seqs)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(200):
        store.commit(batch(event(f"e{i}")))
    stop.set()
    for t in threads:
        t.join(10)
    assert not errors
    assert store.last_seq("u1") == 200


def test_concurrent_writers_never_lose_or_repeat_a_sequence(store):
    def writer(w):
        for i in range(50):
            store.commit(batch(event(f"w{w}-{i}")))

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [e.seq for e in store.read("u1")] == list(range(1, 201))
    assert sorted(e.gseq for e in store.read_all()) == list(range(1, 201))


def test_lmdb_map_grows_without_losing_a_write(tmp_path):
    store = LmdbStore(tmp_path / "j", map_size_mb=1, max_map_size_mb=64, sync=False)
    try:
        for b in range(20):
            store.commit(batch(*[event(f"e{b}-{i}", user=f"u{i}", query="x" * 200)
                                 for i in range(500)]))
        assert store.info()["map_size_mb"] > 1
        assert sum(1 for _ in store.read_all()) == 10000
    finally:
        store.close()


def test_lmdb_full_map_is_a_clear_error_and_keeps_earlier_writes(tmp_path):
    store = LmdbStore(tmp_path / "j", map_size_mb=1, max_map_size_mb=2, sync=False)
    try:
        store.commit(batch(event("first")))
        with pytest.raises(StoreFull, match="may not grow past"):
            for b in range(100):
                store.commit(batch(*[event(f"e{b}-{i}", query="x" * 1000) for i in range(200)]))
        assert next(store.read("u1")).event["id"] == "first"
    finally:
        store.close()


# ------------------------------------------------ event ids scoped to their stream


def test_the_same_id_under_two_users_is_two_events(store):
    squat = store.commit(batch(event("order-1001", "purchase", user="mallory")))
    real = store.commit(batch(event("order-1001", "purchase", user="alice")))
    assert squat[0].status == APPENDED and real[0].status == APPENDED
    assert [e.event["id"] for e in store.read("alice")] == ["order-1001"]
    again = store.commit(batch(event("order-1001", "purchase", user="alice")))
    assert again[0].status == DUPLICATE                    # still a duplicate in its own stream


def test_catalog_ids_are_a_stream_of_their_own(store):
    item = item_event("m1", ["Drama"]) | {"id": "x1"}
    results = store.commit(batch(item, event("x1", user="u1"), item))
    assert [r.status for r in results] == [APPENDED, APPENDED, DUPLICATE]


def test_a_stream_prefix_does_not_leak_into_another_stream(store):
    store.commit(batch(event("1", user="u1")))
    assert store.commit(batch(event("1", user="u")))[0].status == APPENDED
    assert store.commit(batch(event("1", user="u11")))[0].status == APPENDED


def test_long_ids_under_long_user_ids_fit_the_key_limit(store):
    user, eid = "u" * 256, "e" * 256
    assert len(id_key(user, eid)) <= 511
    assert store.commit(batch(event(eid, user=user)))[0].status == APPENDED
    assert store.commit(batch(event(eid, user=user)))[0].status == DUPLICATE
    assert store.commit(batch(event(eid[:-1] + "f", user=user)))[0].status == APPENDED


# ------------------------------------------------ dead letters and positions


def test_dead_letters_are_committed_with_the_batch_in_insertion_order(store):
    assert store.dead_letter_count() == 0 and list(store.dead_letters()) == []
    store.commit(WriteBatch(dead_letters=[(7, "u1", "users", "KeyError: 'item'", 10.5)]))
    store.commit(WriteBatch(events=[("u1", event("a"))],
                            dead_letters=[(9, "u2", "learner", "boom", 11.0),
                                          (3, "", "catalog", "bad", 12.0)]))
    letters = list(store.dead_letters())
    assert letters[0] == {"position": 7, "stream": "u1", "projection": "users",
                          "error": "KeyError: 'item'", "at": 10.5}
    assert [d["position"] for d in letters] == [7, 9, 3]
    assert [d["position"] for d in store.dead_letters(limit=2)] == [7, 9]
    assert store.dead_letter_count() == 3


def test_positions_are_stored_as_meta_keys(store):
    assert store.position("users") == 0
    store.commit(WriteBatch(positions=[("users", 41), ("learner", 7)]))
    store.commit(WriteBatch(positions=[("users", 42)]))
    assert store.position("users") == 42 and store.position("learner") == 7
    assert store.meta("position/users") == (42).to_bytes(8, "big")


def test_a_failing_batch_writes_no_dead_letter_or_position(store):
    poison = event("bad", weird=object())
    with pytest.raises(StoreError):
        store.commit(WriteBatch(events=[("u1", poison)], positions=[("users", 5)],
                                dead_letters=[(1, "u1", "users", "x", 1.0)]))
    assert store.position("users") == 0 and store.dead_letter_count() == 0


# ------------------------------------------------ snapshot checksums


def put_raw_snapshot(store, stream, record):
    if isinstance(store, MemoryStore):
        store._snapshots[stream] = record
    else:
        with store.env.begin(write=True, db=store._snapshots) as txn:
            txn.put(b"s" + stream.encode(), record)


def test_a_flipped_byte_in_a_snapshot_is_detected_counted_and_logged(store, caplog):
    store.commit(WriteBatch(snapshots=[("u1", 5, b"\x81\xa1w\xcb@\x00\x00\x00\x00\x00\x00\x00")]))
    record = bytearray(store.snapshot_record("u1"))
    record[-3] ^= 0x40                                     # one bit of the float 2.0 flipped
    put_raw_snapshot(store, "u1", bytes(record))
    with caplog.at_level(logging.WARNING, logger="interest.engine.journal.store"):
        assert store.snapshot("u1") is None
    assert store.corrupt_snapshots == 1
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "fails its checksum" in caplog.records[0].getMessage()


def test_a_snapshot_without_checksum_is_unusable(store):
    put_raw_snapshot(store, "u1", (5).to_bytes(8, "big") + msgpack.packb({"user": "u1"}))
    assert store.snapshot("u1") is None and store.corrupt_snapshots == 1


def test_a_corrupt_snapshot_is_replaced_even_by_an_older_one(store):
    put_raw_snapshot(store, "u1", encode_snapshot(99, b"state")[:-1] + b"X")
    store.commit(WriteBatch(snapshots=[("u1", 4, b"four")]))
    assert store.snapshot("u1") == (4, b"four")


# ------------------------------------------------ LMDB only


OLD_IDS = [("mallory", "order-1001"), ("bob", "e2"), *[(f"u{i}", f"x{i}") for i in range(7)]]


def test_lmdb_format_1_store_is_upgraded_once_at_open(tmp_path, caplog, monkeypatch):
    path = tmp_path / "j"
    store = LmdbStore(path, sync=False)
    store.commit(batch(*[event(eid, user=stream) for stream, eid in OLD_IDS]))
    store.commit(WriteBatch(snapshots=[("bob", 1, b"checked")]))
    with store.env.begin(write=True) as txn:               # rewrite it as the previous version did
        for stream, eid in OLD_IDS:
            jkey = txn.get(id_key(stream, eid), db=store._ids)
            txn.delete(id_key(stream, eid), db=store._ids)
            txn.put(eid.encode(), jkey, db=store._ids)
        txn.put(b"salice", (3).to_bytes(8, "big") + msgpack.packb({"old": 1}), db=store._snapshots)
        txn.delete(b"store_format", db=store._meta)
    store.close()
    monkeypatch.setattr(LmdbStore, "REWRITE_CHUNK", 2)    # several resumed transactions
    with caplog.at_level(logging.WARNING, logger="interest.engine.journal.store"):
        store = LmdbStore(path, sync=False)
    try:
        assert "9 event ids scoped to their stream, 1 snapshots without checksum dropped" \
            in caplog.text
        assert all(store.commit(batch(event(eid, user=stream)))[0].status == DUPLICATE
                   for stream, eid in OLD_IDS)
        assert store.meta("store_format") == STORE_FORMAT.to_bytes(8, "big")
        results = store.commit(batch(event("order-1001", user="alice"),
                                     event("order-1001", user="mallory"), event("e2", user="bob")))
        assert [r.status for r in results] == [APPENDED, DUPLICATE, DUPLICATE]
        assert store.snapshot("alice") is None and store.snapshot("bob") == (1, b"checked")
        assert store.corrupt_snapshots == 0
    finally:
        store.close()
    caplog.clear()
    store = LmdbStore(path, sync=False)                    # a second open changes nothing
    store.close()
    assert "upgraded" not in caplog.text


def test_lmdb_newer_format_is_refused(tmp_path):
    store = LmdbStore(tmp_path / "j", sync=False)
    with store.env.begin(write=True, db=store._meta) as txn:
        txn.put(b"store_format", (STORE_FORMAT + 1).to_bytes(8, "big"))
    store.close()
    with pytest.raises(StoreError, match="has format 3; this build reads format 2 and older"):
        LmdbStore(tmp_path / "j", sync=False)


def fail_commits_with(store, exc):
    def commit_once(batch):
        raise exc
    store._commit_once = commit_once


@pytest.mark.parametrize("exc", [
    OSError(errno.ENOSPC, "No space left on device"),
    lmdb.DiskError("mdb_txn_commit: No space left on device"),
])
def test_lmdb_no_space_left_is_unavailable_not_internal(tmp_path, exc):
    store = LmdbStore(tmp_path / "j", sync=False)
    try:
        fail_commits_with(store, exc)
        with pytest.raises(DiskFull, match="no space left on device") as err:
            store.commit(batch(event("a")))
        assert isinstance(err.value, Unavailable) and err.value.code == "unavailable"
        assert "Input/output error" not in str(err.value)
    finally:
        store.close()


def test_lmdb_short_write_on_a_full_disk_is_no_space_left(tmp_path, monkeypatch):
    """LMDB reports a short pwrite (the usual symptom of a full disk) as EIO."""
    store = LmdbStore(tmp_path / "j", sync=False)
    try:
        exc = lmdb.Error("mdb_txn_commit: Input/output error")
        exc.code = errno.EIO
        fail_commits_with(store, exc)
        monkeypatch.setattr(store, "_free_bytes", lambda: 0)
        with pytest.raises(DiskFull, match=r"no space left on device .*\(0 bytes free\)"):
            store.commit(batch(event("a")))
        monkeypatch.setattr(store, "_free_bytes", lambda: 10 << 30)
        with pytest.raises(StoreError, match="Input/output error"):
            store.commit(batch(event("a")))                # a real I/O error stays internal
    finally:
        store.close()


def test_lmdb_reads_after_close_are_store_errors(tmp_path):
    store = LmdbStore(tmp_path / "j", sync=False)
    store.close()
    store.close()                                          # idempotent
    with pytest.raises(StoreError, match="LMDB read failed"):
        store.last_seq("u1")


FILL_DISK = """
import sys
from interest.engine.errors import DiskFull
from interest.engine.journal.store import LmdbStore, WriteBatch
store = LmdbStore(sys.argv[1] + "/j", map_size_mb=64, max_map_size_mb=64, sync=True)
try:
    for b in range(1000):
        store.commit(WriteBatch(events=[("u1", {"v": 1, "id": f"e{b}-{i}", "type": "view",
                                                "ts": 1.0, "user": "u1", "pad": "x" * 1000})
                                        for i in range(100)]))
except DiskFull as exc:
    print(exc.code, exc, store.last_seq("u1") % 100 == 0)
"""


def test_lmdb_on_a_really_full_filesystem_is_no_space_left(tmp_path):
    """A 2 MiB tmpfs in a private mount namespace (skipped where that is not allowed)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    root = Path(__file__).resolve().parent.parent
    script = (f"mount -t tmpfs -o size=2m tmpfs {mnt} || exit 99; "
              f"exec {sys.executable} -c '{FILL_DISK}' {mnt}")
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                          cwd=root, capture_output=True, text=True, timeout=120)
    if proc.returncode == 99 or "unshare:" in proc.stderr:
        pytest.skip(f"cannot mount a private tmpfs here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("unavailable no space left on device for the store at")
    assert proc.stdout.strip().endswith("True")          # whole batches only, none half-written
