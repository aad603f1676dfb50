"""The four transfers of desired state side by side, under injected faults (docs/transfer.md).

One setpoint server publishing to one NATS server; ``--agents`` agents (informers, each with a
client of its own) per transport, all behind fault proxies: one in front of the API server, one in
front of NATS. For each transport and each loss rate:

- the API proxy is stalled for ``loss`` of every second and its connections are cut once a second
  (the faults a TCP stream meets), and the NATS proxy drops ``loss`` of the core NATS messages
  (interrupts; JetStream deliveries are messages too, and redelivered when not acked);
- a burst of ``--updates`` changes to ``--objects`` objects, and one agent stopped and started
  again mid-burst;
- measured: time from the last write's answer until every agent's cache holds every object at
  its final revision (p50, p99 over agents), bytes that crossed the proxies toward the agents,
  requests and streams the agents opened, changes applied, stale ones dropped and those the
  server coalesced away.

Plus the large-state catch-up: an agent holding ``--large`` objects, back after compaction with
1% of them changed, by digests (what setpoint does) and by a full relist (what it would cost
without), bytes and time.

``python -m bench.transfer`` runs it alone; ``python -m bench --only transfer`` as part of the bench.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import procs

if TYPE_CHECKING:
    from bench.harness import Bench

LOSS_RATES = (0.0, 0.1, 0.3)
ROUNDS = 3  # bursts per row; the row is the median one (by p99), the others' p99 beside it
WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {"group": "example.com", "scope": "Namespaced",
             "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
             "versions": [{"name": "v1", "served": True, "storage": True,
                           "schema": {"openAPIV3Schema": {"type": "object",
                                                          "x-kubernetes-preserve-unknown-fields": True}}}]},
}


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


async def _tcp_faults(proxy: Any, loss: float, stop: asyncio.Event) -> None:
    """Stalled for ``loss`` of each second, connections cut once a second."""
    while not stop.is_set():
        if loss > 0:
            proxy.stall()
            await asyncio.sleep(loss)  # the fault's own duration
            proxy.resume()
            proxy.cut()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0 - loss)


def _rss_mb(pid: int | str = "self") -> float:
    """A process's resident memory (VmRSS) in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


async def scenario(url: str, token: str, nats_url: str, prefix: str, transport: str, loss: float,
                   *, agents: int, objects: int, updates: int, seed: int, server_pid: int | None = None
                   ) -> dict[str, Any]:
    from setpoint.agent.informer import Backoff, Informer
    from setpoint.client import Client, ClientConfig, Resource
    from setpoint.testing.faultproxy import FaultProxy, NatsFaults
    from setpoint.transfer import transport_factory

    widgets = Resource("example.com", "v1", "widgets", kind="Widget")
    NAMESPACES = Resource("", "v1", "namespaces", namespaced=False, kind="Namespace")
    ns = f"t-{uuid.uuid4().hex[:8]}"
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    nhost, nport = nats_url.split("://", 1)[1].rsplit(":", 1)
    async with Client(ClientConfig(url, token=token)) as admin, \
            FaultProxy(host, int(port)) as api_proxy, \
            FaultProxy(nhost, int(nport), nats=NatsFaults(drop=loss, seed=seed, subjects=(f"{prefix}.",))) \
            as nats_proxy:
        await admin.create(NAMESPACES, {"metadata": {"name": ns}})
        sem = asyncio.Semaphore(64)
        final: dict[str, int] = {}

        async def write(i: int, n: int) -> None:
            async with sem:
                body = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": f"w{i}"},
                        "spec": {"n": n}}
                if n == 0:
                    obj = await admin.create(widgets, body, namespace=ns)
                else:
                    obj = await admin.patch(widgets, f"w{i}", {"spec": {"n": n}}, namespace=ns)
                rv = int(obj["metadata"]["resourceVersion"])
                if rv > final.get(f"{ns}/w{i}", 0):
                    final[f"{ns}/w{i}"] = rv

        await asyncio.gather(*(write(i, 0) for i in range(objects)))
        factory = transport_factory(transport, poll_interval=1.0, resync_period=10.0,
                                    nats_url=f"nats://{nats_proxy.address}", consumer=f"bench-{ns}")
        clients = [Client(ClientConfig(f"http://{api_proxy.address}", token=token, timeout=10.0))
                   for _ in range(agents)]
        informers: list[Any] = []
        handled = [0] * agents
        try:
            for i, client in enumerate(clients):
                inf = Informer(client, widgets, namespace=ns, transport=factory(),
                               backoff=Backoff(initial=0.05, cap=2.0), idle_timeout=5.0)

                def count(*_: Any, i: int = i) -> None:
                    handled[i] += 1

                inf.add_handler(on_add=count, on_update=lambda _o, _n, i=i: count(i=i), on_delete=count)
                inf.start()
                informers.append(inf)
            await asyncio.gather(*(inf.wait_synced(timeout=300) for inf in informers))
            down0 = api_proxy.stats.bytes_down + nats_proxy.stats.bytes_down
            conns0 = api_proxy.stats.connections
            before = [(inf.stats.events, inf.stats.stale, inf.stats.skipped, inf.stats.recovered)
                      for inf in informers]
            stop = asyncio.Event()
            faults = asyncio.create_task(_tcp_faults(api_proxy, loss, stop))
            per_round = max(1, updates // objects)
            t0 = time.monotonic()
            for r in range(1, per_round + 1):
                await asyncio.gather(*(write(i, r) for i in range(objects)))
                if r == per_round // 2:  # one agent restarts mid-burst
                    await informers[0].stop()
                    informers[0].start()
            last_write = time.monotonic()
            converged: list[float] = [float("nan")] * agents

            def done(i: int) -> bool:
                have = dict(informers[i].cached_versions())
                return all(int(have.get(k, "0") or 0) >= v for k, v in final.items())

            deadline = last_write + 300
            while any(c != c for c in converged) and time.monotonic() < deadline:  # nan: not yet
                for i in range(agents):
                    if converged[i] != converged[i] and done(i):
                        converged[i] = time.monotonic() - last_write
                await asyncio.sleep(0.02)  # polling the agents' caches is the measurement itself
            stop.set()
            await faults
            api_proxy.resume()
            ok = [c for c in converged if c == c]
            stats = [inf.stats for inf in informers]
            return {
                "transport": transport, "loss": loss, "agents": agents, "objects": objects,
                "updates": per_round * objects, "write_s": round(last_write - t0, 2),
                "converged": len(ok), "converge_p50_s": round(_pct(ok, 0.5), 3),
                "converge_p99_s": round(_pct(ok, 0.99), 3),
                "bytes_to_agents": api_proxy.stats.bytes_down + nats_proxy.stats.bytes_down - down0,
                "connections": api_proxy.stats.connections - conns0,
                "requests": sum(s.polls + s.watches + s.lists for s in stats),
                "applied": sum(s.events for s in stats) - sum(b[0] for b in before),
                "reconciles": sum(handled),
                "stale_dropped": sum(s.stale for s in stats) - sum(b[1] for b in before),
                "coalesced_by_server": sum(s.skipped for s in stats) - sum(b[2] for b in before),
                "nats_frames_dropped": nats_proxy.stats.dropped,
                "recovered": sum(s.recovered for s in stats) - sum(b[3] for b in before),
                "updates_per_s": round(per_round * objects / max(last_write - t0, 1e-9)),
                "server_rss_mb": _rss_mb(server_pid) if server_pid else None,
                "agents_rss_mb": _rss_mb(),
            }
        finally:
            for inf in informers:
                await inf.stop()
            for client in clients:
                await client.aclose()


async def large_state(url: str, token: str, n: int) -> dict[str, Any]:
    """Digest catch-up against a full relist, for an agent holding ``n`` objects, 1% changed."""
    from setpoint.agent.informer import Informer
    from setpoint.client import Client, ClientConfig, Resource
    from setpoint.testing.faultproxy import FaultProxy
    from setpoint.transfer.base import digest_sync, list_into

    widgets = Resource("example.com", "v1", "widgets", kind="Widget")
    NAMESPACES = Resource("", "v1", "namespaces", namespaced=False, kind="Namespace")
    ns = f"l-{uuid.uuid4().hex[:8]}"
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    async with Client(ClientConfig(url, token=token)) as admin, FaultProxy(host, int(port)) as proxy:
        await admin.create(NAMESPACES, {"metadata": {"name": ns}})
        sem = asyncio.Semaphore(64)

        async def make(i: int) -> None:
            async with sem:
                await admin.create(widgets, {"metadata": {"name": f"o{i}"}, "spec": {"n": i, "pad": "x" * 300}},
                                   namespace=ns)

        await asyncio.gather(*(make(i) for i in range(n)))
        async with Client(ClientConfig(f"http://{proxy.address}", token=token)) as via:
            inf = Informer(via, widgets, namespace=ns)
            b0 = proxy.stats.bytes_down
            t0 = time.monotonic()
            await list_into(inf)
            relist = (proxy.stats.bytes_down - b0, time.monotonic() - t0)

            async def change(i: int) -> None:
                async with sem:
                    await admin.patch(widgets, f"o{i}", {"spec": {"n": -i}}, namespace=ns)

            await asyncio.gather(*(change(i) for i in range(0, n, 100)))
            b0 = proxy.stats.bytes_down
            t0 = time.monotonic()
            await digest_sync(inf)
            digest = (proxy.stats.bytes_down - b0, time.monotonic() - t0)
    return {"objects": n, "changed": len(range(0, n, 100)), "relist_bytes": relist[0],
            "relist_s": round(relist[1], 3), "digest_bytes": digest[0], "digest_s": round(digest[1], 3),
            "digest_buckets_fetched": inf.stats.digest_buckets_fetched,
            "bytes_ratio": round(digest[0] / relist[0], 4) if relist[0] else None}


def markdown(rows: list[dict[str, Any]], large: dict[str, Any]) -> str:
    out = ["| transport | loss | converged | p50 s | p99 s [rounds' min-max] | bytes to agents | requests | "
           "connections | applied | reconciles | stale dropped | coalesced by server | lost deliveries read back | "
           "updates/s | RSS after each round, server / agents (MB) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        spread = r.get("rounds_p99_s") or [r["converge_p99_s"]]
        rss = " · ".join(f"{a:g} / {b:g}" for a, b in r.get("rounds_rss_mb") or [])
        out.append(f"| {r['transport']} | {r['loss']:.0%} | {r['converged']}/{r['agents']} | {r['converge_p50_s']} | "
                   f"{r['converge_p99_s']} [{min(spread):g}-{max(spread):g}] | {r['bytes_to_agents']:,} | "
                   f"{r['requests']:,} | {r['connections']:,} | {r['applied']:,} | {r['reconciles']:,} | "
                   f"{r['stale_dropped']:,} | {r['coalesced_by_server']:,} | {r.get('recovered', 0):,} | "
                   f"{r.get('updates_per_s', 0):,} | {rss} |")
    out += ["", "| large-state catch-up | objects | changed | bytes | time s |", "|---|---|---|---|---|",
            f"| full relist | {large['objects']:,} | {large['changed']} | {large['relist_bytes']:,} | "
            f"{large['relist_s']} |",
            f"| bucket digests | {large['objects']:,} | {large['changed']} | {large['digest_bytes']:,} | "
            f"{large['digest_s']} |"]
    return "\n".join(out) + "\n"


def measure(workdir: Path, *, agents: int, objects: int, updates: int, large: int,
            rates: tuple[float, ...] = LOSS_RATES, rounds: int = ROUNDS, log: Any = print) -> dict[str, Any]:
    from setpoint.transfer import TRANSPORTS
    from setpoint.transfer.natsserver import NatsServer

    only = os.environ.get("BENCH_TRANSFER_ONLY")  # a comma-separated subset, for quick looks
    transports = tuple(t for t in TRANSPORTS if not only or t in only.split(","))

    with NatsServer(workdir / "nats") as nats:
        prefix = f"b{uuid.uuid4().hex[:8]}"
        s = procs.Setpoint(workdir / "setpoint", ["--nats", nats.url, "--nats-prefix", prefix])
        with s:
            url = f"http://{s.host}:{s.port}"
            import httpx

            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {s.token}"}, timeout=30) as c:
                c.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=WIDGET_CRD)
                deadline = time.monotonic() + 15
                while c.get("/apis/example.com/v1/widgets?limit=1").status_code != 200:
                    if time.monotonic() > deadline:
                        raise RuntimeError("widgets never served")
                    time.sleep(0.05)
            rows = []
            for i, (transport, loss) in enumerate((t, r) for t in transports for r in rates):
                runs = []
                for k in range(rounds):  # the last write falls at a different phase of the faults each time
                    log(f"transfer: {transport} at {loss:.0%} loss (round {k + 1}/{rounds})")
                    run = asyncio.run(scenario(url, s.token, nats.url, prefix, transport, loss, agents=agents,
                                               objects=objects, updates=updates, seed=i * 100 + k,
                                               server_pid=s.pid))
                    log(f"transfer: {transport} {loss:.0%}: p99 {run['converge_p99_s']}s, "
                        f"{run['bytes_to_agents']:,} B")
                    log("transfer row: " + json.dumps(run))
                    runs.append(run)
                row = dict(sorted(runs, key=lambda r: r["converge_p99_s"])[len(runs) // 2])  # the median round
                row["rounds_p99_s"] = [r["converge_p99_s"] for r in runs]
                row["rounds_rss_mb"] = [(r["server_rss_mb"], r["agents_rss_mb"]) for r in runs]
                rows.append(row)
            big = asyncio.run(large_state(url, s.token, large))
            log(f"transfer: large state: digests {big['digest_bytes']:,} B vs relist {big['relist_bytes']:,} B")
    return {"rows": rows, "large_state": big, "markdown": markdown(rows, big)}


def run(b: Bench) -> dict[str, Any]:
    quick = b.a.quick
    res = measure(b.tmp / "transfer", agents=3 if quick else 10, objects=200 if quick else 1_000,
                  updates=1_000 if quick else 10_000, large=2_000 if quick else 100_000,
                  rates=(0.0, 0.3) if quick else LOSS_RATES, rounds=1 if quick else ROUNDS, log=b.log)
    b.a.out.mkdir(parents=True, exist_ok=True)
    (b.a.out / "transfer.md").write_text(res["markdown"])
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.transfer", description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=10)
    ap.add_argument("--objects", type=int, default=1_000)
    ap.add_argument("--updates", type=int, default=10_000)
    ap.add_argument("--large", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--rates", default=",".join(str(r) for r in LOSS_RATES))
    a = ap.parse_args(argv)

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # so the servers it started are stopped on the way out

    signal.signal(signal.SIGTERM, on_signal)
    with tempfile.TemporaryDirectory(prefix="setpoint-transfer-") as d:
        res = measure(Path(d), agents=a.agents, objects=a.objects, updates=a.updates, large=a.large,
                      rounds=a.rounds, rates=tuple(float(r) for r in a.rates.split(",")),
                      log=lambda m: print(m, file=sys.stderr))
    print(json.dumps({k: v for k, v in res.items() if k != "markdown"}, indent=2))
    print(res["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
