"""Integration: real sockets on random localhost ports, a real LMDB in a temp dir."""

import os

import msgpack
import pytest

from interest.engine.journal.codec import encode_frame
from tests.conftest import event, item_event, learned, wait_for

pytestmark = pytest.mark.integration


def test_ping(client):
    reply = client.call("ping")
    assert reply["version"] == 1 and reply["uptime_s"] >= 0


def test_publish_through_pull_then_flush_then_query(client, publisher):
    publisher.send([item_event("m1", ["Drama"]), item_event("m2", ["Drama"])])
    publisher.send([event(f"e{i}", item="m1", ts=100.0 + i) for i in range(5)])
    publisher.send(event("e5", "purchase", user="u2", item="m2"))
    wait_for(lambda: client.call("stats")["received"] == 8, reason="events received")
    assert client.call("flush", timeout_ms=5000)["applied"] == 6     # catalog events aside
    reply = client.call("interests", user="u1")
    assert reply["events"] == 5 and reply["tags"][0]["tag"] == "Drama"
    recs = client.call("recommend", user="u1", k=5)
    assert [row["item"] for row in recs["items"]] == ["m2"]     # m1 is seen
    assert list(recs["items"][0])[:2] == ["item", "title"]      # the title beside the item
    assert recs["items"][0]["title"] == "Title m2"


def test_ingest_op_is_read_your_writes(client):
    reply = client.call("ingest", events=[item_event("m1", ["Sci-Fi"]),
                                          event("a", item="m1"), event("a", item="m1"),
                                          event("b", item=None)])
    assert reply["accepted"] == 2 and reply["duplicates"] == 1
    assert reply["rejected"] == [{"index": 3, "code": "bad_request",
                                  "message": "field 'item' is required"}]
    interests = client.call("interests", user="u1")     # no flush needed
    assert interests["events"] == 1 and interests["version"] == 1
    again = client.call("ingest", events=[event("a", item="m1")])
    assert again["accepted"] == 0 and again["duplicates"] == 1


def test_unknown_user_gets_the_cold_strategy(client):
    client.call("ingest", events=[item_event("m1", ["Drama"]), event("x", user="other",
                                                                     item="m1")])
    learned(client)       # popularity is the learner's: it lags the ingest reply by design
    reply = client.call("recommend", user="nobody")
    assert reply["strategy"] == "cold" and reply["items"][0]["item"] == "m1"
    assert client.call("interests", user="nobody")["events"] == 0


def test_explain_lists_the_events_behind_each_tag(client):
    client.call("ingest", events=[item_event("m1", ["Drama", "War"]),
                                  event("a", "purchase", item="m1")])
    reply = client.call("explain", user="u1", item="m1")
    drama = next(t for t in reply["tags"] if t["tag"] == "Drama")
    assert [e["id"] for e in drama["events"]] == ["a"]
    assert drama["short"] == pytest.approx(sum(e["short"] for e in drama["events"]))
    assert reply["item"]["item"] == "m1" and reply["item"]["seen"] is True


@pytest.mark.parametrize("frame, reason", [
    (os.urandom(64), "random bytes"),
    (encode_frame({"op": "ping", "x": "y" * 100})[:-10], "truncated msgpack"),
    (encode_frame([1, 2, 3]), "not a map"),
    (b"\x00" * (2 * 1024 * 1024), "oversized"),
])
def test_bad_api_frames_are_rejected_and_the_service_keeps_serving(client, frame, reason):
    reply = client.raw(frame)
    assert reply["ok"] is False and reply["error"]["code"] == "bad_request", reason
    assert client.call("stats")["counters"]["rejected_requests"] == 1
    assert client.call("ping")["version"] == 1


@pytest.mark.parametrize("request_, message", [
    ({"op": "teleport"}, "unknown op"),
    ({"op": "interests"}, "field 'user' is required"),
    ({"op": "interests", "user": 7}, "field 'user' is required"),
    ({"op": "recommend", "user": "u", "k": -1}, "field 'k'"),
    ({"op": "recommend", "user": "u", "candidates": "m1"}, "field 'candidates'"),
    ({"op": "ingest", "events": "nope"}, "field 'events' must be a list"),
    ({"op": "ingest"}, "field 'events' must be a list"),
    ({"op": "flush", "timeout_ms": "soon"}, "field 'timeout_ms'"),
    ({"op": "interests", "user": "u", "fresh": True, "deadline_ms": "soon"}, "field 'deadline_ms'"),
    ({"op": "interests", "user": "u", "fresh": "yes"}, "field 'fresh' must be a boolean"),
])
def test_bad_requests_get_precise_errors(client, request_, message):
    reply = client.raw(dict(request_))
    assert reply["ok"] is False and reply["error"]["code"] == "bad_request"
    assert message in reply["error"]["message"]


def test_bad_ingest_messages_are_counted_and_good_ones_still_applied(client, publisher):
    publisher.send_raw(os.urandom(100))
    publisher.send_raw(msgpack.packb({"v": 1, "id": "t"})[:-3])
    publisher.send_raw(b"\x00" * (2 * 1024 * 1024))
    publisher.send({"v": 1, "id": "bad-type", "type": "view", "ts": "now", "user": "u1",
                    "item": "m1"})
    publisher.send([event("ok1", item="m1"), {"v": 1, "id": "no-user", "type": "view",
                                              "ts": 1.0, "item": "m1"}])
    wait_for(lambda: client.call("stats")["counters"].get("ingest_messages", 0) == 5,
             reason="messages counted")
    client.call("flush")
    stats = client.call("stats")
    assert stats["counters"]["rejected_messages"] == 3      # not msgpack, truncated, too large
    assert stats["rejected"] == 5                           # ... plus two bad events
    assert client.call("interests", user="u1")["events"] == 1


def test_stats_reports_counters_latency_and_actors(client):
    client.call("ingest", events=[event("a", item="m1")])
    stats = client.call("stats")
    assert stats["live_actors"] == 1 and stats["applied"] == 1
    assert "ingest" in stats["latency"] and stats["threads"] < 20


def test_a_full_store_answers_unavailable_and_keeps_serving(tmp_path, context):
    from interest.engine.serving.client import Client, RequestError
    from interest.engine.config import load_config
    from interest.engine.serving.server import Server
    from tests.conftest import RANDOM_PORT

    config = load_config(store={"sync": False, "map_size_mb": 1, "max_map_size_mb": 2},
                         inference={"enabled": False})
    with Server(config, tmp_path / "d", ingest=RANDOM_PORT, api=RANDOM_PORT) as srv:
        c = Client(srv.api, timeout=10, context=context)
        try:
            c.call("ingest", events=[event("first", item="m1")])
            with pytest.raises(RequestError) as err:
                for n in range(100):
                    c.call("ingest", events=[event(f"b{n}-{i}", item="m1", query="x" * 2000)
                                             for i in range(100)])
            assert err.value.code == "unavailable" and "may not grow" in str(err.value)
            assert c.call("ping")["version"] == 1
            assert c.call("interests", user="u1")["events"] >= 1
            assert c.call("stats")["writer"]["failed"] >= 1
        finally:
            c.close()


def test_events_from_a_configured_pub_feed_are_applied(tmp_path, context):
    import zmq

    from interest.engine.serving.client import Client
    from interest.engine.config import load_config
    from interest.engine.serving.server import Server
    from tests.conftest import RANDOM_PORT

    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    config = load_config(store={"sync": False}, inference={"enabled": False},
                         service={"feeds": [f"tcp://127.0.0.1:{port}"]})
    try:
        with Server(config, tmp_path / "d", ingest=RANDOM_PORT, api=RANDOM_PORT) as srv:
            c = Client(srv.api, timeout=10, context=context)
            try:
                # PUB drops messages until the subscription arrives: re-send (same id) until seen
                def applied():
                    pub.send(msgpack.packb(event("feed-1", item="m1")))
                    c.call("flush")
                    return c.call("interests", user="u1")["events"] == 1
                wait_for(applied, reason="the feed's event to be applied")
                assert c.call("interests", user="u1")["events"] == 1   # re-sends were duplicates
            finally:
                c.close()
    finally:
        pub.close(linger=0)


def test_unknown_items_are_reported_not_ranked(client):
    from interest.engine.serving.client import RequestError

    client.call("ingest", events=[item_event("m1", ["Drama"]), event("a", item="m2")])
    reply = client.call("recommend", user="u1", candidates=["zz", "m1"])
    assert [row["item"] for row in reply["items"]] == ["m1"]
    assert reply["unknown_candidates"] == ["zz"]
    with pytest.raises(RequestError) as err:
        client.call("explain", user="u1", item="zz")
    assert err.value.code == "not_found" and "'zz' is not in the catalog" in str(err.value)


def test_an_ingest_frame_past_four_times_the_limit_is_counted(client, publisher):
    publisher.send_raw(b"\x00" * (5 * 1024 * 1024))       # ZeroMQ drops this producer
    wait_for(lambda: client.call("stats")["counters"].get("ingest_disconnects", 0) == 1,
             reason="the disconnect counted")
    assert client.call("ping")["version"] == 1
