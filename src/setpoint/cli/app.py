"""The typer application every command module registers on."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

# Plain click help: rich's boxed tables cut long option names and values with "…" at 80 columns,
# where click's formatter wraps them.
app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                  help="setpoint: desired-state orchestration with a Kubernetes-style control plane.")
console = Console(soft_wrap=True)


def _print_version(value: bool) -> None:
    if value:
        from setpoint import __version__

        print(f"setpoint {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version, help="Print the version and exit.")] = False,
) -> None:
    """setpoint: desired-state orchestration with a Kubernetes-style control plane."""


@app.command()
def version() -> None:
    """Print the version."""
    from setpoint import __version__

    print(__version__)


def main() -> None:
    app()
