"""setpoint codegen: typed classes from CRD files and from a running server's OpenAPI v3; the
generated module passes mypy --strict and ruff, and objects of setpoint's own kinds round-trip
through its classes exactly."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from setpoint.client import Client, Resource
from setpoint.client.typed import decode, resource_of, to_builtins
from setpoint.codegen import from_crd, generate
from setpoint.crdgen import crd
from setpoint.crds import bundled_crds
from tests.agent.support import eventually
from tests.servers import ServerProcess
from tests.typed.lamp import Lamp

pytest.importorskip("datamodel_code_generator", reason="setpoint codegen needs the codegen extra")

CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", namespaced=False)
BIN = Path(sys.executable).parent


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # msgspec resolves the annotations through the module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    path = tmp_path_factory.mktemp("gen") / "setpoint_kinds.py"
    kinds = [k for d in bundled_crds() for k in from_crd(d)]
    path.write_text(generate(kinds, source="setpoint's CRDs"))
    return load(path)


def test_the_generated_module_passes_mypy_strict_and_ruff(own: ModuleType) -> None:
    path = Path(own.__file__ or "")
    lint = subprocess.run([BIN / "ruff", "check", "--isolated", str(path)], capture_output=True, text=True,
                          cwd=path.parent)  # where setpoint is a dependency, as in a user's project
    assert lint.returncode == 0, lint.stdout
    types = subprocess.run([BIN / "mypy", "--strict", "--no-incremental", str(path)], capture_output=True,
                           text=True, cwd=path.parent, timeout=300)
    assert types.returncode == 0, types.stdout
    for name in ("ProcessSet", "Node", "Stack", "Template", "LoadBalancer", "VPC", "Instance", "Reaper"):
        cls = getattr(own, name)
        assert cls.kind_info.kind == name and resource_of(cls).plural.endswith("s")
    assert resource_of(own.ProcessSet) == Resource("setpoint.dev", "v1alpha1", "processsets", kind="ProcessSet")
    assert resource_of(own.Node).namespaced is False


OBJECTS: list[tuple[str, dict[str, Any]]] = [
    ("ProcessSet", {"spec": {"command": "sleep", "args": ["1"], "replicas": 2, "nodeName": "nowhere",
                             "env": [{"name": "A", "value": "1"}]}}),
    ("Stack", {"spec": {"parameters": {"n": 1}, "resources": [{"name": "c", "template": {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "rt-c"}, "data": {"v": "${parameters.n}"}}}]}}),
    ("Template", {"spec": {"nodeName": "nowhere", "source": {"inline": "x"}, "destination": "/tmp/rt-x"}}),
    ("LoadBalancer", {"spec": {"nodeName": "nowhere", "frontend": {"port": 18080},
                               "backends": {"selector": {"matchLabels": {"app": "x"}}}}}),
    ("VPC", {"spec": {"cidrBlock": "10.0.0.0/16", "endpointUrl": "http://127.0.0.1:9"}}),
    ("Instance", {"spec": {"imageId": "ami-1", "endpointUrl": "http://127.0.0.1:9",
                           "networkInterfaces": [{"subnetRef": "a", "securityGroupRefs": ["g"]}]}}),
    ("Reaper", {"spec": {"intervalSeconds": 60, "endpointUrl": "http://127.0.0.1:9"}}),
]


@pytest.mark.parametrize(("kind", "body"), OBJECTS, ids=[k for k, _ in OBJECTS])
async def test_own_kinds_round_trip_exactly(own: ModuleType, server: ServerProcess, namespace: str, kind: str,
                                            body: dict[str, Any]) -> None:
    cls = getattr(own, kind)
    res = resource_of(cls)
    async with Client(server.client_config()) as client:
        created = await client.create(res, {"apiVersion": res.api_version, "kind": kind,
                                            "metadata": {"name": f"rt-{kind.lower()}"}, **body}, namespace=namespace)
        # What the server stored, defaults included, comes back from the class as it went in.
        assert to_builtins(decode(cls, created)) == created
        typed = await client.get(cls, created["metadata"]["name"], namespace=namespace)
        assert isinstance(typed, cls)
        await client.delete(res, created["metadata"]["name"], namespace=namespace)


async def test_codegen_from_a_running_server(server: ServerProcess, tmp_path: Path) -> None:
    async with Client(server.client_config()) as client:
        try:
            await client.create(CRDS, crd(Lamp))
        except Exception:
            pass
        lamps = resource_of(Lamp)

        async def served() -> bool:
            try:
                await client.list(lamps, namespace="default", limit=1)
                return True
            except Exception:
                return False

        await eventually(served, timeout=15, what="lamps served")
        out = tmp_path / "home_kinds.py"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "setpoint", "codegen", "--group", "home.example.com", "-o", str(out),
            "--kubeconfig", str(server.data_dir / "kubeconfig.yaml"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, stdout.decode() + stderr.decode()
        module = load(out)
        gen_lamp = module.Lamp
        assert resource_of(gen_lamp) == lamps
        await client.create(lamps, {"apiVersion": "home.example.com/v1", "kind": "Lamp",
                                    "metadata": {"name": "gen"}, "spec": {"brightness": 5, "color": "blue"}},
                            namespace="default")
        lamp = await client.get(gen_lamp, "gen", namespace="default")
        assert lamp.spec.brightness == 5 and lamp.spec.color == "blue"
        assert '"""A lamp in a home, switched by its agent."""' in out.read_text() or \
            "A lamp in a home" in out.read_text(), "descriptions are not docstrings"
        await client.delete(lamps, "gen", namespace="default")


def test_codegen_refuses_what_it_cannot_use(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("kind: ConfigMap\n")
    r = subprocess.run([sys.executable, "-m", "setpoint", "codegen", "-f", str(empty)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "no CustomResourceDefinition" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "setpoint", "codegen"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--group" in r.stderr, r.stderr
