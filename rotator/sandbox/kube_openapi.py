"""The OpenAPI documents of the kinds the Kubernetes emulator serves: ``/openapi/v3`` (a discovery
document naming one document per group version, ``/openapi/v3/api/v1`` ...) and ``/openapi/v2``.

kubectl reads them before ``apply``: it looks for the ``fieldValidation`` parameter on the kind's
PATCH operation (found: the server validates, so kubectl sends ``fieldValidation=Strict`` instead of
validating itself) and for the patch strategies of list fields. kubectl 1.32 asks for v3 first and
falls back to v2 only when v3 is missing. v2 is served as JSON only: client-go asks for it as
protobuf (``application/com.github.proto-openapi.spec.v2@v1.0+protobuf``), which is answered 406 Not
Acceptable, as an apiserver answers a type it cannot produce.

The schemas name every field of the served kinds with its type, the real definition names
(``io.k8s.api.core.v1.Secret`` ...) and ``x-kubernetes-group-version-kind``; descriptions are left out.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from typing import Any

from rotator.sandbox.kube_types import BY_PATH, RESOURCES, SERVER_VERSION, ResourceType

META = "io.k8s.apimachinery.pkg.apis.meta.v1"
PACKAGES = {
    "": "io.k8s.api.core.v1",
    "coordination.k8s.io": "io.k8s.api.coordination.v1",
    "authentication.k8s.io": "io.k8s.api.authentication.v1",
    "authorization.k8s.io": "io.k8s.api.authorization.v1",
}
OBJECT = {"apiVersion": "string", "kind": "string", "metadata": f"{META}.ObjectMeta"}
LIST = {"apiVersion": "string", "kind": "string", "metadata": f"{META}.ListMeta"}
REVIEW_STATUS = {"allowed": "boolean", "denied": "boolean", "reason": "string", "evaluationError": "string"}
ATTRIBUTES = {k: "string" for k in ("namespace", "verb", "group", "version", "resource", "subresource", "name")}

# Field types: string, integer, boolean, byte, map:<type>, []<type>, or a definition; a list type ending
# in @<merge key> (or a bare @ for a primitive list) is merged by strategic merge patch, as kube_patch does.
CORE, COORD, AUTHN, AUTHZ = (
    PACKAGES[g] for g in ("", "coordination.k8s.io", "authentication.k8s.io", "authorization.k8s.io")
)
DEFINITIONS: dict[str, dict[str, str]] = {
    f"{META}.ObjectMeta": {
        "name": "string",
        "generateName": "string",
        "namespace": "string",
        "selfLink": "string",
        "uid": "string",
        "resourceVersion": "string",
        "generation": "integer",
        "creationTimestamp": f"{META}.Time",
        "deletionTimestamp": f"{META}.Time",
        "deletionGracePeriodSeconds": "integer",
        "labels": "map:string",
        "annotations": "map:string",
        "ownerReferences": f"[]{META}.OwnerReference@uid",
        "finalizers": "[]string@",
        "managedFields": f"[]{META}.ManagedFieldsEntry",
    },
    f"{META}.ListMeta": {
        "selfLink": "string",
        "resourceVersion": "string",
        "continue": "string",
        "remainingItemCount": "integer",
    },
    f"{META}.OwnerReference": {
        "apiVersion": "string",
        "kind": "string",
        "name": "string",
        "uid": "string",
        "controller": "boolean",
        "blockOwnerDeletion": "boolean",
    },
    f"{META}.ManagedFieldsEntry": {
        "manager": "string",
        "operation": "string",
        "apiVersion": "string",
        "time": f"{META}.Time",
        "fieldsType": "string",
        "fieldsV1": f"{META}.FieldsV1",
        "subresource": "string",
    },
    f"{CORE}.Namespace": OBJECT | {"spec": f"{CORE}.NamespaceSpec", "status": f"{CORE}.NamespaceStatus"},
    f"{CORE}.NamespaceSpec": {"finalizers": "[]string"},
    f"{CORE}.NamespaceStatus": {"phase": "string"},
    f"{CORE}.Secret": OBJECT
    | {"data": "map:byte", "stringData": "map:string", "type": "string", "immutable": "boolean"},
    f"{CORE}.ConfigMap": OBJECT | {"data": "map:string", "binaryData": "map:byte", "immutable": "boolean"},
    f"{CORE}.ServiceAccount": OBJECT
    | {
        "secrets": f"[]{CORE}.ObjectReference@name",
        "imagePullSecrets": f"[]{CORE}.LocalObjectReference",  # atomic, as in k8s.io/api
        "automountServiceAccountToken": "boolean",
    },
    f"{CORE}.LocalObjectReference": {"name": "string"},
    f"{CORE}.ObjectReference": {
        k: "string" for k in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")
    },
    f"{CORE}.Event": OBJECT
    | {
        "involvedObject": f"{CORE}.ObjectReference",
        "reason": "string",
        "message": "string",
        "source": f"{CORE}.EventSource",
        "firstTimestamp": f"{META}.Time",
        "lastTimestamp": f"{META}.Time",
        "count": "integer",
        "type": "string",
        "eventTime": f"{META}.MicroTime",
        "series": f"{CORE}.EventSeries",
        "action": "string",
        "related": f"{CORE}.ObjectReference",
        "reportingComponent": "string",
        "reportingInstance": "string",
    },
    f"{CORE}.EventSource": {"component": "string", "host": "string"},
    f"{CORE}.EventSeries": {"count": "integer", "lastObservedTime": f"{META}.MicroTime"},
    f"{COORD}.Lease": OBJECT | {"spec": f"{COORD}.LeaseSpec"},
    f"{COORD}.LeaseSpec": {
        "holderIdentity": "string",
        "leaseDurationSeconds": "integer",
        "acquireTime": f"{META}.MicroTime",
        "renewTime": f"{META}.MicroTime",
        "leaseTransitions": "integer",
        "strategy": "string",
        "preferredHolder": "string",
    },
    f"{AUTHN}.TokenReview": OBJECT | {"spec": f"{AUTHN}.TokenReviewSpec", "status": f"{AUTHN}.TokenReviewStatus"},
    f"{AUTHN}.TokenReviewSpec": {"token": "string", "audiences": "[]string"},
    f"{AUTHN}.TokenReviewStatus": {
        "authenticated": "boolean",
        "user": f"{AUTHN}.UserInfo",
        "audiences": "[]string",
        "error": "string",
    },
    f"{AUTHN}.UserInfo": {"username": "string", "uid": "string", "groups": "[]string"},
    f"{AUTHZ}.SubjectAccessReview": OBJECT
    | {"spec": f"{AUTHZ}.SubjectAccessReviewSpec", "status": f"{AUTHZ}.SubjectAccessReviewStatus"},
    f"{AUTHZ}.SelfSubjectAccessReview": OBJECT
    | {"spec": f"{AUTHZ}.SelfSubjectAccessReviewSpec", "status": f"{AUTHZ}.SubjectAccessReviewStatus"},
    f"{AUTHZ}.SubjectAccessReviewSpec": {
        "resourceAttributes": f"{AUTHZ}.ResourceAttributes",
        "nonResourceAttributes": f"{AUTHZ}.NonResourceAttributes",
        "user": "string",
        "groups": "[]string",
        "uid": "string",
    },
    f"{AUTHZ}.SelfSubjectAccessReviewSpec": {
        "resourceAttributes": f"{AUTHZ}.ResourceAttributes",
        "nonResourceAttributes": f"{AUTHZ}.NonResourceAttributes",
    },
    f"{AUTHZ}.ResourceAttributes": ATTRIBUTES,
    f"{AUTHZ}.NonResourceAttributes": {"path": "string", "verb": "string"},
    f"{AUTHZ}.SubjectAccessReviewStatus": REVIEW_STATUS,
    f"{META}.Status": {
        "apiVersion": "string",
        "kind": "string",
        "metadata": f"{META}.ListMeta",
        "status": "string",
        "message": "string",
        "reason": "string",
        "code": "integer",
    },
    f"{META}.DeleteOptions": {
        "apiVersion": "string",
        "kind": "string",
        "gracePeriodSeconds": "integer",
        "propagationPolicy": "string",
        "dryRun": "[]string",
    },
}
# Definitions that are not objects with properties.
SCALARS: dict[str, dict[str, Any]] = {
    f"{META}.Time": {"type": "string", "format": "date-time"},
    f"{META}.MicroTime": {"type": "string", "format": "date-time"},
    f"{META}.FieldsV1": {"type": "object"},
    f"{META}.Patch": {"type": "object"},
}
PATCH_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
)
WRITE_PARAMS = ("dryRun", "fieldManager", "fieldValidation")
LIST_PARAMS = ("labelSelector", "fieldSelector", "limit", "continue", "resourceVersion", "watch", "timeoutSeconds")
NOT_ACCEPTABLE_V2 = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"


def kind_definition(rt: ResourceType) -> str:
    if rt.group in PACKAGES:
        return f"{PACKAGES[rt.group]}.{rt.kind}"
    # A custom kind is named as the apiserver names it: the group reversed, the version, the kind.
    return ".".join([*reversed(rt.group.split(".")), rt.version, rt.kind])


def _gvk(rt: ResourceType, kind: str | None = None) -> dict[str, str]:
    return {"group": rt.group, "version": rt.version, "kind": kind or rt.kind}


def _list_definitions() -> dict[str, dict[str, str]]:
    return {kind_definition(rt) + "List": LIST | {"items": f"[]{kind_definition(rt)}"} for rt in RESOURCES if rt.stored}


class _Renderer:
    """One document's schema and parameter shapes: OpenAPI 3 (``v3``) or Swagger 2."""

    def __init__(self, v3: bool) -> None:
        self.v3 = v3
        self.prefix = "#/components/schemas/" if v3 else "#/definitions/"

    def ref(self, name: str) -> dict[str, Any]:
        return {"$ref": self.prefix + name}

    def field(self, spec: str) -> dict[str, Any]:
        if spec.startswith("[]"):
            item, merged, merge_key = spec[2:].partition("@")
            schema: dict[str, Any] = {"type": "array", "items": self.field(item)}
            if merged:  # strategic merge: by the key, or (no key) a union of primitives
                schema["x-kubernetes-patch-strategy"] = "merge"
            if merge_key:
                schema["x-kubernetes-patch-merge-key"] = merge_key
            return schema
        if spec.startswith("map:"):
            return {"type": "object", "additionalProperties": self.field(spec[4:])}
        if spec == "byte":
            return {"type": "string", "format": "byte"}
        if spec in ("string", "integer", "boolean"):
            return {"type": spec}
        return self.ref(spec)

    def schemas(self) -> dict[str, Any]:
        kinds = {kind_definition(rt): rt for rt in RESOURCES}
        lists = {kind_definition(rt) + "List": rt for rt in RESOURCES if rt.stored}
        found: dict[str, Any] = dict(SCALARS)
        for name, props in (DEFINITIONS | _list_definitions()).items():
            schema: dict[str, Any] = {
                "type": "object",
                "properties": {k: self.field(v) for k, v in props.items()},
            }
            if name in kinds:
                schema["x-kubernetes-group-version-kind"] = [_gvk(kinds[name])]
            elif name in lists:
                schema["x-kubernetes-group-version-kind"] = [_gvk(lists[name], lists[name].kind + "List")]
                schema["required"] = ["items"]
            found[name] = schema
        return found

    def param(self, name: str, where: str = "query") -> dict[str, Any]:
        kind = (
            "integer" if name in ("limit", "timeoutSeconds") else "boolean" if name in ("watch", "force") else "string"
        )
        param: dict[str, Any] = {"name": name, "in": where, "uniqueItems": True}
        if where == "path":
            param["required"] = True
        if self.v3:
            param["schema"] = {"type": kind}
        else:
            param["type"] = kind
        return param

    def operation(
        self, rt: ResourceType, action: str, verb: str, response: str, params: tuple[str, ...], body: tuple[str, ...]
    ) -> dict[str, Any]:
        op: dict[str, Any] = {
            "operationId": f"{verb}{rt.kind}",
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": _gvk(rt),
            "parameters": [self.param(p) for p in params],
        }
        if self.v3:
            op["responses"] = {
                "200": {"description": "OK", "content": {"application/json": {"schema": self.ref(response)}}}
            }
            if body:
                schema = self.ref(f"{META}.Patch" if action == "patch" else kind_definition(rt))
                op["requestBody"] = {"required": True, "content": {t: {"schema": schema} for t in body}}
        else:
            op["responses"] = {"200": {"description": "OK", "schema": self.ref(response)}}
            op["produces"] = ["application/json", "application/yaml"]
            if body:
                op["consumes"] = list(body)
                schema = self.ref(f"{META}.Patch" if action == "patch" else kind_definition(rt))
                op["parameters"].append({"name": "body", "in": "body", "required": True, "schema": schema})
        return op

    def paths(self, rt: ResourceType) -> dict[str, Any]:
        base = f"/apis/{rt.group}/{rt.version}" if rt.group else f"/api/{rt.version}"
        kind, listing = kind_definition(rt), kind_definition(rt) + "List"
        json_body = ("application/json", "application/yaml")
        if not rt.stored:
            return {
                f"{base}/{rt.plural}": {"post": self.operation(rt, "post", "create", kind, WRITE_PARAMS, json_body)}
            }
        scope = f"{base}/namespaces/{{namespace}}/{rt.plural}" if rt.namespaced else f"{base}/{rt.plural}"
        scope_params = [self.param("namespace", "path")] if rt.namespaced else []
        collection = {
            "parameters": scope_params,
            "get": self.operation(rt, "list", "list", listing, LIST_PARAMS, ()),
            "post": self.operation(rt, "post", "create", kind, WRITE_PARAMS, json_body),
            "delete": self.operation(rt, "deletecollection", "deleteCollection", f"{META}.Status", LIST_PARAMS, ()),
        }
        item = {
            "parameters": [self.param("name", "path"), *scope_params],
            "get": self.operation(rt, "get", "read", kind, (), ()),
            "put": self.operation(rt, "put", "replace", kind, WRITE_PARAMS, json_body),
            "patch": self.operation(rt, "patch", "patch", kind, (*WRITE_PARAMS, "force"), PATCH_TYPES),
            "delete": self.operation(rt, "delete", "delete", f"{META}.Status", ("dryRun",), ()),
        }
        found = {scope: collection, f"{scope}/{{name}}": item}
        if rt.namespaced:
            found[f"{base}/{rt.plural}"] = {
                "get": self.operation(rt, "list", "listForAllNamespaces", listing, LIST_PARAMS, ())
            }
        return found

    def custom_schemas(self, rt: ResourceType) -> dict[str, Any]:
        """A custom kind's definition (its openAPIV3Schema, with the object fields) and its list's."""
        assert rt.custom is not None
        schema = copy.deepcopy(rt.custom.schema)
        schema.setdefault("properties", {}).update(
            {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": self.ref(f"{META}.ObjectMeta")}
        )
        schema["x-kubernetes-group-version-kind"] = [_gvk(rt)]
        listing = {
            "type": "object",
            "required": ["items"],
            "properties": {k: self.field(v) for k, v in LIST.items()}
            | {"items": {"type": "array", "items": self.ref(kind_definition(rt))}},
            "x-kubernetes-group-version-kind": [_gvk(rt, rt.kind + "List")],
        }
        return {kind_definition(rt): schema, kind_definition(rt) + "List": listing}


def _info() -> dict[str, str]:
    return {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]}


def v3_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


@functools.cache
def v3_document(group: str, version: str) -> dict[str, Any]:
    renderer = _Renderer(v3=True)
    paths: dict[str, Any] = {}
    for rt in BY_PATH[group][version].values():
        paths |= renderer.paths(rt)
    security = {"BearerToken": {"type": "apiKey", "name": "authorization", "in": "header"}}
    return {
        "openapi": "3.0.0",
        "info": _info(),
        "paths": paths,
        "components": {"schemas": renderer.schemas(), "securitySchemes": security},
    }


def custom_v3_document(group: str, version: str, custom: list[ResourceType]) -> dict[str, Any]:
    """A custom group version's document: its kinds' paths and schemas (with the shared definitions)."""
    renderer = _Renderer(v3=True)
    document = copy.deepcopy(v3_document("", "v1"))
    document["paths"] = {}
    for rt in custom:
        if (rt.group, rt.version) == (group, version):
            document["paths"] |= renderer.paths(rt)
            document["components"]["schemas"] |= renderer.custom_schemas(rt)
    return document


def _index_entry(path: str, document: dict[str, Any]) -> dict[str, str]:
    digest = hashlib.sha512(json.dumps(document, sort_keys=True).encode()).hexdigest()
    return {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest.upper()}"}


@functools.cache
def _builtin_index() -> dict[str, Any]:
    return {
        v3_path(group, version): _index_entry(v3_path(group, version), v3_document(group, version))
        for group, versions in BY_PATH.items()
        for version in versions
    }


def v3_index(custom: list[ResourceType]) -> dict[str, Any]:
    """``/openapi/v3``: each group version's document with a content hash, as clients cache them by it."""
    paths = dict(_builtin_index())
    for group, version in dict.fromkeys((rt.group, rt.version) for rt in custom):
        path = v3_path(group, version)
        paths[path] = _index_entry(path, custom_v3_document(group, version, custom))
    return {"paths": paths}


def v3_lookup(segments: list[str], custom: list[ResourceType]) -> dict[str, Any] | None:
    """The document for ``/openapi/v3/<segments>``, or None for an unknown group version."""
    if len(segments) == 2 and segments[0] == "api" and segments[1] in BY_PATH.get("", {}):
        return v3_document("", segments[1])
    if len(segments) == 3 and segments[0] == "apis" and segments[2] in BY_PATH.get(segments[1], {}):
        return v3_document(segments[1], segments[2])
    if (
        len(segments) == 3
        and segments[0] == "apis"
        and any((rt.group, rt.version) == (segments[1], segments[2]) for rt in custom)
    ):
        return custom_v3_document(segments[1], segments[2], custom)
    return None


@functools.cache
def _builtin_v2() -> dict[str, Any]:
    renderer = _Renderer(v3=False)
    paths: dict[str, Any] = {}
    for rt in RESOURCES:
        paths |= renderer.paths(rt)
    return {
        "swagger": "2.0",
        "info": _info(),
        "paths": paths,
        "definitions": renderer.schemas(),
        "securityDefinitions": {"BearerToken": {"type": "apiKey", "name": "authorization", "in": "header"}},
        "security": [{"BearerToken": []}],
    }


def v2_document(custom: list[ResourceType]) -> dict[str, Any]:
    if not custom:
        return _builtin_v2()
    document = copy.deepcopy(_builtin_v2())
    renderer = _Renderer(v3=False)
    for rt in custom:
        document["paths"] |= renderer.paths(rt)
        document["definitions"] |= renderer.custom_schemas(rt)
    return document
