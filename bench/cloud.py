"""Cloud resources (docs/cloud.md) against moto's AWS API on loopback: converging 100 Instances
with no loss and with 10% of the API's replies lost, and the reaper over 1,000 resources.

- **converge**: one setpoint server, one ``setpoint cloud-controller``, 100 Instance objects
  created at once; measured: the time until every one is Ready (running), the requests the
  controller sent per instance (counted by the proxy in front of the API, which also loses the
  replies), and how many instances exist per object afterwards (must be exactly 1).
- **reaper**: 1,000 instances made directly in the API (nobody's), ``setpoint reap``'s work
  (``setpoint.drivers.aws.reaper.reap``) timed, and its API calls counted.

``python -m bench.cloud`` runs it alone; ``python -m bench --only cloud`` as part of the bench.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import procs

if TYPE_CHECKING:
    from bench.harness import Bench

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
AMI = "ami-12c6146b"
ROOT = Path(__file__).resolve().parent.parent


class Moto(procs.Managed):
    def __init__(self) -> None:
        self.moto_port = procs.free_port()
        super().__init__([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.moto_port)],
                         re.compile(r"Running on|Serving|127\.0\.0\.1"), "moto", cwd=ROOT)

    def start(self, timeout: float = 60.0) -> None:
        os.environ.update(CREDENTIALS)
        super().start(timeout)


class CloudController(procs.Managed):
    def __init__(self, kubeconfig: Path) -> None:
        super().__init__([sys.executable, "-m", "setpoint", "cloud-controller", "--kubeconfig", str(kubeconfig),
                          "--log-level", "warning"], None, "cloud-controller", cwd=ROOT)


async def converge(client: Any, endpoint: str, n: int, proxy: Any, moto_url: str) -> dict[str, Any]:
    import boto3

    from setpoint.agent.conditions import get_condition
    from setpoint.drivers.aws import resource

    instances = resource("instances")
    ns = f"c{int(time.time() * 1000) % 10**8}"
    await client.create(procs_namespaces(), {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    proxy.requests.clear()
    started = time.perf_counter()
    await asyncio.gather(*(client.create(instances, {
        "apiVersion": "aws.setpoint.dev/v1alpha1", "kind": "Instance", "metadata": {"name": f"vm{i}"},
        "spec": {"endpointUrl": endpoint, "imageId": AMI, "instanceType": "t3.micro"}}, namespace=ns)
        for i in range(n)))
    while True:
        items = (await client.list(instances, namespace=ns)).items
        ready = [o for o in items if (get_condition(o.get("status"), "Ready") or {}).get("status") == "True"]
        if len(ready) == n:
            break
        await asyncio.sleep(0.1)  # polling the objects' status is what the bench measures against
    elapsed = time.perf_counter() - started
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto_url)
    per_object: dict[str, int] = {}
    for page in ec2.get_paginator("describe_instances").paginate():
        for i in (i for r in page["Reservations"] for i in r["Instances"]):
            tags = {t["Key"]: t["Value"] for t in i.get("Tags") or []}
            owner = tags.get("setpoint.dev/owner", "")
            if owner.startswith(f"{ns}/") and i["State"]["Name"] != "terminated":
                per_object[owner] = per_object.get(owner, 0) + 1
    requests = sum(proxy.requests.values())
    return {"instances": n, "loss": proxy.loss, "seconds": round(elapsed, 2),
            "requests_per_instance": round(requests / n, 2),
            "run_instances_per_instance": round(proxy.requests.get("RunInstances", 0) / n, 2),
            "replies_lost": proxy.lost, "max_instances_per_object": max(per_object.values(), default=0),
            "objects_with_an_instance": len(per_object)}


def procs_namespaces() -> Any:
    from setpoint.client import Resource

    return Resource("", "v1", "namespaces", namespaced=False, kind="Namespace")


async def reaper(moto_url: str, proxy: Any, client: Any, n: int) -> dict[str, Any]:
    import boto3

    from setpoint.drivers.aws.inventory import load_prices
    from setpoint.drivers.aws.reaper import reap
    from setpoint.drivers.aws.session import Clients

    ec2 = boto3.client("ec2", region_name="us-west-2", endpoint_url=moto_url)
    for start in range(0, n, 250):
        ec2.run_instances(ImageId=AMI, MinCount=min(250, n - start), MaxCount=min(250, n - start),
                          InstanceType="t3.micro")
    proxy.requests.clear()
    started = time.perf_counter()
    report = await reap(client, Clients(), ["us-west-2"], endpoint_url=proxy.url, prices=load_prices())
    elapsed = time.perf_counter() - started
    return {"resources": report.examined, "orphans": len(report.orphans), "seconds": round(elapsed, 2),
            "api_calls": sum(proxy.requests.values()),
            "monthly_cost": report.monthly_cost}


def measure(tmp: Path, n: int = 100, reaped: int = 1_000, log: Callable[[str], None] = print) -> dict[str, Any]:
    from setpoint.client import Client, ClientConfig
    from setpoint.testing.replyloss import ReplyLossProxy

    res: dict[str, Any] = {"converge": []}
    with Moto() as moto, procs.Setpoint(tmp / "server") as sp:
        moto_url = f"http://127.0.0.1:{moto.moto_port}"
        kubeconfig = sp.data_dir / "kubeconfig.yaml"
        with CloudController(kubeconfig):
            for loss in (0.0, 0.1):
                proxy = ReplyLossProxy(moto.moto_port, loss=loss, seed=7)
                try:
                    log(f"cloud: {n} instances at {loss:.0%} lost replies")

                    async def one(p: ReplyLossProxy) -> dict[str, Any]:
                        async with Client(ClientConfig(f"http://{sp.host}:{sp.port}", token=sp.token)) as c:
                            return await converge(c, p.url, n, p, moto_url)

                    res["converge"].append(asyncio.run(one(proxy)))
                finally:
                    proxy.stop()
        proxy = ReplyLossProxy(moto.moto_port)
        try:
            log(f"cloud: the reaper over {reaped} instances")

            async def reap_run() -> dict[str, Any]:
                async with Client(ClientConfig(f"http://{sp.host}:{sp.port}", token=sp.token)) as c:
                    return await reaper(moto_url, proxy, c, reaped)

            res["reaper"] = asyncio.run(reap_run())
        finally:
            proxy.stop()
    res["markdown"] = markdown(res)
    return res


def markdown(res: dict[str, Any]) -> str:
    lines = ["### Cloud resources (moto's AWS API)", "",
             "| instances | replies lost | converged in | requests per instance | RunInstances per instance | "
             "instances per object |", "|---|---|---|---|---|---|"]
    for r in res["converge"]:
        lines.append(f"| {r['instances']} | {r['loss']:.0%} ({r['replies_lost']}) | {r['seconds']} s | "
                     f"{r['requests_per_instance']} | {r['run_instances_per_instance']} | "
                     f"{r['max_instances_per_object']} (of {r['objects_with_an_instance']} objects) |")
    rp = res["reaper"]
    lines += ["", "| reaper over | orphans | time | API calls (EC2 and ELBv2; S3's REST calls not counted) |",
              "|---|---|---|---|",
              f"| {rp['resources']:,} resources | {rp['orphans']:,} (${rp['monthly_cost']:,.2f}/month) | "
              f"{rp['seconds']} s | {rp['api_calls']} |"]
    return "\n".join(lines) + "\n"


def run(b: Bench) -> dict[str, Any]:
    res = measure(b.tmp / "cloud", n=20 if b.a.quick else 100, reaped=100 if b.a.quick else 1_000, log=b.log)
    b.a.out.mkdir(parents=True, exist_ok=True)
    (b.a.out / "cloud.md").write_text(res["markdown"])
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cloud", description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=100)
    ap.add_argument("--reaped", type=int, default=1_000)
    a = ap.parse_args(argv)
    return procs.run_alone("cloud", lambda tmp, log: measure(tmp, n=a.instances, reaped=a.reaped, log=log))


if __name__ == "__main__":
    sys.exit(main())
