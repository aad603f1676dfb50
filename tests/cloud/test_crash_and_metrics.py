"""The cloud controller killed between a create and its status write leaves exactly one resource
behind it; the reaper's last report and the work queues on the controller's /metrics."""

from __future__ import annotations

import re

import httpx
import pytest

from setpoint.client import Client, Resource
from setpoint.testing.replyloss import ReplyLossProxy as LosingProxy
from tests.agent.support import eventually
from tests.cloud.conftest import AMI, CloudController, boto, obj, ready
from tests.cloud.support import MotoServer

pytest.importorskip("boto3", reason="boto3 and moto are test extras")

INSTANCES = Resource("aws.setpoint.dev", "v1alpha1", "instances", kind="Instance")
REAPERS = Resource("aws.setpoint.dev", "v1alpha1", "reapers", kind="Reaper")


async def test_killed_between_create_and_status_write_one_instance_exists(
        admin: Client, moto: MotoServer, proxy: LosingProxy, controller: CloudController) -> None:
    proxy.lose_from(b"Action=RunInstances")  # the cloud creates it; the controller never hears again
    created = await admin.create(INSTANCES, obj("Instance", "vm", proxy.url, imageId=AMI), namespace="default")
    uid = created["metadata"]["uid"]
    ec2 = boto("ec2", moto)

    def tagged() -> list[str]:
        return [i["InstanceId"] for r in ec2.describe_instances(
            Filters=[{"Name": "tag:setpoint.dev/owner-uid", "Values": [uid]},
                     {"Name": "instance-state-name", "Values": ["pending", "running"]}])["Reservations"]
                for i in r["Instances"]]

    await eventually(lambda: bool(tagged()), timeout=30, what="the instance created in the cloud")
    await eventually(lambda: proxy.requests["RunInstances"] >= 1 and proxy.lost >= 2, timeout=30,
                     what="the controller retrying without answers")
    controller.kill()
    status = (await admin.get(INSTANCES, "vm", namespace="default")).get("status") or {}
    assert not status.get("instanceId"), "the status was written: the kill came too late to prove anything"

    proxy.heal()
    controller.start()  # takes the lease over once the dead one's expires
    vm = await eventually(lambda: ready(admin, INSTANCES, "vm"), timeout=90, what="the instance ready")
    assert tagged() == [vm["status"]["instanceId"]], f"instances for one object: {tagged()}"


def sample(text: str, metric: str, **labels: str) -> float | None:
    for line in text.splitlines():
        m = re.fullmatch(rf"{metric}\{{(.*)\}} (\S+)", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            return float(m.group(2))
    return None


async def test_the_reapers_report_and_the_work_queues_are_on_metrics(
        admin: Client, moto: MotoServer, controller: CloudController) -> None:
    ec2 = boto("ec2", moto)
    strays = [i["InstanceId"] for i in ec2.run_instances(ImageId=AMI, MinCount=2, MaxCount=2,
                                                          InstanceType="t3.micro")["Instances"]]
    await admin.create(REAPERS, {"apiVersion": "aws.setpoint.dev/v1alpha1", "kind": "Reaper",
                                 "metadata": {"name": "hourly"},
                                 "spec": {"endpointUrl": moto.url, "intervalSeconds": 1}}, namespace="default")

    async def scraped(**want: float) -> str | None:
        try:
            async with httpx.AsyncClient() as h:
                text = (await h.get(controller.metrics_url, timeout=5)).text
        except httpx.TransportError:
            return None
        got = sample(text, "setpoint_reaper_orphans", reaper="default/hourly", kind="instance", region="us-east-1")
        return text if got == want["orphans"] else None

    text = await eventually(lambda: scraped(orphans=2), timeout=30, what="two orphans on /metrics")
    cost = sample(text, "setpoint_reaper_monthly_cost_dollars", reaper="default/hourly")
    assert cost == pytest.approx(round(2 * 0.0104 * 730, 2))
    assert sample(text, "setpoint_workqueue_depth", name="aws-instances") is not None
    assert sample(text, "setpoint_workqueue_adds_total", name="reapers") is not None

    ec2.terminate_instances(InstanceIds=strays)
    await eventually(lambda: _no_series(controller), timeout=30, what="the terminated strays' series gone")
    await admin.delete(REAPERS, "hourly", namespace="default")
    await eventually(lambda: _no_reaper(controller), timeout=30, what="the deleted reaper's series gone")


async def _no_series(controller: CloudController) -> bool:
    async with httpx.AsyncClient() as h:
        text = (await h.get(controller.metrics_url, timeout=5)).text
    return sample(text, "setpoint_reaper_orphans", reaper="default/hourly", kind="instance") is None \
        and sample(text, "setpoint_reaper_examined", reaper="default/hourly") is not None


async def _no_reaper(controller: CloudController) -> bool:
    async with httpx.AsyncClient() as h:
        text = (await h.get(controller.metrics_url, timeout=5)).text
    return 'reaper="default/hourly"' not in text
