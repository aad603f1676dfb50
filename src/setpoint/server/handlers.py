"""The verbs on resources: create, get, list, watch, update, patch, delete, deletecollection.

Every write goes through the store with an expected revision, so concurrent writers never lose
each other's changes: a client that sent a resourceVersion gets 409 when it is stale, and the
server's own read-modify-write loops (patch, finalizers) retry on a fresh read instead.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

import setpoint.transfer.digest as digest
from setpoint.server import bodies, idempotency, managedfields, protobuf, scale, secrets, tables
from setpoint.server.admission import admit_node_read, admit_node_write, assigned_to, node_of
from setpoint.server.errors import (
    AlreadyExists,
    APIError,
    BadRequest,
    Conflict,
    Expired,
    Forbidden,
    Invalid,
    MethodNotAllowed,
    NotFound,
    RequestEntityTooLarge,
    Timeout,
    UnsupportedMediaType,
)
from setpoint.server.negotiation import table_version
from setpoint.server.objects import (
    SYSTEM_FIELDS,
    decode_stored,
    encode,
    ensure_object_shape,
    for_storage,
    generate_name,
    new_uid,
    now,
    plain_json,
    raise_invalid,
    spec_changed,
    validate_metadata,
)
from setpoint.server.patch import json_patch, merge_patch
from setpoint.server.paths import RequestInfo
from setpoint.server.resources import CRD_GROUP, Registry, ResourceType, resource_type_from_crd
from setpoint.server.schema import compile_schema
from setpoint.server.selectors import DEFAULT_FIELDS, FieldSelector, LabelSelector
from setpoint.server.watchcache import SKIPPED_ANNOTATION, WatchCache, WatcherClosed, watch_line
from setpoint.store import (
    Backend,
    Compacted,
    FutureRevision,
    KeyExists,
    KeyNotFound,
    RevisionMismatch,
    StoreError,
)

log = logging.getLogger(__name__)

JSON_MEDIA = "application/json"
# A write without a client precondition (a patch, a finalizer change) retries on a fresh read
# until it lands, as Kubernetes does; the bound only stops a pathological livelock.
MAX_CONFLICT_RETRIES = 200
MAX_PAGE = 1 << 31
NAMESPACE_KEY_PREFIX = "/registry/core/namespaces/"


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


def warning_header(text: str) -> str:
    """A ``Warning: 299`` header value (RFC 7234) as kube-apiserver sends it. The text names
    fields from the request body, which may hold any character: control characters are escaped
    (a raw newline would end the header block) and so is what is not ASCII."""
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    text = _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return '299 - "' + text.encode("ascii", "backslashreplace").decode("ascii") + '"'


class JSONBody(Response):
    """A JSON response from bytes already encoded: what ``Response`` does, without working out
    its headers from scratch for every request."""

    media_type = JSON_MEDIA

    def __init__(self, body: bytes, status_code: int = 200) -> None:
        self.status_code = status_code
        self.background = None
        self.body = body
        self.raw_headers = [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")]


def json_response(body: Any, status: int = 200) -> Response:
    return JSONBody(body if isinstance(body, bytes) else encode(body), status)


class Settings(msgspec.Struct):
    max_body_bytes: int = 3 * 1024 * 1024 // 2
    max_object_bytes: int = 3 * 1024 * 1024 // 2  # etcd's default request limit, as kube keeps to
    watch_max_seconds: float = 1800.0
    bookmark_interval: float = 5.0
    cache_wait_seconds: float = 3.0


class ResourceHandlers:
    def __init__(
        self,
        backend: Backend,
        cache: WatchCache,
        registry: Registry,
        idempotency_cache: idempotency.IdempotencyCache,
        settings: Settings,
    ) -> None:
        self.backend = backend
        self.cache = cache
        self.registry = registry
        self.idem = idempotency_cache
        self.settings = settings
        self._namespace_state: dict[str, tuple[int, bool]] = {}  # namespace -> (revision, terminating)
        cache.add_hook(f"/registry/{CRD_GROUP}/customresourcedefinitions/", self._crd_event)

    # ---- CRDs ---------------------------------------------------------------------------------

    def _crd_event(self, etype: str, obj: dict[str, Any], prev: dict[str, Any] | None) -> None:
        name = obj["metadata"]["name"]
        if etype == "DELETED":
            self.registry.remove_crd(name)
            return
        try:
            self.registry.put_crd(name, resource_type_from_crd(obj, compile_schema))
        except APIError as e:
            log.error("stored CustomResourceDefinition %s is not servable: %s", name, e.message)

    # ---- dispatch -----------------------------------------------------------------------------

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

    async def handle(self, request: Request, info: RequestInfo) -> Response:
        rtype = self.resolve(info)
        if rtype.plural == "namespaces":
            info.namespace = ""
        verb = info.verb
        if verb in ("get", "list", "watch") and info.user is not None:
            node = node_of(info.user)
            if node is not None:
                self._admit_node_read(request, info, rtype, node)
        if info.subresource == "scale":
            return await self.scale(request, info, rtype)
        if verb == "get":
            return await self.get(request, info, rtype)
        if verb == "list":
            return await self.list(request, info, rtype)
        if verb == "watch":
            return await self.watch(request, info, rtype)
        if request.scope["query_string"] and verb in ("create", "update", "patch"):
            q = request.query_params
            fv = q.get("fieldValidation")
            if fv:
                if fv not in ("Ignore", "Warn", "Strict"):
                    raise BadRequest(f'fieldValidation "{fv}" is invalid: must be one of Ignore, Warn or Strict')
                info.field_validation = fv
            info.field_manager = q.get("fieldManager", "")
        if verb == "create":
            if info.name and not info.subresource:
                raise NotFound("the server could not find the requested resource")
            response = await self.create(request, info, rtype)
        elif verb == "update":
            info.user_agent = request.headers.get("user-agent", "")
            response = await self.update(request, info, rtype)
        elif verb == "patch":
            info.user_agent = request.headers.get("user-agent", "")
            response = await self.patch(request, info, rtype)
        elif verb == "delete":
            response = await self.delete(request, info, rtype)
        elif verb == "deletecollection":
            response = await self.delete_collection(request, info, rtype)
        else:
            raise MethodNotAllowed(f"the server does not allow this method on the requested resource ({verb})")
        if info.warnings:
            for w in info.warnings:
                response.headers.append("Warning", w)
        return response

    # ---- helpers ------------------------------------------------------------------------------

    def _admit_node_read(self, request: Request, info: RequestInfo, rtype: ResourceType, node: str) -> None:
        fields = request.query_params.get("fieldSelector") if request.scope["query_string"] else None
        if rtype.plural == "secrets" and not rtype.group and info.name and info.verb == "get":
            # A node reads a Secret only when a ProcessSet assigned to it takes a value from it.
            for co in self.cache.list("/registry/setpoint.dev/processsets/", f"/registry/setpoint.dev/processsets/"
                                      f"{info.namespace}/"):
                if assigned_to(co.obj, node) and secrets.referenced_by(co.obj, info.name):
                    return
            raise Forbidden(f'node "{node}" cannot get secret {info.name!r}: no ProcessSet assigned to it uses it',
                            details_name=info.name, details_kind="secrets")
        if admit_node_read(node, info.verb, rtype, info.namespace, info.name, fields) is None:
            cached = self.cache.get(rtype.key(info.namespace, info.name))
            if not assigned_to(cached.obj if cached is not None else None, node):
                raise Forbidden(f'node "{node}" cannot {info.verb} {rtype.group_resource} {info.name!r}: '
                                "it is not assigned to this node", details_name=info.name,
                                details_kind=rtype.plural, details_group=rtype.group or None)

    def _stored(self, obj: dict[str, Any]) -> bytes:
        """The bytes to store, within the size limit: a small body can still make a large object
        (YAML aliases, patches), and the limit is on what is kept, not only on what was sent."""
        data = for_storage(obj)
        limit = self.settings.max_object_bytes
        if len(data) > limit:
            raise RequestEntityTooLarge(f"the object would be {len(data)} bytes, over the limit of {limit}")
        return data

    def not_found(self, rtype: ResourceType, name: str) -> NotFound:
        return NotFound(f'{rtype.group_resource} "{name}" not found', details_name=name,
                        details_kind=rtype.plural, details_group=rtype.group or None)

    def conflict(self, rtype: ResourceType, name: str) -> Conflict:
        return Conflict(
            f'Operation cannot be fulfilled on {rtype.group_resource} "{name}": the object has been '
            "modified; please apply your changes to the latest version and try again",
            details_name=name, details_kind=rtype.plural, details_group=rtype.group or None,
        )

    def _dry_run(self, request: Request) -> bool:
        if not request.scope["query_string"]:
            return False
        values = request.query_params.getlist("dryRun")
        for v in values:
            if v != "All":
                raise BadRequest(f'Invalid dryRun value "{v}": the only supported value is "All"')
        return bool(values)

    def _check_type_meta(self, obj: dict[str, Any], rtype: ResourceType, version: str) -> None:
        want = rtype.api_version(version)
        api_version = obj.get("apiVersion")
        kind = obj.get("kind")
        if api_version is None and kind is None:
            obj["apiVersion"], obj["kind"] = want, rtype.kind
            return
        if api_version != want or kind != rtype.kind:
            raise BadRequest(
                f"the API version in the data ({api_version}) does not match the expected API "
                f"version ({want})" if api_version != want else
                f"the kind in the data ({kind}) does not match the expected kind ({rtype.kind})"
            )

    def _check_namespace(self, obj: dict[str, Any], rtype: ResourceType, namespace: str) -> None:
        meta = obj["metadata"]
        if not rtype.namespaced:
            meta.pop("namespace", None)
            return
        body_ns = meta.get("namespace")
        if body_ns and body_ns != namespace:
            raise BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        meta["namespace"] = namespace

    async def _namespace_obj(self, namespace: str) -> dict[str, Any] | None:
        cached = self.cache.get(NAMESPACE_KEY_PREFIX + namespace)
        if cached is not None:
            return cached.obj
        kv = await self.backend.get(NAMESPACE_KEY_PREFIX + namespace)
        return decode_stored(kv) if kv is not None else None

    async def _require_namespace(self, namespace: str) -> None:
        cached = self.cache.get(NAMESPACE_KEY_PREFIX + namespace)
        seen = self._namespace_state.get(namespace)
        if cached is not None and seen is not None and seen[0] == cached.revision:
            terminating = seen[1]  # every create checks its namespace: don't decode it each time
        else:
            ns = cached.obj if cached is not None else await self._namespace_obj(namespace)
            if ns is None:
                raise NotFound(f'namespaces "{namespace}" not found', details_name=namespace,
                               details_kind="namespaces")
            terminating = bool(ns["metadata"].get("deletionTimestamp"))
            if cached is not None:
                if len(self._namespace_state) > 10_000:
                    self._namespace_state.clear()
                self._namespace_state[namespace] = (cached.revision, terminating)
        if terminating:
            raise Forbidden(
                f"unable to create new content in namespace {namespace} because it is being terminated",
                details_name=namespace, details_kind="namespaces",
            )

    def _validate(self, rtype: ResourceType, version: str, obj: dict[str, Any],
                  info: RequestInfo | None = None) -> dict[str, Any]:
        validator = rtype.validators.get(version) or rtype.validators.get(rtype.storage_version)
        if validator is not None:
            if info is not None and info.field_validation in ("Strict", "Warn"):
                self._check_unknown_fields(validator, obj, info)
            obj = validator(obj, owned=True)
        causes = validate_metadata(obj, name_is_label=rtype.name_is_label)
        if rtype.plural == "customresourcedefinitions":
            resource_type_from_crd(obj, compile_schema)  # raises Invalid naming the field
        raise_invalid(rtype.kind, rtype.group, obj["metadata"].get("name", ""), causes)
        return obj

    @staticmethod
    def _check_unknown_fields(validator: Any, obj: dict[str, Any], info: RequestInfo) -> None:
        unknown = validator.unknown_fields(obj)
        if not unknown:
            return
        texts = [f'unknown field "{path}"' for path in unknown]
        if info.field_validation == "Strict":
            raise BadRequest("strict decoding error: " + ", ".join(texts))
        if info.warnings is None:
            info.warnings = []
        info.warnings.extend(warning_header(t) for t in texts)

    def _with_version(self, obj: dict[str, Any], rtype: ResourceType, version: str) -> dict[str, Any]:
        if version != rtype.storage_version:
            obj["apiVersion"] = rtype.api_version(version)
        return obj

    @staticmethod
    def _parse_rv(value: str | None, what: str = "resourceVersion") -> int | None:
        if value is None or value == "":
            return None
        try:
            rv = int(value)
        except ValueError:
            raise BadRequest(f'invalid {what} "{value}": must be a decimal revision') from None
        if rv < 0:
            raise BadRequest(f'invalid {what} "{value}": must not be negative')
        return rv

    # ---- get ----------------------------------------------------------------------------------

    async def get(self, request: Request, info: RequestInfo, rtype: ResourceType) -> Response:
        key = rtype.key(info.namespace, info.name)
        rv = request.query_params.get("resourceVersion")
        tv = table_version(request.headers.get("accept"))
        if tv is not None:
            return await self._get_table(request, info, rtype, key, rv, tv)
        if rv == "0":
            cached = self.cache.get(key)
            if cached is None:
                raise self.not_found(rtype, info.name)
            if info.version == rtype.storage_version:
                return json_response(cached.raw)
            return json_response(self._with_version(copy.deepcopy(cached.obj), rtype, info.version))
        return json_response(await self._get_object(rtype, info, key, rv))

    async def _get_object(self, rtype: ResourceType, info: RequestInfo, key: str,
                          rv: str | None) -> dict[str, Any]:
        revision = self._parse_rv(rv) or 0
        try:
            kv = await self.backend.get(key, revision)
        except Compacted as e:
            raise Expired(f"too old resource version: {revision} ({e.compacted + 1})") from None
        except FutureRevision as e:
            raise Timeout(f"Too large resource version: {revision}, current: {e.current}") from None
        if kv is None:
            raise self.not_found(rtype, info.name)
        return self._with_version(decode_stored(kv), rtype, info.version)

    async def _get_table(self, request: Request, info: RequestInfo, rtype: ResourceType, key: str,
                         rv: str | None, tv: str) -> Response:
        include = tables.include_object(request.query_params.get("includeObject"))
        if rv == "0" and (cached := self.cache.get(key)) is not None:
            obj = self._with_version(copy.deepcopy(cached.obj), rtype, info.version)
        else:
            obj = await self._get_object(rtype, info, key, rv)
        spec = tables.table_spec(rtype, info.version)
        return json_response(tables.table(spec, [(obj, None)], table_version=tv, include=include,
                                          resource_version=obj["metadata"].get("resourceVersion", "")))

    # ---- list ---------------------------------------------------------------------------------

    def _selectors(
        self, request: Request, rtype: ResourceType
    ) -> tuple[LabelSelector | None, FieldSelector | None]:
        ls = request.query_params.get("labelSelector")
        fs = request.query_params.get("fieldSelector")
        label = LabelSelector.parse(ls) if ls else None
        field = FieldSelector.parse(fs, DEFAULT_FIELDS | rtype.selectable_fields) if fs else None
        return (label if label is not None and not label.empty else None), field

    def _predicate(
        self, label: LabelSelector | None, field: FieldSelector | None
    ) -> Callable[[dict[str, Any]], bool] | None:
        if label is None and field is None:
            return None

        def pred(obj: dict[str, Any]) -> bool:
            if label is not None and not label.matches(obj["metadata"].get("labels") or {}):
                return False
            return field is None or field.matches(obj)

        return pred

    def _scope(self, info: RequestInfo, rtype: ResourceType, field: FieldSelector | None) -> str:
        namespace = info.namespace
        if field is not None and rtype.namespaced and not namespace:
            pinned = field.exact("metadata.namespace")
            if pinned:
                namespace = pinned
        return rtype.list_prefix(namespace)

    @staticmethod
    def _encode_continue(revision: int, key: str) -> str:
        raw = encode({"v": 1, "rv": revision, "start": key})
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @staticmethod
    def _decode_continue(token: str) -> tuple[int, str]:
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

    def _list_response(self, request: Request, rtype: ResourceType, version: str, revision: int,
                       raws: list[bytes], objs: list[dict[str, Any]] | None,
                       continue_token: str = "") -> Response:
        tv = table_version(request.headers.get("accept"))
        if tv is None:
            return json_response(self._list_body(rtype, version, revision, raws, continue_token))
        include = tables.include_object(request.query_params.get("includeObject"))
        if objs is None:
            objs = [msgspec.json.decode(raw) for raw in raws]
        spec = tables.table_spec(rtype, version)
        return json_response(tables.table(
            spec, list(zip(objs, raws, strict=True)), table_version=tv, include=include,
            resource_version=str(revision), continue_token=continue_token))

    def _list_body(
        self,
        rtype: ResourceType,
        version: str,
        revision: int,
        items: list[bytes],
        continue_token: str = "",
        remaining: int | None = None,
    ) -> bytes:
        meta: dict[str, Any] = {"resourceVersion": str(revision)}
        if continue_token:
            meta["continue"] = continue_token
            if remaining is not None:
                meta["remainingItemCount"] = remaining
        head = encode({"kind": f"{rtype.kind}List", "apiVersion": rtype.api_version(version),
                       "metadata": meta})
        return head[:-1] + b',"items":[' + b",".join(items) + b"]}"

    async def list(self, request: Request, info: RequestInfo, rtype: ResourceType) -> Response:
        q = request.query_params
        label, field = self._selectors(request, rtype)
        pred = self._predicate(label, field)
        key_prefix = self._scope(info, rtype, field)
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
        rv = self._parse_rv(rv_s)

        if q.get("digest") or q.get("buckets") is not None:
            return self._list_buckets(request, rtype, info.version, key_prefix, pred)
        if token:
            revision, start_after = self._decode_continue(token)
            if revision > self.cache.revision and revision > await self.backend.current_revision():
                raise BadRequest(f'invalid continue token "{token[:64]}": it names a revision this server never had')
            return await self._list_from_store(request, rtype, info.version, key_prefix, pred, limit,
                                               revision, start_after, continuing=True)
        if rv is not None and match != "Exact" and not limit:
            # "any version not older than rv" (rv=0: anything) is what the cache is for.
            if rv > self.cache.revision and not await self.cache.wait_for(
                rv, self.settings.cache_wait_seconds
            ):
                raise Timeout(f"Too large resource version: {rv}, current: {self.cache.revision}")
            return self._list_from_cache(request, rtype, info.version, key_prefix, pred)
        revision = rv if match == "Exact" and rv else 0
        return await self._list_from_store(request, rtype, info.version, key_prefix, pred, limit,
                                           revision, "")

    def _list_buckets(
        self, request: Request, rtype: ResourceType, version: str, key_prefix: str,
        pred: Callable[[dict[str, Any]], bool] | None,
    ) -> Response:
        """setpoint's catch-up for agents with a large cache (``setpoint.transfer.digest``):
        ``?digest=N`` answers the bucket digests of what a list would return, ``?buckets=i,j&
        bucketCount=N`` the list of those buckets only. Both from the cache, like rv=0 lists."""
        q = request.query_params
        raw_n = q.get("digest") or q.get("bucketCount") or ""
        n = int(raw_n) if raw_n.isdigit() else 0
        if not digest.valid_count(n):
            raise BadRequest(f'invalid bucket count "{raw_n}": a power of two up to {digest.MAX_BUCKETS}')
        revision = self.cache.revision
        items = self.cache.list(rtype.key_prefix, key_prefix)
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
            raws = [encode(self._with_version(dict(co.obj), rtype, version)) for co in chosen]
        return self._list_response(request, rtype, version, revision, raws, None)

    def _list_from_cache(
        self, request: Request, rtype: ResourceType, version: str, key_prefix: str,
        pred: Callable[[dict[str, Any]], bool] | None,
    ) -> Response:
        revision = self.cache.revision
        items = self.cache.list(rtype.key_prefix, key_prefix)
        if pred is not None:
            items = [co for co in items if pred(co.obj)]
        if version == rtype.storage_version:
            raws = [co.raw for co in items]
        else:
            raws = [encode(self._with_version(dict(co.obj), rtype, version)) for co in items]
        return self._list_response(request, rtype, version, revision, raws, None)

    async def _list_from_store(
        self, request: Request, rtype: ResourceType, version: str, key_prefix: str,
        pred: Callable[[dict[str, Any]], bool] | None, limit: int, revision: int, start_after: str,
        continuing: bool = False,
    ) -> Response:
        raws: list[bytes] = []
        more = False
        last_key = start_after
        page_size = limit if limit else 0
        try:
            while True:
                page = await self.backend.list(key_prefix, revision=revision, limit=page_size,
                                               start_after=last_key)
                revision = page.revision
                for i, kv in enumerate(page.items):
                    obj = self._with_version(decode_stored(kv), rtype, version)
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
        token = self._encode_continue(revision, last_key) if more else ""
        return self._list_response(request, rtype, version, revision, raws, None, token)

    # ---- watch --------------------------------------------------------------------------------

    async def watch(self, request: Request, info: RequestInfo, rtype: ResourceType) -> Response:
        q = request.query_params
        label, field = self._selectors(request, rtype)
        pred = self._predicate(label, field)
        key_prefix = self._scope(info, rtype, field)
        if info.name:  # GET .../widgets/foo?watch=1 is a watch on one object
            key_prefix = rtype.key(info.namespace, info.name)
            name = info.name
            base = pred

            def pred(o: dict[str, Any]) -> bool:
                return bool(o["metadata"]["name"] == name and (base is None or base(o)))

        rv = self._parse_rv(q.get("resourceVersion"))
        after = rv if rv else None  # "" and "0": start with the current state
        initial_events = q.get("sendInitialEvents", "").lower() in ("1", "true")
        if initial_events:
            # Streaming list (watch-list): the current state as ADDED events, then a bookmark
            # marking its end, then changes. The state is at least as new as the request's
            # resourceVersion, or as the store when it gives none (a consistent read).
            if q.get("resourceVersionMatch") != "NotOlderThan":
                raise_invalid("ListOptions", "", "", [(
                    "FieldValueForbidden", "Forbidden: sendInitialEvents requires setting "
                    "resourceVersionMatch to NotOlderThan", "resourceVersionMatch")])
            want = rv if rv else await self.backend.current_revision()
            if want > self.cache.revision and not await self.cache.wait_for(
                    want, self.settings.cache_wait_seconds):
                raise Timeout(f"Too large resource version: {want}, current: {self.cache.revision}")
            after = None
        if after is not None:
            compacted = await self.backend.compacted_revision()
            if after < compacted:
                raise Expired(f"too old resource version: {after} ({compacted + 1})")
        until: int | None = None
        if q.get("catchUp", "").lower() in ("1", "true"):
            # setpoint's poll: every change after resourceVersion up to now, then a bookmark at
            # the revision reached, then the end. "Nothing changed" is that one bookmark.
            until = await self.backend.current_revision()
            if until > self.cache.revision and not await self.cache.wait_for(
                    until, self.settings.cache_wait_seconds):
                raise Timeout(f"Too large resource version: {until}, current: {self.cache.revision}")
        timeout = self.settings.watch_max_seconds
        ts = q.get("timeoutSeconds")
        if ts:
            # An integer number of seconds, as kube takes it (int64): "nan", "inf" or "1e9" are
            # a 400; 0 means the server's default, not "end after the first event".
            if not ts.lstrip("-").isdigit():
                raise BadRequest(f'invalid timeoutSeconds "{ts[:32]}": must be an integer')
            seconds = int(ts)
            if seconds < 0:
                raise BadRequest(f'invalid timeoutSeconds "{ts[:32]}": must not be negative')
            if seconds:
                timeout = min(float(seconds), timeout)
        bookmarks = q.get("allowWatchBookmarks", "").lower() in ("1", "true")
        # The tick is also when the deadline is checked, so it never exceeds the timeout.
        tick = min(self.settings.bookmark_interval if bookmarks else 30.0, max(timeout, 0.05))
        bookmark_head = (
            b'{"type":"BOOKMARK","object":{"kind":"' + rtype.kind.encode() + b'","apiVersion":"'
            + rtype.api_version(info.version).encode() + b'","metadata":{"resourceVersion":"'
        )
        convert = info.version != rtype.storage_version
        api_version = rtype.api_version(info.version)
        stream = self._watch_stream(rtype.key_prefix, key_prefix, pred, after, timeout, tick, bookmarks,
                                    bookmark_head, convert, api_version, initial_events, until)
        tv = table_version(request.headers.get("accept"))
        if tv is not None:
            include = tables.include_object(q.get("includeObject"))
            stream = self._table_stream(stream, tables.table_spec(rtype, info.version), tv, include)
        return StreamingResponse(stream, media_type=JSON_MEDIA)

    @staticmethod
    def _with_api_version(obj: dict[str, Any], api_version: str) -> dict[str, Any]:
        obj["apiVersion"] = api_version
        return obj

    @staticmethod
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

    async def _watch_stream(
        self, prefix: str, key_prefix: str, pred: Callable[[dict[str, Any]], bool] | None,
        after: int | None, timeout: float, tick: float, bookmarks: bool, bookmark_head: bytes,
        convert: bool, api_version: str, initial_events: bool = False, until: int | None = None,
    ) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last_sent = after or 0
        if initial_events:
            # Read the state and its revision in one step (no await between), then follow on.
            after = self.cache.revision
            initial = [co.raw for co in self.cache.list(prefix, key_prefix)
                       if pred is None or pred(co.obj)]
            for raw in initial:
                if convert:
                    raw = encode(self._with_api_version(msgspec.json.decode(raw), api_version))
                yield watch_line("ADDED", raw)
            yield (bookmark_head + str(after).encode()
                   + b'","annotations":{"k8s.io/initial-events-end":"true"}}}}\n')
            last_sent = after
        try:
            async for line, rev, skipped in self.cache.watch(prefix, key_prefix, pred, after, tick=tick,
                                                             until=until):
                if skipped:
                    # The end of a fast-forward: everything up to rev was sent, newest state per
                    # key; a client that counts can see how much it was spared.
                    if bookmarks:
                        yield (bookmark_head + str(rev).encode() + b'","annotations":{"'
                               + SKIPPED_ANNOTATION + b'":"' + str(skipped).encode() + b'"}}}}\n')
                    last_sent = max(rev, last_sent)
                elif line:
                    if convert:
                        ev = msgspec.json.decode(line)
                        ev["object"]["apiVersion"] = api_version
                        line = encode(ev) + b"\n"
                    yield line
                    last_sent = rev
                elif until is not None and rev >= until:
                    yield bookmark_head + str(max(rev, last_sent)).encode() + b'"}}}\n'  # caught up
                    return
                elif bookmarks:
                    # Also when nothing changed: a bookmark every tick is the heartbeat that lets a
                    # client tell a quiet stream from a dead connection.
                    rev = max(rev, last_sent)
                    yield bookmark_head + str(rev).encode() + b'"}}}\n'
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

    # ---- create -------------------------------------------------------------------------------

    async def _body_object(self, request: Request) -> tuple[bytes, dict[str, Any]]:
        body = await bodies.read_body(request, self.settings.max_body_bytes)
        ctype = bodies.media_type(request)
        if ctype == protobuf.MEDIA:
            return body, ensure_object_shape(protobuf.decode(body))
        decoded = bodies.decode(body, ctype)
        json_body = ctype in (bodies.JSON, "") and body[:1] == b"{"
        obj = ensure_object_shape(decoded, walk=not (json_body and plain_json(body)))
        return body, obj

    async def create(self, request: Request, info: RequestInfo, rtype: ResourceType) -> Response:
        body, obj = await self._body_object(request)
        dry_run = self._dry_run(request)
        key_header = request.headers.get("idempotency-key")
        if not key_header:
            status, out = await self._create(obj, info, rtype, dry_run, None)
            return json_response(out, status)
        user = request.scope.get("setpoint.user", "")
        record_key = idempotency.digest(str(user), request.scope["path"], key_header)
        replay = self.idem.begin(record_key, idempotency.digest(body))
        if replay is not None:
            return json_response(replay[1], replay[0])
        try:
            status, out = await self._create(obj, info, rtype, dry_run,
                                             (record_key, idempotency.digest(body)))
        except APIError as e:
            self.idem.finish(record_key, e.code, encode(e.status()))
            raise
        except BaseException:
            self.idem.abandon(record_key)
            raise
        self.idem.finish(record_key, status, out)
        return json_response(out, status)

    async def _create(
        self, obj: dict[str, Any], info: RequestInfo, rtype: ResourceType, dry_run: bool,
        idem: tuple[str, str] | None,
    ) -> tuple[int, bytes]:
        self._check_type_meta(obj, rtype, info.version)
        self._check_namespace(obj, rtype, info.namespace)
        meta = obj["metadata"]
        for f in SYSTEM_FIELDS:
            meta.pop(f, None)
        if idem is not None:
            meta.setdefault("annotations", {})
            if isinstance(meta["annotations"], dict):
                meta["annotations"][idempotency.ANNOTATION] = f"{idem[0][:32]}.{idem[1][:32]}"
        if not meta.get("name"):
            prefix = meta.get("generateName")
            if isinstance(prefix, str) and prefix:
                # With an Idempotency-Key the generated name is derived from it, so a retry that
                # lost its record meets the first object instead of creating a second one.
                meta["name"] = (prefix + idem[0][:5]) if idem else generate_name(prefix)
        meta["uid"] = new_uid()
        meta["creationTimestamp"] = now()
        meta["generation"] = 1
        if rtype.status_subresource and rtype.plural not in ("namespaces",):
            obj.pop("status", None)
        self._builtin_create_defaults(rtype, obj)
        obj = self._validate(rtype, info.version, obj, info)
        if info.field_manager and not info.apply:
            self._track(rtype, info, None, obj)
        name = obj["metadata"]["name"]
        node = node_of(info.user)
        if node is not None:
            admit_node_write(node, "create", rtype, info.namespace, name, "", None)
        if rtype.namespaced:
            await self._require_namespace(info.namespace)
        obj["apiVersion"] = rtype.api_version()
        if dry_run:
            return 201, encode(self._with_version(obj, rtype, info.version))
        key = rtype.key(info.namespace, name)
        try:
            kv = await self.backend.create(key, self._stored(obj))
        except KeyExists:
            if idem is not None:
                existing = await self.backend.get(key)
                if existing is not None:
                    prior = decode_stored(existing)
                    stamp = (prior["metadata"].get("annotations") or {}).get(idempotency.ANNOTATION, "")
                    if stamp == f"{idem[0][:32]}.{idem[1][:32]}":
                        return 201, encode(self._with_version(prior, rtype, info.version))
                    if stamp.startswith(idem[0][:32] + "."):
                        raise Invalid(
                            "Idempotency-Key was already used with a different request body",
                            causes=[("FieldValueInvalid", "reused with a different body",
                                     "Idempotency-Key")],
                        ) from None
            raise AlreadyExists(f'{rtype.group_resource} "{name}" already exists', details_name=name,
                                details_kind=rtype.plural, details_group=rtype.group or None) from None
        obj["metadata"]["resourceVersion"] = str(kv.mod_revision)
        if rtype.plural == "customresourcedefinitions":
            self._crd_event("ADDED", obj, None)
        return 201, encode(self._with_version(obj, rtype, info.version))

    def _builtin_create_defaults(self, rtype: ResourceType, obj: dict[str, Any]) -> None:
        if rtype.plural == "secrets" and not rtype.group:
            secrets.prepare(obj)
        elif rtype.plural == "namespaces" and not rtype.group:
            spec = obj.setdefault("spec", {})
            if isinstance(spec, dict):
                spec.setdefault("finalizers", ["kubernetes"])
            obj["status"] = {"phase": "Active"}
        elif rtype.plural == "customresourcedefinitions":
            spec = obj.get("spec")
            if not isinstance(spec, dict):
                return  # validation names the field
            names = spec.get("names")
            names = dict(names) if isinstance(names, dict) else {}
            if isinstance(names.get("kind"), str) and names["kind"]:
                names.setdefault("singular", str(names["kind"]).lower())
                names.setdefault("listKind", f"{names['kind']}List")
            ts = now()
            versions = spec.get("versions")
            versions = versions if isinstance(versions, list) else []
            obj["status"] = {
                "acceptedNames": names,
                "storedVersions": [v.get("name") for v in versions
                                   if isinstance(v, dict) and v.get("storage")],
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                     "message": "no conflicts found", "lastTransitionTime": ts},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                     "message": "the initial names have been accepted", "lastTransitionTime": ts},
                ],
            }

    # ---- update and patch ---------------------------------------------------------------------

    async def update(self, request: Request, info: RequestInfo, rtype: ResourceType) -> Response:
        _, new = await self._body_object(request)
        dry_run = self._dry_run(request)
        self._check_type_meta(new, rtype, info.version)
        body_name = new["metadata"].get("name")
        if body_name != info.name:
            raise BadRequest(
                f"the name of the object ({body_name}) does not match the name on the URL ({info.name})"
            )
        self._check_namespace(new, rtype, info.namespace)
        expected = self._parse_rv(new["metadata"].get("resourceVersion"), "metadata.resourceVersion")
        if expected is None and not rtype.allow_unconditional_update:
            raise_invalid(rtype.kind, rtype.group, info.name, [
                ("FieldValueInvalid", "Invalid value: 0x0: must be specified for an update",
                 "metadata.resourceVersion")])
        status, out = await self._update(
            info, rtype, lambda old: copy.deepcopy(new), expected, dry_run,
            create_body=new if rtype.allow_create_on_update else None,
        )
        return json_response(out, status)

    async def patch(self, request: Request, info: RequestInfo, rtype: ResourceType) -> Response:
        ctype = bodies.media_type(request)
        if ctype == bodies.APPLY_PATCH:
            return await self.server_side_apply(request, info, rtype)
        accepted: tuple[str, ...] = (bodies.MERGE_PATCH, bodies.JSON_PATCH, bodies.APPLY_PATCH)
        if rtype.builtin:
            # Built-in kinds advertise strategic merge patch to kubectl; for their plain maps it
            # is the same as a JSON merge patch (see docs/api.md).
            accepted = (*accepted, bodies.STRATEGIC_MERGE_PATCH)
        if ctype not in accepted:
            raise UnsupportedMediaType(
                "the body of the request was in an unknown format - accepted media types include: "
                + ", ".join(accepted)
            )
        body = await bodies.read_body(request, self.settings.max_body_bytes)
        patch_doc = bodies.decode(body, bodies.JSON, (bodies.JSON,))
        dry_run = self._dry_run(request)
        apply: Callable[[Any, Any], Any] = json_patch if ctype == bodies.JSON_PATCH else merge_patch

        def mutate(old: dict[str, Any]) -> dict[str, Any]:
            patched = apply(old, patch_doc)
            return ensure_object_shape(patched)

        status, out = await self._update(info, rtype, mutate, None, dry_run)
        return json_response(out, status)

    async def scale(self, request: Request, info: RequestInfo, rtype: ResourceType) -> Response:
        """GET, PUT and PATCH of ``NAME/scale``: the object seen as an autoscaling/v1 Scale; a
        change writes the replica count into the object (a normal update of it, with its
        admission, generation and resourceVersion precondition)."""
        spec = rtype.scale
        assert spec is not None
        key = rtype.key(info.namespace, info.name)
        if info.verb == "get":
            return json_response(scale.to_scale(await self._get_object(rtype, info, key, None), spec))
        if info.verb not in ("update", "patch"):
            raise MethodNotAllowed(f"{info.verb} is not supported on the scale subresource")
        body = await bodies.read_body(request, self.settings.max_body_bytes)
        dry_run = self._dry_run(request)
        if info.verb == "update":
            sent = bodies.decode(body, bodies.media_type(request))
            expected = self._parse_rv(((sent.get("metadata") or {}) if isinstance(sent, dict) else {})
                                      .get("resourceVersion"), "metadata.resourceVersion")
            if isinstance(sent, dict) and sent.get("kind") not in (None, scale.SCALE_KIND):
                raise BadRequest(f'the body must be a {scale.SCALE_KIND}, not {sent.get("kind")!r}')
        else:
            ctype = bodies.media_type(request)
            accepted = (bodies.MERGE_PATCH, bodies.JSON_PATCH, bodies.STRATEGIC_MERGE_PATCH)
            if ctype not in accepted:
                raise UnsupportedMediaType("the scale subresource accepts " + ", ".join(accepted))
            patch_doc = bodies.decode(body, bodies.JSON, (bodies.JSON,))
            apply_patch: Callable[[Any, Any], Any] = json_patch if ctype == bodies.JSON_PATCH else merge_patch
            sent = None
            expected = None

        def mutate(old: dict[str, Any]) -> dict[str, Any]:
            current = scale.to_scale(old, spec)
            wanted = sent if info.verb == "update" else apply_patch(current, patch_doc)
            replicas, why = scale.replicas_of(wanted)
            if replicas is None:
                raise_invalid(scale.SCALE_KIND, "autoscaling", info.name, [("FieldValueInvalid", why, "spec.replicas")])
                raise AssertionError("unreachable")
            return scale.with_replicas(copy.deepcopy(old), spec, replicas)

        main = copy.copy(info)
        main.subresource = ""
        _, out = await self._update(main, rtype, mutate, expected, dry_run)
        return json_response(scale.to_scale(msgspec.json.decode(out), spec))

    async def server_side_apply(self, request: Request, info: RequestInfo, rtype: ResourceType) -> Response:
        """PATCH with application/apply-patch+yaml: the request body is the manager's whole
        intent for the fields it manages (see managedfields.py)."""
        body = await bodies.read_body(request, self.settings.max_body_bytes)
        config = ensure_object_shape(bodies.decode(body, bodies.APPLY_PATCH, (bodies.APPLY_PATCH,)))
        dry_run = self._dry_run(request)
        manager = info.field_manager
        if not manager:
            raise_invalid("PatchOptions", "meta.k8s.io", "", [(
                "FieldValueRequired", "Required value: is required for apply patch", "fieldManager")])
        force = request.query_params.get("force", "").lower() in ("1", "true")
        self._check_type_meta(config, rtype, info.version)
        name = config["metadata"].get("name")
        if name is not None and name != info.name:
            raise BadRequest(f"the name of the object ({name}) does not match the name on the URL ({info.name})")
        config["metadata"]["name"] = info.name
        if rtype.namespaced:
            self._check_namespace(config, rtype, info.namespace)
        info.apply = True
        schema = rtype.schemas.get(info.version) or rtype.schemas.get(rtype.storage_version)
        api_version = rtype.api_version(info.version)

        def mutate(old: dict[str, Any]) -> dict[str, Any]:
            # A copy per attempt: the result may share parts of ``config``, which validation
            # then shapes in place, and a conflict retry must start from the request as sent.
            return managedfields.apply(old, copy.deepcopy(config), manager, api_version, schema,
                                       info.subresource, rtype.status_subresource, force)

        create = None if info.subresource else managedfields.apply(
            None, config, manager, api_version, schema, "", rtype.status_subresource, force)
        status, out = await self._update(info, rtype, mutate, None, dry_run, create_body=create)
        return json_response(out, status)

    def _track(self, rtype: ResourceType, info: RequestInfo, old: dict[str, Any] | None,
               new: dict[str, Any]) -> None:
        """Record who changed which fields, for writes that are tracked (see managedfields.py)."""
        if info.apply:
            return
        old_managed = old["metadata"].get("managedFields") if old is not None else None
        if not info.field_manager and not old_managed:
            return
        new_managed = new["metadata"].get("managedFields")
        if old is not None and new_managed != old_managed:
            # The client rewrote managedFields itself (to reset or migrate them): keep its version.
            if new_managed in ([], [{}]):
                new["metadata"].pop("managedFields", None)
            return
        manager = info.field_manager or managedfields.manager_from_user_agent(info.user_agent)
        schema = rtype.schemas.get(info.version) or rtype.schemas.get(rtype.storage_version)
        managedfields.track_update(old, new, manager, rtype.api_version(info.version), schema,
                                   info.subresource, rtype.status_subresource)

    async def _update(
        self,
        info: RequestInfo,
        rtype: ResourceType,
        mutate: Callable[[dict[str, Any]], dict[str, Any]],
        expected: int | None,
        dry_run: bool,
        create_body: dict[str, Any] | None = None,
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
                cached = self.cache.get(key)
                if cached is None:
                    continue
                old, rev, trial = cached.obj, cached.revision, True
            else:
                kv = await self.backend.get(key)
                old, rev, trial = (decode_stored(kv), kv.mod_revision, False) if kv else (None, 0, False)
            try:
                new = self._updated(info, rtype, mutate, expected, key, old, rev, create_body is not None)
            except APIError:
                if trial:
                    continue
                raise
            if new is None or old is None or new == old or dry_run:
                if trial:
                    continue
                if old is None:  # create_body is set: the object is created
                    create_info = RequestInfo(path=info.path, verb="create", resource_request=True,
                                              group=info.group, version=info.version,
                                              namespace=info.namespace, resource=info.resource,
                                              user=info.user, field_validation=info.field_validation,
                                              field_manager=info.field_manager, apply=info.apply)
                    create_info.warnings = info.warnings
                    assert create_body is not None
                    return await self._create(copy.deepcopy(create_body), create_info, rtype,
                                              dry_run, None)
                assert new is not None
                if new == old:
                    return 200, encode(self._with_version(old, rtype, info.version))
                return 200, encode(self._with_version(new, rtype, info.version))
            meta = new["metadata"]
            try:
                if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                    gone = await self.backend.delete(key, rev)
                    self._after_delete(rtype, new)
                    meta["resourceVersion"] = str(gone.mod_revision)
                    return 200, encode(self._with_version(new, rtype, info.version))
                kv2 = await self.backend.update(key, self._stored(new), rev)
            except RevisionMismatch:
                if expected is not None:
                    raise self.conflict(rtype, info.name) from None
                continue
            except KeyNotFound:
                continue
            meta["resourceVersion"] = str(kv2.mod_revision)
            if rtype.plural == "customresourcedefinitions":
                self._crd_event("MODIFIED", new, old)
            return 200, encode(self._with_version(new, rtype, info.version))
        raise self.conflict(rtype, info.name)

    def _updated(
        self, info: RequestInfo, rtype: ResourceType, mutate: Callable[[dict[str, Any]], dict[str, Any]],
        expected: int | None, key: str, old: dict[str, Any] | None, rev: int, may_create: bool,
    ) -> dict[str, Any] | None:
        """The object ``mutate`` makes of ``old`` (at revision ``rev``), checked and prepared
        for writing; None when there is no object and the request may create it."""
        if old is None:
            if may_create:
                return None
            raise self.not_found(rtype, info.name)
        if expected is not None and expected != rev:
            raise self.conflict(rtype, info.name)
        new = mutate(copy.deepcopy(old))
        node = node_of(info.user)
        if node is not None:
            admit_node_write(node, info.verb, rtype, info.namespace, info.name, info.subresource, old, new)
        new_rv = new["metadata"].get("resourceVersion")
        if new_rv not in (None, "") and str(new_rv) != str(rev):
            raise self.conflict(rtype, info.name)
        self._check_type_meta(new, rtype, info.version)
        if new["metadata"].get("name") != info.name:
            raise BadRequest("metadata.name is immutable")
        self._check_namespace(new, rtype, info.namespace)
        new = self._prepare_update(rtype, info, old, new)
        new["apiVersion"] = rtype.api_version()
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if new != old:
            self._track(rtype, info, old, new)
        return new

    def _prepare_update(
        self, rtype: ResourceType, info: RequestInfo, old: dict[str, Any], new: dict[str, Any]
    ) -> dict[str, Any]:
        old_meta = old["metadata"]
        if rtype.builtin:
            # Built-in kinds' spec and status are structs: anything else is a decoding error.
            for part in ("spec", "status"):
                if new.get(part) is not None and not isinstance(new[part], dict):
                    raise BadRequest(f"{part}: must be an object, not {type(new[part]).__name__}")
            if rtype.plural == "secrets" and not rtype.group:
                secrets.prepare(new)
        if info.subresource == "status":
            result = copy.deepcopy(old)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
            if info.apply:
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
        for f in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                  "generation"):
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
        if rtype.plural == "namespaces" and not rtype.group:
            result.setdefault("status", {}).setdefault("phase", "Active")
        result = self._validate(rtype, info.version, result, info)
        if spec_changed(old, result):
            result["metadata"]["generation"] = int(old_meta.get("generation", 1)) + 1
        return result

    # ---- delete -------------------------------------------------------------------------------

    async def _delete_options(self, request: Request) -> dict[str, Any]:
        body = await bodies.read_body(request, self.settings.max_body_bytes)
        opts: dict[str, Any] = {}
        if body.strip():
            decoded = bodies.decode(body, bodies.media_type(request) or bodies.JSON)
            if not isinstance(decoded, dict):
                raise BadRequest("DeleteOptions must be an object")
            opts = decoded
        _check_delete_options(opts)
        q = request.query_params
        if "propagationPolicy" in q:
            opts["propagationPolicy"] = q["propagationPolicy"]
        if "gracePeriodSeconds" in q:
            opts["gracePeriodSeconds"] = q["gracePeriodSeconds"]
        policy = opts.get("propagationPolicy")
        if policy not in (None, "Orphan", "Background", "Foreground"):
            raise_invalid("DeleteOptions", "", "", [(
                "FieldValueNotSupported",
                f'Unsupported value: "{policy}": supported values: "Foreground", "Background", "Orphan"',
                "propagationPolicy")])
        return opts

    async def delete(self, request: Request, info: RequestInfo, rtype: ResourceType) -> Response:
        opts = await self._delete_options(request)
        dry_run = self._dry_run(request) or opts.get("dryRun") == ["All"]
        status, out = await self._delete_one(rtype, info.namespace, info.name, opts, dry_run,
                                             info.version, info.user)
        return json_response(out, status)

    async def _delete_one(
        self, rtype: ResourceType, namespace: str, name: str, opts: dict[str, Any], dry_run: bool,
        version: str, user: Any = None,
    ) -> tuple[int, bytes]:
        key = rtype.key(namespace, name)
        node = node_of(user)
        if node is not None:
            admit_node_write(node, "delete", rtype, namespace, name, "", None)
        pre = opts.get("preconditions") or {}
        for _ in range(MAX_CONFLICT_RETRIES):
            kv = await self.backend.get(key)
            if kv is None:
                raise self.not_found(rtype, name)
            obj = decode_stored(kv)
            meta = obj["metadata"]
            if pre.get("uid") and pre["uid"] != meta.get("uid"):
                raise Conflict(
                    f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: "
                    f"{meta.get('uid')}", details_name=name, details_kind=rtype.plural)
            if pre.get("resourceVersion") and str(pre["resourceVersion"]) != meta["resourceVersion"]:
                raise Conflict(
                    f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, "
                    f"ResourceVersion in object meta: {meta['resourceVersion']}",
                    details_name=name, details_kind=rtype.plural)
            finalizers = list(meta.get("finalizers") or [])
            policy = opts.get("propagationPolicy")
            if policy in ("Foreground", "Orphan") and not meta.get("deletionTimestamp"):
                # The garbage collector finishes these deletions (see gc.py).
                gc_finalizer = "foregroundDeletion" if policy == "Foreground" else "orphan"
                if gc_finalizer not in finalizers:
                    finalizers.append(gc_finalizer)
                    meta["finalizers"] = list(finalizers)
            if rtype.plural == "namespaces" and not rtype.group:
                finalizers += (obj.get("spec") or {}).get("finalizers") or []
            if dry_run:
                return 200, encode(self._with_version(obj, rtype, version))
            try:
                if finalizers:
                    if meta.get("deletionTimestamp"):
                        return 202, encode(self._with_version(obj, rtype, version))
                    meta["deletionTimestamp"] = now()
                    meta["deletionGracePeriodSeconds"] = 0
                    if rtype.plural == "namespaces" and not rtype.group:
                        obj.setdefault("status", {})["phase"] = "Terminating"
                    kv2 = await self.backend.update(key, for_storage(obj), kv.mod_revision)
                    meta["resourceVersion"] = str(kv2.mod_revision)
                    return 202, encode(self._with_version(obj, rtype, version))
                gone = await self.backend.delete(key, kv.mod_revision)
            except (RevisionMismatch, KeyNotFound):
                continue
            meta["resourceVersion"] = str(gone.mod_revision)
            self._after_delete(rtype, obj)
            return 200, encode(self._with_version(obj, rtype, version))
        raise self.conflict(rtype, name)

    def _after_delete(self, rtype: ResourceType, obj: dict[str, Any]) -> None:
        if rtype.plural == "customresourcedefinitions":
            self._crd_event("DELETED", obj, None)

    async def delete_collection(
        self, request: Request, info: RequestInfo, rtype: ResourceType
    ) -> Response:
        opts = await self._delete_options(request)
        # client-go sends a collection delete's dryRun in the body's DeleteOptions.
        dry_run = self._dry_run(request) or opts.get("dryRun") == ["All"]
        label, field = self._selectors(request, rtype)
        pred = self._predicate(label, field)
        key_prefix = self._scope(info, rtype, field)
        page = await self.backend.list(key_prefix)
        deleted: list[bytes] = []
        for kv in page.items:
            obj = decode_stored(kv)
            if pred is not None and not pred(obj):
                continue
            meta = obj["metadata"]
            try:
                _, out = await self._delete_one(rtype, meta.get("namespace", ""), meta["name"], opts,
                                                dry_run, info.version, info.user)
            except NotFound:
                continue
            deleted.append(out)
        return json_response(self._list_body(rtype, info.version, page.revision, deleted))


_DELETE_OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "kind": (str,), "apiVersion": (str,), "gracePeriodSeconds": (int,), "propagationPolicy": (str,),
    "orphanDependents": (bool,), "dryRun": (list,), "preconditions": (dict,),
}


def _check_delete_options(opts: dict[str, Any]) -> None:
    """DeleteOptions of the wrong shape are a 400, as kube-apiserver's decoder makes them: a
    ``dryRun`` given as a string, above all, must not be taken for "no dry run" and delete."""
    for name, types in _DELETE_OPTION_TYPES.items():
        value = opts.get(name)
        if value is None:
            continue
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise BadRequest(f"DeleteOptions.{name}: wrong type {type(value).__name__}; "
                             f"expected {'/'.join(t.__name__ for t in types)}")
    dry_run = opts.get("dryRun")
    if dry_run is not None:
        for v in dry_run:
            if v != "All":
                raise BadRequest(f'Invalid dryRun value "{v}": the only supported value is "All"')
    pre = opts.get("preconditions")
    if pre is not None:
        for name in ("uid", "resourceVersion"):
            if pre.get(name) is not None and not isinstance(pre[name], str):
                raise BadRequest(f"DeleteOptions.preconditions.{name}: must be a string")
