"""Real ``setpoint serve`` processes for tests: started on a free loopback port, stopped after.

They serve TLS as ``setpoint serve`` does by default, with the certificate it makes for itself
(DATA_DIR/tls.crt); every client here trusts that certificate as the kubeconfig does. A test that
is about plain HTTP passes ``--insecure-http`` in ``args``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from setpoint.client import ClientConfig

URL_LINE = re.compile(r"setpoint serving at (\S+)")


@dataclass
class ServerProcess:
    data_dir: Path
    args: list[str] = field(default_factory=list)
    url: str = ""
    token: str = ""
    proc: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)

    def start(self, timeout: float = 30.0) -> ServerProcess:
        listen = ["--listen", f"127.0.0.1:{self.port}"] if self.url else ["--listen", "127.0.0.1:0"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "setpoint", "serve", "--data-dir", str(self.data_dir), *listen,
             *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise RuntimeError("server did not start:\n" + "".join(self.output))
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError("server exited:\n" + "".join(self.output))
            m = URL_LINE.search(line)
            if m:
                self.url = m.group(1)
                break
        self.token = read_admin_token(self.data_dir)
        return self

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def ca(self) -> Path | None:
        """The certificate the server made for itself, None when it serves plain HTTP."""
        return self.data_dir / "tls.crt" if self.url.startswith("https://") else None

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What httpx's ``verify`` takes to trust this server."""
        return ssl.create_default_context(cafile=str(self.ca)) if self.ca is not None else True

    def client(self, **kw: object) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=30.0, verify=self.verify,
                                 **kw)  # type: ignore[arg-type]

    def sync_client(self, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=30.0, verify=self.verify,
                            **kw)  # type: ignore[arg-type]

    def client_config(self, url: str | list[str] | None = None, **kw: object) -> ClientConfig:
        """A setpoint ClientConfig for this server (or ``url``, a proxy in front of it), trusting its CA."""
        return ClientConfig(url or self.url, token=self.token, ca_file=self.ca, **kw)  # type: ignore[arg-type]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=15)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def restart(self) -> ServerProcess:
        self.stop()
        return self.start()


def read_admin_token(data_dir: Path) -> str:
    for line in (data_dir / "tokens.csv").read_text().splitlines():
        if line and not line.startswith("#"):
            return line.split(",")[0]
    raise RuntimeError("no token")


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def children(pid: int) -> set[int]:
    """The live children of process ``pid``."""
    out: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.update(int(x) for x in f.read().split())
        except OSError:
            continue
    return out


def kill_left_behind(root: Path) -> list[int]:
    """SIGKILL every process still running from ``root`` (its working directory is there, or its
    command line names it): the replicas, balancers and children a failed test would otherwise
    leave without a parent. Returns their pids."""
    root_s = str(root)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if cwd.removesuffix(" (deleted)").startswith(root_s) or root_s.encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry), signal.SIGKILL)
                found.append(int(entry))
    return found
