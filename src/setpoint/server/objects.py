"""Object metadata: the rules every kind shares (names, labels, system fields, generation).

The store keeps objects without ``metadata.resourceVersion``: the revision of the write *is* the
resourceVersion, so it is filled in when an object is read rather than stored twice.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import msgspec

from setpoint.server.errors import BadRequest, Invalid
from setpoint.server.selectors import label_key_errors, label_value_errors
from setpoint.store import KeyValue

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")

SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
    "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
# Fields a client may never set: the server owns them.
SYSTEM_FIELDS = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                 "generation", "resourceVersion", "selfLink")
MAX_ANNOTATIONS_BYTES = 256 * 1024
GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


_now_cache: tuple[int, str] = (0, "")


def now() -> str:
    """RFC 3339 at second precision, as Kubernetes writes timestamps; formatted once a second."""
    global _now_cache
    t = int(time.time())
    if _now_cache[0] != t:
        _now_cache = (t, datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return _now_cache[1]


_uid_pool: list[str] = []


def new_uid() -> str:
    """A random (version 4) UUID; randomness is fetched 256 UUIDs at a time, one syscall."""
    if not _uid_pool:
        block = os.urandom(16 * 256).hex()
        _uid_pool.extend(block[i:i + 32] for i in range(0, len(block), 32))
    h = _uid_pool.pop()
    # Version nibble 4, variant bits 10xx: the same string uuid.uuid4() would give.
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def generate_name(prefix: str) -> str:
    return prefix + "".join(secrets.choice(GENERATE_ALPHABET) for _ in range(5))


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


def decode_stored(kv: KeyValue) -> dict[str, Any]:
    obj: dict[str, Any] = _decoder.decode(kv.value)
    obj["metadata"]["resourceVersion"] = str(kv.mod_revision)
    return obj


def for_storage(obj: dict[str, Any]) -> bytes:
    meta = obj["metadata"]
    rv = meta.pop("resourceVersion", None)
    try:
        return _encoder.encode(obj)
    finally:
        if rv is not None:
            meta["resourceVersion"] = rv


def name_errors(name: str, *, label: bool) -> str | None:
    if label:
        if len(name) > 63:
            return "must be no more than 63 characters"
        return None if DNS1123_LABEL.match(name) else LABEL_MSG
    if len(name) > 253:
        return "must be no more than 253 characters"
    return None if DNS1123_SUBDOMAIN.match(name) else SUBDOMAIN_MSG


def validate_metadata(obj: dict[str, Any], *, name_is_label: bool) -> list[tuple[str, str, str]]:
    """Kubernetes' ObjectMeta rules; returns 422 causes (reason, message, field)."""
    causes: list[tuple[str, str, str]] = []
    meta = obj["metadata"]
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        causes.append(("FieldValueRequired", "Required value: name or generateName is required",
                       "metadata.name"))
    else:
        err = name_errors(name, label=name_is_label)
        if err:
            causes.append(("FieldValueInvalid", f'Invalid value: "{name}": {err}', "metadata.name"))
    for section in ("labels", "annotations"):
        value = meta.get(section)
        if value is None:
            continue
        if not isinstance(value, dict):
            causes.append(("FieldValueInvalid", "Invalid value: must be a map of strings", f"metadata.{section}"))
            continue
        size = 0
        for k, v in value.items():
            # Label and annotation keys, and finalizers, are qualified names, checked (and
            # explained) as label selectors check them: one rule and one message for both.
            errs = label_key_errors(k)
            if errs:
                causes.append(("FieldValueInvalid", f'Invalid value: "{k}": {"; ".join(errs)}', f"metadata.{section}"))
            if not isinstance(v, str):
                causes.append(("FieldValueInvalid", f'Invalid value: {k}: value must be a string',
                               f"metadata.{section}[{k}]"))
                continue
            if section == "labels" and (errs := label_value_errors(v)):
                causes.append(("FieldValueInvalid", f'Invalid value: "{v}": {"; ".join(errs)}', "metadata.labels"))
            size += len(k) + len(v)
        if section == "annotations" and size > MAX_ANNOTATIONS_BYTES:
            causes.append(("FieldValueTooLong", "Too long: must have at most 262144 bytes",
                           "metadata.annotations"))
    finalizers = meta.get("finalizers")
    if finalizers is not None:
        if not isinstance(finalizers, list) or not all(isinstance(f, str) for f in finalizers):
            causes.append(("FieldValueInvalid", "Invalid value: must be a list of strings", "metadata.finalizers"))
        else:
            for i, f in enumerate(finalizers):
                errs = label_key_errors(f)
                if errs:
                    causes.append(("FieldValueInvalid", f'Invalid value: "{f}": {"; ".join(errs)}',
                                   f"metadata.finalizers[{i}]"))
    owners = meta.get("ownerReferences")
    if owners is not None:
        if not isinstance(owners, list):
            causes.append(("FieldValueInvalid", "Invalid value: must be a list", "metadata.ownerReferences"))
        else:
            for i, ref in enumerate(owners):
                if not isinstance(ref, dict):
                    causes.append(("FieldValueInvalid", "Invalid value: must be an object",
                                   f"metadata.ownerReferences[{i}]"))
                    continue
                for req in ("apiVersion", "kind", "name", "uid"):
                    if not isinstance(ref.get(req), str) or not ref.get(req):
                        causes.append(("FieldValueRequired", "Required value",
                                       f"metadata.ownerReferences[{i}].{req}"))
    causes.extend(_managed_fields_causes(meta.get("managedFields")))
    return causes


def _managed_fields_causes(managed: Any) -> list[tuple[str, str, str]]:
    """kube-apiserver's ValidateManagedFields: later writes read these entries back, so a
    malformed one must be refused here rather than break them."""
    if managed is None:
        return []
    if not isinstance(managed, list):
        return [("FieldValueInvalid", "Invalid value: must be a list", "metadata.managedFields")]
    causes: list[tuple[str, str, str]] = []
    for i, entry in enumerate(managed):
        field = f"metadata.managedFields[{i}]"
        if not isinstance(entry, dict):
            causes.append(("FieldValueInvalid", "Invalid value: must be an object", field))
            continue
        if not entry:
            continue  # managedFields: [{}] is how a client asks for the fields to be reset
        if entry.get("operation") not in ("Apply", "Update"):
            causes.append(("FieldValueNotSupported",
                           f'Unsupported value: {json.dumps(entry.get("operation"))}: supported values: '
                           '"Apply", "Update"', f"{field}.operation"))
        if entry.get("fieldsType", "FieldsV1") != "FieldsV1":
            causes.append(("FieldValueNotSupported",
                           f'Unsupported value: {json.dumps(entry.get("fieldsType"))}: supported values: '
                           '"FieldsV1"', f"{field}.fieldsType"))
        for name in ("manager", "apiVersion", "subresource", "time"):
            if name in entry and not isinstance(entry[name], str):
                causes.append(("FieldValueInvalid", "Invalid value: must be a string", f"{field}.{name}"))
        if "fieldsV1" in entry and not isinstance(entry["fieldsV1"], dict):
            causes.append(("FieldValueInvalid", "Invalid value: must be an object", f"{field}.fieldsV1"))
    return causes


# Deeper than this is refused at the door: every later path (copies, patches, encoding, field
# tracking, the garbage collector) handles it, so an object that was accepted stays writable.
MAX_DEPTH = 128
_META_STRINGS = ("name", "namespace", "generateName", "resourceVersion", "uid", "creationTimestamp",
                 "deletionTimestamp", "selfLink")


# A JSON body with no more brackets than this, and no run of 19 digits, cannot nest too deep or
# hold an integer past int64 (and JSON has no NaN or infinity): the walk can be skipped, which
# matters on the create path, where it would visit every value of every object.
# (Digits mapped to "0" and a substring search: a tenth of the regex's time on a create's body.)
_DIGITS_TO_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
_LONG_NUMBER = b"0" * 19


def plain_json(body: bytes) -> bool:
    return (body.count(b"{") + body.count(b"[") <= MAX_DEPTH
            and _LONG_NUMBER not in body.translate(_DIGITS_TO_ZERO))


def ensure_object_shape(obj: Any, *, walk: bool = True) -> dict[str, Any]:
    """A body must be a JSON object with an object ``metadata`` whose fields have the types
    Kubernetes gives them, nested no deeper than :data:`MAX_DEPTH`; anything else is a 400, as
    kube-apiserver's decoder makes it, before anything is stored."""
    if not isinstance(obj, dict):
        raise BadRequest("the request body must be a JSON or YAML object")
    meta = obj.get("metadata")
    if meta is None:
        obj["metadata"] = meta = {}
    if not isinstance(meta, dict):
        raise BadRequest("metadata must be an object")
    for name in _META_STRINGS:
        value = meta.get(name)
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"metadata.{name}: must be a string, not {type(value).__name__}")
    for name in ("labels", "annotations"):
        value = meta.get(name)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise BadRequest(f"metadata.{name}: must be a map of strings")
        for k, v in value.items():
            if not isinstance(k, str):
                raise BadRequest(f"metadata.{name}: key {k!r} is not a string (quote it in YAML)")
            if v is not None and not isinstance(v, str):
                raise BadRequest(f"metadata.{name}[{k}]: must be a string, not {type(v).__name__}")
    problem = _shape_problem(obj, MAX_DEPTH) if walk else ""
    if problem:
        raise BadRequest(problem)
    return obj


_INT64 = (-(1 << 63), (1 << 63) - 1)


def _shape_problem(value: Any, limit: int) -> str:
    """What makes an object unstorable as Kubernetes' JSON, or "": nesting deeper than ``limit``,
    an integer outside int64, a float that is not finite (YAML's .nan and .inf). Iterative, so
    that checking a very deep object cannot itself overflow the stack."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if depth > limit:
            return f"the object is nested more than {limit} levels deep"
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)
        elif isinstance(v, bool) or v is None or isinstance(v, str):
            continue
        elif isinstance(v, int):
            if not _INT64[0] <= v <= _INT64[1]:
                return f"a number is out of range (integers are 64-bit): {str(v)[:24]}..."
        elif isinstance(v, float) and not math.isfinite(v):
            return f"{v} is not a number JSON can hold"
    return ""


def raise_invalid(kind: str, group: str, name: str, causes: list[tuple[str, str, str]]) -> None:
    if not causes:
        return
    gk = f"{kind}.{group}" if group else kind
    summary = ", ".join(f"{f}: {m}" for _, m, f in causes)
    if len(causes) > 1:
        summary = "[" + summary + "]"
    raise Invalid(
        f'{gk} "{name}" is invalid: {summary}',
        causes=causes,
        details_name=name,
        details_kind=kind,
        details_group=group or None,
    )


def spec_changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Generation counts changes to everything but metadata and status."""
    keys = (set(old) | set(new)) - {"metadata", "status", "apiVersion", "kind"}
    return any(old.get(k) != new.get(k) for k in keys)
