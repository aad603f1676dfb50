"""CREATE: server-set metadata, the kind's defaults, validation, then a store create that fails
when the key exists. With an ``Idempotency-Key`` a retried request gets the first answer."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from setpoint.server import idempotency
from setpoint.server.admission import admit_node_write, node_of
from setpoint.server.errors import AlreadyExists, APIError, Invalid
from setpoint.server.handlers.context import Context
from setpoint.server.handlers.options import WriteOptions
from setpoint.server.handlers.response import json_response
from setpoint.server.handlers.track import track
from setpoint.server.objects import SYSTEM_FIELDS, decode_stored, encode, generate_name, new_uid, now
from setpoint.server.paths import RequestInfo
from setpoint.server.resources import ResourceType
from setpoint.store import KeyExists


async def create(ctx: Context, request: Request, info: RequestInfo, rtype: ResourceType,
                 opts: WriteOptions) -> Response:
    body, obj = await ctx.read_object(request)
    key_header = request.headers.get("idempotency-key")
    if not key_header:
        status, out = await create_object(ctx, obj, info, rtype, opts, None)
        return json_response(out, status)
    user = request.scope.get("setpoint.user", "")
    record_key = idempotency.digest(str(user), request.scope["path"], key_header)
    replay = ctx.idem.begin(record_key, idempotency.digest(body))
    if replay is not None:
        return json_response(replay[1], replay[0])
    try:
        status, out = await create_object(ctx, obj, info, rtype, opts, (record_key, idempotency.digest(body)))
    except APIError as e:
        ctx.idem.finish(record_key, e.code, encode(e.status()))
        raise
    except BaseException:
        ctx.idem.abandon(record_key)
        raise
    ctx.idem.finish(record_key, status, out)
    return json_response(out, status)


def _stamp(idem: tuple[str, str]) -> str:
    return f"{idem[0][:32]}.{idem[1][:32]}"


async def create_object(ctx: Context, obj: dict[str, Any], info: RequestInfo, rtype: ResourceType,
                        opts: WriteOptions, idem: tuple[str, str] | None) -> tuple[int, bytes]:
    """Create ``obj`` (also the create half of an update or apply that may create)."""
    ctx.check_type_meta(obj, rtype, info.version)
    ctx.check_namespace(obj, rtype, info.namespace)
    meta = obj["metadata"]
    for f in SYSTEM_FIELDS:
        meta.pop(f, None)
    if idem is not None:
        meta.setdefault("annotations", {})
        if isinstance(meta["annotations"], dict):
            meta["annotations"][idempotency.ANNOTATION] = _stamp(idem)
    if not meta.get("name"):
        prefix = meta.get("generateName")
        if isinstance(prefix, str) and prefix:
            # With an Idempotency-Key the generated name is derived from it, so a retry that
            # lost its record meets the first object instead of creating a second one.
            meta["name"] = (prefix + idem[0][:5]) if idem else generate_name(prefix)
    meta["uid"] = new_uid()
    meta["creationTimestamp"] = now()
    meta["generation"] = 1
    strategy = rtype.strategy
    if rtype.status_subresource and not strategy.keeps_status_on_create:
        obj.pop("status", None)
    strategy.prepare_create(obj)
    obj, derived = ctx.validate(rtype, info.version, obj, opts)
    if opts.field_manager and not opts.apply:
        track(rtype, info, opts, None, obj)
    name = obj["metadata"]["name"]
    node = node_of(opts.user)
    if node is not None:
        admit_node_write(node, "create", rtype, info.namespace, name, "", None)
    if rtype.namespaced:
        await ctx.require_namespace(info.namespace)
    obj["apiVersion"] = rtype.api_version()
    if opts.dry_run:
        return 201, encode(ctx.with_version(obj, rtype, info.version))
    key = rtype.key(info.namespace, name)
    try:
        kv = await ctx.backend.create(key, ctx.stored(obj))
    except KeyExists:
        if idem is not None:
            existing = await ctx.backend.get(key)
            if existing is not None:
                prior = decode_stored(existing)
                stamp = (prior["metadata"].get("annotations") or {}).get(idempotency.ANNOTATION, "")
                if stamp == _stamp(idem):
                    return 201, encode(ctx.with_version(prior, rtype, info.version))
                if stamp.startswith(idem[0][:32] + "."):
                    raise Invalid(
                        "Idempotency-Key was already used with a different request body",
                        causes=[("FieldValueInvalid", "reused with a different body", "Idempotency-Key")],
                    ) from None
        raise AlreadyExists(f'{rtype.group_resource} "{name}" already exists', details_name=name,
                            details_kind=rtype.plural, details_group=rtype.group or None) from None
    obj["metadata"]["resourceVersion"] = str(kv.mod_revision)
    strategy.after_write(ctx.registry, "ADDED", obj, derived)
    return 201, encode(ctx.with_version(obj, rtype, info.version))
