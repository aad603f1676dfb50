"""The PostgreSQL backend's schema and statements, written once per schema name.

Schema (version 1), all tables in one PostgreSQL schema (``setpoint`` unless the store URL
names another, so several installations can share a database)::

    meta(id = 1, revision, version)           the revision counter: one row, locked by each write
    compaction(id = 1, compacted, swept)      how far history is forgotten, and how far rows are gone
    log(revision PK, key, deleted, create_revision, value)     index (key, revision DESC)
    current(key PK, create_revision, mod_revision)
    batches(id PK, first_revision, last_revision)             which batch took which revisions

As in the SQLite backend, ``log`` is the history (one row per write) and ``current`` the present
without values (the value lives once, in the log row that ``mod_revision`` points at). Keys use
the "C" collation, so PostgreSQL orders them by code point, as the contract (and Python) does.

``compaction`` is a row of its own, not columns of ``meta``: compaction locks it for each chunk,
and writers never touch it, so compaction never waits for writers nor writers for compaction.

``batches`` lets a server whose connection broke while a batch was committing find out whether
it did commit (it gave the batch an id); compaction forgets the ids with the history.

Writes go through the server-side function ``write_batch`` (see :func:`write_functions`): one
round trip per batch, so the lock on the revision counter is held for the time PostgreSQL takes,
never for a busy API server's event loop to get round to its next statement.
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
            CREATE TABLE IF NOT EXISTS {s}.batches (
                id uuid PRIMARY KEY,
                first_revision bigint NOT NULL,
                last_revision bigint NOT NULL
            );
            INSERT INTO {s}.meta VALUES (1, 0, {SCHEMA_VERSION}) ON CONFLICT (id) DO NOTHING;
            INSERT INTO {s}.compaction VALUES (1, 0, 0) ON CONFLICT (id) DO NOTHING;
        """ + write_functions(s, self.channel)
        self.version = f"SELECT version FROM {s}.meta WHERE id = 1"
        self.state = f"SELECT m.revision, k.compacted, k.swept FROM {s}.meta AS m, {s}.compaction AS k"
        self.revision = f"SELECT revision FROM {s}.meta WHERE id = 1"
        self.compacted = f"SELECT compacted FROM {s}.compaction WHERE id = 1"

        # -- writes: one call per batch, so the revision lock is held only inside PostgreSQL ----
        self.write_batch = (
            f"SELECT * FROM {s}.write_batch($1::uuid, $2::smallint[], $3::text[], $4::bytea[], $5::bigint[])"
        )
        self.batch_committed = f"SELECT * FROM {s}.batch_committed($1::uuid)"
        self.batch_rows = f"""
            SELECT revision, key, deleted, create_revision, value FROM {s}.log
            WHERE revision >= $1 AND revision <= $2 ORDER BY revision
        """

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
        self.sweep_batches = f"DELETE FROM {s}.batches WHERE last_revision <= $1"


def write_functions(s: str, channel: str) -> str:
    """The write path as two server-side functions (replaced at every start, so an upgrade of
    setpoint upgrades them).

    ``write_batch`` applies a batch of writes to distinct keys: it locks the revision counter,
    then (in a new statement, so with a snapshot taken after the lock: every write committed
    before it is visible) checks every op against the present, numbers the ones that pass, writes
    them, moves the counter, records the batch, and notifies listeners. It returns one row per op:
    ``outcome`` 0 written (PUT), 1 written (DELETE, ``value`` is the value it had), 2 the key
    exists, 3 the key does not exist, 4 the key's revision is not the expected one
    (``mod_revision`` is the actual one).

    ``batch_committed`` tells, after a reply was lost, whether a batch committed: it waits for the
    counter's lock first, so a transaction still committing has finished by the time it looks.

    Each op finds its key in ``current`` by one primary-key probe, written so that no plan can do
    otherwise (a lateral subquery that is not flattened, ``= ANY`` for the deletes). PL/pgSQL keeps
    one plan per connection, made for an array of unknown length (100 rows by the planner's
    guess) while ``current`` was small: with a plain join that plan was a hash join scanning all
    of ``current`` for every batch, 17 million rows read in 6 s of the two-server benchmark, and
    more the more objects there are.
    """
    return f"""
        CREATE OR REPLACE FUNCTION {s}.write_batch(
            p_batch uuid, p_kinds smallint[], p_keys text[], p_values bytea[], p_expected bigint[]
        ) RETURNS TABLE (r_ord bigint, r_outcome smallint, r_create bigint, r_mod bigint, r_value bytea)
        LANGUAGE plpgsql AS $fn$
        #variable_conflict use_column
        DECLARE
            v_base bigint;
            v_top bigint;
        BEGIN
            SELECT m.revision INTO v_base FROM {s}.meta AS m WHERE m.id = 1 FOR UPDATE;
            RETURN QUERY
            WITH ops AS (
                SELECT o.ord, o.kind, o.key, o.val, o.exp, c.create_revision AS cr, c.mod_revision AS mr
                FROM unnest(p_kinds, p_keys, p_values, p_expected) WITH ORDINALITY AS o(kind, key, val, exp, ord)
                LEFT JOIN LATERAL (
                    SELECT cur.create_revision, cur.mod_revision FROM {s}.current AS cur
                    WHERE cur.key = o.key OFFSET 0
                ) AS c ON true
            ), decided AS (
                SELECT ops.*, (CASE
                    WHEN ops.kind = 0 AND ops.mr IS NOT NULL THEN 2
                    WHEN ops.kind <> 0 AND ops.mr IS NULL THEN 3
                    WHEN ops.kind <> 0 AND ops.exp <> 0 AND ops.exp <> ops.mr THEN 4
                    ELSE 0 END)::smallint AS err
                FROM ops
            ), numbered AS (
                SELECT d.*, v_base + sum(CASE WHEN d.err = 0 THEN 1 ELSE 0 END) OVER (ORDER BY d.ord) AS rev
                FROM decided AS d
            ), written AS (
                SELECT n.ord, n.kind, n.key, n.rev,
                       CASE WHEN n.kind = 0 THEN n.rev ELSE n.cr END AS cr,
                       CASE WHEN n.kind = 2 THEN (SELECT l.value FROM {s}.log AS l WHERE l.revision = n.mr)
                            ELSE n.val END AS val
                FROM numbered AS n WHERE n.err = 0
            ), ins AS (
                INSERT INTO {s}.log (revision, key, deleted, create_revision, value)
                SELECT w.rev, w.key, w.kind = 2, w.cr, w.val FROM written AS w
            ), ups AS (
                INSERT INTO {s}.current (key, create_revision, mod_revision)
                SELECT w.key, w.cr, w.rev FROM written AS w WHERE w.kind <> 2
                ON CONFLICT (key) DO UPDATE
                SET create_revision = EXCLUDED.create_revision, mod_revision = EXCLUDED.mod_revision
            ), del AS (
                DELETE FROM {s}.current AS c
                WHERE c.key = ANY (ARRAY(SELECT w.key FROM written AS w WHERE w.kind = 2))
            )
            SELECT n.ord,
                   (CASE WHEN n.err <> 0 THEN n.err WHEN n.kind = 2 THEN 1 ELSE 0 END)::smallint,
                   w.cr,
                   CASE WHEN n.err = 4 THEN n.mr ELSE w.rev END,
                   CASE WHEN n.kind = 2 THEN w.val END
            FROM numbered AS n LEFT JOIN written AS w ON w.ord = n.ord
            ORDER BY n.ord;
            SELECT coalesce(max(l.revision), v_base) INTO v_top FROM {s}.log AS l WHERE l.revision > v_base;
            IF v_top > v_base THEN
                UPDATE {s}.meta SET revision = v_top WHERE id = 1;
                INSERT INTO {s}.batches VALUES (p_batch, v_base + 1, v_top);
                PERFORM pg_notify('{channel}', v_top::text);
            END IF;
        END
        $fn$;

        CREATE OR REPLACE FUNCTION {s}.batch_committed(p_batch uuid)
        RETURNS TABLE (r_first bigint, r_last bigint)
        LANGUAGE plpgsql AS $fn$
        BEGIN
            PERFORM 1 FROM {s}.meta AS m WHERE m.id = 1 FOR UPDATE;
            RETURN QUERY SELECT b.first_revision, b.last_revision FROM {s}.batches AS b WHERE b.id = p_batch;
        END
        $fn$;
    """
