"""The Template kind end to end: a real agent process renders it, reports it, and converges after
being killed in the middle of a burst."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from setpoint.agent.conditions import get_condition
from setpoint.client import Client
from setpoint.controllers.resources import CONFIGMAPS, TEMPLATES
from tests.agent.support import eventually
from tests.node.test_node_agent import Agent
from tests.servers import ServerProcess

SOURCE = """{% for cm in objects("configmaps", {"app": "web"}) -%}
{{ cm.metadata.name }} {{ cm.data.value }}
{% endfor -%}
"""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[ServerProcess, Agent]]:
    srv = ServerProcess(tmp_path / "server").start()
    agent = Agent(srv, "n1", tmp_path / "agent").start()
    yield srv, agent
    agent.kill(signal.SIGTERM)
    srv.stop()


@pytest.fixture
async def admin(cluster: tuple[ServerProcess, Agent]) -> AsyncIterator[Client]:
    async with Client(cluster[0].client_config()) as c:
        yield c


def template(dest: Path, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "setpoint.dev/v1alpha1", "kind": "Template", "metadata": {"name": "web"},
            "spec": {"nodeName": "n1", "source": {"inline": SOURCE}, "destination": str(dest), **spec}}


def cm(name: str, value: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"app": "web"}},
            "data": {"value": value}}


async def test_a_template_is_rendered_by_its_node_and_reported(admin: Client, tmp_path: Path) -> None:
    out, ran = tmp_path / "web.conf", tmp_path / "ran"
    await admin.create(CONFIGMAPS, cm("a", "1"), namespace="default")
    await admin.create(TEMPLATES, template(out, mode="0600", command=f"echo reloaded >> {ran}; echo done"),
                       namespace="default")

    async def ready() -> dict[str, Any] | None:
        t = await admin.get(TEMPLATES, "web", namespace="default")
        cond = get_condition(t.get("status"), "Ready")
        return t if cond is not None and cond["status"] == "True" and t["status"].get("command") else None

    t = await eventually(ready, timeout=30, what="Ready=True with the command's result")
    assert out.read_text() == "a 1\n" and (out.stat().st_mode & 0o777) == 0o600
    assert t["status"]["command"]["exitCode"] == 0 and "done" in t["status"]["command"]["output"]
    assert len(t["status"]["digest"]) == 64 and int(t["status"]["lastRenderRevision"]) > 0
    await admin.patch(CONFIGMAPS, "a", {"data": {"value": "2"}}, namespace="default")
    await eventually(lambda: out.read_text() == "a 2\n", timeout=20, what="the change rendered")
    await eventually(lambda: ran.read_text().count("reloaded") == 2, what="the command run once more")


async def test_a_template_from_a_configmap_and_a_broken_one_reported(admin: Client, tmp_path: Path) -> None:
    out = tmp_path / "from-cm"
    await admin.create(CONFIGMAPS, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "src"},
                                    "data": {"t": "value={{ configmap('src').other }}\n", "other": "x"}},
                       namespace="default")
    await admin.create(TEMPLATES, template(out, source={"configMapRef": {"name": "src", "key": "t"}}),
                       namespace="default")
    await eventually(lambda: out.exists() and out.read_text() == "value=x\n", timeout=30, what="rendered")
    await admin.patch(CONFIGMAPS, "src", {"data": {"t": "{{ configmap('src').nothing }}\n"}}, namespace="default")

    async def failed() -> dict[str, Any] | None:
        t = await admin.get(TEMPLATES, "web", namespace="default")
        cond = get_condition(t.get("status"), "Ready")
        return cond if cond is not None and cond["reason"] == "RenderFailed" else None

    cond = await eventually(failed, timeout=20, what="RenderFailed")
    assert "Template default/web line 1" in cond["message"] and "nothing" in cond["message"]
    assert out.read_text() == "value=x\n"


async def test_the_agent_killed_mid_burst_converges_to_the_final_state(
        admin: Client, cluster: tuple[ServerProcess, Agent], tmp_path: Path) -> None:
    _, agent = cluster
    out = tmp_path / "burst"
    for i in range(5):
        await admin.create(CONFIGMAPS, cm(f"c{i}", "0"), namespace="default")
    await admin.create(TEMPLATES, template(out, wait={"minSeconds": 0.2, "maxSeconds": 2}), namespace="default")
    await eventually(lambda: out.exists(), timeout=30, what="the first render")
    for round_ in range(1, 41):
        for i in range(5):
            await admin.patch(CONFIGMAPS, f"c{i}", {"data": {"value": str(round_)}}, namespace="default")
        if round_ == 20:
            agent.kill()  # SIGKILL in the middle of the burst
            agent.start()
    want = "".join(f"c{i} 40\n" for i in range(5))
    await eventually(lambda: out.read_text() == want, timeout=30, what="the final state after the restart")
