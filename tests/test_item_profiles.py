"""Item profiles through the real inference actor and result cache (model: FakeBackend)."""

from __future__ import annotations

import threading

import pytest

from interest.actors.inference import Inference
from interest.actors.item_profiles import ItemProfiler
from interest.engine.config import load_config
from interest.engine.llm.backends import FakeBackend, hashed_bag_of_words
from interest.engine.llm.item_profiles import ItemProfile, profile_text
from tests.conftest import wait_for

CATALOG = {
    "50": {"title": "Star Wars (1977)", "tags": ["sci-fi", "action"]},
    "183": {"title": "Alien (1979)", "tags": ["horror", "sci-fi"], "text": "In space no one can hear you scream."},
    "1": {"title": "Toy Story (1995)", "tags": ["animation", "children"]},
}


class _Vectors:
    def __init__(self):
        self.got, self.lock = {}, threading.Lock()

    def __call__(self, item, vector):
        with self.lock:
            self.got[item] = list(vector)


@pytest.fixture
def started(tmp_path):
    made = []

    def start(backend):
        inf = Inference.start(load_config(), tmp_path / "cache", backend=backend)
        made.append(inf)
        return inf
    yield start
    for inf in made:
        inf.stop(timeout=10)


def _profiler(inf, vectors, profiles=None):
    return ItemProfiler(inf, CATALOG.get, lambda: ["sci-fi", "action", "horror", "animation"], vectors,
                        embed_batch=2, on_profile=profiles.append if profiles is not None else None)


def test_items_are_profiled_once_and_embedded_from_the_enriched_text(started):
    backend = FakeBackend()
    inf = started(backend)
    vectors, profiles = _Vectors(), []
    profiler = _profiler(inf, vectors, profiles)
    profiler.profile_items(list(CATALOG))
    wait_for(lambda: len(vectors.got) == 3, timeout=10, reason="three item vectors")
    assert profiler.stats()["profiled"] == 3 and profiler.stats()["outstanding"] == 0
    by_item = {p.item: p for p in profiles}
    assert set(by_item["50"].keywords) == {"sci-fi", "action"} and by_item["50"].description.startswith("Likes")
    for item, record in CATALOG.items():
        text = profile_text(item, record, by_item[item])
        assert by_item[item].description in text and record["title"] in text
        assert vectors.got[item] == pytest.approx(hashed_bag_of_words(text, 16))
    assert "In space no one can hear you scream." in profile_text("183", CATALOG["183"], by_item["183"])
    assert max(len(batch) for batch in backend.embed_calls) <= 2      # embedded in batches of 2

    again = _profiler(inf, _Vectors())
    calls = len(backend.complete_calls)
    again.profile_items(list(CATALOG))
    wait_for(lambda: again.stats()["cached"] == 3, timeout=10, reason="cached item profiles")
    assert len(backend.complete_calls) == calls          # the result cache answered, no generation


def test_failed_profile_still_gives_the_item_a_vector(started):
    def broken(_prompt):
        raise RuntimeError("model crashed")
    inf = started(FakeBackend(complete_fn=broken))
    vectors = _Vectors()
    profiler = _profiler(inf, vectors)
    profiler.profile_items(["1"])
    wait_for(lambda: "1" in vectors.got, timeout=10, reason="the plain-text vector")
    assert profiler.stats()["failed"] == 1
    assert vectors.got["1"] == pytest.approx(hashed_bag_of_words(profile_text("1", CATALOG["1"], None), 16))


def test_profile_text_adds_only_new_keywords():
    profile = ItemProfile("50", ("sci-fi", "space opera"), "Enjoys space battles.", "m", "h")
    assert profile_text("50", CATALOG["50"], profile) == (
        "Star Wars (1977). sci-fi, action. Enjoys space battles. Keywords: space opera.")
    assert profile_text("9", {}, None) == "9."
