"""The home-automation rig for southbound tests: a real server, the device simulator over HTTP,
a Home controller with the REST bridge or the in-process plugin, and helpers to steer and check."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from setpoint_home.controller import HomeController, rest_driver
from setpoint_home.devices import DeviceHub
from setpoint_home.resources import HOMES
from setpoint_home.simulator import Simulator

from setpoint.agent.alerts import AlertSink, MemoryAlertSink
from setpoint.agent.conditions import get_condition
from setpoint.client import AlreadyExists, Client, NotFound, Resource
from setpoint.drivers import plugins
from setpoint.drivers.resources import ResourceSetDriver
from setpoint.drivers.retry import Backoff, RetryPolicy
from tests.servers import ServerProcess

HOME_DIR = Path(__file__).resolve().parents[2] / "examples" / "home"
HOME_CRD: dict[str, Any] = yaml.safe_load((HOME_DIR / "home-crd.yaml").read_text())
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", namespaced=False,
                kind="CustomResourceDefinition")
NAMESPACES = Resource("", "v1", "namespaces", namespaced=False, kind="Namespace")
EVENTS = Resource("", "v1", "events", namespaced=True, kind="Event")

TRANSPORTS = ["rest", "plugin"]
TIMEOUT = 0.3  # a device request without an answer after this long is lost

# Fast retries for tests; the shapes are the real ones.
TEST_POLICY = RetryPolicy(transient=Backoff(attempts=40, base=0.02, cap=0.25),
                          not_ready=Backoff(attempts=None, base=0.02, cap=0.25), deadline=60.0)

DEVICES: list[dict[str, Any]] = [
    {"name": "thermostat", "type": "thermostat", "settings": {"targetCelsius": 21}},
    {"name": "garage", "type": "garageDoor", "settings": {"position": "open"}},
    {"name": "lights", "type": "lights", "settings": {"on": True, "brightness": 80}},
    {"name": "kettle", "type": "kettle", "settings": {"on": True}},
]
# What reaching DEVICES from factory state does, exactly once each.
EXPECTED_EFFECTS: dict[str, dict[str, int]] = {
    "thermostat": {"adjustments": 1},
    "garage": {"motorRuns": 1, "movements": 1},
    "lights": {"bulb0": 1, "bulb1": 1, "bulb2": 1, "bulb3": 1, "switches": 4},
    "kettle": {"boilings": 1},
}


async def eventually(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def prepare(client: Client) -> str:
    """The Home kind is served; a fresh namespace."""
    with contextlib.suppress(AlreadyExists):
        await client.create(CRDS, HOME_CRD)

    async def served() -> bool:
        try:
            await client.list(HOMES, namespace="default", limit=1)
            return True
        except NotFound:
            return False

    await eventually(served, timeout=15, what="Home kind served")
    ns = f"sb-{uuid.uuid4().hex[:8]}"
    await client.create(NAMESPACES, {"metadata": {"name": ns}})
    return ns


def assert_device_state(state: dict[str, Any], devices: list[dict[str, Any]] = DEVICES) -> None:
    """Each device's actual state is what its settings ask for."""
    by_id = state["devices"]
    for d in devices:
        dev, settings = by_id[d["name"]], d["settings"]
        status = dev["status"]
        assert dev["phase"] == "Ready", dev
        assert dev["spec"] == {"type": d["type"], "settings": settings}, dev
        if d["type"] == "thermostat":
            assert status["targetCelsius"] == settings["targetCelsius"]
        elif d["type"] == "garageDoor":
            assert status["position"] == settings["position"]
        elif d["type"] == "lights":
            want = {"on": settings["on"], "brightness": settings.get("brightness", 100) if settings["on"] else 0}
            assert status["bulbs"] == [want] * len(status["bulbs"])
        elif d["type"] == "kettle" and settings["on"]:
            assert status["temperatureCelsius"] == 100 and status["boiledAt"]


@dataclass
class Rig:
    client: Client
    ns: str
    transport: str
    hub: DeviceHub
    sim: Simulator
    driver: ResourceSetDriver
    ctl: HomeController
    control: httpx.AsyncClient
    alerts: MemoryAlertSink
    homes: list[str] = field(default_factory=list)

    async def create_home(self, name: str = "cottage", devices: list[dict[str, Any]] = DEVICES) -> dict[str, Any]:
        self.homes.append(name)
        return await self.client.create(HOMES, {"apiVersion": "home.example.com/v1", "kind": "Home",
                                                "metadata": {"name": name},
                                                "spec": {"devices": copy.deepcopy(devices)}}, namespace=self.ns)

    async def home(self, name: str = "cottage") -> dict[str, Any]:
        return await self.client.get(HOMES, name, namespace=self.ns)

    async def converged(self, name: str = "cottage", timeout: float = 30.0) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            obj = await self.home(name)
            status = obj.get("status") or {}
            cond = get_condition(status, "Ready")
            n = len(obj["spec"]["devices"])
            if (cond is not None and cond["status"] == "True"
                    and status.get("observedGeneration") == obj["metadata"]["generation"]
                    and status.get("readyDevices") == n):
                return obj
            return None

        return await eventually(check, timeout=timeout, what=f"Home {name} converged")  # type: ignore[no-any-return]

    async def inject(self, fault: str, device: str = "*", methods: tuple[str, ...] = ("PUT",), count: int | None = 1,
                     probability: float = 1.0, seconds: float = 0.05) -> None:
        r = await self.control.post("/_sim/faults", json={
            "fault": fault, "device": device, "methods": list(methods), "count": count,
            "probability": probability, "seconds": seconds})
        assert r.status_code == 201, r.text

    async def clear_faults(self) -> None:
        assert (await self.control.delete("/_sim/faults")).status_code == 200

    async def replace(self, device: str) -> None:
        r = await self.control.post(f"/_sim/devices/{device}/replace")
        assert r.status_code == 200, r.text

    async def state(self) -> dict[str, Any]:
        r = await self.control.get("/_sim/state")
        assert r.status_code == 200
        return r.json()  # type: ignore[no-any-return]


def make_driver(transport: str, hub: DeviceHub, url: str, policy: RetryPolicy) -> ResourceSetDriver:
    if transport == "rest":
        return rest_driver(url, timeout=TIMEOUT, retry_policy=policy, progress_poll=0.05)
    driver = plugins.create("home-sim", hub=hub, timeout=TIMEOUT, retry_policy=policy, progress_poll=0.05)
    assert isinstance(driver, ResourceSetDriver)
    return driver


@contextlib.asynccontextmanager
async def rig(server: ServerProcess, transport: str, *, policy: RetryPolicy = TEST_POLICY,
              drift_interval: float | None = 0.3, alert_sink: AlertSink | None = None, seed: int = 0,
              travel_seconds: float = 0.05, device_types: dict[str, str] | None = None,
              **controller_kw: Any) -> AsyncIterator[Rig]:
    hub = DeviceHub(travel_seconds=travel_seconds, seed=seed)
    for id, type_ in (device_types or {d["name"]: d["type"] for d in DEVICES}).items():
        hub.add(id, type_)
    alerts = MemoryAlertSink()
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(Client(server.client_config()))
        ns = await prepare(client)
        sim = await stack.enter_async_context(Simulator(hub))
        control = await stack.enter_async_context(httpx.AsyncClient(base_url=sim.url, timeout=10))
        driver = make_driver(transport, hub, sim.url, policy)
        stack.push_async_callback(driver.aclose)  # type: ignore[attr-defined]
        sink: AlertSink = alert_sink or alerts
        ctl = HomeController(client, driver, namespace=ns, workers=4, drift_interval=drift_interval,
                             alert_sink=sink, **controller_kw)
        task = asyncio.create_task(ctl.run())

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        stack.push_async_callback(stop)
        yield Rig(client, ns, transport, hub, sim, driver, ctl, control, alerts)
