"""Decoding and validation of request bodies, following the apiserver's order and messages.

1. decode: the body must be an object of the right apiVersion/kind with fields of the right JSON
   types (else 400 BadRequest, like the Go JSON decoder); unknown fields are dropped with a
   warning, or rejected with ``fieldValidation=Strict``;
2. normalise: defaults (Secret ``type``), ``stringData`` folded into ``data``, MicroTime re-rendered;
3. validate: names, labels, data keys and type-specific rules (422 Invalid with field causes).
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import re
from typing import Any

from rotator.sandbox import kube_crd, kube_schema
from rotator.sandbox.kube_status import (
    Cause,
    KubeError,
    bad_request,
    forbidden_field,
    invalid,
    invalid_value,
    required,
)
from rotator.sandbox.kube_types import ResourceType

# JSON type tags -> the Go type named in decode errors.
GO_TYPES = {
    "str": "string",
    "bool": "bool",
    "int": "int32",
    "strmap": "map[string]string",
    "bytesmap": "map[string][]uint8",
    "obj": "struct",
    "objlist": "[]struct",
    "strlist": "[]string",
    "time": "string",
    "any": "any",
}

METADATA = {
    "name": "str",
    "generateName": "str",
    "namespace": "str",
    "selfLink": "str",
    "uid": "str",
    "resourceVersion": "str",
    "generation": "int",
    "creationTimestamp": "time",
    "deletionTimestamp": "time",
    "deletionGracePeriodSeconds": "int",
    "labels": "strmap",
    "annotations": "strmap",
    "ownerReferences": "objlist",
    "finalizers": "strlist",
    "managedFields": "any",
}
COMMON = {"apiVersion": "str", "kind": "str", "metadata": "obj"}
SCHEMAS: dict[str, dict[str, str]] = {
    "Secret": {"data": "bytesmap", "stringData": "strmap", "type": "str", "immutable": "bool"},
    "ConfigMap": {"data": "strmap", "binaryData": "bytesmap", "immutable": "bool"},
    "ServiceAccount": {"secrets": "objlist", "imagePullSecrets": "objlist", "automountServiceAccountToken": "bool"},
    "Namespace": {"spec": "obj", "status": "obj"},
    "Lease": {"spec": "obj"},
    "Event": {
        "involvedObject": "obj",
        "reason": "str",
        "message": "str",
        "source": "obj",
        "firstTimestamp": "time",
        "lastTimestamp": "time",
        "count": "int",
        "type": "str",
        "eventTime": "time",
        "series": "obj",
        "action": "str",
        "related": "obj",
        "reportingComponent": "str",
        "reportingInstance": "str",
    },
    "CustomResourceDefinition": {"spec": "obj", "status": "obj"},
    "TokenReview": {"spec": "obj", "status": "obj"},
    "SubjectAccessReview": {"spec": "obj", "status": "obj"},
    "SelfSubjectAccessReview": {"spec": "obj", "status": "obj"},
}
LEASE_SPEC = {
    "holderIdentity": "str",
    "leaseDurationSeconds": "int",
    "acquireTime": "time",
    "renewTime": "time",
    "leaseTransitions": "int",
    "preferredHolder": "str",
    "strategy": "str",
}
MICROTIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$")
MAX_SECRET_BYTES = 1024 * 1024

SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
QUALIFIED_NAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
CONFIG_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")
SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start "
    "and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
QUALIFIED_MSG = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
    "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used "
    "for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
CONFIG_KEY_MSG = (
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or "
    "'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"
)
IMMUTABLE_SET = "field is immutable when `immutable` is set"
REQUIRED_KEYS = {
    "kubernetes.io/dockerconfigjson": (".dockerconfigjson",),
    "kubernetes.io/dockercfg": (".dockercfg",),
    "kubernetes.io/ssh-auth": ("ssh-privatekey",),
    "kubernetes.io/tls": ("tls.crt", "tls.key"),
}
JSON_KEYS = {"kubernetes.io/dockerconfigjson": ".dockerconfigjson", "kubernetes.io/dockercfg": ".dockercfg"}


# -- 1. decode --------------------------------------------------------------------------------------


def _cannot_handle(rt: ResourceType, detail: str) -> KubeError:
    return bad_request(f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: {detail}')


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "null"


def _type_ok(value: Any, tag: str) -> bool:
    if value is None or tag == "any":
        return True
    checks = {
        "str": lambda v: isinstance(v, str),
        "time": lambda v: isinstance(v, str),
        "bool": lambda v: isinstance(v, bool),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "strmap": lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
        "bytesmap": lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
        "obj": lambda v: isinstance(v, dict),
        "objlist": lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
        "strlist": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    }
    return bool(checks[tag](value))


def _check_fields(
    rt: ResourceType, where: str, obj: dict[str, Any], schema: dict[str, str], strict: bool, warnings: list[str]
) -> dict[str, Any]:
    """Type-check known fields; drop unknown ones (warning) or reject them (Strict)."""
    result: dict[str, Any] = {}
    for key, value in obj.items():
        tag = schema.get(key)
        path = f"{where}.{key}" if where else key
        if tag is None:
            if strict:
                raise bad_request(f'strict decoding error: unknown field "{path}"')
            warnings.append(f'unknown field "{path}"')
            continue
        if not _type_ok(value, tag):
            raise _cannot_handle(
                rt,
                f"json: cannot unmarshal {_json_type(value)} into Go struct field {rt.kind}.{path} "
                f"of type {GO_TYPES[tag]}",
            )
        result[key] = value
    return result


def decode(rt: ResourceType, body: Any, *, strict: bool = False) -> tuple[dict[str, Any], list[str]]:
    """The body as a typed object of ``rt``, plus warnings about dropped fields."""
    if not isinstance(body, dict):
        raise bad_request(
            f"the object provided is unrecognized (must be of type {rt.kind}): couldn't get version/kind; "
            f"json parse error: json: cannot unmarshal {_json_type(body)} into Go value of type struct"
        )
    api_version, kind = body.get("apiVersion"), body.get("kind")
    if api_version not in (None, "", rt.api_version):
        raise bad_request(
            f"the API version in the data ({api_version}) does not match the expected API version ({rt.api_version})"
        )
    if kind not in (None, "", rt.kind):
        raise bad_request(
            f'{kind} in version "{rt.version}" cannot be handled as a {rt.kind}: converting '
            f"({rt.version}.{kind}) to ({rt.kind}): unknown conversion"
        )
    warnings: list[str] = []
    if rt.custom is not None:
        if not isinstance(body.get("metadata") or {}, dict):
            raise _cannot_handle(rt, "json: cannot unmarshal into Go struct field of type metav1.ObjectMeta")
        obj, dropped = kube_schema.prune(body, rt.custom.schema)
        if dropped and strict:
            # The apiserver names every unknown field of a custom object, in one message.
            raise bad_request("strict decoding error: " + ", ".join(f'unknown field "{path}"' for path in dropped))
        warnings += [f'unknown field "{path}"' for path in dropped]
    else:
        obj = _check_fields(rt, "", body, COMMON | SCHEMAS.get(rt.kind, {}), strict, warnings)
    obj["metadata"] = _check_fields(rt, "metadata", obj.get("metadata") or {}, METADATA, strict, warnings)
    if rt.kind == "Lease" and isinstance(obj.get("spec"), dict):
        obj["spec"] = _check_fields(rt, "spec", obj["spec"], LEASE_SPEC, strict, warnings)
    obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
    return obj, warnings


# -- 2. normalise -----------------------------------------------------------------------------------


def _b64decode(rt: ResourceType, value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        bad = next((i for i, c in enumerate(value) if not (c.isalnum() or c in "+/=")), len(value) - 1)
        raise _cannot_handle(rt, f"illegal base64 data at input byte {max(bad, 0)}") from None


def _microtime(rt: ResourceType, field: str, value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str) or not MICROTIME_RE.match(value):
        raise _cannot_handle(
            rt, f'parsing time "{value}" as "2006-01-02T15:04:05.000000Z07:00": cannot parse as RFC3339 micro'
        )
    import datetime as dt

    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(dt.UTC)
    return parsed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def on_read(rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    """A stored object as served: a custom object gets the defaults its schema has now."""
    if rt.custom is None:
        return obj
    return kube_schema.apply_defaults(copy.deepcopy(obj), rt.custom.schema)  # type: ignore[no-any-return]


def normalise(rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults and canonical encodings, applied on create and on every update."""
    obj = copy.deepcopy(obj)
    meta = obj["metadata"]
    for key in ("labels", "annotations"):
        if meta.get(key) is None:
            meta.pop(key, None)
    if rt.kind == "Secret":
        data = {k: base64.b64encode(_b64decode(rt, v)).decode() for k, v in (obj.get("data") or {}).items()}
        for key, text in (obj.pop("stringData", None) or {}).items():
            data[key] = base64.b64encode(text.encode()).decode()
        obj["data"] = data
        if not data:
            obj.pop("data")
        obj["type"] = obj.get("type") or "Opaque"
    elif rt.kind == "ConfigMap":
        if obj.get("binaryData"):
            obj["binaryData"] = {k: base64.b64encode(_b64decode(rt, v)).decode() for k, v in obj["binaryData"].items()}
    elif rt.kind == "Lease":
        spec = obj.setdefault("spec", {}) or {}
        obj["spec"] = spec
        for field in ("acquireTime", "renewTime"):
            if field in spec:
                spec[field] = _microtime(rt, f"spec.{field}", spec[field])
    elif rt.kind == "Namespace":
        name = meta.get("name", "")
        if LABEL_RE.match(name):  # an invalid name gets its own error, not a second one about the label
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        obj["spec"] = {"finalizers": ["kubernetes"]} | (obj.get("spec") or {})
        obj["status"] = {"phase": "Active"}
    elif rt.kind == "CustomResourceDefinition":
        obj = kube_crd.normalise(obj, old)
    elif rt.custom is not None:
        obj = kube_schema.apply_defaults(obj, rt.custom.schema)
    return obj


# -- 3. validate ------------------------------------------------------------------------------------


def _name_causes(rt: ResourceType, name: str) -> list[Cause]:
    if rt.kind == "Namespace":
        if len(name) > 63:
            return [invalid_value("metadata.name", name, "must be no more than 63 characters")]
        return [] if LABEL_RE.match(name) else [invalid_value("metadata.name", name, LABEL_MSG)]
    if len(name) > 253:
        return [invalid_value("metadata.name", name, "must be no more than 253 characters")]
    return [] if SUBDOMAIN_RE.match(name) else [invalid_value("metadata.name", name, SUBDOMAIN_MSG)]


def _qualified_key_causes(field: str, key: str) -> list[Cause]:
    prefix, sep, name = key.rpartition("/")
    causes: list[Cause] = []
    if sep and (not prefix or len(prefix) > 253 or not SUBDOMAIN_RE.match(prefix)):
        causes.append(invalid_value(field, key, "prefix part " + SUBDOMAIN_MSG))
    if len(name) > 63 or not QUALIFIED_NAME_RE.match(name):
        causes.append(invalid_value(field, key, QUALIFIED_MSG))
    return causes


def _meta_causes(rt: ResourceType, meta: dict[str, Any]) -> list[Cause]:
    name = meta.get("name") or ""
    if not name:
        return [required("metadata.name", "name or generateName is required")]
    causes = _name_causes(rt, name)
    for key, value in (meta.get("labels") or {}).items():
        causes += _qualified_key_causes("metadata.labels", key)
        if len(value) > 63 or not (value == "" or QUALIFIED_NAME_RE.match(value)):
            causes.append(invalid_value("metadata.labels", value, LABEL_VALUE_MSG))
    for key in meta.get("annotations") or {}:
        causes += _qualified_key_causes("metadata.annotations", key.lower())
    return causes


def _go_json_error(text: bytes) -> str | None:
    try:
        json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        position = getattr(exc, "pos", 0) or 0
        char = text[position : position + 1].decode(errors="replace") if position < len(text) else ""
        if not char:
            return "unexpected end of JSON input"
        return f"invalid character '{char}' looking for beginning of value"
    return None


def _data_causes(data: dict[str, str], field: str) -> list[Cause]:
    causes: list[Cause] = []
    for key in data:
        if len(key) > 253 or not CONFIG_KEY_RE.match(key):
            causes.append(invalid_value(f"{field}[{key}]", key, CONFIG_KEY_MSG))
    return causes


def _secret_causes(obj: dict[str, Any]) -> list[Cause]:
    data: dict[str, str] = obj.get("data") or {}
    causes = _data_causes(data, "data")
    decoded = {k: base64.b64decode(v) for k, v in data.items()}
    if sum(len(v) for v in decoded.values()) > MAX_SECRET_BYTES:
        causes.append(Cause("FieldValueTooLong", "data", f"Too long: must have at most {MAX_SECRET_BYTES} bytes"))
    secret_type = obj.get("type", "Opaque")
    for key in REQUIRED_KEYS.get(secret_type, ()):
        if key not in decoded:
            causes.append(required(f"data[{key}]"))
    json_key = JSON_KEYS.get(secret_type)
    if json_key and json_key in decoded and (error := _go_json_error(decoded[json_key])):
        causes.append(invalid_value(f"data[{json_key}]", "<secret contents redacted>", error))
    if secret_type == "kubernetes.io/basic-auth" and not (decoded.get("username") or decoded.get("password")):
        causes += [required("data[username]"), required("data[password]")]
    annotations = obj["metadata"].get("annotations") or {}
    if secret_type == "kubernetes.io/service-account-token" and not annotations.get(
        "kubernetes.io/service-account.name"
    ):
        causes.append(required("metadata.annotations[kubernetes.io/service-account.name]"))
    return causes


def _immutable_causes(obj: dict[str, Any], old: dict[str, Any], fields: tuple[str, ...]) -> list[Cause]:
    if not old.get("immutable"):
        return []
    causes: list[Cause] = []
    if not obj.get("immutable"):
        causes.append(forbidden_field("immutable", IMMUTABLE_SET))
    causes += [forbidden_field(f, IMMUTABLE_SET) for f in fields if obj.get(f) != old.get(f)]
    return causes


def _kind_causes(rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
    causes: list[Cause] = []
    if rt.kind == "Secret":
        causes += _secret_causes(obj)
        if old is not None and obj.get("type") != old.get("type"):
            causes.append(invalid_value("type", obj.get("type"), "field is immutable"))
        if old is not None:
            causes += _immutable_causes(obj, old, ("data",))
    elif rt.kind == "ConfigMap":
        causes += _data_causes(obj.get("data") or {}, "data") + _data_causes(obj.get("binaryData") or {}, "binaryData")
        for key in set(obj.get("data") or {}) & set(obj.get("binaryData") or {}):
            causes.append(invalid_value(f"data[{key}]", key, "duplicate of key present in binaryData"))
        if old is not None:
            causes += _immutable_causes(obj, old, ("data", "binaryData"))
    elif rt.kind == "CustomResourceDefinition":
        causes += kube_crd.causes(obj, old)
    elif rt.custom is not None:
        causes += kube_schema.validate(obj, rt.custom.schema, old)
    elif rt.kind == "Lease":
        spec = obj.get("spec") or {}
        duration = spec.get("leaseDurationSeconds")
        if duration is not None and duration <= 0:
            causes.append(invalid_value("spec.leaseDurationSeconds", duration, "must be greater than 0"))
        transitions = spec.get("leaseTransitions")
        if transitions is not None and transitions < 0:
            causes.append(invalid_value("spec.leaseTransitions", transitions, "must be greater than or equal to 0"))
    return causes


def validate(rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None = None) -> None:
    """Raise 422 Invalid with every field error, as the real validation does."""
    causes = _meta_causes(rt, obj["metadata"]) + _kind_causes(rt, obj, old)
    if causes:
        raise invalid(rt.kind, rt.group, obj["metadata"].get("name") or "", causes)
