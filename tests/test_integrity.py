"""Damaged files are detected and reported, never served and never a crash."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from interest.engine.config import load_config
from interest.engine.errors import CorruptFile, StoreError
from interest.engine.journal import files
from interest.engine.journal.codec import CATALOG_STREAM
from interest.engine.journal.files import read_checked, write_checked
from interest.engine.journal.store import LmdbStore, WriteBatch, check_data_file
from interest.engine.projections.state import FoldParams, replay
from tests.conftest import event, item_event
from interest.tools import replay as replay_tool

ROOT = Path(__file__).resolve().parent.parent
PARAMS = FoldParams.from_config(load_config())


# ------------------------------------------------------------ checked files


def test_checked_file_round_trip_leaves_no_temporary(tmp_path):
    path = tmp_path / "model.msgpack"
    write_checked(path, b"first")
    write_checked(path, b"second version")
    assert read_checked(path) == b"second version"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.msgpack"]


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[:-3], "truncated or extended"),
    (lambda raw: raw + b"x", "truncated or extended"),
    (lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]), "checksum mismatch"),
    (lambda raw: b"X" + raw[1:], "bad magic"),
    (lambda raw: raw[:5], "bad magic"),
])
def test_a_damaged_checked_file_is_corrupt_file(tmp_path, damage, message):
    path = tmp_path / "f"
    write_checked(path, b"some model bytes" * 10)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CorruptFile, match=message):
        read_checked(path)
    assert issubclass(CorruptFile, StoreError)


def test_write_checked_fsyncs_the_file_then_the_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(files.os, "fsync", lambda fd: synced.append(os.readlink(
        f"/proc/self/fd/{fd}")) or real_fsync(fd))
    write_checked(tmp_path / "f", b"data")
    assert synced[0].startswith(str(tmp_path / ".f.tmp-")) and synced[-1] == str(tmp_path)


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f"
    write_checked(path, b"old")
    monkeypatch.setattr(files.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "full")))
    with pytest.raises(OSError):
        write_checked(path, b"new")
    assert read_checked(path) == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["f"]


# ------------------------------------------------------------ truncated LMDB file


def make_store(path, users=40, events=60):
    store = LmdbStore(path, sync=False)
    store.commit(WriteBatch(events=[(CATALOG_STREAM, item_event("m1", ["Drama"]))]))
    for u in range(users):
        user = f"u{u}"
        store.commit(WriteBatch(events=[(user, event(f"{user}-{i}", user=user, item="m1",
                                                     ts=float(i), note="x" * 200))
                                        for i in range(events)]))
        state = replay(user, list(store.read(user)), PARAMS)
        store.commit(WriteBatch(snapshots=[(user, state.version, state.encode())]))
    store.close()


READ_ALL = textwrap.dedent("""
    import sys
    from interest.engine.errors import StoreError
    from interest.engine.journal import store as store_module
    if sys.argv[2] == "unchecked":
        store_module.check_data_file = lambda path: None
    try:
        s = store_module.LmdbStore(sys.argv[1], sync=False)
        print(sum(1 for _ in s.read_all()))
    except StoreError as exc:
        print(exc)
        sys.exit(3)
""")


def read_in_subprocess(path, mode="checked"):
    return subprocess.run([sys.executable, "-c", READ_ALL, str(path), mode], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def truncated(tmp_path_factory):
    good = tmp_path_factory.mktemp("good") / "j"
    make_store(good)
    bad = tmp_path_factory.mktemp("bad") / "j"
    shutil.copytree(good, bad)
    data = bad / "data.mdb"
    os.truncate(data, data.stat().st_size // 2)
    (bad / "lock.mdb").unlink()
    return good, bad


def test_an_intact_store_passes_the_header_check(truncated):
    good, _ = truncated
    check_data_file(good / "data.mdb")
    proc = read_in_subprocess(good)
    assert proc.returncode == 0 and proc.stdout.strip() == "2401"


def test_a_truncated_data_file_is_one_clear_store_error_not_sigbus(truncated):
    _, bad = truncated
    proc = read_in_subprocess(bad)
    assert proc.returncode == 3, (proc.returncode, proc.stderr)
    assert "data.mdb is truncated: its header records" in proc.stdout
    assert "refusing to map it" in proc.stdout


def test_without_the_check_the_same_file_kills_the_process_with_sigbus(truncated):
    """The attack the check prevents (if this ever stops failing, the check may be moot)."""
    _, bad = truncated
    proc = read_in_subprocess(bad, "unchecked")
    assert proc.returncode == -signal.SIGBUS


def test_garbage_instead_of_a_data_file_is_refused(tmp_path):
    (tmp_path / "data.mdb").write_bytes(os.urandom(10000))
    with pytest.raises(StoreError, match="damaged or not an LMDB data file"):
        LmdbStore(tmp_path, sync=False)


# ------------------------------------------------------------ replay check


def run_check(path):
    store = LmdbStore(path, sync=False)
    try:
        return replay_tool.check(store, PARAMS, progress=False)
    finally:
        store.close()


def test_replay_check_reports_corruption_instead_of_crashing(tmp_path):
    make_store(tmp_path, users=3, events=5)
    store = LmdbStore(tmp_path, sync=False)
    with store.env.begin(write=True) as txn:
        record = bytearray(txn.get(b"su0", db=store._snapshots))
        record[-2] ^= 0xFF                                     # a flipped byte in u0's snapshot
        txn.put(b"su0", bytes(record), db=store._snapshots)
        key = b"u1\x00" + (3).to_bytes(8, "big")               # an undecodable entry of u1
        txn.put(key, b"\xc1\xc1garbage", db=store._journal)
    store.close()
    report = run_check(tmp_path)
    assert report["ok"] is False and report["users"] == 3 and not report["mismatches"]
    found = {(c["user"], c["what"]) for c in report["corrupt"]}
    assert found == {("u0", "snapshot"), ("u1", "journal")}
    journal = next(c for c in report["corrupt"] if c["user"] == "u1")
    assert "corrupt journal entry" in journal["error"]
    assert report["snapshots"] == 1                           # only u2: u0 bad, u1 unreadable


def test_replay_check_of_an_intact_store_is_ok(tmp_path):
    make_store(tmp_path, users=3, events=5)
    report = run_check(tmp_path)
    assert report["ok"] and report["corrupt"] == [] and report["snapshots"] == 3


def test_replay_check_command_on_a_truncated_store_is_one_line(truncated, tmp_path):
    _, bad = truncated
    data = tmp_path / "data"
    shutil.copytree(bad, data / "journal")
    proc = subprocess.run([sys.executable, "-m", "interest.tools.cli", "replay", "check", "--data",
                           str(data), "--no-progress"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("interest replay: ") and "truncated" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_replay_check_command_prints_findings_as_json(tmp_path):
    make_store(tmp_path / "data" / "journal", users=2, events=3)
    store = LmdbStore(tmp_path / "data" / "journal", sync=False)
    with store.env.begin(write=True, db=store._snapshots) as txn:
        txn.put(b"su1", b"\x00" * 20)
    store.close()
    proc = subprocess.run([sys.executable, "-m", "interest.tools.cli", "replay", "check", "--data",
                           str(tmp_path / "data"), "--no-progress"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["corrupt"] == [{"user": "u1", "what": "snapshot",
                                  "error": "fails its checksum (or has none)"}]
