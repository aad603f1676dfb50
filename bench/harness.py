"""The bench run: what `python -m bench` measures, in order, and where each figure goes.

The sections (bench/agent.py, bench/store_backends.py, ...) take the :class:`Bench` they run in;
keeping it here rather than in ``__main__`` lets them import it without a cycle.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec

from bench import agent, latency, loadgen, procs, profile, report, sqlite_raw
from bench.cpu import CpuWindow
from bench.rawhttp import build_request, fetch

RESULTS = Path(__file__).resolve().parent / "results"

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": {
                        "type": "object",
                        "required": ["size"],
                        "properties": {
                            "size": {"type": "integer", "minimum": 0},
                            "color": {"type": "string", "default": "blue"},
                            "tags": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                    "status": {
                        "type": "object",
                        "properties": {"ready": {"type": "boolean"}, "observed": {"type": "integer"}},
                    },
                },
            }},
        }],
    },
}


def env_float(name: str, default: float) -> float:
    v = os.environ.get(name)
    return float(v) if v else default


def env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    return int(v) if v else default


def source_state() -> dict[str, Any]:
    """The commit measured, and whether src/ had uncommitted changes (it is measured as is)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  timeout=10, check=False).stdout.strip()
        except OSError:
            return ""

    dirty = git("status", "--porcelain", "--", "src")
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "src_uncommitted_files": len(dirty.splitlines()) if dirty else 0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: ~1 s per measurement, small sizes")
    ap.add_argument("--duration", type=float, default=None,
                    help="seconds per throughput measurement (BENCH_DURATION, default 8)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="throughput rounds, the median one reported (BENCH_REPEAT, default 3)")
    ap.add_argument("--connections", type=int, default=env_int("BENCH_CONNECTIONS", 32))
    ap.add_argument("--rate", type=float, default=env_float("BENCH_RATE", 1000),
                    help="paced writes/s for the watch latency (BENCH_RATE)")
    ap.add_argument("--watchers", type=int, default=env_int("BENCH_WATCHERS", 10))
    ap.add_argument("--latency-seconds", type=float, default=None,
                    help="seconds of paced writes counted (BENCH_LATENCY_SECONDS, default 8)")
    ap.add_argument("--list-size", type=int, default=None,
                    help="objects in the listed namespace (BENCH_LIST_SIZE, default 10000)")
    ap.add_argument("--loadgen", choices=["auto", "wrk", "python"],
                    default=os.environ.get("BENCH_LOADGEN", "auto"))
    ap.add_argument("--wrk-threads", type=int, default=env_int("BENCH_WRK_THREADS", 2))
    ap.add_argument("--profile", choices=["auto", "on", "off"],
                    default=os.environ.get("BENCH_PROFILE", "auto"),
                    help="py-spy pass over setpoint's creates (auto: when py-spy is installed)")
    ap.add_argument("--profile-native", action=argparse.BooleanOptionalAction,
                    default=os.environ.get("BENCH_PROFILE_NATIVE", "1") not in ("", "0"),
                    help="py-spy --native: C frames too (GC, write(2), msgspec, sqlite); default on")
    ap.add_argument("--only", default=os.environ.get("BENCH_ONLY", ""),
                    help="comma list of parts: loadgen,sqlite,ceiling,etcd,setpoint,agent,backends,southbound,"
                         "transfer,loadbalancer,templates,cloud,stacks,typed,clients")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("BENCH_OUT", RESULTS)))
    ap.add_argument("--tmp-dir", default=os.environ.get("BENCH_TMPDIR"),
                    help="where data directories go (default: the system temp dir)")
    ap.add_argument("--setpoint-uvloop", action="store_true",
                    default=bool(os.environ.get("BENCH_SETPOINT_UVLOOP")),
                    help="run setpoint through bench/setpoint_uvloop.py (its loop forced to uvloop)")
    ap.add_argument("--setpoint-args", default=os.environ.get("BENCH_SETPOINT_ARGS", ""),
                    help="extra arguments for `setpoint serve`")
    ap.add_argument("--setpoint-workers", default=os.environ.get("BENCH_SETPOINT_WORKERS", "1,2"),
                    help="also measure creates on `setpoint serve --workers N` for each N of this comma "
                         "list, in the same rounds (empty: not)")
    a = ap.parse_args(argv)
    q = a.quick
    a.duration = a.duration or env_float("BENCH_DURATION", 1.0 if q else 8.0)
    a.repeat = a.repeat or env_int("BENCH_REPEAT", 1 if q else 3)
    a.latency_seconds = a.latency_seconds or env_float("BENCH_LATENCY_SECONDS", 1.0 if q else 8.0)
    a.warmup = 0.3 if q else 1.0
    a.list_size = a.list_size or env_int("BENCH_LIST_SIZE", 500 if q else 10_000)
    a.sqlite_seconds = 0.5 if q else 3.0
    a.profile_seconds = min(a.duration, 8.0)
    if a.profile == "auto" and q:
        a.profile = "off"
    return a


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.a = args
        self.tmp = tmp
        self.run_id = uuid.uuid4().hex[:6]
        self.results: dict[str, Any] = {"errors": {}}
        self.generator: str | None = None
        self.stack = contextlib.ExitStack()
        self.parts = {p.strip() for p in args.only.split(",") if p.strip()} or {
            "loadgen", "sqlite", "ceiling", "etcd", "setpoint", "agent"}
        self.seq = 0

    def log(self, msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def name(self, tag: str) -> str:
        self.seq += 1
        return f"{tag}{self.run_id}{self.seq}"

    @contextlib.contextmanager
    def section(self, key: str) -> Iterator[None]:
        try:
            yield
        except Exception as e:
            self.log(f"{key} FAILED: {e!r}")
            self.results["errors"][key] = f"{type(e).__name__}: {e}"
            traceback.print_exc(file=sys.stderr)

    # ---- environment --------------------------------------------------------------------------

    def meta(self) -> None:
        a = self.a
        self.results["meta"] = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "loadavg_at_start": os.getloadavg(), "quick": a.quick, "source": source_state(),
            "settings": {"duration_s": a.duration, "repeat": a.repeat, "connections": a.connections,
                         "rate": a.rate, "watchers": a.watchers, "latency_s": a.latency_seconds,
                         "setpoint_uvloop": a.setpoint_uvloop,
                         "warmup_s": a.warmup, "list_size": a.list_size, "loadgen": a.loadgen},
        }

    def pick_generator(self) -> None:
        if self.a.loadgen == "python":
            self.generator = None
        else:
            self.generator = loadgen.find_wrk(allow_install=True)
            if self.generator is None and self.a.loadgen == "wrk":
                raise SystemExit("wrk is not installed and could not be installed")
        name = "wrk" if self.generator else "python-raw (asyncio, 2 processes)"
        self.results["meta"]["generator"] = name
        self.log(f"load generator: {name}")

    def throughput(self, target: loadgen.Target, pids: tuple[int, ...], tag: str,
                   generator: bool | str | None = False, duration: float | None = None) -> dict[str, Any]:
        gen = self.generator if generator is False else (generator or None)
        with CpuWindow(pids) as cpu:
            r = loadgen.run_throughput(gen, target, self.a.connections, duration or self.a.duration,
                                       run=self.name(tag), threads=self.a.wrk_threads)
        d = r.as_dict()
        d["cpu"] = cpu.result
        self.log(f"{target.label}: {r.rps:,.0f}/s ok ({r.requests} requests, errors {r.errors}) "
                 f"cpu {cpu.result}")
        return d

    # ---- parts --------------------------------------------------------------------------------

    def run_sqlite(self) -> None:
        out = []
        for rows in (1, 32):
            r = sqlite_raw.commits(self.tmp / f"raw-{rows}.db", rows, self.a.sqlite_seconds)
            self.log(f"sqlite {rows} rows/commit: {r['rows_per_s']:,.0f} rows/s")
            out.append(r)
        self.results["sqlite_raw"] = out

    def start_ceiling(self) -> procs.Ceiling:
        c = procs.Ceiling(self.tmp / "ceiling.db")
        self.stack.enter_context(c)
        self.log(f"ceiling app at {c.host}:{c.port} (pid {c.pid})")
        return c

    def start_etcd(self) -> procs.Etcd:
        e = procs.Etcd(self.tmp / "etcd")
        self.stack.enter_context(e)
        self.results.setdefault("etcd", {})["version"] = e.version()
        self.log(f"etcd {e.version()} at {e.host}:{e.port} (pid {e.pid})")
        return e

    def start_setpoint(self, workers: int = 0) -> procs.Setpoint:
        extra = ["--workers", str(workers)] if workers else []
        s = procs.Setpoint(self.tmp / (f"setpoint-workers-{workers}" if workers else "setpoint"),
                           self.a.setpoint_args.split() + extra, force_uvloop=self.a.setpoint_uvloop)
        self.stack.enter_context(s)
        self.log(f"setpoint at {s.host}:{s.port} (pid {s.pid}{f', --workers {workers}' if workers else ''})")
        headers = {"Authorization": f"Bearer {s.token}"}
        with httpx.Client(base_url=f"http://{s.host}:{s.port}", headers=headers, timeout=30) as c:
            r = c.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=WIDGET_CRD)
            if r.status_code not in (201, 409):
                raise RuntimeError(f"creating the CRD: {r.status_code} {r.text[:500]}")
            for ns in ("bench", "lat", "list"):
                r = c.post("/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace",
                                                       "metadata": {"name": ns}})
                if r.status_code not in (201, 409):
                    raise RuntimeError(f"creating namespace {ns}: {r.status_code} {r.text[:500]}")
            deadline = time.monotonic() + 15
            while True:
                r = c.get("/apis/example.com/v1/namespaces/bench/widgets?limit=1")
                if r.status_code == 200:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"widgets never served: {r.status_code} {r.text[:300]}")
                time.sleep(0.05)
        return s

    def trivial_target(self, ceiling: procs.Ceiling) -> loadgen.Target:
        return loadgen.Target("trivial endpoint", ceiling.host, ceiling.port, "/trivial", "widget")

    def loadgen_check(self, ceiling: procs.Ceiling) -> None:
        """The raw asyncio client against the trivial endpoint, for comparison with wrk (whose
        own figure is measured in the rounds)."""
        if self.generator is not None and not self.a.quick:
            self.results.setdefault("loadgen_check", {})["python_raw"] = self.throughput(
                self.trivial_target(ceiling), (ceiling.pid,), "p", generator=None)

    def setpoint_target(self, s: procs.Setpoint, ns: str) -> loadgen.Target:
        return loadgen.Target("setpoint creates", s.host, s.port,
                              f"/apis/example.com/v1/namespaces/{ns}/widgets", "widget",
                              headers={"Authorization": f"Bearer {s.token}"}, ok_status=(201,))

    def rounds(self, runners: dict[str, Callable[[], dict[str, Any]]]) -> dict[str, dict[str, Any]]:
        """Interleave the throughput measurements, so a burst of load from elsewhere on the
        machine hits every system alike; report each one's median round (with the min and max
        beside it): a ratio goal holds when it holds in the median, not in a lucky round."""
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in runners}
        for _ in range(self.a.repeat):
            for key, fn in runners.items():
                with self.section(key):
                    runs[key].append(fn())
        out: dict[str, dict[str, Any]] = {}
        for key, rs in runs.items():
            if not rs:
                continue
            ordered = sorted(rs, key=lambda r: r["rps"])
            median = ordered[len(ordered) // 2]  # a real round (its latencies and CPU belong to it)
            if len(ordered) % 2 == 0:  # an even count: the figure is the mean of the middle two
                median = {**median, "rps": statistics.median(r["rps"] for r in rs)}
            out[key] = {**median, "rounds_rps": [r["rps"] for r in rs], "median_rps": median["rps"],
                        "min_rps": ordered[0]["rps"], "max_rps": ordered[-1]["rps"]}
        return out

    def etcd_latency(self, e: procs.Etcd) -> dict[str, Any]:
        run = self.name("l")
        prefix = f"/bench/lat/{run}/"
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        b64 = base64.b64encode
        body = json.dumps({"create_request": {"key": b64(prefix.encode()).decode(),
                                              "range_end": b64(end.encode()).decode()}}).encode()
        host = f"{e.host}:{e.port}"
        spec = latency.WatchSpec(e.host, e.port,
                                 build_request("POST", "/v3/watch", host, body,
                                               {"Content-Type": "application/json"}),
                                 rb'"key":"([A-Za-z0-9+/=]+)"', wait_first_line=True)
        value = loadgen.etcd_value()

        def make(i: int) -> tuple[bytes, bytes]:
            key = f"{prefix}{i}"
            return (b64(key.encode()),
                    build_request("POST", "/v3/kv/put", host, loadgen.etcd_put_body(key, value),
                                  {"Content-Type": "application/json"}))

        return self._latency(spec, e.host, e.port, make, (200,), (e.pid,))

    def setpoint_latency(self, s: procs.Setpoint) -> dict[str, Any]:
        run = self.name("lat-")
        host = f"{s.host}:{s.port}"
        auth = {"Authorization": f"Bearer {s.token}"}
        path = "/apis/example.com/v1/namespaces/lat/widgets"
        with httpx.Client(base_url=f"http://{host}", headers=auth, timeout=30) as c:
            r = c.get(path, params={"limit": "1"})
            r.raise_for_status()
            rv = r.json()["metadata"]["resourceVersion"]
        spec = latency.WatchSpec(s.host, s.port,
                                 build_request("GET", f"{path}?watch=1&resourceVersion={rv}", host,
                                               None, auth),
                                 b'"name":"(' + run.encode() + rb'-\d+)"')
        headers = {**auth, "Content-Type": "application/json"}

        def make(i: int) -> tuple[bytes, bytes]:
            name = f"{run}-{i}"
            return name.encode(), build_request("POST", path, host, loadgen.widget_body(name), headers)

        return self._latency(spec, s.host, s.port, make, (201,), (s.pid,))

    def _latency(self, spec: latency.WatchSpec, host: str, port: int,
                 make: Callable[[int], tuple[bytes, bytes]], ok: tuple[int, ...],
                 pids: tuple[int, ...]) -> dict[str, Any]:
        with CpuWindow(pids) as cpu:
            r = latency.measure(spec, self.a.watchers, host, port, make, self.a.rate,
                                self.a.latency_seconds, self.a.warmup, ok)
        d = r.as_dict()
        d["cpu"] = cpu.result
        self.log(f"watch latency p50 {r.p50_ms} ms p99 {r.p99_ms} ms at {r.rate_achieved}/s "
                 f"(missing {r.events_missing}/{r.events_expected}, write errors {r.write_errors}) "
                 f"cpu {cpu.result}")
        return d

    def setpoint_list(self, s: procs.Setpoint) -> dict[str, Any]:
        host = f"{s.host}:{s.port}"
        auth = {"Authorization": f"Bearer {s.token}"}
        path = "/apis/example.com/v1/namespaces/list/widgets"
        headers = {**auth, "Content-Type": "application/json"}
        n = self.a.list_size
        run = self.name("ls-")

        def make(i: int) -> tuple[bytes, bytes]:
            name = f"{run}-{i}"
            return name.encode(), build_request("POST", path, host, loadgen.widget_body(name), headers)

        import uvloop

        t0 = time.monotonic()
        _, errors, first_error, _ = uvloop.run(
            latency.paced_writes(s.host, s.port, make, 1e9, n, self.a.connections, (201,)))
        if errors:
            raise RuntimeError(f"filling the list namespace: {errors} errors, first {first_error}")
        self.log(f"filled {n} objects in {time.monotonic() - t0:.1f}s")
        out: dict[str, Any] = {"objects": n}
        for label, query in (("watch_cache", "?resourceVersion=0"), ("store", "")):
            req = build_request("GET", path + query, host, None, {**auth, "Accept": "application/json"})
            times = []
            size = 0
            items = -1
            for _ in range(3):
                t = time.monotonic_ns()
                resp = uvloop.run(fetch(s.host, s.port, req))
                times.append((resp.t_ns - t) / 1e9)
                if resp.status != 200:
                    raise RuntimeError(f"list {label}: {resp.status} {resp.body[:300]!r}")
                size = len(resp.body)
                items = len(msgspec.json.decode(resp.body)["items"])
            if items != n:
                self.results["errors"][f"list_{label}"] = f"listed {items} items, expected {n}"
            out[label] = {"seconds": round(statistics.median(times), 4),
                          "seconds_all": [round(x, 4) for x in times], "bytes": size, "items": items}
            self.log(f"list {label}: {statistics.median(times):.3f}s, {size / 1e6:.1f} MB, {items} items")
        return out

    def setpoint_profile(self, s: procs.Setpoint) -> None:
        py_spy = profile.find_py_spy()
        if py_spy is None:
            if self.a.profile == "on":
                raise RuntimeError("py-spy not found: pip install py-spy")
            self.log("py-spy not installed: no profile")
            return
        raw = self.a.out / "profile-setpoint-create.txt"
        self.a.out.mkdir(parents=True, exist_ok=True)
        secs = self.a.profile_seconds
        spy = profile.start(py_spy, s.pid, secs, 200, raw, native=self.a.profile_native)
        try:
            d = self.throughput(self.setpoint_target(s, "bench"), (s.pid,), "pf", duration=secs + 1)
        finally:
            _, err = spy.communicate(timeout=secs + 60)
        if spy.returncode != 0 or not raw.exists():
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-2000:]}")
        analysis = profile.analyze(raw, 200, secs)
        analysis["creates_per_s_while_sampled"] = d["rps"]
        analysis["native"] = self.a.profile_native
        analysis["raw"] = str(raw)
        analysis["markdown"] = str(self.a.out / "profile-setpoint-create.md")
        self.results["profile"] = analysis
        (self.a.out / "profile-setpoint-create.md").write_text(profile.markdown(analysis))

    # ---- the run ------------------------------------------------------------------------------

    def run(self) -> None:
        self.meta()
        self.pick_generator()
        p = self.parts
        if "sqlite" in p:
            with self.section("sqlite_raw"):
                self.run_sqlite()
        ceiling = etcd = sp = None
        if p & {"loadgen", "ceiling"}:
            with self.section("ceiling_start"):
                ceiling = self.start_ceiling()
        if "etcd" in p:
            with self.section("etcd_start"):
                etcd = self.start_etcd()
        spw: dict[int, procs.Setpoint] = {}
        if "setpoint" in p:
            with self.section("setpoint_start"):
                sp = self.start_setpoint()
            for n in sorted({int(x) for x in self.a.setpoint_workers.split(",") if x.strip()} - {0}):
                with self.section(f"setpoint_workers_{n}_start"):
                    spw[n] = self.start_setpoint(n)
        if ceiling is not None and "loadgen" in p:
            with self.section("loadgen_check"):
                self.loadgen_check(ceiling)
        runners: dict[str, Callable[[], dict[str, Any]]] = {}
        if ceiling is not None and "loadgen" in p:
            t = ceiling
            runners["trivial"] = lambda: self.throughput(self.trivial_target(t), (t.pid,), "t")
        if ceiling is not None and "ceiling" in p:
            c = ceiling
            runners["ceiling_insert"] = lambda: self.throughput(
                loadgen.Target("ceiling insert", c.host, c.port, "/insert", "widget", ok_status=(201,)),
                (c.pid,), "c")
        if etcd is not None:
            e = etcd
            runners["etcd_puts"] = lambda: self.throughput(
                loadgen.Target("etcd puts", e.host, e.port, "/v3/kv/put", "etcd", ok_status=(200,)),
                (e.pid,), "e")
        if sp is not None:
            s = sp
            runners["setpoint_creates"] = lambda: self.throughput(self.setpoint_target(s, "bench"),
                                                                  (s.pid,), "s")
        for n, sw in spw.items():
            pids = (sw.pid, *procs.children(sw.pid))  # the supervisor (the store) and its workers
            runners[f"setpoint_creates_workers_{n}"] = functools.partial(
                self.throughput, self.setpoint_target(sw, "bench"), pids, f"w{n}")
        tp = self.rounds(runners)
        if "trivial" in tp:
            self.results.setdefault("loadgen_check", {})["generator"] = tp["trivial"]
        if "ceiling_insert" in tp:
            self.results["ceiling"] = {"insert": tp["ceiling_insert"]}
        if "etcd_puts" in tp:
            self.results.setdefault("etcd", {})["puts"] = tp["etcd_puts"]
        if "setpoint_creates" in tp:
            self.results.setdefault("setpoint", {})["creates"] = tp["setpoint_creates"]
        for n in spw:
            if f"setpoint_creates_workers_{n}" in tp:
                self.results.setdefault("setpoint", {}).setdefault("creates_workers", {})[str(n)] = {
                    "workers": n, **tp[f"setpoint_creates_workers_{n}"]}
        if etcd is not None:
            with self.section("etcd_latency"):
                self.results.setdefault("etcd", {})["latency"] = self.etcd_latency(etcd)
        if sp is not None:
            with self.section("setpoint_latency"):
                self.results.setdefault("setpoint", {})["latency"] = self.setpoint_latency(sp)
            with self.section("setpoint_list"):
                self.results.setdefault("setpoint", {})["list"] = self.setpoint_list(sp)
            if self.a.profile != "off":
                with self.section("profile"):
                    self.setpoint_profile(sp)
            if not sp.alive():
                self.results["errors"]["setpoint_exit"] = "setpoint exited during the run:\n" + sp.tail()
            gc_lines = [ln.strip() for ln in sp.output if ln.startswith("gc: ")]
            if gc_lines:  # BENCH_GC_REPORT=1 with --setpoint-uvloop
                self.results.setdefault("setpoint", {})["gc"] = gc_lines[-1]
        if "agent" in p:
            with self.section("agent"):
                agent.run(self, WIDGET_CRD)
        if "backends" in p or not self.a.only:  # setpoint over each store: bench/store_backends.py
            from bench import store_backends
            with self.section("backends"):
                self.results["backends"] = store_backends.run(self, WIDGET_CRD)
        if "southbound" in p or not self.a.only:  # 100 devices over a lossy network: bench/southbound.py
            from bench import southbound
            with self.section("southbound"):
                self.results["southbound"] = southbound.run(self)
        if "transfer" in p or not self.a.only:  # watch, poll, NATS interrupt and command under faults
            from bench import transfer
            with self.section("transfer"):
                self.results["transfer"] = {k: v for k, v in transfer.run(self).items() if k != "markdown"}
        if "loadbalancer" in p or not self.a.only:  # HAProxy and Envoy following their backends
            from bench import loadbalancer
            with self.section("loadbalancer"):
                self.results["loadbalancer"] = {k: v for k, v in loadbalancer.run(self).items() if k != "markdown"}
        if "templates" in p or not self.a.only:  # bursts and CPU per render of the template engine
            from bench import templates
            with self.section("templates"):
                self.results["templates"] = {k: v for k, v in templates.run(self).items() if k != "markdown"}
        if "cloud" in p or not self.a.only:  # cloud resources against moto's AWS API: bench/cloud.py
            from bench import cloud
            with self.section("cloud"):
                self.results["cloud"] = {k: v for k, v in cloud.run(self).items() if k != "markdown"}
        if "stacks" in p or not self.a.only:  # a Stack of 200 resources, depth 5: bench/stacks.py
            from bench import stacks
            with self.section("stacks"):
                self.results["stacks"] = stacks.run(self)
        if "typed" in p or not self.a.only:  # decoding into typed classes vs dicts: bench/typed.py
            from bench import typed
            with self.section("typed"):
                self.results["typed"] = typed.run(self)
        if "clients" in p or not self.a.only:  # the kubernetes client and kopf as informers: bench/clients.py
            from bench import clients
            with self.section("clients"):
                self.results["clients"] = clients.run(self, WIDGET_CRD)
        self.results["ratios"], self.results["targets"] = report.ratios(self.results)

