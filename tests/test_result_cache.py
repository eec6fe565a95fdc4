"""The persistent LMDB result cache."""

from __future__ import annotations

import lmdb
import msgpack
import pytest

from interest.engine.errors import StoreFull
from interest.engine.llm.result_cache import ResultCache, cache_key

M, T, V = "m.gguf@abc", "profile", "profile-v1"


def test_put_get_and_counters(tmp_path):
    with ResultCache(tmp_path / "c") as cache:
        assert cache.get(M, T, V, "h1") is None
        cache.put(M, T, V, "h1", {"tags": ["a"], "summary": "s", "embedding": b"\x00\x01"})
        assert cache.get(M, T, V, "h1") == {"tags": ["a"], "summary": "s", "embedding": b"\x00\x01"}
        st = cache.stats()
        assert (st["hits"], st["misses"], st["puts"], st["entries"]) == (1, 1, 1, 1)
        assert st["hit_rate"] == pytest.approx(0.5)


def test_key_parts_separate_results(tmp_path):
    with ResultCache(tmp_path / "c") as cache:
        cache.put(M, T, V, "h", 1)
        assert cache.get("other@def", T, V, "h") is None
        assert cache.get(M, "embed", V, "h") is None
        assert cache.get(M, T, "profile-v2", "h") is None
        assert cache.get(M, T, V, "h") == 1
        assert (M, T, V, "h") in cache


def test_get_many_put_many(tmp_path):
    with ResultCache(tmp_path / "c") as cache:
        cache.put_many(M, "embed", "e1", [("a", b"1"), ("b", b"2")])
        assert cache.get_many(M, "embed", "e1", ["a", "x", "b"]) == [b"1", None, b"2"]


def test_persists_across_reopen(tmp_path):
    with ResultCache(tmp_path / "c") as cache:
        cache.put(M, T, V, "h", [1, 2.5, "x"])
    with ResultCache(tmp_path / "c") as cache:
        assert cache.get(M, T, V, "h") == [1, 2.5, "x"]


def test_values_are_msgpack_not_pickle(tmp_path):
    with ResultCache(tmp_path / "c") as cache:
        cache.put(M, T, V, "h", {"a": 1})
    env = lmdb.open(str(tmp_path / "c"), readonly=True)
    with env.begin() as txn:
        raw = txn.get(cache_key(M, T, V, "h"))
    env.close()
    assert msgpack.unpackb(raw, raw=False) == {"a": 1}
    with ResultCache(tmp_path / "c") as cache, pytest.raises(TypeError):
        cache.put(M, T, V, "h2", object())  # not msgpack-able: refused, never pickled


def test_full_map_grows_and_retries(tmp_path):
    with ResultCache(tmp_path / "c", map_size_mb=1, max_map_size_mb=64) as cache:
        blob = b"x" * 200_000
        for i in range(40):  # ~8 MB into a 1 MiB map
            cache.put(M, T, V, f"h{i}", blob)
        st = cache.stats()
        assert st["resizes"] >= 3 and st["entries"] == 40
        assert cache.get(M, T, V, "h0") == blob


def test_limit_reached_raises_store_full(tmp_path):
    with ResultCache(tmp_path / "c", map_size_mb=1, max_map_size_mb=2) as cache:
        with pytest.raises(StoreFull):
            for i in range(100):
                cache.put(M, T, V, f"h{i}", b"x" * 200_000)
    # The environment stays usable after the refused write.
    with ResultCache(tmp_path / "c", map_size_mb=1, max_map_size_mb=2) as cache:
        assert cache.get(M, T, V, "h0") == b"x" * 200_000


def test_bad_key_parts_rejected():
    with pytest.raises(ValueError):
        cache_key("", T, V, "h")
    with pytest.raises(ValueError):
        cache_key(M, T, V, "a\x1fb")
