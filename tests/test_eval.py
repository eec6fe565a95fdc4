"""The evaluation harness on a small synthetic dataset whose answers are known."""

from __future__ import annotations

import json

import pytest

from interest.engine.movielens import MovieLens
from interest.tools import eval as ev


def chains(users: int = 12, length: int = 6, cycle: int = 8,
           extra_items: int = 10) -> MovieLens:
    """Two groups of users, each walking its own cycle of items in order, from
    different starting points, users staggered in time; plus untouched items."""
    items = [f"a{i}" for i in range(cycle)] + [f"b{i}" for i in range(cycle)] + \
        [f"z{i}" for i in range(extra_items)]
    item_events = [{"v": 1, "id": f"item-{it}", "type": "item", "ts": 0.0, "item": it,
                    "title": it, "tags": [it[0]]} for it in items]
    user_events = [{"v": 1, "id": f"user-{u}", "type": "user_attrs", "ts": 0.0, "user": f"u{u}",
                    "attrs": {"age": 30, "gender": "F", "occupation": "x"}}
                   for u in range(users)]
    ratings = []
    for u in range(users):
        group = "a" if u % 2 == 0 else "b"
        for step in range(length):
            ts = 1000.0 * u + 10.0 * step
            ratings.append({"v": 1, "id": f"r-{u}-{step}", "type": "rate", "ts": ts,
                            "user": f"u{u}", "item": f"{group}{(u // 2 + step) % cycle}",
                            "value": 4.0})
    ratings.sort(key=lambda r: r["ts"])
    return MovieLens(item_events, user_events, ratings)


def test_metric_hits_and_ndcg():
    m = ev.Metric()
    m.add(["x", "y", "t"], "t", 10)
    m.add(["x", "y"], "t", 10)
    assert m.hr == 0.5
    assert m.nd == pytest.approx(0.5 * 1 / 2.0)   # rank 3 -> 1/log2(4)


def test_baselines_know_the_chain():
    data = chains()
    b = ev.Baselines([it["item"] for it in data.items])
    for r in data.ratings[:-1]:
        b.observe(r["user"], r["item"])
    last = data.ratings[-1]
    assert last["item"] in b.item_knn_last(last["user"], 10)
    assert b.popularity("nobody", 3)[0][0] in "ab"


def test_leave_one_out_on_chains_is_perfect_for_knn_and_service():
    out = ev.leave_one_out(chains(), progress=False)
    assert out["users"] == 12
    s = out["systems"]
    assert s["item_knn_last"]["hr@10"] == 1.0
    assert s["service"]["hr@10"] == 1.0
    assert s["service"]["ndcg@10"] >= 0.8        # the chain's next item comes (nearly) first
    assert s["service_no_llm"] == s["service"]    # no model output in this journal
    # popularity ranks the 8 items of both cycles the same for everyone: it cannot know
    # which cycle a user walks, so it misses some held-out items the service finds
    assert s["popularity"]["hr@10"] < s["service"]["hr@10"]


def test_prequential_on_chains():
    out = ev.prequential(chains(), warmup=0.3, progress=False)
    s = out["systems"]
    assert out["points"] > 0
    assert sum(w["n"] for w in out["windows"]) == out["points"]
    # after the warm-up every chain has been walked: the next item is known
    assert s["service"]["hr@10"] >= 0.95
    assert s["item_knn_last"]["hr@10"] >= 0.9
    for system in ev.SYSTEMS:         # a hit scores at most 1 in NDCG: ndcg <= hr
        assert s[system]["ndcg@10"] <= s[system]["hr@10"]
        assert s[system]["hr@10"] > 0.0


def test_sampled_prequential_is_seeded():
    a = ev.prequential(chains(), warmup=0.2, sample=20, seed=3, progress=False)
    b = ev.prequential(chains(), warmup=0.2, sample=20, seed=3, progress=False)
    assert a["points"] == 20
    assert a["systems"] == b["systems"]


def test_main_json_shape(tmp_path, capsys, monkeypatch):
    data = chains()
    monkeypatch.setattr("interest.engine.movielens.load", lambda path: data)
    assert ev.main(["--json", "--no-progress", "--sample", "10"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["prequential"]) == set(ev.SYSTEMS) == set(out["loo"])
    assert set(out["prequential"]["service"]) == {"hr@10", "ndcg@10", "cold_hr@10",
                                                  "cold_item_hr@10", "tail_hr@10"}
    assert set(out["loo"]["service"]) == {"hr@10", "ndcg@10", "cold_item_hr@10", "tail_hr@10"}
    assert "service_fixed_weights" in out["prequential"] and out["meta"]["split"] == "test"


def test_slices_count_cold_and_tail_items():
    base = ev.Baselines([f"i{i}" for i in range(10)])
    for n, item in enumerate(["i0"] * 6 + ["i1"] * 3 + ["i2"]):
        base.observe(f"u{n}", item)
    assert base.count("i0") == 6 and base.count("i9") == 0
    assert not base.in_tail("i0") and not base.in_tail("i1")     # the top 2 of 10 items
    assert base.in_tail("i2") and base.in_tail("i9")


def test_validation_split_holds_out_the_second_to_last_and_the_warm_up():
    data = chains()
    loo, _ = ev.validation_split(data, "loo", 0.2)
    assert len(loo.ratings) == len(data.ratings) - 12            # each user's last dropped
    last = {}
    for r in data.ratings:
        last[r["user"]] = r["id"]
    assert not set(last.values()) & {r["id"] for r in loo.ratings}
    pre, warmup = ev.validation_split(data, "prequential", 0.5)
    assert pre.ratings == data.ratings[:len(data.ratings) // 2] and warmup == 0.5


def test_main_reports_a_missing_folder(tmp_path, capsys):
    assert ev.main(["--data", str(tmp_path / "absent"), "--no-progress"]) == 2


class ProfilingModel:
    """The inference actor's blocking ``profile``, answered from a table (a failure for
    the items it does not know), recording the prompts it was given."""

    def __init__(self, answers: dict):
        self.answers, self.prompts = answers, []

    def profile(self, user, items, queries=(), vocabulary=(), **_options):
        from interest.actors.inference_requests import ProfileResult
        from interest.engine.errors import DeadlineExceeded
        self.prompts.append((user, items, tuple(vocabulary)))
        item = items[0]["item"]
        if item not in self.answers:
            raise DeadlineExceeded("the model did not answer in time")
        tags, summary = self.answers[item]
        return ProfileResult(user, tags, summary, "m", "h", False, 1.0, None)


def test_item_profiles_enrich_each_items_text_and_a_failure_keeps_the_plain_text():
    from interest.engine.config import load_config
    data = chains(users=3, length=3, cycle=4)
    first = data.items[0]["item"]
    model = ProfilingModel({first: (("space", "drama"), "Slow, lonely space drama.")})
    texts = ev._item_texts(data, model, load_config(), progress=False)
    assert set(texts) == {r["item"] for r in data.items}
    assert "Slow, lonely space drama." in texts[first] and "Keywords: space" in texts[first]
    from interest.engine.llm.item_profiles import profile_text
    for record in data.items[1:]:                     # the model failed: catalog text only
        assert texts[record["item"]] == profile_text(record["item"], record, None)
    user, items, vocabulary = model.prompts[0]
    assert items[0]["item"] == first and user.endswith(first)
    assert vocabulary                                 # the catalog's tags, as the service sends


def test_item_profiles_without_the_model_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        ev.main(["--item-profiles"])
    assert exit_.value.code == 2
    assert "--item-profiles needs --llm" in capsys.readouterr().err
