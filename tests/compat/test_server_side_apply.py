"""Server-side apply: managedFields, field ownership, conflicts and force, with kubectl and raw HTTP."""

from __future__ import annotations

import copy
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from tests.compat.conftest import Kubectl, widget_crd
from tests.servers import ServerProcess

APPLY = {"Content-Type": "application/apply-patch+yaml"}

GADGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "gadgets.example.com"},
    "spec": {"group": "example.com", "scope": "Namespaced",
             "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                 "type": "object", "properties": {"spec": {"type": "object", "properties": {
                     "ports": {"type": "array", "x-kubernetes-list-type": "map",
                               "x-kubernetes-list-map-keys": ["name"],
                               "items": {"type": "object", "required": ["name"], "properties": {
                                   "name": {"type": "string"}, "port": {"type": "integer"}}}},
                     "owners": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
                     "config": {"type": "object", "additionalProperties": {"type": "string"}},
                 }}}}}}]},
}


@pytest.fixture(scope="module")
def k(kubectl: Kubectl) -> Kubectl:
    kubectl.apply(widget_crd())
    kubectl.apply(GADGET_CRD)
    return kubectl


@pytest.fixture(scope="module")
def c(tls_server: ServerProcess) -> Iterator[httpx.Client]:
    ca = ssl.create_default_context(cafile=str(tls_server.data_dir / "tls.crt"))
    with httpx.Client(base_url=tls_server.url, headers=tls_server.headers, verify=ca, timeout=30) as client:
        yield client


def url(k: Kubectl, plural: str, name: str, sub: str = "") -> str:
    return f"/apis/example.com/v1/namespaces/{k.namespace}/{plural}/{name}" + (f"/{sub}" if sub else "")


def apply(c: httpx.Client, k: Kubectl, obj: dict[str, Any], manager: str, force: bool = False,
          sub: str = "") -> httpx.Response:
    plural = obj["kind"].lower() + "s"
    params = {"fieldManager": manager} | ({"force": "true"} if force else {})
    return c.patch(url(k, plural, obj["metadata"]["name"], sub), content=yaml.safe_dump(obj),
                   params=params, headers=APPLY)


def managers(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{e['manager']}/{e['operation']}": e["fieldsV1"] for e in obj["metadata"].get("managedFields", [])}


def widget(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}


def test_kubectl_server_side_apply_and_conflicts(k: Kubectl) -> None:
    obj = widget("k1", size=1)
    obj["metadata"]["labels"] = {"app": "k1"}
    assert "serverside-applied" in k.apply(obj, "--server-side")
    got = k.json("get", "wd", "k1", "--show-managed-fields")
    entry = got["metadata"]["managedFields"][0]
    assert (entry["manager"], entry["operation"], entry["fieldsType"]) == ("kubectl", "Apply", "FieldsV1")
    assert entry["fieldsV1"] == {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}, "f:spec": {"f:size": {}}}
    k("patch", "wd", "k1", "--type=merge", "-p", '{"spec":{"size":5}}', "--field-manager=scaler")
    obj["spec"]["size"] = 2
    r = k.run("apply", "--server-side", "-f", "-", input=yaml.safe_dump(obj), check=False)
    assert r.returncode != 0
    assert 'Apply failed with 1 conflict: conflict with "scaler" using example.com/v1: .spec.size' in r.stderr
    k.apply(obj, "--server-side", "--force-conflicts")
    got = k.json("get", "wd", "k1", "--show-managed-fields")
    assert got["spec"]["size"] == 2
    assert "scaler/Update" not in managers(got)  # its only field was taken over


def test_conflict_status_names_every_manager_and_field(c: httpx.Client, k: Kubectl) -> None:
    assert apply(c, k, widget("h1", size=1, color="red"), "alice").status_code == 201
    r = c.patch(url(k, "widgets", "h1"), json={"spec": {"size": 3}}, params={"fieldManager": "bob"},
                headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code == 200
    r = c.patch(url(k, "widgets", "h1"), json={"spec": {"color": "green"}}, params={"fieldManager": "carol"},
                headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code == 200
    r = apply(c, k, widget("h1", size=1, color="red"), "alice")
    assert r.status_code == 409
    status = r.json()
    assert status["reason"] == "Conflict"
    assert status["message"].startswith("Apply failed with 2 conflicts: conflicts with \"bob\" using example.com/v1:")
    assert {(x["reason"], x["field"], x["message"]) for x in status["details"]["causes"]} == {
        ("FieldManagerConflict", ".spec.size", 'conflict with "bob" using example.com/v1'),
        ("FieldManagerConflict", ".spec.color", 'conflict with "carol" using example.com/v1')}
    # Applying the values the others set is no conflict: the fields become shared.
    r = apply(c, k, widget("h1", size=3, color="green"), "alice")
    assert r.status_code == 200, r.text
    m = managers(r.json())
    assert m["alice/Apply"]["f:spec"] == {"f:size": {}, "f:color": {}}
    assert m["bob/Update"]["f:spec"] == {"f:size": {}}


def test_stopping_to_apply_a_field_removes_it_unless_shared(c: httpx.Client, k: Kubectl) -> None:
    full = widget("r1", size=1, tags=["a"])
    full["metadata"]["labels"] = {"x": "1", "y": "2"}
    assert apply(c, k, full, "alice").status_code == 201
    less = widget("r1", size=1)
    less["metadata"]["labels"] = {"x": "1"}
    out = apply(c, k, less, "alice").json()
    assert "tags" not in out["spec"] and out["metadata"]["labels"] == {"x": "1"}
    # A field another applier also applies stays when one of them lets go.
    assert apply(c, k, widget("r1", size=1, tags=["b"]), "alice").status_code == 200
    assert apply(c, k, widget("r1", tags=["b"]), "bob").status_code == 200
    out = apply(c, k, widget("r1", size=1), "alice").json()
    assert out["spec"]["tags"] == ["b"]
    assert managers(out)["bob/Apply"] == {"f:spec": {"f:tags": {}}}


def test_associative_lists_sets_and_maps(c: httpx.Client, k: Kubectl) -> None:
    def gadget(**spec: Any) -> dict[str, Any]:
        return {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g1"}, "spec": spec}

    assert apply(c, k, gadget(ports=[{"name": "http", "port": 80}], owners=["a"], config={"a": "1"}),
                 "alice").status_code == 201
    r = apply(c, k, gadget(ports=[{"name": "metrics", "port": 9090}], owners=["b"], config={"b": "2"}), "bob")
    assert r.status_code == 200, r.text
    spec = r.json()["spec"]
    assert spec["ports"] == [{"name": "http", "port": 80}, {"name": "metrics", "port": 9090}]
    assert spec["owners"] == ["a", "b"] and spec["config"] == {"a": "1", "b": "2"}
    bob = managers(r.json())["bob/Apply"]["f:spec"]
    assert bob["f:ports"] == {'k:{"name":"metrics"}': {".": {}, "f:name": {}, "f:port": {}}}
    assert bob["f:owners"] == {'v:"b"': {}}
    # Changing alice's item is a conflict for bob, naming the item by its key.
    r = apply(c, k, gadget(ports=[{"name": "http", "port": 81}]), "bob")
    assert r.status_code == 409
    assert r.json()["details"]["causes"][0]["field"] == '.spec.ports[name="http"].port'
    # alice dropping her item removes only hers.
    r = apply(c, k, gadget(owners=["a"], config={"a": "1"}), "alice")
    assert [p["name"] for p in r.json()["spec"]["ports"]] == ["metrics"]


def test_apply_status_and_errors(c: httpx.Client, k: Kubectl) -> None:
    assert apply(c, k, widget("s1", size=1), "alice").status_code == 201
    status_cfg = copy.deepcopy(widget("s1"))
    status_cfg["status"] = {"ready": True}
    r = apply(c, k, status_cfg, "agent", sub="status")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == {"ready": True} and out["spec"]["size"] == 1
    entry = next(e for e in out["metadata"]["managedFields"] if e["manager"] == "agent")
    assert entry["subresource"] == "status" and entry["fieldsV1"] == {"f:status": {"f:ready": {}}}
    # status in an apply to the object itself is not the object's to set.
    cfg = widget("s1", size=1)
    cfg["status"] = {"ready": False}
    assert apply(c, k, cfg, "alice").json()["status"] == {"ready": True}
    r = c.patch(url(k, "widgets", "s1"), content=yaml.safe_dump(widget("s1", size=1)), headers=APPLY)
    assert r.status_code == 422 and r.json()["details"]["causes"][0]["field"] == "fieldManager"
    r = apply(c, k, widget("s1", size=-1), "alice")
    assert r.status_code == 422
