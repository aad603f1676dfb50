"""Typed kinds (docs/writing-a-controller.md): what decoding objects into classes costs against
decoding them into dicts, at an informer's cold start.

One setpoint server holding N Lamp objects (a CRD generated from a class, ``tests/typed/lamp.py``
shape: spec with an int, an enum, a pattern string, a list; a status). The list response an
informer's cold start reads is fetched once (all pages, as the bytes the server sent); then,
alternating, several rounds of

- **dicts**: ``msgspec.json.decode`` of each page into dicts, as the informer does today;
- **typed**: ``msgspec.json.decode`` of each page straight into a list of ``Lamp`` instances
  (checked against the class on the way).

Time per object and the memory the decoded objects hold (``tracemalloc``, per object), medians of
the rounds. The reference is the dict path, measured in the same run: the goal is typed ≤ dicts.

``python -m bench.typed`` runs it alone; ``python -m bench --only typed`` as part of the bench.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import msgspec

from bench import procs
from setpoint.client.typed import Condition, Kind
from setpoint.crdgen import KindInfo

if TYPE_CHECKING:
    from bench.harness import Bench

OBJECTS = 100_000
ROUNDS = 5


class LampSpec(msgspec.Struct, kw_only=True):
    brightness: Annotated[int, msgspec.Meta(ge=0, le=100)] = 50
    color: Literal["red", "white", "blue"] = "white"
    room: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9-]*$")] | msgspec.UnsetType = msgspec.UNSET
    schedule: list[str] = []


class LampStatus(msgspec.Struct, kw_only=True):
    on: bool = False
    observedGeneration: int | msgspec.UnsetType = msgspec.UNSET
    conditions: list[Condition] | msgspec.UnsetType = msgspec.UNSET


class Lamp(Kind, kw_only=True):
    kind_info: ClassVar[KindInfo] = KindInfo(group="bench.example.com", version="v1")
    spec: LampSpec
    status: LampStatus | msgspec.UnsetType = msgspec.UNSET


class LampPage(msgspec.Struct):
    items: list[Lamp]
    metadata: dict[str, Any] = {}


async def fill(client: Any, n: int, log: Callable[[str], None]) -> None:
    from setpoint.client import Resource
    from setpoint.client.typed import resource_of
    from setpoint.crdgen import crd

    await client.create(Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", namespaced=False),
                        crd(Lamp))
    lamps = resource_of(Lamp)
    deadline = time.monotonic() + 30
    while True:
        try:
            await client.list(lamps, namespace="default", limit=1)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)  # the CRD is being installed
    sem = asyncio.Semaphore(32)
    rooms = ["kitchen", "hall", "study", "attic"]

    async def one(i: int) -> None:
        async with sem:
            await client.create(lamps, {"apiVersion": "bench.example.com/v1", "kind": "Lamp",
                                        "metadata": {"name": f"lamp-{i}", "labels": {"floor": str(i % 3)}},
                                        "spec": {"brightness": i % 101, "color": ("red", "white", "blue")[i % 3],
                                                 "room": rooms[i % 4], "schedule": ["07:00", "22:30"]}},
                                namespace="default")

    for start in range(0, n, 10_000):
        await asyncio.gather(*(one(i) for i in range(start, min(n, start + 10_000))))
        log(f"typed: {min(n, start + 10_000):,} of {n:,} lamps")


async def pages(base_url: str, token: str, page_size: int = 500) -> list[bytes]:
    """The list as the server sends it: the bytes of each page."""
    import httpx

    out = []
    cont = ""
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {token}"},
                                 timeout=60) as http:
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if cont:
                params["continue"] = cont
            r = await http.get("/apis/bench.example.com/v1/namespaces/default/lamps", params=params)
            r.raise_for_status()
            out.append(r.content)
            cont = msgspec.json.decode(r.content)["metadata"].get("continue", "")
            if not cont:
                return out


def decode_round(bodies: list[bytes], typed: bool) -> tuple[float, int, int]:
    """(seconds, bytes held by the decoded objects, objects)."""
    decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(LampPage) if typed else msgspec.json.Decoder()
    gc.collect()
    tracemalloc.start()
    started = time.perf_counter()
    held: list[Any] = []
    for body in bodies:
        page = decoder.decode(body)
        held.extend(page.items if typed else page["items"])
    elapsed = time.perf_counter() - started
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    n = len(held)
    del held
    return elapsed, size, n


def decode_time(bodies: list[bytes], typed: bool) -> float:
    """Time alone (tracemalloc slows allocation-heavy code: it is measured apart)."""
    decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(LampPage) if typed else msgspec.json.Decoder()
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        held = [decoder.decode(body) for body in bodies]
        elapsed = time.perf_counter() - started
    finally:
        gc.enable()
    del held
    return elapsed


def measure(tmp: Path, n: int = OBJECTS, rounds: int = ROUNDS, log: Callable[[str], None] = print) -> dict[str, Any]:
    from setpoint.client import Client, ClientConfig

    with procs.Setpoint(tmp / "server") as sp:
        async def main() -> list[bytes]:
            async with Client(ClientConfig(f"http://{sp.host}:{sp.port}", token=sp.token)) as client:
                await fill(client, n, log)
            return await pages(f"http://{sp.host}:{sp.port}", sp.token)

        bodies = asyncio.run(main())
    runs: dict[str, list[float]] = {"dict_s": [], "typed_s": [], "dict_bytes": [], "typed_bytes": []}
    for _ in range(rounds):
        for typed in (False, True):
            runs["typed_s" if typed else "dict_s"].append(decode_time(bodies, typed))
            _, size, count = decode_round(bodies, typed)
            assert count == n, f"decoded {count} of {n}"
            runs["typed_bytes" if typed else "dict_bytes"].append(size)
    m = {k: statistics.median(v) for k, v in runs.items()}
    res = {"objects": n, "rounds": rounds, "response_bytes": sum(map(len, bodies)),
           "dict_us_per_object": round(m["dict_s"] / n * 1e6, 2),
           "typed_us_per_object": round(m["typed_s"] / n * 1e6, 2),
           "dict_bytes_per_object": round(m["dict_bytes"] / n),
           "typed_bytes_per_object": round(m["typed_bytes"] / n),
           "runs": {k: [round(x, 4) for x in v] for k, v in runs.items()}}
    res["time_ratio"] = round(m["typed_s"] / m["dict_s"], 2)
    res["memory_ratio"] = round(m["typed_bytes"] / m["dict_bytes"], 2)
    res["markdown"] = markdown(res)
    return res


def markdown(res: dict[str, Any]) -> str:
    return "\n".join([
        "### Typed kinds: decoding an informer's cold start", "",
        f"{res['objects']:,} Lamp objects listed from one server ({res['response_bytes'] / 1e6:.1f} MB of JSON in "
        f"pages of 500), decoded in this process; medians of {res['rounds']} rounds.", "",
        "| decoded into | time per object | memory per object |", "|---|---|---|",
        f"| dicts (the informer today) | {res['dict_us_per_object']} µs | {res['dict_bytes_per_object']:,} B |",
        f"| `Lamp` instances (msgspec, checked) | {res['typed_us_per_object']} µs | "
        f"{res['typed_bytes_per_object']:,} B |",
        f"| typed ÷ dicts | {res['time_ratio']} | {res['memory_ratio']} |", ""])


def run(b: Bench) -> dict[str, Any]:
    res = measure(b.tmp / "typed", n=10_000 if b.a.quick else OBJECTS, rounds=3 if b.a.quick else ROUNDS,
                  log=b.log)
    b.a.out.mkdir(parents=True, exist_ok=True)
    (b.a.out / "typed.md").write_text(res["markdown"])
    return {k: v for k, v in res.items() if k != "markdown"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.typed", description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=OBJECTS)
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    a = ap.parse_args(argv)
    return procs.run_alone("typed", lambda tmp, log: measure(tmp, n=a.objects, rounds=a.rounds, log=log))


if __name__ == "__main__":
    sys.exit(main())
