"""The reaper's work, shared by ``setpoint reap`` and the ``Reaper`` kind: list what exists in the
cloud, keep what a live object owns, report the rest with its cost, and optionally delete the
orphans old enough, dependents first. A resource whose owner tag names an existing object is
never touched."""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from setpoint.agent.errors import DriverError
from setpoint.client import Client
from setpoint.drivers.aws.driver import resource
from setpoint.drivers.aws.inventory import Actual, delete, inventory, monthly_cost
from setpoint.drivers.aws.kinds import KINDS, OWNER_UID
from setpoint.drivers.aws.session import Clients

# Dependents first: what runs in a network before the network.
DELETE_ORDER = ["instance", "loadbalancer", "security-group", "subnet", "vpc", "bucket"]


@dataclass
class Orphan:
    actual: Actual
    why: str
    age_seconds: float | None
    monthly_cost: float

    def as_dict(self) -> dict[str, Any]:
        a = self.actual
        return {"kind": a.kind, "id": a.id, "region": a.region, "why": self.why, "owner": a.owner,
                "ownerUid": a.tags.get(OWNER_UID), "ageSeconds": self.age_seconds, "monthlyCost": self.monthly_cost}


@dataclass
class Report:
    orphans: list[Orphan] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    examined: int = 0

    @property
    def monthly_cost(self) -> float:
        return round(sum(o.monthly_cost for o in self.orphans), 2)

    def as_dict(self) -> dict[str, Any]:
        return {"orphans": [o.as_dict() for o in self.orphans], "monthlyCost": self.monthly_cost,
                "deleted": self.deleted, "failed": self.failed, "examined": self.examined}


async def live_owners(client: Client) -> set[str]:
    """The uids of every cloud object that exists, in every namespace."""
    live: set[str] = set()
    for plural in KINDS:
        async for obj in client.iter_list(resource(plural)):
            live.add(str(obj["metadata"].get("uid")))
    return live


async def reap(client: Client, clients: Clients, regions: list[str], *, endpoint_url: str = "",
               prices: dict[str, Any], delete_orphans: bool = False, min_age: float = 3600.0) -> Report:
    # What exists in the cloud is listed before the objects are: an object created meanwhile
    # (with its first resource) is then among the live owners, not taken for an orphan.
    now = dt.datetime.now(dt.UTC)
    actual: list[Actual] = []
    for region in regions:
        actual.extend(await inventory(clients, region, endpoint_url))
    live = await live_owners(client)
    report = Report(examined=len(actual))
    for a in actual:
        if a.owner_uid is not None and a.owner_uid in live:
            continue
        why = "untagged" if a.owner_uid is None else "its owner object is gone"
        report.orphans.append(Orphan(a, why, a.age_seconds(now), monthly_cost(a, prices)))
    if delete_orphans:
        for o in sorted(report.orphans, key=lambda o: DELETE_ORDER.index(o.actual.kind)):
            age = o.age_seconds
            if (age is not None and age >= min_age) or (age is None and min_age == 0):
                try:
                    await delete(clients, o.actual, endpoint_url)
                    report.deleted.append(f"{o.actual.kind} {o.actual.id}")
                except DriverError as e:
                    report.failed.append(f"{o.actual.kind} {o.actual.id}: {e.message}")
    return report


class ReaperMetrics:
    """The last report of each reaper as Prometheus samples: what is forgotten, where, and what it
    costs, so that an alert can fire on ``setpoint_reaper_monthly_cost_dollars`` rather than on
    someone reading a status. Orphan counts of a kind that no longer has any go away."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.orphans = Gauge("setpoint_reaper_orphans", "Orphaned cloud resources in the last run.",
                             ["reaper", "kind", "region"], registry=registry)
        self.cost = Gauge("setpoint_reaper_monthly_cost_dollars",
                          "Estimated monthly cost of the orphans found in the last run.", ["reaper"],
                          registry=registry)
        self.examined = Gauge("setpoint_reaper_examined", "Cloud resources examined in the last run.",
                              ["reaper"], registry=registry)
        self.failed = Gauge("setpoint_reaper_delete_failures", "Orphans the last run failed to delete.",
                            ["reaper"], registry=registry)
        self.deleted = Counter("setpoint_reaper_deleted", "Orphans deleted.", ["reaper"], registry=registry)
        self.last_run = Gauge("setpoint_reaper_last_run_timestamp_seconds", "When the last run ended.",
                              ["reaper"], registry=registry)
        self._series: dict[str, set[tuple[str, str]]] = {}

    def record(self, reaper: str, report: Report) -> None:
        counts: dict[tuple[str, str], int] = {}
        for o in report.orphans:
            key = (o.actual.kind, o.actual.region)
            counts[key] = counts.get(key, 0) + 1
        for gone in self._series.get(reaper, set()) - set(counts):
            self.orphans.remove(reaper, *gone)
        for (kind, region), n in counts.items():
            self.orphans.labels(reaper, kind, region).set(n)
        self._series[reaper] = set(counts)
        self.cost.labels(reaper).set(report.monthly_cost)
        self.examined.labels(reaper).set(report.examined)
        self.failed.labels(reaper).set(len(report.failed))
        self.deleted.labels(reaper).inc(len(report.deleted))
        self.last_run.labels(reaper).set_to_current_time()

    def forget(self, reaper: str) -> None:
        """A Reaper object deleted: its series go with it."""
        for series in self._series.pop(reaper, set()):
            self.orphans.remove(reaper, *series)
        for metric in (self.cost, self.examined, self.failed, self.deleted, self.last_run):
            with contextlib.suppress(KeyError):
                metric.remove(reaper)
