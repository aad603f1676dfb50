"""A controller whose whole job is one driver: observe, then ensure, then report.

:class:`DriverController` is what most southbound controllers need. Its ``reconcile``

1. observes the subsystem afresh (never an observation made before a failure: after a timeout
   the outcome is uncertain, so what was seen before it proves nothing); a driver that reads
   each part itself just before acting on it (``observes_in_ensure``) does so inside ``ensure``;
2. calls ``driver.ensure`` with that observation and the object's operation id
   (uid + generation + ``ensure``), the same id on every retry of the same desired state, so a
   subsystem that already did the work answers with its first result instead of doing it again;
3. turns what the driver returns into status (:meth:`DriverController.status_for`).

Failures follow the driver's :class:`~setpoint.drivers.retry.RetryPolicy` (or the one given),
and when the policy is spent the object is marked failed and an alert goes out. With a
``finalizer`` deletion calls ``driver.delete``; with ``drift_interval`` every object is looked at
again that often (drift: a device replaced, a process killed); with ``orphan_sweep_interval`` and
a driver that can list what it manages (``orphans(live_uids)`` and ``release(resource)``),
resources whose object is gone are released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from setpoint.agent.controller import Controller, Result
from setpoint.agent.errors import DriverError, OperationId
from setpoint.agent.retry import RetryPolicy
from setpoint.client import Client
from setpoint.drivers.base import Driver
from setpoint.drivers.resources import RemoteResource
from setpoint.types import Object

log = logging.getLogger(__name__)

DriverT = TypeVar("DriverT", bound=Driver[Any])


@runtime_checkable
class ReleasesOrphans(Protocol):
    """A driver that can list what it manages, for the orphan sweep."""

    async def orphans(self, live_uids: set[str]) -> list[RemoteResource]: ...

    async def release(self, resource: RemoteResource) -> None: ...



class DriverController(Controller, Generic[DriverT]):
    """Subclass with ``resource`` (and ``finalizer``) set; override :meth:`status_for`."""

    def __init__(self, client: Client, driver: DriverT, *, retry_policy: RetryPolicy | None = None,
                 drift_interval: float | None = 30.0, orphan_sweep_interval: float | None = None,
                 **kw: Any) -> None:
        policy = retry_policy or getattr(driver, "retry_policy", None) or RetryPolicy()
        super().__init__(client, retry_policy=policy, **kw)
        self.driver: DriverT = driver
        self.drift_interval = drift_interval
        self.orphan_sweep_interval = orphan_sweep_interval
        self.released: list[str] = []  # ids of orphans released, newest last
        self._sweep_now = asyncio.Event()

    def status_for(self, obj: Object, observed: Any) -> Result:
        """The status to report after a successful ensure (default: Ready, nothing else)."""
        return Result()

    async def reconcile(self, obj: Object) -> Result:
        op = OperationId.for_object(obj, "ensure")
        if getattr(self.driver, "observes_in_ensure", False):
            observed = await self.driver.ensure(obj, None, op)
        else:
            observed = await self.driver.observe(obj)
            observed = await self.driver.ensure(obj, observed, op)
        result = self.status_for(obj, observed)
        if result.requeue_after is None and self.drift_interval is not None:
            result.requeue_after = self.drift_interval
        return result

    async def finalize(self, obj: Object) -> None:
        await self.driver.delete(obj, OperationId.for_object(obj, "delete"))

    async def deleted(self, key: str) -> None:
        self._sweep_now.set()

    async def sweep_orphans(self) -> list[str]:
        """Release what the driver manages for objects that no longer exist; returns their ids."""
        driver = self.driver
        if not self.informer.has_synced or not isinstance(driver, ReleasesOrphans):
            return []
        live = {str(o["metadata"].get("uid")) for o in self.informer.list()}
        candidates = await driver.orphans(live)
        # An owner may have appeared (and had its first resource made) while the driver was
        # listing: ask the informer again, after the listing, before releasing anything.
        live = {str(o["metadata"].get("uid")) for o in self.informer.list()}
        released = []
        for resource in candidates:
            if resource.owner is not None and resource.owner.uid in live:
                continue
            log.info("%s: releasing %s: its owner %s no longer exists", self.controller_name,
                     resource.id, resource.owner.uid if resource.owner else "?")
            await driver.release(resource)
            released.append(resource.id)
        self.released.extend(released)
        return released

    async def run(self) -> None:
        if self.orphan_sweep_interval is None:
            await super().run()
            return
        async with asyncio.TaskGroup() as tg:
            tg.create_task(super().run())
            tg.create_task(self._sweeper())

    async def _sweeper(self) -> None:
        await self.informer.wait_synced()
        assert self.orphan_sweep_interval is not None
        while True:
            try:
                await self.sweep_orphans()
            except DriverError as e:
                log.warning("%s: orphan sweep failed, will retry: %s", self.controller_name, e.message)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.orphan_sweep_interval):  # not wait_for: see setpoint.tasks
                    await self._sweep_now.wait()
            self._sweep_now.clear()
