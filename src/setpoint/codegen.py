"""Typed Python classes from served schemas: ``setpoint codegen``.

The schemas come from a running server's OpenAPI v3 documents (any Kubernetes-API server,
setpoint included: ``/openapi/v3/apis/GROUP/VERSION``, with the plural and scope from
discovery) or from CRD files. Each kind becomes a ``msgspec.Struct`` deriving from
:class:`setpoint.client.typed.Kind`, with its ``kind_info``, its spec and status as classes of
their own, enums as ``Literal``, constraints as ``msgspec.Meta``, descriptions as docstrings;
``client.get(Lamp, ...)`` and ``TypedController[Lamp]`` take it as it is.

The classes are written by datamodel-code-generator (its msgspec output), a well-kept generator
that already knows JSON Schema's corners (unions, nullable, enums, constraints, naming clashes);
this module only prepares its input (references inlined, spec and status named after their kind,
the metadata left to ``Kind``) and turns its top-level classes into kinds.
"""

from __future__ import annotations

import copy
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class CodegenError(ValueError):
    pass


@dataclass(frozen=True)
class KindSchema:
    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool
    schema: dict[str, Any]  # the kind's openAPIV3Schema


def from_crd(crd: Mapping[str, Any]) -> list[KindSchema]:
    """Every served version of a CustomResourceDefinition."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    out = []
    for v in spec.get("versions") or []:
        if not v.get("served", True):
            continue
        schema = ((v.get("schema") or {}).get("openAPIV3Schema")) or {"type": "object"}
        out.append(KindSchema(str(spec.get("group", "")), str(v["name"]), str(names["kind"]),
                              str(names["plural"]), spec.get("scope", "Namespaced") == "Namespaced", schema))
    return out


def from_openapi(doc: Mapping[str, Any], discovery: Mapping[str, Any]) -> list[KindSchema]:
    """The kinds of one group-version's OpenAPI v3 document, named as ``discovery`` (the
    group-version's resource list) serves them; references into the document inlined."""
    schemas = (doc.get("components") or {}).get("schemas") or {}
    served = {str(r.get("kind")): r for r in discovery.get("resources") or []
              if isinstance(r, Mapping) and "/" not in str(r.get("name", ""))}
    out = []
    for schema in schemas.values():
        for gvk in schema.get("x-kubernetes-group-version-kind") or []:
            resource = served.get(str(gvk.get("kind")))
            if resource is None:
                continue  # a List kind, or one this group-version does not serve
            body = _inline(schema, schemas)
            out.append(KindSchema(str(gvk.get("group", "")), str(gvk["version"]), str(gvk["kind"]),
                                  str(resource["name"]), bool(resource.get("namespaced")), body))
    return out


def _inline(node: Any, schemas: Mapping[str, Any], seen: tuple[str, ...] = ()) -> Any:
    if isinstance(node, list):
        return [_inline(v, schemas, seen) for v in node]
    if not isinstance(node, Mapping):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        if name in seen or name not in schemas:
            return {"type": "object"}  # recursive (or dangling): kept as a plain mapping
        return _inline(schemas[name], schemas, (*seen, name))
    all_of = node.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1:  # OpenAPI's way to describe a $ref
        merged = {**_inline(all_of[0], schemas, seen), **{k: v for k, v in node.items() if k != "allOf"}}
        return _inline(merged, schemas, seen)
    return {k: _inline(v, schemas, seen) for k, v in node.items()}


def _strip_extensions(node: Any) -> Any:
    """Kubernetes' ``x-kubernetes-*`` markers, as JSON Schema the generator understands."""
    if isinstance(node, list):
        return [_strip_extensions(v) for v in node]
    if not isinstance(node, Mapping):
        return node
    out = {k: _strip_extensions(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("x-kubernetes-preserve-unknown-fields") and not out.get("properties"):
        out.setdefault("type", "object")
        out.setdefault("additionalProperties", True)
    return out


def _document(kinds: Sequence[KindSchema]) -> dict[str, Any]:
    defs: dict[str, Any] = {}
    for k in kinds:
        schema = copy.deepcopy(_strip_extensions(k.schema))
        props = dict(schema.get("properties") or {})
        for reserved in ("apiVersion", "kind", "metadata"):
            props.pop(reserved, None)
        for part in ("spec", "status"):  # named after their kind, not "Spec", "Spec1", ...
            if isinstance(props.get(part), Mapping) and props[part].get("type", "object") == "object" \
                    and props[part].get("properties"):
                name = f"{k.kind}{part.capitalize()}"
                defs[name] = props[part]
                props[part] = {"$ref": f"#/$defs/{name}"}
        schema["properties"] = props
        schema["type"] = "object"
        if isinstance(schema.get("required"), list):
            schema["required"] = [r for r in schema["required"] if r not in ("apiVersion", "kind", "metadata")]
        if k.kind in defs:
            raise CodegenError(f"two kinds named {k.kind} (give one --group)")
        defs[k.kind] = schema
    return {"$defs": defs, "anyOf": [{"$ref": f"#/$defs/{k.kind}"} for k in kinds]}


def generate(kinds: Sequence[KindSchema], *, source: str = "") -> str:
    """The Python module for ``kinds``."""
    if not kinds:
        raise CodegenError("no kinds to generate")
    try:
        from datamodel_code_generator import generate as run
        from datamodel_code_generator.enums import DataModelType, InputFileType
        from datamodel_code_generator.format import PythonVersion
        from datamodel_code_generator.parser import LiteralType
    except ImportError as e:
        raise CodegenError("setpoint codegen needs datamodel-code-generator: pip install 'setpoint[codegen]'") from e
    with warnings.catch_warnings():  # about decoding the root union, which is dropped
        warnings.simplefilter("ignore")
        code = run(json.dumps(_document(kinds)), input_file_type=InputFileType.JsonSchema,
                   output_model_type=DataModelType.MsgspecStruct, target_python_version=PythonVersion.PY_311,
                   use_annotated=True, field_constraints=True, use_standard_collections=True,
                   use_union_operator=True, use_schema_description=True, use_field_description=True,
                   disable_timestamp=True, enum_field_as_literal=LiteralType.All, use_double_quotes=True, formatters=[])
    if not isinstance(code, str):
        raise CodegenError("the generator wrote several modules; expected one")
    return _as_kinds(code, kinds, source)


def _docstring_end(lines: list[str], start: int) -> int:
    """The index after the docstring that begins at ``lines[start]`` (or ``start`` if none)."""
    first = lines[start].strip() if start < len(lines) else ""
    if not first.startswith('"""'):
        return start
    if first.count('"""') >= 2 and len(first) > 3:
        return start + 1
    i = start + 1
    while i < len(lines) and '"""' not in lines[i]:
        i += 1
    return i + 1


def _as_kinds(code: str, kinds: Sequence[KindSchema], source: str) -> str:
    """The generator's module with its top-level classes made kinds, formatted."""
    import black
    import isort

    by_name = {k.kind: k for k in kinds}
    lines = [ln for ln in code.splitlines() if not ln.startswith(("# generated by datamodel-codegen", "#   filename:"))]
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = re.match(r"^class (\w+)\(Struct\):$", lines[i])
        if re.match(r"^Model(: TypeAlias)? = ", lines[i]):  # the generator's alias for the root union
            i += 1
            while i < len(lines) and lines[i].startswith((" ", ")")):
                i += 1
            continue
        if m is None or m.group(1) not in by_name:
            out.append(lines[i])
            i += 1
            continue
        k = by_name[m.group(1)]
        end = _docstring_end(lines, i + 1)
        out.append(f"class {k.kind}(Kind, kw_only=True):")
        out.extend(lines[i + 1:end])
        out.append(f"    kind_info: ClassVar[KindInfo] = KindInfo(group={k.group!r}, version={k.version!r}, "
                   f"kind={k.kind!r}, plural={k.plural!r}, namespaced={k.namespaced!r})")
        i = end
    doc = f'"""Typed kinds generated by `setpoint codegen`{" from " + source if source else ""}: do not edit."""'
    text = "\n".join([doc, "", *out]).replace(
        "from __future__ import annotations",
        "from __future__ import annotations\n\nfrom typing import ClassVar\n\n"
        "from setpoint.client.typed import Kind\nfrom setpoint.crdgen import KindInfo", 1)
    if text.count("TypeAlias") == 1:  # imported for the root alias, which is gone
        text = text.replace(", TypeAlias", "").replace("TypeAlias, ", "")
    # setpoint and msgspec are the generated module's third-party imports, wherever it is generated.
    text = isort.code(text, profile="black", line_length=120, known_third_party=["setpoint", "msgspec"],
                      src_paths=[])
    return black.format_str(text, mode=black.Mode(line_length=120))
