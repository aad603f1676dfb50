"""The code in the user guide runs as written."""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path
from typing import Any

from setpoint.agent.conditions import get_condition, is_converged
from setpoint.client import Client, NotFound, Resource
from tests.agent.support import eventually
from tests.docs import guides
from tests.servers import ServerProcess

DOCS = Path(__file__).resolve().parents[2] / "docs"
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", namespaced=False,
                kind="CustomResourceDefinition")


def python_blocks(doc: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / doc).read_text(), re.S)


def test_the_controller_in_the_guide_is_short() -> None:
    code = python_blocks("writing-a-controller.md")[0]
    lines = [line for line in code.splitlines() if line.strip()]
    assert len(lines) <= 40, len(lines)


async def test_the_controller_in_the_guide_works(server: ServerProcess, tmp_path: Path) -> None:
    namespace: dict[str, Any] = {"__name__": "guide_example"}
    exec(compile(python_blocks("writing-a-controller.md")[0], "writing-a-controller.md", "exec"), namespace)
    resource = namespace["GREETINGS"]
    async with Client(server.client_config()) as client:
        await guides.apply_crd_from("writing-a-controller.md", client)
        ctl = namespace["GreetingController"](client, tmp_path, namespace="default")
        task = asyncio.create_task(ctl.run())
        try:
            await eventually(lambda: _served(client, resource), timeout=10, what="kind served")
            await client.create(resource, {"metadata": {"name": "hello"}, "spec": {"text": "hi there"}},
                                namespace="default")
            target = tmp_path / "default.hello.txt"

            async def written() -> bool:
                obj = await client.get(resource, "hello", namespace="default")
                return is_converged(obj) and obj["status"].get("length") == 8 and target.exists()

            await eventually(written, timeout=20, what="file written and status reported")
            assert target.read_text() == "hi there"
            await client.create(resource, {"metadata": {"name": "long"}, "spec": {"text": "x" * 2000}},
                                namespace="default")

            async def refused() -> bool:
                cond = get_condition((await client.get(resource, "long", namespace="default")).get("status"),
                                     "Ready")
                return cond is not None and cond["reason"] == "TooLong"

            await eventually(refused, timeout=20, what="permanent failure reported")
            await client.delete(resource, "hello", namespace="default")

            async def removed() -> bool:
                try:
                    await client.get(resource, "hello", namespace="default")
                    return False
                except NotFound:
                    return not target.exists()

            await eventually(removed, timeout=20, what="finalizer removed the file")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _served(client: Client, resource: Resource) -> bool:
    try:
        await client.list(resource, namespace="default")
        return True
    except NotFound:
        return False


async def test_the_guide_runs_as_written(server: ServerProcess, tmp_path: Path) -> None:
    """The CRD block applied, the program saved as greetings.py and run with python: it makes its
    own directory, writes the file, reports a refused greeting as a condition and a Warning
    Event, and lets both objects be deleted."""
    await guides.run_as_written("writing-a-controller.md", "greetings.py", "greetings", ".txt", server, tmp_path)

