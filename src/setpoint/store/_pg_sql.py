"""The PostgreSQL backend's schema and statements, written once per schema name.

Schema (version 1), all tables in one PostgreSQL schema (``setpoint`` unless the store URL
names another, so several installations can share a database)::

    meta(id = 1, revision, version)           the revision counter: one row, locked by each write
    compaction(id = 1, compacted, swept)      how far history is forgotten, and how far rows are gone
    log(revision PK, key, deleted, create_revision, value)     index (key, revision DESC)
    current(key PK, create_revision, mod_revision)

As in the SQLite backend, ``log`` is the history (one row per write) and ``current`` the present
without values (the value lives once, in the log row that ``mod_revision`` points at). Keys use
the "C" collation, so PostgreSQL orders them by code point, as the contract (and Python) does.

``compaction`` is a row of its own, not columns of ``meta``: compaction locks it for each chunk,
and writers never touch it, so compaction never waits for writers nor writers for compaction.
"""

from __future__ import annotations

import re

SCHEMA_VERSION = 1

_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,47}")


def check_schema_name(name: str) -> str:
    if not _IDENT.fullmatch(name):
        raise ValueError(
            f"PostgreSQL schema name {name!r} must be lower-case letters, digits and '_' (at most 48)"
        )
    return name


class Statements:
    """Every statement the backend runs, with the schema name filled in."""

    def __init__(self, schema: str) -> None:
        s = f'"{check_schema_name(schema)}"'
        self.schema = schema
        self.channel = f"setpoint_{schema}"
        # A transaction-level advisory lock serialises concurrent schema creation by several
        # servers starting at once (CREATE ... IF NOT EXISTS is not safe against that alone).
        self.create = f"""
            SELECT pg_advisory_xact_lock(hashtext('setpoint schema ' || '{schema}'));
            CREATE SCHEMA IF NOT EXISTS {s};
            CREATE TABLE IF NOT EXISTS {s}.meta (
                id integer PRIMARY KEY CHECK (id = 1),
                revision bigint NOT NULL,
                version integer NOT NULL
            );
            CREATE TABLE IF NOT EXISTS {s}.compaction (
                id integer PRIMARY KEY CHECK (id = 1),
                compacted bigint NOT NULL,
                swept bigint NOT NULL
            );
            CREATE TABLE IF NOT EXISTS {s}.log (
                revision bigint PRIMARY KEY,
                key text COLLATE "C" NOT NULL,
                deleted boolean NOT NULL,
                create_revision bigint NOT NULL,
                value bytea NOT NULL
            ) WITH (autovacuum_vacuum_scale_factor = 0.05, autovacuum_vacuum_insert_scale_factor = 0.05);
            CREATE INDEX IF NOT EXISTS log_key_revision ON {s}.log (key, revision DESC);
            CREATE TABLE IF NOT EXISTS {s}.current (
                key text COLLATE "C" PRIMARY KEY,
                create_revision bigint NOT NULL,
                mod_revision bigint NOT NULL
            ) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.05);
            INSERT INTO {s}.meta VALUES (1, 0, {SCHEMA_VERSION}) ON CONFLICT (id) DO NOTHING;
            INSERT INTO {s}.compaction VALUES (1, 0, 0) ON CONFLICT (id) DO NOTHING;
        """
        self.version = f"SELECT version FROM {s}.meta WHERE id = 1"
        self.state = f"SELECT m.revision, k.compacted, k.swept FROM {s}.meta AS m, {s}.compaction AS k"
        self.revision = f"SELECT revision FROM {s}.meta WHERE id = 1"
        self.compacted = f"SELECT compacted FROM {s}.compaction WHERE id = 1"

        # -- writes: the lock on the meta row is what orders the revisions (see postgres.py) --
        self.lock = f"SELECT revision, pg_current_xact_id()::text FROM {s}.meta WHERE id = 1 FOR UPDATE"
        self.current_rows = f"""
            SELECT c.key, c.create_revision, c.mod_revision,
                   CASE WHEN c.key = ANY($2::text[]) THEN l.value END
            FROM {s}.current AS c JOIN {s}.log AS l ON l.revision = c.mod_revision
            WHERE c.key = ANY($1::text[])
        """
        # One round trip for the whole batch. The key sets of the upsert and the delete are
        # disjoint (the final state of each key), as data-modifying CTEs require.
        self.apply = f"""
            WITH l AS (
                INSERT INTO {s}.log (revision, key, deleted, create_revision, value)
                SELECT * FROM unnest($1::bigint[], $2::text[], $3::boolean[], $4::bigint[], $5::bytea[])
            ), u AS (
                INSERT INTO {s}.current (key, create_revision, mod_revision)
                SELECT * FROM unnest($6::text[], $7::bigint[], $8::bigint[])
                ON CONFLICT (key) DO UPDATE
                SET create_revision = EXCLUDED.create_revision, mod_revision = EXCLUDED.mod_revision
            ), d AS (
                DELETE FROM {s}.current WHERE key = ANY($9::text[])
            )
            UPDATE {s}.meta SET revision = $10::bigint WHERE id = 1
            RETURNING pg_notify('{self.channel}', $10::bigint::text)
        """
        self.xact_status = "SELECT pg_xact_status($1::text::xid8)"

        # -- reads ---------------------------------------------------------------------------
        self.get_now = f"""
            SELECT c.create_revision, c.mod_revision, l.value
            FROM {s}.current AS c JOIN {s}.log AS l ON l.revision = c.mod_revision
            WHERE c.key = $1
        """
        self.get_at = f"""
            SELECT m.revision, k.compacted, r.deleted, r.create_revision, r.revision, r.value
            FROM {s}.meta AS m CROSS JOIN {s}.compaction AS k
            LEFT JOIN LATERAL (
                SELECT deleted, create_revision, revision, value FROM {s}.log
                WHERE key = $1 AND revision <= $2 ORDER BY revision DESC LIMIT 1
            ) AS r ON true
        """
        # Lists: one statement each, so the revision reported and the rows agree (one snapshot).
        # $1 prefix, $2 start_after, $3 end of the prefix range (NULL: none), $4 limit (NULL: all).
        self.list_now = f"""
            SELECT m.revision, r.key, r.create_revision, r.mod_revision, r.value
            FROM {s}.meta AS m
            LEFT JOIN LATERAL (
                SELECT c.key, c.create_revision, c.mod_revision, l.value
                FROM {s}.current AS c JOIN {s}.log AS l ON l.revision = c.mod_revision
                WHERE c.key >= $1 AND c.key > $2 AND ($3::text IS NULL OR c.key < $3)
                ORDER BY c.key LIMIT $4
            ) AS r ON true
            ORDER BY r.key
        """
        # $5: the revision. For each key in range, its newest row at or before the revision,
        # unless that row is a delete.
        self.list_at = f"""
            SELECT m.revision, k.compacted, r.key, r.create_revision, r.revision, r.value
            FROM {s}.meta AS m CROSS JOIN {s}.compaction AS k
            LEFT JOIN LATERAL (
                SELECT * FROM (
                    SELECT DISTINCT ON (key) key, deleted, create_revision, revision, value
                    FROM {s}.log
                    WHERE key >= $1 AND key > $2 AND ($3::text IS NULL OR key < $3) AND revision <= $5
                    ORDER BY key, revision DESC
                ) AS newest
                WHERE NOT deleted ORDER BY key LIMIT $4
            ) AS r ON true
            ORDER BY r.key
        """
        # $1 after, $2 until (inclusive), $3 prefix, $4 end of the prefix range (NULL: none), $5 limit.
        self.history = f"""
            SELECT k.compacted, m.revision, r.revision, r.key, r.deleted, r.create_revision, r.value
            FROM {s}.meta AS m CROSS JOIN {s}.compaction AS k
            LEFT JOIN LATERAL (
                SELECT revision, key, deleted, create_revision, value FROM {s}.log
                WHERE revision > $1 AND revision <= $2 AND key >= $3 AND ($4::text IS NULL OR key < $4)
                ORDER BY revision LIMIT $5
            ) AS r ON true
            ORDER BY r.revision
        """

        # -- compaction: chunks, each its own short transaction --------------------------------
        self.raise_compacted = f"""
            UPDATE {s}.compaction SET compacted = GREATEST(compacted, $1) WHERE id = 1
            RETURNING compacted
        """
        self.lock_compaction = f"SELECT compacted, swept FROM {s}.compaction WHERE id = 1 FOR UPDATE"
        # Rows written in (lo, hi] supersede every older row of their key; deletes among them are
        # themselves no longer needed. Rows that nothing newer supersedes stay.
        self.sweep_superseded = f"""
            DELETE FROM {s}.log AS o USING {s}.log AS n
            WHERE n.revision > $1 AND n.revision <= $2 AND o.key = n.key AND o.revision < n.revision
        """
        self.sweep_deletes = f"DELETE FROM {s}.log WHERE revision > $1 AND revision <= $2 AND deleted"
        self.set_swept = f"UPDATE {s}.compaction SET swept = $1 WHERE id = 1"
