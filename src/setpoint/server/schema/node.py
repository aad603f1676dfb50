"""The compiled form of a structural schema: a tree of ``Node``, one per schema object.

The compiler (``compile``) builds it once per schema; pruning and defaulting (``shape``) and the
explanation of a rejected object (``errors``) walk it on every request. It lives on its own so
those walks share one definition without importing the compiler that calls them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["META_FIELDS", "Node"]

# The fields of an object (and of an x-kubernetes-embedded-resource) that are not the schema's
# to prune: they are validated and defaulted as object metadata elsewhere.
META_FIELDS: Final = frozenset({"apiVersion", "kind", "metadata"})


@dataclass(eq=False, slots=True)
class Node:
    """One schema object with its keywords read and checked at compile time, so the walks on the
    request path only read attributes."""

    type: str | None = None
    nullable: bool = False
    int_or_string: bool = False
    preserve: bool = False
    embedded: bool = False
    keeps_meta: bool = False  # the root and embedded resources: META_FIELDS are never pruned
    properties: dict[str, Node] = field(default_factory=dict)
    additional: Node | None = None  # the schema of additionalProperties; None prunes unknown keys
    additional_allowed: bool = True  # False for additionalProperties: false
    items: Node | None = None
    has_default: bool = False
    default: Any = None
    defaulted: tuple[tuple[str, Node], ...] = ()  # the properties with a default, for the shape walk
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
    all_of: tuple[Node, ...] = ()
    any_of: tuple[Node, ...] = ()
    one_of: tuple[Node, ...] = ()
    not_: Node | None = None
    list_type: str | None = None
    list_map_keys: tuple[str, ...] = ()

