"""Explain: exact per-event contributions, the counterfactual, reasons, the HTML report."""

import base64
import json
import random
import re
from html.parser import HTMLParser

import pytest

from interest.actors.user import load_state
from interest.engine.recommend.reasons import PHRASES, reason, reason_sources
from interest.engine.projections.state import replay
from tests.conftest import event, item_event, learned
from interest.tools import explain_report

pytestmark = pytest.mark.integration

TAGS = ["Drama", "War", "Comedy", "Sci-Fi", "Horror", "Romance", "Action", "Crime"]
TYPES = ["view", "view", "click", "cart", "purchase", "skip", "dislike", "rate"]


def random_stream(seed=7, items=30, users=6, events=240):
    rng = random.Random(seed)
    catalog = [item_event(f"m{i}", rng.sample(TAGS, rng.randint(1, 3))) for i in range(items)]
    stream, ts = [], {f"u{u}": 1000.0 for u in range(users)}
    for n in range(events):
        user = f"u{rng.randrange(users)}"
        ts[user] += rng.expovariate(1 / 900.0)
        t = ts[user] - (rng.uniform(0, 3000) if rng.random() < 0.1 else 0.0)   # out of order
        etype = rng.choice(TYPES)
        extra = {"value": float(rng.randint(1, 5))} if etype == "rate" else {}
        stream.append(event(f"e{n}", etype, user=user, item=f"m{rng.randrange(items)}",
                            ts=round(t, 3), **extra))
    return catalog, stream


@pytest.fixture
def loaded(client):
    catalog, stream = random_stream()
    client.call("ingest", events=catalog)
    for i in range(0, len(stream), 60):
        client.call("ingest", events=stream[i:i + 60])
    return sorted({e["user"] for e in stream})


def test_contributions_add_up_to_the_tag_weights(client, loaded):
    checked = 0
    for user in loaded:
        reply = client.call("explain", user=user)
        assert reply["events"] > 0 and reply["tags"]
        for tag in reply["tags"]:
            for kind in ("short", "long"):
                total = sum(e[kind] for e in tag["events"])
                assert total == pytest.approx(tag[kind], rel=1e-9, abs=1e-9), (user, tag["tag"])
            checked += 1
        # the curves the report draws end at the service's weights
        curves = explain_report.interest_curves(reply)
        for tag in reply["tags"][:explain_report.MAX_CURVE_TAGS]:
            assert curves["short"][tag["tag"]][-1] == pytest.approx(tag["short"], rel=1e-9)
            assert curves["long"][tag["tag"]][-1] == pytest.approx(tag["long"], rel=1e-9)
    assert checked > 10


def test_counterfactual_matches_rescoring_without_the_event(server, client, loaded):
    service = server.service
    env, catalog = service.env, service.catalog
    learned(client)
    models = service.learner.models
    rng = random.Random(3)
    for user in loaded[:4]:
        item = f"m{rng.randrange(30)}"
        reply = client.call("explain", user=user, item=item)
        cf = reply["item"]["counterfactual"]
        assert cf is not None and cf["rank"] == reply["item"]["rank"]
        removed = cf["removed_event"]
        if cf["basis"] == "item_tags":      # it is the largest share of the item's tags
            shares = {}
            item_tags = catalog.tags_of(item)
            for tag in reply["tags"]:
                if tag["tag"] in item_tags:
                    for ev in tag["events"]:
                        shares[ev["seq"]] = shares.get(ev["seq"], 0.0) + ev["short"] + ev["long"]
            if len(reply["tags"]) < 20:      # all of the user's tags are in the reply
                assert shares[removed["seq"]] == pytest.approx(max(shares.values()))
        entries = list(env.store.read(user))
        assert any(e.seq == removed["seq"] and e.event["id"] == removed["id"] for e in entries)
        state = load_state(env.store, user, env.params)
        without = replay(user, [e for e in entries if e.seq != removed["seq"]], env.params)
        assert without.events == state.events - 1
        assert models.explain(without, item)["rank"] == cf["rank_without"]
        assert models.explain(state, item)["rank"] == cf["rank"]


def _mentions(text):
    return {name for name, phrase in PHRASES.items() if phrase.lower() in text.lower()}


def test_reasons_only_mention_positive_top_sources(client, loaded):
    row = {"item": "m1", "sources": {"sequential": 0.0, "collaborative": 0.4, "content": 0.3,
                                     "semantic": 0.0, "popularity": 0.01, "demographic": -0.2}}
    assert reason_sources(row) == ["collaborative", "content"]
    assert _mentions(reason(row, None, None)) == {"collaborative", "content"}
    assert reason({"item": "x", "sources": {"popularity": 0.0}}, None, None).startswith("no ")
    seen = 0
    for user in loaded + ["nobody"]:
        for item in client.call("explain", user=user)["recommendations"]["items"]:
            positive = {n for n, v in item["sources"].items() if v > 0}
            assert _mentions(item["reason"]) <= positive, item
            assert _mentions(item["reason"]) == set(reason_sources(item))
            seen += 1
    assert seen > 0


class Checker(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.imgs, self.errors = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.imgs.append(attrs.get("src") or "")
        for key in ("href", "src"):
            if key in attrs and not (attrs[key] or "").startswith("data:"):
                self.errors.append(f"external {key}: {attrs[key]}")
        if tag in ("script", "link", "iframe"):
            self.errors.append(f"<{tag}>")


def check_report(path):
    text = path.read_text(encoding="utf-8")
    parser = Checker()
    parser.feed(text)
    parser.close()
    assert not parser.errors
    assert "html" in parser.tags and parser.imgs
    for src in parser.imgs:
        m = re.fullmatch(r"data:image/png;base64,([A-Za-z0-9+/=]+)", src)
        assert m, src[:60]
        assert base64.b64decode(m.group(1), validate=True)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in text and "https://" not in text
    return text, parser


def test_html_report_for_cold_warm_and_unknown_users(server, client, loaded, tmp_path, capsys):
    hostile = "<script>alert(1)</script>"
    client.call("ingest", events=[item_event("m-x", ["Drama", hostile], title=hostile),
                                  event("c1", "view", user="cold", item="m-x", ts=5000.0),
                                  event("c2", "purchase", user="cold", item="m3", ts=5100.0)])
    warm = max(loaded, key=lambda u: client.call("interests", user=u)["events"])
    for user, kind in ((warm, "warm"), ("cold", "cold"), ("nobody", "unknown")):
        out = tmp_path / f"{kind}.html"
        argv = [user, "--api", server.api, "--html", str(out)]
        if kind != "unknown":
            argv += ["--item", "m-x"]
        assert explain_report.main(argv) == 0
        text, parser = check_report(out)
        assert hostile not in text
        if kind == "unknown":
            assert "No events for this user" in text and "cold-start" in text
            assert len(parser.imgs) == 1            # the recommendations
        else:
            assert len(parser.imgs) >= 3            # curves, timeline, recommendations
            assert "would rank" in text
        assert "no model profile yet" in text
    capsys.readouterr()
    assert explain_report.main(["cold", "--api", server.api, "--item", "m3"]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert reply["user"] == "cold" and reply["item"]["counterfactual"]["rank_without"] >= 1


def test_content_contribution_splits_exactly_over_tags(client):
    client.call("ingest", events=[item_event("a", ["Drama", "War"]),
                                  item_event("b", ["Drama", "Comedy"]),
                                  item_event("c", ["Drama", "War", "History"]),
                                  event("x1", "purchase", item="a"),
                                  event("x2", "view", item="b", ts=200.0)])
    learned(client)                              # the models know the new items
    reply = client.call("explain", user="u1", item="c")["item"]
    content = reply["sources"]["content"]
    assert content > 0
    split = reply["content_tags"]
    assert set(split) <= {"Drama", "War"}            # History is not among the user's tags
    assert sum(split.values()) == pytest.approx(content, rel=1e-9, abs=1e-12)
