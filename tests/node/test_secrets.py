"""Secrets: kubectl creates one, a ProcessSet takes a value from it, the node's agent starts the
process with it; a missing Secret is a condition, not a crash; no other node can read it."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

from setpoint.agent.conditions import get_condition
from setpoint.client import Client
from setpoint.controllers.resources import PROCESSSETS
from tests.agent.support import eventually
from tests.compat.conftest import KUBECTL
from tests.node.test_node_agent import Agent, processes_of, processset
from tests.node.test_node_agent import admin as admin
from tests.node.test_node_agent import cluster as cluster
from tests.servers import ServerProcess


def kubectl(srv: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    assert KUBECTL
    return subprocess.run([KUBECTL, "--kubeconfig", str(srv.data_dir / "kubeconfig.yaml"), *args],
                          capture_output=True, text=True, timeout=60)


def environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(e.decode().split("=", 1) for e in f.read().split(b"\0") if b"=" in e)


async def test_a_processset_takes_its_password_from_a_secret(cluster: tuple[ServerProcess, Path],
                                                               admin: Client) -> None:
    srv, tmp = cluster
    r = kubectl(srv, "create", "secret", "generic", "db", "--from-literal=password=s3cr3t", "-n", "default")
    assert r.returncode == 0, r.stderr
    shown = json.loads(kubectl(srv, "get", "secret", "db", "-n", "default", "-o", "json").stdout)
    assert base64.b64decode(shown["data"]["password"]) == b"s3cr3t" and shown["type"] == "Opaque"
    agent = Agent(srv, "n1", tmp / "agent-n1").start()
    other = Agent(srv, "n2", tmp / "agent-n2")
    try:
        ps = processset("db-client", 1, env=[
            {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
            {"name": "MISSING_OK", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "x", "optional": True}}}])
        await admin.create(PROCESSSETS, ps, namespace="default")
        uid = (await admin.get(PROCESSSETS, "db-client", namespace="default"))["metadata"]["uid"]
        await eventually(lambda: len(processes_of(uid)) == 1, timeout=30, what="the process started")
        env = environ(processes_of(uid)[0])
        assert env["DB_PASSWORD"] == "s3cr3t" and "MISSING_OK" not in env
        status = json.dumps((await admin.get(PROCESSSETS, "db-client", namespace="default")).get("status"))
        assert "s3cr3t" not in status and "s3cr3t" not in agent.log.read_text()

        # A node reads the Secret only if work assigned to it uses it.
        for node_cfg, allowed in ((agent.kubeconfig, True), (other.kubeconfig, False)):
            r2 = subprocess.run(  # noqa: ASYNC221 (kubectl is the point)
                [KUBECTL or "kubectl", "--kubeconfig", str(node_cfg), "get", "secret", "db", "-n", "default",
                 "-o", "name"], capture_output=True, text=True, timeout=60)
            assert (r2.returncode == 0) == allowed, (node_cfg, r2.stderr)
            if not allowed:
                assert "Forbidden" in r2.stderr or "forbidden" in r2.stderr

        # A ProcessSet whose Secret does not exist: a condition saying so, the agent keeps running.
        await admin.create(PROCESSSETS, processset("no-secret", 1, env=[
            {"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]), namespace="default")

        async def says_so() -> bool:
            cond = get_condition((await admin.get(PROCESSSETS, "no-secret", namespace="default")).get("status"),
                                 "Ready")
            return cond is not None and cond["reason"] == "SecretNotFound" and "absent" in cond["message"]

        await eventually(says_so, timeout=30, what="the missing Secret reported")
        assert agent.proc is not None and agent.proc.poll() is None
        kubectl(srv, "create", "secret", "generic", "absent", "--from-literal=k=v", "-n", "default")
        uid2 = (await admin.get(PROCESSSETS, "no-secret", namespace="default"))["metadata"]["uid"]
        await eventually(lambda: len(processes_of(uid2)) == 1, timeout=30, what="started once the Secret exists")
    finally:
        agent.kill()
        for ps_name in ("db-client", "no-secret"):
            try:
                uid_left = (await admin.get(PROCESSSETS, ps_name, namespace="default"))["metadata"]["uid"]
            except Exception:
                continue
            for pid in processes_of(uid_left):
                os.kill(pid, 9)


def test_secret_data_must_be_base64(server: ServerProcess) -> None:
    with server.sync_client() as c:
        r = c.post("/api/v1/namespaces/default/secrets", json={"metadata": {"name": "bad"}, "data": {"k": "%%%"}})
        assert r.status_code == 422 and "data[k]" in r.text and "%%%" not in r.text
        r = c.post("/api/v1/namespaces/default/secrets",
                   json={"metadata": {"name": "sd"}, "stringData": {"k": "plain"}})
        assert r.status_code == 201
        body = r.json()
        assert "stringData" not in body and base64.b64decode(body["data"]["k"]) == b"plain"
