"""OpenAPI v3 documents generated from the served schemas.

kubectl will not `apply` or `create` without them: it looks in the group-version document for a
PATCH operation that carries `x-kubernetes-group-version-kind` and a `fieldValidation`
parameter, and when it finds one it leaves validation to the server (which this server does, with
field paths). `kubectl explain` reads the component schemas. Documents are generated per
registry generation and served under `?hash=` URLs that clients may cache forever.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import orjson

from hypermesh.resources.registry import Registry, ResourceType

_OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
_LIST_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"
_STATUS = "io.k8s.apimachinery.pkg.apis.meta.v1.Status"

_META_SCHEMAS: dict[str, Any] = {
    _OBJECT_META: {
        "type": "object",
        "description": "Standard object metadata: name, namespace, labels, annotations and the fields the server maintains.",
        "properties": {
            "name": {"type": "string", "description": "Name of the object, unique within its namespace."},
            "generateName": {"type": "string", "description": "A prefix the server completes with random characters when name is empty."},
            "namespace": {"type": "string", "description": "The namespace of a namespaced object."},
            "uid": {"type": "string", "description": "Unique id the server assigns on creation."},
            "resourceVersion": {"type": "string", "description": "Opaque version used for optimistic concurrency and watches."},
            "generation": {"type": "integer", "format": "int64", "description": "Incremented on every change of the desired state (spec)."},
            "creationTimestamp": {"type": "string", "format": "date-time", "description": "When the object was created."},
            "deletionTimestamp": {"type": "string", "format": "date-time", "description": "When deletion was requested; set while finalizers run."},
            "deletionGracePeriodSeconds": {"type": "integer", "format": "int64"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Key-value pairs selectors match on."},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Arbitrary non-identifying metadata."},
            "finalizers": {"type": "array", "items": {"type": "string"}, "description": "Must be empty before the object is removed."},
            "ownerReferences": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}, "description": "Objects this one depends on; garbage collection follows them."},
            "managedFields": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}, "description": "Which manager owns which fields (server-side apply)."},
        },
    },
    _LIST_META: {
        "type": "object",
        "properties": {
            "resourceVersion": {"type": "string"},
            "continue": {"type": "string"},
            "remainingItemCount": {"type": "integer", "format": "int64"},
        },
    },
    _STATUS: {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
}


def schema_name(rtype: ResourceType, kind: str | None = None) -> str:
    """Component name in the Kubernetes style: reversed group, version, kind."""
    kind = kind or rtype.kind
    if not rtype.group:
        return f"io.k8s.api.core.{rtype.version}.{kind}"
    return ".".join(reversed(rtype.group.split("."))) + f".{rtype.version}.{kind}"


def gv_path(group: str, version: str) -> str:
    return f"api/{version}" if not group else f"apis/{group}/{version}"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _param(name: str, where: str = "query", *, required: bool = False, type_: str = "string", description: str = "") -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "description": description, "schema": {"type": type_}, "uniqueItems": True}


_WRITE_PARAMS = [
    _param("dryRun", description="All: process the request fully but persist nothing."),
    _param("fieldManager", description="Name of the actor making the change, for field ownership."),
    _param("fieldValidation", description="Ignore, Warn or Strict handling of unknown fields."),
]
_LIST_PARAMS = [
    _param("labelSelector"),
    _param("fieldSelector"),
    _param("limit", type_="integer"),
    _param("continue"),
    _param("resourceVersion"),
    _param("resourceVersionMatch"),
    _param("watch", type_="boolean"),
    _param("allowWatchBookmarks", type_="boolean"),
    _param("sendInitialEvents", type_="boolean"),
    _param("timeoutSeconds", type_="integer"),
]


def _object_schema(rtype: ResourceType) -> dict[str, Any]:
    schema: dict[str, Any] = copy.deepcopy(rtype.schema) if rtype.schema else {"type": "object"}
    schema.setdefault("type", "object")
    props = schema.setdefault("properties", {})
    props.setdefault("apiVersion", {"type": "string", "description": "The versioned schema of this representation of an object."})
    props.setdefault("kind", {"type": "string", "description": "The REST resource this object represents."})
    props["metadata"] = {"description": "Standard object's metadata.", "allOf": [_ref(_OBJECT_META)]}
    schema["x-kubernetes-group-version-kind"] = [{"group": rtype.group, "version": rtype.version, "kind": rtype.kind}]
    return schema


def _list_schema(rtype: ResourceType) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"allOf": [_ref(_LIST_META)]},
            "items": {"type": "array", "items": _ref(schema_name(rtype))},
        },
        "x-kubernetes-group-version-kind": [{"group": rtype.group, "version": rtype.version, "kind": rtype.list_kind}],
    }


def _response(name: str) -> dict[str, Any]:
    media = {"schema": _ref(name)}
    return {"200": {"description": "OK", "content": {"application/json": media, "application/yaml": media}}, "401": {"description": "Unauthorized"}}


def _operation(rtype: ResourceType, action: str, op_id: str, response: str, params: list[dict[str, Any]], body: list[str] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "tags": [rtype.group or "core"],
        "operationId": op_id,
        "parameters": params,
        "responses": _response(response),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": rtype.group, "version": rtype.version, "kind": rtype.kind},
    }
    if body:
        op["requestBody"] = {"required": True, "content": {ct: {"schema": _ref(schema_name(rtype)) if ct.endswith("json") and "patch" not in ct else {"type": "object"}} for ct in body}}
    return op


def _paths(rtype: ResourceType) -> dict[str, Any]:
    base = "/" + gv_path(rtype.group, rtype.version)
    kind = rtype.kind
    obj, lst = schema_name(rtype), schema_name(rtype, rtype.list_kind)
    name_param = _param("name", "path", required=True, description=f"name of the {kind}")
    ns_param = _param("namespace", "path", required=True, description="object name and auth scope")
    patch_params = [*_WRITE_PARAMS, _param("force", type_="boolean", description="Take over conflicting fields in server-side apply.")]
    patch_types = ["application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"]

    collection = f"{base}/namespaces/{{namespace}}/{rtype.plural}" if rtype.namespaced else f"{base}/{rtype.plural}"
    prefix = [ns_param] if rtype.namespaced else []
    paths: dict[str, Any] = {
        collection: {
            "get": _operation(rtype, "list", f"list{kind}", lst, _LIST_PARAMS),
            "post": _operation(rtype, "post", f"create{kind}", obj, _WRITE_PARAMS, ["application/json", "application/yaml"]),
            "delete": _operation(rtype, "deletecollection", f"deletecollection{kind}", _STATUS, _LIST_PARAMS),
            "parameters": prefix,
        },
        f"{collection}/{{name}}": {
            "get": _operation(rtype, "get", f"read{kind}", obj, []),
            "put": _operation(rtype, "put", f"replace{kind}", obj, _WRITE_PARAMS, ["application/json", "application/yaml"]),
            "patch": _operation(rtype, "patch", f"patch{kind}", obj, patch_params, patch_types),
            "delete": _operation(rtype, "delete", f"delete{kind}", obj, [_param("dryRun"), _param("propagationPolicy"), _param("gracePeriodSeconds", type_="integer")]),
            "parameters": [*prefix, name_param],
        },
    }
    if rtype.has_status:
        paths[f"{collection}/{{name}}/status"] = {
            "get": _operation(rtype, "get", f"read{kind}Status", obj, []),
            "put": _operation(rtype, "put", f"replace{kind}Status", obj, _WRITE_PARAMS, ["application/json"]),
            "patch": _operation(rtype, "patch", f"patch{kind}Status", obj, patch_params, patch_types),
            "parameters": [*prefix, name_param],
        }
    if rtype.namespaced:
        paths[f"{base}/{rtype.plural}"] = {"get": _operation(rtype, "list", f"list{kind}ForAllNamespaces", lst, _LIST_PARAMS)}
    return paths


class OpenAPI:
    """OpenAPI v3 documents, one per group-version, cached per registry generation."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._generation = -1
        self._docs: dict[str, tuple[bytes, str]] = {}
        self._index: bytes = b""

    def _refresh(self) -> None:
        if self._generation == self.registry.generation:
            return
        by_gv: dict[str, list[ResourceType]] = {}
        for rtype in self.registry.all():
            if rtype.served:
                by_gv.setdefault(gv_path(rtype.group, rtype.version), []).append(rtype)
        docs: dict[str, tuple[bytes, str]] = {}
        for gv, types in sorted(by_gv.items()):
            paths: dict[str, Any] = {}
            schemas: dict[str, Any] = dict(_META_SCHEMAS)
            for rtype in sorted(types, key=lambda t: t.plural):
                paths.update(_paths(rtype))
                schemas[schema_name(rtype)] = _object_schema(rtype)
                schemas[schema_name(rtype, rtype.list_kind)] = _list_schema(rtype)
            doc = {
                "openapi": "3.0.0",
                "info": {"title": "HyperMesh", "version": "v1"},
                "paths": paths,
                "components": {"schemas": schemas},
            }
            body = orjson.dumps(doc)
            docs[gv] = (body, hashlib.sha512(body).hexdigest()[:64].upper())
        index = {"paths": {gv: {"serverRelativeURL": f"/openapi/v3/{gv}?hash={digest}"} for gv, (_, digest) in docs.items()}}
        self._docs = docs
        self._index = orjson.dumps(index)
        self._generation = self.registry.generation

    def index(self) -> bytes:
        self._refresh()
        return self._index

    def document(self, gv: str) -> tuple[bytes, str] | None:
        """The document of `gv` (`apis/hypermesh.io/v1` or `api/v1`) and its hash."""
        self._refresh()
        return self._docs.get(gv.strip("/"))
