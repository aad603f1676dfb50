"""The node agent end to end: a real server, a real agent process, real supervised processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from setpoint.agent.conditions import get_condition, is_converged
from setpoint.client import Client, NotFound
from setpoint.controllers.resources import NODES, PROCESSSETS
from setpoint.testing.faultproxy import FaultProxy
from tests.agent.support import eventually
from tests.servers import ServerProcess

SLEEPER = [sys.executable, "-c", "import time; time.sleep(1e6)"]


def processes_of(uid: str) -> list[int]:
    """Every live process on this host that belongs to ProcessSet ``uid`` (the ground truth)."""
    needle = f"SETPOINT_PROCESSSET_UID={uid}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in env and state != "Z":
            found.append(int(entry))
    return found


class Agent:
    """A ``setpoint agent`` subprocess with node credentials."""

    def __init__(self, srv: ServerProcess, node: str, state_dir: Path, server_url: str | None = None) -> None:
        out = subprocess.run([sys.executable, "-m", "setpoint", "node-token", node, "--data-dir",
                              str(srv.data_dir)], capture_output=True, text=True, check=True).stdout
        self.kubeconfig = Path(out.strip())
        if server_url is not None:
            config = yaml.safe_load(self.kubeconfig.read_text())
            config["clusters"][0]["cluster"]["server"] = server_url
            self.kubeconfig.write_text(yaml.safe_dump(config))
        self.node = node
        self.state_dir = state_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = state_dir.parent / f"agent-{node}.log"

    def start(self, *extra: str, cwd: Path | None = None) -> Agent:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "setpoint", "agent", "--node", self.node, "--kubeconfig", str(self.kubeconfig),
             "--state-dir", str(self.state_dir.resolve()), "--heartbeat", "0.5", "--lease-duration", "3", *extra],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, cwd=cwd)
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)


class ControllerManager:
    def __init__(self, srv: ServerProcess, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "setpoint", "controller-manager", "--kubeconfig",
             str(srv.data_dir / "kubeconfig.yaml"), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    srv = ServerProcess(tmp_path / "server").start()
    yield srv, tmp_path
    srv.stop()


@pytest.fixture
async def admin(cluster: tuple[ServerProcess, Path]) -> AsyncIterator[Client]:
    srv, _ = cluster
    async with Client(srv.client_config()) as c:
        yield c


def processset(name: str, replicas: int, node: str | None = "n1", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": "setpoint.dev/v1alpha1", "kind": "ProcessSet",
                            "metadata": {"name": name},
                            "spec": {"command": SLEEPER[0], "args": SLEEPER[1:], "replicas": replicas,
                                     "restartBackoff": {"initialSeconds": 0.2, "maxSeconds": 1},
                                     "stopGracePeriodSeconds": 1, **spec}}
    if node:
        body["spec"]["nodeName"] = node
    return body


async def converged_with(client: Client, name: str, replicas: int) -> bool:
    """Converged, with exactly ``replicas`` live processes, and the status reporting those very ones."""
    obj = await client.get(PROCESSSETS, name, namespace="default")
    live = processes_of(obj["metadata"]["uid"])
    reported = {p.get("pid") for p in obj.get("status", {}).get("processes", []) if p.get("state") == "Running"}
    return (is_converged(obj) and obj["status"].get("readyReplicas") == replicas
            and len(live) == replicas and reported == set(live))


async def test_scale_drift_and_delete(cluster: tuple[ServerProcess, Path], admin: Client) -> None:
    srv, tmp = cluster
    agent = Agent(srv, "n1", tmp / "agent").start()
    try:
        await eventually(lambda: _exists(admin, "n1"), timeout=20, what="node registered")
        ps = await admin.create(PROCESSSETS, processset("web", 0), namespace="default")
        uid = ps["metadata"]["uid"]
        for n in (0, 3, 5, 2):
            await admin.patch(PROCESSSETS, "web", {"spec": {"replicas": n}}, namespace="default")
            await eventually(lambda n=n: converged_with(admin, "web", n), timeout=30, what=f"{n} replicas")
        # Drift: a process dies; the agent restores it and counts the restart.
        victim = processes_of(uid)[0]
        os.kill(victim, signal.SIGKILL)
        async def restored() -> bool:
            return victim not in processes_of(uid) and await converged_with(admin, "web", 2)

        await eventually(restored, timeout=30, what="restored after kill")
        obj = await admin.get(PROCESSSETS, "web", namespace="default")
        assert sum(p["restarts"] for p in obj["status"]["processes"]) >= 1
        # Deleting the object stops its processes (finalizer), then the object goes.
        await admin.delete(PROCESSSETS, "web", namespace="default")
        await eventually(lambda: not processes_of(uid), timeout=30, what="processes stopped")
        await eventually(lambda: _gone(admin, "web"), timeout=30, what="object deleted")
    finally:
        agent.kill()


async def test_agent_killed_during_scale_up_ends_exact(cluster: tuple[ServerProcess, Path], admin: Client) -> None:
    srv, tmp = cluster
    agent = Agent(srv, "n1", tmp / "agent").start()
    try:
        ps = await admin.create(PROCESSSETS, processset("burst", 1), namespace="default")
        uid = ps["metadata"]["uid"]
        await eventually(lambda: converged_with(admin, "burst", 1), timeout=30, what="1 replica")
        await admin.patch(PROCESSSETS, "burst", {"spec": {"replicas": 6}}, namespace="default")
        await eventually(lambda: len(processes_of(uid)) >= 3, timeout=30, what="scale-up under way")
        agent.kill()  # mid scale-up; its processes live on without it
        await admin.patch(PROCESSSETS, "burst", {"spec": {"replicas": 4}}, namespace="default")
        agent.start()
        await eventually(lambda: converged_with(admin, "burst", 4), timeout=30, what="exactly 4 after restart")
        assert len(processes_of(uid)) == 4
        # A ProcessSet deleted while the agent was down leaves no orphans once it is back.
        other = await admin.create(PROCESSSETS, processset("orphan", 2), namespace="default")
        await eventually(lambda: converged_with(admin, "orphan", 2), timeout=30, what="orphan set up")
        agent.kill()
        await admin.patch(PROCESSSETS, "orphan", {"metadata": {"finalizers": None}}, namespace="default")
        with contextlib.suppress(NotFound):
            await admin.delete(PROCESSSETS, "orphan", namespace="default")
        agent.start()
        await eventually(lambda: not processes_of(other["metadata"]["uid"]), timeout=30, what="orphans stopped")
        await eventually(lambda: converged_with(admin, "burst", 4), timeout=30, what="burst untouched")
    finally:
        agent.kill()
        for u in (uid,):
            for pid in processes_of(u):
                os.kill(pid, signal.SIGKILL)


async def test_server_restart_and_cut_connections_still_converge(
    cluster: tuple[ServerProcess, Path], admin: Client
) -> None:
    srv, tmp = cluster
    proxy = await FaultProxy.for_url(srv.url).start()
    agent = Agent(srv, "n1", tmp / "agent", server_url=proxy.url).start()
    uid = ""
    try:
        ps = await admin.create(PROCESSSETS, processset("flaky", 1), namespace="default")
        uid = ps["metadata"]["uid"]
        await eventually(lambda: converged_with(admin, "flaky", 1), timeout=30, what="1 replica")
        # A burst of changes while the server restarts: the agent converges to the last one.
        for n in (2, 3):
            await admin.patch(PROCESSSETS, "flaky", {"spec": {"replicas": n}}, namespace="default")
        await asyncio.to_thread(srv.restart)
        async with Client(srv.client_config()) as c:
            await c.patch(PROCESSSETS, "flaky", {"spec": {"replicas": 4}}, namespace="default")
            await eventually(lambda: converged_with(c, "flaky", 4), timeout=40, what="4 after server restart")
            # The network cuts every connection, twice, with changes in between.
            proxy.refuse()
            await c.patch(PROCESSSETS, "flaky", {"spec": {"replicas": 2}}, namespace="default")
            proxy.resume()
            proxy.refuse()
            await c.patch(PROCESSSETS, "flaky", {"spec": {"replicas": 3}}, namespace="default")
            proxy.resume()
            await eventually(lambda: converged_with(c, "flaky", 3), timeout=40, what="3 after cuts")
    finally:
        agent.kill()
        await proxy.close()
        for pid in processes_of(uid) if uid else []:
            os.kill(pid, signal.SIGKILL)


async def test_scheduler_assigns_and_node_lost_is_marked(
    cluster: tuple[ServerProcess, Path], admin: Client
) -> None:
    srv, tmp = cluster
    agent = Agent(srv, "n1", tmp / "agent").start()
    cm = ControllerManager(srv)
    uid = ""
    try:
        await eventually(lambda: _exists(admin, "n1"), timeout=20, what="node registered")
        ps = await admin.create(PROCESSSETS, processset("sched", 2, node=None), namespace="default")
        uid = ps["metadata"]["uid"]

        async def assigned() -> bool:
            obj = await admin.get(PROCESSSETS, "sched", namespace="default")
            return bool(obj["spec"].get("nodeName") == "n1")

        await eventually(assigned, timeout=30, what="scheduled onto n1")
        await eventually(lambda: converged_with(admin, "sched", 2), timeout=30, what="running on n1")
        # The node goes silent (the agent is frozen): its work is marked NodeLost.
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGSTOP)

        async def lost() -> bool:
            obj = await admin.get(PROCESSSETS, "sched", namespace="default")
            cond = get_condition(obj.get("status"), "NodeLost")
            return cond is not None and cond["status"] == "True"

        await eventually(lost, timeout=30, what="NodeLost")
        node = await admin.get(NODES, "n1")
        assert get_condition(node["status"], "Ready")["status"] == "Unknown"  # type: ignore[index]
        agent.proc.send_signal(signal.SIGCONT)

        async def back() -> bool:
            obj = await admin.get(PROCESSSETS, "sched", namespace="default")
            cond = get_condition(obj.get("status"), "NodeLost")
            return cond is not None and cond["status"] == "False"

        await eventually(back, timeout=30, what="NodeLost cleared")
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.send_signal(signal.SIGCONT)
        agent.kill()
        cm.stop()
        for pid in processes_of(uid) if uid else []:
            os.kill(pid, signal.SIGKILL)


async def _exists(client: Client, node: str) -> bool:
    try:
        await client.get(NODES, node)
        return True
    except NotFound:
        return False


async def _gone(client: Client, name: str) -> bool:
    try:
        await client.get(PROCESSSETS, name, namespace="default")
        return False
    except NotFound:
        return True


async def test_scheduler_spreads_and_avoids_lost_nodes(
    cluster: tuple[ServerProcess, Path], admin: Client
) -> None:
    srv, tmp = cluster
    a1 = Agent(srv, "n1", tmp / "agent1").start()
    a2 = Agent(srv, "n2", tmp / "agent2").start()
    cm = ControllerManager(srv)
    uids: list[str] = []

    async def node_of(name: str) -> str | None:
        obj = await admin.get(PROCESSSETS, name, namespace="default")
        return obj["spec"].get("nodeName")  # type: ignore[no-any-return]

    try:
        await eventually(lambda: _exists(admin, "n1"), timeout=20, what="n1 registered")
        await eventually(lambda: _exists(admin, "n2"), timeout=20, what="n2 registered")
        for name, replicas in (("big", 3), ("small", 1)):
            uids.append((await admin.create(PROCESSSETS, processset(name, replicas, node=None),
                                            namespace="default"))["metadata"]["uid"])
            await eventually(lambda name=name: node_of(name), timeout=30, what=f"{name} scheduled")
        # Spread by replicas: the second goes where fewer replicas run.
        assert {await node_of("big"), await node_of("small")} == {"n1", "n2"}
        lost = await node_of("small")
        survivor = "n1" if lost == "n2" else "n2"
        (a1 if lost == "n1" else a2).kill()

        async def marked_lost() -> bool:
            cond = get_condition((await admin.get(NODES, str(lost))).get("status"), "Ready")
            return cond is not None and cond["status"] == "Unknown"

        await eventually(marked_lost, timeout=30, what="node lost")
        uids.append((await admin.create(PROCESSSETS, processset("after", 1, node=None),
                                        namespace="default"))["metadata"]["uid"])
        # A node whose Lease expired gets nothing new, although it runs fewer replicas.
        await eventually(lambda: node_of("after"), timeout=30, what="scheduled after the loss")
        assert await node_of("after") == survivor
    finally:
        a1.kill()
        a2.kill()
        cm.stop()
        for uid in uids:
            for pid in processes_of(uid):
                os.kill(pid, signal.SIGKILL)


async def test_agent_with_several_servers_uses_the_one_that_answers(
    cluster: tuple[ServerProcess, Path], admin: Client
) -> None:
    import socket

    srv, tmp = cluster
    with socket.socket() as s:  # a port nothing listens on: the first server is "down"
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    agent = Agent(srv, "n1", tmp / "agent").start("--server", dead, "--server", srv.url)
    uid = ""
    try:
        ps = await admin.create(PROCESSSETS, processset("multi", 2), namespace="default")
        uid = ps["metadata"]["uid"]
        await eventually(lambda: converged_with(admin, "multi", 2), timeout=30, what="converged via the second server")
    finally:
        agent.kill()
        for pid in processes_of(uid) if uid else []:
            os.kill(pid, signal.SIGKILL)


async def test_replicas_run_in_a_directory_of_their_own(cluster: tuple[ServerProcess, Path], admin: Client) -> None:
    """The example ProcessSet's web server serves the directory made for it, not the directory
    the agent was started from (which holds its credentials)."""
    srv, tmp = cluster
    started_in = tmp / "where-the-agent-was-started"
    started_in.mkdir()
    (started_in / "secret.txt").write_text("token")
    agent = Agent(srv, "n1", tmp / "agent-n1").start(cwd=started_in)
    try:
        example = the_example()
        example["spec"]["nodeName"] = "n1"
        example["spec"]["replicas"] = 1
        await admin.create(PROCESSSETS, example, namespace="default")
        await eventually(lambda: converged_with(admin, "web", 1), timeout=30, what="the example running")
        obj = await admin.get(PROCESSSETS, "web", namespace="default")
        proc = obj["status"]["processes"][0]
        cwd = Path(os.readlink(f"/proc/{proc['pid']}/cwd"))
        assert cwd.is_relative_to(agent.state_dir.resolve()) and cwd.name == "work"
        port = proc["port"]

        async def page(path: str) -> tuple[int, str]:
            async with httpx.AsyncClient() as c:
                r = await c.get(f"http://127.0.0.1:{port}{path}")
                return r.status_code, r.text

        await eventually(lambda: _answers(page), timeout=10, what="the web server")
        assert (await page("/secret.txt"))[0] == 404
        assert "web replica 0" in (await page("/"))[1]
        uid = obj["metadata"]["uid"]
        await admin.delete(PROCESSSETS, "web", namespace="default")
        await eventually(lambda: not processes_of(uid) and not cwd.exists(), timeout=30,
                         what="the processes and their directory gone")
    finally:
        agent.kill()


def the_example() -> dict[str, Any]:
    return yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "processset.yaml").read_text())  # type: ignore[no-any-return]


async def _answers(page: Any) -> bool:
    try:
        return (await page("/"))[0] == 200  # type: ignore[no-any-return]
    except httpx.HTTPError:
        return False


async def test_a_lone_agent_stopped_leaves_its_processes_and_says_so(
    cluster: tuple[ServerProcess, Path], admin: Client
) -> None:
    srv, tmp = cluster
    agent = Agent(srv, "n1", tmp / "agent-n1").start()
    try:
        await admin.create(PROCESSSETS, processset("keep", 2), namespace="default")
        await eventually(lambda: converged_with(admin, "keep", 2), timeout=30, what="2 replicas")
        uid = (await admin.get(PROCESSSETS, "keep", namespace="default"))["metadata"]["uid"]
        agent.kill(signal.SIGTERM)
        assert agent.proc is not None and agent.proc.returncode == 0
        assert len(processes_of(uid)) == 2  # left for the next agent
        assert "leaving the processes of 1 ProcessSets running" in agent.log.read_text()
        agent.start()  # ... which adopts them: same processes, no restart
        await eventually(lambda: converged_with(admin, "keep", 2), timeout=30, what="adopted")
        await admin.delete(PROCESSSETS, "keep", namespace="default")
        await eventually(lambda: not processes_of(uid), timeout=30, what="stopped on delete")
    finally:
        agent.kill()
