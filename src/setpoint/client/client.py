"""The async API client: CRUD, list, watch and discovery over keep-alive HTTP/1.1 connections.

Objects are plain dicts, exactly the JSON the server sends (decoded with msgspec). A kind is
addressed by a :class:`Resource` (group, version, plural, namespaced), written by hand or
looked up from discovery with :meth:`Client.resource_for`.

    async with Client(ClientConfig.from_kubeconfig()) as client:
        widgets = await client.resource_for("example.com/v1", "Widget")
        obj = await client.create(widgets, {"metadata": {"name": "w"}, "spec": {"size": 1}},
                                  namespace="default")
        async with client.watch(widgets, namespace="default",
                                resource_version=obj["metadata"]["resourceVersion"]) as events:
            async for event in events:
                print(event.type, event.name)
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from http.cookiejar import CookieJar
from operator import attrgetter
from types import TracebackType
from typing import Any, Literal, TypeVar, overload
from urllib.parse import quote

import httpx
import msgspec

from setpoint import __version__
from setpoint.client import typed
from setpoint.client.config import ClientConfig
from setpoint.client.errors import (
    APIStatusError,
    ConnectionFailed,
    Gone,
    IdleTimeout,
    NotFound,
    from_status,
)

log = logging.getLogger(__name__)

JSON = "application/json"
_SAFE_METHODS = frozenset(("GET", "HEAD"))
PATCH_TYPES = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",  # built-in kinds only
}
PatchType = Literal["merge", "json", "strategic"]
FieldValidation = Literal["Strict", "Warn", "Ignore"]
Selector = str | Mapping[str, str]

# A watch line longer than this is refused rather than buffered without bound. The server's
# largest accepted body is 1.5 MiB by default; an event is that object plus a few bytes.
MAX_EVENT_BYTES = 16 * 1024 * 1024

_decode = msgspec.json.Decoder()


K = TypeVar("K", bound=msgspec.Struct)  # a typed kind (setpoint.client.typed)


@dataclass(frozen=True, slots=True)
class Resource:
    """A kind's collection on the server: ``Resource("example.com", "v1", "widgets")``.

    The core group is ``""`` (``Resource("", "v1", "namespaces", namespaced=False)``).
    """

    group: str
    version: str
    plural: str
    namespaced: bool = True
    kind: str = ""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        """The URL path of the collection, or of one object (and its subresource)."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        elif self.namespaced and name:
            raise ValueError(f"{self.plural} is namespaced: a namespace is required")
        base += f"/{self.plural}"
        if name:
            base += f"/{quote(name, safe='')}"
            if subresource:
                base += f"/{subresource}"
        return base


@dataclass(slots=True)
class ObjectList:
    """One page of a list: its items, the revision it was read at, and the token for the next."""

    items: list[dict[str, Any]]
    resource_version: str
    continue_token: str = ""
    remaining_item_count: int | None = None
    kind: str = ""
    api_version: str = ""


@dataclass(slots=True)
class RawObjectList:
    """A list (one page, or all of them) with each object kept as the bytes the server sent: a
    cache that files objects by name need not decode them (dicts cost several times their JSON,
    and allocating them is most of a large list's time) until someone reads them.

    ``items[i]`` is an object's JSON; ``names[i]`` its ``(namespace, name)``."""

    items: list[bytes]
    names: list[tuple[str, str]]
    resource_version: str
    continue_token: str = ""


class _ListMeta(msgspec.Struct):
    resourceVersion: str = ""
    continue_: str = msgspec.field(default="", name="continue")


class _RawPage(msgspec.Struct):
    items: list[msgspec.Raw] | None = None
    metadata: _ListMeta | None = None


# gc=False: thousands of these live only while a page is filed, and the collector has nothing
# to find in them.
class _NameMeta(msgspec.Struct, gc=False):
    name: str = ""
    namespace: str = ""


class _Named(msgspec.Struct, gc=False):
    metadata: _NameMeta | None = None


class _NamedPage(msgspec.Struct):
    items: list[_Named] | None = None


_raw_page_decoder = msgspec.json.Decoder(_RawPage)
_named_page_decoder = msgspec.json.Decoder(_NamedPage)
_NO_NAME = _NameMeta()


def _raw_page(body: bytes, what: str) -> RawObjectList:
    """Two passes over the page, both in C: the objects' spans, then only their names (msgspec
    skips everything else without building it)."""
    try:
        page = _raw_page_decoder.decode(body)
        named = _named_page_decoder.decode(body).items or []
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ConnectionFailed(f"{what}: the response is not a list: {e}") from e
    meta = page.metadata or _ListMeta()
    names = [((n.metadata or _NO_NAME).namespace, (n.metadata or _NO_NAME).name) for n in named]
    return RawObjectList(items=[bytes(r) for r in page.items or ()], names=names,
                         resource_version=meta.resourceVersion, continue_token=meta.continue_)


class WatchEvent(msgspec.Struct, frozen=True):
    """One event of a watch stream: ADDED, MODIFIED, DELETED or BOOKMARK, and its object."""

    type: str
    object: dict[str, Any]

    @property
    def resource_version(self) -> str:
        return str(self.object.get("metadata", {}).get("resourceVersion", ""))

    @property
    def name(self) -> str:
        return str(self.object.get("metadata", {}).get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.object.get("metadata", {}).get("namespace", ""))


_event_decoder = msgspec.json.Decoder(WatchEvent)


class RawWatchEvent(msgspec.Struct, frozen=True, gc=False):
    """A watch event whose object is left as the JSON the server sent (see :meth:`WatchStream.raw`)."""

    type: str
    object: msgspec.Raw


_raw_event_decoder = msgspec.json.Decoder(RawWatchEvent)


def format_selector(selector: Selector | None) -> str | None:
    """A selector string from a string or from a ``{key: value}`` map (all must match)."""
    if selector is None:
        return None
    if isinstance(selector, str):
        return selector or None
    return ",".join(f"{k}={v}" for k, v in selector.items()) or None


def _name_of(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if not isinstance(name, str) or not name:
        raise ValueError("the object has no metadata.name")
    return name


def _namespace_of(resource: Resource, obj: Mapping[str, Any], namespace: str | None) -> str | None:
    if not resource.namespaced:
        return None
    if namespace:
        return namespace
    meta = obj.get("metadata")
    ns = meta.get("namespace") if isinstance(meta, Mapping) else None
    if isinstance(ns, str) and ns:
        return ns
    raise ValueError(f"{resource.plural} is namespaced: give namespace= or metadata.namespace")


# httpcore (1.0.9) looks at every connection of a pool on every request (``has_expired``: a
# poll of each socket, and more): the cost of a request grows with the connections the pool
# holds. With 32 requests in flight that was about a third of a client's CPU, and a client did
# ~600 creates/s against a server that takes 8,000. Ordinary requests are therefore spread over
# several smaller pools, each sent on the pool with the fewest in flight: with 8 pools a client
# did ~1,300 creates or patches a second (upstream: encode/httpcore pull request 928). Watches,
# which hold their connection, have a pool of their own.
REQUEST_POOLS = 8


class _Pool:
    __slots__ = ("http", "in_flight")

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.in_flight = 0


class Client:
    """An async client for one setpoint control plane. Use it with ``async with``, or call
    :meth:`aclose` when done; it owns its ``httpx.AsyncClient`` pools and their keep-alive
    connections.
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
        warning_handler: Callable[[str], None] | None = None,
    ) -> None:
        """``warning_handler`` gets the text of each ``Warning`` header a response carries (as
        kubectl prints them: an unknown field under ``fieldValidation=Warn``, a deprecation).
        ``max_connections`` bounds the connections of ordinary requests, and those of watches
        separately. With a ``transport`` of the caller's, every request goes through it."""
        self.config = config
        self.warning_handler = warning_handler
        headers = {"Accept": JSON, "User-Agent": f"setpoint-client/{__version__}", **config.extra_headers}
        if config.token:
            headers["Authorization"] = f"Bearer {config.token}"
        verify = config.ssl_context()
        cookies = CookieJar()  # one jar for every pool, as one client would have (sticky sessions)

        def pool(connections: int, keepalive: int) -> httpx.AsyncClient:
            return httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(config.timeout),
                verify=verify,
                http1=True,
                http2=False,
                limits=httpx.Limits(max_connections=connections, max_keepalive_connections=keepalive),
                transport=transport,
                follow_redirects=False,
                cookies=cookies,
            )

        self._streams = pool(max_connections, 20)
        if transport is not None:
            self._pools = [_Pool(self._streams)]
        else:
            # max_connections in all, shared out; every connection may stay open while idle
            # (httpx closes it after 5 s), so that a steady load does not reconnect all the time.
            n = max(1, min(REQUEST_POOLS, max_connections))
            sizes = [max_connections // n + (i < max_connections % n) for i in range(n)]
            self._pools = [_Pool(pool(size, size)) for size in sizes]
        self._server_index = 0
        self._discovery: dict[str, list[dict[str, Any]]] = {}

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        async with contextlib.AsyncExitStack() as stack:  # every pool is closed, whatever fails
            stack.push_async_callback(self._streams.aclose)
            for pool in self._pools:
                if pool.http is not self._streams:
                    stack.push_async_callback(pool.http.aclose)

    @property
    def server(self) -> str:
        """The URL requests go to first (the last one that accepted a connection)."""
        return self.config.servers[self._server_index]

    # ---- transport ----------------------------------------------------------------------------

    def _server_order(self) -> list[int]:
        n = len(self.config.servers)
        return [(self._server_index + i) % n for i in range(n)]

    async def _dispatch(self, request: httpx.Request, stream: bool) -> httpx.Response:
        """A watch on the streams' pool; any other request on the pool with the fewest in flight."""
        if stream:
            return await self._send_again_if_stale(self._streams, request, True)
        pool = min(self._pools, key=attrgetter("in_flight"))
        pool.in_flight += 1
        try:
            return await self._send_again_if_stale(pool.http, request, False)
        finally:
            pool.in_flight -= 1

    @staticmethod
    async def _send_again_if_stale(http: httpx.AsyncClient, request: httpx.Request, stream: bool) -> httpx.Response:
        """A read whose kept-alive connection the server closed just as the request went out on
        it (the server's idle timeout and the client's reuse crossing) got no answer at all, and is
        sent once more, on a new connection. Only reads: a write that got no answer may have been
        carried out, and saying so is the caller's business."""
        try:
            return await http.send(request, stream=stream)
        except httpx.RemoteProtocolError:
            if request.method not in _SAFE_METHODS:
                raise
            log.debug("%s %s: the connection was closed before an answer; sending it again",
                      request.method, request.url)
            return await http.send(request, stream=stream)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = JSON,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """Send to the first server that accepts a connection; raise the typed error on failure.

        Only a failure to connect moves on to the next server: then the request cannot have
        reached anyone, so retrying it elsewhere is safe for every verb.
        """
        hdrs = dict(headers or {})
        content: bytes | None = None
        if body is not None:
            content = msgspec.json.encode(body)
            hdrs["Content-Type"] = content_type
        last: Exception | None = None
        for index in self._server_order():
            url = self.config.servers[index] + path
            request = self._streams.build_request(
                method, url, params=params, content=content, headers=hdrs,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
            try:
                response = await self._dispatch(request, stream)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                last = e
                log.debug("cannot connect to %s: %s", self.config.servers[index], e)
                continue
            except httpx.ReadTimeout as e:
                if stream:  # a watch: its read timeout is its idle timeout
                    raise IdleTimeout(f"{method} {url}: no response within the idle timeout") from e
                raise ConnectionFailed(f"{method} {url}: no response within the timeout") from e
            except httpx.TransportError as e:
                raise ConnectionFailed(f"{method} {url}: {type(e).__name__}: {e}") from e
            self._server_index = index
            if self.warning_handler is not None:
                for value in response.headers.get_list("Warning"):
                    self.warning_handler(_warning_text(value))
            if response.status_code >= 400:
                try:
                    if stream:
                        await response.aread()
                finally:
                    await response.aclose()
                raise self._error(response)
            return response
        servers = ", ".join(self.config.servers)
        raise ConnectionFailed(f"{method} {path}: cannot connect to {servers}: {last}") from last

    @staticmethod
    def _error(response: httpx.Response) -> APIStatusError:
        try:
            body = _decode.decode(response.content) if response.content else None
        except msgspec.DecodeError:
            body = None
        retry_after: float | None = None
        header = response.headers.get("Retry-After")
        if header:
            with contextlib.suppress(ValueError):
                retry_after = float(header)
        text = response.text[:200] if body is None else ""
        return from_status(response.status_code, body, retry_after=retry_after,
                           fallback_message=text or response.reason_phrase)

    async def _json(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        response = await self._send(method, path, **kw)
        try:
            out = _decode.decode(response.content)
        except msgspec.DecodeError as e:
            raise ConnectionFailed(f"{method} {path}: the response is not JSON: {e}") from e
        if not isinstance(out, dict):
            raise ConnectionFailed(f"{method} {path}: the response is not a JSON object")
        return out

    # ---- reads ----------------------------------------------------------------------------------

    @overload
    async def get(self, resource: Resource, name: str, *, namespace: str | None = None,
                  resource_version: str | None = None) -> dict[str, Any]: ...

    @overload
    async def get(self, resource: type[K], name: str, *, namespace: str | None = None,
                  resource_version: str | None = None) -> K: ...

    async def get(
        self, resource: Resource | type[K], name: str, *, namespace: str | None = None,
        resource_version: str | None = None,
    ) -> dict[str, Any] | K:
        """One object. ``resource_version="0"`` reads the server's cache; ``"N"`` reads revision N.
        Given a typed kind's class (:mod:`setpoint.client.typed`), an instance of it."""
        params = {"resourceVersion": resource_version} if resource_version is not None else None
        if isinstance(resource, Resource):
            return await self._json("GET", resource.path(namespace, name), params=params)
        out = await self._json("GET", typed.resource_of(resource).path(namespace, name), params=params)
        return typed.decode(resource, out)

    async def list_typed(
        self, cls: type[K], *, namespace: str | None = None, label_selector: Selector | None = None,
        field_selector: Selector | None = None,
    ) -> builtins.list[K]:
        """Every object of the typed kind ``cls`` (all pages), as instances of it."""
        res = typed.resource_of(cls)
        return [typed.decode(cls, o) async for o in self.iter_list(
            res, namespace=namespace, label_selector=label_selector, field_selector=field_selector)]

    async def create_typed(self, obj: K, *, namespace: str | None = None, dry_run: bool = False) -> K:
        """Create ``obj`` (an instance of a typed kind); the object as created, as an instance."""
        out = await self.create(typed.resource_of(type(obj)), typed.encode(obj), namespace=namespace,
                                dry_run=dry_run)
        return typed.decode(type(obj), out)

    async def save(self, obj: K, *, status: bool = False, dry_run: bool = False) -> K:
        """Write ``obj`` (an instance of a typed kind, as read) back: a merge patch of the fields
        its class declares, failing with :class:`Conflict` if the object changed since it was
        read; fields the class does not know are kept (see :mod:`setpoint.client.typed`).
        ``status=True`` writes its status, through the status subresource."""
        cls = type(obj)
        name, namespace = typed.name_and_namespace(obj)
        out = await self.patch(typed.resource_of(cls), name, typed.write_back(obj, status=status),
                               namespace=namespace, subresource="status" if status else None, dry_run=dry_run)
        return typed.decode(cls, out)

    async def list(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: Selector | None = None,
        field_selector: Selector | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
        resource_version: str | None = None,
        resource_version_match: Literal["Exact", "NotOlderThan"] | None = None,
    ) -> ObjectList:
        """One page of objects (all of them without ``limit``), newest first unless told otherwise.

        ``field_selector`` supports ``metadata.name`` and ``metadata.namespace`` only.
        """
        params = self._list_params(label_selector, field_selector, limit, continue_token, resource_version,
                                   resource_version_match)
        body = await self._json("GET", resource.path(namespace), params=params)
        meta = body.get("metadata") or {}
        items = body.get("items") or []
        remaining = meta.get("remainingItemCount")
        return ObjectList(
            items=items, resource_version=str(meta.get("resourceVersion", "")),
            continue_token=str(meta.get("continue") or ""),
            remaining_item_count=remaining if isinstance(remaining, int) else None,
            kind=str(body.get("kind", "")), api_version=str(body.get("apiVersion", "")),
        )

    def _list_params(
        self, label_selector: Selector | None, field_selector: Selector | None, limit: int | None,
        continue_token: str | None, resource_version: str | None = None,
        resource_version_match: Literal["Exact", "NotOlderThan"] | None = None,
    ) -> dict[str, str]:
        params = self._selector_params(label_selector, field_selector)
        if limit:
            params["limit"] = str(limit)
        if continue_token:
            params["continue"] = continue_token
        if resource_version is not None:
            params["resourceVersion"] = resource_version
        if resource_version_match is not None:
            params["resourceVersionMatch"] = resource_version_match
        return params

    async def list_raw(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: Selector | None = None,
        field_selector: Selector | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> RawObjectList:
        """One page as :meth:`list` reads it, each object left as the bytes the server sent."""
        path = resource.path(namespace)
        params = self._list_params(label_selector, field_selector, limit, continue_token)
        response = await self._send("GET", path, params=params)
        return _raw_page(response.content, f"GET {path}")

    async def list_all_raw(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: Selector | None = None,
        field_selector: Selector | None = None,
        limit: int = 500,
    ) -> RawObjectList:
        """Every object, as :meth:`list_all` reads them (one snapshot, ``limit`` at a time, one
        unpaginated request if the snapshot expires midway), each left as the bytes the server sent."""
        items: builtins.list[bytes] = []
        names: builtins.list[tuple[str, str]] = []
        first: RawObjectList | None = None
        token: str | None = None
        try:
            while True:
                page = await self.list_raw(resource, namespace=namespace, label_selector=label_selector,
                                           field_selector=field_selector, limit=limit, continue_token=token)
                first = first or page
                items += page.items
                names += page.names
                if not page.continue_token:
                    break
                token = page.continue_token
        except Gone:
            if first is None:
                raise
            log.info("paginated list of %s expired midway; listing again in one request", resource.plural)
            return await self.list_raw(resource, namespace=namespace, label_selector=label_selector,
                                       field_selector=field_selector)
        return RawObjectList(items=items, names=names, resource_version=first.resource_version)

    async def bucket_digests(
        self, resource: Resource, buckets: int, *, namespace: str | None = None,
        label_selector: Selector | None = None, field_selector: Selector | None = None,
    ) -> tuple[str, str]:
        """setpoint's digest of what a list would return, in ``buckets`` buckets (see
        :mod:`setpoint.transfer.digest`): ``(resourceVersion, base64 digests)``."""
        params = self._selector_params(label_selector, field_selector)
        params["digest"] = str(buckets)
        body = await self._json("GET", resource.path(namespace), params=params)
        return str((body.get("metadata") or {}).get("resourceVersion", "")), str(body.get("digests", ""))

    async def list_buckets(
        self, resource: Resource, buckets: builtins.list[int], count: int, *, namespace: str | None = None,
        label_selector: Selector | None = None, field_selector: Selector | None = None,
    ) -> ObjectList:
        """The objects a list would return that fall in ``buckets`` (of ``count``)."""
        params = self._selector_params(label_selector, field_selector)
        params["buckets"] = ",".join(map(str, buckets))
        params["bucketCount"] = str(count)
        body = await self._json("GET", resource.path(namespace), params=params)
        meta = body.get("metadata") or {}
        return ObjectList(items=body.get("items") or [], resource_version=str(meta.get("resourceVersion", "")),
                          kind=str(body.get("kind", "")), api_version=str(body.get("apiVersion", "")))

    @staticmethod
    def _selector_params(label_selector: Selector | None, field_selector: Selector | None) -> dict[str, str]:
        params: dict[str, str] = {}
        if (ls := format_selector(label_selector)) is not None:
            params["labelSelector"] = ls
        if (fs := format_selector(field_selector)) is not None:
            params["fieldSelector"] = fs
        return params

    async def iter_pages(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: Selector | None = None,
        field_selector: Selector | None = None,
        limit: int = 500,
    ) -> AsyncIterator[ObjectList]:
        """Pages of at most ``limit`` objects, all read at the first page's revision (one
        consistent snapshot). Raises :class:`Expired` if that revision is compacted before the
        last page; :meth:`list_all` then falls back to one unpaginated list."""
        token: str | None = None
        while True:
            page = await self.list(resource, namespace=namespace, label_selector=label_selector,
                                   field_selector=field_selector, limit=limit, continue_token=token)
            yield page
            if not page.continue_token:
                return
            token = page.continue_token

    async def iter_list(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: Selector | None = None,
        field_selector: Selector | None = None,
        limit: int = 500,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every object, fetched ``limit`` at a time from one consistent snapshot."""
        async for page in self.iter_pages(resource, namespace=namespace, label_selector=label_selector,
                                          field_selector=field_selector, limit=limit):
            for item in page.items:
                yield item

    async def list_all(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: Selector | None = None,
        field_selector: Selector | None = None,
        limit: int = 500,
    ) -> ObjectList:
        """Every object in one :class:`ObjectList`, read ``limit`` at a time from one snapshot.

        Like client-go's pager, if the snapshot is compacted before the last page it lists
        again in one unpaginated request, which cannot expire.
        """
        items: builtins.list[dict[str, Any]] = []
        first: ObjectList | None = None
        try:
            async for page in self.iter_pages(resource, namespace=namespace, label_selector=label_selector,
                                              field_selector=field_selector, limit=limit):
                first = first or page
                items.extend(page.items)
        except Gone:
            if first is None:
                raise
            log.info("paginated list of %s expired midway; listing again in one request", resource.plural)
            return await self.list(resource, namespace=namespace, label_selector=label_selector,
                                   field_selector=field_selector)
        assert first is not None
        return ObjectList(items=items, resource_version=first.resource_version, kind=first.kind,
                          api_version=first.api_version)

    # ---- writes ---------------------------------------------------------------------------------

    async def create(
        self,
        resource: Resource,
        obj: Mapping[str, Any],
        *,
        namespace: str | None = None,
        idempotency_key: str | None = None,
        dry_run: bool = False,
        field_validation: FieldValidation | None = None,
    ) -> dict[str, Any]:
        """Create ``obj``; ``apiVersion`` and ``kind`` are filled in from ``resource`` when absent.

        With ``idempotency_key``, retrying the same create returns the first result instead of
        creating a second object (even across a server restart). ``field_validation="Strict"``
        makes a field the schema does not know a 400 instead of silently dropped.
        """
        ns = _namespace_of(resource, obj, namespace)
        body = dict(obj)
        if resource.kind:
            body.setdefault("apiVersion", resource.api_version)
            body.setdefault("kind", resource.kind)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return await self._json("POST", resource.path(ns), body=body, headers=headers,
                                params=_write_params(dry_run, field_validation))

    async def update(
        self, resource: Resource, obj: Mapping[str, Any], *, namespace: str | None = None,
        dry_run: bool = False, field_validation: FieldValidation | None = None,
    ) -> dict[str, Any]:
        """Replace the object (PUT). ``metadata.resourceVersion`` is the precondition: a stale
        one raises :class:`Conflict`. With a status subresource, ``status`` is ignored here."""
        return await self._put(resource, obj, namespace, None, dry_run, field_validation)

    async def update_status(
        self, resource: Resource, obj: Mapping[str, Any], *, namespace: str | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Replace the object's ``status`` (PUT to ``/status``); everything else is ignored."""
        return await self._put(resource, obj, namespace, "status", dry_run, None)

    async def _put(
        self, resource: Resource, obj: Mapping[str, Any], namespace: str | None, sub: str | None,
        dry_run: bool, field_validation: FieldValidation | None,
    ) -> dict[str, Any]:
        ns = _namespace_of(resource, obj, namespace)
        body = dict(obj)
        if resource.kind:
            body.setdefault("apiVersion", resource.api_version)
            body.setdefault("kind", resource.kind)
        return await self._json("PUT", resource.path(ns, _name_of(obj), sub), body=body,
                                params=_write_params(dry_run, field_validation))

    async def patch(
        self,
        resource: Resource,
        name: str,
        patch: Any,
        *,
        namespace: str | None = None,
        patch_type: PatchType = "merge",
        subresource: str | None = None,
        dry_run: bool = False,
        field_validation: FieldValidation | None = None,
    ) -> dict[str, Any]:
        """Patch one object: ``"merge"`` (RFC 7386, a dict) or ``"json"`` (RFC 6902, a list of
        operations). A merge patch without ``metadata.resourceVersion`` applies to the newest version."""
        return await self._json("PATCH", resource.path(namespace, name, subresource), body=patch,
                                content_type=PATCH_TYPES[patch_type],
                                params=_write_params(dry_run, field_validation))

    async def delete(
        self,
        resource: Resource,
        name: str,
        *,
        namespace: str | None = None,
        uid: str | None = None,
        resource_version: str | None = None,
        propagation_policy: Literal["Orphan", "Background", "Foreground"] | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Delete one object, if it still has ``uid`` / ``resource_version`` (preconditions: a
        mismatch raises :class:`Conflict`). Returns the object; with finalizers, it is only marked
        for deletion (``metadata.deletionTimestamp``) and stays until they are removed."""
        options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        pre = {k: v for k, v in (("uid", uid), ("resourceVersion", resource_version)) if v}
        if pre:
            options["preconditions"] = pre
        if propagation_policy:
            options["propagationPolicy"] = propagation_policy
        if dry_run:
            options["dryRun"] = ["All"]
        return await self._json("DELETE", resource.path(namespace, name), body=options)

    # ---- watch ----------------------------------------------------------------------------------

    def watch(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        name: str | None = None,
        resource_version: str | None = None,
        label_selector: Selector | None = None,
        field_selector: Selector | None = None,
        allow_bookmarks: bool = True,
        timeout_seconds: int | None = None,
        idle_timeout: float | None = None,
        catch_up: bool = False,
    ) -> WatchStream:
        """A stream of :class:`WatchEvent` for every change after ``resource_version`` (without
        one, or with ``"0"``: ADDED for each existing object first).

        ``idle_timeout`` bounds the wait for each next byte: a stream that stays silent longer
        (no event and no bookmark) raises :class:`IdleTimeout`. An ERROR event raises its typed
        error (:class:`Expired` when the revision was compacted), as does an HTTP error at start.
        Use it as ``async with client.watch(...) as events: async for event in events: ...``.

        ``catch_up`` (setpoint's poll) ends the stream once it has delivered every change up to
        the server's revision at the time of the request, with a BOOKMARK at that revision.
        """
        params: dict[str, str] = {"watch": "1"}
        if resource_version is not None:
            params["resourceVersion"] = resource_version
        if (ls := format_selector(label_selector)) is not None:
            params["labelSelector"] = ls
        if (fs := format_selector(field_selector)) is not None:
            params["fieldSelector"] = fs
        if allow_bookmarks:
            params["allowWatchBookmarks"] = "true"
        if timeout_seconds is not None:
            params["timeoutSeconds"] = str(int(timeout_seconds))
        # A peer that stays silent through the TLS handshake is as dead as one that goes silent
        # mid-stream: the handshake falls under httpx's connect timeout, so bound it the same way.
        connect = self.config.timeout if idle_timeout is None else min(self.config.timeout, idle_timeout)
        timeout = httpx.Timeout(self.config.timeout, read=idle_timeout, connect=connect)
        if catch_up:
            params["catchUp"] = "true"
        return WatchStream(self, resource.path(namespace, name), params, timeout)

    async def transfer_info(self) -> dict[str, Any]:
        """What the server offers for moving desired state to agents (``GET /transfer``): the
        transports, and for the NATS ones where to find NATS."""
        return await self._json("GET", "/transfer")

    # ---- discovery ------------------------------------------------------------------------------

    async def get_document(self, path: str) -> dict[str, Any]:
        """The JSON document at a path that is not a resource: discovery (``/api``, ``/apis``,
        ``/apis/GROUP/VERSION``), ``/version``, ``/openapi/v3``. Errors as for every call."""
        return await self._json("GET", path)

    async def resource_for(self, api_version: str, kind: str) -> Resource:
        """The :class:`Resource` serving ``kind`` in ``api_version`` (``"example.com/v1"``, ``"v1"``),
        from the server's discovery documents; cached per group/version, refreshed once on a miss
        (a kind whose CRD was just created)."""
        group, _, version = api_version.rpartition("/")
        for refresh in (False, True):
            resources = await self._discover(api_version, refresh)
            for r in resources:
                if r.get("kind") == kind and "/" not in str(r.get("name", "")):
                    return Resource(group, version, str(r["name"]), namespaced=bool(r.get("namespaced")),
                                    kind=kind)
        raise NotFound(404, "NotFound", f"the server does not serve kind {kind!r} in {api_version!r}")

    async def subresources(self, resource: Resource) -> set[str]:
        """The subresources the server serves for ``resource`` (``{"status", "scale"}``), from
        the discovery document :meth:`resource_for` reads (cached alike)."""
        resources = await self._discover(resource.api_version, False)
        prefix = f"{resource.plural}/"
        return {str(r["name"])[len(prefix):] for r in resources if str(r.get("name", "")).startswith(prefix)}

    async def _discover(self, api_version: str, refresh: bool) -> builtins.list[dict[str, Any]]:
        if refresh or api_version not in self._discovery:
            path = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
            doc = await self.get_document(path)
            resources = doc.get("resources")
            self._discovery[api_version] = [r for r in resources if isinstance(r, dict)] \
                if isinstance(resources, list) else []
        return self._discovery[api_version]


def _dry_run(dry_run: bool) -> dict[str, str] | None:
    return {"dryRun": "All"} if dry_run else None


def _write_params(dry_run: bool, field_validation: FieldValidation | None) -> dict[str, str] | None:
    params = _dry_run(dry_run) or {}
    if field_validation is not None:
        params["fieldValidation"] = field_validation
    return params or None


def _warning_text(header: str) -> str:
    """The text of a ``299 - "text"`` Warning header (RFC 7234), unquoted as kubectl shows it."""
    code, _, rest = header.partition(" ")
    agent, _, quoted = rest.partition(" ")
    if code.isdigit() and agent and len(quoted) >= 2 and quoted[0] == quoted[-1] == '"':
        return re.sub(r"\\(.)", r"\1", quoted[1:-1])
    return header


class WatchStream:
    """An open (or about to be opened) watch. Iterate it for :class:`WatchEvent` values.

    Opening sends the request and checks the status (HTTP errors raise at once, e.g. 410
    :class:`Expired`). Iteration ends when the server ends the stream (``timeoutSeconds``, a
    watcher cut off for falling behind, shutdown); the caller resumes from the last
    ``resource_version`` it saw.
    """

    def __init__(self, client: Client, path: str, params: dict[str, str], timeout: httpx.Timeout) -> None:
        self.path = path
        self.params = params
        self.response: httpx.Response | None = None
        self._client = client
        self._timeout = timeout

    async def open(self) -> WatchStream:
        if self.response is None:
            self.response = await self._client._send("GET", self.path, params=self.params,
                                                     timeout=self._timeout, stream=True)
        return self

    async def aclose(self) -> None:
        if self.response is not None:
            await self.response.aclose()

    async def __aenter__(self) -> WatchStream:
        return await self.open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self._events()

    async def raw(self) -> AsyncIterator[RawWatchEvent]:
        """The events with each object left as the JSON the server sent, for a cache that keeps
        objects that way until they are read. ERROR events raise their typed error, as in
        iteration."""
        await self.open()
        assert self.response is not None
        try:
            async for line in _lines(self.response, self.path):
                try:
                    event = _raw_event_decoder.decode(line)
                    if event.type == "ERROR":
                        status = _decode.decode(event.object)
                except (msgspec.DecodeError, msgspec.ValidationError) as e:
                    raise ConnectionFailed(f"watch {self.path}: undecodable event: {e}") from e
                if memoryview(event.object)[:1].tobytes() != b"{":  # null, a list: no object (iteration refuses it too)
                    raise ConnectionFailed(f"watch {self.path}: an event whose object is not a JSON object")
                if event.type == "ERROR":
                    code = status.get("code") if isinstance(status, dict) else None
                    raise from_status(code if isinstance(code, int) else 500, status)
                yield event
        finally:
            await self.aclose()

    async def _events(self) -> AsyncIterator[WatchEvent]:
        await self.open()
        assert self.response is not None
        try:
            async for line in _lines(self.response, self.path):
                try:
                    event = _event_decoder.decode(line)
                except (msgspec.DecodeError, msgspec.ValidationError) as e:
                    raise ConnectionFailed(f"watch {self.path}: undecodable event: {e}") from e
                if event.type == "ERROR":
                    code = event.object.get("code")
                    raise from_status(code if isinstance(code, int) else 500, event.object)
                yield event
        finally:
            await self.aclose()


async def _lines(response: httpx.Response, path: str) -> AsyncIterator[bytes]:
    """Newline-delimited lines of a streaming response, with a bounded buffer."""
    buf = bytearray()
    try:
        async for chunk in response.aiter_raw():
            start = 0
            while (nl := chunk.find(b"\n", start)) >= 0:
                if buf:
                    buf += chunk[start:nl]
                    line = bytes(buf)
                    buf.clear()
                else:
                    line = chunk[start:nl]
                start = nl + 1
                if line.strip():
                    yield line
            buf += chunk[start:]
            if len(buf) > MAX_EVENT_BYTES:
                raise ConnectionFailed(f"watch {path}: an event exceeds {MAX_EVENT_BYTES} bytes")
    except httpx.ReadTimeout as e:
        raise IdleTimeout(f"watch {path}: no bytes within the idle timeout") from e
    except httpx.TransportError as e:
        raise ConnectionFailed(f"watch {path}: {type(e).__name__}: {e}") from e
    if buf.strip():
        raise ConnectionFailed(f"watch {path}: the stream ended in the middle of an event")


__all__ = ["Client", "ObjectList", "PatchType", "RawObjectList", "RawWatchEvent", "Resource", "Selector",
           "WatchEvent", "WatchStream", "format_selector"]
