"""The backend conformance suite: the storage contract, written once, run against every backend.

A backend's test module subclasses :class:`BackendConformance` and provides a ``harness``
fixture (see :class:`Harness`). Everything here goes through the public :class:`Backend`
interface only, so PostgreSQL and etcd backends run exactly these tests.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from setpoint.store import (
    Backend,
    Compacted,
    Event,
    FutureRevision,
    KeyExists,
    KeyNotFound,
    KeyValue,
    RevisionMismatch,
    StoreError,
    Unavailable,
    WatchOverflow,
)

DEADLINE = 20.0  # seconds any single wait in this suite may take before it counts as a hang


class Harness(Protocol):
    """How the suite gets backends. Provided by each backend's test module."""

    watch_buffer: int  # how many undelivered events a watcher may hold before WatchOverflow

    async def open(self, name: str = "main") -> Backend:
        """A started backend over the storage called ``name``: opening the same name again
        (after closing) must see the same data; different names are independent stores."""
        ...


async def wait_until(cond: Callable[[], Awaitable[bool]], what: str, within: float = DEADLINE) -> None:
    """Poll ``cond`` until it holds; fail after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not await cond():
        if loop.time() > end:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def collect(stream: AsyncIterator[list[Event]], until: int, within: float = DEADLINE) -> list[Event]:
    """Events from ``stream`` until one at or above revision ``until`` arrives."""
    out: list[Event] = []
    async with asyncio.timeout(within):
        while not out or out[-1].revision < until:
            out.extend(await anext(stream))
    return out


async def aclose(stream: AsyncIterator[list[Event]]) -> None:
    closer = getattr(stream, "aclose", None)
    if closer is not None:
        await closer()


def assert_contiguous(events: list[Event], after: int, until: int) -> None:
    revs = [e.revision for e in events]
    want = list(range(after + 1, until + 1))
    assert revs == want, f"revisions {revs[:5]}...{revs[-5:]} are not {after + 1}..{until}"


async def _reached(backend: Backend, revision: int) -> bool:
    return await backend.current_revision() >= revision


_KEYS = ["/m/a", "/m/b", "/m/b/c", "/mb/d", "/n/e"]
_PREFIXES = ["/", "/m/", "/mb/", "/m/b/", "/n/"]
_names = itertools.count()
# (op, key index, argument): argument is the value for writes, a guard selector for
# update/delete (0: none, 1: right revision, 2: wrong revision), a fraction for compact.
_OPS = st.tuples(
    st.sampled_from(["create", "update", "delete", "compact"]),
    st.integers(0, len(_KEYS) - 1),
    st.integers(0, 2),
)


class BackendConformance:
    """The contract every backend must meet. Subclass it and provide a ``harness`` fixture."""

    @pytest.fixture
    async def backend(self, harness: Harness) -> AsyncIterator[Backend]:
        b = await harness.open()
        try:
            yield b
        finally:
            await b.close()

    # -- basic writes and reads ---------------------------------------------------------------

    async def test_create_get(self, backend: Backend) -> None:
        base = await backend.current_revision()
        kv = await backend.create("/t/a", b"one")
        assert kv == KeyValue("/t/a", b"one", base + 1, base + 1)
        assert await backend.get("/t/a") == kv
        assert await backend.get("/t/missing") is None
        assert await backend.current_revision() == base + 1

    async def test_update_delete_recreate(self, backend: Backend) -> None:
        a = await backend.create("/t/a", b"one")
        b = await backend.update("/t/a", b"two")
        assert (b.create_revision, b.mod_revision, b.value) == (a.create_revision, a.mod_revision + 1, b"two")
        assert await backend.get("/t/a") == b
        d = await backend.delete("/t/a")
        assert d == KeyValue("/t/a", b"two", a.create_revision, b.mod_revision + 1)
        assert await backend.get("/t/a") is None
        c = await backend.create("/t/a", b"three")
        assert c.create_revision == c.mod_revision == d.mod_revision + 1  # a new life

    async def test_guards(self, backend: Backend) -> None:
        kv = await backend.create("/t/a", b"one")
        base = await backend.current_revision()
        with pytest.raises(KeyExists) as exists:
            await backend.create("/t/a", b"again")
        assert exists.value.key == "/t/a"
        with pytest.raises(KeyNotFound):
            await backend.update("/t/none", b"x")
        with pytest.raises(KeyNotFound):
            await backend.delete("/t/none")
        with pytest.raises(RevisionMismatch) as mismatch:
            await backend.update("/t/a", b"x", expected_revision=kv.mod_revision + 100)
        assert (mismatch.value.expected, mismatch.value.actual) == (kv.mod_revision + 100, kv.mod_revision)
        with pytest.raises(RevisionMismatch):
            await backend.delete("/t/a", expected_revision=kv.mod_revision + 100)
        # Failed writes take no revision and change nothing.
        assert await backend.current_revision() == base
        assert await backend.get("/t/a") == kv
        up = await backend.update("/t/a", b"two", expected_revision=kv.mod_revision)
        assert up.mod_revision == base + 1
        gone = await backend.delete("/t/a", expected_revision=up.mod_revision)
        assert gone.mod_revision == base + 2

    async def test_revisions_strictly_increasing_without_gaps(self, backend: Backend) -> None:
        await backend.create("/seq/anchor", b"a")
        base = await backend.current_revision()
        revs = []
        for i in range(20):
            key = f"/seq/{i % 4}"
            try:
                kv = await backend.create(key, b"c")
            except KeyExists:
                kv = await backend.update(key, b"u") if i % 3 else await backend.delete(key)
            revs.append(kv.mod_revision)
            with pytest.raises(KeyExists):  # a failure in between must not leave a hole
                await backend.create("/seq/anchor", b"x")
        assert revs == list(range(base + 1, base + 21))
        assert await backend.current_revision() == base + 20

    async def test_reads_of_keys_with_nul_find_nothing(self, backend: Backend) -> None:
        """A NUL can reach a read from a URL (``%00``); no stored key holds one, so the read
        finds nothing, on every backend, rather than failing."""
        kv = await backend.create("/nul/a", b"x")
        assert await backend.get("/nul/a\x00") is None
        assert await backend.get("/nul/a\x00", kv.mod_revision) is None
        for prefix in ("/nul/\x00", "/nul/a\x00/"):
            page = await backend.list(prefix)
            assert page.items == [] and page.revision == await backend.current_revision()
            assert (await backend.list(prefix, revision=kv.mod_revision)).items == []
        # A start_after holding NUL bounds the keys after it as the text before the NUL does.
        page = await backend.list("/nul/", start_after="/nul/\x00zzz")
        assert [item.key for item in page.items] == ["/nul/a"]

    async def test_one_key_rule_on_every_backend(self, backend: Backend) -> None:
        """A key is non-empty Unicode text without NUL, on every backend: writes of anything else
        are refused before they reach the engine, and reads of it find nothing."""
        kv = await backend.create("/rule/a", b"x")
        for bad in ("", "/rule/a\x00b", "/rule/\ud800"):
            with pytest.raises(ValueError):
                await backend.create(bad, b"x")
            with pytest.raises(ValueError):
                await backend.update(bad, b"x")
            with pytest.raises(ValueError):
                await backend.delete(bad)
            assert await backend.get(bad) is None
            assert await backend.get(bad, kv.mod_revision) is None
        assert await backend.current_revision() == kv.mod_revision  # nothing was written
        with pytest.raises(ValueError):
            await backend.get("/rule/a", -1)
        with pytest.raises(ValueError):
            await backend.list("/rule/", limit=-1)

    async def test_values_are_opaque_bytes(self, backend: Backend) -> None:
        # Values are opaque bytes: arbitrary binary content must round-trip.
        blob = bytes(range(256)) * 40
        kv = await backend.create("/t/bin", blob)
        assert (await backend.get("/t/bin")) == kv
        assert (await backend.get("/t/bin") or kv).value == blob
        empty = await backend.create("/t/empty", b"")
        assert (await backend.get("/t/empty")) == empty

    # -- lists ----------------------------------------------------------------------------------

    async def test_list_prefix_isolation(self, backend: Backend) -> None:
        for key in ("/a/1", "/a/2", "/a/b/c", "/ab/1", "/a", "/b/1", "/a0/x"):
            await backend.create(key, key.encode())
        assert [kv.key for kv in (await backend.list("/a/")).items] == ["/a/1", "/a/2", "/a/b/c"]
        assert [kv.key for kv in (await backend.list("/ab/")).items] == ["/ab/1"]
        assert [kv.key for kv in (await backend.list("/a/b/")).items] == ["/a/b/c"]
        assert [kv.key for kv in (await backend.list("/")).items] == sorted(
            ["/a/1", "/a/2", "/a/b/c", "/ab/1", "/a", "/b/1", "/a0/x"]
        )
        assert (await backend.list("/nothing/")).items == []

    async def test_list_values_and_revision(self, backend: Backend) -> None:
        a = await backend.create("/l/a", b"A")
        b = await backend.create("/l/b", b"B")
        a2 = await backend.update("/l/a", b"A2")
        res = await backend.list("/l/")
        assert res.items == [a2, b]
        assert res.revision == await backend.current_revision() == a2.mod_revision
        assert not res.more
        assert a.create_revision == a2.create_revision

    async def test_list_pagination(self, backend: Backend) -> None:
        keys = [f"/p/{i:02d}" for i in range(10)]
        for key in reversed(keys):
            await backend.create(key, key.encode())
        first = await backend.list("/p/", limit=4)
        assert [kv.key for kv in first.items] == keys[:4] and first.more
        # Writes between pages must not show in later pages read at the first page's revision.
        await backend.create("/p/045", b"new")
        await backend.delete("/p/07")
        pages = [first]
        while pages[-1].more:
            pages.append(
                await backend.list(
                    "/p/", revision=first.revision, limit=4, start_after=pages[-1].items[-1].key
                )
            )
        assert [kv.key for page in pages for kv in page.items] == keys
        assert [len(p.items) for p in pages] == [4, 4, 2]
        assert [p.more for p in pages] == [True, True, False]
        assert all(p.revision == first.revision for p in pages)
        # Exact fit: limit equal to the number of keys left reports no more.
        exact = await backend.list("/p/", limit=3, start_after="/p/06")
        assert [kv.key for kv in exact.items] == ["/p/08", "/p/09"] and not exact.more
        now = await backend.list("/p/", limit=0, start_after="/p/03")
        assert [kv.key for kv in now.items] == ["/p/04", "/p/045", "/p/05", "/p/06", "/p/08", "/p/09"]

    # -- the past ---------------------------------------------------------------------------------

    async def test_get_and_list_at_past_revisions(self, backend: Backend) -> None:
        a1 = await backend.create("/h/a", b"1")
        b1 = await backend.create("/h/b", b"1")
        a2 = await backend.update("/h/a", b"2")
        bd = await backend.delete("/h/b")
        b2 = await backend.create("/h/b", b"again")
        assert await backend.get("/h/a", a1.mod_revision) == a1
        assert await backend.get("/h/a", b1.mod_revision) == a1
        assert await backend.get("/h/a", a2.mod_revision) == a2
        assert await backend.get("/h/b", a1.mod_revision) is None
        assert await backend.get("/h/b", bd.mod_revision) is None
        assert await backend.get("/h/b", b2.mod_revision) == b2
        expected = {
            a1.mod_revision: [a1],
            b1.mod_revision: [a1, b1],
            a2.mod_revision: [a2, b1],
            bd.mod_revision: [a2],
            b2.mod_revision: [a2, b2],
        }
        for rev, items in expected.items():
            res = await backend.list("/h/", revision=rev)
            assert (res.items, res.revision) == (items, rev)

    async def test_future_revision(self, backend: Backend) -> None:
        await backend.create("/f/a", b"1")
        future = await backend.current_revision() + 1
        with pytest.raises(FutureRevision):
            await backend.get("/f/a", future)
        with pytest.raises(FutureRevision):
            await backend.list("/f/", revision=future)
        stream = backend.watch("/f/", future)
        with pytest.raises(FutureRevision):
            await anext(stream)

    # -- compaction -------------------------------------------------------------------------------

    async def test_compacted_reads(self, backend: Backend) -> None:
        a = await backend.create("/c/a", b"1")
        await backend.update("/c/a", b"2")
        target = await backend.current_revision()
        last = await backend.update("/c/a", b"3")
        await backend.compact(target)
        assert await backend.compacted_revision() == target
        for rev in (a.mod_revision, target):
            with pytest.raises(Compacted) as err:
                await backend.get("/c/a", rev)
            assert err.value.compacted == target
            with pytest.raises(Compacted):
                await backend.list("/c/", revision=rev)
        assert await backend.get("/c/a", last.mod_revision) == last
        assert await backend.get("/c/a") == last
        # Compacting to an older revision again is harmless.
        await backend.compact(a.mod_revision)
        assert await backend.compacted_revision() == target

    async def test_compaction_keeps_newest_value_of_live_keys(self, backend: Backend) -> None:
        live: dict[str, KeyValue] = {}
        for i in range(30):
            key = f"/k/{i % 7}"
            if key in live and i % 5 == 0:
                await backend.delete(key)
                del live[key]
            elif key in live:
                live[key] = await backend.update(key, f"v{i}".encode())
            else:
                live[key] = await backend.create(key, f"v{i}".encode())
        untouched = await backend.create("/k2/x", b"x")
        target = await backend.current_revision()
        after = await backend.create("/k3/y", b"y")  # so a read just above the target exists
        await backend.compact(target)
        want = sorted([*live.values(), untouched], key=lambda kv: kv.key)
        assert (await backend.list("/k/")).items == [kv for kv in want if kv.key.startswith("/k/")]
        res = await backend.list("/", revision=after.mod_revision)
        assert res.items == sorted([*want, after], key=lambda kv: kv.key)
        for kv in want:
            assert await backend.get(kv.key, after.mod_revision) == kv
        # Compaction of everything still leaves the present intact and new writes go on.
        await backend.compact(await backend.current_revision())
        assert (await backend.list("/k/")).items == [kv for kv in want if kv.key.startswith("/k/")]
        nxt = await backend.create("/k3/z", b"z")
        assert nxt.mod_revision == after.mod_revision + 1

    async def test_watch_from_compacted_revision(self, backend: Backend) -> None:
        for i in range(5):
            await backend.create(f"/wc/{i}", b"x")
        await backend.compact(3)
        stream = backend.watch("/wc/", 2)
        with pytest.raises(Compacted):
            await anext(stream)
        ok = backend.watch("/wc/", 3)
        try:
            events = await collect(ok, 5)
            assert_contiguous(events, 3, 5)
        finally:
            await aclose(ok)

    # -- watch ------------------------------------------------------------------------------------

    async def test_watch_history_then_live(self, backend: Backend) -> None:
        writes: list[KeyValue] = []
        for i in range(150):  # more than a page of history
            writes.append(await backend.create(f"/w/{i:03d}", str(i).encode()))
            await backend.create(f"/other/{i:03d}", b"-")
        start = writes[9].mod_revision
        stream = backend.watch("/w/", start)
        try:
            history = await collect(stream, writes[-1].mod_revision)
            assert [e.kv for e in history] == writes[10:]
            assert all(e.type == "PUT" and e.created for e in history)
            up = await backend.update("/w/000", b"new")
            await backend.create("/other/x", b"-")
            gone = await backend.delete("/w/001")
            live = await collect(stream, gone.mod_revision)
            assert [(e.type, e.kv) for e in live] == [("PUT", up), ("DELETE", gone)]
            assert not live[0].created
            assert gone.value == b"1"
        finally:
            await aclose(stream)

    async def test_watch_across_history_live_boundary(self, backend: Backend) -> None:
        """A watch started while writes stream in sees each revision exactly once."""
        base = await backend.current_revision()
        total = 400

        async def writer() -> None:
            for i in range(0, total, 8):
                await asyncio.gather(*(backend.create(f"/x/{j}", b"v") for j in range(i, i + 8)))

        task = asyncio.create_task(writer())
        try:
            await wait_until(lambda: _reached(backend, base + total // 3), "some writes")
            stream = backend.watch("/x/", base)
            try:
                events = await collect(stream, base + total)
            finally:
                await aclose(stream)
            assert_contiguous(events, base, base + total)
        finally:
            await task

    async def test_watch_prefix_filter(self, backend: Backend) -> None:
        base = await backend.current_revision()
        stream = backend.watch("/a/", base)
        try:
            await backend.create("/ab/1", b"no")
            await backend.create("/a", b"no")
            mine = await backend.create("/a/1", b"yes")
            await backend.create("/b/1", b"no")
            last = await backend.create("/a/b/2", b"yes")
            events = await collect(stream, last.mod_revision)
            assert [e.kv for e in events] == [mine, last]
        finally:
            await aclose(stream)

    async def test_concurrent_writers(self, backend: Backend) -> None:
        for i in range(100):
            await backend.create(f"/cc/old/{i}", b"0")
        base = await backend.current_revision()
        stream = backend.watch("/cc/", base)
        try:
            ops = [backend.create(f"/cc/new/{i}", b"n") for i in range(100)]
            ops += [backend.update(f"/cc/old/{i}", b"u") for i in range(100)]
            acks = await asyncio.gather(*ops)
            revs = sorted(kv.mod_revision for kv in acks)
            assert revs == list(range(base + 1, base + 201))
            events = await collect(stream, base + 200)
            assert_contiguous(events, base, base + 200)
            assert {(e.kv.key, e.revision) for e in events} == {(kv.key, kv.mod_revision) for kv in acks}
        finally:
            await aclose(stream)

    async def test_concurrent_conflicting_writers(self, backend: Backend) -> None:
        """Optimistic concurrency under contention: exactly one guarded update per revision wins."""
        kv = await backend.create("/race/k", b"0")
        results = await asyncio.gather(
            *(
                backend.update("/race/k", str(i).encode(), expected_revision=kv.mod_revision)
                for i in range(50)
            ),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, KeyValue)]
        assert len(winners) == 1
        assert all(isinstance(r, RevisionMismatch) for r in results if not isinstance(r, KeyValue))
        creates = await asyncio.gather(
            *(backend.create("/race/new", b"x") for _ in range(20)), return_exceptions=True
        )
        assert sum(isinstance(r, KeyValue) for r in creates) == 1
        assert sum(isinstance(r, KeyExists) for r in creates) == 19
        assert await backend.current_revision() == kv.mod_revision + 2

    async def test_concurrent_creates_some_of_existing_keys(self, backend: Backend) -> None:
        """Creates sent together (a batch, where the store groups writes) of which a few meet
        an existing key: exactly those fail, the others land, and no revision is skipped."""
        for i in range(0, 40, 8):
            await backend.create(f"/mix/{i}", b"old")
        base = await backend.current_revision()
        stream = backend.watch("/mix/", base)
        try:
            results = await asyncio.gather(
                *(backend.create(f"/mix/{i}", b"new") for i in range(40)), return_exceptions=True
            )
            for i, r in enumerate(results):
                if i % 8 == 0:
                    assert isinstance(r, KeyExists), (i, r)
                else:
                    assert isinstance(r, KeyValue) and r.value == b"new", (i, r)
            landed = [r for r in results if isinstance(r, KeyValue)]
            assert sorted(r.mod_revision for r in landed) == list(range(base + 1, base + 36))
            assert all(r.create_revision == r.mod_revision for r in landed)
            events = await collect(stream, base + 35)
            assert_contiguous(events, base, base + 35)
            assert (await backend.get("/mix/8")).value == b"old"  # type: ignore[union-attr]
        finally:
            await aclose(stream)

    async def test_slow_watcher_overflows_fast_one_does_not(self, backend: Backend, harness: Harness) -> None:
        base = await backend.current_revision()
        slow = backend.watch("/o/", base)
        fast = backend.watch("/o/", base)
        try:
            first = asyncio.gather(anext(slow), anext(fast))
            await backend.create("/o/first", b"x")
            async with asyncio.timeout(DEADLINE):
                await first  # both are subscribed and live now
            total = harness.watch_buffer + 100
            seen: list[Event] = []

            async def consume() -> None:
                while len(seen) < total:
                    seen.extend(await anext(fast))

            consumer = asyncio.create_task(consume())
            for i in range(0, total, 50):
                await asyncio.gather(*(backend.create(f"/o/{j}", b"x") for j in range(i, min(i + 50, total))))
            async with asyncio.timeout(DEADLINE):
                await consumer
            assert_contiguous(seen, base + 1, base + 1 + total)
            with pytest.raises(WatchOverflow):
                async with asyncio.timeout(DEADLINE):
                    while True:
                        await anext(slow)
        finally:
            await aclose(slow)
            await aclose(fast)

    async def test_close_ends_watches_and_writes(self, harness: Harness) -> None:
        b = await harness.open("closing")
        await b.create("/z/a", b"1")
        stream = b.watch("/z/", await b.current_revision())
        pending = asyncio.ensure_future(anext(stream))
        await b.create("/z/b", b"2")
        assert [e.kv.key for e in await pending] == ["/z/b"]
        waiting = asyncio.ensure_future(anext(stream))
        await asyncio.gather(b.close(), b.close())  # closing twice at once is fine
        # A backend may end its watches either way; it must not leave them hanging.
        with pytest.raises((StopAsyncIteration, Unavailable)):
            async with asyncio.timeout(DEADLINE):
                await waiting
        with pytest.raises(Unavailable):
            await b.create("/z/c", b"3")

    async def test_close_keeps_acknowledged_writes(self, harness: Harness) -> None:
        b = await harness.open("inflight")
        writes = [asyncio.ensure_future(b.create(f"/i/{i:03d}", b"x")) for i in range(100)]
        await b.close()
        results = await asyncio.gather(*writes, return_exceptions=True)
        acked = [r for r in results if isinstance(r, KeyValue)]
        assert all(isinstance(r, (KeyValue, Unavailable)) for r in results), results
        with pytest.raises(Unavailable):
            await b.get("/i/000")
        b = await harness.open("inflight")
        try:
            assert (await b.list("/i/")).items == sorted(acked, key=lambda kv: kv.key)
            assert await b.current_revision() == len(acked)
        finally:
            await b.close()

    async def test_revision_survives_reopen(self, harness: Harness) -> None:
        b = await harness.open("reopen")
        try:
            await b.create("/r/a", b"1")
            kv = await b.update("/r/a", b"2")
            await b.delete("/r/a")
            last = await b.current_revision()
            await b.compact(last)  # nothing left in the history at all
        finally:
            await b.close()
        b = await harness.open("reopen")
        try:
            assert await b.current_revision() == last
            assert await b.compacted_revision() == last
            assert await b.get("/r/a") is None
            nxt = await b.create("/r/a", b"3")
            assert nxt.mod_revision == last + 1 > kv.mod_revision
        finally:
            await b.close()
        b = await harness.open("reopen")
        try:
            assert await b.get("/r/a") == nxt
            assert await b.current_revision() == last + 1
        finally:
            await b.close()

    # -- a model-based property ------------------------------------------------------------------

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
            HealthCheck.differing_executors,  # one test, run by each backend's subclass
        ],
    )
    @given(ops=st.lists(_OPS, min_size=1, max_size=40))
    def test_matches_model(self, harness: Harness, ops: list[tuple[str, int, int]]) -> None:
        asyncio.run(_run_model(harness, f"model-{next(_names)}", ops))


class _Model:
    """The contract as a dictionary per revision."""

    def __init__(self) -> None:
        self.states: list[dict[str, KeyValue]] = [{}]  # index = revision
        self.events: list[Event] = []

    @property
    def now(self) -> dict[str, KeyValue]:
        return self.states[-1]

    def apply(self, op: str, key: str, arg: int) -> KeyValue | type[StoreError]:
        rev = len(self.states)
        cur = self.now.get(key)
        if op == "create":
            if cur is not None:
                return KeyExists
            kv = KeyValue(key, f"{key}@{rev}".encode(), rev, rev)
        else:
            if cur is None:
                return KeyNotFound
            if arg == 2:
                return RevisionMismatch
            if op == "update":
                kv = KeyValue(key, f"{key}@{rev}".encode(), cur.create_revision, rev)
            else:
                kv = KeyValue(key, cur.value, cur.create_revision, rev)
        state = dict(self.now)
        if op == "delete":
            del state[key]
        else:
            state[key] = kv
        self.states.append(state)
        self.events.append(Event("DELETE" if op == "delete" else "PUT", kv))
        return kv


async def _run_model(harness: Harness, name: str, ops: list[tuple[str, int, int]]) -> None:
    backend = await harness.open(name)
    model = _Model()
    compacted = 0
    try:
        for op, index, arg in ops:
            key = _KEYS[index]
            if op == "compact":
                current = len(model.states) - 1
                target = compacted + (current - compacted) * arg // 2
                await backend.compact(target)
                compacted = max(compacted, target)
                assert await backend.compacted_revision() == compacted
                continue
            prior = model.now.get(key)
            guard = 0
            if arg and op != "create":
                guard = (prior.mod_revision if prior else 1) + (1000 if arg == 2 else 0)
            value = f"{key}@{len(model.states)}".encode()
            want = model.apply(op, key, arg)
            try:
                if op == "create":
                    got: KeyValue | type[StoreError] = await backend.create(key, value)
                elif op == "update":
                    got = await backend.update(key, value, expected_revision=guard)
                else:
                    got = await backend.delete(key, expected_revision=guard)
            except StoreError as exc:
                got = type(exc)
            assert got == want, (op, key, arg)
        await _check_model(backend, model, compacted)
    finally:
        await backend.close()


async def _check_model(backend: Backend, model: _Model, compacted: int) -> None:
    current = len(model.states) - 1
    assert await backend.current_revision() == current
    for rev in range(compacted + 1, current + 1):
        state = model.states[rev]
        for key in _KEYS:
            assert await backend.get(key, rev) == state.get(key), (key, rev)
        for prefix in _PREFIXES:
            res = await backend.list(prefix, revision=rev)
            want = [state[k] for k in sorted(state) if k.startswith(prefix)]
            assert (res.items, res.revision, res.more) == (want, rev, False), (prefix, rev)
    for rev in range(1, compacted + 1):
        with pytest.raises(Compacted):
            await backend.get(_KEYS[0], rev)
    now = await backend.list("/")
    assert now.items == [model.now[k] for k in sorted(model.now)]
    if current > compacted:
        stream = backend.watch("/", compacted)
        try:
            events = await collect(stream, current)
        finally:
            await aclose(stream)
        assert events == model.events[compacted:]
