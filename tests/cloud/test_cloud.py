"""Cloud resources through setpoint against a real AWS API (moto's server): created exactly once
even when replies are lost, drift put back, deletion waits for dependents, and the reaper."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from setpoint.client import Client, NotFound
from setpoint.drivers.aws import resource
from setpoint.testing.replyloss import ReplyLossProxy as LosingProxy
from tests.agent.support import eventually
from tests.cloud.conftest import AMI, boto, obj, ready
from tests.cloud.support import CREDENTIALS, MotoServer
from tests.servers import ServerProcess

boto3 = pytest.importorskip("boto3", reason="boto3 and moto are test extras")

VPCS, SUBNETS, GROUPS, INSTANCES, BUCKETS = (resource(p) for p in
                                             ("vpcs", "subnets", "securitygroups", "instances", "buckets"))


async def test_a_network_and_an_instance_are_created_once_each(
        admin: Client, moto: MotoServer, proxy: LosingProxy) -> None:
    url = proxy.url
    await admin.create(VPCS, obj("VPC", "net", url, cidrBlock="10.1.0.0/16"), namespace="default")
    await admin.create(SUBNETS, obj("Subnet", "a", url, vpcRef="net", cidrBlock="10.1.1.0/24"), namespace="default")
    await admin.create(GROUPS, obj("SecurityGroup", "web", url, vpcRef="net",
                                   ingress=[{"fromPort": 80}, {"fromPort": 443}]), namespace="default")
    proxy.lose(b"Action=RunInstances", 2)  # the first two answers to RunInstances never arrive
    await admin.create(INSTANCES, obj("Instance", "vm", url, imageId=AMI, instanceType="t3.small", subnetRef="a",
                                      securityGroupRefs=["web"]), namespace="default")
    await admin.create(BUCKETS, obj("Bucket", "logs", url), namespace="default")
    vm = await eventually(lambda: ready(admin, INSTANCES, "vm"), timeout=60, what="the instance running")
    for res, name in ((VPCS, "net"), (SUBNETS, "a"), (GROUPS, "web"), (BUCKETS, "logs")):
        await eventually(lambda r=res, n=name: ready(admin, r, n), timeout=30, what=f"{name} ready")  # type: ignore[misc]
    assert proxy.lost >= 1, "no reply was lost: the test proves nothing"
    uid = vm["metadata"]["uid"]
    found = [i for r in boto("ec2", moto).describe_instances(
        Filters=[{"Name": "tag:setpoint.dev/owner-uid", "Values": [uid]}])["Reservations"] for i in r["Instances"]]
    assert len(found) == 1, f"{len(found)} instances for one object"
    assert vm["status"]["instanceId"] == found[0]["InstanceId"] and vm["status"]["state"] == "running"
    group = (await admin.get(GROUPS, "web", namespace="default"))["status"]["groupId"]
    perms = boto("ec2", moto).describe_security_groups(GroupIds=[group])["SecurityGroups"][0]["IpPermissions"]
    assert sorted(p["FromPort"] for p in perms) == [80, 443]


async def test_a_vpc_deleted_behind_setpoints_back_comes_back(admin: Client, moto: MotoServer) -> None:
    await admin.create(VPCS, obj("VPC", "net", moto.url, cidrBlock="10.2.0.0/16"), namespace="default")
    first = (await eventually(lambda: ready(admin, VPCS, "net"), timeout=30, what="ready"))["status"]["vpcId"]
    boto("ec2", moto).delete_vpc(VpcId=first)

    async def recreated() -> str | None:
        o = await admin.get(VPCS, "net", namespace="default")
        vpc = (o.get("status") or {}).get("vpcId")
        return vpc if vpc and vpc != first else None

    second = await eventually(recreated, timeout=30, what="the VPC recreated")
    assert boto("ec2", moto).describe_vpcs(VpcIds=[second])["Vpcs"][0]["State"] == "available"


async def test_deleting_a_vpc_waits_for_its_subnets(admin: Client, moto: MotoServer) -> None:
    await admin.create(VPCS, obj("VPC", "net", moto.url, cidrBlock="10.3.0.0/16"), namespace="default")
    await admin.create(SUBNETS, obj("Subnet", "a", moto.url, vpcRef="net", cidrBlock="10.3.1.0/24"),
                       namespace="default")
    vpc = (await eventually(lambda: ready(admin, VPCS, "net"), timeout=30, what="vpc"))["status"]["vpcId"]
    await eventually(lambda: ready(admin, SUBNETS, "a"), timeout=30, what="subnet")
    await admin.delete(VPCS, "net", namespace="default")
    assert (await admin.get(VPCS, "net", namespace="default"))["metadata"].get("deletionTimestamp")
    await admin.delete(SUBNETS, "a", namespace="default")

    async def gone() -> bool:
        try:
            await admin.get(VPCS, "net", namespace="default")
            return False
        except NotFound:
            return True

    await eventually(gone, timeout=30, what="the VPC deleted once its subnet was")
    assert not boto("ec2", moto).describe_vpcs(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Vpcs"]


async def test_the_reaper_finds_the_forgotten_and_leaves_the_owned(
        admin: Client, moto: MotoServer, cluster: ServerProcess) -> None:
    await admin.create(INSTANCES, obj("Instance", "kept", moto.url, imageId=AMI), namespace="default")
    await eventually(lambda: ready(admin, INSTANCES, "kept"), timeout=30, what="the owned instance")
    client = boto("ec2", moto)
    strays = [i["InstanceId"] for i in client.run_instances(ImageId=AMI, MinCount=3, MaxCount=3,
                                                             InstanceType="m5.large")["Instances"]]
    vpc = client.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnets = [client.create_subnet(VpcId=vpc, CidrBlock=f"10.9.{i}.0/24", AvailabilityZone=f"us-east-1{z}")
               ["Subnet"]["SubnetId"] for i, z in ((1, "a"), (2, "b"))]
    elb = boto("elbv2", moto)
    elb.create_load_balancer(Name="forgotten", Subnets=subnets)

    def run_reap(*args: str) -> str:
        r = subprocess.run([sys.executable, "-m", "setpoint", "reap", "--endpoint-url", moto.url,
                            "--kubeconfig", str(cluster.data_dir / "kubeconfig.yaml"), *args],
                           capture_output=True, text=True, timeout=60, env={**os.environ, **CREDENTIALS})
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    def reap(*args: str) -> dict[str, Any]:
        return json.loads(run_reap("-o", "json", *args))  # type: ignore[no-any-return]

    report = reap()
    by_id = {o["id"]: o for o in report["orphans"]}
    assert set(strays) <= set(by_id) and "forgotten" in by_id
    kept = (await admin.get(INSTANCES, "kept", namespace="default"))["status"]["instanceId"]
    assert kept not in by_id, "an owned instance was reported"
    assert by_id["forgotten"]["monthlyCost"] > 0 and by_id[strays[0]]["monthlyCost"] == pytest.approx(0.096 * 730)
    assert report["monthlyCost"] >= 3 * 0.096 * 730
    exposition = run_reap("-o", "prometheus").splitlines()
    assert 'setpoint_reaper_orphans{kind="instance",reaper="setpoint-reap",region="us-east-1"} 3.0' in exposition
    report = reap("--delete", "--older-than", "0")
    assert set(strays) | {"forgotten"} <= {d.split()[1] for d in report["deleted"]}
    states = {i["InstanceId"]: i["State"]["Name"] for r in client.describe_instances()["Reservations"]
              for i in r["Instances"]}
    assert all(states[s] in ("shutting-down", "terminated") for s in strays)
    assert states[kept] == "running"
    assert not elb.describe_load_balancers()["LoadBalancers"]


async def test_a_reaper_object_reports_orphans_on_its_schedule(admin: Client, moto: MotoServer) -> None:
    reapers = resource_named("reapers")
    stray = boto("ec2", moto).run_instances(ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="t3.micro")
    stray_id = stray["Instances"][0]["InstanceId"]
    await admin.create(reapers, {"apiVersion": "aws.setpoint.dev/v1alpha1", "kind": "Reaper",
                                 "metadata": {"name": "hourly"},
                                 "spec": {"endpointUrl": moto.url, "intervalSeconds": 1}}, namespace="default")

    async def reported() -> dict[str, Any] | None:
        r = await admin.get(reapers, "hourly", namespace="default")
        ids = {o["id"] for o in (r.get("status") or {}).get("orphans") or []}
        return r if stray_id in ids else None

    r = await eventually(reported, timeout=30, what="the stray instance in the Reaper's status")
    assert r["status"]["monthlyCost"] >= round(0.0104 * 730, 2) and r["status"]["deleted"] == []
    first = r["status"]["lastRunTime"]

    async def ran_again() -> bool:
        return bool((await admin.get(reapers, "hourly", namespace="default"))["status"]["lastRunTime"] != first)

    await eventually(ran_again, timeout=15, what="a second run on the schedule")
    states = [i["State"]["Name"] for r in boto("ec2", moto).describe_instances(InstanceIds=[stray_id])["Reservations"]
              for i in r["Instances"]]
    assert states == ["running"], "a reaper without delete: true deleted something"


def resource_named(plural: str) -> Any:
    from setpoint.client import Resource

    return Resource("aws.setpoint.dev", "v1alpha1", plural, kind="Reaper")


async def test_an_elbv2_load_balancer_forwards_to_a_target_group_of_instances(
        admin: Client, moto: MotoServer) -> None:
    url = moto.url
    await admin.create(VPCS, obj("VPC", "net", url, cidrBlock="10.4.0.0/16"), namespace="default")
    for name, cidr, zone in (("a", "10.4.1.0/24", "us-east-1a"), ("b", "10.4.2.0/24", "us-east-1b")):
        await admin.create(SUBNETS, obj("Subnet", name, url, vpcRef="net", cidrBlock=cidr, availabilityZone=zone),
                           namespace="default")
    await admin.create(INSTANCES, obj("Instance", "vm", url, imageId=AMI, subnetRef="a"), namespace="default")
    await admin.create(resource("targetgroups"), obj("TargetGroup", "web", url, vpcRef="net", port=8080,
                                                     instanceRefs=["vm"]), namespace="default")
    await admin.create(resource("elasticloadbalancers"), obj("ElasticLoadBalancer", "front", url, subnetRefs=["a", "b"],
                                                      listeners=[{"port": 80, "targetGroupRef": "web"}]),
                       namespace="default")
    lb = await eventually(lambda: ready(admin, resource("elasticloadbalancers"), "front"), timeout=60, what="the ELB")
    tg = await eventually(lambda: ready(admin, resource("targetgroups"), "web"), timeout=30, what="the group")
    vm = (await admin.get(INSTANCES, "vm", namespace="default"))["status"]["instanceId"]
    elb = boto("elbv2", moto)
    listeners = elb.describe_listeners(LoadBalancerArn=lb["status"]["loadBalancerArn"])["Listeners"]
    assert [(x["Port"], x["DefaultActions"][0]["TargetGroupArn"]) for x in listeners] == \
        [(80, tg["status"]["targetGroupArn"])]
    targets = elb.describe_target_health(TargetGroupArn=tg["status"]["targetGroupArn"])["TargetHealthDescriptions"]
    assert [t["Target"]["Id"] for t in targets] == [vm]
    assert len(elb.describe_load_balancers()["LoadBalancers"]) == 1


async def test_throttling_is_waited_out_and_makes_one_instance(
        admin: Client, moto: MotoServer, proxy: LosingProxy) -> None:
    proxy.throttle(b"Action=RunInstances", 3)  # the API refuses the first three: RequestLimitExceeded
    created = await admin.create(INSTANCES, obj("Instance", "vm", proxy.url, imageId=AMI), namespace="default")
    vm = await eventually(lambda: ready(admin, INSTANCES, "vm"), timeout=60, what="the instance running")
    assert proxy.throttled == 3, f"{proxy.throttled} throttled: the test proves nothing"
    found = [i for r in boto("ec2", moto).describe_instances(
        Filters=[{"Name": "tag:setpoint.dev/owner-uid", "Values": [created["metadata"]["uid"]]}])["Reservations"]
        for i in r["Instances"]]
    assert [i["InstanceId"] for i in found] == [vm["status"]["instanceId"]]


def test_the_clouds_answers_are_classified() -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

    from setpoint.agent.errors import NotReady, Permanent, Transient
    from setpoint.drivers.aws.errors import classify

    def refused(code: str, status: int = 400) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                           "RunInstances")

    assert isinstance(classify(refused("RequestLimitExceeded", 503), "RunInstances"), Transient)
    assert isinstance(classify(refused("InternalError", 500), "x"), Transient)
    assert isinstance(classify(refused("DependencyViolation"), "x"), NotReady)
    assert isinstance(classify(refused("InvalidParameterValue"), "x"), Permanent)
    assert isinstance(classify(refused("InstanceLimitExceeded"), "x"), Permanent)
    timed_out = classify(ReadTimeoutError(endpoint_url="http://x"), "RunInstances")
    assert isinstance(timed_out, Transient) and timed_out.uncertain, "a lost reply is uncertain"
    unreachable = classify(EndpointConnectionError(endpoint_url="http://x"), "RunInstances")
    assert isinstance(unreachable, Transient) and not unreachable.uncertain
