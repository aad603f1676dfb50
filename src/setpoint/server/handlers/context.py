"""What every verb shares: the store, the watch cache, the registry, the limits, and the checks
each write makes on the way in (type meta, namespace, schema, size)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request

from setpoint.server import bodies, idempotency, protobuf
from setpoint.server.errors import BadRequest, Conflict, Forbidden, NotFound, RequestEntityTooLarge
from setpoint.server.handlers.options import WriteOptions
from setpoint.server.handlers.response import warning_header
from setpoint.server.keylocks import KeyLocks
from setpoint.server.objects import (
    decode_stored,
    ensure_object_shape,
    for_storage,
    plain_json,
    raise_invalid,
    validate_metadata,
)
from setpoint.server.paths import RequestInfo
from setpoint.server.resources import Registry, ResourceType
from setpoint.server.selectors import DEFAULT_FIELDS, FieldSelector, LabelSelector
from setpoint.server.settings import Settings
from setpoint.server.watchcache import WatchCache
from setpoint.store import Backend

# A write without a client precondition (a patch, a finalizer change) retries on a fresh read
# until it lands, as Kubernetes does; such writers to one key take turns (KeyLocks), so only
# writers in other servers can make them retry, and the bound only stops a pathological livelock.
MAX_CONFLICT_RETRIES = 200
NAMESPACE_KEY_PREFIX = "/registry/core/namespaces/"

Predicate = Callable[[dict[str, Any]], bool]


class Context:
    def __init__(self, backend: Backend, cache: WatchCache, registry: Registry,
                 idempotency_cache: idempotency.IdempotencyCache, settings: Settings) -> None:
        self.backend = backend
        self.cache = cache
        self.registry = registry
        self.idem = idempotency_cache
        self.settings = settings
        self._namespace_state: dict[str, tuple[int, bool]] = {}  # namespace -> (revision, terminating)
        self.key_locks = KeyLocks()  # writers that retry on conflict take turns per key

    # ---- errors -------------------------------------------------------------------------------

    @staticmethod
    def not_found(rtype: ResourceType, name: str) -> NotFound:
        return NotFound(f'{rtype.group_resource} "{name}" not found', details_name=name,
                        details_kind=rtype.plural, details_group=rtype.group or None)

    @staticmethod
    def conflict(rtype: ResourceType, name: str) -> Conflict:
        return Conflict(
            f'Operation cannot be fulfilled on {rtype.group_resource} "{name}": the object has been '
            "modified; please apply your changes to the latest version and try again",
            details_name=name, details_kind=rtype.plural, details_group=rtype.group or None,
        )

    # ---- reading requests ---------------------------------------------------------------------

    async def read_object(self, request: Request) -> tuple[bytes, dict[str, Any]]:
        body = await bodies.read_body(request, self.settings.max_body_bytes)
        ctype = bodies.media_type(request)
        if ctype == protobuf.MEDIA:
            return body, ensure_object_shape(protobuf.decode(body))
        decoded = bodies.decode(body, ctype)
        json_body = ctype in (bodies.JSON, "") and body[:1] == b"{"
        obj = ensure_object_shape(decoded, walk=not (json_body and plain_json(body)))
        return body, obj

    async def read_body(self, request: Request) -> bytes:
        return await bodies.read_body(request, self.settings.max_body_bytes)

    @staticmethod
    def parse_rv(value: str | None, what: str = "resourceVersion") -> int | None:
        if value is None or value == "":
            return None
        try:
            rv = int(value)
        except ValueError:
            raise BadRequest(f'invalid {what} "{value}": must be a decimal revision') from None
        if rv < 0:
            raise BadRequest(f'invalid {what} "{value}": must not be negative')
        return rv

    @staticmethod
    def selectors(request: Request, rtype: ResourceType) -> tuple[LabelSelector | None, FieldSelector | None]:
        ls = request.query_params.get("labelSelector")
        fs = request.query_params.get("fieldSelector")
        label = LabelSelector.parse(ls) if ls else None
        field = FieldSelector.parse(fs, DEFAULT_FIELDS | rtype.selectable_fields) if fs else None
        return (label if label is not None and not label.empty else None), field

    @staticmethod
    def predicate(label: LabelSelector | None, field: FieldSelector | None) -> Predicate | None:
        if label is None and field is None:
            return None

        def pred(obj: dict[str, Any]) -> bool:
            if label is not None and not label.matches(obj["metadata"].get("labels") or {}):
                return False
            return field is None or field.matches(obj)

        return pred

    @staticmethod
    def scope(info: RequestInfo, rtype: ResourceType, field: FieldSelector | None) -> str:
        """The key prefix a list or watch covers; a field selector pinning the namespace narrows
        an all-namespaces request to one."""
        namespace = info.namespace
        if field is not None and rtype.namespaced and not namespace:
            pinned = field.exact("metadata.namespace")
            if pinned:
                namespace = pinned
        return rtype.list_prefix(namespace)

    # ---- checks on what is written ------------------------------------------------------------

    def stored(self, obj: dict[str, Any]) -> bytes:
        """The bytes to store, within the size limit: a small body can still make a large object
        (YAML aliases, patches), and the limit is on what is kept, not only on what was sent."""
        data = for_storage(obj)
        limit = self.settings.max_object_bytes
        if len(data) > limit:
            raise RequestEntityTooLarge(f"the object would be {len(data)} bytes, over the limit of {limit}")
        return data

    @staticmethod
    def check_type_meta(obj: dict[str, Any], rtype: ResourceType, version: str) -> None:
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

    @staticmethod
    def check_namespace(obj: dict[str, Any], rtype: ResourceType, namespace: str) -> None:
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

    async def require_namespace(self, namespace: str) -> None:
        """A create needs its namespace to exist and not be terminating."""
        key = NAMESPACE_KEY_PREFIX + namespace
        seen = self._namespace_state.get(namespace)
        if seen is not None and seen[0] == self.cache.revision_of(key):
            terminating = seen[1]  # every create checks its namespace: don't decode it each time
        else:
            cached = self.cache.get(key)
            if cached is not None:
                ns: dict[str, Any] | None = cached.obj
            else:
                kv = await self.backend.get(key)
                ns = decode_stored(kv) if kv is not None else None
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

    def validate(self, rtype: ResourceType, version: str, obj: dict[str, Any],
                 opts: WriteOptions | None = None) -> tuple[dict[str, Any], Any]:
        """The object shaped by its schema (pruned, defaulted) and checked; with what the kind's
        strategy derived from it, for ``after_write``."""
        validator = rtype.validators.get(version) or rtype.validators.get(rtype.storage_version)
        if validator is not None:
            if opts is not None and opts.field_validation in ("Strict", "Warn"):
                _check_unknown_fields(validator, obj, opts)
            obj = validator(obj, owned=True)
        causes = validate_metadata(obj, name_is_label=rtype.name_is_label)
        derived = rtype.strategy.validate(obj)
        raise_invalid(rtype.kind, rtype.group, obj["metadata"].get("name", ""), causes)
        return obj, derived

    @staticmethod
    def with_version(obj: dict[str, Any], rtype: ResourceType, version: str) -> dict[str, Any]:
        if version != rtype.storage_version:
            obj["apiVersion"] = rtype.api_version(version)
        return obj


def _check_unknown_fields(validator: Any, obj: dict[str, Any], opts: WriteOptions) -> None:
    unknown = validator.unknown_fields(obj)
    if not unknown:
        return
    texts = [f'unknown field "{path}"' for path in unknown]
    if opts.field_validation == "Strict":
        raise BadRequest("strict decoding error: " + ", ".join(texts))
    opts.warnings.extend(warning_header(t) for t in texts)
