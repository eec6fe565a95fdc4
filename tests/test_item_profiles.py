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


def test_one_item_at_a_time_at_background_priority(started):
    """Queued items wait in the profiler, not in the model's inbox: one request at a time."""
    backend = FakeBackend(token_delay_s=0.01)
    inf = started(backend)
    depths = []
    profiler = _profiler(inf, _Vectors())
    real = inf.submit_profile

    def submit(request):
        assert request.priority == "background"
        depths.append(profiler.stats()["in_flight"])          # this one included
        real(request)
    inf.submit_profile = submit
    profiler.profile_items(list(CATALOG))
    assert profiler.stats()["queued"] == 2 and profiler.stats()["in_flight"] == 1
    wait_for(lambda: profiler.stats()["outstanding"] == 0, timeout=10, reason="every profile")
    assert depths == [1, 1, 1]


def test_catalog_changed_uses_a_current_journaled_profile_and_queues_the_rest(started):
    from interest.engine.journal.catalog_records import PROFILE_KEY
    from interest.engine.llm.item_profiles import source_hash
    backend = FakeBackend()
    inf = started(backend)
    journaled = {"keywords": ["space opera"], "description": "Enjoys space battles.",
                 "model": "m", "input_hash": "h", "source_hash": source_hash("50", CATALOG["50"])}
    stale = {**journaled, "source_hash": "written for another title"}
    catalog = {**CATALOG, "50": {**CATALOG["50"], PROFILE_KEY: journaled},
               "183": {**CATALOG["183"], PROFILE_KEY: stale}}
    vectors = _Vectors()
    profiler = ItemProfiler(inf, catalog.get, lambda: ["sci-fi"], vectors, embed_batch=2)
    profiler.catalog_changed(["50", "183", "1"])
    wait_for(lambda: profiler.stats()["outstanding"] == 0 and profiler.stats()["embedded"] == 5,
             timeout=10, reason="journaled, plain and enriched vectors")
    stats = profiler.stats()
    assert stats["from_journal"] == 1 and stats["requested"] == 2 and stats["profiled"] == 2
    prompts = "\n".join(backend.complete_calls)
    assert "Alien" in prompts and "Toy Story" in prompts and "Star Wars" not in prompts
    texts = {t for batch in backend.embed_calls for t in batch}
    assert "Star Wars (1977). sci-fi, action. Enjoys space battles. Keywords: space opera." in texts
    assert profile_text("183", CATALOG["183"], None) in texts      # plain while it waits


def test_a_profile_for_an_item_changed_meanwhile_is_not_journaled(started):
    catalog = {"50": dict(CATALOG["50"])}

    def retitle_while_generating(prompt):
        catalog["50"] = {**catalog["50"], "title": "Star Wars: Episode IV"}
        return '{"tags": ["sci-fi"], "summary": "Likes sci-fi."}'
    inf = started(FakeBackend(complete_fn=retitle_while_generating))
    profiles, vectors = [], _Vectors()
    profiler = ItemProfiler(inf, catalog.get, lambda: ["sci-fi"], vectors, embed_batch=2,
                            on_profile=profiles.append)
    profiler.profile_items(["50"])
    wait_for(lambda: "50" in vectors.got, timeout=10, reason="the item's vector")
    assert profiles == [] and profiler.stats()["superseded"] == 1
    assert vectors.got["50"] == pytest.approx(
        hashed_bag_of_words(profile_text("50", catalog["50"], None), 16))


def test_a_profile_that_cannot_be_journaled_leaves_the_plain_vector(started):
    def refuse(_profile):
        raise ValueError("description too long")
    inf = started(FakeBackend())
    vectors = _Vectors()
    profiler = ItemProfiler(inf, CATALOG.get, lambda: ["sci-fi"], vectors, embed_batch=2,
                            on_profile=refuse)
    profiler.profile_items(["1"])
    wait_for(lambda: "1" in vectors.got, timeout=10, reason="the plain vector")
    assert profiler.stats()["journal_errors"] == 1
    assert vectors.got["1"] == pytest.approx(
        hashed_bag_of_words(profile_text("1", CATALOG["1"], None), 16))


def test_a_stopped_model_answers_at_once_without_recursing(started):
    """An inference actor that answers every request at once (stopped) walks a long queue
    in a loop, not one nested call per item."""
    inf = started(FakeBackend())
    catalog = {f"m{i}": {"title": f"Film {i}"} for i in range(3000)}
    profiler = ItemProfiler(inf, catalog.get, lambda: [], _Vectors(), embed_batch=500)
    inf.stop(timeout=10)
    inf.available = True                 # as if it stopped between the check and the submit
    profiler.profile_items(list(catalog))
    stats = profiler.stats()
    assert stats["failed"] == 3000 and stats["outstanding"] == 0


def test_an_item_s_job_key_is_no_user_s():
    """Pending profile jobs of one key coalesce: an item's key can never be a user id."""
    from interest.engine.errors import ValidationError
    from interest.engine.journal.events import parse_event
    from interest.engine.llm.item_profiles import profile_key
    with pytest.raises(ValidationError, match="must not contain NUL"):
        parse_event({"v": 1, "id": "e", "type": "view", "ts": 1.0, "user": profile_key("50"),
                     "item": "50"})


def test_a_request_that_cannot_be_built_fails_that_item_only(started):
    calls = []

    def vocabulary():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("Counter changed size during iteration")
        return ["sci-fi"]
    inf = started(FakeBackend())
    vectors = _Vectors()
    profiler = ItemProfiler(inf, CATALOG.get, vocabulary, vectors, embed_batch=2)
    profiler.profile_items(["50", "183"])
    wait_for(lambda: len(vectors.got) == 2, timeout=10, reason="both vectors")
    stats = profiler.stats()
    assert stats["failed"] == 1 and stats["profiled"] == 1 and stats["outstanding"] == 0
