"""A body over the limit: clients that write the whole body before reading the answer (Python's
urllib, as urllib3 and the official Kubernetes client do) read the 413 Status instead of a
connection reset, and no client can make the server read without end."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request

import pytest

from tests.servers import ServerProcess


def post(server: ServerProcess, size: int) -> urllib.request.Request:
    body = json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "big"},
                       "data": {"x": "a" * size}}).encode()
    return urllib.request.Request(f"{server.url}/api/v1/namespaces", data=body, method="POST",
                                  headers={**server.headers, "Content-Type": "application/json"})


def context(server: ServerProcess) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.data_dir / "tls.crt"))


def test_a_client_that_writes_first_reads_its_413(server: ServerProcess) -> None:
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(post(server, 3_000_000), context=context(server), timeout=60)
    assert e.value.code == 413
    status = json.loads(e.value.read())
    assert status["kind"] == "Status" and status["reason"] == "RequestEntityTooLarge"


def test_a_huge_body_is_not_read_to_its_end(server: ServerProcess) -> None:
    # 64 MB: past what the server drains after answering, it closes the connection.
    with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError, OSError)) as e:
        urllib.request.urlopen(post(server, 64_000_000), context=context(server), timeout=60)
    assert not isinstance(e.value, urllib.error.HTTPError)  # closed, not read to its end and answered
    with urllib.request.urlopen(urllib.request.Request(f"{server.url}/api/v1/namespaces", headers=server.headers),
                                context=context(server), timeout=30) as r:
        assert r.status == 200  # and the server serves on
