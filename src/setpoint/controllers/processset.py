"""The node side of ProcessSets: keep ``spec.replicas`` processes running on this node.

One instance runs in each agent and sees only the ProcessSets assigned to its node (a server-side
field selector on ``spec.nodeName``). It reconciles on every change, immediately when one of its
processes exits (drift), and periodically as a safety net; it reports replicas, pids and restarts
in status. Processes whose ProcessSet no longer exists or moved to another node are stopped
(no orphans), including after the agent itself was down.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from pathlib import Path
from typing import Any

from setpoint.agent import Controller, NotReady, OperationId, Permanent, Result
from setpoint.client import Client, NotFound
from setpoint.controllers.resources import PROCESS_FINALIZER, PROCESSSETS, SECRETS
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
            obj = await self._with_secret_values(obj)
        except NotReady as e:  # a Secret not there (yet): say so on the object, look again soon
            self.events.warning(obj, e.reason, e.message)
            return Result(ready=False, reason=e.reason, message=e.message, requeue_after=e.retry_after)
        try:
            observed = await self.driver.ensure(obj, None, op)
        except ProcessesNotReady as e:
            status = self.driver.status_for(obj, e.observed)
            return _result(status, requeue_after=e.retry_after)
        return _result(self.driver.status_for(obj, observed))

    async def _with_secret_values(self, obj: Object) -> Object:
        """``env[].valueFrom.secretKeyRef`` resolved into values, read at each reconcile (a changed
        Secret restarts the replicas, as a changed value would). The values go to the processes'
        environment only: never into status, events or logs."""
        env = (obj.get("spec") or {}).get("env")
        if not isinstance(env, list) or not any(isinstance(e, dict) and "valueFrom" in e for e in env):
            return obj
        namespace = obj["metadata"].get("namespace", "")
        resolved: list[dict[str, Any]] = []
        cache: dict[str, dict[str, Any] | None] = {}
        for i, item in enumerate(env):
            if not isinstance(item, dict) or "valueFrom" not in item:
                resolved.append(item)
                continue
            ref = (item.get("valueFrom") or {}).get("secretKeyRef")
            if not isinstance(ref, dict) or not isinstance(ref.get("name"), str) or not isinstance(ref.get("key"), str):
                raise Permanent(f"spec.env[{i}].valueFrom.secretKeyRef needs a name and a key", reason="InvalidSpec")
            name, key, optional = ref["name"], ref["key"], bool(ref.get("optional"))
            if name not in cache:
                try:
                    cache[name] = await self.client.get(SECRETS, name, namespace=namespace)
                except NotFound:
                    cache[name] = None
            secret = cache[name]
            data = (secret or {}).get("data") or {}
            if secret is None or key not in data:
                if optional:
                    continue
                what = f'secret "{name}"' if secret is None else f'key "{key}" of secret "{name}"'
                raise NotReady(f"spec.env[{i}] ({item.get('name')}): {what} not found", retry_after=5.0,
                               reason="SecretNotFound")
            value = base64.b64decode(data[key]).decode(errors="replace")
            resolved.append({"name": item.get("name"), "value": value})
        spec = {**obj["spec"], "env": resolved}
        return {**obj, "spec": spec}

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
                async with asyncio.timeout(self.orphan_sweep_interval):  # not wait_for: see setpoint.tasks
                    await self._sweep_now.wait()
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
