"""The agent side of setpoint under load: informer cold start, reconciles/s, coalescing of a
flood of updates, replicas → running processes, and the same work done by the official
``kubernetes`` Python client and by kopf, where the comparison applies.

``python -m bench --only agent`` runs this part alone; bench/README.md describes each figure.
Each measurement runs in a process of its own (``python -m bench.agent MODE CONFIG``), so that
its CPU and RSS are its own; the bench talks to it over stdin/stdout (one ``BENCH {json}`` line
per answer). The load (creates, patches) comes from ``bench/rawhttp.py`` in the bench process.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from bench import latency, loadgen, procs
from bench.cpu import machine_busy, process_cpu
from bench.operators import AGENT_HANDLERS
from bench.rawhttp import build_request, fetch, open_stream

if TYPE_CHECKING:
    from bench.harness import Bench

ROOT = Path(__file__).resolve().parent.parent
GROUP, VERSION, PLURAL = "example.com", "v1", "widgets"
SLEEPER = [sys.executable, "-c", "import time; time.sleep(1e6)"]
MARK = "BENCH "


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    return int(v) if v else default


@dataclass
class Sizes:
    informer_objects: int
    informer_rounds: int
    events_updates: int
    reconcile_objects: int
    workers: int
    flood_updates: int
    flood_objects: int
    reconcile_ms: float
    kopf_timeout_s: float
    ps_replicas: int
    ps_rounds: int

    @classmethod
    def of(cls, quick: bool) -> Sizes:
        return cls(
            informer_objects=_env_int("BENCH_AGENT_INFORMER_OBJECTS", 2_000 if quick else 100_000),
            informer_rounds=_env_int("BENCH_AGENT_INFORMER_ROUNDS", 1 if quick else 3),
            events_updates=_env_int("BENCH_AGENT_EVENTS_UPDATES", 1_000 if quick else 10_000),
            reconcile_objects=_env_int("BENCH_AGENT_RECONCILE_OBJECTS", 500 if quick else 10_000),
            workers=_env_int("BENCH_AGENT_WORKERS", 4),
            flood_updates=_env_int("BENCH_AGENT_FLOOD_UPDATES", 1_000 if quick else 20_000),
            flood_objects=_env_int("BENCH_AGENT_FLOOD_OBJECTS", 20 if quick else 100),
            reconcile_ms=float(os.environ.get("BENCH_AGENT_RECONCILE_MS") or 5.0),
            kopf_timeout_s=float(os.environ.get("BENCH_AGENT_KOPF_TIMEOUT") or (20.0 if quick else 60.0)),
            ps_replicas=_env_int("BENCH_AGENT_PS_REPLICAS", 3 if quick else 10),
            ps_rounds=_env_int("BENCH_AGENT_PS_ROUNDS", 1 if quick else 3),
        )


# ==== helpers shared by both sides ===============================================================

def rss_kb() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in KiB."""
    rss = hwm = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


def processes_of(uid: str) -> list[int]:
    """Every live process on this host that belongs to ProcessSet ``uid`` (its environment says so)."""
    needle = f"SETPOINT_PROCESSSET_UID={uid}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
            if needle not in env:
                continue
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and needle in env.split(b"\0"):
            found.append(int(entry))
    return found


class CpuSpan:
    """CPU seconds used over a span of time: by named processes, by this process (``own``), and
    by everything else on the machine (``other``: on a shared machine, what skews a figure)."""

    def __init__(self, **pids: int) -> None:
        self.pids = pids
        self.t0 = time.monotonic()
        self.own0 = time.process_time()
        self.machine0 = machine_busy()
        self.p0 = {k: process_cpu(v) for k, v in pids.items()}

    def end(self, own: str = "own") -> dict[str, float]:
        wall = time.monotonic() - self.t0
        used = {k: process_cpu(v) - self.p0[k] for k, v in self.pids.items()}
        mine = time.process_time() - self.own0
        other = max(0.0, machine_busy() - self.machine0 - mine - sum(used.values()))
        return {**{f"{k}_cpu_s": round(v, 2) for k, v in used.items()}, f"{own}_cpu_s": round(mine, 2),
                "other_cpu_s": round(other, 2), "wall_s": round(wall, 2)}


def _cpu_note(d: dict[str, Any], own: str, label: str) -> str:
    """The CPU column: the measured process, the server and the rest of the machine."""
    if f"{own}_cpu_s" not in d:
        return ""
    return (f"{label} {d[f'{own}_cpu_s']:.1f} s · server {d['server_cpu_s']:.1f} s · other {d['other_cpu_s']:.1f} s "
            f"CPU in {d['wall_s']:.1f} s")


def is_converged(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"].get("generation"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


# ==== the measuring processes (python -m bench.agent MODE CONFIG) ================================

def _say(**data: Any) -> None:
    sys.stdout.write(MARK + json.dumps(data) + "\n")
    sys.stdout.flush()


def _widgets() -> Any:
    from setpoint.client import Resource

    return Resource(GROUP, VERSION, PLURAL, namespaced=True, kind="Widget")


def _controller_classes() -> tuple[type, type]:
    from setpoint.agent import Controller, Result

    widgets = _widgets()

    class Reporter(Controller):
        """Reports ``spec.size`` as ``status.observed`` (one status write per change), after
        ``delay`` seconds standing in for a driver call."""

        resource = widgets
        name = "bench"

        def __init__(self, *a: Any, delay: float = 0.0, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.delay = delay
            self.t_first: float | None = None

        async def reconcile(self, obj: dict[str, Any]) -> Result:
            if self.t_first is None:
                self.t_first = time.monotonic()
            if self.delay:
                await asyncio.sleep(self.delay)
            return Result(status={"observed": obj["spec"]["size"]})

    class Idle(Controller):
        """Does nothing and manages no status."""

        resource = widgets
        name = "bench-idle"
        manages_status = False

        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.t_first: float | None = None

        async def reconcile(self, obj: dict[str, Any]) -> None:
            if self.t_first is None:
                self.t_first = time.monotonic()

    return Reporter, Idle


def _queue_stats(ctl: Any) -> dict[str, Any]:
    q = ctl.queue
    s = ctl.stats
    return {"reconciles": s.reconciles, "status_writes": s.status_writes, "errors": s.errors,
            "adds": q.adds, "coalesced": q.coalesced, "coalescing_ratio": round(q.coalescing_ratio, 4),
            "depth": q.depth, "processing": q.processing, "t": time.monotonic()}


async def _wait(predicate: Any, timeout: float, what: str, interval: float = 0.005) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)
    return time.monotonic()


async def child_informer(cfg: dict[str, Any]) -> None:
    from setpoint.agent import Informer
    from setpoint.client import Client, ClientConfig

    widgets = _widgets()
    async with Client(ClientConfig(cfg["url"], token=cfg["token"])) as client:
        added = 0

        def on_add(obj: dict[str, Any]) -> None:
            nonlocal added
            added += 1

        gc.collect()
        rss0, _ = rss_kb()
        span = CpuSpan(server=cfg["server_pid"])
        t0 = time.monotonic()
        informer = Informer(client, widgets, namespace=cfg["ns"])
        informer.add_handler(on_add=on_add)
        informer.start()
        try:
            await informer.wait_synced(timeout=300)
            t_synced = time.monotonic()
            cpu = span.end("cpu")
            rss1, hwm = rss_kb()
            t_watch = await _wait(lambda: informer.stats.watches >= 1, 60, "the watch to open", 0.001)
            gc.collect()
            rss2, _ = rss_kb()
            n = len(informer.list())
            # After the figures: every object read once (an informer may keep what it was sent
            # until something reads it), for the memory of a cache whose objects are all in use.
            gc.collect()
            rss3, _ = rss_kb()
        finally:
            await informer.stop()
    _say(result={"objects": n, "handler_adds": added, "seconds": round(t_synced - t0, 3),
                 "watch_open_s": round(t_watch - t0, 3), "rss_before_kb": rss0, "rss_after_kb": rss1,
                 "rss_after_gc_kb": rss2, "peak_kb": hwm, "rss_all_read_kb": rss3,
                 "rss_all_read_per_object_b": round((rss3 - rss0) * 1024 / max(1, n)),
                 "rss_per_object_b": round((rss1 - rss0) * 1024 / max(1, n)),
                 "peak_per_object_b": round((hwm - rss0) * 1024 / max(1, n)),
                 **cpu})


async def child_informer_events(cfg: dict[str, Any]) -> None:
    """Watch events handled per second: the informer lists and watches, then stops (keeping its
    cache and revision) while the bench changes every object once, then starts again from that
    revision and takes the changes as fast as it can (as ``bench/clients.py`` measures the
    kubernetes client). One change per object, so the server coalesces none away."""
    from setpoint.agent import Informer
    from setpoint.client import Client, ClientConfig

    widgets = _widgets()
    m = cfg["n"]
    async with Client(ClientConfig(cfg["url"], token=cfg["token"])) as client:
        updates = 0
        done = asyncio.Event()

        def on_update(old: dict[str, Any], new: dict[str, Any]) -> None:
            nonlocal updates
            updates += 1
            if updates >= m:
                done.set()

        informer = Informer(client, widgets, namespace=cfg["ns"])
        informer.add_handler(on_update=on_update)
        informer.start()
        try:
            await informer.wait_synced(timeout=300)
            await _wait(lambda: informer.stats.watches >= 1, 60, "the watch to open", 0.001)
            await informer.stop()
            _say(ready=True, objects=len(informer.cache))
            await asyncio.to_thread(sys.stdin.readline)  # the bench has made the changes
            span = CpuSpan(server=cfg["server_pid"])
            t0 = time.monotonic()
            informer.start()
            await asyncio.wait_for(done.wait(), 300)
            secs = time.monotonic() - t0
            cpu = span.end("cpu")
        finally:
            await informer.stop()
    _say(result={"updates": updates, "seconds": round(secs, 3), "events_per_s": round(updates / secs),
                 "skipped": informer.stats.skipped, "stale": informer.stats.stale, **cpu})


def child_k8s_list(cfg: dict[str, Any]) -> None:
    from kubernetes import client, config

    config.load_kube_config(cfg["kubeconfig"])
    api: Any = client.CustomObjectsApi()
    ns = cfg["ns"]
    gc.collect()
    rss0, _ = rss_kb()
    span = CpuSpan(server=cfg["server_pid"])
    t0 = time.monotonic()
    cache: dict[str, Any] = {}
    token: str | None = None
    rv = None
    while True:
        kw = {"_continue": token} if token else {}
        page = api.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, limit=cfg.get("page", 500), **kw)
        meta = page.get("metadata") or {}
        rv = rv or meta.get("resourceVersion")
        for item in page["items"]:
            m = item["metadata"]
            cache[f"{m['namespace']}/{m['name']}"] = item
        token = meta.get("continue")
        if not token:
            break
    t_listed = time.monotonic()
    cpu = span.end("cpu")
    rss1, hwm = rss_kb()
    stream = api.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, watch=True, resource_version=rv,
                                               allow_watch_bookmarks=True, timeout_seconds=30,
                                               _preload_content=False)
    t_watch = time.monotonic()
    status = stream.status
    stream.close()
    gc.collect()
    rss2, _ = rss_kb()
    import kubernetes

    _say(result={"objects": len(cache), "seconds": round(t_listed - t0, 3), "watch_open_s": round(t_watch - t0, 3),
                 "watch_status": status, "rss_before_kb": rss0, "rss_after_kb": rss1, "rss_after_gc_kb": rss2,
                 "peak_kb": hwm, "rss_per_object_b": round((rss1 - rss0) * 1024 / max(1, len(cache))),
                 "peak_per_object_b": round((hwm - rss0) * 1024 / max(1, len(cache))),
                 **cpu, "version": kubernetes.__version__})


async def _run_controller(ctl: Any) -> asyncio.Task[None]:
    task = asyncio.create_task(ctl.run())
    await _wait(lambda: ctl.informer.has_synced or task.done(), 300, "the informer to sync")
    if task.done():
        task.result()  # raises what stopped it
    return task


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def child_reconcile(cfg: dict[str, Any]) -> None:
    """Reconciles/s of 4 workers over ``n`` objects: with one status write each (fresh objects),
    then over the converged objects (the status is already right: no write), then with a
    controller that manages no status at all."""
    from setpoint.client import Client, ClientConfig

    reporter, idle = _controller_classes()
    n, pid = cfg["n"], cfg["server_pid"]
    out: dict[str, Any] = {}
    async with Client(ClientConfig(cfg["url"], token=cfg["token"])) as client:
        for label, cls in (("status_write", reporter), ("noop_converged", reporter), ("noop_unmanaged", idle)):
            ctl = cls(client, namespace=cfg["ns"], workers=cfg["workers"])
            task = await _run_controller(ctl)
            try:
                span = CpuSpan(server=pid)
                if label == "status_write":
                    t_done = await _wait(lambda c=ctl: c.stats.status_writes >= n or c.stats.errors > 0, 300,
                                         f"{n} status writes")
                    if ctl.stats.errors:
                        raise RuntimeError(f"reconcile errors: {ctl.stats.by_class}")
                    done_stats = _queue_stats(ctl)
                    # The controller's own status writes come back as updates: one more (no-op)
                    # reconcile each. Wait for them, to count them.
                    quiet_since = time.monotonic()
                    last = ctl.stats.reconciles
                    while time.monotonic() - quiet_since < 0.5:
                        await asyncio.sleep(0.02)
                        if ctl.stats.reconciles != last or ctl.queue.depth or ctl.queue.processing:
                            last, quiet_since = ctl.stats.reconciles, time.monotonic()
                else:
                    t_done = await _wait(
                        lambda c=ctl: c.stats.reconciles >= n and not c.queue.depth and not c.queue.processing,
                        300, f"{n} reconciles")
                    done_stats = _queue_stats(ctl)
                cpu = span.end("cpu")
                t_first = ctl.t_first or t_done
                secs = max(1e-6, t_done - t_first)
                out[label] = {
                    "objects": n, "seconds": round(secs, 3),
                    "reconciles_at_done": done_stats["reconciles"], "status_writes": done_stats["status_writes"],
                    "reconciles_total": ctl.stats.reconciles, "rate": round(n / secs, 1),
                    **cpu,
                }
            finally:
                await _stop(task)
    _say(result=out)


async def child_controller(cfg: dict[str, Any]) -> None:
    """A Reporter with a slow reconcile, run until told to stop; answers ``stats`` on stdin."""
    from setpoint.client import Client, ClientConfig

    reporter, _ = _controller_classes()
    loop = asyncio.get_running_loop()
    async with Client(ClientConfig(cfg["url"], token=cfg["token"])) as client:
        ctl = reporter(client, namespace=cfg["ns"], workers=cfg["workers"], delay=cfg["delay"])
        task = await _run_controller(ctl)
        try:
            _say(ready=True)
            while True:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                cmd = line.strip()
                if cmd == "stats":
                    _say(stats=_queue_stats(ctl), cpu_s=round(time.process_time(), 3))
                elif cmd in ("stop", ""):
                    break
        finally:
            await _stop(task)
    _say(stopped=True)


def child_main(argv: list[str]) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    mode, cfg = argv[0], json.loads(argv[1])
    import uvloop

    if mode == "informer":
        uvloop.run(child_informer(cfg))
    elif mode == "informer-events":
        uvloop.run(child_informer_events(cfg))
    elif mode == "k8s-list":
        child_k8s_list(cfg)
    elif mode == "reconcile":
        uvloop.run(child_reconcile(cfg))
    elif mode == "controller":
        uvloop.run(child_controller(cfg))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    return 0


# ==== the bench side ============================================================================

class Child:
    """A measuring process: ``python -m bench.agent MODE CONFIG``; stopped by :meth:`stop` or,
    as a last resort, by ``procs.stop_all``."""

    def __init__(self, mode: str, cfg: dict[str, Any], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.agent", mode, json.dumps(cfg)], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log, "ab"),
            text=True, bufsize=1, start_new_session=True)
        procs._started.append(self.proc)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True, name=f"pump-{mode}").start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(MARK):
                self.lines.put(line[len(MARK):])
        self.lines.put(None)

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def read(self, timeout: float) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no answer from the measuring process in {timeout:.0f}s:\n{self.tail()}") from None
        if line is None:
            self.lines.put(None)
            raise RuntimeError(f"the measuring process exited ({self.proc.wait()}):\n{self.tail()}")
        return dict(json.loads(line))

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.send("stop")
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        with contextlib.suppress(ValueError):
            procs._started.remove(self.proc)


@contextlib.contextmanager
def child(mode: str, cfg: dict[str, Any], log: Path) -> Iterator[Child]:
    c = Child(mode, cfg, log)
    try:
        yield c
    finally:
        c.stop()


async def send_all(host: str, port: int, make: Any, total: int, connections: int) -> tuple[int, int]:
    """Send requests ``make(0..total-1)`` over ``connections`` keep-alive connections as fast as
    they are answered; each must be answered 200. A 409 (the server gave up retrying a write
    without a precondition against concurrent writers) is counted and the request sent again, so
    that every update lands once. Returns (monotonic_ns of the last answer, 409s retried)."""
    from bench.rawhttp import Connection

    conns = [await Connection.open(host, port) for _ in range(connections)]
    nxt = 0
    last = 0
    conflicts = 0

    async def sender(conn: Connection) -> None:
        nonlocal nxt, last, conflicts
        while nxt < total:
            i = nxt
            nxt += 1
            req = make(i)[1]
            for _ in range(100):
                resp = await conn.request(req)
                if resp.status != 409:
                    break
                conflicts += 1
            if resp.status != 200:
                raise RuntimeError(f"update {i}: {resp.status} {resp.body[:300]!r}")
            last = max(last, resp.t_ns)

    try:
        await asyncio.gather(*(sender(c) for c in conns))
    finally:
        for c in conns:
            c.close()
    return last, conflicts


class Run:
    """One agent part of a bench run: its own setpoint server, and what it measured."""

    def __init__(self, bench: Bench, sp: procs.Setpoint, sizes: Sizes, stack: contextlib.ExitStack) -> None:
        self.b = bench
        self.sp = sp
        self.sz = sizes
        self.stack = stack
        self.url = f"http://{sp.host}:{sp.port}"
        self.hostport = f"{sp.host}:{sp.port}"
        self.auth = {"Authorization": f"Bearer {sp.token}"}
        self.tmp = bench.tmp / "agent"
        self.tmp.mkdir(exist_ok=True)

    def log(self, msg: str) -> None:
        self.b.log(f"agent: {msg}")

    def cfg(self, **kw: Any) -> dict[str, Any]:
        return {"url": self.url, "token": self.sp.token, "server_pid": self.sp.pid, **kw}

    def path(self, ns: str, name: str | None = None) -> str:
        p = f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}"
        return p + f"/{name}" if name else p

    def http(self) -> Any:
        import httpx

        return httpx.Client(base_url=self.url, headers=self.auth, timeout=60)

    def namespace(self, name: str) -> None:
        with self.http() as c:
            r = c.post("/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace",
                                                    "metadata": {"name": name}})
            if r.status_code not in (201, 409):
                raise RuntimeError(f"creating namespace {name}: {r.status_code} {r.text[:300]}")

    def fill(self, ns: str, n: int, prefix: str = "w") -> dict[str, Any]:
        """Create ``n`` ~500-byte widgets in ``ns`` as fast as the server takes them."""
        import uvloop

        self.namespace(ns)
        path = self.path(ns)
        headers = {**self.auth, "Content-Type": "application/json"}

        def make(i: int) -> tuple[bytes, bytes]:
            name = f"{prefix}{i}"
            return name.encode(), build_request("POST", path, self.hostport, loadgen.widget_body(name), headers)

        t0 = time.monotonic()
        _, errors, first_error, _ = uvloop.run(
            latency.paced_writes(self.sp.host, self.sp.port, make, 1e9, n, self.b.a.connections, (201,)))
        secs = time.monotonic() - t0
        if errors:
            raise RuntimeError(f"filling {ns}: {errors} errors, first {first_error}")
        self.log(f"created {n:,} objects in {ns} in {secs:.1f}s ({n / secs:,.0f}/s)")
        return {"objects": n, "seconds": round(secs, 2), "creates_per_s": round(n / secs)}

    # ---- 1. informer cold start ---------------------------------------------------------------

    def informer(self) -> dict[str, Any]:
        n = self.sz.informer_objects
        out: dict[str, Any] = {"fill": self.fill("inf", n)}
        try:
            import kubernetes  # noqa: F401

            have_k8s = True
        except ImportError:
            have_k8s = False
            out["kubernetes_client"] = {"skipped": "the kubernetes package is not installed"}
        rounds: dict[str, list[dict[str, Any]]] = {"setpoint": [], "kubernetes_client": []}
        for r in range(self.sz.informer_rounds):
            with child("informer", self.cfg(ns="inf", n=n), self.tmp / "informer.log") as c:
                res = c.read(timeout=600)["result"]
            self.log(f"informer round {r + 1}: synced {res['objects']:,} in {res['seconds']:.2f}s, "
                     f"{res['rss_per_object_b']:,} B/object")
            if res["objects"] != n or res["handler_adds"] != n:
                raise RuntimeError(f"informer cached {res['objects']} objects, handlers saw "
                                   f"{res['handler_adds']} adds; expected {n}")
            rounds["setpoint"].append(res)
            if have_k8s:
                kcfg = {"kubeconfig": str(self.sp.data_dir / "kubeconfig.yaml"), "ns": "inf", "n": n,
                        "server_pid": self.sp.pid}
                with child("k8s-list", kcfg, self.tmp / "k8s-list.log") as c:
                    kres = c.read(timeout=600)["result"]
                self.log(f"kubernetes client round {r + 1}: listed {kres['objects']:,} in {kres['seconds']:.2f}s, "
                         f"{kres['rss_per_object_b']:,} B/object")
                if kres["objects"] != n:
                    raise RuntimeError(f"the kubernetes client listed {kres['objects']} objects, expected {n}")
                rounds["kubernetes_client"].append(kres)
        for key, rs in rounds.items():
            if rs:
                median = sorted(rs, key=lambda x: x["seconds"])[(len(rs) - 1) // 2]
                per_object = [x["rss_per_object_b"] for x in rs]
                out[key] = {**median, "rounds_s": [x["seconds"] for x in rs],
                            "rss_per_object_b": round(statistics.median(per_object)),
                            "rounds_rss_per_object_b": per_object}
        if rounds["setpoint"] and rounds["kubernetes_client"]:
            out["time_ratio_rounds"] = [round(a["seconds"] / b["seconds"], 3)
                                        for a, b in zip(rounds["setpoint"], rounds["kubernetes_client"], strict=True)]
        return out

    def informer_events(self) -> dict[str, Any]:
        """Watch events handled per second by an informer (see ``child_informer_events``)."""
        import uvloop

        n = self.sz.events_updates
        out: dict[str, Any] = {"fill": self.fill("ev", n)}
        headers = {**self.auth, "Content-Type": "application/merge-patch+json"}
        rounds = []
        for r in range(self.sz.informer_rounds):
            with child("informer-events", self.cfg(ns="ev", n=n), self.tmp / "informer-events.log") as c:
                c.read(timeout=600)  # synced, watched, stopped

                def make(i: int, r: int = r) -> tuple[bytes, bytes]:
                    body = json.dumps({"spec": {"size": 1000 + r}}).encode()
                    return b"", build_request("PATCH", self.path("ev", f"w{i}"), self.hostport, body, headers)

                uvloop.run(send_all(self.sp.host, self.sp.port, make, n, self.b.a.connections))
                c.send("go")
                res = c.read(timeout=600)["result"]
            self.log(f"informer events round {r + 1}: {res['updates']:,} in {res['seconds']:.2f}s "
                     f"({res['events_per_s']:,}/s)")
            rounds.append(res)
        rates = [x["events_per_s"] for x in rounds]
        median = sorted(rounds, key=lambda x: x["events_per_s"])[(len(rounds) - 1) // 2]
        out.update(median, rounds_events_per_s=rates)
        return out

    # ---- 2. reconciles/s ------------------------------------------------------------------------

    def reconcile_rate(self) -> dict[str, Any]:
        n = self.sz.reconcile_objects
        fill = self.fill("rec", n)
        with child("reconcile", self.cfg(ns="rec", n=n, workers=self.sz.workers), self.tmp / "reconcile.log") as c:
            res = c.read(timeout=900)["result"]
        for label, d in res.items():
            self.log(f"reconciles ({label}): {d['rate']:,.0f}/s over {n:,} objects "
                     f"({d['status_writes']} status writes, {d['reconciles_total']} reconciles in all)")
        return {"fill": fill, "workers": self.sz.workers, **res}

    # ---- 3 and 5. a flood of updates --------------------------------------------------------------

    def _list(self, ns: str) -> tuple[list[dict[str, Any]], str]:
        with self.http() as c:
            r = c.get(self.path(ns))
            r.raise_for_status()
            body = r.json()
        return body["items"], body["metadata"]["resourceVersion"]

    def flood(self, ns: str, watch_converged: bool, timeout: float) -> dict[str, Any]:
        """Send ``flood_updates`` merge patches, round-robin over the objects of ``ns``, each one
        to a new ``spec.size``, as fast as the server takes them. With ``watch_converged``, a
        watch opened before the flood tells when every object is converged at its final
        generation: that moment minus the last update's acknowledgement is the convergence time."""
        import uvloop

        items, rv = self._list(ns)
        names = sorted(o["metadata"]["name"] for o in items)
        m, total = len(names), self.sz.flood_updates
        gen0 = {o["metadata"]["name"]: int(o["metadata"]["generation"]) for o in items}
        final_gen = {name: gen0[name] + sum(1 for i in range(total) if i % m == k) for k, name in enumerate(names)}
        headers = {**self.auth, "Content-Type": "application/merge-patch+json"}
        base = 1_000_000

        def make(i: int) -> tuple[bytes, bytes]:
            name = names[i % m]
            body = b'{"spec":{"size":%d}}' % (base + i)
            return name.encode(), build_request("PATCH", self.path(ns, name), self.hostport, body, headers)

        async def main() -> dict[str, Any]:
            loop = asyncio.get_running_loop()
            done: asyncio.Future[int] = loop.create_future()
            pending = set(names)
            events = 0
            decode = msgspec.json.decode

            last_rv = rv
            expired = False
            reconnects = 0

            def judge(obj: dict[str, Any], t: int) -> None:
                name = obj["metadata"]["name"]
                ok = (obj["metadata"].get("generation") == final_gen.get(name) and is_converged(obj)
                      and (obj.get("status") or {}).get("observed") == obj["spec"].get("size"))
                if ok:
                    pending.discard(name)
                else:
                    pending.add(name)
                if not pending and not done.done():
                    done.set_result(t)

            def on_line(line: bytes, t: int) -> None:
                nonlocal events, last_rv, expired
                ev = decode(line)
                obj = ev.get("object") or {}
                if ev.get("type") == "ERROR":
                    expired = obj.get("code") == 410
                    return
                event_rv = (obj.get("metadata") or {}).get("resourceVersion")
                if event_rv:
                    last_rv = event_rv
                if ev.get("type") in ("ADDED", "MODIFIED"):
                    events += 1
                    judge(obj, t)

            async def watcher(opened: asyncio.Future[None]) -> None:
                """Watch from the last revision seen, again whenever the server ends the stream
                (it cuts off a watcher that falls behind); list again if that revision is gone."""
                nonlocal expired, reconnects, last_rv
                while not done.done():
                    if expired:
                        resp = await fetch(self.sp.host, self.sp.port, build_request(
                            "GET", self.path(ns), self.hostport, None, self.auth))
                        body = decode(resp.body)
                        for obj in body["items"]:
                            judge(obj, resp.t_ns)
                        last_rv, expired = body["metadata"]["resourceVersion"], False
                    req = build_request("GET", f"{self.path(ns)}?watch=1&allowWatchBookmarks=true"
                                        f"&resourceVersion={last_rv}", self.hostport, None, self.auth)
                    stream = await open_stream(self.sp.host, self.sp.port, req, on_line)
                    try:
                        status = await stream.headers_received
                        if status != 200:
                            raise RuntimeError(f"watch: {status}")
                        if not opened.done():
                            opened.set_result(None)
                        await asyncio.wait((stream.closed, done), return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        stream.close()
                    if not done.done():
                        reconnects += 1

            watch_task = None
            if watch_converged:
                opened: asyncio.Future[None] = loop.create_future()
                watch_task = asyncio.create_task(watcher(opened))
                await asyncio.wait((opened, watch_task), return_when=asyncio.FIRST_COMPLETED)
                if watch_task.done():
                    watch_task.result()
            try:
                t0 = time.monotonic_ns()
                last_ack, conflicts = await send_all(self.sp.host, self.sp.port, make, total,
                                                     self.b.a.connections)
                res: dict[str, Any] = {"updates": total, "objects": m, "flood_s": round((last_ack - t0) / 1e9, 3),
                                       "updates_per_s": round(total / ((last_ack - t0) / 1e9)),
                                       "conflicts_retried": conflicts, "t0_ns": t0, "last_ack_ns": last_ack}
                if watch_converged:
                    try:
                        t_conv = await asyncio.wait_for(asyncio.shield(done), timeout)
                    except TimeoutError:
                        if watch_task is not None and watch_task.done():
                            watch_task.result()  # the watch failed: say why
                        res["converged_after_last_update_s"] = None
                        res["not_converged"] = len(pending)
                    else:
                        res["converged_after_last_update_s"] = round((t_conv - last_ack) / 1e9, 4)
                        res["converged_after_first_update_s"] = round((t_conv - t0) / 1e9, 3)
                    res["watch_events"] = events
                    res["watch_reconnects"] = reconnects
                return res
            finally:
                if watch_task is not None:
                    watch_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watch_task

        return dict(uvloop.run(main()))

    def coalescing(self) -> dict[str, Any]:
        sz = self.sz
        fill = self.fill("flood", sz.flood_objects)
        cfg = self.cfg(ns="flood", workers=sz.workers, delay=sz.reconcile_ms / 1000)
        with child("controller", cfg, self.tmp / "controller.log") as c:
            c.read(timeout=120)  # ready
            deadline = time.monotonic() + 60
            while not all(is_converged(o) for o in self._list("flood")[0]):
                if time.monotonic() > deadline:
                    raise TimeoutError("the flood's objects never converged before the flood: "
                                       f"{self._list('flood')[0][0].get('status')}")
                time.sleep(0.05)
            time.sleep(0.3)
            c.send("stats")
            before = c.read(timeout=30)
            span = CpuSpan(controller=c.pid, server=self.sp.pid)
            res = self.flood("flood", True, timeout=60)
            cpu = span.end("bench")
            time.sleep(0.5)  # echoes of the last status writes
            c.send("stats")
            after = c.read(timeout=30)
        b, a = before["stats"], after["stats"]
        adds, coalesced = a["adds"] - b["adds"], a["coalesced"] - b["coalesced"]
        res.update({
            "fill": fill, "workers": sz.workers, "reconcile_ms": sz.reconcile_ms,
            "reconciles": a["reconciles"] - b["reconciles"], "status_writes": a["status_writes"] - b["status_writes"],
            "errors": a["errors"] - b["errors"], "queue_adds": adds, "queue_coalesced": coalesced,
            "coalescing_ratio_flood": round(coalesced / adds, 4) if adds else None,
            "coalescing_ratio": a["coalescing_ratio"],
            **cpu,
        })
        self.log(f"flood: {res['updates']:,} updates in {res['flood_s']:.1f}s → {res['reconciles']:,} reconciles, "
                 f"coalescing ratio {res['coalescing_ratio']:.3f}, converged "
                 f"{res.get('converged_after_last_update_s')}s after the last update")
        return res

    # ---- 5. kopf --------------------------------------------------------------------------------

    def kopf(self) -> dict[str, Any]:
        try:
            import kopf
        except ImportError:
            return {"skipped": "kopf is not installed"}
        sz = self.sz
        fill = self.fill("kopf", sz.flood_objects)
        handlers = self.tmp / "kopf_handlers.py"
        handlers.write_text(AGENT_HANDLERS.read_text())
        calls_log = self.tmp / "kopf-calls.log"
        calls_log.write_text("")
        kopf_bin = procs.venv_bin("kopf")
        env = {"KUBECONFIG": str(self.sp.data_dir / "kubeconfig.yaml"), "BENCH_KOPF_LOG": str(calls_log),
               "BENCH_KOPF_DELAY": str(sz.reconcile_ms / 1000)}
        argv = ["env", *(f"{k}={v}" for k, v in env.items())]
        argv += ([kopf_bin] if kopf_bin else [sys.executable, "-m", "kopf"]) + [
            "run", "--standalone", "--namespace", "kopf", "--log-format", "plain", str(handlers)]
        op = procs.Managed(argv, None, "kopf", cwd=self.tmp)
        op.start()
        try:
            # kopf records what it has seen in an annotation on every object before it handles updates.
            deadline = time.monotonic() + 60
            annotation = "kopf.zalando.org/last-handled-configuration"
            while not all(annotation in (o["metadata"].get("annotations") or {}) for o in self._list("kopf")[0]):
                if not op.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"kopf did not take up the objects:\n{op.tail()}")
                time.sleep(0.1)
            time.sleep(0.5)
            span = CpuSpan(kopf=op.pid, server=self.sp.pid)
            res = self.flood("kopf", False, timeout=0)
            final = {o["metadata"]["name"]: o["spec"]["size"] for o in self._list("kopf")[0]}
            t0, last_ack = res.pop("t0_ns"), res.pop("last_ack_ns")
            first_final: dict[str, int] = {}
            calls = 0
            deadline = time.monotonic() + sz.kopf_timeout_s
            quiet_since, seen = time.monotonic(), 0
            while True:
                lines = calls_log.read_text().splitlines()
                calls = 0
                for line in lines:
                    name, size, t = line.split()
                    if int(t) < t0:
                        continue
                    calls += 1
                    if size.isdigit() and int(size) == final.get(name) and name not in first_final:
                        first_final[name] = int(t)
                if len(lines) != seen:
                    seen, quiet_since = len(lines), time.monotonic()
                if len(first_final) == len(final) and time.monotonic() - quiet_since > 1.0:
                    break
                if time.monotonic() > deadline or not op.alive():
                    break
                time.sleep(0.1)
            cpu = span.end("bench")
            res.update({"fill": fill, "version": getattr(kopf, "__version__", "?"), "handler_calls": calls,
                        "handler_ms": sz.reconcile_ms, "objects_final_seen": len(first_final),
                        **cpu,
                        "timeout_s": sz.kopf_timeout_s, "alive": op.alive()})
            if len(first_final) == len(final):
                t_final = max(first_final.values())
                res["final_seen_after_last_update_s"] = round((t_final - last_ack) / 1e9, 3)
                res["final_seen_after_first_update_s"] = round((t_final - t0) / 1e9, 3)
            else:
                res["final_seen_after_last_update_s"] = None
                tail = [ln for ln in op.output if "ERROR" in ln or "Traceback" in ln or "rror" in ln][-5:]
                if tail:
                    res["kopf_errors"] = [ln.strip()[:300] for ln in tail]
            self.log(f"kopf: {calls:,} handler calls for {res['updates']:,} updates; final state of every "
                     f"object seen {res.get('final_seen_after_last_update_s')}s after the last update")
            return res
        finally:
            op.stop()

    # ---- 4. replicas → running processes ---------------------------------------------------------

    def processset(self) -> dict[str, Any]:
        import httpx

        sz = self.sz
        data = self.sp.data_dir
        kubeconfig = subprocess.run(
            [sys.executable, "-m", "setpoint", "node-token", "bench", "--data-dir", str(data)],
            capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
        cm = procs.Managed([sys.executable, "-m", "setpoint", "controller-manager", "--kubeconfig",
                            str(data / "kubeconfig.yaml"), "--log-level", "warning"], None, "controller-manager",
                           cwd=self.tmp)
        ag = procs.Managed([sys.executable, "-m", "setpoint", "agent", "--node", "bench", "--kubeconfig", kubeconfig,
                            "--state-dir", str(self.tmp / "agent-state"), "--log-level", "warning"], None,
                           "agent", cwd=self.tmp)
        base = "/apis/setpoint.dev/v1alpha1/namespaces/default/processsets"
        name = "bench-sleep"
        uid = ""
        with contextlib.ExitStack() as stack:
            stack.enter_context(procs.running(cm))
            stack.enter_context(procs.running(ag))
            c = stack.enter_context(httpx.Client(base_url=self.url, headers=self.auth, timeout=30))

            @stack.callback
            def cleanup() -> None:
                # Delete the ProcessSet while the agent still runs (it stops the processes), then
                # end whatever is left of them.
                if not uid:
                    return
                with contextlib.suppress(Exception):
                    c.delete(f"{base}/{name}")
                    deadline = time.monotonic() + 15
                    while processes_of(uid) and time.monotonic() < deadline:
                        time.sleep(0.1)
                for pid in processes_of(uid):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)

            body = {"apiVersion": "setpoint.dev/v1alpha1", "kind": "ProcessSet", "metadata": {"name": name},
                    "spec": {"command": SLEEPER[0], "args": SLEEPER[1:], "replicas": 0,
                             "stopGracePeriodSeconds": 2}}
            r = c.post(base, json=body)
            if r.status_code != 201:
                raise RuntimeError(f"creating the ProcessSet: {r.status_code} {r.text[:300]}")
            uid = r.json()["metadata"]["uid"]
            t0 = time.monotonic()
            while True:
                obj = c.get(f"{base}/{name}").json()
                if (obj["spec"].get("nodeName") == "bench" and is_converged(obj)):
                    break
                if time.monotonic() - t0 > 60 or not cm.alive() or not ag.alive():
                    raise RuntimeError(f"the ProcessSet was never scheduled and converged: {obj.get('status')}\n"
                                       f"controller-manager:\n{cm.tail(10)}\nagent:\n{ag.tail(10)}")
                time.sleep(0.05)
            scheduled_s = time.monotonic() - t0
            self.log(f"ProcessSet scheduled on node bench and converged at 0 replicas in {scheduled_s:.2f}s")
            rounds: dict[str, list[dict[str, float]]] = {"up": [], "down": []}
            for _ in range(sz.ps_rounds):
                for label, target in (("up", sz.ps_replicas), ("down", 0)):
                    t_sent = time.monotonic()
                    r = c.patch(f"{base}/{name}", content=json.dumps({"spec": {"replicas": target}}),
                                headers={"Content-Type": "application/merge-patch+json"})
                    r.raise_for_status()
                    generation = r.json()["metadata"]["generation"]
                    t_procs = t_conv = None
                    while t_procs is None or t_conv is None:
                        now = time.monotonic()
                        if t_procs is None and len(processes_of(uid)) == target:
                            t_procs = now
                        if t_conv is None:
                            obj = c.get(f"{base}/{name}").json()
                            st = obj.get("status") or {}
                            if (obj["metadata"]["generation"] == generation and is_converged(obj)
                                    and st.get("readyReplicas", 0) == target):
                                t_conv = time.monotonic()
                        if now - t_sent > 60:
                            raise TimeoutError(f"replicas → {target}: processes {len(processes_of(uid))}, "
                                               f"status {obj.get('status')}")
                        time.sleep(0.005)
                    rounds[label].append({"processes_s": round(t_procs - t_sent, 3),
                                          "converged_s": round(t_conv - t_sent, 3)})
                    self.log(f"replicas → {target}: processes {t_procs - t_sent:.3f}s, "
                             f"converged {t_conv - t_sent:.3f}s")
            out: dict[str, Any] = {"replicas": sz.ps_replicas, "rounds": sz.ps_rounds,
                                   "scheduled_s": round(scheduled_s, 3)}
            for label, rs in rounds.items():
                out[label] = {"processes_s": round(statistics.median(x["processes_s"] for x in rs), 3),
                              "converged_s": round(statistics.median(x["converged_s"] for x in rs), 3),
                              "all": rs}
            if not (cm.alive() and ag.alive()):
                raise RuntimeError(f"controller-manager or agent exited:\n{cm.tail(10)}\n{ag.tail(10)}")
            return out


def run(bench: Bench, crd: dict[str, Any]) -> None:
    """The agent part of a bench run: results under ``bench.results["agent"]``."""
    import httpx

    # The controllers here report observedGeneration and a Ready condition: the status schema
    # must keep them (a structural schema prunes what it does not declare).
    crd = copy.deepcopy(crd)
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    status["observedGeneration"] = {"type": "integer"}
    status["conditions"] = {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    sizes = Sizes.of(bench.a.quick)
    out = bench.results.setdefault("agent", {})
    out["settings"] = asdict(sizes)
    t_start = time.monotonic()
    with contextlib.ExitStack() as stack:
        sp = procs.Setpoint(bench.tmp / "agent-setpoint", bench.a.setpoint_args.split(),
                            force_uvloop=bench.a.setpoint_uvloop)
        stack.enter_context(sp)
        bench.log(f"agent: setpoint at {sp.host}:{sp.port} (pid {sp.pid})")
        with httpx.Client(base_url=f"http://{sp.host}:{sp.port}", headers={"Authorization": f"Bearer {sp.token}"},
                          timeout=30) as c:
            r = c.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd)
            if r.status_code not in (201, 409):
                raise RuntimeError(f"creating the CRD: {r.status_code} {r.text[:500]}")
            deadline = time.monotonic() + 15
            while c.get(f"/apis/{GROUP}/{VERSION}/{PLURAL}?limit=1").status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("widgets never served")
                time.sleep(0.05)
        run_ = Run(bench, sp, sizes, stack)
        for key, fn in (("informer", run_.informer), ("informer_events", run_.informer_events),
                        ("reconcile", run_.reconcile_rate),
                        ("coalescing", run_.coalescing), ("kopf", run_.kopf), ("processset", run_.processset)):
            t = time.monotonic()
            with bench.section(f"agent_{key}"):
                out[key] = fn()
                out[key]["part_s"] = round(time.monotonic() - t, 1)
        if not sp.alive():
            bench.results["errors"]["agent_setpoint_exit"] = "setpoint exited during the agent part:\n" + sp.tail()
    out["seconds"] = round(time.monotonic() - t_start, 1)


# ==== the table ==================================================================================

def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "—"


def rows(r: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """Rows for the bench's Markdown table (measurement, result, reference, details, CPU)."""
    ag = r.get("agent")
    if not ag:
        return []
    out: list[tuple[str, str, str, str, str]] = []
    inf = ag.get("informer") or {}
    sp, k8 = inf.get("setpoint"), inf.get("kubernetes_client")
    if sp:
        ref, note = "", ""
        if k8 and "seconds" in k8:
            ref = (f"kubernetes client {k8.get('version', '')} list (500/page) into a dict: {k8['seconds']:.2f} s · "
                   f"{k8['rss_per_object_b']:,} B/object")
            note = (f"time {_ratio(sp['seconds'], k8['seconds'])} and RSS/object "
                    f"{_ratio(sp['rss_per_object_b'], k8['rss_per_object_b'])} the kubernetes client's; ")
        elif k8:
            ref = str(k8.get("skipped", ""))
        fill = inf.get("fill") or {}
        rs = sp.get("rounds_s", [])
        note += (f"watch open at {sp['watch_open_s']:.2f} s; peak RSS +{sp['peak_per_object_b']:,} B/object; "
                 f"median of {len(rs)}: {', '.join(f'{x:.2f}' for x in rs)} s")
        if k8 and "rounds_s" in k8:
            note += f" (kubernetes client {', '.join(f'{x:.2f}' for x in k8['rounds_s'])} s)"
        if "rounds_rss_per_object_b" in sp:
            note += f"; B/object {', '.join(f'{x:,}' for x in sp['rounds_rss_per_object_b'])}"
        if "rss_all_read_per_object_b" in sp:
            note += f"; {sp['rss_all_read_per_object_b']:,} B/object once every object was read"
        note += f"; objects created at {fill.get('creates_per_s', 0):,}/s"
        out.append((f"**Informer cold start, {sp['objects']:,} objects** (start → wait_synced; RSS Δ/object)",
                    f"{sp['seconds']:.2f} s · {sp['rss_per_object_b']:,} B/object", ref, note,
                    _cpu_note(sp, "cpu", "informer")))
    ev = ag.get("informer_events") or {}
    if "events_per_s" in ev:
        rates = ev.get("rounds_events_per_s", [])
        out.append((f"**Informer watch events handled**, {ev['updates']:,} changes (one per object) taken "
                    "from a resumed watch", f"{ev['events_per_s']:,} /s", "",
                    f"{ev['seconds']:.2f} s; median of {len(rates)}: {', '.join(f'{x:,}' for x in rates)} /s; "
                    f"skipped {ev['skipped']}, stale {ev['stale']}",
                    _cpu_note(ev, "cpu", "informer")))
    rec = ag.get("reconcile") or {}
    for key, label in (("status_write", "one status write each"),
                       ("noop_converged", "no-op: converged objects, no status write"),
                       ("noop_unmanaged", "no-op: manages_status=False")):
        d = rec.get(key)
        if d:
            out.append((f"**Reconciles/s**, {rec.get('workers')} workers, {d['objects']:,} objects, {label}",
                        f"{d['rate']:,.0f} /s", "",
                        f"{d['seconds']:.2f} s; {d['status_writes']:,} status writes; "
                        f"{d['reconciles_total']:,} reconciles in all (each status write comes back as an update)",
                        _cpu_note(d, "cpu", "controller")))
    co, kp = ag.get("coalescing"), ag.get("kopf") or {}
    if co:
        conv = co.get("converged_after_last_update_s")
        result = (f"{co['reconciles']:,} reconciles · ratio {co['coalescing_ratio']:.3f} · converged "
                  + (f"{conv * 1000:,.0f} ms" if conv is not None else f"NOT ({co.get('not_converged')} left)")
                  + " after the last update")
        ref = ""
        note = (f"{co['updates_per_s']:,}/s updates over {co['flood_s']:.1f} s; {co['status_writes']:,} status "
                f"writes; queue adds {co['queue_adds']:,}, coalesced {co['queue_coalesced']:,} "
                f"(ratio over the flood {co['coalescing_ratio_flood']})")
        if co.get("watch_reconnects"):
            note += f"; the bench's watch was cut off and resumed {co['watch_reconnects']}x"
        if co.get("conflicts_retried"):
            note += f"; {co['conflicts_retried']} patches answered 409 and sent again"
        if "handler_calls" in kp:
            fs = kp.get("final_seen_after_last_update_s")
            seen = f"{fs:.2f} s" if fs is not None else f"NOT within {kp['timeout_s']:.0f} s"
            ref = (f"kopf {kp['version']}: {kp['handler_calls']:,} handler calls; final state seen {seen} "
                   "after the last update")
            note += f"; calls {_ratio(co['reconciles'], kp['handler_calls'])} kopf's"
        elif kp.get("skipped"):
            ref = kp["skipped"]
        out.append((f"**Coalescing**: {co['updates']:,} updates to {co['objects']} objects, reconcile "
                    f"{co['reconcile_ms']:g} ms, {co['workers']} workers", result, ref, note,
                    _cpu_note(co, "controller", "controller")))
    if "handler_calls" in kp:
        fs = kp.get("final_seen_after_last_update_s")
        out.append((f"kopf on.update, same flood ({kp['updates']:,} updates to {kp['objects']} objects, "
                    f"handler {kp['handler_ms']:g} ms, --standalone)",
                    f"{kp['handler_calls']:,} calls · final state seen "
                    + (f"{fs:.2f} s after the last update" if fs is not None
                       else f"for {kp['objects_final_seen']}/{kp['objects']} objects in {kp['timeout_s']:.0f} s"),
                    "", f"{kp['updates_per_s']:,}/s updates over {kp['flood_s']:.1f} s"
                    + (f"; {kp['conflicts_retried']} patches answered 409 (concurrent with kopf's own patches) and "
                       "sent again" if kp.get("conflicts_retried") else "")
                    + (f"; errors: {kp['kopf_errors'][0]}" if kp.get("kopf_errors") else ""),
                    _cpu_note(kp, "kopf", "kopf")))
    ps = ag.get("processset")
    if ps:
        for key, a, b in (("up", 0, ps["replicas"]), ("down", ps["replicas"], 0)):
            d = ps[key]
            out.append((f"**ProcessSet replicas {a}→{b}** (server, controller-manager, agent)",
                        f"processes {d['processes_s']:.3f} s · converged {d['converged_s']:.3f} s", "",
                        f"median of {ps['rounds']}: " + ", ".join(
                            f"{x['processes_s']:.3f}/{x['converged_s']:.3f}" for x in d["all"]) + " s", ""))
    return out


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
