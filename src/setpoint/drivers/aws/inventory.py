"""What exists in a cloud region, for the reaper: every resource of the kinds setpoint manages
(and load balancers, the classic forgotten bill), with its owner tag, its age and an estimated
monthly cost from a price table the user can edit."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

import yaml

from setpoint.drivers.aws.kinds import OWNER, OWNER_KIND, OWNER_UID, tag_dict
from setpoint.drivers.aws.session import Clients


@dataclass
class Actual:
    kind: str  # instance, vpc, subnet, security-group, bucket, loadbalancer
    id: str
    region: str
    created: dt.datetime | None
    tags: dict[str, str]
    size: str = ""  # instance type, load balancer type
    arn: str = ""

    @property
    def owner_uid(self) -> str | None:
        return self.tags.get(OWNER_UID)

    @property
    def owner(self) -> str:
        return f"{self.tags.get(OWNER_KIND, '?')} {self.tags[OWNER]}" if OWNER in self.tags else ""

    def age_seconds(self, now: dt.datetime) -> float | None:
        return (now - self.created).total_seconds() if self.created is not None else None


def load_prices(path: Path | None = None) -> dict[str, Any]:
    text = path.read_text() if path else importlib_resources.files(__package__).joinpath("prices.yaml").read_text()
    prices: dict[str, Any] = yaml.safe_load(text)
    return prices


def monthly_cost(a: Actual, prices: dict[str, Any]) -> float:
    hours = float(prices.get("hours_per_month", 730))
    hourly = prices.get("hourly") or {}
    if a.kind == "instance":
        table = hourly.get("instance") or {}
        return round(float(table.get(a.size, table.get("default", 0))) * hours, 2)
    if a.kind in hourly:
        return round(float(hourly[a.kind]) * hours, 2)
    return round(float((prices.get("monthly") or {}).get(a.kind, 0)), 2)


async def inventory(clients: Clients, region: str, endpoint_url: str = "") -> list[Actual]:
    """Everything of the reaper's kinds in ``region`` (default VPCs and their parts excluded:
    AWS made them, nobody forgot them). A few calls per kind, paginated."""
    ec2 = clients.get("ec2", region, endpoint_url)
    s3 = clients.get("s3", region, endpoint_url)
    elb = clients.get("elbv2", region, endpoint_url)

    async def pages(client: Any, op: str, key: str, **kw: Any) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            for page in client.get_paginator(op).paginate(**kw):
                out.extend(page.get(key) or [])
            return out
        return await clients.call(client, op, run)

    found: list[Actual] = []
    for r in await pages(ec2, "describe_instances", "Reservations"):
        for i in r.get("Instances") or []:
            if (i.get("State") or {}).get("Name") in ("terminated", "shutting-down"):
                continue
            found.append(Actual("instance", i["InstanceId"], region, i.get("LaunchTime"), tag_dict(i.get("Tags")),
                                size=i.get("InstanceType", "")))
    default_vpcs = set()
    for v in await pages(ec2, "describe_vpcs", "Vpcs"):
        if v.get("IsDefault"):
            default_vpcs.add(v["VpcId"])
            continue
        found.append(Actual("vpc", v["VpcId"], region, None, tag_dict(v.get("Tags"))))
    for s in await pages(ec2, "describe_subnets", "Subnets"):
        if s.get("VpcId") not in default_vpcs and not s.get("DefaultForAz"):
            found.append(Actual("subnet", s["SubnetId"], region, None, tag_dict(s.get("Tags"))))
    for g in await pages(ec2, "describe_security_groups", "SecurityGroups"):
        if g.get("GroupName") != "default":
            found.append(Actual("security-group", g["GroupId"], region, None, tag_dict(g.get("Tags"))))
    for lb in await pages(elb, "describe_load_balancers", "LoadBalancers"):
        arn = lb["LoadBalancerArn"]
        tags = await clients.call(elb, "DescribeTags", elb.describe_tags, ResourceArns=[arn])
        found.append(Actual("loadbalancer", lb.get("LoadBalancerName", arn), region, lb.get("CreatedTime"),
                            tag_dict((tags.get("TagDescriptions") or [{}])[0].get("Tags")), size=lb.get("Type", ""),
                            arn=arn))
    for b in (await clients.call(s3, "ListBuckets", s3.list_buckets)).get("Buckets") or []:
        try:
            tags = (await clients.call(s3, "GetBucketTagging", s3.get_bucket_tagging, Bucket=b["Name"]))["TagSet"]
        except Exception:
            tags = []
        found.append(Actual("bucket", b["Name"], region, b.get("CreationDate"), tag_dict(tags)))
    return found


async def delete(clients: Clients, a: Actual, endpoint_url: str = "") -> None:
    ec2 = clients.get("ec2", a.region, endpoint_url)
    if a.kind == "instance":
        await clients.call(ec2, "TerminateInstances", ec2.terminate_instances, InstanceIds=[a.id])
    elif a.kind == "vpc":
        await clients.call(ec2, "DeleteVpc", ec2.delete_vpc, VpcId=a.id)
    elif a.kind == "subnet":
        await clients.call(ec2, "DeleteSubnet", ec2.delete_subnet, SubnetId=a.id)
    elif a.kind == "security-group":
        await clients.call(ec2, "DeleteSecurityGroup", ec2.delete_security_group, GroupId=a.id)
    elif a.kind == "loadbalancer":
        elb = clients.get("elbv2", a.region, endpoint_url)
        await clients.call(elb, "DeleteLoadBalancer", elb.delete_load_balancer, LoadBalancerArn=a.arn)
    elif a.kind == "bucket":
        s3 = clients.get("s3", a.region, endpoint_url)
        await clients.call(s3, "DeleteBucket", s3.delete_bucket, Bucket=a.id)
