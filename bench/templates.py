"""Templates (docs/templates.md): what a burst of changes costs, and the CPU of a render as the
number of objects a template reads grows.

One setpoint server; the template engine runs in this process, as ``setpoint template`` would.

- **burst**: a template reading 10 ConfigMaps with ``--wait 0.5s:30s`` and a command; 1,000
  changes to them, as fast as one client writes them; counted: renders and command runs for the
  burst (goal: 1 each), and the time from the last change's answer until the file on disk holds
  the final state.
- **CPU per render**: a template listing N ConfigMaps (one line each), for N = 1, 100, 10,000;
  one object changed again and again with no wait, so that each change is one render; the
  process's CPU time per render (the informer's handling of the event included, the client's
  cost of sending the change, measured alone first, taken off).

``python -m bench.templates`` runs it alone; ``python -m bench --only templates`` as part of the bench.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import procs

if TYPE_CHECKING:
    from bench.harness import Bench

SIZES = (1, 100, 10_000)
BURST = 1_000
RENDERS = 50
LINES = "{% for cm in objects('configmaps', {'set': 'SET'}) %}{{ cm.metadata.name }} {{ cm.data.v }}\n{% endfor %}"


def _cm(name: str, value: str, label: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"set": label}},
            "data": {"v": value}}


async def _create_many(client: Any, label: str, n: int) -> None:
    from setpoint.templates.resolve import CONFIGMAPS

    sem = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        async with sem:
            await client.create(CONFIGMAPS, _cm(f"{label}-{i}", "0", label), namespace="default")

    await asyncio.gather(*(one(i) for i in range(n)))


async def burst(client: Any, tmp: Path) -> dict[str, Any]:
    from setpoint.templates import Engine, TemplateConfig
    from setpoint.templates.resolve import CONFIGMAPS

    await _create_many(client, "burst", 10)
    out, ran = tmp / "burst.out", tmp / "burst.ran"
    engine = Engine(client)
    try:
        entry = engine.put("burst", TemplateConfig(
            name="burst", source=LINES.replace("SET", "burst"), destination=out, command=f"echo run >> {ran}",
            wait_min=0.5, wait_max=30.0))
        await entry.first_done.wait()
        renders0, commands0 = entry.outcome.renders, entry.outcome.commands
        rounds = BURST // 10

        async def chain(k: int) -> None:  # one object's changes in order: its last value is known
            for r in range(1, rounds + 1):
                await client.patch(CONFIGMAPS, f"burst-{k}", {"data": {"v": str(r)}}, namespace="default")

        started = time.perf_counter()
        await asyncio.gather(*(chain(k) for k in range(10)))
        last = time.perf_counter()
        want = "".join(f"burst-{k} {rounds}\n" for k in range(10))
        while not (out.exists() and out.read_text() == want):  # noqa: ASYNC110 - a file cannot be awaited
            await asyncio.sleep(0.005)
        on_disk = time.perf_counter()
        return {"changes": BURST, "write_seconds": round(last - started, 3),
                "renders": entry.outcome.renders - renders0, "commands": entry.outcome.commands - commands0,
                "last_change_to_file_ms": round((on_disk - last) * 1000, 1), "wait": "0.5s:30s"}
    finally:
        await engine.close()


async def cpu_per_render(client: Any, tmp: Path, n: int) -> dict[str, Any]:
    from setpoint.templates import Engine, TemplateConfig
    from setpoint.templates.resolve import CONFIGMAPS

    label = f"cpu{n}"
    await _create_many(client, label, n)
    # The client's own CPU for the changes, measured alone, is taken off: it is not the render's.
    cpu0 = time.process_time()
    for i in range(1, RENDERS + 1):
        await client.patch(CONFIGMAPS, f"{label}-0", {"data": {"v": str(-i)}}, namespace="default")
    client_cpu = time.process_time() - cpu0
    engine = Engine(client)
    try:
        entry = engine.put(label, TemplateConfig(name=label, source=LINES.replace("SET", label),
                                                 destination=tmp / f"{label}.out"))
        await entry.first_done.wait()
        cpu0, wall0, renders0 = time.process_time(), time.perf_counter(), entry.outcome.renders
        for i in range(1, RENDERS + 1):
            await client.patch(CONFIGMAPS, f"{label}-0", {"data": {"v": str(i)}}, namespace="default")
            while entry.outcome.renders < renders0 + i:  # noqa: ASYNC110 - the render follows the change
                await asyncio.sleep(0.001)
        cpu = time.process_time() - cpu0 - client_cpu
        renders = entry.outcome.renders - renders0
        return {"objects": n, "renders": renders, "cpu_ms_per_render": round(cpu / renders * 1000, 2),
                "wall_ms_per_change": round((time.perf_counter() - wall0) / renders * 1000, 2),
                "file_bytes": (tmp / f"{label}.out").stat().st_size}
    finally:
        await engine.close()


def measure(tmp: Path, sizes: tuple[int, ...] = SIZES, log: Callable[[str], None] = print) -> dict[str, Any]:
    from setpoint.client import Client, ClientConfig

    res: dict[str, Any] = {}
    with procs.Setpoint(tmp / "server") as sp:
        async def main() -> None:
            async with Client(ClientConfig(f"http://{sp.host}:{sp.port}", token=sp.token)) as client:
                log("templates: a burst of 1,000 changes")
                res["burst"] = await burst(client, tmp)
                res["cpu"] = []
                for n in sizes:
                    log(f"templates: CPU per render, {n} objects")
                    res["cpu"].append(await cpu_per_render(client, tmp, n))

        asyncio.run(main())
    res["markdown"] = markdown(res)
    return res


def markdown(res: dict[str, Any]) -> str:
    b = res["burst"]
    lines = ["### Templates", "",
             f"A burst of {b['changes']} changes to what one template reads (`--wait {b['wait']}`), written in "
             f"{b['write_seconds']} s:", "",
             "| renders | command runs | last change to the file on disk |", "|---|---|---|",
             f"| {b['renders']} | {b['commands']} | {b['last_change_to_file_ms']} ms |", "",
             "CPU per render of a template listing N objects (one line each), each change one render:", "",
             "| objects read | CPU per render | wall time per change | file size |", "|---|---|---|---|"]
    for c in res["cpu"]:
        lines.append(f"| {c['objects']:,} | {c['cpu_ms_per_render']} ms | {c['wall_ms_per_change']} ms | "
                     f"{c['file_bytes']:,} B |")
    return "\n".join(lines) + "\n"


def run(b: Bench) -> dict[str, Any]:
    res = measure(b.tmp / "templates", sizes=(1, 100, 1_000) if b.a.quick else SIZES, log=b.log)
    b.a.out.mkdir(parents=True, exist_ok=True)
    (b.a.out / "templates.md").write_text(res["markdown"])
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.templates", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    a = ap.parse_args(argv)
    sizes = tuple(int(s) for s in a.sizes.split(","))
    return procs.run_alone("templates", lambda tmp, log: measure(tmp, sizes=sizes, log=log))


if __name__ == "__main__":
    sys.exit(main())
