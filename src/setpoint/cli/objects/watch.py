"""``setpoint watch``."""


from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import sys
from typing import Annotated

import typer

from setpoint.cli.app import app
from setpoint.cli.objects.common import err_console
from setpoint.cli.objects.follow import following, informer_notes, namespaced_name, resource_version
from setpoint.cli.objects.output import split_refs
from setpoint.cli.objects.session import (
    AllNamespacesOpt,
    ContextOpt,
    FieldSelectorOpt,
    KubeconfigOpt,
    NamespaceOpt,
    SelectorOpt,
    Session,
    run,
)
from setpoint.types import Object

# ---- watch ---------------------------------------------------------------------------------------

class WatchOutput(enum.StrEnum):
    line = "line"
    json = "json"


WATCH_HELP = (
    "Stream changes as lines: ADDED, MODIFIED, DELETED.\n\n"
    "Survives disconnects: it resumes from the last revision it saw, and lists again (reporting "
    "what changed meanwhile) if that revision is compacted."
)


@app.command(help=WATCH_HELP)
def watch(
    kind: Annotated[str, typer.Argument(help="Kind (as for get), or KIND/NAME.")],
    name: Annotated[str | None, typer.Argument(metavar="NAME", help="Only this object.", show_default=False)]
    = None,
    output: Annotated[WatchOutput, typer.Option(
        "--output", "-o", help="line: 'TYPE kind/name rv=N'; json: one watch event a line.")] = WatchOutput.line,
    watch_only: Annotated[bool, typer.Option(
        "--watch-only", help="Only changes from now on, no ADDED line for each existing object.")] = False,
    timeout: Annotated[float, typer.Option(help="Stop after this many seconds (0: never).")] = 0.0,
    all_namespaces: AllNamespacesOpt = False,
    selector: SelectorOpt = None,
    field_selector: FieldSelectorOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    kind_arg, names = split_refs(kind, [name] if name else [])
    if names and field_selector:
        raise typer.BadParameter("a name cannot be combined with --field-selector")

    async def main() -> int:
        session = Session(kubeconfig, context, namespace)
        try:
            run_it = _watch(session, kind_arg, names[0] if names else None, output, watch_only, all_namespaces,
                            selector, field_selector)
            if timeout > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await run_it
                return 0
            await run_it
            return 0
        finally:
            await session.aclose()

    run(main)


async def _watch(session: Session, kind_arg: str, name: str | None, output: WatchOutput, watch_only: bool,
                 all_namespaces: bool, selector: str | None, field_selector: str | None) -> None:
    info = await session.discovery.resolve(kind_arg)
    ns = None if all_namespaces or not info.namespaced else session.namespace
    fields = f"metadata.name={name}" if name else field_selector

    def emit(kind: str, obj: Object) -> None:
        obj = {"apiVersion": info.resource.api_version, "kind": info.kind, **obj}  # the cache's stays as it is
        if output is WatchOutput.json:
            line = json.dumps({"type": kind, "object": obj}, separators=(",", ":"))
        else:
            obj_ns, obj_name = namespaced_name(obj)
            line = f"{kind} {info.ref(obj_name)} rv={resource_version(obj)}"
            if all_namespaces and obj_ns:
                line += f" namespace={obj_ns}"
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def trouble(message: str) -> None:
        err_console.print(f"note: {message}", markup=False)

    def added(obj: Object) -> None:
        # The first list's objects arrive before the informer has synced; later adds are changes.
        if not (watch_only and not informer.has_synced):
            emit("ADDED", obj)

    with informer_notes(trouble):
        async with following(session.client, info.resource, ns, label_selector=selector,
                             field_selector=fields) as informer:
            informer.add_handler(on_add=added, on_update=lambda old, new: emit("MODIFIED", new),
                                 on_delete=lambda obj: emit("DELETED", obj))
            await informer.wait_synced()
            await informer.wait_stopped()
