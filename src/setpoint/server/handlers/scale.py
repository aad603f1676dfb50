"""The ``scale`` subresource: GET, PUT and PATCH of ``NAME/scale``, the object seen as an
autoscaling/v1 Scale. A change writes the replica count into the object: a normal update of it,
with its admission, generation and resourceVersion precondition."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from setpoint.server import bodies, scale
from setpoint.server.errors import BadRequest, MethodNotAllowed, UnsupportedMediaType
from setpoint.server.handlers.context import Context
from setpoint.server.handlers.get import read
from setpoint.server.handlers.options import WriteOptions
from setpoint.server.handlers.response import json_response
from setpoint.server.handlers.update import update_object
from setpoint.server.objects import raise_invalid
from setpoint.server.patch import json_patch, merge_patch
from setpoint.server.paths import RequestInfo
from setpoint.server.resources import ResourceType

PATCH_TYPES = (bodies.MERGE_PATCH, bodies.JSON_PATCH, bodies.STRATEGIC_MERGE_PATCH)


async def scale_subresource(ctx: Context, request: Request, info: RequestInfo, rtype: ResourceType,
                            opts: WriteOptions) -> Response:
    spec = rtype.scale
    assert spec is not None
    if info.verb == "get":
        return json_response(scale.to_scale(await read(ctx, rtype, info, rtype.key(info.namespace, info.name),
                                                       None), spec))
    if info.verb not in ("update", "patch"):
        raise MethodNotAllowed(f"{info.verb} is not supported on the scale subresource")
    body = await ctx.read_body(request)
    sent: Any = None
    expected: int | None = None
    if info.verb == "update":
        sent = bodies.decode(body, bodies.media_type(request))
        expected = ctx.parse_rv(((sent.get("metadata") or {}) if isinstance(sent, dict) else {})
                                .get("resourceVersion"), "metadata.resourceVersion")
        if isinstance(sent, dict) and sent.get("kind") not in (None, scale.SCALE_KIND):
            raise BadRequest(f'the body must be a {scale.SCALE_KIND}, not {sent.get("kind")!r}')
    else:
        ctype = bodies.media_type(request)
        if ctype not in PATCH_TYPES:
            raise UnsupportedMediaType("the scale subresource accepts " + ", ".join(PATCH_TYPES))
        patch_doc = bodies.decode(body, bodies.JSON, (bodies.JSON,))
        apply_patch: Callable[[Any, Any], Any] = json_patch if ctype == bodies.JSON_PATCH else merge_patch

    def mutate(old: dict[str, Any]) -> dict[str, Any]:
        current = scale.to_scale(old, spec)
        wanted = sent if info.verb == "update" else apply_patch(current, patch_doc)
        replicas, why = scale.replicas_of(wanted)
        if replicas is None:
            raise_invalid(scale.SCALE_KIND, "autoscaling", info.name, [("FieldValueInvalid", why, "spec.replicas")])
            raise AssertionError("unreachable")
        return scale.with_replicas(copy.deepcopy(old), spec, replicas)

    _, out = await update_object(ctx, info._replace(subresource=""), rtype, mutate, expected, opts)
    return json_response(scale.to_scale(msgspec.json.decode(out), spec))
