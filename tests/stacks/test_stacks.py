"""Stacks end to end: a real server and controller manager; dependencies, references, cycles and
references to nothing refused, failure isolation, resume, and destruction dependents first."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from setpoint.agent.conditions import get_condition
from setpoint.client import Client, Invalid, NotFound, Resource
from setpoint.controllers.resources import CONFIGMAPS, STACKS
from setpoint.stackgraph import StackError, build, fill
from tests.agent.support import WIDGETS, eventually, prepare
from tests.node.test_node_agent import ControllerManager
from tests.servers import ServerProcess


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path / "server").start()
    cm = ControllerManager(srv)
    yield srv
    cm.stop()
    srv.stop()


@pytest.fixture
async def admin(cluster: ServerProcess) -> AsyncIterator[Client]:
    async with Client(cluster.client_config()) as c:
        await prepare(c, "default")
        yield c


def cm(name: str, **data: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def stack(resources: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "setpoint.dev/v1alpha1", "kind": "Stack", "metadata": {"name": "s"},
            "spec": {"resources": resources, **spec}}


async def get_or_none(client: Client, res: Resource, name: str) -> dict[str, Any] | None:
    try:
        return await client.get(res, name, namespace="default")
    except NotFound:
        return None


def test_the_graph_orders_fills_and_refuses() -> None:
    spec = {"parameters": {"region": "eu"},
            "resources": [{"name": "b", "template": {"x": "${resources.a.status.id}", "r": "in ${parameters.region}"}},
                          {"name": "a", "template": {}}, {"name": "c", "template": {}, "dependsOn": ["b"]}]}
    g = build(spec)
    assert g.order() == ["a", "b", "c"] and g.dependents("a") == {"b"}
    assert fill(spec["resources"][0]["template"], spec["parameters"], {"a": {"status": {"id": 7}}}) == \
        {"x": 7, "r": "in eu"}
    with pytest.raises(KeyError):
        fill("${resources.a.status.id}", {}, {"a": {"status": {}}})
    with pytest.raises(StackError, match=r"a -> b -> a|b -> a -> b"):
        build({"resources": [{"name": "a", "template": {"v": "${resources.b.x}"}},
                             {"name": "b", "template": {}, "dependsOn": ["a"]}]})
    assert 'digraph' in g.dot() and '"a" -> "b"' in g.dot()


async def test_cycles_and_references_to_nothing_are_refused_naming_them(admin: Client) -> None:
    with pytest.raises(Invalid) as e:
        await admin.create(STACKS, stack([{"name": "a", "template": cm("a"), "dependsOn": ["b"]},
                                          {"name": "b", "template": cm("b", v="${resources.a.data.v}")}]),
                           namespace="default")
    assert "cycle" in e.value.message and "a" in e.value.message and "b" in e.value.message
    with pytest.raises(Invalid) as e:
        await admin.create(STACKS, stack([{"name": "a", "template": cm("a", v="${resources.nope.data.v}")}]),
                           namespace="default")
    assert "'nope'" in e.value.message and e.value.causes[0].field == "spec.resources[0].template"


async def test_a_dependent_waits_for_its_dependency_to_converge_and_gets_its_values(admin: Client) -> None:
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 3}}
    await admin.create(STACKS, stack([
        # In text, a reference is text (ConfigMap data must be strings); alone, it keeps its type.
        {"name": "conf", "template": cm("conf", size="size ${resources.w.spec.size}",
                                        seen="seen ${resources.w.status.observed}")},
        {"name": "w", "template": widget},
        {"name": "free", "template": cm("free", v="${parameters.v}")}], parameters={"v": "x"}), namespace="default")
    await eventually(lambda: get_or_none(admin, WIDGETS, "w"), timeout=20, what="the widget created")
    await eventually(lambda: get_or_none(admin, CONFIGMAPS, "free"), timeout=20, what="the independent resource")
    assert await get_or_none(admin, CONFIGMAPS, "conf") is None, "created before its dependency converged"
    w = await admin.get(WIDGETS, "w", namespace="default")
    status = {"observed": 3, "observedGeneration": w["metadata"]["generation"],
              "conditions": [{"type": "Ready", "status": "True", "reason": "Done",
                              "observedGeneration": w["metadata"]["generation"]}]}
    await admin.patch(WIDGETS, "w", {"status": status}, namespace="default", subresource="status")
    conf = await eventually(lambda: get_or_none(admin, CONFIGMAPS, "conf"), timeout=20, what="the dependent")
    assert conf["data"] == {"size": "size 3", "seen": "seen 3"}

    async def converged() -> dict[str, Any] | None:
        s = await admin.get(STACKS, "s", namespace="default")
        c = get_condition(s.get("status"), "Ready")
        return s if c and c["status"] == "True" else None

    s = await eventually(converged, timeout=20, what="the stack converged")
    assert s["status"]["readyResources"] == 3
    assert conf["metadata"]["ownerReferences"][0]["uid"] == s["metadata"]["uid"]


async def test_a_failed_resource_blocks_its_dependents_only_and_a_fix_resumes(admin: Client) -> None:
    bad = cm("bad")
    bad["data"] = {"v": {"not": "a string"}}
    await admin.create(STACKS, stack([{"name": "bad", "template": bad},
                                      {"name": "after", "template": cm("after"), "dependsOn": ["bad"]},
                                      {"name": "other", "template": cm("other", v="1")}]), namespace="default")

    async def phases() -> dict[str, str] | None:
        s = await admin.get(STACKS, "s", namespace="default")
        p = {e["name"]: e["phase"] for e in (s.get("status") or {}).get("resources") or []}
        return p if p.get("bad") == "Failed" and p.get("other") == "Ready" else None

    p = await eventually(phases, timeout=20, what="bad Failed, other Ready")
    assert p["after"] == "Blocked" and await get_or_none(admin, CONFIGMAPS, "after") is None
    s = await admin.get(STACKS, "s", namespace="default")
    assert get_condition(s["status"], "Ready")["reason"] == "ResourceFailed"
    s["spec"]["resources"][0]["template"]["data"] = {"v": "fixed"}
    await admin.patch(STACKS, "s", {"spec": {"resources": s["spec"]["resources"]}}, namespace="default")
    await eventually(lambda: get_or_none(admin, CONFIGMAPS, "after"), timeout=20, what="resumed after the fix")


async def test_destroy_goes_dependents_first_and_removed_resources_are_deleted(admin: Client) -> None:
    await admin.create(STACKS, stack([{"name": "a", "template": cm("a")},
                                      {"name": "b", "template": cm("b"), "dependsOn": ["a"]},
                                      {"name": "c", "template": cm("c", v="${resources.b.metadata.name}")},
                                      {"name": "gone", "template": cm("gone")}]), namespace="default")
    for n in ("a", "b", "c", "gone"):
        await eventually(lambda n=n: get_or_none(admin, CONFIGMAPS, n), timeout=20, what=n)  # type: ignore[misc]
    s = await admin.get(STACKS, "s", namespace="default")
    await admin.patch(STACKS, "s", {"spec": {"resources": s["spec"]["resources"][:3]}}, namespace="default")

    async def removed() -> bool:
        return await get_or_none(admin, CONFIGMAPS, "gone") is None

    await eventually(removed, timeout=20, what="the resource removed from the template deleted")
    order: list[str] = []
    rv = (await admin.list(CONFIGMAPS, namespace="default")).resource_version

    async def record() -> None:
        async with admin.watch(CONFIGMAPS, namespace="default", resource_version=rv) as stream:
            async for ev in stream:
                if ev.type == "DELETED":
                    order.append(ev.object["metadata"]["name"])
                    if len(order) == 3:
                        return

    watcher = asyncio.create_task(record())
    await admin.delete(STACKS, "s", namespace="default")
    await asyncio.wait_for(watcher, 30)
    assert order == ["c", "b", "a"]
    await eventually(lambda: _stack_gone(admin), timeout=20, what="the stack gone")


async def _stack_gone(admin: Client) -> bool:
    return await get_or_none(admin, STACKS, "s") is None


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "stack" / "web-stack.yaml"


async def test_the_example_stack_is_accepted(admin: Client) -> None:
    import yaml

    body = yaml.safe_load(EXAMPLE.read_text())
    created = await admin.create(STACKS, body, namespace="default", dry_run=True)
    assert [r["name"] for r in created["spec"]["resources"]] == ["app", "balancer", "listing"]


def test_the_example_stack_graphs() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "setpoint", "graph", "-f", str(EXAMPLE)], capture_output=True,
                         text=True, check=True).stdout
    assert '"app" -> "balancer";' in out and '"app" -> "listing";' in out


async def test_plan_shows_what_apply_would_do_and_changes_nothing(
        admin: Client, cluster: ServerProcess, tmp_path: Path) -> None:
    import subprocess
    import sys

    import yaml

    body = stack([{"name": "a", "template": cm("a", v="1")},
                  {"name": "b", "template": cm("b", v="from ${resources.a.data.v}")}])
    path = tmp_path / "stack.yaml"

    def plan() -> str:
        path.write_text(yaml.safe_dump(body))
        r = subprocess.run([sys.executable, "-m", "setpoint", "plan", "-f", str(path), "--kubeconfig",
                            str(cluster.data_dir / "kubeconfig.yaml")], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    out = await asyncio.to_thread(plan)
    # b's value follows from what a will be: known before anything exists.
    assert "+ ConfigMap a (a): create" in out and "+ ConfigMap b (b): create" in out, out
    assert "  +   v: from 1" in out, out
    assert "Plan: 2 to create, 0 to change, 0 to delete." in out
    assert await get_or_none(admin, CONFIGMAPS, "a") is None, "plan created something"
    await admin.create(STACKS, body, namespace="default")
    await eventually(lambda: get_or_none(admin, CONFIGMAPS, "b"), timeout=20, what="applied")
    body["spec"]["resources"][0]["template"]["data"]["v"] = "2"
    out = await asyncio.to_thread(plan)
    # The change to a is followed through to b, which refers to it.
    assert "~ ConfigMap a (a): change" in out and "  -  v: '1'" in out and "  +  v: '2'" in out, out
    assert "~ ConfigMap b (b): change" in out and "  -  v: from 1" in out and "  +  v: from 2" in out, out
    assert "Plan: 0 to create, 2 to change, 0 to delete." in out, out
    assert (await admin.get(CONFIGMAPS, "a", namespace="default"))["data"]["v"] == "1", "plan changed something"
    # What apply then does is what plan said.
    await admin.patch(STACKS, "s", {"spec": {"resources": body["spec"]["resources"]}}, namespace="default")

    async def applied() -> bool:
        b = await get_or_none(admin, CONFIGMAPS, "b")
        return b is not None and b["data"]["v"] == "from 2"

    await eventually(applied, timeout=20, what="b as planned")
    assert (await admin.get(CONFIGMAPS, "a", namespace="default"))["data"]["v"] == "2"


def widget(name: str) -> dict[str, Any]:
    return {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name}, "spec": {"size": 1}}


async def mark_ready(client: Client, name: str) -> None:
    w = await client.get(WIDGETS, name, namespace="default")
    gen = w["metadata"]["generation"]
    await client.patch(WIDGETS, name, {"status": {"observedGeneration": gen, "conditions": [
        {"type": "Ready", "status": "True", "reason": "Done", "observedGeneration": gen}]}},
        namespace="default", subresource="status")


async def existing(client: Client, names: list[str]) -> list[str]:
    return [n for n in names if await get_or_none(client, WIDGETS, n) is not None]


async def test_independent_resources_start_together_up_to_the_parallelism(admin: Client) -> None:
    names = [f"x{i}" for i in range(5)]
    await admin.create(STACKS, stack([{"name": n, "template": widget(n)} for n in names]
                                     + [{"name": "y", "template": widget("y"), "dependsOn": names}],
                                     parallelism=2), namespace="default")

    async def slots() -> dict[str, str] | None:
        s = await admin.get(STACKS, "s", namespace="default")
        p = {e["name"]: e["phase"] for e in (s.get("status") or {}).get("resources") or []}
        return p if sorted(p.values()).count("Pending") == 4 and len(await existing(admin, names)) == 2 else None

    await eventually(slots, timeout=20, what="two in progress, three waiting for a slot")
    first = await existing(admin, names)
    assert first == ["x0", "x1"], first  # in the template's order
    for n in first:
        await mark_ready(admin, n)
    await eventually(lambda: _count(admin, names, 4), timeout=20, what="two more started as the first two converged")
    assert await get_or_none(admin, WIDGETS, "y") is None, "y started before all it depends on converged"
    # Without a tight limit, the rest start at once, none of them converged.
    await admin.patch(STACKS, "s", {"spec": {"parallelism": 16}}, namespace="default")
    await eventually(lambda: _count(admin, names, 5), timeout=20, what="all five in progress together")
    ready_now = [n for n in names if get_condition((await admin.get(WIDGETS, n, namespace="default")).get("status"),
                                                   "Ready")]
    assert ready_now == first, "the others had to converge before the rest could start"


async def _count(client: Client, names: list[str], n: int) -> bool:
    return len(await existing(client, names)) == n


async def test_the_controller_killed_mid_apply_resumes_without_duplicates(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "server").start()
    cms = [ControllerManager(srv)]
    try:
        async with Client(srv.client_config()) as client:
            await prepare(client, "default")
            names = [f"w{i}" for i in range(8)]
            await client.create(STACKS, stack([{"name": n, "template": widget(n), **(
                {"dependsOn": [names[i - 1]]} if i else {})} for i, n in enumerate(names)]), namespace="default")

            async def converge_up_to(k: int) -> None:  # the test plays the widgets' controller
                for n in names[:k]:
                    w = await eventually(lambda n=n: get_or_none(client, WIDGETS, n), timeout=30,  # type: ignore[misc]
                                         what=f"{n} created")
                    if not get_condition(w.get("status"), "Ready"):
                        await mark_ready(client, n)

            await converge_up_to(4)
            await eventually(lambda: get_or_none(client, WIDGETS, "w4"), timeout=30, what="w4 created")
            cms[0].proc.kill()  # kill -9, mid-apply: w4 in progress, w5.. not started
            cms[0].proc.wait(timeout=10)
            before = {n: (await client.get(WIDGETS, n, namespace="default"))["metadata"]["uid"] for n in names[:5]}
            await mark_ready(client, "w4")  # converges while nobody watches
            cms.append(ControllerManager(srv))  # takes the lease over once the dead one's expires
            await converge_up_to(len(names))

            async def stack_converged() -> bool:
                s = await client.get(STACKS, "s", namespace="default")
                c = get_condition(s.get("status"), "Ready")
                return bool(c and c["status"] == "True")

            await eventually(stack_converged, timeout=60, what="the stack converged after the restart")
            after = {w["metadata"]["name"]: w["metadata"]["uid"] for w in (await client.list(
                WIDGETS, namespace="default", label_selector="setpoint.dev/stack=s")).items}
            assert sorted(after) == names, "a resource is missing or made twice"
            assert {n: after[n] for n in before} == before, "a resource made before the kill was made again"
    finally:
        for c in cms:
            c.stop()
        srv.stop()


async def setpoint_cli(srv: ServerProcess, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "setpoint", *args, "--kubeconfig", str(srv.data_dir / "kubeconfig.yaml"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_apply_wait_and_destroy_show_each_resource(admin: Client, cluster: ServerProcess,
                                                         tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump(stack([
        {"name": "a", "template": cm("a")},
        {"name": "b", "template": cm("b", v="${resources.a.metadata.name}")},
        {"name": "c", "template": cm("c", v="${resources.b.metadata.name}")}])))
    rc, out, err = await setpoint_cli(cluster, "apply", "-f", str(path), "-n", "default", "--wait", "--timeout", "60")
    assert rc == 0, out + err
    for name in "abc":
        assert f"└ ConfigMap {name} ({name}): Ready" in out, out
    rc, out, err = await setpoint_cli(cluster, "destroy", "-f", str(path), "-n", "default")
    assert rc == 0, out + err
    lines = out.splitlines()
    deleted = [next(i for i, line in enumerate(lines) if f"({n}): Deleted" in line) for n in "cba"]
    assert deleted == sorted(deleted), f"not destroyed dependents first:\n{out}"
    assert "(a): Waiting: for b to be deleted first" in out, out
    assert lines[-1] == "stack.setpoint.dev/s deleted", out
    for name in "abc":
        assert await get_or_none(admin, CONFIGMAPS, name) is None


async def test_a_resource_changed_behind_the_stacks_back_is_put_back(admin: Client) -> None:
    await admin.create(STACKS, stack([{"name": "a", "template": cm("a", v="1")}]), namespace="default")
    await eventually(lambda: get_or_none(admin, CONFIGMAPS, "a"), timeout=20, what="a created")
    await admin.patch(CONFIGMAPS, "a", {"data": {"v": "edited", "extra": "x"}}, namespace="default")

    async def put_back() -> bool:
        a = await get_or_none(admin, CONFIGMAPS, "a")
        return a is not None and a["data"].get("v") == "1"

    await eventually(put_back, timeout=20, what="the template's value back")


async def test_an_object_that_exists_already_is_taken_over(admin: Client) -> None:
    await admin.create(CONFIGMAPS, cm("pre", v="made by hand"), namespace="default")
    await admin.create(STACKS, stack([{"name": "pre", "template": cm("pre", v="from the stack")}]),
                       namespace="default")

    async def adopted() -> dict[str, Any] | None:
        o = await get_or_none(admin, CONFIGMAPS, "pre")
        return o if o and o["data"]["v"] == "from the stack" else None

    o = await eventually(adopted, timeout=20, what="the object taken over")
    assert o["metadata"]["labels"]["setpoint.dev/stack"] == "s"
    assert o["metadata"]["ownerReferences"][0]["kind"] == "Stack"


def test_what_counts_as_converged() -> None:
    from setpoint.controllers.stack import converged

    def o(status: dict[str, Any] | None = None, generation: int = 2) -> dict[str, Any]:
        return {"metadata": {"name": "x", "generation": generation}, **({"status": status} if status else {})}

    def cond(t: str, s: str, gen: int | None = 2) -> dict[str, Any]:
        return {"type": t, "status": s, **({"observedGeneration": gen} if gen is not None else {})}

    assert converged(o()) and not converged(o(), reports_status=True), "a ProcessSet just created is done"
    assert converged(o({"phase": "Active"}), reports_status=True)  # a Namespace
    assert converged(o({"conditions": [cond("Established", "True", None)]}), reports_status=True)  # a CRD
    assert not converged(o({"conditions": [cond("Established", "False", None)]}), reports_status=True)
    assert converged(o({"conditions": [cond("Ready", "True")]}), reports_status=True)
    assert not converged(o({"conditions": [cond("Ready", "True", 1)]}), reports_status=True), "stale"
    assert not converged(o({"observedGeneration": 1, "phase": "Active"}), reports_status=True), "stale"
    assert not converged(None)
