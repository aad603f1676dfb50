"""``setpoint drivers``: the driver plugins installed (entry-point group ``setpoint.drivers``)."""

from __future__ import annotations

import enum
import json
from typing import Annotated

import typer
from rich.table import Table

from setpoint.cli.app import app, console


class DriversOutput(enum.StrEnum):
    table = "table"
    json = "json"
    name = "name"


@app.command()
def drivers(
    output: Annotated[DriversOutput, typer.Option("--output", "-o", help="table, json or name.")]
    = DriversOutput.table,
) -> None:
    """List the installed driver plugins: name, package, version, description.

    A plugin that fails to import is listed with its error, and the command exits with 1.
    """
    from setpoint.drivers.plugins import describe, discover

    rows = [describe(p) for p in discover().values()]
    if output is DriversOutput.json:
        print(json.dumps(rows, indent=2))
    elif output is DriversOutput.name:
        for row in rows:
            print(row["name"])
    elif not rows:
        console.print("no driver plugins installed")
    else:
        table = Table(box=None, pad_edge=False)
        for col in ("NAME", "PACKAGE", "VERSION", "OBJECT", "DESCRIPTION"):
            table.add_column(col, overflow="fold")
        for row in rows:
            desc = f"[red]error: {row['error']}[/red]" if row["error"] else row["description"]
            table.add_row(row["name"], row["package"], row["version"], row["object"], desc)
        console.print(table, highlight=False)
    if any(row["error"] for row in rows):
        raise typer.Exit(1)
