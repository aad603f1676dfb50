"""The garbage collector's index of owners is rebuilt when a server starts: the store holds
the owner references, the collector's memory of them does not survive a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.api.conftest_helpers import wpath
from tests.conftest import ensure_crd, widget
from tests.servers import ServerProcess, wait_until


def _create(c: httpx.Client, obj: dict[str, Any]) -> dict[str, Any]:
    r = c.post(wpath("default"), json=obj)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def test_dependents_created_before_a_restart_are_collected_after_it(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "data").start()
    try:
        with srv.sync_client() as c:
            ensure_crd(c)
            owner = _create(c, widget("owner"))
            ref = {"apiVersion": "example.com/v1", "kind": "Widget", "name": "owner",
                   "uid": owner["metadata"]["uid"]}
            for i in range(3):
                dep = widget(f"dep-{i}")
                dep["metadata"]["ownerReferences"] = [ref]
                _create(c, dep)
            plain = _create(c, widget("unrelated"))
        srv.stop()
        srv.start()
        with srv.sync_client() as c:
            # Background deletion: the owner goes at once, its dependents right after, which
            # needs the index of owners that the restart emptied (the periodic sweep is a minute away).
            assert c.delete(wpath("default", "owner")).status_code == 200
            for i in range(3):
                wait_until(lambda i=i: c.get(wpath("default", f"dep-{i}")).status_code == 404,
                           timeout=15, what=f"dep-{i} collected")
            kept = c.get(wpath("default", "unrelated"))
            assert kept.status_code == 200 and kept.json()["metadata"]["uid"] == plain["metadata"]["uid"]
    finally:
        srv.stop()


def test_a_cluster_scoped_dependent_of_a_namespaced_owner_is_left_alone(
        server: ServerProcess, namespace: str) -> None:
    with server.sync_client() as c:
        owner = c.post(wpath(namespace), json=widget("ns-owner")).json()
        ref = {"apiVersion": "example.com/v1", "kind": "Widget", "name": "ns-owner",
               "uid": owner["metadata"]["uid"]}
        ns_name = f"{namespace}-dep"
        r = c.post("/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": ns_name, "ownerReferences": [ref]}})
        assert r.status_code == 201, r.text
        # A dependent whose owner truly is gone, created after: once the collector has taken
        # it, it has looked at the namespace too.
        dangling = widget("gc-barrier")
        dangling["metadata"]["ownerReferences"] = [
            {**ref, "name": "never", "uid": "00000000-0000-4000-8000-000000000000"}]
        assert c.post(wpath(namespace), json=dangling).status_code == 201
        wait_until(lambda: c.get(wpath(namespace, "gc-barrier")).status_code == 404,
                   timeout=15, what="the dangling dependent collected")
        got = c.get(f"/api/v1/namespaces/{ns_name}")
        assert got.status_code == 200 and not got.json()["metadata"].get("deletionTimestamp")
