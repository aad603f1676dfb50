"""A body over the limit: clients that write the whole body before reading the answer (Python's
urllib, as urllib3 and the official Kubernetes client do) read the 413 Status instead of a
connection reset, and no client can make the server read without end."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.servers import ServerProcess


def post(server: ServerProcess, size: int) -> urllib.request.Request:
    body = json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "big"},
                       "data": {"x": "a" * size}}).encode()
    return urllib.request.Request(f"{server.url}/api/v1/namespaces", data=body, method="POST",
                                  headers={**server.headers, "Content-Type": "application/json"})


def context(server: ServerProcess) -> ssl.SSLContext | None:
    ca = server.data_dir / "tls.crt"
    return ssl.create_default_context(cafile=str(ca)) if server.url.startswith("https") else None


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Over plain HTTP the server sees every byte the client sends, so the bound shows."""
    srv = ServerProcess(tmp_path_factory.mktemp("plain"), ["--insecure-http"]).start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("which", ["tls", "plain"])
def test_a_client_that_writes_first_reads_its_413(server: ServerProcess, plain: ServerProcess, which: str) -> None:
    srv = server if which == "tls" else plain
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(post(srv, 3_000_000), context=context(srv), timeout=60)
    assert e.value.code == 413
    status = json.loads(e.value.read())
    assert status["kind"] == "Status" and status["reason"] == "RequestEntityTooLarge"


def test_a_huge_body_is_not_read_to_its_end(plain: ServerProcess) -> None:
    # 64 MB: past what the server drains after answering, it closes the connection.
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)) as e:
        urllib.request.urlopen(post(plain, 64_000_000), timeout=60)
    assert not isinstance(e.value, urllib.error.HTTPError)  # closed, not read to its end and answered
    with urllib.request.urlopen(urllib.request.Request(f"{plain.url}/api/v1/namespaces", headers=plain.headers),
                                timeout=30) as r:
        assert r.status == 200  # and the server serves on
