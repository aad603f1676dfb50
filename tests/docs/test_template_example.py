"""examples/template-lb/README.md as written: a device's REST API fed from a template of a
ProcessSet's endpoints, followed as the ProcessSet scales."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.node.test_node_agent import Agent, ControllerManager
from tests.servers import ServerProcess, wait_until

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "examples" / "template-lb" / "README.md"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path / "server").start()
    cm = ControllerManager(srv)
    agent = Agent(srv, "local", tmp_path / "agent").start("--stop-processes-on-exit")
    yield srv
    agent.kill(signal.SIGTERM)
    cm.stop()
    srv.stop()


def device_state(port: int) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/backends", timeout=5) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def test_the_device_follows_the_processset_as_the_readme_says(cluster: ServerProcess, tmp_path: Path) -> None:
    srv = cluster
    first = re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)[0]
    port = free_port()
    # What a reader's machine has and this one has not: .venv/bin here, port 9900 free, /tmp private.
    script = (first.replace("9900", str(port)).replace(".venv/bin/setpoint", f"{sys.executable} -m setpoint")
              .replace("python3 ", f"{sys.executable} ").replace("/tmp/backends.json", str(tmp_path / "b.json")))
    env = {**os.environ, "KUBECONFIG": str(srv.data_dir / "kubeconfig.yaml")}
    with srv.sync_client() as c:
        body = (ROOT / "examples" / "processset.yaml").read_text()
        r = c.post("/apis/setpoint.dev/v1alpha1/namespaces/default/processsets", content=body,
                   headers={"Content-Type": "application/yaml"})
        assert r.status_code == 201, r.text
    proc = subprocess.Popen(["bash", "-c", script + "\nwait"], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def ports_of_web() -> set[int]:
            with srv.sync_client() as c:
                ps = c.get("/apis/setpoint.dev/v1alpha1/namespaces/default/processsets/web").json()
            return {p["port"] for p in ps.get("status", {}).get("processes", []) if p.get("state") == "Running"}

        def device_has(n: int) -> bool:
            try:
                got = {b["port"] for b in device_state(port)["backends"]}
            except OSError:
                return False
            return len(got) == n and got == ports_of_web()

        wait_until(lambda: device_has(2), timeout=60, what="the device holding the two replicas")
        with srv.sync_client() as c:
            r = c.patch("/apis/setpoint.dev/v1alpha1/namespaces/default/processsets/web",
                        json={"spec": {"replicas": 4}}, headers={"Content-Type": "application/merge-patch+json"})
            assert r.status_code == 200, r.text
        wait_until(lambda: device_has(4), timeout=60, what="the device holding four replicas")
        assert device_state(port)["puts"] <= 4, "the device was sent more than the changes needed"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        print(out)
