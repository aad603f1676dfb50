"""``setpoint crd gen module:Class``: the CustomResourceDefinition of a kind declared as a Python
class (``setpoint.crdgen``), as YAML to apply or to check in."""

from __future__ import annotations

import importlib
import sys
from typing import Annotated

import typer
import yaml

from setpoint.cli.app import app, console

crd_app = typer.Typer(no_args_is_help=True, help="CustomResourceDefinitions from Python classes.")
app.add_typer(crd_app, name="crd")


@crd_app.command("gen")
def gen(
    classes: Annotated[list[str], typer.Argument(help="module:Class, a msgspec.Struct with a kind_info.")],
) -> None:
    """Print the CRD of each class (YAML documents), e.g. `setpoint crd gen home.kinds:Lamp | kubectl apply -f -`."""
    from setpoint.crdgen import NotStructural, crd

    sys.path.insert(0, "")  # modules in the current directory, as `python -m` would find them
    docs = []
    for ref in classes:
        module_name, _, class_name = ref.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
            docs.append(crd(cls))
        except (ImportError, AttributeError, TypeError, NotStructural, ValueError) as e:
            console.print(f"[red]{ref}[/red]: {e}", highlight=False)
            raise typer.Exit(2) from None
    print(yaml.safe_dump_all(docs, sort_keys=False), end="")
