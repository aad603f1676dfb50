"""kill -9 of the server during a burst of writes loses no acknowledged write and leaves no gap."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import httpx

from tests.api.conftest_helpers import wpath
from tests.conftest import ensure_crd, widget
from tests.servers import ServerProcess


async def burst(srv: ServerProcess, acked: dict[str, int], stop_after: int) -> None:
    """32 concurrent writers create widgets until the server dies; every 201 is recorded."""
    counter = iter(range(1_000_000))
    killed = asyncio.Event()

    async def writer(client: httpx.AsyncClient) -> None:
        while not killed.is_set():
            name = f"c{next(counter)}"
            try:
                r = await client.post(wpath("default"), json=widget(name))
            except httpx.HTTPError:
                return
            if r.status_code == 201:
                acked[name] = int(r.json()["metadata"]["resourceVersion"])
                if len(acked) == stop_after and not killed.is_set():
                    srv.kill(signal.SIGKILL)  # mid-burst: the other writers are in flight
                    killed.set()

    limits = httpx.Limits(max_connections=32)
    async with srv.client(limits=limits) as client:
        await asyncio.gather(*(writer(client) for _ in range(32)))


async def test_kill_9_during_write_burst(data_dir: Path) -> None:
    srv = ServerProcess(data_dir).start()
    try:
        with srv.sync_client() as c:
            ensure_crd(c)
        acked: dict[str, int] = {}
        await burst(srv, acked, stop_after=600)
        assert srv.proc is not None and srv.proc.returncode == -signal.SIGKILL
        assert len(acked) >= 600

        # Straight from the store: revisions 1..N with no gap, every acknowledged write present.
        from setpoint.store import SQLiteBackend

        backend = SQLiteBackend(data_dir / "state.db")
        await backend.start()
        try:
            current = await backend.current_revision()
            seen: list[int] = []
            async with contextlib.aclosing(backend.watch("/", 0)) as w:
                async for batch in w:
                    seen.extend(ev.revision for ev in batch)
                    if seen and seen[-1] >= current:
                        break
            assert seen == list(range(1, current + 1))
        finally:
            await backend.close()

        srv.start()
        with srv.sync_client() as c:
            items = c.get(wpath("default")).json()["items"]
        stored = {i["metadata"]["name"]: int(i["metadata"]["resourceVersion"]) for i in items}
        missing = [n for n in acked if n not in stored]
        assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
        assert all(stored[n] == rv for n, rv in acked.items())
    finally:
        srv.stop()
