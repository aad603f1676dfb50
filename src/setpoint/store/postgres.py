"""The PostgreSQL backend: several setpoint servers share one database (asyncpg).

**Revisions without gaps, in commit order.** kine takes the revision from an auto-increment id.
A sequence hands out numbers outside transactions, so a transaction that took 7 can commit after
the one that took 8; a watcher that read "everything after 6" sees 8 and, unless it waits and
fills the gap, skips 7 for good. Here the revision counter is one row (``meta``), and a write
transaction locks that row first (``SELECT … FOR UPDATE``), takes the next revisions from it, and
updates it before it commits. The next writer cannot read the counter until the previous one has
committed (PostgreSQL releases row locks after the commit is durable and visible), so
transactions commit in revision order, and every snapshot sees a contiguous prefix 1..N of the
log. A watcher reading ``revision > last`` can therefore never skip one: there are no gaps to
fill, no timeouts, and a rolled-back transaction leaves no hole (its counter update rolls back
too). The same row is why the revision never goes backwards across restarts: it is stored, not
derived from the log, which compaction may leave empty.

The price of that lock is that writes from all servers are serialised, so it must be held as
briefly as possible. Each server group-commits, like the SQLite backend: one writer task per
server takes whatever writes queued up while the previous batch ran (up to ``batch_max``, on
distinct keys) and sends them in one call of the server-side function ``write_batch`` (see
``_pg_sql``), which takes the lock, checks and applies every op in one set-based statement, and
commits: one round trip per batch. The lock is held for one commit per batch, and never while
an API server's event loop is busy elsewhere. Checks (exists, not found, expected revision) run
after the lock is taken, so they are exact: optimistic concurrency for callers, and no conflicts
or retries between transactions.

**Watches.** Each server keeps one :class:`~setpoint.store.fanout.WatchHub` fed in revision
order. Its own commits are published at once when they follow what the hub has; everything else
comes from the tailer, which reads the log by revision (``revision > last``) whenever it is
woken: by a NOTIFY that every write transaction sends at commit, by its own server's commit that
could not be published directly, or every ``poll_interval`` seconds. A lost notification (the
listening connection dropped, the server restarted) therefore only delays an event, never
loses it. Client watches then work exactly as on SQLite (:func:`fanout.watch_stream`: subscribe,
replay the log, go live).

**Compaction** runs in chunks of ``compaction_chunk`` revisions, each its own short transaction
that locks the ``compaction`` row, never the writers' ``meta`` row, so it never stalls writes,
and several servers compacting at once take turns. Rows are deleted as they are superseded;
autovacuum returns the space (the tables are created with aggressive autovacuum settings).
If the tailer ever finds that compaction passed it (a server cut off from the database for
longer than the history kept), its watchers end with :class:`Compacted` and resume by relisting.

**Errors.** A lost connection, PostgreSQL restarting or refusing connections, any database
error: :class:`Unavailable`, which callers may retry. Connections are re-opened on the next use.
A batch whose reply was cut off is looked up by its id once the backend reconnects, so a write
that did commit is acknowledged as such.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, Callable
from typing import Any

import asyncpg

from setpoint.store._core import Lifecycle, Op, Outcome, Slots, WriteOp, refusal, settle
from setpoint.store._pg_sql import Statements
from setpoint.store.backend import (
    Backend,
    Compacted,
    Event,
    FutureRevision,
    KeyValue,
    ListResult,
    StoreError,
    Unavailable,
    check_key,
    check_list_args,
    check_read_revision,
    prefix_end,
    storable,
)
from setpoint.store.fanout import WatchHub, watch_stream
from setpoint.tasks import cancel_and_wait

log = logging.getLogger(__name__)

def _key_range(prefix: str) -> tuple[str, str | None]:
    """The bounds of the keys under ``prefix`` as PostgreSQL text can take them. Text cannot
    hold NUL, and no stored key holds one (writes refuse it), so a prefix with NUL selects
    nothing, as it does on the other backends, instead of failing the query."""
    if "\x00" in prefix:
        return "\x01", "\x01"
    return prefix, prefix_end(prefix)


def _event(revision: int, key: str, deleted: bool, create_revision: int, value: bytes) -> Event:
    return Event("DELETE" if deleted else "PUT", KeyValue(key, bytes(value), create_revision, revision))


class PostgresBackend(Backend):
    """The :class:`Backend` contract over a PostgreSQL database (13 or newer).

    ``dsn`` is a libpq-style URL (``postgresql://user:password@host:port/database``); the tables
    live in the PostgreSQL schema ``schema``, created on first start.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "setpoint",
        pool_size: int = 4,
        batch_max: int = 512,
        max_pending_writes: int = 4096,
        watch_buffer: int = 10_000,
        watch_page: int = 1000,
        compaction_chunk: int = 4096,
        poll_interval: float = 1.0,
        connect_timeout: float = 5.0,
        statement_timeout: float = 30.0,
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        for name, value in (
            ("pool_size", pool_size),
            ("batch_max", batch_max),
            ("max_pending_writes", max_pending_writes),
            ("watch_buffer", watch_buffer),
            ("watch_page", watch_page),
            ("compaction_chunk", compaction_chunk),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1")
        if poll_interval <= 0 or connect_timeout <= 0 or statement_timeout <= 0:
            raise ValueError("poll_interval, connect_timeout and statement_timeout must be positive")
        self.dsn = dsn
        self.sql = Statements(schema)
        self.on_commit = on_commit
        self._pool_size = pool_size
        self._batch_max = batch_max
        self._max_pending_writes = max_pending_writes
        self._watch_buffer = watch_buffer
        self._watch_page = watch_page
        self._chunk = compaction_chunk
        self._poll_interval = poll_interval
        self._connect_timeout = connect_timeout
        # Client-side bound on every statement: a connection that died without a word (the
        # server's host gone) fails the call instead of hanging it.
        self._command_timeout = statement_timeout + 5
        self._server_settings = {
            "application_name": "setpoint",
            "statement_timeout": str(int(statement_timeout * 1000)),
        }
        self._hub = WatchHub(watch_buffer)
        self._life = Lifecycle(f"postgresql store (schema {schema})")
        self._pool: Any = None
        self._writer_conn: Any = None
        self._queue: asyncio.Queue[WriteOp | None] = asyncio.Queue()
        self._write_slots = Slots(max_pending_writes)
        self._writer_task: asyncio.Task[None] | None = None
        self._tailer_task: asyncio.Task[None] | None = None
        self._resume_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._published = asyncio.Event()  # set whenever the hub's revision moves
        self._compacted = 0  # the newest compacted revision this server knows of
        self._compaction_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"PostgresBackend(schema={self.sql.schema!r})"

    @property
    def _where(self) -> str:
        return self._life.where

    def _unavailable(self, action: str, exc: BaseException) -> Unavailable:
        detail = str(exc) or type(exc).__name__
        err = Unavailable(f"{self._where}: {action} failed: {detail}")
        err.__cause__ = exc
        return err

    # -- lifecycle ---------------------------------------------------------------------------

    async def _connect(self) -> Any:
        return await asyncpg.connect(
            self.dsn,
            timeout=self._connect_timeout,
            command_timeout=self._command_timeout,
            server_settings=self._server_settings,
        )

    async def start(self) -> None:
        self._life.starting("PostgresBackend")
        try:
            conn = await self._connect()
            try:
                async with conn.transaction():
                    await conn.execute(self.sql.create)
                version = await conn.fetchval(self.sql.version)
                if version != 1:
                    raise Unavailable(f"{self._where}: unknown schema version {version}")
                revision, compacted, swept = await conn.fetchrow(self.sql.state)
            finally:
                await conn.close()
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self._pool_size,
                timeout=self._connect_timeout,
                command_timeout=self._command_timeout,
                server_settings=self._server_settings,
            )
        except StoreError:
            self._life.state = "closed"
            raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            self._life.state = "closed"
            raise self._unavailable("opening", exc) from exc
        self._hub.revision = revision
        self._compacted = compacted
        self._life.state = "open"
        self._writer_task = asyncio.create_task(self._writer(), name="setpoint-pg-writer")
        self._tailer_task = asyncio.create_task(self._tailer(), name="setpoint-pg-tailer")
        if compacted > swept:  # an interrupted compaction: finish it in the background
            self._resume_task = asyncio.create_task(self._resume_compaction(), name="setpoint-pg-compaction")

    async def _resume_compaction(self) -> None:
        with contextlib.suppress(StoreError):
            await self._sweep()

    async def close(self) -> None:
        await self._life.close(self._finish_close)

    async def _finish_close(self) -> None:
        self._queue.put_nowait(None)  # the writer commits what is queued before it, then stops
        if self._writer_task is not None:
            await self._writer_task
        for task in (self._tailer_task, self._resume_task):
            await cancel_and_wait(task)
        self._hub.close(self._life.closed_error())
        if self._writer_conn is not None:
            with contextlib.suppress(Exception):
                await self._writer_conn.close(timeout=2)
            self._writer_conn = None
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), 5)
            except (Exception, TimeoutError):
                self._pool.terminate()

    def _ensure_open(self) -> None:
        self._life.ensure_open()

    # -- writes -----------------------------------------------------------------------------

    async def _write(self, kind: Op, key: str, value: bytes, expected: int) -> KeyValue:
        self._ensure_open()
        check_key(key)
        await self._write_slots.take()  # given back by the writer, also if this caller is cancelled
        if not self._life.is_open:
            self._write_slots.give()
            self._ensure_open()
        fut: asyncio.Future[KeyValue] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(WriteOp(kind, key, value, expected, fut))
        return await fut

    async def create(self, key: str, value: bytes) -> KeyValue:
        return await self._write(Op.CREATE, key, bytes(value), 0)

    async def update(self, key: str, value: bytes, expected_revision: int = 0) -> KeyValue:
        return await self._write(Op.UPDATE, key, bytes(value), expected_revision)

    async def delete(self, key: str, expected_revision: int = 0) -> KeyValue:
        return await self._write(Op.DELETE, key, b"", expected_revision)

    async def _writer(self) -> None:
        """Group commit: whatever queued up while the previous batch ran, up to ``batch_max`` ops
        on distinct keys (an op on a key already in the batch waits for the next one, since
        ``write_batch`` checks every op against the state before the batch)."""
        held: WriteOp | None = None
        stopping = False
        while not stopping or held is not None:
            op = held if held is not None else await self._queue.get()
            held = None
            ops: list[WriteOp] = []
            keys: set[str] = set()
            while op is not None:
                if op.key in keys:
                    held = op
                    break
                ops.append(op)
                keys.add(op.key)
                if len(ops) >= self._batch_max or self._queue.empty():
                    break
                op = self._queue.get_nowait()
            else:
                stopping = True
            if ops:
                await self._commit(ops)
        # Anything queued after the stop marker is refused.
        closed = self._life.closed_error()
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                self._settle([item], [closed])

    def _settle(self, ops: list[WriteOp], outcomes: list[KeyValue | StoreError]) -> None:
        for _ in ops:
            self._write_slots.give()
        settle(ops, outcomes)

    async def _writer_connection(self) -> Any:
        conn = self._writer_conn
        if conn is None or conn.is_closed():
            self._writer_conn = None
            conn = self._writer_conn = await self._connect()
        return conn

    def _drop_writer_connection(self) -> None:
        if self._writer_conn is not None:
            self._writer_conn.terminate()
            self._writer_conn = None

    async def _commit(self, ops: list[WriteOp]) -> None:
        batch = uuid.uuid4()
        sent = False
        try:
            conn = await self._writer_connection()
            sent = True
            rows = await conn.fetch(
                self.sql.write_batch,
                batch,
                [int(op.kind) for op in ops],
                [op.key for op in ops],
                [op.value for op in ops],
                [op.expected for op in ops],
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._drop_writer_connection()
            error = self._unavailable("writing", exc)
            found = await self._lost_reply(batch, ops, error) if sent else None
            if found is None:
                self._settle(ops, [error] * len(ops))
                return
            outcomes, events = found
        else:
            outcomes, events = self._outcomes(ops, rows)
        self._settle(ops, outcomes)
        if events:
            self._publish_own(events)
        if self.on_commit is not None:
            self.on_commit(len(ops))

    @staticmethod
    def _outcomes(ops: list[WriteOp], rows: list[Any]) -> tuple[list[KeyValue | StoreError], list[Event]]:
        outcomes: list[KeyValue | StoreError] = []
        events: list[Event] = []
        for op, (_, outcome, create_rev, mod_rev, old) in zip(ops, rows, strict=True):
            if outcome == Outcome.PUT:
                kv = KeyValue(op.key, op.value, create_rev, mod_rev)
                events.append(Event("PUT", kv))
            elif outcome == Outcome.DELETED:
                kv = KeyValue(op.key, bytes(old), create_rev, mod_rev)
                events.append(Event("DELETE", kv))
            else:
                outcomes.append(refusal(outcome, op.key, op.expected, mod_rev))
                continue
            outcomes.append(kv)
        return outcomes, events

    async def _lost_reply(
        self, batch: uuid.UUID, ops: list[WriteOp], error: Unavailable
    ) -> tuple[list[KeyValue | StoreError], list[Event]] | None:
        """The connection broke with a batch in flight: did it commit? Asked on a new connection
        (``batch_committed`` waits for the revision lock, so the old transaction has ended by
        then). If it did, its ops are acknowledged from the log; the ops it did not write get
        ``error``, since why they failed is not recorded."""
        try:
            conn = await self._writer_connection()
            found = await conn.fetchrow(self.sql.batch_committed, batch)
            if found is None:
                return None
            rows = await conn.fetch(self.sql.batch_rows, found[0], found[1])
        except Exception:
            self._drop_writer_connection()
            return None
        log.info("%s: a batch whose reply was lost did commit (revisions %d-%d)", self._where, found[0], found[1])
        events = [_event(*row) for row in rows]
        by_key = {e.kv.key: e for e in events}
        outcomes: list[KeyValue | StoreError] = [by_key[op.key].kv if op.key in by_key else error for op in ops]
        return outcomes, events

    # -- publishing --------------------------------------------------------------------------

    def _publish_own(self, events: list[Event]) -> None:
        if self._hub.revision == events[0].revision - 1:
            self._publish(events)
        elif self._hub.revision < events[0].revision:
            self._wake.set()  # others' writes came first: the tailer reads them all in order

    def _publish(self, events: list[Event]) -> None:
        self._hub.publish(events)
        self._published.set()

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        try:
            if int(payload) <= self._hub.revision:
                return  # already published (typically this server's own commit)
        except ValueError:
            pass
        self._wake.set()

    async def _tailer(self) -> None:
        """Reads the log after what the hub has, on every wake-up and every poll interval."""
        conn: Any = None
        try:
            while True:
                try:
                    if conn is None or conn.is_closed():
                        conn = None
                        conn = await self._connect()
                        await conn.add_listener(self.sql.channel, self._on_notify)
                    self._wake.clear()
                    while await self._tail_once(conn):
                        pass
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("%s: reading the log for watchers failed (%s); retrying", self._where, exc)
                    if conn is not None:
                        conn.terminate()
                        conn = None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_interval):  # not wait_for: see setpoint.tasks
                        await self._wake.wait()
        finally:
            if conn is not None:
                conn.terminate()

    async def _tail_once(self, conn: Any) -> bool:
        """Publish one page of the log after the hub's revision; True when there may be more."""
        last = self._hub.revision
        rows = await conn.fetch(self.sql.history, last, 2**62, "", None, self._watch_page)
        if not rows:
            return False
        compacted, current = rows[0][0], rows[0][1]
        self._compacted = max(self._compacted, compacted)
        if last < compacted:
            # Compaction passed this server while it was cut off: the rows after ``last`` are
            # no longer all there. End every watch (they resume and relist) and start afresh.
            log.warning("%s: history after revision %d was compacted; watchers relist", self._where, last)
            old, self._hub = self._hub, WatchHub(self._watch_buffer, current)
            old.close(Compacted(last, compacted))
            self._published.set()
            return False
        last = self._hub.revision  # the writer may have published while the query ran
        events = [_event(*row[2:]) for row in rows if row[2] is not None and row[2] > last]
        if events:
            self._publish(events)
        return len(rows) >= self._watch_page and rows[-1][2] is not None

    # -- compaction -------------------------------------------------------------------------

    async def compact(self, revision: int) -> None:
        self._ensure_open()
        async with self._conn("compacting") as conn:
            current = await conn.fetchval(self.sql.revision)
            if revision > current:
                raise FutureRevision(revision, current)
            self._compacted = max(self._compacted, await conn.fetchval(self.sql.raise_compacted, revision))
        await self._sweep()

    async def _sweep(self) -> None:
        """Delete the rows compaction made unnecessary, one chunk per transaction, until swept."""
        async with self._compaction_lock:
            while True:
                async with self._conn("compacting") as conn, conn.transaction():
                    compacted, swept = await conn.fetchrow(self.sql.lock_compaction)
                    if swept >= compacted:
                        return
                    hi = min(swept + self._chunk, compacted)
                    await conn.execute(self.sql.sweep_superseded, swept, hi)
                    await conn.execute(self.sql.sweep_deletes, swept, hi)
                    await conn.execute(self.sql.set_swept, hi)
                    await conn.execute(self.sql.sweep_batches, hi)

    # -- reads ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _conn(self, action: str) -> Any:
        """A pooled connection; database and connection errors become Unavailable."""
        self._ensure_open()
        try:
            async with self._pool.acquire(timeout=self._connect_timeout) as conn:
                yield conn
        except StoreError:
            raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise self._unavailable(action, exc) from exc

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        """Run a read; once more on a fresh connection if the pooled one had gone stale (a
        restarted server leaves every pooled connection dead)."""
        for attempt in (1, 2):
            try:
                async with self._conn("reading") as conn:
                    rows: list[Any] = await conn.fetch(sql, *args)
                    return rows
            except Unavailable as exc:
                if attempt == 2 or not _is_connection_error(exc.__cause__):
                    raise
        raise AssertionError("unreachable")

    async def current_revision(self) -> int:
        rows = await self._fetch(self.sql.revision)
        return int(rows[0][0])

    async def compacted_revision(self) -> int:
        rows = await self._fetch(self.sql.compacted)
        self._compacted = max(self._compacted, int(rows[0][0]))
        return self._compacted

    async def get(self, key: str, revision: int = 0) -> KeyValue | None:
        check_list_args(revision)
        if not storable(key):
            key = ""  # matches no row: no stored key breaks the rule
        if revision == 0:
            rows = await self._fetch(self.sql.get_now, key)
            if not rows:
                return None
            create_rev, mod_rev, value = rows[0]
            return KeyValue(key, bytes(value), create_rev, mod_rev)
        rows = await self._fetch(self.sql.get_at, key, revision)
        current, compacted, deleted, create_rev, mod_rev, value = rows[0]
        check_read_revision(revision, current, compacted)
        if deleted is None or deleted:
            return None
        return KeyValue(key, bytes(value), create_rev, mod_rev)

    async def list(
        self, prefix: str, *, revision: int = 0, limit: int = 0, start_after: str = ""
    ) -> ListResult:
        check_list_args(revision, limit)
        prefix, end = _key_range(prefix)
        start_after = start_after.partition("\x00")[0]  # the same bound for keys without NUL
        n = limit + 1 if limit > 0 else None
        if revision == 0:
            rows = await self._fetch(self.sql.list_now, prefix, start_after, end, n)
            at = rows[0][0]
            items = [KeyValue(k, bytes(v), c, m) for _, k, c, m, v in rows if k is not None]
        else:
            rows = await self._fetch(self.sql.list_at, prefix, start_after, end, n, revision)
            check_read_revision(revision, rows[0][0], rows[0][1])
            at = revision
            items = [KeyValue(k, bytes(v), c, m) for _, _, k, c, m, v in rows if k is not None]
        more = limit > 0 and len(items) > limit
        if more:
            del items[limit:]
        return ListResult(items, at, more)

    # -- watch ------------------------------------------------------------------------------

    async def _history(self, prefix: str, after: int, until: int, limit: int) -> builtins.list[Event]:
        rows = await self._fetch(self.sql.history, after, until, *_key_range(prefix), limit)
        compacted = rows[0][0]
        if after < compacted:
            self._compacted = max(self._compacted, compacted)
            raise Compacted(after, compacted)
        return [_event(*row[2:]) for row in rows if row[2] is not None]

    def watch(self, prefix: str, after_revision: int) -> AsyncGenerator[builtins.list[Event], None]:
        """See :meth:`Backend.watch`. When the backend closes, the watch raises Unavailable."""
        return self._watch(prefix, after_revision)

    async def _watch(self, prefix: str, after: int) -> AsyncGenerator[builtins.list[Event], None]:
        self._ensure_open()
        if after > self._hub.revision:
            await self._catch_up(after)
        stream = watch_stream(self._hub, prefix, after, self._history, self._watch_page, check=self._check_watch)
        async with contextlib.aclosing(stream):
            async for batch in stream:
                yield batch

    def _check_watch(self, after_revision: int) -> None:
        self._ensure_open()
        if after_revision < self._compacted:
            raise Compacted(after_revision, self._compacted)

    async def _catch_up(self, revision: int, within: float = 30.0) -> None:
        """Wait until the hub has published ``revision`` (written through another server, say);
        FutureRevision if the database has not reached it."""
        current = await self.current_revision()
        if revision > current:
            raise FutureRevision(revision, current)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self._hub.revision < revision:
            self._ensure_open()
            self._published.clear()
            self._wake.set()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise Unavailable(f"{self._where}: watchers are behind revision {revision}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, self._poll_interval)):  # not wait_for: see setpoint.tasks
                    await self._published.wait()

    @property
    def watchers(self) -> int:
        """Live watch subscriptions (for /metrics)."""
        return len(self._hub)


def _is_connection_error(exc: BaseException | None) -> bool:
    return isinstance(
        exc,
        asyncpg.InterfaceError
        | asyncpg.exceptions.ConnectionDoesNotExistError
        | asyncpg.exceptions.ConnectionFailureError
        | asyncpg.exceptions.AdminShutdownError
        | asyncpg.exceptions.CannotConnectNowError
        | OSError,
    )

