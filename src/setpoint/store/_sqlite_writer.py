"""The SQLite backend's one writer thread: group commit, revision assignment, compaction.

A durable commit costs an fsync, and the fsync costs the same for one row as for hundreds, so
throughput comes from putting many writes in one transaction. The writer never waits to gather a
batch: it takes whatever queued up while the previous commit was fsyncing (up to ``batch_max``),
applies the ops in order inside one transaction, commits once, and only then reports back. Under
light load a batch is one op and latency is one fsync; under heavy load batches grow by themselves.

Each op's checks run against the transaction, so they see the ops before it in the same batch; a
failed check fails that op alone and takes no revision. An SQLite error fails the whole batch
(nothing of it was committed) and the revision counter returns to where it was.

Compaction also runs here, in chunks of ``compaction_chunk`` log rows, one chunk per loop turn
between write batches, so a large compaction never holds the write lock for long.

Everything that crosses back to the event loop goes through ``post`` (call_soon_threadsafe).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol, TypeVar

from setpoint.store._core import Op, WriteOp
from setpoint.store._sqlite_schema import (
    BUSY_TIMEOUT_MS,
    connect_writer,
    read_meta,
    row_event,
    sync_directory,
    unavailable,
)
from setpoint.store.backend import (
    Event,
    KeyExists,
    KeyNotFound,
    KeyValue,
    RevisionMismatch,
    StoreError,
    Unavailable,
)

CREATE, UPDATE, DELETE = Op.CREATE, Op.UPDATE, Op.DELETE  # module constants: compared per op in the hot loop
_T = TypeVar("_T")

# Check the WAL file's size every this many commits; checkpoint it fully when it is too big.
_WAL_CHECK_EVERY = 256
# How long a full checkpoint may wait for readers (it holds up the write path meanwhile).
_CHECKPOINT_WAIT_MS = 100


class CompactJob:
    __slots__ = ("future", "target")

    def __init__(self, target: int, future: asyncio.Future[None] | None) -> None:
        self.target = target
        self.future = future  # None for a compaction resumed at start-up


class Batch:
    """What one commit did, handed to the event loop in one piece."""

    __slots__ = ("events", "ops", "outcomes", "revision")

    def __init__(
        self, ops: list[WriteOp], outcomes: list[KeyValue | StoreError], events: list[Event], revision: int
    ) -> None:
        self.ops = ops
        self.outcomes = outcomes
        self.events = events
        self.revision = revision


class WriterListener(Protocol):
    """Called on the event loop, in the order the writer posted them."""

    def writer_ready(self, error: StoreError | None) -> None: ...
    def batch_done(self, batch: Batch) -> None: ...
    def compaction_done(self, job: CompactJob, error: StoreError | None) -> None: ...
    def writer_stopped(self) -> None: ...


# Statements with one placeholder group per row: at most this many rows each (SQLite allows
# 32,766 variables; a log row takes 5).
_ROWS_PER_STATEMENT = 1000


def _chunks(items: list[_T], size: int = _ROWS_PER_STATEMENT) -> list[list[_T]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _plan_batch(
    conn: sqlite3.Connection, ops: list[WriteOp], base: int, *, read: bool = True
) -> tuple[list[KeyValue | StoreError], list[Event], list[tuple[int, str, int, int, bytes]]]:
    """Check ``ops`` in order against the stored state; return each op's outcome, the events and
    the log rows that carry them out (revisions from ``base + 1``). ``read=False`` takes every
    key for absent without looking (see :func:`_only_new_keys`).

    Why this way: pysqlite lets go of the interpreter lock for every statement step and must
    get it back afterwards, which under load means waiting for the event loop's thread. Three
    statements per write made a batch of 16 take ~2 ms, mostly waiting, while the event loop sat
    idle for want of answers. Here a batch costs two statements whatever its size: one reads
    the current state of every key it touches, and one INSERT of all its log rows, which the
    schema's triggers turn into the ``current`` and revision updates.
    """
    keys = list(dict.fromkeys(op.key for op in ops)) if read else []
    state: dict[str, tuple[int, int] | None] = {}  # key -> (create_revision, mod_revision)
    for chunk in _chunks(keys):
        marks = ",".join("?" * len(chunk))
        doc = conn.execute(
            "SELECT json_group_array(json_array(key, create_revision, mod_revision)) FROM current"
            f" WHERE key IN ({marks})", chunk,
        ).fetchone()[0]
        for key, create_rev, mod_rev in json.loads(doc):
            state[key] = (create_rev, mod_rev)
    # A delete reports the value it removes: for a key not written earlier in the batch, the
    # stored value of its current revision.
    stored: dict[int, bytes] = {}
    wanted = [cur[1] for op in ops if op.kind == DELETE and (cur := state.get(op.key)) is not None]
    for revs in _chunks(list(dict.fromkeys(wanted))):
        marks = ",".join("?" * len(revs))
        stored.update(conn.execute(f"SELECT revision, value FROM log WHERE revision IN ({marks})", revs))
    written: dict[str, bytes] = {}  # a key's value after the ops so far in this batch
    outcomes: list[KeyValue | StoreError] = []
    events: list[Event] = []
    rows: list[tuple[int, str, int, int, bytes]] = []
    rev = base
    for op in ops:
        key = op.key
        cur = state.get(key)
        if op.kind == CREATE:
            if cur is not None:
                outcomes.append(KeyExists(key))
                continue
            rev += 1
            rows.append((rev, key, 0, rev, op.value))
            state[key] = (rev, rev)
            written[key] = op.value
            kv = KeyValue(key, op.value, rev, rev)
            outcomes.append(kv)
            events.append(Event("PUT", kv))
            continue
        if cur is None:
            outcomes.append(KeyNotFound(key))
            continue
        create_rev, mod_rev = cur
        if op.expected and op.expected != mod_rev:
            outcomes.append(RevisionMismatch(key, op.expected, mod_rev))
            continue
        rev += 1
        if op.kind == UPDATE:
            rows.append((rev, key, 0, create_rev, op.value))
            state[key] = (create_rev, rev)
            written[key] = op.value
            kv = KeyValue(key, op.value, create_rev, rev)
            events.append(Event("PUT", kv))
        else:
            value = written.pop(key) if key in written else stored[mod_rev]
            rows.append((rev, key, 1, create_rev, value))
            state[key] = None
            kv = KeyValue(key, value, create_rev, rev)
            events.append(Event("DELETE", kv))
        outcomes.append(kv)
    return outcomes, events, rows


def _only_new_keys(ops: list[WriteOp]) -> bool:
    """Whether the batch is the common one, creates of distinct keys, that goes in one
    statement without reading first (a key that exists already fails the whole statement
    through the schema's create trigger, and the batch is then checked op by op)."""
    if len(ops) > _ROWS_PER_STATEMENT or any(op.kind != CREATE for op in ops):
        return False
    return len({op.key for op in ops}) == len(ops)


def _insert_log(conn: sqlite3.Connection, rows: list[tuple[int, str, int, int, bytes]]) -> None:
    """Write the rows: one statement, which is its own transaction and durable on return, or
    one transaction of several statements for batches too big for one."""
    chunks = _chunks(rows)
    if len(chunks) > 1:
        conn.execute("BEGIN IMMEDIATE")
    for chunk in chunks:
        conn.execute("INSERT INTO log VALUES " + ",".join(["(?,?,?,?,?)"] * len(chunk)),
                     [v for row in chunk for v in row])
    if len(chunks) > 1:
        conn.execute("COMMIT")


_STOP = object()
_Item = WriteOp | CompactJob | object


class Writer:
    def __init__(
        self,
        path: Path,
        listener: WriterListener,
        post: Callable[..., None],
        *,
        batch_max: int,
        compaction_chunk: int,
        wal_limit: int,
        pragmas: Mapping[str, int],
    ) -> None:
        self._path = path
        self._listener = listener
        self._post = post
        self._batch_max = batch_max
        self._chunk = compaction_chunk
        self._wal_limit = wal_limit
        self._pragmas = dict(pragmas)
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._conn: sqlite3.Connection | None = None
        self._thread = threading.Thread(target=self._run, name="setpoint-sqlite-writer", daemon=True)
        self._commits = 0
        # Written by the writer thread after each commit, read anywhere (int stores are atomic).
        self.revision = 0
        self.compacted = 0
        self.swept = 0  # how far compaction has deleted rows; behind ``compacted`` while one runs

    # -- called from the event loop -------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, item: WriteOp | CompactJob) -> None:
        self._queue.put(item)

    def stop(self) -> None:
        """Finish everything queued so far, then stop."""
        self._queue.put(_STOP)

    def drain(self) -> list[WriteOp | CompactJob]:
        """What is still queued once the thread has ended (only after an unexpected stop)."""
        items: list[WriteOp | CompactJob] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return items
            if isinstance(item, WriteOp | CompactJob):
                items.append(item)

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._conn = connect_writer(self._path, self._pragmas)
            self._load_meta(self._conn)
            sync_directory(self._path.parent)
        except (sqlite3.Error, OSError, ValueError, KeyError) as exc:
            self._drop_connection()
            self._post(self._listener.writer_ready, unavailable("opening", self._path, exc))
            return
        self._post(self._listener.writer_ready, None)
        jobs: deque[CompactJob] = deque()
        if self.swept < self.compacted:
            jobs.append(CompactJob(self.compacted, None))  # an interrupted compaction
        try:
            self._loop(jobs)
        finally:
            closed = Unavailable(f"sqlite store {self._path} is closed")
            for job in jobs:
                self._post(self._listener.compaction_done, job, closed)
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
            self._post(self._listener.writer_stopped)

    def _load_meta(self, conn: sqlite3.Connection) -> None:
        meta = read_meta(conn)
        self.revision = meta["revision"]
        self.compacted = meta["compacted"]
        self.swept = meta["swept"]

    def _loop(self, jobs: deque[CompactJob]) -> None:
        stopping = False
        while not stopping:
            ops: list[WriteOp] = []
            try:
                # Block for work unless a compaction is waiting for its next chunk.
                item: _Item | None = self._queue.get_nowait() if jobs else self._queue.get()
            except queue.Empty:
                item = None
            while item is not None:
                if isinstance(item, WriteOp):
                    ops.append(item)
                elif isinstance(item, CompactJob):
                    jobs.append(item)
                else:
                    stopping = True
                    break
                if len(ops) >= self._batch_max:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            if ops:
                self._commit(ops)
            if jobs and not stopping:
                self._compact_chunk(jobs)

    # -- writes -----------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:  # a previous error closed it; try again
            conn = connect_writer(self._path, self._pragmas)
            known = self.revision
            self._conn = conn
            self._load_meta(conn)
            if self.revision > known:
                # A batch reported as failed did reach the disk: publish it, or watchers would
                # miss those revisions.
                rows = conn.execute(
                    "SELECT revision, key, deleted, create_revision, value FROM log WHERE revision > ?"
                    " ORDER BY revision",
                    (known,),
                ).fetchall()
                events = [row_event(*row) for row in rows]
                self._post(self._listener.batch_done, Batch([], [], events, self.revision))
        return self._conn

    def _commit(self, ops: list[WriteOp]) -> None:
        base = self.revision
        rev = base
        outcomes: list[KeyValue | StoreError] = []
        events: list[Event] = []
        try:
            conn = self._connection()
            base = rev = self.revision
            # Creates of new keys go without reading first; should a key exist after all, the
            # statement fails, nothing is written, and the batch is checked op by op (this
            # thread is the only writer, so the state read then holds until the insert).
            for read in ((False, True) if _only_new_keys(ops) else (True,)):
                rev = base
                outcomes, events, rows = _plan_batch(conn, ops, base, read=read)
                if not rows:
                    break
                rev = rows[-1][0]
                try:
                    _insert_log(conn, rows)
                    break
                except sqlite3.IntegrityError:
                    if read:
                        raise
        except Exception as exc:
            if not self._committed_anyway(rev):
                outcomes = [unavailable("writing", self._path, exc) for _ in ops]
                events = []
                rev = base
        self.revision = rev
        self._post(self._listener.batch_done, Batch(ops, outcomes, events, rev))
        self._commits += 1
        if self._commits % _WAL_CHECK_EVERY == 0:
            self._checkpoint_if_big()

    def _committed_anyway(self, rev: int) -> bool:
        """After an error, find out whether the batch is in the database after all (COMMIT can
        fail after the data reached the WAL); if so, it counts as committed."""
        if not self._rollback() or self._conn is None or rev == self.revision:
            return False
        try:
            return read_meta(self._conn)["revision"] == rev
        except sqlite3.Error:
            self._drop_connection()
            return False

    def _rollback(self) -> bool:
        """End any open transaction. If the connection is unusable, drop it: the next batch
        reopens it and SQLite's recovery decides what was committed."""
        conn = self._conn
        if conn is None:
            return False
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            self._drop_connection()
            return False
        return True

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    # -- compaction ---------------------------------------------------------------------------

    def _compact_chunk(self, jobs: deque[CompactJob]) -> None:
        """One bounded step of the oldest compaction job.

        Compacting to R must leave, for each key, its newest row <= R unless that row is a
        delete. Rather than rescanning everything <= R, walk the rows written since the last
        compaction (``swept`` < revision <= R): each of them supersedes every older row of its
        key, and each delete among them is itself removable. Rows <= ``swept`` that no newer row
        supersedes are exactly the ones still needed. ``meta.compacted`` moves to R in the first
        chunk's transaction, before any row goes, so readers never see a half-compacted range
        they are allowed to read.
        """
        job = jobs[0]
        # Sweeping up to the recorded compacted revision is always allowed, and finishes the
        # work of an earlier compaction that failed half-way.
        target = max(job.target, self.compacted)
        try:
            conn = self._connection()
            lo = self.swept
            if lo >= target:
                hi = lo
            else:
                conn.execute("BEGIN IMMEDIATE")
                if target > self.compacted:
                    conn.execute("UPDATE meta SET value = ? WHERE name = 'compacted'", (target,))
                hi = conn.execute(
                    "SELECT MAX(revision) FROM (SELECT revision FROM log WHERE revision > ? AND revision <= ?"
                    " ORDER BY revision LIMIT ?)",
                    (lo, target, self._chunk),
                ).fetchone()[0]
                if hi is None or hi >= target:
                    hi = target
                conn.execute(
                    "DELETE FROM log WHERE revision IN (SELECT o.revision FROM log AS n JOIN log AS o"
                    " ON o.key = n.key AND o.revision < n.revision WHERE n.revision > ? AND n.revision <= ?)",
                    (lo, hi),
                )
                conn.execute("DELETE FROM log WHERE revision > ? AND revision <= ? AND deleted = 1", (lo, hi))
                conn.execute("UPDATE meta SET value = ? WHERE name = 'swept'", (hi,))
                conn.execute("COMMIT")
                self.compacted = max(self.compacted, target)
                self.swept = hi
        except Exception as exc:
            jobs.popleft()
            self._rollback()
            self._post(self._listener.compaction_done, job, unavailable("compacting", self._path, exc))
            return
        if hi >= target:
            jobs.popleft()
            self._checkpoint()
            self._post(self._listener.compaction_done, job, None)

    # -- WAL size ---------------------------------------------------------------------------------

    def _checkpoint(self) -> None:
        """Copy the WAL into the database and truncate the file. TRUNCATE waits for readers on
        older snapshots; wait only briefly, since writes queue up meanwhile. If a long read is
        in the way, the next checkpoint finishes the job."""
        conn = self._conn
        if conn is None:
            return
        with contextlib.suppress(sqlite3.Error):
            conn.execute(f"PRAGMA busy_timeout = {_CHECKPOINT_WAIT_MS}")
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def _checkpoint_if_big(self) -> None:
        """SQLite's automatic checkpoints are PASSIVE and never shrink the file; if readers kept
        them from reaching the end of the WAL, the file keeps growing. Truncate it past a limit."""
        try:
            size = os.stat(f"{self._path}-wal").st_size
        except OSError:
            return
        if size > self._wal_limit:
            self._checkpoint()
