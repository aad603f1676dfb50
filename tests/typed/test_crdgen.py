"""CRDs from Python classes: the generated CRD is structural, the server serves it, and its
constraints, enums and defaults are the class's."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import msgspec
import pytest
import yaml

from setpoint.client import Client, Invalid, Resource
from setpoint.crdgen import NotStructural, crd, structural
from tests.agent.support import eventually
from tests.servers import ServerProcess
from tests.typed.lamp import Lamp, LampSpec

LAMPS = Resource("home.example.com", "v1", "lamps", kind="Lamp")
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", namespaced=False)
ROOT = Path(__file__).resolve().parents[2]


def test_the_crd_is_structural_and_says_what_the_class_says() -> None:
    c = crd(Lamp)
    assert c["metadata"]["name"] == "lamps.home.example.com"
    v = c["spec"]["versions"][0]
    assert v["subresources"] == {"status": {}} and v["additionalPrinterColumns"][0]["jsonPath"] == ".spec.brightness"
    spec = v["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert "$ref" not in str(c) and "anyOf" not in str(c) and "title" not in str(c)
    assert spec["description"] == "What the lamp should do."
    assert spec["properties"]["brightness"] == {"description": "Percent of full light.", "type": "integer",
                                                "minimum": 0, "maximum": 100, "default": 50}
    assert spec["properties"]["color"] == {"enum": ["blue", "red", "white"], "default": "white", "type": "string"}
    assert spec["properties"]["room"]["nullable"] is True and spec["properties"]["room"]["type"] == "string"
    assert c["spec"]["names"]["shortNames"] == ["lmp"]


class Tree(msgspec.Struct):
    child: Tree | None = None


def test_what_cannot_be_structural_is_refused() -> None:
    with pytest.raises(NotStructural, match="itself"):
        structural(msgspec.json.schema(Tree))


async def test_the_server_serves_the_generated_kind(server: ServerProcess) -> None:
    async with Client(server.client_config()) as client:
        body = crd(Lamp)
        try:
            await client.create(CRDS, body)
        except Exception:
            pass
        ns = "default"

        async def served() -> bool:
            try:
                await client.list(LAMPS, namespace=ns)
                return True
            except Exception:
                return False

        await eventually(served, timeout=15, what="lamps served")
        lamp = {"apiVersion": "home.example.com/v1", "kind": "Lamp", "metadata": {"name": "desk"},
                "spec": msgspec.to_builtins(LampSpec(brightness=80, room="study"))}
        created = await client.create(LAMPS, lamp, namespace=ns)
        assert created["spec"] == {"brightness": 80, "color": "white", "room": "study", "schedule": []}
        back = msgspec.convert({"spec": created["spec"]}, Lamp)
        assert back.spec.brightness == 80 and back.spec.color == "white"
        for bad, field in (({"brightness": 101}, "spec.brightness"), ({"color": "green"}, "spec.color"),
                           ({"room": "Not Valid"}, "spec.room")):
            with pytest.raises(Invalid) as e:
                await client.create(LAMPS, {**lamp, "metadata": {"name": "bad"}, "spec": bad}, namespace=ns)
            assert any(c.field == field for c in e.value.causes), (field, e.value.causes)


def test_the_cli_prints_the_crd() -> None:
    with warnings.catch_warnings():
        out = subprocess.run([sys.executable, "-m", "setpoint", "crd", "gen", "tests.typed.lamp:Lamp"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    assert yaml.safe_load(out) == crd(Lamp)
