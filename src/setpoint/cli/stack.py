"""``setpoint graph -f stack.yaml``: a Stack's dependency graph in DOT (Graphviz), checked the
way the server checks it (a cycle or a reference to nothing is an error naming the resources)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

from setpoint.cli.app import app, console


@app.command()
def graph(
    filename: Annotated[Path, typer.Option("--filename", "-f", help="A file holding one or more Stacks.")],
) -> None:
    """Print a Stack's dependency graph in DOT: `setpoint graph -f stack.yaml | dot -Tsvg > stack.svg`."""
    from setpoint.stackgraph import StackError, build

    try:
        docs = [d for d in yaml.safe_load_all(filename.read_text()) if isinstance(d, dict)]
    except (OSError, yaml.YAMLError) as e:
        console.print(f"[red]cannot read {filename}[/red]: {e}", highlight=False)
        raise typer.Exit(2) from None
    stacks = [d for d in docs if d.get("kind") == "Stack"]
    if not stacks:
        console.print(f"[red]{filename} holds no Stack[/red]", highlight=False)
        raise typer.Exit(2)
    for s in stacks:
        name = str((s.get("metadata") or {}).get("name", "stack"))
        try:
            print(build(s.get("spec") or {}).dot(name), end="")
        except StackError as e:
            console.print(f"[red]Stack {name}[/red]: {e}", highlight=False)
            raise typer.Exit(1) from None
