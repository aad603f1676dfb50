"""Cloud resources as objects: one controller per kind of group ``aws.setpoint.dev``, each the
cloud driver's observe-then-ensure loop (``setpoint.drivers.aws``), run by ``setpoint
cloud-controller`` under one leader election.

Deleting an object deletes its resource (a finalizer) and waits for what depends on it: a VPC
with subnets left is NotReady until they are gone, not an error loop. A resource changed or
deleted behind setpoint's back is seen at the next look (every ``drift_interval``) and put back.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from setpoint.agent import Controller, LeaderElector, Result
from setpoint.agent.cache import object_key
from setpoint.agent.conditions import now_micro
from setpoint.agent.metrics import AgentMetrics
from setpoint.client import Client, Resource
from setpoint.drivers.aws import KINDS, AwsDriver, resource
from setpoint.drivers.aws.inventory import load_prices
from setpoint.drivers.aws.reaper import reap
from setpoint.drivers.aws.session import Clients
from setpoint.drivers.reaper import ReaperMetrics
from setpoint.drivers.reconciler import DriverController
from setpoint.types import Object

log = logging.getLogger(__name__)

FINALIZER = "aws.setpoint.dev/cleanup"


class CloudController(DriverController[AwsDriver]):
    finalizer = FINALIZER

    def __init__(self, client: Client, plural: str, clients: Clients, **kw: Any) -> None:
        self.resource = resource(plural)  # type: ignore[misc]
        self.name = f"aws-{plural}"  # type: ignore[misc]
        super().__init__(client, AwsDriver(plural, client, clients), **kw)

    def status_for(self, obj: Object, observed: Any) -> Result:
        status, ready = self.driver.status(observed)
        if ready:
            return Result(status=status, ready=True, reason="Ready", message="the cloud reports it ready")
        return Result(status=status, ready=False, reason="Provisioning",
                      message=f"the cloud reports it {status.get('state') or 'not ready'}", requeue_after=1.0)


REAPERS = Resource("aws.setpoint.dev", "v1alpha1", "reapers", namespaced=True, kind="Reaper")


class ReaperController(Controller):
    """``setpoint reap`` on a schedule (``spec.intervalSeconds``), its last report in status."""

    resource = REAPERS
    name = "reapers"

    def __init__(self, client: Client, clients: Clients, *, metrics: ReaperMetrics | None = None, **kw: Any) -> None:
        super().__init__(client, **kw)
        self.clients = clients
        self.prices = load_prices()
        self.metrics = metrics

    async def reconcile(self, obj: Object) -> Result:
        spec = obj.get("spec") or {}
        report = await reap(self.client, self.clients, list(spec.get("regions") or ["us-east-1"]),
                            endpoint_url=str(spec.get("endpointUrl") or ""), prices=self.prices,
                            delete_orphans=bool(spec.get("delete")), min_age=float(spec.get("olderThanSeconds", 3600)))
        doc = report.as_dict()
        if self.metrics is not None:
            self.metrics.record(object_key(obj), report)
        status = {"lastRunTime": now_micro(), "examined": report.examined, "orphanCount": len(report.orphans),
                  "monthlyCost": report.monthly_cost, "orphans": doc["orphans"][:100], "deleted": report.deleted,
                  "failed": report.failed}
        if report.failed:
            self.events.warning(obj, "NotDeleted", f"{len(report.failed)} orphans could not be deleted yet: "
                                f"{report.failed[0]}")
        if report.deleted:
            self.events.normal(obj, "Reaped", f"deleted {len(report.deleted)}: {', '.join(report.deleted[:10])}")
        message = f"{len(report.orphans)} orphans, about ${report.monthly_cost:.2f} a month"
        return Result(status=status, ready=True, reason="Reaped", message=message,
                      requeue_after=float(spec.get("intervalSeconds", 3600)))

    async def deleted(self, key: str) -> None:
        if self.metrics is not None:
            self.metrics.forget(key)


class CloudControllers:
    """Every cloud kind's controller, under one leader election (run several for availability)."""

    def __init__(self, client: Client, identity: str, *, leader_election: bool = True,
                 lease_namespace: str = "setpoint-node-lease", drift_interval: float = 30.0,
                 metrics: AgentMetrics | None = None) -> None:
        self.client = client
        self.metrics = metrics
        self.reaper_metrics = ReaperMetrics(metrics.registry) if metrics is not None else None
        if metrics is not None:
            metrics.add_queues(lambda: [c.queue for c in self.controllers])
        self.clients = Clients()
        self.elector = (LeaderElector(client, namespace=lease_namespace, name="setpoint-cloud-controller",
                                      identity=identity) if leader_election else None)
        self.drift_interval = drift_interval
        self.controllers: list[Controller] = []

    async def _lead(self) -> None:
        self.controllers = [
            CloudController(self.client, plural, self.clients, drift_interval=self.drift_interval) for plural in KINDS]
        self.controllers.append(ReaperController(self.client, self.clients, metrics=self.reaper_metrics))
        async with asyncio.TaskGroup() as tg:
            for c in self.controllers:
                tg.create_task(c.run())

    async def run(self) -> None:
        if self.elector is None:
            await self._lead()
        else:
            await self.elector.run(self._lead)


__all__ = ["CloudController", "CloudControllers"]
