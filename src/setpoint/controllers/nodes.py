"""Control-plane controllers for nodes: the scheduler and node lifecycle.

Both run in ``setpoint controller-manager`` (several replicas may run; a Lease elects the one
that acts). Node liveness is judged the way Kubernetes' node lifecycle controller does: a node
is alive while its Lease keeps changing; "expired" is measured on this process's own monotonic
clock from the moment it last saw the Lease change, never by comparing clocks across machines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from setpoint.agent import Controller, Informer, NotReady, Result
from setpoint.agent.conditions import get_condition, set_condition
from setpoint.client import Client, ClientError, Conflict, NotFound
from setpoint.controllers.endpoints import EndpointsController
from setpoint.controllers.resources import LEASES, NODE_LEASE_NAMESPACE, NODES, PROCESS_FINALIZER, PROCESSSETS
from setpoint.controllers.stack import StackController
from setpoint.types import Object

log = logging.getLogger(__name__)



def _revision(meta: Mapping[str, Any]) -> int:
    """An object's resourceVersion as a number (setpoint's are store revisions)."""
    try:
        return int(meta.get("resourceVersion") or 0)
    except ValueError:
        return 0


class NodeHealth:
    """Which nodes are alive, from their heartbeat Leases."""

    def __init__(self, leases: Informer, clock: Callable[[], float] = time.monotonic) -> None:
        self.leases = leases
        self.clock = clock
        self._seen: dict[str, tuple[Any, float]] = {}  # node -> (renewTime, when we saw it change)
        leases.add_handler(on_add=self._observe, on_update=lambda old, new: self._observe(new))

    def _observe(self, lease: Object) -> None:
        name = lease["metadata"]["name"]
        renew = (lease.get("spec") or {}).get("renewTime")
        seen = self._seen.get(name)
        if seen is None or seen[0] != renew:
            self._seen[name] = (renew, self.clock())

    def alive(self, node: str) -> bool:
        lease = self.leases.get(f"{NODE_LEASE_NAMESPACE}/{node}")
        seen = self._seen.get(node)
        if lease is None or seen is None:
            return False
        duration = float((lease.get("spec") or {}).get("leaseDurationSeconds") or 40)
        return self.clock() - seen[1] <= duration


class Scheduler(Controller):
    """Assigns ProcessSets without ``spec.nodeName`` to a live, schedulable node, spreading by
    replicas (the node with the fewest replicas assigned wins; ties by name).

    A placement counts as soon as it is written, before the informer shows it ("assumed", as
    Kubernetes' scheduler does with the pods it binds): otherwise two ProcessSets scheduled in
    quick succession would both see the same empty node and land on it together.
    """

    resource = PROCESSSETS
    name = "scheduler"
    manages_status = False

    def __init__(self, client: Client, **kw: Any) -> None:
        self.nodes = Informer(client, NODES)
        self.leases = Informer(client, LEASES, namespace=NODE_LEASE_NAMESPACE)
        super().__init__(client, **kw)
        # uid -> (node, revision of the write that placed it): placed here, not yet seen
        self._assumed: dict[str, tuple[str, int]] = {}
        self.health = NodeHealth(self.leases)
        for inf in (self.nodes, self.leases):
            inf.add_handler(on_add=self._node_changed, on_update=lambda o, n: self._node_changed(n))
        self._secondary.extend([self.nodes, self.leases])

    def _node_changed(self, obj: Object) -> None:
        for ps in self.informer.list():
            if not (ps.get("spec") or {}).get("nodeName"):
                self._enqueue_obj(ps)

    def ready_nodes(self) -> list[str]:
        return sorted(
            n["metadata"]["name"] for n in self.nodes.list()
            if not (n.get("spec") or {}).get("unschedulable") and self.health.alive(n["metadata"]["name"])
        )

    def _assumed_node(self, obj: Object) -> str | None:
        """The node this scheduler put ``obj`` on, while ``obj`` is a copy older than that write."""
        meta = obj["metadata"]
        placed = self._assumed.get(meta.get("uid", ""))
        if placed is None or _revision(meta) >= placed[1]:
            return None
        return placed[0]

    def load(self, candidates: list[str]) -> dict[str, int]:
        """Replicas assigned to each candidate node: as the informer shows them, and the
        placements made here that it does not show yet. A placement is forgotten once the
        informer holds a copy as new as its write (whatever that copy says since), or no longer
        holds the object (deleted meanwhile)."""
        load = {n: 0 for n in candidates}
        pending: dict[str, tuple[str, int]] = {}
        for ps in self.informer.list():
            spec = ps.get("spec") or {}
            node = spec.get("nodeName")
            assumed = self._assumed_node(ps)
            if assumed is not None:
                uid = ps["metadata"]["uid"]
                node = assumed
                pending[uid] = self._assumed[uid]
            if node in load:
                load[node] += int(spec.get("replicas") or 0)
        self._assumed = pending
        return load

    async def reconcile(self, obj: Object) -> Result | None:
        spec = obj.get("spec") or {}
        meta = obj["metadata"]
        if spec.get("nodeName") or meta.get("deletionTimestamp") or self._assumed_node(obj) is not None:
            return None  # (a copy older than this scheduler's placement of it: placed already)
        candidates = self.ready_nodes()
        if not candidates:
            raise NotReady("no ready node to run it on", retry_after=5.0, reason="NoReadyNode")
        load = self.load(candidates)
        node = min(candidates, key=lambda n: (load[n], n))
        placed = await self.client.patch(PROCESSSETS, meta["name"],
                                         {"metadata": {"resourceVersion": meta["resourceVersion"]},
                                          "spec": {"nodeName": node}},
                                         namespace=meta.get("namespace"))
        self._assumed[meta.get("uid", "")] = (node, _revision(placed["metadata"]))
        self.events.normal(obj, "Scheduled", f"assigned to node {node}")
        log.info("scheduled %s/%s on %s", meta.get("namespace"), meta["name"], node)
        return None


class NodeLifecycle:
    """Marks the work of lost nodes: condition ``NodeLost`` on their ProcessSets and
    ``Ready=Unknown`` on the Node; clears both when the node comes back. Deleting a ProcessSet
    whose node is lost would wait forever for that node's cleanup finalizer, so this removes it."""

    def __init__(self, client: Client, scheduler: Scheduler, interval: float = 2.0) -> None:
        self.client = client
        self.scheduler = scheduler
        self.interval = interval
        self.marked: set[str] = set()

    async def run(self) -> None:
        await self.scheduler.informer.wait_synced()
        await self.scheduler.nodes.wait_synced()
        await self.scheduler.leases.wait_synced()
        while True:
            try:
                await self.sweep()
            except ClientError as e:
                log.warning("node lifecycle sweep failed, will retry: %s", e)
            await asyncio.sleep(self.interval)

    async def sweep(self) -> None:
        health = self.scheduler.health
        for node in self.scheduler.nodes.list():
            name = node["metadata"]["name"]
            alive = health.alive(name)
            cond = get_condition(node.get("status"), "Ready")
            if not alive and (cond is None or cond.get("status") != "Unknown"):
                await self._node_status(node, "Unknown", "NodeLost", "the node stopped sending heartbeats")
        for ps in self.scheduler.informer.list():
            node_name = (ps.get("spec") or {}).get("nodeName")
            if not node_name:
                continue
            lost = not health.alive(node_name)
            cond = get_condition(ps.get("status"), "NodeLost")
            if lost != (cond is not None and cond.get("status") == "True"):
                if lost or cond is not None:
                    await self._mark(ps, lost, node_name)
            if lost and ps["metadata"].get("deletionTimestamp"):
                await self._release_finalizer(ps)

    async def _node_status(self, node: Object, value: str, reason: str, message: str) -> None:
        status = dict(node.get("status") or {})
        set_condition(status, "Ready", value, reason=reason, message=message)
        with contextlib.suppress(Conflict, NotFound):
            await self.client.patch(NODES, node["metadata"]["name"],
                                    {"metadata": {"resourceVersion": node["metadata"]["resourceVersion"]},
                                     "status": status}, subresource="status")

    async def _mark(self, ps: Object, lost: bool, node: str) -> None:
        status = dict(ps.get("status") or {})
        set_condition(status, "NodeLost", lost,
                      reason="NodeLost" if lost else "NodeReady",
                      message=f"node {node} stopped sending heartbeats" if lost else f"node {node} is back")
        meta = ps["metadata"]
        with contextlib.suppress(Conflict, NotFound):  # stale copy: the next sweep looks again
            await self.client.patch(PROCESSSETS, meta["name"],
                                    {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": status},
                                    namespace=meta.get("namespace"), subresource="status")
            key = f"{meta.get('namespace')}/{meta['name']}"
            (self.marked.add if lost else self.marked.discard)(key)

    async def _release_finalizer(self, ps: Object) -> None:
        meta = ps["metadata"]
        finalizers = [f for f in meta.get("finalizers") or [] if f != PROCESS_FINALIZER]
        if finalizers == list(meta.get("finalizers") or []):
            return
        with contextlib.suppress(Conflict, NotFound):
            await self.client.patch(PROCESSSETS, meta["name"],
                                    {"metadata": {"resourceVersion": meta["resourceVersion"],
                                                  "finalizers": finalizers}},
                                    namespace=meta.get("namespace"))


class ControllerManager:
    """The scheduler, node lifecycle and ProcessSet endpoints, under one leader election."""

    def __init__(self, client: Client, identity: str, *, leader_election: bool = True,
                 lease_namespace: str = NODE_LEASE_NAMESPACE) -> None:
        from setpoint.agent import LeaderElector

        self.client = client
        self.identity = identity
        self.elector = (LeaderElector(client, namespace=lease_namespace, name="setpoint-controller-manager",
                                      identity=identity) if leader_election else None)

    async def _lead(self) -> None:
        scheduler = Scheduler(self.client)
        lifecycle = NodeLifecycle(self.client, scheduler)
        endpoints = EndpointsController(self.client)
        stacks = StackController(self.client)
        self.scheduler, self.lifecycle, self.endpoints = scheduler, lifecycle, endpoints
        async with asyncio.TaskGroup() as tg:
            tg.create_task(scheduler.run())
            tg.create_task(lifecycle.run())
            tg.create_task(endpoints.run())
            tg.create_task(stacks.run())

    async def run(self) -> None:
        if self.elector is None:
            await self._lead()
        else:
            await self.elector.run(self._lead)


__all__ = ["ControllerManager", "NodeHealth", "NodeLifecycle", "Scheduler"]
