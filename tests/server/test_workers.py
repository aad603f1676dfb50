"""``setpoint serve --workers N``: N API server processes over the one SQLite store that the
supervising process owns. Real processes, real sockets, TLS as shipped."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import msgspec
import pytest

from tests.servers import ServerProcess, alive, children, wait_until


def established_on(pid: int, port: int) -> int:
    """TCP connections to ``port`` that process ``pid`` holds the server end of."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if int(parts[1].rsplit(":", 1)[1], 16) == port and parts[3] == "01" and parts[9] in inodes:
                count += 1
    return count


def configmap(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": name}}


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    srv = ServerProcess(tmp_path / "data", ["--workers", "2"]).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_every_worker_serves_the_one_store_and_sees_every_write(server: ServerProcess) -> None:
    assert server.proc is not None
    workers = wait_until(lambda: len(children(server.proc.pid)) == 2 and children(server.proc.pid),
                         what="two workers")
    path = "/api/v1/namespaces/default/configmaps"
    revisions = []
    # 30 connections held open at once: the kernel spreads them over the workers' sockets
    # (all on one worker would happen once in 2**29 runs), and every worker relays writes.
    clients = [server.sync_client() for _ in range(30)]
    try:
        for i, c in enumerate(clients):
            r = c.post(path, json=configmap(f"c{i}"))
            assert r.status_code == 201, r.text
            revisions.append(int(r.json()["metadata"]["resourceVersion"]))
        per_worker = {pid: established_on(pid, server.port) for pid in workers}
        assert sum(per_worker.values()) == 30 and all(per_worker.values()), per_worker
    finally:
        for c in clients:
            c.close()
    # One store, one writer: every write took the next revision, whichever worker relayed it.
    assert sorted(revisions) == list(range(revisions[0], revisions[0] + 30))
    with server.sync_client() as c:
        r = c.post(path, json=configmap("c0"))
        assert r.status_code == 409 and r.json()["reason"] == "AlreadyExists"
    # Every worker's watch cache follows the store: lists from the cache, on many connections,
    # each see all 30 at the newest revision or later.
    for _ in range(12):
        with server.sync_client() as c:
            r = c.get(path, params={"resourceVersion": str(revisions[-1]), "resourceVersionMatch": "NotOlderThan"})
            assert r.status_code == 200, r.text
            assert len(r.json()["items"]) == 30
    # A watch from before the writes, on every worker, replays them in revision order.
    for _ in range(6):
        with server.sync_client() as c, c.stream("GET", path, params={
                "watch": "1", "resourceVersion": str(revisions[0] - 1), "timeoutSeconds": "5"}) as r:
            seen = []
            for line in r.iter_lines():
                if line:
                    seen.append(int(httpx.Response(200, content=line).json()["object"]["metadata"]["resourceVersion"]))
                if len(seen) == 30:
                    break
            assert seen == sorted(revisions)
    assert children(server.proc.pid) == workers


def test_a_worker_that_dies_is_started_again(server: ServerProcess) -> None:
    assert server.proc is not None
    parent = server.proc.pid
    before = wait_until(lambda: len(children(parent)) == 2 and children(parent), what="two workers")
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    after = wait_until(lambda: (c := children(parent)) and len(c) == 2 and victim not in c and c,
                       timeout=30, what="the worker started again")
    assert len(after & before) == 1
    # Every connection gets an answer again, whichever socket the kernel picks.
    def all_answer() -> bool:
        for _ in range(12):
            try:
                with httpx.Client(base_url=server.url, headers=server.headers, timeout=2, verify=server.verify) as c:
                    if c.get("/readyz").status_code != 200:
                        return False
            except httpx.HTTPError:
                return False
        return True

    wait_until(all_answer, timeout=30, interval=0.2, what="every worker serving")
    assert any("API worker" in line and "SIGKILL" in line for line in server.output), server.output


def test_stopping_the_server_stops_its_workers_and_so_does_killing_it(tmp_path: Path) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        srv = ServerProcess(tmp_path / f"data-{sig}", ["--workers", "2"]).start()
        assert srv.proc is not None
        workers = wait_until(lambda: len(children(srv.proc.pid)) == 2 and children(srv.proc.pid),  # noqa: B023
                             what="two workers")
        srv.kill(sig)
        assert srv.proc.returncode == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
        # SIGKILL leaves no time to stop them: they see their supervisor is gone and stop.
        wait_until(lambda: not any(alive(p) for p in workers), timeout=20, what="the workers gone")  # noqa: B023
        assert not (tmp_path / f"data-{sig}" / "store.sock").exists() or sig == signal.SIGKILL


def test_a_second_server_cannot_join_the_port(server: ServerProcess, tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "setpoint", "serve", "--data-dir", str(tmp_path / "other"),
                        "--listen", f"127.0.0.1:{server.port}", "--workers", "2"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "cannot listen" in r.stdout + r.stderr, r.stdout + r.stderr


def test_workers_are_for_the_embedded_store(tmp_path: Path) -> None:
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "setpoint", "serve", "--data-dir", str(tmp_path),
                        "--store", "etcd://127.0.0.1:1", "--workers", "2"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--workers" in r.stdout + r.stderr and "several" in r.stdout + r.stderr
    assert time.monotonic() - started < 30


def test_every_worker_offers_the_nats_transfers_one_publishes(tmp_path: Path) -> None:
    # Nothing listens there: the publisher keeps trying, and says so.
    srv = ServerProcess(tmp_path / "data", ["--workers", "2", "--nats", "nats://127.0.0.1:1"]).start()
    try:
        clients = [srv.sync_client() for _ in range(16)]
        try:
            docs = [c.get("/transfer").json() for c in clients]
        finally:
            for c in clients:
                c.close()
        assert all(d["transports"] == ["watch", "poll", "interrupt", "command"] for d in docs), docs
        assert all(d["nats"]["url"] == "nats://127.0.0.1:1" and d["nats"]["prefix"] == "setpoint" for d in docs)
        # Worker 0 publishes and reports on it; the other only says where.
        assert {("connected" in d["nats"]) for d in docs} == {True, False}, docs
    finally:
        srv.stop()


def test_every_server_option_reaches_the_workers_as_given() -> None:
    from setpoint.server.app import ServerOptions
    from setpoint.server.settings import Settings
    from setpoint.server.workers import options_from_plain, options_to_plain

    given = ServerOptions(token_file=Path("/t/tokens.csv"), policy_file=Path("/t/policy.jsonl"),
                          history_revisions=7, history_seconds=8.5, nats_url="nats://h:4222", nats_publish=False,
                          settings=Settings(max_body_bytes=1234, watch_max_seconds=60.0), server_address="h:1",
                          on_ready=lambda: None)
    plain = options_to_plain(given)
    assert "on_ready" not in plain
    back = options_from_plain(msgspec.json.decode(msgspec.json.encode(plain)))
    assert back == dataclasses.replace(given, on_ready=None)
