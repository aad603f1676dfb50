"""DELETE and DELETECOLLECTION: an object with finalizers (its own, the kind's, or the garbage
collector's for Foreground and Orphan propagation) is marked for deletion and kept until they
are gone; one without is removed at once."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from setpoint.server import bodies
from setpoint.server.admission import admit_node_write, node_of
from setpoint.server.errors import BadRequest, Conflict, NotFound
from setpoint.server.handlers.context import MAX_CONFLICT_RETRIES, Context
from setpoint.server.handlers.options import WriteOptions
from setpoint.server.handlers.response import json_response, list_body
from setpoint.server.objects import decode_stored, encode, for_storage, now, raise_invalid
from setpoint.server.paths import RequestInfo
from setpoint.server.resources import ResourceType
from setpoint.store import KeyNotFound, RevisionMismatch

_DELETE_OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "kind": (str,), "apiVersion": (str,), "gracePeriodSeconds": (int,), "propagationPolicy": (str,),
    "orphanDependents": (bool,), "dryRun": (list,), "preconditions": (dict,),
}


async def delete(ctx: Context, request: Request, info: RequestInfo, rtype: ResourceType,
                 opts: WriteOptions) -> Response:
    options = await _delete_options(ctx, request)
    dry_run = opts.dry_run or options.get("dryRun") == ["All"]
    status, out = await delete_object(ctx, rtype, info.namespace, info.name, options, dry_run,
                                      info.version, opts.user)
    return json_response(out, status)


async def delete_collection(ctx: Context, request: Request, info: RequestInfo, rtype: ResourceType,
                            opts: WriteOptions) -> Response:
    options = await _delete_options(ctx, request)
    # client-go sends a collection delete's dryRun in the body's DeleteOptions.
    dry_run = opts.dry_run or options.get("dryRun") == ["All"]
    label, field = ctx.selectors(request, rtype)
    pred = ctx.predicate(label, field)
    page = await ctx.backend.list(ctx.scope(info, rtype, field))
    deleted: list[bytes] = []
    for kv in page.items:
        obj = decode_stored(kv)
        if pred is not None and not pred(obj):
            continue
        meta = obj["metadata"]
        try:
            _, out = await delete_object(ctx, rtype, meta.get("namespace", ""), meta["name"], options,
                                         dry_run, info.version, opts.user)
        except NotFound:
            continue
        deleted.append(out)
    return json_response(list_body(rtype, info.version, page.revision, deleted))


async def delete_object(
    ctx: Context, rtype: ResourceType, namespace: str, name: str, options: dict[str, Any], dry_run: bool,
    version: str, user: Any = None,
) -> tuple[int, bytes]:
    """Delete one object, or mark it for deletion while finalizers remain: (status, body)."""
    key = rtype.key(namespace, name)
    node = node_of(user)
    if node is not None:
        admit_node_write(node, "delete", rtype, namespace, name, "", None)
    pre = options.get("preconditions") or {}
    strategy = rtype.strategy
    async with ctx.key_locks.hold(key):  # take turns with patches to the same object
        for _ in range(MAX_CONFLICT_RETRIES):
            kv = await ctx.backend.get(key)
            if kv is None:
                raise ctx.not_found(rtype, name)
            obj = decode_stored(kv)
            meta = obj["metadata"]
            _check_preconditions(rtype, name, pre, meta)
            finalizers = list(meta.get("finalizers") or [])
            policy = options.get("propagationPolicy")
            if policy in ("Foreground", "Orphan") and not meta.get("deletionTimestamp"):
                # The garbage collector finishes these deletions (see gc.py).
                gc_finalizer = "foregroundDeletion" if policy == "Foreground" else "orphan"
                if gc_finalizer not in finalizers:
                    finalizers.append(gc_finalizer)
                    meta["finalizers"] = list(finalizers)
            finalizers += strategy.deletion_finalizers(obj)
            if dry_run:
                return 200, encode(ctx.with_version(obj, rtype, version))
            try:
                if finalizers:
                    if meta.get("deletionTimestamp"):
                        return 202, encode(ctx.with_version(obj, rtype, version))
                    meta["deletionTimestamp"] = now()
                    meta["deletionGracePeriodSeconds"] = 0
                    strategy.mark_terminating(obj)
                    kv2 = await ctx.backend.update(key, for_storage(obj), kv.mod_revision)
                    meta["resourceVersion"] = str(kv2.mod_revision)
                    return 202, encode(ctx.with_version(obj, rtype, version))
                gone = await ctx.backend.delete(key, kv.mod_revision)
            except (RevisionMismatch, KeyNotFound):
                continue
            meta["resourceVersion"] = str(gone.mod_revision)
            strategy.after_write(ctx.registry, "DELETED", obj, None)
            return 200, encode(ctx.with_version(obj, rtype, version))
        raise ctx.conflict(rtype, name)


def _check_preconditions(rtype: ResourceType, name: str, pre: dict[str, Any], meta: dict[str, Any]) -> None:
    if pre.get("uid") and pre["uid"] != meta.get("uid"):
        raise Conflict(
            f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: "
            f"{meta.get('uid')}", details_name=name, details_kind=rtype.plural)
    if pre.get("resourceVersion") and str(pre["resourceVersion"]) != meta["resourceVersion"]:
        raise Conflict(
            f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, "
            f"ResourceVersion in object meta: {meta['resourceVersion']}",
            details_name=name, details_kind=rtype.plural)


async def _delete_options(ctx: Context, request: Request) -> dict[str, Any]:
    body = await ctx.read_body(request)
    options: dict[str, Any] = {}
    if body.strip():
        decoded = bodies.decode(body, bodies.media_type(request) or bodies.JSON)
        if not isinstance(decoded, dict):
            raise BadRequest("DeleteOptions must be an object")
        options = decoded
    _check_delete_options(options)
    q = request.query_params
    if "propagationPolicy" in q:
        options["propagationPolicy"] = q["propagationPolicy"]
    if "gracePeriodSeconds" in q:
        options["gracePeriodSeconds"] = q["gracePeriodSeconds"]
    policy = options.get("propagationPolicy")
    if policy not in (None, "Orphan", "Background", "Foreground"):
        raise_invalid("DeleteOptions", "", "", [(
            "FieldValueNotSupported",
            f'Unsupported value: "{policy}": supported values: "Foreground", "Background", "Orphan"',
            "propagationPolicy")])
    return options


def _check_delete_options(options: dict[str, Any]) -> None:
    """DeleteOptions of the wrong shape are a 400, as kube-apiserver's decoder makes them: a
    ``dryRun`` given as a string, above all, must not be taken for "no dry run" and delete."""
    for name, types in _DELETE_OPTION_TYPES.items():
        value = options.get(name)
        if value is None:
            continue
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise BadRequest(f"DeleteOptions.{name}: wrong type {type(value).__name__}; "
                             f"expected {'/'.join(t.__name__ for t in types)}")
    dry_run = options.get("dryRun")
    if dry_run is not None:
        for v in dry_run:
            if v != "All":
                raise BadRequest(f'Invalid dryRun value "{v}": the only supported value is "All"')
    pre = options.get("preconditions")
    if pre is not None:
        for name in ("uid", "resourceVersion"):
            if pre.get(name) is not None and not isinstance(pre[name], str):
                raise BadRequest(f"DeleteOptions.preconditions.{name}: must be a string")
