"""Create, read, update, patch and delete over real HTTP against a real server process."""

from __future__ import annotations

import httpx
import pytest

from tests.api.conftest_helpers import wpath
from tests.conftest import widget
from tests.servers import ServerProcess


@pytest.fixture
def c(server: ServerProcess) -> httpx.Client:
    with server.sync_client() as client:
        yield client  # type: ignore[misc]


def test_default_namespace_and_discovery(c: httpx.Client, namespace: str) -> None:
    r = c.get("/api/v1/namespaces/default")
    assert r.status_code == 200
    assert r.json()["status"]["phase"] == "Active"
    groups = c.get("/apis").json()
    names = {g["name"] for g in groups["groups"]}
    assert {"example.com", "apiextensions.k8s.io", "coordination.k8s.io"} <= names
    res = c.get("/apis/example.com/v1").json()
    assert {r["name"] for r in res["resources"]} == {"widgets", "widgets/status"}
    assert c.get("/version").json()["major"] == "1"
    legacy = c.get("/api").json()
    assert legacy["kind"] == "APIVersions" and legacy["versions"] == ["v1"]
    assert {r["name"] for r in c.get("/api/v1").json()["resources"]} >= {"namespaces", "events"}


def test_crd_is_servable_at_once(c: httpx.Client, namespace: str) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"gadgets{namespace.replace('-', '')}.example.org"},
        "spec": {"group": "example.org", "scope": "Cluster",
                 "names": {"plural": f"gadgets{namespace.replace('-', '')}", "kind": "Gadget"},
                 "versions": [{"name": "v1alpha1", "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": {
                                   "type": "object",
                                   "properties": {"spec": {"type": "object", "properties": {
                                       "n": {"type": "integer"}}}}}}}]},
    }
    r = c.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd)
    assert r.status_code == 201, r.text
    conds = {x["type"]: x["status"] for x in r.json()["status"]["conditions"]}
    assert conds["Established"] == "True"
    plural = crd["spec"]["names"]["plural"]
    r = c.post(f"/apis/example.org/v1alpha1/{plural}",
               json={"apiVersion": "example.org/v1alpha1", "kind": "Gadget",
                     "metadata": {"name": "g1"}, "spec": {"n": 3}})
    assert r.status_code == 201, r.text
    assert "namespace" not in r.json()["metadata"]
    # Deleting the CRD stops serving the kind.
    assert c.delete(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}"
                    ).status_code == 200
    assert c.get(f"/apis/example.org/v1alpha1/{plural}").status_code == 404


def test_create_get_update_delete(c: httpx.Client, namespace: str) -> None:
    r = c.post(wpath(namespace), json=widget("w1", size=2))
    assert r.status_code == 201, r.text
    created = r.json()
    meta = created["metadata"]
    assert meta["namespace"] == namespace and meta["generation"] == 1
    assert meta["uid"] and meta["creationTimestamp"] and int(meta["resourceVersion"]) > 0
    assert created["spec"]["color"] == "blue"  # schema default applied

    got = c.get(wpath(namespace, "w1")).json()
    assert got == created

    got["spec"]["size"] = 5
    r = c.put(wpath(namespace, "w1"), json=got)
    assert r.status_code == 200, r.text
    updated = r.json()
    assert updated["metadata"]["generation"] == 2
    assert int(updated["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])

    # The stale copy is refused: optimistic concurrency.
    r = c.put(wpath(namespace, "w1"), json=got)
    assert r.status_code == 409 and r.json()["reason"] == "Conflict"

    # Labels only: no generation bump.
    updated["metadata"]["labels"] = {"tier": "a"}
    r = c.put(wpath(namespace, "w1"), json=updated)
    assert r.status_code == 200 and r.json()["metadata"]["generation"] == 2

    r = c.delete(wpath(namespace, "w1"))
    assert r.status_code == 200
    assert c.get(wpath(namespace, "w1")).status_code == 404
    assert c.delete(wpath(namespace, "w1")).status_code == 404


def test_update_without_resource_version_is_refused_for_custom_resources(
    c: httpx.Client, namespace: str
) -> None:
    c.post(wpath(namespace), json=widget("w1"))
    r = c.put(wpath(namespace, "w1"), json=widget("w1", size=9))
    assert r.status_code == 422
    assert r.json()["details"]["causes"][0]["field"] == "metadata.resourceVersion"
    assert c.get(wpath(namespace, "w1")).json()["spec"]["size"] == 1


def test_already_exists(c: httpx.Client, namespace: str) -> None:
    assert c.post(wpath(namespace), json=widget("dup")).status_code == 201
    r = c.post(wpath(namespace), json=widget("dup", size=7))
    assert r.status_code == 409
    body = r.json()
    assert body["kind"] == "Status" and body["reason"] == "AlreadyExists"
    assert body["details"]["name"] == "dup"
    assert c.get(wpath(namespace, "dup")).json()["spec"]["size"] == 1


def test_generate_name(c: httpx.Client, namespace: str) -> None:
    body = widget("")
    del body["metadata"]["name"]
    body["metadata"]["generateName"] = "auto-"
    names = {c.post(wpath(namespace), json=body).json()["metadata"]["name"] for _ in range(3)}
    assert len(names) == 3 and all(n.startswith("auto-") and len(n) == 10 for n in names)


def test_merge_and_json_patch(c: httpx.Client, namespace: str) -> None:
    c.post(wpath(namespace), json=widget("p", size=1, tags=["a"]))
    r = c.patch(wpath(namespace, "p"), content=b'{"spec":{"size":4,"color":null}}',
                headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code == 200, r.text
    assert r.json()["spec"]["size"] == 4
    # color was removed by the patch and defaulted again by the schema
    assert r.json()["spec"]["color"] == "blue"
    r = c.patch(wpath(namespace, "p"),
                content=b'[{"op":"add","path":"/spec/tags/-","value":"b"},'
                        b'{"op":"replace","path":"/spec/size","value":6}]',
                headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 200, r.text
    assert r.json()["spec"]["tags"] == ["a", "b"] and r.json()["spec"]["size"] == 6
    assert r.json()["metadata"]["generation"] == 3
    # A patch that fails validation changes nothing.
    r = c.patch(wpath(namespace, "p"), content=b'{"spec":{"size":"big"}}',
                headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code == 422
    assert any(cause["field"] == "spec.size" for cause in r.json()["details"]["causes"])
    assert c.get(wpath(namespace, "p")).json()["spec"]["size"] == 6
    # A patch with a stale resourceVersion is a precondition.
    r = c.patch(wpath(namespace, "p"), content=b'{"metadata":{"resourceVersion":"1"},"spec":{"size":1}}',
                headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code == 409
    # Strategic merge patch is for built-in kinds only, as in Kubernetes.
    r = c.patch(wpath(namespace, "p"), content=b'{"spec":{"size":1}}',
                headers={"Content-Type": "application/strategic-merge-patch+json"})
    assert r.status_code == 415


def test_status_subresource(c: httpx.Client, namespace: str) -> None:
    w = c.post(wpath(namespace), json={**widget("s"), "status": {"ready": True}}).json()
    assert "status" not in w  # status is ignored on create when the subresource is enabled
    w["status"] = {"ready": True, "observed": 1}
    r = c.put(wpath(namespace, "s", "status"), json=w)
    assert r.status_code == 200, r.text
    after = r.json()
    assert after["status"] == {"ready": True, "observed": 1}
    assert after["metadata"]["generation"] == 1  # status writes do not bump generation
    # Spec changes through /status are ignored; status changes through the main resource too.
    after["spec"]["size"] = 99
    after["status"]["ready"] = False
    r = c.put(wpath(namespace, "s", "status"), json=after)
    assert r.json()["spec"]["size"] == 1 and r.json()["status"]["ready"] is False
    main = r.json()
    main["status"] = {"ready": True}
    main["spec"]["size"] = 2
    r = c.put(wpath(namespace, "s"), json=main)
    assert r.json()["status"]["ready"] is False and r.json()["spec"]["size"] == 2
    assert r.json()["metadata"]["generation"] == 2
    r = c.patch(wpath(namespace, "s", "status"), content=b'{"status":{"observed":2}}',
                headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code == 200 and r.json()["status"]["observed"] == 2


def test_finalizers_and_deletion_timestamp(c: httpx.Client, namespace: str) -> None:
    body = widget("f")
    body["metadata"]["finalizers"] = ["example.com/cleanup", "example.com/other"]
    c.post(wpath(namespace), json=body)
    r = c.delete(wpath(namespace, "f"))
    assert r.status_code in (200, 202)
    marked = c.get(wpath(namespace, "f")).json()
    assert marked["metadata"]["deletionTimestamp"]
    # No new finalizers once deleting.
    marked["metadata"]["finalizers"].append("example.com/late")
    r = c.put(wpath(namespace, "f"), json=marked)
    assert r.status_code == 422
    r = c.patch(wpath(namespace, "f"), json=[{"op": "remove", "path": "/metadata/finalizers/0"}],
                headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 200 and r.json()["metadata"]["finalizers"] == ["example.com/other"]
    assert c.get(wpath(namespace, "f")).status_code == 200
    r = c.patch(wpath(namespace, "f"), content=b'{"metadata":{"finalizers":null}}',
                headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code == 200
    assert c.get(wpath(namespace, "f")).status_code == 404


def test_dry_run_writes_nothing(c: httpx.Client, namespace: str) -> None:
    r = c.post(wpath(namespace) + "?dryRun=All", json=widget("dry"))
    assert r.status_code == 201 and r.json()["spec"]["color"] == "blue"
    assert c.get(wpath(namespace, "dry")).status_code == 404
    c.post(wpath(namespace), json=widget("dry"))
    r = c.delete(wpath(namespace, "dry") + "?dryRun=All")
    assert r.status_code == 200
    assert c.get(wpath(namespace, "dry")).status_code == 200
    assert c.post(wpath(namespace) + "?dryRun=Some", json=widget("x")).status_code == 400


def test_delete_collection_with_selector(c: httpx.Client, namespace: str) -> None:
    for i in range(4):
        c.post(wpath(namespace), json=widget(f"d{i}", labels={"batch": "a" if i % 2 else "b"}))
    r = c.delete(wpath(namespace) + "?labelSelector=batch%3Da")
    assert r.status_code == 200
    assert sorted(i["metadata"]["name"] for i in r.json()["items"]) == ["d1", "d3"]
    left = sorted(i["metadata"]["name"] for i in c.get(wpath(namespace)).json()["items"])
    assert left == ["d0", "d2"]


def test_namespace_deletion_removes_contents(c: httpx.Client, server: ServerProcess) -> None:
    from tests.servers import wait_until

    c.post("/api/v1/namespaces", json={"metadata": {"name": "doomed"}})
    held = widget("a")
    held["metadata"]["finalizers"] = ["example.com/hold"]  # keeps the namespace Terminating
    c.post(wpath("doomed"), json=held)
    r = c.delete("/api/v1/namespaces/doomed")
    assert r.status_code in (200, 202)
    assert c.get("/api/v1/namespaces/doomed").json()["status"]["phase"] == "Terminating"
    r = c.post(wpath("doomed"), json=widget("b"))
    assert r.status_code == 403
    wait_until(lambda: c.get(wpath("doomed", "a")).json()["metadata"].get("deletionTimestamp"),
               timeout=20, what="contents being deleted")
    r = c.patch(wpath("doomed", "a"), json={"metadata": {"finalizers": None}},
                headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code == 200, r.text
    wait_until(lambda: c.get("/api/v1/namespaces/doomed").status_code == 404, timeout=20,
               what="namespace deletion")
    assert c.get(wpath("doomed", "a")).status_code == 404


def test_create_in_missing_namespace(c: httpx.Client, namespace: str) -> None:
    r = c.post(wpath("nope-missing"), json=widget("x"))
    assert r.status_code == 404 and "nope-missing" in r.json()["message"]


def test_leases_and_events_builtin(c: httpx.Client, namespace: str) -> None:
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
             "metadata": {"name": "leader"},
             "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}
    # Leases may be created by PUT (allowCreateOnUpdate), as client-go's leader election does.
    r = c.put(f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/leader", json=lease)
    assert r.status_code == 201, r.text
    ev = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e1"},
          "involvedObject": {"kind": "Widget", "name": "w"}, "reason": "Test", "message": "hi",
          "type": "Normal"}
    assert c.post(f"/api/v1/namespaces/{namespace}/events", json=ev).status_code == 201
    r = c.patch(f"/api/v1/namespaces/{namespace}/events/e1", content=b'{"count":2}',
                headers={"Content-Type": "application/strategic-merge-patch+json"})
    assert r.status_code == 200 and r.json()["count"] == 2


def test_bundled_kinds_are_installed(c: httpx.Client, namespace: str) -> None:
    crd = c.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/processsets.setpoint.dev")
    assert crd.status_code == 200
    r = c.post(f"/apis/setpoint.dev/v1alpha1/namespaces/{namespace}/processsets",
               json={"apiVersion": "setpoint.dev/v1alpha1", "kind": "ProcessSet",
                     "metadata": {"name": "web"}, "spec": {"command": "sleep", "args": ["100"]}})
    assert r.status_code == 201, r.text
    spec = r.json()["spec"]
    assert spec["replicas"] == 1 and spec["restartBackoff"] == {"initialSeconds": 1, "maxSeconds": 60}


def test_selectable_fields_of_a_crd(c: httpx.Client, namespace: str) -> None:
    path = f"/apis/setpoint.dev/v1alpha1/namespaces/{namespace}/processsets"
    for name, node in (("a", "n1"), ("b", "n2"), ("c", "n1")):
        body = {"apiVersion": "setpoint.dev/v1alpha1", "kind": "ProcessSet", "metadata": {"name": name},
                "spec": {"command": "true", "nodeName": node}}
        assert c.post(path, json=body).status_code == 201
    r = c.get(path, params={"fieldSelector": "spec.nodeName=n1"})
    assert [i["metadata"]["name"] for i in r.json()["items"]] == ["a", "c"]
    r = c.get(path, params={"fieldSelector": "spec.nodeName!=n1"})
    assert [i["metadata"]["name"] for i in r.json()["items"]] == ["b"]
    # Fields a CRD did not declare selectable are refused, as in Kubernetes.
    assert c.get(path, params={"fieldSelector": "spec.command=true"}).status_code == 400


def test_every_bundled_crd_is_valid() -> None:
    from setpoint.crds import bundled_crds
    from setpoint.server.resources import resource_type_from_crd
    from setpoint.server.schema import compile_schema

    kinds = {resource_type_from_crd(crd, compile_schema).kind for crd in bundled_crds()}
    assert {"ProcessSet", "Node"} <= kinds


def test_concurrent_patches_without_resource_version_all_land(server: ServerProcess, namespace: str) -> None:
    import asyncio

    async def main() -> list[int]:
        async with server.client() as c:
            await c.post(wpath(namespace), json=widget("hot"))
            sem = asyncio.Semaphore(32)

            async def bump(i: int) -> int:
                async with sem:
                    r = await c.patch(wpath(namespace, "hot"),
                                      content=f'{{"metadata":{{"annotations":{{"a{i}":"x"}}}}}}'.encode(),
                                      headers={"Content-Type": "application/merge-patch+json"})
                    return r.status_code

            return await asyncio.gather(*(bump(i) for i in range(300)))

    codes = asyncio.run(main())
    assert set(codes) == {200}, sorted(set(codes))
    with server.sync_client() as c:
        annotations = c.get(wpath(namespace, "hot")).json()["metadata"]["annotations"]
    assert all(f"a{i}" in annotations for i in range(300))
