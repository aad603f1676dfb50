"""Credentials never show: not in status, events, the controller's log or its errors, even when
the cloud refuses requests made with them."""

from __future__ import annotations

from pathlib import Path

import pytest

from setpoint.client import Client, Resource
from tests.agent.support import eventually
from tests.cloud.conftest import AMI, CloudController, obj
from tests.cloud.support import MotoServer
from tests.servers import ServerProcess

pytest.importorskip("boto3", reason="boto3 and moto are test extras")

SECRET = "s3cr3t-N3VER-SHOWN-Zq81vXkP0aLr"
TOKEN = "t0ken-N3VER-SHOWN-8fJq2Lm"
INSTANCES = Resource("aws.setpoint.dev", "v1alpha1", "instances", kind="Instance")
EVENTS = Resource("", "v1", "events", kind="Event")
VPCS = Resource("aws.setpoint.dev", "v1alpha1", "vpcs", kind="VPC")


async def test_credentials_never_reach_status_events_or_logs(
        server: ServerProcess, moto: MotoServer, tmp_path: Path) -> None:
    log = tmp_path / "cloud.log"
    ctl = CloudController(server, log, env={"AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": TOKEN}).start()
    try:
        async with Client(server.client_config()) as client:
            await client.create(INSTANCES, obj("Instance", "ok", moto.url, imageId=AMI), namespace="default")
            # A VPC larger than a /16: the cloud refuses it (a Permanent error, with the cloud's words).
            await client.create(VPCS, obj("VPC", "bad", moto.url, cidrBlock="10.0.0.0/8"), namespace="default")
            bad = await eventually(lambda: _failed(client), timeout=60, what="the bad instance refused")
            texts = [str(bad), str(await client.get(INSTANCES, "ok", namespace="default"))]
            texts += [str(e) for e in (await client.list(EVENTS, namespace="default")).items]
    finally:
        ctl.stop()
    texts.append(log.read_text())
    for text in texts:
        assert SECRET not in text and TOKEN not in text
    assert "10.0.0.0/8" in str(bad), "the refusal does not say what was refused: the test proves little"


async def _failed(client: Client) -> dict[str, object] | None:
    o = await client.get(VPCS, "bad", namespace="default")
    conds = (o.get("status") or {}).get("conditions") or []
    return o if any(c["type"] == "Ready" and c["status"] == "False" and c.get("reason") != "Provisioning"
                    for c in conds) else None
