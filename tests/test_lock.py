"""One service per data directory: the LOCK file is held as long as the store is open."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from interest.engine.config import load_config
from interest.engine.errors import DataDirLocked, StoreError
from interest.engine.journal.lock import DataDirLock
from interest.engine.journal.store import open_store

ROOT = Path(__file__).resolve().parent.parent
CONFIG = load_config(store={"sync": False})


def test_a_second_open_in_the_same_process_fails_at_once_naming_the_pid(tmp_path):
    store = open_store(CONFIG, tmp_path)
    try:
        assert (tmp_path / "LOCK").read_text().strip() == str(os.getpid())
        with pytest.raises(DataDirLocked, match=f"is in use by process {os.getpid()}"):
            open_store(CONFIG, tmp_path)
    finally:
        store.close()
    open_store(CONFIG, tmp_path).close()                   # released by close()


def test_locked_is_a_store_error():
    assert issubclass(DataDirLocked, StoreError)


def test_a_second_process_fails_at_once_naming_the_holder(tmp_path):
    store = open_store(CONFIG, tmp_path)
    script = textwrap.dedent(f"""
        import sys
        from interest.engine.config import load_config
        from interest.engine.errors import DataDirLocked
        from interest.engine.journal.store import open_store
        try:
            open_store(load_config(), {str(tmp_path)!r})
        except DataDirLocked as exc:
            print(exc)
            sys.exit(3)
    """)
    try:
        proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
    finally:
        store.close()
    assert proc.returncode == 3, proc.stderr
    assert f"in use by process {os.getpid()}" in proc.stdout


def test_a_lock_left_by_a_dead_process_does_not_block(tmp_path):
    (tmp_path / "LOCK").write_text("999999\n")             # a kill -9'd holder leaves its pid
    with DataDirLock(tmp_path) as lock:
        assert lock.held
        assert (tmp_path / "LOCK").read_text().strip() == str(os.getpid())


def test_the_lock_is_released_when_opening_the_store_fails(tmp_path):
    (tmp_path / "journal").mkdir()
    (tmp_path / "journal" / "data.mdb").write_bytes(b"not lmdb" * 100)
    with pytest.raises(StoreError, match="not an LMDB data file"):
        open_store(CONFIG, tmp_path)
    with DataDirLock(tmp_path):
        pass


def test_a_second_serve_on_the_same_data_exits_non_zero_at_once(tmp_path):
    store = open_store(CONFIG, tmp_path / "d")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "interest.tools.cli", "serve", "--data", str(tmp_path / "d"),
             "--ingest", "tcp://127.0.0.1:*", "--api", "tcp://127.0.0.1:*"],
            cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        store.close()
    assert proc.returncode != 0
    assert f"is in use by process {os.getpid()}" in proc.stderr
    assert "Traceback" not in proc.stderr
