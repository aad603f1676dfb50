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


def _yaml_lines(obj: object) -> list[str]:
    return yaml.safe_dump(obj, sort_keys=True, default_flow_style=False).splitlines()


def _shown(obj: dict) -> dict:  # type: ignore[type-arg]
    """An object as plan compares it: without what the server maintains."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items()
            if k not in ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields")}
    return {**{k: v for k, v in obj.items() if k != "status"}, "metadata": meta}


@app.command()
def plan(
    filename: Annotated[Path, typer.Option("--filename", "-f", help="A file holding one Stack.")],
    namespace: Annotated[str, typer.Option("--namespace", "-n", help="The Stack's namespace.")] = "default",
    kubeconfig: Annotated[str | None, typer.Option(help="Kubeconfig file.")] = None,
) -> None:
    """What applying a Stack would create, change or delete, each change as a diff, checked by the
    server (dry run) and changing nothing. Values that depend on resources not converged yet are
    shown as "(known after apply)"."""
    import asyncio
    import difflib

    from setpoint.client import APIStatusError, Client, ClientConfig, NotFound
    from setpoint.controllers.resources import STACKS
    from setpoint.controllers.stack import StackController
    from setpoint.stackgraph import StackError, build, fill

    docs = [d for d in yaml.safe_load_all(filename.read_text()) if isinstance(d, dict) and d.get("kind") == "Stack"]
    if len(docs) != 1:
        console.print(f"[red]{filename} must hold exactly one Stack[/red]", highlight=False)
        raise typer.Exit(2)
    stack = docs[0]
    name = str((stack.get("metadata") or {}).get("name", ""))
    try:
        graph = build(stack.get("spec") or {})
    except StackError as e:
        console.print(f"[red]Stack {name}[/red]: {e}", highlight=False)
        raise typer.Exit(1) from None
    counts = {"create": 0, "change": 0, "delete": 0}

    async def main() -> None:
        async with Client(ClientConfig.from_kubeconfig(kubeconfig)) as client:
            try:
                live_stack = await client.get(STACKS, name, namespace=namespace)
            except NotFound:
                live_stack = {"metadata": {"name": name, "uid": "(known after apply)"}}
            ctl = StackController(client)
            spec = stack["spec"]
            # What each resource will be, as its dependents are planned: unchanged and converged,
            # itself; created or changed, what the dry run made of it without its status (its
            # spec is known, what its controller will report is known after apply).
            objs: dict[str, dict] = {}  # type: ignore[type-arg]
            for rname in graph.order():
                r = next(x for x in spec["resources"] if x["name"] == rname)
                t = r["template"]
                res = await ctl._resource(str(t.get("apiVersion", "")), str(t.get("kind", "")))
                obj_name = str((t.get("metadata") or {}).get("name", ""))
                live = await ctl._get(res, obj_name, namespace)
                ref = f"{res.kind} {obj_name} ({rname})"
                try:
                    body = StackController._owned(fill(t, spec.get("parameters") or {}, objs), live_stack, rname,
                                                  namespace, res)
                except KeyError as e:
                    counts["create" if live is None else "change"] += 1
                    console.print(f"~ {ref}: {'create' if live is None else 'change'}, values known after apply "
                                  f"({e.args[0]})", highlight=False)
                    continue
                ns = namespace if res.namespaced else None
                try:
                    if live is None:
                        after = await client.create(res, body, namespace=ns, dry_run=True)
                        counts["create"] += 1
                        console.print(f"+ {ref}: create", highlight=False)
                        print("\n".join("  + " + line for line in _yaml_lines(_shown(after))))
                        objs[rname] = {k: v for k, v in after.items() if k != "status"}
                        continue
                    after = await client.patch(res, obj_name, body, namespace=ns, dry_run=True)
                except APIStatusError as e:
                    console.print(f"[red]! {ref}: the server refuses it[/red]: {e.message}", highlight=False)
                    continue
                diff = list(difflib.unified_diff(_yaml_lines(_shown(live)), _yaml_lines(_shown(after)),
                                                 lineterm="", n=1))[2:]
                if diff:
                    counts["change"] += 1
                    console.print(f"~ {ref}: change", highlight=False)
                    print("\n".join("  " + line for line in diff))
                    objs[rname] = {k: v for k, v in after.items() if k != "status"}
                elif ctl.converged(res, live):
                    objs[rname] = live
            for entry in (live_stack.get("status") or {}).get("resources") or []:
                if entry.get("name") not in graph.deps:
                    counts["delete"] += 1
                    console.print(f"- {entry.get('kind')} {entry.get('objectName')} ({entry.get('name')}): delete",
                                  highlight=False)

    asyncio.run(main())
    console.print(f"Plan: {counts['create']} to create, {counts['change']} to change, {counts['delete']} to delete.",
                  highlight=False)


@app.command()
def destroy(
    filename: Annotated[Path, typer.Option("--filename", "-f", help="A file holding the Stack(s) to destroy.")],
    namespace: Annotated[str | None, typer.Option("--namespace", "-n", help="The Stacks' namespace.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait (0: no limit).")] = 600.0,
    kubeconfig: Annotated[str | None, typer.Option(help="Kubeconfig file.")] = None,
) -> None:
    """Delete the Stacks in a file and everything they made, dependents first, showing each
    resource until it is gone (the other objects in the file are left alone)."""
    from setpoint.cli.objects.delete import Cascade, delete_objects
    from setpoint.cli.objects.manifests import read_manifests
    from setpoint.cli.objects.session import Session, run

    manifests = [m for m in read_manifests([str(filename)]) if m.kind == "Stack"]
    if not manifests:
        console.print(f"[red]{filename} holds no Stack[/red]", highlight=False)
        raise typer.Exit(2)

    async def main() -> int:
        session = Session(kubeconfig, None, namespace)
        try:
            return await delete_objects(session, None, [], None, manifests, True, timeout, Cascade.background, False)
        finally:
            await session.aclose()

    run(main)
