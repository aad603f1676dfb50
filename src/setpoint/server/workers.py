"""``setpoint serve --workers N``: N API server processes over one embedded store.

One Python process serves HTTP on one core, and on a create most of its time goes to HTTP,
validation and encoding, not to the store. So the supervising process (this module) owns the
SQLite store and serves it on a Unix socket (``setpoint.store.service``), and N worker
processes each run a whole API server over it (``setpoint.store.remote``), as several servers
over PostgreSQL do: each has its own watch cache, fed by the store's one ordered stream of
events, so every worker sees every revision in order. The store keeps its single writer:
revisions, group commit and fsync are unchanged.

Each worker listens on its own socket bound to the same port with SO_REUSEPORT, so the kernel
spreads connections over the workers (a socket shared by all would go to whichever process
woke first, and keep-alive clients would stay unevenly spread). The supervisor keeps the
sockets open: connections made while a worker restarts wait in its backlog. A worker that exits
is started again (with a growing pause if it keeps failing); a worker whose store connection is
lost stops, since the supervisor is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import signal
import socket
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import msgspec

from setpoint.backoff import Backoff
from setpoint.server.app import ServerOptions
from setpoint.store.backend import Backend, StoreError
from setpoint.store.service import StoreService

log = logging.getLogger(__name__)

READY_TIMEOUT = 120.0  # seconds a worker may take to load its watch cache and say it is ready
HEALTHY_AFTER = 60.0  # seconds a worker must have lived for its next restart to wait the shortest pause
STOP_TIMEOUT = 10.0  # seconds workers have to finish (their own graceful limit is 3 s) before SIGKILL
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes; keep a margin


class WorkerConfig(msgspec.Struct):
    """What a worker needs to build the same server the supervisor would have run; sent on the
    worker's stdin as JSON. ``options`` is the server's :class:`ServerOptions` as plain data (see
    :func:`options_to_plain`), so that a new option reaches the workers without being listed here."""

    store_socket: str
    listen_fd: int
    ready_fd: int
    index: int
    supervisor_pid: int
    tls_cert: str | None
    tls_key: str | None
    log_level: str
    options: dict[str, Any]


def options_to_plain(options: ServerOptions) -> dict[str, Any]:
    fields = {f.name: getattr(options, f.name) for f in dataclasses.fields(options) if f.name != "on_ready"}
    return cast(dict[str, Any], msgspec.to_builtins(fields, enc_hook=str))  # paths as text


def options_from_plain(plain: dict[str, Any], **changes: Any) -> ServerOptions:
    hints = typing.get_type_hints(ServerOptions)
    fields = {k: msgspec.convert(v, hints[k], dec_hook=lambda t, v: t(v)) for k, v in plain.items()}
    return ServerOptions(**{**fields, **changes})


def bind_group(host: str, port: int | None, count: int) -> list[socket.socket]:
    """``count`` listening sockets on one port (``port``, or 6443, or a free one when 6443 is
    taken); more than one make an SO_REUSEPORT group, over which the kernel spreads connections.

    For a group the port is first bound without SO_REUSEPORT: that fails if anything holds it,
    and no socket of this server has SO_REUSEPORT before the group exists, so a second server of
    the same user cannot join the group and take a share of its connections. Accepted
    connections inherit TCP_NODELAY: without it, a response written as headers then body waits
    for the client's delayed ACK (~40 ms a request)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    candidates = [port] if port is not None else [6443, 0]
    last_error: OSError | None = None
    for p in candidates:
        sockets: list[socket.socket] = []
        try:
            if count > 1:
                with socket.socket(family, socket.SOCK_STREAM) as probe:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    probe.bind((host, p))
                    p = probe.getsockname()[1]
            for _ in range(count):
                sock = socket.socket(family, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if count > 1:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((host, p))
                p = sock.getsockname()[1]
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.listen(2048)
        except OSError as e:
            for sock in sockets:
                sock.close()
            last_error = e
            continue
        return sockets
    raise OSError(last_error.errno if last_error else errno.EADDRINUSE,
                  f"cannot listen on {host}:{port}: {last_error}")


def socket_path(data_dir: Path) -> tuple[Path, Path | None]:
    """Where the store service listens, and a directory to remove afterwards (when the data
    directory's path is too long for a Unix socket, a private one under the temp directory)."""
    path = data_dir.absolute() / "store.sock"
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path, None
    import tempfile

    private = Path(tempfile.mkdtemp(prefix="setpoint-"))  # 0700
    return private / "store.sock", private


class _Worker:
    def __init__(self, index: int, sock: socket.socket) -> None:
        self.index = index
        self.sock = sock
        self.proc: asyncio.subprocess.Process | None = None
        self.ready: asyncio.Future[None] | None = None
        # Restarts: 0.5 s, doubling while it keeps failing, at most 30 s; reset once it lived a while.
        self.backoff = Backoff(0.5, 30.0, jitter=0.0)
        self.started_at = 0.0


class Supervisor:
    """Runs the store service and the workers until SIGTERM or SIGINT.

    ``on_ready`` is called once every worker serves; ``config`` gives each worker's config."""

    def __init__(self, backend: Backend, data_dir: Path, sockets: list[socket.socket],
                 config: Callable[[str, int], WorkerConfig], on_ready: Callable[[], None]) -> None:
        self.backend = backend
        self.data_dir = data_dir
        self.workers = [_Worker(i, s) for i, s in enumerate(sockets)]
        self.config = config
        self.on_ready = on_ready
        self._stop = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        path, private = socket_path(self.data_dir)
        try:
            await self.backend.start()
        except StoreError as e:
            log.error("cannot open the store: %s", e)
            _remove(private)
            return 1
        service = StoreService(self.backend, path)
        try:
            await service.start()
        except OSError as e:
            log.error("cannot serve the store on %s: %s", path, e)
            await self.backend.close()
            _remove(private)
            return 1
        try:
            for w in self.workers:
                await self._spawn(w, str(path))
            ready: asyncio.Future[Any] = asyncio.gather(
                *(w.ready for w in self.workers if w.ready is not None))
            stopped: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
            exited: list[asyncio.Future[Any]] = [
                asyncio.ensure_future(w.proc.wait()) for w in self.workers if w.proc is not None]
            done, _ = await asyncio.wait([ready, stopped, *exited], timeout=READY_TIMEOUT,
                                         return_when=asyncio.FIRST_COMPLETED)
            for f in (stopped, *exited):
                f.cancel()
            if ready not in done:
                ready.cancel()
                with contextlib.suppress(BaseException):
                    await ready
                if stopped in done:
                    return 0
                log.error("a worker did not start (see its messages above)")
                return 1
            self.on_ready()
            await self._supervise(str(path))
            return 0
        finally:
            await self._stop_workers()
            await service.close()
            await self.backend.close()
            _remove(private)

    async def _spawn(self, w: _Worker, store_socket: str) -> None:
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()  # neither inheritable: pass_fds hands over what the worker gets
        cfg = self.config(store_socket, w.index)
        cfg.listen_fd = w.sock.fileno()
        cfg.ready_fd = write_fd
        try:
            w.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "setpoint", "serve-worker",
                stdin=asyncio.subprocess.PIPE, pass_fds=(w.sock.fileno(), write_fd),
                # Out of the terminal's process group: Ctrl-C reaches the supervisor only, which
                # then stops the workers itself (instead of seeing them exit and starting them again).
                start_new_session=True,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        w.started_at = time.monotonic()
        assert w.proc.stdin is not None
        w.proc.stdin.write(msgspec.json.encode(cfg))
        w.proc.stdin.close()
        ready = w.ready = loop.create_future()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                    os.fdopen(read_fd, "rb", 0))

        async def wait_ready() -> None:
            try:
                if await reader.read(1) and not ready.done():
                    ready.set_result(None)
            finally:
                transport.close()

        task = loop.create_task(wait_ready())
        ready.add_done_callback(lambda _: task.cancel())

    async def _supervise(self, store_socket: str) -> None:
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            while not self._stop.is_set():
                waits = {asyncio.ensure_future(w.proc.wait()): w for w in self.workers if w.proc is not None}
                done, _ = await asyncio.wait([stopped, *waits], return_when=asyncio.FIRST_COMPLETED)
                for f in waits:
                    if f not in done:
                        f.cancel()
                if stopped in done:
                    return
                for f in done:
                    w = waits[f]
                    lived = time.monotonic() - w.started_at
                    if lived > HEALTHY_AFTER:
                        w.backoff.reset()
                    pause = w.backoff.next()
                    log.warning("API worker %d exited with %s after %.1f s; starting it again in %.1f s",
                                w.index, _describe(f.result()), lived, pause)
                    await self._respawn(w, store_socket, pause)
        finally:
            stopped.cancel()

    async def _respawn(self, w: _Worker, store_socket: str, pause: float) -> None:
        """Start ``w`` again after ``pause``; a start that fails (no memory, no process slots) is
        tried again with the worker's growing pause instead of taking the whole server down."""
        while not await self._stopped_within(pause):
            try:
                await self._spawn(w, store_socket)
                return
            except OSError as e:
                pause = w.backoff.next()
                log.warning("API worker %d could not be started (%s); trying again in %.1f s", w.index, e, pause)

    async def _stopped_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()
        return self._stop.is_set()

    async def _stop_workers(self) -> None:
        procs = [w.proc for w in self.workers if w.proc is not None and w.proc.returncode is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await asyncio.gather(*(p.wait() for p in procs))
        except TimeoutError:
            for p in procs:
                if p.returncode is None:
                    log.warning("API worker pid %d did not stop in %.0f s; killing it", p.pid, STOP_TIMEOUT)
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
            await asyncio.gather(*(p.wait() for p in procs))
        for w in self.workers:
            w.sock.close()


def _remove(private: Path | None) -> None:
    if private is not None:
        with contextlib.suppress(OSError):
            private.rmdir()


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"code {code}"
