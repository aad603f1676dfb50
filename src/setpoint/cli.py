"""The ``setpoint`` command."""

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.command()
def version() -> None:
    """Print the version."""
    from setpoint import __version__

    print(__version__)


def main() -> None:
    app()
