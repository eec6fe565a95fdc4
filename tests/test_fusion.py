"""Fusion: segments and contexts, the pairwise learner, its examples, replay determinism."""

from __future__ import annotations

import math

import msgpack
import pytest

from interest.engine.config import load_config
from interest.engine.journal.codec import StoredEvent
from interest.engine.projections.catalog import Catalog
from interest.engine.projections.state import FoldParams, InterestState
from interest.engine.recommend import Learner, Recommender
from interest.engine.recommend.fusion import (KEYS, Fusion, context_of, key_of, list_gradient,
                                              segment_of)
from interest.engine.recommend.learner import features, pairs_of
from tests.reference_sources import ref_pairs, ref_scores

PARAMS = FoldParams.from_config(load_config())
NAMES = ["sequential", "collaborative", "ease", "content", "semantic", "popularity",
         "demographic"]


def test_segments_and_contexts():
    assert [segment_of(n) for n in (0, 4, 5, 19, 20, 500)] == \
        ["cold", "cold", "warming", "warming", "warm", "warm"]
    assert [context_of(g) for g in (None, 0.0, 1800.0, 1801.0, -5.0)] == \
        ["visit", "session", "session", "visit", "visit"]
    assert key_of("warm", "session") == "warm/session" and len(KEYS) == 6


def test_list_gradient_points_from_the_negatives_to_the_positive():
    w = {"a": 0.5, "b": 0.5}
    g = list_gradient(w, {"a": 1.0, "b": 0.0}, [{"a": 0.0, "b": 1.0}], 10.0)
    assert g["a"] == pytest.approx(0.5) and g["b"] == pytest.approx(-0.5)   # margin 0
    far = list_gradient({"a": 0.9, "b": 0.1}, {"a": 1.0}, [{"b": 1.0}], 10.0)
    assert 0 < far["a"] < 0.001                                  # already well ranked
    # with one negative it is the pairwise logistic gradient: sigmoid(-margin) * d
    m = 10.0 * (0.9 * 1.0 - 0.1 * 1.0)
    assert far["a"] == pytest.approx(1.0 / (1.0 + math.exp(m)))
    # the strongly ranked negative counts, the weak one barely
    two = list_gradient(w, {"a": 0.5, "b": 0.5}, [{"a": 1.0, "b": 0.5}, {"b": 0.2}], 10.0)
    assert two["a"] < -0.4 and abs(two["b"]) < 0.01


def test_learning_moves_toward_the_source_that_ranks_the_acted_on_item_first():
    f = Fusion(NAMES, rate=0.5)
    before = f.weights(None, "warm", "session")
    for _ in range(200):   # popularity puts the acted-on item first, sequential the negative
        f.credit("u", "warm/session", [({"sequential": 0.2, "popularity": 1.0},
                                         {"sequential": 1.0, "popularity": 0.1})])
    after = f.weights(None, "warm", "session")
    assert after["popularity"] > before["popularity"]
    assert after["sequential"] < before["sequential"]
    assert sum(after.values()) == pytest.approx(1.0)
    # sources with nothing to say are not moved (only rescaled); other keys are untouched
    assert after["content"] / after["semantic"] == pytest.approx(
        before["content"] / before["semantic"], rel=1e-9)
    assert f.weights(None, "warm", "visit") == f.initial["warm/visit"]
    assert f.stats()["updates"]["warm/session"] == 200


def test_no_source_dies_the_prior_pulls_back_and_weights_round_trip():
    f = Fusion(NAMES, rate=2.0, shrink=0.05, floor=0.005)
    for _ in range(2000):
        f.credit(None, "cold/visit", [({"popularity": 1.0}, {"demographic": 1.0})])
    w = f.weights(None, "cold", "visit")
    assert min(w.values()) >= 0.005 * 0.99
    assert w["demographic"] > 0.01         # an equilibrium with the prior, not the floor
    for _ in range(3000):                  # the evidence stops: back toward the prior
        f.credit(None, "cold/visit", [({"popularity": 0.5, "demographic": 0.5},
                                       {"popularity": 0.5, "demographic": 0.5})])
    back = f.weights(None, "cold", "visit")
    assert back["demographic"] > 2 * w["demographic"]
    g = Fusion(NAMES)
    g.load_dict(msgpack.unpackb(msgpack.packb(f.to_dict()), raw=False))
    assert g.weights(None, "cold", "visit") == back
    assert set(f.stats()["segments"]) == {"cold", "warming", "warm"}


def test_fixed_fusion_never_moves():
    f = Fusion(NAMES, adapt=False)
    f.credit("u", "warm/visit", [({"popularity": 1.0}, {"sequential": 1.0})])
    assert f.weights(None, "warm", "visit") == f.initial["warm/visit"]
    assert f.stats()["updates"]["warm/visit"] == 0


def _entry(user, seq, item, ts, gseq=None):
    return StoredEvent(user, seq, gseq or seq, 0.0, {"v": 1, "id": f"{user}{seq}", "type": "view",
                                                     "ts": ts, "user": user, "item": item}, ())


def _catalog(n=8):
    cat = Catalog()
    for i in range(n):
        cat.put_item(f"i{i}", {"tags": []})
    return cat


def _stream(n=400, users=6, items=8):
    out, seqs = [], {}
    for g in range(1, n + 1):
        u = f"u{(g * 7) % users}"
        seqs[u] = seqs.get(u, 0) + 1
        out.append(_entry(u, seqs[u], f"i{(g * g + seqs[u]) % items}", 100.0 * g, g))
    return out


def test_pairs_equal_the_dict_reference():
    learner = Learner(_catalog(), PARAMS, feedback_every=1_000_003, ease_first=50)
    for e in _stream(300):
        learner.observe(e)
    models = learner.publish()
    for user in ("u0", "u1", "u3"):
        hist = learner.histories[user]
        q, key = _query(learner, user)
        weights = learner.fusion.weights(None, key)
        scored = models.scored(q, None, True).fuse(weights)
        raw = ref_scores(learner, q, None, True)
        for item in [f"i{i}" for i in range(8)]:
            got = pairs_of(scored, models.position(item), models.positions(hist),
                           learner.index.ids, 3, 3, None)
            want = ref_pairs(raw, weights, item, set(hist), 3)
            assert len(got) == len(want)
            for (gp, gn), (wp, wn) in zip(got, want):
                assert gp == pytest.approx({k: v for k, v in wp.items()})
                assert gn == pytest.approx({k: v for k, v in wn.items()})
        assert features(scored, 0).keys() <= set(learner.names)


def _query(learner, user):
    from interest.engine.recommend.query import Query
    q = Query(user=user, recent=list(learner.histories[user]),
              attrs=learner.catalog.attrs.get(user))
    return q, key_of(segment_of(learner.user_events[user]), q.context)


def test_examples_are_scored_with_the_last_mark_and_replay_gives_the_same_weights(tmp_path):
    entries = _stream(600, items=60)
    a = Learner(_catalog(60), PARAMS, feedback_every=1, max_stale=50, ease_first=100,
                ease_every=200, fusion_rate=0.5)
    for n, e in enumerate(entries, 1):
        a.observe(e)
        if n % 37 == 0:
            a.publish()             # extra publishes (the service's clock) change nothing
        assert a.marked.version <= a.models.version
        assert a.marked.n <= len(a.index)
    assert a.credits["feedback"] >= 590 and a.credits["pairs"] > 0 and a.ease.fits == 3
    assert any(v > 0 for v in a.fusion.stats()["updates"].values())
    b = Learner(_catalog(60), PARAMS, feedback_every=1, max_stale=50, ease_first=100,
                ease_every=200, fusion_rate=0.5)
    for e in entries[:350]:       # a restart from a checkpoint at a mark
        b.observe(e)
    b.save(tmp_path / "m")
    c = Learner(_catalog(60), PARAMS, feedback_every=1, max_stale=50, ease_first=100,
                ease_every=200, fusion_rate=0.5)
    assert c.load(tmp_path / "m")
    for e in entries:
        c.observe(e)               # positions already in the model are skipped
    assert c.fusion.to_dict() == a.fusion.to_dict()
    assert c.ease.weights.tobytes() == a.ease.weights.tobytes()


def test_the_service_ranks_with_the_users_context():
    rec = Recommender(_catalog(), PARAMS, feedback_every=1_000_003)
    state = InterestState(user="b")
    for seq, ts in ((1, 10.0), (2, 20.0)):          # two events 10 s apart: a session
        e = _entry("b", seq, f"i{seq}", ts)
        rec.observe(e)
        state.update(e, PARAMS)
    rec.fusion.segments["cold/session"]["popularity"] = 0.9
    reply = rec.recommend(state, k=3)
    assert reply["weights"] == rec.fusion.weights(None, "cold", "session")
    assert reply["strategy"] == "cold"
    fixed = Fusion(rec.learner.names, adapt=False)
    other = rec.snapshot().recommend(state, k=3, fusion=fixed)
    assert other["weights"] == fixed.initial["cold/session"]
