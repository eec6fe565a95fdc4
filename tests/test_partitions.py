"""Partitions behind the router, in one process: two real services (each its own LMDB
in its own directory) and the router over real ZeroMQ sockets.

The split itself (which partition an event goes to, an ingest request's parts and
their combined reply) is tested first, without sockets."""

from __future__ import annotations

import time

import pytest
import zmq

from interest.engine.partitions.layout import partition_of
from interest.engine.partitions.router import Router
from interest.engine.partitions.split import (EVERY, by_partition, combine_ingest, ingest_parts,
                                              owner)
from interest.engine.serving.client import Client, Publisher, RequestError
from interest.engine.serving.server import Server
from tests.conftest import RANDOM_PORT, event, item_event, wait_for

N = 2


def users_of(partition: int, count: int, n: int = N) -> list[str]:
    out, i = [], 0
    while len(out) < count:
        if partition_of(f"u{i}", n) == partition:
            out.append(f"u{i}")
        i += 1
    return out


# ------------------------------------------------------------------ the split


def test_owner_by_user_items_to_every_partition_and_unroutable_to_0():
    assert owner(event("e1", user="u7"), 4) == partition_of("u7", 4)
    assert owner(item_event("m1", ["a"]), 4) == EVERY
    assert owner({"v": 1, "id": "a", "type": "user_attrs", "ts": 1.0, "user": "u7",
                  "attrs": {}}, 4) == partition_of("u7", 4)     # forget erases its only copy
    assert owner({"v": 1, "id": "x", "type": "view"}, 4) == 0        # no user: 0 rejects it
    assert owner("not a map", 4) == 0


def test_by_partition_keeps_arrival_order_and_copies_catalog_events():
    a, b = users_of(0, 1)[0], users_of(1, 1)[0]
    batch = [event("1", user=a), item_event("m1", ["x"]), event("2", user=b), event("3", user=a)]
    parts = by_partition(batch, N)
    assert [e["id"] for e in parts[0]] == ["1", batch[1]["id"], "3"]
    assert [e["id"] for e in parts[1]] == [batch[1]["id"], "2"]


def test_ingest_parts_keep_runs_in_order_and_count_catalog_once():
    a, b = users_of(0, 1)[0], users_of(1, 1)[0]
    events = [event("1", user=b), item_event("m1", ["x"]), event("2", user=a), event("3", user=b)]
    parts = ingest_parts(events, N)
    assert [(p.partition, p.indices, p.counted) for p in parts] == [
        (1, (0,), True), (0, (1,), True), (1, (1,), False), (0, (2,), True), (1, (3,), True)]
    replies = [{"accepted": 1, "duplicates": 0, "rejected": []},
               {"accepted": 1, "duplicates": 0, "rejected": []},
               {"accepted": 0, "duplicates": 1, "rejected": []},        # not counted
               {"accepted": 0, "duplicates": 0,
                "rejected": [{"index": 0, "code": "bad_request", "message": "m"}]},
               {"accepted": 0, "duplicates": 1, "rejected": []}]
    assert combine_ingest(parts, replies) == {
        "accepted": 2, "duplicates": 1,
        "rejected": [{"index": 2, "code": "bad_request", "message": "m"}]}


# ------------------------------------------------------------ over sockets


@pytest.fixture
def cluster(config, tmp_path):
    """Two partition services and a router in front of them; everything stopped after."""
    servers, router, context = [], None, zmq.Context()
    try:
        for i in range(N):
            servers.append(Server(config, tmp_path / f"p{i}", ingest=RANDOM_PORT, api=RANDOM_PORT))
        router = Router([s.api for s in servers], config, ingest=RANDOM_PORT, api=RANDOM_PORT,
                        context=context).start()
        assert router.wait_up(10), "the router did not connect to both partitions"
        with Client(router.bound_api, timeout=10) as client:
            yield servers, router, client
    finally:
        if router is not None:
            router.stop()
        for server in servers:
            server.stop()
        context.destroy(linger=0)


@pytest.mark.integration
def test_user_events_land_in_the_owning_partition_only(cluster):
    servers, _router, client = cluster
    users = [f"u{i}" for i in range(12)]
    reply = client.call("ingest", events=[event(f"e-{u}", user=u) for u in users])
    assert reply["accepted"] == len(users) and reply["rejected"] == []
    for user in users:
        home = partition_of(user, N)
        for index, server in enumerate(servers):
            held = server.service.store.last_seq(user)
            assert (held > 0) == (index == home), f"{user} (partition {home}) in partition {index}"


@pytest.mark.integration
def test_catalog_events_go_to_every_partition_and_are_counted_once(cluster):
    servers, _router, client = cluster
    reply = client.call("ingest", events=[item_event("m1", ["Drama"]), item_event("m2", ["War"])])
    assert (reply["accepted"], reply["duplicates"]) == (2, 0)
    assert all(len(server.service.catalog) == 2 for server in servers)
    again = client.call("ingest", events=[item_event("m1", ["Drama"])])
    assert (again["accepted"], again["duplicates"]) == (0, 1)


@pytest.mark.integration
def test_ingest_reply_is_read_your_writes_through_the_router(cluster):
    _servers, _router, client = cluster
    users = users_of(0, 3) + users_of(1, 3)
    for round_ in range(3):
        client.call("ingest", events=[event(f"e{round_}-{u}", user=u, ts=100.0 + round_)
                                      for u in users])
        for user in users:       # no flush, no wait: the reply came after both partitions applied
            assert client.call("interests", user=user)["events"] == round_ + 1


@pytest.mark.integration
def test_ingest_reply_maps_rejections_to_the_request_indices(cluster):
    _servers, _router, client = cluster
    a, b = users_of(0, 1)[0], users_of(1, 1)[0]
    events = [event("ok1", user=b), {"v": 1, "id": "bad", "type": "view", "user": a},
              event("ok2", user=a), {"v": 1, "id": "bad2", "type": "view", "ts": 1.0, "user": b}]
    reply = client.call("ingest", events=events)
    assert reply["accepted"] == 2
    assert [r["index"] for r in reply["rejected"]] == [1, 3]
    assert "ts" in reply["rejected"][0]["message"] and "item" in reply["rejected"][1]["message"]


@pytest.mark.integration
def test_fire_and_forget_events_are_covered_by_flush(cluster):
    _servers, router, client = cluster
    users = users_of(0, 5) + users_of(1, 5)
    before = client.call("stats")
    with Publisher(router.bound_ingest) as pub:
        pub.send([item_event("m1", ["Drama"])])
        for n in range(20):
            pub.send([event(f"f{n}-{u}", user=u, ts=100.0 + n) for u in users])
    sent = 1 + 20 * len(users)
    wait_for(lambda: client.call("stats")["received"] - before["received"] >= sent, timeout=10,
             reason="the router to take in every event")
    flushed = client.call("flush", timeout=30)
    assert flushed["applied"] >= 20 * len(users)
    for user in users:
        assert client.call("interests", user=user)["events"] == 20


@pytest.mark.integration
def test_ping_stats_and_flush_fan_out_and_combine(cluster):
    servers, _router, client = cluster
    client.call("ingest", events=[item_event("m1", ["Drama"])]
                + [event(f"s-{u}", user=u) for u in users_of(0, 2) + users_of(1, 3)])
    ping = client.call("ping")
    assert ping["version"] == 1 and ping["partitions_down"] == []
    assert [p["partition"] for p in ping["partitions"]] == [0, 1]
    assert client.call("flush")["applied"] == 5
    stats = client.call("stats")
    own = [server.service.stats() for server in servers]
    assert [p["applied"] for p in stats["partitions"]] == [2, 3] == [s["applied"] for s in own]
    assert stats["applied"] == 5 and stats["received"] == 6 and stats["catalog_items"] == 1
    assert stats["head"] == sum(s["head"] for s in own)
    assert stats["router"]["links"][1]["up"] is True


@pytest.mark.integration
def test_a_stopped_partition_is_unavailable_for_its_users_only(cluster):
    servers, _router, client = cluster
    mine, theirs = users_of(0, 2), users_of(1, 2)
    client.call("ingest", events=[event(f"d-{u}", user=u) for u in mine + theirs])
    servers[1].stop()
    wait_for(lambda: client.raw({"op": "ping"})["partitions_down"] == [1], timeout=5,
             reason="the router to see partition 1 go")
    for user in theirs:
        started = time.monotonic()
        with pytest.raises(RequestError) as err:
            client.call("recommend", user=user)
        assert err.value.code == "unavailable" and time.monotonic() - started < 1.0
    for user in mine:
        assert client.call("interests", user=user)["events"] == 1
    with pytest.raises(RequestError) as err:           # nothing of it is sent
        client.call("ingest", events=[event("x1", user=mine[0]), event("x2", user=theirs[0])])
    assert err.value.code == "unavailable"
    assert client.call("interests", user=mine[0])["events"] == 1
    assert client.call("ingest", events=[event("x3", user=mine[0])])["accepted"] == 1
    with pytest.raises(RequestError) as err:
        client.call("flush")
    assert err.value.code == "unavailable"
    stats = client.call("stats")
    assert stats["partitions_down"] == [1] and stats["partitions"][0]["ok"]


@pytest.mark.integration
def test_bad_requests_get_the_services_own_answer(cluster):
    _servers, _router, client = cluster
    assert client.raw({"op": "recommend"})["error"]["code"] == "bad_request"
    reply = client.raw({"op": "nope", "rid": 5})
    assert reply["rid"] == 5 and reply["error"]["code"] == "bad_request"
    assert client.raw(b"\xc1")["error"]["code"] == "bad_request"


@pytest.mark.integration
def test_fire_and_forget_events_wait_for_a_partition_that_comes_back(cluster, config, tmp_path):
    servers, router, client = cluster
    theirs = users_of(1, 3)
    address = servers[1].api
    servers[1].stop()
    wait_for(lambda: client.raw({"op": "ping"})["partitions_down"] == [1], timeout=5,
             reason="the router to see partition 1 go")
    with Publisher(router.bound_ingest) as pub:
        for n in range(5):
            pub.send([event(f"w{n}-{u}", user=u, ts=100.0 + n) for u in theirs])
    wait_for(lambda: router.own_stats()["links"][1]["queued_events"] == 15, timeout=5,
             reason="the events to wait in partition 1's queue")
    servers[1] = Server(config, tmp_path / "p1", ingest=RANDOM_PORT, api=address)
    wait_for(lambda: client.raw({"op": "ping"})["partitions_down"] == [], timeout=10,
             reason="the router to reconnect to partition 1")
    client.call("flush", timeout=10)
    for user in theirs:
        assert client.call("interests", user=user)["events"] == 5


@pytest.mark.integration
def test_forget_goes_to_the_users_partition(cluster):
    servers, _router, client = cluster
    gone, kept = users_of(1, 1)[0], users_of(0, 1)[0]
    client.call("ingest", events=[event("g1", user=gone), event("g2", user=gone),
                                  event("k1", user=kept)])
    assert client.call("forget", user=gone)["forgotten"] == 2
    assert client.call("interests", user=gone)["events"] == 0
    assert client.call("interests", user=kept)["events"] == 1
    assert [server.service.metrics.get("op.forget") for server in servers] == [0, 1]
