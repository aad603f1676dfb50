"""Bad input gets a Status error with the right code, and nothing stored changes."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.conftest_helpers import wpath
from tests.conftest import widget
from tests.servers import ServerProcess


@pytest.fixture
def c(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.sync_client() as client:
        yield client


def status_of(r: httpx.Response, code: int, reason: str) -> dict:  # type: ignore[type-arg]
    assert r.status_code == code, r.text
    body = r.json()
    assert body["kind"] == "Status" and body["apiVersion"] == "v1"
    assert body["status"] == "Failure" and body["code"] == code and body["reason"] == reason
    assert body["message"]
    return body  # type: ignore[no-any-return]


def test_malformed_bodies(c: httpx.Client, namespace: str) -> None:
    status_of(c.post(wpath(namespace), content=b'{"metadata": ', headers={"Content-Type": "application/json"}),
              400, "BadRequest")
    status_of(c.post(wpath(namespace), content=b"[1, 2]", headers={"Content-Type": "application/json"}),
              400, "BadRequest")
    status_of(c.post(wpath(namespace), content=b"a: [b", headers={"Content-Type": "application/yaml"}),
              400, "BadRequest")
    status_of(c.post(wpath(namespace), content=b"x", headers={"Content-Type": "text/plain"}),
              415, "UnsupportedMediaType")
    status_of(c.post(wpath(namespace), content=b"", headers={"Content-Type": "application/json"}),
              400, "BadRequest")
    body = widget("k")
    body["kind"] = "Gizmo"
    status_of(c.post(wpath(namespace), json=body), 400, "BadRequest")
    body = widget("k")
    body["metadata"]["namespace"] = "elsewhere"
    status_of(c.post(wpath(namespace), json=body), 400, "BadRequest")


def test_yaml_body_is_accepted(c: httpx.Client, namespace: str) -> None:
    doc = b"apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: yml\nspec:\n  size: 3\n"
    r = c.post(wpath(namespace), content=doc, headers={"Content-Type": "application/yaml"})
    assert r.status_code == 201, r.text
    assert r.json()["spec"] == {"size": 3, "color": "blue"}


def test_invalid_names_and_schema(c: httpx.Client, namespace: str) -> None:
    body = status_of(c.post(wpath(namespace), json=widget("Bad_Name")), 422, "Invalid")
    assert body["details"]["causes"][0]["field"] == "metadata.name"
    assert "Bad_Name" in body["message"]
    body = status_of(c.post(wpath(namespace), json=widget("ok", size=-1)), 422, "Invalid")
    assert any(x["field"] == "spec.size" for x in body["details"]["causes"])
    no_size = widget("ok")
    del no_size["spec"]["size"]
    body = status_of(c.post(wpath(namespace), json=no_size), 422, "Invalid")
    assert any("size" in x["field"] for x in body["details"]["causes"])
    body = status_of(c.post(wpath(namespace), json=widget("ok", labels={"bad key!": "v"})), 422, "Invalid")
    assert body["details"]["causes"][0]["field"].startswith("metadata.labels")
    # Unknown fields are pruned, as Kubernetes does for structural schemas.
    r = c.post(wpath(namespace), json={**widget("pruned"), "spec": {"size": 1, "extra": 1}})
    assert r.status_code == 201 and "extra" not in r.json()["spec"]
    assert c.get(wpath(namespace, "ok")).status_code == 404


def test_bad_crd_is_rejected_with_field(c: httpx.Client) -> None:
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "things.example.net"},
           "spec": {"group": "example.net", "scope": "Galaxy",
                    "names": {"plural": "things", "kind": "Thing"},
                    "versions": [{"name": "v1", "served": True, "storage": True}]}}
    body = status_of(c.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd),
                     422, "Invalid")
    assert any(x["field"] == "spec.scope" for x in body["details"]["causes"])
    assert c.get("/apis/example.net/v1/things").status_code == 404


def test_unknown_kinds_and_versions(c: httpx.Client, namespace: str) -> None:
    status_of(c.get("/apis/example.com/v9/widgets"), 404, "NotFound")
    status_of(c.get("/apis/nope.example/v1/things"), 404, "NotFound")
    status_of(c.get("/api/v2"), 404, "NotFound")
    status_of(c.get(f"/api/v1/namespaces/{namespace}/namespaces"), 404, "NotFound")
    status_of(c.get(wpath(namespace, "x", "scale")), 404, "NotFound")
    status_of(c.get("/nothing/here"), 404, "NotFound")


def test_body_over_the_limit(c: httpx.Client, namespace: str) -> None:
    big = widget("big")
    big["metadata"]["annotations"] = {"blob": "x" * (2 * 1024 * 1024)}
    status_of(c.post(wpath(namespace), json=big), 413, "RequestEntityTooLarge")
    assert c.get(wpath(namespace, "big")).status_code == 404
    # Chunked upload without a Content-Length is cut off too.
    def chunks() -> Iterator[bytes]:
        yield json.dumps(widget("big2"))[:-1].encode() + b', "pad": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}'
    status_of(c.post(wpath(namespace), content=chunks(), headers={"Content-Type": "application/json"}),
              413, "RequestEntityTooLarge")
    assert c.get("/healthz").status_code == 200


def test_stale_resource_version_keeps_the_newer_write(c: httpx.Client, namespace: str) -> None:
    w = c.post(wpath(namespace), json=widget("st", size=1)).json()
    fresh = dict(w, spec={"size": 2})
    assert c.put(wpath(namespace, "st"), json=fresh).status_code == 200
    stale = dict(w, spec={"size": 3})
    status_of(c.put(wpath(namespace, "st"), json=stale), 409, "Conflict")
    assert c.get(wpath(namespace, "st")).json()["spec"]["size"] == 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
        st.sampled_from(["apiVersion", "kind", "metadata", "spec", "name", "size", "labels", "x"]),
        kids, max_size=4),
    max_leaves=12))
def test_no_request_body_yields_a_500(c: httpx.Client, namespace: str, body: object) -> None:
    before = c.get(wpath(namespace)).json()["items"]
    for method, path in (("POST", wpath(namespace)), ("PUT", wpath(namespace, "fuzz")),
                         ("POST", "/api/v1/namespaces"),
                         ("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions")):
        r = c.request(method, path, json=body)
        assert r.status_code < 500, (method, path, body, r.text)
        assert r.json()["kind"] != "Status" or r.json()["code"] == r.status_code
    for ctype in ("application/merge-patch+json", "application/json-patch+json"):
        c.post(wpath(namespace), json=widget("fuzz-target"))
        r = c.patch(wpath(namespace, "fuzz-target"), json=body, headers={"Content-Type": ctype})
        assert r.status_code < 500, (ctype, body, r.text)
    after = c.get(wpath(namespace)).json()["items"]
    survivors = {i["metadata"]["name"]: i for i in after}
    for item in before:
        if item["metadata"]["name"] != "fuzz-target":
            assert survivors[item["metadata"]["name"]] == item


def _pb_field(n: int, data: bytes) -> bytes:
    return bytes([n << 3 | 2, len(data)]) + data  # length-delimited; every piece here is short


def test_protobuf_with_invalid_utf8_is_a_400(c: httpx.Client) -> None:
    type_meta = _pb_field(1, b"v1") + _pb_field(2, b"Namespace")
    for name in (b"pb-ok-\xff\xfe", b"\xc3"):
        namespace = _pb_field(1, _pb_field(1, name))
        body = b"k8s\x00" + _pb_field(1, type_meta) + _pb_field(2, namespace)
        r = c.post("/api/v1/namespaces", content=body,
                   headers={"Content-Type": "application/vnd.kubernetes.protobuf"})
        assert r.status_code == 400, r.text
        assert "UTF-8" in r.json()["message"]
    # A well-formed one goes through, so the 400 above is about the text, not the framing.
    namespace = _pb_field(1, _pb_field(1, b"pb-utf8-ok"))
    body = b"k8s\x00" + _pb_field(1, type_meta) + _pb_field(2, namespace)
    r = c.post("/api/v1/namespaces", content=body, headers={"Content-Type": "application/vnd.kubernetes.protobuf"})
    assert r.status_code == 201, r.text


def test_managed_fields_that_later_writes_could_not_read_are_refused(c: httpx.Client, namespace: str) -> None:
    for bad, field in ((5, "metadata.managedFields"),
                       ([{"manager": "m", "operation": "Patch", "fieldsV1": {}}],
                        "metadata.managedFields[0].operation"),
                       ([{"manager": 7, "operation": "Update"}], "metadata.managedFields[0].manager")):
        obj = widget("mf-bad")
        obj["metadata"]["managedFields"] = bad
        r = c.post(wpath(namespace), json=obj)
        assert r.status_code == 422, r.text
        assert field in [cause["field"] for cause in r.json()["details"]["causes"]]
    # An entry naming the object itself, then a server-side apply by that manager: no 500.
    obj = widget("mf-self")
    obj["metadata"]["managedFields"] = [{"manager": "m", "operation": "Apply", "fieldsV1": {".": {}}}]
    assert c.post(wpath(namespace), json=obj).status_code == 201
    applied = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "mf-self"},
               "spec": {"size": 2}}
    r = c.patch(wpath(namespace, "mf-self") + "?fieldManager=m", content=json.dumps(applied),
                headers={"Content-Type": "application/apply-patch+yaml"})
    assert r.status_code == 200, r.text
    assert r.json()["spec"]["size"] == 2
