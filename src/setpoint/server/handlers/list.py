"""LIST: from the watch cache when any recent state will do, from the store for an exact
revision or a page; pages continue at a revision with an opaque token, as kube's do."""

from __future__ import annotations

import base64
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

import setpoint.transfer.digest as digest
from setpoint.server import tables
from setpoint.server.errors import BadRequest, Expired, Timeout
from setpoint.server.handlers.context import Context, Predicate
from setpoint.server.handlers.response import json_response, list_body
from setpoint.server.negotiation import table_version
from setpoint.server.objects import decode_stored, encode
from setpoint.server.paths import RequestInfo
from setpoint.server.resources import ResourceType
from setpoint.store import Compacted, FutureRevision

MAX_PAGE = 1 << 31


async def list_(ctx: Context, request: Request, info: RequestInfo, rtype: ResourceType) -> Response:
    q = request.query_params
    label, field = ctx.selectors(request, rtype)
    pred = ctx.predicate(label, field)
    key_prefix = ctx.scope(info, rtype, field)
    limit_s = q.get("limit")
    try:
        limit = int(limit_s) if limit_s else 0
    except ValueError:
        raise BadRequest(f'invalid limit "{limit_s}"') from None
    # Any int64 is a valid limit (kube accepts 2**63-1); past what a page could ever hold it
    # means "no limit" in practice, and the store's integers stop at 2**63 - 1.
    limit = min(max(limit, 0), MAX_PAGE)
    token = q.get("continue")
    rv_s = q.get("resourceVersion")
    match = q.get("resourceVersionMatch")
    if match not in (None, "", "Exact", "NotOlderThan"):
        raise BadRequest(f'invalid resourceVersionMatch "{match}": use Exact or NotOlderThan')
    if match and rv_s in (None, ""):
        raise BadRequest("resourceVersionMatch is forbidden unless resourceVersion is provided")
    if token and rv_s not in (None, ""):
        raise BadRequest("specifying resource version is not allowed when using continue")
    rv = ctx.parse_rv(rv_s)

    if q.get("digest") or q.get("buckets") is not None:
        return _list_buckets(ctx, request, rtype, info.version, key_prefix, pred)
    if token:
        revision, start_after = decode_continue(token)
        if revision > ctx.cache.revision and revision > await ctx.backend.current_revision():
            raise BadRequest(f'invalid continue token "{token[:64]}": it names a revision this server never had')
        return await _list_from_store(ctx, request, rtype, info.version, key_prefix, pred, limit,
                                      revision, start_after, continuing=True)
    if rv is not None and match != "Exact" and not limit:
        # "any version not older than rv" (rv=0: anything) is what the cache is for.
        if rv > ctx.cache.revision and not await ctx.cache.wait_for(rv, ctx.settings.cache_wait_seconds):
            raise Timeout(f"Too large resource version: {rv}, current: {ctx.cache.revision}")
        return _list_from_cache(ctx, request, rtype, info.version, key_prefix, pred)
    revision = rv if match == "Exact" and rv else 0
    return await _list_from_store(ctx, request, rtype, info.version, key_prefix, pred, limit, revision, "")


def encode_continue(revision: int, key: str) -> str:
    raw = encode({"v": 1, "rv": revision, "start": key})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_continue(token: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = msgspec.json.decode(raw)
        revision, start = data["rv"], data["start"]
        if not isinstance(revision, int) or isinstance(revision, bool) or revision < 1 or \
                not isinstance(start, str):
            raise ValueError("not a token this server made")
        return revision, start
    except Exception:
        raise BadRequest(f'invalid continue token "{token[:64]}"') from None


def _list_response(request: Request, rtype: ResourceType, version: str, revision: int, raws: list[bytes],
                   continue_token: str = "") -> Response:
    tv = table_version(request.headers.get("accept"))
    if tv is None:
        return json_response(list_body(rtype, version, revision, raws, continue_token))
    include = tables.include_object(request.query_params.get("includeObject"))
    objs: list[dict[str, Any]] = [msgspec.json.decode(raw) for raw in raws]
    spec = tables.table_spec(rtype, version)
    return json_response(tables.table(
        spec, list(zip(objs, raws, strict=True)), table_version=tv, include=include,
        resource_version=str(revision), continue_token=continue_token))


def _list_buckets(ctx: Context, request: Request, rtype: ResourceType, version: str, key_prefix: str,
                  pred: Predicate | None) -> Response:
    """setpoint's catch-up for agents with a large cache (``setpoint.transfer.digest``):
    ``?digest=N`` answers the bucket digests of what a list would return, ``?buckets=i,j&
    bucketCount=N`` the list of those buckets only. Both from the cache, like rv=0 lists."""
    q = request.query_params
    raw_n = q.get("digest") or q.get("bucketCount") or ""
    n = int(raw_n) if raw_n.isdigit() else 0
    if not digest.valid_count(n):
        raise BadRequest(f'invalid bucket count "{raw_n}": a power of two up to {digest.MAX_BUCKETS}')
    revision = ctx.cache.revision
    items = ctx.cache.list(rtype.key_prefix, key_prefix)
    if pred is not None:
        items = [co for co in items if pred(co.obj)]
    cut = len(rtype.key_prefix)
    if q.get("digest"):
        pairs = ((co.key[cut:], str(co.revision)) for co in items)
        body = {"kind": "BucketDigest", "apiVersion": "setpoint.dev/v1",
                "metadata": {"resourceVersion": str(revision)}, "buckets": n,
                "digests": digest.encode(digest.digests(pairs, n))}
        return json_response(body)
    try:
        wanted = {int(b) for b in (q.get("buckets") or "").split(",") if b}
    except ValueError:
        raise BadRequest("buckets must be a comma-separated list of bucket numbers") from None
    chosen = [co for co in items if digest.bucket_of(co.key[cut:], n) in wanted]
    if version == rtype.storage_version:
        raws = [co.raw for co in chosen]
    else:
        raws = [encode(ctx.with_version(dict(co.obj), rtype, version)) for co in chosen]
    return _list_response(request, rtype, version, revision, raws)


def _list_from_cache(ctx: Context, request: Request, rtype: ResourceType, version: str, key_prefix: str,
                     pred: Predicate | None) -> Response:
    revision = ctx.cache.revision
    items = ctx.cache.list(rtype.key_prefix, key_prefix)
    if pred is not None:
        items = [co for co in items if pred(co.obj)]
    if version == rtype.storage_version:
        raws = [co.raw for co in items]
    else:
        raws = [encode(ctx.with_version(dict(co.obj), rtype, version)) for co in items]
    return _list_response(request, rtype, version, revision, raws)


async def _list_from_store(
    ctx: Context, request: Request, rtype: ResourceType, version: str, key_prefix: str,
    pred: Predicate | None, limit: int, revision: int, start_after: str, continuing: bool = False,
) -> Response:
    raws: list[bytes] = []
    more = False
    last_key = start_after
    try:
        while True:
            page = await ctx.backend.list(key_prefix, revision=revision, limit=limit, start_after=last_key)
            revision = page.revision
            for i, kv in enumerate(page.items):
                obj = ctx.with_version(decode_stored(kv), rtype, version)
                last_key = kv.key
                if pred is None or pred(obj):
                    raws.append(encode(obj))
                    if limit and len(raws) >= limit:
                        more = page.more or i < len(page.items) - 1
                        break
            else:
                if page.more and (not limit or len(raws) < limit):
                    continue
                more = False
            break
    except Compacted:
        if continuing:
            raise Expired(
                "The provided continue parameter is too old to display a consistent list result. "
                "You can start a new list without the continue parameter."
            ) from None
        raise Expired(f"too old resource version: {revision}") from None
    except FutureRevision as e:
        raise Timeout(f"Too large resource version: {revision}, current: {e.current}") from None
    token = encode_continue(revision, last_key) if more else ""
    return _list_response(request, rtype, version, revision, raws, token)
