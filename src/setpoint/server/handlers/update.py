"""UPDATE and PATCH (merge, JSON, strategic for built-in kinds, and server-side apply): each is
a function from the stored object to the new one, applied in one read-modify-write loop that
starts from the watch cache and writes with the revision it read."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from setpoint.server import bodies, managedfields
from setpoint.server.admission import admit_node_write, node_of
from setpoint.server.errors import APIError, BadRequest, UnsupportedMediaType
from setpoint.server.handlers.context import MAX_CONFLICT_RETRIES, Context
from setpoint.server.handlers.create import create_object
from setpoint.server.handlers.options import WriteOptions
from setpoint.server.handlers.response import json_response
from setpoint.server.handlers.track import track
from setpoint.server.objects import decode_stored, encode, ensure_object_shape, raise_invalid, spec_changed
from setpoint.server.patch import json_patch, merge_patch
from setpoint.server.paths import RequestInfo
from setpoint.server.resources import ResourceType
from setpoint.store import KeyNotFound, RevisionMismatch

Mutate = Callable[[dict[str, Any]], dict[str, Any]]


async def update(ctx: Context, request: Request, info: RequestInfo, rtype: ResourceType,
                 opts: WriteOptions) -> Response:
    _, new = await ctx.read_object(request)
    ctx.check_type_meta(new, rtype, info.version)
    body_name = new["metadata"].get("name")
    if body_name != info.name:
        raise BadRequest(f"the name of the object ({body_name}) does not match the name on the URL ({info.name})")
    ctx.check_namespace(new, rtype, info.namespace)
    expected = ctx.parse_rv(new["metadata"].get("resourceVersion"), "metadata.resourceVersion")
    if expected is None and not rtype.allow_unconditional_update:
        raise_invalid(rtype.kind, rtype.group, info.name, [
            ("FieldValueInvalid", "Invalid value: 0x0: must be specified for an update",
             "metadata.resourceVersion")])
    status, out = await update_object(ctx, info, rtype, lambda old: copy.deepcopy(new), expected, opts,
                                      create_body=new if rtype.allow_create_on_update else None)
    return json_response(out, status)


async def patch(ctx: Context, request: Request, info: RequestInfo, rtype: ResourceType,
                opts: WriteOptions) -> Response:
    ctype = bodies.media_type(request)
    if ctype == bodies.APPLY_PATCH:
        return await server_side_apply(ctx, request, info, rtype, opts)
    accepted: tuple[str, ...] = (bodies.MERGE_PATCH, bodies.JSON_PATCH, bodies.APPLY_PATCH)
    if rtype.builtin:
        # Built-in kinds advertise strategic merge patch to kubectl; for their plain maps it
        # is the same as a JSON merge patch (see docs/api.md).
        accepted = (*accepted, bodies.STRATEGIC_MERGE_PATCH)
    if ctype not in accepted:
        raise UnsupportedMediaType(
            "the body of the request was in an unknown format - accepted media types include: "
            + ", ".join(accepted))
    body = await ctx.read_body(request)
    patch_doc = bodies.decode(body, bodies.JSON, (bodies.JSON,))
    apply: Callable[[Any, Any], Any] = json_patch if ctype == bodies.JSON_PATCH else merge_patch

    def mutate(old: dict[str, Any]) -> dict[str, Any]:
        return ensure_object_shape(apply(old, patch_doc))

    status, out = await update_object(ctx, info, rtype, mutate, None, opts)
    return json_response(out, status)


async def server_side_apply(ctx: Context, request: Request, info: RequestInfo, rtype: ResourceType,
                            opts: WriteOptions) -> Response:
    """PATCH with application/apply-patch+yaml: the request body is the manager's whole
    intent for the fields it manages (see managedfields.py)."""
    body = await ctx.read_body(request)
    config = ensure_object_shape(bodies.decode(body, bodies.APPLY_PATCH, (bodies.APPLY_PATCH,)))
    manager = opts.field_manager
    if not manager:
        raise_invalid("PatchOptions", "meta.k8s.io", "", [(
            "FieldValueRequired", "Required value: is required for apply patch", "fieldManager")])
    force = request.query_params.get("force", "").lower() in ("1", "true")
    ctx.check_type_meta(config, rtype, info.version)
    name = config["metadata"].get("name")
    if name is not None and name != info.name:
        raise BadRequest(f"the name of the object ({name}) does not match the name on the URL ({info.name})")
    config["metadata"]["name"] = info.name
    if rtype.namespaced:
        ctx.check_namespace(config, rtype, info.namespace)
    opts.apply = True
    schema = rtype.schemas.get(info.version) or rtype.schemas.get(rtype.storage_version)
    api_version = rtype.api_version(info.version)

    def mutate(old: dict[str, Any]) -> dict[str, Any]:
        # A copy per attempt: the result may share parts of ``config``, which validation
        # then shapes in place, and a conflict retry must start from the request as sent.
        return managedfields.apply(old, copy.deepcopy(config), manager, api_version, schema,
                                   info.subresource, rtype.status_subresource, force)

    create = None if info.subresource else managedfields.apply(
        None, config, manager, api_version, schema, "", rtype.status_subresource, force)
    status, out = await update_object(ctx, info, rtype, mutate, None, opts, create_body=create)
    return json_response(out, status)


async def update_object(
    ctx: Context, info: RequestInfo, rtype: ResourceType, mutate: Mutate, expected: int | None,
    opts: WriteOptions, create_body: dict[str, Any] | None = None,
) -> tuple[int, bytes]:
    """Apply ``mutate`` to the stored object until the write lands (or ``expected``, the
    client's precondition, fails); create ``create_body`` when there is no object and it is given."""
    if expected is not None:  # a conflict is the client's answer: nothing to retry, no turn to wait
        return await _update_object(ctx, info, rtype, mutate, expected, opts, create_body)
    async with ctx.key_locks.hold(rtype.key(info.namespace, info.name)):
        return await _update_object(ctx, info, rtype, mutate, expected, opts, create_body)


async def _update_object(
    ctx: Context, info: RequestInfo, rtype: ResourceType, mutate: Mutate, expected: int | None,
    opts: WriteOptions, create_body: dict[str, Any] | None,
) -> tuple[int, bytes]:
    key = rtype.key(info.namespace, info.name)
    # The first attempt starts from the watch cache, as kube-apiserver's GuaranteedUpdate
    # does: the write carries the revision it started from, so the store refuses it if that
    # was stale. Anything decided without writing (not found, a conflict, a refusal, a
    # no-op, a dry run) is decided again from the store, never from the cache alone.
    from_cache = True
    old: dict[str, Any] | None
    for _ in range(MAX_CONFLICT_RETRIES):
        if from_cache:
            from_cache = False
            cached = ctx.cache.get(key)
            if cached is None:
                continue
            old, rev, trial = cached.obj, cached.revision, True
        else:
            kv = await ctx.backend.get(key)
            old, rev, trial = (decode_stored(kv), kv.mod_revision, False) if kv else (None, 0, False)
        try:
            new, derived = _updated(ctx, info, rtype, opts, mutate, expected, old, rev, create_body is not None)
        except APIError:
            if trial:
                continue
            raise
        if new is None or old is None or new == old or opts.dry_run:
            if trial:
                continue
            if old is None:  # create_body is set: the object is created
                assert create_body is not None
                create_info = info._replace(verb="create", name="", subresource="")
                return await create_object(ctx, copy.deepcopy(create_body), create_info, rtype, opts, None)
            assert new is not None
            return 200, encode(ctx.with_version(old if new == old else new, rtype, info.version))
        meta = new["metadata"]
        try:
            if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                gone = await ctx.backend.delete(key, rev)
                rtype.strategy.after_write(ctx.registry, "DELETED", new, None)
                meta["resourceVersion"] = str(gone.mod_revision)
                return 200, encode(ctx.with_version(new, rtype, info.version))
            kv2 = await ctx.backend.update(key, ctx.stored(new), rev)
        except RevisionMismatch:
            if expected is not None:
                raise ctx.conflict(rtype, info.name) from None
            continue
        except KeyNotFound:
            continue
        meta["resourceVersion"] = str(kv2.mod_revision)
        rtype.strategy.after_write(ctx.registry, "MODIFIED", new, derived)
        return 200, encode(ctx.with_version(new, rtype, info.version))
    raise ctx.conflict(rtype, info.name)


def _updated(
    ctx: Context, info: RequestInfo, rtype: ResourceType, opts: WriteOptions, mutate: Mutate,
    expected: int | None, old: dict[str, Any] | None, rev: int, may_create: bool,
) -> tuple[dict[str, Any] | None, Any]:
    """The object ``mutate`` makes of ``old`` (at revision ``rev``), checked and prepared for
    writing, with what the kind's validation derived; None when there is no object and the
    request may create it."""
    if old is None:
        if may_create:
            return None, None
        raise ctx.not_found(rtype, info.name)
    if expected is not None and expected != rev:
        raise ctx.conflict(rtype, info.name)
    new = mutate(copy.deepcopy(old))
    node = node_of(opts.user)
    if node is not None:
        admit_node_write(node, info.verb, rtype, info.namespace, info.name, info.subresource, old, new)
    new_rv = new["metadata"].get("resourceVersion")
    if new_rv not in (None, "") and str(new_rv) != str(rev):
        raise ctx.conflict(rtype, info.name)
    ctx.check_type_meta(new, rtype, info.version)
    if new["metadata"].get("name") != info.name:
        raise BadRequest("metadata.name is immutable")
    ctx.check_namespace(new, rtype, info.namespace)
    new, derived = _prepare_update(ctx, rtype, info, opts, old, new)
    new["apiVersion"] = rtype.api_version()
    new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
    if new != old:
        track(rtype, info, opts, old, new)
    return new, derived


_KEPT_META = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation")


def _prepare_update(ctx: Context, rtype: ResourceType, info: RequestInfo, opts: WriteOptions,
                    old: dict[str, Any], new: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    old_meta = old["metadata"]
    if rtype.builtin:
        # Built-in kinds' spec and status are structs: anything else is a decoding error.
        for part in ("spec", "status"):
            if new.get(part) is not None and not isinstance(new[part], dict):
                raise BadRequest(f"{part}: must be an object, not {type(new[part]).__name__}")
    if info.subresource == "status":
        result = copy.deepcopy(old)
        if "status" in new:
            result["status"] = new["status"]
        else:
            result.pop("status", None)
        if opts.apply:
            managed = new["metadata"].get("managedFields")
            if managed:
                result["metadata"]["managedFields"] = managed
    else:
        result = new
        if rtype.status_subresource:
            if "status" in old:
                result["status"] = copy.deepcopy(old["status"])
            else:
                result.pop("status", None)
    meta = result["metadata"]
    for f in _KEPT_META:
        if f in old_meta:
            meta[f] = old_meta[f]
        else:
            meta.pop(f, None)
    if old_meta.get("deletionTimestamp"):
        added = set(meta.get("finalizers") or ()) - set(old_meta.get("finalizers") or ())
        if added:
            raise_invalid(rtype.kind, rtype.group, info.name, [(
                "FieldValueForbidden",
                "Forbidden: no new finalizers can be added if the object is being deleted, "
                f"found new finalizers {sorted(added)!r}", "metadata.finalizers")])
    rtype.strategy.prepare_update(old, result)
    result, derived = ctx.validate(rtype, info.version, result, opts)
    if spec_changed(old, result):
        result["metadata"]["generation"] = int(old_meta.get("generation", 1)) + 1
    return result, derived
