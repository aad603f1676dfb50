"""Kubernetes clients as informers against setpoint: the reference the agent SDK is measured against.

For the official ``kubernetes`` Python client and for kopf, each in a process of its own:

- **time to first full cache**: from the start of the list (the client's paged list, or kopf's
  start) until every one of N objects is in the client's hands;
- **events/s handled**: after that, M updates are made (``bench/rawhttp.py``, 32 connections)
  while the client does not read (the Python client has not opened its watch yet; kopf is
  stopped with SIGSTOP), then the client takes them: M ÷ the time until its handler has seen the
  last one. A client that falls behind by more than the server's per-watcher queue is cut off and
  resumes from its last resourceVersion, as informers do; that is part of the figure.

``python -m bench.clients [--objects N] [--updates M]`` runs it alone; ``python -m bench`` runs it
as part ``clients``. Each child prints one ``BENCH {json}`` line with its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench import procs
from bench.operators import CLIENT_OPERATOR
from bench.rawhttp import Connection, build_request

MARK = "BENCH "
GROUP, VERSION, PLURAL = "example.com", "v1", "widgets"


def _say(**data: Any) -> None:
    print(MARK + json.dumps(data), flush=True)


# ---- children ----------------------------------------------------------------------------------

def child_kubernetes(cfg: dict[str, Any]) -> None:
    """An informer written with the official client: paged list into a dict, then a watch."""
    from kubernetes import client, config, watch  # type: ignore[import-untyped]

    api_client = config.new_client_from_config(config_file=cfg["kubeconfig"])
    api = client.CustomObjectsApi(api_client)
    n, m, ns = cfg["objects"], cfg["updates"], cfg["ns"]
    cache: dict[str, Any] = {}
    t0 = time.monotonic()
    token = None
    rv = ""
    while True:
        page = api.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, limit=500,
                                                 **({"_continue": token} if token else {}))
        rv = rv or page["metadata"]["resourceVersion"]
        for item in page["items"]:
            cache[item["metadata"]["name"]] = item
        token = page["metadata"].get("continue")
        if not token:
            break
    full = time.monotonic() - t0
    seen = 0
    _say(ready=True, cache=len(cache), full_cache_s=round(full, 3))
    sys.stdin.readline()  # the parent has made the updates: take them as fast as we can
    t1 = time.monotonic()
    resume = rv
    while seen < m:  # the server cuts off a watcher that falls behind; resume as informers do
        w = watch.Watch()
        for ev in w.stream(api.list_namespaced_custom_object, GROUP, VERSION, ns, PLURAL,
                           resource_version=resume, timeout_seconds=600):
            obj = ev["object"]
            cache[obj["metadata"]["name"]] = obj
            resume = obj["metadata"]["resourceVersion"]
            if ev["type"] == "MODIFIED":
                seen += 1
                if seen == m:
                    w.stop()
                    break
    _say(done=True, events=seen, seconds=round(time.monotonic() - t1, 3), objects=n)


# ---- the parent ------------------------------------------------------------------------------

class Child:
    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.lines: list[dict[str, Any]] = []
        self.output: list[str] = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env={**os.environ, **env})
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.output.append(line)
                if line.startswith(MARK):
                    try:
                        self.lines.append(json.loads(line[len(MARK):]))
                    except ValueError:
                        pass  # not ours after all
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait(self, pred: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for d in self.lines:
                    if pred(d):
                        return d
                if self.proc.poll() is not None and not any(pred(d) for d in self.lines):
                    raise RuntimeError(f"{what}: the client exited:\n{''.join(self.output[-30:])}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError(f"{what}: timed out:\n{''.join(self.output[-30:])}")
                self.cond.wait(remaining)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _send(host: str, port: int, requests: list[bytes], connections: int = 32) -> int:
    """Send every request over ``connections`` keep-alive connections; returns the first send's
    monotonic_ns. Every answer must be 2xx."""
    conns = [await Connection.open(host, port) for _ in range(min(connections, len(requests)))]
    it = iter(requests)
    first = time.monotonic_ns()

    async def worker(c: Connection) -> None:
        for req in it:
            r = await c.request(req)
            if not 200 <= r.status < 300:
                raise RuntimeError(f"HTTP {r.status}: {r.body[:300]!r}")

    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        for c in conns:
            c.close()
    return first


def _widget(name: str, size: int) -> bytes:
    return json.dumps({"apiVersion": f"{GROUP}/{VERSION}", "kind": "Widget", "metadata": {"name": name},
                       "spec": {"size": size, "tags": ["x" * 40] * 8}}).encode()


def measure(s: procs.Setpoint, crd: dict[str, Any], objects: int, updates: int, tmp: Path) -> dict[str, Any]:
    host, port = s.host, s.port
    auth = {"Authorization": f"Bearer {s.token}"}
    kubeconfig = s.data_dir / "kubeconfig.yaml"
    with httpx.Client(base_url=f"http://{host}:{port}", headers=auth, timeout=30) as c:
        r = c.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd)
        if r.status_code not in (201, 409):
            raise RuntimeError(f"creating the CRD: {r.status_code} {r.text[:300]}")
    out: dict[str, Any] = {"objects": objects, "updates": updates}
    for client_name in ("kubernetes", "kopf"):
        ns = f"clients-{client_name}"
        with httpx.Client(base_url=f"http://{host}:{port}", headers=auth, timeout=30) as c:
            c.post("/api/v1/namespaces", json={"metadata": {"name": ns}})
            deadline = time.monotonic() + 15
            while c.get(f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}?limit=1").status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("widgets are not served")
        base = f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}"
        hdr = {**auth, "Content-Type": "application/json"}
        creates = [build_request("POST", base, host, _widget(f"w{i}", 1), hdr) for i in range(objects)]
        asyncio.run(_send(host, port, creates))
        patch_hdr = {**auth, "Content-Type": "application/merge-patch+json"}
        patches = [build_request("PATCH", f"{base}/w{i % objects}", host,
                                 json.dumps({"spec": {"size": 2 + i}}).encode(), patch_hdr)
                   for i in range(updates)]
        cfg = {"kubeconfig": str(kubeconfig), "objects": objects, "updates": updates, "ns": ns}
        if client_name == "kubernetes":
            child = Child([sys.executable, "-m", "bench.clients", "child-kubernetes", json.dumps(cfg)], {})
        else:
            op = tmp / "kopf_operator.py"
            op.write_text(CLIENT_OPERATOR.read_text())
            child = Child([sys.executable, "-m", "kopf", "run", "--standalone", "--namespace", ns, str(op)],
                          {"KUBECONFIG": str(kubeconfig), "BENCH_OBJECTS": str(objects)})
        try:
            ready = child.wait(lambda d: d.get("ready"), 600, f"{client_name}: the full cache")
            # The updates are made while the client does not read, then it takes them all as
            # fast as it can: the figure is the client's rate, not the server's write rate.
            if client_name == "kopf":
                started = child.wait(lambda d: "started_ns" in d, 10, "kopf start")["started_ns"]
                full = (ready["full_cache_ns"] - started) / 1e9
                os.kill(child.proc.pid, signal.SIGSTOP)
                try:
                    asyncio.run(_send(host, port, patches))
                finally:
                    t_go = time.monotonic_ns()
                    os.kill(child.proc.pid, signal.SIGCONT)
                done = child.wait(lambda d: d.get("event") == updates, 600, f"{client_name}: the events")
                secs = (done["t_ns"] - t_go) / 1e9
            else:
                if ready["cache"] != objects:
                    raise RuntimeError(f"the client listed {ready['cache']} objects, not {objects}")
                full = ready["full_cache_s"]
                asyncio.run(_send(host, port, patches))
                assert child.proc.stdin is not None
                child.proc.stdin.write("go\n")
                child.proc.stdin.flush()
                done = child.wait(lambda d: d.get("done"), 600, f"{client_name}: the events")
                secs = done["seconds"]
            out[client_name] = {"full_cache_s": round(full, 3),
                                "events_per_s": round(updates / secs) if secs > 0 else None,
                                "events_seconds": round(secs, 3)}
        finally:
            child.stop()
    return out


def run(bench: Any, crd: dict[str, Any]) -> dict[str, Any]:
    """The ``clients`` part of ``python -m bench``: its own server, so the others' figures are untouched."""
    quick = bool(getattr(bench.a, "quick", False))
    objects = int(os.environ.get("BENCH_CLIENTS_OBJECTS") or (1000 if quick else 10_000))
    updates = int(os.environ.get("BENCH_CLIENTS_UPDATES") or (1000 if quick else 5_000))
    tmp = Path(bench.tmp) / "clients"
    with procs.Setpoint(tmp / "setpoint") as s:
        return measure(s, crd, objects, updates, tmp)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["child-kubernetes"]:
        child_kubernetes(json.loads(args[1]))
        return 0
    ap = argparse.ArgumentParser(prog="python -m bench.clients", description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=10_000)
    ap.add_argument("--updates", type=int, default=5_000)
    a = ap.parse_args(args)
    from bench.harness import WIDGET_CRD

    with tempfile.TemporaryDirectory() as d, procs.Setpoint(Path(d) / "setpoint") as s:
        print(json.dumps(measure(s, WIDGET_CRD, a.objects, a.updates, Path(d)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
