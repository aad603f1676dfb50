"""``setpoint reap --processes``: on a node, the ProcessSets whose processes still run but whose
object is gone are reported and, with --delete, stopped; those of live objects are left alone."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from setpoint.client import Client, Resource
from setpoint.drivers.base import OperationId
from setpoint.drivers.process import ProcessDriver
from tests.agent.support import eventually
from tests.servers import ServerProcess, alive

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the process driver is Linux only")

PROCESSSETS = Resource("setpoint.dev", "v1alpha1", "processsets", namespaced=True, kind="ProcessSet")
SLEEP = ["-c", "import time; time.sleep(1e6)"]


def spec() -> dict[str, Any]:
    # nodeName names no node: no agent will act on it; this test plays the agent.
    return {"command": sys.executable, "args": SLEEP, "replicas": 1, "nodeName": "reap-test-nowhere"}


async def reap(server: ServerProcess, state: Path, *args: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "setpoint", "reap", "--no-cloud", "--processes", str(state), "-o", "json",
        "--kubeconfig", str(server.data_dir / "kubeconfig.yaml"), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)  # type: ignore[no-any-return]


async def test_the_processes_of_a_gone_process_set_are_reported_and_stopped(
        server: ServerProcess, namespace: str, tmp_path: Path) -> None:
    state = tmp_path / "agent"
    async with Client(server.client_config()) as client:
        kept = await client.create(PROCESSSETS, {"apiVersion": "setpoint.dev/v1alpha1", "kind": "ProcessSet",
                                                 "metadata": {"name": "kept"}, "spec": spec()}, namespace=namespace)
    gone = {"metadata": {"uid": "0c0ffee0-0000-4000-8000-00000000dead", "namespace": namespace, "name": "gone"},
            "spec": spec()}
    driver = ProcessDriver(state)
    pids = {}
    try:
        for obj in (kept, gone):
            observed = await driver.ensure(obj, None, OperationId.for_object(obj, "ensure"))
            pids[obj["metadata"]["name"]] = observed.pids[0]
    finally:
        driver.close()

    report = await reap(server, state)
    assert [(o["source"], o["kind"], o["id"]) for o in report["orphans"]] == \
        [("processes", "process-set", gone["metadata"]["uid"])], report
    orphan = report["orphans"][0]
    assert orphan["owner"] == f"ProcessSet {namespace}/gone" and orphan["ageSeconds"] is not None
    assert orphan["region"] == os.uname().nodename and report["examined"] == 2
    assert alive(pids["gone"]), "reporting stopped something"

    report = await reap(server, state, "--delete", "--older-than", "0")
    assert report["deleted"] == [f"process-set {gone['metadata']['uid']}"], report
    await eventually(lambda: not alive(pids["gone"]), timeout=15, what="the forgotten process stopped")
    assert alive(pids["kept"]), "a process of a live ProcessSet was stopped"
    assert (state / kept["metadata"]["uid"]).is_dir() and not (state / gone["metadata"]["uid"]).exists()
    await ProcessDriver(state).stop_everything()
