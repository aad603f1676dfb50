"""``setpoint reap``: find the cloud resources nobody asked for — untagged, or tagged with the uid
of an object that no longer exists — with what they cost, and optionally delete them.

It never deletes a resource whose owner tag names an object that exists; ``--delete`` removes only
orphans older than ``--older-than`` (a resource whose age the cloud does not report — VPCs,
subnets, security groups — counts as old enough only with ``--older-than 0``), and prints what it
did.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from setpoint.cli.agent import KubeconfigOpt, ServersOpt, _client_config, _run
from setpoint.cli.app import app, console
from setpoint.cli.template import parse_duration

DELETE_ORDER = ["instance", "loadbalancer", "security-group", "subnet", "vpc", "bucket"]


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


@app.command()
def reap(
    region: Annotated[list[str], typer.Option(help="Region(s) to look in (repeat).")] = ["us-east-1"],  # noqa: B006
    endpoint_url: Annotated[str, typer.Option(help="An AWS-compatible API instead of AWS.")] = "",
    delete: Annotated[bool, typer.Option(help="Delete the orphans older than --older-than.")] = False,
    older_than: Annotated[str, typer.Option(help="Only orphans at least this old are deleted (1h, 30m, 0).")]
    = "1h",
    output: Annotated[str, typer.Option("--output", "-o", help="table or json.")] = "table",
    prices: Annotated[Path | None, typer.Option(help="A price table (YAML) instead of the built-in one.")] = None,
    kubeconfig: KubeconfigOpt = None,
    server: ServersOpt = None,
) -> None:
    """Report cloud resources that no setpoint object owns, with their estimated monthly cost."""
    from setpoint.agent.errors import DriverError
    from setpoint.client import Client
    from setpoint.drivers.aws import KINDS, OWNER_UID, resource
    from setpoint.drivers.aws.inventory import delete as delete_resource
    from setpoint.drivers.aws.inventory import inventory, load_prices, monthly_cost
    from setpoint.drivers.aws.session import Clients

    min_age = parse_duration(older_than)
    table_prices = load_prices(prices)
    config = _client_config(kubeconfig, server)
    result: dict[str, Any] = {}

    async def main() -> None:
        clients = Clients()
        async with Client(config) as client:
            live: set[str] = set()
            for plural in KINDS:
                async for obj in client.iter_list(resource(plural)):
                    live.add(str(obj["metadata"].get("uid")))
            now = dt.datetime.now(dt.UTC)
            orphans = []
            for r in region:
                for a in await inventory(clients, r, endpoint_url):
                    if a.owner_uid is not None and a.owner_uid in live:
                        continue  # owned: never touched
                    why = "untagged" if a.owner_uid is None else "its owner object is gone"
                    orphans.append((a, why, a.age_seconds(now), monthly_cost(a, table_prices)))
            deleted: list[str] = []
            failed: list[str] = []
            if delete:
                # Dependents first: what runs in a network before the network.
                for a, _, age, _ in sorted(orphans, key=lambda o: DELETE_ORDER.index(o[0].kind)):
                    if (age is not None and age >= min_age) or (age is None and min_age == 0):
                        try:
                            await delete_resource(clients, a, endpoint_url)
                            deleted.append(f"{a.kind} {a.id}")
                        except DriverError as e:
                            failed.append(f"{a.kind} {a.id}: {e.message}")
            result["orphans"] = [{"kind": a.kind, "id": a.id, "region": a.region, "why": why, "owner": a.owner,
                                  "ownerUid": a.tags.get(OWNER_UID), "ageSeconds": age, "monthlyCost": cost}
                                 for a, why, age, cost in orphans]
            result["monthlyCost"] = round(sum(c for *_, c in orphans), 2)
            result["deleted"] = deleted
            result["failed"] = failed

    _run(main)
    code = 1 if result.get("failed") else 0
    if output == "json":
        print(json.dumps(result, indent=2))
        raise typer.Exit(code)
    from rich.table import Table

    table = Table("KIND", "ID", "REGION", "AGE", "WHY", "OWNER TAG", "$/MONTH", box=None, pad_edge=False)
    for o in result.get("orphans", []):
        table.add_row(o["kind"], o["id"], o["region"], _age(o["ageSeconds"]), o["why"], o["owner"] or "-",
                      f"{o['monthlyCost']:.2f}")
    console.print(table)
    console.print(f"{len(result.get('orphans', []))} orphans, about ${result.get('monthlyCost', 0):.2f} a month",
                  highlight=False)
    for d in result.get("deleted", []):
        console.print(f"deleted {d}", highlight=False)
    for f in result.get("failed", []):
        console.print(f"[red]not deleted[/red] {f} (try again later)", highlight=False)
    raise typer.Exit(code)
