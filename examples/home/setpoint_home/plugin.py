"""The in-process plugin: the same devices without HTTP, installed as the ``home-sim`` driver.

``pip install ./examples/home`` registers it in the ``setpoint.drivers`` entry-point group; then
``setpoint.drivers.plugins.create("home-sim", hub=hub)`` returns a driver for ``Home`` objects
that calls the :class:`~setpoint_home.devices.DeviceHub` directly. The simulated network still
misbehaves as told: a lost request or reply is a call that times out, so the plugin cannot tell
whether the device did the work, exactly like the REST bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec

from setpoint.drivers import DriverError, NotReady, OperationId, Permanent, Transient
from setpoint.drivers.resources import Health, Owner, RemoteResource, ResourceSetDriver, Spec
from setpoint_home.devices import DeviceHub, Lost, Reply
from setpoint_home.resources import home_resources

_NOT_READY = {409, 423, 425, 429, 503}


class InProcessDevices:
    """A :class:`~setpoint.drivers.resources.ResourceAPI` that calls a DeviceHub in this process."""

    def __init__(self, hub: DeviceHub, *, timeout: float = 1.0) -> None:
        self.hub = hub
        self.timeout = timeout
        self.calls = 0
        self._late: set[asyncio.Task[Reply]] = set()

    async def _call(self, method: str, id: str | None, body: dict[str, Any] | None, key: str | None) -> Reply:
        mutating = method != "GET"
        what = f"{method} {id or 'devices'}"
        self.calls += 1
        task = asyncio.ensure_future(self.hub.handle(method, id, body, key))
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.timeout)
        except Lost:
            raise Transient(f"{what}: no answer", uncertain=mutating, reason="Timeout") from None
        except TimeoutError:
            self._late.add(task)  # it goes on, like a request still on its way
            task.add_done_callback(_forget(self._late))
            raise Transient(f"{what}: timed out after {self.timeout}s", uncertain=mutating, reason="Timeout") from None

    @staticmethod
    def _error(reply: Reply, what: str, mutating: bool) -> DriverError:
        message = f"{what}: {reply.status} {reply.body.get('message', '')}".rstrip()
        reason = str(reply.body.get("reason") or f"Status{reply.status}")
        if reply.status in _NOT_READY:
            retry = reply.headers.get("Retry-After")
            return NotReady(message, retry_after=float(retry) if retry else None, reason=reason)
        if 400 <= reply.status < 500 or reply.status == 501:
            return Permanent(message, reason=reason)
        return Transient(message, uncertain=mutating, reason=reason)

    async def get(self, id: str) -> RemoteResource | None:
        reply = await self._call("GET", id, None, None)
        if reply.status == 404:
            return None
        if reply.status != 200:
            raise self._error(reply, f"GET {id}", False)
        return msgspec.convert(reply.body, RemoteResource)

    async def put(self, id: str, spec: Spec, owner: Owner, op: OperationId) -> RemoteResource:
        reply = await self._call("PUT", id, {"spec": spec, "owner": msgspec.to_builtins(owner)}, str(op))
        if reply.status not in (200, 201, 202):
            raise self._error(reply, f"PUT {id}", True)
        return msgspec.convert(reply.body, RemoteResource)

    async def delete(self, id: str, op: OperationId) -> None:
        reply = await self._call("DELETE", id, None, str(op))
        if reply.status not in (200, 204, 404):
            raise self._error(reply, f"DELETE {id}", True)

    async def list(self) -> list[RemoteResource]:
        reply = await self._call("GET", None, None, None)
        if reply.status != 200:
            raise self._error(reply, "GET devices", False)
        return [msgspec.convert(item, RemoteResource) for item in reply.body["items"]]

    async def health(self) -> Health:
        return msgspec.convert(self.hub.health().body, Health)

    async def aclose(self) -> None:
        for task in list(self._late):
            with contextlib.suppress(Exception):
                await task


def _forget(tasks: set[asyncio.Task[Reply]]) -> Any:
    def done(task: asyncio.Task[Reply]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a late request's failure has no one to tell

    return done


class HomeDevicesDriver(ResourceSetDriver):
    """Home devices driven in-process (a DeviceHub in this process; no HTTP)."""

    name = "home-sim"

    def __init__(self, hub: DeviceHub, *, timeout: float = 1.0, **kw: Any) -> None:
        self.devices = InProcessDevices(hub, timeout=timeout)
        super().__init__(self.devices, resources=home_resources, **kw)

    async def aclose(self) -> None:
        await self.devices.aclose()
