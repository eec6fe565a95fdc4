"""The HTTP side port (PROTOCOL.md, "HTTP side port"): a real Server on random ports with
its HTTP side (uvicorn in a thread) on 127.0.0.1:0, real HTTP requests (http.client, raw
sockets), every route and every error status, /metrics read back with prometheus_client's
own parser, and the dashboard in a real headless chromium where one is installed."""

from __future__ import annotations

import copy
import http.client
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from interest.engine.config import load_config
from interest.engine.journal.events import parse_event
from prometheus_client.parser import text_string_to_metric_families

from interest.engine.serving.exporter import families as metric_families
from interest.engine.serving.exporter import metric_name
from interest.engine.serving.http import HttpConfigError, HttpSide, load_tokens, parse_address
from interest.engine.serving.server import Server
from tests.conftest import RANDOM_PORT, event, item_event, wait_for

pytestmark = pytest.mark.integration

TIMEOUT = 10.0


def make_config(**sections):
    base = dict(store={"sync": False}, inference={"enabled": False},
                runtime={"sweep_seconds": 0.2}, projections={"learner": "thread"})
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return load_config(**base)


@pytest.fixture
def start(tmp_path):
    """``start(config)``: a Server with its HTTP side on an ephemeral loopback port."""
    servers = []

    def run(config=None, http="127.0.0.1:0", **kwargs):
        srv = Server(config or make_config(), tmp_path / f"data{len(servers)}",
                     ingest=RANDOM_PORT, api=RANDOM_PORT, http=http, **kwargs)
        servers.append(srv)
        return srv
    yield run
    for srv in servers:
        srv.stop()


@pytest.fixture
def srv(start):
    return start()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One server for the tests that only send bad requests."""
    srv = Server(make_config(), tmp_path_factory.mktemp("shared") / "data", ingest=RANDOM_PORT,
                 api=RANDOM_PORT, http="127.0.0.1:0")
    yield srv
    srv.stop()


def request(target, method, path, body=None, headers=None, timeout=TIMEOUT):
    """(status, headers with lower-case names, body bytes); the connection is closed."""
    host, _, port = (target.http.bound if hasattr(target, "http") else target.bound) \
        .rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        if isinstance(body, (list, dict)):
            body = json.dumps(body).encode()
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def call(target, method, path, body=None, headers=None, timeout=TIMEOUT):
    """(status, JSON body, headers)."""
    status, head, data = request(target, method, path, body, headers, timeout)
    assert head["content-type"] == "application/json", data[:200]
    return status, json.loads(data), head


def error_of(target, method, path, status, code, body=None, headers=None):
    got, obj, head = call(target, method, path, body, headers)
    assert got == status, obj
    assert obj["error"]["code"] == code and obj["error"]["message"], obj
    return obj["error"], head


def raw(target, data: bytes, timeout=TIMEOUT) -> socket.socket:
    host, _, port = target.http.bound.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    if data:
        sock.sendall(data)
    return sock


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def catalog_and_history(target, user="u1"):
    status, reply, _ = call(target, "POST", "/v1/events", [
        item_event("m1", ["Drama"]), item_event("m2", ["Drama"]), item_event("m3", ["Comedy"]),
        event("a", "purchase", user=user, item="m1"), event("b", user="other", item="m1"),
        event("c", user="other", item="m2")])
    assert status == 200 and reply == {"accepted": 6, "duplicates": 0, "rejected": []}


def service_reply(srv, obj):
    box, done = [], threading.Event()
    srv.service.call(obj, lambda result: (box.append(result), done.set()))
    assert done.wait(TIMEOUT)
    return box[0]


# ------------------------------------------------------------------- probes


def test_healthz_and_readyz(srv):
    status, body, _ = call(srv, "GET", "/healthz")
    assert status == 200 and body["status"] == "ok"
    status, body, _ = call(srv, "GET", "/readyz")
    assert status == 200 and body["ready"] is True and body["not_ready"] == []
    assert set(body["checks"]["replay"]) == set(srv.service.runners)
    status, head, data = request(srv, "HEAD", "/healthz")
    assert status == 200 and data == b""


def test_readyz_is_503_until_startup_replay_is_done(srv, stalled_users):
    """A port started while the user projection is behind the head is not ready until
    that projection has reached the head the log had when the port started."""
    limits = srv.service.limits
    srv.service.ingest_events([parse_event(event(f"e{i}", user=f"u{i}"), limits)
                               for i in range(3)])
    wait_for(lambda: srv.service.log.head == 3, reason="the events committed")
    side = HttpSide(srv.service, "127.0.0.1:0", srv.service.config).start()
    try:
        status, body, _ = call(side, "GET", "/readyz")
        assert status == 503 and body["ready"] is False
        assert body["checks"]["replay"]["users"]["done"] is False
        assert any("projection users" in reason for reason in body["not_ready"])
        stalled_users.set()
        wait_for(lambda: call(side, "GET", "/readyz")[0] == 200, reason="replay done")
    finally:
        side.stop()


def test_readyz_is_503_while_a_required_model_is_not_loaded(start):
    srv = start(make_config(model={"required": True}))
    status, body, _ = call(srv, "GET", "/readyz")
    assert status == 503 and body["checks"]["model"] == {"required": True, "loaded": False}
    assert any("model" in reason for reason in body["not_ready"])


# ------------------------------------------------------------------ the JSON api


def test_events_then_every_user_route(srv):
    catalog_and_history(srv)
    status, interests, _ = call(srv, "GET", "/v1/users/u1/interests")
    assert status == 200 and interests["events"] == 1 and interests["tags"][0]["tag"] == "Drama"
    assert interests == service_reply(srv, {"op": "interests", "user": "u1"})
    status, recs, _ = call(srv, "GET", "/v1/users/u1/recommendations?k=1")
    assert status == 200 and [r["item"] for r in recs["items"]] == ["m2"]     # m1 is seen
    status, recs, _ = call(srv, "GET", "/v1/users/u1/recommendations?k=5&exclude_seen=false")
    assert status == 200 and "m1" in [r["item"] for r in recs["items"]]
    status, recs, _ = call(srv, "GET", "/v1/users/u1/recommendations?exclude_seen=TRUE")
    assert status == 200 and "m1" not in [r["item"] for r in recs["items"]]
    status, why, _ = call(srv, "GET", "/v1/users/u1/explain?item=m1")
    assert status == 200 and why["item"]["item"] == "m1" and why["item"]["seen"] is True
    status, why, _ = call(srv, "GET", "/v1/users/u1/explain?deadline_ms=5000")
    assert status == 200 and why["tags"][0]["tag"] == "Drama"
    status, cold, _ = call(srv, "GET", "/v1/users/nobody/recommendations")
    assert status == 200 and cold["strategy"] == "cold"


def test_ingest_reply_reports_duplicates_and_rejected_events(srv):
    body = [item_event("m1", ["Drama"]), event("a", item="m1"), event("a", item="m1"),
            event("b", item=None)]
    status, reply, _ = call(srv, "POST", "/v1/events", body)
    assert status == 200 and reply["accepted"] == 2 and reply["duplicates"] == 1
    assert reply["rejected"] == [{"index": 3, "code": "bad_request",
                                  "message": "field 'item' is required"}]
    status, again, _ = call(srv, "POST", "/v1/events", [event("a", item="m1")])
    assert status == 200 and again == {"accepted": 0, "duplicates": 1, "rejected": []}


def test_user_ids_in_paths_are_percent_decoded(srv):
    user = "a b/c%d?é"
    call(srv, "POST", "/v1/events", [item_event("m1", ["Drama"]),
                                     event("x", user=user, item="m1")])
    status, reply, _ = call(srv, "GET", f"/v1/users/{quote(user, safe='')}/interests")
    assert status == 200 and reply["user"] == user and reply["events"] == 1
    error, _ = error_of(srv, "GET", "/v1/users/%ff%fe/interests", 400, "bad_request")
    assert "UTF-8" in error["message"]


def test_forget_route_is_the_forget_op(srv):
    """DELETE /v1/users/{user} sends `forget`; a service that does not know the op yet
    answers 501 (code unavailable), never a fake success."""
    catalog_and_history(srv)
    status, body, _ = call(srv, "DELETE", "/v1/users/u1")
    if status == 501:
        assert body["error"]["code"] == "unavailable"
        assert "forget" in body["error"]["message"]
    else:
        assert status == 200 and "forgotten" in body
        assert call(srv, "GET", "/v1/users/u1/interests")[1]["events"] == 0
    error_of(srv, "DELETE", "/v1/users/u1?x=1", 400, "bad_request")


@pytest.mark.parametrize("path, words", [
    ("/v1/users/u1/recommendations?k=abc", "'k' must be an integer from 1 to 1000"),
    ("/v1/users/u1/recommendations?k=0", "'k' must be an integer from 1 to 1000"),
    ("/v1/users/u1/recommendations?k=1001", "'k' must be an integer from 1 to 1000"),
    ("/v1/users/u1/recommendations?k=1.5", "'k' must be an integer"),
    ("/v1/users/u1/recommendations?k=-2", "'k' must be an integer"),
    ("/v1/users/u1/recommendations?k=1&k=2", "'k' is given 2 times"),
    ("/v1/users/u1/recommendations?exclude_seen=yes", "'exclude_seen' must be true or false"),
    ("/v1/users/u1/interests?fresh=1", "'fresh' must be true or false"),
    ("/v1/users/u1/interests?deadline_ms=-5", "'deadline_ms' must be a positive number"),
    ("/v1/users/u1/explain?deadline_ms=nan", "'deadline_ms' must be a positive number"),
    ("/v1/users/u1/interests?kk=3", "unknown query parameter 'kk'"),
    ("/v1/users/u1/explain?k=3", "unknown query parameter 'k'"),
    ("/v1/users/u1/explain?item=", "field 'item'"),
])
def test_bad_query_values_are_400_with_a_clear_message(shared, path, words):
    error, _ = error_of(shared, "GET", path, 400, "bad_request")
    assert words in error["message"]


@pytest.mark.parametrize("body, words", [
    (b"{not json", "not valid JSON"),
    (b'{"events": []}', "must be a JSON list of events, got a JSON dict"),
    (b"[NaN]", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"", "not valid JSON"),
    (b"[" * 100000 + b"]" * 100000, "not valid JSON"),
])
def test_bad_bodies_are_400(shared, body, words):
    error, _ = error_of(shared, "POST", "/v1/events", 400, "bad_request", body=body)
    assert words in error["message"]


def test_a_body_over_the_size_limit_is_400_and_never_read_whole(start):
    srv = start(make_config(limits={"max_message_bytes": 4096}))
    error, head = error_of(srv, "POST", "/v1/events", 400, "bad_request",
                           body=b"[" + b" " * 5000 + b"]")
    assert "limit is 4096" in error["message"]
    sock = raw(srv, b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n[")
    try:
        reply = read_all(sock)
    finally:
        sock.close()
    assert reply.startswith(b"HTTP/1.1 400") and b"limit is 4096" in reply
    chunk = b"[" + b" " * 3000 + b"]"                   # chunked: counted as it comes
    sock = raw(srv, b"POST /v1/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2 + b"0\r\n\r\n")
    try:
        reply = read_all(sock)
    finally:
        sock.close()
    assert reply.startswith(b"HTTP/1.1 400") and b"the limit (limits.max_message_bytes)" in reply
    status, reply_obj, _ = call(srv, "POST", "/v1/events", (x for x in [b"[]"]))   # chunked, small
    assert status == 200 and reply_obj == {"accepted": 0, "duplicates": 0, "rejected": []}
    sock = raw(srv, b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 1e3\r\n\r\n[]")
    try:
        reply = read_all(sock)                          # answered, then closed
    finally:
        sock.close()
    assert reply.startswith(b"HTTP/1.1 400") and b"connection: close" in reply.lower()


def test_unknown_routes_are_404_and_wrong_methods_405(shared):
    srv = shared
    for path in ("/", "/v1", "/v1/users/u1/nope", "/v1/users//interests", "/metrics/x",
                 "/v2/events"):
        error_of(srv, "GET", path, 404, "not_found")
    _, head = error_of(srv, "GET", "/v1/events", 405, "bad_request")
    assert head["allow"] == "POST"
    _, head = error_of(srv, "POST", "/v1/users/u1/interests", 405, "bad_request", body=b"[]")
    assert head["allow"] == "GET, HEAD"
    _, head = error_of(srv, "PUT", "/metrics", 405, "bad_request")
    assert head["allow"] == "GET, HEAD"
    error_of(srv, "GET", "/v1/users/u1", 405, "bad_request")


@pytest.mark.parametrize("data, status", [
    (b"BLAH\r\n\r\n", b"400"),
    (b"GET /healthz\r\n\r\n", b"400"),                           # HTTP/0.9
    (b"GET / HTTX/1.1\r\n\r\n", b"400"),
    (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000, b"431"),   # never ends
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1e3\r\n\r\n", b"400"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(120))
     + b"\r\n", b"431"),
    (b"BREW /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"501"),
])
def test_malformed_http_is_answered_in_json_and_closed(shared, data, status):
    sock = raw(shared, data)
    try:
        reply = read_all(sock)                          # and then EOF: closed
    finally:
        sock.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == status, head
    assert json.loads(body)["error"]["code"] == "bad_request"


# ----------------------------------------------------------------- error statuses


def test_overloaded_ingest_is_429_with_retry_after(start, stalled_users):
    srv = start(make_config(projections={"max_lag_events": 5, "retry_after_ms": 1500}))
    limits = srv.service.limits
    for i in range(10):
        srv.service.ingest_events([parse_event(event(f"e{i}", user=f"u{i}"), limits)])
    # all committed first: mid-commit, busy() can read the head before and the writer's
    # pending events after the commit, and briefly see no backlog
    wait_for(lambda: srv.service.log.head == 10, reason="the events committed")
    wait_for(srv.service.busy, reason="the backlog past max_lag_events")
    error, head = error_of(srv, "POST", "/v1/events", 429, "overloaded",
                           body=[event("late", item="m1")])
    assert error["retry_after_ms"] == 1500 and head["retry-after"] == "2"
    stalled_users.set()
    wait_for(lambda: not srv.service.busy(), reason="the backlog applied")
    status, reply, _ = call(srv, "POST", "/v1/events", [event("late", item="m1")])
    assert status == 200 and reply["accepted"] == 1


def test_no_answer_in_time_is_504(start, stalled_users):
    srv = start(make_config(http={"request_timeout_s": 0.3}))
    t0 = time.monotonic()
    error, _ = error_of(srv, "POST", "/v1/events", 504, "deadline_exceeded",
                        body=[event("a", item="m1")])
    assert time.monotonic() - t0 < 5 and "0.3 s" in error["message"]
    assert srv.service.stats()["counters"]["error.deadline_exceeded"] == 1
    stalled_users.set()


def ingest_in_progress(srv, results: list) -> threading.Thread:
    """A thread whose `POST /v1/events` the (stalled) service holds, returned once the HTTP
    side counts it in progress; its (status, body, headers) lands in ``results``."""
    waiting = threading.Thread(target=lambda: results.append(
        call(srv, "POST", "/v1/events", [event("a", item="m1")])))
    waiting.start()
    wait_for(lambda: srv.http.http_stats()["in_progress"] == 1, reason="one in progress")
    return waiting


def test_too_many_requests_in_progress_is_503(start, stalled_users):
    srv = start(make_config(http={"max_requests": 1, "request_timeout_s": 5.0}))
    results = []
    waiting = ingest_in_progress(srv, results)
    try:
        _, head = error_of(srv, "GET", "/v1/users/u1/interests", 503, "unavailable")
        assert head["retry-after"] == "1"
        assert call(srv, "GET", "/healthz")[0] == 200          # probes are never refused
    finally:
        stalled_users.set()
        waiting.join(TIMEOUT)
    assert results[0][0] == 200 and results[0][1]["accepted"] == 1
    assert srv.http.http_stats()["refused_requests"] == 1


def test_connections_beyond_the_cap_are_refused_with_503(start):
    srv = start(make_config(http={"max_connections": 2}))
    idle = [raw(srv, b"") for _ in range(2)]
    try:
        wait_for(lambda: srv.http.http_stats()["connections"] == 2, reason="two connections")
        third = raw(srv, b"")
        try:
            reply = read_all(third)
        finally:
            third.close()
        assert reply.startswith(b"HTTP/1.1 503") and b"too many open HTTP connections" in reply
    finally:
        for sock in idle:
            sock.close()
    wait_for(lambda: srv.http.http_stats()["connections"] == 0, reason="connections closed")
    assert call(srv, "GET", "/healthz")[0] == 200


def test_a_slow_client_is_cut_off(start):
    """One header byte every 100 ms never completes a request: the connection is shut
    after read_timeout_s in all, not after read_timeout_s of silence."""
    srv = start(make_config(http={"read_timeout_s": 0.5}))
    sock = raw(srv, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    t0 = time.monotonic()
    closed = False
    try:
        sock.settimeout(0.1)
        while time.monotonic() - t0 < 5 and not closed:
            try:
                sock.send(b"a")
                closed = sock.recv(1024) == b""
            except socket.timeout:
                continue
            except OSError:
                closed = True
    finally:
        sock.close()
    assert closed and time.monotonic() - t0 < 3
    idle = raw(srv, b"")
    try:
        idle.settimeout(5)
        assert read_all(idle) == b""                     # an idle connection is closed too
    finally:
        idle.close()


def test_a_client_that_does_not_read_its_answers_is_cut_off(start):
    """Pipelined requests whose answers are never read fill the send buffer: after
    read_timeout_s with a full buffer the connection is closed (it cannot hold a task)."""
    srv = start(make_config(http={"read_timeout_s": 0.5}))
    host, _, port = srv.http.bound.rpartition(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    try:
        page = len(request(srv, "GET", "/dashboard")[2])
        sock.sendall(b"GET /dashboard HTTP/1.1\r\nHost: x\r\n\r\n" * 2000)   # ~24 MB due
        time.sleep(2.0)                                  # not reading
        sock.settimeout(TIMEOUT)
        received = len(read_all(sock))        # what the kernel buffered, then EOF (no timeout)
    finally:
        sock.close()
    assert received < 2000 * page / 2
    wait_for(lambda: srv.http.http_stats()["connections"] == 0, reason="the connection closed")


def test_keep_alive_serves_several_requests_and_stop_closes_it(start):
    srv = start()
    host, _, port = srv.http.bound.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
    try:
        for _ in range(3):
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            assert resp.status == 200 and json.loads(resp.read())["status"] == "ok"
        # Nagle off on the server's side, or each answer waits for a delayed ACK (40 ms)
        (served,) = srv.http._server.server_state.connections
        assert served.transport.get_extra_info("socket").getsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY)
        t0 = time.monotonic()
        srv.stop()
        assert time.monotonic() - t0 < 5
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            conn.request("GET", "/healthz")
            conn.getresponse()
    finally:
        conn.close()
    srv.http.stop()                                       # idempotent


def test_stop_is_bounded_and_answers_what_still_waits(start, stalled_users):
    """A request the service never answers does not hold stop() past its timeout: it is
    answered 503 (unavailable) just before the port closes."""
    srv = start(make_config(http={"request_timeout_s": 30.0}))
    results = []
    waiting = ingest_in_progress(srv, results)
    try:
        t0 = time.monotonic()
        srv.http.stop(2.0)
        assert time.monotonic() - t0 < 3.5
        waiting.join(TIMEOUT)
    finally:
        stalled_users.set()
    status, body, head = results[0]
    assert status == 503 and body["error"]["code"] == "unavailable"
    assert "stopping" in body["error"]["message"]


# --------------------------------------------------------------------- metrics


def parse_metrics(text: str) -> dict:
    """{(sample name, frozenset(labels)): value} of an exposition, read by prometheus_client's
    own parser, after checking its shape: it ends with a newline, every family has its
    HELP and TYPE once, and no sample appears twice."""
    assert text.endswith("\n")
    declared = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(declared) == len(set(declared)), "a family declared twice"
    samples: dict = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation, family.name
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"sample {key} twice"
            samples[key] = sample.value
    return samples


def value(samples, name, /, **labels):
    return samples[(name, frozenset(labels.items()))]


def of_family(samples, name) -> dict:
    """{frozenset(labels): value} of one sample name."""
    return {labels: v for (n, labels), v in samples.items() if n == name}


def test_metrics_parse_back_and_agree_with_stats(srv):
    catalog_and_history(srv)
    call(srv, "GET", "/v1/users/u1/recommendations?k=2")
    call(srv, "GET", "/v1/users/u1/interests")
    error_of(srv, "GET", "/v1/users/u1/recommendations?k=0", 400, "bad_request")
    error_of(srv, "GET", "/v1/users/u1/explain?item=", 400, "bad_request")   # the service's
    wait_for(lambda: all(p["lag_events"] == 0
                         for p in srv.service.stats()["projections"].values()),
             reason="every projection caught up")
    status, head, data = request(srv, "GET", "/metrics")
    assert status == 200 and head["content-type"].startswith("text/plain; version=0.0.4")
    samples = parse_metrics(data.decode("utf-8"))
    stats, counters = srv.service.stats(), srv.service.stats()["counters"]
    assert value(samples, "interest_up") == 1 and value(samples, "interest_ready") == 1
    assert value(samples, "interest_head") == stats["head"] == 6
    assert value(samples, "interest_live_actors") == stats["live_actors"] == 2
    assert value(samples, "interest_dead_letters") == stats["dead_letters"]["total"]
    assert value(samples, "interest_writer_queue_jobs") == stats["writer"]["queue"]
    assert value(samples, "interest_writer_commits_total") == stats["writer"]["commits"]
    assert value(samples, "interest_rss_bytes") > 1e6
    assert value(samples, "process_resident_memory_bytes") > 1e6    # prometheus_client's own
    # ingest by outcome, requests and errors by op and code: the service's counters, renamed
    assert value(samples, "interest_ingest_events_total", outcome="accepted") == 6
    assert value(samples, "interest_ingest_events_total", outcome="duplicate") == 0
    assert value(samples, "interest_ingest_events_total", outcome="rejected") == 0
    assert value(samples, "interest_events_applied_total") == counters["applied"]
    for op in ("ingest", "recommend", "interests"):
        assert value(samples, "interest_api_requests_total", op=op) == counters[f"op.{op}"]
    assert value(samples, "interest_api_errors_total", code="bad_request") == \
        counters["error.bad_request"] >= 1
    for name, counter in counters.items():
        if name.startswith(("op.", "error.")) or name in ("received", "applied", "duplicates",
                                                          "rejected"):
            continue
        assert value(samples, f"interest_{metric_name(name)}_total") == counter, name
    # latency: histograms since start, percentiles of the last requests
    histograms = srv.service.metrics.histograms()
    assert {"recommend", "interests", "ingest"} <= set(histograms)
    for op, h in histograms.items():
        buckets = sorted(((float(dict(k)["le"]), v) for k, v in
                          of_family(samples, "interest_api_request_duration_seconds_bucket")
                          .items() if dict(k)["op"] == op))
        counts = [v for _, v in buckets]
        assert counts == sorted(counts) and buckets[-1] == (float("inf"), h["count"])
        assert value(samples, "interest_api_request_duration_seconds_count", op=op) == h["count"]
        assert value(samples, "interest_api_request_duration_seconds_sum", op=op) == \
            pytest.approx(h["sum_s"])
    for op, lat in stats["latency"].items():
        assert value(samples, "interest_api_latency_seconds", op=op, quantile="0.99") == \
            pytest.approx(lat["p99_ms"] / 1000)
    for name, p in stats["projections"].items():
        assert value(samples, "interest_projection_position", projection=name) == p["position"]
        assert value(samples, "interest_projection_lag_events", projection=name) == 0
        assert value(samples, "interest_projection_lag_seconds", projection=name) == 0
    segment, weights = next(iter(stats["recommender"]["fusion"]["segments"].items()))
    assert value(samples, "interest_fusion_weight", segment=segment,
                 source="popularity") == weights["popularity"]
    assert value(samples, "interest_model_available") == 0
    assert value(samples, "interest_http_responses_total", status="400") >= 2
    status, head, data = request(srv, "HEAD", "/metrics")
    assert status == 200 and data == b""


def test_metrics_speak_openmetrics_when_asked(shared):
    status, head, data = request(shared, "GET", "/metrics",
                                 headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200 and head["content-type"].startswith("application/openmetrics-text")
    assert data.endswith(b"# EOF\n") and b"interest_up 1" in data


def test_label_values_are_escaped_and_stray_names_never_break_the_exposition():
    from prometheus_client import CollectorRegistry, generate_latest
    from interest.engine.serving.exporter import ServiceCollector
    tricky = 'a"b\\c\nd}e'
    stats = {"head": 3, "writer": {"commits": 2},
             "counters": {"9weird-name": 4, "writer_commits": 99, "op.recommend": 1},
             "recommender": {"fusion": {"segments": {tricky: {"popularity": 0.5}}}},
             "latency": {"recommend": {"n": 1, "p50_ms": 2.0, "p99_ms": float("nan")}}}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(lambda: {"stats": stats, "histograms": {}}))
    samples = parse_metrics(generate_latest(registry).decode())
    assert value(samples, "interest_fusion_weight", segment=tricky, source="popularity") == 0.5
    assert value(samples, "interest__9weird_name_total") == 4
    assert value(samples, "interest_writer_commits_total") == 2     # the writer's, not the stray
    assert value(samples, "interest_api_requests_total", op="recommend") == 1
    assert metric_name("op.recommend") == "op_recommend" and metric_name("9x") == "_9x"
    assert "interest_up" in {f.name for f in metric_families({}, {})}   # an empty stats is fine


# ------------------------------------------------------------------- dashboard


def test_dashboard_is_one_self_contained_page(srv):
    status, head, data = request(srv, "GET", "/dashboard")
    assert status == 200 and head["content-type"] == "text/html; charset=utf-8"
    page = data.decode("utf-8")
    assert page.startswith("<!doctype html>") and "</html>" in page
    assert "http://" not in page and "https://" not in page
    for attr in re.findall(r'(?:src|href|action)\s*=\s*["\']?([^"\'\s>]*)', page, re.I):
        assert not re.match(r"([a-z][a-z0-9+.-]*:|//)", attr, re.I), attr
    assert "@import" not in page and "url(" not in page
    assert 'fetch("metrics"' in page and "POLL_MS = 2000" in page    # relative, every 2 s
    for shown in ("interest_ingest_events_total", "interest_api_latency_seconds",
                  "interest_projection_", "lag_events", "interest_live_actors",
                  "interest_dead_letters", "interest_fusion_weight", "interest_model_queue_depth",
                  "interest_writer_queue_jobs"):
        assert shown in page
    assert "default-src 'none'" in head["content-security-policy"]
    assert len(data) < 32768


NODE_HARNESS = r"""
const fs = require("fs");
const [script, metrics] = [fs.readFileSync(process.argv[2], "utf8"), fs.readFileSync(process.argv[3], "utf8")];
const elements = {}, requests = [];
globalThis.document = {getElementById: id => (elements[id] = elements[id] || {id, textContent: "", innerHTML: "", className: ""})};
globalThis.location = {hash: "#token=secret-token"};
let polls = 0;
globalThis.setTimeout = f => { if (++polls < 3) f(); };
globalThis.fetch = (url, options) => { requests.push({url, options});
  return Promise.resolve({ok: true, status: 200, text: () => Promise.resolve(metrics)}); };
eval(script);
setImmediate(() => setImmediate(() => console.log(JSON.stringify({elements, requests}))));
"""


def test_dashboard_script_renders_the_metrics(srv, tmp_path):
    """The page's script, run by node against stub DOM and fetch, parses a real /metrics
    answer and fills every panel (the browser test below runs it in chromium)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the dashboard script is not executed by node")
    catalog_and_history(srv)
    call(srv, "GET", "/v1/users/u1/recommendations")
    page = request(srv, "GET", "/dashboard")[2].decode()
    (tmp_path / "page.js").write_text(page.split("<script>")[1].split("</script>")[0])
    (tmp_path / "metrics.txt").write_bytes(request(srv, "GET", "/metrics")[2])
    (tmp_path / "harness.js").write_text(NODE_HARNESS)
    done = subprocess.run([node, str(tmp_path / "harness.js"), str(tmp_path / "page.js"),
                           str(tmp_path / "metrics.txt")], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    shown = {k: str(v["innerHTML"] or v["textContent"]) for k, v in out["elements"].items()}
    assert out["requests"][0]["url"] == "metrics"
    assert out["requests"][0]["options"]["headers"] == {"Authorization": "Bearer secret-token"}
    assert shown["actors"] == "2" and shown["head"] == "6" and shown["dead"] == "0"
    assert float(shown["rate"]) >= 0 and "<polyline" in shown["spark"]
    assert "<td>recommend</td>" in shown["latency"] and "<td>ingest</td>" in shown["latency"]
    assert all(f"<td>{p}</td>" in shown["lags"] for p in srv.service.runners)
    assert "<td>writer jobs</td>" in shown["queues"]
    assert "popularity</td>" in shown["fusion"] and "<th>cold</th>" in shown["fusion"]
    assert shown["status"].startswith("ready") and shown["model"] == "off"
    assert "<td>not loaded</td>" in shown["modeltable"]


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                  "--window-size=1280,1100", "--virtual-time-budget=7000")


def chromium(tmp_path, *args) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, timeout=90, check=False)


def test_dashboard_in_a_headless_browser(srv, tmp_path):
    """The page in a real browser (Debian's chromium, its own --headless): after a few
    polls (virtual time) the DOM holds the live figures of /metrics, and a screenshot is
    taken (kept under $INTEREST_SCREENSHOTS when set, for a person to look at)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium): the dashboard "
                    "is not tested in a browser")
    catalog_and_history(srv)
    for _ in range(3):
        call(srv, "GET", "/v1/users/u1/recommendations?k=2")
    call(srv, "GET", "/v1/users/u1/interests")
    stop = threading.Event()

    def feed() -> None:                            # live ingest while the page polls
        n = 0
        while not stop.wait(0.05):
            n += 1
            srv.service.ingest_events([parse_event(event(f"live{n}", user=f"v{n % 5}",
                                                         item="m1"), srv.service.limits)])
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        url = f"{srv.http.url}/dashboard"
        dom = chromium(tmp_path, "--dump-dom", url)
        shot = tmp_path / "dashboard.png"
        picture = chromium(tmp_path, f"--screenshot={shot}", url)
    finally:
        stop.set()
        feeder.join(TIMEOUT)
    assert dom.returncode == 0, dom.stderr.decode(errors="replace")[-2000:]
    html = dom.stdout.decode()

    def text_of(element_id: str) -> str:
        match = re.search(rf'id="{element_id}"[^>]*>(.*?)</(?:b|span|small|table|div)>', html,
                          re.S)
        assert match, f"no element {element_id} in the DOM"
        return match.group(1)
    assert text_of("status").startswith("ready"), text_of("status")
    assert int(text_of("head")) >= 6 and int(text_of("actors")) >= 2
    assert float(text_of("rate")) >= 0 and float(text_of("applied")) >= 0   # two polls at least
    assert int(text_of("rss")) > 1 and text_of("model") == "off"
    assert "<td>recommend</td>" in text_of("latency") and "<polyline" in text_of("spark")
    assert all(f"<td>{p}</td>" in text_of("lags") for p in srv.service.runners)
    assert "popularity</td>" in text_of("fusion") and "<th>warm</th>" in text_of("fusion")
    assert picture.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20000                            # not a blank page
    keep = os.environ.get("INTEREST_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "dashboard.png")


# ---------------------------------------------------------------- authentication


@pytest.fixture
def tokens(tmp_path):
    path = tmp_path / "tokens"
    names = {"admin": "A" * 20, "reader": "R" * 20, "producer": "P" * 20}
    path.write_text("# token role\n" + "".join(f"{t} {role}   # {role}\n"
                                                for role, t in names.items()))
    path.chmod(0o600)
    return path, names


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_tokens_and_roles(start, tokens):
    path, names = tokens
    srv = start(make_config(http={"tokens_file": str(path)}))
    for open_path in ("/healthz", "/readyz", "/dashboard"):
        assert request(srv, "GET", open_path)[0] == 200
    _, head = error_of(srv, "GET", "/v1/users/u1/interests", 401, "forbidden")
    assert head["www-authenticate"].startswith("Bearer")
    error_of(srv, "GET", "/v1/users/u1/interests", 401, "forbidden", headers=bearer("X" * 20))
    error_of(srv, "GET", "/v1/users/u1/interests", 401, "forbidden",
             headers={"Authorization": f"Basic {names['admin']}"})
    error_of(srv, "GET", "/metrics", 401, "forbidden")
    assert call(srv, "GET", "/v1/users/u1/interests", headers=bearer(names["reader"]))[0] == 200
    error_of(srv, "POST", "/v1/events", 403, "forbidden", body=[event("a", item="m1")],
             headers=bearer(names["reader"]))
    status, reply, _ = call(srv, "POST", "/v1/events", [event("a", item="m1")],
                            headers=bearer(names["producer"]))
    assert status == 200 and reply["accepted"] == 1
    error_of(srv, "GET", "/v1/users/u1/recommendations", 403, "forbidden",
             headers=bearer(names["producer"]))
    error_of(srv, "GET", "/metrics", 403, "forbidden", headers=bearer(names["reader"]))
    error_of(srv, "DELETE", "/v1/users/u1", 403, "forbidden", headers=bearer(names["reader"]))
    assert request(srv, "GET", "/metrics", headers=bearer(names["admin"]))[0] == 200
    assert call(srv, "DELETE", "/v1/users/u1", headers=bearer(names["admin"]))[0] in (200, 501)


def test_curve_without_tokens_refuses_to_start_the_http_port(srv, tokens):
    config = copy.deepcopy(srv.service.config)
    config["security"]["curve"] = True
    with pytest.raises(HttpConfigError, match="http.tokens_file is empty"):
        HttpSide(srv.service, "127.0.0.1:0", config)
    config["http"]["tokens_file"] = str(tokens[0])
    assert HttpSide(srv.service, "127.0.0.1:0", config).tokens is not None


@pytest.mark.parametrize("text, words", [
    ("", "no tokens"),
    ("short admin\n", "at least 16 characters"),
    (f"{'T' * 20} root\n", "expected 'TOKEN ROLE'"),
    (f"{'T' * 20}\n", "expected 'TOKEN ROLE'"),
    (f"{'T' * 20} admin\n{'T' * 20} reader\n", "a repeated token"),
])
def test_a_bad_tokens_file_is_one_clear_error(tmp_path, text, words):
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(HttpConfigError, match=words):
        load_tokens(path)
    with pytest.raises(HttpConfigError, match="cannot read"):
        load_tokens(tmp_path / "missing")


# -------------------------------------------------------------- wiring, addresses


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1", ":80", "::1:80", "h:99999"])
def test_a_bad_address_is_refused(address):
    with pytest.raises(HttpConfigError, match="HOST:PORT|brackets"):
        parse_address(address)
    assert parse_address("[::1]:7102") == ("::1", 7102, socket.AF_INET6)
    assert parse_address("http://localhost:0/") == ("localhost", 0, socket.AF_INET)


def test_a_port_in_use_is_one_clear_error(srv):
    with pytest.raises(OSError, match="cannot bind the HTTP port 127.0.0.1:"):
        HttpSide(srv.service, srv.http.bound, srv.service.config).start()
    assert call(srv, "GET", "/healthz")[0] == 200


def test_a_non_loopback_bind_warns(srv, caplog):
    side = HttpSide(srv.service, "0.0.0.0:0", srv.service.config)
    with caplog.at_level(logging.WARNING, logger="interest.engine.serving.http"):
        side.start()
    try:
        assert "without authentication" in caplog.text
    finally:
        side.stop()


def test_the_config_address_and_serve_flag_start_it(tmp_path):
    from interest.tools import serve
    config = make_config(http={"address": "127.0.0.1:0"})
    with Server(config, tmp_path / "a", ingest=RANDOM_PORT, api=RANDOM_PORT) as srv:
        assert call(srv, "GET", "/healthz")[0] == 200
    with Server(config, tmp_path / "b", ingest=RANDOM_PORT, api=RANDOM_PORT, http="") as srv:
        assert srv.http is None                          # "" turns it off
    args = serve.build_parser().parse_args(["--ingest", RANDOM_PORT, "--api", RANDOM_PORT,
                                            "--http", "127.0.0.1:0"])
    inference, srv = serve.start(make_config(), tmp_path / "c", args)
    try:
        assert inference is None and srv.http.bound.startswith("127.0.0.1:")
        assert call(srv, "GET", "/healthz")[0] == 200
    finally:
        srv.stop()


def test_the_http_benchmark_runs_small(capsys):
    from interest.tools import bench_http
    assert bench_http.main(["--requests", "5", "--users", "10", "--items", "10", "--events", "60",
                            "--batch", "25"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["events"] == 70 and out["http_ingest_events_per_s"] > 0
    for route in ("healthz", "metrics_scrape", "recommend_http", "recommend_zeromq"):
        assert out[route]["n"] >= 1 and out[route]["p50_ms"] > 0
