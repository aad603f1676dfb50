"""CustomResourceDefinitions from Python classes: a kind declared once, as a ``msgspec.Struct``.

Constraints are ``typing.Annotated[..., msgspec.Meta(...)]`` (minimum, maximum, pattern, lengths,
descriptions), enums are ``Literal``, defaults are the fields' defaults and descriptions come from
docstrings. ``msgspec.json.schema`` writes the JSON Schema; :func:`structural` then makes it the
structural schema the Kubernetes API requires: references inlined, ``anyOf [X, null]`` turned into
``nullable``, titles dropped, an enum given its type. The kind's names and API details are a
``kind_info`` class variable (:class:`KindInfo`). What JSON Schema cannot say but the API can
(``x-kubernetes-preserve-unknown-fields``, ``x-kubernetes-int-or-string``, an object's
``default: {}``) goes in ``msgspec.Meta(extra_json_schema=...)`` and is kept as written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec


@dataclass(frozen=True)
class KindInfo:
    group: str
    version: str = "v1alpha1"
    kind: str = ""  # default: the class's name
    plural: str = ""  # default: the kind in lower case, plus "s"
    singular: str = ""
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status_subresource: bool = True
    printer_columns: tuple[tuple[str, str, str], ...] = ()  # (name, type, jsonPath)
    selectable_fields: tuple[str, ...] = ()  # jsonPaths
    # The scale subresource (what `kubectl scale` uses): (specReplicasPath, statusReplicasPath).
    scale: tuple[str, str] | None = None


class NotStructural(ValueError):
    pass


def _resolve(node: Any, defs: Mapping[str, Any], seen: tuple[str, ...] = ()) -> Any:
    if isinstance(node, list):
        return [_resolve(v, defs, seen) for v in node]
    if not isinstance(node, Mapping):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        if name in seen:
            raise NotStructural(f"{name} refers to itself: a structural schema cannot be recursive")
        # Keys beside the reference (a field's description, default, extra_json_schema) say more
        # about this use of the type than its definition does, so they win.
        beside = {k: _resolve(v, defs, seen) for k, v in node.items() if k not in ("$ref", "$defs")}
        return {**_resolve(defs[name], defs, (*seen, name)), **beside}
    return {k: _resolve(v, defs, seen) for k, v in node.items() if k != "$defs"}


def _json_type(values: list[Any]) -> str | None:
    kinds = {type(v) for v in values}
    for t, name in ((str, "string"), (bool, "boolean"), (int, "integer"), (float, "number")):
        if kinds == {t}:
            return name
    return None


def structural(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` (from msgspec) as a structural OpenAPI v3 schema."""
    shaped: dict[str, Any] = _shape(_resolve(schema, schema.get("$defs") or {}))
    return shaped


def _shape(node: Any) -> Any:
    if isinstance(node, list):
        return [_shape(v) for v in node]
    if not isinstance(node, Mapping):
        return node
    out = {k: _shape(v) for k, v in node.items() if k not in ("title",)}
    if isinstance(out.get("description"), str):
        # A docstring's lines are wrapped for the source, not for `kubectl explain`: its lines
        # are joined, its paragraphs kept.
        out["description"] = re.sub(r"(?<!\n)\n(?!\n)", " ", out["description"])
    any_of = out.get("anyOf")
    if isinstance(any_of, list):
        rest = [s for s in any_of if s != {"type": "null"}]
        if len(rest) == 1 and len(rest) < len(any_of):
            del out["anyOf"]
            out = {**rest[0], **out, "nullable": True}
            if out.get("default", ...) is None:
                del out["default"]
        elif len(rest) < len(any_of):
            raise NotStructural("a union with null of several types is not structural")
    for bound in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"):
        # 0 and 0.0 are one bound, written one way: typing caches Annotated[float, Meta(ge=0)]
        # and Annotated[float, Meta(ge=0.0)] as one type (their Metas are equal), so which of the
        # two a class gets depends on what was declared first in the process.
        if isinstance(out.get(bound), float) and out[bound].is_integer():
            out[bound] = int(out[bound])
    if "enum" in out and "type" not in out:
        t = _json_type(list(out["enum"]))
        if t is None:
            raise NotStructural(f"an enum of mixed types is not structural: {out['enum']}")
        out["type"] = t
    if out.get("required") == []:
        del out["required"]
    return out


def crd(cls: type) -> dict[str, Any]:
    """The CustomResourceDefinition of ``cls`` (a ``msgspec.Struct`` with a ``kind_info``)."""
    info = getattr(cls, "kind_info", None)
    if not isinstance(info, KindInfo):
        raise TypeError(f"{cls.__name__} has no kind_info = KindInfo(group=...) class variable")
    kind = info.kind or cls.__name__
    plural = info.plural or kind.lower() + "s"
    schema = structural(msgspec.json.schema(cls))
    props = schema.get("properties") or {}
    for reserved in ("apiVersion", "kind", "metadata"):
        props.pop(reserved, None)
    version: dict[str, Any] = {"name": info.version, "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": schema}}
    subresources: dict[str, Any] = {}
    if info.status_subresource and "status" in props:
        subresources["status"] = {}
    if info.scale:
        subresources["scale"] = {"specReplicasPath": info.scale[0], "statusReplicasPath": info.scale[1]}
    if subresources:
        version["subresources"] = subresources
    if info.printer_columns:
        version["additionalPrinterColumns"] = [{"name": n, "type": t, "jsonPath": p}
                                               for n, t, p in info.printer_columns]
    if info.selectable_fields:
        version["selectableFields"] = [{"jsonPath": p} for p in info.selectable_fields]
    names: dict[str, Any] = {"plural": plural, "singular": info.singular or kind.lower(), "kind": kind}
    if info.short_names:
        names["shortNames"] = list(info.short_names)
    if info.categories:
        names["categories"] = list(info.categories)
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{info.group}"},
            "spec": {"group": info.group, "scope": "Namespaced" if info.namespaced else "Cluster",
                     "names": names, "versions": [version]}}
