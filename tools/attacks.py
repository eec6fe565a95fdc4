"""Issue 9's attacks, replayed against real `interest serve` processes.

    python -m interest.tools.attacks --out attacks.json [--markdown attacks.md] [--only a,b] [--keep]

Each attack starts its own service subprocess (its own temporary data
directory and ipc:// sockets; inference off unless the attack is about the
default config), does what an attacker (or an unlucky operator) would do, and
records what the service does now. The result is a JSON table printed on
stdout and written to ``--out``: one row per attack with ``attack``, ``now``
(one line), ``bug`` (true when the service crashed, hung, printed a traceback,
went past a configured bound or lost/duplicated acknowledged events),
``tests`` (the tests under tests/ that cover it, found by name) and
``details`` (the measurements). Every wait is bounded; a process that does not
exit is killed and reported.

This is a tool, not a test: it takes a few minutes and measures RSS, times and
log sizes on whatever machine runs it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import msgpack
import psutil
import zmq

ROOT = Path(__file__).resolve().parent.parent
PLAIN = "[inference]\nenabled = false\n"
TS = 1_700_000_000.0
TRACEBACK = "Traceback (most recent call last)"


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes):
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def ev(id_, user="u1", item="m1", type_="view", ts=TS, **extra) -> dict:
    out = {"v": 1, "id": id_, "type": type_, "ts": ts, "user": user}
    if item is not None:
        out["item"] = item
    out.update(extra)
    return out


def item(item_id, tags, ts=TS) -> dict:
    return {"v": 1, "id": f"item-{item_id}", "type": "item", "ts": ts, "item": item_id,
            "title": f"Title {item_id}", "tags": list(tags)}


# ---------------------------------------------------------------------------- processes


class Service:
    """One `interest serve` subprocess on its own data directory and ipc sockets."""

    def __init__(self, root: Path, name: str, config: str | None = PLAIN, *,
                 data: Path | None = None, api: str | None = None, ingest: str | None = None):
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data = data or self.dir / "data"
        self.api = api or f"ipc://{self.dir}/api"
        self.ingest = ingest or f"ipc://{self.dir}/ingest"
        self.config = None
        if config is not None:
            self.config = self.dir / "config.toml"
            self.config.write_text(config)
        self.log = self.dir / "serve.log"
        self.proc: subprocess.Popen | None = None
        self.ctx = zmq.Context()
        self._sockets: list[zmq.Socket] = []

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "interest.tools.cli", "serve", "--data", str(self.data),
                "--api", self.api, "--ingest", self.ingest, "--log-level", "INFO"]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        return argv

    def start(self, wait: bool = True, timeout: float = 60.0) -> "Service":
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.argv(), cwd=ROOT, stdout=log,
                                         stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> float:
        t0 = time.monotonic()
        sock = self.dealer()
        try:
            while time.monotonic() - t0 < timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"serve exited {self.proc.returncode}: "
                                       f"{self.log_tail(800)}")
                sock.send(pack({"op": "ping", "rid": "ready"}))
                if sock.poll(300, zmq.POLLIN) and unpack(sock.recv()).get("ok"):
                    return time.monotonic() - t0
            raise RuntimeError(f"serve did not answer ping within {timeout} s")
        finally:
            self.close_socket(sock)

    def dealer(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.connect(self.api)
        self._sockets.append(sock)
        return sock

    def pusher(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.connect(self.ingest)
        self._sockets.append(sock)
        return sock

    def close_socket(self, sock: zmq.Socket) -> None:
        sock.close(linger=0)
        if sock in self._sockets:
            self._sockets.remove(sock)

    def call(self, op: str, timeout: float = 15.0, **fields) -> dict | None:
        """One request on a fresh DEALER; None when no reply came within ``timeout``."""
        sock = self.dealer()
        try:
            sock.send(pack({"op": op, "rid": "c", **fields}))
            if not sock.poll(int(timeout * 1000), zmq.POLLIN):
                return None
            return unpack(sock.recv())
        finally:
            self.close_socket(sock)

    def raw(self, frame: bytes, timeout: float = 10.0):
        sock = self.dealer()
        try:
            sock.send(frame)
            if not sock.poll(int(timeout * 1000), zmq.POLLIN):
                return None
            return unpack(sock.recv())
        finally:
            self.close_socket(sock)

    def ingest_acked(self, events: list[dict], chunk: int = 2000, timeout: float = 120) -> int:
        """Send ``events`` with the acknowledged `ingest` op (retrying `overloaded`)."""
        accepted = 0
        deadline = time.monotonic() + timeout
        for start in range(0, len(events), chunk):
            while True:
                reply = self.call("ingest", events=events[start:start + chunk], timeout=60)
                if reply is None or time.monotonic() > deadline:
                    raise RuntimeError("ingest got no reply")
                if reply["ok"]:
                    accepted += reply["accepted"]
                    break
                if reply["error"]["code"] != "overloaded":
                    raise RuntimeError(f"ingest failed: {reply}")
                time.sleep(reply["error"].get("retry_after_ms", 200) / 1000)
        return accepted

    def rss_mb(self) -> float | None:
        """RSS of the service and its child processes (the model learner may be one)."""
        try:
            main = psutil.Process(self.proc.pid)
            procs = [main, *main.children(recursive=True)]
        except (psutil.Error, AttributeError):
            return None
        total = 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        return round(total / 2**20, 1)

    def uss_mb(self) -> float | None:
        """Private memory (USS: no file-backed LMDB pages) of the service and its children."""
        try:
            main = psutil.Process(self.proc.pid)
            procs = [main, *main.children(recursive=True)]
            return round(sum(p.memory_full_info().uss for p in procs) / 2**20, 1)
        except (psutil.Error, AttributeError):
            return None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> dict:
        """SIGTERM; kill -9 after ``timeout``. {rc, seconds, killed}."""
        if not self.alive():
            return {"rc": self.proc.returncode if self.proc else None, "seconds": 0.0,
                    "killed": False}
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
            return {"rc": rc, "seconds": round(time.monotonic() - t0, 2), "killed": False}
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return {"rc": self.proc.returncode, "seconds": round(time.monotonic() - t0, 2),
                    "killed": True}

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)

    def close(self) -> None:
        self.kill()
        for sock in list(self._sockets):
            sock.close(linger=0)
        self._sockets.clear()
        self.ctx.destroy(linger=0)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_tail(self, n: int = 400) -> str:
        return self.log_text()[-n:]

    def tracebacks(self) -> int:
        return self.log_text().count(TRACEBACK)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run_cli(args: list[str], timeout: float = 60.0) -> dict:
    """An `interest` subcommand: {rc, seconds, out (last lines), traceback, timed_out}."""
    t0 = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "interest.tools.cli", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) \
            else (exc.stdout or "")
        return {"rc": None, "seconds": timeout, "timed_out": True, "out": out[-300:]}
    out = (proc.stdout + proc.stderr).strip()
    return {"rc": proc.returncode, "seconds": round(time.monotonic() - t0, 2),
            "traceback": TRACEBACK in out, "out": out[-300:], "timed_out": False}


def pipeline(sock: zmq.Socket, frames, *, expected: int, timeout: float, stop_when=None):
    """Send ``frames`` (an iterable) while reading replies, on one DEALER.

    Returns {sent, replies, codes, reply_bytes, latencies_ms, seconds, timed_out}.
    ``rid`` of each reply is matched to its send time when it is a str.
    """
    frames = iter(frames)
    sent_at: dict = {}
    out = {"sent": 0, "replies": 0, "codes": {}, "reply_bytes": 0, "max_reply_bytes": 0,
           "latencies_ms": [], "timed_out": False}
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN | zmq.POLLOUT)
    more = True
    t0 = time.monotonic()
    while out["replies"] < expected:
        if time.monotonic() - t0 > timeout or (stop_when is not None and stop_when()):
            out["timed_out"] = True
            break
        events = dict(poller.poll(50))
        flags = events.get(sock, 0)
        if flags & zmq.POLLIN:
            for _ in range(1000):
                try:
                    raw = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                reply = unpack(raw)
                out["replies"] += 1
                out["reply_bytes"] += len(raw)
                out["max_reply_bytes"] = max(out["max_reply_bytes"], len(raw))
                code = "ok" if reply.get("ok") else (reply.get("error") or {}).get("code")
                out["codes"][code] = out["codes"].get(code, 0) + 1
                rid = reply.get("rid")
                if isinstance(rid, str) and rid in sent_at:
                    out["latencies_ms"].append((time.monotonic() - sent_at.pop(rid)) * 1000)
        if more and flags & zmq.POLLOUT:
            for _ in range(200):
                frame = next(frames, None)
                if frame is None:
                    more = False
                    break
                rid, data = frame if isinstance(frame, tuple) else (None, frame)
                if rid is not None:
                    sent_at[rid] = time.monotonic()
                sock.send(data)
                out["sent"] += 1
    out["seconds"] = round(time.monotonic() - t0, 2)
    lat = sorted(out.pop("latencies_ms"))
    if lat:
        out["p50_ms"] = round(lat[len(lat) // 2], 1)
        out["p99_ms"] = round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1)
    return out


class RssWatch:
    """Peak RSS of a process, sampled every 0.1 s on a thread."""

    def __init__(self, service: Service):
        self.service = service
        self.peak = service.rss_mb() or 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.1):
            rss = self.service.rss_mb()
            if rss is not None:
                self.peak = max(self.peak, rss)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(2)
        return self.peak


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def counters(service: Service) -> dict:
    reply = service.call("stats")
    return reply["counters"] if reply and reply.get("ok") else {}


def brief(reply) -> str:
    if reply is None:
        return "NO REPLY"
    if reply.get("ok"):
        return "ok"
    error = reply.get("error") or {}
    return f"{error.get('code')}: {str(error.get('message'))[:120]}"


# ---------------------------------------------------------------------------- attacks

ATTACKS: list = []


def attack(name: str, title: str, tests: tuple = ()):
    def register(fn):
        ATTACKS.append((name, title, tests, fn))
        return fn
    return register


@attack("nan_deadline", "NaN/Infinity deadline_ms and flush timeout_ms (issue 9.1)",
        ("tests/test_service.py::test_non_finite_deadlines_are_bad_requests",
         "tests/test_fuzz.py::test_fuzzed_messages_on_both_sockets_are_answered_counted_and_survived"))
def a_nan_deadline(root: Path) -> dict:
    with Service(root, "nan") as svc:
        svc.start()
        cases = {
            "recommend deadline_ms=NaN": {"op": "recommend", "user": "u1", "deadline_ms": math.nan},
            "recommend deadline_ms=Infinity": {"op": "recommend", "user": "u1",
                                               "deadline_ms": math.inf},
            "recommend deadline_ms=-Infinity": {"op": "recommend", "user": "u1",
                                                "deadline_ms": -math.inf},
            "interests deadline_ms=NaN": {"op": "interests", "user": "u1",
                                          "deadline_ms": math.nan},
            "flush timeout_ms=Infinity": {"op": "flush", "timeout_ms": math.inf},
            "flush timeout_ms=1e308": {"op": "flush", "timeout_ms": 1e308},
            "recommend deadline_ms=5e-324": {"op": "recommend", "user": "u1",
                                             "deadline_ms": 5e-324},
        }
        replies = {k: brief(svc.raw(pack(v))) for k, v in cases.items()}
        ping = brief(svc.call("ping", timeout=5))
        alive = svc.alive()
    lots = run_cli(["serve", "--check-config", "--config", str(_write(root, "lots.toml",
                    '[limits]\nmax_batch_events = "lots"\n'))])
    bad = [k for k, v in replies.items() if v == "NO REPLY" or v.startswith("internal")]
    return {"now": f"{len(cases) - len(bad)}/{len(cases)} answered without internal/silence; "
                   f"ping after: {ping}; `max_batch_events = \"lots\"`: rc {lots['rc']} "
                   f"{lots['out'][:90]!r}",
            "bug": bool(bad) or ping != "ok" or not alive,
            "details": {"replies": replies, "ping_after": ping, "config_lots": lots}}


@attack("deep_nesting", "A value nested 1,000 levels deep (msgpack decodes up to 1,024): "
        "`op` on the api, `v` of an event on both sockets (found by the fuzzer)",
        ("tests/test_fuzz.py::test_a_request_nested_1000_levels_deep_is_answered_on_both_sockets",))
def a_deep_nesting(root: Path) -> dict:
    deep = b"\x91" * 1000 + b"\xc0"
    head = pack({"id": "deep", "type": "view", "ts": TS, "user": "u", "item": "i"})
    deep_event = bytes([head[0] + 1]) + head[1:] + b"\xa1v" + deep
    out = {}
    with Service(root, "deep-api") as svc:
        svc.start()
        out["api_op_deep_reply"] = brief(svc.raw(b"\x82\xa2op" + deep + b"\xa3rid\xa1d", 5))
        out["api_ping_after"] = brief(svc.call("ping", timeout=5))
        time.sleep(1.0)
        out["api_process_alive"] = svc.alive()
        out["api_process_rc"] = svc.proc.returncode
        out["api_gateway_log"] = _grep(svc.log_text(), r"ERROR.*gateway.*|RecursionError.*")[:3]
    with Service(root, "deep-ingest") as svc:
        svc.start()
        reply = svc.raw(pack({"op": "ingest", "events": []})[:-1] + b"\x91" + deep_event, 5)
        out["api_ingest_deep_v"] = brief(reply) if not (reply and reply.get("ok")) else \
            f"ok, rejected {[r['message'][:60] for r in reply['rejected']]}"
        push = svc.pusher()
        push.send(deep_event)
        time.sleep(0.5)
        push.send(pack(ev("after-deep", user="u2")))
        time.sleep(1.0)
        svc.call("flush", timeout=10, timeout_ms=5000)
        interests = svc.call("interests", user="u2", timeout=5)
        out["ingest_event_after_deep_applied"] = bool(interests and interests.get("events") == 1)
        out["ingest_messages_counted"] = counters(svc).get("ingest_messages", 0)
        out["ingest_log"] = _grep(svc.log_text(), r"ERROR.*ingest.*")[:3]
        time.sleep(1.0)
        out["ingest_process_rc"] = svc.proc.poll()
        out["tracebacks"] = svc.tracebacks()
    dead_api = out["api_op_deep_reply"] == "NO REPLY" or out["api_ping_after"] != "ok"
    dead_ingest = not out["ingest_event_after_deep_applied"]
    now = []
    if dead_api:
        now.append(f"`{{op: [[...1000 deep]]}}` (1,011 bytes): no reply, then ping "
                   f"{out['api_ping_after']} - the api gateway thread dies (RecursionError in "
                   f"requests.op_name's repr); " + (
                       f"the process then exits rc {out['api_process_rc']}"
                       if not out["api_process_alive"] else "the process stays up, deaf"))
    else:
        now.append(f"api: {out['api_op_deep_reply']}, ping after {out['api_ping_after']}")
    if dead_ingest:
        now.append("an ingest event with `v` nested 1,000 deep kills the ingest loop thread "
                   "(RecursionError in events._header's repr): later events are never applied"
                   + (f", the process exits rc {out['ingest_process_rc']}"
                      if out["ingest_process_rc"] is not None else ", the process stays up")
                   + f"; the same event in api `ingest` is answered "
                     f"{out['api_ingest_deep_v'][:60]!r}")
    else:
        now.append(f"ingest: later event applied; api ingest {out['api_ingest_deep_v'][:60]}")
    return {"now": "; ".join(now), "bug": dead_api or dead_ingest
            or out["api_ingest_deep_v"].startswith("internal"), "details": out}


@attack("op_names", "20,000 requests with random 10 KB op names (issue 9.2)",
        ("tests/test_service.py::test_unknown_op_names_do_not_grow_the_metrics",))
def a_op_names(root: Path) -> dict:
    rng = random.Random(2)
    with Service(root, "ops") as svc:
        svc.start()
        time.sleep(0.5)
        before = svc.rss_mb()
        sock = svc.dealer()
        n = 20000
        frames = ((f"o{i}", pack({"op": rng.randbytes(5000).hex(), "rid": f"o{i}"}))
                  for i in range(n))
        res = pipeline(sock, frames, expected=n, timeout=300)
        after = svc.rss_mb()
        stats_sock = svc.dealer()
        stats_sock.send(pack({"op": "stats", "rid": "s"}))
        stats_bytes = len(stats_sock.recv()) if stats_sock.poll(15000) else None
        ping = brief(svc.call("ping", timeout=5))
    return {"now": f"{res['replies']}/{n} answered {res['codes']} in {res['seconds']} s; RSS "
                   f"{before} -> {after} MB; stats reply {stats_bytes} bytes; ping {ping}",
            "bug": res["replies"] < n or (after or 0) - (before or 0) > 100
            or (stats_bytes or 1 << 30) > 1 << 20,
            "details": {"rss_before_mb": before, "rss_after_mb": after,
                        "stats_reply_bytes": stats_bytes, **res}}


@attack("timestamps", "Far-future ts, ts in ms, ts = 1e300, rate value = 1e308 (issue 9.3)",
        ("tests/test_events.py::test_a_far_future_ts_is_rejected_and_milliseconds_are_named",
         "tests/test_events.py::test_non_finite_ts_is_rejected",
         "tests/test_events.py::test_rate_values_are_finite_and_bounded"))
def a_timestamps(root: Path) -> dict:
    now = time.time()
    cases = {
        "purchase ts=now*1000 (ms)": ev("ms", "mallory", "bait", "purchase", ts=now * 1000),
        "purchase ts=now+2 days": ev("future", "mallory", "bait", "purchase", ts=now + 2 * 86400),
        "purchase ts=1e300": ev("huge", "mallory", "bait", "purchase", ts=1e300),
        "rate value=1e308": ev("v308", "mallory", "bait", "rate", ts=now, value=1e308),
        "rate value=NaN": ev("vnan", "mallory", "bait", "rate", ts=now, value=math.nan),
        "purchase ts=now+1 h (allowed)": ev("soon", "mallory", "bait", "purchase", ts=now + 3600),
    }
    with Service(root, "ts") as svc:
        svc.start()
        svc.ingest_acked([item(f"m{i}", ["Drama"], ts=now - 100) for i in range(5)]
                         + [item("bait", ["Bait"], ts=now - 100)])
        verdicts = {}
        for name, event in cases.items():
            reply = svc.call("ingest", events=[event])
            verdicts[name] = ("accepted" if reply["accepted"] else
                              f"rejected: {reply['rejected'][0]['message'][:110]}") \
                if reply and reply.get("ok") else brief(reply)
        # later honest purchases of m0 by many users: does the popularity follow them?
        honest = [ev(f"h{i}", f"user{i}", "m0", "purchase", ts=now + i * 0.01) for i in range(30)]
        svc.ingest_acked(honest)
        _wait_learner(svc)
        cold = svc.call("recommend", user="newcomer", k=3)
        top = [row["item"] for row in cold["items"]] if cold and cold.get("ok") else brief(cold)
        weights = svc.call("interests", user="mallory")
        finite = all(math.isfinite(t["short"]) and math.isfinite(t["long"])
                     for t in (weights or {}).get("tags", []))
    accepted_bad = [k for k, v in verdicts.items() if v == "accepted" and "allowed" not in k]
    return {"now": f"{len(cases) - 1 - len(accepted_bad)}/{len(cases) - 1} bad events rejected "
                   f"(ms: {verdicts['purchase ts=now*1000 (ms)'][:70]!r}); cold top-3 after 30 "
                   f"honest purchases of m0: {top}; mallory's weights finite: {finite}",
            "bug": bool(accepted_bad) or not finite
            or (isinstance(top, list) and top[:1] != ["m0"]),
            "details": {"verdicts": verdicts, "cold_top3": top, "finite_weights": finite}}


def _big_ingest_frames(prefix: str, requests: int, per: int):
    for r in range(requests):
        events = [{"v": 1, "id": f"{prefix}{r}-{i}", "type": "view", "ts": TS + i,
                   "user": f"u{(r * per + i) % 5000}", "item": f"m{i % 700}"} for i in range(per)]
        yield f"{prefix}{r}", pack({"op": "ingest", "rid": f"{prefix}{r}", "events": events})


@attack("pipelined_ingest", "150 pipelined api `ingest` requests of 9,000 events each "
        "(1.35M events, issue 9.4)",
        ("tests/test_service.py::test_backpressure_pauses_ingest_and_answers_overloaded",))
def a_pipelined_ingest(root: Path) -> dict:
    with Service(root, "pipe") as svc:
        svc.start()
        time.sleep(0.5)
        before, uss_before = svc.rss_mb(), svc.uss_mb()
        watch = RssWatch(svc)
        sock = svc.dealer()
        res = pipeline(sock, _big_ingest_frames("p", 150, 9000), expected=150, timeout=300)
        peak = watch.stop()
        stats = svc.call("stats", timeout=30) or {}
        flush = svc.call("flush", timeout=300, timeout_ms=290000)
        after, uss_after = svc.rss_mb(), svc.uss_mb()
        writer = stats.get("writer", {})
        watch = RssWatch(svc)
        res2 = pipeline(sock, _big_ingest_frames("q", 150, 9000), expected=150, timeout=300)
        peak2 = watch.stop()
        svc.call("flush", timeout=300, timeout_ms=290000)
        after2, uss_after2 = svc.rss_mb(), svc.uss_mb()
    overloaded = res["codes"].get("overloaded", 0)
    return {"now": f"{res['replies']}/150 answered in {res['seconds']} s: {res['codes']}; RSS "
                   f"{before} -> peak {peak} -> {after} MB, private (USS) {uss_before} -> "
                   f"{uss_after} MB (service + learner process); a second flood: "
                   f"{res2['codes']}, RSS peak {peak2} -> {after2} MB, USS {uss_after2} MB; "
                   f"overloaded came back: {overloaded > 0}",
            "bug": True if res["replies"] < 150 or overloaded == 0 else
            "minor" if peak2 > peak * 1.3 else False,
            "details": {"rss_before_mb": before, "rss_peak_mb": peak, "rss_after_mb": after,
                        "uss_before_mb": uss_before, "uss_after_mb": uss_after,
                        "second_flood": {"codes": res2["codes"], "rss_peak_mb": peak2,
                                         "rss_after_mb": after2, "uss_after_mb": uss_after2},
                        "writer_after": writer, "flush": brief(flush), **res}}


@attack("pipelined_recommend", "20,000 pipelined `recommend` requests on one connection "
        "(issue 9.4)", ())
def a_pipelined_recommend(root: Path) -> dict:
    rng = random.Random(5)
    with Service(root, "recs") as svc:
        svc.start()
        svc.ingest_acked([item(f"m{i}", rng.sample(["A", "B", "C", "D", "E"], 2))
                          for i in range(500)])
        svc.ingest_acked([ev(f"e{i}", f"u{i % 2000}", f"m{rng.randrange(500)}",
                             rng.choice(["view", "click", "purchase"]), ts=TS + i)
                          for i in range(20000)])
        before = svc.rss_mb()
        sock = svc.dealer()
        n = 20000
        frames = ((f"r{i}", pack({"op": "recommend", "rid": f"r{i}", "user": f"u{i % 2500}"}))
                  for i in range(n))
        res = pipeline(sock, frames, expected=n, timeout=300)
        after = svc.rss_mb()
        ping = brief(svc.call("ping", timeout=5))
    return {"now": f"{res['replies']}/{n} answered in {res['seconds']} s {res['codes']}, "
                   f"p50 {res.get('p50_ms')} ms, p99 {res.get('p99_ms')} ms; RSS {before} -> "
                   f"{after} MB; ping after {ping}",
            "bug": res["replies"] < n or ping != "ok",
            "details": {"rss_before_mb": before, "rss_after_mb": after, **res}}


@attack("slow_reader", "A client (default high-water marks, like `Client`) pipelines 4,000 "
        "`recommend` requests and reads the replies 8 s later (found while flooding)", ())
def a_slow_reader(root: Path) -> dict:
    with Service(root, "slow") as svc:
        svc.start()
        svc.ingest_acked([item(f"m{i}", ["A", "B"]) for i in range(300)])
        sock = svc.ctx.socket(zmq.DEALER)               # default high-water marks, like Client
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(svc.api)
        svc._sockets.append(sock)
        n = 4000
        for i in range(n):
            sock.send(pack({"op": "recommend", "rid": f"s{i}", "user": "nobody", "k": 200}))
        time.sleep(8)
        got, size = 0, 0
        while sock.poll(3000, zmq.POLLIN):
            size = len(sock.recv())
            got += 1
        c = counters(svc)
        ping = brief(svc.call("ping", timeout=5))
    return {"now": f"{got}/{n} replies arrive ({size} bytes each); the service counted "
                   f"{c.get('op.recommend')} recommends answered: {n - got} replies silently "
                   f"dropped by the ROUTER at its high-water mark (ROUTER_MANDATORY=0), no "
                   f"counter, no `overloaded`; ping after {ping}",
            "bug": got < n,
            "details": {"sent": n, "replies": got, "reply_bytes": size, "counters": c}}


@attack("shutdown_backlog", "SIGTERM with a backlog (api ingest pipelined + 300k events "
        "pushed), then restart (issue 9.4)", ())
def a_shutdown_backlog(root: Path) -> dict:
    out = {}
    with Service(root, "shut") as svc:
        svc.start()
        push = svc.pusher()
        for r in range(300):
            push.send(pack([ev(f"push{r}-{i}", f"u{i % 3000}", f"m{i % 500}", ts=TS + i)
                            for i in range(1000)]))
        acked, unavailable = [], []

        def on_reply(reply):
            if reply.get("ok"):
                acked.append(reply["rid"])
            elif reply["error"]["code"] == "unavailable":
                unavailable.append(reply["rid"])
        sock = svc.dealer()
        frames = list(_big_ingest_frames("s", 40, 9000))
        result = {}
        collector = threading.Thread(target=lambda: result.update(
            _pipeline_with_callback(sock, frames, on_reply, svc)), daemon=True)
        collector.start()
        time.sleep(1.5)
        out["backlog_at_sigterm"] = _backlog(svc)
        stop = svc.stop(timeout=120)
        collector.join(30)
        out.update({"stop": stop, "tracebacks": svc.tracebacks(),
                    "commit_failed_lines": svc.log_text().count("commit failed"),
                    "error_lines": len(_grep(svc.log_text(), r" ERROR ")),
                    "acked_requests": len(acked), "api_replies": result.get("codes")})
        out["log_errors"] = _grep(svc.log_text(), r" ERROR .*")[:3]
    with Service(root, "shut", data=root / "shut" / "data") as again:
        again.log = again.dir / "restart.log"
        again.start()
        again.call("flush", timeout=120, timeout_ms=110000)
        again_stop = again.stop()
    export = root / "shut" / "export.jsonl"
    exp = run_cli(["replay", "export", "--data", str(root / "shut" / "data"), "--out",
                   str(export)], timeout=120)
    ids = set()
    if export.exists():
        with export.open() as fh:
            for line in fh:
                ids.add(json.loads(line)["id"])
    lost = sum(1 for rid in acked for i in range(9000) if f"{rid}-{i}" not in ids)
    # answered `unavailable` "... they are durable and will be applied at the next start"
    unavailable_missing = sum(1 for rid in unavailable for i in range(9000)
                              if f"{rid}-{i}" not in ids)
    check = run_cli(["replay", "check", "--data", str(root / "shut" / "data"), "--no-progress"],
                    timeout=180)
    out.update({"restart_stop": again_stop, "export": exp["rc"], "journal_events": len(ids),
                "unavailable_requests": len(unavailable),
                "unavailable_events_missing": unavailable_missing,
                "acknowledged_events_lost": lost, "replay_check": {k: check[k] for k in ("rc",
                                                                                          "out")}})
    stop = out["stop"]
    return {"now": f"exit {stop['rc']} after {stop['seconds']} s (killed: {stop['killed']}), "
                   f"backlog at SIGTERM {out['backlog_at_sigterm']}, {out['tracebacks']} "
                   f"tracebacks, {out['commit_failed_lines']} 'commit failed'; "
                   f"api replies {out['api_replies']}: acknowledged events lost after restart "
                   f"{lost}, events of `unavailable` (\"durable\") replies missing "
                   f"{unavailable_missing}; replay check rc {check['rc']}",
            "bug": stop["killed"] or stop["rc"] != 0 or out["tracebacks"] > 0 or lost > 0
            or out["commit_failed_lines"] > 0 or check["rc"] != 0 or unavailable_missing > 0,
            "details": out}


def _pipeline_with_callback(sock, frames, on_reply, svc) -> dict:
    """pipeline() calling ``on_reply`` for each reply, until the process exits."""
    out = {"codes": {}, "replies": 0}
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN | zmq.POLLOUT)
    pending = list(frames)
    t0 = time.monotonic()
    while svc.alive() and time.monotonic() - t0 < 180:
        flags = dict(poller.poll(50)).get(sock, 0)
        if flags & zmq.POLLIN:
            while True:
                try:
                    reply = unpack(sock.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
                out["replies"] += 1
                code = "ok" if reply.get("ok") else reply["error"]["code"]
                out["codes"][code] = out["codes"].get(code, 0) + 1
                on_reply(reply)
        if pending and flags & zmq.POLLOUT:
            sock.send(pending.pop(0)[1])
    return out


def _backlog(svc: Service) -> dict:
    stats = svc.call("stats", timeout=10)
    if not stats or not stats.get("ok"):
        return {"stats": brief(stats)}
    users = stats["projections"].get("users", {})
    return {"head": stats["head"], "users_lag": users.get("lag_events"),
            "writer_pending": stats["writer"]["pending_events"], "rss_mb": stats["rss_mb"]}


@attack("checkpoint_corruption", "Truncated / byte-flipped models/recommender.msgpack, then "
        "restart (issue 9.5)",
        ("tests/test_integrity.py::test_a_damaged_checked_file_is_corrupt_file",
         "tests/test_checkpoint.py::test_restart_resumes_from_the_checkpoint"))
def a_checkpoint(root: Path) -> dict:
    base = root / "ckpt"
    rng = random.Random(11)
    probe = [f"u{i}" for i in range(0, 50, 5)]
    with Service(root, "ckpt") as svc:
        svc.start()
        svc.ingest_acked([item(f"m{i}", rng.sample(["A", "B", "C", "D"], 2)) for i in range(50)]
                         + [ev(f"e{i}", f"u{i % 50}", f"m{rng.randrange(50)}",
                               rng.choice(["view", "click", "purchase"]), ts=TS + i)
                            for i in range(3000)])
        _wait_learner(svc)
        recs_before = {u: _recs(svc, u) for u in probe}
        svc.stop()
    model = base / "data" / "models" / "recommender.msgpack"
    if not model.exists():
        return {"now": f"no checkpoint written at shutdown ({model})", "bug": True,
                "details": {}}
    size = model.stat().st_size
    out = {"checkpoint_bytes": size, "has_checked_header": model.read_bytes()[:8] == b"INTCHK01"}
    for damage in ("intact", "truncated", "flipped", "float"):
        data = root / f"ckpt-{damage}" / "data"
        shutil.copytree(base / "data", data)
        target = data / "models" / "recommender.msgpack"
        raw = bytearray(target.read_bytes())
        if damage == "truncated":
            raw = raw[:len(raw) // 2]
        elif damage == "intact":
            pass
        elif damage == "flipped":
            raw[len(raw) // 2] ^= 0xFF
        else:                                       # the exponent of every 50th float64
            at, n = raw.find(b"\xcb"), 0
            while at >= 0:
                if n % 50 == 0 and at + 9 <= len(raw):
                    value = struct_unpack(">d", bytes(raw[at + 1:at + 9]))
                    if 1e-6 < abs(value) < 1e6:
                        raw[at + 1] = 0x48 if value > 0 else 0xC8
                n += 1
                at = raw.find(b"\xcb", at + 9)
        target.write_bytes(bytes(raw))
        with Service(root, f"ckpt-{damage}", data=data) as svc:
            try:
                svc.start(timeout=60)
                rec = svc.call("recommend", user="u1", k=3)
                svc.call("flush", timeout_ms=20000)
                stats = _wait_learner(svc)
                changed = sum(_recs(svc, u) != recs_before[u] for u in probe)
                out[damage] = {"started": True, "recommend": brief(rec),
                               "users_with_other_recommendations": f"{changed}/{len(probe)}",
                               "gseq": stats.get("recommender", {}).get("gseq"),
                               "head": stats.get("head"),
                               "warnings": _grep(svc.log_text(), r"WARNING.*(checkpoint|model).*")
                               [:2], "tracebacks": svc.tracebacks()}
                out[damage]["stop"] = svc.stop()
            except RuntimeError as exc:
                out[damage] = {"started": False, "error": str(exc)[-300:],
                               "tracebacks": svc.tracebacks()}
    damages = ("intact", "truncated", "flipped", "float")
    ok = all(out[d].get("started") and out[d]["recommend"] == "ok" and not out[d]["tracebacks"]
             for d in damages)
    silent = [d for d in ("flipped", "float") if out[d].get("started")
              and not out[d]["warnings"]
              and not out[d]["users_with_other_recommendations"].startswith("0/")]
    return {"now": f"checked header: {out['has_checked_header']}; " + "; ".join(
                f"{d}: " + (f"starts, recommend {out[d]['recommend']}, learner at "
                            f"{out[d]['gseq']}/{out[d]['head']}, recommendations changed for "
                            f"{out[d]['users_with_other_recommendations']} users, warning: "
                            f"{bool(out[d]['warnings'])}"
                            if out[d].get("started") else
                            f"does not start: {out[d]['error'][:150]}")
                for d in damages),
            "bug": not ok or silent, "details": out}


def _wait_learner(svc: Service, timeout: float = 60.0) -> dict:
    """stats, once the model learner has caught up with the journal's head (and published)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = svc.call("stats") or {}
        if stats.get("ok") and stats["recommender"].get("gseq") == stats["head"] \
                or time.monotonic() > deadline:
            time.sleep(0.5)                      # the learner publishes every publish_ms
            return svc.call("stats") or stats
        time.sleep(0.2)


def struct_unpack(fmt: str, data: bytes) -> float:
    return struct.unpack(fmt, data)[0]


def _recs(svc: Service, user: str) -> list:
    reply = svc.call("recommend", user=user, k=10)
    return [row["item"] for row in reply["items"]] \
        if reply and reply.get("ok") else [brief(reply)]


@attack("truncated_lmdb", "Truncated data.mdb, then `serve` and `replay check` (issue 9.5)",
        ("tests/test_integrity.py::test_a_truncated_data_file_is_one_clear_store_error_not_sigbus",
         "tests/test_integrity.py::test_replay_check_command_on_a_truncated_store_is_one_line"))
def a_truncated_lmdb(root: Path) -> dict:
    with Service(root, "trunc") as svc:
        svc.start()
        svc.ingest_acked([ev(f"e{i}", f"u{i % 300}", f"m{i % 80}", ts=TS + i)
                          for i in range(20000)])
        svc.stop()
    data_file = svc.data / "journal" / "data.mdb"
    size = data_file.stat().st_size
    os.truncate(data_file, size // 2)
    serve = run_cli(["serve", "--config", str(svc.config), "--data", str(svc.data), "--api",
                     f"ipc://{svc.dir}/api2", "--ingest", f"ipc://{svc.dir}/ingest2"],
                    timeout=60)
    check = run_cli(["replay", "check", "--data", str(svc.data), "--no-progress"], timeout=60)
    sigbus = -signal.SIGBUS in (serve["rc"], check["rc"])
    return {"now": f"data.mdb {size} -> {size // 2} bytes: serve rc {serve['rc']} "
                   f"({serve['out'][-140:]!r}); replay check rc {check['rc']} "
                   f"({check['out'][-120:]!r})",
            "bug": sigbus or serve["rc"] in (0, None) or serve.get("traceback")
            or check.get("traceback") or check["rc"] in (0, None),
            "details": {"serve": serve, "replay_check": check}}


@attack("snapshot_float", "A flipped float in a stored snapshot (issue 9.5)",
        ("tests/test_store_contract.py::test_a_flipped_byte_in_a_snapshot_is_detected_counted_and_logged",
         "tests/test_user_actor.py::test_an_unreadable_snapshot_is_rebuilt_from_the_journal"))
def a_snapshot_float(root: Path) -> dict:
    import lmdb  # noqa: PLC0415
    config = PLAIN + "[runtime]\nsnapshot_every = 5\n"
    with Service(root, "snap", config) as svc:
        svc.start()
        svc.ingest_acked([item("m1", ["Drama", "War"]), item("m2", ["Comedy"])]
                         + [ev(f"e{i}", "victim", f"m{1 + i % 2}", "purchase",
                               ts=time.time() - 50 + i) for i in range(20)])
        before = svc.call("interests", user="victim")
        svc.stop()
    env = lmdb.open(str(svc.data / "journal"), max_dbs=16, subdir=True)
    flipped = None
    try:
        snaps = env.open_db(b"snapshots")
        with env.begin(write=True, db=snaps) as txn:
            record = bytearray(txn.get(b"svictim"))
            state = record[16:]
            at = state.find(b"\xcb")
            while at >= 0 and flipped is None:
                value = msgpack.unpackb(bytes(state[at:at + 9]))
                if isinstance(value, float) and 0.01 < abs(value) < 1e6:
                    record[16 + at + 1] = 0x48      # exponent byte: x 2^~130
                    flipped = (value, msgpack.unpackb(bytes(record[16 + at:16 + at + 9])))
                at = state.find(b"\xcb", at + 1)
            txn.put(b"svictim", bytes(record))
    finally:
        env.close()
    with Service(root, "snap", config, data=svc.data) as again:
        again.log = again.dir / "restart.log"
        again.start()
        after = again.call("interests", user="victim")
        for _ in range(100):
            again.call("interests", user="victim")
        warnings = _grep(again.log_text(), r"WARNING.*snapshot.*")
        again.stop()
    check = run_cli(["replay", "check", "--data", str(svc.data), "--no-progress"])

    def top(reply):
        return max((abs(t["short"]) for t in reply.get("tags", [])), default=None) \
            if reply and reply.get("ok") else brief(reply)
    same = before and after and before.get("tags") == after.get("tags")
    return {"now": f"float {flipped[0] if flipped else None} -> "
                   f"{flipped[1] if flipped else None} in victim's snapshot: served top weight "
                   f"{top(before)} before, {top(after)} after (state equal to before: {same}); "
                   f"log {warnings[:1]} ({len(warnings)} such warnings for 101 reads); replay "
                   f"check after a clean restart and stop: rc {check['rc']} "
                   f"({check['out'][:130]!r})",
            "bug": True if not same else "minor" if len(warnings) > 20 or check["rc"] else False,
            "details": {"flipped": flipped, "warnings": warnings[:3],
                        "warning_count": len(warnings), "replay_check": check}}


@attack("second_serve", "A second `serve` on the same --data (issue 9.6)",
        ("tests/test_lock.py::test_a_second_serve_on_the_same_data_exits_non_zero_at_once",))
def a_second_serve(root: Path) -> dict:
    with Service(root, "lock1") as first:
        first.start()
        t0 = time.monotonic()
        second = run_cli(["serve", "--config", str(first.config), "--data", str(first.data),
                          "--api", f"ipc://{first.dir}/api2", "--ingest",
                          f"ipc://{first.dir}/ingest2"], timeout=30)
        first_ok = brief(first.call("ping", timeout=5))
    return {"now": f"second serve rc {second['rc']} after {second['seconds']} s: "
                   f"{second['out'][-150:]!r}; first still answers: {first_ok}",
            "bug": second["rc"] in (0, None) or second.get("traceback") or first_ok != "ok",
            "details": {"second": second, "elapsed": round(time.monotonic() - t0, 2)}}


@attack("id_squatting", "Event-id squatting: one user's producer sends `order-1001` first "
        "(issue 9.7)",
        ("tests/test_store_contract.py::test_the_same_id_under_two_users_is_two_events",))
def a_id_squatting(root: Path) -> dict:
    with Service(root, "squat") as svc:
        svc.start()
        first = svc.call("ingest", events=[ev("order-1001", "mallory", "m9", "purchase")])
        second = svc.call("ingest", events=[ev("order-1001", "alice", "m1", "purchase")])
        alice = svc.call("interests", user="alice")
    return {"now": f"mallory's order-1001 accepted {first['accepted']}; alice's accepted "
                   f"{second['accepted']} duplicates {second['duplicates']}; alice has "
                   f"{alice['events']} event(s)",
            "bug": second["accepted"] != 1 or alice["events"] != 1,
            "details": {"first": first, "second": second}}


@attack("port_in_use", "Port already in use with the default config (model on) (issue 9.8)",
        ())
def a_port_in_use(root: Path) -> dict:
    out = {}
    for which in ("api", "ingest"):
        port = free_port()
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", port))
        blocker.listen(1)
        try:
            svc = Service(root, f"port-{which}", config=None,
                          api=f"tcp://127.0.0.1:{port if which == 'api' else free_port()}",
                          ingest=f"tcp://127.0.0.1:{port if which == 'ingest' else free_port()}")
            with svc:
                t0 = time.monotonic()
                svc.start(wait=False)
                try:
                    rc = svc.proc.wait(90)
                    res = {"rc": rc, "seconds": round(time.monotonic() - t0, 2),
                           "exited_by_itself": True}
                except subprocess.TimeoutExpired:
                    res = {"exited_by_itself": False, "sigterm": svc.stop(timeout=15)}
                res["log"] = _grep(svc.log_text(), r"(cannot start|ERROR|Error).*")[:2]
                res["tracebacks"] = svc.tracebacks()
                out[which] = res
        finally:
            blocker.close()
    bad = [w for w, r in out.items() if not r["exited_by_itself"] or r.get("rc") == 0]
    return {"now": "; ".join(f"{w} port taken: " + (f"exit {r['rc']} after {r['seconds']} s, "
                                                     f"{r['log'][:1]}" if r["exited_by_itself"]
                                                     else f"never exits: {r['sigterm']}")
                             for w, r in out.items()),
            "bug": bool(bad), "details": out}


@attack("config_errors", "`[limts]`, `snyc`, `workers = 0`, TOML syntax error, missing file, "
        "`max_batch_events = \"lots\"` (issue 9.9)",
        ("tests/test_config.py::test_a_bad_file_is_rejected_with_the_key_path",
         "tests/test_config.py::test_missing_file_and_toml_syntax_error_are_one_line_config_errors",
         "tests/test_config.py::test_serve_with_a_bad_config_exits_2_with_one_line_and_no_traceback"))
def a_config_errors(root: Path) -> dict:
    cases = {
        "[limts]": "[limts]\nmax_k = 5\n",
        "snyc = false": "[store]\nsnyc = false\n",
        "workers = 0": PLAIN + "[runtime]\nworkers = 0\n",
        "TOML syntax error": "[limits\nmax_k = 5\n",
        "max_batch_events = \"lots\"": '[limits]\nmax_batch_events = "lots"\n',
        "max_map_size_mb < map_size_mb": "[store]\nmap_size_mb = 512\nmax_map_size_mb = 256\n",
        "missing file": None,
    }
    out = {}
    folder = root / "configs"
    folder.mkdir(exist_ok=True)
    for name, text in cases.items():
        path = folder / f"{abs(hash(name))}.toml"
        if text is not None:
            path.write_text(text)
        res = run_cli(["serve", "--config", str(path), "--data", str(folder / "data"),
                       "--api", f"ipc://{folder}/api", "--ingest", f"ipc://{folder}/ingest"],
                      timeout=30)
        out[name] = {"rc": res["rc"], "seconds": res["seconds"], "traceback": res.get("traceback"),
                     "message": res["out"].splitlines()[-1][:160] if res["out"] else ""}
    bad = [n for n, r in out.items() if r["rc"] in (0, None) or r["traceback"]]
    return {"now": "; ".join(f"{n}: rc {r['rc']} in {r['seconds']} s" for n, r in out.items())
                   + f" (e.g. {out['[limts]']['message'][:90]!r})",
            "bug": bool(bad), "details": out}


@attack("oversized_frames", "Frames of 2x and over 4x max_message_bytes on both sockets "
        "(issue 9.9)", ())
def a_oversized(root: Path) -> dict:
    limit = 1 << 20
    with Service(root, "big") as svc:
        svc.start()
        push = svc.pusher()
        push.send(b"\x00" * (2 * limit))                    # read, counted, rejected
        time.sleep(0.5)
        c1 = counters(svc)
        push.send(b"\x00" * (4 * limit + 1))                # ZeroMQ drops the peer
        time.sleep(0.5)
        push.send(pack(ev("after-big", user="big")))
        time.sleep(1.5)
        svc.call("flush", timeout_ms=5000)
        c2 = counters(svc)
        applied = (svc.call("interests", user="big") or {}).get("events")
        sock = svc.dealer()
        sock.send(b"\x00" * (2 * limit))
        api_2x = brief(unpack(sock.recv())) if sock.poll(5000) else "NO REPLY"
        sock.send(b"\x00" * (4 * limit + 1))
        api_4x = brief(unpack(sock.recv())) if sock.poll(3000) else "NO REPLY"
        sock.send(pack({"op": "ping", "rid": "p"}))
        ping_same = brief(unpack(sock.recv())) if sock.poll(5000) else "NO REPLY"
        dropped = {k: v for k, v in counters(svc).items() if "drop" in k or "oversize" in k}
    counted_4x = c2.get("ingest_messages", 0) - c1.get("ingest_messages", 0) > 1
    minor = not counted_4x
    return {"now": f"ingest 2x: counted (rejected_messages {c1.get('rejected_messages')}); "
                   f"ingest >4x: {'counted' if counted_4x else 'vanishes uncounted'} "
                   f"(ingest_messages {c1.get('ingest_messages')} -> {c2.get('ingest_messages')}"
                   f", the next event applied: {applied == 1}); api 2x: {api_2x[:40]}; api >4x: "
                   f"{api_4x}, then ping on the same socket: {ping_same}; drop counters "
                   f"{dropped or 'none'}",
            "bug": True if applied != 1 or ping_same != "ok" else "minor" if minor else False,
            "details": {"before_4x": c1, "after_4x": c2, "api_2x": api_2x, "api_4x": api_4x}}


@attack("bad_message_flood", "10,000 bad ingest messages and 10,000 bad api requests: log size "
        "(issue 9.9)", ())
def a_bad_flood(root: Path) -> dict:
    rng = random.Random(7)
    with Service(root, "flood") as svc:
        svc.start()
        size0 = svc.log.stat().st_size
        push = svc.pusher()
        for i in range(10000):
            push.send(rng.randbytes(rng.randint(1, 64)) if i % 2 else
                      pack(ev(f"b{i}", ts=math.nan)))
        deadline = time.monotonic() + 60
        while counters(svc).get("ingest_messages", 0) < 10000 and time.monotonic() < deadline:
            time.sleep(0.2)
        sock = svc.dealer()
        res = pipeline(sock, ((f"x{i}", pack({"op": "ping", "rid": f"x{i}", "pad": 1})[:-1])
                              for i in range(10000)), expected=10000, timeout=120)
        c = counters(svc)
        size1 = svc.log.stat().st_size
        lines = svc.log_text().count("\n")
    return {"now": f"{c.get('ingest_messages')} ingest messages read, rejected_messages "
                   f"{c.get('rejected_messages')}, rejected {c.get('rejected')}; api "
                   f"{res['codes']}; log grew {size1 - size0} bytes ({lines} lines in all)",
            "bug": size1 - size0 > 200_000 or c.get("ingest_messages", 0) < 10000,
            "details": {"log_bytes": size1 - size0, "counters": c, "api": res}}


@attack("max_live_actors", "11,000 users with max_live_actors = 1,000 (issue 9.9)",
        ("tests/test_service.py::test_passivation_racing_new_messages_loses_nothing",))
def a_max_live(root: Path) -> dict:
    config = PLAIN + "[runtime]\nmax_live_actors = 1000\nsweep_seconds = 0.2\n"
    with Service(root, "live", config) as svc:
        svc.start()
        peak = [0]
        stop = threading.Event()

        def watch():
            while not stop.wait(0.1):
                stats = svc.call("stats", timeout=5)
                if stats and stats.get("ok"):
                    peak[0] = max(peak[0], stats["live_actors"])
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        push = svc.pusher()
        for b in range(22):
            push.send(pack([ev(f"l{b}-{i}", f"user{(b * 1000 + i) % 11000}", f"m{i % 50}",
                               ts=TS + i) for i in range(1000)]))
        deadline = time.monotonic() + 120
        while (svc.call("stats") or {}).get("received", 0) < 22000 \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        svc.call("flush", timeout=120, timeout_ms=110000)
        time.sleep(0.5)
        stop.set()
        watcher.join(5)
        stats = svc.call("stats")
    return {"now": f"peak live actors {peak[0]} (cap 1,000), {stats['live_actors']} after flush; "
                   f"activations {stats['activations']}, passivations {stats['passivations']}",
            "bug": peak[0] > 1000 * 1.05,
            "details": {"peak": peak[0], "final": stats["live_actors"],
                        "activations": stats["activations"],
                        "passivations": stats["passivations"]}}


@attack("bytes_keys_export", "Bytes map keys (and bytes / msgpack ext values) in events, then "
        "`replay export` (issue 9.9)",
        ("tests/test_events.py::test_bytes_and_other_non_string_map_keys_are_rejected_with_the_field",
         "tests/test_events.py::test_an_accepted_event_always_exports_as_json"))
def a_bytes_keys(root: Path) -> dict:
    cases = {
        "ctx with a bytes key": ev("k1", ctx={b"device": "web"}),
        "top-level bytes key": {**ev("k2"), b"extra": 1},
        "unknown key with a bytes value": ev("k3", blob=b"\x00\xff"),
        "ctx with a bytes value": ev("k4", ctx={"raw": b"\x01"}),
        "unknown key with a msgpack Timestamp": ev("k5", when=msgpack.Timestamp(1, 0)),
        "unknown key with a msgpack ext type": ev("k6", ext=msgpack.ExtType(5, b"ab")),
    }
    verdicts = {}
    with Service(root, "bkeys") as svc:
        svc.start()
        for name, event in cases.items():
            reply = svc.call("ingest", events=[event])
            verdicts[name] = ("accepted" if reply["accepted"] else
                              f"rejected: {reply['rejected'][0]['message'][:90]}") \
                if reply and reply.get("ok") else brief(reply)
        svc.stop()
    jsonl = run_cli(["replay", "export", "--data", str(svc.data), "--out",
                     str(svc.dir / "export.jsonl")])
    mpk = run_cli(["replay", "export", "--data", str(svc.data), "--out",
                   str(svc.dir / "export.msgpack")])
    accepted = [n for n, v in verdicts.items() if v == "accepted"]
    crash = f" with a traceback: {jsonl['out'][-110:]!r}" if jsonl.get("traceback") else ""
    return {"now": f"accepted: {accepted or 'none'}; rejected: "
                   f"{[n for n in verdicts if n not in accepted]}; `replay export` .jsonl rc "
                   f"{jsonl['rc']}{crash}"
                   f"; .msgpack rc {mpk['rc']}",
            "bug": jsonl["rc"] != 0 or bool(jsonl.get("traceback")),
            "details": {"verdicts": verdicts, "export_jsonl": jsonl, "export_msgpack": mpk}}


# ---------------------------------------------------------------------------- running


def _write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.write_text(text)
    return path


def _grep(text: str, pattern: str) -> list[str]:
    return [m.group(0)[:200] for m in re.finditer(pattern, text)]


def _existing_tests(tests: tuple) -> list[str]:
    out = []
    for node in tests:
        path, _, name = node.partition("::")
        file = ROOT / path
        if file.exists() and re.search(rf"def {re.escape(name)}\(", file.read_text()):
            out.append(node)
    return out


def run(selected: list[str] | None, keep: bool) -> list[dict]:
    root = Path(tempfile.mkdtemp(prefix="ia-", dir="/tmp"))
    rows = []
    try:
        for name, title, tests, fn in ATTACKS:
            if selected and name not in selected:
                continue
            print(f"[attacks] {name} ...", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            try:
                row = fn(root)
            except Exception as exc:  # noqa: BLE001 - one broken attack never stops the rest
                row = {"now": f"the attack itself failed: {type(exc).__name__}: {exc}",
                       "bug": None, "details": {"traceback": traceback.format_exc()[-2000:]}}
            bug = row["bug"] if row["bug"] in (None, "minor") else bool(row["bug"])
            row = {"attack": title, "name": name, "now": row["now"], "bug": bug,
                   "tests": _existing_tests(tests),
                   "seconds": round(time.monotonic() - t0, 1), "details": row["details"]}
            flag = {True: "BUG ", "minor": "MINOR "}.get(row["bug"], "")
            print(f"[attacks] {name}: {flag}{row['now']}",
                  file=sys.stderr, flush=True)
            rows.append(row)
    finally:
        if keep:
            print(f"[attacks] kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| attack | what happens now | bug? | test that covers it |", "|---|---|---|---|"]
    for row in rows:
        now = row["now"].replace("|", "\\|").replace("\n", " ")
        tests = "<br>".join(row["tests"]) or "none found"
        bug = {True: "**yes**", False: "no", None: "?", "minor": "minor"}[row["bug"]]
        lines.append(f"| {row['attack']} | {now} | {bug} | {tests} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interest.tools.attacks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON file for the table")
    parser.add_argument("--markdown", help="also write the table as markdown here")
    parser.add_argument("--only", help="comma-separated attack names: "
                        + ", ".join(name for name, *_ in ATTACKS))
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories")
    args = parser.parse_args(argv)
    selected = args.only.split(",") if args.only else None
    unknown = set(selected or ()) - {name for name, *_ in ATTACKS}
    if unknown:
        parser.error(f"unknown attacks: {sorted(unknown)}")
    rows = run(selected, args.keep)
    table = {"generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count(),
             "attacks": rows}
    text = json.dumps(table, indent=2, default=str)
    Path(args.out).write_text(text + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown(rows))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
