"""Changing each cloud kind: what the cloud can change in place is changed (rules, targets,
listeners, an instance's type and groups), what it cannot is refused with a condition naming the
field, and putting the old value back makes the object Ready again. Against moto's server."""

from __future__ import annotations

from typing import Any

import pytest

from setpoint.client import Client
from setpoint.drivers.aws import resource
from tests.agent.support import eventually
from tests.cloud.conftest import AMI, boto, obj, ready, refused
from tests.cloud.support import MotoServer

pytest.importorskip("boto3", reason="boto3 and moto are test extras")

VPCS, SUBNETS, GROUPS, INSTANCES, BUCKETS, TARGETS, ELBS = (
    resource(p) for p in ("vpcs", "subnets", "securitygroups", "instances", "buckets", "targetgroups",
                          "elasticloadbalancers"))
NS = "default"


async def patch_spec(client: Client, res: Any, name: str, spec: dict[str, Any]) -> None:
    await client.patch(res, name, {"spec": spec}, namespace=NS)


async def test_what_the_cloud_changes_in_place_is_changed(admin: Client, moto: MotoServer) -> None:
    url = moto.url
    await admin.create(VPCS, obj("VPC", "net", url, cidrBlock="10.5.0.0/16"), namespace=NS)
    for name, cidr, zone in (("a", "10.5.1.0/24", "us-east-1a"), ("b", "10.5.2.0/24", "us-east-1b")):
        await admin.create(SUBNETS, obj("Subnet", name, url, vpcRef="net", cidrBlock=cidr, availabilityZone=zone),
                           namespace=NS)
    for group in ("web", "admin"):
        await admin.create(GROUPS, obj("SecurityGroup", group, url, vpcRef="net", ingress=[{"fromPort": 80}]),
                           namespace=NS)
    for vm in ("vm1", "vm2"):
        await admin.create(INSTANCES, obj("Instance", vm, url, imageId=AMI, instanceType="t3.micro", subnetRef="a",
                                          securityGroupRefs=["web"]), namespace=NS)
    await admin.create(TARGETS, obj("TargetGroup", "blue", url, vpcRef="net", port=8080, instanceRefs=["vm1"]),
                       namespace=NS)
    await admin.create(TARGETS, obj("TargetGroup", "green", url, vpcRef="net", port=8080, instanceRefs=["vm2"]),
                       namespace=NS)
    await admin.create(ELBS, obj("ElasticLoadBalancer", "front", url, subnetRefs=["a", "b"],
                                 listeners=[{"port": 80, "targetGroupRef": "blue"},
                                            {"port": 8081, "targetGroupRef": "blue"}]), namespace=NS)
    lb = await eventually(lambda: ready(admin, ELBS, "front"), timeout=90, what="the load balancer")
    for res, name in ((GROUPS, "web"), (INSTANCES, "vm1"), (INSTANCES, "vm2"), (TARGETS, "blue")):
        await eventually(lambda r=res, n=name: ready(admin, r, n), timeout=30, what=f"{name}")  # type: ignore[misc]
    ec2, elb = boto("ec2", moto), boto("elbv2", moto)

    # A security group's rules: 80 becomes 443 and 8443.
    web = (await admin.get(GROUPS, "web", namespace=NS))["status"]["groupId"]
    await patch_spec(admin, GROUPS, "web", {"ingress": [{"fromPort": 443}, {"fromPort": 8443}]})

    def ports() -> list[int]:
        perms = ec2.describe_security_groups(GroupIds=[web])["SecurityGroups"][0]["IpPermissions"]
        return sorted(p["FromPort"] for p in perms)

    await eventually(lambda: ports() == [443, 8443], timeout=30, what="the new rules")

    # An instance's type (stop, change, start) and its groups (in place); the same instance.
    vm1 = (await admin.get(INSTANCES, "vm1", namespace=NS))["status"]["instanceId"]
    await patch_spec(admin, INSTANCES, "vm1", {"instanceType": "t3.large", "securityGroupRefs": ["web", "admin"]})
    admin_group = (await admin.get(GROUPS, "admin", namespace=NS))["status"]["groupId"]

    def described() -> dict[str, Any]:
        found: dict[str, Any] = ec2.describe_instances(InstanceIds=[vm1])["Reservations"][0]["Instances"][0]
        return found

    await eventually(lambda: described()["InstanceType"] == "t3.large" and described()["State"]["Name"] == "running",
                     timeout=60, what="the instance running as t3.large")
    assert sorted(g["GroupId"] for g in described()["SecurityGroups"]) == sorted([web, admin_group])
    async def ready_as_large() -> dict[str, Any] | None:
        # Ready as the new type: the Ready of before the change may still be what is read first.
        o = await ready(admin, INSTANCES, "vm1")
        return o if o and o["status"].get("instanceType") == "t3.large" else None

    o = await eventually(ready_as_large, timeout=30, what="vm1 ready again as t3.large")
    assert o["status"]["instanceId"] == vm1
    tagged = [i for r in ec2.describe_instances(Filters=[{"Name": "tag:setpoint.dev/owner-uid",
                                                          "Values": [o["metadata"]["uid"]]}])["Reservations"]
              for i in r["Instances"]]
    assert len(tagged) == 1, "the change made a second instance"

    # A target group's members: vm1 out, vm2 in.
    blue = (await admin.get(TARGETS, "blue", namespace=NS))["status"]["targetGroupArn"]
    vm2 = (await admin.get(INSTANCES, "vm2", namespace=NS))["status"]["instanceId"]
    await patch_spec(admin, TARGETS, "blue", {"instanceRefs": ["vm2"]})

    def members() -> list[str]:
        return [t["Target"]["Id"] for t in elb.describe_target_health(TargetGroupArn=blue)["TargetHealthDescriptions"]]

    await eventually(lambda: members() == [vm2], timeout=30, what="vm2 the only target")

    # Listeners: 80 switches to green, 8081 goes, 9000 comes.
    await eventually(lambda: ready(admin, TARGETS, "green"), timeout=30, what="green")
    green = (await admin.get(TARGETS, "green", namespace=NS))["status"]["targetGroupArn"]
    await admin.patch(ELBS, "front", {"spec": {"listeners": [{"port": 80, "targetGroupRef": "green"},
                                                             {"port": 9000, "targetGroupRef": "blue"}]}},
                      namespace=NS)

    def listeners() -> list[tuple[int, str]]:
        found = elb.describe_listeners(LoadBalancerArn=lb["status"]["loadBalancerArn"])["Listeners"]
        return sorted((x["Port"], x["DefaultActions"][0]["TargetGroupArn"]) for x in found)

    await eventually(lambda: listeners() == [(80, green), (9000, blue)], timeout=30, what="the new listeners")


async def test_what_the_cloud_cannot_change_is_refused_and_can_be_put_back(admin: Client, moto: MotoServer) -> None:
    url = moto.url
    await admin.create(VPCS, obj("VPC", "net", url, cidrBlock="10.6.0.0/16"), namespace=NS)
    await admin.create(SUBNETS, obj("Subnet", "a", url, vpcRef="net", cidrBlock="10.6.1.0/24"), namespace=NS)
    await admin.create(BUCKETS, obj("Bucket", "logs", url, bucketName="setpoint-test-logs"), namespace=NS)
    for res, name in ((VPCS, "net"), (SUBNETS, "a"), (BUCKETS, "logs")):
        await eventually(lambda r=res, n=name: ready(admin, r, n), timeout=30, what=f"{name}")  # type: ignore[misc]
    vpc = (await admin.get(VPCS, "net", namespace=NS))["status"]["vpcId"]

    await patch_spec(admin, VPCS, "net", {"cidrBlock": "10.7.0.0/16"})
    await patch_spec(admin, SUBNETS, "a", {"cidrBlock": "10.6.2.0/24"})
    await patch_spec(admin, BUCKETS, "logs", {"bucketName": "setpoint-test-logs-2"})
    for res, name, field in ((VPCS, "net", "cidrBlock"), (SUBNETS, "a", "cidrBlock"),
                             (BUCKETS, "logs", "bucketName")):
        o = await eventually(lambda r=res, n=name: refused(admin, r, n, "Immutable"), timeout=30,  # type: ignore[misc]
                             what=f"{name}: the change refused")
        message = next(c["message"] for c in o["status"]["conditions"] if c["type"] == "Ready")
        assert f"spec.{field}" in message, message
    ec2, s3 = boto("ec2", moto), boto("s3", moto)
    assert ec2.describe_vpcs(VpcIds=[vpc])["Vpcs"][0]["CidrBlock"] == "10.6.0.0/16", "the VPC was touched"
    assert [v["VpcId"] for v in ec2.describe_vpcs(Filters=[{"Name": "cidr", "Values": ["10.7.0.0/16"]}])["Vpcs"]] == []
    assert sorted(b["Name"] for b in s3.list_buckets()["Buckets"]) == ["setpoint-test-logs"], "a second bucket"

    await patch_spec(admin, VPCS, "net", {"cidrBlock": "10.6.0.0/16"})
    o = await eventually(lambda: ready(admin, VPCS, "net"), timeout=30, what="the VPC ready with its old value")
    assert o["status"]["vpcId"] == vpc


async def test_deleting_every_kind_removes_every_resource(admin: Client, moto: MotoServer) -> None:
    url = moto.url
    await admin.create(VPCS, obj("VPC", "net", url, cidrBlock="10.8.0.0/16"), namespace=NS)
    for name, cidr, zone in (("a", "10.8.1.0/24", "us-east-1a"), ("b", "10.8.2.0/24", "us-east-1b")):
        await admin.create(SUBNETS, obj("Subnet", name, url, vpcRef="net", cidrBlock=cidr, availabilityZone=zone),
                           namespace=NS)
    await admin.create(GROUPS, obj("SecurityGroup", "web", url, vpcRef="net", ingress=[{"fromPort": 80}]),
                       namespace=NS)
    await admin.create(INSTANCES, obj("Instance", "vm", url, imageId=AMI, subnetRef="a", securityGroupRefs=["web"]),
                       namespace=NS)
    await admin.create(BUCKETS, obj("Bucket", "logs", url), namespace=NS)
    await admin.create(TARGETS, obj("TargetGroup", "blue", url, vpcRef="net", port=8080, instanceRefs=["vm"]),
                       namespace=NS)
    await admin.create(ELBS, obj("ElasticLoadBalancer", "front", url, subnetRefs=["a", "b"],
                                 listeners=[{"port": 80, "targetGroupRef": "blue"}]), namespace=NS)
    everything = [(VPCS, "net"), (SUBNETS, "a"), (SUBNETS, "b"), (GROUPS, "web"), (INSTANCES, "vm"),
                  (BUCKETS, "logs"), (TARGETS, "blue"), (ELBS, "front")]
    for res, name in everything:
        await eventually(lambda r=res, n=name: ready(admin, r, n), timeout=90, what=f"{name}")  # type: ignore[misc]
    for res, name in everything:  # all at once, the network first: each waits for its dependents
        await admin.delete(res, name, namespace=NS)

    async def all_gone() -> bool:
        for res, _ in everything:
            if (await admin.list(res, namespace=NS)).items:
                return False
        return True

    await eventually(all_gone, timeout=120, what="every object deleted")
    ec2, elb, s3 = boto("ec2", moto), boto("elbv2", moto), boto("s3", moto)
    states = [i["State"]["Name"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    assert all(s in ("shutting-down", "terminated") for s in states), states
    assert [v for v in ec2.describe_vpcs()["Vpcs"] if not v.get("IsDefault")] == []
    assert [g for g in ec2.describe_security_groups()["SecurityGroups"] if g["GroupName"] != "default"] == []
    assert elb.describe_load_balancers()["LoadBalancers"] == [] and elb.describe_target_groups()["TargetGroups"] == []
    assert s3.list_buckets()["Buckets"] == []
