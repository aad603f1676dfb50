"""JSON merge patch (RFC 7386) and JSON patch (RFC 6902) for PATCH requests.

kubectl sends merge patches for custom kinds (``kubectl label``, ``annotate``, ``edit``,
``patch --type=merge``) and JSON patches with ``--type=json``. Status codes follow the
Kubernetes API server: a patch document that cannot be understood is the client's malformed
request (400), a well-formed patch that does not apply to the current object is an invalid
request (422), and more than 10,000 operations is too large (413).

Both functions work on decoded JSON values (dict, list, str, int, float, bool, None), never
mutate their arguments and return values that share nothing with them, so the caller may
modify the result freely even when the target is an object held in a cache.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final

import jsonpatch
import jsonpointer
import msgspec

from setpoint.server.errors import BadRequest, Invalid, RequestEntityTooLarge

__all__ = [
    "MAX_JSON_PATCH_OPERATIONS",
    "PATCH_CONTENT_TYPES",
    "apply_merge_patch",
    "json_patch",
    "merge_patch",
]

# The API server's limit (maxJSONPatchOperations): applying a patch is O(ops x document), so
# an unbounded count lets one request burn arbitrary CPU.
MAX_JSON_PATCH_OPERATIONS: Final = 10000
MAX_COPY_BYTES: Final = 3 << 20  # what all copy operations of one patch may copy, in JSON bytes


def copy_json(value: Any) -> Any:
    """Deep copy of a JSON value; much cheaper than copy.deepcopy for these plain types."""
    if isinstance(value, dict):
        return {k: copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_json(v) for v in value]
    return value


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply ``patch`` to ``target`` as RFC 7386 defines it.

    Objects merge member by member, ``null`` removes a member, and anything else (arrays
    included) replaces the target value whole. Nulls nested in a patch object for members the
    target lacks vanish, as the RFC's algorithm implies.
    """
    if not isinstance(patch, dict):
        return copy_json(patch)
    if not isinstance(target, dict):
        target = {}
    result: dict[str, Any] = {}
    for key, value in target.items():
        if key not in patch:
            result[key] = copy_json(value)
    for key, value in patch.items():
        if value is None:
            continue
        result[key] = merge_patch(target.get(key), value)
    # Keep the target's member order with new members appended, so that a patch changing one
    # field does not reorder the stored object (diffs and kubectl output stay stable).
    ordered = {k: result[k] for k in target if k in result}
    ordered.update((k, v) for k, v in result.items() if k not in ordered)
    return ordered


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """The ``application/merge-patch+json`` handler: the document must be an object.

    RFC 7386 would let an array or a scalar replace the whole object, which can only produce
    something that is not an object at all; the API server refuses such documents, and so
    does setpoint.
    """
    if not isinstance(patch, dict):
        raise BadRequest(
            f"error decoding patch: a merge patch must be a JSON object, got {_json_type(patch)}"
        )
    return merge_patch(target, patch)


_REQUIRED_MEMBERS: Final = {
    "add": ("value",),
    "remove": (),
    "replace": ("value",),
    "move": ("from",),
    "copy": ("from",),
    "test": ("value",),
}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _check_pointer(index: int, member: str, pointer: Any) -> None:
    if not isinstance(pointer, str):
        raise BadRequest(f"json patch operation {index}: '{member}' must be a string")
    try:
        jsonpointer.JsonPointer(pointer)
    except jsonpointer.JsonPointerException as e:
        raise BadRequest(
            f"json patch operation {index}: '{member}' {pointer!r} is not a JSON pointer: {e}"
        ) from None


def _decode(patch: Any) -> list[jsonpatch.JsonPatch]:
    """Check the document's shape up front, so that a malformed patch is a 400 however the
    target looks, and split it into single-operation patches so a failure can name its op."""
    if not isinstance(patch, list):
        raise BadRequest(
            f"error decoding patch: a JSON patch must be an array of operations, got {_json_type(patch)}"
        )
    if len(patch) > MAX_JSON_PATCH_OPERATIONS:
        raise RequestEntityTooLarge(
            "Request entity too large: The allowed maximum operations in a JSON patch is "
            f"{MAX_JSON_PATCH_OPERATIONS}, got {len(patch)}"
        )
    ops: list[jsonpatch.JsonPatch] = []
    for index, op in enumerate(patch):
        if not isinstance(op, dict):
            raise BadRequest(f"json patch operation {index}: must be an object, got {_json_type(op)}")
        kind = op.get("op")
        if kind not in _REQUIRED_MEMBERS:
            shown = repr(kind) if isinstance(kind, str) else _json_type(kind)
            raise BadRequest(
                f"json patch operation {index}: unknown op {shown}; "
                "expected one of add, remove, replace, move, copy, test"
            )
        if "path" not in op:
            raise BadRequest(f"json patch operation {index}: {kind} operation has no 'path'")
        _check_pointer(index, "path", op["path"])
        for member in _REQUIRED_MEMBERS[kind]:
            if member not in op:
                raise BadRequest(f"json patch operation {index}: {kind} operation has no '{member}'")
        if "from" in _REQUIRED_MEMBERS[kind]:
            _check_pointer(index, "from", op["from"])
        try:
            ops.append(jsonpatch.JsonPatch([op]))
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
            raise BadRequest(f"json patch operation {index}: {e}") from None
    return ops


_ABSENT: Final = object()


def _exists(doc: Any, pointer: str) -> bool:
    return jsonpointer.resolve_pointer(doc, pointer, _ABSENT) is not _ABSENT


def _parent(pointer: str) -> str:
    return pointer.rsplit("/", 1)[0]


def _failure(index: int, op: Mapping[str, Any], doc: Any, exc: Exception) -> Invalid:
    """Explain why an operation does not apply without echoing the document (the library's
    messages embed the whole object, which can be large and is not the client's to see)."""
    kind, path = op["op"], op["path"]
    prefix = f"json patch {kind} operation {index} on {path!r} does not apply"
    if isinstance(exc, jsonpatch.JsonPatchTestFailed):
        if not _exists(doc, path):
            reason = f"path {path!r} does not exist"
        else:
            reason = "the value differs from the tested value"
        message = f"json patch test operation {index} on {path!r} failed: {reason}"
        return Invalid(message, causes=[("FieldValueInvalid", message, path)])
    if kind in ("move", "copy") and not _exists(doc, op["from"]):
        reason = f"'from' {op['from']!r} does not exist"
    elif kind in ("remove", "replace") and not _exists(doc, path):
        reason = f"path {path!r} does not exist"
    elif kind in ("add", "move", "copy") and not _exists(doc, _parent(path)):
        reason = f"the parent of path {path!r} does not exist"
    elif isinstance(exc, jsonpointer.JsonPointerException):
        reason = str(exc).split(" in ", 1)[0]
    else:
        reason = str(exc)
    message = f"{prefix}: {reason}"
    return Invalid(message, causes=[("FieldValueInvalid", message, path)])


def json_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 6902 patch atomically: either every operation applies or the request fails.

    Errors: a malformed document raises BadRequest (400), too many operations
    RequestEntityTooLarge (413), an operation that does not apply to ``target`` (a failed
    ``test``, a missing path, an index out of range) Invalid (422), as the API server answers.
    """
    ops = _decode(patch)
    doc = copy_json(target)
    copied = 0
    for index, (single, raw) in enumerate(zip(ops, patch, strict=True)):
        if raw["op"] == "copy":
            # What copies add up to, as kube-apiserver bounds it (json-patch's
            # AccumulatedCopySizeLimit): a patch of a few copies, each of the result of the last,
            # doubles the object with every operation.
            value = jsonpointer.resolve_pointer(doc, raw["from"], None)
            copied += len(msgspec.json.encode(value))
            if copied > MAX_COPY_BYTES:
                raise RequestEntityTooLarge(
                    f"Request entity too large: json patch copy operations would copy more than "
                    f"{MAX_COPY_BYTES} bytes (operation {index})")
        try:
            doc = single.apply(doc, in_place=True)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
            raise _failure(index, raw, doc, e) from None
    return doc


# Content type of a PATCH request -> how to apply its (decoded) body to the current object.
PATCH_CONTENT_TYPES: Final[Mapping[str, Callable[[Any, Any], Any]]] = MappingProxyType(
    {
        "application/merge-patch+json": apply_merge_patch,
        "application/json-patch+json": json_patch,
    }
)
