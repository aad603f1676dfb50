"""Stacks (docs/stacks.md): a Stack of 200 resources in a graph of depth 5, applied with
parallelism 1 and 16, planned, and destroyed.

One setpoint server and ``setpoint controller-manager`` (the Stack controller). The resources are
ConfigMaps, 40 a level; each one of levels 2-5 refers to two of the level before
(``${resources.NAME.metadata.name}``), so it can start only once both exist. ConfigMaps converge
as they are written, so what is measured is the Stack machinery, not a slow child.

The reference, measured in the same run: the same 200 ConfigMaps created by one client level by
level, 16 at a time, each level after the one before (what a script that knows the order
would do). Ratios: a Stack's apply time ÷ the reference's.

- **apply**: from the Stack's create to its Ready condition (median of ``--rounds``);
- **plan**: ``setpoint plan -f`` of the Stack in an empty namespace (200 dry-run creates);
- **destroy**: from the Stack's delete until it is gone, its 200 resources deleted dependents first.

``python -m bench.stacks`` runs it alone; ``python -m bench --only stacks`` as part of the bench.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bench import procs

if TYPE_CHECKING:
    from bench.harness import Bench

ROOT = Path(__file__).resolve().parents[1]
LEVELS, WIDTH = 5, 40


class ControllerManager(procs.Managed):
    def __init__(self, kubeconfig: Path) -> None:
        super().__init__([sys.executable, "-m", "setpoint", "controller-manager", "--kubeconfig", str(kubeconfig),
                          "--log-level", "warning"], None, "controller-manager", cwd=ROOT)


def name(level: int, i: int) -> str:
    return f"l{level}-{i}"


def stack(stack_name: str, parallelism: int) -> dict[str, Any]:
    resources = []
    for level in range(LEVELS):
        for i in range(WIDTH):
            data = {"level": str(level)}
            if level:
                data["a"] = f"${{resources.{name(level - 1, i)}.metadata.name}}"
                data["b"] = f"${{resources.{name(level - 1, (i + 1) % WIDTH)}.metadata.name}}"
            resources.append({"name": name(level, i), "template": {
                "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{stack_name}-{name(level, i)}"},
                "data": data}})
    return {"apiVersion": "setpoint.dev/v1alpha1", "kind": "Stack", "metadata": {"name": stack_name},
            "spec": {"parallelism": parallelism, "resources": resources}}


async def _namespace(client: Any, ns: str) -> None:
    from setpoint.controllers.resources import NAMESPACES

    await client.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})


async def _until(check: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(0.02)  # the bench polls what it times; 20 ms is its resolution


async def reference(client: Any, ns: str) -> float:
    from setpoint.controllers.resources import CONFIGMAPS

    await _namespace(client, ns)
    sem = asyncio.Semaphore(16)
    body = stack("ref", 16)["spec"]["resources"]

    async def one(r: dict[str, Any]) -> None:
        async with sem:
            t = dict(r["template"])
            t["data"] = {k: (v if not v.startswith("$") else "filled") for k, v in t["data"].items()}
            await client.create(CONFIGMAPS, t, namespace=ns)

    started = time.perf_counter()
    for level in range(LEVELS):
        await asyncio.gather(*(one(r) for r in body[level * WIDTH:(level + 1) * WIDTH]))
    return time.perf_counter() - started


async def apply_and_destroy(client: Any, ns: str, parallelism: int) -> dict[str, float]:
    from setpoint.agent.conditions import get_condition
    from setpoint.client import NotFound
    from setpoint.controllers.resources import STACKS

    await _namespace(client, ns)
    started = time.perf_counter()
    await client.create(STACKS, stack("bench", parallelism), namespace=ns)

    async def ready() -> bool:
        s = await client.get(STACKS, "bench", namespace=ns)
        c = get_condition(s.get("status"), "Ready")
        return bool(c and c["status"] == "True")

    await _until(ready, 600, f"the stack (parallelism {parallelism}) converged")
    applied = time.perf_counter() - started
    started = time.perf_counter()
    await client.delete(STACKS, "bench", namespace=ns)

    async def gone() -> bool:
        try:
            await client.get(STACKS, "bench", namespace=ns)
            return False
        except NotFound:
            return True

    await _until(gone, 600, "the stack destroyed")
    return {"apply_seconds": applied, "destroy_seconds": time.perf_counter() - started}


def plan_seconds(sp: Any, tmp: Path, ns: str) -> float:
    path = tmp / "stack.yaml"
    path.write_text(yaml.safe_dump(stack("bench", 16)))
    started = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "setpoint", "plan", "-f", str(path), "-n", ns, "--kubeconfig",
                        str(sp.data_dir / "kubeconfig.yaml")], capture_output=True, text=True, timeout=600, cwd=ROOT)
    elapsed = time.perf_counter() - started
    if r.returncode != 0 or "Plan: 200 to create" not in r.stdout:
        raise RuntimeError(f"setpoint plan failed: {r.stdout[-500:]} {r.stderr[-2000:]}")
    return elapsed


def measure(tmp: Path, rounds: int = 3, log: Callable[[str], None] = print) -> dict[str, Any]:
    from setpoint.client import Client, ClientConfig

    res: dict[str, Any] = {"resources": LEVELS * WIDTH, "depth": LEVELS, "rounds": rounds}
    with procs.Setpoint(tmp / "server") as sp, ControllerManager(sp.data_dir / "kubeconfig.yaml"):
        async def main() -> None:
            async with Client(ClientConfig(f"http://{sp.host}:{sp.port}", token=sp.token)) as client:
                runs: dict[str, list[float]] = {"reference": [], "apply_1": [], "apply_16": [],
                                                "destroy_1": [], "destroy_16": []}
                for r in range(rounds):
                    log(f"stacks: round {r + 1}/{rounds}: the reference, then parallelism 16 and 1")
                    runs["reference"].append(await reference(client, f"ref-{r}-{time.time_ns() % 10**6}"))
                    for p in (16, 1):
                        out = await apply_and_destroy(client, f"p{p}-{r}-{time.time_ns() % 10**6}", p)
                        runs[f"apply_{p}"].append(out["apply_seconds"])
                        runs[f"destroy_{p}"].append(out["destroy_seconds"])
                res["runs"] = {k: [round(x, 3) for x in v] for k, v in runs.items()}
                res["median"] = {k: round(statistics.median(v), 3) for k, v in runs.items()}
                ns = f"plan-{time.time_ns() % 10**6}"
                await _namespace(client, ns)
                res["plan_seconds"] = round(await asyncio.to_thread(plan_seconds, sp, tmp, ns), 3)

        asyncio.run(main())
    m = res["median"]
    res["ratios"] = {f"apply_{p}_over_reference": round(m[f"apply_{p}"] / m["reference"], 2) for p in (1, 16)}
    res["markdown"] = markdown(res)
    return res


def markdown(res: dict[str, Any]) -> str:
    m, r = res["median"], res["ratios"]
    lines = ["### Stacks", "",
             f"A Stack of {res['resources']} ConfigMaps in a graph of depth {res['depth']} (each refers to two of "
             f"the level before); medians of {res['rounds']} rounds. Reference: the same objects created by one "
             "client level by level, 16 at a time.", "",
             "| measurement | time | ÷ reference |", "|---|---|---|",
             f"| reference: 200 creates in dependency order | {m['reference']:.2f} s | 1 |",
             f"| apply, parallelism 16 | {m['apply_16']:.2f} s | {r['apply_16_over_reference']} |",
             f"| apply, parallelism 1 | {m['apply_1']:.2f} s | {r['apply_1_over_reference']} |",
             f"| destroy (dependents first), after parallelism 16 | {m['destroy_16']:.2f} s | |",
             f"| destroy, after parallelism 1 | {m['destroy_1']:.2f} s | |",
             f"| `setpoint plan -f` (200 dry-run creates) | {res['plan_seconds']:.2f} s | |"]
    return "\n".join(lines) + "\n"


def run(b: Bench) -> dict[str, Any]:
    res = measure(b.tmp / "stacks", rounds=1 if b.a.quick else 3, log=b.log)
    b.a.out.mkdir(parents=True, exist_ok=True)
    (b.a.out / "stacks.md").write_text(res["markdown"])
    return {k: v for k, v in res.items() if k != "markdown"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.stacks", description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    return procs.run_alone("stacks", lambda tmp, log: measure(tmp, rounds=a.rounds, log=log))


if __name__ == "__main__":
    sys.exit(main())
