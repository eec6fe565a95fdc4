"""Fusion: segments and contexts, the candidate learner, its examples, replay determinism."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from interest.engine.config import load_config
from interest.engine.journal.codec import StoredEvent
from interest.engine.projections.catalog import Catalog
from interest.engine.projections.state import FoldParams, InterestState
from interest.engine.recommend import Learner, Recommender
from interest.engine.recommend.fusion import (KEYS, Fusion, _normalise, candidates, context_of,
                                              key_of, rank_gain, ranks_of, segment_of)

PARAMS = FoldParams.from_config(load_config())
NAMES = ["sequential", "collaborative", "ease", "content", "semantic", "popularity",
         "demographic"]


def test_segments_and_contexts():
    assert [segment_of(n) for n in (0, 4, 5, 19, 20, 500)] == \
        ["cold", "cold", "warming", "warming", "warm", "warm"]
    assert [context_of(g) for g in (None, 0.0, 1800.0, 1801.0, -5.0)] == \
        ["visit", "session", "session", "visit", "visit"]
    assert key_of("warm", "session") == "warm/session" and len(KEYS) == 6


def example(rows: list[dict]) -> tuple[np.ndarray, int]:
    """A fusion example from feature dicts, the acted-on item last."""
    return np.array([[r.get(s, 0.0) for s in NAMES] for r in rows]), len(rows) - 1


#: popularity ranks the acted-on item (last) first, sequential puts two others above it
POPULARITY_KNOWS = example([{"sequential": 1.0, "popularity": 0.45},
                            {"sequential": 0.9, "popularity": 0.1},
                            {"sequential": 0.3, "popularity": 1.0}])


def test_candidates_tilt_each_source_and_keep_the_prior():
    prior = {s: 1 / len(NAMES) for s in NAMES}
    center = _normalise({**prior, "popularity": 0.5}, 0.0)
    cands = candidates(center, prior, 2.0, 0.005)
    assert cands[0] == center and cands[-1] == prior and len(cands) == 2 * len(NAMES) + 2
    for c in cands:
        assert sum(c.values()) == pytest.approx(1.0) and min(c.values()) >= 0.005 * 0.99
    up, down = cands[1 + 2 * NAMES.index("popularity")], cands[2 + 2 * NAMES.index("popularity")]
    assert up["popularity"] > center["popularity"] > down["popularity"]
    assert len(candidates(prior, prior, 2.0, 0.005)) == 2 * len(NAMES) + 1


def test_ranks_and_gains():
    features, target = POPULARITY_KNOWS
    w = np.array([[1.0 if s == "sequential" else 0.0 for s in NAMES],
                  [1.0 if s == "popularity" else 0.0 for s in NAMES]])
    assert ranks_of(features, w, target).tolist() == [2, 0]
    assert rank_gain(0, 20) == 1.0 and rank_gain(2, 20) == pytest.approx(0.5)
    assert rank_gain(20, 20) == 0.0


#: equal prior weights: one tilt is enough to change a rank in these small examples
EVEN = {seg: {s: 1.0 for s in NAMES} for seg in ("cold", "warming", "warm")}


def test_weights_move_toward_the_source_that_ranks_what_users_choose():
    f = Fusion(NAMES, EVEN, check_every=10)
    before = f.weights(None, "warm", "session")
    for _ in range(200):
        f.credit("u", "warm/session", POPULARITY_KNOWS)
    after = f.weights(None, "warm", "session")
    assert after["popularity"] > before["popularity"]
    assert after["sequential"] < before["sequential"]
    assert sum(after.values()) == pytest.approx(1.0) and min(after.values()) >= 0.005 * 0.99
    assert f.stats()["moves"]["warm/session"] >= 1
    assert f.weights(None, "warm", "visit") == f.initial["warm/visit"]    # other keys stay
    assert f.stats()["updates"]["warm/session"] == 200


def test_no_evidence_no_move_and_mixed_evidence_needs_more():
    f = Fusion(NAMES, EVEN, check_every=10)
    same = example([{"popularity": 0.5, "sequential": 0.5}, {"popularity": 0.5, "sequential": 0.5}])
    for _ in range(500):             # every candidate ranks it alike: nothing to learn
        f.credit(None, "cold/visit", same)
    assert f.weights(None, "cold", "visit") == f.initial["cold/visit"]
    other = example([{"sequential": 0.2, "popularity": 1.0}, {"sequential": 1.0, "popularity": 0.3}])
    g = Fusion(NAMES, EVEN, check_every=10)
    for i in range(60):              # the two sources take turns at ranking it first
        g.credit(None, "cold/visit", POPULARITY_KNOWS if i % 2 else other)
    assert g.stats()["moves"]["cold/visit"] == 0


def test_learning_is_deterministic_and_survives_a_round_trip_midway():
    rng = np.random.default_rng(3)
    examples = [(rng.random((12, len(NAMES))), int(rng.integers(12))) for _ in range(900)]
    a = Fusion(NAMES, check_every=25, evidence=1.0)
    for e in examples:
        a.credit(None, "warming/visit", e)
    b = Fusion(NAMES, check_every=25, evidence=1.0)
    for e in examples[:437]:
        b.credit(None, "warming/visit", e)
    c = Fusion(NAMES, check_every=25, evidence=1.0)
    c.load_dict(msgpack.unpackb(msgpack.packb(b.to_dict()), raw=False))
    for e in examples[437:]:
        c.credit(None, "warming/visit", e)
    assert a.stats()["moves"]["warming/visit"] > 0
    assert c.to_dict() == a.to_dict()
    assert set(a.stats()["segments"]) == {"cold", "warming", "warm"}


def test_fixed_fusion_never_moves():
    f = Fusion(NAMES, adapt=False)
    for _ in range(300):
        f.credit("u", "warm/visit", POPULARITY_KNOWS)
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


def _query(learner, user):
    from interest.engine.recommend.query import Query
    q = Query(user=user, recent=list(learner.histories[user]),
              attrs=learner.catalog.attrs.get(user))
    return q, key_of(segment_of(learner.user_events[user]), q.context)


def test_examples_are_scored_with_the_last_mark_and_replay_gives_the_same_weights(tmp_path):
    entries = _stream(600, items=60)
    a = Learner(_catalog(60), PARAMS, feedback_every=1, max_stale=50, ease_first=100,
                ease_every=200, fusion_evidence=1.0)
    for n, e in enumerate(entries, 1):
        a.observe(e)
        if n % 37 == 0:
            a.publish()             # extra publishes (the service's clock) change nothing
        assert a.marked.version <= a.models.version
        assert a.marked.n <= len(a.index)
    assert a.credits["feedback"] >= 590 and a.credits["examples"] > 0 and a.ease.fits == 3
    assert any(v > 0 for v in a.fusion.stats()["updates"].values())
    assert sum(a.fusion.stats()["moves"].values()) > 0     # the weights did move
    b = Learner(_catalog(60), PARAMS, feedback_every=1, max_stale=50, ease_first=100,
                ease_every=200, fusion_evidence=1.0)
    for e in entries[:350]:       # a restart from a checkpoint at a mark
        b.observe(e)
    b.save(tmp_path / "m")
    c = Learner(_catalog(60), PARAMS, feedback_every=1, max_stale=50, ease_first=100,
                ease_every=200, fusion_evidence=1.0)
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
