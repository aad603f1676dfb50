"""The Template kind end to end: a real agent process renders it, reports it, and converges after
being killed in the middle of a burst."""

from __future__ import annotations

import hashlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
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


def status_when(admin: Client, check: Callable[[dict[str, Any]], bool]) -> Callable[
        [], Awaitable[dict[str, Any] | None]]:
    """A predicate for ``eventually``: the Template's status once ``check`` holds for it."""

    async def probe() -> dict[str, Any] | None:
        t = await admin.get(TEMPLATES, "web", namespace="default")
        status = t.get("status") or {}
        return status if status and check(status) else None

    return probe


def ready(status: dict[str, Any]) -> dict[str, Any]:
    return get_condition(status, "Ready") or {}


async def test_a_failing_command_is_reported_in_status_and_retried(admin: Client, tmp_path: Path) -> None:
    out = tmp_path / "web.conf"
    await admin.create(CONFIGMAPS, cm("a", "1"), namespace="default")
    await admin.create(TEMPLATES, template(out, command="echo trying; echo last words; exit 3"),
                       namespace="default")
    status = await eventually(status_when(admin, lambda s: ready(s).get("reason") == "CommandFailed"),
                              timeout=30, what="CommandFailed in status")
    assert out.read_text() == "a 1\n"
    cond = ready(status)
    assert cond["status"] == "False" and "exited with code 3 (last words)" in cond["message"], cond
    command = status["command"]
    assert command["exitCode"] == 3 and "trying\nlast words\n" in command["output"], command
    assert "succeededDigest" not in command
    runs = command["runs"]
    status = await eventually(status_when(admin, lambda s: s["command"]["runs"] > runs), timeout=15,
                              what="the command retried")
    assert status["command"]["exitCode"] == 3 and ready(status)["reason"] == "CommandFailed"


async def test_a_command_failing_when_the_agent_died_runs_after_its_restart(
        admin: Client, cluster: tuple[ServerProcess, Agent], tmp_path: Path) -> None:
    """The file was written, its command had not succeeded yet: the restarted agent finds the
    content it would render already there, and runs the command all the same."""
    _, agent = cluster
    out, log, fixed = tmp_path / "web.conf", tmp_path / "ran", tmp_path / "fixed"
    await admin.create(CONFIGMAPS, cm("a", "1"), namespace="default")
    await admin.create(TEMPLATES, template(out, command=f"echo run >> {log}; test -e {fixed}"), namespace="default")
    await eventually(status_when(admin, lambda s: ready(s).get("reason") == "CommandFailed"), timeout=30,
                     what="CommandFailed in status")
    agent.kill()
    runs_before = log.read_text().count("run")
    fixed.touch()
    agent.start()
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    status = await eventually(status_when(admin, lambda s: (s.get("command") or {}).get("succeededDigest")
                                                == digest), timeout=30, what="the command's success after restart")
    assert ready(status)["status"] == "True" and status["command"]["exitCode"] == 0
    assert status["writes"] == 0, "the restarted agent rewrote an unchanged file"
    runs_after = log.read_text().count("run")
    assert runs_after > runs_before
    # Once it succeeded for that content, another restart does not run it again.
    agent.kill()
    agent.start()
    rendered_at = status["renderedAt"]
    status = await eventually(status_when(admin, lambda s: s["renderedAt"] != rendered_at),
                              timeout=30, what="the render of the agent restarted once more")
    assert ready(status)["status"] == "True" and ready(status)["message"].endswith("is up to date")
    assert log.read_text().count("run") == runs_after


async def test_the_agent_killed_mid_burst_converges_to_the_final_state(
        admin: Client, cluster: tuple[ServerProcess, Agent], tmp_path: Path) -> None:
    _, agent = cluster
    out, log = tmp_path / "burst", tmp_path / "commands"
    for i in range(5):
        await admin.create(CONFIGMAPS, cm(f"c{i}", "0"), namespace="default")
    # The command appends the content it ran for, on one line.
    await admin.create(TEMPLATES, template(out, wait={"minSeconds": 0.2, "maxSeconds": 2},
                                           command=f"(tr '\\n' ' ' < {out}; echo) >> {log}"),
                       namespace="default")
    await eventually(lambda: out.exists(), timeout=30, what="the first render")
    for round_ in range(1, 41):
        for i in range(5):
            await admin.patch(CONFIGMAPS, f"c{i}", {"data": {"value": str(round_)}}, namespace="default")
        if round_ == 20:
            agent.kill()  # SIGKILL in the middle of the burst
            agent.start()  # the rest of the burst happens while it starts
    want = "".join(f"c{i} 40\n" for i in range(5))
    digest = hashlib.sha256(want.encode()).hexdigest()
    status = await eventually(
        status_when(admin, lambda s: s.get("digest") == digest and ready(s).get("status") == "True"
                          and (s.get("command") or {}).get("succeededDigest") == digest),
        timeout=30, what="the final state rendered and its command run after the restart")
    assert out.read_text() == want
    # After the restart: the final state's render (and one or two before it if the agent started
    # rendering before the burst ended, at most one per wait.maxSeconds), not one per change.
    assert status["renders"] <= 3, status
    assert 1 <= status["writes"] <= status["renders"], status
    assert status["command"]["runs"] <= status["writes"] + 1, status
    lines = log.read_text().splitlines()
    final = want.replace("\n", " ")
    assert lines[-1] == final and lines.count(final) == 1, lines
    assert len(lines) <= 8, f"{len(lines)} runs of the command for a burst of 200 changes"
