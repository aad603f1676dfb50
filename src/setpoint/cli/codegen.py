"""``setpoint codegen``: a typed Python module (msgspec classes) for the kinds a server serves or
CRD files declare, ready for ``client.get(Lamp, ...)`` and ``TypedController[Lamp]``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from setpoint.cli.app import app, console


@app.command()
def codegen(
    filename: Annotated[list[Path] | None, typer.Option(
        "--filename", "-f", help="CRD files (YAML, several documents each); instead of a server.")] = None,
    group: Annotated[list[str] | None, typer.Option(
        help="With a server: the API group(s) to generate, GROUP or GROUP/VERSION (repeat).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="The module to write (default: stdout).")]
    = None,
    kubeconfig: Annotated[str | None, typer.Option(help="Kubeconfig file (with a server).")] = None,
    context: Annotated[str | None, typer.Option(help="Kubeconfig context.")] = None,
) -> None:
    """Typed classes for kinds, from a running server's OpenAPI v3 (any Kubernetes-API server) or
    from CRD files: `setpoint codegen --group home.example.com -o home_kinds.py`."""
    from setpoint.codegen import CodegenError, KindSchema, from_crd, generate

    kinds: list[KindSchema] = []
    if filename:
        for path in filename:
            try:
                docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
            except (OSError, yaml.YAMLError) as e:
                raise typer.BadParameter(f"{path}: {e}", param_hint="--filename") from None
            crds = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
            if not crds:
                raise typer.BadParameter(f"{path} holds no CustomResourceDefinition", param_hint="--filename")
            for d in crds:
                kinds.extend(from_crd(d))
        source = ", ".join(p.name for p in filename)
    else:
        if not group:
            raise typer.BadParameter("name the API group(s) to generate, or give CRD files with -f",
                                     param_hint="--group")
        kinds = _from_server(kubeconfig, context, group)
        source = "the server's OpenAPI v3 (" + ", ".join(group) + ")"
    try:
        code = generate(kinds, source=source)
    except CodegenError as e:
        console.print(f"[red]error[/red]: {e}", highlight=False)
        raise typer.Exit(1) from None
    if output is None:
        print(code, end="")
    else:
        output.write_text(code)
        console.print(f"wrote {len(kinds)} kinds to {output}", highlight=False)


def _from_server(kubeconfig: str | None, context: str | None, groups: list[str]) -> list[Any]:
    import asyncio

    from setpoint.client import Client, ClientConfig, ClientError, ConfigError
    from setpoint.codegen import from_openapi

    try:
        config = ClientConfig.from_kubeconfig(kubeconfig, context)
    except (ConfigError, OSError) as e:
        raise typer.BadParameter(str(e), param_hint="--kubeconfig") from None

    async def main() -> list[Any]:
        async with Client(config) as client:
            index = await client.get_document("/openapi/v3")
            paths = [p for p in (index.get("paths") or {}) if p.startswith("apis/")]
            kinds: list[Any] = []
            for want in groups:
                chosen = [p for p in paths if p == f"apis/{want}" or p.rsplit("/", 1)[0] == f"apis/{want}"]
                if not chosen:
                    raise typer.BadParameter(f"the server serves no API group {want!r}", param_hint="--group")
                for path in chosen:
                    doc = await client.get_document(f"/openapi/v3/{path}")
                    discovery = await client.get_document(f"/{path}")
                    kinds.extend(from_openapi(doc, discovery))
            return kinds

    try:
        return asyncio.run(main())
    except ClientError as e:
        console.print(f"[red]error[/red]: {e}", highlight=False)
        raise typer.Exit(1) from None
