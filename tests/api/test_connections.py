"""Connections that never send a request, or only half of one, and one client opening more
connections than it should: the server closes them, and keeps serving everyone else."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ServerProcess


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("conn"), ["--request-header-timeout", "1",
                                                         "--max-connections-per-client", "20"]).start()
    yield srv
    srv.stop()


def _connect(srv: ServerProcess) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(Path(srv.data_dir) / "tls.crt"))
    raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def _closed_within(sock: ssl.SSLSocket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except (ConnectionError, ssl.SSLError):
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("sent", [b"", b"GET /api/v1/namespaces HTTP/1.1\r\nHost: x\r\n"])
def test_a_connection_that_does_not_finish_its_headers_is_closed(strict: ServerProcess, sent: bytes) -> None:
    with _connect(strict) as s:
        s.sendall(sent)
        t0 = time.monotonic()
        assert _closed_within(s, 10)
        assert time.monotonic() - t0 < 5  # about the 1 s header timeout, not for ever


def test_one_client_cannot_hold_more_than_its_share(strict: ServerProcess) -> None:
    held = [_connect(strict) for _ in range(20)]
    try:
        with _connect(strict) as extra:
            assert _closed_within(extra, 5)
    finally:
        for s in held:
            s.close()
    with strict.sync_client() as c:  # the cap is per open connection: once closed, room again
        deadline = time.monotonic() + 10
        while True:
            try:
                assert c.get("/api/v1/namespaces").status_code == 200
                break
            except Exception:
                assert time.monotonic() < deadline
                time.sleep(0.1)  # the server notices the closed sockets on its next loop turn
