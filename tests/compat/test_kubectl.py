"""kubectl, unchanged, against a real ``setpoint serve``: discovery, OpenAPI, tables and the everyday verbs."""

from __future__ import annotations

import json
import queue
import ssl
import subprocess
import threading
import time
import uuid
from typing import Any

import httpx
import pytest
import yaml

from tests.compat.conftest import Kubectl, widget_crd
from tests.servers import ServerProcess

COLUMNS = [
    {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
    {"name": "Color", "type": "string", "jsonPath": ".spec.color", "priority": 1},
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def widget(name: str, size: int = 1, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name},
            "spec": {"size": size, **spec}}


@pytest.fixture(scope="module")
def k(kubectl: Kubectl) -> Kubectl:
    kubectl.apply(widget_crd(additionalPrinterColumns=COLUMNS))
    return kubectl


def http(server: ServerProcess) -> httpx.Client:
    ca = ssl.create_default_context(cafile=str(server.data_dir / "tls.crt"))
    return httpx.Client(base_url=server.url, headers=server.headers, verify=ca, timeout=30)


def read_lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def wait_line(lines: queue.Queue[str], want: str, timeout: float = 15.0) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no line with {want!r} in {seen}")
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        seen.append(line)
        if want in line:
            return seen


# ---- discovery and OpenAPI -------------------------------------------------------------------


def test_discovery_documents(tls_server: ServerProcess, k: Kubectl) -> None:
    agg = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
    with http(tls_server) as c:
        r = c.get("/apis", headers={"Accept": agg})
        assert r.headers["content-type"].startswith("application/json;g=apidiscovery.k8s.io;v=v2")
        doc = r.json()
        assert doc["kind"] == "APIGroupDiscoveryList" and doc["apiVersion"] == "apidiscovery.k8s.io/v2"
        group = next(g for g in doc["items"] if g["metadata"]["name"] == "example.com")
        res = group["versions"][0]["resources"][0]
        assert res["resource"] == "widgets" and res["scope"] == "Namespaced"
        assert res["responseKind"] == {"group": "example.com", "version": "v1", "kind": "Widget"}
        assert res["subresources"][0]["subresource"] == "status"
        core = c.get("/api", headers={"Accept": agg}).json()
        assert [g["metadata"]["name"] for g in core["items"]] == [""]
        # The legacy forms are still there for clients that ask for plain JSON.
        assert c.get("/apis").json()["kind"] == "APIGroupList"
        assert c.get("/apis/example.com/v1").json()["kind"] == "APIResourceList"
        assert c.get("/version").json()["major"] == "1"


def test_openapi_documents_follow_crds(tls_server: ServerProcess, k: Kubectl) -> None:
    with http(tls_server) as c:
        v2 = c.get("/openapi/v2").json()
        assert v2["swagger"] == "2.0"
        widget_def = v2["definitions"]["com.example.v1.Widget"]
        assert widget_def["x-kubernetes-group-version-kind"] == [
            {"group": "example.com", "kind": "Widget", "version": "v1"}]
        root = c.get("/openapi/v3").json()["paths"]
        gv = c.get(root["apis/example.com/v1"]["serverRelativeURL"]).json()
        patch = gv["paths"]["/apis/example.com/v1/namespaces/{namespace}/widgets/{name}"]["patch"]
        assert {p["name"] for p in patch["parameters"]} >= {"fieldValidation", "fieldManager", "force"}
        assert "application/apply-patch+yaml" in patch["requestBody"]["content"]
        schema = gv["components"]["schemas"]["com.example.v1.Widget"]
        assert schema["properties"]["spec"]["required"] == ["size"]
        # A new CRD is in the documents at once, and gone once it is deleted.
        suffix = uuid.uuid4().hex[:6]
        crd = widget_crd()
        crd["metadata"]["name"] = f"gizmos{suffix}.example.net"
        crd["spec"].update(group="example.net", names={"plural": f"gizmos{suffix}", "kind": "Gizmo"})
        k.apply(crd)
        root2 = c.get("/openapi/v3").json()["paths"]
        assert "apis/example.net/v1" in root2
        assert "net.example.v1.Gizmo" in c.get("/openapi/v2").json()["definitions"]
        # A changed schema is in the documents at once too.
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["shine"] = {
            "type": "boolean"}
        k.apply(crd)
        gizmo_gv = c.get(c.get("/openapi/v3").json()["paths"]["apis/example.net/v1"]["serverRelativeURL"]).json()
        assert "shine" in gizmo_gv["components"]["schemas"]["net.example.v1.Gizmo"]["properties"]["spec"]["properties"]
        k("delete", "crd", crd["metadata"]["name"], namespaced=False)
        assert "apis/example.net/v1" not in c.get("/openapi/v3").json()["paths"]


def test_api_resources_and_versions(k: Kubectl) -> None:
    out = k("api-resources", namespaced=False)
    line = next(row for row in out.splitlines() if row.startswith("widgets "))
    assert line.split() == ["widgets", "wd", "example.com/v1", "true", "Widget"]
    assert {"namespaces", "events", "customresourcedefinitions", "leases"} <= {
        row.split()[0] for row in out.splitlines()[1:]}
    versions = k("api-versions", namespaced=False).split()
    assert {"v1", "example.com/v1", "apiextensions.k8s.io/v1", "coordination.k8s.io/v1"} <= set(versions)


def test_explain(k: Kubectl) -> None:
    out = k("explain", "widgets.spec", namespaced=False)
    assert "KIND:       Widget" in out and "size\t<integer> -required-" in out
    out = k("explain", "widgets.metadata.labels", namespaced=False)
    assert "map[string]string" in out


# ---- apply, get, describe ------------------------------------------------------------------


def test_apply_client_side_and_get_formats(k: Kubectl) -> None:
    assert "widget.example.com/a1 created" in k.apply(widget("a1", 3))
    assert "unchanged" in k.apply(widget("a1", 3))
    assert "configured" in k.apply(widget("a1", 4, tags=["x"]))
    obj = k.json("get", "widget", "a1")
    assert obj["spec"] == {"size": 4, "color": "blue", "tags": ["x"]}
    assert "kubectl.kubernetes.io/last-applied-configuration" in obj["metadata"]["annotations"]
    # Removing a field from the applied file removes it from the object (three-way merge).
    k.apply(widget("a1", 4))
    assert "tags" not in k.json("get", "wd", "a1")["spec"]

    table = k("get", "widgets", "a1").splitlines()
    assert table[0].split() == ["NAME", "SIZE", "READY", "AGE"]
    assert table[1].split()[:2] == ["a1", "4"]
    wide = k("get", "wd", "a1", "-o", "wide").splitlines()
    assert wide[0].split() == ["NAME", "SIZE", "COLOR", "READY", "AGE"]
    assert wide[1].split()[:3] == ["a1", "4", "blue"]
    assert yaml.safe_load(k("get", "wd", "a1", "-o", "yaml"))["spec"]["size"] == 4
    assert k("get", "wd", "-o", "name").split() == ["widget.example.com/a1"]
    assert k("get", "wd", "a1", "-o", "jsonpath={.spec.color}") == "blue"
    assert "a1" in k("get", "wd", "--show-labels")
    assert k("get", "wd", "-l", "nothing=here").strip() == ""


def test_table_for_every_kind(tls_server: ServerProcess, k: Kubectl) -> None:
    table = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"}
    paths = ("/api/v1/namespaces", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
             "/apis/coordination.k8s.io/v1/leases", "/api/v1/events", "/apis/setpoint.dev/v1alpha1/nodes",
             "/apis/setpoint.dev/v1alpha1/processsets", "/apis/example.com/v1/widgets")
    with http(tls_server) as c:
        for path in paths:
            body = c.get(path, headers=table).json()
            assert body["kind"] == "Table" and body["apiVersion"] == "meta.k8s.io/v1", (path, body)
            first = body["columnDefinitions"][0]["name"]
            assert first == ("Last Seen" if path.endswith("/events") else "Name"), (path, first)  # as Kubernetes
            assert all(len(row["cells"]) == len(body["columnDefinitions"]) for row in body["rows"]), path
    for resource in ("namespaces", "customresourcedefinitions", "leases", "events", "nodes",
                     "processsets", "widgets"):
        out = k("get", resource, "-A")
        assert out.strip() == "" or out.splitlines()[0].split()[0] in ("NAME", "NAMESPACE"), out


def test_get_watch(k: Kubectl) -> None:
    k.apply(widget("w1", 1))
    proc = k.popen("get", "widgets", "-w")
    try:
        lines = read_lines(proc)
        first = wait_line(lines, "w1")
        assert first[0].split()[0] == "NAME"
        k("patch", "wd", "w1", "--type=merge", "-p", '{"spec":{"size":7}}')
        seen = wait_line(lines, "7")
        assert any(line.split()[:2] == ["w1", "7"] for line in seen)
    finally:
        proc.kill()
        proc.wait()


def test_describe_shows_events(k: Kubectl) -> None:
    k.apply(widget("d1", 2))
    uid = k("get", "wd", "d1", "-o", "jsonpath={.metadata.uid}")
    k.apply({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "d1.reconciled"},
             "involvedObject": {"apiVersion": "example.com/v1", "kind": "Widget", "name": "d1",
                                "namespace": k.namespace, "uid": uid},
             "reason": "Reconciled", "message": "size is 2", "type": "Normal", "count": 1,
             "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:00Z",
             "source": {"component": "widget-controller"}})
    # Another object's event is not shown.
    k.apply({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "other.e"},
             "involvedObject": {"kind": "Widget", "name": "other", "namespace": k.namespace},
             "reason": "Elsewhere", "message": "not d1", "type": "Warning"})
    out = k("describe", "widget", "d1")
    assert "Name:         d1" in out and "Size:   2" in out
    events = out.split("Events:", 1)[1]
    assert "Reconciled" in events and "widget-controller" in events and "size is 2" in events
    assert "Elsewhere" not in events
    listed = k("get", "events")
    assert "widget/d1" in listed.split("\n", 1)[1] and listed.split()[:5] == [
        "LAST", "SEEN", "TYPE", "REASON", "OBJECT"]


def test_label_annotate_patch_edit(k: Kubectl) -> None:
    k.apply(widget("e1", 1))
    k("label", "wd", "e1", "tier=front")
    k("annotate", "wd", "e1", "note=hello")
    k("patch", "wd", "e1", "--type=merge", "-p", '{"spec":{"size":2}}')
    k("patch", "wd", "e1", "--type=json", "-p", '[{"op":"add","path":"/spec/tags","value":["a"]}]')
    obj = k.json("get", "wd", "e1")
    assert obj["metadata"]["labels"] == {"tier": "front"}
    assert obj["metadata"]["annotations"]["note"] == "hello"
    assert obj["spec"]["size"] == 2 and obj["spec"]["tags"] == ["a"]
    k("label", "wd", "e1", "tier-")
    assert "labels" not in k.json("get", "wd", "e1")["metadata"] or not k.json(
        "get", "wd", "e1")["metadata"]["labels"]
    k("edit", "wd", "e1", env={"EDITOR": "sed -i -e s/size:\\ 2/size:\\ 9/"})
    assert k.json("get", "wd", "e1")["spec"]["size"] == 9
    assert k("get", "wd", "-l", "tier=front", "-o", "name") == ""


def test_validate_strict(k: Kubectl) -> None:
    bad = widget("v1", 1, bogus=True)
    r = k.run("apply", "-f", "-", "--validate=strict", input=yaml.safe_dump(bad), check=False)
    assert r.returncode != 0 and 'unknown field "spec.bogus"' in r.stderr
    r = k.run("apply", "-f", "-", "--validate=warn", input=yaml.safe_dump(bad), check=False)
    assert r.returncode == 0 and 'unknown field "spec.bogus"' in r.stderr
    assert "bogus" not in k.json("get", "wd", "v1")["spec"]
    # A schema violation is the server's 422, shown by kubectl.
    r = k.run("apply", "-f", "-", input=yaml.safe_dump(widget("v2", -1)), check=False)
    assert r.returncode != 0 and "spec.size" in r.stderr


# ---- delete and wait ---------------------------------------------------------------------------


def test_delete_waits_for_finalizers(k: Kubectl) -> None:
    obj = widget("f1", 1)
    obj["metadata"]["finalizers"] = ["example.com/hold"]
    k.apply(obj)
    proc = k.popen("delete", "wd", "f1", "--timeout=30s")
    try:
        deadline = time.monotonic() + 15
        while not k.json("get", "wd", "f1")["metadata"].get("deletionTimestamp"):
            assert time.monotonic() < deadline
        assert proc.poll() is None  # still waiting on the finalizer
        k("patch", "wd", "f1", "--type=json", "-p", '[{"op":"remove","path":"/metadata/finalizers"}]')
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert 'widget.example.com "f1" deleted' in out
    assert k.run("get", "wd", "f1", check=False).returncode != 0


def test_wait_for_condition_and_delete(k: Kubectl) -> None:
    k.apply(widget("r1", 1))
    proc = k.popen("wait", "--for=condition=Ready", "wd/r1", "--timeout=30s")
    try:
        k("patch", "wd", "r1", "--subresource=status", "--type=merge", "-p",
          json.dumps({"status": {"conditions": [{"type": "Ready", "status": "True",
                                                 "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}))
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "condition met" in out, err
    assert k("get", "wd", "r1").splitlines()[1].split()[2] == "True"  # the Ready column
    proc = k.popen("wait", "--for=delete", "wd/r1", "--timeout=30s")
    try:
        k("delete", "wd", "r1", "--wait=false")
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err


def test_create_namespace_and_delete_it(k: Kubectl) -> None:
    name = f"n-{uuid.uuid4().hex[:6]}"
    assert f"namespace/{name} created" in k("create", "namespace", name, namespaced=False)
    assert k("get", "ns", name, namespaced=False).splitlines()[1].split()[:2] == [name, "Active"]
    k("apply", "-n", name, "-f", "-", input=yaml.safe_dump(widget("inside", 1)), namespaced=False)
    k("delete", "namespace", name, "--timeout=30s", namespaced=False)
    assert k.run("get", "ns", name, check=False, namespaced=False).returncode != 0


def test_reapply_builtin_kinds_client_side(k: Kubectl) -> None:
    crd = widget_crd(additionalPrinterColumns=COLUMNS)
    crd["spec"]["names"]["categories"] = ["all-widgets"]
    assert "configured" in k.apply(crd)  # a strategic merge patch built from kubectl's own types
    name = f"a-{uuid.uuid4().hex[:6]}"
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    assert "created" in k.apply(ns)
    ns["metadata"]["labels"] = {"team": "a"}
    assert "configured" in k.apply(ns)
    assert k.json("get", "ns", name)["metadata"]["labels"]["team"] == "a"


def test_table_response_shape(tls_server: ServerProcess, k: Kubectl) -> None:
    k.apply(widget("t1", 4))
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    base = f"/apis/example.com/v1/namespaces/{k.namespace}/widgets"
    with http(tls_server) as c:
        t = c.get(base, headers={"Accept": accept}).json()
        assert t["kind"] == "Table" and t["apiVersion"] == "meta.k8s.io/v1"
        assert [col["name"] for col in t["columnDefinitions"]] == ["Name", "Size", "Color", "Ready", "Age"]
        assert t["columnDefinitions"][0]["format"] == "name" and t["columnDefinitions"][2]["priority"] == 1
        row = next(r for r in t["rows"] if r["cells"][0] == "t1")
        assert row["cells"][1:4] == [4, "blue", None]
        assert row["object"]["kind"] == "PartialObjectMetadata" and row["object"]["metadata"]["name"] == "t1"
        assert t["metadata"]["resourceVersion"]
        one = c.get(f"{base}/t1", params={"includeObject": "Object"}, headers={"Accept": accept}).json()
        assert one["rows"][0]["object"]["spec"]["size"] == 4
        none = c.get(f"{base}/t1", params={"includeObject": "None"}, headers={"Accept": accept}).json()
        assert "object" not in none["rows"][0]
        # Without the Table media type, the same request is the plain object.
        assert c.get(f"{base}/t1").json()["kind"] == "Widget"
