"""``setpoint apply``."""


from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from setpoint.backoff import Backoff
from setpoint.cli.app import app
from setpoint.cli.objects.common import CRD_SERVED_DEADLINE, CLIError, err_console, usage_error
from setpoint.cli.objects.discovery import KindInfo
from setpoint.cli.objects.follow import resource_version
from setpoint.cli.objects.manifests import Manifest, applied_fields, apply_order, read_manifests
from setpoint.cli.objects.session import ContextOpt, FilesOpt, KubeconfigOpt, NamespaceOpt, Session, describe_error, run
from setpoint.cli.objects.wait import Target, wait_for
from setpoint.client import (
    AlreadyExists,
    ClientError,
    ConnectionFailed,
    FieldValidation,
    NotFound,
)
from setpoint.server.patch import merge_patch  # what the server will compute: one implementation

# ---- apply ---------------------------------------------------------------------------------------

APPLY_HELP = (
    "Create or update the objects in files, optionally waiting until they are ready.\n\n"
    "CRDs are applied first, then Namespaces, then the rest. An existing object is updated with a "
    "merge patch of the fields in the file; each object is reported as created, configured or "
    "unchanged. With --wait, waits until every object is converged (observedGeneration == "
    "generation and Ready=True; CRDs: Established; kinds without an agent: until they exist). "
    "A field the kind's schema does not know is an error (--validate=strict, as kubectl's default); "
    "--validate=warn applies the object without it and prints a warning, --validate=ignore drops it silently."
)

# kubectl's --validate values; true/false are its older spellings of strict/ignore.
VALIDATE_MODES: dict[str, FieldValidation] = {
    "strict": "Strict", "true": "Strict", "warn": "Warn", "ignore": "Ignore", "false": "Ignore"}


@app.command(help=APPLY_HELP)
def apply(
    filename: FilesOpt = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until every applied object is converged.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits (0: no limit).")] = 300.0,
    validate: Annotated[str, typer.Option(
        "--validate", help="Fields the schema does not know: strict (an error), warn or ignore.")] = "strict",
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    if not filename:
        raise typer.BadParameter("give at least one -f FILE|DIR|-", param_hint="-f")
    field_validation = VALIDATE_MODES.get(validate.lower())
    if field_validation is None:
        raise typer.BadParameter(f"{validate!r}: must be strict, warn or ignore", param_hint="--validate")

    async def main() -> int:
        manifests = read_manifests(filename)
        if not manifests:
            raise usage_error(f"no objects in {', '.join(filename)}")
        session = Session(kubeconfig, context, namespace)
        try:
            return await _apply(session, apply_order(manifests), wait, timeout, field_validation)
        finally:
            await session.aclose()

    run(main)


async def _apply(session: Session, manifests: list[Manifest], wait: bool, timeout: float,
                 field_validation: FieldValidation) -> int:
    failed = 0
    targets: list[Target] = []
    for m in manifests:
        try:
            info, ns, result = await _apply_one(session, m, field_validation)
        except (ClientError, CLIError) as e:
            failed += 1
            text = e.message if isinstance(e, CLIError) else describe_error(e)
            where = f" -n {m.namespace or session.namespace}" if m.namespace else ""
            err_console.print(f"error: {m.ref}{where} ({m.source}): {text}", markup=False)
            if isinstance(e, ConnectionFailed):
                left = len(manifests) - manifests.index(m) - 1
                if left:
                    err_console.print(f"error: {left} more object(s) not applied: the server is unreachable",
                                      markup=False)
                break
            continue
        print(f"{info.ref(m.name)} {result}", flush=True)
        if m.is_crd:
            await _wait_served(session, m)
        targets.append(Target(info, ns, m.name, info.contract))
    if wait and targets:
        pending = await wait_for(session.client, targets, timeout,
                                 f"waiting for {len(targets)} object(s) to be ready")
        if pending:
            errors = [t for t in pending if t.error]
            slow = [t for t in pending if not t.error]
            if slow:
                err_console.print(f"error: timed out after {timeout:g}s; not ready:", markup=False)
            for t in slow + errors:
                err_console.print(f"  {t.label}: {t.state()}", markup=False)
            return 1
    return 1 if failed else 0


async def _apply_one(session: Session, m: Manifest,
                     field_validation: FieldValidation) -> tuple[KindInfo, str | None, str]:
    info = await session.discovery.for_kind(m.api_version, m.kind)
    ns: str | None = None
    if info.namespaced:
        if m.namespace and session.explicit_namespace and m.namespace != session.explicit_namespace:
            raise CLIError(f"the object's namespace {m.namespace!r} does not match "
                           f"--namespace {session.explicit_namespace!r}")
        ns = m.namespace or session.namespace
    body = applied_fields(m.obj)
    if info.namespaced:
        body["metadata"]["namespace"] = ns
    else:
        body["metadata"].pop("namespace", None)
    client = session.client
    for _ in range(3):
        try:
            live = await client.get(info.resource, m.name, namespace=ns)
        except NotFound:
            try:
                await client.create(info.resource, body, namespace=ns, field_validation=field_validation)
            except AlreadyExists:
                continue  # created meanwhile: patch it instead
            return info, ns, "created"
        if merge_patch(live, body) == live:
            return info, ns, "unchanged"
        out = await client.patch(info.resource, m.name, body, namespace=ns, patch_type="merge",
                                 field_validation=field_validation)
        return info, ns, "unchanged" if resource_version(out) == resource_version(live) else "configured"
    raise CLIError("the object was created and deleted repeatedly while applying; try again")


async def _wait_served(session: Session, m: Manifest) -> None:
    """Until discovery lists the new CRD's kind in each served version (with a deadline)."""
    spec = m.obj.get("spec") or {}
    group = spec.get("group")
    kind = (spec.get("names") or {}).get("kind")
    versions = [v.get("name") for v in spec.get("versions") or [] if isinstance(v, dict) and v.get("served", True)]
    if not isinstance(group, str) or not isinstance(kind, str):
        return
    deadline = asyncio.get_running_loop().time() + CRD_SERVED_DEADLINE
    backoff = Backoff(initial=0.02, cap=1.0, jitter=0.0)
    for version in versions:
        while not await session.discovery.served(f"{group}/{version}", kind):
            if asyncio.get_running_loop().time() > deadline:
                err_console.print(f"warning: {kind} in {group}/{version} is not served after "
                                  f"{CRD_SERVED_DEADLINE:g}s", markup=False)
                return
            await asyncio.sleep(backoff.next())  # discovery cannot be watched: back off between looks


