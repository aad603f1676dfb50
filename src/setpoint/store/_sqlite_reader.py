"""The SQLite backend's reads: a few threads with read-only connections, and the queries.

WAL mode lets readers run beside the writer, each in its own snapshot, so reads neither block
the event loop nor wait for commits. A read that names a revision reads ``meta`` and the rows in
one transaction, so its compaction and future-revision checks agree with the rows it returns.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from setpoint.store._sqlite_schema import connect_reader, read_meta, row_event, unavailable
from setpoint.store.backend import Compacted, Event, KeyValue, ListResult, StoreError, check_read_revision, prefix_end

ReadFn = Callable[[sqlite3.Connection], Any]
Settle = Callable[[Any, BaseException | None], None]

_STOP = None


class ReaderPool:
    """``size`` threads, each owning one connection, taking jobs from one queue. The caller
    bounds the number of jobs in flight, so the queue needs no bound of its own."""

    def __init__(
        self, path: Path, size: int, post: Callable[..., None], on_stopped: Callable[[], None]
    ) -> None:
        self._path = path
        self._post = post
        self._on_stopped = on_stopped
        self._queue: queue.SimpleQueue[tuple[ReadFn, Settle] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, name=f"setpoint-sqlite-reader-{i}", daemon=True)
            for i in range(size)
        ]
        self._running = size
        self._lock = threading.Lock()

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def submit(self, fn: ReadFn, settle: Settle) -> None:
        """Run ``fn(connection)`` on a reader thread; ``settle(result, error)`` runs on the loop."""
        self._queue.put((fn, settle))

    def stop(self) -> None:
        """Finish the queued reads, then stop every thread."""
        for _ in self._threads:
            self._queue.put(_STOP)

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while (job := self._queue.get()) is not _STOP:
                fn, settle = job
                try:
                    if conn is None:
                        conn = connect_reader(self._path)
                    result = fn(conn)
                except StoreError as exc:
                    self._post(settle, None, exc)
                except (sqlite3.Error, OSError) as exc:
                    if conn is not None:  # reconnect for the next read
                        with contextlib.suppress(sqlite3.Error):
                            conn.close()
                        conn = None
                    self._post(settle, None, unavailable("reading", self._path, exc))
                except Exception as exc:
                    self._post(settle, None, exc)
                else:
                    self._post(settle, result, None)
        finally:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            with self._lock:
                self._running -= 1
                last = self._running == 0
            if last:
                self._post(self._on_stopped)


@contextlib.contextmanager
def _snapshot(conn: sqlite3.Connection) -> Iterator[dict[str, int]]:
    """A read transaction; yields ``meta`` as of its snapshot."""
    conn.execute("BEGIN")
    try:
        yield read_meta(conn)
    finally:
        conn.execute("COMMIT")


def _check(revision: int, meta: dict[str, int]) -> None:
    check_read_revision(revision, meta["revision"], meta["compacted"])


def get(conn: sqlite3.Connection, key: str, revision: int) -> KeyValue | None:
    if revision == 0:
        row = conn.execute(
            "SELECT c.create_revision, c.mod_revision, l.value FROM current AS c"
            " JOIN log AS l ON l.revision = c.mod_revision WHERE c.key = ?",
            (key,),
        ).fetchone()
        return None if row is None else KeyValue(key, row[2], row[0], row[1])
    with _snapshot(conn) as meta:
        _check(revision, meta)
        row = conn.execute(
            "SELECT deleted, create_revision, revision, value FROM log WHERE key = ? AND revision <= ?"
            " ORDER BY revision DESC LIMIT 1",
            (key, revision),
        ).fetchone()
    if row is None or row[0]:
        return None
    return KeyValue(key, row[3], row[1], row[2])


def list_(conn: sqlite3.Connection, prefix: str, revision: int, limit: int, start_after: str) -> ListResult:
    end = prefix_end(prefix)
    bounds = " AND {k} < ?" if end is not None else ""
    args: list[object] = [prefix, start_after]
    if end is not None:
        args.append(end)
    with _snapshot(conn) as meta:
        if revision == 0:
            at = meta["revision"]
            sql = (
                "SELECT c.key, c.create_revision, c.mod_revision, l.value FROM current AS c"
                " JOIN log AS l ON l.revision = c.mod_revision"
                " WHERE c.key >= ? AND c.key > ?" + bounds.format(k="c.key") + " ORDER BY c.key LIMIT ?"
            )
        else:
            _check(revision, meta)
            at = revision
            # For each key in range, its newest row at or before the revision, unless a delete.
            # Walks the (key, revision) index in key order, so LIMIT stops it early.
            sql = (
                "SELECT l.key, l.create_revision, l.revision, l.value FROM log AS l"
                " WHERE l.key >= ? AND l.key > ?" + bounds.format(k="l.key") + " AND l.deleted = 0"
                " AND l.revision = (SELECT MAX(p.revision) FROM log AS p"
                " WHERE p.key = l.key AND p.revision <= ?)"
                " ORDER BY l.key LIMIT ?"
            )
            args.append(revision)
        args.append(limit + 1 if limit > 0 else -1)
        rows = conn.execute(sql, args).fetchall()
    more = limit > 0 and len(rows) > limit
    if more:
        del rows[limit:]
    return ListResult([KeyValue(k, v, c, m) for k, c, m, v in rows], at, more)


def history(conn: sqlite3.Connection, prefix: str, after: int, until: int, limit: int) -> list[Event]:
    """Events under ``prefix`` with after < revision <= until, oldest first."""
    end = prefix_end(prefix)
    sql = (
        "SELECT revision, key, deleted, create_revision, value FROM log WHERE revision > ? AND revision <= ?"
    )
    args: list[object] = [after, until]
    if prefix:
        sql += " AND key >= ?"
        args.append(prefix)
    if end is not None:
        sql += " AND key < ?"
        args.append(end)
    sql += " ORDER BY revision LIMIT ?"
    args.append(limit)
    with _snapshot(conn) as meta:
        if after < meta["compacted"]:
            raise Compacted(after, meta["compacted"])
        rows = conn.execute(sql, args).fetchall()
    return [row_event(*row) for row in rows]
