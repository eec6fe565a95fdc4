"""One service per data directory: an exclusive ``flock`` on ``DATA/LOCK``.

The holder writes its pid into the file, so a second process (or a second
open in the same process) fails at once with ``DataDirLocked`` naming it.
The lock is released by ``release()`` or when the process dies (the kernel
drops ``flock`` locks with the file descriptor), so a stale LOCK file left
by ``kill -9`` never blocks a restart.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from interest.engine.errors import DataDirLocked, StoreError

LOCK_NAME = "LOCK"


class DataDirLock:
    """``DataDirLock(data_dir).acquire()``; also a context manager."""

    def __init__(self, path: str | Path):
        self.path = Path(path) / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "DataDirLock":
        if self._fd is not None:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot create the lock file {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise DataDirLocked(f"data directory {self.path.parent} is in use by process "
                                f"{holder} (lock {self.path})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.ftruncate(fd, 0)
            os.close(fd)              # closing the descriptor drops the flock

    def __enter__(self) -> "DataDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return text if text.isdigit() else "(unknown pid)"
