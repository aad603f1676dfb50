"""Typed all the way through: the client reads and writes instances of a kind's class, a
controller is typed by kind, round trips are exact, a newer server's fields survive a write-back,
and data that does not fit the class is refused naming the field."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from setpoint.agent import Informer, Result, TypedController
from setpoint.client import Client, Conflict, Resource
from setpoint.client.typed import InvalidObject, ObjectMeta, decode, resource_of, to_builtins
from setpoint.crdgen import crd
from tests.agent.support import eventually
from tests.servers import ServerProcess
from tests.typed.lamp import Lamp, LampSpec, LampStatus

CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", namespaced=False)
LAMPS = resource_of(Lamp)


def newer_crd() -> dict[str, Any]:
    """The Lamp CRD of a newer server: a field this client's class does not know."""
    body = crd(Lamp)
    spec_schema = body["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_schema["properties"]["firmware"] = {"type": "string"}
    spec_schema["properties"]["brightness"]["maximum"] = 200  # allows what this class refuses
    return body


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[Client]:
    async with Client(server.client_config()) as c:
        try:
            await c.create(CRDS, newer_crd())
        except Exception:
            await c.update(CRDS, {**newer_crd(), "metadata": {
                **newer_crd()["metadata"],
                "resourceVersion": (await c.get(CRDS, "lamps.home.example.com"))["metadata"]["resourceVersion"]}})

        async def served() -> bool:
            try:
                await c.list(LAMPS, namespace="default", limit=1)
                return True
            except Exception:
                return False

        await eventually(served, timeout=15, what="lamps served")
        yield c


async def test_get_returns_the_class_and_save_keeps_what_it_does_not_know(client: Client, namespace: str) -> None:
    raw = await client.create(LAMPS, {"apiVersion": "home.example.com/v1", "kind": "Lamp",
                                      "metadata": {"name": "desk"},
                                      "spec": {"brightness": 30, "firmware": "2.1"}}, namespace=namespace)
    lamp = await client.get(Lamp, "desk", namespace=namespace)
    assert isinstance(lamp, Lamp) and lamp.spec.brightness == 30 and lamp.spec.color == "white"
    lamp.spec.brightness = 50  # back to the default: written, not skipped
    lamp.spec.room = "study"
    saved = await client.save(lamp)
    assert saved.spec.brightness == 50 and saved.spec.room == "study"
    after = await client.get(LAMPS, "desk", namespace=namespace)
    assert after["spec"]["firmware"] == "2.1", "a field unknown to the class was dropped"
    assert after["spec"]["brightness"] == 50
    assert after["metadata"]["resourceVersion"] != raw["metadata"]["resourceVersion"]
    with pytest.raises(Conflict):  # the stale instance: written since it was read
        await client.save(lamp)
    saved.spec.room = None  # None removes the field
    saved = await client.save(saved)
    assert "room" not in (await client.get(LAMPS, "desk", namespace=namespace))["spec"]
    saved.status = LampStatus(on=True, observedGeneration=saved.metadata.generation)
    status_saved = await client.save(saved, status=True)
    assert isinstance(status_saved.status, LampStatus) and status_saved.status.on


async def test_object_to_class_to_object_is_exact(client: Client, namespace: str) -> None:
    created = await client.create_typed(Lamp(metadata=ObjectMeta(name="exact", labels={"room": "hall"}),
                                             spec=LampSpec(brightness=70, schedule=["07:00"])),
                                        namespace=namespace)
    raw = await client.get(LAMPS, "exact", namespace=namespace)
    raw["spec"].pop("firmware", None)
    assert to_builtins(decode(Lamp, raw)) == raw, "the round trip changed it"
    assert [lamp.metadata.name for lamp in await client.list_typed(Lamp, namespace=namespace)] == ["exact"]
    assert created.spec.color == "white", "the server's default is in the instance"


def test_data_that_does_not_fit_names_the_field() -> None:
    for bad, where in (({"spec": {"brightness": "bright"}}, "$.spec.brightness"),
                       ({"spec": {"brightness": "5"}}, "$.spec.brightness"),  # no coercion: the API sends numbers
                       ({"spec": {"color": "green"}}, "$.spec.color"),
                       ({"metadata": {"name": 3}, "spec": {}}, "$.metadata.name"),
                       ({}, "spec")):
        with pytest.raises(InvalidObject, match=r"^Lamp") as e:
            decode(Lamp, {"apiVersion": "home.example.com/v1", "kind": "Lamp", **bad})
        assert where in str(e.value), str(e.value)


class LampController(TypedController[Lamp]):
    seen: list[Lamp]

    async def reconcile(self, obj: Lamp) -> Result:
        self.seen.append(obj)
        return Result(status=LampStatus(on=obj.spec.brightness > 0, observedGeneration=obj.metadata.generation))


async def test_a_controller_typed_by_kind(client: Client, namespace: str) -> None:
    assert LampController.resource == LAMPS and LampController.model is Lamp
    ctl = LampController(client, namespace=namespace)
    ctl.seen = []
    task = asyncio.create_task(ctl.run())
    try:
        await client.create(LAMPS, {"apiVersion": "home.example.com/v1", "kind": "Lamp",
                                    "metadata": {"name": "porch"}, "spec": {"brightness": 10}}, namespace=namespace)

        async def lit() -> bool:
            lamp = await client.get(Lamp, "porch", namespace=namespace)
            return isinstance(lamp.status, LampStatus) and lamp.status.on

        await eventually(lit, timeout=15, what="the typed status written")
        assert ctl.seen and all(isinstance(x, Lamp) for x in ctl.seen)
        # An object the class cannot hold fails permanently, with the field named, and the
        # controller goes on with the others.
        await client.create(LAMPS, {"apiVersion": "home.example.com/v1", "kind": "Lamp",
                                    "metadata": {"name": "odd"}, "spec": {"brightness": 150}}, namespace=namespace)

        async def refused() -> dict[str, Any] | None:
            o = await client.get(LAMPS, "odd", namespace=namespace)
            conds = (o.get("status") or {}).get("conditions") or []
            return next((c for c in conds if c["type"] == "Ready" and c["reason"] == "InvalidObject"), None)

        cond = await eventually(refused, timeout=15, what="the odd lamp refused")
        assert cond["status"] == "False" and "$.spec.brightness" in cond["message"], cond
        await client.create(LAMPS, {"apiVersion": "home.example.com/v1", "kind": "Lamp",
                                    "metadata": {"name": "after"}, "spec": {"brightness": 1}}, namespace=namespace)
        await eventually(lambda: any(x.metadata.name == "after" for x in ctl.seen), timeout=15, what="after seen")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_to_builtins_sends_defaults_and_leaves_unset_out() -> None:
    lamp = Lamp(spec=LampSpec())
    out = to_builtins(lamp)
    assert out["spec"] == {"brightness": 50, "color": "white", "schedule": []}
    assert "apiVersion" not in out and out["metadata"] == {}
    assert msgspec.json.decode(msgspec.json.encode(copy.deepcopy(out))) == out


async def test_an_informer_typed_by_kind_decodes_each_version_once(client: Client, namespace: str) -> None:
    informer = Informer(client, LAMPS, namespace=namespace)
    lamps = informer.typed(Lamp)
    async with informer:
        await informer.wait_synced(timeout=15)
        await client.create(LAMPS, {"apiVersion": "home.example.com/v1", "kind": "Lamp",
                                    "metadata": {"name": "hall"}, "spec": {"brightness": 20}}, namespace=namespace)
        key = f"{namespace}/hall"
        first = await eventually(lambda: lamps.get(key), timeout=15, what="hall cached")
        assert isinstance(first, Lamp) and first.spec.brightness == 20
        # Read again and again, listed too: the same instance, decoded once.
        assert lamps.get(key) is first and lamps.list() == [first] and lamps.decodes == 1
        await client.patch(LAMPS, "hall", {"spec": {"brightness": 70}}, namespace=namespace)
        second = await eventually(lambda: (lamp := lamps.get(key)) and lamp.spec.brightness == 70 and lamp,
                                  timeout=15, what="the new version decoded")
        assert second is not first and lamps.decodes == 2 and len(lamps) == 1
        # A version the class cannot hold is refused naming the field; the dict stays readable.
        await client.patch(LAMPS, "hall", {"spec": {"brightness": 150}}, namespace=namespace)
        await eventually(lambda: (o := informer.get(key)) and o["spec"]["brightness"] == 150, timeout=15,
                         what="the odd version cached")
        with pytest.raises(InvalidObject, match=r"\$\.spec\.brightness"):
            lamps.get(key)
        await client.delete(LAMPS, "hall", namespace=namespace)
        await eventually(lambda: informer.get(key) is None, timeout=15, what="hall gone")
        assert lamps.get(key) is None and len(lamps) == 0
