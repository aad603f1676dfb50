"""The PostgreSQL backend: the conformance suite, plus what only it has (several servers on one
database, the revision counter under concurrent writers, notifications that go missing,
compaction beside writes, a restarting database)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from setpoint.store import Backend, KeyValue, Unavailable, open_backend
from setpoint.store.postgres import PostgresBackend
from tests.backends.services import PostgresServer

from .conformance import BackendConformance, aclose, assert_contiguous, collect, wait_until

_ids = itertools.count()


class PostgresHarness:
    watch_buffer = 512

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self.token = f"t{uuid.uuid4().hex[:8]}"

    def schema(self, name: str) -> str:
        return f"{self.token}_{name.replace('-', '_')}"

    async def open(self, name: str = "main", **kw: object) -> PostgresBackend:
        # A small history page so the suite's watches cross page boundaries.
        backend = PostgresBackend(
            self.server.dsn(), schema=self.schema(name), watch_buffer=self.watch_buffer, watch_page=64,
            **kw,  # type: ignore[arg-type]
        )
        await backend.start()
        return backend


class TestPostgresConformance(BackendConformance):
    @pytest.fixture
    def harness(self, postgres: PostgresServer) -> PostgresHarness:
        return PostgresHarness(postgres)


@pytest.fixture
def harness(postgres: PostgresServer) -> PostgresHarness:
    return PostgresHarness(postgres)


@pytest.fixture
async def pair(harness: PostgresHarness) -> AsyncIterator[tuple[PostgresBackend, PostgresBackend]]:
    """Two backends over one schema, as two setpoint servers would have."""
    a = await harness.open("shared")
    b = await harness.open("shared")
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def test_open_backend_urls(tmp_path: object) -> None:
    b = open_backend("postgresql://u:p@db.example:5433/setpoint?schema=prod_1&sslmode=require", tmp_path)  # type: ignore[arg-type]
    assert isinstance(b, PostgresBackend)
    assert b.sql.schema == "prod_1"
    assert b.dsn == "postgresql://u:p@db.example:5433/setpoint?sslmode=require"
    assert open_backend("postgres://localhost/x", tmp_path).sql.schema == "setpoint"  # type: ignore[arg-type, attr-defined]
    with pytest.raises(ValueError, match="schema name"):
        open_backend("postgresql://localhost/x?schema=Bad-Name", tmp_path)  # type: ignore[arg-type]


async def test_two_servers_one_revision_sequence(pair: tuple[PostgresBackend, PostgresBackend]) -> None:
    """Writers on two backends share one gap-free revision sequence; watchers on each see every
    write of both, in order, once."""
    a, b = pair
    base = await a.current_revision()
    wa, wb = a.watch("/", base), b.watch("/", base)
    try:
        acks = await asyncio.gather(
            *(backend.create(f"/two/{i}", b"x") for i in range(300) for backend in (a, b) if i % 2 == (backend is b))
        )
        revs = sorted(kv.mod_revision for kv in acks)
        assert revs == list(range(base + 1, base + 301))
        for stream in (wa, wb):
            events = await collect(stream, base + 300)
            assert_contiguous(events, base, base + 300)
    finally:
        await aclose(wa)
        await aclose(wb)


async def test_guards_across_servers(pair: tuple[PostgresBackend, PostgresBackend]) -> None:
    a, b = pair
    kv = await a.create("/g/k", b"0")
    results = await asyncio.gather(
        *(backend.update("/g/k", b"n", expected_revision=kv.mod_revision) for backend in (a, b) * 20),
        return_exceptions=True,
    )
    assert sum(isinstance(r, KeyValue) for r in results) == 1


async def test_missed_notifications_only_delay(harness: PostgresHarness, postgres: PostgresServer) -> None:
    """A watcher whose server hears no NOTIFY at all still gets every event, from the poll."""
    writer = await harness.open("quiet")
    reader = PostgresBackend(postgres.dsn(), schema=harness.schema("quiet"), poll_interval=0.2)
    reader.sql.channel = "setpoint_nobody_notifies_this"  # fault injection: every notification lost
    await reader.start()
    try:
        base = await reader.current_revision()
        stream = reader.watch("/q/", base)
        try:
            first = asyncio.ensure_future(anext(stream))
            for i in range(20):
                await writer.create(f"/q/{i}", b"x")
            events = list(await asyncio.wait_for(first, 10))
            async with asyncio.timeout(10):
                while events[-1].revision < base + 20:
                    events += await anext(stream)
            assert_contiguous(events, base, base + 20)
        finally:
            await aclose(stream)
    finally:
        await writer.close()
        await reader.close()


async def test_watch_from_a_revision_another_server_wrote(pair: tuple[PostgresBackend, PostgresBackend]) -> None:
    """A client that wrote through A and watches through B from that revision: B catches up
    first instead of calling the revision a future one."""
    a, b = pair
    for i in range(5):
        kv = await a.create(f"/late/{i}", b"x")
    stream = b.watch("/late/", kv.mod_revision)
    try:
        nxt = await a.create("/late/next", b"y")
        events = await collect(stream, nxt.mod_revision)
        assert [e.kv for e in events] == [nxt]
    finally:
        await aclose(stream)


async def test_compaction_in_chunks_beside_writes(harness: PostgresHarness, postgres: PostgresServer) -> None:
    b = await harness.open("chunks", compaction_chunk=50)
    try:
        for round_ in range(10):
            await asyncio.gather(*(b.create(f"/c/{round_}/{i}", b"v" * 100) for i in range(50)))
            await asyncio.gather(*(b.delete(f"/c/{round_}/{i}") for i in range(40)))
        current = await b.current_revision()
        rows = int(postgres.psql(f"SELECT count(*) FROM {harness.schema('chunks')}.log"))
        assert rows == current == 900
        writes = asyncio.ensure_future(asyncio.gather(*(b.create(f"/during/{i}", b"x") for i in range(200))))
        await b.compact(current)
        await writes
        rows = int(postgres.psql(f"SELECT count(*) FROM {harness.schema('chunks')}.log WHERE revision <= {current}"))
        assert rows == 100  # only the newest row of each live key
        assert len((await b.list("/c/")).items) == 100
        swept = postgres.psql(f"SELECT compacted, swept FROM {harness.schema('chunks')}.compaction")
        assert swept == f"{current}|{current}"
    finally:
        await b.close()


async def test_interrupted_compaction_resumes(harness: PostgresHarness, postgres: PostgresServer) -> None:
    b = await harness.open("resume")
    for i in range(100):
        await b.create(f"/r/{i % 10}", b"x") if i < 10 else await b.update(f"/r/{i % 10}", b"y")
    await b.close()
    schema = harness.schema("resume")
    postgres.psql(f"UPDATE {schema}.compaction SET compacted = 90")  # as if a compaction stopped at once
    b = await harness.open("resume")
    try:
        assert await b.compacted_revision() == 90
        await wait_until(
            lambda: asyncio.to_thread(lambda: postgres.psql(f"SELECT swept FROM {schema}.compaction") == "90"),
            "the interrupted compaction to finish",
        )
    finally:
        await b.close()


async def test_restart_gives_unavailable_then_recovers() -> None:
    """PostgreSQL restarting: calls fail with Unavailable meanwhile, the backend reconnects by
    itself, watches resume, and the revision goes on from where it was."""
    server = PostgresServer().init().start()
    b = PostgresBackend(server.dsn(), poll_interval=0.1, connect_timeout=2)
    try:
        await b.start()
        kv = await b.create("/x/a", b"1")
        stream = b.watch("/x/", kv.mod_revision)
        server.stop("immediate")
        with pytest.raises(Unavailable):
            await b.create("/x/b", b"2")
        with pytest.raises(Unavailable):
            await b.get("/x/a")
        server.start()

        async def recovered() -> bool:
            try:
                await b.create("/x/c", b"3")
            except Unavailable:
                return False
            return True

        await wait_until(recovered, "writes to work again")
        assert (await b.get("/x/a")) == kv
        events = await collect(stream, kv.mod_revision + 1)
        assert events[0].kv.key == "/x/c" and events[0].revision == kv.mod_revision + 1
        await aclose(stream)
    finally:
        await b.close()
        server.remove()


async def test_unreachable_at_start() -> None:
    from tests.backends.services import free_port

    b = PostgresBackend(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", connect_timeout=1)
    with pytest.raises(Unavailable):
        await b.start()


async def test_schema_isolation(harness: PostgresHarness) -> None:
    one: Backend = await harness.open("iso1")
    two: Backend = await harness.open("iso2")
    try:
        await one.create("/k", b"1")
        assert await two.get("/k") is None
        assert await two.current_revision() == 0
    finally:
        await one.close()
        await two.close()


async def test_concurrent_first_start(harness: PostgresHarness) -> None:
    """Several servers creating the schema at once do not trip over each other."""
    backends = await asyncio.gather(*(harness.open("first") for _ in range(4)))
    try:
        assert {await b.current_revision() for b in backends} == {0}
    finally:
        for b in backends:
            await b.close()


async def test_notifications_wake_watchers_on_another_server(harness: PostgresHarness) -> None:
    """With the safety-net poll an hour away, only LISTEN/NOTIFY can bring B a write made on A."""
    a = await harness.open("notify", poll_interval=3600.0)
    b = await harness.open("notify", poll_interval=3600.0)
    try:
        stream = b.watch("/n/", await b.current_revision())
        try:
            kv = await a.create("/n/1", b"x")
            async with asyncio.timeout(10):
                events = await collect(stream, kv.mod_revision)
            assert [e.kv for e in events] == [kv]
        finally:
            await aclose(stream)
    finally:
        await a.close()
        await b.close()


async def test_compaction_holds_no_lock_writers_need(harness: PostgresHarness, postgres: PostgresServer) -> None:
    """A compaction chunk in progress (its transaction open, its row locked, rows deleted) does
    not hold up writes: they lock a different row."""
    b = await harness.open("nolock")
    conn = await asyncpg.connect(postgres.dsn())
    try:
        for i in range(50):
            await b.update("/n/k", b"x") if i else await b.create("/n/k", b"x")
        await b.compact(25)
        schema = harness.schema("nolock")
        tx = conn.transaction()
        await tx.start()
        await conn.fetchrow(f"SELECT compacted, swept FROM {schema}.compaction WHERE id = 1 FOR UPDATE")
        await conn.execute(f"DELETE FROM {schema}.log WHERE revision <= 10")
        acks = await asyncio.wait_for(asyncio.gather(*(b.create(f"/n/{i}", b"y") for i in range(100))), 10)
        assert len(acks) == 100
        await tx.rollback()
    finally:
        await conn.close()
        await b.close()


async def test_compactor_keeps_the_log_bounded(harness: PostgresHarness, postgres: PostgresServer) -> None:
    from setpoint.store import Compactor

    b = await harness.open("bounded", compaction_chunk=64)
    compactor = Compactor(b, keep_revisions=200, keep_seconds=0, interval=0.02)
    compactor.start()
    try:
        for i in range(10):
            await b.create(f"/b/{i}", b"0")
        for round_ in range(200):
            await asyncio.gather(*(b.update(f"/b/{i}", str(round_).encode()) for i in range(10)))
        await compactor.compact_once()
        # The background round may be sweeping what compact_once found already compacted: the
        # bound holds once that sweep is through, which takes its chunks' time on a busy machine.
        bound = 10 + 200 + 1  # live keys + the history kept

        async def bounded() -> bool:
            return int(postgres.psql(f"SELECT count(*) FROM {harness.schema('bounded')}.log")) <= bound

        await wait_until(bounded, f"at most {bound} rows in the log", within=20)
        assert await b.compacted_revision() >= await b.current_revision() - 201
    finally:
        await compactor.stop()
        await b.close()


async def test_server_left_behind_by_compaction_ends_its_watches(harness: PostgresHarness,
                                                                  postgres: PostgresServer) -> None:
    """A server that hears nothing while another one writes and compacts past it cannot replay
    what is gone: its watchers end with Compacted (they relist) instead of skipping events."""
    from setpoint.store import Compacted

    a = await harness.open("behind")
    b = PostgresBackend(postgres.dsn(), schema=harness.schema("behind"), poll_interval=30)
    b.sql.channel = "setpoint_nobody_notifies_this"  # fault injection: b hears no notification
    await b.start()
    try:
        start = await b.current_revision()
        stream = b.watch("/", start)
        pending = asyncio.ensure_future(anext(stream))
        for i in range(20):
            await a.create(f"/x/{i}", b"1")
        for i in range(20):
            await a.delete(f"/x/{i}")
        await a.compact(await a.current_revision())
        b._wake.set()  # the poll comes round
        with pytest.raises(Compacted):
            await asyncio.wait_for(pending, 10)
        # Watching afresh from the present works, and sees new writes.
        now = await b.current_revision()
        fresh = b.watch("/", now)
        try:
            first = asyncio.ensure_future(anext(fresh))
            kv = await a.create("/x/new", b"2")
            b._wake.set()
            assert [e.kv for e in await asyncio.wait_for(first, 10)] == [kv]
        finally:
            await aclose(fresh)
    finally:
        await a.close()
        await b.close()


def test_store_errors_copy_and_pickle() -> None:
    """One error object may end many watches (each gets a copy), so errors must copy."""
    import copy
    import pickle

    from setpoint.store import Compacted, FutureRevision, KeyExists, KeyNotFound, RevisionMismatch

    errors = (Compacted(3, 7), FutureRevision(9, 4), KeyExists("/k"), KeyNotFound("/k"), RevisionMismatch("/k", 1, 2))
    for err in errors:
        for twin in (copy.copy(err), pickle.loads(pickle.dumps(err))):
            assert type(twin) is type(err) and str(twin) == str(err) and vars(twin) == vars(err)


class _LosesOneReply:
    """Fault injection: the next write batch runs (or not), then its connection 'breaks'."""

    def __init__(self, backend: PostgresBackend, *, run_it: bool) -> None:
        self.backend = backend
        self.run_it = run_it
        self.armed = True
        self.real = backend._writer_connection

    async def __call__(self) -> object:
        conn = await self.real()
        if not self.armed:
            return conn
        self.armed = False
        fault = self

        class Breaking:
            async def fetch(self, sql: str, *args: object) -> object:
                if fault.run_it:
                    await conn.fetch(sql, *args)
                raise asyncpg.exceptions.ConnectionDoesNotExistError("connection lost (injected)")

            def terminate(self) -> None:
                conn.terminate()

            def is_closed(self) -> bool:
                return bool(conn.is_closed())

        return Breaking()


@pytest.mark.parametrize("committed", [True, False])
async def test_lost_reply_is_resolved_by_batch_id(harness: PostgresHarness, committed: bool) -> None:
    b = await harness.open(f"lost_{int(committed)}")
    try:
        await b.create("/l/exists", b"0")
        base = await b.current_revision()
        stream = b.watch("/l/", base)
        b._writer_connection = _LosesOneReply(b, run_it=committed)  # type: ignore[method-assign]
        ops = [b.create("/l/a", b"1"), b.create("/l/exists", b"again"), b.create("/l/b", b"2")]
        results = await asyncio.gather(*ops, return_exceptions=True)
        if committed:
            a, exists, bb = results
            assert isinstance(a, KeyValue) and isinstance(bb, KeyValue)
            assert (a.mod_revision, bb.mod_revision) == (base + 1, base + 2)
            assert isinstance(exists, Unavailable)  # not written; why is not known
            events = await collect(stream, base + 2)
            assert [e.kv for e in events] == [a, bb]
        else:
            assert all(isinstance(r, Unavailable) for r in results)
            assert await b.current_revision() == base
        # The writer goes on with a new connection.
        c = await b.create("/l/c", b"3")
        assert c.mod_revision == await b.current_revision()
        await aclose(stream)
    finally:
        await b.close()


async def test_a_batch_finds_its_keys_by_index_however_big_the_store(
        harness: PostgresHarness, postgres: PostgresServer) -> None:
    """Each write of a batch probes ``current`` by its key; no batch reads the whole table. (A
    plan made while the table was small and kept for the connection's life used to scan it all
    for every batch: 17 million rows read in 6 s of the two-server benchmark.)"""
    b = await harness.open("probes")
    table = f"{harness.schema('probes')}.current"

    def counters() -> tuple[int, int]:
        out = postgres.psql("SELECT coalesce(seq_scan, 0), coalesce(idx_scan, 0) FROM pg_stat_user_tables "
                            f"WHERE schemaname = '{harness.schema('probes')}' AND relname = 'current'")
        seq, idx = out.split("|")
        return int(seq), int(idx)

    try:
        for round_ in range(6):  # grown in batches, the way a server's group commit writes
            await asyncio.gather(*(b.create(f"/p/{round_}/{i}", b"v" * 100) for i in range(500)))
        await asyncio.gather(*(b.delete(f"/p/0/{i}") for i in range(100)))
        assert int(await asyncio.to_thread(postgres.psql, f"SELECT count(*) FROM {table}")) == 2_900
        seq0, idx0 = await asyncio.to_thread(counters)
        await asyncio.gather(*(b.create(f"/q/{i}", b"v") for i in range(300)))
        await asyncio.gather(*(b.delete(f"/p/1/{i}") for i in range(100)))
        # The statistics arrive when the writer's connection reports them: wait until they
        # account for at least one probe per write, then no batch may have scanned the table.
        async def reported() -> bool:
            await asyncio.sleep(0.2)
            return (await asyncio.to_thread(counters))[1] - idx0 >= 400

        await wait_until(reported, "the writes' index probes in the statistics", within=30)
        assert (await asyncio.to_thread(counters))[0] - seq0 == 0
    finally:
        await b.close()
