"""LoadBalancers (docs/loadbalancer.md): how fast a balancer follows its backends, and what a
scale-up or scale-down under load costs clients, side by side with the reload approach.

One setpoint server and one agent (which runs the balancers); the backends are one process
listening on many ports (each answers with its port). For each driver (HAProxy, Envoy) and each
size ``n``:

- **follow time**: EndpointSlices are written for a scale from ``n/2`` to ``n`` backends, then
  deleted for the scale back (one slice per backend, as setpoint writes them for a ProcessSet's
  replicas); measured from the first write until the balancer itself (HAProxy's ``show servers
  state``, Envoy's admin API) has exactly the new set: the controller's informer, the complete
  sync and the driver's runtime changes, end to end. p50 and p99 over the rounds.
- **follow time from a replicas change**: the same, from a ProcessSet's ``replicas`` patch: the
  agent starts the replicas and reports each once it listens on its port (or stops them), the
  controller manager writes their EndpointSlices, and the agent's LoadBalancer controller syncs
  the balancer. Each replica is a few lines of Perl that accept connections on their port (a
  Python interpreter per replica would make the run measure Python's start-up).
- **failed requests under load**: clients send requests through the balancer, a new connection
  each, while the backends are scaled between 10 and 20 every 200 ms; through setpoint's runtime
  sync (HAProxy, and Envoy), and the way consul-template users do it: the whole configuration
  rendered to a file and HAProxy reloaded (``haproxy -sf OLDPID``) on every change, measured in
  the same run on the same machine.

``python -m bench.loadbalancer`` runs it alone; ``python -m bench --only loadbalancer`` as part of
the bench.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from bench import procs

if TYPE_CHECKING:
    from bench.harness import Bench

SIZES = (1, 10, 100, 500)
PS_SIZES = (1, 10, 100)
ROUNDS = 5
ROOT = Path(__file__).resolve().parent.parent


# ---- the backends: one process, many ports ------------------------------------------------------

async def _serve(count: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = writer.get_extra_info("sockname")[1]
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            body = b"%d\n" % port
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        writer.close()

    servers = [await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024) for _ in range(count)]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    print("ports " + " ".join(map(str, ports)), flush=True)
    await asyncio.Event().wait()


class Backends(procs.Managed):
    READY = re.compile(r"^ports (.*)$")

    def __init__(self, count: int) -> None:
        super().__init__([sys.executable, "-m", "bench.loadbalancer", "--serve", str(count)], self.READY,
                         "backends", cwd=ROOT)

    @property
    def ports(self) -> list[int]:
        assert self.match is not None
        return [int(p) for p in self.match.group(1).split()]


class ControllerManager(procs.Managed):
    """Writes the EndpointSlices of ProcessSets' replicas (the endpoints controller)."""

    def __init__(self, kubeconfig: Path) -> None:
        super().__init__([sys.executable, "-m", "setpoint", "controller-manager", "--kubeconfig", str(kubeconfig),
                          "--log-level", "warning"], None, "controller-manager", cwd=ROOT)


class Agent(procs.Managed):
    def __init__(self, kubeconfig: Path, state: Path) -> None:
        super().__init__([sys.executable, "-m", "setpoint", "agent", "--node", "bench", "--kubeconfig",
                          str(kubeconfig), "--state-dir", str(state), "--stop-processes-on-exit",
                          "--log-level", "warning"], re.compile(r"agent for node"), "agent", cwd=ROOT)


# ---- what the balancer has ------------------------------------------------------------------------

async def balancer_set(driver: str, state: Path, uid: str) -> set[int]:
    """The backend ports the balancer itself serves (not what the files or the status say)."""
    from setpoint.drivers.loadbalancer.runtime import RuntimeAPI

    inst = state / "loadbalancers" / driver / uid
    if driver == "haproxy":
        cfg = (inst / "haproxy.cfg").read_text()
        sock = next(line.split()[2] for line in cfg.splitlines() if "stats socket" in line)
        servers = await RuntimeAPI(Path(sock)).servers("be")
        return {s.port for s in servers.values() if s.state not in ("MAINT", "DRAIN")}
    admin = (inst / "admin.address").read_text().strip()
    async with httpx.AsyncClient() as c:
        doc = (await c.get(f"http://{admin}/clusters", params={"format": "json"})).json()
    return {int(h["address"]["socket_address"]["port_value"]) for cs in doc.get("cluster_statuses") or []
            if cs.get("name") == "backends" for h in cs.get("host_statuses") or []}


def slice_body(app: str, port: int) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{app}-{port}", "labels": {"app": app}}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
            "ports": [{"name": "", "port": port, "protocol": "TCP"}]}


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))] * 1000, 1) if s else 0.0


# ---- load -------------------------------------------------------------------------------------------

class Load:
    """``clients`` loops of requests through ``port``, a new connection each."""

    def __init__(self, port: int, clients: int = 8) -> None:
        self.port = port
        self.clients = clients
        self.ok = 0
        self.failed = 0
        self.errors: dict[str, int] = {}
        self._stop = asyncio.Event()

    async def _one(self) -> None:
        try:
            async with asyncio.timeout(5):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                data = await reader.read()
                writer.close()
            if data.startswith(b"HTTP/1.1 200") or data.startswith(b"HTTP/1.0 200"):
                self.ok += 1
                return
            why = data.split(b"\r\n", 1)[0].decode(errors="replace") or "empty answer"
        except (OSError, TimeoutError) as e:
            why = type(e).__name__
        self.failed += 1
        self.errors[why] = self.errors.get(why, 0) + 1

    async def _loop(self) -> None:
        while not self._stop.is_set():
            await self._one()

    async def run_while(self, work: Callable[[], Any]) -> None:
        tasks = [asyncio.create_task(self._loop()) for _ in range(self.clients)]
        try:
            await work()
        finally:
            self._stop.set()
            await asyncio.gather(*tasks)


# ---- the measurements -------------------------------------------------------------------------------

async def follow_times(client: Any, driver: str, state: Path, ports: list[int], sizes: tuple[int, ...],
                       rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    from setpoint.agent.errors import DriverError
    from setpoint.controllers.resources import ENDPOINTSLICES, LOADBALANCERS

    app = f"follow-{driver}"
    lb_port = procs.free_port()
    lb = await client.create(LOADBALANCERS, {
        "apiVersion": "setpoint.dev/v1alpha1", "kind": "LoadBalancer", "metadata": {"name": app},
        "spec": {"nodeName": "bench", "driver": driver, "frontend": {"port": lb_port, "mode": "tcp"},
                 "backends": {"selector": {"matchLabels": {"app": app}}, "drainSeconds": 0}}}, namespace="default")
    uid = lb["metadata"]["uid"]
    current: set[int] = set()

    async def scale_to(want: set[int]) -> tuple[float, float]:
        """(from the first write, from the last write's answer) until the balancer has ``want``."""
        nonlocal current
        started = time.perf_counter()
        await asyncio.gather(
            *(client.create(ENDPOINTSLICES, slice_body(app, p), namespace="default") for p in want - current),
            *(client.delete(ENDPOINTSLICES, f"{app}-{p}", namespace="default") for p in current - want))
        current = want
        written = time.perf_counter()
        deadline = started + 120
        delay = 0.002
        while True:
            with contextlib.suppress(OSError, KeyError, StopIteration, ValueError, httpx.HTTPError, DriverError):
                if await balancer_set(driver, state, uid) == want:
                    done = time.perf_counter()
                    return done - started, done - written
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{driver}: the balancer did not reach {len(want)} backends in 120 s")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.02)

    out: dict[str, Any] = {}
    for n in sizes:
        half = set(ports[: n // 2])
        full = set(ports[:n])
        await scale_to(half)
        up: list[tuple[float, float]] = []
        down: list[tuple[float, float]] = []
        for _ in range(rounds):
            up.append(await scale_to(full))
            down.append(await scale_to(half))
        out[str(n)] = {"up_p50_ms": pct([u[0] for u in up], 0.5), "up_p99_ms": pct([u[0] for u in up], 0.99),
                       "down_p50_ms": pct([d[0] for d in down], 0.5),
                       "down_p99_ms": pct([d[0] for d in down], 0.99),
                       "after_writes_p50_ms": pct([x[1] for x in up + down], 0.5),
                       "change": f"{n // 2} <-> {n}"}
        log(f"  {driver} {n}: up p50 {out[str(n)]['up_p50_ms']} ms, down p50 {out[str(n)]['down_p50_ms']} ms, "
            f"after the last write {out[str(n)]['after_writes_p50_ms']} ms")
    await scale_to(set())
    await client.delete(LOADBALANCERS, app, namespace="default")
    return out


# A replica that listens on its port and closes what it accepts: the agent reports a replica
# running once its port answers.
_LISTEN = ('use IO::Socket::INET; $SIG{TERM} = sub { exit 0 }; my $s = IO::Socket::INET->new(LocalAddr => '
           '"127.0.0.1", LocalPort => $ENV{PORT}, Listen => 1024, ReuseAddr => 1) or die "$!"; '
           'while (1) { my $c = $s->accept; close $c if $c }')
_LISTEN_PY = ("import os, socket\ns = socket.create_server(('127.0.0.1', int(os.environ['PORT'])), backlog=1024)\n"
              "while True: s.accept()[0].close()")
REPLICA = ({"command": shutil.which("perl"), "args": ["-e", _LISTEN]} if shutil.which("perl") else
           {"command": sys.executable, "args": ["-c", _LISTEN_PY]})


async def replicas_follow_times(client: Any, driver: str, state: Path, sizes: tuple[int, ...], rounds: int,
                                log: Callable[[str], None]) -> dict[str, Any]:
    """From a ProcessSet's replicas patch until the balancer has exactly the running replicas."""
    from setpoint.agent.errors import DriverError
    from setpoint.controllers.resources import LOADBALANCERS, PROCESSSETS

    app = f"replicas-{driver}"
    await client.create(PROCESSSETS, {
        "apiVersion": "setpoint.dev/v1alpha1", "kind": "ProcessSet", "metadata": {"name": app, "labels": {"app": app}},
        "spec": {**REPLICA, "replicas": 0, "nodeName": "bench", "portEnv": "PORT", "stopGracePeriodSeconds": 1}},
        namespace="default")
    lb = await client.create(LOADBALANCERS, {
        "apiVersion": "setpoint.dev/v1alpha1", "kind": "LoadBalancer", "metadata": {"name": app},
        "spec": {"nodeName": "bench", "driver": driver,
                 "frontend": {"port": procs.free_port(), "mode": "tcp", "healthCheck": {"intervalSeconds": 5}},
                 "backends": {"selector": {"matchLabels": {"app": app}}, "drainSeconds": 0}}}, namespace="default")
    uid = lb["metadata"]["uid"]

    async def running(target: int) -> set[int] | None:
        ps = await client.get(PROCESSSETS, app, namespace="default")
        ports = {p["port"] for p in (ps.get("status") or {}).get("processes") or []
                 if p.get("state") == "Running" and isinstance(p.get("replica"), int) and p["replica"] < target}
        return ports if len(ports) == target else None

    async def scale_to(target: int) -> float:
        started = time.perf_counter()
        await client.patch(PROCESSSETS, app, {"spec": {"replicas": target}}, namespace="default")
        deadline = started + 120
        want: set[int] | None = None
        delay = 0.002
        while True:
            if want is None:
                want = await running(target)
            if want is not None:
                with contextlib.suppress(OSError, KeyError, StopIteration, ValueError, httpx.HTTPError, DriverError):
                    if await balancer_set(driver, state, uid) == want:
                        return time.perf_counter() - started
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{driver}: the balancer did not follow replicas {target} in 120 s")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.02)

    out: dict[str, Any] = {}
    for n in sizes:
        await scale_to(n // 2)
        up: list[float] = []
        down: list[float] = []
        for _ in range(rounds):
            up.append(await scale_to(n))
            down.append(await scale_to(n // 2))
        out[str(n)] = {"up_p50_ms": pct(up, 0.5), "up_p99_ms": pct(up, 0.99), "down_p50_ms": pct(down, 0.5),
                       "down_p99_ms": pct(down, 0.99), "change": f"{n // 2} <-> {n}"}
        log(f"  {driver} replicas {n // 2} <-> {n}: up p50 {out[str(n)]['up_p50_ms']} ms, "
            f"down p50 {out[str(n)]['down_p50_ms']} ms")
    await scale_to(0)
    await client.delete(LOADBALANCERS, app, namespace="default")
    await client.delete(PROCESSSETS, app, namespace="default")
    return out


CHANGES = 20
CHANGE_EVERY = 0.2


async def under_load_runtime(client: Any, ports: list[int], driver: str = "haproxy") -> dict[str, Any]:
    from setpoint.controllers.resources import ENDPOINTSLICES, LOADBALANCERS

    app = f"load-{driver}"
    lb_port = procs.free_port()
    await client.create(LOADBALANCERS, {
        "apiVersion": "setpoint.dev/v1alpha1", "kind": "LoadBalancer", "metadata": {"name": app},
        "spec": {"nodeName": "bench", "driver": driver, "frontend": {"port": lb_port, "mode": "http"},
                 "backends": {"selector": {"matchLabels": {"app": app}}, "drainSeconds": 1}}},
        namespace="default")
    for p in ports[:20]:
        await client.create(ENDPOINTSLICES, slice_body(app, p), namespace="default")
    load = Load(lb_port)
    await _wait_serving(lb_port)

    async def changes() -> None:
        for i in range(CHANGES):
            extra = ports[10:20]
            if i % 2 == 0:
                await asyncio.gather(*(client.delete(ENDPOINTSLICES, f"{app}-{p}", namespace="default") for p in extra))
            else:
                await asyncio.gather(*(client.create(ENDPOINTSLICES, slice_body(app, p), namespace="default")
                                       for p in extra))
            await asyncio.sleep(CHANGE_EVERY)  # the pace of the changes, not a wait for one

    await load.run_while(changes)
    await client.delete(LOADBALANCERS, app, namespace="default")
    await asyncio.gather(*(client.delete(ENDPOINTSLICES, f"{app}-{p}", namespace="default") for p in ports[:20]))
    return {"ok": load.ok, "failed": load.failed, "errors": load.errors}


async def under_load_reload(tmp: Path, ports: list[int]) -> dict[str, Any]:
    """consul-template's way: render the whole file, reload HAProxy with -sf, on every change."""
    from setpoint.drivers.loadbalancer.haproxy import find_haproxy, render
    from setpoint.drivers.loadbalancer.model import Backend, Desired, Frontend

    binary = find_haproxy()
    assert binary is not None
    d = tmp / "reload"
    d.mkdir(parents=True, exist_ok=True)
    cfg, pidfile = d / "haproxy.cfg", d / "haproxy.pid"
    lb_port = procs.free_port()
    fe = Frontend(address="127.0.0.1", port=lb_port, mode="http")

    def reload(backends: list[int]) -> None:
        desired = Desired(fe, tuple(Backend("127.0.0.1", p) for p in backends))
        cfg.write_text(render(desired, d / "admin.sock", "reload approach"))
        old = pidfile.read_text().split() if pidfile.exists() else []
        subprocess.run([binary, "-f", str(cfg), "-p", str(pidfile), "-D", *(["-sf", *old] if old else [])],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    await asyncio.to_thread(reload, ports[:20])
    await _wait_serving(lb_port)
    load = Load(lb_port)

    async def changes() -> None:
        for i in range(CHANGES):
            await asyncio.to_thread(reload, ports[:10] if i % 2 == 0 else ports[:20])
            await asyncio.sleep(CHANGE_EVERY)

    try:
        await load.run_while(changes)
    finally:
        for pid in pidfile.read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    return {"ok": load.ok, "failed": load.failed, "errors": load.errors}


async def _wait_serving(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError):
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing serves on {port}")
        await asyncio.sleep(0.05)


def measure(tmp: Path, sizes: tuple[int, ...] = SIZES, rounds: int = ROUNDS,
            log: Callable[[str], None] = print, ps_sizes: tuple[int, ...] = PS_SIZES) -> dict[str, Any]:
    from setpoint.client import Client, ClientConfig
    from setpoint.drivers.loadbalancer.haproxy import find_haproxy

    drivers = []
    if find_haproxy() is not None:
        drivers.append("haproxy")
    with contextlib.suppress(ImportError):
        import envoy  # noqa: F401

        drivers.append("envoy")
    res: dict[str, Any] = {"sizes": list(sizes), "ps_sizes": list(ps_sizes), "rounds": rounds, "drivers": drivers,
                           "follow": {}, "replicas": {}, "under_load": {}}
    with Backends(max(max(sizes), 20)) as backends, procs.Setpoint(tmp / "server") as sp, \
            ControllerManager(sp.data_dir / "kubeconfig.yaml"), Agent(sp.data_dir / "kubeconfig.yaml", tmp / "agent"):
        ports = backends.ports

        async def main() -> None:
            async with Client(ClientConfig(f"http://{sp.host}:{sp.port}", token=sp.token)) as client:
                for driver in drivers:
                    log(f"loadbalancer: follow time, {driver}")
                    res["follow"][driver] = await follow_times(client, driver, tmp / "agent", ports, sizes,
                                                               rounds, log)
                for driver in drivers if ps_sizes else ():
                    log(f"loadbalancer: follow time from a replicas change, {driver}")
                    res["replicas"][driver] = await replicas_follow_times(client, driver, tmp / "agent", ps_sizes,
                                                                          rounds, log)
                for driver in drivers:
                    log(f"loadbalancer: under load, runtime sync, {driver}")
                    res["under_load"][driver] = await under_load_runtime(client, ports, driver)
                if "haproxy" in drivers:
                    log("loadbalancer: under load, render and reload")
                    res["under_load"]["reload"] = await under_load_reload(tmp, ports)

        asyncio.run(main())
    res["markdown"] = markdown(res)
    return res


def markdown(res: dict[str, Any]) -> str:
    lines = ["### LoadBalancers", "",
             "Time from EndpointSlice writes to the balancer serving exactly the new set (one slice per backend, "
             f"{res['rounds']} rounds each way):", "",
             "| driver | backends | scale up p50 | up p99 | scale down p50 | down p99 | after the last write, p50 |",
             "|---|---|---|---|---|---|---|"]
    for driver, sizes in res["follow"].items():
        for _n, r in sizes.items():
            lines.append(f"| {driver} | {r['change']} | {r['up_p50_ms']} ms | {r['up_p99_ms']} ms | "
                         f"{r['down_p50_ms']} ms | {r['down_p99_ms']} ms | {r['after_writes_p50_ms']} ms |")
    if res.get("replicas"):
        lines += ["", "Time from a ProcessSet's replicas patch to the balancer serving exactly the running replicas "
                  "(the agent starts or stops them, the controller manager writes their EndpointSlices, the agent "
                  f"syncs the balancer; {res['rounds']} rounds each way):", "",
                  "| driver | replicas | scale up p50 | up p99 | scale down p50 | down p99 |",
                  "|---|---|---|---|---|---|"]
        for driver, sizes in res["replicas"].items():
            for _n, r in sizes.items():
                lines.append(f"| {driver} | {r['change']} | {r['up_p50_ms']} ms | {r['up_p99_ms']} ms | "
                             f"{r['down_p50_ms']} ms | {r['down_p99_ms']} ms |")
    rows = {"haproxy": "setpoint runtime sync, HAProxy (runtime API)",
            "envoy": "setpoint runtime sync, Envoy (EDS file)",
            "reload": "render and reload (haproxy -sf, as consul-template)"}
    if res.get("under_load"):
        lines += ["", f"Requests during {CHANGES} scale changes (10 <-> 20 backends, one every "
                  f"{int(CHANGE_EVERY * 1000)} ms), 8 clients, a new connection each:", "",
                  "| approach | requests | failed | errors |", "|---|---|---|---|"]
        for key, r in res["under_load"].items():
            lines.append(f"| {rows[key]} | {r['ok'] + r['failed']} | {r['failed']} | {r['errors'] or '-'} |")
    return "\n".join(lines) + "\n"


def run(b: Bench) -> dict[str, Any]:
    quick = b.a.quick
    res = measure(b.tmp / "loadbalancer", sizes=(1, 10, 100) if quick else SIZES, rounds=3 if quick else ROUNDS,
                  log=b.log, ps_sizes=(1, 10) if quick else PS_SIZES)
    b.a.out.mkdir(parents=True, exist_ok=True)
    (b.a.out / "loadbalancer.md").write_text(res["markdown"])
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.loadbalancer", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--replicas", default=",".join(map(str, PS_SIZES)),
                    help="ProcessSet sizes for the follow time from a replicas change ('' to skip)")
    ap.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)  # the backends process
    a = ap.parse_args(argv)
    if a.serve:
        asyncio.run(_serve(a.serve))
        return 0

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    sizes = tuple(int(s) for s in a.sizes.split(","))
    ps_sizes = tuple(int(s) for s in a.replicas.split(",") if s)
    return procs.run_alone("lb", lambda tmp, log: measure(tmp, sizes=sizes, rounds=a.rounds, log=log,
                                                          ps_sizes=ps_sizes))


if __name__ == "__main__":
    sys.exit(main())
