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


def test_an_object_the_collector_cannot_process_does_not_stop_it(tmp_path: Path) -> None:
    """An object stored before depth limits existed (nested 900 levels, one live and one missing
    owner) cannot be rewritten; the collector skips it, says so, and goes on with the others."""
    import asyncio
    import uuid

    from setpoint.server.objects import for_storage, new_uid
    from setpoint.store import SQLiteBackend

    srv = ServerProcess(tmp_path / "data").start()
    try:
        with srv.sync_client() as c:
            ensure_crd(c)
            owner = _create(c, widget("alive"))
        srv.stop()
        live = {"apiVersion": "example.com/v1", "kind": "Widget", "name": "alive", "uid": owner["metadata"]["uid"]}
        missing = {"apiVersion": "example.com/v1", "kind": "Widget", "name": "gone", "uid": str(uuid.uuid4())}
        deep: Any = {"leaf": True}
        for _ in range(900):
            deep = {"x": deep}
        stuck = widget("stuck")
        stuck["spec"]["deep"] = deep
        stuck["metadata"].update(uid=new_uid(), creationTimestamp="2026-01-01T00:00:00Z", generation=1,
                                 namespace="default", ownerReferences=[live, missing])

        async def plant() -> None:
            async with SQLiteBackend(tmp_path / "data" / "state.db") as b:
                await b.create("/registry/example.com/widgets/default/stuck", for_storage(stuck))

        asyncio.run(plant())
        srv.start()
        with srv.sync_client() as c:
            orphan = widget("orphan")
            orphan["metadata"]["ownerReferences"] = [missing]
            _create(c, orphan)
            wait_until(lambda: c.get(wpath("default", "orphan")).status_code == 404, timeout=20,
                       what="the orphan collected despite the stuck object")
            metrics = c.get("/metrics").text
            assert "setpoint_gc_skipped_objects 1.0" in metrics
    finally:
        srv.stop()
    assert "garbage collection skips /registry/example.com/widgets/default/stuck" in "".join(srv.output)
