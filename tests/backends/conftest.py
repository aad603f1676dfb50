"""Shared stores and several real ``setpoint serve`` processes over them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.backends.services import EtcdCluster, PostgresServer, stop_quietly, wait_for
from tests.conftest import WIDGET_CRD
from tests.servers import ServerProcess


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer().init().start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="module")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def store_url(kind: str, postgres: PostgresServer | None, etcd: EtcdCluster | None) -> str:
    if kind == "postgresql":
        assert postgres is not None
        # A schema per test: every test starts from an empty store on the shared server.
        return postgres.dsn() + f"?schema=t{uuid.uuid4().hex[:10]}"
    assert etcd is not None
    return etcd.url


class Servers:
    """Two (or more) API servers over one store, sharing one data directory for their tokens."""

    def __init__(self, data_dir: Path, store: str, count: int = 2, args: list[str] | None = None) -> None:
        self.data_dir = data_dir
        self.store = store
        self.procs = [ServerProcess(data_dir, ["--store", store, *(args or [])]) for _ in range(count)]

    def start(self) -> Servers:
        for p in self.procs:
            p.start(timeout=60)
        with self.procs[0].sync_client() as c:
            r = c.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=WIDGET_CRD)
            assert r.status_code in (201, 409), r.text
        for p in self.procs:  # every server has seen the CRD through its watch cache
            with p.sync_client() as c:
                wait_for(lambda c=c: c.get("/apis/example.com/v1/widgets").status_code == 200,
                         f"{p.url} to serve widgets", 30)
        return self

    def stop(self) -> None:
        stop_quietly(*self.procs)

    @property
    def token(self) -> str:
        return self.procs[0].token

    @property
    def ca(self) -> Path | None:
        return self.procs[0].ca

    @property
    def urls(self) -> list[str]:
        return [p.url for p in self.procs]

    def ensure_namespace(self, name: str) -> None:
        with self.procs[0].sync_client() as c:
            r = c.post("/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
            assert r.status_code in (201, 409), r.text


def widget(name: str, size: int = 1) -> dict[str, object]:
    return {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name}, "spec": {"size": size}}


def http(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
