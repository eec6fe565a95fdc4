"""The fold: pure, deterministic, snapshot-safe, and live == replay."""

from hypothesis import given, settings
from hypothesis import strategies as st

from interest.engine.journal.codec import StoredEvent
from interest.engine.config import load_config
from interest.engine.projections.state import FoldParams, InterestState, apply, replay

PARAMS = FoldParams.from_config(load_config())
TAGS = ["Drama", "Comedy", "Action", "Horror", "Sci-Fi"]


def _entry(seq, etype, ts, item, value=None, tags=(), query=None):
    wire = {"v": 1, "id": f"e{seq}", "type": etype, "ts": ts, "user": "u"}
    if item is not None:
        wire["item"] = item
    if value is not None:
        wire["value"] = value
    if query is not None:
        wire["query"] = query
    return StoredEvent("u", seq, seq, 0.0, wire, tuple(tags))


@st.composite
def journals(draw):
    n = draw(st.integers(0, 40))
    ts = 1000.0
    out = []
    for seq in range(1, n + 1):
        ts += draw(st.floats(0, 20000))
        etype = draw(st.sampled_from(["view", "click", "cart", "purchase", "rate", "skip",
                                      "dislike", "search", "profile"]))
        if etype == "profile":
            out.append(StoredEvent("u", seq, seq, 0.0, {
                "v": 1, "id": f"p{seq}", "type": "profile", "ts": ts, "user": "u",
                "tags": ["Drama"], "summary": "likes drama", "model": "m", "input_hash": "h"}))
            continue
        item = None if etype == "search" else f"i{draw(st.integers(0, 9))}"
        value = float(draw(st.integers(1, 5))) if etype == "rate" else None
        tags = draw(st.lists(st.sampled_from(TAGS), max_size=3, unique=True)) if item else ()
        out.append(_entry(seq, etype, ts, item, value, tags,
                          query="space" if etype == "search" else None))
    return out


@settings(max_examples=60, deadline=None)
@given(journals())
def test_apply_is_pure_and_live_equals_replay_at_every_step(entries):
    live = InterestState(user="u")
    folded = InterestState(user="u")
    for i, entry in enumerate(entries):
        previous, before = folded, folded.to_dict()
        folded = apply(previous, entry, PARAMS)
        assert previous.to_dict() == before          # the input state is untouched
        live.update(entry, PARAMS)
        assert live == folded
        assert replay("u", entries[: i + 1], PARAMS) == live


@settings(max_examples=40, deadline=None)
@given(journals(), st.integers(0, 40))
def test_snapshot_plus_tail_equals_full_replay(entries, cut):
    cut = min(cut, len(entries))
    snapshot = InterestState.decode(replay("u", entries[:cut], PARAMS).encode())
    assert replay("u", entries[cut:], PARAMS, state=snapshot) == replay("u", entries, PARAMS)


def test_apply_does_not_mutate_its_input():
    state = replay("u", [_entry(1, "view", 10.0, "a", tags=["Drama"])], PARAMS)
    frozen = state.to_dict()
    new = apply(state, _entry(2, "purchase", 20.0, "b", tags=["Drama", "Action"]), PARAMS)
    assert state.to_dict() == frozen
    assert new.version == 2 and state.version == 1


def test_replayed_entries_are_idempotent():
    entries = [_entry(1, "view", 10.0, "a", tags=["Drama"]),
               _entry(2, "click", 20.0, "b", tags=["Drama"])]
    once = replay("u", entries, PARAMS)
    assert replay("u", entries + entries, PARAMS) == once


def test_decay_and_weights():
    hour = PARAMS.short_half_life_s
    state = replay("u", [_entry(1, "purchase", 0.0, "a", tags=["Drama"]),
                         _entry(2, "view", hour, "b", tags=["Comedy"])], PARAMS)
    rows = {r["tag"]: r for r in state.tag_weights(PARAMS)}
    assert rows["Drama"]["short"] == PARAMS.weights["purchase"] / 2   # one half-life later
    assert rows["Comedy"]["short"] == PARAMS.weights["view"]
    assert state.counts == {"purchase": 1, "view": 1}
    assert state.seen == {"a", "b"}


def test_low_ratings_are_negative_against_the_users_mean():
    state = replay("u", [_entry(1, "rate", 1.0, "a", 5.0, ["Drama"]),
                         _entry(2, "rate", 2.0, "b", 5.0, ["Drama"])], PARAMS)
    low = state.event_weight({"type": "rate", "value": 1.0}, PARAMS)
    high = state.event_weight({"type": "rate", "value": 5.0}, PARAMS)
    assert low < 0 < high
