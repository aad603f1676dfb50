"""The official ``kubernetes`` Python client, unchanged, against a real ``setpoint serve``."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from tests.compat.conftest import Kubectl, kubeconfig_of, widget_crd
from tests.servers import ServerProcess, wait_until

G, V, P = "example.com", "v1", "widgets"


@pytest.fixture(scope="module")
def api(tls_server: ServerProcess) -> Iterator[client.ApiClient]:
    Kubectl(kubeconfig_of(tls_server)).apply(widget_crd())
    api_client = config.new_client_from_config(config_file=str(kubeconfig_of(tls_server)))
    yield api_client
    api_client.close()


@pytest.fixture
def ns(api: client.ApiClient) -> str:
    name = f"py-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def widget(name: str, size: int = 1, **extra: Any) -> dict[str, Any]:
    return {"apiVersion": f"{G}/{V}", "kind": "Widget", "metadata": {"name": name, **extra},
            "spec": {"size": size}}


def test_custom_objects_crud(api: client.ApiClient, ns: str) -> None:
    co = client.CustomObjectsApi(api)
    created = co.create_namespaced_custom_object(G, V, ns, P, widget("c1", 2, labels={"app": "x"}))
    assert created["metadata"]["uid"] and created["spec"] == {"size": 2, "color": "blue"}
    got = co.get_namespaced_custom_object(G, V, ns, P, "c1")
    assert got == created
    co.create_namespaced_custom_object(G, V, ns, P, widget("c2", 3))
    listed = co.list_namespaced_custom_object(G, V, ns, P)
    assert [o["metadata"]["name"] for o in listed["items"]] == ["c1", "c2"]
    assert [o["metadata"]["name"] for o in co.list_namespaced_custom_object(
        G, V, ns, P, label_selector="app=x")["items"]] == ["c1"]
    assert len(co.list_cluster_custom_object(G, V, P, field_selector=f"metadata.namespace={ns}")["items"]) == 2

    patched = co.patch_namespaced_custom_object(G, V, ns, P, "c1", {"spec": {"size": 5}})
    assert patched["spec"]["size"] == 5 and patched["metadata"]["generation"] == 2
    patched = co.patch_namespaced_custom_object(
        G, V, ns, P, "c1", [{"op": "replace", "path": "/spec/color", "value": "red"}],
        _content_type="application/json-patch+json")
    assert patched["spec"]["color"] == "red"

    patched["spec"]["size"] = 6
    replaced = co.replace_namespaced_custom_object(G, V, ns, P, "c1", patched)
    assert replaced["spec"]["size"] == 6
    with pytest.raises(ApiException) as err:
        co.replace_namespaced_custom_object(G, V, ns, P, "c1", patched)  # stale resourceVersion
    assert err.value.status == 409

    status = co.delete_namespaced_custom_object(G, V, ns, P, "c1")
    assert status["metadata"]["name"] == "c1"
    with pytest.raises(ApiException) as err:
        co.get_namespaced_custom_object(G, V, ns, P, "c1")
    assert err.value.status == 404


def test_status_subresource(api: client.ApiClient, ns: str) -> None:
    co = client.CustomObjectsApi(api)
    co.create_namespaced_custom_object(G, V, ns, P, widget("s1", 1))
    out = co.patch_namespaced_custom_object_status(
        G, V, ns, P, "s1", {"status": {"ready": True, "observedGeneration": 1}})
    assert out["status"] == {"ready": True, "observedGeneration": 1}
    got = co.get_namespaced_custom_object_status(G, V, ns, P, "s1")
    got["status"]["observed"] = 7
    got["spec"]["size"] = 99  # ignored by /status
    out = co.replace_namespaced_custom_object_status(G, V, ns, P, "s1", got)
    assert out["status"]["observed"] == 7 and out["spec"]["size"] == 1
    # Writes to the object ignore status.
    out = co.patch_namespaced_custom_object(G, V, ns, P, "s1", {"status": {"ready": False}})
    assert out["status"]["ready"] is True


def test_core_kinds_and_events(api: client.ApiClient, ns: str) -> None:
    core = client.CoreV1Api(api)
    assert core.read_namespace(ns).status.phase == "Active"
    core.create_namespaced_event(ns, client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name="w."),
        involved_object=client.V1ObjectReference(kind="Widget", name="w", namespace=ns),
        reason="Tested", message="hello", type="Normal"))
    events = core.list_namespaced_event(ns, field_selector="involvedObject.name=w")
    assert [e.reason for e in events.items] == ["Tested"]
    versions = client.VersionApi(api).get_code()
    assert versions.major == "1"
    groups = client.ApisApi(api).get_api_versions()
    assert "example.com" in {g.name for g in groups.groups}


def test_watch_stream(api: client.ApiClient, ns: str) -> None:
    co = client.CustomObjectsApi(api)
    rv = co.list_namespaced_custom_object(G, V, ns, P)["metadata"]["resourceVersion"]
    co.create_namespaced_custom_object(G, V, ns, P, widget("w1", 1))
    co.patch_namespaced_custom_object(G, V, ns, P, "w1", {"spec": {"size": 2}})
    co.delete_namespaced_custom_object(G, V, ns, P, "w1")
    w = watch.Watch()
    seen = []
    for ev in w.stream(co.list_namespaced_custom_object, G, V, ns, P, resource_version=rv, timeout_seconds=10):
        seen.append((ev["type"], ev["object"]["metadata"]["name"], ev["object"].get("spec", {}).get("size")))
        if len(seen) == 3:
            w.stop()
    assert seen == [("ADDED", "w1", 1), ("MODIFIED", "w1", 2), ("DELETED", "w1", 2)]


def test_watch_resumes_after_server_restart(tls_server: ServerProcess, api: client.ApiClient, ns: str) -> None:
    co = client.CustomObjectsApi(api)
    rv = co.list_namespaced_custom_object(G, V, ns, P)["metadata"]["resourceVersion"]
    seen: list[tuple[str, str]] = []
    errors: list[str] = []
    may_reconnect = threading.Event()
    stop = threading.Event()

    def watcher() -> None:
        w = watch.Watch()
        resume = rv
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                for ev in w.stream(co.list_namespaced_custom_object, G, V, ns, P,
                                   resource_version=resume, timeout_seconds=30):
                    seen.append((ev["type"], ev["object"]["metadata"]["name"]))
                    resume = ev["object"]["metadata"]["resourceVersion"]
                    if stop.is_set():
                        return
            except (urllib3.exceptions.HTTPError, ApiException) as e:
                # The server went away: resume from the last resourceVersion seen, as any
                # informer does, once it is back.
                errors.append(type(e).__name__)
                may_reconnect.wait(30)  # the test lets it back once the server is up again

    t = threading.Thread(target=watcher, daemon=True)
    t.start()
    co.create_namespaced_custom_object(G, V, ns, P, widget("before", 1))
    wait_until(lambda: ("ADDED", "before") in seen, timeout=15, what="event before the restart")
    tls_server.restart()
    # Changes made after the restart, before the watcher is back, are replayed from the store.
    co.create_namespaced_custom_object(G, V, ns, P, widget("after", 1))
    co.delete_namespaced_custom_object(G, V, ns, P, "before")
    may_reconnect.set()
    wait_until(lambda: ("DELETED", "before") in seen, timeout=30, what="events after the restart")
    stop.set()
    co.create_namespaced_custom_object(G, V, ns, P, widget("last", 1))  # wakes the watcher to end
    t.join(timeout=30)
    assert seen[:3] == [("ADDED", "before"), ("ADDED", "after"), ("DELETED", "before")], (seen, errors)
