"""The scale subresource: ``kubectl scale`` unchanged, and the Scale view over HTTP, on ProcessSet
(which declares it) and on a custom kind that declares it in its CRD."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.compat.conftest import Kubectl, widget_crd
from tests.servers import ServerProcess

SCALE = {"specReplicasPath": ".spec.size", "statusReplicasPath": ".status.observed"}


def processset(name: str, replicas: int) -> dict[str, Any]:
    return {"apiVersion": "setpoint.dev/v1alpha1", "kind": "ProcessSet", "metadata": {"name": name},
            "spec": {"command": "sleep", "args": ["1000"], "replicas": replicas, "nodeName": "nowhere"}}


def test_kubectl_scale_a_processset(kubectl: Kubectl) -> None:
    kubectl.apply(processset("scaled", 2))
    out = kubectl.run("scale", "processset/scaled", "--replicas=5").stdout
    assert "scaled" in out
    obj = json.loads(kubectl.run("get", "processset", "scaled", "-o", "json").stdout)
    assert obj["spec"]["replicas"] == 5 and obj["metadata"]["generation"] == 2
    # --current-replicas is a precondition kubectl checks through the Scale it reads.
    refused = kubectl.run("scale", "processset/scaled", "--current-replicas=3", "--replicas=1", check=False)
    assert refused.returncode != 0
    assert json.loads(kubectl.run("get", "processset", "scaled", "-o", "json").stdout)["spec"]["replicas"] == 5


def test_the_scale_view_over_http(tls_server: ServerProcess, kubectl: Kubectl) -> None:
    kubectl.apply(widget_crd(subresources={"status": {}, "scale": SCALE}))
    kubectl.apply({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "sc"},
                   "spec": {"size": 3}})
    base = f"/apis/example.com/v1/namespaces/{kubectl.namespace}/widgets/sc/scale"
    with tls_server.sync_client() as c:
        scale = c.get(base).json()
        assert scale["kind"] == "Scale" and scale["apiVersion"] == "autoscaling/v1"
        assert scale["spec"] == {"replicas": 3} and scale["status"]["replicas"] == 0
        scale["spec"]["replicas"] = 4
        r = c.put(base, json=scale)
        assert r.status_code == 200 and r.json()["spec"]["replicas"] == 4
        r = c.put(base, json=scale)  # the same resourceVersion again: stale
        assert r.status_code == 409
        r = c.patch(base, json={"spec": {"replicas": 6}}, headers={"Content-Type": "application/merge-patch+json"})
        assert r.status_code == 200 and r.json()["spec"]["replicas"] == 6
        r = c.patch(base, json={"spec": {"replicas": -1}}, headers={"Content-Type": "application/merge-patch+json"})
        assert r.status_code == 422 and "spec.replicas" in r.text
        assert c.get(base.removesuffix("/scale")).json()["spec"]["size"] == 6
        names = [res["name"] for res in c.get("/apis/example.com/v1").json()["resources"]]
        assert "widgets/scale" in names
        assert c.get("/apis/setpoint.dev/v1alpha1/namespaces/default/nodes/x/scale").status_code == 404


@pytest.mark.parametrize("bad", [{"specReplicasPath": ".status.x", "statusReplicasPath": ".status.y"},
                                 {"statusReplicasPath": ".status.y"}])
def test_a_bad_scale_declaration_is_refused(kubectl: Kubectl, bad: dict[str, str]) -> None:
    crd = widget_crd(subresources={"status": {}, "scale": bad})
    crd["metadata"]["name"] = "gizmos.example.com"
    crd["spec"]["names"] = {"plural": "gizmos", "singular": "gizmo", "kind": "Gizmo"}
    r = kubectl.run("apply", "-f", "-", input=json.dumps(crd), check=False, namespaced=False)
    assert r.returncode != 0 and "subresources.scale" in r.stderr
