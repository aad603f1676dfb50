"""The reaper: ask each driver that can list what it manages for what actually exists, compare
with the objects that exist, and report (optionally delete) what nobody owns any more.

A *source* is one driver's side of this: the cloud (:mod:`setpoint.drivers.aws.reaper`), the
processes a node supervises (:class:`ProcessSource`), or any driver that lists the resources it
made with their owner (:class:`DriverSource`: the REST bridge, a plugin such as the home
devices' example). Each source says what it found, which objects may own it, and how to delete
one thing; the rules are here, once:

- what exists is listed *before* the owners are, so an object created meanwhile (with its first
  resource) counts as an owner, not its resource as an orphan;
- a resource whose owner uid names an existing object is never reported, never deleted;
- ``--delete`` removes orphans at least ``min_age`` old; one whose age is unknown only when
  ``min_age`` is 0. Within a source, dependents go first (the source's ``rank``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, Counter, Gauge

from setpoint.agent.errors import DriverError
from setpoint.client import Client, Resource


@dataclass
class Found:
    """One actual resource a source found."""

    kind: str  # instance, vpc, process-set, a driver's resource kind...
    id: str
    where: str  # a region, a host, an endpoint
    owner_uid: str | None  # None: untagged (no setpoint object ever claimed it)
    owner: str = ""  # who the tag names, for people ("Instance default/web")
    age_seconds: float | None = None  # None: the source cannot tell
    monthly_cost: float = 0.0
    handle: Any = None  # what the source needs to delete it


@runtime_checkable
class Source(Protocol):
    name: str

    async def inventory(self) -> list[Found]: ...

    async def live_owners(self) -> set[str]:
        """The uids of the objects that may own what :meth:`inventory` lists."""
        ...

    async def delete(self, found: Found) -> None: ...

    def rank(self, found: Found) -> int:
        """Deletion order within the source: lower first (dependents before what they need)."""
        ...


@dataclass
class Orphan:
    found: Found
    source: str
    why: str

    def as_dict(self) -> dict[str, Any]:
        f = self.found
        return {"source": self.source, "kind": f.kind, "id": f.id, "region": f.where, "why": self.why,
                "owner": f.owner, "ownerUid": f.owner_uid, "ageSeconds": f.age_seconds,
                "monthlyCost": f.monthly_cost}


@dataclass
class Report:
    orphans: list[Orphan] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    examined: int = 0

    @property
    def monthly_cost(self) -> float:
        return round(sum(o.found.monthly_cost for o in self.orphans), 2)

    def as_dict(self) -> dict[str, Any]:
        return {"orphans": [o.as_dict() for o in self.orphans], "monthlyCost": self.monthly_cost,
                "deleted": self.deleted, "failed": self.failed, "examined": self.examined}


async def uids_of(client: Client, resources: Sequence[Resource]) -> set[str]:
    """The uids of every object of these kinds, in every namespace."""
    live: set[str] = set()
    for res in resources:
        async for obj in client.iter_list(res):
            live.add(str(obj["metadata"].get("uid")))
    return live


async def reap(sources: Sequence[Source], *, delete_orphans: bool = False, min_age: float = 3600.0) -> Report:
    report = Report()
    for source in sources:
        found = await source.inventory()
        live = await source.live_owners()  # after the inventory: see the module's docstring
        report.examined += len(found)
        mine = []
        for f in found:
            if f.owner_uid is not None and f.owner_uid in live:
                continue
            why = "untagged" if f.owner_uid is None else "its owner object is gone"
            mine.append(Orphan(f, source.name, why))
        report.orphans.extend(mine)
        if not delete_orphans:
            continue
        for o in sorted(mine, key=lambda o: source.rank(o.found)):
            age = o.found.age_seconds
            if not ((age is not None and age >= min_age) or (age is None and min_age == 0)):
                continue
            try:
                await source.delete(o.found)
                report.deleted.append(f"{o.found.kind} {o.found.id}")
            except DriverError as e:
                report.failed.append(f"{o.found.kind} {o.found.id}: {e.message}")
    return report


PROCESSSETS = Resource("setpoint.dev", "v1alpha1", "processsets", namespaced=True, kind="ProcessSet")


class ProcessSource:
    """The ProcessSets this host has state (and maybe processes) for, from the process driver's
    state directory: run it on the node, over the agent's ``--state-dir``."""

    name = "processes"

    def __init__(self, client: Client, state_dir: os.PathLike[str] | str) -> None:
        from setpoint.drivers.process import ProcessDriver

        self.client = client
        self.driver = ProcessDriver(Path(state_dir))
        self.host = self.driver.node_name

    async def inventory(self) -> list[Found]:
        out = []
        for uid in sorted(self.driver.list_owners()):
            described = await self.driver.describe_uid(uid)
            out.append(Found("process-set", uid, self.host, uid,
                             owner=f"ProcessSet {described['owner']}" if described["owner"] else "",
                             age_seconds=described["age_seconds"], handle=uid))
        return out

    async def live_owners(self) -> set[str]:
        return await uids_of(self.client, [PROCESSSETS])

    async def delete(self, found: Found) -> None:
        await self.driver.delete_uid(str(found.handle))

    def rank(self, found: Found) -> int:
        return 0

    def close(self) -> None:
        self.driver.close()


@runtime_checkable
class ListsOrphans(Protocol):
    """A driver that lists what it made with its owners (``ResourceSetDriver`` does)."""

    async def orphans(self, live_uids: set[str]) -> list[Any]: ...

    async def release(self, resource: Any) -> None: ...


class DriverSource:
    """Any driver that can list what it made, with each resource's owner: the REST bridge, a
    plugin. Only resources that name an owner are judged (one without was not made by setpoint)."""

    def __init__(self, client: Client, driver: ListsOrphans, owners: Sequence[Resource], *, name: str = "",
                 where: str = "") -> None:
        self.client = client
        self.driver = driver
        self.owners = list(owners)
        self.name = name or str(getattr(driver, "name", "driver"))
        self.where = where

    async def inventory(self) -> list[Found]:
        out = []
        for r in await self.driver.orphans(set()):  # nothing is live: every owned resource
            owner = r.owner
            label = f"{owner.kind} {owner.namespace}/{owner.name}".strip() if owner is not None else ""
            out.append(Found(self.name, str(r.id), self.where, owner.uid if owner is not None else None,
                             owner=label if owner is not None and owner.name else "", handle=r))
        return out

    async def live_owners(self) -> set[str]:
        return await uids_of(self.client, self.owners)

    async def delete(self, found: Found) -> None:
        await self.driver.release(found.handle)

    def rank(self, found: Found) -> int:
        return 0


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
            key = (o.found.kind, o.found.where)
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
