"""The cloud tests' world: moto's server, a proxy that loses replies in front of it, a control
plane, and ``setpoint cloud-controller`` as a process the test can kill and start again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from setpoint.agent.conditions import get_condition
from setpoint.client import Client
from setpoint.testing.replyloss import ReplyLossProxy as LosingProxy
from tests.cloud.support import CREDENTIALS, MotoServer, free_port
from tests.servers import ServerProcess

AMI = "ami-12c6146b"  # one of moto's built-in images


class CloudController:
    """``setpoint cloud-controller`` against ``srv``, with its metrics on a port of its own."""

    def __init__(self, srv: ServerProcess, log: Path, env: dict[str, str] | None = None) -> None:
        self.srv = srv
        self.log = log
        self.env = {**os.environ, **CREDENTIALS, **(env or {})}
        self.metrics_url = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> CloudController:
        port = free_port()
        self.metrics_url = f"http://127.0.0.1:{port}/metrics"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "setpoint", "cloud-controller", "--kubeconfig",
             str(self.srv.data_dir / "kubeconfig.yaml"), "--drift-interval", "1",
             "--metrics-address", f"127.0.0.1:{port}"],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=self.env)
        return self

    def kill(self) -> None:
        """kill -9: no finally block, no status write, no lease given back."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[MotoServer]:
    m = MotoServer(tmp_path / "moto.log")
    yield m
    m.stop()


@pytest.fixture
def proxy(moto: MotoServer) -> Iterator[LosingProxy]:
    p = LosingProxy(moto.port)
    yield p
    p.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path / "server").start()
    yield srv
    srv.stop()


@pytest.fixture
def controller(server: ServerProcess, tmp_path: Path, proxy: LosingProxy) -> Iterator[CloudController]:
    ctl = CloudController(server, tmp_path / "cloud.log").start()
    yield ctl
    ctl.stop()


@pytest.fixture
def cluster(server: ServerProcess, controller: CloudController) -> ServerProcess:
    return server


@pytest.fixture
async def admin(cluster: ServerProcess) -> AsyncIterator[Client]:
    async with Client(cluster.client_config()) as c:
        yield c


def boto(service: str, moto: MotoServer) -> Any:
    boto3 = pytest.importorskip("boto3", reason="boto3 and moto are test extras")
    return boto3.client(service, region_name="us-east-1", endpoint_url=moto.url, aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def obj(kind: str, name: str, endpoint: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "aws.setpoint.dev/v1alpha1", "kind": kind, "metadata": {"name": name},
            "spec": {"region": "us-east-1", "endpointUrl": endpoint, **spec}}


async def ready(client: Client, res: Any, name: str) -> dict[str, Any] | None:
    o = await client.get(res, name, namespace="default")
    cond = get_condition(o.get("status"), "Ready")
    return o if cond is not None and cond["status"] == "True" else None


async def refused(client: Client, res: Any, name: str, reason: str) -> dict[str, Any] | None:
    """The object once its Ready condition is False for ``reason``, for its current generation."""
    o = await client.get(res, name, namespace="default")
    cond = get_condition(o.get("status"), "Ready")
    if cond is None or cond["status"] != "False" or cond.get("reason") != reason:
        return None
    if cond.get("observedGeneration", o["metadata"].get("generation")) != o["metadata"].get("generation"):
        return None
    return o
