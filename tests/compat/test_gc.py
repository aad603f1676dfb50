"""Garbage collection by ownerReferences, driven by kubectl delete --cascade against a real server."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.compat.conftest import Kubectl, widget_crd
from tests.servers import ServerProcess, wait_until


@pytest.fixture(scope="module")
def k(kubectl: Kubectl) -> Kubectl:
    kubectl.apply(widget_crd())
    return kubectl


@pytest.fixture(scope="module")
def c(tls_server: ServerProcess) -> Iterator[httpx.Client]:
    ca = ssl.create_default_context(cafile=str(tls_server.data_dir / "tls.crt"))
    with httpx.Client(base_url=tls_server.url, headers=tls_server.headers, verify=ca, timeout=30) as client:
        yield client


def path(k: Kubectl, name: str = "") -> str:
    return f"/apis/example.com/v1/namespaces/{k.namespace}/widgets" + (f"/{name}" if name else "")


def make(c: httpx.Client, k: Kubectl, name: str, owners: list[dict[str, Any]] = (),  # type: ignore[assignment]
         finalizers: list[str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if owners:
        meta["ownerReferences"] = [
            {"apiVersion": "example.com/v1", "kind": "Widget", "name": o["metadata"]["name"],
             "uid": o["metadata"]["uid"], "blockOwnerDeletion": True} for o in owners]
    if finalizers:
        meta["finalizers"] = finalizers
    r = c.post(path(k), json={"apiVersion": "example.com/v1", "kind": "Widget", "metadata": meta,
                              "spec": {"size": 1}})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def gone(c: httpx.Client, k: Kubectl, name: str) -> bool:
    return c.get(path(k, name)).status_code == 404


def test_background_deletes_dependents(c: httpx.Client, k: Kubectl) -> None:
    owner = make(c, k, "bg-owner")
    make(c, k, "bg-a", [owner])
    make(c, k, "bg-b", [owner])
    grandchild_owner = c.get(path(k, "bg-b")).json()
    make(c, k, "bg-b-child", [grandchild_owner])
    k("delete", "widget", "bg-owner")  # --cascade=background is kubectl's default
    for name in ("bg-a", "bg-b", "bg-b-child"):
        wait_until(lambda name=name: gone(c, k, name), timeout=15, what=f"{name} collected")


def test_foreground_waits_for_blocking_dependents(c: httpx.Client, k: Kubectl) -> None:
    owner = make(c, k, "fg-owner")
    make(c, k, "fg-a", [owner])
    make(c, k, "fg-held", [owner], finalizers=["example.com/hold"])
    k("delete", "widget", "fg-owner", "--cascade=foreground", "--wait=false")
    wait_until(lambda: gone(c, k, "fg-a"), timeout=15, what="fg-a collected")
    # Deleted in the foreground too, it gets the foregroundDeletion finalizer, which the
    # collector then removes (it has no dependents): patch it once only its own is left.
    held = wait_until(lambda: (o := c.get(path(k, "fg-held")).json())["metadata"].get("deletionTimestamp")
                      and o["metadata"].get("finalizers") == ["example.com/hold"] and o,
                      timeout=15, what="fg-held being deleted, held by its own finalizer only")
    # The owner stays, marked, while a blocking dependent remains.
    meta = c.get(path(k, "fg-owner")).json()["metadata"]
    assert meta["deletionTimestamp"] and "foregroundDeletion" in meta["finalizers"]
    r = c.patch(path(k, "fg-held"), json={"metadata": {"finalizers": None,
                                                        "resourceVersion": held["metadata"]["resourceVersion"]}},
                headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code == 200, r.text
    wait_until(lambda: gone(c, k, "fg-held") and gone(c, k, "fg-owner"), timeout=15,
               what="owner gone after its dependents")


def test_orphan_keeps_dependents(c: httpx.Client, k: Kubectl) -> None:
    owner = make(c, k, "or-owner")
    make(c, k, "or-a", [owner])
    k("delete", "widget", "or-owner", "--cascade=orphan")
    assert gone(c, k, "or-owner")
    dep = c.get(path(k, "or-a")).json()
    assert "ownerReferences" not in dep["metadata"]


def test_dangling_and_partial_owners(c: httpx.Client, k: Kubectl) -> None:
    fake = {"metadata": {"name": "never-existed", "uid": "00000000-0000-4000-8000-000000000000"}}
    make(c, k, "dangling", [fake])
    wait_until(lambda: gone(c, k, "dangling"), timeout=15, what="dangling dependent collected")
    a, b = make(c, k, "two-a"), make(c, k, "two-b")
    make(c, k, "shared", [a, b])
    k("delete", "widget", "two-a")
    wait_until(lambda: [r["name"] for r in c.get(path(k, "shared")).json()["metadata"].get(
        "ownerReferences", [])] == ["two-b"], timeout=15, what="reference to the gone owner dropped")
    k("delete", "widget", "two-b")
    wait_until(lambda: gone(c, k, "shared"), timeout=15, what="shared collected with its last owner")


def test_recreated_owner_name_is_not_the_owner(c: httpx.Client, k: Kubectl) -> None:
    owner = make(c, k, "re-owner")
    k("delete", "widget", "re-owner", "--cascade=orphan")
    make(c, k, "re-owner")  # same name, new uid
    make(c, k, "re-dep", [owner])  # points at the old uid
    wait_until(lambda: gone(c, k, "re-dep"), timeout=15, what="dependent of the old owner collected")
    assert not gone(c, k, "re-owner")
