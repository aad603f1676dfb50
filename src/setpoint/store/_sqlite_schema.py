"""Schema, connections and error mapping shared by the SQLite writer and readers.

Schema (version 1)::

    meta(name, value)                    revision, compacted, swept, schema
    log(revision PK, key, deleted, create_revision, value)   index (key, revision)
    current(key PK, create_revision, mod_revision)           WITHOUT ROWID

``log`` is the history: one row per write, keyed by its revision, so a watch replays it with a
primary-key range scan and a past-revision read is one seek in the (key, revision) index.

``current`` is the present, for the writer's existence and revision checks and for lists "now"
without grouping the history. It holds no value: the value lives once, in the ``log`` row that
``mod_revision`` points at, so a write stores its bytes once (the writer is the bottleneck and
readers run in parallel, so an extra primary-key lookup per row read is the cheaper side).
Compaction never removes the newest row of a live key, so the pointer always resolves.

A delete's log row carries the value the key had, because a DELETE event reports it and the row
it came from may be compacted away independently.

``meta.revision`` is stored, not derived from ``max(log.revision)``: after everything is deleted
and compacted the log can be empty, and the revision must still never go backwards.
``meta.swept`` records how far compaction has deleted rows, so an interrupted compaction resumes.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path

from setpoint.store.backend import Event, KeyValue, Unavailable

SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log (
    revision INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    create_revision INTEGER NOT NULL,
    value BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS log_key_revision ON log (key, revision);
CREATE TABLE IF NOT EXISTS current (
    key TEXT PRIMARY KEY,
    create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL
) WITHOUT ROWID;
-- A write is one row in log; these keep current and the revision counter in step with it
-- inside the same statement, so that a batch of writes is one INSERT (version 2).
-- A create that meets an existing key fails the whole statement (the writer relies on it).
CREATE TRIGGER IF NOT EXISTS log_create AFTER INSERT ON log
WHEN NEW.deleted = 0 AND NEW.create_revision = NEW.revision BEGIN
    INSERT INTO current VALUES (NEW.key, NEW.create_revision, NEW.revision);
END;
CREATE TRIGGER IF NOT EXISTS log_update AFTER INSERT ON log
WHEN NEW.deleted = 0 AND NEW.create_revision != NEW.revision BEGIN
    UPDATE current SET mod_revision = NEW.revision WHERE key = NEW.key;
END;
CREATE TRIGGER IF NOT EXISTS log_delete AFTER INSERT ON log WHEN NEW.deleted != 0 BEGIN
    DELETE FROM current WHERE key = NEW.key;
END;
CREATE TRIGGER IF NOT EXISTS log_revision AFTER INSERT ON log BEGIN
    UPDATE meta SET value = NEW.revision WHERE name = 'revision';
END;
INSERT OR IGNORE INTO meta (name, value) VALUES
    ('revision', 0), ('compacted', 0), ('swept', 0), ('schema', 2);
-- Version 1 differed only by the triggers, created above.
UPDATE meta SET value = 2 WHERE name = 'schema' AND value = 1;
"""

BUSY_TIMEOUT_MS = 10_000

_REASONS = {
    "SQLITE_FULL": "the disk is full",
    "SQLITE_IOERR": "an I/O error occurred",
    "SQLITE_CORRUPT": "the database file is corrupt",
    "SQLITE_NOTADB": "the file is not an SQLite database",
    "SQLITE_CANTOPEN": "the database file cannot be opened",
    "SQLITE_READONLY": "the database is read-only",
    "SQLITE_BUSY": "the database is locked by another process",
    "SQLITE_PERM": "permission denied",
}


def unavailable(action: str, path: Path, exc: BaseException) -> Unavailable:
    """Turn an sqlite3 (or OS) error into the contract's retryable error, naming the cause."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    reason = next((text for code, text in _REASONS.items() if name.startswith(code)), None)
    detail = f"{reason} ({exc})" if reason else str(exc) or type(exc).__name__
    err = Unavailable(f"sqlite store {path}: {action} failed: {detail}")
    err.__cause__ = exc
    return err


# Settings that decide durability or locking are the backend's, not the caller's.
RESERVED_PRAGMAS = frozenset({"synchronous", "journal_mode", "locking_mode", "fullfsync", "query_only"})


def connect_writer(path: Path, pragmas: Mapping[str, int]) -> sqlite3.Connection:
    """The one read-write connection: WAL with synchronous=FULL, so a commit is on disk when
    COMMIT returns (WAL lets readers proceed while the writer fsyncs)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch to WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous = FULL")
        # After a checkpoint resets the WAL, truncate the file back to this size.
        conn.execute("PRAGMA journal_size_limit = 67108864")
        for name, value in pragmas.items():
            conn.execute(f"PRAGMA {name} = {int(value):d}")
        conn.executescript(f"BEGIN IMMEDIATE; {SCHEMA} COMMIT;")
        version = conn.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"unknown schema version {version} (this setpoint knows {SCHEMA_VERSION})"
            )
    except BaseException:
        conn.close()
        raise
    return conn


def check_pragmas(pragmas: Mapping[str, int]) -> None:
    for name in pragmas:
        if not name.replace("_", "").isalnum() or name.lower() in RESERVED_PRAGMAS:
            raise ValueError(f"pragma {name!r} cannot be set on a setpoint store")


def connect_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection; each reader thread has its own."""
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, isolation_level=None, check_same_thread=True)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def read_meta(conn: sqlite3.Connection) -> dict[str, int]:
    return {str(name): int(value) for name, value in conn.execute("SELECT name, value FROM meta")}


def row_event(revision: int, key: str, deleted: int, create_revision: int, value: bytes) -> Event:
    """The event a ``log`` row records."""
    return Event("DELETE" if deleted else "PUT", KeyValue(key, value, create_revision, revision))


def sync_directory(directory: Path) -> None:
    """fsync the directory, so that a database file created at this start survives power loss
    (SQLite syncs the directory for its WAL file, not for the main file)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not every platform opens directories; nothing more can be done there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
