"""The typer application every command module registers on."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="setpoint: desired-state orchestration with a Kubernetes-style control plane.")
console = Console(soft_wrap=True)


@app.command()
def version() -> None:
    """Print the version."""
    from setpoint import __version__

    print(__version__)


def main() -> None:
    app()
