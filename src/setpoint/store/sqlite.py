"""The embedded default backend: one SQLite file in WAL mode, durable on every acknowledged write.

Threads, because sqlite3 calls block: one writer thread owns the only read-write connection and
group-commits whatever writes are waiting (see ``_sqlite_writer``); a few reader threads each own
a read-only connection (see ``_sqlite_reader``); the event loop only queues work and receives
results. Queues are bounded by semaphores on the loop side, so a flood of callers waits on the
loop instead of piling work up in memory. The schema is described in ``_sqlite_schema``.

An op is acknowledged only after its transaction committed with synchronous=FULL, so it survives
``kill -9`` and power loss. Committed events are published to watchers from the same loop
callback that resolves the writers' futures, so every watcher sees revisions in commit order.

When the backend closes, running watches raise :class:`Unavailable` (rather than just ending),
so a consumer can tell "the store went away, resume elsewhere" from a normal end.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from setpoint.store import _sqlite_reader as reads
from setpoint.store._core import Lifecycle, Op, Slots, WriteOp, settle
from setpoint.store._sqlite_reader import ReaderPool
from setpoint.store._sqlite_schema import check_pragmas
from setpoint.store._sqlite_writer import Batch, CompactJob, Writer
from setpoint.store.backend import (
    Backend,
    Event,
    FutureRevision,
    KeyValue,
    ListResult,
    StoreError,
    Unavailable,
    check_key,
    check_list_args,
    check_watch_start,
    storable,
)
from setpoint.store.fanout import WatchHub, watch_stream

T = TypeVar("T")


@dataclass
class CommitStats:
    """Group-commit counters, updated on the event loop after each commit (for /metrics)."""

    commits: int = 0  # transactions the writer ran for writes (failed ones included)
    ops: int = 0  # write ops they carried, whether they succeeded or failed a check
    writes: int = 0  # ops that took a revision
    failed_commits: int = 0  # batches lost to an SQLite error (every op got Unavailable)
    max_batch: int = 0


class SQLiteBackend(Backend):
    """The :class:`Backend` contract over one SQLite file.

    ``on_commit(batch_size)`` is called on the event loop after every write transaction, for
    metrics; it must be quick and must not raise.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        readers: int = 2,
        batch_max: int = 512,
        max_pending_writes: int = 4096,
        max_pending_reads: int = 1024,
        watch_buffer: int = 10_000,
        watch_page: int = 1000,
        compaction_chunk: int = 4096,
        wal_limit: int = 64 << 20,
        on_commit: Callable[[int], None] | None = None,
        pragmas: Mapping[str, int] | None = None,
    ) -> None:
        if str(path) in ("", ":memory:") or str(path).startswith("file:"):
            raise ValueError("SQLiteBackend needs a file path (readers open their own connections)")
        for name, value in (
            ("readers", readers),
            ("batch_max", batch_max),
            ("max_pending_writes", max_pending_writes),
            ("max_pending_reads", max_pending_reads),
            ("watch_buffer", watch_buffer),
            ("watch_page", watch_page),
            ("compaction_chunk", compaction_chunk),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1")
        check_pragmas(pragmas or {})
        self.path = Path(path).absolute()
        self.stats = CommitStats()
        self.on_commit = on_commit  # settable later, e.g. once the server's metrics exist
        self._readers_count = readers
        self._batch_max = batch_max
        self._compaction_chunk = compaction_chunk
        self._wal_limit = wal_limit
        self._pragmas = dict(pragmas or {})
        self._max_pending_writes = max_pending_writes
        self._max_pending_reads = max_pending_reads
        self._watch_page = watch_page
        self._hub = WatchHub(watch_buffer)
        self._life = Lifecycle(f"sqlite store {self.path}")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: Writer | None = None
        self._readers: ReaderPool | None = None
        self._write_slots: Slots | None = None
        self._read_slots: Slots | None = None
        self._writer_ready: asyncio.Future[None] | None = None
        self._writer_stopped: asyncio.Future[None] | None = None
        self._readers_stopped: asyncio.Future[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._life.starting("SQLiteBackend")
        loop = self._loop = asyncio.get_running_loop()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Unavailable(f"sqlite store {self.path}: cannot create its directory: {exc}") from exc
        await asyncio.to_thread(private_files, self.path)
        self._write_slots = Slots(self._max_pending_writes)
        self._read_slots = Slots(self._max_pending_reads)
        self._writer_ready = loop.create_future()
        self._writer_stopped = loop.create_future()
        self._readers_stopped = loop.create_future()
        self._writer = Writer(
            self.path,
            self,
            self._post,
            batch_max=self._batch_max,
            compaction_chunk=self._compaction_chunk,
            wal_limit=self._wal_limit,
            pragmas=self._pragmas,
        )
        self._writer.start()
        try:
            await self._writer_ready
        except BaseException:
            self._life.state = "closed"
            raise
        self._hub.revision = self._writer.revision
        self._readers = ReaderPool(self.path, self._readers_count, self._post, self._set_readers_stopped)
        self._readers.start()
        self._life.state = "open"

    async def close(self) -> None:
        await self._life.close(self._finish_close)

    async def _finish_close(self) -> None:
        assert self._writer is not None and self._readers is not None
        assert self._writer_stopped is not None and self._readers_stopped is not None
        self._writer.stop()  # ops queued before this are still committed
        self._readers.stop()
        await self._writer_stopped
        await self._readers_stopped
        self._hub.close(self._life.closed_error())

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the event loop; called from the backend's threads."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(fn, *args)

    def _ensure_open(self) -> None:
        self._life.ensure_open()

    # -- callbacks from the writer thread (on the loop) ---------------------------------------------

    def writer_ready(self, error: StoreError | None) -> None:
        assert self._writer_ready is not None
        if not self._writer_ready.done():
            if error is None:
                self._writer_ready.set_result(None)
            else:
                self._writer_ready.set_exception(error)
                if self._writer_stopped is not None and not self._writer_stopped.done():
                    self._writer_stopped.set_result(None)

    def batch_done(self, batch: Batch) -> None:
        settle(batch.ops, batch.outcomes)
        if self._write_slots is not None:
            for _ in batch.ops:
                self._write_slots.give()
        self._hub.publish(batch.events)
        if not batch.ops:  # events recovered after a reconnect, not a batch of callers
            return
        stats = self.stats
        stats.commits += 1
        stats.ops += len(batch.ops)
        stats.writes += len(batch.events)
        if batch.outcomes and isinstance(batch.outcomes[0], Unavailable):
            stats.failed_commits += 1
        stats.max_batch = max(stats.max_batch, len(batch.ops))
        if self.on_commit is not None:
            self.on_commit(len(batch.ops))

    def compaction_done(self, job: CompactJob, error: StoreError | None) -> None:
        fut = job.future
        if fut is not None and not fut.done():
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)

    def writer_stopped(self) -> None:
        if self._life.is_open:  # the thread died without being asked to: refuse new work
            self._life.state = "failed"
            self._hub.close(Unavailable(f"sqlite store {self.path}: the writer stopped unexpectedly"))
        assert self._writer is not None
        error = self._life.closed_error()
        for item in self._writer.drain():
            if isinstance(item, CompactJob):
                self.compaction_done(item, error)
            else:
                self.batch_done(Batch([item], [error], [], self._writer.revision))
        if self._writer_stopped is not None and not self._writer_stopped.done():
            self._writer_stopped.set_result(None)

    def _set_readers_stopped(self) -> None:
        if self._readers_stopped is not None and not self._readers_stopped.done():
            self._readers_stopped.set_result(None)

    # -- writes -----------------------------------------------------------------------------------

    async def _write(self, kind: Op, key: str, value: bytes, expected: int) -> KeyValue:
        fut = self.write_nowait(kind, key, value, expected)
        if fut is None:  # the pending-write limit: wait for a slot
            assert self._write_slots is not None
            await self._write_slots.take()  # given back by batch_done, also if this caller is cancelled
            if not self._life.is_open:
                self._write_slots.give()
                self._ensure_open()
            fut = self._submit(kind, key, value, expected)
        return await fut

    def write_nowait(self, kind: Op, key: str, value: bytes, expected: int) -> asyncio.Future[KeyValue] | None:
        """Queue a write and return its future at once, without a coroutine or a task per write:
        the store service's path (one future per request it relays). None when the pending-write
        limit is reached: the caller then awaits the ordinary call, which waits for a slot."""
        self._ensure_open()
        check_key(key)
        assert self._write_slots is not None
        value = bytes(value)  # before a slot is taken: a value that is not bytes fails here alone
        if not self._write_slots.try_take():
            return None
        return self._submit(kind, key, value, expected)

    def _submit(self, kind: Op, key: str, value: bytes, expected: int) -> asyncio.Future[KeyValue]:
        assert self._writer is not None and self._loop is not None
        fut: asyncio.Future[KeyValue] = self._loop.create_future()
        self._writer.submit(WriteOp(kind, key, value, expected, fut))
        return fut

    async def create(self, key: str, value: bytes) -> KeyValue:
        return await self._write(Op.CREATE, key, bytes(value), 0)

    async def update(self, key: str, value: bytes, expected_revision: int = 0) -> KeyValue:
        return await self._write(Op.UPDATE, key, bytes(value), expected_revision)

    async def delete(self, key: str, expected_revision: int = 0) -> KeyValue:
        return await self._write(Op.DELETE, key, b"", expected_revision)

    async def compact(self, revision: int) -> None:
        self._ensure_open()
        assert self._writer is not None and self._loop is not None
        if revision > self._writer.revision:
            raise FutureRevision(revision, self._writer.revision)
        if revision <= self._writer.compacted and self._writer.swept >= self._writer.compacted:
            return
        fut: asyncio.Future[None] = self._loop.create_future()
        self._writer.submit(CompactJob(revision, fut))
        await fut

    # -- reads ------------------------------------------------------------------------------------

    async def current_revision(self) -> int:
        """The newest committed revision (a read started now sees at least this one)."""
        return self._writer.revision if self._writer is not None else 0

    async def compacted_revision(self) -> int:
        return self._writer.compacted if self._writer is not None else 0

    async def _read(self, fn: Callable[[Any], T]) -> T:
        self._ensure_open()
        assert self._read_slots is not None and self._readers is not None and self._loop is not None
        slots = self._read_slots
        await slots.take()
        if not self._life.is_open:
            slots.give()
            self._ensure_open()
        fut: asyncio.Future[T] = self._loop.create_future()

        def settle(result: T, error: BaseException | None) -> None:
            slots.give()
            if not fut.done():
                if error is None:
                    fut.set_result(result)
                else:
                    fut.set_exception(error)

        self._readers.submit(fn, settle)
        return await fut

    async def get(self, key: str, revision: int = 0) -> KeyValue | None:
        check_list_args(revision)
        if not storable(key):
            key = ""  # matches no row: no stored key breaks the rule
        return await self._read(lambda conn: reads.get(conn, key, revision))

    async def list(
        self, prefix: str, *, revision: int = 0, limit: int = 0, start_after: str = ""
    ) -> ListResult:
        check_list_args(revision, limit)
        return await self._read(lambda conn: reads.list_(conn, prefix, revision, limit, start_after))

    # -- watch ------------------------------------------------------------------------------------

    async def _history(self, prefix: str, after: int, until: int, limit: int) -> builtins.list[Event]:
        return await self._read(lambda conn: reads.history(conn, prefix, after, until, limit))

    def watch(self, prefix: str, after_revision: int) -> AsyncGenerator[builtins.list[Event], None]:
        """See :meth:`Backend.watch`. When the backend closes, the watch raises Unavailable."""
        return watch_stream(
            self._hub, prefix, after_revision, self._history, self._watch_page, check=self._check_watch
        )

    def _check_watch(self, after_revision: int) -> None:
        self._ensure_open()
        assert self._writer is not None
        check_watch_start(after_revision, self._writer.revision, self._writer.compacted)

    @property
    def watchers(self) -> int:
        """Live watch subscriptions (for /metrics)."""
        return len(self._hub)


def private_files(path: Path) -> None:
    """The store holds every object, secrets included: its files are the server's alone (0600;
    SQLite gives ``-wal`` and ``-shm`` the mode of the database file). And every file SQLite
    will write must be writable now: an unwritable ``-shm`` is otherwise a SIGBUS later, with
    nothing logged."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
    except OSError as exc:
        raise Unavailable(f"sqlite store {path}: cannot open it for writing: {exc.strerror}") from exc
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            st = os.stat(p)
        except FileNotFoundError:
            continue
        if st.st_mode & 0o077:
            try:
                os.chmod(p, 0o600)
            except OSError as exc:
                raise Unavailable(f"sqlite store: {p} is readable by other users (mode {st.st_mode & 0o777:o}) "
                                  f"and cannot be made private: {exc.strerror}") from exc
        if not os.access(p, os.R_OK | os.W_OK):
            raise Unavailable(f"sqlite store: {p} is not writable by this process (uid {os.geteuid()}); "
                              "fix its owner or mode, or remove it if no server is running")
