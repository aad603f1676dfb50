"""One backend served to API server processes on the same machine, over a Unix socket.

Why: one Python process serves HTTP on one core. ``setpoint serve --workers N`` runs N API server
processes, each a whole server with its own watch cache (as several servers over PostgreSQL
are), over the one embedded SQLite store that the supervising process owns and serves with
this module. The store keeps a single writer, so revisions, group commit and durability are
exactly those of one server; the API work (HTTP, validation, encoding) spreads over the cores.

The socket lives in a directory only the server's user can enter (the data directory, 0700):
whoever can connect reads and writes every object, past every authorization rule, as a process
that can open ``state.db`` could.

Bounded everywhere: a connection's replies wait in the socket's buffer and, past its high-water
mark, the service stops reading that connection's requests; a watch's pump waits for the buffer
to drain, so a slow client fills the backend's own watch buffer and gets WatchOverflow, as an
in-process watcher would.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import msgspec

from setpoint.store import _wire as wire
from setpoint.store._core import Op
from setpoint.store.backend import Backend, Event, ListResult, StoreError

log = logging.getLogger(__name__)

_WRITES = frozenset(("create", "update", "delete"))
HIGH_WATER = 4 << 20  # bytes of replies a connection may have unsent before reading pauses


class StoreService:
    """Serves ``backend`` at ``path`` until :meth:`close`. The backend is started and closed by
    its owner, not here."""

    def __init__(self, backend: Backend, path: str | Path) -> None:
        self.backend = backend
        self.path = Path(path)
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self._last_key: tuple[str, int, int, int] | None = None
        self._last = msgspec.Raw(b"")

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a server that was killed; the data directory's lock is held
        loop = asyncio.get_running_loop()
        old = os.umask(0o177)
        try:
            self._server = await loop.create_unix_server(lambda: _Connection(self), str(self.path))
        finally:
            os.umask(old)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in list(self._connections):
                conn.abort()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def encoded(self, prefix: str, batch: list[Event]) -> msgspec.Raw:
        """A batch of events as sent: encoded once for every connection watching the same prefix
        (each worker's watch cache watches everything). Two batches of one prefix with the same
        first and last revision and length hold the same events: every event of that prefix
        between the two revisions, in order."""
        key = (prefix, batch[0].revision, batch[-1].revision, len(batch))
        if self._last_key != key:
            self._last_key = key
            self._last = msgspec.Raw(wire.encode(wire.events_out(batch)))
        return self._last

    @property
    def connections(self) -> int:
        return len(self._connections)


class _Connection(asyncio.Protocol):
    def __init__(self, service: StoreService) -> None:
        self.service = service
        self.backend = service.backend
        self.transport: asyncio.Transport | None = None
        self.reader = wire.Reader()
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.watches: dict[int, asyncio.Task[None]] = {}
        self.can_write: asyncio.Event = asyncio.Event()
        self.can_write.set()
        self.loop = asyncio.get_running_loop()
        self.outbox = wire.Outbox(self.loop, self._refuse)
        self.send = self.outbox.send
        # The SQLite backend's task-free path for writes, when the backend has one.
        self.nowait: Callable[[Op, str, bytes, int], asyncio.Future[Any] | None] | None = getattr(
            self.backend, "write_nowait", None)

    # -- transport ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = self.outbox.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport.set_write_buffer_limits(high=HIGH_WATER)
        self.service._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.service._connections.discard(self)
        self.can_write.set()
        for task in (*self.tasks.values(), *self.watches.values()):
            task.cancel()
        self.tasks.clear()
        self.watches.clear()
        self.transport = self.outbox.transport = None

    def pause_writing(self) -> None:
        self.can_write.clear()
        if self.transport is not None:
            self.transport.pause_reading()  # no new requests until their replies can go out

    def resume_writing(self) -> None:
        self.can_write.set()
        if self.transport is not None:
            self.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _refuse(self, message: list[Any], error: Exception) -> None:
        """A reply too big for a frame (or that cannot be encoded) goes as an error for its id."""
        log.warning("store service: reply %d cannot be sent: %s", message[0], error)
        refused = ValueError(f"the store's reply cannot be sent: {error}")
        self.transport.write(wire.frame([wire.error_message(message[0], refused)]))  # type: ignore[union-attr]
        pump = self.watches.pop(message[0], None)
        if pump is not None:
            pump.cancel()  # the client ended that watch on the error: its events would go nowhere

    # -- requests -------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.reader.feed(data)
        except ValueError as e:
            log.warning("store service: dropping a connection that sent a bad frame: %s", e)
            self.abort()
            return
        for messages in frames:
            for message in messages:
                self._handle(message)

    def _handle(self, message: Any) -> None:
        try:
            rid, op, *args = message
        except (TypeError, ValueError):
            log.warning("store service: ignoring a malformed message")
            return
        if op == "unwatch":
            task = self.watches.pop(rid, None)
            if task is not None:
                task.cancel()
            return
        if op == "watch":
            self.watches[rid] = self.loop.create_task(self._pump(rid, *args))
            return
        if op in _WRITES:
            self._write(rid, op, args)
            return
        try:
            coro = self._other(op, args)
        except (TypeError, ValueError) as e:
            self.send(wire.error_message(rid, ValueError(f"bad request {op!r}: {e}")))
            return
        self._track(rid, self.loop.create_task(coro), revisions_only=False)

    def _track(self, rid: int, task: asyncio.Future[Any], *, revisions_only: bool) -> None:
        if isinstance(task, asyncio.Task):
            self.tasks[rid] = task
        task.add_done_callback(functools.partial(self._reply, rid, revisions_only))

    def _write(self, rid: int, op: str, args: list[Any]) -> None:
        try:
            if op == "create":
                kind, (key, value), expected = Op.CREATE, args, 0
            elif op == "update":
                kind, (key, value, expected) = Op.UPDATE, args
            else:
                kind, (key, expected), value = Op.DELETE, args, b""
        except (TypeError, ValueError) as e:
            self.send(wire.error_message(rid, ValueError(f"bad request {op!r}: {e}")))
            return
        if not (isinstance(key, str) and isinstance(value, bytes) and type(expected) is int):
            self.send(wire.error_message(rid, ValueError(
                f"bad request {op!r}: key must be text, value bytes and the revision an integer")))
            return
        # The SQLite backend's path takes no task per write; without a free slot (or on another
        # backend) the ordinary call, which waits for one.
        fut: asyncio.Future[Any] | None = None
        if self.nowait is not None:
            try:
                fut = self.nowait(kind, key, value, expected)
            except (ValueError, StoreError) as e:
                self.send(wire.error_message(rid, e))
                return
        if fut is None:
            b = self.backend
            if kind == Op.CREATE:
                fut = self.loop.create_task(b.create(key, value))
            elif kind == Op.UPDATE:
                fut = self.loop.create_task(b.update(key, value, expected))
            else:
                fut = self.loop.create_task(b.delete(key, expected))
        # A create's or an update's reply is its revisions: the caller has the key and the value.
        self._track(rid, fut, revisions_only=kind != Op.DELETE)

    def _other(self, op: str, args: list[Any]) -> Any:
        b = self.backend
        if op == "get":
            key, revision = args
            return b.get(key, revision)
        if op == "list":
            prefix, revision, limit, start_after = args
            return b.list(prefix, revision=revision, limit=limit, start_after=start_after)
        if op == "rev":
            return b.current_revision()
        if op == "compacted":
            return b.compacted_revision()
        if op == "compact":
            (revision,) = args
            return b.compact(revision)
        raise ValueError("unknown operation")

    def _reply(self, rid: int, revisions_only: bool, task: asyncio.Future[Any]) -> None:
        self.tasks.pop(rid, None)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self.send(wire.error_message(rid, error))
            return
        result = task.result()
        if result is None or isinstance(result, int):
            self.send([rid, wire.OK, result])
        elif isinstance(result, ListResult):
            self.send([rid, wire.OK, [[wire.kv_out(kv) for kv in result.items], result.revision, result.more]])
        elif revisions_only:
            self.send([rid, wire.OK, (result.create_revision, result.mod_revision)])
        else:
            self.send([rid, wire.OK, wire.kv_out(result)])

    async def _pump(self, rid: int, prefix: str, after: int) -> None:
        try:
            async with contextlib.aclosing(self.backend.watch(prefix, after)) as stream:
                async for batch in stream:
                    await self.can_write.wait()
                    self.send([rid, wire.EVENTS, self.service.encoded(prefix, batch)])
        except asyncio.CancelledError:
            raise
        except Exception as e:  # every end of a watch is an error the client raises
            self.send(wire.error_message(rid, e))
        finally:
            self.watches.pop(rid, None)
