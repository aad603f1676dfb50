"""What the server serves: resource types, built-in and defined by CustomResourceDefinitions.

A CRD is just another stored object; the registry turns each one into a :class:`ResourceType`
the moment it is written (by this server or, through the watch cache, by another one), so a new
kind is servable without a restart.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from setpoint.server import scale
from setpoint.server.errors import Invalid
from setpoint.server.scale import ScaleSpec
from setpoint.server.strategies.base import CRD_STRATEGIES, DEFAULT, Strategy


class Validator(Protocol):
    """A compiled schema (``setpoint.server.schema.Validator``): shapes and checks an object."""

    def __call__(self, obj: dict[str, Any], *, owned: bool = False) -> dict[str, Any]: ...

CRD_GROUP = "apiextensions.k8s.io"


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" for the core group
    versions: tuple[str, ...]  # served versions, preferred (storage) first
    kind: str
    plural: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status_subresource: bool = False
    scale: ScaleSpec | None = None  # the scale subresource, when the CRD declares one
    allow_create_on_update: bool = False
    allow_unconditional_update: bool = True
    validators: dict[str, Validator] = field(default_factory=dict, compare=False, hash=False)
    printer_columns: dict[str, list[dict[str, Any]]] = field(
        default_factory=dict, compare=False, hash=False
    )
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False, hash=False)
    builtin: bool = True
    name_is_label: bool = False  # names must be DNS labels (namespaces), not subdomains
    selectable_fields: frozenset[str] = frozenset()  # field selectors beyond metadata.name/namespace
    # What is derived from the type once and reused by every request (table columns, OpenAPI
    # fragments); a CRD change builds a new type, so the memo never goes stale.
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)
    # What this kind adds to the verbs (see ``server/strategies/``).
    strategy: Strategy = field(default=DEFAULT, compare=False, hash=False, repr=False)

    @property
    def storage_version(self) -> str:
        return self.versions[0]

    def api_version(self, version: str | None = None) -> str:
        v = version or self.storage_version
        return f"{self.group}/{v}" if self.group else v

    @property
    def group_resource(self) -> str:
        """``plural.group`` as Kubernetes writes it in messages ("widgets.example.com")."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @functools.cached_property
    def key_prefix(self) -> str:  # every request builds a key from it
        return f"/registry/{self.group or 'core'}/{self.plural}/"

    def key(self, namespace: str, name: str) -> str:
        if self.namespaced:
            return f"{self.key_prefix}{namespace}/{name}"
        return f"{self.key_prefix}{name}"

    def list_prefix(self, namespace: str) -> str:
        if self.namespaced and namespace:
            return f"{self.key_prefix}{namespace}/"
        return self.key_prefix

    def verbs(self) -> list[str]:
        return ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


class Registry:
    """Resource types by (group, version, plural), kept in step with the stored CRDs."""

    def __init__(self, builtins: Iterable[ResourceType]) -> None:
        self._lock = threading.Lock()
        self._builtins = {(t.group, t.plural): t for t in builtins}
        self._types: dict[tuple[str, str], ResourceType] = dict(self._builtins)
        self._crd_owner: dict[str, tuple[str, str]] = {}  # CRD name -> (group, plural)
        self._crd_revision: dict[str, str] = {}  # CRD name -> resourceVersion its type was built from
        self.generation = 0  # bumped on every change, so discovery documents can be cached

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        t = self._types.get((group, plural))
        if t is None or version not in t.versions:
            return None
        return t

    def by_group_resource(self, group: str, plural: str) -> ResourceType | None:
        return self._types.get((group, plural))

    def all(self) -> list[ResourceType]:
        return list(self._types.values())

    def groups(self) -> dict[str, list[ResourceType]]:
        out: dict[str, list[ResourceType]] = {}
        for t in self._types.values():
            out.setdefault(t.group, []).append(t)
        return out

    def crd_revision(self, crd_name: str) -> str | None:
        """The resourceVersion of the CRD the served type was built from."""
        return self._crd_revision.get(crd_name)

    def put_crd(self, crd_name: str, rtype: ResourceType, revision: str = "") -> None:
        with self._lock:
            self._crd_revision[crd_name] = revision
            old = self._crd_owner.get(crd_name)
            if old is not None and old != (rtype.group, rtype.plural):
                self._types.pop(old, None)
            self._types[(rtype.group, rtype.plural)] = rtype
            self._crd_owner[crd_name] = (rtype.group, rtype.plural)
            self.generation += 1

    def remove_crd(self, crd_name: str) -> ResourceType | None:
        with self._lock:
            self._crd_revision.pop(crd_name, None)
            gr = self._crd_owner.pop(crd_name, None)
            if gr is None:
                return None
            self.generation += 1
            return self._types.pop(gr, None)


def resource_type_from_crd(
    crd: dict[str, Any], compile_schema: Callable[[dict[str, Any]], Validator]
) -> ResourceType:
    """Validate a CRD object and build its resource type. Raises Invalid naming the field."""
    causes: list[tuple[str, str, str]] = []

    def bad(fieldpath: str, msg: str, reason: str = "FieldValueInvalid") -> None:
        causes.append((reason, msg, fieldpath))

    spec = crd.get("spec")
    name = (crd.get("metadata") or {}).get("name", "")
    if not isinstance(spec, dict):
        raise Invalid(
            f'CustomResourceDefinition.apiextensions.k8s.io "{name}" is invalid: spec: Required value',
            causes=[("FieldValueRequired", "Required value", "spec")],
            details_name=name,
            details_kind="CustomResourceDefinition",
            details_group=CRD_GROUP,
        )
    group = spec.get("group")
    names = spec.get("names") or {}
    scope = spec.get("scope")
    versions = spec.get("versions") or []
    if not isinstance(group, str) or not group or "." not in group:
        bad("spec.group", 'Invalid value: should be a domain with at least one dot')
    if not isinstance(names, dict):
        names = {}
        bad("spec.names", "Required value", "FieldValueRequired")
    plural = names.get("plural")
    kind = names.get("kind")
    if not isinstance(plural, str) or not plural or plural != plural.lower():
        bad("spec.names.plural", "Required value: must be a lowercase DNS label", "FieldValueRequired")
    if not isinstance(kind, str) or not kind:
        bad("spec.names.kind", "Required value", "FieldValueRequired")
    if scope not in ("Namespaced", "Cluster"):
        bad("spec.scope", f'Unsupported value: {scope!r}: supported values: "Cluster", "Namespaced"',
            "FieldValueNotSupported")
    if isinstance(group, str) and isinstance(plural, str) and name != f"{plural}.{group}":
        bad("metadata.name", f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group')
    for list_field in ("shortNames", "categories"):
        value = names.get(list_field)
        if value is not None and not (isinstance(value, list) and all(isinstance(x, str) for x in value)):
            bad(f"spec.names.{list_field}", "Invalid value: must be a list of strings")
    if names.get("singular") is not None and not isinstance(names.get("singular"), str):
        bad("spec.names.singular", "Invalid value: must be a string")
    if not isinstance(versions, list) or not versions:
        bad("spec.versions", "Required value: must have exactly one version marked as storage version",
            "FieldValueRequired")
        versions = []
    storage = [v for v in versions if isinstance(v, dict) and v.get("storage")]
    if versions and len(storage) != 1:
        bad("spec.versions", "Invalid value: must have exactly one version marked as storage version")

    served: list[str] = []
    validators: dict[str, Validator] = {}
    columns: dict[str, list[dict[str, Any]]] = {}
    schemas: dict[str, dict[str, Any]] = {}
    status_sub = False
    scale_spec: ScaleSpec | None = None
    fields: set[str] = set()
    for i, v in enumerate(versions):
        if not isinstance(v, dict) or not isinstance(v.get("name"), str):
            bad(f"spec.versions[{i}].name", "Required value", "FieldValueRequired")
            continue
        vname = v["name"]
        if not v.get("served", False):
            continue
        schema_holder = v.get("schema")
        schema = schema_holder.get("openAPIV3Schema") if isinstance(schema_holder, dict) else None
        if schema is not None:
            if not isinstance(schema, dict):
                bad(f"spec.versions[{i}].schema.openAPIV3Schema", "Invalid value: must be an object")
            else:
                try:
                    validators[vname] = compile_schema(schema)
                    schemas[vname] = schema
                except ValueError as e:
                    bad(f"spec.versions[{i}].schema.openAPIV3Schema", f"Invalid value: {e}")
        subresources = v.get("subresources") or {}
        if isinstance(subresources, dict) and "status" in subresources:
            status_sub = True
        if isinstance(subresources, dict) and subresources.get("scale") is not None:
            parsed, errors = scale.parse(subresources["scale"], f"spec.versions[{i}].subresources.scale")
            for fld, msg in errors:
                bad(fld, msg)
            if parsed is not None and (v.get("storage") or scale_spec is None):
                scale_spec = parsed
        selectable = v.get("selectableFields")
        if selectable is not None:
            if not isinstance(selectable, list):
                bad(f"spec.versions[{i}].selectableFields", "Invalid value: must be a list")
            else:
                for j, sf in enumerate(selectable):
                    path = sf.get("jsonPath") if isinstance(sf, dict) else None
                    if not isinstance(path, str) or not path.startswith(".") or len(path) < 2:
                        bad(f"spec.versions[{i}].selectableFields[{j}].jsonPath",
                            "Invalid value: must be a simple JSON path starting with '.'")
                    else:
                        fields.add(path[1:])
        cols = v.get("additionalPrinterColumns")
        if isinstance(cols, list):
            columns[vname] = cols
        if v.get("storage"):
            served.insert(0, vname)
        else:
            served.append(vname)
    if causes:
        raise Invalid(
            f'CustomResourceDefinition.apiextensions.k8s.io "{name}" is invalid: '
            + ", ".join(f"{f}: {m}" for _, m, f in causes),
            causes=causes,
            details_name=name,
            details_kind="CustomResourceDefinition",
            details_group=CRD_GROUP,
        )
    assert isinstance(group, str) and isinstance(plural, str) and isinstance(kind, str)
    return ResourceType(
        group=group,
        versions=tuple(served) or (storage[0]["name"],),
        kind=kind,
        plural=plural,
        singular=str(names.get("singular") or kind.lower()),
        namespaced=scope == "Namespaced",
        short_names=tuple(names.get("shortNames") or ()),
        categories=tuple(names.get("categories") or ()),
        status_subresource=status_sub,
        scale=scale_spec,
        allow_create_on_update=False,
        allow_unconditional_update=False,
        validators=validators,
        printer_columns=columns,
        schemas=schemas,
        builtin=False,
        strategy=CRD_STRATEGIES.get((group, plural), DEFAULT),
        selectable_fields=frozenset(fields),
    )
