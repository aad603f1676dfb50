"""The ProcessSet driver: supervises real OS processes on this host. Linux only.

For each ProcessSet it keeps ``spec.replicas`` processes running, numbered ``0..replicas-1``:

- a missing replica is started; a replica whose index is ``>= replicas`` is stopped (SIGTERM to
  every process of its session, SIGKILL after ``stopGracePeriodSeconds``);
- a replica that died is restarted, at once the first time, then after a delay that starts at
  ``restartBackoff.initialSeconds`` and doubles up to ``maxSeconds``; the delay resets once a
  process has run for ``max(backoff_reset_seconds, maxSeconds)``. While a replica waits,
  :meth:`ProcessDriver.ensure` does everything else and then raises :class:`ProcessesNotReady`
  (a :class:`~setpoint.drivers.base.NotReady`) whose ``retry_after`` is the time left;
- a change to ``command``, ``args``, ``env``, ``workingDir`` or ``portEnv`` (compared by hash)
  replaces the processes;
- with ``portEnv`` set, each replica gets a free TCP port in that variable, keeps it across
  restarts while it is free, and counts as ready only once something listens on it (until then
  its state is ``Starting`` and ``ensure`` raises :class:`ProcessesNotReady` so that it is
  looked at again soon).

Every process is started in a session of its own, with stdin from /dev/null and stdout and
stderr appended to ``<state_dir>/<uid>/<replica>.log`` (copied to ``.log.1`` and truncated when
it grows past ``max_log_bytes``, checked on every ``ensure``). Its environment is the agent's,
then ``spec.env``, then ``SETPOINT_PROCESSSET`` (namespace/name), ``SETPOINT_PROCESSSET_UID``,
``SETPOINT_REPLICA`` and the ``portEnv`` variable.

State survives the agent: ``<state_dir>/<uid>/<replica>.json`` holds the pid, the process start
time (field 22 of ``/proc/<pid>/stat``, so a reused pid is never mistaken for ours), the port,
the restart count and the spec hash, written atomically. A new driver over the same directory
adopts the processes that are still alive and restarts the rest. A record is written before each
spawn as well, so a spawn interrupted by a crash is found again by its environment variables.

Linux specifics: ``/proc``, ``pidfd_open`` (Linux 5.3) for waiting on exits without polling and
for signalling without pid-reuse races, ``/proc/net/tcp{,6}`` for the listening check.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import hashlib
import logging
import math
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from setpoint.drivers.base import NotReady, Obj, OperationId, Permanent, Transient

log = logging.getLogger(__name__)

MAX_LOG_BYTES = 10 * 1024 * 1024
BACKOFF_RESET_SECONDS = 10.0
KILL_TIMEOUT = 5.0
MAX_REPLICAS = 1024

_UID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_RECORD_RE = re.compile(r"(0|[1-9][0-9]{0,8})\.json")
_ENV_NAME_RE = re.compile(r"[^=\0]+")
_DEAD_STATES = frozenset({"Z", "X", "x"})


# --------------------------------------------------------------------------------------------
# What observe() returns


class ProcessState(enum.StrEnum):
    RUNNING = "Running"
    STARTING = "Starting"  # alive, but nothing listens on its port yet
    EXITED = "Exited"  # no process (never started, or dead and due for a restart)
    BACKOFF = "Backoff"  # dead, waiting for its restart delay to pass


class ReplicaObservation(msgspec.Struct, frozen=True, kw_only=True):
    replica: int
    state: ProcessState
    pid: int | None = None
    port: int | None = None
    started_at: float | None = None  # clock time of the spawn
    restarts: int = 0
    spec_hash: str = ""
    exit_code: int | None = None  # of the last exit, when known (negative: killed by that signal)
    retry_at: float | None = None  # Backoff: clock time from which a restart is allowed

    @property
    def alive(self) -> bool:
        return self.state in (ProcessState.RUNNING, ProcessState.STARTING)


class ProcessSetObservation(msgspec.Struct, frozen=True, kw_only=True):
    uid: str
    replicas: tuple[ReplicaObservation, ...]  # sorted by index; every desired index plus live extras
    observed_at: float

    def replica(self, index: int) -> ReplicaObservation | None:
        for r in self.replicas:
            if r.replica == index:
                return r
        return None

    @property
    def pids(self) -> dict[int, int]:
        """Replica index → pid, for the replicas with a live process."""
        return {r.replica: r.pid for r in self.replicas if r.alive and r.pid is not None}


class ProcessesNotReady(NotReady):
    """A replica waits for its restart delay, or for its port; ``observed`` is the state after
    everything else was done, so the caller can still write status."""

    def __init__(self, message: str, *, retry_after: float, observed: ProcessSetObservation, reason: str) -> None:
        super().__init__(message, retry_after=retry_after, reason=reason)
        self.observed = observed


# --------------------------------------------------------------------------------------------
# The desired state, validated


@dataclass(frozen=True, slots=True)
class _Spec:
    uid: str
    namespace: str
    name: str
    command: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    working_dir: str | None
    replicas: int
    port_env: str | None
    backoff_initial: float
    backoff_max: float
    grace: float
    spec_hash: str


def _valid_uid(uid: object) -> bool:
    return isinstance(uid, str) and _UID_RE.fullmatch(uid) is not None and uid not in (".", "..")


def _bad(msg: str) -> Permanent:
    return Permanent(f"invalid ProcessSet: {msg}", reason="InvalidSpec")


def _text(value: object, field: str, *, empty: bool = True) -> str:
    if not isinstance(value, str):
        raise _bad(f"{field} must be a string")
    if "\0" in value:
        raise _bad(f"{field} must not contain NUL")
    if not empty and not value:
        raise _bad(f"{field} must not be empty")
    return value


def _number(value: object, field: str, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise _bad(f"{field} must be a finite number >= 0")
    return float(value)


def _parse(obj: Obj, max_replicas: int) -> _Spec:
    if not isinstance(obj, Mapping):
        raise _bad("object must be a mapping")
    meta = obj.get("metadata") or {}
    spec = obj.get("spec")
    if not isinstance(meta, Mapping) or not isinstance(spec, Mapping):
        raise _bad("metadata and spec must be objects")
    uid = meta.get("uid")
    if not _valid_uid(uid):
        raise _bad(f"metadata.uid {uid!r} is missing or not usable as an identifier")
    assert isinstance(uid, str)
    namespace = str(meta.get("namespace") or "default")
    name = str(meta.get("name") or "")

    command = _text(spec.get("command"), "spec.command", empty=False)
    raw_args = spec.get("args") or []
    if not isinstance(raw_args, list):
        raise _bad("spec.args must be a list of strings")
    args = tuple(_text(a, f"spec.args[{i}]") for i, a in enumerate(raw_args))
    raw_env = spec.get("env") or []
    if not isinstance(raw_env, list):
        raise _bad("spec.env must be a list of {name, value}")
    env: list[tuple[str, str]] = []
    for i, item in enumerate(raw_env):
        if not isinstance(item, Mapping):
            raise _bad(f"spec.env[{i}] must be an object")
        key = _text(item.get("name"), f"spec.env[{i}].name", empty=False)
        if not _ENV_NAME_RE.fullmatch(key):
            raise _bad(f"spec.env[{i}].name {key!r} must not contain '='")
        value = item.get("value")
        env.append((key, "" if value is None else _text(value, f"spec.env[{i}].value")))
    wd = spec.get("workingDir")
    working_dir = _text(wd, "spec.workingDir") or None if wd is not None else None
    replicas = spec.get("replicas", 1)
    if replicas is None:
        replicas = 1
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise _bad("spec.replicas must be an integer >= 0")
    if replicas > max_replicas:
        raise _bad(f"spec.replicas {replicas} exceeds this agent's limit of {max_replicas}")
    pe = spec.get("portEnv")
    port_env = _text(pe, "spec.portEnv") or None if pe is not None else None
    if port_env is not None and not _ENV_NAME_RE.fullmatch(port_env):
        raise _bad(f"spec.portEnv {port_env!r} must not contain '='")
    backoff = spec.get("restartBackoff") or {}
    if not isinstance(backoff, Mapping):
        raise _bad("spec.restartBackoff must be an object")
    initial = _number(backoff.get("initialSeconds"), "spec.restartBackoff.initialSeconds", 1.0)
    maximum = _number(backoff.get("maxSeconds"), "spec.restartBackoff.maxSeconds", 60.0)
    grace = _number(spec.get("stopGracePeriodSeconds"), "spec.stopGracePeriodSeconds", 5.0)

    identity = msgspec.json.encode([command, list(args), [list(e) for e in env], working_dir, port_env])
    return _Spec(
        uid=uid, namespace=namespace, name=name, command=command, args=args, env=tuple(env),
        working_dir=working_dir, replicas=replicas, port_env=port_env, backoff_initial=initial,
        backoff_max=max(maximum, initial), grace=grace,
        spec_hash=hashlib.sha256(identity).hexdigest()[:16],
    )


# --------------------------------------------------------------------------------------------
# What is kept on disk, per replica


class _Record(msgspec.Struct, kw_only=True):
    replica: int
    namespace: str = ""
    name: str = ""
    spec_hash: str = ""
    pid: int = 0  # 0: no process (not started yet, or its death has been recorded)
    start_ticks: int = 0  # /proc/<pid>/stat field 22
    started_at: float = 0.0  # clock time of the spawn
    port: int | None = None
    restarts: int = 0
    streak: int = 0  # consecutive deaths of short-lived processes
    exited_at: float | None = None
    exit_code: int | None = None
    retry_at: float | None = None
    pending: bool = False  # written just before a spawn; cleared once the pid is known
    grace: float = 5.0


_encode = msgspec.json.Encoder().encode
_decode_record = msgspec.json.Decoder(_Record).decode


def _write_files(files: Iterable[tuple[Path, bytes]]) -> None:
    """Write each file atomically (tmp + fsync + rename), then make the renames durable."""
    dirs: set[Path] = set()
    for path, data in files:
        parent = path.parent
        if not parent.is_dir():
            parent.mkdir(parents=True, exist_ok=True)
            dirs.add(parent.parent)
        tmp = parent / f".{path.name}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dirs.add(parent)
    for d in dirs:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------------------------
# /proc


@dataclass(frozen=True, slots=True)
class _Stat:
    state: str
    session: int
    start_ticks: int


def _proc_stat(pid: int) -> _Stat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        rest = data[data.rindex(b")") + 2 :].split()
        return _Stat(rest[0].decode(), int(rest[3]), int(rest[19]))
    except (OSError, ValueError, IndexError):
        return None


def _pids() -> list[int]:
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def _session_members(sid: int) -> list[int]:
    out = []
    for pid in _pids():
        st = _proc_stat(pid)
        if st is not None and st.session == sid:
            out.append(pid)
    return out


def _open_session(leader: int, ticks: int, skip: Iterable[int] = ()) -> dict[int, int]:
    """pidfds of the processes in the session that our process ``leader`` (started at ``ticks``)
    created, whether or not the leader still lives; none if the number now names another process."""
    me = os.getpid()
    if leader <= 1 or leader == me or leader == os.getsid(0):
        return {}
    st = _proc_stat(leader)
    if st is not None and st.start_ticks != ticks:
        return {}  # reused: while any member of our session lived, the number could not be
    skipped = set(skip)
    out: dict[int, int] = {}
    for pid in _session_members(leader):
        if pid in skipped or pid == me:
            continue
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue
        again = _proc_stat(pid)
        if again is None or again.session != leader:
            os.close(fd)
            continue
        out[pid] = fd
    return out


def _find_by_env(uid: str, replica: int) -> tuple[int, int] | None:
    """A live session leader started for this replica (found by the variables we gave it)."""
    want = {f"SETPOINT_PROCESSSET_UID={uid}".encode(), f"SETPOINT_REPLICA={replica}".encode()}
    me = os.getpid()
    for pid in _pids():
        if pid == me:
            continue
        st = _proc_stat(pid)
        if st is None or st.session != pid or st.state in _DEAD_STATES:
            continue
        try:
            data = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if want.issubset(data.split(b"\0")):
            return pid, st.start_ticks
    return None


def _listening_ports() -> set[int]:
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


def _pidfd_exited(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def _signal_fds(fds: Iterable[int], sig: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(fd, sig)


async def _wait_exited(fds: Iterable[int], timeout: float) -> None:
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


# --------------------------------------------------------------------------------------------
# Ports


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_port(previous: int | None, taken: set[int]) -> int:
    if previous is not None and previous not in taken and _port_free(previous):
        return previous
    for _ in range(64):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            return port
    raise Transient("no free TCP port found on 127.0.0.1")


# --------------------------------------------------------------------------------------------


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _delay(streak: int, initial: float, maximum: float) -> float:
    """The first restart is immediate; each further one in a row waits twice as long."""
    if streak <= 1:
        return 0.0
    return min(maximum, initial * 2.0 ** min(streak - 2, 64))


def _check_runnable(spec: _Spec, env: Mapping[str, str], cwd: str) -> str:
    """The executable to run for ``spec`` from ``cwd``, or Permanent if there is none."""
    if spec.working_dir is not None and not os.path.isdir(spec.working_dir):
        raise Permanent(f"workingDir {spec.working_dir!r} is not a directory", reason="InvalidWorkingDir")
    return _resolve_command(spec.command, env, cwd)


def _resolve_command(command: str, env: Mapping[str, str], cwd: str | None) -> str:
    if "/" in command:
        path = command if os.path.isabs(command) or cwd is None else os.path.join(cwd, command)
        if not os.path.exists(path):
            raise Permanent(f"command {command!r} not found", reason="CommandNotFound")
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            raise Permanent(f"command {command!r} is not an executable file", reason="CommandNotExecutable")
        return path
    found = shutil.which(command, path=os.pathsep.join(os.get_exec_path(dict(env))))
    if found is None:
        raise Permanent(f"command {command!r} not found on PATH", reason="CommandNotFound")
    return found


Key = tuple[str, int]

# Children of drivers that were closed while the children ran: kept so that they are reaped
# (here, or by a new driver in this process) when they exit, as subprocess itself would do.
_released: list[subprocess.Popen[bytes]] = []


def _prune_released() -> None:
    _released[:] = [p for p in _released if p.poll() is None]


class ProcessDriver:
    """Driver for ``ProcessSet`` objects (``setpoint.dev/v1alpha1``) on the local host.

    ``clock`` gives wall-clock seconds (it is written to disk, so it must survive a restart of the
    agent); it times spawns, exits and restart delays. ``on_exit(uid)`` is called on the event
    loop when a supervised process exits by itself, so an agent can reconcile that object at once
    instead of at its next resync.
    """

    name = "process"

    def __init__(
        self,
        state_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
        on_exit: Callable[[str], None] | None = None,
        node_name: str | None = None,
        max_log_bytes: int = MAX_LOG_BYTES,
        backoff_reset_seconds: float = BACKOFF_RESET_SECONDS,
        max_replicas: int = MAX_REPLICAS,
    ) -> None:
        if not sys.platform.startswith("linux"):
            raise RuntimeError("ProcessDriver supports Linux only")
        self.state_dir = Path(state_dir)
        self.node_name = node_name or os.uname().nodename
        self._clock = clock
        self._on_exit = on_exit
        self._max_log_bytes = max_log_bytes
        self._backoff_reset = backoff_reset_seconds
        self._max_replicas = max_replicas
        self._records: dict[str, dict[int, _Record]] = {}
        self._children: dict[Key, subprocess.Popen[bytes]] = {}
        self._exits: dict[Key, tuple[int, float, int | None]] = {}  # pid, when, exit code
        self._watches: dict[Key, tuple[int, int]] = {}  # pid, pidfd
        self._locks: dict[str, asyncio.Lock] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---------------------------------------------------------------- the Driver contract

    async def observe(self, obj: Obj) -> ProcessSetObservation:
        spec = _parse(obj, self._max_replicas)
        self._bind_loop()
        records = await self._records_for(spec.uid)
        return await self._snapshot(spec, records)

    async def ensure(self, obj: Obj, observed: ProcessSetObservation | None, op: OperationId) -> ProcessSetObservation:
        """Observes again under the object's lock (``observed`` may be stale) and acts on the
        difference. Raises :class:`ProcessesNotReady` after acting when a replica waits for its
        restart delay or for its port."""
        spec = _parse(obj, self._max_replicas)
        self._bind_loop()
        async with self._lock(spec.uid):
            return await self._ensure(spec, op)

    async def delete(self, obj: Obj, op: OperationId) -> None:
        meta = obj.get("metadata") or {}
        uid = meta.get("uid") if isinstance(meta, Mapping) else None
        if not _valid_uid(uid):
            return  # ensure() never created anything for it
        assert isinstance(uid, str)
        spec = obj.get("spec")
        grace = None
        if isinstance(spec, Mapping):
            with contextlib.suppress(Permanent):
                grace = _number(spec.get("stopGracePeriodSeconds"), "spec.stopGracePeriodSeconds", 5.0)
        await self.delete_uid(uid, grace=grace)

    # ---------------------------------------------------------------- for the agent

    def list_owners(self) -> set[str]:
        """The uids of the ProcessSets this host has state (and maybe processes) for."""
        try:
            return {p.name for p in self.state_dir.iterdir() if p.is_dir() and _valid_uid(p.name)}
        except FileNotFoundError:
            return set()

    async def delete_uid(self, uid: str, *, grace: float | None = None) -> None:
        """Stop every process of the ProcessSet ``uid`` and remove its state (logs included).
        ``grace`` defaults to the stop grace period recorded when each process started."""
        if not _valid_uid(uid):
            raise ValueError(f"not a ProcessSet uid: {uid!r}")
        self._bind_loop()
        async with self._lock(uid):
            records = await self._records_for(uid)
            found = await self._find_pending(uid, records)
            jobs: list[tuple[Key, int, int, float]] = []
            for r, rec in records.items():
                pid, ticks = found.get(r, (rec.pid, rec.start_ticks))
                if pid:
                    jobs.append(((uid, r), pid, ticks, rec.grace if grace is None else grace))
            await self._stop_all(jobs)
            self._records.pop(uid, None)
            for key in [k for k in self._exits if k[0] == uid]:
                del self._exits[key]
            await asyncio.to_thread(shutil.rmtree, self.state_dir / uid, True)
            log.info("stopped the processes of ProcessSet %s and removed its state", uid)

    async def stop_everything(self) -> int:
        """Stop every process this driver supervises and forget their state (a clean stop of a
        development setup: the work it started ends with it). Returns how many ProcessSets."""
        owners = self.list_owners()
        for uid in sorted(owners):
            await self.delete_uid(uid)
        return len(owners)

    def status_for(self, obj: Obj, observed: ProcessSetObservation) -> dict[str, Any]:
        """The ProcessSet ``status`` that reports ``observed``."""
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        desired = spec.get("replicas", 1)
        if isinstance(desired, bool) or not isinstance(desired, int) or desired < 0:
            desired = 0
        generation = meta.get("generation")
        processes: list[dict[str, Any]] = []
        for o in observed.replicas:
            p: dict[str, Any] = {"replica": o.replica, "state": o.state.value, "restarts": o.restarts}
            if o.pid is not None:
                p["pid"] = o.pid
            if o.port is not None:
                p["port"] = o.port
            if o.alive and o.started_at is not None:
                p["startedAt"] = _rfc3339(o.started_at)
            processes.append(p)
        wanted = [o for o in observed.replicas if o.replica < desired]
        ready = sum(1 for o in wanted if o.state is ProcessState.RUNNING)
        live = sum(1 for o in observed.replicas if o.alive)
        extra = sum(1 for o in observed.replicas if o.alive and o.replica >= desired)
        backoff = [o for o in wanted if o.state is ProcessState.BACKOFF]
        starting = [o for o in wanted if o.state is ProcessState.STARTING]
        if ready == desired and not extra:
            cond, reason, message = "True", "AllReplicasReady", f"{ready}/{desired} replicas ready"
        elif backoff:
            o = backoff[0]
            code = "" if o.exit_code is None else f" with code {o.exit_code}"
            cond, reason = "False", "Backoff"
            message = f"replica {o.replica} exited{code} and waits to be restarted (restarts: {o.restarts})"
        elif starting:
            o = starting[0]
            cond, reason = "False", "Starting"
            message = f"replica {o.replica} is starting: nothing listens on port {o.port} yet"
        elif extra:
            cond, reason, message = "False", "ScalingDown", f"{extra} replicas above {desired} still running"
        else:
            cond, reason, message = "False", "ReplicasNotReady", f"{ready}/{desired} replicas ready"
        condition: dict[str, Any] = {"type": "Ready", "status": cond, "reason": reason, "message": message,
                                     "lastTransitionTime": _rfc3339(self._clock())}
        prev_status = obj.get("status")
        previous = prev_status.get("conditions") if isinstance(prev_status, Mapping) else None
        for c in previous if isinstance(previous, list) else []:
            if (isinstance(c, Mapping) and c.get("type") == "Ready" and c.get("status") == cond
                    and isinstance(c.get("lastTransitionTime"), str)):
                condition["lastTransitionTime"] = c["lastTransitionTime"]
        status: dict[str, Any] = {
            "replicas": live,
            "readyReplicas": ready,
            "nodeName": spec.get("nodeName") or self.node_name,
            "processes": processes,
            "conditions": [condition],
        }
        if isinstance(generation, int) and not isinstance(generation, bool):
            status["observedGeneration"] = generation
            condition["observedGeneration"] = generation
        return status

    def close(self) -> None:
        """Stop watching for exits. The processes keep running: a new driver adopts them."""
        self._drop_watches()
        _released.extend(self._children.values())
        self._children.clear()
        _prune_released()

    # ---------------------------------------------------------------- internals

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._drop_watches()
            self._locks.clear()
            self._loop = loop

    def _lock(self, uid: str) -> asyncio.Lock:
        lock = self._locks.get(uid)
        if lock is None:
            lock = self._locks[uid] = asyncio.Lock()
        return lock

    def _dir(self, uid: str) -> Path:
        return self.state_dir / uid

    def _cwd(self, spec: _Spec, *, create: bool = False) -> str:
        """Where the replicas run: ``workingDir``, else a directory of the ProcessSet's own under
        the agent's state directory (removed with it), made when the first replica starts. Never
        the directory the agent was started from, which may hold its credentials: a demo web
        server there would serve them."""
        if spec.working_dir is not None:
            return spec.working_dir
        work = self._dir(spec.uid) / "work"
        if create:
            work.mkdir(parents=True, exist_ok=True)
        return str(work)

    async def _records_for(self, uid: str) -> dict[int, _Record]:
        records = self._records.get(uid)
        if records is None:
            records = await asyncio.to_thread(self._load, uid)
            self._records[uid] = records
        return records

    def _load(self, uid: str) -> dict[int, _Record]:
        out: dict[int, _Record] = {}
        try:
            paths = list(self._dir(uid).iterdir())
        except FileNotFoundError:
            return out
        for path in paths:
            m = _RECORD_RE.fullmatch(path.name)
            if m is None:
                continue
            replica = int(m.group(1))
            try:
                rec = _decode_record(path.read_bytes())
                if rec.replica != replica:
                    raise ValueError(f"names replica {rec.replica}")
            except (OSError, ValueError, msgspec.DecodeError) as e:
                log.warning("unreadable state %s (%s); looking for its process by environment", path, e)
                rec = _Record(replica=replica, pending=True)
            out[replica] = rec
        return out

    async def _find_pending(self, uid: str, records: Mapping[int, _Record]) -> dict[int, tuple[int, int]]:
        """Processes of replicas whose spawn was interrupted before its pid was written down."""
        found: dict[int, tuple[int, int]] = {}
        for r, rec in records.items():
            if rec.pending and not rec.pid:
                hit = await asyncio.to_thread(_find_by_env, uid, r)
                if hit is not None:
                    found[r] = hit
        return found

    def _alive(self, key: Key, pid: int, ticks: int) -> bool:
        """Whether our process ``pid`` lives; reaps it if it is a dead child of ours."""
        child = self._children.get(key)
        if child is not None and child.pid == pid:
            code = child.poll()
            if code is None:
                return True
            del self._children[key]
            self._exits[key] = (pid, self._exit_info(key, pid)[0], code)
            return False
        st = _proc_stat(pid)
        if st is None or st.start_ticks != ticks:
            return False
        if st.state in _DEAD_STATES:
            # A zombie: ours to reap if this process is its parent (a driver restarted in place).
            with contextlib.suppress(ChildProcessError):
                got, status = os.waitpid(pid, os.WNOHANG)
                if got == pid:
                    when = self._exit_info(key, pid)[0]
                    self._exits[key] = (pid, when, os.waitstatus_to_exitcode(status))
            return False
        return True

    def _exit_info(self, key: Key, pid: int) -> tuple[float, int | None]:
        seen = self._exits.get(key)
        if seen is not None and seen[0] == pid:
            return seen[1], seen[2]
        return self._clock(), None

    def _next_attempt(self, rec: _Record, exited_at: float, spec: _Spec) -> tuple[int, float]:
        ran = exited_at - rec.started_at
        streak = 1 if ran >= max(self._backoff_reset, spec.backoff_max) else rec.streak + 1
        return streak, exited_at + _delay(streak, spec.backoff_initial, spec.backoff_max)

    async def _snapshot(self, spec: _Spec, records: Mapping[int, _Record]) -> ProcessSetObservation:
        uid = spec.uid
        found = await self._find_pending(uid, records)
        listening = _listening_ports() if spec.port_env else set()
        now = self._clock()
        out: list[ReplicaObservation] = []
        for r in sorted(set(records) | set(range(spec.replicas))):
            rec = records.get(r)
            if rec is None:
                out.append(ReplicaObservation(replica=r, state=ProcessState.EXITED))
                continue
            pid, ticks = found.get(r, (rec.pid, rec.start_ticks))
            if pid and self._alive((uid, r), pid, ticks):
                state = ProcessState.RUNNING
                if spec.port_env and rec.port is not None and rec.port not in listening:
                    state = ProcessState.STARTING
                out.append(ReplicaObservation(
                    replica=r, state=state, pid=pid, port=rec.port, started_at=rec.started_at or None,
                    restarts=rec.restarts, spec_hash=rec.spec_hash))
                continue
            if r >= spec.replicas:
                continue  # a dead extra: nothing to report
            exited_at, code, retry_at = rec.exited_at, rec.exit_code, rec.retry_at
            if pid:  # died since we last acted
                exited_at, code = self._exit_info((uid, r), pid)
                retry_at = self._next_attempt(rec, exited_at, spec)[1]
            waiting = (rec.spec_hash == spec.spec_hash and exited_at is not None
                       and retry_at is not None and retry_at > max(now, exited_at))
            out.append(ReplicaObservation(
                replica=r, state=ProcessState.BACKOFF if waiting else ProcessState.EXITED, port=rec.port,
                restarts=rec.restarts, spec_hash=rec.spec_hash, exit_code=code,
                retry_at=retry_at if waiting else None))
        return ProcessSetObservation(uid=uid, replicas=tuple(out), observed_at=now)

    async def _ensure(self, spec: _Spec, op: OperationId) -> ProcessSetObservation:
        uid = spec.uid
        records = await self._records_for(uid)
        writes: dict[int, _Record] = {}

        # Processes whose spawn was interrupted before their pid was written (or whose record was
        # lost): adopt them; a lost record's spec hash is unknown, so they count as current.
        for r, (pid, ticks) in (await self._find_pending(uid, records)).items():
            writes[r] = msgspec.structs.replace(records[r], pid=pid, start_ticks=ticks, started_at=self._clock(),
                                                pending=False, spec_hash=records[r].spec_hash or spec.spec_hash)
            log.info("adopted process %d of %s/%s replica %d", pid, spec.namespace, spec.name, r)
        await self._persist(uid, writes)

        now = self._clock()
        stops: list[tuple[Key, int, int, float]] = []
        drop: list[int] = []
        starts: dict[int, _Record] = {}
        writes = {}
        for r, rec in sorted(records.items()):
            if r >= spec.replicas:
                if rec.pid:
                    stops.append(((uid, r), rec.pid, rec.start_ticks, spec.grace))
                drop.append(r)
        for r in range(spec.replicas):
            key = (uid, r)
            known = records.get(r)
            rec = known if known is not None else _Record(replica=r, spec_hash=spec.spec_hash)
            if rec.pid and self._alive(key, rec.pid, rec.start_ticks):
                if rec.spec_hash == spec.spec_hash:
                    continue
                stops.append((key, rec.pid, rec.start_ticks, spec.grace))
                starts[r] = self._fresh(rec, spec)
                continue
            if rec.pid:  # died since we last acted; its session may have left processes behind
                stops.append((key, rec.pid, rec.start_ticks, spec.grace))
                exited_at, code = self._exit_info(key, rec.pid)
                streak, retry_at = self._next_attempt(rec, exited_at, spec)
                rec = msgspec.structs.replace(rec, pid=0, start_ticks=0, exited_at=exited_at, exit_code=code,
                                              streak=streak, retry_at=retry_at)
                writes[r] = rec
                log.info("%s/%s replica %d exited (code %s); restart %d in a row",
                         spec.namespace, spec.name, r, code, streak)
            if rec.spec_hash != spec.spec_hash:
                starts[r] = self._fresh(rec, spec)
            elif rec.exited_at is None:  # never ran (a first spawn, or one that was interrupted)
                starts[r] = rec
            elif rec.retry_at is None or rec.retry_at <= max(now, rec.exited_at):
                starts[r] = msgspec.structs.replace(rec, restarts=rec.restarts + 1)

        if starts:  # a command that cannot run must not cost the processes that do
            await asyncio.to_thread(lambda: _check_runnable(spec, self._child_env(spec, 0, None), self._cwd(spec)))
        await self._stop_all(stops)
        if drop:
            await asyncio.to_thread(self._remove_replicas, uid, drop)
            for r in drop:
                records.pop(r, None)
                self._exits.pop((uid, r), None)
        await self._persist(uid, writes)
        for _, rec in sorted(starts.items()):
            await self._start(spec, rec, op)
        for r, rec in records.items():
            if rec.pid:
                self._watch((uid, r), rec.pid, rec.start_ticks)
        await asyncio.to_thread(self._rotate_logs, uid, list(records))

        observed = await self._snapshot(spec, records)
        now = self._clock()
        waiting = [o for o in observed.replicas if o.state is ProcessState.BACKOFF and o.retry_at is not None]
        if waiting:
            o = min(waiting, key=lambda x: x.retry_at or 0.0)
            left = max(0.0, (o.retry_at or now) - now)
            raise ProcessesNotReady(
                f"{spec.namespace}/{spec.name} replica {o.replica} is in restart backoff for {left:.3g}s more",
                retry_after=left, observed=observed, reason="Backoff")
        starting = [o for o in observed.replicas if o.state is ProcessState.STARTING]
        if starting:
            age = min(max(0.0, now - (o.started_at or now)) for o in starting)
            raise ProcessesNotReady(
                f"{spec.namespace}/{spec.name}: {len(starting)} replicas not listening on their ports yet",
                retry_after=min(5.0, 0.1 + age / 4), observed=observed, reason="Starting")
        return observed

    @staticmethod
    def _fresh(rec: _Record, spec: _Spec) -> _Record:
        """The record for a process of a new spec: restarts and backoff start over."""
        return msgspec.structs.replace(rec, spec_hash=spec.spec_hash, pid=0, start_ticks=0, restarts=0, streak=0,
                                       exited_at=None, exit_code=None, retry_at=None)

    async def _persist(self, uid: str, records: Mapping[int, _Record]) -> None:
        if not records:
            return
        d = self._dir(uid)
        await asyncio.to_thread(_write_files, [(d / f"{r}.json", _encode(rec)) for r, rec in records.items()])
        self._records.setdefault(uid, {}).update(records)

    def _remove_replicas(self, uid: str, replicas: Iterable[int]) -> None:
        d = self._dir(uid)
        for r in replicas:
            for name in (f"{r}.json", f"{r}.log", f"{r}.log.1"):
                with contextlib.suppress(FileNotFoundError):
                    (d / name).unlink()

    def _rotate_logs(self, uid: str, replicas: Iterable[int]) -> None:
        d = self._dir(uid)
        for r in replicas:
            path = d / f"{r}.log"
            try:
                if path.stat().st_size <= self._max_log_bytes:
                    continue
                shutil.copyfile(path, d / f"{r}.log.1")
                os.truncate(path, 0)  # the process appends (O_APPEND): it goes on at the new end
            except FileNotFoundError:
                continue

    async def _start(self, spec: _Spec, rec: _Record, op: OperationId) -> None:
        uid, r = spec.uid, rec.replica
        records = self._records.setdefault(uid, {})
        port = None
        if spec.port_env:
            taken = {x.port for u, recs in self._records.items() for x in recs.values()
                     if x.port is not None and not (u == uid and x.replica == r)}
            port = await asyncio.to_thread(_pick_port, rec.port, taken)
        rec = msgspec.structs.replace(rec, namespace=spec.namespace, name=spec.name, port=port, grace=spec.grace)
        env = self._child_env(spec, r, port)
        _prune_released()
        try:
            proc, rec = await asyncio.to_thread(self._spawn, spec, rec, env, op)
        except asyncio.CancelledError:
            self._records.pop(uid, None)  # the spawn may still finish: reload what it wrote
            raise
        records[r] = rec
        self._children[(uid, r)] = proc
        self._exits.pop((uid, r), None)
        log.info("started %s/%s replica %d: pid %d%s", spec.namespace, spec.name, r, rec.pid,
                 f", port {port}" if port is not None else "")
        self._watch((uid, r), rec.pid, rec.start_ticks)

    @staticmethod
    def _child_env(spec: _Spec, replica: int, port: int | None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(spec.env)
        env["SETPOINT_PROCESSSET"] = f"{spec.namespace}/{spec.name}"
        env["SETPOINT_PROCESSSET_UID"] = spec.uid
        env["SETPOINT_REPLICA"] = str(replica)
        if spec.port_env and port is not None:
            env[spec.port_env] = str(port)
        return env

    def _spawn(self, spec: _Spec, rec: _Record, env: dict[str, str], op: OperationId,
               ) -> tuple[subprocess.Popen[bytes], _Record]:
        """Runs in a worker thread: record the intent, spawn, record the pid."""
        cwd = self._cwd(spec, create=True)
        executable = _check_runnable(spec, env, cwd)
        d = self._dir(spec.uid)
        path = d / f"{rec.replica}.json"
        try:
            before: bytes | None = path.read_bytes()
        except FileNotFoundError:
            before = None
        _write_files([(path, _encode(msgspec.structs.replace(rec, pid=0, start_ticks=0, pending=True)))])
        log_path = d / f"{rec.replica}.log"
        try:
            with open(log_path, "ab") as out:
                out.write(f"--- setpoint {_rfc3339(self._clock())}: starting {spec.command!r} "
                          f"({op}, restarts: {rec.restarts})\n".encode())
                out.flush()
                proc = subprocess.Popen(
                    [spec.command, *spec.args], executable=executable, stdin=subprocess.DEVNULL,
                    stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                    start_new_session=True, close_fds=True)
        except BaseException as e:
            if before is None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            else:
                _write_files([(path, before)])
            if isinstance(e, FileNotFoundError | NotADirectoryError) and e.filename == spec.working_dir:
                raise Permanent(f"workingDir {spec.working_dir!r} is not a directory",
                                reason="InvalidWorkingDir") from e
            if isinstance(e, FileNotFoundError):
                raise Permanent(f"command {spec.command!r} not found", reason="CommandNotFound") from e
            if isinstance(e, PermissionError) or (isinstance(e, OSError) and e.errno == errno.ENOEXEC):
                raise Permanent(f"command {spec.command!r} cannot be executed: {e.strerror}",
                                reason="CommandNotExecutable") from e
            if isinstance(e, OSError):
                raise Transient(f"could not start {spec.command!r}: {e}") from e
            raise
        st = _proc_stat(proc.pid)  # not reaped yet, so readable even if it exited already
        rec = msgspec.structs.replace(rec, pid=proc.pid, start_ticks=st.start_ticks if st else 0,
                                      started_at=self._clock(), pending=False)
        _write_files([(path, _encode(rec))])
        return proc, rec

    async def _stop_all(self, jobs: list[tuple[Key, int, int, float]]) -> None:
        for key, _, _, _ in jobs:
            self._unwatch(key)
        results = await asyncio.gather(*(self._terminate(*job) for job in jobs), return_exceptions=True)
        for res in results:
            if isinstance(res, BaseException):
                raise res

    async def _terminate(self, key: Key, pid: int, ticks: int, grace: float) -> None:
        """SIGTERM every process of the session, SIGKILL what is left after ``grace``."""
        fds = await asyncio.to_thread(_open_session, pid, ticks)
        try:
            if fds:
                _signal_fds(fds.values(), signal.SIGTERM)
                await _wait_exited(fds.values(), grace)
            for _ in range(5):
                fds.update(await asyncio.to_thread(_open_session, pid, ticks, fds))  # forked meanwhile
                left = [fd for fd in fds.values() if not _pidfd_exited(fd)]
                if not left:
                    break
                _signal_fds(left, signal.SIGKILL)
                await _wait_exited(left, KILL_TIMEOUT)
            else:
                raise Transient(f"processes of session {pid} still run after SIGKILL", uncertain=True)
        finally:
            for fd in fds.values():
                os.close(fd)
        child = self._children.pop(key, None)
        if child is not None and child.pid == pid:
            child.poll()
        elif child is not None:
            self._children[key] = child
        self._alive(key, pid, ticks)  # reaps a zombie child left by an earlier driver in this process

    # ---------------------------------------------------------------- exit watches

    def _watch(self, key: Key, pid: int, ticks: int) -> None:
        current = self._watches.get(key)
        if current is not None:
            if current[0] == pid:
                return
            self._unwatch(key)
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return
        st = _proc_stat(pid)
        if st is None or st.start_ticks != ticks:
            os.close(fd)
            return
        assert self._loop is not None
        self._loop.add_reader(fd, self._exited, key, pid)
        self._watches[key] = (pid, fd)

    def _unwatch(self, key: Key) -> None:
        current = self._watches.pop(key, None)
        if current is None:
            return
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(current[1])
        os.close(current[1])

    def _drop_watches(self) -> None:
        for key in list(self._watches):
            self._unwatch(key)

    def _exited(self, key: Key, pid: int) -> None:
        self._unwatch(key)
        self._exits[key] = (pid, self._clock(), None)
        child = self._children.get(key)
        if child is not None and child.pid == pid and child.poll() is not None:
            del self._children[key]
            self._exits[key] = (pid, self._exits[key][1], child.returncode)
        if self._on_exit is not None:
            try:
                self._on_exit(key[0])
            except Exception:
                log.exception("on_exit callback failed")
