"""``setpoint delete``."""


from __future__ import annotations

import enum
from typing import Annotated, Literal

import typer

from setpoint.cli.app import app
from setpoint.cli.objects.common import CLIError, err_console
from setpoint.cli.objects.discovery import KindInfo
from setpoint.cli.objects.follow import namespaced_name
from setpoint.cli.objects.manifests import Manifest, apply_order, read_manifests
from setpoint.cli.objects.output import split_refs
from setpoint.cli.objects.session import (
    ContextOpt,
    FilesOpt,
    KubeconfigOpt,
    NamespaceOpt,
    SelectorOpt,
    Session,
    describe_error,
    run,
    status_message,
)
from setpoint.cli.objects.wait import Target, wait_for
from setpoint.client import (
    ClientError,
    ConnectionFailed,
    NotFound,
)

# ---- delete --------------------------------------------------------------------------------------

class Cascade(enum.StrEnum):
    background = "background"
    foreground = "foreground"
    orphan = "orphan"


DELETE_HELP = (
    "Delete objects, waiting until they are gone.\n\n"
    "Objects are named by kind and name, by a label selector, or by files (deleted in reverse "
    "apply order: objects, then Namespaces, then CRDs). --wait (the default) waits until their "
    "finalizers are done."
)


@app.command(help=DELETE_HELP)
def delete(
    kind: Annotated[str | None, typer.Argument(
        help="Kind (as for get), or KIND/NAME.", show_default=False)] = None,
    names: Annotated[list[str] | None, typer.Argument(
        metavar="NAME", help="Object names.", show_default=False)] = None,
    filename: FilesOpt = None,
    selector: SelectorOpt = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait",
                                       help="Wait until the objects are gone (their finalizers done).")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits (0: no limit).")] = 300.0,
    cascade: Annotated[Cascade, typer.Option(help="What happens to dependents.")] = Cascade.background,
    ignore_not_found: Annotated[bool, typer.Option("--ignore-not-found",
                                                   help="An object that does not exist is not an error.")] = False,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    refs: list[str] = []
    if filename:
        if kind or names or selector:
            raise typer.BadParameter("give either -f FILE or KIND NAME..., not both")
    else:
        if not kind:
            raise typer.BadParameter("give KIND NAME..., KIND -l SELECTOR, KIND/NAME or -f FILE")
        kind, refs = split_refs(kind, list(names or []))
        if not refs and not selector:
            raise typer.BadParameter("give the names of the objects to delete, or --selector")
        if refs and selector:
            raise typer.BadParameter("names cannot be combined with --selector")

    async def main() -> int:
        manifests = list(reversed(apply_order(read_manifests(filename)))) if filename else []
        session = Session(kubeconfig, context, namespace)
        try:
            return await delete_objects(session, kind, refs, selector, manifests, wait, timeout, cascade,
                                        ignore_not_found)
        finally:
            await session.aclose()

    run(main)


async def delete_objects(session: Session, kind: str | None, names: list[str], selector: str | None,
                         manifests: list[Manifest], wait: bool, timeout: float, cascade: Cascade,
                         ignore_not_found: bool) -> int:
    todo: list[tuple[KindInfo | None, str | None, str, str]] = []  # kind, namespace, name, label for errors
    failed = 0
    if manifests:
        for m in manifests:
            try:
                info = await session.discovery.for_kind(m.api_version, m.kind)
            except CLIError as e:
                if ignore_not_found:
                    continue
                failed += 1
                err_console.print(f"error: {m.ref}: {e.message}", markup=False)
                continue
            todo.append((info, (m.namespace or session.namespace) if info.namespaced else None, m.name, m.ref))
    else:
        assert kind is not None
        info = await session.discovery.resolve(kind)
        ns = session.namespace if info.namespaced else None
        if selector:
            page = await session.client.list_all(info.resource, namespace=ns, label_selector=selector)
            names = [namespaced_name(o)[1] for o in page.items]
            if not names:
                err_console.print("No resources found.", markup=False)
        todo.extend((info, ns, n, info.ref(n)) for n in names)
    policies: dict[Cascade, Literal["Background", "Foreground", "Orphan"]] = {
        Cascade.background: "Background", Cascade.foreground: "Foreground", Cascade.orphan: "Orphan"}
    policy = policies[cascade]
    pending: list[Target] = []
    for info_, ns_, name, label in todo:
        assert info_ is not None
        try:
            out = await session.client.delete(info_.resource, name, namespace=ns_, propagation_policy=policy)
        except NotFound as e:
            if not ignore_not_found:
                failed += 1
                err_console.print(f"error: {label}: {status_message(e)}", markup=False)
            continue
        except ClientError as e:
            failed += 1
            err_console.print(f"error: {label}: {describe_error(e)}", markup=False)
            if isinstance(e, ConnectionFailed):
                break
            continue
        still_there = out.get("kind") != "Status" and bool((out.get("metadata") or {}).get("deletionTimestamp"))
        if wait and still_there:
            pending.append(Target(info_, ns_, name, "gone", obj=out))
        elif still_there:
            fins = ", ".join(map(str, (out.get("metadata") or {}).get("finalizers") or []))
            print(f"{info_.ref(name)} deleted (waiting for finalizers: {fins})", flush=True)
        else:
            print(f"{info_.ref(name)} deleted", flush=True)
    if pending:
        left = await wait_for(session.client, pending, timeout, f"waiting for {len(pending)} object(s) to be deleted")
        for t in pending:
            if t not in left:
                print(f"{t.ref} deleted", flush=True)
        if left:
            err_console.print(f"error: timed out after {timeout:g}s; still there:", markup=False)
            for t in left:
                err_console.print(f"  {t.label}: {t.state()}", markup=False)
            failed += len(left)
    return 1 if failed else 0


