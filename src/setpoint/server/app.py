"""The API server: authentication, authorization, routing, and the lifecycle of what it owns.

``Server`` owns the backend, the watch cache, the compactor and the namespace finalizer; it starts
them in the ASGI lifespan and stops them in reverse order, so nothing outlives it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from setpoint.crds import bundled_crds
from setpoint.server import idempotency
from setpoint.server.admission import LEASE_NAMESPACE
from setpoint.server.auth import (
    ABACAuthorizer,
    AlwaysAllow,
    Attributes,
    TokenAuthenticator,
    User,
    forbidden_message,
)
from setpoint.server.builtins import builtin_types
from setpoint.server.discovery import DiscoveryCache, aggregated_discovery, discovery, version_info
from setpoint.server.errors import (
    APIError,
    Forbidden,
    InternalError,
    NotAcceptable,
    NotFound,
    ServiceUnavailable,
)
from setpoint.server.gc import GarbageCollector
from setpoint.server.handlers import ResourceHandlers, json_response
from setpoint.server.metrics import Metrics
from setpoint.server.namespaces import NamespaceFinalizer
from setpoint.server.negotiation import DISCOVERY_V2_MEDIA, wants_aggregated_discovery
from setpoint.server.objects import decode_stored, for_storage, new_uid, now
from setpoint.server.openapi import OpenAPI
from setpoint.server.paths import parse_request
from setpoint.server.publisher import NatsPublisher, public_url
from setpoint.server.requests import APIRequest
from setpoint.server.resources import CRD_GROUP, Registry
from setpoint.server.schema import compile_schema
from setpoint.server.settings import Settings
from setpoint.server.strategies.crd import install as install_crd
from setpoint.server.watchcache import WatchCache
from setpoint.store import Backend, KeyExists, RevisionMismatch, StoreError, Unavailable
from setpoint.store.compactor import Compactor

log = logging.getLogger(__name__)

API_PREFIXES = ("/api/", "/apis/", "/api", "/apis", "/version")
_NO_QUERY: dict[str, str] = {}


@dataclass
class ServerOptions:
    token_file: Path | None = None  # None: no authentication (only for embedding in tests)
    policy_file: Path | None = None  # None: every authenticated user may do everything
    history_revisions: int = 100_000
    history_seconds: float = 3600.0
    compact_interval: float = 60.0
    watch_cache_window: int = 20_000
    watcher_queue: int = 1_000
    watch_fast_forward_keys: int = 100_000  # 0: a watcher that falls behind is cut off at once
    nats_url: str | None = None  # publish interrupts and commands for the NATS transfers
    nats_publish: bool = True  # False: another process of this server publishes (--workers); only say where
    header_timeout: float = 10.0  # seconds a connection has to send a request's headers
    max_connections_per_client: int = 512  # open connections one client address may hold
    nats_prefix: str = "setpoint"  # the first token of every subject: one per control plane on a shared NATS
    idempotency_ttl: float = 24 * 3600.0
    settings: Settings = field(default_factory=Settings)
    server_address: str = "127.0.0.1:6443"
    on_ready: Callable[[], None] | None = None


class Server:
    def __init__(self, backend: Backend, options: ServerOptions) -> None:
        self.backend = backend
        self.options = options
        self.metrics = Metrics()
        self._latency: dict[tuple[str, str, str, int], Any] = {}  # label values -> histogram child
        self.registry = Registry(builtin_types(compile_schema))
        self.cache = WatchCache(backend, window=options.watch_cache_window,
                                watcher_queue=options.watcher_queue,
                                fast_forward_keys=options.watch_fast_forward_keys)
        self.handlers = ResourceHandlers(
            backend, self.cache, self.registry,
            idempotency.IdempotencyCache(ttl=options.idempotency_ttl), options.settings,
        )
        self.authn = TokenAuthenticator.from_file(options.token_file) if options.token_file else None
        self.authz: ABACAuthorizer | AlwaysAllow = (
            ABACAuthorizer.from_file(options.policy_file) if options.policy_file else AlwaysAllow()
        )
        self.compactor = Compactor(backend, keep_revisions=options.history_revisions,
                                   keep_seconds=options.history_seconds,
                                   interval=options.compact_interval)
        self.namespaces = NamespaceFinalizer(self.handlers)
        self.gc = GarbageCollector(self.handlers)
        self.metrics.track_gc(lambda: float(len(self.gc.skipped)))
        self.discovery = DiscoveryCache(self.registry)
        self.publisher = (NatsPublisher(options.nats_url, self.cache, prefix=options.nats_prefix)
                          if options.nats_url and options.nats_publish else None)
        self.openapi = OpenAPI(self.registry)
        self.metrics.track_revision(lambda: float(self.cache.revision))
        self.metrics.track_cache(self.cache)
        if hasattr(backend, "on_commit"):
            backend.on_commit = self.metrics.batch_size.observe
        self.starlette = Starlette(
            routes=[
                Route("/healthz", self.healthz, methods=["GET", "HEAD"]),
                Route("/livez", self.healthz, methods=["GET", "HEAD"]),
                Route("/readyz", self.readyz, methods=["GET", "HEAD"]),
                Route("/metrics", self.metrics_endpoint, methods=["GET"]),
                Route("/transfer", self.transfer_endpoint, methods=["GET"]),
                Route("/openapi/{path:path}", self.openapi_endpoint, methods=["GET", "HEAD"]),
                # The dashboard: static files only; every request it makes is an API request,
                # authenticated and authorized like any other.
                Route("/ui", lambda request: RedirectResponse("/ui/"), methods=["GET", "HEAD"]),
                Mount("/ui", StaticFiles(packages=[("setpoint.server", "ui")], html=True), name="ui"),
                Route("/{path:path}", self.endpoint,
                      methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]),
            ],
            lifespan=self.lifespan,
        )

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point. API requests, the hot path, go straight to :meth:`endpoint`;
        Starlette's router and middleware serve the rest (health, metrics, lifespan)."""
        if scope["type"] == "http" and scope["path"].startswith(API_PREFIXES):
            request = APIRequest(scope, receive, send)
            response = await self.endpoint(request)
            await response(scope, receive, send)
            return
        await self.starlette(scope, receive, send)

    # ---- lifecycle ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def start(self) -> None:
        await self.backend.start()
        await self.cache.start()
        await self._ensure_namespace("default")
        await self._ensure_namespace(LEASE_NAMESPACE)
        await self._install_bundled_crds()
        self.compactor.start()
        self.namespaces.start()
        self.gc.start()
        if self.publisher is not None:
            await self.publisher.start()
        if self.options.on_ready is not None:
            self.options.on_ready()

    def begin_shutdown(self) -> None:
        """End every open watch now, cleanly, so clients reconnect elsewhere at once instead of
        being held until the graceful-shutdown limit and then cut mid-stream."""
        self.cache.close_watchers("the server is shutting down")

    async def stop(self) -> None:
        if self.publisher is not None:
            await self.publisher.stop()
        await self.gc.stop()
        await self.namespaces.stop()
        await self.compactor.stop()
        await self.cache.stop()
        await self.backend.close()

    async def _install_bundled_crds(self) -> None:
        """setpoint's own kinds (group setpoint.dev) are CRDs shipped with the package; a newer
        release updates their spec in place."""
        rtype = self.registry.by_group_resource(CRD_GROUP, "customresourcedefinitions")
        assert rtype is not None
        for crd in bundled_crds():
            name = crd["metadata"]["name"]
            key = rtype.key("", name)
            current = await self.backend.get(key)
            if current is not None:
                stored = decode_stored(current)
                if stored.get("spec") == crd["spec"]:
                    continue
                stored["spec"] = crd["spec"]
                with contextlib.suppress(RevisionMismatch):
                    await self.backend.update(key, for_storage(stored), current.mod_revision)
                install_crd(self.registry, "MODIFIED", stored)
                continue
            obj = copy.deepcopy(crd)
            obj["metadata"].update(uid=new_uid(), creationTimestamp=now(), generation=1)
            rtype.strategy.prepare_create(obj)
            with contextlib.suppress(KeyExists):
                await self.backend.create(key, for_storage(obj))
            install_crd(self.registry, "ADDED", obj)

    async def _ensure_namespace(self, name: str) -> None:
        rtype = self.registry.by_group_resource("", "namespaces")
        assert rtype is not None
        obj: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "uid": new_uid(), "creationTimestamp": now(),
                         "generation": 1, "labels": {"kubernetes.io/metadata.name": name}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"},
        }
        with contextlib.suppress(KeyExists):
            await self.backend.create(rtype.key("", name), for_storage(obj))

    # ---- endpoints ----------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(self, request: Request) -> Response:
        if not self.cache.ready.is_set():
            return PlainTextResponse("watch cache not ready", 503)
        try:
            await self.backend.current_revision()
        except StoreError as e:
            return PlainTextResponse(f"store unavailable: {e}", 503)
        return PlainTextResponse("ok")

    async def metrics_endpoint(self, request: Request) -> Response:
        try:
            self._authenticate(request, "/metrics")
        except APIError as e:
            return self._error(e)
        return Response(self.metrics.render(), media_type=self.metrics.content_type)

    async def openapi_endpoint(self, request: Request) -> Response:
        path = request.scope["path"]
        try:
            self._authenticate(request, path)
            if path == "/openapi/v2":
                doc = self.openapi.v2()
            elif path == "/openapi/v3":
                doc = self.openapi.v3_root()
            elif path.startswith("/openapi/v3/"):
                found = self.openapi.v3(path[len("/openapi/v3/"):])
                if found is None:
                    raise NotFound("the server could not find the requested resource")
                doc = found
            else:
                raise NotFound("the server could not find the requested resource")
        except APIError as e:
            return self._error(e)
        accept = request.headers.get("accept", "")
        if "protobuf" in accept and "json" not in accept and "*/*" not in accept:
            # Clients that ask for the protobuf form only fall back to JSON documents on 406.
            return self._error(NotAcceptable("only application/json is served for OpenAPI documents"))
        headers = {"ETag": f'"{doc.etag}"', "Vary": "Accept"}
        if request.query_params.get("hash"):
            headers["Cache-Control"] = "public, immutable"
        if request.headers.get("if-none-match", "").strip('"') == doc.etag:
            return Response(status_code=304, headers=headers)
        return Response(doc.body, media_type="application/json", headers=headers)

    async def transfer_endpoint(self, request: Request) -> Response:
        """Which transfers of desired state this server offers, so an agent can refuse at start
        a transfer that would never deliver anything (``setpoint agent --transfer``)."""
        try:
            self._authenticate(request, "/transfer")
        except APIError as e:
            return self._error(e)
        doc: dict[str, Any] = {"kind": "TransferInfo", "apiVersion": "setpoint.dev/v1",
                               "transports": ["watch", "poll"]}
        if self.options.nats_url:
            doc["transports"] += ["interrupt", "command"]
            nats: dict[str, Any] = {"url": public_url(self.options.nats_url), "prefix": self.options.nats_prefix}
            if self.publisher is not None:  # else another process of this server publishes (--workers)
                nats.update(url=public_url(self.publisher.url), prefix=self.publisher.subjects.prefix,
                            connected=self.publisher.connected, backlog=self.publisher.backlog)
            doc["nats"] = nats
        return json_response(doc)

    def _authenticate(self, request: Request, path: str) -> User | None:
        if self.authn is None:
            return None
        user = self.authn.authenticate(request.headers.get("authorization"))
        attrs = Attributes(user=user, verb=request.method.lower(), namespace="", resource="",
                           api_group="", subresource="", name="", path=path, resource_request=False)
        if not self.authz.authorize(attrs):
            raise Forbidden(forbidden_message(attrs))
        return user

    async def endpoint(self, request: Request) -> Response:
        started = time.perf_counter()
        path = request.scope["path"]
        query = request.query_params if request.scope["query_string"] else _NO_QUERY
        info = parse_request(request.method, path, query)
        code = 500
        try:
            if path == "/version" or path == "/version/":
                response = json_response(version_info())
            else:
                response = await self._serve(request, info)
            code = response.status_code
            return response
        except APIError as e:
            code = e.code
            return self._error(e)
        except Unavailable as e:
            code = 503
            return self._error(ServiceUnavailable(f"the store is unavailable: {e}", retry_after=1))
        except StoreError as e:
            log.exception("store error on %s %s", request.method, path)
            return self._error(InternalError(f"store error: {e}"))
        except Exception as e:
            log.exception("unexpected error on %s %s", request.method, path)
            return self._error(InternalError(
                f"an error on the server ({type(e).__name__}) has prevented the request from succeeding"))
        finally:
            key = (info.verb, info.group, info.resource, code)
            child = self._latency.get(key)
            if child is None:
                child = self._latency_child(info, code)
                if len(self._latency) < 4096:
                    self._latency[key] = child
            child.observe(time.perf_counter() - started)

    def _latency_child(self, info: Any, code: int) -> Any:
        """The histogram child for a request. Group and resource come from the URL: ones the
        server does not serve are labelled "unknown", so that requests for made-up paths
        cannot add time series without bound."""
        group, resource = info.group, info.resource or ""
        if resource and self.registry.by_group_resource(group, resource) is None:
            group = resource = "unknown"
        elif group and not resource and group not in self.registry.groups():
            group = "unknown"
        return self.metrics.request_latency.labels(info.verb.upper(), group, resource, str(code))

    def _error(self, e: APIError) -> Response:
        response = json_response(e.status(), e.code)
        if e.retry_after is not None:
            response.headers["Retry-After"] = str(e.retry_after)
        return response

    async def _serve(self, request: Request, info: Any) -> Response:
        user: User | None = None
        if self.authn is not None:
            user = self.authn.authenticate(request.headers.get("authorization"))
            request.scope["setpoint.user"] = user.name
            attrs = Attributes(
                user=user, verb=info.verb, namespace=info.namespace, resource=info.resource,
                api_group=info.group, subresource=info.subresource, name=info.name,
                path=info.path, resource_request=info.resource_request,
            )
            if not self.authz.authorize(attrs):
                raise Forbidden(forbidden_message(attrs), details_name=info.name or None,
                                details_kind=info.resource or None,
                                details_group=info.group or None)
        if info.resource_request:
            return await self.handlers.handle(request, info, user)
        if info.api_prefix and request.method in ("GET", "HEAD"):
            accept = request.headers.get("accept")
            if not info.group and not info.version and wants_aggregated_discovery(accept):
                legacy = info.api_prefix == "api"
                body = self.discovery.get(("aggregated", info.api_prefix),
                                          lambda: aggregated_discovery(self.registry, legacy))
                return Response(body, media_type=DISCOVERY_V2_MEDIA, headers={"Vary": "Accept"})
            body = self.discovery.get(
                (info.api_prefix, info.group, info.version),
                lambda: discovery(info, self.registry, self.options.server_address))
            return Response(body, media_type="application/json", headers={"Vary": "Accept"})
        raise NotFound("the server could not find the requested resource")
