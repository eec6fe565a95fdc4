"""`interest serve --partitions 2` as a real process tree: the router and two partition
processes. One partition is killed with SIGKILL under acknowledged ingest: the other
keeps serving, the router answers `unavailable` for the dead partition's users until
the supervisor has started it again, and no acknowledged event is lost (each
partition's journal passes `interest replay check` afterwards)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from interest.engine.errors import InterestError
from interest.engine.partitions.layout import partition_of, read_layout
from interest.engine.serving.client import Client, RequestError
from tests.conftest import event, item_event, wait_for

N = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def users_of(partition: int, count: int) -> list[str]:
    return [u for u in (f"user{i}" for i in range(200)) if partition_of(u, N) == partition][:count]


def interest(*args) -> list[str]:
    return [sys.executable, "-m", "interest.tools.cli", *args]


@pytest.fixture
def service(tmp_path, procs):
    """`interest serve --partitions 2` on free ports, a learner thread in each partition;
    (process, api address, data dir)."""
    return start_service(tmp_path, procs, "thread")


def start_service(tmp_path, procs, learner: str):
    config = tmp_path / "config.toml"
    config.write_text(f'[inference]\nenabled = false\n[projections]\nlearner = "{learner}"\n'
                      '[partitions]\nrestart_delay_s = 0.5\n')
    api = f"tcp://127.0.0.1:{free_port()}"
    data = tmp_path / "data"
    proc = subprocess.Popen(interest("serve", "--partitions", str(N), "--data", str(data),
                                     "--config", str(config), "--api", api,
                                     "--ingest", f"tcp://127.0.0.1:{free_port()}",
                                     "--log-level", "WARNING"))
    procs.append(proc)
    with Client(api, timeout=2) as client:
        wait_for(lambda: _all_up(client), timeout=60, reason="the router and both partitions")
    return proc, api, data


def _all_up(client: Client) -> bool:
    try:
        return client.call("ping")["partitions_down"] == []
    except InterestError:          # not up yet: a timeout or an error reply
        return False


def partition_pid(proc: subprocess.Popen, index: int) -> int:
    for child in psutil.Process(proc.pid).children():
        cmdline = child.cmdline()
        if "--partition" in cmdline and cmdline[cmdline.index("--partition") + 1] == str(index):
            return child.pid
    pytest.fail(f"no process for partition {index}")


def process_tree(pid: int) -> list[tuple]:
    """(pid, status, arguments) of every process under ``pid``, zombies included."""
    tree = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            tree.append((child.pid, child.status(), child.cmdline()[3:7]))
        except psutil.Error as exc:
            tree.append((child.pid, type(exc).__name__))
    return tree


@pytest.mark.integration
def test_kill_9_of_one_partition_under_acknowledged_ingest(service):
    proc, api, data = service
    assert read_layout(data) == N
    alive, dead = users_of(0, 4), users_of(1, 4)
    acked: dict[str, int] = {u: 0 for u in alive + dead}
    sent: dict[str, int] = dict(acked)
    unavailable = {"alive": 0, "dead": 0}
    n = 0

    def ingest_round(client: Client) -> None:
        """One acknowledged batch per partition (each batch within one partition)."""
        nonlocal n
        for users, side in ((alive, "alive"), (dead, "dead")):
            n += 1
            for user in users:
                sent[user] += 1
            try:
                client.call("ingest", events=[event(f"r{n}-{u}", user=u, ts=100.0 + n)
                                              for u in users])
            except RequestError as exc:
                assert exc.code == "unavailable", exc
                unavailable[side] += 1
                continue
            for user in users:
                acked[user] += 1

    with Client(api, timeout=10) as client:
        client.call("ingest", events=[item_event("m1", ["Drama"])])
        for _ in range(5):
            ingest_round(client)
        victim = partition_pid(proc, 1)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: client.call("ping")["partitions_down"] == [1], timeout=10,
                 reason="the router to see partition 1 go")
        for _ in range(5):                        # partition 0 goes on; 1 is unavailable, fast
            ingest_round(client)
            started = time.monotonic()
            with pytest.raises(RequestError) as err:
                client.call("interests", user=dead[0])
            assert err.value.code == "unavailable"
            assert time.monotonic() - started < 2.0     # answered by the router, not timed out
            assert client.call("interests", user=alive[0])["events"] == acked[alive[0]]
        assert unavailable["alive"] == 0 and unavailable["dead"] >= 5
        try:
            wait_for(lambda: _all_up(client), timeout=60, reason="partition 1 to be started again")
        except pytest.fail.Exception:      # say what the process tree looked like
            tree = process_tree(proc.pid)
            os.kill(proc.pid, signal.SIGUSR1)      # its threads' stacks, to the captured stderr
            time.sleep(1.0)
            pytest.fail(f"partition 1 not back within 60 s; killed pid {victim}; supervisor "
                        f"{proc.pid} alive: {proc.poll() is None}; its processes: {tree}")
        assert partition_pid(proc, 1) != victim
        for _ in range(3):
            ingest_round(client)
        client.call("flush", timeout=30)
        for user in alive + dead:                 # every acknowledged event is there
            events = client.call("interests", user=user)["events"]
            assert acked[user] <= events <= sent[user], (user, acked[user], events, sent[user])
        assert all(acked[u] == sent[u] for u in alive)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    for index in range(N):
        check = subprocess.run(interest("replay", "check", "--data", str(data / f"p{index}")),
                               capture_output=True, text=True, timeout=120)
        assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.integration
def test_sigterm_stops_router_partitions_and_global_learner_together(tmp_path, procs):
    proc, api, _data = start_service(tmp_path, procs, "process")
    children = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    commands = [psutil.Process(pid).cmdline() for pid in children]
    assert sum("learner" in c for c in commands) == 1          # the one global learner
    assert sum("--partition" in c and "global" in c for c in commands) == N
    with Client(api, timeout=10) as client:
        client.call("ingest", events=[event("e1", user="someone")])
        stats = client.call("stats")
        assert all(p["projections"]["learner"].get("mode") == "global"
                   for p in stats["partitions"])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    assert not [pid for pid in children if psutil.pid_exists(pid)
                and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]


@pytest.mark.integration
def test_a_partitioned_directory_is_not_served_unpartitioned(service, tmp_path):
    proc, _api, data = service
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    run = subprocess.run(interest("serve", "--data", str(data), "--api", "tcp://127.0.0.1:0",
                                  "--ingest", "tcp://127.0.0.1:0"),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "--partitions 2" in run.stderr
