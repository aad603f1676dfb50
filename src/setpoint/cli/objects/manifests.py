"""Manifests from files, directories or stdin, the order apply sends them in, and the merge patch
it sends."""


from __future__ import annotations

import copy
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from setpoint.cli.objects.common import CRD_GROUP, SERVER_METADATA, usage_error
from setpoint.cli.objects.discovery import group_of, type_ref
from setpoint.types import Object

# ---- reading manifests --------------------------------------------------------------------------

@dataclass
class Manifest:
    obj: Object
    source: str  # "file.yaml#2"

    @property
    def api_version(self) -> str:
        return str(self.obj.get("apiVersion", ""))

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind", ""))

    @property
    def name(self) -> str:
        return str((self.obj.get("metadata") or {}).get("name", ""))

    @property
    def namespace(self) -> str | None:
        ns = (self.obj.get("metadata") or {}).get("namespace")
        return ns if isinstance(ns, str) and ns else None

    @property
    def ref(self) -> str:
        return f"{type_ref(self.kind, group_of(self.api_version))}/{self.name}"

    @property
    def is_crd(self) -> bool:
        return self.kind == "CustomResourceDefinition" and group_of(self.api_version) == CRD_GROUP

    @property
    def is_namespace(self) -> bool:
        return self.kind == "Namespace" and self.api_version == "v1"


def read_manifests(paths: Iterable[str]) -> list[Manifest]:
    """Every object in the files (directories: their *.yaml, *.yml, *.json, sorted; '-': stdin).
    Raises a usage error for a missing path, unparsable input, or an object without
    apiVersion, kind or metadata.name."""
    out: list[Manifest] = []
    for p in paths:
        if p == "-":
            out.extend(_parse(sys.stdin.read(), "<stdin>", json_only=False))
            continue
        path = Path(p)
        if path.is_dir():
            files = sorted(f for f in path.iterdir()
                           if f.is_file() and f.suffix.lower() in (".yaml", ".yml", ".json"))
        elif path.exists():
            files = [path]
        else:
            raise usage_error(f'the path "{p}" does not exist')
        for f in files:
            try:
                text = f.read_text()
            except OSError as e:
                raise usage_error(f"cannot read {f}: {e}") from None
            out.extend(_parse(text, str(f), json_only=f.suffix.lower() == ".json"))
    return out


def _as_json(value: Any) -> Any:
    """What kubectl sends for a YAML document: YAML 1.1 reads a bare ``on:`` key as a boolean and
    dates as dates; JSON has only string keys, so they become "true", "2026-01-01" and so on."""
    if isinstance(value, dict):
        return {_key(k): _as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_json(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _key(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return "null" if key is None else str(key)


def _parse(text: str, source: str, *, json_only: bool) -> list[Manifest]:
    try:
        docs: list[Any] = [json.loads(text)] if json_only else [_as_json(d) for d in yaml.safe_load_all(text)]
    except (yaml.YAMLError, ValueError) as e:
        raise usage_error(f"{source}: cannot parse: {e}") from None
    out: list[Manifest] = []
    for i, doc in enumerate(docs, start=1):
        if doc is None:
            continue
        where = f"{source}#{i}" if len(docs) > 1 else source
        is_list = (isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List")
                   and isinstance(doc.get("items"), list))
        items: list[Any] = doc["items"] if is_list else [doc]
        for j, obj in enumerate(items):
            at = f"{where} items[{j}]" if is_list else where
            if not isinstance(obj, dict):
                raise usage_error(f"{at}: not an object")
            meta = obj.get("metadata")
            missing = [k for k in ("apiVersion", "kind") if not isinstance(obj.get(k), str) or not obj.get(k)]
            if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta.get("name"):
                missing.append("metadata.name")
            if missing:
                raise usage_error(f"{at}: missing {', '.join(missing)}")
            out.append(Manifest(obj, at))
    return out


def apply_order(manifests: list[Manifest]) -> list[Manifest]:
    """CRDs first, then Namespaces, then everything else; file order within each."""
    return sorted(manifests, key=lambda m: 0 if m.is_crd else 1 if m.is_namespace else 2)



def applied_fields(obj: Object) -> Object:
    """The object as a merge patch: without server-set metadata."""
    out = copy.deepcopy(obj)
    meta = out.get("metadata")
    if isinstance(meta, dict):
        for k in SERVER_METADATA:
            meta.pop(k, None)
    return out


