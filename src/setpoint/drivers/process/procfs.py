"""What the host says about processes and ports: ``/proc``, pidfds, free TCP ports. Linux only.

A process is ours only if its start time (field 22 of ``/proc/<pid>/stat``) matches the one
recorded at spawn: pids are reused, start times with them are not. pidfds make waiting and
signalling free of pid-reuse races.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from setpoint.drivers.base import Transient

DEAD_STATES = frozenset({"Z", "X", "x"})


@dataclass(frozen=True, slots=True)
class Stat:
    state: str
    session: int
    start_ticks: int


def proc_stat(pid: int) -> Stat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        rest = data[data.rindex(b")") + 2 :].split()
        return Stat(rest[0].decode(), int(rest[3]), int(rest[19]))
    except (OSError, ValueError, IndexError):
        return None


def pids() -> list[int]:
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def session_members(sid: int) -> list[int]:
    out = []
    for pid in pids():
        st = proc_stat(pid)
        if st is not None and st.session == sid:
            out.append(pid)
    return out


def open_session(leader: int, ticks: int, skip: Iterable[int] = ()) -> dict[int, int]:
    """pidfds of the processes in the session that our process ``leader`` (started at ``ticks``)
    created, whether or not the leader still lives; none if the number now names another process."""
    me = os.getpid()
    if leader <= 1 or leader == me or leader == os.getsid(0):
        return {}
    st = proc_stat(leader)
    if st is not None and st.start_ticks != ticks:
        return {}  # reused: while any member of our session lived, the number could not be
    skipped = set(skip)
    out: dict[int, int] = {}
    for pid in session_members(leader):
        if pid in skipped or pid == me:
            continue
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue
        again = proc_stat(pid)
        if again is None or again.session != leader:
            os.close(fd)
            continue
        out[pid] = fd
    return out


def find_by_env(uid: str, replica: int) -> tuple[int, int] | None:
    """A live session leader started for this replica (found by the variables we gave it)."""
    want = {f"SETPOINT_PROCESSSET_UID={uid}".encode(), f"SETPOINT_REPLICA={replica}".encode()}
    me = os.getpid()
    for pid in pids():
        if pid == me:
            continue
        st = proc_stat(pid)
        if st is None or st.session != pid or st.state in DEAD_STATES:
            continue
        try:
            data = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if want.issubset(data.split(b"\0")):
            return pid, st.start_ticks
    return None


def listening_ports() -> set[int]:
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 3 and parts[3] == "0A":  # TCP_LISTEN
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def pidfd_exited(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def signal_fds(fds: Iterable[int], sig: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(fd, sig)


async def wait_exited(fds: Iterable[int], timeout: float) -> None:
    """Until every pidfd reports its process exited, or ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    waits: dict[int, asyncio.Future[None]] = {}
    for fd in fds:
        fut: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _resolve, fut)
        waits[fd] = fut
    try:
        if waits:
            await asyncio.wait(waits.values(), timeout=timeout)
    finally:
        for fd in waits:
            loop.remove_reader(fd)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)



# Ports


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_port(previous: int | None, taken: set[int]) -> int:
    if previous is not None and previous not in taken and _port_free(previous):
        return previous
    for _ in range(64):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            return port
    raise Transient("no free TCP port found on 127.0.0.1")


