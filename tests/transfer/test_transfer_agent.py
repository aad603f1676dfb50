"""Real agent processes on each transfer of desired state, against a real server publishing to a
real NATS: ProcessSets converge the same way whichever way their desired state travels, through
scaling, an agent killed with SIGKILL, and deletion."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from setpoint.client import Client
from setpoint.controllers.resources import PROCESSSETS
from setpoint.transfer import TRANSPORTS
from setpoint.transfer.natsserver import NatsServer
from tests.agent.support import eventually
from tests.conftest import nats_args
from tests.node.test_node_agent import Agent, ControllerManager, converged_with, processes_of, processset
from tests.servers import ServerProcess


@pytest.fixture
def nats_cluster(tmp_path: Path, nats_server: NatsServer) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path / "server", nats_args(nats_server)).start()
    yield srv
    srv.stop()


@pytest.fixture
async def admin(nats_cluster: ServerProcess) -> AsyncIterator[Client]:
    async with Client(nats_cluster.client_config()) as c:
        yield c


@pytest.mark.parametrize("transfer", TRANSPORTS)
async def test_processsets_converge_on_every_transfer(
    nats_cluster: ServerProcess, admin: Client, tmp_path: Path, transfer: str
) -> None:
    args = ["--transfer", transfer, "--poll-interval", "0.2"]
    cm = ControllerManager(nats_cluster, *args)
    agent = Agent(nats_cluster, "n1", tmp_path / "agent-n1").start(*args)
    try:
        await admin.create(PROCESSSETS, processset("web", 2), namespace="default")
        await eventually(lambda: converged_with(admin, "web", 2), timeout=30, what="2 replicas")
        await admin.patch(PROCESSSETS, "web", {"spec": {"replicas": 3}}, namespace="default")
        await eventually(lambda: converged_with(admin, "web", 3), timeout=30, what="3 replicas")

        agent.kill()  # SIGKILL: its processes stay; the next agent adopts them
        await admin.patch(PROCESSSETS, "web", {"spec": {"replicas": 1}}, namespace="default")
        agent.start(*args)
        await eventually(lambda: converged_with(admin, "web", 1), timeout=30, what="1 replica after a restart")

        uid = (await admin.get(PROCESSSETS, "web", namespace="default"))["metadata"]["uid"]
        await admin.delete(PROCESSSETS, "web", namespace="default")
        await eventually(lambda: not processes_of(uid), timeout=30, what="the processes stopped")
        assert f"transfer {transfer}" in agent.log.read_text()
    finally:
        agent.kill()
        cm.stop()


def test_an_agent_refuses_a_transfer_the_server_does_not_offer(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "server").start()  # no --nats
    try:
        agent = Agent(srv, "n1", tmp_path / "agent-n1")
        proc = subprocess.run(
            [sys.executable, "-m", "setpoint", "agent", "--node", "n1", "--kubeconfig", str(agent.kubeconfig),
             "--state-dir", str(tmp_path / "agent-n1"), "--transfer", "command"],
            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
        )
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "does not offer --transfer command" in proc.stdout
        assert "--nats" in proc.stdout
    finally:
        srv.stop()


async def test_transfer_info_lists_what_the_server_offers(nats_cluster: ServerProcess, admin: Client,
                                                          nats_server: NatsServer) -> None:
    info = await admin.transfer_info()
    assert info["transports"] == ["watch", "poll", "interrupt", "command"]
    assert info["nats"]["url"] == nats_server.url
    assert info["nats"]["prefix"] == nats_cluster.args[nats_cluster.args.index("--nats-prefix") + 1]
