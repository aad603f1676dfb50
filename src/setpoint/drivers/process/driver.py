"""The ProcessSet driver: observe, plan, act, under a lock per ProcessSet.

See the package's docstring for what it guarantees; :mod:`.plan` holds the decisions, this
module gathers what the host shows, carries the plan out and keeps the exit watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from setpoint.drivers.base import Obj, OperationId, Permanent, Transient
from setpoint.drivers.process.observation import (
    ProcessesNotReady,
    ProcessSetObservation,
    ProcessState,
    ReplicaObservation,
    rfc3339,
    status,
)
from setpoint.drivers.process.plan import Exit, next_attempt, plan
from setpoint.drivers.process.procfs import (
    DEAD_STATES,
    find_by_env,
    listening_ports,
    open_session,
    pick_port,
    pidfd_exited,
    proc_stat,
    signal_fds,
    wait_exited,
)
from setpoint.drivers.process.records import RECORD_RE, Record, decode_record, encode_record, write_files
from setpoint.drivers.process.spec import MAX_REPLICAS, Spec, number, parse, valid_uid

log = logging.getLogger(__name__)

MAX_LOG_BYTES = 10 * 1024 * 1024
BACKOFF_RESET_SECONDS = 10.0
KILL_TIMEOUT = 5.0


def _check_runnable(spec: Spec, env: Mapping[str, str], cwd: str) -> str:
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
        self._records: dict[str, dict[int, Record]] = {}
        self._children: dict[Key, subprocess.Popen[bytes]] = {}
        self._exits: dict[Key, tuple[int, float, int | None]] = {}  # pid, when, exit code
        self._watches: dict[Key, tuple[int, int]] = {}  # pid, pidfd
        self._locks: dict[str, asyncio.Lock] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---------------------------------------------------------------- the Driver contract

    async def observe(self, obj: Obj) -> ProcessSetObservation:
        spec = parse(obj, self._max_replicas)
        self._bind_loop()
        records = await self._records_for(spec.uid)
        return await self._snapshot(spec, records)

    async def ensure(self, obj: Obj, observed: ProcessSetObservation | None, op: OperationId) -> ProcessSetObservation:
        """Observes again under the object's lock (``observed`` may be stale) and acts on the
        difference. Raises :class:`ProcessesNotReady` after acting when a replica waits for its
        restart delay or for its port."""
        spec = parse(obj, self._max_replicas)
        self._bind_loop()
        async with self._lock(spec.uid):
            return await self._ensure(spec, op)

    async def delete(self, obj: Obj, op: OperationId) -> None:
        meta = obj.get("metadata") or {}
        uid = meta.get("uid") if isinstance(meta, Mapping) else None
        if not valid_uid(uid):
            return  # ensure() never created anything for it
        assert isinstance(uid, str)
        spec = obj.get("spec")
        grace = None
        if isinstance(spec, Mapping):
            with contextlib.suppress(Permanent):
                grace = number(spec.get("stopGracePeriodSeconds"), "spec.stopGracePeriodSeconds", 5.0)
        await self.delete_uid(uid, grace=grace)

    # ---------------------------------------------------------------- for the agent

    def list_owners(self) -> set[str]:
        """The uids of the ProcessSets this host has state (and maybe processes) for."""
        try:
            return {p.name for p in self.state_dir.iterdir() if p.is_dir() and valid_uid(p.name)}
        except FileNotFoundError:
            return set()

    async def describe_uid(self, uid: str) -> dict[str, Any]:
        """What the state of ProcessSet ``uid`` says about it, for the reaper: its
        ``owner`` ("namespace/name", "" if unknown), how long ago its oldest live replica
        started (``age_seconds``, None if none runs) and how many replicas run (``running``)."""
        records = await self._records_for(uid)
        owner = next((f"{r.namespace}/{r.name}" for r in records.values() if r.name), "")
        started = [r.started_at for r in records.values()
                   if r.pid and r.started_at and self._alive((uid, r.replica), r.pid, r.start_ticks)]
        age = max(0.0, self._clock() - min(started)) if started else None
        return {"owner": owner, "age_seconds": age, "running": len(started)}

    async def delete_uid(self, uid: str, *, grace: float | None = None) -> None:
        """Stop every process of the ProcessSet ``uid`` and remove its state (logs included).
        ``grace`` defaults to the stop grace period recorded when each process started."""
        if not valid_uid(uid):
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
        return status(obj, observed, node_name=self.node_name, now=self._clock())

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

    def _cwd(self, spec: Spec, *, create: bool = False) -> str:
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

    async def _records_for(self, uid: str) -> dict[int, Record]:
        records = self._records.get(uid)
        if records is None:
            records = await asyncio.to_thread(self._load, uid)
            self._records[uid] = records
        return records

    def _load(self, uid: str) -> dict[int, Record]:
        out: dict[int, Record] = {}
        try:
            paths = list(self._dir(uid).iterdir())
        except FileNotFoundError:
            return out
        for path in paths:
            m = RECORD_RE.fullmatch(path.name)
            if m is None:
                continue
            replica = int(m.group(1))
            try:
                rec = decode_record(path.read_bytes())
                if rec.replica != replica:
                    raise ValueError(f"names replica {rec.replica}")
            except (OSError, ValueError, msgspec.DecodeError) as e:
                log.warning("unreadable state %s (%s); looking for its process by environment", path, e)
                rec = Record(replica=replica, pending=True)
            out[replica] = rec
        return out

    async def _find_pending(self, uid: str, records: Mapping[int, Record]) -> dict[int, tuple[int, int]]:
        """Processes of replicas whose spawn was interrupted before its pid was written down."""
        found: dict[int, tuple[int, int]] = {}
        for r, rec in records.items():
            if rec.pending and not rec.pid:
                hit = await asyncio.to_thread(find_by_env, uid, r)
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
        st = proc_stat(pid)
        if st is None or st.start_ticks != ticks:
            return False
        if st.state in DEAD_STATES:
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

    async def _snapshot(self, spec: Spec, records: Mapping[int, Record]) -> ProcessSetObservation:
        uid = spec.uid
        found = await self._find_pending(uid, records)
        listening = listening_ports() if spec.port_env else set()
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
                retry_at = next_attempt(rec, exited_at, spec, self._backoff_reset)[1]
            waiting = (rec.spec_hash == spec.spec_hash and exited_at is not None
                       and retry_at is not None and retry_at > max(now, exited_at))
            out.append(ReplicaObservation(
                replica=r, state=ProcessState.BACKOFF if waiting else ProcessState.EXITED, port=rec.port,
                restarts=rec.restarts, spec_hash=rec.spec_hash, exit_code=code,
                retry_at=retry_at if waiting else None))
        return ProcessSetObservation(uid=uid, replicas=tuple(out), observed_at=now)

    async def _ensure(self, spec: Spec, op: OperationId) -> ProcessSetObservation:
        uid = spec.uid
        records = await self._records_for(uid)
        writes: dict[int, Record] = {}

        # Processes whose spawn was interrupted before their pid was written (or whose record was
        # lost): adopt them; a lost record's spec hash is unknown, so they count as current.
        for r, (pid, ticks) in (await self._find_pending(uid, records)).items():
            writes[r] = msgspec.structs.replace(records[r], pid=pid, start_ticks=ticks, started_at=self._clock(),
                                                pending=False, spec_hash=records[r].spec_hash or spec.spec_hash)
            log.info("adopted process %d of %s/%s replica %d", pid, spec.namespace, spec.name, r)
        await self._persist(uid, writes)

        exits: dict[int, Exit] = {}
        for r, rec in records.items():
            if rec.pid and r < spec.replicas and not self._alive((uid, r), rec.pid, rec.start_ticks):
                exits[r] = Exit(*self._exit_info((uid, r), rec.pid))
        todo = plan(records, spec, self._clock(), exits, self._backoff_reset)
        for r, code, streak in todo.exits:
            log.info("%s/%s replica %d exited (code %s); restart %d in a row",
                     spec.namespace, spec.name, r, code, streak)
        stops = [((uid, s.replica), s.pid, s.ticks, spec.grace) for s in todo.stops]
        drop, starts, writes = todo.drop, todo.starts, todo.writes

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

    async def _persist(self, uid: str, records: Mapping[int, Record]) -> None:
        if not records:
            return
        d = self._dir(uid)
        await asyncio.to_thread(write_files, [(d / f"{r}.json", encode_record(rec)) for r, rec in records.items()])
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

    async def _start(self, spec: Spec, rec: Record, op: OperationId) -> None:
        uid, r = spec.uid, rec.replica
        records = self._records.setdefault(uid, {})
        port = None
        if spec.port_env:
            taken = {x.port for u, recs in self._records.items() for x in recs.values()
                     if x.port is not None and not (u == uid and x.replica == r)}
            port = await asyncio.to_thread(pick_port, rec.port, taken)
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
    def _child_env(spec: Spec, replica: int, port: int | None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(spec.env)
        env["SETPOINT_PROCESSSET"] = f"{spec.namespace}/{spec.name}"
        env["SETPOINT_PROCESSSET_UID"] = spec.uid
        env["SETPOINT_REPLICA"] = str(replica)
        if spec.port_env and port is not None:
            env[spec.port_env] = str(port)
        return env

    def _spawn(self, spec: Spec, rec: Record, env: dict[str, str], op: OperationId,
               ) -> tuple[subprocess.Popen[bytes], Record]:
        """Runs in a worker thread: record the intent, spawn, record the pid."""
        cwd = self._cwd(spec, create=True)
        executable = _check_runnable(spec, env, cwd)
        d = self._dir(spec.uid)
        path = d / f"{rec.replica}.json"
        try:
            before: bytes | None = path.read_bytes()
        except FileNotFoundError:
            before = None
        write_files([(path, encode_record(msgspec.structs.replace(rec, pid=0, start_ticks=0, pending=True)))])
        log_path = d / f"{rec.replica}.log"
        try:
            with open(log_path, "ab") as out:
                out.write(f"--- setpoint {rfc3339(self._clock())}: starting {spec.command!r} "
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
                write_files([(path, before)])
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
        st = proc_stat(proc.pid)  # not reaped yet, so readable even if it exited already
        rec = msgspec.structs.replace(rec, pid=proc.pid, start_ticks=st.start_ticks if st else 0,
                                      started_at=self._clock(), pending=False)
        write_files([(path, encode_record(rec))])
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
        fds = await asyncio.to_thread(open_session, pid, ticks)
        try:
            if fds:
                signal_fds(fds.values(), signal.SIGTERM)
                await wait_exited(fds.values(), grace)
            for _ in range(5):
                fds.update(await asyncio.to_thread(open_session, pid, ticks, fds))  # forked meanwhile
                left = [fd for fd in fds.values() if not pidfd_exited(fd)]
                if not left:
                    break
                signal_fds(left, signal.SIGKILL)
                await wait_exited(left, KILL_TIMEOUT)
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
        st = proc_stat(pid)
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
