"""Validation, pruning and defaulting of objects against their kind's OpenAPI v3 schema.

Every kind is defined by a CustomResourceDefinition whose ``openAPIV3Schema`` describes the whole
object. On create and update the API server must treat a body as kube-apiserver treats a custom
resource, because kubectl users and controllers written for Kubernetes depend on it:

1. prune: fields the (structural) schema does not describe are dropped silently, unless a node
   says ``x-kubernetes-preserve-unknown-fields``; ``apiVersion``, ``kind`` and ``metadata`` of
   the object (and of ``x-kubernetes-embedded-resource`` objects) are never pruned;
2. nulls: a ``null`` for a field that is not ``nullable`` is dropped (then defaulted if it
   has a default);
3. default: missing fields with a ``default`` get a copy of it, recursively, so defaults inside
   a defaulted object apply too;
4. validate: every constraint is checked and each violation is reported as a cause with the
   field path (``spec.ports[0].name``) and Kubernetes' wording, in one 422 response.

Validation of the shaped object runs through fastjsonschema, which compiles the schema into
straight-line Python once per schema; only when it rejects an object does a slower walk collect
every violation for the error response, so valid requests pay for one generated function call.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import functools
import ipaddress
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import fastjsonschema
import re2

from setpoint.server.errors import Invalid
from setpoint.server.patch import copy_json

__all__ = ["Validator", "compile_schema"]

log = logging.getLogger(__name__)

_TYPES: Final = frozenset({"object", "array", "string", "integer", "number", "boolean"})
# Keywords a structural schema may not use (kube-apiserver rejects such CRDs); failing loudly
# beats validating something other than what the author meant.
_UNSUPPORTED: Final = ("$ref", "definitions", "dependencies", "additionalItems", "patternProperties")
_META_FIELDS: Final = frozenset({"apiVersion", "kind", "metadata"})


# ---------------------------------------------------------------------------------------------
# Formats. Kubernetes checks the formats of its strfmt registry and ignores all others (int32,
# int64, float, double, ... annotate numbers and are no constraint), so unknown ones are dropped.

# Patterns from users' schemas, and formats whose expressions could backtrack, run on RE2: time
# linear in the input, as Kubernetes (Go's regexp) has it, so no value can stall the event loop.
_RE2_OPTIONS: Final = re2.Options()
_RE2_OPTIONS.log_errors = False


def re2_compile(pattern: str) -> Any:
    return re2.compile(pattern, options=_RE2_OPTIONS)


_DATE_RE: Final = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_DATETIME_RE: Final = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:?\d{2})?$"
)
_UUID_RE: Final = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)
_UUID_V_RE: Final = {
    v: re.compile(
        rf"^[0-9a-fA-F]{{8}}-?[0-9a-fA-F]{{4}}-?{v}[0-9a-fA-F]{{3}}-?[89abAB][0-9a-fA-F]{{3}}-?[0-9a-fA-F]{{12}}$"
    )
    for v in "345"
}
_HOSTNAME_LABEL_RE: Final = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?$")
_MAC_RE: Final = re.compile(
    r"^([0-9a-fA-F]{2}([:-]))[0-9a-fA-F]{2}(\2[0-9a-fA-F]{2}){4}((\2[0-9a-fA-F]{2}){2}|(\2[0-9a-fA-F]{2}){14})?$"
    r"|^[0-9a-fA-F]{4}\.[0-9a-fA-F]{4}\.[0-9a-fA-F]{4}(\.[0-9a-fA-F]{4}){0,7}$"
)
_DURATION_RE: Final = re2_compile(
    r"^[-+]?(\s*(\d+(\.\d*)?|\.\d+)\s*"
    r"(ns|us|µs|ms|s|m|h|d|w|sec|secs|second|seconds|min|mins|minute|minutes|hr|hrs|hour|hours|"
    r"day|days|wk|wks|week|weeks))+$"
)
_EMAIL_RE: Final = re2_compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _is_date(s: str) -> bool:
    m = _DATE_RE.match(s)
    if not m:
        return False
    try:
        _dt.date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return False
    return True


def _is_datetime(s: str) -> bool:
    m = _DATETIME_RE.match(s)
    if not m:
        return False
    try:
        _dt.datetime(int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), min(int(m[6]), 59))
    except ValueError:
        return False
    return int(m[6]) <= 60  # a leap second is a valid RFC 3339 time


def _is_hostname(s: str) -> bool:
    name = s[:-1] if s.endswith(".") else s
    if not name or len(name) > 253:
        return False
    return all(len(label) <= 63 and _HOSTNAME_LABEL_RE.match(label) for label in name.split("."))


def _is_ip(version: int) -> Callable[[str], bool]:
    def check(s: str) -> bool:
        try:
            return ipaddress.ip_address(s).version == version
        except ValueError:
            return False

    return check


def _is_cidr(s: str) -> bool:
    try:
        ipaddress.ip_network(s, strict=False)
    except ValueError:
        return False
    return "/" in s


def _is_byte(s: str) -> bool:
    try:
        base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _is_uri(s: str) -> bool:
    # Go's url.ParseRequestURI: an absolute URI or an absolute path, no whitespace.
    if not s or any(c.isspace() for c in s):
        return False
    return s.startswith("/") or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", s) is not None


_FORMATS: Final[dict[str, Callable[[str], bool]]] = {
    "date": _is_date,
    "date-time": _is_datetime,
    "datetime": _is_datetime,
    "uuid": lambda s: _UUID_RE.match(s) is not None,
    "uuid3": lambda s: _UUID_V_RE["3"].match(s) is not None,
    "uuid4": lambda s: _UUID_V_RE["4"].match(s) is not None,
    "uuid5": lambda s: _UUID_V_RE["5"].match(s) is not None,
    "hostname": _is_hostname,
    "ipv4": _is_ip(4),
    "ipv6": _is_ip(6),
    "cidr": _is_cidr,
    "mac": lambda s: _MAC_RE.match(s) is not None,
    "byte": _is_byte,
    "duration": lambda s: _DURATION_RE.match(s) is not None,
    "email": lambda s: _EMAIL_RE.match(s) is not None,
    "uri": _is_uri,
    "bsonobjectid": lambda s: re.fullmatch(r"[0-9a-fA-F]{24}", s) is not None,
    "hexcolor": lambda s: re.fullmatch(r"#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})", s) is not None,
    "password": lambda s: True,
}


# ---------------------------------------------------------------------------------------------
# The compiled schema tree


@dataclass(eq=False, slots=True)
class _Node:
    type: str | None = None
    nullable: bool = False
    int_or_string: bool = False
    preserve: bool = False
    embedded: bool = False
    keeps_meta: bool = False
    properties: dict[str, _Node] = field(default_factory=dict)
    additional: _Node | None = None
    additional_allowed: bool = True
    items: _Node | None = None
    has_default: bool = False
    default: Any = None
    defaulted: tuple[tuple[str, _Node], ...] = ()
    required: tuple[str, ...] = ()
    enum: list[Any] | None = None
    maximum: float | None = None
    exclusive_maximum: bool = False
    minimum: float | None = None
    exclusive_minimum: bool = False
    multiple_of: float | None = None
    max_length: int | None = None
    min_length: int | None = None
    pattern: Any = None  # an RE2 expression
    max_items: int | None = None
    min_items: int | None = None
    unique_items: bool = False
    max_properties: int | None = None
    min_properties: int | None = None
    format: str | None = None
    all_of: tuple[_Node, ...] = ()
    any_of: tuple[_Node, ...] = ()
    one_of: tuple[_Node, ...] = ()
    not_: _Node | None = None
    list_type: str | None = None
    list_map_keys: tuple[str, ...] = ()


def _expect(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise ValueError(f"{where or '<root>'}: {what}")


def _number(schema: Mapping[str, Any], key: str, where: str) -> float | None:
    v = schema.get(key)
    if v is None:
        return None
    _expect(isinstance(v, (int, float)) and not isinstance(v, bool), where, f"{key} must be a number")
    return float(v) if isinstance(v, float) else v


def _count(schema: Mapping[str, Any], key: str, where: str) -> int | None:
    v = schema.get(key)
    if v is None:
        return None
    _expect(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        where,
        f"{key} must be a non-negative integer",
    )
    return int(v)


def _build(schema: Any, where: str) -> _Node:
    _expect(isinstance(schema, Mapping), where, "a schema must be an object")
    for key in _UNSUPPORTED:
        _expect(key not in schema, where, f"{key} is not supported in a structural schema")
    node = _Node()
    t = schema.get("type")
    if t is not None:
        _expect(t in _TYPES, where, f"type must be one of {', '.join(sorted(_TYPES))}, not {t!r}")
        node.type = t
    node.nullable = bool(schema.get("nullable", False))
    node.int_or_string = bool(schema.get("x-kubernetes-int-or-string", False))
    node.preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields", False))
    node.embedded = bool(schema.get("x-kubernetes-embedded-resource", False))
    node.keeps_meta = node.embedded
    if "default" in schema:
        node.has_default, node.default = True, schema["default"]
    props = schema.get("properties", {})
    _expect(isinstance(props, Mapping), where, "properties must be an object")
    node.properties = {str(k): _build(v, f"{where}.properties[{k}]") for k, v in props.items()}
    node.defaulted = tuple((k, p) for k, p in node.properties.items() if p.has_default)
    additional = schema.get("additionalProperties")
    if isinstance(additional, bool):
        node.additional_allowed = additional
        if additional:
            # "true" means any value; kube-apiserver keeps such maps as they are.
            node.additional = _Node(preserve=True)
    elif additional is not None:
        node.additional = _build(additional, f"{where}.additionalProperties")
    if "items" in schema:
        _expect(isinstance(schema["items"], Mapping), where, "items must be a single schema")
        node.items = _build(schema["items"], f"{where}.items")
    required = schema.get("required", [])
    _expect(
        isinstance(required, list) and all(isinstance(r, str) for r in required),
        where,
        "required must be a list of strings",
    )
    node.required = tuple(required)
    enum = schema.get("enum")
    if enum is not None:
        _expect(isinstance(enum, list), where, "enum must be a list")
        node.enum = list(enum)
    node.maximum = _number(schema, "maximum", where)
    node.minimum = _number(schema, "minimum", where)
    node.exclusive_maximum = bool(schema.get("exclusiveMaximum", False))
    node.exclusive_minimum = bool(schema.get("exclusiveMinimum", False))
    node.multiple_of = _number(schema, "multipleOf", where)
    _expect(node.multiple_of is None or node.multiple_of > 0, where, "multipleOf must be greater than 0")
    node.max_length = _count(schema, "maxLength", where)
    node.min_length = _count(schema, "minLength", where)
    node.max_items = _count(schema, "maxItems", where)
    node.min_items = _count(schema, "minItems", where)
    node.max_properties = _count(schema, "maxProperties", where)
    node.min_properties = _count(schema, "minProperties", where)
    node.unique_items = bool(schema.get("uniqueItems", False))
    if "pattern" in schema:
        _expect(isinstance(schema["pattern"], str), where, "pattern must be a string")
        try:
            node.pattern = re2_compile(schema["pattern"])
        except re2.error as e:
            raise ValueError(
                f"{where or '<root>'}: pattern {schema['pattern']!r} is not a valid regular expression: {e}"
            ) from None
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in _FORMATS:
        node.format = fmt
    for key in ("allOf", "anyOf", "oneOf"):
        subs = schema.get(key, [])
        _expect(isinstance(subs, list), where, f"{key} must be a list of schemas")
        built = tuple(_build(s, f"{where}.{key}[{i}]") for i, s in enumerate(subs))
        setattr(node, {"allOf": "all_of", "anyOf": "any_of", "oneOf": "one_of"}[key], built)
    if "not" in schema:
        node.not_ = _build(schema["not"], f"{where}.not")
    list_type = schema.get("x-kubernetes-list-type")
    if list_type is not None:
        _expect(
            list_type in ("atomic", "set", "map"), where, "x-kubernetes-list-type must be atomic, set or map"
        )
        node.list_type = list_type
        if list_type == "map":
            keys = schema.get("x-kubernetes-list-map-keys", [])
            _expect(
                isinstance(keys, list) and bool(keys) and all(isinstance(k, str) for k in keys),
                where,
                "x-kubernetes-list-type: map needs x-kubernetes-list-map-keys",
            )
            node.list_map_keys = tuple(keys)
    return node


PATTERN_FORMAT: Final = "setpoint-re2-pattern:"


def _re2_check(expr: Any) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        return expr.search(value) is not None

    return check


def _pattern_formats(translated: Any) -> dict[str, Callable[[str], bool]]:
    """The RE2 check of every pattern in a translated schema, by its format name."""
    found: dict[str, Callable[[str], bool]] = {}
    stack = [translated]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            fmt = node.get("format")
            if isinstance(fmt, str) and fmt.startswith(PATTERN_FORMAT) and fmt not in found:
                found[fmt] = _re2_check(re2_compile(fmt[len(PATTERN_FORMAT):]))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _translate(schema: Mapping[str, Any], *, root: bool = False) -> dict[str, Any]:
    """The schema in JSON Schema draft 7 terms, with Kubernetes' extensions spelled out."""
    out: dict[str, Any] = {}
    if schema.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    elif "type" in schema:
        out["type"] = schema["type"]
    for key in (
        "required",
        "enum",
        "multipleOf",
        "maxLength",
        "minLength",
        "maxItems",
        "minItems",
        "uniqueItems",
        "maxProperties",
        "minProperties",
    ):
        if key in schema:
            out[key] = schema[key]
    if out.get("required") == []:
        del out["required"]
    # OpenAPI 3.0 (like draft 4) has boolean exclusive flags; draft 7 wants the bound itself.
    for bound, flag in (("maximum", "exclusiveMaximum"), ("minimum", "exclusiveMinimum")):
        if bound in schema:
            out[flag if schema.get(flag) else bound] = schema[bound]
    if "properties" in schema:
        out["properties"] = {k: _translate(v) for k, v in schema["properties"].items()}
    additional = schema.get("additionalProperties")
    if isinstance(additional, bool):
        out["additionalProperties"] = additional
    elif additional is not None:
        out["additionalProperties"] = _translate(additional)
    if "items" in schema:
        out["items"] = _translate(schema["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            out[key] = [_translate(s) for s in schema[key]]
    if "not" in schema:
        out["not"] = _translate(schema["not"])
    if schema.get("format") in _FORMATS:
        out["format"] = schema["format"]
    if isinstance(schema.get("pattern"), str):
        # Checked by RE2 through a format of its own, not by fastjsonschema's backtracking ``re``.
        out["allOf"] = [*out.get("allOf", []), {"format": PATTERN_FORMAT + schema["pattern"]}]
    if schema.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    if schema.get("x-kubernetes-embedded-resource") and not root:
        out = {"allOf": [out, _EMBEDDED_JSONSCHEMA]}
    if schema.get("nullable"):
        out = {"anyOf": [{"type": "null"}, out]}
    return out


_EMBEDDED_JSONSCHEMA: Final = {
    "type": "object",
    "required": ["apiVersion", "kind"],
    "properties": {
        "apiVersion": {"type": "string", "minLength": 1, "pattern": r"^[^/]*/?[^/]*$"},
        "kind": {"type": "string", "maxLength": 63, "pattern": r"^[A-Za-z]([-A-Za-z0-9]*[A-Za-z0-9])?$"},
    },
}


# ---------------------------------------------------------------------------------------------
# Pruning and defaulting


def _strip(value: Any) -> Any:
    """What pruning leaves of a value no schema describes: objects lose every field."""
    if isinstance(value, dict):
        return {}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _keeps_meta(node: _Node, key: str, value: Any) -> bool:
    if key == "metadata":
        return isinstance(value, dict) or node.preserve
    return isinstance(value, str) or node.preserve


def _shape(node: _Node | None, value: Any, dup: list[bool]) -> Any:
    """Prune, clean nulls and default ``value`` in place (see the module doc); return it, or
    what takes its place where pruning replaces a value (objects no schema describes).

    In place because the objects shaped on the request path are freshly decoded and owned by
    the request; copying them doubled the cost of this walk. ``dup`` receives True when a
    ``list-type: map`` list repeats a key, which JSON Schema cannot express; the walk is
    already visiting every list, so the check costs nothing extra.
    """
    if node is None:
        return _strip(value)
    if isinstance(value, dict):
        props, additional = node.properties, node.additional
        drop: list[str] = []
        for key, v in value.items():
            if node.keeps_meta and key in _META_FIELDS and _keeps_meta(node, key, v):
                continue
            child = props.get(key, additional)
            if child is None:
                if not node.preserve:
                    drop.append(key)
                continue
            if v is None and not child.nullable:
                if child.has_default:
                    value[key] = _shape(child, copy_json(child.default), dup)
                else:
                    drop.append(key)
                continue
            shaped = _shape(child, v, dup)
            if shaped is not v:
                value[key] = shaped  # an existing key: the dict does not change size
        for key in drop:
            del value[key]
        for key, child in node.defaulted:
            if key not in value:
                value[key] = _shape(child, copy_json(child.default), dup)
        return value
    if isinstance(value, list):
        items = node.items
        if items is None and node.preserve:
            return value
        for i, v in enumerate(value):
            if v is None and items is not None and not items.nullable and items.has_default:
                value[i] = _shape(items, copy_json(items.default), dup)
            else:
                shaped = _shape(items, v, dup)
                if shaped is not v:
                    value[i] = shaped
        if node.list_map_keys and not dup:
            seen: set[str] = set()
            for item in value:
                if isinstance(item, dict):
                    k = json.dumps([item.get(key) for key in node.list_map_keys], sort_keys=True)
                    if k in seen:
                        dup.append(True)
                        break
                    seen.add(k)
        return value
    return value


# ---------------------------------------------------------------------------------------------
# Error collection (only for rejected objects): Kubernetes' field errors and go-openapi texts.


def _go(value: Any) -> str:
    """A value as Kubernetes prints it in "Invalid value: X" (Go's %q / %v)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e21 else repr(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _num(value: float | None) -> str:
    return _go(value)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _has_type(t: str, value: Any) -> bool:
    if t == "object":
        return isinstance(value, dict)
    if t == "array":
        return isinstance(value, list)
    if t == "string":
        return isinstance(value, str)
    if t == "boolean":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if t == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    return isinstance(value, (int, float))  # number


def _json_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    return bool(a == b)


_Cause = tuple[str, str, str]


def _key(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Collector:
    """Walks a shaped object and records every violation as (reason, message, field)."""

    def __init__(self) -> None:
        self.causes: list[_Cause] = []

    def type_invalid(self, path: str, expected: str, value: Any, shown: Any) -> None:
        body = f"Invalid value: {_go(shown)}: {path} in body must be of type {expected}: {_go(shown)}"
        self.causes.append(("FieldValueTypeInvalid", body, path))

    def invalid(self, path: str, value: Any, detail: str) -> None:
        self.causes.append(("FieldValueInvalid", f"Invalid value: {_go(value)}: {detail}", path))

    def visit(self, node: _Node, value: Any, path: str) -> None:
        if value is None:
            if node.nullable or (node.type is None and not node.int_or_string):
                return
            expected = "integer,string" if node.int_or_string else str(node.type)
            self.type_invalid(path, expected, value, "null")
            return
        if node.int_or_string:
            if not (_has_type("integer", value) or isinstance(value, str)):
                self.type_invalid(path, "integer,string", value, _json_type(value))
                return
        elif node.type is not None and not _has_type(node.type, value):
            self.type_invalid(path, node.type, value, _json_type(value))
            return
        if node.format is not None and isinstance(value, str) and not _FORMATS[node.format](value):
            body = f"Invalid value: {_go(value)}: {path} in body must be of type {node.format}: {_go(value)}"
            self.causes.append(("FieldValueTypeInvalid", body, path))
        if node.enum is not None and not any(_json_equal(value, e) for e in node.enum):
            supported = ", ".join(json.dumps(e if isinstance(e, str) else _go(e)) for e in node.enum)
            body = f"Unsupported value: {_go(value)}: supported values: {supported}"
            self.causes.append(("FieldValueNotSupported", body, path))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            self.numeric(node, value, path)
        elif isinstance(value, str):
            self.string(node, value, path)
        elif isinstance(value, list):
            self.array(node, value, path)
        elif isinstance(value, dict):
            self.object(node, value, path)
        self.combinators(node, value, path)

    def numeric(self, node: _Node, value: float, path: str) -> None:
        if node.maximum is not None:
            if node.exclusive_maximum and value >= node.maximum:
                self.invalid(path, value, f"{path} in body should be less than {_num(node.maximum)}")
            elif value > node.maximum:
                self.invalid(
                    path, value, f"{path} in body should be less than or equal to {_num(node.maximum)}"
                )
        if node.minimum is not None:
            if node.exclusive_minimum and value <= node.minimum:
                self.invalid(path, value, f"{path} in body should be greater than {_num(node.minimum)}")
            elif value < node.minimum:
                self.invalid(
                    path, value, f"{path} in body should be greater than or equal to {_num(node.minimum)}"
                )
        if node.multiple_of is not None:
            if not float(value / node.multiple_of).is_integer():
                self.invalid(path, value, f"{path} in body should be a multiple of {_num(node.multiple_of)}")

    def string(self, node: _Node, value: str, path: str) -> None:
        if node.max_length is not None and len(value) > node.max_length:
            self.causes.append(
                ("FieldValueTooLong", f"Too long: may not be longer than {node.max_length}", path)
            )
        if node.min_length is not None and len(value) < node.min_length:
            self.invalid(path, value, f"{path} in body should be at least {node.min_length} chars long")
        if node.pattern is not None and not node.pattern.search(value):
            self.invalid(path, value, f"{path} in body should match '{node.pattern.pattern}'")

    def array(self, node: _Node, value: list[Any], path: str) -> None:
        if node.max_items is not None and len(value) > node.max_items:
            body = f"Too many: {len(value)}: must have at most {node.max_items} items"
            self.causes.append(("FieldValueTooMany", body, path))
        if node.min_items is not None and len(value) < node.min_items:
            self.invalid(path, value, f"{path} in body should have at least {node.min_items} items")
        if node.unique_items or node.list_type == "set":
            for i, item in enumerate(value):
                if any(_json_equal(item, earlier) for earlier in value[:i]):
                    self.causes.append(
                        ("FieldValueDuplicate", f"Duplicate value: {_go(item)}", f"{path}[{i}]")
                    )
        if node.list_map_keys:
            seen: set[str] = set()
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    keyvals = {k: item.get(k) for k in node.list_map_keys}
                    k = json.dumps(keyvals, sort_keys=True)
                    if k in seen:
                        self.causes.append(
                            ("FieldValueDuplicate", f"Duplicate value: {_go(keyvals)}", f"{path}[{i}]")
                        )
                    seen.add(k)
        if node.items is not None:
            for i, item in enumerate(value):
                self.visit(node.items, item, f"{path}[{i}]")

    def object(self, node: _Node, value: dict[str, Any], path: str) -> None:
        for name in node.required:
            if name not in value:
                self.causes.append(("FieldValueRequired", "Required value", _key(path, name)))
        if node.max_properties is not None and len(value) > node.max_properties:
            body = f"Too many: {len(value)}: must have at most {node.max_properties} items"
            self.causes.append(("FieldValueTooMany", body, path))
        if node.min_properties is not None and len(value) < node.min_properties:
            self.invalid(path, value, f"{path} in body should have at least {node.min_properties} properties")
        if node.embedded:
            self.embedded(value, path)
        for name, child in node.properties.items():
            if name in value:
                self.visit(child, value[name], _key(path, name))
        for name, v in value.items():
            if name in node.properties:
                continue
            if node.additional is not None:
                self.visit(node.additional, v, f"{path}[{name}]" if path else name)
            elif not node.additional_allowed and not (node.keeps_meta and name in _META_FIELDS):
                self.causes.append(
                    (
                        "FieldValueForbidden",
                        f"Forbidden: {_key(path, name)} in body is a forbidden property",
                        _key(path, name),
                    )
                )

    def embedded(self, value: dict[str, Any], path: str) -> None:
        for name in ("apiVersion", "kind"):
            fpath = _key(path, name)
            if name not in value:
                self.causes.append(("FieldValueRequired", "Required value: must not be empty", fpath))
                continue
            v = value[name]
            if not isinstance(v, str):
                self.invalid(fpath, v, "must be a string")
            elif not v:
                self.invalid(fpath, v, "must not be empty")
            elif name == "apiVersion" and v.count("/") > 1:
                self.invalid(fpath, v, f"unexpected GroupVersion string: {v}")
            elif name == "kind" and not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", v.lower()):
                self.invalid(
                    fpath,
                    v,
                    "may have mixed case, but should otherwise match: a DNS-1035 label must "
                    "consist of lower case alphanumeric characters or '-', start with an alphabetic "
                    "character, and end with an alphanumeric character",
                )
            elif name == "kind" and len(v) > 63:
                self.invalid(
                    fpath,
                    v,
                    "may have mixed case, but should otherwise match: must be no more than 63 characters",
                )

    def combinators(self, node: _Node, value: Any, path: str) -> None:
        for sub in node.all_of:
            self.visit(sub, value, path)
        if node.any_of and not any(_valid(sub, value) for sub in node.any_of):
            self.invalid(path, value, f"{path} in body must validate at least one schema (anyOf)")
        if node.one_of and sum(1 for sub in node.one_of if _valid(sub, value)) != 1:
            self.invalid(path, value, f"{path} in body must validate one and only one schema (oneOf)")
        if node.not_ is not None and _valid(node.not_, value):
            self.invalid(path, value, f"{path} in body must not validate the schema (not)")


def _valid(node: _Node, value: Any) -> bool:
    c = _Collector()
    c.visit(node, value, "")
    return not c.causes


# ---------------------------------------------------------------------------------------------


def _fast_error_field(exc: fastjsonschema.JsonSchemaValueException) -> str:
    """fastjsonschema's ``data.spec.ports[0]`` as ``spec.ports[0]``."""
    name = exc.name or "data"
    return name[5:] if name.startswith("data.") else ("" if name == "data" else name)


class Validator:
    """A compiled schema: call it with an object to get the pruned and defaulted object back.

    Raises Invalid (422) with one cause per violation, worded as kube-apiserver words them and
    with Kubernetes field paths. Instances are immutable and safe to share across requests.
    """

    __slots__ = ("_check", "_root", "schema")

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.schema = schema
        try:
            root = _build(schema, "")
            if root.type not in (None, "object"):
                raise ValueError("<root>: the schema of an object must have type object")
            # apiVersion, kind and metadata of the object itself are not the schema's to prune
            # (they are validated and defaulted elsewhere), as in an embedded resource.
            root.keeps_meta = True
            translated = _translate(schema, root=True)
            self._check: Callable[[Any], Any] = fastjsonschema.compile(
                translated, formats={**_FORMATS, **_pattern_formats(translated)}, use_default=False,
                use_formats=True,
            )
        except ValueError:
            raise
        except (
            fastjsonschema.JsonSchemaDefinitionException,
            re.error,
            TypeError,
            AttributeError,
            KeyError,
        ) as e:
            raise ValueError(f"invalid openAPIV3Schema: {e}") from None
        self._root = root
        if _mentions(schema, "x-kubernetes-validations"):
            log.warning("x-kubernetes-validations (CEL) rules are not enforced by setpoint")

    def __call__(self, obj: Mapping[str, Any], *, owned: bool = False) -> dict[str, Any]:
        """``owned``: the caller hands ``obj`` over (it was decoded for this request), so it is
        shaped in place; otherwise ``obj`` is left as it is and the result shares nothing
        with it."""
        dup: list[bool] = []
        shaped: dict[str, Any] = _shape(self._root, obj if owned else copy_json(obj), dup)
        try:
            self._check(shaped)
        except fastjsonschema.JsonSchemaValueException as e:
            raise self._invalid(shaped, e) from None
        if dup:
            raise self._invalid(shaped, None)
        return shaped

    def unknown_fields(self, obj: Mapping[str, Any]) -> list[str]:
        """The paths of fields pruning would drop (``spec.foo``), for ``fieldValidation``
        Strict and Warn; not on the ordinary path, which prunes silently."""
        out: list[str] = []
        _unknown(self._root, obj, "", out)
        meta = obj.get("metadata")
        if isinstance(meta, Mapping):
            out.extend(f"metadata.{k}" for k in meta if k not in OBJECT_META_FIELDS)
        return out

    def _invalid(
        self, obj: Mapping[str, Any], fast: fastjsonschema.JsonSchemaValueException | None
    ) -> Invalid:
        collector = _Collector()
        collector.visit(self._root, obj, "")
        causes = collector.causes
        if not causes and fast is not None:
            # The two walks agree on every keyword we know; should they not, still say why.
            path = _fast_error_field(fast)
            causes = [("FieldValueInvalid", f"Invalid value: {_go(fast.value)}: {fast.message}", path)]
        return _invalid_error(obj, causes)


OBJECT_META_FIELDS: Final = frozenset({
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
    "ownerReferences", "finalizers", "managedFields",
})


def _unknown(node: _Node | None, value: Any, path: str, out: list[str]) -> None:
    if node is None or (node.preserve and node.items is None and not node.properties and node.additional is None):
        return
    if isinstance(value, dict):
        for key, v in value.items():
            if node.keeps_meta and key in _META_FIELDS:
                continue
            child = node.properties.get(key, node.additional)
            where = f"{path}.{key}" if path else key
            if child is None:
                if not node.preserve:
                    out.append(where)
                continue
            _unknown(child, v, where, out)
    elif isinstance(value, list) and node.items is not None:
        for i, v in enumerate(value):
            _unknown(node.items, v, f"{path}[{i}]", out)


def _mentions(schema: Any, key: str) -> bool:
    if isinstance(schema, Mapping):
        return key in schema or any(_mentions(v, key) for v in schema.values())
    if isinstance(schema, list):
        return any(_mentions(v, key) for v in schema)
    return False


def _invalid_error(obj: Mapping[str, Any], causes: list[_Cause]) -> Invalid:
    """``Widget.example.com "w1" is invalid: [spec.replicas: Invalid value: ..., ...]``."""
    api_version = obj.get("apiVersion")
    group = api_version.rpartition("/")[0] if isinstance(api_version, str) else ""
    kind = obj.get("kind") if isinstance(obj.get("kind"), str) else ""
    meta = obj.get("metadata")
    name = meta.get("name", "") if isinstance(meta, dict) else ""
    name = name if isinstance(name, str) else ""
    qualified = f"{kind}.{group}" if group else str(kind)
    errors = [f"{f}: {m}" if f else m for _, m, f in causes]
    detail = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
    return Invalid(
        f"{qualified} {json.dumps(name)} is invalid: {detail}",
        causes=causes,
        details_name=name,
        details_kind=str(kind),
        details_group=group,
    )


@functools.lru_cache(maxsize=512)
def _compile_cached(key: str) -> Validator:
    return Validator(json.loads(key))


def compile_schema(openapi_v3_schema: Mapping[str, Any]) -> Validator:
    """The Validator for a CRD's ``openAPIV3Schema``, compiled once and then shared.

    Schemas are cached by their canonical JSON, so every version of every kind compiles once
    per process however often it is looked up. A schema that cannot be compiled raises
    ValueError saying where and why; the caller reports it as an invalid CRD.
    """
    try:
        key = json.dumps(openapi_v3_schema, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise ValueError(f"invalid openAPIV3Schema: not JSON: {e}") from None
    return _compile_cached(key)
