"""Fusion weights: segments, multiplicative-weights adaptation, served-list credit."""

from __future__ import annotations

import pytest

from engine.projections.catalog import Catalog
from engine.journal.codec import StoredEvent
from engine.config import load_config
from engine.recommend import Recommender
from engine.recommend.fusion import Fusion, reward_of, segment_of
from engine.projections.state import FoldParams, InterestState

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


def test_served_list_is_credited_once_on_the_next_item():
    cat = Catalog()
    for i in range(5):
        cat.put_item(f"i{i}", {"tags": []})
    rec = Recommender(cat, PARAMS, feedback_every=1)
    for n, item in enumerate(["i0", "i1", "i2"], 1):
        rec.observe(_entry("a", n, item, float(n)))
    state = InterestState(user="b")
    e1 = _entry("b", 1, "i0", 10.0)
    rec.observe(e1)
    state.update(e1, PARAMS)
    rec.recommend(state, k=3)                         # served to b
    e2 = _entry("b", 2, "i1", 11.0)
    rec.observe(e2)                                    # writer thread: credits the served list
    assert rec.credits["served"] == 1
    rec.feedback(state, e2)                            # actor: already credited, no double
    assert rec.credits["feedback"] == 0
    state.update(e2, PARAMS)
    e3 = _entry("b", 3, "i2", 12.0)                    # nothing served: feedback scores afresh
    rec.observe(e3)
    rec.feedback(state, e3)
    assert rec.credits == {"served": 1, "feedback": 1}
    assert rec.fusion.stats()["updates"]["cold"] == 2
    assert "fusion" in rec.stats() and "models" in rec.stats()
