import msgpack
import pytest

from interest.engine.journal.codec import StoredEvent, decode_frame, encode_frame
from interest.engine.errors import DecodeError, StoreError, ValidationError
from interest.engine.journal.events import BehaviourEvent, ItemEvent, UserAttrsEvent, parse_event
from tests.conftest import event


def test_behaviour_event_round_trips_with_unknown_keys():
    wire = event("e1", "click", ctx={"page": "home"}, campaign="x7")
    parsed = parse_event(wire)
    assert isinstance(parsed, BehaviourEvent)
    assert parsed.extra == {"campaign": "x7"}
    assert parsed.to_wire() == wire


def test_events_are_frozen():
    parsed = parse_event(event("e1"))
    with pytest.raises(AttributeError):
        parsed.user = "other"


def test_item_and_user_attrs_events():
    item = parse_event({"v": 1, "id": "i", "type": "item", "ts": 1, "item": "m1",
                        "title": "Heat", "tags": ["Crime", "Crime", "Action"]})
    assert isinstance(item, ItemEvent) and item.tags == ("Crime", "Action")
    attrs = parse_event({"v": 1, "id": "a", "type": "user_attrs", "ts": 1, "user": "u",
                         "attrs": {"age": 30}})
    assert isinstance(attrs, UserAttrsEvent) and attrs.attrs == {"age": 30}


@pytest.mark.parametrize("wire, message", [
    ({"id": "e", "type": "view", "ts": 1, "user": "u", "item": "i"}, "field 'v' is required"),
    (event("e", user=None) | {"user": None}, "field 'user' is required"),
    (event("e", item=None), "field 'item' is required"),
    (event("e", "rate"), "field 'value' is required"),
    (event("e", "rate", value="five"), "field 'value' must be a number, got str"),
    (event("e", ts="yesterday"), "field 'ts' must be a number, got str"),
    (event("e", user=42), "field 'user' must be a string, got int"),
    (event("e", "teleport"), "field 'type' must be one of"),
    (event("e", "search", item=None), "field 'query' is required"),
    (event("", "view"), "field 'id' must not be empty"),
    (event("e", ts=float("nan")), "field 'ts' must be finite"),
    (event("e", ctx=[1]), "field 'ctx' must be a map, got list"),
    (event("e", user="a\x00b"), "field 'user' must not contain NUL"),
    (event("e", user="é" * 200), "longer than 256 bytes"),
    ({"v": 2, "id": "e", "type": "view", "ts": 1, "user": "u", "item": "i"}, "field 'v' must be 1"),
    ([1, 2], "an event must be a map, got list"),
])
def test_validation_errors_name_the_field(wire, message):
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_event(wire)


def test_decode_frame_limits_and_garbage():
    assert decode_frame(encode_frame({"a": 1}), 100) == {"a": 1}
    with pytest.raises(DecodeError, match="exceeds the limit"):
        decode_frame(b"x" * 101, 100)
    with pytest.raises(DecodeError, match="not valid msgpack"):
        decode_frame(encode_frame({"a": "hello"})[:-2], 100)
    with pytest.raises(DecodeError, match="trailing bytes"):
        decode_frame(encode_frame(1) + encode_frame(2), 100)
    with pytest.raises(DecodeError):
        decode_frame(b"\xc1", 100)


def test_stored_event_envelope_round_trip_and_version_check():
    entry = StoredEvent("u1", 3, 17, 1234.5, event("e1"), ("a", "b"))
    assert StoredEvent.decode(entry.encode()) == entry
    bad = msgpack.packb({"s": 99, "stream": "u1"})
    with pytest.raises(StoreError, match="envelope version 99"):
        StoredEvent.decode(bad)


NOW = 1_700_000_000.0


def test_a_far_future_ts_is_rejected_and_milliseconds_are_named():
    with pytest.raises(ValidationError, match=r"field 'ts' .* more than 86400 s ahead") as err:
        parse_event(event("e", ts=NOW * 1000), now=NOW)
    assert "milliseconds" in str(err.value) and "ts/1000 = 1700000000.000" in str(err.value)
    with pytest.raises(ValidationError, match=r"field 'ts' \(1e\+300\) is more than") as err:
        parse_event(event("e", ts=1e300), now=NOW)
    assert "milliseconds" not in str(err.value)
    assert parse_event(event("e", ts=NOW + 3600), now=NOW).ts == NOW + 3600   # clock skew is fine
    with pytest.raises(ValidationError, match="ahead of the service clock"):
        parse_event(event("e", ts=NOW + 120), {"max_future_skew_s": 60.0}, now=NOW)


def test_ts_is_checked_against_the_real_clock_by_default():
    import time
    with pytest.raises(ValidationError, match="milliseconds"):
        parse_event(event("e", ts=time.time() * 1000))


@pytest.mark.parametrize("ts", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_ts_is_rejected(ts):
    with pytest.raises(ValidationError, match="field 'ts' must be finite"):
        parse_event(event("e", ts=ts))


@pytest.mark.parametrize("value, message", [
    (1e308, r"field 'value' must be within -1e\+06\.\.1e\+06, got 1e\+308"),
    (-2e6, r"field 'value' must be within"),
    (float("nan"), "field 'value' must be finite"),
    (float("inf"), "field 'value' must be finite"),
])
def test_rate_values_are_finite_and_bounded(value, message):
    with pytest.raises(ValidationError, match=message):
        parse_event(event("e", "rate", value=value))
    assert parse_event(event("e", "rate", value=4.5)).value == 4.5


@pytest.mark.parametrize("wire, message", [
    (event("e", ctx={b"page": "home"}), r"field 'ctx' has a map key of type bytes \(b'page'\)"),
    (event("e", ctx={"a": {b"k": 1}}), r"field 'ctx\.a' has a map key of type bytes"),
    (event("e", ctx={"a": [{"b": {1: 2}}]}), r"field 'ctx\.a\[0\]\.b' has a map key of type int"),
    (event("e", extra={b"k": 1}), r"field 'extra' has a map key of type bytes"),
    ({**event("e"), b"raw": 1}, r"an event's keys must be strings, got a key of type bytes"),
    ({"v": 1, "id": "a", "type": "user_attrs", "ts": 1, "user": "u", "attrs": {b"age": 3}},
     r"field 'attrs' has a map key of type bytes"),
    ({"v": 1, "id": "i", "type": "item", "ts": 1, "item": "m", "title": "t",
      "attrs": {"x": {b"y": 1}}}, r"field 'attrs\.x' has a map key of type bytes"),
])
def test_bytes_and_other_non_string_map_keys_are_rejected_with_the_field(wire, message):
    with pytest.raises(ValidationError, match=message):
        parse_event(wire)


@pytest.mark.parametrize("wire, message", [
    (event("e", ctx={"score": float("nan")}), r"field 'ctx\.score' must be finite, got nan"),
    (event("e", ctx={"xs": [1.0, float("inf")]}), r"field 'ctx\.xs\[1\]' must be finite"),
    (event("e", weight=float("-inf")), r"field 'weight' must be finite"),
    ({"v": 1, "id": "a", "type": "user_attrs", "ts": 1, "user": "u",
      "attrs": {"age": float("nan")}}, r"field 'attrs\.age' must be finite"),
])
def test_nan_and_infinity_are_rejected_anywhere_in_an_event(wire, message):
    with pytest.raises(ValidationError, match=message):
        parse_event(wire)


def test_nesting_is_bounded():
    deep = {}
    node = deep
    for _ in range(40):
        node["n"] = {}
        node = node["n"]
    with pytest.raises(ValidationError, match="field 'ctx' is nested deeper than 16 levels"):
        parse_event(event("e", ctx=deep))


def test_an_accepted_event_always_exports_as_json():
    import json
    wire = event("e", ctx={"page": "home", "pos": [1, 2.5, {"k": None}]}, campaign={"a": 1})
    assert json.loads(json.dumps(parse_event(wire).to_wire(), allow_nan=False)) == wire


def test_a_message_with_bytes_keys_survives_decoding_and_is_rejected_by_validation():
    frame = msgpack.packb(event("e", ctx={b"k": "v"}), use_bin_type=True)
    with pytest.raises(ValidationError, match="map key of type bytes"):
        parse_event(decode_frame(frame, 10_000))


def test_stored_event_that_cannot_be_encoded_is_a_store_error():
    with pytest.raises(StoreError, match="cannot encode the journal entry of event 'e1'"):
        StoredEvent("u1", 1, 1, 1.0, event("e1", weird=object())).encode()


@pytest.mark.parametrize("data", [msgpack.packb([1, 2]), msgpack.packb({"s": 1}), None])
def test_corrupt_journal_entries_are_store_errors(data):
    with pytest.raises(StoreError, match="corrupt journal entry"):
        StoredEvent.decode(data)
