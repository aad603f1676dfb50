"""Why an object was rejected, as kube-apiserver says it: one cause per violation.

fastjsonschema's generated function gives a verdict and stops at the first violation, worded
its own way with its own paths (``data.spec.ports[0]``). kubectl users, and clients that show
``causes`` next to a form's fields, expect every violation at once, with Kubernetes' field paths
(``spec.ports[0].name``), reasons (``FieldValueRequired``, ``FieldValueInvalid``, ...) and
go-openapi's wording. So only a rejected object takes this slower walk over the compiled tree;
valid requests never pay for it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import fastjsonschema

from setpoint.server.errors import Invalid
from setpoint.server.schema.formats import FORMATS
from setpoint.server.schema.node import META_FIELDS, Node

__all__ = ["Cause", "Collector", "explain"]

# (reason, message, field), as a Status cause carries them.
Cause = tuple[str, str, str]


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


def _key(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class Collector:
    """Walks a shaped object and records every violation as (reason, message, field)."""

    def __init__(self) -> None:
        self.causes: list[Cause] = []

    def type_invalid(self, path: str, expected: str, value: Any, shown: Any) -> None:
        body = f"Invalid value: {_go(shown)}: {path} in body must be of type {expected}: {_go(shown)}"
        self.causes.append(("FieldValueTypeInvalid", body, path))

    def invalid(self, path: str, value: Any, detail: str) -> None:
        self.causes.append(("FieldValueInvalid", f"Invalid value: {_go(value)}: {detail}", path))

    def visit(self, node: Node, value: Any, path: str) -> None:
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
        if node.format is not None and isinstance(value, str) and not FORMATS[node.format](value):
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

    def numeric(self, node: Node, value: float, path: str) -> None:
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

    def string(self, node: Node, value: str, path: str) -> None:
        if node.max_length is not None and len(value) > node.max_length:
            self.causes.append(
                ("FieldValueTooLong", f"Too long: may not be longer than {node.max_length}", path)
            )
        if node.min_length is not None and len(value) < node.min_length:
            self.invalid(path, value, f"{path} in body should be at least {node.min_length} chars long")
        if node.pattern is not None and not node.pattern.search(value):
            self.invalid(path, value, f"{path} in body should match '{node.pattern.pattern}'")

    def array(self, node: Node, value: list[Any], path: str) -> None:
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

    def object(self, node: Node, value: dict[str, Any], path: str) -> None:
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
            elif not node.additional_allowed and not (node.keeps_meta and name in META_FIELDS):
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

    def combinators(self, node: Node, value: Any, path: str) -> None:
        for sub in node.all_of:
            self.visit(sub, value, path)
        if node.any_of and not any(_valid(sub, value) for sub in node.any_of):
            self.invalid(path, value, f"{path} in body must validate at least one schema (anyOf)")
        if node.one_of and sum(1 for sub in node.one_of if _valid(sub, value)) != 1:
            self.invalid(path, value, f"{path} in body must validate one and only one schema (oneOf)")
        if node.not_ is not None and _valid(node.not_, value):
            self.invalid(path, value, f"{path} in body must not validate the schema (not)")


def _valid(node: Node, value: Any) -> bool:
    c = Collector()
    c.visit(node, value, "")
    return not c.causes


def explain(root: Node, obj: Mapping[str, Any], fast: fastjsonschema.JsonSchemaValueException | None) -> Invalid:
    """The 422 for a shaped ``obj`` that failed validation: ``fast`` is fastjsonschema's verdict,
    or None when only the shape walk objected (a ``list-type: map`` key repeated)."""
    collector = Collector()
    collector.visit(root, obj, "")
    causes = collector.causes
    if not causes and fast is not None:
        # The two walks agree on every keyword we know; should they not, still say why.
        path = _fast_error_field(fast)
        causes = [("FieldValueInvalid", f"Invalid value: {_go(fast.value)}: {fast.message}", path)]
    return _invalid_error(obj, causes)


def _fast_error_field(exc: fastjsonschema.JsonSchemaValueException) -> str:
    """fastjsonschema's ``data.spec.ports[0]`` as ``spec.ports[0]``."""
    name = exc.name or "data"
    return name[5:] if name.startswith("data.") else ("" if name == "data" else name)


def _invalid_error(obj: Mapping[str, Any], causes: list[Cause]) -> Invalid:
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

