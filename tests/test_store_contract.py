"""Contract tests every Store implementation must pass."""

import threading

import pytest

from engine.journal.codec import CATALOG_STREAM
from engine.errors import StoreFull
from engine.journal.store import APPENDED, DUPLICATE, LmdbStore, MemoryStore, WriteBatch
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
    with pytest.raises(Exception):  # noqa: B017
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
