"""The etcd backend: etcd's own revisions, watches and compaction, over its v3 JSON gateway.

**Client.** etcd's v3 API through the gRPC gateway that every etcd serves next to gRPC
(``/v3/kv/range``, ``/v3/kv/txn``, ``/v3/kv/compaction``, ``/v3/watch`` as a stream of JSON
lines). The Python etcd clients need gRPC and protobuf runtimes of their own (and the best
known one, ``etcd3``, unmaintained since 2020, does not work with current protobuf releases);
the gateway needs nothing more, and every etcd 3.4+ serves it. Requests go through a small
keep-alive HTTP/1.1 client of our own (``_etcd_http``: httpx's CPU cost per request was the
bottleneck); watch streams, long-lived and few, through httpx.

**Revisions.** A setpoint revision is etcd's revision minus one: an empty etcd is at revision 1,
an empty setpoint store at 0. Each write is one etcd transaction that changes one key, so with a
dedicated etcd every etcd revision is exactly one setpoint write and revisions have no gaps.
etcd shared with other programs still works, but their writes take etcd revisions too, so the
revisions setpoint sees then have gaps (never repeats or reordering); nothing in setpoint
depends on their absence, but keep etcd dedicated if you want the contract's "without gaps".

**Writes** are compare-and-swap transactions: create compares the key's create_revision with 0,
update and delete compare its mod_revision with the expected one (or its version with 0, "it
exists"). A transaction whose reply was lost may or may not have been applied; the caller gets
:class:`Unavailable` and the outcome shows in watches either way, as with every backend.

**Compaction.** etcd's compaction at E forgets revisions below E and keeps E readable; setpoint's
``compact(R)`` forgets R too, so it compacts etcd at R + 1 (setpoint's R + 1, that is etcd's
R + 2, stays readable), and the revision etcd keeps beyond the contract is refused here. The
compacted revision is what etcd reports (on a watch it cancelled, or found at start by probing
reads), so every server sharing the etcd agrees on it within one request.

**Watches.** Each :meth:`watch` is one etcd watch (``prev_kv`` on, so a DELETE carries the last
value), read by a task into a bounded buffer: a consumer that falls too far behind gets
:class:`WatchOverflow` instead of holding memory, as on every backend.

**Endpoints.** ``etcd://host:port,host:port`` names the members of one cluster; a request that
cannot connect to one member tries the next, and reads are linearizable (they need a quorum).
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

import httpx
import msgspec

from setpoint.store import _etcd_http as _http
from setpoint.store._core import Lifecycle
from setpoint.store.backend import (
    Backend,
    Compacted,
    Event,
    FutureRevision,
    KeyExists,
    KeyNotFound,
    KeyValue,
    ListResult,
    RevisionMismatch,
    StoreError,
    Unavailable,
    check_key,
    check_list_args,
    check_watch_start,
    prefix_end,
    storable,
)
from setpoint.store.fanout import WatchHub
from setpoint.tasks import cancel_and_wait

log = logging.getLogger(__name__)

_json = msgspec.json.Decoder()
_enc = msgspec.json.Encoder()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _range_end(prefix: str) -> bytes:
    """etcd's range end for a key prefix (b"\\0": to the end of the key space)."""
    end = prefix_end(prefix)
    return end.encode() if end is not None else b"\0"


def _kv(raw: dict[str, Any]) -> KeyValue:
    """An etcd KeyValue (JSON, default fields omitted) as a setpoint one."""
    return KeyValue(
        _unb64(raw.get("key")).decode(),
        _unb64(raw.get("value")),
        int(raw.get("create_revision", 1)) - 1,
        int(raw.get("mod_revision", 1)) - 1,
    )


class _EtcdError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def compacted(self) -> bool:
        return "required revision has been compacted" in self.message

    @property
    def future(self) -> bool:
        return "required revision is a future revision" in self.message


class EtcdBackend(Backend):
    """The :class:`Backend` contract over an etcd cluster (v3 API, etcd 3.4 or newer)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        watch_buffer: int = 10_000,
        request_timeout: float = 10.0,
        max_connections: int = 64,
        watch_idle: float = 30.0,
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("EtcdBackend needs at least one endpoint")
        if watch_buffer < 1 or max_connections < 1:
            raise ValueError("watch_buffer and max_connections must be at least 1")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        for e in self.endpoints:
            if not e.startswith(("http://", "https://")):
                raise ValueError(f"etcd endpoint {e!r} must be an http:// or https:// URL")
        self.on_commit = on_commit
        self._watch_buffer = watch_buffer
        self._timeout = request_timeout
        self._max_connections = max_connections
        self._watch_idle = watch_idle
        self.watch_streams_opened = 0  # etcd watch requests made (for tests and metrics)
        self._index = 0  # the endpoint requests go to first
        self._life = Lifecycle(f"etcd store {','.join(self.endpoints)}")
        self._client: _http.Client | None = None
        self._watch_client: httpx.AsyncClient | None = None
        self._compacted = 0
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._hubs: set[WatchHub] = set()

    def __repr__(self) -> str:
        return f"EtcdBackend({','.join(self.endpoints)})"

    @property
    def _where(self) -> str:
        return self._life.where

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._life.starting("EtcdBackend")
        self._client = _http.Client(self._timeout, self._max_connections)
        # Watches are long-lived streams: their own pool, no read timeout.
        self._watch_client = httpx.AsyncClient(
            timeout=httpx.Timeout(self._timeout, read=None), limits=httpx.Limits(max_connections=None)
        )
        self._life.state = "open"
        try:
            current = await self._etcd_revision()
            self._compacted = await self._find_compacted(current)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        await self._life.close(self._finish_close)

    async def _finish_close(self) -> None:
        error = self._life.closed_error()
        for hub in list(self._hubs):
            hub.close(error)
        await self._idle.wait()  # writes already sent are answered first
        for client in (self._client, self._watch_client):
            if client is not None:
                await client.aclose()

    def _ensure_open(self) -> None:
        self._life.ensure_open()

    # -- requests ----------------------------------------------------------------------------

    async def _call(self, path: str, body: dict[str, Any], *, retry: bool = False) -> dict[str, Any]:
        """POST to the gateway. A member that cannot be reached is skipped for the next one (the
        request never left, so that is safe for writes too); ``retry`` also retries reads that
        failed in other ways, once per member."""
        self._ensure_open()
        assert self._client is not None
        payload = _enc.encode(body)
        self._inflight += 1
        self._idle.clear()
        try:
            last: Exception | None = None
            for attempt in range(len(self.endpoints)):
                endpoint = self.endpoints[(self._index + attempt) % len(self.endpoints)]
                try:
                    status, content = await self._client.post(endpoint, path, payload)
                except _http.ConnectFailed as exc:
                    last = exc
                    self._index = (self._index + 1) % len(self.endpoints)
                    continue
                except _http.RequestFailed as exc:
                    last = exc
                    if retry:
                        self._index = (self._index + 1) % len(self.endpoints)
                        continue
                    raise self._unavailable(path, exc) from exc
                data: dict[str, Any] = _json.decode(content) if content else {}
                if status == 200:
                    return data
                err = _EtcdError(status, str(data.get("message") or data.get("error") or content[:500]))
                if err.compacted or err.future or not retry:
                    raise err
                last = err
                self._index = (self._index + 1) % len(self.endpoints)
            assert last is not None
            raise last
        except _EtcdError as exc:
            if exc.compacted or exc.future:
                raise
            raise self._unavailable(path, exc) from exc
        except (_http.HTTPError, msgspec.DecodeError) as exc:
            raise self._unavailable(path, exc) from exc
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    def _unavailable(self, what: str, exc: BaseException) -> Unavailable:
        err = Unavailable(f"{self._where}: {what} failed: {exc or type(exc).__name__}")
        err.__cause__ = exc
        return err

    async def _etcd_revision(self) -> int:
        data = await self._call("/v3/kv/range", {"key": _b64(b"\0"), "count_only": True}, retry=True)
        return int(data["header"]["revision"])

    async def _readable(self, etcd_revision: int) -> bool:
        try:
            await self._call(
                "/v3/kv/range", {"key": _b64(b"\0"), "count_only": True, "revision": etcd_revision}, retry=True
            )
        except _EtcdError as exc:
            if exc.compacted:
                return False
            raise self._unavailable("reading", exc) from exc
        return True

    async def _find_compacted(self, current: int) -> int:
        """etcd tells the compacted revision only to a watch it cancels; find it by probing reads
        (a binary search, so a few dozen requests at most) above what is already known.

        etcd's compaction point E is its oldest readable revision; setpoint's compacted revision
        is E - 1 in setpoint's numbering (etcd's E - 1 is setpoint's E - 2, gone; setpoint's
        E - 1 is etcd's E, readable in etcd but compacted by the contract)."""
        lo = self._compacted + 1  # etcd's number for the compaction point known so far
        if await self._readable(lo):
            return self._compacted
        hi = current  # etcd's current revision is always readable
        while lo + 1 < hi:  # invariant: lo is compacted, hi is readable
            mid = (lo + hi) // 2
            if await self._readable(mid):
                hi = mid
            else:
                lo = mid
        self._compacted = max(self._compacted, hi - 1)
        return self._compacted

    async def _compacted_error(self, requested: int) -> Compacted:
        with contextlib.suppress(StoreError):
            await self._find_compacted(await self._etcd_revision())
        return Compacted(requested, self._compacted)

    # -- writes ------------------------------------------------------------------------------

    def _written(self) -> None:
        if self.on_commit is not None:
            self.on_commit(1)

    async def create(self, key: str, value: bytes) -> KeyValue:
        k = _b64(_key(key))
        value = bytes(value)
        data = await self._call(
            "/v3/kv/txn",
            {
                "compare": [{"target": "CREATE", "key": k, "create_revision": "0"}],
                "success": [{"request_put": {"key": k, "value": _b64(value)}}],
            },
        )
        if not data.get("succeeded"):
            raise KeyExists(key)
        rev = int(data["header"]["revision"]) - 1
        self._written()
        return KeyValue(key, value, rev, rev)

    def _guard(self, k: str, expected: int) -> dict[str, Any]:
        if expected:
            return {"target": "MOD", "key": k, "mod_revision": str(expected + 1)}
        return {"target": "VERSION", "key": k, "result": "GREATER", "version": "0"}

    def _failed(self, key: str, expected: int, data: dict[str, Any]) -> StoreError:
        kvs = data.get("responses", [{}])[0].get("response_range", {}).get("kvs") or []
        if not kvs:
            return KeyNotFound(key)
        return RevisionMismatch(key, expected, int(kvs[0].get("mod_revision", 1)) - 1)

    async def update(self, key: str, value: bytes, expected_revision: int = 0) -> KeyValue:
        k = _b64(_key(key))
        value = bytes(value)
        data = await self._call(
            "/v3/kv/txn",
            {
                "compare": [self._guard(k, expected_revision)],
                "success": [{"request_put": {"key": k, "value": _b64(value), "prev_kv": True}}],
                "failure": [{"request_range": {"key": k, "keys_only": True}}],
            },
        )
        if not data.get("succeeded"):
            raise self._failed(key, expected_revision, data)
        prev = data["responses"][0]["response_put"]["prev_kv"]
        self._written()
        return KeyValue(key, value, int(prev.get("create_revision", 1)) - 1, int(data["header"]["revision"]) - 1)

    async def delete(self, key: str, expected_revision: int = 0) -> KeyValue:
        k = _b64(_key(key))
        data = await self._call(
            "/v3/kv/txn",
            {
                "compare": [self._guard(k, expected_revision)],
                "success": [{"request_delete_range": {"key": k, "prev_kv": True}}],
                "failure": [{"request_range": {"key": k, "keys_only": True}}],
            },
        )
        if not data.get("succeeded"):
            raise self._failed(key, expected_revision, data)
        prev = _kv(data["responses"][0]["response_delete_range"]["prev_kvs"][0])
        self._written()
        return KeyValue(key, prev.value, prev.create_revision, int(data["header"]["revision"]) - 1)

    async def compact(self, revision: int) -> None:
        if revision <= self._compacted:
            self._ensure_open()
            return
        try:
            await self._call("/v3/kv/compaction", {"revision": revision + 1})
        except _EtcdError as exc:
            if exc.future:
                raise FutureRevision(revision, await self.current_revision()) from None
            if not exc.compacted:
                raise self._unavailable("compacting", exc) from exc
            await self._compacted_error(revision)  # compacted further by someone else: learn how far
            return
        self._compacted = max(self._compacted, revision)

    # -- reads -------------------------------------------------------------------------------

    async def current_revision(self) -> int:
        return await self._etcd_revision() - 1

    async def compacted_revision(self) -> int:
        self._ensure_open()
        return self._compacted

    async def _range(self, body: dict[str, Any], revision: int) -> dict[str, Any]:
        if revision:
            if revision <= self._compacted:
                raise Compacted(revision, self._compacted)
            body["revision"] = revision + 1
        try:
            return await self._call("/v3/kv/range", body, retry=True)
        except _EtcdError as exc:
            if exc.future:
                raise FutureRevision(revision, await self.current_revision()) from None
            if exc.compacted:
                raise await self._compacted_error(revision) from None
            raise self._unavailable("reading", exc) from exc

    async def get(self, key: str, revision: int = 0) -> KeyValue | None:
        check_list_args(revision)
        # NUL is a valid etcd key that no stored key equals (the key rule forbids NUL).
        data = await self._range({"key": _b64(_key(key) if storable(key) else b"\0")}, revision)
        kvs = data.get("kvs")
        return _kv(kvs[0]) if kvs else None

    async def list(
        self, prefix: str, *, revision: int = 0, limit: int = 0, start_after: str = ""
    ) -> ListResult:
        check_list_args(revision, limit)
        p = prefix.encode()
        start = max(p, start_after.encode() + b"\0") if start_after else p
        body: dict[str, Any] = {"key": _b64(start or b"\0"), "range_end": _b64(_range_end(prefix))}
        if limit:
            body["limit"] = limit
        data = await self._range(body, revision)
        items = [_kv(raw) for raw in data.get("kvs") or []]
        at = revision or int(data["header"]["revision"]) - 1
        return ListResult(items, at, bool(data.get("more")))

    # -- watch -------------------------------------------------------------------------------

    def watch(self, prefix: str, after_revision: int) -> AsyncGenerator[builtins.list[Event], None]:
        """See :meth:`Backend.watch`. When the backend closes or etcd cannot be reached, the watch
        raises Unavailable; the consumer resumes from the last revision it received."""
        return self._watch(prefix, after_revision)

    async def _watch(self, prefix: str, after: int) -> AsyncGenerator[builtins.list[Event], None]:
        self._ensure_open()
        if after < self._compacted:
            raise Compacted(after, self._compacted)
        check_watch_start(after, await self.current_revision(), self._compacted)
        hub = WatchHub(self._watch_buffer, after)
        sub = hub.subscribe(prefix)
        self._hubs.add(hub)
        pump = asyncio.create_task(self._pump(hub, prefix, after), name="setpoint-etcd-watch")
        try:
            while True:
                yield await sub.get()
        finally:
            sub.close()
            self._hubs.discard(hub)
            await cancel_and_wait(pump)

    async def _pump(self, hub: WatchHub, prefix: str, after: int) -> None:
        """Read etcd watches into ``hub`` until the subscriber goes away or etcd fails.

        A stream silent for ``watch_idle`` seconds is replaced by a new one from the last revision
        received: a connection that died without a word would otherwise hang for good, and a
        quiet store costs one request per interval. A member that cannot be reached is skipped
        for the next one. Anything else ends the watch (Unavailable; the consumer resumes)."""
        assert self._watch_client is not None
        p = prefix.encode()
        error: StoreError | None = None
        last = after
        unreachable = 0
        timeout = httpx.Timeout(self._timeout, read=self._watch_idle)
        # "hasleader": etcd ends the watch if its member loses the leader (a partitioned member
        # would otherwise keep the stream open and silent); the gateway passes it on as metadata.
        headers = {"Content-Type": "application/json", "Grpc-Metadata-hasleader": "true"}
        try:
            while True:
                endpoint = self.endpoints[self._index % len(self.endpoints)]
                request = {
                    "create_request": {
                        "key": _b64(p or b"\0"),
                        "range_end": _b64(_range_end(prefix)),
                        "start_revision": last + 2,
                        "prev_kv": True,
                    }
                }
                self.watch_streams_opened += 1
                try:
                    stream = self._watch_client.stream(
                        "POST", endpoint + "/v3/watch", content=_enc.encode(request), headers=headers, timeout=timeout
                    )
                    async with stream as r:
                        if r.status_code != 200:
                            body = await r.aread()
                            raise _EtcdError(r.status_code, body.decode(errors="replace"))
                        unreachable = 0
                        async for line in r.aiter_lines():
                            if not line.strip():
                                continue
                            result = _json.decode(line).get("result")
                            if result is None:
                                raise _EtcdError(0, line[:500])
                            if result.get("canceled"):
                                compact = int(result.get("compact_revision", 0))
                                if compact:
                                    self._compacted = max(self._compacted, compact - 1)
                                    error = Compacted(after, self._compacted)
                                else:
                                    reason = result.get("cancel_reason", "")
                                    error = Unavailable(f"{self._where}: etcd ended a watch: {reason}")
                                return
                            raw_events = result.get("events")
                            if not raw_events:
                                continue
                            events = [e for e in map(_event, raw_events) if e.revision > last]
                            if events:
                                last = events[-1].revision
                                hub.publish(events)
                                if not len(hub):
                                    return  # the subscriber overflowed or left
                    error = Unavailable(f"{self._where}: etcd ended a watch stream")
                    return
                except httpx.ReadTimeout:
                    continue  # silent for too long: watch again from the last revision received
                except httpx.ConnectError as exc:
                    unreachable += 1
                    self._index = (self._index + 1) % len(self.endpoints)
                    if unreachable >= len(self.endpoints):
                        error = self._unavailable("watching", exc)
                        return
        except (httpx.HTTPError, _EtcdError, msgspec.DecodeError) as exc:
            error = self._unavailable("watching", exc)
        finally:
            if error is None:
                error = Unavailable(f"{self._where}: the watch ended")
            hub.close(error)


def _event(raw: dict[str, Any]) -> Event:
    kv = _kv(raw["kv"])
    if raw.get("type") == "DELETE":
        prev = raw.get("prev_kv")
        if prev is not None:
            p = _kv(prev)
            kv = KeyValue(kv.key, p.value, p.create_revision, kv.mod_revision)
        return Event("DELETE", kv)
    return Event("PUT", kv)


def _key(key: str) -> bytes:
    check_key(key)
    return key.encode()
