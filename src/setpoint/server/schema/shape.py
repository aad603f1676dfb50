"""Pruning and defaulting: what kube-apiserver does to a custom resource before validating it.

kubectl users and controllers written for Kubernetes depend on a body being shaped as there:

1. prune: fields the (structural) schema does not describe are dropped silently, unless a node
   says ``x-kubernetes-preserve-unknown-fields``; ``apiVersion``, ``kind`` and ``metadata`` of
   the object (and of ``x-kubernetes-embedded-resource`` objects) are never pruned;
2. nulls: a ``null`` for a field that is not ``nullable`` is dropped (then defaulted if it
   has a default);
3. default: missing fields with a ``default`` get a copy of it, recursively, so defaults inside
   a defaulted object apply too.

The same tree also answers which fields pruning would drop, for ``fieldValidation`` Strict and
Warn, without shaping anything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from setpoint.server.patch import copy_json
from setpoint.server.schema.node import META_FIELDS, Node

__all__ = ["OBJECT_META_FIELDS", "shape", "unknown_fields"]


_CONTAINERS: Final = (dict, list)  # what shaping may change inside; a scalar comes out as it went in
# Items of these exact types (what a JSON decoder makes of strings and numbers; not None, which
# may be defaulted) are left as they are: a list of only these is skipped in one pass in C.
_SCALARS: Final = frozenset({str, int, float, bool})


def _strip(value: Any) -> Any:
    """What pruning leaves of a value no schema describes: objects lose every field."""
    if isinstance(value, dict):
        return {}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _keeps_meta(node: Node, key: str, value: Any) -> bool:
    if key == "metadata":
        return isinstance(value, dict) or node.preserve
    return isinstance(value, str) or node.preserve


def shape(node: Node | None, value: Any, dup: list[bool]) -> Any:
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
            if node.keeps_meta and key in META_FIELDS and _keeps_meta(node, key, v):
                continue
            child = props.get(key, additional)
            if child is None:
                if not node.preserve:
                    drop.append(key)
                continue
            if v is None:
                if child.nullable:
                    continue
                if child.has_default:
                    value[key] = shape(child, copy_json(child.default), dup)
                else:
                    drop.append(key)
                continue
            if isinstance(v, _CONTAINERS):
                shaped = shape(child, v, dup)
                if shaped is not v:
                    value[key] = shaped  # an existing key: the dict does not change size
        for key in drop:
            del value[key]
        for key, child in node.defaulted:
            if key not in value:
                value[key] = shape(child, copy_json(child.default), dup)
        return value
    if isinstance(value, list):
        items = node.items
        if (items is None and node.preserve) or _SCALARS.issuperset(map(type, value)):
            return value  # nothing in it to prune, clean or default (a list of strings, say)
        for i, v in enumerate(value):
            if v is None:
                if items is not None and not items.nullable and items.has_default:
                    value[i] = shape(items, copy_json(items.default), dup)
            elif isinstance(v, _CONTAINERS):
                shaped = shape(items, v, dup)
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


OBJECT_META_FIELDS: Final = frozenset({
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
    "ownerReferences", "finalizers", "managedFields",
})


def _unknown(node: Node | None, value: Any, path: str, out: list[str]) -> None:
    if node is None or (node.preserve and node.items is None and not node.properties and node.additional is None):
        return
    if isinstance(value, dict):
        for key, v in value.items():
            if node.keeps_meta and key in META_FIELDS:
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


def unknown_fields(root: Node, obj: Mapping[str, Any]) -> list[str]:
    """The paths of fields pruning would drop from ``obj`` (``spec.foo``), and the fields of its
    ``metadata`` that ObjectMeta does not have."""
    out: list[str] = []
    _unknown(root, obj, "", out)
    meta = obj.get("metadata")
    if isinstance(meta, Mapping):
        out.extend(f"metadata.{k}" for k in meta if k not in OBJECT_META_FIELDS)
    return out
