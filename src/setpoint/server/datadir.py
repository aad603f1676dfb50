"""One server per data directory: an exclusive lock held for the life of the process.

Two servers on one SQLite file both believe they own the revision counter, so their writes
collide (``UNIQUE constraint failed: log.revision``), and each rewrites the kubeconfig to point at
itself. ``setpoint serve`` therefore takes ``flock(LOCK_EX | LOCK_NB)`` on a lock file in the data
directory (and one next to the database file when that lives elsewhere) before it writes
anything, and keeps the descriptor open until it exits: the kernel drops the lock when the
process dies however it dies, so there is no stale lock to clean up. The holder's pid is written
into the file so that a second server can say which process is in the way.

Servers over a shared store (PostgreSQL, etcd) are meant to run side by side and may share a data
directory for their tokens; they take no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_FILE = "setpoint.lock"


class DataDirLocked(Exception):
    """Another process holds the lock at ``path``; ``pid`` is its process id when known."""

    def __init__(self, path: Path, pid: int | None) -> None:
        who = f"another setpoint server (pid {pid})" if pid else "another setpoint server"
        super().__init__(f"{who} is using {path.parent} (it holds {path})")
        self.path = path
        self.pid = pid


class DataDirLock:
    """Exclusive locks on a set of lock files, all or none. Hold it as long as the server runs."""

    def __init__(self, *paths: Path) -> None:
        self.paths = paths
        self._fds: list[int] = []

    def acquire(self) -> DataDirLock:
        """Take every lock or raise :class:`DataDirLocked` holding none."""
        try:
            for path in self.paths:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise DataDirLocked(path, _read_pid(path)) from None
                self._fds.append(fd)
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()


def holder(data_dir: Path) -> int | None:
    """The pid of the server holding ``data_dir`` (0 when it is held but the pid is unknown), or
    None when nobody holds it. Only a probe: the server's own :meth:`DataDirLock.acquire` decides."""
    path = data_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_pid(path) or 0
    finally:
        os.close(fd)
    return None


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
