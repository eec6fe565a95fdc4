"""The client library (interest.client) over real sockets: every op against a real
service, errors mapped to classes by code, retries only where the protocol allows them,
thread safety of the sync client, the asyncio client, and a quick, clear failure when
nothing listens."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import zmq
import zmq.asyncio

from interest.client import (AsyncClient, BadAddress, BadRequest, Client, Forbidden, NoService,
                             Overloaded, Publisher, RequestError, RetryPolicy, Timeout,
                             Unavailable)
from interest.engine import errors
from interest.engine.journal.codec import decode_frame, encode_frame
from tests.conftest import event, item_event

pytestmark = pytest.mark.integration

FAST = RetryPolicy(retries=2, backoff_s=0.01, max_backoff_s=0.05)


def free_port() -> str:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind("tcp://127.0.0.1:*")
    address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    sock.close(linger=0)
    return address


@pytest.fixture
def scripted(context):
    """A ROUTER that plays the service: ``answers`` is a list, one per request received,
    each a reply map (rid filled in) or None (no reply). Returns (address, received)."""
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:*")
    received: list[dict] = []
    answers: list = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            if not sock.poll(20):
                continue
            envelope, frame = sock.recv_multipart()
            request = decode_frame(frame, 1 << 20)
            received.append(request)
            answer = answers.pop(0) if answers else None
            if answer is not None:
                sock.send_multipart([envelope, encode_frame({"rid": request["rid"], **answer})])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def play(*script):
        answers.extend(script)
        return sock.getsockopt_string(zmq.LAST_ENDPOINT), received
    yield play
    stop.set()
    thread.join(5)
    sock.close(linger=0)


def overloaded(ms=20):
    return {"ok": False, "error": {"code": "overloaded", "message": "busy", "retry_after_ms": ms}}


OK = {"ok": True, "items": []}


def test_every_op_against_a_real_service(server, context):
    with Client(server.api, timeout=10, context=context) as client:
        assert client.ping()["version"] == 1
        reply = client.ingest([item_event("m1", ["drama"]), event("e1", item="m1"),
                               event("e1", item="m1"), {"v": 1, "id": "bad"}])
        assert (reply["accepted"], reply["duplicates"]) == (2, 1)
        assert reply["rejected"][0]["index"] == 3
        assert client.interests("u1")["events"] == 1
        assert client.recommend("u1", 5, exclude_seen=False)["strategy"]
        assert client.explain("u1", "m1")["ok"]
        assert client.flush(timeout_ms=5000)["applied"] >= 1
        assert client.stats()["received"] >= 2


def test_errors_are_classes_by_code(server, context):
    with Client(server.api, timeout=10, context=context) as client:
        with pytest.raises(BadRequest) as err:
            client.call("recommend")                     # no user
        assert isinstance(err.value, errors.BadRequest) and isinstance(err.value, RequestError)
        assert err.value.code == "bad_request" and "user" in str(err.value)
        with pytest.raises(BadRequest):
            client.call("no_such_op")


def test_nothing_listening_is_no_service_quickly_and_not_retried(context):
    address = free_port()
    with Client(address, timeout=5, connect_timeout=0.3, context=context, retry=FAST) as client:
        started = time.monotonic()
        with pytest.raises(NoService) as err:
            client.recommend("u1")
        elapsed = time.monotonic() - started
    assert 0.25 < elapsed < 1.0, elapsed
    assert f"no service at {address}: is `interest serve` running?" == str(err.value)
    assert isinstance(err.value, errors.DeadlineExceeded)       # old callers catch this


def test_addresses_host_port_is_tcp_and_nonsense_is_a_clear_error(server, context):
    host_port = server.api.removeprefix("tcp://")
    with Client(host_port, timeout=10, context=context) as client:
        assert client.ping()["ok"]
    with pytest.raises(BadAddress, match="expected tcp://HOST:PORT"):
        Client("localhost", context=context)


def test_idempotent_ops_are_retried_after_overload_and_lost_replies(scripted, context):
    address, received = scripted(overloaded(), None, OK)
    with Client(address, timeout=0.3, context=context, retry=FAST) as client:
        assert client.recommend("u1")["ok"]
    assert [r["op"] for r in received] == ["recommend"] * 3
    assert len({r["rid"] for r in received}) == 3


def test_ingest_is_resent_after_overload_but_never_after_a_lost_reply(scripted, context):
    accepted = {"ok": True, "accepted": 1, "duplicates": 0, "rejected": []}
    address, received = scripted(overloaded(), accepted, None, accepted)
    with Client(address, timeout=0.3, context=context, retry=FAST) as client:
        assert client.ingest([event("e1")])["accepted"] == 1      # overloaded, then sent again
        with pytest.raises(Timeout):
            client.ingest([event("e2")])
    assert [r["op"] for r in received] == ["ingest"] * 3          # e2 was sent once only


def test_forbidden_and_unavailable(scripted, context):
    forbidden = {"ok": False, "error": {"code": "forbidden", "message": "role reader"}}
    down = {"ok": False, "error": {"code": "unavailable", "message": "no model"}}
    address, received = scripted(forbidden, down, down, down)
    with Client(address, timeout=1, context=context, retry=FAST) as client:
        with pytest.raises(Forbidden):
            client.stats()
        with pytest.raises(Unavailable):
            client.interests("u1")
    assert len(received) == 4                       # forbidden once; unavailable 1 + 2 retries


def test_overloaded_carries_the_hint(scripted, context):
    address, _ = scripted(overloaded(1234))
    with Client(address, timeout=1, context=context, retry=FAST) as client:
        with pytest.raises(Overloaded) as err:
            client.forget("u1", retries=0)
    assert err.value.retry_after_ms == 1234


def test_a_late_reply_never_answers_the_next_call(scripted, context):
    address, received = scripted(None, {"ok": True, "n": 2})
    with Client(address, timeout=0.2, context=context, retry=FAST) as client:
        with pytest.raises(Timeout):
            client.call("ping", retries=0)
        assert client.call("ping", retries=0)["n"] == 2


def test_one_client_many_threads(server, context):
    with Client(server.api, timeout=10, context=context) as client:
        client.ingest([event(f"e{i}", user=f"u{i}") for i in range(8)])
        results, failures = [], []

        def worker(n):
            try:
                for _ in range(25):
                    results.append(client.interests(f"u{n}")["user"] == f"u{n}")
            except Exception as exc:  # noqa: BLE001 - collected, asserted below
                failures.append(exc)
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not failures
        assert len(results) == 200 and all(results)
        assert len(client._idle) <= 8               # at most one socket per concurrent call


def test_async_client_many_calls_in_flight(server):
    async def body():
        ctx = zmq.asyncio.Context()
        try:
            async with AsyncClient(server.api, timeout=10, context=ctx) as client:
                await client.ingest([event(f"e{i}", user=f"u{i}") for i in range(20)])
                replies = await asyncio.gather(*(client.interests(f"u{i}") for i in range(20)))
                assert [r["user"] for r in replies] == [f"u{i}" for i in range(20)]
                with pytest.raises(BadRequest):
                    await client.call("recommend")
        finally:
            ctx.destroy(linger=0)
    asyncio.run(body())


def test_async_client_no_service_and_timeout(scripted):
    address, received = scripted(None, None, None)

    async def body():
        ctx = zmq.asyncio.Context()
        try:
            async with AsyncClient(free_port(), connect_timeout=0.2, context=ctx) as nobody:
                with pytest.raises(NoService):
                    await nobody.ping()
            async with AsyncClient(address, timeout=0.2, context=ctx, retry=FAST) as client:
                with pytest.raises(Timeout):
                    await client.ingest([event("e1")])
                with pytest.raises(Timeout):
                    await client.ping(retries=1)
        finally:
            ctx.destroy(linger=0)
    asyncio.run(body())
    assert [r["op"] for r in received] == ["ingest", "ping", "ping"]


def test_publisher_send_timeout_when_nothing_reads(context):
    with Publisher(free_port(), hwm=1, context=context) as publisher:
        publisher.send_raw(b"x", timeout=0.2)              # queued (the high-water mark is 1)
        with pytest.raises(Timeout):
            for _ in range(3):
                publisher.send_raw(b"x", timeout=0.2)
        publisher.close(linger_ms=0)


def _vanishing_service(context):
    """A ROUTER that takes one request, then closes (the service crashed)."""
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:*")

    def take_one_and_vanish():
        if sock.poll(5000):
            sock.recv_multipart()
        sock.close(linger=0)
    thread = threading.Thread(target=take_one_and_vanish, daemon=True)
    thread.start()
    return sock.getsockopt_string(zmq.LAST_ENDPOINT), thread


def test_a_service_that_goes_away_is_noticed_before_the_timeout(context):
    address, thread = _vanishing_service(context)
    with Client(address, timeout=20, connect_timeout=0.3, context=context) as client:
        started = time.monotonic()
        with pytest.raises(NoService, match="went away"):
            client.ingest([event("e1")])
    assert time.monotonic() - started < 3.0
    thread.join(5)


def test_the_async_client_notices_it_too(context):
    address, thread = _vanishing_service(context)

    async def body():
        ctx = zmq.asyncio.Context()
        try:
            async with AsyncClient(address, timeout=20, connect_timeout=0.3,
                                   context=ctx) as client:
                started = time.monotonic()
                with pytest.raises(NoService, match="went away"):
                    await client.ingest([event("e1")])
                return time.monotonic() - started
        finally:
            ctx.destroy(linger=0)
    assert asyncio.run(body()) < 3.0
    thread.join(5)
