"""``setpoint agent --node NAME``: registers its node, heartbeats, runs the node's controllers.

Besides ProcessSets it runs the LoadBalancers assigned to the node (HAProxy or Envoy processes
it starts and keeps in step with their backends) and its Templates (files rendered from
objects). The heartbeat is a Lease (``setpoint-node-lease/<node>``) renewed every ``heartbeat``
seconds; a node whose lease is not renewed within ``lease_duration`` is considered lost by the
control plane. The agent's credentials (``setpoint node-token``) let it write only its own Node and
Lease and the status of the work assigned to it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import Any

from setpoint import __version__
from setpoint.agent import EventRecorder
from setpoint.agent.conditions import now_micro, set_condition
from setpoint.backoff import Backoff, Outage
from setpoint.client import AlreadyExists, Client, ClientError
from setpoint.controllers.loadbalancer import LoadBalancerController
from setpoint.controllers.processset import ProcessSetController
from setpoint.controllers.resources import LEASES, NODE_LEASE_NAMESPACE, NODES
from setpoint.controllers.template import TemplateController

log = logging.getLogger(__name__)


# The transfer report in the Node status rides on every Nth heartbeat: a write per node that the
# dashboard reads, kept rare enough not to matter next to the desired state itself.
TRANSFER_REPORT_EVERY = 3

class NodeAgent:
    def __init__(
        self,
        client: Client,
        node: str,
        state_dir: Path,
        *,
        heartbeat: float = 10.0,
        lease_duration: float = 40.0,
        workers: int = 4,
        stop_processes_on_exit: bool = False,
        address: str = "127.0.0.1",
        haproxy: str = "haproxy",
        envoy: str = "envoy",
    ) -> None:
        self.client = client
        self.stop_processes_on_exit = stop_processes_on_exit
        self.node = node
        self.state_dir = Path(state_dir)
        self.heartbeat = heartbeat
        self.lease_duration = lease_duration
        self.events = EventRecorder(client, f"agent/{node}", host=node)
        self.processsets = ProcessSetController(client, node, self.state_dir / "processes",
                                                workers=workers, events=self.events)
        self.address = address
        self.templates = TemplateController(client, node, events=self.events)
        self.loadbalancers = LoadBalancerController(client, node, self.state_dir / "loadbalancers",
                                                    haproxy=haproxy, envoy=envoy, events=self.events)
        self.heartbeats = 0

    async def run(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.events.start()
        try:
            await self.register()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._heartbeat_loop(), name="heartbeat")
                tg.create_task(self.processsets.run(), name="processsets")
                tg.create_task(self.loadbalancers.run(), name="loadbalancers")
                tg.create_task(self.templates.run(), name="templates")
        finally:
            await self.events.stop()
            await self._leave_processes()
            self.processsets.driver.close()

    async def _leave_processes(self) -> None:
        """On a stop: end the processes (``setpoint dev``), or leave them to the next agent, which
        adopts them, and say which it is."""
        driver = self.processsets.driver
        if self.stop_processes_on_exit:
            count = await asyncio.shield(driver.stop_everything())
            stopped = await asyncio.shield(self.loadbalancers.stop_balancers())
            log.info("stopped the processes of %d ProcessSets and %d load balancers before exiting",
                     count, stopped)
            return
        owners = driver.list_owners()
        if owners:
            log.info("leaving the processes of %d ProcessSets running: the next agent for node %s adopts them",
                     len(owners), self.node)
        balancers = self.loadbalancers.balancers()
        if balancers:
            log.info("leaving %d load balancers serving: the next agent for node %s adopts them",
                     len(balancers), self.node)

    async def register(self) -> None:
        """Create this node's Node (or find it) and report the agent in its status."""
        body = {"apiVersion": "setpoint.dev/v1alpha1", "kind": "Node", "metadata": {"name": self.node},
                "spec": {}}
        backoff = Backoff(initial=0.5, cap=30.0)
        outage = Outage(log, f"registering node {self.node}")
        while True:
            try:
                try:
                    node = await self.client.create(NODES, body)
                    log.info("registered node %s", self.node)
                except AlreadyExists:
                    node = await self.client.get(NODES, self.node)
                status = dict(node.get("status") or {})
                status.update(agentVersion=__version__, hostname=socket.gethostname(), addresses=[self.address])
                set_condition(status, "Ready", True, reason="AgentReady", message="the agent is running")
                status["transfer"] = self.transfer_report()
                await self.client.patch(NODES, self.node, {"status": status}, subresource="status")
                await self._renew()
                outage.recovered()
                return
            except ClientError as e:
                delay = backoff.next()
                outage.failed(e, delay)
                await asyncio.sleep(delay)

    async def _renew(self) -> None:
        lease: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.node, "namespace": NODE_LEASE_NAMESPACE},
            "spec": {"holderIdentity": self.node, "leaseDurationSeconds": round(self.lease_duration),
                     "renewTime": now_micro()},
        }
        # Leases may be written without a resourceVersion (and created by PUT): the holder
        # is the only writer of its heartbeat.
        await self.client.update(LEASES, lease, namespace=NODE_LEASE_NAMESPACE)
        self.heartbeats += 1

    def transfer_report(self) -> dict[str, Any]:
        """How desired state reaches this agent, for the Node's status (the dashboard's transfer
        view): the transport, the revision each informer has seen, and the work waiting."""
        controllers = (self.processsets, self.loadbalancers, self.templates)
        informers = {c.controller_name: c.informer for c in controllers}
        revisions = {name: inf.resource_version or "" for name, inf in informers.items()}
        seen = [int(r) for r in revisions.values() if r.isdigit()]
        transport = next(iter(informers.values())).transport
        return {"transport": getattr(transport, "name", type(transport).__name__),
                "revision": str(min(seen)) if seen else "", "informers": revisions,
                "queueDepth": sum(c.queue.depth + c.queue.waiting for c in controllers),
                "reportedAt": now_micro()}

    async def _report_transfer(self) -> None:
        await self.client.patch(NODES, self.node, {"status": {"transfer": self.transfer_report()}},
                                subresource="status")

    async def _heartbeat_loop(self) -> None:
        outage = Outage(log, f"heartbeat of node {self.node}")
        while True:
            await asyncio.sleep(self.heartbeat)  # the heartbeat's period, not a wait for something
            try:
                await self._renew()
                if self.heartbeats % TRANSFER_REPORT_EVERY == 1:
                    await self._report_transfer()
            except ClientError as e:
                outage.failed(e)
            else:
                outage.recovered()
