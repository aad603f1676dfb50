"""Authentication, ABAC authorization, and Idempotency-Key on create."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest_helpers import wpath
from tests.conftest import ensure_crd, widget
from tests.servers import ServerProcess


@pytest.fixture
def c(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.sync_client() as client:
        yield client


def test_no_token_is_401(server: ServerProcess) -> None:
    r = httpx.get(server.url + "/api/v1/namespaces", verify=server.verify)
    assert r.status_code == 401 and r.json()["reason"] == "Unauthorized"
    r = httpx.get(server.url + "/api/v1/namespaces", verify=server.verify, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert httpx.get(server.url + "/healthz", verify=server.verify).status_code == 200
    assert httpx.get(server.url + "/readyz", verify=server.verify).status_code == 200


def policy_line(**spec: object) -> str:
    return json.dumps({"apiVersion": "abac.authorization.kubernetes.io/v1beta1", "kind": "Policy",
                       "spec": spec})


def test_abac_policy_decides(data_dir: Path) -> None:
    (data_dir / "tokens.csv").write_text(
        'admintok,admin,admin,"system:masters"\nreadtok,alice,alice\nteamtok,bob,bob,"team-a"\n')
    (data_dir / "policy.jsonl").write_text("\n".join([
        policy_line(group="system:masters", namespace="*", resource="*", apiGroup="*", nonResourcePath="*"),
        policy_line(user="alice", namespace="*", resource="*", apiGroup="*", readonly=True),
        policy_line(group="team-a", namespace="team-a", resource="widgets", apiGroup="example.com"),
    ]) + "\n")
    srv = ServerProcess(data_dir).start()
    try:
        admin = httpx.Client(base_url=srv.url, verify=srv.verify, headers={"Authorization": "Bearer admintok"})
        ensure_crd(admin)
        admin.post("/api/v1/namespaces", json={"metadata": {"name": "team-a"}})
        alice = httpx.Client(base_url=srv.url, verify=srv.verify, headers={"Authorization": "Bearer readtok"})
        bob = httpx.Client(base_url=srv.url, verify=srv.verify, headers={"Authorization": "Bearer teamtok"})
        assert alice.get(wpath("default")).status_code == 200
        r = alice.post(wpath("default"), json=widget("x"))
        assert r.status_code == 403
        msg = r.json()["message"]
        assert '"alice"' in msg and "create" in msg and '"widgets"' in msg and "example.com" in msg
        assert r.json()["reason"] == "Forbidden"
        assert bob.post(wpath("team-a"), json=widget("x")).status_code == 201
        assert bob.post(wpath("default"), json=widget("x")).status_code == 403
        assert bob.get("/api/v1/namespaces").status_code == 403
        assert admin.get(wpath("default", "x")).status_code == 404  # nothing leaked through
    finally:
        srv.stop()


def test_refuses_plain_http_on_a_public_address(data_dir: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "setpoint", "serve", "--data-dir", str(data_dir),
                        "--listen", "0.0.0.0:0", "--insecure-http"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "loopback" in r.stdout + r.stderr and "--tls-cert" in r.stdout + r.stderr
    assert not (data_dir / "kubeconfig.yaml").exists()


def test_plain_http_on_loopback_when_asked(data_dir: Path) -> None:
    """--insecure-http serves plain HTTP (loopback only); the kubeconfig then names no CA."""
    srv = ServerProcess(data_dir, ["--insecure-http"]).start()
    try:
        assert srv.url.startswith("http://") and srv.ca is None
        with srv.sync_client() as c:
            assert c.get("/api/v1/namespaces").status_code == 200
        config = (data_dir / "kubeconfig.yaml").read_text()
        assert "certificate-authority" not in config and srv.url in config
    finally:
        srv.stop()


def test_idempotent_create_replays_the_first_response(c: httpx.Client, namespace: str) -> None:
    h = {"Idempotency-Key": f"key-{namespace}"}
    first = c.post(wpath(namespace), json=widget("idem"), headers=h)
    assert first.status_code == 201
    again = c.post(wpath(namespace), json=widget("idem"), headers=h)
    assert again.status_code == 201 and again.json() == first.json()
    other = c.post(wpath(namespace), json=widget("idem", size=2), headers=h)
    assert other.status_code == 422 and other.json()["reason"] == "Invalid"
    # Without the key the same create is a conflict, as usual.
    assert c.post(wpath(namespace), json=widget("idem")).status_code == 409


def test_idempotent_generate_name_makes_one_object(c: httpx.Client, namespace: str) -> None:
    body = widget("")
    body["metadata"] = {"generateName": "gen-"}
    h = {"Idempotency-Key": f"gen-{namespace}"}
    uids = {c.post(wpath(namespace), json=body, headers=h).json()["metadata"]["uid"] for _ in range(3)}
    assert len(uids) == 1
    assert len(c.get(wpath(namespace)).json()["items"]) == 1


def test_concurrent_retries_create_exactly_one(server: ServerProcess, namespace: str) -> None:
    h = {**server.headers, "Idempotency-Key": f"race-{namespace}"}
    body = widget("")
    body["metadata"] = {"generateName": "race-"}
    results: list[httpx.Response] = []
    barrier = threading.Barrier(16)

    def send() -> None:
        with httpx.Client(base_url=server.url, verify=server.verify, timeout=30) as cl:
            barrier.wait()
            results.append(cl.post(wpath(namespace), json=body, headers=h))

    threads = [threading.Thread(target=send) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in results)
    assert set(codes) <= {201, 409}, codes
    uids = {r.json()["metadata"]["uid"] for r in results if r.status_code == 201}
    assert len(uids) == 1
    for r in results:
        if r.status_code == 409:
            assert r.headers.get("Retry-After") == "1"
    with server.sync_client() as cl:
        assert len(cl.get(wpath(namespace)).json()["items"]) == 1


def test_idempotency_survives_a_server_restart(data_dir: Path) -> None:
    srv = ServerProcess(data_dir).start()
    try:
        with srv.sync_client() as c:
            ensure_crd(c)
            body = widget("")
            body["metadata"] = {"generateName": "rs-"}
            h = {"Idempotency-Key": "restart-key"}
            first = c.post(wpath("default"), json=body, headers=h).json()
        srv.restart()
        with srv.sync_client() as c:
            again = c.post(wpath("default"), json=body, headers=h)
            assert again.status_code == 201
            assert again.json()["metadata"]["uid"] == first["metadata"]["uid"]
            assert len(c.get(wpath("default")).json()["items"]) == 1
            body["spec"]["size"] = 5
            assert c.post(wpath("default"), json=body, headers=h).status_code == 422
    finally:
        srv.stop()


def test_metrics(server: ServerProcess, namespace: str) -> None:
    with server.sync_client() as c:
        c.post(wpath(namespace), json=widget("m"))
        c.get(wpath(namespace, "m"))
        for i in range(3):  # made-up paths must not add a time series each
            assert c.get(f"/apis/made.up{i}/v1/namespaces/{namespace}/things{i}").status_code == 404
            assert c.get(f"/apis/made.up{i}/v1").status_code == 404
        text = c.get("/metrics").text
    assert ('setpoint_request_duration_seconds_count{code="201",group="example.com",'
            'resource="widgets",verb="CREATE"}') in text
    assert "made.up" not in text and "things" not in text
    assert ('setpoint_request_duration_seconds_count{code="404",group="unknown",'
            'resource="unknown",verb="LIST"}') in text
    assert "setpoint_store_write_batch_size_count" in text
    assert "setpoint_watchers" in text and "setpoint_watch_cache_events_total" in text
    assert httpx.get(server.url + "/metrics", verify=server.verify).status_code == 401
