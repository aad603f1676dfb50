"""The node side of ProcessSets: keep ``spec.replicas`` processes running on this node.

One instance runs in each agent and sees only the ProcessSets assigned to its node (a server-side
field selector on ``spec.nodeName``). It reconciles on every change, immediately when one of its
processes exits (drift), and periodically as a safety net; it reports replicas, pids and restarts
in status. Processes whose ProcessSet no longer exists or moved to another node are stopped
(no orphans), including after the agent itself was down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from setpoint.agent import Controller, OperationId, Result
from setpoint.client import Client
from setpoint.controllers.resources import PROCESS_FINALIZER, PROCESSSETS
from setpoint.drivers.process import ProcessDriver, ProcessesNotReady
from setpoint.types import Object

log = logging.getLogger(__name__)



class ProcessSetController(Controller):
    resource = PROCESSSETS
    finalizer = PROCESS_FINALIZER
    name = "processsets"

    def __init__(self, client: Client, node: str, state_dir: Path, *,
                 orphan_sweep_interval: float = 30.0, **kw: Any) -> None:
        super().__init__(client, field_selector=f"spec.nodeName={node}", resync_period=30.0, **kw)
        self.driver = ProcessDriver(state_dir, on_exit=self._process_exited, node_name=node)
        self.node = node
        self.orphan_sweep_interval = orphan_sweep_interval
        self._uid_keys: dict[str, str] = {}
        self._sweep_now = asyncio.Event()
        self.informer.add_indexer("uid", lambda o: [str(o["metadata"].get("uid", ""))])

    def _process_exited(self, uid: str) -> None:
        for obj in self.informer.by_index("uid", uid):
            self._enqueue_obj(obj)

    async def reconcile(self, obj: Object) -> Result:
        op = OperationId.for_object(obj, "ensure")
        try:
            observed = await self.driver.ensure(obj, None, op)
        except ProcessesNotReady as e:
            status = self.driver.status_for(obj, e.observed)
            return _result(status, requeue_after=e.retry_after)
        return _result(self.driver.status_for(obj, observed))

    async def finalize(self, obj: Object) -> None:
        await self.driver.delete(obj, OperationId.for_object(obj, "delete"))

    async def deleted(self, key: str) -> None:
        self._sweep_now.set()  # gone, or no longer ours: its processes must stop

    async def sweep_orphans(self) -> list[str]:
        """Stop processes of ProcessSets that are not assigned here any more. Returns their uids."""
        if not self.informer.has_synced:
            return []
        live = {str(o["metadata"].get("uid")) for o in self.informer.list()}
        orphans = sorted(self.driver.list_owners() - live)
        for uid in orphans:
            log.info("stopping processes of ProcessSet %s: it no longer exists on node %s", uid, self.node)
            await self.driver.delete_uid(uid)
        return orphans

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(super().run())
            tg.create_task(self._sweeper())

    async def _sweeper(self) -> None:
        await self.informer.wait_synced()
        while True:
            try:
                await self.sweep_orphans()
            except OSError as e:
                log.warning("orphan sweep failed, will retry: %s", e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sweep_now.wait(), self.orphan_sweep_interval)
            self._sweep_now.clear()


def _result(status: Object, requeue_after: float | None = None) -> Result:
    conditions = status.pop("conditions", [])
    ready = next((c for c in conditions if c.get("type") == "Ready"), None) or {}
    return Result(
        status=status,
        ready=ready.get("status") == "True",
        reason=str(ready.get("reason", "Reconciled")),
        message=str(ready.get("message", "")),
        requeue_after=requeue_after,
    )
