"""A real HAProxy, kept serving exactly the desired backends at runtime, without reloads.

Each LoadBalancer gets its own HAProxy process, started by this driver (daemonized, so it
outlives an agent restart: a balancer must not stop serving because its manager did) with its
own configuration file and admin socket under the agent's state directory.

A sync is observe-then-ensure over the Runtime API: ``show servers state`` says what is, then
only the differences are applied. A new backend is added (``add server``: it starts in
maintenance), then made ready and its health check enabled. A backend that goes away is drained
first (no new connections, the current ones finish), and removed (maintenance, then ``del
server``) once its sessions are gone or ``drainSeconds`` passed. The configuration file is
rewritten atomically with the whole set on every change, so an HAProxy that restarts, or is
killed and started again, comes back with the current set before the first runtime command.

Only a frontend change (address, port, mode, timeouts...) needs a new process: it is started
with ``-x`` (the listening sockets are handed over through the admin socket) and ``-sf`` (the
old process finishes its connections, then exits), the way HAProxy's own reloads avoid dropping
connections. The new process is started from a file of its own, which replaces the
configuration file only once it runs: when it cannot start (its port is taken, HAProxy refuses
the new frontend), the old one keeps serving and keeps being synced, the configuration file
still says what runs (what a restart would serve), and the sync reports the frontend it could
not apply.

An admin socket that is gone (its file removed, or nothing listening on it any more) leaves a
process that can never be changed again: a new HAProxy is started from the configuration file
(without ``-x``, which needs that socket; both bind the port with ``SO_REUSEPORT`` meanwhile) and
takes over with ``-sf``. A socket that does not answer (a stopped or overloaded process) is only
retried: that process may come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from setpoint.agent.errors import DriverError, ErrorClass, NotReady, Permanent, Transient
from setpoint.backoff import Backoff
from setpoint.drivers.loadbalancer.exits import ExitWatch, exited, instance_dirs
from setpoint.drivers.loadbalancer.model import Backend, Desired, Frontend, Note, Observed, ServerState
from setpoint.drivers.loadbalancer.runtime import RuntimeAPI, RuntimeAPIError
from setpoint.files import write_atomic

log = logging.getLogger(__name__)
_BY_CLASS: dict[ErrorClass, type[DriverError]] = {
    ErrorClass.TRANSIENT: Transient, ErrorClass.NOT_READY: NotReady, ErrorClass.PERMANENT: Permanent}

BACKEND = "be"
START_TIMEOUT = 10.0


class Running(msgspec.Struct):
    """What this driver started: written beside the configuration, read after an agent restart."""

    pid: int
    frontend: str  # the frontend digest the process was started with
    # That frontend itself: what the sync keeps driving, and the configuration file keeps saying,
    # while a new one cannot start.
    spec: Frontend | None = None


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def server_options(fe: Frontend) -> str:
    """Health checks, and a server whose connection fails is marked down at once, not after
    ``fall`` checks: a replica that was just stopped (before the sync that removes it) costs
    one retry, not a request to it per retry until the checks notice."""
    h = fe.health
    return (f"check inter {_ms(h.interval)} rise {h.rise} fall {h.fall} "
            "observe layer4 error-limit 1 on-error mark-down")


def render(desired: Desired, socket_path: Path, title: str, pidfile: Path | None = None) -> str:
    """The whole configuration: frontend, backend and every current server. With ``pidfile``, an
    HAProxy started from this file alone (by hand, by an init system) says where it runs, and
    the agent adopts it."""
    fe = desired.frontend
    lines = [
        f"# {title}: written by setpoint, replaced whole on every change.",
        "global",
        f"    stats socket {socket_path} mode 600 level admin expose-fd listeners",
        "    stats timeout 30s",
        *([f"    pidfile {pidfile}"] if pidfile is not None else []),
        "defaults",
        f"    mode {fe.mode}",
        f"    timeout connect {_ms(fe.connect_timeout)}",
        f"    timeout client {_ms(fe.client_timeout)}",
        f"    timeout server {_ms(fe.server_timeout)}",
        f"    retries {fe.retries}",
        "    option redispatch 1",
        "frontend fe",
        f"    bind {fe.address}:{fe.port}",
        f"    default_backend {BACKEND}",
        f"backend {BACKEND}",
        f"    balance {fe.balance}",
    ]
    if fe.mode == "http":
        # A backend that has just started (not listening yet) or is stopping fails before it
        # answers: try another one instead of failing the client's request.
        lines.append("    retry-on conn-failure empty-response")
        if fe.health.path:
            lines.append(f"    option httpchk GET {fe.health.path}")
    opts = server_options(fe)
    lines += [f"    server {b.name} {b.address}:{b.port} {opts}" for b in desired.backends]
    return "\n".join(lines) + "\n"


def find_haproxy(binary: str = "haproxy") -> str | None:
    """``binary`` on PATH, or where Debian's package puts it (``/usr/sbin``, not on every user's PATH)."""
    return shutil.which(binary) or shutil.which(binary, path="/usr/local/sbin:/usr/sbin:/sbin")


def _pid_alive(pid: int, *configs: Path) -> bool:
    """Whether ``pid`` is an HAProxy started from one of ``configs`` (not a pid reused by
    something else)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return stat[0] != "Z" and any(str(c).encode() in cmdline for c in configs)


# HAProxy refuses a UNIX socket path longer than this (the kernel's limit is 108 bytes).
MAX_SOCKET_PATH = 97


def _socket_path(wanted: Path) -> Path:
    """``wanted``, or, when it is too long for a UNIX socket, a short path in a directory of this
    user's under the temporary directory, private (0700) like the state directory."""
    if len(str(wanted)) <= MAX_SOCKET_PATH:
        return wanted
    short = Path(tempfile.gettempdir()) / f"setpoint-{os.getuid()}"
    short.mkdir(mode=0o700, exist_ok=True)
    st = short.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise Permanent(f"{short} must belong to this user and be private (mode 0700) to hold admin sockets",
                        reason="UnsafeSocketDirectory")
    return short / (hashlib.sha256(str(wanted).encode()).hexdigest()[:20] + ".sock")


class Instance:
    """The files of one balancer."""

    def __init__(self, root: Path, uid: str) -> None:
        self.dir = root / uid
        self.config = self.dir / "haproxy.cfg"
        # A new frontend is tried from a file of its own: until its process runs, haproxy.cfg
        # keeps saying what runs.
        self.candidate = self.dir / "haproxy.next.cfg"
        self.socket = _socket_path(self.dir / "admin.sock")
        self.pidfile = self.dir / "haproxy.pid"
        self.running_file = self.dir / "running.json"
        self.log = self.dir / "haproxy.log"  # what HAProxy said at its last start
        self.api = RuntimeAPI(self.socket)
        self.drains: dict[str, float] = {}  # server -> when its drain began (monotonic)
        # Frontends HAProxy refused for good (invalid): not started again until the spec changes.
        self.refused: dict[str, DriverError] = {}

    def running(self) -> Running | None:
        try:
            recorded: Running | None = msgspec.json.decode(self.running_file.read_bytes(), type=Running)
        except (OSError, msgspec.DecodeError):
            recorded = None
        if recorded is not None and _pid_alive(recorded.pid, self.config, self.candidate):
            return recorded
        # Started again from the configuration file alone while no agent ran (by hand, by an init
        # system): the pidfile the file names says where. It serves the frontend last recorded,
        # because the file always says the frontend that runs.
        try:
            pid = int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        if not _pid_alive(pid, self.config, self.candidate):
            return None
        if recorded is None:
            return Running(pid=pid, frontend="")  # unknown: a frontend sync replaces it
        return Running(pid=pid, frontend=recorded.frontend, spec=recorded.spec)


class HAProxyDriver:
    name = "haproxy"

    def __init__(self, state_dir: Path, *, binary: str = "haproxy",
                 on_exit: Callable[[str], None] | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.binary = binary
        self.on_exit = on_exit
        self._instances: dict[str, Instance] = {}
        self.exits = ExitWatch()

    def _instance(self, uid: str) -> Instance:
        inst = self._instances.get(uid)
        if inst is None:
            inst = self._instances[uid] = Instance(self.state_dir, uid)
        return inst

    # ---- observe -----------------------------------------------------------------------------

    async def observe(self, uid: str) -> Observed:
        inst = self._instance(uid)
        running = inst.running()
        if running is None:
            return Observed(running=False, pid=None, frontend_digest=None, servers=())
        self._watch(uid, running.pid)
        servers = await inst.api.servers(BACKEND)
        states = []
        for name, server in sorted(servers.items()):
            state = server.state
            if name != f"{server.address}:{server.port}":
                state = "FOREIGN"  # a server this driver did not name: removed like any extra one
            states.append(ServerState(Backend(server.address, server.port), state))
        draining = sum(1 for s in states if s.state == "DRAIN")
        return Observed(running=True, pid=running.pid, frontend_digest=running.frontend,
                        servers=tuple(states), draining=draining)

    # ---- ensure ------------------------------------------------------------------------------

    async def ensure(self, uid: str, desired: Desired, title: str) -> Observed:
        """Make the balancer serve ``desired``; returns what it serves afterwards. A backend
        still draining is left in place (``Observed.draining``): sync again later."""
        inst = self._instance(uid)
        inst.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(inst.dir, 0o700)
        running = inst.running()
        if running is None:
            await self._write(inst, desired, title)
            await self._start(uid, inst, desired.frontend, replacing=None)
            return await self.observe(uid)
        if running.frontend != desired.frontend.digest():
            return await self._change_frontend(uid, inst, running, desired, title)
        await self._write(inst, desired, title)
        notes: tuple[Note, ...] = ()
        try:
            await self._sync(inst, desired)
        except RuntimeAPIError as e:
            if not e.gone:
                raise
            notes = (await self._replace_unmanageable(uid, inst, running, desired.frontend, e),)
        return dataclasses.replace(await self.observe(uid), notes=notes)

    async def _write(self, inst: Instance, desired: Desired, title: str, path: Path | None = None) -> None:
        text = render(desired, inst.socket, title, inst.pidfile)
        await asyncio.to_thread(write_atomic, path or inst.config, text.encode(), 0o600)

    async def _change_frontend(self, uid: str, inst: Instance, running: Running, desired: Desired,
                               title: str) -> Observed:
        """A new process for the new frontend, taking over from the running one; or, when it
        cannot start, the running one kept in step with the backends (the file written with its
        frontend, the one that runs), and the reason in ``Observed.frontend_error``."""
        fe = desired.frontend
        error = inst.refused.get(fe.digest())
        if error is None:
            log.info("%s: the frontend changed, starting a new HAProxy that takes over from pid %d",
                     title, running.pid)
            await self._write(inst, desired, title, inst.candidate)
            try:
                await self._start(uid, inst, fe, replacing=running.pid, config=inst.candidate)
            except DriverError as e:
                now = await asyncio.to_thread(inst.running)
                if now is not None and now.pid != running.pid:
                    # Started and recorded, only its socket was late: the new process serves now
                    # (the old one was told to stop), so the file is the new frontend's.
                    await self._write(inst, desired, title)
                    raise
                error = e
                if isinstance(e, Permanent):
                    inst.refused[fe.digest()] = e
            else:
                await self._write(inst, desired, title)
                observed = await self.observe(uid)
                return dataclasses.replace(observed, notes=(Note(
                    "Normal", "FrontendChanged",
                    f"the frontend changed: a new HAProxy (pid {observed.pid}) serves {fe.address}:{fe.port} "
                    f"and took over from pid {running.pid}, which finishes its connections"),))
            finally:
                with contextlib.suppress(FileNotFoundError):
                    inst.candidate.unlink()
        if running.spec is None:
            raise error  # what runs is not known well enough to sync it
        old = Desired(running.spec, desired.backends, desired.drain_seconds)
        await self._write(inst, old, title)
        await self._sync(inst, old)
        # By class, not type(error): a subclass (RuntimeAPIError) need not take the same arguments.
        kept = _BY_CLASS[error.error_class](
            f"{error.message}; HAProxy pid {running.pid} keeps serving {old.frontend.address}:"
            f"{old.frontend.port} with the current backends", reason=error.reason,
            retry_after=error.retry_after, uncertain=error.uncertain)
        return dataclasses.replace(await self.observe(uid), frontend_error=kept)

    async def _replace_unmanageable(self, uid: str, inst: Instance, running: Running, frontend: Frontend,
                                    error: RuntimeAPIError) -> Note:
        log.warning("%s; starting a new HAProxy to take over from pid %d", error.message, running.pid)
        await self._start(uid, inst, frontend, replacing=running.pid, handover=False)
        now = inst.running()
        return Note("Warning", "AdminSocketLost",
                    f"{error.message}: HAProxy pid {running.pid} could not be managed any more; a new HAProxy "
                    f"(pid {now.pid if now else '?'}) took over from the configuration file, and the old one "
                    "finishes its connections")

    async def _sync(self, inst: Instance, desired: Desired) -> None:
        api = inst.api
        current = await api.servers(BACKEND)
        want = {b.name: b for b in desired.backends}
        opts = server_options(desired.frontend)
        for name, b in want.items():
            have = current.get(name)
            if have is None:
                await api.add_server(BACKEND, name, b.address, b.port, opts)
                inst.drains.pop(name, None)
                continue
            # A sync cut between ``add server`` and its last command left the server without its
            # check, or in maintenance: finish it, the check first so it never serves unchecked.
            if have.check_configured and not have.check_enabled:
                await api.enable_health(BACKEND, name)
            if have.state in ("MAINT", "DRAIN"):
                await api.set_state(BACKEND, name, "ready")
            inst.drains.pop(name, None)
        extra = [name for name in current if name not in want]
        if not extra:
            return
        sessions = await api.sessions(BACKEND)
        now = time.monotonic()
        for name in extra:
            if current[name].state not in ("DRAIN", "MAINT"):
                await api.set_state(BACKEND, name, "drain")
            began = inst.drains.setdefault(name, now)
            if sessions.get(name, 0) == 0 or now - began >= desired.drain_seconds:
                await api.delete_server(BACKEND, name)
                inst.drains.pop(name, None)

    async def _start(self, uid: str, inst: Instance, frontend: Frontend, replacing: int | None,
                     handover: bool = True, config: Path | None = None) -> None:
        """Start HAProxy from the configuration file (or ``config``); with ``replacing``, the new
        process takes over from that one (its listening sockets too, through its admin socket, if
        ``handover``)."""
        binary = find_haproxy(self.binary)
        if binary is None:
            raise Permanent(f"HAProxy is not installed on this node ({self.binary!r} not found on PATH)",
                            reason="BalancerNotInstalled")
        args = [binary, "-f", str(config or inst.config), "-p", str(inst.pidfile), "-D"]
        if replacing is not None:
            args += [*(["-x", str(inst.socket)] if handover else []), "-sf", str(replacing)]
        # Its output goes to a file, not a pipe: the daemon keeps what it inherited open, and a
        # pipe would never reach its end. The starting process exits once the daemon runs.
        log_file = await asyncio.to_thread(open, inst.log, "wb")
        try:
            proc = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True)
        finally:
            log_file.close()
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise NotReady("HAProxy did not start within 10s", reason="BalancerStartTimeout") from None
        text = (await asyncio.to_thread(inst.log.read_text, errors="replace")).strip()
        if proc.returncode != 0:
            if "cannot bind socket" in text or "Address already in use" in text:
                raise NotReady(f"the frontend's address {frontend.address}:{frontend.port} is taken by another "
                               "process", reason="PortInUse")
            raise Permanent(f"HAProxy refused its configuration: {_last_alert(text)}", reason="InvalidConfig")
        pid = int(inst.pidfile.read_text().split()[0])
        await asyncio.to_thread(write_atomic, inst.running_file,
                                msgspec.json.encode(Running(pid=pid, frontend=frontend.digest(), spec=frontend)), 0o600)
        inst.drains.clear()
        self._watch(uid, pid)
        await self._wait_for_socket(inst)

    async def _wait_for_socket(self, inst: Instance) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        pace = Backoff(initial=0.005, cap=0.2, jitter=0.0)
        while True:
            try:
                await inst.api.command("show info")
                return
            except RuntimeAPIError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(pace.next())  # the daemon opens its socket just after it forks

    # ---- exits and deletion -----------------------------------------------------------------

    def _watch(self, uid: str, pid: int) -> None:
        """``on_exit(uid)`` when the balancer's process ends (killed, crashed)."""
        self.exits.watch(uid, pid, lambda: self.on_exit(uid) if self.on_exit is not None else None)

    async def delete(self, uid: str) -> None:
        """Stop the balancer (its connections are finished, then it exits) and remove its files."""
        inst = self._instance(uid)
        self.exits.unwatch(uid)
        running = inst.running()
        if running is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(running.pid, signal.SIGUSR1)  # soft stop: no new connections, finish the rest
            if not await exited(running.pid, 30.0):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(running.pid, signal.SIGKILL)
        await asyncio.to_thread(shutil.rmtree, inst.dir, True)
        with contextlib.suppress(FileNotFoundError):
            inst.socket.unlink()
        self._instances.pop(uid, None)

    def owners(self) -> set[str]:
        """The uids of the balancers this node runs (for the orphan sweep)."""
        return instance_dirs(self.state_dir)

    def close(self) -> None:
        self.exits.close()


def _last_alert(text: str) -> str:
    lines = [line for line in text.splitlines() if "ALERT" in line] or text.splitlines() or [""]
    return lines[-1].strip()
