"""WATCH: events from the watch cache as JSON lines, with bookmarks as heartbeats, the streaming
list (``sendInitialEvents``) and setpoint's ``catchUp`` poll."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from setpoint.server import tables
from setpoint.server.errors import BadRequest, Expired, Timeout
from setpoint.server.handlers.context import Context, Predicate
from setpoint.server.handlers.response import JSON_MEDIA
from setpoint.server.negotiation import table_version
from setpoint.server.objects import encode, raise_invalid
from setpoint.server.paths import RequestInfo
from setpoint.server.resources import ResourceType
from setpoint.server.watchcache import SKIPPED_ANNOTATION, WatcherClosed, watch_line
from setpoint.store import Compacted, StoreError

log = logging.getLogger(__name__)


def _is_true(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true")


async def watch(ctx: Context, request: Request, info: RequestInfo, rtype: ResourceType) -> Response:
    q = request.query_params
    label, field = ctx.selectors(request, rtype)
    pred = ctx.predicate(label, field)
    key_prefix = ctx.scope(info, rtype, field)
    if info.name:  # GET .../widgets/foo?watch=1 is a watch on one object
        key_prefix = rtype.key(info.namespace, info.name)
        name = info.name
        base = pred

        def pred(o: dict[str, Any]) -> bool:
            return bool(o["metadata"]["name"] == name and (base is None or base(o)))

    rv = ctx.parse_rv(q.get("resourceVersion"))
    after = rv if rv else None  # "" and "0": start with the current state
    initial_events = _is_true(q.get("sendInitialEvents"))
    if initial_events:
        # Streaming list (watch-list): the current state as ADDED events, then a bookmark
        # marking its end, then changes. The state is at least as new as the request's
        # resourceVersion, or as the store when it gives none (a consistent read).
        if q.get("resourceVersionMatch") != "NotOlderThan":
            raise_invalid("ListOptions", "", "", [(
                "FieldValueForbidden", "Forbidden: sendInitialEvents requires setting "
                "resourceVersionMatch to NotOlderThan", "resourceVersionMatch")])
        await _wait_for_cache(ctx, rv if rv else await ctx.backend.current_revision())
        after = None
    if after is not None:
        compacted = await ctx.backend.compacted_revision()
        if after < compacted:
            raise Expired(f"too old resource version: {after} ({compacted + 1})")
    until: int | None = None
    if _is_true(q.get("catchUp")):
        # setpoint's poll: every change after resourceVersion up to now, then a bookmark at
        # the revision reached, then the end. "Nothing changed" is that one bookmark.
        until = await ctx.backend.current_revision()
        await _wait_for_cache(ctx, until)
    timeout = _timeout(q.get("timeoutSeconds"), ctx.settings.watch_max_seconds)
    bookmarks = _is_true(q.get("allowWatchBookmarks"))
    # The tick is also when the deadline is checked, so it never exceeds the timeout.
    tick = min(ctx.settings.bookmark_interval if bookmarks else 30.0, max(timeout, 0.05))
    stream = _Stream(ctx, rtype, info.version, pred, timeout, tick, bookmarks).lines(
        key_prefix, after, initial_events, until)
    tv = table_version(request.headers.get("accept"))
    if tv is not None:
        stream = _table_stream(stream, tables.table_spec(rtype, info.version), tv,
                               tables.include_object(q.get("includeObject")))
    return StreamingResponse(stream, media_type=JSON_MEDIA)


async def _wait_for_cache(ctx: Context, revision: int) -> None:
    if revision > ctx.cache.revision and not await ctx.cache.wait_for(revision, ctx.settings.cache_wait_seconds):
        raise Timeout(f"Too large resource version: {revision}, current: {ctx.cache.revision}")


def _timeout(ts: str | None, default: float) -> float:
    """An integer number of seconds, as kube takes it (int64): "nan", "inf" or "1e9" are a 400;
    0 means the server's default, not "end after the first event"."""
    if not ts:
        return default
    if not ts.lstrip("-").isdigit():
        raise BadRequest(f'invalid timeoutSeconds "{ts[:32]}": must be an integer')
    seconds = int(ts)
    if seconds < 0:
        raise BadRequest(f'invalid timeoutSeconds "{ts[:32]}": must not be negative')
    return min(float(seconds), default) if seconds else default


async def _table_stream(lines: AsyncIterator[bytes], spec: tables.TableSpec, tv: str,
                        include: str) -> AsyncIterator[bytes]:
    """A watch whose objects are one-row Tables; column definitions only in the first event,
    as kube-apiserver sends them."""
    headers = True
    async for line in lines:
        ev = msgspec.json.decode(line)
        if ev.get("type") in ("ADDED", "MODIFIED", "DELETED"):
            obj = ev["object"]
            ev["object"] = tables.table(spec, [(obj, None)], table_version=tv, include=include,
                                        resource_version=obj["metadata"].get("resourceVersion", ""),
                                        headers=headers)
            headers = False
            line = encode(ev) + b"\n"
        yield line


class _Stream:
    """One watch's lines, from the cache's events and ticks."""

    def __init__(self, ctx: Context, rtype: ResourceType, version: str, pred: Predicate | None,
                 timeout: float, tick: float, bookmarks: bool) -> None:
        self.ctx = ctx
        self.prefix = rtype.key_prefix
        self.pred = pred
        self.timeout = timeout
        self.tick = tick
        self.bookmarks = bookmarks
        self.api_version = rtype.api_version(version)
        self.convert = version != rtype.storage_version
        self.bookmark_head = (b'{"type":"BOOKMARK","object":{"kind":"' + rtype.kind.encode()
                              + b'","apiVersion":"' + self.api_version.encode()
                              + b'","metadata":{"resourceVersion":"')

    def _bookmark(self, rev: int, annotations: bytes = b"") -> bytes:
        if annotations:
            return self.bookmark_head + str(rev).encode() + b'","annotations":{' + annotations + b"}}}}\n"
        return self.bookmark_head + str(rev).encode() + b'"}}}\n'

    def _converted(self, raw: bytes) -> bytes:
        obj = msgspec.json.decode(raw)
        obj["apiVersion"] = self.api_version
        return encode(obj)

    async def lines(self, key_prefix: str, after: int | None, initial_events: bool,
                    until: int | None) -> AsyncIterator[bytes]:
        cache = self.ctx.cache
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        last_sent = after or 0
        if initial_events:
            # Read the state and its revision in one step (no await between), then follow on.
            after = cache.revision
            initial = [co.raw for co in cache.list(self.prefix, key_prefix)
                       if self.pred is None or self.pred(co.obj)]
            for raw in initial:
                yield watch_line("ADDED", self._converted(raw) if self.convert else raw)
            yield self._bookmark(after, b'"k8s.io/initial-events-end":"true"')
            last_sent = after
        try:
            async for line, rev, skipped in cache.watch(self.prefix, key_prefix, self.pred, after,
                                                        tick=self.tick, until=until):
                if skipped:
                    # The end of a fast-forward: everything up to rev was sent, newest state per
                    # key; a client that counts can see how much it was spared.
                    if self.bookmarks:
                        yield self._bookmark(rev, b'"' + SKIPPED_ANNOTATION + b'":"' + str(skipped).encode() + b'"')
                    last_sent = max(rev, last_sent)
                elif line:
                    if self.convert:
                        ev = msgspec.json.decode(line)
                        ev["object"]["apiVersion"] = self.api_version
                        line = encode(ev) + b"\n"
                    yield line
                    last_sent = rev
                elif until is not None and rev >= until:
                    yield self._bookmark(max(rev, last_sent))  # caught up
                    return
                elif self.bookmarks:
                    # Also when nothing changed: a bookmark every tick is the heartbeat that lets a
                    # client tell a quiet stream from a dead connection.
                    rev = max(rev, last_sent)
                    yield self._bookmark(rev)
                    last_sent = rev
                if loop.time() >= deadline:
                    return
        except WatcherClosed:
            return  # the client resumes from the last resourceVersion it saw
        except Compacted as e:
            err = Expired(f"too old resource version: {last_sent} ({e.compacted + 1})")
            yield b'{"type":"ERROR","object":' + encode(err.status()) + b"}\n"
        except StoreError as e:
            log.warning("watch ended by the store: %s", e)
