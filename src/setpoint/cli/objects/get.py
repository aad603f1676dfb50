"""``setpoint get``."""


from __future__ import annotations

import io
import json
import sys
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.table import Table

from setpoint.cli.app import app, console
from setpoint.cli.objects.common import err_console
from setpoint.cli.objects.follow import namespaced_name
from setpoint.cli.objects.output import Output, age, cell, printer_columns, split_refs
from setpoint.cli.objects.session import (
    AllNamespacesOpt,
    ContextOpt,
    FieldSelectorOpt,
    KubeconfigOpt,
    NamespaceOpt,
    SelectorOpt,
    Session,
    run,
    status_message,
)
from setpoint.client import (
    NotFound,
)
from setpoint.types import Object

GET_HELP = (
    "Show objects of one kind: a table, YAML, JSON or names.\n\n"
    "The table has NAME, the CRD's additionalPrinterColumns and AGE (NAMESPACE first with -A); "
    "-o wide adds the columns of priority > 0."
)


@app.command(help=GET_HELP)
def get(
    kind: Annotated[str, typer.Argument(
        help="Kind: plural, singular, kind, short name, plural.group, or KIND/NAME.")],
    names: Annotated[list[str] | None, typer.Argument(
        metavar="NAME", help="Object names (default: all).", show_default=False)] = None,
    output: Annotated[Output, typer.Option("--output", "-o", help="Output format.")] = Output.table,
    all_namespaces: AllNamespacesOpt = False,
    selector: SelectorOpt = None,
    field_selector: FieldSelectorOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    kind_arg, wanted = split_refs(kind, list(names or []))
    if wanted and (selector or field_selector):
        raise typer.BadParameter("names cannot be combined with --selector or --field-selector")
    if wanted and all_namespaces:
        raise typer.BadParameter("names cannot be combined with --all-namespaces")

    async def main() -> int:
        session = Session(kubeconfig, context, namespace)
        try:
            return await _get(session, kind_arg, wanted, output, all_namespaces, selector, field_selector)
        finally:
            await session.aclose()

    run(main)


async def _get(session: Session, kind_arg: str, names: list[str], output: Output, all_namespaces: bool,
               selector: str | None, field_selector: str | None) -> int:
    info = await session.discovery.resolve(kind_arg)
    ns = None if all_namespaces or not info.namespaced else session.namespace
    failed = 0
    items: list[Object] = []
    if names:
        for name in names:
            try:
                items.append(await session.client.get(info.resource, name, namespace=ns))
            except NotFound as e:
                failed += 1
                err_console.print(f"error: {status_message(e)}", markup=False)
    else:
        page = await session.client.list_all(info.resource, namespace=ns, label_selector=selector,
                                             field_selector=field_selector)
        items = page.items
        if not items and output in (Output.table, Output.wide):
            where = f" in {ns} namespace" if ns else ""
            err_console.print(f"No resources found{where}.", markup=False)
            return 0
    for obj in items:
        obj.setdefault("apiVersion", info.resource.api_version)
        obj.setdefault("kind", info.kind)
    if output is Output.name:
        for obj in items:
            print(info.ref(namespaced_name(obj)[1]))
    elif output in (Output.yaml, Output.json):
        doc: Object = items[0] if len(names) == 1 and items else {
            "apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items}
        if output is Output.json:
            print(json.dumps(doc, indent=2))
        else:
            print(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False), end="")
    elif items:
        columns = await printer_columns(session, info)
        wide = output is Output.wide
        shown = [c for c in columns if (c.priority == 0 or wide)
                 and c.json_path.strip() not in (".metadata.creationTimestamp", "{.metadata.creationTimestamp}")]
        with_ns = all_namespaces and info.namespaced
        table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold", highlight=False)
        if with_ns:
            table.add_column("NAMESPACE", no_wrap=True)
        table.add_column("NAME", no_wrap=True)
        for c in shown:
            table.add_column(c.name.upper(), no_wrap=c.type != "string",
                             justify="right" if c.type in ("integer", "number") else "left")
        table.add_column("AGE", no_wrap=True)
        for obj in items:
            nsname, name = namespaced_name(obj)
            row = [nsname] if with_ns else []
            row += [name, *(cell(obj, c) for c in shown), age((obj.get("metadata") or {}).get("creationTimestamp"))]
            table.add_row(*row)
        print_table(table)
    return 1 if failed else 0


def print_table(table: Table) -> None:
    """A terminal gets a table that fits its width; a pipe or a file gets every cell whole,
    without trailing blanks."""
    if console.is_terminal:
        console.print(table)
        return
    buf = io.StringIO()
    Console(file=buf, width=100_000, color_system=None, highlight=False).print(table)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in buf.getvalue().splitlines()))
    sys.stdout.flush()


