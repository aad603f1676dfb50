"""Requests a careless client or an attacker sends: each gets a 4xx Status naming what is wrong,
never a 500, and nothing it did not ask for happens to the data."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.servers import ServerProcess


@pytest.fixture
def c(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.sync_client() as client:
        yield client


@pytest.fixture
def ns(c: httpx.Client) -> str:
    name = f"h-{uuid.uuid4().hex[:8]}"
    assert c.post("/api/v1/namespaces", json={"metadata": {"name": name}}).status_code == 201
    return name


def status_of(r: httpx.Response) -> dict[str, object]:
    body = r.json()
    assert body["kind"] == "Status", body
    return body  # type: ignore[no-any-return]


@pytest.mark.parametrize("method", ["TRACE", "OPTIONS", "CONNECT", "PROPFIND"])
def test_verbs_the_api_does_not_serve_are_405(c: httpx.Client, method: str) -> None:
    r = c.request(method, "/api/v1/namespaces")
    assert r.status_code == 405 and status_of(r)["reason"] == "MethodNotAllowed"


@pytest.mark.parametrize("options", [{"preconditions": "x"}, {"preconditions": {"uid": 5}},
                                     {"propagationPolicy": 5}, {"gracePeriodSeconds": "soon"},
                                     {"orphanDependents": "yes"}, {"dryRun": "All"}, {"dryRun": ["Some"]}])
def test_delete_options_of_the_wrong_shape_are_400_and_delete_nothing(
    c: httpx.Client, ns: str, options: dict[str, object]
) -> None:
    r = c.request("DELETE", f"/api/v1/namespaces/{ns}", json=options)
    assert r.status_code == 400, r.text
    assert next(iter(options)) in str(status_of(r)["message"])
    assert c.get(f"/api/v1/namespaces/{ns}").json()["status"]["phase"] == "Active"


def test_a_collection_delete_honours_dry_run_in_its_body(c: httpx.Client, ns: str) -> None:
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
    for i in range(3):
        assert c.post(leases, json={"metadata": {"name": f"l{i}"}, "spec": {}}).status_code == 201
    r = c.request("DELETE", leases, json={"kind": "DeleteOptions", "apiVersion": "v1", "dryRun": ["All"]})
    assert r.status_code == 200 and len(r.json()["items"]) == 3
    assert len(c.get(leases).json()["items"]) == 3  # nothing was deleted


@pytest.mark.parametrize("body", [{"status": "x"}, {"spec": "x"}, {"status": [1]}])
def test_namespace_status_of_the_wrong_type_is_400(c: httpx.Client, ns: str, body: dict[str, object]) -> None:
    r = c.patch(f"/api/v1/namespaces/{ns}/status", json=body,
                headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code == 400 and next(iter(body)) in str(status_of(r)["message"])
    put = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}, **body}
    assert c.put(f"/api/v1/namespaces/{ns}/status", json=put).status_code == 400


@pytest.mark.parametrize("limit", ["9223372036854775807", "99999999999999999999999"])
def test_any_large_limit_is_accepted(c: httpx.Client, limit: str) -> None:
    r = c.get("/api/v1/namespaces", params={"limit": limit})
    assert r.status_code == 200 and r.json()["items"]


@pytest.mark.parametrize("token", [{"rv": -5, "start": "a"}, {"rv": 0, "start": "a"}, {"rv": "1", "start": "a"},
                                   {"rv": 3, "start": 7}, {"rv": 10**30, "start": "a"}])
def test_a_continue_token_the_server_did_not_make_is_400(c: httpx.Client, token: dict[str, object]) -> None:
    encoded = base64.urlsafe_b64encode(json.dumps(token).encode()).decode().rstrip("=")
    r = c.get("/api/v1/namespaces", params={"continue": encoded, "limit": "1"})
    assert r.status_code == 400, r.text


@pytest.mark.parametrize("meta", [{"resourceVersion": 5}, {"name": 5}, {"labels": {"a": 1}}, {"annotations": []},
                                  {"uid": ["x"]}])
def test_metadata_fields_of_the_wrong_type_are_400(c: httpx.Client, ns: str, meta: dict[str, object]) -> None:
    body = {"metadata": {"name": "m", **meta}, "spec": {}}
    r = c.post(f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases", json=body)
    assert r.status_code == 400 and f"metadata.{next(iter(meta))}" in str(status_of(r)["message"])


def test_yaml_keys_that_are_not_strings_are_refused(c: httpx.Client, ns: str) -> None:
    yaml_body = f"metadata: {{name: y, namespace: {ns}, labels: {{1: a, true: b, null: c}}}}\nspec: {{}}\n"
    r = c.post(f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases", content=yaml_body,
               headers={"Content-Type": "application/yaml"})
    assert r.status_code == 400 and "not a string" in str(status_of(r)["message"])


def nested(depth: int) -> dict[str, object]:
    value: dict[str, object] = {"leaf": True}
    for _ in range(depth):
        value = {"x": value}
    return value


def test_objects_nested_too_deep_are_refused_at_create_and_others_stay_writable(c: httpx.Client, ns: str) -> None:
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
    deep = {"metadata": {"name": "deep", "annotations": {}}, "spec": {}, "extra": nested(300)}
    r = c.post(leases, json=deep)
    assert r.status_code == 400 and "nested" in str(status_of(r)["message"])
    ok = {"metadata": {"name": "ok"}, "spec": {}, "extra": nested(100)}
    assert c.post(leases, json=ok).status_code == 201
    r = c.patch(f"{leases}/ok", json={"metadata": {"labels": {"a": "b"}}},
                headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code == 200
    r = c.patch(f"{leases}/ok", json={"extra": nested(300)}, headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code == 400  # a patch cannot make it too deep either
    assert c.delete(f"{leases}/ok").status_code == 200


@pytest.mark.parametrize("value", ["nan", "inf", "1e9", "-1", "1.5"])
def test_watch_timeout_seconds_must_be_an_integer(c: httpx.Client, value: str) -> None:
    r = c.get("/api/v1/namespaces", params={"watch": "1", "timeoutSeconds": value})
    assert r.status_code == 400 and "timeoutSeconds" in str(status_of(r)["message"])


def test_watch_timeout_seconds_zero_is_the_default_not_one_event(c: httpx.Client, server: ServerProcess) -> None:
    with server.sync_client() as w, w.stream("GET", "/api/v1/namespaces",
                                             params={"watch": "1", "timeoutSeconds": "0"}) as stream:
        lines = stream.iter_lines()
        first = json.loads(next(lines))  # the current state, as ADDED events
        assert first["type"] == "ADDED"
        name = f"t0-{uuid.uuid4().hex[:6]}"
        c.post("/api/v1/namespaces", json={"metadata": {"name": name}})
        for line in lines:
            if json.loads(line)["object"]["metadata"]["name"] == name:
                break  # still open after the first event


def test_a_yaml_alias_bomb_is_refused_quickly(c: httpx.Client, ns: str) -> None:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 10):
        prev = chr(ord("a") + i - 1)
        cur = chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [{', '.join(['*' + prev] * 10)}]")
    body = "metadata: {name: bomb}\nspec:\n" + "\n".join("  " + ln for ln in lines) + "\n"
    assert len(body) < 1000
    r = c.post(f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases", content=body,
               headers={"Content-Type": "application/yaml"}, timeout=30)
    assert r.status_code == 413 and "aliases" in str(status_of(r)["message"])


def test_a_small_yaml_body_cannot_store_a_large_object(c: httpx.Client, ns: str) -> None:
    big = "y" * 400
    lines = [f'a: &a "{big}"', "b: &b [*a, *a, *a, *a]", "c: &c [*b, *b, *b, *b]", "d: &d [*c, *c, *c, *c]",
             "e: &e [*d, *d, *d, *d]", "f: &f [*e, *e, *e, *e]", "g: &g [*f, *f, *f, *f]", "h: [*g, *g, *g, *g]"]
    body = "metadata: {name: wide}\nspec:\n" + "\n".join("  " + ln for ln in lines) + "\n"
    r = c.post(f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases", content=body,
               headers={"Content-Type": "application/yaml"}, timeout=30)
    assert r.status_code == 413, r.text[:200]
    assert c.get(f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/wide").status_code == 404


def test_json_patch_copies_cannot_blow_an_object_up(c: httpx.Client, ns: str) -> None:
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
    assert c.post(leases, json={"metadata": {"name": "cp"}, "spec": {}, "d": ["x" * 1000]}).status_code == 201
    # Each copy of the list into itself doubles it: 25 operations would make 32 GB.
    ops = [{"op": "copy", "from": "/d", "path": "/d/-"} for _ in range(25)]
    r = c.patch(f"{leases}/cp", json=ops, headers={"Content-Type": "application/json-patch+json"}, timeout=30)
    assert r.status_code == 413, r.text[:200]
    assert len(c.get(f"{leases}/cp").json()["d"]) == 1


@pytest.mark.parametrize(("body", "ctype"), [
    ('{"metadata":{"name":"n"},"spec":{"leaseDurationSeconds":' + "1" * 401 + "}}", "application/json"),
    ('{"metadata":{"name":"n"},"spec":{"x":' + "9" * 20 + "}}", "application/json"),
    ("metadata: {name: n}\nspec: {x: .nan}\n", "application/yaml"),
    ("metadata: {name: n}\nspec: {x: .inf}\n", "application/yaml"),
    ('{"metadata":{"name":"n"},"spec":{"a":' + "[" * 1000 + "]" * 1000 + "}}", "application/json"),
    ("metadata: {name: n}\nspec: {a: " + "[" * 1000 + "]" * 1000 + "}\n", "application/yaml"),
])
def test_numbers_json_cannot_hold_and_deep_documents_are_400(c: httpx.Client, ns: str, body: str, ctype: str) -> None:
    r = c.post(f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 400, r.text[:200]
    assert c.get(f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/n").status_code == 404
