"""``setpoint reap``: find the cloud resources nobody asked for — untagged, or tagged with the uid
of an object that no longer exists — with what they cost, and optionally delete them.

It never deletes a resource whose owner tag names an object that exists; ``--delete`` removes only
orphans older than ``--older-than`` (a resource whose age the cloud does not report — VPCs,
subnets, security groups — counts as old enough only with ``--older-than 0``), and prints what it
did.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from setpoint.cli.agent import KubeconfigOpt, ServersOpt, _client_config, _run
from setpoint.cli.app import app, console
from setpoint.cli.template import parse_duration
from setpoint.server.tables import human_duration


def _age(seconds: float | None) -> str:
    return "?" if seconds is None else human_duration(seconds)


@app.command()
def reap(
    region: Annotated[list[str], typer.Option(help="Region(s) to look in (repeat).")] = ["us-east-1"],  # noqa: B006
    endpoint_url: Annotated[str, typer.Option(help="An AWS-compatible API instead of AWS.")] = "",
    delete: Annotated[bool, typer.Option(help="Delete the orphans older than --older-than.")] = False,
    older_than: Annotated[str, typer.Option(help="Only orphans at least this old are deleted (1h, 30m, 0).")]
    = "1h",
    output: Annotated[str, typer.Option("--output", "-o", help="table, json or prometheus (text exposition).")]
    = "table",
    prices: Annotated[Path | None, typer.Option(help="A price table (YAML) instead of the built-in one.")] = None,
    kubeconfig: KubeconfigOpt = None,
    server: ServersOpt = None,
) -> None:
    """Report cloud resources that no setpoint object owns, with their estimated monthly cost."""
    from setpoint.client import Client
    from setpoint.drivers.aws.inventory import load_prices
    from setpoint.drivers.aws.reaper import reap as reap_once
    from setpoint.drivers.aws.session import Clients

    if output not in ("table", "json", "prometheus"):
        raise typer.BadParameter(f"{output!r}: expected table, json or prometheus", param_hint="--output")
    min_age = parse_duration(older_than)
    table_prices = load_prices(prices)
    config = _client_config(kubeconfig, server)
    result: dict[str, Any] = {}

    async def main() -> None:
        async with Client(config) as client:
            report = await reap_once(client, Clients(), list(region), endpoint_url=endpoint_url, prices=table_prices,
                                     delete_orphans=delete, min_age=min_age)
        result.update(report.as_dict())
        if output == "prometheus":
            from prometheus_client import CollectorRegistry, generate_latest

            from setpoint.drivers.aws.reaper import ReaperMetrics

            registry = CollectorRegistry()
            ReaperMetrics(registry).record("setpoint-reap", report)
            result["prometheus"] = generate_latest(registry).decode()

    _run(main)
    code = 1 if result.get("failed") else 0
    if output == "json":
        print(json.dumps(result, indent=2))
        raise typer.Exit(code)
    if output == "prometheus":
        print(result["prometheus"], end="")
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
