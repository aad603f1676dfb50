"""``setpoint reap``: find the resources nobody asked for — untagged cloud resources, or ones
tagged with the uid of an object that no longer exists — with what they cost, and optionally
delete them. It asks every source it is given: the cloud (by default), the processes of a node
(``--processes STATE_DIR``, on that node) and any driver that lists what it made (``--driver``).

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
    cloud: Annotated[bool, typer.Option(help="Look in the cloud (AWS or --endpoint-url).")] = True,
    processes: Annotated[Path | None, typer.Option(
        help="A node agent's state directory: the ProcessSets it still runs processes for.")] = None,
    driver: Annotated[str, typer.Option(help="An installed driver (see `setpoint drivers`) that lists what it "
                                             "made, e.g. rest.")] = "",
    driver_option: Annotated[list[str], typer.Option(help="KEY=VALUE for --driver (repeat), e.g. "
                                                          "base_url=http://devices:8080.")] = [],  # noqa: B006
    owner_kind: Annotated[list[str], typer.Option(help="The kind(s) whose objects own --driver's resources "
                                                       "(repeat), e.g. homes.")] = [],  # noqa: B006
    kubeconfig: KubeconfigOpt = None,
    server: ServersOpt = None,
) -> None:
    """Report resources that no setpoint object owns, with their estimated monthly cost."""
    from setpoint.client import Client
    from setpoint.drivers.aws.inventory import load_prices
    from setpoint.drivers.aws.reaper import AwsSource
    from setpoint.drivers.aws.session import Clients
    from setpoint.drivers.reaper import ReaperMetrics, Source
    from setpoint.drivers.reaper import reap as reap_sources

    options: dict[str, str] = {}
    for item in driver_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--driver-option")
        options[key] = value
    if driver and not owner_kind:
        raise typer.BadParameter("name the kind(s) that own its resources", param_hint="--owner-kind")
    if not (cloud or processes or driver):
        raise typer.BadParameter("nothing to look at: --cloud, --processes or --driver", param_hint="--no-cloud")

    if output not in ("table", "json", "prometheus"):
        raise typer.BadParameter(f"{output!r}: expected table, json or prometheus", param_hint="--output")
    min_age = parse_duration(older_than)
    table_prices = load_prices(prices)
    config = _client_config(kubeconfig, server)
    result: dict[str, Any] = {}

    async def main() -> None:
        async with Client(config) as client:
            sources: list[Source] = []
            if cloud:
                sources.append(AwsSource(client, Clients(), list(region), endpoint_url=endpoint_url,
                                         prices=table_prices))
            closers = []
            if processes is not None:
                from setpoint.drivers.reaper import ProcessSource

                process_source = ProcessSource(client, processes)
                sources.append(process_source)
                closers.append(process_source.close)
            if driver:
                sources.append(await _driver_source(client, driver, options, owner_kind))
            try:
                report = await reap_sources(sources, delete_orphans=delete, min_age=min_age)
            finally:
                for close in closers:
                    close()
                for source in sources:
                    aclose = getattr(getattr(source, "driver", None), "aclose", None)
                    if aclose is not None:
                        await aclose()
        result.update(report.as_dict())
        if output == "prometheus":
            from prometheus_client import CollectorRegistry, generate_latest

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

    table = Table("SOURCE", "KIND", "ID", "WHERE", "AGE", "WHY", "OWNER TAG", "$/MONTH", box=None, pad_edge=False)
    for o in result.get("orphans", []):
        table.add_row(o["source"], o["kind"], o["id"], o["region"], _age(o["ageSeconds"]), o["why"], o["owner"] or "-",
                      f"{o['monthlyCost']:.2f}")
    console.print(table)
    console.print(f"{len(result.get('orphans', []))} orphans, about ${result.get('monthlyCost', 0):.2f} a month",
                  highlight=False)
    for d in result.get("deleted", []):
        console.print(f"deleted {d}", highlight=False)
    for f in result.get("failed", []):
        console.print(f"[red]not deleted[/red] {f} (try again later)", highlight=False)
    raise typer.Exit(code)


async def _driver_source(client: Any, name: str, options: dict[str, str], owner_kinds: list[str]) -> Any:
    """``--driver NAME``: the installed driver, made with ``options``, judged against the objects
    of ``owner_kinds`` (resolved as ``setpoint get`` resolves kinds)."""
    from setpoint.cli.objects.discovery import Discovery
    from setpoint.drivers.plugins import PluginError, create
    from setpoint.drivers.reaper import DriverSource, ListsOrphans

    try:
        made = create(name, **options)
    except PluginError as e:
        raise typer.BadParameter(str(e), param_hint="--driver") from None
    except TypeError as e:
        raise typer.BadParameter(f"{name}: {e}", param_hint="--driver-option") from None
    if not isinstance(made, ListsOrphans):
        raise typer.BadParameter(f"the {name} driver cannot list what it made (no orphans() and release())",
                                 param_hint="--driver")
    discovery = Discovery(client)
    owners = [(await discovery.resolve(kind)).resource for kind in owner_kinds]
    return DriverSource(client, made, owners, name=name, where=str(options.get("base_url", "")))
