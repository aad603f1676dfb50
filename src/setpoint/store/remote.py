"""The :class:`Backend` contract over a store service's Unix socket (``service.py``).

An API server worker of ``setpoint serve --workers N`` uses this in place of the SQLite backend
its supervisor owns. Calls are pipelined on one connection: each call is a message, the messages
of one event-loop turn go out as one frame, and replies come back in any order, matched by id.
Watches share the connection; each has its own bounded buffer here, and one that overflows is
ended with WatchOverflow (and stopped at the service) without holding up the others.

When the connection is lost, every call in flight and every watch fails with Unavailable and the
backend stays down (``lost`` is set): the worker's supervisor owns the store, so a lost
connection means the supervisor is gone and the worker should stop too.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import copy
import itertools
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, cast

from setpoint.store import _wire as wire
from setpoint.store._core import Lifecycle
from setpoint.store.backend import (
    Backend,
    Event,
    KeyValue,
    ListResult,
    Unavailable,
    WatchOverflow,
    check_list_args,
    storable,
)

CLOSE_WAIT = 5.0  # seconds close() waits for the answers to calls in flight
# Calls are sent when the event loop's turn ends or, in a long turn, once the first of them has
# waited this long (see wire.Outbox). Measured with 32 clients creating through one worker: the
# store's writer sat idle 70 % of the time while the worker prepared a whole turn's requests,
# then the worker sat idle through the commit; sending every 0.5 ms overlaps the two (creates/s
# +15-20 %, p99 lower). 0.1 ms and 2 ms and more did worse; 0.5 to 1 ms did best.
SEND_DELAY = 0.0005


class _Watch:
    __slots__ = ("batches", "count", "error", "waiter")

    def __init__(self) -> None:
        self.batches: collections.deque[builtins.list[Event]] = collections.deque()
        self.count = 0
        self.error: Exception | None = None
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class RemoteBackend(Backend, asyncio.Protocol):
    def __init__(self, path: str | Path, *, watch_buffer: int = 10_000, max_pending: int = 4096,
                 send_delay: float | None = SEND_DELAY) -> None:
        if watch_buffer < 1 or max_pending < 1:
            raise ValueError("watch_buffer and max_pending must be at least 1")
        self._send_delay = send_delay
        self.path = Path(path)
        self._watch_buffer = watch_buffer
        self._max_pending = max_pending
        self._life = Lifecycle(f"store service {self.path}")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: asyncio.Transport | None = None
        self._reader = wire.Reader()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._watches: dict[int, _Watch] = {}
        self._outbox: wire.Outbox | None = None
        self._room: asyncio.Future[None] | None = None  # set when a full pending table frees a slot
        self._can_write = asyncio.Event()  # cleared while the socket's send buffer is over its mark
        self._can_write.set()
        self._drained: asyncio.Future[None] | None = None  # set when close() waits and no call is left
        self.lost: asyncio.Future[None] | None = None  # set if the connection is lost without close()

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._life.starting("RemoteBackend")
        loop = self._loop = asyncio.get_running_loop()
        self._outbox = wire.Outbox(loop, self._refuse, max_delay=self._send_delay)
        self.lost = loop.create_future()
        try:
            await loop.create_unix_connection(lambda: self, str(self.path))
        except OSError as e:
            self._life.state = "closed"
            raise Unavailable(f"store service {self.path}: cannot connect: {e.strerror or e}") from e
        self._life.state = "open"

    async def close(self) -> None:
        await self._life.close(self._finish_close)

    async def _finish_close(self) -> None:
        assert self._loop is not None
        if self._pending and self._transport is not None:  # the contract: finish those in flight
            self._drained = self._loop.create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._drained), CLOSE_WAIT)
        if self._transport is not None:
            self._transport.close()
        self._fail_all(self._life.closed_error(), lost=False)

    def _fail_all(self, error: Exception, *, lost: bool = True) -> None:
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(error)
        self._freed()
        for w in self._watches.values():
            if w.error is None:
                w.error = error
            w.wake()
        self._can_write.set()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if lost and self.lost is not None and not self.lost.done():
            self.lost.set_result(None)

    # -- the connection -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        assert self._outbox is not None
        self._outbox.transport = self._transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._outbox is not None:
            self._outbox.transport = None
        if self._life.is_open:
            self._life.state = "failed"
        self._fail_all(Unavailable(f"store service {self.path}: connection lost"), lost=self._life.state == "failed")

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._reader.feed(data)
        except ValueError as e:
            if self._transport is not None:
                self._transport.abort()
            self._fail_all(Unavailable(f"store service {self.path}: {e}"))
            return
        pending, watches = self._pending, self._watches
        for messages in frames:
            for m in messages:
                rid, kind = m[0], m[1]
                if kind == wire.EVENTS:
                    w = watches.get(rid)
                    if w is not None and w.error is None:
                        self._deliver(rid, w, wire.events_in(m[2]))
                    continue
                fut = pending.pop(rid, None)
                if self._room is not None:
                    self._freed()
                if self._drained is not None and not pending and not self._drained.done():
                    self._drained.set_result(None)
                if fut is None:
                    w = watches.get(rid)
                    if w is not None and kind == wire.ERROR and w.error is None:
                        w.error = wire.error_from(m[2], m[3])
                        w.wake()
                    continue
                if fut.done():
                    continue
                if kind == wire.OK:
                    fut.set_result(m[2])
                else:
                    fut.set_exception(wire.error_from(m[2], m[3]))

    def _deliver(self, rid: int, w: _Watch, batch: builtins.list[Event]) -> None:
        if w.count + len(batch) > self._watch_buffer:
            w.error = WatchOverflow(f"watch fell more than {self._watch_buffer} events behind")
            self._send([rid, "unwatch"])
        else:
            w.batches.append(batch)
            w.count += len(batch)
        w.wake()

    def _send(self, message: builtins.list[Any]) -> None:
        assert self._outbox is not None
        self._outbox.send(message)

    def _refuse(self, message: builtins.list[Any], error: Exception) -> None:
        """A call that cannot be sent (text no engine stores, e.g. a lone surrogate) fails alone."""
        rid = message[0]
        error = ValueError(f"cannot send {message[1]!r}: {error}")
        fut = self._pending.pop(rid, None)
        if fut is not None and not fut.done():
            fut.set_exception(error)
        w = self._watches.get(rid)
        if w is not None and w.error is None:
            w.error = error
            w.wake()

    def pause_writing(self) -> None:
        self._can_write.clear()  # the service reads no more for now: calls wait before sending

    def resume_writing(self) -> None:
        self._can_write.set()

    async def _call(self, *message: Any) -> Any:
        self._life.ensure_open()
        assert self._loop is not None
        while len(self._pending) >= self._max_pending or not self._can_write.is_set():
            if not self._can_write.is_set():
                await self._can_write.wait()
            else:  # bounded: wait for a reply to free a slot (shielded: the future is shared)
                if self._room is None or self._room.done():
                    self._room = self._loop.create_future()
                await asyncio.shield(self._room)
            self._life.ensure_open()
        rid = next(self._ids)
        fut = self._loop.create_future()
        self._pending[rid] = fut
        self._send([rid, *message])
        return await fut

    def _freed(self) -> None:
        room, self._room = self._room, None
        if room is not None and not room.done():
            room.set_result(None)

    # -- the contract ---------------------------------------------------------------------------

    async def current_revision(self) -> int:
        return int(await self._call("rev"))

    async def compacted_revision(self) -> int:
        return int(await self._call("compacted"))

    async def get(self, key: str, revision: int = 0) -> KeyValue | None:
        check_list_args(revision)
        if not storable(key):
            key = ""  # matches nothing: no stored key breaks the rule
        item = await self._call("get", key, revision)
        return None if item is None else wire.kv_in(item)

    async def list(
        self, prefix: str, *, revision: int = 0, limit: int = 0, start_after: str = ""
    ) -> ListResult:
        """Fetched in pages of at most LIST_PAGE keys, all at the first page's revision, so
        that no reply has to hold a whole large listing."""
        check_list_args(revision, limit)
        items: builtins.list[KeyValue] = []
        while True:
            want = wire.LIST_PAGE if not limit else min(wire.LIST_PAGE, limit - len(items))
            page, revision, more = await self._call("list", prefix, revision, want, start_after)
            items.extend(wire.kv_in(i) for i in page)
            if not more or not page or (limit and len(items) >= limit):
                return ListResult(items, revision, bool(more and page))
            start_after = page[-1][0]

    # Keys are checked by the store at the other end (its ValueError comes back as one); a create's
    # or an update's reply carries only the revisions, since the caller has the key and the value.

    async def create(self, key: str, value: bytes) -> KeyValue:
        value = bytes(value)
        create_revision, mod_revision = await self._call("create", key, value)
        return KeyValue(key, value, create_revision, mod_revision)

    async def update(self, key: str, value: bytes, expected_revision: int = 0) -> KeyValue:
        value = bytes(value)
        create_revision, mod_revision = await self._call("update", key, value, expected_revision)
        return KeyValue(key, value, create_revision, mod_revision)

    async def delete(self, key: str, expected_revision: int = 0) -> KeyValue:
        return wire.kv_in(await self._call("delete", key, expected_revision))

    async def compact(self, revision: int) -> None:
        await self._call("compact", revision)

    def watch(self, prefix: str, after_revision: int) -> AsyncGenerator[builtins.list[Event], None]:
        return self._watch(prefix, after_revision)

    async def _watch(self, prefix: str, after: int) -> AsyncGenerator[builtins.list[Event], None]:
        self._life.ensure_open()
        assert self._loop is not None
        rid = next(self._ids)
        w = self._watches[rid] = _Watch()
        self._send([rid, "watch", prefix, after])
        try:
            while True:
                if w.batches:
                    batch = w.batches.popleft()
                    w.count -= len(batch)
                    yield batch
                    continue
                if w.error is not None:
                    raise copy.copy(w.error)  # one error may end many watches
                w.waiter = self._loop.create_future()
                try:
                    await w.waiter
                finally:
                    w.waiter = None
        finally:
            if self._watches.pop(rid, None) is not None and w.error is None:
                with contextlib.suppress(Exception):
                    self._send([rid, "unwatch"])

    @property
    def in_flight(self) -> int:
        """Calls sent and not answered yet (at most ``max_pending``)."""
        return len(self._pending)

    @property
    def watchers(self) -> int:
        return len(self._watches)
