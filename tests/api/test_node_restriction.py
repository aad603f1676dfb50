"""An agent's credentials reach only its own node's business (node restriction)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from tests.servers import ServerProcess

PS = "/apis/setpoint.dev/v1alpha1/namespaces/default/processsets"
NODES = "/apis/setpoint.dev/v1alpha1/nodes"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/setpoint-node-lease/leases"


def node_client(srv: ServerProcess, node: str) -> httpx.Client:
    out = subprocess.run([sys.executable, "-m", "setpoint", "node-token", node, "--data-dir",
                          str(srv.data_dir)], capture_output=True, text=True, check=True).stdout
    config = yaml.safe_load(Path(out.strip()).read_text())
    assert config["users"][0]["name"] == f"system:node:{node}"
    token = config["users"][0]["user"]["token"]
    return httpx.Client(base_url=config["clusters"][0]["cluster"]["server"], verify=srv.verify,
                        headers={"Authorization": f"Bearer {token}"})


def node_obj(name: str) -> dict:  # type: ignore[type-arg]
    return {"apiVersion": "setpoint.dev/v1alpha1", "kind": "Node", "metadata": {"name": name}}


def test_node_restriction(data_dir: Path) -> None:
    srv = ServerProcess(data_dir).start()
    try:
        admin = srv.sync_client()
        for name, node in (("mine", "a"), ("theirs", "b")):
            r = admin.post(PS, json={"apiVersion": "setpoint.dev/v1alpha1", "kind": "ProcessSet",
                                     "metadata": {"name": name}, "spec": {"command": "true", "nodeName": node}})
            assert r.status_code == 201
        a = node_client(srv, "a")
        # Its own Node and Lease: yes. Another node's: no.
        assert a.post(NODES, json=node_obj("a")).status_code == 201
        r = a.post(NODES, json=node_obj("b"))
        assert r.status_code == 403 and '"a"' in r.json()["message"]
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "a"},
                 "spec": {"holderIdentity": "a", "leaseDurationSeconds": 40}}
        assert a.put(f"{LEASES}/a", json=lease).status_code == 201
        assert a.put(f"{LEASES}/b", json={**lease, "metadata": {"name": "b"}}).status_code == 403
        # Reads: its own share only.
        assert a.get(PS).status_code == 403
        mine = a.get(PS, params={"fieldSelector": "spec.nodeName=a"}).json()["items"]
        assert [o["metadata"]["name"] for o in mine] == ["mine"]
        assert a.get(PS, params={"fieldSelector": "spec.nodeName=b"}).status_code == 403
        assert a.get(f"{PS}/mine").status_code == 200
        theirs_read = a.get(f"{PS}/theirs")
        assert theirs_read.status_code == 403 and "not assigned" in theirs_read.json()["message"]
        assert a.get(f"{PS}/theirs", params={"watch": "1"}).status_code == 403
        # Status of its own work: yes; of another node's work, or the spec of anything: no.
        patch = {"Content-Type": "application/merge-patch+json"}
        assert a.patch(f"{PS}/mine/status", content=b'{"status":{"readyReplicas":1}}',
                       headers=patch).status_code == 200
        assert a.patch(f"{PS}/theirs/status", content=b'{"status":{"readyReplicas":1}}',
                       headers=patch).status_code == 403
        assert a.patch(f"{PS}/mine", content=b'{"spec":{"nodeName":"a","replicas":9}}',
                       headers=patch).status_code == 403
        assert a.delete(f"{PS}/theirs").status_code == 403
        assert a.post(PS, json={"apiVersion": "setpoint.dev/v1alpha1", "kind": "ProcessSet",
                                "metadata": {"name": "x"}, "spec": {"command": "true"}}).status_code == 403
        ev = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e"}, "reason": "Started",
              "message": "ok", "involvedObject": {"kind": "ProcessSet", "name": "mine"}}
        assert a.post("/api/v1/namespaces/default/events", json=ev).status_code == 201
        # Nothing was changed by the refused requests.
        theirs = admin.get(f"{PS}/theirs").json()
        assert "status" not in theirs and theirs["spec"]["nodeName"] == "b"
        assert admin.get(f"{PS}/mine").json()["spec"]["replicas"] == 1
    finally:
        srv.stop()


def test_node_may_manage_its_own_cleanup_finalizer_only(data_dir: Path) -> None:
    srv = ServerProcess(data_dir).start()
    try:
        admin = srv.sync_client()
        admin.post(PS, json={"apiVersion": "setpoint.dev/v1alpha1", "kind": "ProcessSet",
                             "metadata": {"name": "mine"}, "spec": {"command": "true", "nodeName": "a"}})
        a = node_client(srv, "a")
        patch = {"Content-Type": "application/merge-patch+json"}
        r = a.patch(f"{PS}/mine", content=b'{"metadata":{"finalizers":["setpoint.dev/processes"]}}',
                    headers=patch)
        assert r.status_code == 200, r.text
        r = a.patch(f"{PS}/mine", content=b'{"metadata":{"finalizers":["example.com/other"]}}', headers=patch)
        assert r.status_code == 403
        r = a.patch(f"{PS}/mine", content=b'{"metadata":{"labels":{"x":"y"}}}', headers=patch)
        assert r.status_code == 403
        r = a.patch(f"{PS}/mine", content=b'{"metadata":{"finalizers":null}}', headers=patch)
        assert r.status_code == 200
        # managedFields are not the node's to rewrite, alone or with a finalizer change.
        forged = b'{"metadata":{"managedFields":[{"manager":"admin","operation":"Update","apiVersion":"v1"}]}}'
        assert a.patch(f"{PS}/mine", content=forged, headers=patch).status_code == 403
        forged2 = (b'{"metadata":{"finalizers":["setpoint.dev/processes"],"managedFields":'
                   b'[{"manager":"admin","operation":"Update","apiVersion":"v1"}]}}')
        assert a.patch(f"{PS}/mine", content=forged2, headers=patch).status_code == 403
    finally:
        srv.stop()


def test_a_node_reads_only_what_it_needs_of_every_kind(data_dir: Path) -> None:
    """Every kind the server serves, from discovery: a node lists none without its selector
    except those every agent needs (namespaces, CRDs; Services and EndpointSlices, for load
    balancers whose backends run on other nodes)."""
    srv = ServerProcess(data_dir).start()
    try:
        admin = srv.sync_client()
        a = node_client(srv, "a")
        readable = {("", "namespaces"), ("apiextensions.k8s.io", "customresourcedefinitions"),
                    ("", "services"), ("discovery.k8s.io", "endpointslices"), ("", "configmaps")}
        checked = 0
        groups = [("", "v1", "/api/v1")] + [
            (g["name"], g["preferredVersion"]["version"], f"/apis/{g['preferredVersion']['groupVersion']}")
            for g in admin.get("/apis").json()["groups"]]
        for group, _version, base in groups:
            for res in admin.get(base).json()["resources"]:
                if "/" in res["name"] or "list" not in res["verbs"]:
                    continue
                checked += 1
                r = a.get(f"{base}/{res['name']}")
                want = 200 if (group, res["name"]) in readable else 403
                assert r.status_code == want, (group, res["name"], r.status_code, r.text[:200])
        assert checked >= 6
        assert a.get(f"{NODES}/a").status_code in (200, 404)  # its own Node: allowed (may not exist yet)
        assert a.get(f"{NODES}/b").status_code == 403
        assert a.get(NODES, params={"fieldSelector": "metadata.name=a"}).status_code == 200
        assert a.get(f"{LEASES}/b").status_code == 403
    finally:
        srv.stop()
