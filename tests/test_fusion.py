"""Fusion weights: segments, multiplicative-weights adaptation, served-list credit."""

from __future__ import annotations

import pytest

from interest.engine.projections.catalog import Catalog
from interest.engine.journal.codec import StoredEvent
from interest.engine.config import load_config
from interest.engine.recommend import Learner, Recommender
from interest.engine.recommend.fusion import Fusion, reward_of, segment_of
from interest.engine.projections.state import FoldParams, InterestState

PARAMS = FoldParams.from_config(load_config())
NAMES = ["sequential", "collaborative", "content", "semantic", "popularity", "demographic"]


def test_segments():
    assert [segment_of(n) for n in (0, 4, 5, 19, 20, 500)] == \
        ["cold", "cold", "warming", "warming", "warm", "warm"]


def test_reward_is_rank_based():
    assert reward_of(0, 100) == 1.0
    assert reward_of(2, 100) == pytest.approx(0.5)
    assert reward_of(None, 100) == 0.0 and reward_of(100, 100) == 0.0


def test_multiplicative_weights_move_towards_the_source_that_ranks_well():
    f = Fusion(NAMES, eta=0.1)
    before = f.weights(None, "warm")
    for _ in range(50):
        f.credit("u", "warm", {"sequential": 0.0, "popularity": 1.0})
    after = f.weights(None, "warm")
    assert after["popularity"] > before["popularity"]
    assert after["sequential"] < before["sequential"]
    assert sum(after.values()) == pytest.approx(1.0)
    assert min(after.values()) >= f.floor * 0.99
    # other segments untouched; the user's own factors move further
    assert f.weights(None, "cold") == before_cold(f)
    mine = f.weights("u", "warm")
    assert mine["popularity"] > after["popularity"]
    assert f.stats()["updates"]["warm"] == 50


def before_cold(f):
    return f.initial["cold"]


def test_no_reward_no_update_and_user_table_is_bounded():
    f = Fusion(NAMES, max_users=3)
    f.credit("u", "warm", {"sequential": 0.0})
    assert f.stats()["updates"]["warm"] == 0
    for i in range(10):
        f.credit(f"u{i}", "cold", {"popularity": 1.0, "demographic": 0.0})
    assert f.stats()["users_adapted"] == 3
    g = Fusion(NAMES)
    g.load_dict(f.to_dict())
    assert g.weights("u9", "cold") == f.weights("u9", "cold")


def _entry(user, seq, item, ts):
    return StoredEvent(user, seq, seq, 0.0, {"v": 1, "id": f"{user}{seq}", "type": "view",
                                             "ts": ts, "user": user, "item": item}, ())


def _catalog(n=5):
    cat = Catalog()
    for i in range(n):
        cat.put_item(f"i{i}", {"tags": []})
    return cat


def test_served_list_is_credited_once_on_the_next_item():
    rec = Recommender(_catalog(), PARAMS, feedback_every=1_000_003)   # no sampled feedback
    for n, item in enumerate(["i0", "i1", "i2"], 1):
        rec.observe(_entry("a", n, item, float(n)))
    state = InterestState(user="b")
    e1 = _entry("b", 1, "i0", 10.0)
    rec.observe(e1)
    state.update(e1, PARAMS)
    served = rec.recommend(state, k=3)                # served to b: i1 first (a went i0 -> i1)
    assert served["items"][0]["item"] == "i1"
    e2 = _entry("b", 2, "i1", 11.0)
    rec.observe(e2)                                    # learner: credits the served list
    assert rec.credits == {"served": 1, "feedback": 0}
    assert rec.fusion.stats()["updates"]["cold"] == 1
    mine = rec.fusion.weights("b", "cold")
    assert mine["sequential"] > rec.fusion.weights(None, "cold")["sequential"]
    state.update(e2, PARAMS)
    rec.observe(_entry("b", 3, "i2", 12.0))            # nothing served since: no credit
    assert rec.credits == {"served": 1, "feedback": 0}
    rec.recommend(state, k=3)                          # served at version 2 ...
    rec.observe(_entry("b", 2, "i3", 13.0))            # ... an entry not after it: dropped
    rec.observe(_entry("b", 4, "i3", 14.0))
    assert rec.credits == {"served": 1, "feedback": 0}
    rec.recommend(state, k=3, candidates=["i3", "i4"])    # candidates mode is not remembered
    rec.snapshot().recommend(state, k=3, remember=False)
    rec.observe(_entry("b", 5, "i4", 15.0))
    assert rec.credits == {"served": 1, "feedback": 0}
    assert "fusion" in rec.stats() and "models" in rec.stats()


def test_sampled_feedback_is_credited_at_the_next_publish_from_the_learners_history():
    learner = Learner(_catalog(), PARAMS, feedback_every=1, max_stale=1000)
    for n, item in enumerate(["i0", "i1", "i2"], 1):
        learner.observe(_entry("a", n, item, float(n)))
    assert learner.credits == {"served": 0, "feedback": 0}       # queued, not scored yet
    learner.publish()                   # scored with the snapshot that learned them
    assert learner.credits == {"served": 0, "feedback": 3}
    assert learner.fusion.stats()["updates"]["cold"] == 3          # popularity ranked each
    for user in ("c", "d", "e"):                       # i1..i3 become the popular ones
        for n, item in enumerate(["i1", "i2", "i3"], 1):
            learner.observe(_entry(user, n, item, 5.0 + n))
    learner.observe(_entry("a", 4, "i4", 9.0))          # a: i0 -> ... -> i4
    learner.publish()
    before = learner.fusion.weights("b", "cold")
    learner.observe(_entry("b", 1, "i0", 10.0))
    learner.observe(_entry("b", 2, "i4", 11.0))        # b's history [i0]: what follows i0
    learner.publish()
    assert learner.credits == {"served": 0, "feedback": 15}
    after = learner.fusion.weights("b", "cold")
    assert after["sequential"] > before["sequential"]
    assert after["popularity"] < before["popularity"]
    # the segment is that of the user's event count before the event (skips count too)
    for seq in range(3, 8):
        learner.observe(StoredEvent("b", seq, seq, 0.0, {"v": 1, "id": f"s{seq}",
                                                         "type": "skip", "ts": 20.0,
                                                         "user": "b", "item": "i4"}, ()))
    assert learner.user_events["b"] == 7
    assert learner.credits["feedback"] == 15                       # skips are not credited
    learner.observe(_entry("b", 8, "i2", 30.0))
    learner.publish()
    assert learner.fusion.stats()["updates"]["warming"] == 1


def test_feedback_is_sampled_every_nth_event_and_never_waits_past_max_stale():
    learner = Learner(_catalog(), PARAMS, feedback_every=4, max_stale=8)
    for seq in range(1, 41):
        learner.observe(_entry("a", seq, f"i{seq % 5}", float(seq)))
        assert learner.models.version >= seq // 8                  # observe published
    assert learner.credits["feedback"] in (9, 10)
    learner.publish()
    assert learner.credits["feedback"] == 10
