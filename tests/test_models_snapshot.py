"""Immutable model snapshots scored with numpy: oracle against the dict-based reference,
incremental publish == full rebuild, snapshots never change, concurrent readers while
the learner learns, checkpoint round trip, the fusion's examples."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest

from interest.engine.config import load_config
from interest.engine.journal.codec import StoredEvent
from interest.engine.projections.catalog import Catalog
from interest.engine.projections.state import FoldParams, InterestState
from interest.engine.recommend import Learner, Recommender
from interest.engine.recommend.fusion import candidates, ranks_of
from interest.engine.recommend.learner import example_of
from tests.reference_sources import (ref_explain, ref_rank_of, ref_recommend, ref_scores,
                                     score_dict)

PARAMS = FoldParams.from_config(load_config())
TAGS = ["a", "b", "c", "d", "e"]
N_CATALOG = 30
N_ITEMS = 36            # i30..i35 only ever appear in events: known to the models, not the catalog


def tags_of(i: int) -> tuple:
    return (TAGS[i % 5], TAGS[(i // 5) % 5])


def make_catalog() -> Catalog:
    cat = Catalog()
    for i in range(N_CATALOG):
        cat.put_item(f"i{i}", {"title": f"item {i}", "tags": list(tags_of(i))})
    for u in range(6):        # u6 and u7 declare nothing
        cat.put_user_attrs(f"u{u}", {"age": 15 + 9 * u, "gender": "MF"[u % 2],
                                     "occupation": "x" if u < 3 else "y"})
    return cat


def events(n: int, seed: int, users: int = 8, first_gseq: int = 1):
    rng = random.Random(seed)
    seqs: dict[str, int] = {}
    out = []
    for g in range(first_gseq, first_gseq + n):
        u = f"u{rng.randrange(users)}"
        seqs[u] = seqs.get(u, 0) + 1
        etype = rng.choice(["view", "view", "click", "rate", "purchase", "skip", "search"])
        ev = {"v": 1, "id": f"e{g}", "type": etype, "ts": 1000.0 + 97.0 * g, "user": u}
        i = min(int(rng.expovariate(0.12)), N_ITEMS - 1)      # a skewed item popularity
        tags = ()
        if etype == "search":
            ev["query"] = "q"
        else:
            ev["item"] = f"i{i}"
            tags = tags_of(i)
        if etype == "rate":
            ev["value"] = float(rng.randint(1, 5))
        out.append(StoredEvent(u, seqs[u], g, 0.0, ev, tags))
    return out


def fold(entries) -> dict[str, InterestState]:
    states: dict[str, InterestState] = {}
    for e in entries:
        states.setdefault(e.stream, InterestState(user=e.stream)).update(e, PARAMS)
    return states


def give_vectors(target, rng: random.Random, items) -> None:
    for item in items:
        target.set_item_vector(item, [rng.uniform(-1, 1) for _ in range(3)])


def with_profiles(states: dict, rng: random.Random) -> list:
    """The states, some with a model profile, plus an unknown and an empty user."""
    out = [None, InterestState(user="nobody")]
    for user, state in sorted(states.items()):
        if rng.random() < 0.5:
            state.profile = {"embedding": [rng.uniform(-1, 1) for _ in range(3)],
                             "tags": rng.sample(["A", "b", "zz", "E"], 2), "summary": ""}
        out.append(state)
    return out


def extras(rng: random.Random) -> list:
    pool = [f"i{i}" for i in range(N_ITEMS)] + ["nope"]
    return [None, [], rng.sample(pool, 5), ["nope", "i35", "i35"]]


def learned(seed: int, n: int = 300, **options) -> tuple[Learner, list, random.Random]:
    rng = random.Random(seed)
    learner = Learner(make_catalog(), PARAMS, 3600.0, **options)
    entries = events(n, seed)
    give_vectors(learner, rng, ["i1", "i2", "i7", "i31", "v-only"])
    for e in entries:
        learner.observe(e)
    learner.publish()
    return learner, entries, rng


# ------------------------------------------------------------------ oracles

@pytest.mark.parametrize("seed", range(5))
def test_every_source_scores_exactly_like_the_dict_reference(seed):
    rng = random.Random(seed)
    learner = Learner(make_catalog(), PARAMS, 3600.0)
    entries = events(400, seed)
    give_vectors(learner, rng, ["i1", "i2", "i7", "i31", "v-only"])
    pos = 0
    while pos < len(entries):           # publish at random points: incremental snapshots
        step = rng.randint(1, 60)
        for e in entries[pos:pos + step]:
            learner.observe(e)
        pos += step
        models = learner.publish()
        for state in with_profiles(fold(entries[:pos]), rng):
            for use_llm in (True, False):
                q, _ = models.query(state, use_llm)
                for extra in extras(rng):
                    for name in learner.names:
                        want = ref_scores(learner, q, extra, use_llm)[name]
                        got = score_dict(models, name, q, extra, use_llm)
                        assert got == want, (name, pos, extra)


@pytest.mark.parametrize("seed", range(5))
def test_recommend_and_explain_equal_the_dict_reference(seed):
    learner, entries, rng = learned(seed)
    models = learner.models
    cat = learner.catalog
    for state in with_profiles(fold(entries), rng):
        seen = sorted(state.seen)[:2] if state is not None else []
        asks = [dict(k=5), dict(k=N_ITEMS + 10), dict(k=8, exclude_seen=False),
                dict(k=3, candidates=["i3", "i33", "nope", "i3", *seen]),
                dict(k=50, candidates=[f"i{i}" for i in range(0, N_ITEMS, 2)],
                     exclude_seen=False),
                dict(k=0)]
        for use_llm in (True, False):
            for ask in asks:
                got = models.recommend(state, **ask, use_llm=use_llm)
                assert got == ref_recommend(learner, state, **ask, use_llm=use_llm), ask
            for item in ["i0", "i4", "i29", "i33", "v-only", "nope", *seen]:
                got = models.explain(state, item, use_llm=use_llm)
                assert got == ref_explain(learner, state, item, use_llm=use_llm), item
    # padding reaches every catalog item, ranked items first
    full = models.recommend(None, k=100)["items"]
    assert {r["item"] for r in full} >= set(cat.ids)
    zeros = [r["score"] == 0 for r in full]
    assert zeros == sorted(zeros)


def test_contributions_add_up_to_the_score_and_ranks_agree_with_explain():
    learner, entries, rng = learned(11, n=400)
    models = learner.models
    for state in with_profiles(fold(entries), rng):
        out = models.recommend(state, k=12)
        assert out["strategy"] in ("cold", "warming", "warm")
        assert sum(out["weights"].values()) == pytest.approx(1.0)
        assert len(out["items"]) == 12
        scores = [row["score"] for row in out["items"]]
        assert scores == sorted(scores, reverse=True)
        for n, row in enumerate(out["items"], 1):
            assert set(row["sources"]) == set(learner.names)
            assert row["score"] == sum(row["sources"].values())
            assert all(v >= 0 for v in row["sources"].values())
            if state is not None:
                assert row["item"] not in state.seen
            explained = models.explain(state, row["item"])
            assert explained["score"] == pytest.approx(row["score"], rel=1e-12, abs=1e-15)
            assert explained["sources"] == pytest.approx(row["sources"], rel=1e-12, abs=1e-15)
            if row["score"] > 0 and not (state is not None and state.seen):
                assert explained["rank"] == n


def test_fusion_examples_rank_like_the_dict_reference():
    """The rank of an item under every candidate weighting, from the learner's example
    (engine.recommend.learner.example_of, fusion.ranks_of), equals the rank the dict
    reference gives: items with a higher fused score, the user's own left out."""
    learner, entries, rng = learned(5, n=400)
    models = learner.models
    sources = learner.fusion.sources
    checked = 0
    for state in with_profiles(fold(entries), rng)[2:]:
        q, segment = models.query(state, True)
        scored = models.scored(q, None, True)
        want_raw = ref_scores(learner, q, None, True)
        seen = models.positions(state.seen)
        cands = candidates(learner.fusion.weights(None, segment, q.context),
                           learner.fusion.prior[segment], 2.0, 0.005)
        matrix = np.array([[c[s] for s in sources] for c in cands])
        for item in ["i0", "i3", "i12", "i33", "nope", *sorted(state.seen)[:3]]:
            example = example_of(scored, models.position(item), seen, sources)
            want = [ref_rank_of(want_raw, c, item, state.seen) for c in cands]
            if example is None:
                assert want == [None] * len(cands)
                continue
            assert ranks_of(*example[:1], matrix, example[1]).tolist() == want
            checked += 1
    assert checked > 20


# ---------------------------------------------------------- incremental

def frozen_arrays(models) -> dict:
    """Every array a snapshot scores from, keyed by item id (positions differ by build)."""
    ids = models.index.ids
    out = {}
    for s in models.scorers:
        if s.name in ("sequential", "collaborative"):
            rows, totals = s.rows
            out[s.name] = {ids[i]: ([ids[j] for j in row[0]], row[1].tolist(), totals[i])
                           for i, row in enumerate(rows) if row is not None}
            if s.name == "collaborative":
                out["inv"] = {ids[i]: v for i, v in enumerate(s.inv.tolist()) if v}
        elif s.name == "popularity":
            out[s.name] = pop_dict(s.pop, ids)
        elif s.name == "demographic":
            out[s.name] = {seg: pop_dict(p, ids) for seg, p in s.segments.items()}
        elif s.name == "semantic":
            out[s.name] = (s.vectors.ids, s.vectors.matrix.tolist(),
                           [ids[i] for i in s.vectors.pos])
        elif s.name == "ease":
            out[s.name] = (s.items, s.weights.tolist(), [ids[i] for i in s.pos])
        else:
            out[s.name] = (s.tags.ids, [ids[i] for i in s.cat_pos])
    return out


def pop_dict(p, ids) -> tuple:
    return ({ids[i]: v for i, v in enumerate(p.scores.tolist()) if v}, p.top,
            sorted(ids[i] for i in p.cand))


@pytest.mark.parametrize("seed", [1, 2])
def test_incremental_publish_equals_a_full_rebuild(seed):
    rng = random.Random(seed)
    cat = make_catalog()
    learner = Learner(cat, PARAMS, 600.0)        # a short half-life: popularity rebases
    entries = events(1500, seed)
    for n, e in enumerate(entries):
        learner.observe(e)
        if rng.random() < 0.2:
            learner.publish()
        if n == 700:
            cat.put_item("late", {"title": "late", "tags": ["a", "new"]})
            give_vectors(learner, rng, ["i4", "late"])
    incremental = learner.publish()
    learner._full = True                         # noqa: SLF001 - force a rebuild from scratch
    full = learner.publish()
    assert frozen_arrays(incremental) == frozen_arrays(full)
    for state in with_profiles(fold(entries), rng):
        assert incremental.recommend(state, k=10) == \
            full.recommend(state, k=10)


def test_unchanged_sources_are_shared_between_snapshots():
    learner, entries, _ = learned(3)
    before = learner.models
    same = learner.publish()                     # nothing changed
    assert all(a is b for a, b in zip(before.scorers, same.scorers))
    learner.observe(events(1, 99, first_gseq=10_000)[0])
    after = learner.publish()
    content = learner.names.index("content")
    assert after.scorers[content] is before.scorers[content]


# ---------------------------------------------------------- immutability

def test_a_snapshot_does_not_change_when_the_learner_learns_more():
    learner, entries, rng = learned(4, n=250, adapt=False)
    old = learner.models
    states = with_profiles(fold(entries), rng)
    asked = [(old.recommend(s, k=10), old.explain(s, "i3")) for s in states]
    arrays = frozen_arrays(old)
    more = events(600, 40, first_gseq=1000)
    for e in more:
        learner.observe(e)
    learner.catalog.put_item("brand-new", {"title": "n", "tags": ["a"]})
    give_vectors(learner, rng, ["i3", "i5", "brand-new"])
    new = learner.publish()
    assert [(old.recommend(s, k=10), old.explain(s, "i3"))
            for s in states] == asked
    assert frozen_arrays(old) == arrays
    assert frozen_arrays(new) != arrays
    pop = old.scorer("popularity").pop.scores
    with pytest.raises(ValueError):            # snapshot arrays are read-only
        pop[0] = 1.0
    assert [new.recommend(s, k=10) for s in states] != [a for a, _ in asked]
    assert old.position("brand-new") is None and new.position("brand-new") is not None


def test_concurrent_readers_while_the_learner_observes_and_publishes():
    learner, entries, rng = learned(6, n=200, max_stale=8)
    states = list(fold(entries).values())
    more = events(3000, 60, first_gseq=1000)
    errors: list = []
    done = threading.Event()
    replies = [0]

    def check(reply, state, k):
        assert reply["strategy"] in ("cold", "warming", "warm")
        assert len(reply["items"]) == k
        scores = [row["score"] for row in reply["items"]]
        assert scores == sorted(scores, reverse=True)
        for row in reply["items"]:
            assert row["score"] == sum(row["sources"].values())
            assert row["item"] not in state.seen

    def reader(offset):
        try:
            while not done.is_set():
                models = learner.models           # one reference read, no lock
                for state in states[offset::3]:
                    check(models.recommend(state, k=5), state, 5)
                    out = models.explain(state, "i2")
                    assert out["rank"] >= 1 and out["score"] >= 0
                    replies[0] += 1
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    def vectors():
        try:
            for i in range(200):
                learner.set_item_vector(f"i{i % N_ITEMS}", [1.0, i, 0.5])
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(3)]
    threads.append(threading.Thread(target=vectors))
    for t in threads:
        t.start()
    for n, e in enumerate(more):                 # this thread is the learner
        learner.observe(e)
        if n % 50 == 0:
            learner.publish()
    done.set()
    for t in threads:
        t.join()
    assert not errors
    assert replies[0] > 0
    learner.publish()
    assert len(learner.item_vectors) == N_ITEMS + 1     # and "v-only"


# ----------------------------------------------------------- persistence

def test_checkpoint_round_trip(tmp_path):
    learner, entries, rng = learned(8, n=400)
    path = learner.save(tmp_path / "models" / "recommender.msgpack")
    again = Learner(learner.catalog, PARAMS, 3600.0)
    assert again.load(path)
    assert not again.load(tmp_path / "absent.msgpack")
    assert again.base_gseq == again.gseq == learner.gseq
    assert again.user_events == learner.user_events
    assert frozen_arrays(again.models) == frozen_arrays(learner.models)
    for e in entries:                            # replayed journal: nothing counted twice
        again.observe(e)
    assert again.observed == learner.observed
    again.publish()
    for state in with_profiles(fold(entries), rng):
        assert again.models.recommend(state, k=10) == \
            learner.models.recommend(state, k=10)
    later = events(50, 77, first_gseq=learner.gseq + 1)
    for e in later:
        learner.observe(e)
        again.observe(e)
    assert frozen_arrays(again.publish()) == frozen_arrays(learner.publish())


def test_facade_publishes_lazily_and_exposes_the_learner():
    cat = make_catalog()
    rec = Recommender(cat, PARAMS, 3600.0)
    first = rec.snapshot()
    assert rec.snapshot() is first               # nothing changed: no publish
    entries = events(50, 3)
    for e in entries:
        rec.observe(e)
    second = rec.snapshot()
    assert second is not first and second is rec.learner.models
    rec.set_item_vector("i1", [1.0, 0.0, 0.0])
    assert rec.snapshot() is not second          # a queued vector is a change
    cat.put_item("more", {"title": "more", "tags": ["a"]})
    third = rec.snapshot()
    assert third.position("more") is not None    # so is a grown catalog
    state = fold(entries)["u1"]
    assert rec.recommend(state, k=5) == third.recommend(state, k=5)
    stats = rec.stats()
    assert stats["snapshot"]["items"] == third.n and stats["observed"] == rec.observed
