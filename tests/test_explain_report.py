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
            assert "Without it this item would" in text
            assert "True" not in text and "False" not in text       # prose, not Python
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


# ------------------------------------------------- titles, prose and chart sizes


def walk_rows(obj):
    """Every map in a reply that names an item."""
    if isinstance(obj, dict):
        if isinstance(obj.get("item"), str):
            yield obj
        for value in obj.values():
            yield from walk_rows(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from walk_rows(value)


def test_every_item_in_the_explain_reply_has_its_title_beside_it(client):
    client.call("ingest", events=[item_event("m1", ["Drama"], title="Kolya (1996)"),
                                  item_event("m2", ["Drama", "War"], title="Babe (1995)"),
                                  event("r1", "rate", item="m1", value=4.0),
                                  event("r2", "rate", item="m2", ts=200.0, value=5.0),
                                  event("v1", "view", item="m2", ts=300.0)])
    reply = client.call("explain", user="u1", item="m2")
    rows = list(walk_rows(reply))
    assert len(rows) >= 8       # item, counterfactual event, recommendations, timeline, tags
    titles = {"m1": "Kolya (1996)", "m2": "Babe (1995)"}
    for row in rows:
        assert row["title"] == titles.get(row["item"]), row
        keys = list(row)
        assert keys.index("title") == keys.index("item") + 1, keys       # beside the item
    rates = [row for row in rows if row.get("type") == "rate" and "id" in row]
    assert rates and all(row["value"] in (4.0, 5.0) for row in rates)
    assert reply["item"]["counterfactual"]["removed_event"]["title"] == "Babe (1995)"


def cf_item(rank, without, basis="item_tags", shared=("Comedy",)):
    return {"item": "242", "title": "Kolya (1996)", "rank": rank, "seen": True,
            "counterfactual": {"rank": rank, "rank_without": without, "basis": basis,
                               "shared_tags": list(shared),
                               "removed_event": {"id": "e8", "seq": 3, "type": "rate",
                                                 "item": "8", "title": "Babe (1995)",
                                                 "value": 5.0, "ts": 881251753.0}}}


def test_the_counterfactual_reads_right_in_every_direction():
    worse = explain_report.counterfactual_text(cf_item(3, 9))
    better = explain_report.counterfactual_text(cf_item(166, 165))
    same = explain_report.counterfactual_text(cf_item(40, 40, basis="latest", shared=()))
    for text in (worse, better, same):
        # "rate of 8" could be a rating of 8: the item is named by its title, the rating said
        assert 'you rated "Babe (1995)" (item 8) with a rating of 5 on 1997-12-04' in text
    assert "drop from rank 3 to rank 9" in worse and "helping it" in worse
    assert "rise from rank 166 to rank 165" in better and "holds this item back" in better
    assert "stay at rank 40" in same and "most recent event" in same
    assert "tags: Comedy" in worse
    assert explain_report.counterfactual_text({"counterfactual": None}).startswith("No event")
    assert "True" not in explain_report.seen_text({"seen": True})
    assert "already" in explain_report.seen_text({"seen": True})


def test_event_phrases_name_titles_and_ratings():
    phrase = explain_report.event_phrase
    assert phrase({"type": "rate", "item": "8", "title": "Babe (1995)", "value": 4.0}) == \
        'rated "Babe (1995)" (item 8) with a rating of 4'
    assert phrase({"type": "view", "item": "8", "title": None}) == "viewed item 8"
    assert phrase({"type": "search", "query": "space"}) == 'searched for "space"'
    assert explain_report.item_name({"item": "8", "title": "Babe (1995)"}) == \
        "Babe (1995) (item 8)"


@pytest.fixture
def figures(monkeypatch):
    """The figure objects instead of their PNGs."""
    monkeypatch.setattr(explain_report, "_png", lambda fig: fig)
    yield
    explain_report._plt().close("all")


def test_the_recommendation_chart_is_sized_to_its_data(figures):
    items = [{"item": str(i), "title": f"A Long Title Number {i} (1996)", "score": 0.9 / i,
              "sources": {"sequential": 0.6 / i, "popularity": 0.3 / i, "content": 0.0}}
             for i in range(1, 11)]
    fig = explain_report.recommendations_figure(items)
    ax = fig.axes[0]
    low, high = ax.get_xlim()
    assert low == 0 and 0.9 <= high <= 0.9 * 1.15            # to the top score, not 2.5x it
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "A Long Title Number 1 (1996) (item 1)"    # whole, best on top
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["sequential", "popularity"]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes_box = ax.get_window_extent(renderer)
    assert len(ax.texts) == 10                  # one score label per bar, no reasons in the plot
    for text in ax.texts:                       # each inside the plot, none cut at its edge
        box = text.get_window_extent(renderer)
        assert axes_box.x0 <= box.x0 and box.x1 <= axes_box.x1, text.get_text()


def test_the_item_chart_shows_only_contributing_sources(figures):
    fig = explain_report.item_figure({"item": "242", "title": "Kolya (1996)",
                                      "sources": {"demographic": 0.044, "popularity": 0.016,
                                                  "sequential": 0.0, "content": -0.01}})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["content", "popularity",
                                                             "demographic"]
    low, high = ax.get_xlim()
    assert low < -0.01 and 0.044 < high < 0.044 + 0.2 * 0.054 + 1e-9
    assert "Kolya (1996) (item 242)" in ax.get_title()
    assert "sequential" in ax.get_xlabel()
