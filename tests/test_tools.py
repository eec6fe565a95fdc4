"""The `interest` command as a user runs it: subprocesses against a real `interest serve`
(JSON logs, random ports), short errors and documented exit codes, publish's counts,
CSV import, the recommendations export, help text on every option of every tool."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from tests.conftest import event, item_event

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
INTEREST = [sys.executable, "-m", "interest.tools.cli"]
CONFIG = """
[store]
sync = false
[inference]
enabled = false
[projections]
learner = "thread"
"""


def interest(*args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([*INTEREST, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def unused_address() -> str:
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.bind("tcp://127.0.0.1:*")
    address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    sock.close(linger=0)
    return address


class Service:
    """`interest serve --log-format json` on random ports; its log lines, parsed."""

    def __init__(self, tmp: Path, procs: list):
        self.data = tmp / "data"
        self.config = tmp / "config.toml"
        self.config.write_text(CONFIG)
        self.proc = subprocess.Popen(
            [*INTEREST, "serve", "--config", self.config, "--data", self.data,
             "--api", "tcp://127.0.0.1:*", "--ingest", "tcp://127.0.0.1:*", "--log-format",
             "json"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(self.proc)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        started = self.wait_log("started", 60)
        self.api, self.ingest = started["api"], started["ingest"]

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def logs(self) -> list[dict]:
        return [json.loads(line) for line in list(self.lines)]

    def wait_log(self, name: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.logs():
                if record.get("event") == name:
                    return record
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        pytest.fail(f"no {name!r} log line from `interest serve`: {''.join(self.lines)[-2000:]}")

    def addresses(self) -> list[str]:
        return ["--api", self.api, "--ingest", self.ingest]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self._reader.join(5)
        return code


@pytest.fixture
def service(tmp_path, procs):
    srv = Service(tmp_path, procs)
    yield srv
    if srv.proc.poll() is None:
        srv.stop()


def write_jsonl(path: Path, events) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


# ------------------------------------------------------------------ no service

NO_SERVICE_COMMANDS = [
    ["query", "ping"],
    ["query", "explain", "--user", "u1"],
    ["explain", "u1"],
    ["export", "recommendations", "--users", "USERS", "--out", "OUT"],
    ["publish", "EVENTS"],
]


def test_every_tool_fails_in_about_2_s_when_nothing_answers(tmp_path):
    """All at once (each waits its 2 s in parallel); each one's own time is measured."""
    api = unused_address()
    replace = {"EVENTS": write_jsonl(tmp_path / "e.jsonl", [event("e1")]),
               "USERS": tmp_path / "users.txt", "OUT": tmp_path / "out.jsonl"}
    replace["USERS"].write_text("u1\n")
    started = time.monotonic()
    running = [(argv, subprocess.Popen(
        [*INTEREST, *[str(replace.get(a, a)) for a in argv], "--api", api], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)) for argv in NO_SERVICE_COMMANDS]
    for argv, proc in running:
        _, err = proc.communicate(timeout=30)
        elapsed = time.monotonic() - started
        print(f"`interest {' '.join(argv)}` with no service: exit {proc.returncode} "
              f"after {elapsed:.2f} s")
        assert proc.returncode == 3, (argv, err)
        assert f"no service at {api}: is `interest serve` running?" in err, (argv, err)
        assert "Traceback" not in err
        assert elapsed < 8.0               # 2 s of waiting plus five interpreters starting


def test_wait_waits_longer(tmp_path):
    started = time.monotonic()
    done = interest("query", "ping", "--api", unused_address(), "--wait", "3.5")
    assert done.returncode == 3 and time.monotonic() - started >= 3.5


# ---------------------------------------------------------------- bad usage

@pytest.mark.parametrize("argv, message", [
    (["query", "ping", "--api", "localhost"], "bad address 'localhost'"),
    (["serve", "--log-level", "verbose"], "invalid choice: 'VERBOSE'"),
    (["publish", "no/such/file.jsonl"], "no such file or folder: no/such/file.jsonl"),
    (["publish", "tests"], "is a folder"),
    (["query", "ping", "--wait", "soon"], "expected seconds"),
    (["export", "recommendations", "--out", "x", "--data", "no/such/dir"], "no store at"),
    (["frobnicate"], "unknown command 'frobnicate'"),
])
def test_bad_usage_is_one_short_error_and_exit_2(argv, message):
    done = interest(*argv)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) <= 6


def test_bare_command_version_and_help():
    bare = interest()
    assert bare.returncode == 2 and "usage: interest COMMAND" in bare.stderr
    version = interest("--version")
    assert version.returncode == 0 and version.stdout.startswith("interest ")
    usage = interest("--help")
    assert usage.returncode == 0 and "exit codes:" in usage.stdout and "no service" in usage.stdout


def _tool_parsers():
    """Every tool's argparse parser, caught as its main() is about to parse."""
    from interest.tools.bench import BENCHES
    from interest.tools.cli import COMMANDS

    class Caught(Exception):
        pass

    def catch(self, *args, **kwargs):
        raise Caught(self)
    modules = {name: module for name, (module, _) in COMMANDS.items() if name != "bench"}
    modules.update({f"bench {n}": m for n, m in BENCHES.items()})
    original = {n: getattr(argparse.ArgumentParser, n)
                for n in ("parse_args", "parse_intermixed_args", "parse_known_args")}
    found = {}
    try:
        for n in original:
            setattr(argparse.ArgumentParser, n, catch)
        for name, module in modules.items():
            if importlib.util.find_spec(module) is None:
                continue
            try:
                importlib.import_module(module).main([])
            except Caught as caught:
                found[name] = caught.args[0]
    finally:
        for n, f in original.items():
            setattr(argparse.ArgumentParser, n, f)
    return found


def _undocumented(parser, path):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _undocumented(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction) and not action.help:
            yield f"{path} {'/'.join(action.option_strings) or action.dest}"


def test_every_option_of_every_tool_has_help():
    parsers = _tool_parsers()
    assert {"serve", "publish", "query", "export", "explain", "replay"} <= set(parsers)
    missing = [where for name, p in parsers.items() for where in _undocumented(p, name)]
    assert not missing, f"options without help text: {missing}"


# ------------------------------------------------------------- with a service

def test_serve_logs_json_with_one_start_and_one_stop_line(service):
    started = service.wait_log("started", 1)
    assert started["data"] == str(service.data) and started["config"] == str(service.config)
    assert started["model"].startswith("none") and started["api"].startswith("tcp://127.0.0.1:")
    assert service.stop() == 0
    records = service.logs()                                    # every line is JSON
    assert [r["event"] for r in records if "event" in r] == ["started", "stopped"]


def test_publish_counts_and_exits_1_on_rejections(service, tmp_path):
    events = [item_event("m1", ["drama"])] + [event(f"e{i}", user=f"u{i % 3}", item="m1",
                                                    ts=100.0 + i) for i in range(20)]
    events[5] = {"v": 1, "id": "bad1", "type": "view", "ts": 1.0, "item": "m1"}    # no user
    events[9] = {**events[9], "ts": "soon"}
    path = write_jsonl(tmp_path / "events.jsonl", events)
    first = interest("publish", path, *service.addresses())
    assert first.returncode == 1, first.stderr
    summary = json.loads(first.stdout)
    assert (summary["accepted"], summary["duplicates"], summary["rejected"]) == (19, 0, 2)
    assert [r["event"] for r in summary["rejections"]] == [6, 10]
    assert "waiting for the service: applied" in first.stderr and "100%" in first.stderr
    assert "rejected 2; first: event 6: field 'user' is required" in first.stderr
    again = interest("publish", path, *service.addresses(), "--no-progress")
    assert json.loads(again.stdout)["duplicates"] == 19
    good = write_jsonl(tmp_path / "good.jsonl", [event("g1", user="u9", item="m1")])
    pushed = interest("publish", good, *service.addresses(), "--push")
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["accepted"] == 1
    assert "waiting for the service" in pushed.stderr


def test_publish_csv_with_a_column_mapping(service, tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("user_id,movie,rating,timestamp\n"
                    + "".join(f"c{i % 4},m{i % 5},{i % 5 + 1},{1700000000 + i}\n"
                              for i in range(12))
                    + "c1,m2,lots,1700000100\n")
    mapping = ["--csv-map", "user=user_id,item=movie,ts=timestamp,value=rating",
               "--csv-type", "rate"]
    done = interest("publish", path, *mapping, *service.addresses(), "--no-progress")
    assert done.returncode == 1, done.stderr                 # the "lots" row is rejected
    summary = json.loads(done.stdout)
    assert (summary["accepted"], summary["rejected"]) == (12, 1)
    assert "value" in summary["rejections"][0]["message"]
    again = interest("publish", path, *mapping, *service.addresses(), "--no-progress")
    assert json.loads(again.stdout)["duplicates"] == 12      # ids are stable per row
    wrong = interest("publish", path, "--csv-map", "user=uid", *service.addresses())
    assert wrong.returncode == 2 and "no column 'uid'" in wrong.stderr


def test_export_recommendations_for_every_user(service, tmp_path):
    events = [item_event(f"m{j}", ["drama"]) for j in range(6)]
    events += [event(f"e{i}", user=f"u{i % 4}", item=f"m{i % 6}", ts=100.0 + i)
               for i in range(24)]
    path = write_jsonl(tmp_path / "events.jsonl", events)
    assert interest("publish", path, *service.addresses(), "--no-progress").returncode == 0
    out = tmp_path / "recs.jsonl"
    done = interest("export", "recommendations", "--k", 3, "--out", out, "--data",
                    service.data, "--api", service.api, "--no-progress")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["user"] for line in lines] == ["u0", "u1", "u2", "u3"]
    assert all(0 < len(line["items"]) <= 3 for line in lines)
    assert "4 users written" in done.stderr


def test_query_prints_error_replies_and_exits_1(service):
    done = interest("query", "recommend", "--api", service.api)
    assert done.returncode == 1
    assert json.loads(done.stdout)["error"]["code"] == "bad_request"
    host_port = service.api.removeprefix("tcp://")
    assert interest("query", "ping", "--api", host_port).returncode == 0


def test_serve_http_option_alone_means_the_documented_port():
    from interest.tools.serve import DEFAULT_HTTP, build_parser
    parser = build_parser()
    assert parser.parse_args(["--http"]).http == DEFAULT_HTTP == "127.0.0.1:7102"
    assert parser.parse_args(["--http", "", "--log-level", "INFO"]).http == ""
    assert parser.parse_args(["--http", "--log-level", "INFO"]).http == DEFAULT_HTTP
    assert parser.parse_args(["--http", "0.0.0.0:9000"]).http == "0.0.0.0:9000"
    assert parser.parse_args([]).http is None              # then [http] address (off)
