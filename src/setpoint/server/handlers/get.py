"""GET of one object: from the watch cache for ``resourceVersion=0``, else a consistent read."""

from __future__ import annotations

import copy
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from setpoint.server import tables
from setpoint.server.errors import Expired, Timeout
from setpoint.server.handlers.context import Context
from setpoint.server.handlers.response import json_response
from setpoint.server.negotiation import table_version
from setpoint.server.objects import decode_stored
from setpoint.server.paths import RequestInfo
from setpoint.server.resources import ResourceType
from setpoint.store import Compacted, FutureRevision


async def get(ctx: Context, request: Request, info: RequestInfo, rtype: ResourceType) -> Response:
    key = rtype.key(info.namespace, info.name)
    rv = request.query_params.get("resourceVersion")
    tv = table_version(request.headers.get("accept"))
    if tv is not None:
        return await _get_table(ctx, request, info, rtype, key, rv, tv)
    if rv == "0":
        cached = ctx.cache.get(key)
        if cached is None:
            raise ctx.not_found(rtype, info.name)
        if info.version == rtype.storage_version:
            return json_response(cached.raw)
        return json_response(ctx.with_version(copy.deepcopy(cached.obj), rtype, info.version))
    return json_response(await read(ctx, rtype, info, key, rv))


async def read(ctx: Context, rtype: ResourceType, info: RequestInfo, key: str, rv: str | None) -> dict[str, Any]:
    """The object at ``rv`` (the latest when not given) from the store, in the request's version."""
    revision = ctx.parse_rv(rv) or 0
    try:
        kv = await ctx.backend.get(key, revision)
    except Compacted as e:
        raise Expired(f"too old resource version: {revision} ({e.compacted + 1})") from None
    except FutureRevision as e:
        raise Timeout(f"Too large resource version: {revision}, current: {e.current}") from None
    if kv is None:
        raise ctx.not_found(rtype, info.name)
    return ctx.with_version(decode_stored(kv), rtype, info.version)


async def _get_table(ctx: Context, request: Request, info: RequestInfo, rtype: ResourceType, key: str,
                     rv: str | None, tv: str) -> Response:
    include = tables.include_object(request.query_params.get("includeObject"))
    if rv == "0" and (cached := ctx.cache.get(key)) is not None:
        obj = ctx.with_version(copy.deepcopy(cached.obj), rtype, info.version)
    else:
        obj = await read(ctx, rtype, info, key, rv)
    spec = tables.table_spec(rtype, info.version)
    return json_response(tables.table(spec, [(obj, None)], table_version=tv, include=include,
                                      resource_version=obj["metadata"].get("resourceVersion", "")))
