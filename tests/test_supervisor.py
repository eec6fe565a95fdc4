"""The supervisor's `Child`: a process that ends is reaped at once by its watcher
thread (no zombie waits for the supervisor's loop) and started again after its delay,
the delay doubling while it keeps failing."""

from __future__ import annotations

import os
import signal
import sys
import threading

import psutil
import pytest

from interest.engine.partitions.supervisor import Child
from tests.conftest import wait_for

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.fixture
def children():
    made: list[Child] = []
    yield made
    for child in made:
        if child.proc is not None and child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait(10)


def test_a_killed_child_is_reaped_at_once_and_started_again(children):
    wake = threading.Event()
    child = Child("sleeper", SLEEPER, delay_s=0.3, wake=wake)
    children.append(child)
    child.start()
    first = child.proc.pid
    os.kill(first, signal.SIGKILL)
    assert wake.wait(10), "the watcher did not report the exit"
    assert child.exit_code == -signal.SIGKILL and child.pid is None
    assert not psutil.pid_exists(first) or psutil.Process(first).status() != "zombie"
    child.check()                                   # plans the restart
    assert 0 < child.next_check() <= 0.3
    wait_for(lambda: (child.check(), child.pid)[1], timeout=5, reason="the restart")
    assert child.pid != first and child.restarts == 1 and child.delay == 0.6


def test_a_child_exiting_by_itself_wakes_the_loop(children):
    wake = threading.Event()
    child = Child("quick", [sys.executable, "-c", "raise SystemExit(3)"], 5.0, wake)
    children.append(child)
    child.start()
    assert wake.wait(10) and child.exit_code == 3
    assert child.next_check() == 0.0
    child.check()
    assert child.restart_at is not None and child.pid is None
