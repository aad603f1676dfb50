"""The complete driver in docs/writing-a-driver.md runs as written."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from pathlib import Path
from typing import Any

from setpoint.agent.conditions import get_condition, is_converged
from setpoint.client import Client, NotFound, Resource
from tests.docs import guides
from tests.servers import ServerProcess
from tests.southbound.support import eventually, prepare

DOCS = Path(__file__).resolve().parents[2] / "docs"


def example() -> str:
    return re.findall(r"```python\n(.*?)```", (DOCS / "writing-a-driver.md").read_text(), re.S)[0]


def test_the_example_is_short() -> None:
    assert len([ln for ln in example().splitlines() if ln.strip()]) <= 50


async def test_the_driver_in_the_guide_works(server: ServerProcess, tmp_path: Path) -> None:
    ns: dict[str, Any] = {"__name__": "driver_guide"}
    exec(compile(example(), "writing-a-driver.md", "exec"), ns)
    notes: Resource = ns["NOTES"]
    async with Client(server.client_config()) as client:
        await guides.apply_crd_from("writing-a-driver.md", client)

        async def served() -> bool:
            try:
                await client.list(notes, namespace="default", limit=1)
                return True
            except NotFound:
                return False

        await eventually(served, what="Note served")
        space = await prepare(client)
        ctl = ns["NoteController"](client, ns["FileDriver"](tmp_path), namespace=space, drift_interval=0.2)
        task = asyncio.create_task(ctl.run())
        try:
            await client.create(notes, {"metadata": {"name": "hello"}, "spec": {"text": "hi there"}},
                                namespace=space)
            target = tmp_path / f"{space}.hello"

            async def written() -> bool:
                obj = await client.get(notes, "hello", namespace=space)
                return is_converged(obj) and obj["status"].get("length") == 8 and target.exists()

            await eventually(written, what="file written")
            assert target.read_text() == "hi there"
            target.write_text("edited by hand")  # drift: corrected on the next look
            await eventually(lambda: target.read_text() == "hi there", what="drift corrected")
            await client.create(notes, {"metadata": {"name": "long"}, "spec": {"text": "x" * 2000}},
                                namespace=space)

            async def refused() -> bool:
                obj = await client.get(notes, "long", namespace=space)
                cond = get_condition(obj.get("status"), "Ready")
                return cond is not None and cond["reason"] == "TooLong"

            await eventually(refused, what="permanent failure")
            await client.delete(notes, "hello", namespace=space)
            await eventually(lambda: not target.exists(), what="file removed by the finalizer")
            assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporary file left
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_the_driver_guide_runs_as_written(server: ServerProcess, tmp_path: Path) -> None:
    """The guide's CRD applied and its program run as ``python notes.py``: it makes ./notes,
    writes each note, refuses a long one with a condition and a Warning Event, deletes both."""
    await guides.run_as_written("writing-a-driver.md", "notes.py", "notes", "", server, tmp_path)

