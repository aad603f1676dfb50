"""A CRD's ``openAPIV3Schema`` compiled, once per schema, into a ``Validator``.

Every kind is defined by a CustomResourceDefinition whose ``openAPIV3Schema`` describes the whole
object, and every create and update runs its validator, so the work is done here, once: the
schema is read into a tree of ``Node`` (rejecting what a structural schema may not say, so a
CRD that would validate something other than what its author meant fails loudly), and
translated into JSON Schema draft 7 for fastjsonschema, which generates straight-line Python.

A call then prunes and defaults the object (``shape``), runs the generated function, and only
when that rejects the object walks it again to explain why (``errors``): valid requests pay for
one walk and one generated function call.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

import fastjsonschema
import re2

from setpoint.server.patch import copy_json
from setpoint.server.schema.errors import explain
from setpoint.server.schema.formats import FORMATS, re2_compile
from setpoint.server.schema.node import Node
from setpoint.server.schema.shape import shape
from setpoint.server.schema.shape import unknown_fields as _unknown_fields

__all__ = ["Validator", "compile_schema"]

log = logging.getLogger(__name__)

_TYPES: Final = frozenset({"object", "array", "string", "integer", "number", "boolean"})
# Keywords a structural schema may not use (kube-apiserver rejects such CRDs); failing loudly
# beats validating something other than what the author meant.
_UNSUPPORTED: Final = ("$ref", "definitions", "dependencies", "additionalItems", "patternProperties")


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


def _build(schema: Any, where: str) -> Node:
    """The tree of ``schema``; ``where`` is its path in the CRD's schema, for the ValueError
    that says where the first thing a structural schema may not say was found."""
    _expect(isinstance(schema, Mapping), where, "a schema must be an object")
    for key in _UNSUPPORTED:
        _expect(key not in schema, where, f"{key} is not supported in a structural schema")
    node = Node()
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
    _build_structure(node, schema, where)
    _build_constraints(node, schema, where)
    _build_combinators(node, schema, where)
    _build_list_type(node, schema, where)
    return node


def _build_structure(node: Node, schema: Mapping[str, Any], where: str) -> None:
    """What the shape walk follows: properties, additionalProperties and items."""
    props = schema.get("properties", {})
    _expect(isinstance(props, Mapping), where, "properties must be an object")
    node.properties = {str(k): _build(v, f"{where}.properties[{k}]") for k, v in props.items()}
    node.defaulted = tuple((k, p) for k, p in node.properties.items() if p.has_default)
    additional = schema.get("additionalProperties")
    if isinstance(additional, bool):
        node.additional_allowed = additional
        if additional:
            # "true" means any value; kube-apiserver keeps such maps as they are.
            node.additional = Node(preserve=True)
    elif additional is not None:
        node.additional = _build(additional, f"{where}.additionalProperties")
    if "items" in schema:
        _expect(isinstance(schema["items"], Mapping), where, "items must be a single schema")
        node.items = _build(schema["items"], f"{where}.items")


def _build_constraints(node: Node, schema: Mapping[str, Any], where: str) -> None:
    """The keywords that constrain a value itself, which only the error walk reads."""
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
    if isinstance(fmt, str) and fmt in FORMATS:
        node.format = fmt


def _build_combinators(node: Node, schema: Mapping[str, Any], where: str) -> None:
    for key in ("allOf", "anyOf", "oneOf"):
        subs = schema.get(key, [])
        _expect(isinstance(subs, list), where, f"{key} must be a list of schemas")
        built = tuple(_build(s, f"{where}.{key}[{i}]") for i, s in enumerate(subs))
        setattr(node, {"allOf": "all_of", "anyOf": "any_of", "oneOf": "one_of"}[key], built)
    if "not" in schema:
        node.not_ = _build(schema["not"], f"{where}.not")


def _build_list_type(node: Node, schema: Mapping[str, Any], where: str) -> None:
    """``x-kubernetes-list-type``: set and map lists may not repeat an item or a key."""
    list_type = schema.get("x-kubernetes-list-type")
    if list_type is None:
        return
    _expect(list_type in ("atomic", "set", "map"), where, "x-kubernetes-list-type must be atomic, set or map")
    node.list_type = list_type
    if list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        _expect(
            isinstance(keys, list) and bool(keys) and all(isinstance(k, str) for k in keys),
            where,
            "x-kubernetes-list-type: map needs x-kubernetes-list-map-keys",
        )
        node.list_map_keys = tuple(keys)


# A pattern reaches fastjsonschema as a format of this prefix, so RE2 checks it, not ``re``. The
# pattern is in the name hex-encoded: fastjsonschema writes format names into the Python source it
# generates, where a backslash (``\d``, ``\.``) would be an invalid escape sequence.
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
                found[fmt] = _re2_check(re2_compile(bytes.fromhex(fmt[len(PATTERN_FORMAT):]).decode()))
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
    if schema.get("format") in FORMATS:
        out["format"] = schema["format"]
    if isinstance(schema.get("pattern"), str):
        # Checked by RE2 through a format of its own, not by fastjsonschema's backtracking ``re``.
        out["allOf"] = [*out.get("allOf", []), {"format": PATTERN_FORMAT + schema["pattern"].encode().hex()}]
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
                translated, formats={**FORMATS, **_pattern_formats(translated)}, use_default=False,
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
        shaped: dict[str, Any] = shape(self._root, obj if owned else copy_json(obj), dup)
        try:
            self._check(shaped)
        except fastjsonschema.JsonSchemaValueException as e:
            raise explain(self._root, shaped, e) from None
        if dup:
            raise explain(self._root, shaped, None)
        return shaped

    def unknown_fields(self, obj: Mapping[str, Any]) -> list[str]:
        """The paths of fields pruning would drop (``spec.foo``), for ``fieldValidation``
        Strict and Warn; not on the ordinary path, which prunes silently."""
        return _unknown_fields(self._root, obj)


def _mentions(schema: Any, key: str) -> bool:
    if isinstance(schema, Mapping):
        return key in schema or any(_mentions(v, key) for v in schema.values())
    if isinstance(schema, list):
        return any(_mentions(v, key) for v in schema)
    return False


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
