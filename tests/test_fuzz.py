"""Seeded fuzzing of both sockets of a real ``Server`` (issue 9).

Valid messages (api requests of every op, ingest events of every type) are
mutated: bytes flipped, inserted, deleted, truncated or appended; fields
swapped to another type (str, int, float, list, map, bytes, None, bool) or to
NaN, +-Infinity, -0.0, 1e308, 5e-324, the extreme 64-bit integers; nested
15 to 2,000 levels deep (msgpack decodes up to 1,024); strings and op names up
to the frame limit; map keys turned
into bytes; required keys dropped; unknown ops; non-map messages; batches one
event over the limit; empty, multi-frame and just-oversized frames (and one
frame of exactly the limit, which must be accepted). msgpack cannot carry an
integer above 2**64 - 1 (``packb`` refuses it), so 2**64 - 1 and -2**63 stand
for "huge".

Asserted: every api request gets exactly one reply, ``ok`` or a protocol error
code (never ``internal``, never silence); ``ping`` and ``flush`` answer after
the run and an event sent on the ingest socket is still applied; the ``stats``
counters account for every ingest message and every rejected message/event
(the expectation is computed per message with the protocol's own decoder and
validators, ``decode_frame``/``parse_event``/``parse_request``); both socket
threads are alive; the test process' RSS grows by less than ``RSS_BOUND_MB``;
no ERROR record or logged traceback from the service's loggers. The
multi-part case on the ingest socket counts each part: PULL reads every part
as a message of its own. Frames of 4x the limit or more are cut (ZeroMQ drops
such a peer before the service sees anything; tools/attacks.py covers that).
"""

from __future__ import annotations

import copy
import gc
import logging
import math
import random
import time

import msgpack
import psutil
import pytest
import zmq

from interest.engine.config import load_config
from interest.engine.errors import BadRequest
from interest.engine.journal.codec import decode_frame, encode_frame
from interest.engine.journal.events import BEHAVIOUR_TYPES, parse_event
from interest.engine.serving.requests import parse_request
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

SEED = 20261129
N_API = 2000
N_INGEST = 2000
WARMUP = 150                   # iterations before the RSS baseline is taken
MAX_BYTES = 65536              # limits.max_message_bytes of this test's service
MAX_BATCH = 200                # limits.max_batch_events
REPLY_TIMEOUT_MS = 10000
RSS_BOUND_MB = 64
CODES = {"bad_request", "not_found", "deadline_exceeded", "overloaded", "unavailable",
         "forbidden", "internal"}
USERS = [f"fz{i}" for i in range(12)]
ITEMS = [f"it{i}" for i in range(30)]
TS = 1_700_000_000.0           # well in the past: no event is near the future-skew limit
SPECIALS = [math.nan, math.inf, -math.inf, -0.0, 1e308, -1e308, 5e-324, 2**64 - 1, 2**63,
            -2**63, 0, -1, 1e19]
DEPTHS = (15, 16, 17, 40, 500, 1000, 1024, 2000)     # msgpack decodes at most 1024 levels
LOGGERS = ("engine", "actors")


def deep_mark(depth: int) -> str:
    return f"\x00deep:{depth}\x00"


@pytest.fixture
def config():
    return load_config(store={"sync": False}, inference={"enabled": False},
                       runtime={"sweep_seconds": 0.2},
                       limits={"max_message_bytes": MAX_BYTES, "max_batch_events": MAX_BATCH})


@pytest.fixture
def dealer(server, context):
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.api)
    yield sock
    sock.close(linger=0)


# ------------------------------------------------------------------ valid messages


class Gen:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.ids = 0

    def text(self, n: int) -> str:
        alphabet = "abcxyz09 _-é€\u4e2d\x00\n\U0001f600"
        return "".join(self.rng.choice(alphabet) for _ in range(n))

    def event(self) -> dict:
        rng = self.rng
        self.ids += 1
        kind = rng.random()
        base = {"v": 1, "id": f"ev{self.ids}", "ts": TS + rng.random() * 1e6}
        if kind < 0.08:
            return {**base, "type": "item", "item": rng.choice(ITEMS), "title": self.text(8),
                    "tags": rng.sample(["Drama", "War", "Comedy", "Sci-Fi", "Noir"], 2)}
        if kind < 0.12:
            return {**base, "type": "user_attrs", "user": rng.choice(USERS),
                    "attrs": {"age": rng.randint(10, 80), "country": "fr"}}
        type_ = rng.choice(sorted(BEHAVIOUR_TYPES))
        out = {**base, "type": type_, "user": rng.choice(USERS)}
        if type_ != "search":
            out["item"] = rng.choice(ITEMS)
        if type_ == "rate":
            out["value"] = float(rng.randint(1, 5))
        if type_ == "search":
            out["query"] = self.text(6)
        if rng.random() < 0.3:
            out["ctx"] = {"device": "web", "pos": rng.randint(0, 9)}
        return out

    def request(self, n: int) -> dict:
        rng = self.rng
        op = rng.choices(["ping", "stats", "flush", "interests", "recommend", "explain",
                          "ingest"], weights=[8, 2, 6, 14, 20, 8, 22])[0]
        req = {"op": op, "rid": f"r{n}"}
        if op in ("interests", "recommend", "explain"):
            req["user"] = rng.choice(USERS + ["nobody"])
        if op == "interests" and rng.random() < 0.5:
            req["fresh"] = rng.random() < 0.5
        if op in ("interests", "recommend", "explain") and rng.random() < 0.3:
            req["deadline_ms"] = 5000
        if op == "recommend":
            req["k"] = rng.randint(1, 20)
            if rng.random() < 0.3:
                req["exclude_seen"] = False
            if rng.random() < 0.3:
                req["candidates"] = rng.sample(ITEMS, 4)
        if op == "explain" and rng.random() < 0.5:
            req["item"] = rng.choice(ITEMS)
        if op == "flush" and rng.random() < 0.5:
            req["timeout_ms"] = 5000
        if op == "ingest":
            req["events"] = [self.event() for _ in range(rng.randint(1, 6))]
        return req

    def ingest_message(self):
        return self.event() if self.rng.random() < 0.4 else \
            [self.event() for _ in range(self.rng.randint(1, 8))]

    # ------------------------------------------------------------- mutations

    def value(self, not_like=None):
        rng = self.rng
        makers = {
            str: lambda: self.text(rng.randint(0, 20)),
            int: lambda: rng.choice([0, 1, -7, 2**31, 2**64 - 1, -2**63]),
            float: lambda: rng.choice([0.5, -1.5, 1e-9, 3.0e9]),
            list: lambda: [rng.randint(0, 9), "x", None],
            dict: lambda: {"a": 1, "b": [1, 2]},
            bytes: lambda: bytes(rng.randrange(256) for _ in range(rng.randint(0, 12))),
            type(None): lambda: None,
            bool: lambda: rng.random() < 0.5,
        }
        kinds = [k for k in makers if not_like is None or type(not_like) is not k]
        return makers[rng.choice(kinds)]()

    def slots(self, obj) -> list:
        """(container, key) of every value inside ``obj`` (events and nested maps too)."""
        out = []
        stack = [obj]
        while stack:
            node = stack.pop()
            items = node.items() if isinstance(node, dict) else \
                enumerate(node) if isinstance(node, list) else ()
            for key, value in list(items):
                out.append((node, key))
                stack.append(value)
        return out

    def maps(self, obj) -> list:
        out = [obj] if isinstance(obj, dict) else []
        return out + [c[k] for c, k in self.slots(obj) if isinstance(c[k], dict)]

    def mutate(self, obj, kind: str):
        """One structural mutation of ``obj`` (which it may replace): the new object."""
        rng = self.rng
        slots = self.slots(obj)
        if kind == "non_map":
            return rng.choice([None, 7, -0.0, math.nan, "ping", b"\x00", True, [],
                               [{"op": "ping"}], [1, 2, 3]])
        if kind == "unknown_op" and isinstance(obj, dict):
            obj["op"] = rng.choice([self.text(rng.randint(1, 40)),
                                    "x" * rng.choice([1000, 10000, 60000]),
                                    "PING", "ping\x00", " ping", 7, None, ["ping"]])
            return obj
        if kind == "too_many" and isinstance(obj, dict):
            obj["events"] = [{"v": 1, "id": f"t{i}", "type": "view", "ts": TS, "user": "fz0",
                              "item": "it0"} for i in range(MAX_BATCH + 1)]
            return obj
        if kind == "too_many":
            return [{"v": 1, "id": f"tm{i}", "type": "view", "ts": TS, "user": "fz0",
                     "item": "it0"} for i in range(MAX_BATCH + 1)]
        if kind == "bytes_keys":
            maps = self.maps(obj)
            if maps:
                target = rng.choice(maps)
                for key in rng.sample(list(target), min(len(target), rng.randint(1, 2))):
                    if isinstance(key, str):
                        target[key.encode()] = target.pop(key)
            return obj
        if kind == "extra_key":
            maps = self.maps(obj)
            if maps:
                rng.choice(maps)[self.text(rng.randint(1, 8))] = rng.choice(
                    [self.value(), math.nan, b"\xff\x00", msgpack.ExtType(5, b"ab"),
                     msgpack.Timestamp(1, 0), {"n": {"n": [math.inf]}}])
            return obj
        if not slots:
            return self.mutate(obj, "non_map")
        container, key = rng.choice(slots)
        if kind == "swap_type":
            container[key] = self.value(not_like=container[key])
        elif kind == "special":
            container[key] = rng.choice(SPECIALS)
        elif kind == "deep":
            container[key] = deep_mark(rng.choice(DEPTHS))
        elif kind == "long_string":
            container[key] = self.text(1) * rng.choice([257, 4097, 20000, MAX_BYTES - 200])
        elif kind == "drop_key":
            del container[key]
        elif kind == "weird_rid" and isinstance(obj, dict):
            obj["rid"] = self.value()
        return obj

    def encode(self, obj) -> bytes:
        frame = encode_frame(obj)
        for depth in DEPTHS:              # deeper than msgpack's packer allows: spliced in
            nested = b"\x91" * depth + b"\x81\xa1k\xc0"      # [[...[{"k": None}]...]]
            frame = frame.replace(encode_frame(deep_mark(depth)), nested)
        return frame

    def bytes_mutation(self, frame: bytes) -> bytes:
        rng = self.rng
        data = bytearray(frame)
        kind = rng.choice(["flip", "flip", "insert", "delete", "truncate", "trailing"])
        if not data:
            return bytes([rng.randrange(256)])
        if kind == "flip":
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == "insert":
            at = rng.randrange(len(data) + 1)
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif kind == "delete":
            at = rng.randrange(len(data))
            del data[at:at + rng.randint(1, 8)]
        elif kind == "truncate":
            del data[rng.randrange(len(data)):]
        else:
            data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        return bytes(data)

    def oversized(self, obj) -> bytes:
        """``obj`` padded to just over the frame limit (a valid map or batch otherwise)."""
        over = self.rng.randint(1, 64)
        return self._padded(obj, MAX_BYTES + over, MAX_BYTES + over + 8)

    def at_limit(self, obj) -> bytes:
        return self._padded(obj, MAX_BYTES, MAX_BYTES)

    @staticmethod
    def _padded(obj, low: int, high: int) -> bytes:
        """``obj`` with a ``pad`` string making its frame ``low``..``high`` bytes long."""
        target = obj if isinstance(obj, dict) else obj[0]
        target["pad"] = ""
        pad = low - len(encode_frame(obj))
        for length in range(pad, pad - 12, -1):     # msgpack's string header grows with it
            target["pad"] = "p" * length
            frame = encode_frame(obj)
            if low <= len(frame) <= high:
                return frame
        raise AssertionError(f"could not pad the frame to {low}..{high} bytes")

    def frames(self, obj) -> tuple[list[bytes], str, bool]:
        """(frames of one message, what was done, unmutated) for ``obj``."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.25:
            return [self.encode(obj)], "valid", True
        if roll < 0.33:
            choice = rng.choice(["empty", "oversized", "at_limit", "multi"])
            if choice == "empty":
                return [b""], "empty frame", False
            if choice == "oversized":
                return [self.oversized(obj)], "oversized frame", False
            if choice == "at_limit":
                return [self.at_limit(obj)], "frame of exactly the limit", False
            first = rng.choice([b"", b"\x00garbage", encode_frame({"op": "ping"})])
            return [first, self.encode(obj)], "multi-frame", False
        kinds = [rng.choice(["swap_type", "swap_type", "special", "special", "deep",
                             "long_string", "bytes_keys", "drop_key", "drop_key",
                             "unknown_op", "extra_key", "extra_key", "non_map", "too_many",
                             "weird_rid"])
                 for _ in range(rng.choice([1, 1, 1, 2, 3]))]
        for kind in kinds:
            obj = self.mutate(obj, kind)
        frame = self.encode(obj)
        if roll > 0.8:
            kinds.append("bytes")
            frame = self.bytes_mutation(frame)
        if len(frame) >= 4 * MAX_BYTES:
            # ZeroMQ itself drops a peer that sends 4x the limit (MAXMSGSIZE): the message is
            # never seen by the service (tools/attacks.py measures that case)
            kinds.append("cut")
            frame = frame[:MAX_BYTES + 100]
        return [frame], "+".join(kinds), False


# ------------------------------------------------------------------ expectations


def expected_api(frame: bytes, limits: dict):
    """(decoded request or None, rejected at the edge?) as the protocol defines it.

    A request the validator cannot even describe (RecursionError while quoting a
    2,000-level op) is malformed all the same: it must be rejected too.
    """
    try:
        obj = decode_frame(frame, limits["max_message_bytes"])
    except BadRequest:
        return None, True
    try:
        parse_request(obj, limits)
    except (BadRequest, RecursionError):
        return obj, True
    return obj, False


def rejected_events(batch: list, limits: dict) -> list[int]:
    """Indexes of the events of ``batch`` the protocol rejects."""
    out = []
    for index, obj in enumerate(batch):
        try:
            parse_event(obj, limits)
        except (BadRequest, RecursionError):
            out.append(index)
    return out


def expected_ingest(frame: bytes, limits: dict) -> dict:
    """What one ingest frame must add to the counters."""
    try:
        obj = decode_frame(frame, limits["max_message_bytes"])
    except BadRequest:
        return {"rejected_messages": 1, "rejected": 1, "valid": 0}
    batch = obj if isinstance(obj, list) else [obj]
    if len(batch) > limits["max_batch_events"]:
        return {"rejected_messages": 1, "rejected": len(batch), "valid": 0}
    rejected = rejected_events(batch, limits)
    return {"rejected_messages": 0, "rejected": len(rejected),
            "valid": len(batch) - len(rejected)}


def same(a, b) -> bool:
    """Equal as msgpack (NaN rids compare equal to themselves)."""
    return msgpack.packb(a, use_bin_type=True) == msgpack.packb(b, use_bin_type=True)


def roundtrip(dealer, frames: list[bytes], what: str) -> dict:
    dealer.send_multipart(frames)
    if not dealer.poll(REPLY_TIMEOUT_MS, zmq.POLLIN):
        pytest.fail(f"no reply within {REPLY_TIMEOUT_MS} ms to a {what} request: "
                    f"{[f[:160] for f in frames]!r}")
    parts = dealer.recv_multipart()
    assert parts[:-1] == frames[:-1], "the extra frames of a request come back in front"
    reply = msgpack.unpackb(parts[-1], raw=False, strict_map_key=False)
    assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), reply
    if not reply["ok"]:
        error = reply.get("error")
        assert isinstance(error, dict) and error.get("code") in CODES, reply
        assert isinstance(error.get("message"), str), reply
    return reply


def rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


# ------------------------------------------------------------------ the test


def test_fuzzed_messages_on_both_sockets_are_answered_counted_and_survived(
        server, client, publisher, dealer, config, caplog):
    caplog.set_level(logging.WARNING)
    limits = config["limits"]
    gen = Gen(SEED)
    expect = {"ingest_messages": 0, "rejected_messages": 0, "rejected": 0, "received": 0,
              "rejected_requests": 0}
    figures = {"api_sent": 0, "api_ok": 0, "api_errors": {}, "ingest_frames": 0,
               "ingest_rejected_messages": 0, "ingest_rejected_events": 0, "kinds": {}}
    internal = []
    rss_before = None
    t0 = time.monotonic()
    for n in range(max(N_API, N_INGEST)):
        if n == WARMUP:
            rss_before = rss_mb()
        if n < N_INGEST:
            frames, what, _ = gen.frames(gen.ingest_message())
            publisher.sock.send_multipart(frames)
            for frame in frames:                  # PULL reads each part as its own message
                exp = expected_ingest(frame, limits)
                expect["ingest_messages"] += 1
                expect["rejected_messages"] += exp["rejected_messages"]
                expect["rejected"] += exp["rejected"]
                expect["received"] += exp["valid"]
                figures["ingest_rejected_messages"] += exp["rejected_messages"]
                figures["ingest_rejected_events"] += exp["rejected"]
            figures["ingest_frames"] += len(frames)
        if n < N_API:
            request = gen.request(n)
            frames, what, unmutated = gen.frames(copy.deepcopy(request))
            figures["kinds"][what.split("+")[0]] = figures["kinds"].get(what.split("+")[0], 0) + 1
            obj, edge_rejected = expected_api(frames[-1], limits)
            reply = roundtrip(dealer, frames, f"#{n} {what}")
            figures["api_sent"] += 1
            if isinstance(obj, dict):
                assert same(reply.get("rid"), obj.get("rid")), (what, reply, obj)
            else:
                assert reply.get("rid") is None, (what, reply)
            if reply["ok"]:
                figures["api_ok"] += 1
                assert not edge_rejected, (what, frames[-1][:300], reply)
            else:
                code = reply["error"]["code"]
                figures["api_errors"][code] = figures["api_errors"].get(code, 0) + 1
                if code == "internal":
                    internal.append((what, frames[-1][:300], reply))
                if edge_rejected:
                    assert code == "bad_request", (what, reply)
            expect["rejected_requests"] += edge_rejected
            if unmutated:                         # (explain of an item not yet in the catalog)
                assert reply["ok"] or reply["error"]["code"] == "not_found", (request, reply)
            if reply["ok"] and obj.get("op") == "ingest":
                events = obj["events"]
                assert reply["accepted"] + reply["duplicates"] + len(reply["rejected"]) \
                    == len(events), reply
                assert [r["index"] for r in reply["rejected"]] == \
                    rejected_events(events, limits), reply
                expect["rejected"] += len(reply["rejected"])
                expect["received"] += reply["accepted"] + reply["duplicates"]
    elapsed = time.monotonic() - t0
    assert not internal, f"requests answered `internal`: {internal[:5]}"
    # nothing answered twice: no stray reply is left
    assert not dealer.poll(300, zmq.POLLIN), f"a stray reply: {dealer.recv_multipart()!r}"

    # the service still answers on both sockets
    assert client.call("ping")["version"] == 1
    read = lambda: client.call("stats")["counters"].get("ingest_messages", 0)  # noqa: E731
    wait_for(lambda: read() >= expect["ingest_messages"], timeout=30,
             reason=f"every ingest message read ({expect['ingest_messages']} sent; "
                    f"read so far: {read()})")
    assert "applied" in client.call("flush", timeout_ms=20000)
    publisher.send({"v": 1, "id": "after-fuzz", "type": "purchase", "ts": TS, "user": "after",
                    "item": "it1"})
    wait_for(lambda: client.call("stats")["received"] >= expect["received"] + 1, timeout=10,
             reason="the event sent after the fuzzing")
    client.call("flush", timeout_ms=20000)
    assert client.call("interests", user="after")["events"] == 1
    assert server.gateway._thread.is_alive() and server.ingest_loop._thread.is_alive()

    # every message and every rejection is counted
    stats = client.call("stats")
    counters = stats["counters"]
    assert counters["ingest_messages"] == expect["ingest_messages"] + 1
    assert counters.get("rejected_messages", 0) == expect["rejected_messages"]
    assert stats["rejected"] == expect["rejected"]
    assert stats["received"] == expect["received"] + 1
    assert counters.get("rejected_requests", 0) == expect["rejected_requests"]
    assert counters.get("error.internal", 0) == 0
    assert counters.get("commit_failures", 0) == 0

    rss_after = rss_mb()
    assert rss_after - rss_before < RSS_BOUND_MB, (rss_before, rss_after)

    escaped = [r for r in caplog.records if r.name.startswith(LOGGERS)
               and (r.levelno >= logging.ERROR or r.exc_info)]
    assert not escaped, [(r.name, r.getMessage()[:200]) for r in escaped[:5]]

    rejected_api = sum(figures["api_errors"].values())
    print(f"\nfuzz: {figures['api_sent']} api requests ({figures['api_ok']} ok, {rejected_api} "
          f"errors {figures['api_errors']}), {figures['ingest_frames']} ingest frames "
          f"({expect['rejected_messages']} messages and {expect['rejected']} events rejected, "
          f"{expect['received'] + 1} events received), {elapsed:.1f} s, RSS "
          f"{rss_before:.0f} -> {rss_after:.0f} MB, 0 service deaths; kinds {figures['kinds']}")


def test_a_request_nested_1000_levels_deep_is_answered_on_both_sockets(client, publisher, server):
    """msgpack decodes up to 1,024 levels; quoting such a value in an error message
    (``repr``) must not raise RecursionError in a socket thread."""
    deep = b"\x91" * 1000 + b"\xc0"
    reply = client.raw(b"\x82\xa2op" + deep + b"\xa3rid\xa1d", timeout=5)   # {"op": [[...]]}
    assert reply["ok"] is False and reply["error"]["code"] == "bad_request", reply
    head = encode_frame({"id": "deep", "type": "view", "ts": TS, "user": "u", "item": "i"})
    event = bytes([head[0] + 1]) + head[1:] + b"\xa1v" + deep                # {"v": [[...]], ...}
    reply = client.raw(encode_frame({"op": "ingest", "events": []})[:-1] + b"\x91" + event,
                       timeout=5)
    assert reply["ok"] and reply["rejected"][0]["code"] == "bad_request", reply
    publisher.send_raw(event)
    publisher.send({"v": 1, "id": "next", "type": "view", "ts": TS, "user": "u", "item": "i"})
    wait_for(lambda: client.call("stats")["counters"].get("ingest_messages", 0) >= 2,
             timeout=5, reason="both ingest messages read")
    client.call("flush", timeout_ms=5000)
    assert client.call("interests", user="u")["events"] == 1
    assert client.call("stats")["rejected"] == 2
    assert server.gateway._thread.is_alive() and server.ingest_loop._thread.is_alive()


def test_a_client_that_pipelines_and_reads_late_gets_every_reply(client, dealer):
    """6,000 pipelined `recommend` requests (about 20 KB replies) read only once the service
    has answered them all: every one must arrive (or be answered `overloaded`)."""
    for start in (0, MAX_BATCH):
        client.call("ingest", events=[{"v": 1, "id": f"i{i}", "type": "item", "ts": TS,
                                       "item": f"m{i}", "title": "t" * 40, "tags": ["A", "B"]}
                                      for i in range(start, start + MAX_BATCH)])
    n = 6000
    for i in range(n):
        dealer.send(encode_frame({"op": "recommend", "rid": i, "user": "nobody", "k": 200}))
    wait_for(lambda: client.call("stats")["counters"].get("op.recommend", 0) >= n, timeout=60,
             reason="every recommend answered by the service")
    time.sleep(0.5)
    codes = {}
    while dealer.poll(1000, zmq.POLLIN):
        reply = msgpack.unpackb(dealer.recv(), raw=False)
        code = "ok" if reply["ok"] else reply["error"]["code"]
        codes[code] = codes.get(code, 0) + 1
    assert sum(codes.values()) == n, f"{n} requests, replies {codes}"
