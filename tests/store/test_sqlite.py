"""The SQLite backend: the conformance suite, plus what only SQLite has (group commit, the WAL
file, crash safety, disk errors)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from setpoint.store import (
    Backend,
    KeyExists,
    KeyValue,
    RevisionMismatch,
    SQLiteBackend,
    Unavailable,
    open_backend,
)

from .conformance import BackendConformance, aclose, assert_contiguous, collect, wait_until

CRASH_WRITER = Path(__file__).with_name("crash_writer.py")


class SQLiteHarness:
    watch_buffer = 512

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def open(self, name: str = "main") -> Backend:
        # A small history page so the suite's watches cross page boundaries.
        backend = SQLiteBackend(self.directory / f"{name}.db", watch_buffer=self.watch_buffer, watch_page=64)
        await backend.start()
        return backend


class TestSQLiteConformance(BackendConformance):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> SQLiteHarness:
        return SQLiteHarness(tmp_path)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteBackend]:
    backend = SQLiteBackend(tmp_path / "state.db")
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


def file_size(path: Path) -> int:
    return path.stat().st_size


def log_rows(path: Path) -> int:
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM log").fetchone()[0])
    finally:
        conn.close()


# -- group commit -------------------------------------------------------------------------------


async def test_group_commit_batches_concurrent_writes(tmp_path: Path) -> None:
    sizes: list[int] = []
    backend = SQLiteBackend(tmp_path / "gc.db", on_commit=sizes.append)
    await backend.start()
    try:
        await asyncio.gather(*(backend.create(f"/g/{i}", b"x") for i in range(300)))
        stats = backend.stats
        assert stats.ops == stats.writes == 300
        assert stats.max_batch > 1
        assert stats.commits < stats.ops  # far fewer fsyncs than writes
        assert sum(sizes) == 300 and len(sizes) == stats.commits
        # A failing check fails only its op; its batch-mates commit.
        results = await asyncio.gather(
            *(backend.create(f"/g/{i}", b"y") for i in range(295, 305)), return_exceptions=True
        )
        assert [isinstance(r, Exception) for r in results] == [True] * 5 + [False] * 5
        assert await backend.current_revision() == 305
    finally:
        await backend.close()


async def test_one_key_written_many_times_at_once(store: SQLiteBackend) -> None:
    """Writes to one key sent together go into one batch and take effect in the order sent:
    each sees the ones before it, as if they had been sent one by one."""
    kv = await store.create("/seq/k", b"0")
    results = await asyncio.gather(
        store.update("/seq/k", b"1", expected_revision=kv.mod_revision),
        store.update("/seq/k", b"2", expected_revision=kv.mod_revision),  # stale by now
        store.delete("/seq/k"),
        store.create("/seq/k", b"3"),
        store.create("/seq/k", b"4"),  # exists again
        store.update("/seq/k", b"5"),
        return_exceptions=True,
    )
    one, stale, gone, again, exists, five = results
    assert isinstance(one, KeyValue) and one.mod_revision == kv.mod_revision + 1
    assert isinstance(stale, RevisionMismatch)
    assert isinstance(gone, KeyValue) and gone.value == b"1" and gone.mod_revision == one.mod_revision + 1
    assert isinstance(again, KeyValue) and again.create_revision == again.mod_revision == gone.mod_revision + 1
    assert isinstance(exists, KeyExists)
    assert isinstance(five, KeyValue) and five.create_revision == again.mod_revision
    assert await store.get("/seq/k") == five
    assert await store.current_revision() == five.mod_revision == kv.mod_revision + 4
    assert store.stats.max_batch >= 6  # they did share a batch


V1_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE log (revision INTEGER PRIMARY KEY, key TEXT NOT NULL, deleted INTEGER NOT NULL,
                  create_revision INTEGER NOT NULL, value BLOB NOT NULL);
CREATE INDEX log_key_revision ON log (key, revision);
CREATE TABLE current (key TEXT PRIMARY KEY, create_revision INTEGER NOT NULL,
                      mod_revision INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO meta VALUES ('revision', 2), ('compacted', 0), ('swept', 0), ('schema', 1);
INSERT INTO log VALUES (1, '/v1/a', 0, 1, X'61'), (2, '/v1/b', 0, 2, X'62');
INSERT INTO current VALUES ('/v1/a', 1, 1), ('/v1/b', 2, 2);
"""


async def test_a_version_1_store_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA)
    conn.close()
    backend = SQLiteBackend(path)
    await backend.start()
    try:
        assert (await backend.get("/v1/a")) == KeyValue("/v1/a", b"a", 1, 1)
        await backend.update("/v1/a", b"A", expected_revision=1)
        await backend.delete("/v1/b")
        await backend.create("/v1/c", b"c")
        with pytest.raises(KeyExists):
            await backend.create("/v1/a", b"again")
        assert await backend.current_revision() == 5
    finally:
        await backend.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()[0] == 2
        assert conn.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0] == 5
        assert conn.execute("SELECT key, create_revision, mod_revision FROM current ORDER BY key").fetchall() == [
            ("/v1/a", 1, 3), ("/v1/c", 5, 5)]
    finally:
        conn.close()


async def test_a_batch_bigger_than_one_statement_is_one_transaction(tmp_path: Path) -> None:
    """Over 1,000 rows a batch takes several INSERT statements: still all or nothing, still one
    revision each, with checks op by op when a key exists."""
    backend = SQLiteBackend(tmp_path / "big.db", batch_max=5000, max_pending_writes=5000)
    await backend.start()
    try:
        await backend.create("/big/7", b"old")
        results = await asyncio.gather(
            *(backend.create(f"/big/{i}", b"x") for i in range(2500)), return_exceptions=True)
        assert backend.stats.max_batch > 1000
        assert isinstance(results[7], KeyExists)
        landed = [r for r in results if isinstance(r, KeyValue)]
        assert len(landed) == 2499
        assert sorted(r.mod_revision for r in landed) == list(range(2, 2501))
        assert await backend.current_revision() == 2500
    finally:
        await backend.close()
    reopened = SQLiteBackend(tmp_path / "big.db")
    await reopened.start()
    try:
        page = await reopened.list("/big/", limit=5000)
        assert len(page.items) == 2500 and page.revision == 2500
    finally:
        await reopened.close()


async def test_pending_writes_are_bounded(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "bounded.db", max_pending_writes=4, max_pending_reads=2)
    await backend.start()
    try:
        acks = await asyncio.gather(*(backend.create(f"/b/{i}", b"x") for i in range(100)))
        assert sorted(kv.mod_revision for kv in acks) == list(range(1, 101))
        assert backend.stats.max_batch <= 4
        got = await asyncio.gather(*(backend.get(f"/b/{i}") for i in range(100)))
        assert got == acks
    finally:
        await backend.close()


async def test_one_writer_gets_one_fsync_latency(store: SQLiteBackend) -> None:
    """No timer gathers batches: a lone write commits alone, at once."""
    for i in range(5):
        await store.create(f"/lone/{i}", b"x")
    assert store.stats.commits == 5 and store.stats.max_batch == 1


# -- compaction and the WAL -----------------------------------------------------------------------


async def test_compaction_deletes_history_rows(store: SQLiteBackend) -> None:
    for i in range(20):
        await store.create(f"/c/{i}", b"0")
    for round_ in range(5):
        await asyncio.gather(*(store.update(f"/c/{i}", str(round_).encode()) for i in range(20)))
    for i in range(5):
        await store.delete(f"/c/{i}")
    assert log_rows(store.path) == 20 + 100 + 5
    await store.compact(await store.current_revision())
    assert log_rows(store.path) == 15  # the newest row of each live key, nothing else
    assert len((await store.list("/c/")).items) == 15


async def test_wal_file_bounded_after_compaction(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "wal.db")
    await backend.start()
    wal = Path(f"{backend.path}-wal")
    try:
        value = os.urandom(4096)
        for round_ in range(15):
            write = backend.update if round_ else backend.create
            await asyncio.gather(*(write(f"/w/{i}", value) for i in range(100)))
        assert file_size(wal) > 1 << 20
        await backend.compact(await backend.current_revision())
        assert file_size(wal) < 64 << 10
        assert len((await backend.list("/w/")).items) == 100
    finally:
        await backend.close()


async def test_wal_file_bounded_without_compaction(tmp_path: Path) -> None:
    """Every so many commits the writer truncates a WAL that grew past ``wal_limit``."""
    backend = SQLiteBackend(tmp_path / "wal.db", wal_limit=64 << 10)
    await backend.start()
    try:
        value = os.urandom(4096)
        for i in range(512):  # the size check runs every 256 commits
            await backend.create(f"/w/{i}", value)
        assert backend.stats.commits == 512
        wal = Path(f"{backend.path}-wal")

        async def truncated() -> bool:  # the check runs right after the 512th commit is acknowledged
            return file_size(wal) < 64 << 10

        await wait_until(truncated, "the WAL to be truncated")
    finally:
        await backend.close()


async def test_compaction_runs_in_chunks_between_writes(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "chunks.db", compaction_chunk=20)
    await backend.start()
    try:
        for i in range(10):
            await asyncio.gather(*(backend.create(f"/h/{i}/{j}", b"x") for j in range(500)))
            await asyncio.gather(*(backend.delete(f"/h/{i}/{j}") for j in range(500)))
        target = await backend.current_revision()
        compaction = asyncio.create_task(backend.compact(target))

        async def started() -> bool:
            return await backend.compacted_revision() == target

        await wait_until(started, "compaction to start")
        kv = await backend.create("/during", b"x")
        assert not compaction.done(), "a write waited for the whole compaction"
        await compaction
        assert kv.mod_revision == target + 1
        assert log_rows(backend.path) == 1
    finally:
        await backend.close()


async def test_interrupted_compaction_resumes_on_start(tmp_path: Path) -> None:
    path = tmp_path / "resume.db"
    backend = SQLiteBackend(path)
    await backend.start()
    for i in range(50):
        await backend.create(f"/r/{i}", b"x")
        await backend.update(f"/r/{i}", b"y")
    await backend.close()
    # As if the process died right after the first chunk recorded the new compacted revision.
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE meta SET value = 100 WHERE name = 'compacted'")
    conn.close()
    backend = SQLiteBackend(path)
    await backend.start()
    try:
        assert await backend.compacted_revision() == 100

        async def swept() -> bool:
            return log_rows(path) == 50

        await wait_until(swept, "the interrupted compaction to finish")
        assert [kv.value for kv in (await backend.list("/r/")).items] == [b"y"] * 50
    finally:
        await backend.close()


# -- failures -------------------------------------------------------------------------------------


async def test_disk_full_is_unavailable_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "full.db"
    backend = SQLiteBackend(path)
    await backend.start()
    kept = [await backend.create(f"/d/{i}", b"small") for i in range(10)]
    await backend.close()
    # max_page_count cannot go below the current size: the file may not grow any more.
    backend = SQLiteBackend(path, pragmas={"max_page_count": 1})
    await backend.start()
    try:
        results = await asyncio.gather(
            *(backend.create(f"/d/big/{i}", os.urandom(200_000)) for i in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, Unavailable) for r in results), results
        assert "disk is full" in str(results[0])
        assert backend.stats.failed_commits >= 1
        assert await backend.current_revision() == 10
        assert (await backend.list("/d/")).items == kept
    finally:
        await backend.close()
    backend = SQLiteBackend(path)
    await backend.start()
    try:
        kv = await backend.create("/d/after", b"x")
        assert kv.mod_revision == 11  # the failed batch took no revisions
        events = await collect(backend.watch("/", 0), 11)
        assert_contiguous(events, 0, 11)
    finally:
        await backend.close()


async def test_unopenable_file_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database" * 100)
    backend = SQLiteBackend(path)
    with pytest.raises(Unavailable, match="not an SQLite database"):
        await backend.start()
    with pytest.raises(Unavailable):
        await backend.create("/x", b"x")


def test_options_that_weaken_durability_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteBackend(tmp_path / "x.db", pragmas={"synchronous": 0})
    with pytest.raises(ValueError):
        SQLiteBackend(":memory:")


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    child = subprocess.Popen(
        [sys.executable, str(CRASH_WRITER), str(path), "32"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stderr is not None
    try:
        assert child.stdout.readline() == "ready\n", child.stderr.read()
        lines = []
        while len(lines) < 3000:
            line = child.stdout.readline()
            if not line:
                pytest.fail(f"the writer died early: {child.stderr.read()}")
            lines.append(line)
        os.kill(child.pid, signal.SIGKILL)
        lines.extend(child.stdout.read().splitlines(keepends=True))  # acknowledged before it died
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    acks = [line.split() for line in lines if line.endswith("\n")]
    asyncio.run(_verify_crash(path, [(key, int(rev), value.encode()) for key, rev, value in acks]))


async def _verify_crash(path: Path, acks: list[tuple[str, int, bytes]]) -> None:
    backend = SQLiteBackend(path)
    await backend.start()
    try:
        current = await backend.current_revision()
        assert current >= max(rev for _, rev, _ in acks)
        for key, rev, value in acks:
            kv = await backend.get(key, rev)
            assert kv is not None and (kv.mod_revision, kv.value) == (rev, value), (key, rev)
        stream = backend.watch("/", 0)
        try:
            events = await collect(stream, current)
        finally:
            await aclose(stream)
        assert_contiguous(events, 0, current)
        written = {(e.kv.key, e.revision) for e in events}
        assert {(key, rev) for key, rev, _ in acks} <= written
        # The store goes on from where it was.
        kv = await backend.create("/after-crash", b"x")
        assert kv.mod_revision == current + 1
    finally:
        await backend.close()


# -- open_backend -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("", "data/state.db"),
        (None, "data/state.db"),
        ("sqlite://", "data/state.db"),
        ("sqlite://other.db", "data/other.db"),
        ("sqlite://sub/dir.db", "data/sub/dir.db"),
        ("sqlite:///abs/path.db", "/abs/path.db"),
        ("SQLite:///abs/path.db", "/abs/path.db"),
    ],
)
def test_open_backend_sqlite_urls(tmp_path: Path, url: str | None, expected: str) -> None:
    backend = open_backend(url, tmp_path / "data")
    assert isinstance(backend, SQLiteBackend)
    want = Path(expected) if expected.startswith("/") else tmp_path / expected
    assert backend.path == want


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://", "names no PostgreSQL server"),
        ("etcd://", "names no etcd member"),
        ("etcd://host-without-port", "is not host:port"),
        ("mysql://x", "unknown store URL scheme"),
        ("state.db", "no scheme"),
        ("sqlite://:memory:", "must be a file"),
    ],
)
def test_open_backend_rejects(tmp_path: Path, url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        open_backend(url, tmp_path)


async def test_open_backend_default_creates_data_dir(tmp_path: Path) -> None:
    backend = open_backend("", tmp_path / "new" / "dir")
    async with backend:
        await backend.create("/x", b"1")
    assert (tmp_path / "new" / "dir" / "state.db").exists()


async def test_the_store_files_are_private(tmp_path: Path) -> None:
    """Every object, secrets included, is in these files: 0600, also when they were not."""
    import os
    import stat

    path = tmp_path / "state.db"
    async with SQLiteBackend(path) as b:
        await b.create("/k", b"v")
    for suffix in ("-wal", "-shm"):
        p = path.with_name(path.name + suffix)
        if p.exists():
            os.chmod(p, 0o644)
    os.chmod(path, 0o644)
    async with SQLiteBackend(path) as b:
        await b.create("/k2", b"v")
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in sorted(tmp_path.glob("state.db*"))}  # noqa: ASYNC240
    assert modes and set(modes.values()) == {0o600}, modes
