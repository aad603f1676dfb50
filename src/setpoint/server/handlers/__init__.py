"""The verbs on resources, one module each (``get``, ``list``, ``watch``, ``create``, ``update``
for update and patch, ``delete``, and the ``scale`` subresource) over shared plumbing
(``context``); what a kind adds is its strategy (``server/strategies/``).

Every write goes through the store with an expected revision, so concurrent writers never lose
each other's changes: a client that sent a resourceVersion gets 409 when it is stale, and the
server's own read-modify-write loops (patch, finalizers) retry on a fresh read instead.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from setpoint.server import idempotency
from setpoint.server.admission import admit_node_read, assigned_to, node_of
from setpoint.server.errors import Forbidden, MethodNotAllowed, NotFound
from setpoint.server.handlers import create, delete, get, list, scale, update, watch
from setpoint.server.handlers.context import Context
from setpoint.server.handlers.options import WriteOptions, write_options
from setpoint.server.handlers.response import JSONBody, json_response, warning_header
from setpoint.server.handlers.update import Mutate
from setpoint.server.paths import RequestInfo
from setpoint.server.resources import CRD_GROUP, Registry, ResourceType
from setpoint.server.settings import Settings
from setpoint.server.strategies.crd import install as install_crd
from setpoint.server.watchcache import WatchCache
from setpoint.store import Backend

__all__ = ["JSONBody", "ResourceHandlers", "Settings", "WriteOptions", "json_response", "warning_header"]

_WRITES = {
    "create": create.create,
    "update": update.update,
    "patch": update.patch,
    "delete": delete.delete,
    "deletecollection": delete.delete_collection,
}


class ResourceHandlers:
    """Resolves a request to its resource type, admits a node's reads, and hands the request
    to its verb."""

    def __init__(self, backend: Backend, cache: WatchCache, registry: Registry,
                 idempotency_cache: idempotency.IdempotencyCache, settings: Settings) -> None:
        self.ctx = Context(backend, cache, registry, idempotency_cache, settings)
        self.backend = backend
        self.cache = cache
        self.registry = registry
        # CRDs written by another server (or before this one started) reach the registry here.
        cache.add_hook(f"/registry/{CRD_GROUP}/customresourcedefinitions/",
                       lambda etype, obj, prev: install_crd(registry, etype, obj))

    def resolve(self, info: RequestInfo) -> ResourceType:
        rtype = self.registry.lookup(info.group, info.version, info.resource)
        if rtype is None:
            raise NotFound("the server could not find the requested resource")
        if rtype.namespaced and info.resource != "namespaces":
            if not info.namespace and info.verb not in ("list", "watch", "deletecollection"):
                raise NotFound("the server could not find the requested resource")
        elif info.namespace and not (rtype.plural == "namespaces" and info.name == info.namespace):
            raise NotFound("the server could not find the requested resource")
        if info.subresource and not (info.subresource == "status" and rtype.status_subresource) and not (
                info.subresource == "scale" and rtype.scale is not None):
            raise NotFound("the server could not find the requested resource")
        return rtype

    async def handle(self, request: Request, info: RequestInfo, user: Any = None) -> Response:
        rtype = self.resolve(info)
        if not rtype.namespaced and info.namespace:
            info = info._replace(namespace="")  # /api/v1/namespaces/NAME names the object
        verb = info.verb
        ctx = self.ctx
        if verb in ("get", "list", "watch"):
            if user is not None and (node := node_of(user)) is not None:
                self._admit_node_read(request, info, rtype, node)
            if info.subresource == "scale":
                return await scale.scale_subresource(ctx, request, info, rtype, WriteOptions(user=user))
            if verb == "get":
                return await get.get(ctx, request, info, rtype)
            if verb == "list":
                return await list.list_(ctx, request, info, rtype)
            return await watch.watch(ctx, request, info, rtype)
        opts = write_options(request, user, verb)
        if info.subresource == "scale":
            response = await scale.scale_subresource(ctx, request, info, rtype, opts)
        else:
            handler = _WRITES.get(verb)
            if handler is None:
                raise MethodNotAllowed(f"the server does not allow this method on the requested resource ({verb})")
            if verb == "create" and info.name and not info.subresource:
                raise NotFound("the server could not find the requested resource")
            response = await handler(ctx, request, info, rtype, opts)
        for w in opts.warnings:
            response.headers.append("Warning", w)
        return response

    def _admit_node_read(self, request: Request, info: RequestInfo, rtype: ResourceType, node: str) -> None:
        if info.name and info.verb == "get":
            may = rtype.strategy.node_may_get(self.cache, rtype, node, info.namespace, info.name)
            if may is not None:
                if may:
                    return
                raise Forbidden(f'node "{node}" cannot get {rtype.singular} {info.name!r}: nothing assigned to '
                                "it refers to it", details_name=info.name, details_kind=rtype.plural)
        fields = request.query_params.get("fieldSelector") if request.scope["query_string"] else None
        if admit_node_read(node, info.verb, rtype, info.namespace, info.name, fields) is None:
            cached = self.cache.get(rtype.key(info.namespace, info.name))
            if not assigned_to(cached.obj if cached is not None else None, node):
                raise Forbidden(f'node "{node}" cannot {info.verb} {rtype.group_resource} {info.name!r}: '
                                "it is not assigned to this node", details_name=info.name,
                                details_kind=rtype.plural, details_group=rtype.group or None)

    # ---- for the server's own controllers (garbage collector, namespace finalizer) ------------

    async def update_object(self, info: RequestInfo, rtype: ResourceType, mutate: Mutate,
                            expected: int | None = None, opts: WriteOptions | None = None) -> tuple[int, bytes]:
        return await update.update_object(self.ctx, info, rtype, mutate, expected, opts or WriteOptions())

    async def delete_object(self, rtype: ResourceType, namespace: str, name: str, options: dict[str, Any],
                            dry_run: bool = False) -> tuple[int, bytes]:
        return await delete.delete_object(self.ctx, rtype, namespace, name, options, dry_run,
                                          rtype.storage_version)
