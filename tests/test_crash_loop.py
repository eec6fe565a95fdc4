"""A loop of kill -9 cycles under acknowledged ingest (issue 9).

``CYCLES`` times: start a real ``interest serve`` on the same data directory
(durable commits, the default ``store.sync = true``), send api ``ingest``
requests from a client thread (unique event ids spread over ``USERS``; now
and then an already acknowledged batch again, which must come back all
duplicates), and ``kill -9`` the process at a seeded moment. A batch whose
reply did not come back before the kill is re-sent first in the next cycle
(it may or may not have been committed: either way it must not count twice).
After the last kill the service is started once more, re-sent the last
unanswered batch, flushed and asked for every user's ``interests``; then it is
stopped with SIGTERM, the journal is exported with ``interest replay export``
and ``interest replay check`` must pass.

Asserted, per user: every acknowledged id is in the journal (nothing lost),
no id is in it twice (nothing duplicated), nothing is in it that was never
sent, and ``interests`` counts exactly the journal's distinct ids.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import zmq

from interest.engine.journal.codec import decode_frame, encode_frame

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
SEED = 4242
CYCLES = 8
USERS = [f"cl{i}" for i in range(10)]
BATCH = 20
TS = 1_700_000_000.0
REPLY_TIMEOUT_S = 15.0           # a live service that does not answer within this is a failure


def start_server(tmp_path: Path) -> subprocess.Popen:
    config = tmp_path / "loop.toml"
    config.write_text("[inference]\nenabled = false\n[runtime]\nsnapshot_every = 7\n")
    log = (tmp_path / "serve.log").open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "interest.tools.cli", "serve", "--config", str(config),
             "--data", str(tmp_path / "data"), "--ingest", f"ipc://{tmp_path}/ingest",
             "--api", f"ipc://{tmp_path}/api", "--log-level", "WARNING"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()




@pytest.fixture
def dealers(context):
    """``make(address)`` -> a DEALER; every one is closed with linger 0 at teardown."""
    made = []

    def make(address: str) -> zmq.Socket:
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address)
        made.append(sock)
        return sock
    yield make
    for sock in made:
        sock.close(linger=0)


class Api:
    """Requests over one DEALER; ``None`` means the process died before answering."""

    def __init__(self, sock: zmq.Socket, proc: subprocess.Popen):
        self.sock, self.proc = sock, proc
        self.rids = 0

    def call(self, op: str, **fields) -> dict | None:
        self.rids += 1
        rid = f"{self.proc.pid}-{self.rids}"
        self.sock.send(encode_frame({"op": op, "rid": rid, **fields}))
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.sock.poll(50, zmq.POLLIN):
                reply = decode_frame(self.sock.recv(), 1 << 30)
                if reply.get("rid") == rid:
                    return reply
                continue                                 # a late reply to an earlier request
            if self.proc.poll() is not None:
                return None
        raise AssertionError(f"the service is alive but did not answer {op} within "
                             f"{REPLY_TIMEOUT_S} s")


def wait_ready(api: Api, tmp_path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.proc.poll() is not None:
            pytest.fail(f"server exited {api.proc.returncode}: "
                        f"{(tmp_path / 'serve.log').read_text(errors='replace')[-3000:]}")
        api.sock.send(encode_frame({"op": "ping", "rid": "ready"}))
        if api.sock.poll(300, zmq.POLLIN):
            if decode_frame(api.sock.recv(), 1 << 20).get("ok"):
                return
    pytest.fail("the server did not answer ping in time")


class Ledger:
    """What was sent and acknowledged, per user; shared by the main and client threads."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.sent: dict[str, set] = {u: set() for u in USERS}
        self.acked: dict[str, set] = {u: set() for u in USERS}
        self.acked_batches: list[list] = []
        self.pending: list[list] = []            # sent, reply never seen: re-sent next cycle
        self.n = 0
        self.acks = 0                            # ok replies
        self.resent_acked = 0
        self.resent_pending = 0
        self.overloaded = 0
        self.lock = threading.Lock()

    def new_batch(self, cycle: int) -> list[dict]:
        self.n += 1
        batch = [{"v": 1, "id": f"c{cycle}-b{self.n}-{i}",
                  "type": self.rng.choice(["view", "click", "purchase"]), "ts": TS + self.n,
                  "user": self.rng.choice(USERS), "item": f"it{self.rng.randrange(40)}"}
                 for i in range(BATCH)]
        for e in batch:
            self.sent[e["user"]].add(e["id"])
        return batch

    def acknowledge(self, batch: list[dict]) -> None:
        with self.lock:
            for e in batch:
                self.acked[e["user"]].add(e["id"])
            self.acked_batches.append(batch)
            self.acks += 1


def produce(api: Api, ledger: Ledger, cycle: int, stop: threading.Event, errors: list) -> None:
    """Send acknowledged ingest until the process dies (or ``stop``)."""
    try:
        while not stop.is_set():
            again = False
            if ledger.pending:
                batch = ledger.pending.pop(0)
                ledger.resent_pending += 1
            elif ledger.acked_batches and ledger.rng.random() < 0.1:
                batch, again = ledger.rng.choice(ledger.acked_batches), True
            else:
                batch = ledger.new_batch(cycle)
            reply = api.call("ingest", events=batch)
            if reply is None:                     # killed before answering
                if not again:
                    ledger.pending.insert(0, batch)
                return
            if not reply["ok"] and reply["error"]["code"] == "overloaded":
                ledger.overloaded += 1
                if not again:
                    ledger.pending.insert(0, batch)
                time.sleep(reply["error"].get("retry_after_ms", 100) / 1000)
                continue
            assert reply["ok"], reply
            assert reply["rejected"] == [], reply
            assert reply["accepted"] + reply["duplicates"] == len(batch), reply
            if again:
                assert reply["duplicates"] == len(batch), ("an acknowledged batch re-sent",
                                                           reply)
                ledger.resent_acked += 1
            else:
                ledger.acknowledge(batch)
    except BaseException as exc:  # noqa: BLE001 - reported by the main thread
        errors.append(exc)


def test_kill_9_cycles_lose_and_duplicate_no_acknowledged_event(tmp_path, procs, dealers):
    rng = random.Random(SEED)
    ledger = Ledger(SEED)
    t0 = time.monotonic()
    for cycle in range(CYCLES):
        proc = start_server(tmp_path)
        procs.append(proc)
        api = Api(dealers(f"ipc://{tmp_path}/api"), proc)
        wait_ready(api, tmp_path)
        acks_before = ledger.acks
        stop, errors = threading.Event(), []
        thread = threading.Thread(target=produce, args=(api, ledger, cycle, stop, errors),
                                  name=f"producer-{cycle}")
        thread.start()
        deadline = time.monotonic() + 20
        while ledger.acks - acks_before < 3 and time.monotonic() < deadline and not errors:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.1, 0.8))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
        thread.join(REPLY_TIMEOUT_S + 5)
        stop.set()
        assert not thread.is_alive() and not errors, errors
        assert ledger.acks - acks_before >= 3, f"cycle {cycle}: killed before 3 acknowledgements"

    # restart once more: re-send what was never answered, then check every user
    proc = start_server(tmp_path)
    procs.append(proc)
    api = Api(dealers(f"ipc://{tmp_path}/api"), proc)
    wait_ready(api, tmp_path)
    while ledger.pending:
        batch = ledger.pending.pop(0)
        reply = api.call("ingest", events=batch)
        assert reply and reply["ok"] and reply["accepted"] + reply["duplicates"] == len(batch)
        ledger.resent_pending += 1
        ledger.acknowledge(batch)
    assert api.call("flush", timeout_ms=20000)["ok"]
    interests = {u: api.call("interests", user=u)["events"] for u in USERS}
    stats = api.call("stats")
    assert stats["counters"].get("commit_failures", 0) == 0
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, (tmp_path / "serve.log").read_text(errors="replace")[-3000:]

    out = tmp_path / "export.jsonl"
    export = subprocess.run([sys.executable, "-m", "interest.tools.cli", "replay", "export", "--data",
                             str(tmp_path / "data"), "--out", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert export.returncode == 0, export.stdout + export.stderr
    journal = Counter()
    for line in out.read_text().splitlines():
        event = json.loads(line)
        journal[(event["user"], event["id"])] += 1
    check = subprocess.run([sys.executable, "-m", "interest.tools.cli", "replay", "check", "--data",
                            str(tmp_path / "data"), "--no-progress"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr

    lost = duplicated = never_sent = 0
    for user in USERS:
        ids = {i for (u, i) in journal if u == user}
        lost += len(ledger.acked[user] - ids)
        duplicated += sum(journal[(user, i)] - 1 for i in ids)
        never_sent += len(ids - ledger.sent[user])
        assert ledger.acked[user] <= ids, f"{user}: acknowledged events lost"
        assert ids <= ledger.sent[user], f"{user}: events in the journal never sent"
        assert interests[user] >= len(ledger.acked[user])
        assert interests[user] == len(ids), (user, interests[user], len(ids))
    assert duplicated == 0 and lost == 0 and never_sent == 0
    assert ledger.acked == ledger.sent            # everything was acknowledged in the end
    acknowledged = sum(len(ids) for ids in ledger.acked.values())
    print(f"\ncrash loop: {CYCLES} kill -9 cycles, {acknowledged} events acknowledged "
          f"({ledger.acks} batches), {ledger.resent_pending} unanswered batches re-sent, "
          f"{ledger.resent_acked} acknowledged batches re-sent as duplicates, "
          f"{ledger.overloaded} overloaded, lost {lost}, duplicated {duplicated}, "
          f"{time.monotonic() - t0:.1f} s")
