import msgpack
import pytest

from engine.journal.codec import StoredEvent, decode_frame, encode_frame
from engine.errors import DecodeError, StoreError, ValidationError
from engine.journal.events import BehaviourEvent, ItemEvent, UserAttrsEvent, parse_event
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
