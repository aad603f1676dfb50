"""The REST driver contract document is valid, and the simulator keeps it: every reply of every
call validates against the OpenAPI schemas (run the same checks against another implementation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastjsonschema
import httpx
import pytest
import yaml
from setpoint_home.devices import DeviceHub, FaultRule
from setpoint_home.simulator import DEMO_DEVICES, Simulator

DOC = Path(__file__).resolve().parents[2] / "docs" / "driver-contract.openapi.yaml"
SPEC: dict[str, Any] = yaml.safe_load(DOC.read_text())


def validator(name: str) -> Any:
    return fastjsonschema.compile({"$ref": f"#/components/schemas/{name}", "components": SPEC["components"]})


def response_schema(path: str, method: str, status: int) -> str | None:
    """The component schema the document names for this reply (None: no body described)."""
    resp = SPEC["paths"][path][method]["responses"][str(status)]
    if "$ref" in resp:
        resp = SPEC["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
    content = resp.get("content")
    if not content:
        return None
    return str(content["application/json"]["schema"]["$ref"].rsplit("/", 1)[1])


def test_the_document_names_every_call() -> None:
    assert SPEC["openapi"].startswith("3.1")
    ops = {(p, m) for p, item in SPEC["paths"].items() for m in item if m in ("get", "put", "delete")}
    assert ops == {("/v1/health", "get"), ("/v1/resources", "get"), ("/v1/resources/{id}", "get"),
                   ("/v1/resources/{id}", "put"), ("/v1/resources/{id}", "delete")}
    put = SPEC["paths"]["/v1/resources/{id}"]["put"]
    assert put["parameters"][0]["$ref"].endswith("IdempotencyKey")
    assert SPEC["components"]["parameters"]["IdempotencyKey"]["required"] is True
    for name in SPEC["components"]["schemas"]:
        validator(name)  # each schema compiles


async def test_the_simulator_conforms() -> None:
    hub = DeviceHub(travel_seconds=0.01)
    for id, type_ in DEMO_DEVICES.items():
        hub.add(id, type_)
    async with Simulator(hub) as sim, httpx.AsyncClient(base_url=sim.url) as http:
        calls: list[tuple[str, str, httpx.Response]] = []

        async def call(method: str, path: str, template: str, **kw: Any) -> httpx.Response:
            r = await http.request(method, path, **kw)
            calls.append((template, method.lower(), r))
            return r

        one = "/v1/resources/{id}"
        body = {"spec": {"type": "kettle", "settings": {"on": True}}, "owner": {"uid": "u1", "kind": "Home"}}
        await call("GET", "/v1/health", "/v1/health")
        await call("GET", "/v1/resources", "/v1/resources")
        assert (await call("GET", "/v1/resources/kettle", one)).json()["spec"] is None
        assert (await call("GET", "/v1/resources/nothing", one)).status_code == 404
        first = await call("PUT", "/v1/resources/kettle", one, json=body, headers={"Idempotency-Key": "k1"})
        again = await call("PUT", "/v1/resources/kettle", one, json=body, headers={"Idempotency-Key": "k1"})
        assert first.status_code == again.status_code == 200 and first.json() == again.json()
        assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
        other = {**body, "spec": {"type": "kettle", "settings": {"on": False}}}
        assert (await call("PUT", "/v1/resources/kettle", one, json=other,
                           headers={"Idempotency-Key": "k1"})).status_code == 422
        assert (await call("PUT", "/v1/resources/kettle", one, json=body)).status_code == 400  # no key
        garage = {"spec": {"type": "garageDoor", "settings": {"position": "open"}}}
        moving = await call("PUT", "/v1/resources/garage", one, json=garage, headers={"Idempotency-Key": "g1"})
        assert moving.status_code == 202 and moving.json()["phase"] == "Progressing"
        hub.inject(FaultRule("not_ready", device="porch-lights"))
        busy = await call("PUT", "/v1/resources/porch-lights", one, headers={"Idempotency-Key": "l1"},
                          json={"spec": {"type": "lights", "settings": {"on": True}}})
        assert busy.status_code == 503 and busy.headers["retry-after"] == "0.05"
        hub.inject(FaultRule("fail_midway", device="porch-lights"))
        broken = await call("PUT", "/v1/resources/porch-lights", one, headers={"Idempotency-Key": "l1"},
                            json={"spec": {"type": "lights", "settings": {"on": True}}})
        assert broken.status_code == 500 and broken.json()["reason"] == "FailedMidway"
        assert (await call("GET", "/v1/resources/porch-lights", one)).json()["phase"] == "Failed"
        assert (await call("DELETE", "/v1/resources/kettle", one, headers={"Idempotency-Key": "d1"})).status_code == 200
        assert (await call("DELETE", "/v1/resources/nothing", one)).status_code == 404
        for template, method, r in calls:
            name = response_schema(template, method, r.status_code)
            if name is not None:
                validator(name)(r.json())
        assert hub.effects()["kettle"] == {"boilings": 1}


async def test_the_simulator_counts_what_a_careless_client_would_do_twice() -> None:
    """Without operation ids, a retry boils the kettle again: the checks above have teeth."""
    hub = DeviceHub()
    hub.add("kettle", "kettle")
    async with Simulator(hub) as sim, httpx.AsyncClient(base_url=sim.url) as http:
        body = {"spec": {"type": "kettle", "settings": {"on": True}}}
        for key in ("first-try", "retry-with-a-new-id"):
            assert (await http.put("/v1/resources/kettle", json=body, headers={"Idempotency-Key": key})).is_success
    assert hub.effects()["kettle"] == {"boilings": 2}


@pytest.mark.parametrize("bad", [{"fault": "explode"}, {"fault": "delay", "methods": ["POST"]},
                                 {"fault": "delay", "probability": 2}, {"fault": "delay", "colour": "red"}])
async def test_control_api_refuses_nonsense(bad: dict[str, Any]) -> None:
    async with Simulator(DeviceHub()) as sim, httpx.AsyncClient(base_url=sim.url) as http:
        assert (await http.post("/_sim/faults", json=bad)).status_code == 400


def test_the_example_manifest_is_what_the_devices_accept() -> None:
    """examples/home/home.yaml parses to string keys (a bare YAML `on` would be a boolean) and
    every device of the demo hub accepts its settings."""
    from setpoint_home.resources import home_resources

    home = yaml.safe_load((DOC.parents[1] / "examples" / "home" / "home.yaml").read_text())
    hub = DeviceHub()
    for id, type_ in DEMO_DEVICES.items():
        hub.add(id, type_)
    wanted = home_resources(home)
    assert set(wanted) == set(DEMO_DEVICES)
    for id, spec in wanted.items():
        assert all(isinstance(k, str) for k in spec["settings"]), spec
        assert spec["type"] == hub.devices[id].type
        assert hub.devices[id].validate(spec["settings"]) is None, (id, spec)
