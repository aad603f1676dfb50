"""The source material's two cloud templates (examples/stack) applied as Stacks against the
cloud kinds and moto's server: they converge with the networks and machines they describe, and
destroying one removes everything it made."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from setpoint.agent.conditions import get_condition
from setpoint.client import Client, NotFound
from setpoint.controllers.resources import STACKS
from setpoint.drivers.aws import resource
from tests.agent.support import eventually
from tests.cloud.conftest import AMI, boto
from tests.cloud.support import MotoServer
from tests.node.test_node_agent import ControllerManager
from tests.servers import ServerProcess

pytest.importorskip("boto3", reason="boto3 and moto are test extras")

INSTANCES = resource("instances")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "stack"


@pytest.fixture
def stacks(cluster: ServerProcess) -> Iterator[None]:
    cm = ControllerManager(cluster)  # the Stack controller; the cloud controller runs already
    yield
    cm.stop()


def example(name: str, moto: MotoServer) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    doc["spec"]["parameters"].update(endpointUrl=moto.url, imageId=AMI)
    return doc


async def converged(client: Client, name: str) -> dict[str, Any] | None:
    s = await client.get(STACKS, name, namespace="default")
    c = get_condition(s.get("status"), "Ready")
    return s if c is not None and c["status"] == "True" else None


def instance(ec2: Any, instance_id: str) -> dict[str, Any]:
    found: dict[str, Any] = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return found


async def test_a_vpc_with_two_subnets_and_two_machines(admin: Client, moto: MotoServer, stacks: None) -> None:
    await admin.create(STACKS, example("vpc-two-subnets.yaml", moto), namespace="default")
    s = await eventually(lambda: converged(admin, "vpc-two-subnets"), timeout=120, what="the stack converged")
    ec2 = boto("ec2", moto)
    vpc = s["status"]["outputs"]["vpcId"]
    subnets = {x["SubnetId"]: x["CidrBlock"] for x in ec2.describe_subnets(
        Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]}
    assert sorted(subnets.values()) == ["10.20.1.0/24", "10.20.2.0/24"]
    machines = {}
    for name in ("web", "db"):
        entry = next(e for e in s["status"]["resources"] if e["name"] == name)
        o = await admin.get(INSTANCES, entry["objectName"], namespace="default")
        machines[name] = instance(ec2, o["status"]["instanceId"])
    assert subnets[machines["web"]["SubnetId"]] == "10.20.1.0/24"
    assert subnets[machines["db"]["SubnetId"]] == "10.20.2.0/24"
    assert s["status"]["outputs"]["webIp"] == machines["web"]["PrivateIpAddress"]


async def test_two_isolated_networks_and_a_machine_on_both(admin: Client, moto: MotoServer, stacks: None,
                                                            tmp_path: Path) -> None:
    await admin.create(STACKS, example("isolated-networks.yaml", moto), namespace="default")
    s = await eventually(lambda: converged(admin, "isolated-networks"), timeout=120, what="the stack converged")
    ec2 = boto("ec2", moto)
    cidr = {x["SubnetId"]: x["CidrBlock"] for x in ec2.describe_subnets()["Subnets"]}
    nics = s["status"]["outputs"]["routerInterfaces"]
    assert [cidr[n["subnetId"]] for n in nics] == ["10.30.1.0/24", "10.30.2.0/24"]
    router = (await admin.get(INSTANCES, "isolated-router", namespace="default"))["status"]["instanceId"]
    attached = sorted((n["Attachment"]["DeviceIndex"], cidr[n["SubnetId"]])
                      for n in instance(ec2, router)["NetworkInterfaces"])
    assert attached == [(0, "10.30.1.0/24"), (1, "10.30.2.0/24")]
    for vm, net in (("isolated-front-vm", "10.30.1.0/24"), ("isolated-back-vm", "10.30.2.0/24")):
        iid = (await admin.get(INSTANCES, vm, namespace="default"))["status"]["instanceId"]
        assert [cidr[n["SubnetId"]] for n in instance(ec2, iid)["NetworkInterfaces"]] == [net]

    await admin.delete(STACKS, "isolated-networks", namespace="default")

    async def gone() -> bool:
        try:
            await admin.get(STACKS, "isolated-networks", namespace="default")
            return False
        except NotFound:
            return True

    await eventually(gone, timeout=120, what="the stack destroyed")
    states = {i["InstanceId"]: i["State"]["Name"] for r in ec2.describe_instances()["Reservations"]
              for i in r["Instances"]}
    assert states and all(v in ("shutting-down", "terminated") for v in states.values()), states
    assert [v for v in ec2.describe_vpcs()["Vpcs"] if not v.get("IsDefault")] == []
