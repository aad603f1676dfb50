"""The cloud's side of the reaper (:mod:`setpoint.drivers.reaper`): list what exists in the
regions, owned by the objects of the cloud kinds, priced from the table, deleted dependents
first. Shared by ``setpoint reap`` and the ``Reaper`` kind."""

from __future__ import annotations

import datetime as dt
from typing import Any

from setpoint.client import Client
from setpoint.drivers.aws.driver import resource
from setpoint.drivers.aws.inventory import Actual, delete, inventory, monthly_cost
from setpoint.drivers.aws.kinds import KINDS
from setpoint.drivers.aws.session import Clients
from setpoint.drivers.reaper import Found, Report, uids_of
from setpoint.drivers.reaper import reap as reap_sources

# Dependents first: what runs in a network before the network.
DELETE_ORDER = ["instance", "loadbalancer", "security-group", "subnet", "vpc", "bucket"]


class AwsSource:
    name = "aws"

    def __init__(self, client: Client, clients: Clients, regions: list[str], *, endpoint_url: str = "",
                 prices: dict[str, Any]) -> None:
        self.client = client
        self.clients = clients
        self.regions = regions
        self.endpoint_url = endpoint_url
        self.prices = prices

    async def inventory(self) -> list[Found]:
        now = dt.datetime.now(dt.UTC)
        out: list[Found] = []
        for region in self.regions:
            for a in await inventory(self.clients, region, self.endpoint_url):
                out.append(Found(a.kind, a.id, a.region, a.owner_uid, owner=a.owner, age_seconds=a.age_seconds(now),
                                 monthly_cost=monthly_cost(a, self.prices), handle=a))
        return out

    async def live_owners(self) -> set[str]:
        return await uids_of(self.client, [resource(plural) for plural in KINDS])

    async def delete(self, found: Found) -> None:
        actual: Actual = found.handle
        await delete(self.clients, actual, self.endpoint_url)

    def rank(self, found: Found) -> int:
        return DELETE_ORDER.index(found.kind) if found.kind in DELETE_ORDER else len(DELETE_ORDER)


async def reap(client: Client, clients: Clients, regions: list[str], *, endpoint_url: str = "",
               prices: dict[str, Any], delete_orphans: bool = False, min_age: float = 3600.0) -> Report:
    """The cloud alone (the ``Reaper`` kind's work)."""
    source = AwsSource(client, clients, regions, endpoint_url=endpoint_url, prices=prices)
    return await reap_sources([source], delete_orphans=delete_orphans, min_age=min_age)
