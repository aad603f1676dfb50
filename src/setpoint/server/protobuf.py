"""Kubernetes' protobuf encoding, read for the few built-in kinds clients send in it.

Typed Kubernetes clients (kubectl's generators such as ``kubectl create namespace``) send
built-in kinds as ``application/vnd.kubernetes.protobuf`` and do not fall back to JSON. setpoint
answers in JSON (those clients accept it) and reads these request bodies: the ``k8s\\0``
envelope (a ``runtime.Unknown`` naming apiVersion and kind) around the object's message. Only
the kinds below are understood; anything else is a 415 that names the JSON types.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

from setpoint.server.errors import BadRequest, UnsupportedMediaType

MEDIA = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise BadRequest("error decoding protobuf: truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise BadRequest("error decoding protobuf: varint too long")


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) pairs: ints for varints, bytes for length-delimited fields."""
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, value
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise BadRequest("error decoding protobuf: truncated field")
            yield number, data[pos:pos + length]
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise BadRequest(f"error decoding protobuf: unsupported wire type {wire}")


def _str(v: int | bytes) -> str:
    if not isinstance(v, bytes):
        raise BadRequest("error decoding protobuf: expected a string")
    try:
        return v.decode()
    except UnicodeDecodeError:
        raise BadRequest("error decoding protobuf: a string is not valid UTF-8") from None


def _map_entry(v: int | bytes) -> tuple[str, str]:
    key = value = ""
    for n, x in _fields(v if isinstance(v, bytes) else b""):
        if n == 1:
            key = _str(x)
        elif n == 2:
            value = _str(x)
    return key, value


def _bytes_entry(v: bytes) -> tuple[str, str]:
    """An entry of a ``map<string, bytes>``, its value base64 as JSON carries bytes."""
    key, raw = "", b""
    for m, x in _fields(v):
        if m == 1:
            key = _str(x)
        elif m == 2 and isinstance(x, bytes):
            raw = x
    return key, base64.b64encode(raw).decode()


def _owner_reference(v: bytes) -> dict[str, Any]:
    names = {1: "kind", 3: "name", 4: "uid", 5: "apiVersion"}
    ref: dict[str, Any] = {}
    for n, x in _fields(v):
        if n in names:
            ref[names[n]] = _str(x)
        elif n == 6:
            ref["controller"] = bool(x)
        elif n == 7:
            ref["blockOwnerDeletion"] = bool(x)
    return ref


def _object_meta(data: bytes) -> dict[str, Any]:
    strings = {1: "name", 2: "generateName", 3: "namespace", 5: "uid", 6: "resourceVersion"}
    meta: dict[str, Any] = {}
    for n, v in _fields(data):
        if n in strings:
            meta[strings[n]] = _str(v)
        elif n in (11, 12):
            k, val = _map_entry(v)
            meta.setdefault("labels" if n == 11 else "annotations", {})[k] = val
        elif n == 13 and isinstance(v, bytes):
            meta.setdefault("ownerReferences", []).append(_owner_reference(v))
        elif n == 14:
            meta.setdefault("finalizers", []).append(_str(v))
    return meta


def _namespace(data: bytes) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {}}
    for n, v in _fields(data):
        if n == 1 and isinstance(v, bytes):
            obj["metadata"] = _object_meta(v)
        elif n == 2 and isinstance(v, bytes):
            finalizers = [_str(x) for m, x in _fields(v) if m == 1]
            obj["spec"] = {"finalizers": finalizers} if finalizers else {}
    return obj


def _secret(data: bytes) -> dict[str, Any]:
    """core/v1 Secret: metadata 1, data 2 (map<string, bytes>), type 3, stringData 4, immutable 5.
    (``kubectl create secret`` sends it this way.)"""
    obj: dict[str, Any] = {"metadata": {}}
    for n, v in _fields(data):
        if n == 1 and isinstance(v, bytes):
            obj["metadata"] = _object_meta(v)
        elif n == 2 and isinstance(v, bytes):
            key, value = _bytes_entry(v)
            obj.setdefault("data", {})[key] = value
        elif n == 3:
            obj["type"] = _str(v)
        elif n == 4:
            k, val = _map_entry(v)
            obj.setdefault("stringData", {})[k] = val
        elif n == 5:
            obj["immutable"] = bool(v)
    return obj


def _configmap(data: bytes) -> dict[str, Any]:
    """core/v1 ConfigMap: metadata 1, data 2 (map<string, string>), binaryData 3 (map<string,
    bytes>), immutable 4. (``kubectl create configmap`` sends it this way.)"""
    obj: dict[str, Any] = {"metadata": {}}
    for n, v in _fields(data):
        if n == 1 and isinstance(v, bytes):
            obj["metadata"] = _object_meta(v)
        elif n == 2:
            k, val = _map_entry(v)
            obj.setdefault("data", {})[k] = val
        elif n == 3 and isinstance(v, bytes):
            key, value = _bytes_entry(v)
            obj.setdefault("binaryData", {})[key] = value
        elif n == 4:
            obj["immutable"] = bool(v)
    return obj


_KINDS: dict[tuple[str, str], Callable[[bytes], dict[str, Any]]] = {
    ("v1", "Namespace"): _namespace,
    ("v1", "Secret"): _secret,
    ("v1", "ConfigMap"): _configmap,
}


def decode(body: bytes) -> dict[str, Any]:
    if not body.startswith(MAGIC):
        raise BadRequest("error decoding protobuf: the body does not start with the Kubernetes magic")
    api_version = kind = ""
    raw = b""
    for n, v in _fields(body[len(MAGIC):]):
        if n == 1 and isinstance(v, bytes):
            for m, x in _fields(v):
                if m == 1:
                    api_version = _str(x)
                elif m == 2:
                    kind = _str(x)
        elif n == 2 and isinstance(v, bytes):
            raw = v
    decoder = _KINDS.get((api_version, kind))
    if decoder is None:
        raise UnsupportedMediaType(
            f"the body of the request was in an unknown format - {MEDIA} is read for "
            f"{', '.join(k for _, k in _KINDS)} only; accepted media types include: "
            "application/json, application/yaml")
    obj = decoder(raw)
    obj["apiVersion"], obj["kind"] = api_version, kind
    return obj
