"""OpenAPI documents (/openapi/v2 and /openapi/v3) built from the kinds the server serves.

kubectl reads them to explain kinds (``kubectl explain``), to learn that the server validates
fields itself (``fieldValidation`` on PATCH, which ``--validate=strict`` relies on) and to build
patches; typed-client generators read them too. Each kind's schema is its CRD's
``openAPIV3Schema`` with ``apiVersion``, ``kind`` and ``metadata`` described as Kubernetes
describes them, and each path carries the ``x-kubernetes-*`` extensions clients look for.

Documents are built once per registry generation (that is, once per CRD change) and kept as
encoded bytes with their ETag; a request only looks them up.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from typing import Any

from setpoint.server.objects import encode
from setpoint.server.resources import Registry, ResourceType

META = "io.k8s.apimachinery.pkg.apis.meta.v1"
_TITLE = "setpoint"
_STR = {"type": "string"}


def _ref3(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _d(text: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**(schema or _STR), "description": text}


_TIME = {"type": "string", "format": "date-time"}

# The apimachinery types every kind refers to, in OpenAPI v3 form (v2 rewrites the $refs).
META_SCHEMAS: dict[str, dict[str, Any]] = {
    f"{META}.Time": {**_TIME, "description": "Time is a wrapper around time.Time which supports "
                     "correct marshaling to YAML and JSON, in RFC 3339 form."},
    f"{META}.FieldsV1": {"type": "object", "description": "FieldsV1 stores a set of fields in a data "
                         "structure like a Trie, in JSON format."},
    f"{META}.ManagedFieldsEntry": {
        "type": "object",
        "description": "ManagedFieldsEntry is a workflow-id, a FieldSet and the group version of the "
                       "resource that the fieldset applies to.",
        "properties": {
            "apiVersion": _d("APIVersion defines the version of this resource that this field set applies to."),
            "fieldsType": _d('FieldsType is the discriminator for the different fields format and version. '
                             'There is currently only one possible value: "FieldsV1"'),
            "fieldsV1": {"allOf": [_ref3(f"{META}.FieldsV1")],
                         "description": "FieldsV1 holds the first JSON version format."},
            "manager": _d("Manager is an identifier of the workflow managing these fields."),
            "operation": _d("Operation is the type of operation which lead to this ManagedFieldsEntry "
                            "being created. The only valid values for this field are 'Apply' and 'Update'."),
            "subresource": _d("Subresource is the name of the subresource used to update that object."),
            "time": {"allOf": [_ref3(f"{META}.Time")],
                     "description": "Time is the timestamp of when the ManagedFields entry was added."},
        },
    },
    f"{META}.OwnerReference": {
        "type": "object",
        "description": "OwnerReference contains enough information to let you identify an owning "
                       "object. An owning object must be in the same namespace as the dependent, "
                       "or be cluster-scoped, so there is no namespace field.",
        "required": ["apiVersion", "kind", "name", "uid"],
        "properties": {
            "apiVersion": _d("API version of the referent."),
            "blockOwnerDeletion": _d('If true, AND if the owner has the "foregroundDeletion" finalizer, '
                                     "then the owner cannot be deleted from the key-value store until "
                                     "this reference is removed.", {"type": "boolean"}),
            "controller": _d("If true, this reference points to the managing controller.",
                             {"type": "boolean"}),
            "kind": _d("Kind of the referent."),
            "name": _d("Name of the referent."),
            "uid": _d("UID of the referent."),
        },
        "x-kubernetes-map-type": "atomic",
    },
    f"{META}.ObjectMeta": {
        "type": "object",
        "description": "ObjectMeta is metadata that all persisted resources must have, which "
                       "includes all objects users must create.",
        "properties": {
            "annotations": _d("Annotations is an unstructured key value map stored with a resource "
                              "that may be set by external tools to store and retrieve arbitrary "
                              "metadata.", {"type": "object", "additionalProperties": {**_STR, "default": ""}}),
            "creationTimestamp": {"allOf": [_ref3(f"{META}.Time")],
                                  "description": "CreationTimestamp is a timestamp representing the "
                                                 "server time when this object was created."},
            "deletionGracePeriodSeconds": _d("Number of seconds allowed for this object to gracefully "
                                             "terminate before it will be removed from the system.",
                                             {"type": "integer", "format": "int64"}),
            "deletionTimestamp": {"allOf": [_ref3(f"{META}.Time")],
                                  "description": "DeletionTimestamp is RFC 3339 date and time at which "
                                                 "this resource will be deleted."},
            "finalizers": _d("Must be empty before the object is deleted from the registry. Each entry "
                             "is an identifier for the responsible component that will remove the entry "
                             "from the list.", {"type": "array", "items": {**_STR, "default": ""},
                                                "x-kubernetes-list-type": "set",
                                                "x-kubernetes-patch-strategy": "merge"}),
            "generateName": _d("GenerateName is an optional prefix, used by the server, to generate a "
                               "unique name ONLY IF the Name field has not been provided."),
            "generation": _d("A sequence number representing a specific generation of the desired state.",
                             {"type": "integer", "format": "int64"}),
            "labels": _d("Map of string keys and values that can be used to organize and categorize "
                         "(scope and select) objects.",
                         {"type": "object", "additionalProperties": {**_STR, "default": ""}}),
            "managedFields": _d("ManagedFields maps workflow-id and version to the set of fields that "
                                "are managed by that workflow.",
                                {"type": "array", "items": {"allOf": [_ref3(f"{META}.ManagedFieldsEntry")],
                                                            "default": {}},
                                 "x-kubernetes-list-type": "atomic"}),
            "name": _d("Name must be unique within a namespace."),
            "namespace": _d("Namespace defines the space within which each name must be unique."),
            "ownerReferences": _d("List of objects depended by this object.",
                                  {"type": "array",
                                   "items": {"allOf": [_ref3(f"{META}.OwnerReference")], "default": {}},
                                   "x-kubernetes-list-map-keys": ["uid"],
                                   "x-kubernetes-list-type": "map",
                                   "x-kubernetes-patch-merge-key": "uid",
                                   "x-kubernetes-patch-strategy": "merge"}),
            "resourceVersion": _d("An opaque value that represents the internal version of this object "
                                  "that can be used by clients to determine when objects have changed."),
            "selfLink": _d("Deprecated: selfLink is a legacy read-only field that is no longer populated."),
            "uid": _d("UID is the unique in time and space value for this object."),
        },
    },
    f"{META}.ListMeta": {
        "type": "object",
        "description": "ListMeta describes metadata that synthetic resources must have, including "
                       "lists and various status objects.",
        "properties": {
            "continue": _d("continue may be set if the user set a limit on the number of items returned."),
            "remainingItemCount": _d("remainingItemCount is the number of subsequent items in the list "
                                     "which are not included in this list response.",
                                     {"type": "integer", "format": "int64"}),
            "resourceVersion": _d("String that identifies the server's internal version of this object."),
            "selfLink": _d("Deprecated: selfLink is a legacy read-only field that is no longer populated."),
        },
    },
    f"{META}.Status": {
        "type": "object",
        "description": "Status is a return value for calls that don't return other objects.",
        "properties": {
            "apiVersion": _d("APIVersion defines the versioned schema of this representation of an object."),
            "code": _d("Suggested HTTP return code for this status, 0 if not set.",
                       {"type": "integer", "format": "int32"}),
            "details": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                        "description": "Extended data associated with the reason."},
            "kind": _d("Kind is a string value representing the REST resource this object represents."),
            "message": _d("A human-readable description of the status of this operation."),
            "metadata": {"allOf": [_ref3(f"{META}.ListMeta")], "default": {},
                         "description": "Standard list metadata."},
            "reason": _d("A machine-readable description of why this operation is in the Failure status."),
            "status": _d('Status of the operation. One of: "Success" or "Failure".'),
        },
        "x-kubernetes-group-version-kind": [{"group": "", "kind": "Status", "version": "v1"}],
    },
    f"{META}.DeleteOptions": {
        "type": "object",
        "description": "DeleteOptions may be provided when deleting an API object.",
        "properties": {
            "apiVersion": _d("APIVersion defines the versioned schema of this representation of an object."),
            "dryRun": _d("When present, indicates that modifications should not be persisted.",
                         {"type": "array", "items": {**_STR, "default": ""}, "x-kubernetes-list-type": "atomic"}),
            "gracePeriodSeconds": _d("The duration in seconds before the object should be deleted.",
                                     {"type": "integer", "format": "int64"}),
            "kind": _d("Kind is a string value representing the REST resource this object represents."),
            "preconditions": {"type": "object", "description": "Must be fulfilled before a deletion is "
                              "carried out.", "properties": {"resourceVersion": _STR, "uid": _STR}},
            "propagationPolicy": _d("Whether and how garbage collection will be performed: 'Orphan', "
                                    "'Background' or 'Foreground'."),
        },
    },
    f"{META}.Patch": {"type": "object", "description": "Patch is provided to give a concrete name and "
                      "type to the Kubernetes PATCH request body."},
}

_API_VERSION_DOC = ("APIVersion defines the versioned schema of this representation of an object. "
                    "Servers should convert recognized schemas to the latest internal value, and may "
                    "reject unrecognized values. More info: https://git.k8s.io/community/contributors/"
                    "devel/sig-architecture/api-conventions.md#resources")
_KIND_DOC = ("Kind is a string value representing the REST resource this object represents. Servers "
             "may infer this from the endpoint the client submits requests to. Cannot be updated. In "
             "CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/"
             "api-conventions.md#types-kinds")
_METADATA_DOC = ("Standard object's metadata. More info: https://git.k8s.io/community/contributors/"
                 "devel/sig-architecture/api-conventions.md#metadata")


def definition_prefix(rtype: ResourceType, version: str) -> str:
    """Kubernetes' schema names: ``com.example.v1`` for group example.com, ``io.k8s.api.core.v1``."""
    if rtype.group == "":
        return f"io.k8s.api.core.{version}"
    if rtype.group == "apiextensions.k8s.io":
        return f"io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.{version}"
    if rtype.group.endswith(".k8s.io") and rtype.builtin:
        return f"io.k8s.api.{rtype.group[: -len('.k8s.io')]}.{version}"
    return ".".join(reversed(rtype.group.split("."))) + f".{version}"


def _gvk(rtype: ResourceType, version: str, kind: str | None = None) -> dict[str, str]:
    return {"group": rtype.group, "kind": kind or rtype.kind, "version": version}


def kind_schema(rtype: ResourceType, version: str) -> dict[str, Any]:
    """The kind's schema as the OpenAPI documents show it (v3 $refs)."""
    source = rtype.schemas.get(version) or rtype.schemas.get(rtype.storage_version) or {
        "type": "object", "x-kubernetes-preserve-unknown-fields": True}
    schema = copy.deepcopy(source)
    schema.setdefault("type", "object")
    if not schema.get("description"):
        schema.pop("description", None)
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"type": "string", "description": _API_VERSION_DOC}
    props["kind"] = {"type": "string", "description": _KIND_DOC}
    props["metadata"] = {"allOf": [_ref3(f"{META}.ObjectMeta")], "description": _METADATA_DOC}
    schema["x-kubernetes-group-version-kind"] = [_gvk(rtype, version)]
    return schema


def list_schema(rtype: ResourceType, version: str, prefix: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": f"{rtype.kind}List is a list of {rtype.kind}",
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string", "description": _API_VERSION_DOC},
            "items": {"type": "array", "description": f"List of {rtype.plural}.",
                      "items": _ref3(f"{prefix}.{rtype.kind}")},
            "kind": {"type": "string", "description": _KIND_DOC},
            "metadata": {"allOf": [_ref3(f"{META}.ListMeta")], "description": "Standard list metadata."},
        },
        "x-kubernetes-group-version-kind": [_gvk(rtype, version, f"{rtype.kind}List")],
    }


# ---- paths ---------------------------------------------------------------------------------------

def _query(name: str, description: str, type_: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": {"type": type_},
            "uniqueItems": True}


_DRY_RUN = _query("dryRun", "When present, indicates that modifications should not be persisted. "
                  "The only valid value is All.")
_FIELD_MANAGER = _query("fieldManager", "fieldManager is a name associated with the actor or entity "
                        "that is making these changes.")
_FIELD_VALIDATION = _query("fieldValidation", "fieldValidation instructs the server on how to handle "
                           "objects in the request containing unknown or duplicate fields: Ignore, "
                           "Warn or Strict.")
_FORCE = _query("force", "Force is going to \"force\" Apply requests: it re-acquires conflicting fields "
                "owned by other people.", "boolean")
_PRETTY = _query("pretty", "If 'true', then the output is pretty printed.")
_LIST_PARAMS = [
    _query("allowWatchBookmarks", "allowWatchBookmarks requests watch events with type \"BOOKMARK\".",
           "boolean"),
    _query("continue", "The continue option should be set when retrieving more results from the server."),
    _query("fieldSelector", "A selector to restrict the list of returned objects by their fields."),
    _query("labelSelector", "A selector to restrict the list of returned objects by their labels."),
    _query("limit", "limit is a maximum number of responses to return for a list call.", "integer"),
    _query("resourceVersion", "resourceVersion sets a constraint on what resource versions a request "
           "may be served from."),
    _query("resourceVersionMatch", "resourceVersionMatch determines how resourceVersion is applied to "
           "list calls."),
    _query("sendInitialEvents", "`sendInitialEvents=true` may be set together with `watch=true`.",
           "boolean"),
    _query("timeoutSeconds", "Timeout for the list/watch call.", "integer"),
    _query("watch", "Watch for changes to the described resources and return them as a stream of add, "
           "update, and remove notifications.", "boolean"),
]
_DELETE_PARAMS = [
    _DRY_RUN,
    _query("gracePeriodSeconds", "The duration in seconds before the object should be deleted.", "integer"),
    _query("propagationPolicy", "Whether and how garbage collection will be performed: 'Orphan', "
           "'Background' or 'Foreground'."),
]
_JSON_TYPES = ("application/json", "application/yaml")


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "description": description, "required": True,
            "schema": {"type": "string"}, "uniqueItems": True}


def _content(ref: dict[str, Any], types: tuple[str, ...] = _JSON_TYPES) -> dict[str, Any]:
    return {t: {"schema": ref} for t in types}


def _op(op_id: str, action: str, gvk: dict[str, str], ok: dict[str, Any], *, tag: str,
        params: list[dict[str, Any]] | None = None, body: dict[str, Any] | None = None,
        codes: tuple[str, ...] = ("200",)) -> dict[str, Any]:
    op: dict[str, Any] = {
        "tags": [tag], "description": f"{action} {gvk['kind']}", "operationId": op_id,
        "responses": {code: {"description": "OK" if code == "200" else
                             {"201": "Created", "202": "Accepted"}.get(code, "OK"),
                             "content": _content(ok)} for code in codes}
        | {"401": {"description": "Unauthorized"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk,
    }
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = body
    return op


def _camel(s: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in s.replace("-", ".").split(".") if p)


def paths_for(rtype: ResourceType, version: str, prefix: str) -> dict[str, Any]:
    """The REST paths of one kind in one version, with the operations kube-apiserver documents."""
    base = f"/api/{version}" if not rtype.group else f"/apis/{rtype.group}/{version}"
    gvk = _gvk(rtype, version)
    obj = _ref3(f"{prefix}.{rtype.kind}")
    lst = _ref3(f"{prefix}.{rtype.kind}List")
    status = _ref3(f"{META}.Status")
    tag = f"{_camel(rtype.group or 'core')}_{version}"
    id_part = f"{_camel(rtype.group or 'core')}{_camel(version)}"
    ns = "Namespaced" if rtype.namespaced else ""
    patch_types = ["application/json-patch+json", "application/merge-patch+json",
                   "application/apply-patch+yaml"]
    # Built-in kinds accept strategic merge patches too, but are not documented as such: kubectl
    # would then build them from these (partial) schemas instead of its own type definitions.
    body_obj = {"required": True, "content": _content(obj)}
    body_patch = {"required": True, "content": {t: {"schema": _ref3(f"{META}.Patch")} for t in patch_types}}
    body_delete = {"content": _content(_ref3(f"{META}.DeleteOptions"))}
    write_params = [_DRY_RUN, _FIELD_MANAGER, _FIELD_VALIDATION]
    name_p = _path_param("name", f"name of the {rtype.kind}")
    common = [_PRETTY]
    if rtype.namespaced:
        coll = f"{base}/namespaces/{{namespace}}/{rtype.plural}"
        common = [_path_param("namespace", "object name and auth scope, such as for teams and projects"),
                  _PRETTY]
    else:
        coll = f"{base}/{rtype.plural}"
    kind = rtype.kind
    out: dict[str, Any] = {
        coll: {
            "get": _op(f"list{id_part}{ns}{kind}", "list", gvk, lst, tag=tag, params=_LIST_PARAMS),
            "post": _op(f"create{id_part}{ns}{kind}", "post", gvk, obj, tag=tag, params=write_params,
                        body=body_obj, codes=("200", "201", "202")),
            "delete": _op(f"deletecollection{id_part}{ns}{kind}", "deletecollection", gvk, status,
                          tag=tag, params=_DELETE_PARAMS + _LIST_PARAMS, body=body_delete),
            "parameters": common,
        },
        f"{coll}/{{name}}": {
            "get": _op(f"read{id_part}{ns}{kind}", "get", gvk, obj, tag=tag,
                       params=[_query("resourceVersion", "resourceVersion of the read")]),
            "put": _op(f"replace{id_part}{ns}{kind}", "put", gvk, obj, tag=tag, params=write_params,
                       body=body_obj, codes=("200", "201")),
            "patch": _op(f"patch{id_part}{ns}{kind}", "patch", gvk, obj, tag=tag,
                         params=[*write_params, _FORCE], body=body_patch, codes=("200", "201")),
            "delete": _op(f"delete{id_part}{ns}{kind}", "delete", gvk, status, tag=tag,
                          params=_DELETE_PARAMS, body=body_delete, codes=("200", "202")),
            "parameters": [name_p, *common],
        },
    }
    if rtype.status_subresource:
        out[f"{coll}/{{name}}/status"] = {
            "get": _op(f"read{id_part}{ns}{kind}Status", "get", gvk, obj, tag=tag),
            "put": _op(f"replace{id_part}{ns}{kind}Status", "put", gvk, obj, tag=tag,
                       params=write_params, body=body_obj, codes=("200", "201")),
            "patch": _op(f"patch{id_part}{ns}{kind}Status", "patch", gvk, obj, tag=tag,
                         params=[*write_params, _FORCE], body=body_patch, codes=("200", "201")),
            "parameters": [name_p, *common],
        }
    if rtype.namespaced:
        out[f"{base}/{rtype.plural}"] = {
            "get": _op(f"list{id_part}{kind}ForAllNamespaces", "list", gvk, lst, tag=tag,
                       params=_LIST_PARAMS),
            "parameters": [_PRETTY],
        }
    return out


# ---- documents -------------------------------------------------------------------------------------

def _group_version_key(rtype: ResourceType, version: str) -> str:
    return f"api/{version}" if not rtype.group else f"apis/{rtype.group}/{version}"


def _v3_doc(types: list[tuple[ResourceType, str]]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = dict(META_SCHEMAS)
    for rtype, version in sorted(types, key=lambda tv: tv[0].plural):
        prefix = definition_prefix(rtype, version)
        schemas[f"{prefix}.{rtype.kind}"] = kind_schema(rtype, version)
        schemas[f"{prefix}.{rtype.kind}List"] = list_schema(rtype, version, prefix)
        paths.update(paths_for(rtype, version, prefix))
    return {"openapi": "3.0.0", "info": {"title": _TITLE, "version": "v1"},
            "paths": paths, "components": {"schemas": schemas}}


def _to_v2(value: Any) -> Any:
    """v3 fragments to Swagger 2.0: $refs point into #/definitions, ``nullable`` becomes
    ``x-nullable``."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k == "$ref" and isinstance(v, str):
                out[k] = v.replace("#/components/schemas/", "#/definitions/")
            elif k == "nullable":
                out["x-nullable"] = v
            else:
                out[k] = _to_v2(v)
        return out
    if isinstance(value, list):
        return [_to_v2(v) for v in value]
    return value


def _v2_operation(op: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: v for k, v in op.items() if k not in ("requestBody", "responses", "parameters")}
    params = []
    for p in op.get("parameters", []):
        q = {k: v for k, v in p.items() if k != "schema"}
        q["type"] = p.get("schema", {}).get("type", "string")
        params.append(q)
    body = op.get("requestBody")
    if body is not None:
        content = body.get("content", {})
        first = next(iter(content.values()), {"schema": {"type": "object"}})
        params.append({"name": "body", "in": "body", "required": bool(body.get("required")),
                       "schema": _to_v2(first["schema"])})
        out["consumes"] = list(content)
    if params:
        out["parameters"] = params
    out["produces"] = ["application/json", "application/yaml"]
    out["schemes"] = ["https"]
    responses = {}
    for code, r in op.get("responses", {}).items():
        entry = {"description": r.get("description", "")}
        content = r.get("content")
        if content:
            entry["schema"] = _to_v2(next(iter(content.values()))["schema"])
        responses[code] = entry
    out["responses"] = responses
    return out


def _v2_doc(v3: dict[str, Any]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for path, item in v3["paths"].items():
        entry: dict[str, Any] = {}
        for method, op in item.items():
            if method == "parameters":
                entry["parameters"] = [
                    {**{k: v for k, v in p.items() if k != "schema"}, "type": p.get("schema", {}).get("type", "string")}
                    for p in op]
            else:
                entry[method] = _v2_operation(op)
        paths[path] = entry
    return {"swagger": "2.0", "info": {"title": _TITLE, "version": "v1"}, "paths": paths,
            "definitions": _to_v2(v3["components"]["schemas"]),
            "securityDefinitions": {"BearerToken": {"type": "apiKey", "name": "authorization", "in": "header"}},
            "security": [{"BearerToken": []}]}


class Document:
    """An encoded document and its ETag."""

    __slots__ = ("body", "etag")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.etag = hashlib.sha512(body).hexdigest()[:128].upper()


class OpenAPI:
    """/openapi/v2, /openapi/v3 and /openapi/v3/{group-version}, rebuilt when the registry changes."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._generation = -1
        self._v2: Document | None = None
        self._v3: dict[str, Document] = {}
        self._v3_root: Document | None = None

    def _refresh(self) -> None:
        generation = self.registry.generation
        if generation == self._generation:
            return
        with self._lock:
            if generation == self._generation:
                return
            by_gv: dict[str, list[tuple[ResourceType, str]]] = {}
            everything: list[tuple[ResourceType, str]] = []
            for rtype in self.registry.all():
                for version in rtype.versions:
                    by_gv.setdefault(_group_version_key(rtype, version), []).append((rtype, version))
                    everything.append((rtype, version))
            v3 = {gv: Document(encode(_v3_doc(types))) for gv, types in sorted(by_gv.items())}
            root = {"paths": {gv: {"serverRelativeURL": f"/openapi/v3/{gv}?hash={doc.etag}"}
                              for gv, doc in v3.items()}}
            self._v3 = v3
            self._v3_root = Document(encode(root))
            self._v2 = Document(encode(_v2_doc(_v3_doc(everything))))
            self._generation = generation

    def v2(self) -> Document:
        self._refresh()
        assert self._v2 is not None
        return self._v2

    def v3_root(self) -> Document:
        self._refresh()
        assert self._v3_root is not None
        return self._v3_root

    def v3(self, group_version: str) -> Document | None:
        self._refresh()
        return self._v3.get(group_version)
