"""`interest serve --partitions N`: N partition processes and the router, on one host.

The partitions are ordinary `interest serve --partition I --of N` processes on
``ipc://`` addresses in a private runtime folder (stable across a partition's
restarts, unreachable from other hosts); the router runs in this process on
the service's usual ingest and api addresses. A partition that exits is
started again after ``partitions.restart_delay_s`` (doubling while it keeps
failing, at most 30 s; back to the start once it has run a minute). The
children run in their own session (a Ctrl-C in the terminal reaches only this
process, which stops them in order) and get SIGTERM if this process dies.

With the global learner (``[projections] learner = "global"``, H2's
``interest learner --data DIR``) it is one more supervised child and every
partition takes its model snapshots; otherwise each partition learns from its
own events.

Several hosts: start each partition with ``interest serve --partition I --of N``
and one ``interest router`` (configs/cluster.toml); supervision is then the
host's (systemd, Kubernetes, compose).
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

from interest.engine.errors import Unavailable
from interest.engine.partitions.layout import ensure_layout
from interest.engine.partitions.router import Router
from interest.engine.serving.auth import ServerAuth, warn_if_exposed

logger = logging.getLogger(__name__)

MAX_DELAY_S = 30.0
STEADY_S = 60.0           # a child that ran this long starts again with the first delay
PR_SET_PDEATHSIG = 1


SUPERVISOR_ENV = "INTEREST_SUPERVISOR_PID"


def die_with_parent() -> None:
    """In a supervised child (``INTEREST_SUPERVISOR_PID`` set): have SIGTERM sent to it
    when the supervisor dies (Linux prctl; elsewhere nothing), or exit at once if the
    supervisor is already gone."""
    parent = os.environ.get(SUPERVISOR_ENV)
    if not parent:
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):
        sys.exit("interest: the supervisor that started this partition is gone")


class Child:
    """One supervised process, started again after it exits.

    A watcher thread per run waits on the process: it reaps it the moment it ends
    (no zombie is left for the supervisor's loop to find) and logs the exit; the
    supervisor's loop (``check``) starts it again once the delay has passed.
    """

    def __init__(self, name: str, argv: list[str], delay_s: float,
                 wake: threading.Event | None = None):
        self.name, self.argv = name, argv
        self.first_delay = self.delay = delay_s
        self.wake = wake or threading.Event()
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.exit_code: int | None = None     # set by the watcher thread
        self.stopping = False                 # terminate() was called: an exit is expected
        self.restart_at: float | None = None
        self.restarts = 0

    def start(self) -> None:
        self.exit_code = None
        self.proc = subprocess.Popen(self.argv, start_new_session=True,
                                     env={**os.environ, SUPERVISOR_ENV: str(os.getpid())})
        self.started = time.monotonic()
        self.restart_at = None
        threading.Thread(target=self._watch, args=(self.proc,), daemon=True,
                         name=f"watch {self.name}").start()
        logger.info("started %s (pid %d)", self.name, self.proc.pid)

    def _watch(self, proc: subprocess.Popen) -> None:
        """Watcher thread: wait for ``proc`` to end, then wake the supervisor's loop."""
        code = proc.wait()
        log = logger.info if self.stopping else logger.warning
        log("%s (pid %d) exited with %s", self.name, proc.pid, code)
        if proc is self.proc:
            self.exit_code = code
            self.wake.set()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.exit_code is None else None

    def check(self) -> None:
        """Supervisor's thread: start again a child that exited, once its delay has passed."""
        now = time.monotonic()
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.restarts += 1
                self.start()
            return
        if self.exit_code is None:
            return
        if now - self.started >= STEADY_S:
            self.delay = self.first_delay
        logger.warning("starting %s again in %.1f s", self.name, self.delay)
        self.restart_at = now + self.delay
        self.delay = min(MAX_DELAY_S, self.delay * 2)

    def next_check(self) -> float | None:
        """Seconds until ``check`` has something to do (None: nothing planned)."""
        if self.restart_at is not None:
            return max(0.0, self.restart_at - time.monotonic())
        return 0.0 if self.exit_code is not None else None

    def terminate(self) -> None:
        self.stopping = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def wait(self, deadline: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.error("%s did not stop in time; killed", self.name)
            self.proc.kill()
            self.proc.wait(10)


class Cluster:
    """The router (here) and the partition processes (children) of one host."""

    def __init__(self, config: dict, data_dir: str | Path, partitions: int, *,
                 ingest: str | None = None, api: str | None = None,
                 config_file: str | None = None, log_level: str = "INFO",
                 global_learner: bool = False, on_fatal=None):
        self.config = config
        self.cfg = config["partitions"]
        self.data_dir = Path(data_dir)
        self.n = partitions
        self.ingest_addr = ingest or config["service"]["ingest"]
        self.api_addr = api or config["service"]["api"]
        self.config_file, self.log_level = config_file, log_level
        self.global_learner = global_learner
        self.on_fatal = on_fatal
        self.children: list[Child] = []
        self.wake = threading.Event()         # set when a child exits
        self.router: Router | None = None
        self.auth = None
        self.context: zmq.Context | None = None
        self.runtime: str | None = None

    def start(self) -> "Cluster":
        ensure_layout(self.data_dir, self.n)
        self.runtime = tempfile.mkdtemp(prefix="interest-")
        try:
            self._start_children()
            self._start_router()
            if not self.router.wait_up(self.cfg["start_timeout_s"]):
                down = [link.index for link in self.router.links if not link.up]
                raise Unavailable(f"partitions {down} did not come up within "
                                  f"{self.cfg['start_timeout_s']:g} s")
        except BaseException:
            self.stop()
            raise
        for address in (self.ingest, self.api):
            warn_if_exposed(address, self.auth is not None, logger)
        return self

    def partition_api(self, index: int) -> str:
        return f"ipc://{self.runtime}/p{index}.api"

    def _start_children(self) -> None:
        if self.global_learner:
            self.children.append(Child("the learner", self._command(
                ["learner", "--data", str(self.data_dir)]), self.cfg["restart_delay_s"], self.wake))
        for i in range(self.n):
            argv = ["serve", "--partition", str(i), "--of", str(self.n),
                    "--data", str(self.data_dir), "--api", self.partition_api(i),
                    "--ingest", f"ipc://{self.runtime}/p{i}.ingest", "--http", ""]
            if self.global_learner:
                argv += ["--learner", "global"]
            self.children.append(Child(f"partition {i}", self._command(argv),
                                       self.cfg["restart_delay_s"], self.wake))
        for child in self.children:
            child.start()

    def _command(self, args: list[str]) -> list[str]:
        argv = [sys.executable, "-m", "interest.tools.cli", *args]
        if self.config_file:
            argv += ["--config", str(self.config_file)]
        return argv + ["--log-level", self.log_level]

    def _start_router(self) -> None:
        self.context = zmq.Context()
        self.auth = ServerAuth.from_config(self.config.get("security"), self.context)
        auth = self.auth
        self.router = Router([self.partition_api(i) for i in range(self.n)], self.config,
                             ingest=self.ingest_addr, api=self.api_addr, context=self.context,
                             secure=auth.secure if auth else None,
                             authorize=auth.authorize if auth else None,
                             may_ingest=auth.may_ingest if auth else None,
                             on_fatal=self.on_fatal).start()

    @property
    def ingest(self) -> str:
        return self.router.bound_ingest

    @property
    def api(self) -> str:
        return self.router.bound_api

    def supervise(self, timeout: float = 0.2) -> None:
        """Call in a loop: waits up to ``timeout`` (less when a child exited or is due to
        start again), then starts again any child whose delay has passed."""
        due = [t for t in (c.next_check() for c in self.children) if t is not None]
        self.wake.wait(min([timeout, *due]))
        self.wake.clear()
        for child in self.children:
            child.check()

    def pids(self) -> dict[str, int | None]:
        return {child.name: child.pid for child in self.children}

    def stop(self, timeout: float = 30.0) -> None:
        """The router first (it stops reading clients and hands its queued events to the
        partitions), then every child with SIGTERM (final snapshots), in parallel."""
        if self.router is not None:
            self.router.stop()
        for child in self.children:
            child.terminate()
        deadline = time.monotonic() + timeout
        for child in self.children:
            child.wait(deadline)
        if self.auth is not None:
            self.auth.stop()
        if self.context is not None:
            self.context.destroy(linger=0)
        if self.runtime is not None:
            shutil.rmtree(self.runtime, ignore_errors=True)
            self.runtime = None
