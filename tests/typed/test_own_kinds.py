"""setpoint's own kinds are declared as classes: the CRDs the server installs are generated from
them (``make crds``), and objects of those kinds round-trip through them exactly."""

from __future__ import annotations

import difflib
from importlib import resources
from typing import Any

import pytest

from setpoint.client import Client
from setpoint.client.typed import decode, resource_of, to_builtins
from setpoint.kinds import CRD_FILES, crd_texts, kind_class
from setpoint.kinds.__main__ import main as make_crds
from tests.servers import ServerProcess
from tests.typed.test_codegen import OBJECTS


def test_every_checked_in_crd_is_the_one_its_class_generates() -> None:
    shipped = {e.name: e.read_text() for e in resources.files("setpoint.crds").iterdir() if e.name.endswith(".yaml")}
    assert set(shipped) == set(CRD_FILES), "every CRD the server installs has a class, and every class a file"
    generated = crd_texts()
    stale = {name: "".join(difflib.unified_diff(shipped[name].splitlines(True), text.splitlines(True), n=1))
             for name, text in generated.items() if shipped[name] != text}
    assert not stale, f"{list(stale)} differ from their classes (run `make crds`):\n{''.join(stale.values())[:3000]}"
    assert make_crds(["--check"]) == 0


def test_a_changed_class_is_caught(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from setpoint.kinds.node import Node

    monkeypatch.setattr(Node, "kind_info", type(Node.kind_info)(group="setpoint.dev", namespaced=True))
    assert make_crds(["--check"]) == 1
    assert "nodes.yaml" in capsys.readouterr().out


STATUSES: dict[str, dict[str, Any]] = {
    "ProcessSet": {"observedGeneration": 1, "replicas": 2, "readyReplicas": 1, "nodeName": "nowhere",
                   "processes": [{"replica": 0, "pid": 42, "port": 8080, "startedAt": "2026-01-01T00:00:00Z",
                                  "restarts": 0, "state": "Running"}],
                   "conditions": [{"type": "Ready", "status": "False", "reason": "Starting", "message": "1 of 2",
                                   "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]},
    "Template": {"observedGeneration": 1, "digest": "ab", "renders": 1, "writes": 1,
                 "command": {"runs": 2, "exitCode": 3, "output": "no such file"}},
    "Stack": {"readyResources": 1, "outputs": {"id": {"nested": [1, 2]}},
              "resources": [{"name": "c", "apiVersion": "v1", "kind": "ConfigMap", "phase": "Ready"}]},
}


@pytest.mark.parametrize(("kind", "body"), OBJECTS, ids=[k for k, _ in OBJECTS])
async def test_objects_round_trip_through_the_declared_classes(server: ServerProcess, namespace: str, kind: str,
                                                              body: dict[str, Any]) -> None:
    cls = next(kind_class(ref) for ref in CRD_FILES.values() if ref.endswith(":" + kind))
    res = resource_of(cls)
    async with Client(server.client_config()) as client:
        created = await client.create(res, {"apiVersion": res.api_version, "kind": kind,
                                            "metadata": {"name": f"own-{kind.lower()}"}, **body}, namespace=namespace)
        # What the server stored, its defaults included, comes back from the class as it went in.
        assert to_builtins(decode(cls, created)) == created
        if kind in STATUSES:
            created = await client.patch(res, created["metadata"]["name"], {"status": STATUSES[kind]},
                                         namespace=namespace, subresource="status")
            assert created["status"] == STATUSES[kind]
            assert to_builtins(decode(cls, created)) == created
        typed = await client.get(cls, created["metadata"]["name"], namespace=namespace)
        assert isinstance(typed, cls) and typed.metadata.name == created["metadata"]["name"]
        await client.delete(res, created["metadata"]["name"], namespace=namespace)
