"""Decoding of ``application/vnd.kubernetes.protobuf`` request bodies into their JSON form.

kubectl's typed commands (``create namespace``, ``create secret``, ``auth can-i``) send protobuf
and do not fall back to JSON on 415, so the emulator reads it; answers stay JSON, which those
clients also accept. Field numbers are those of k8s.io/api and k8s.io/apimachinery
``generated.proto`` for the kinds served here.

Wire format: the bytes ``k8s\\x00`` then a ``runtime.Unknown`` message {1: TypeMeta{1: apiVersion,
2: kind}, 2: raw object bytes, 3: contentEncoding, 4: contentType}.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

MAGIC = b"k8s\x00"


class ProtoError(ValueError):
    """The body is not a well-formed Kubernetes protobuf envelope."""


# message -> field number -> (JSON name, type, repeated). Types: str, bytes, bool, int, time, microtime,
# "map:<value type>", or another message name.
Field = tuple[str, str, bool]
SCHEMAS: dict[str, dict[int, Field]] = {
    "ObjectMeta": {
        1: ("name", "str", False),
        2: ("generateName", "str", False),
        3: ("namespace", "str", False),
        4: ("selfLink", "str", False),
        5: ("uid", "str", False),
        6: ("resourceVersion", "str", False),
        7: ("generation", "int", False),
        8: ("creationTimestamp", "time", False),
        9: ("deletionTimestamp", "time", False),
        10: ("deletionGracePeriodSeconds", "int", False),
        11: ("labels", "map:str", False),
        12: ("annotations", "map:str", False),
        13: ("ownerReferences", "OwnerReference", True),
        14: ("finalizers", "str", True),
    },
    "OwnerReference": {
        5: ("apiVersion", "str", False),
        1: ("kind", "str", False),
        3: ("name", "str", False),
        4: ("uid", "str", False),
        6: ("controller", "bool", False),
        7: ("blockOwnerDeletion", "bool", False),
    },
    "Namespace": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "NamespaceSpec", False)},
    "NamespaceSpec": {1: ("finalizers", "str", True)},
    "Secret": {
        1: ("metadata", "ObjectMeta", False),
        2: ("data", "map:bytes", False),
        3: ("type", "str", False),
        4: ("stringData", "map:str", False),
        5: ("immutable", "bool", False),
    },
    "ConfigMap": {
        1: ("metadata", "ObjectMeta", False),
        2: ("data", "map:str", False),
        3: ("binaryData", "map:bytes", False),
        4: ("immutable", "bool", False),
    },
    "ServiceAccount": {
        1: ("metadata", "ObjectMeta", False),
        2: ("secrets", "ObjectReference", True),
        3: ("imagePullSecrets", "LocalObjectReference", True),
        4: ("automountServiceAccountToken", "bool", False),
    },
    "LocalObjectReference": {1: ("name", "str", False)},
    "ObjectReference": {
        1: ("kind", "str", False),
        2: ("namespace", "str", False),
        3: ("name", "str", False),
        4: ("uid", "str", False),
        5: ("apiVersion", "str", False),
        6: ("resourceVersion", "str", False),
        7: ("fieldPath", "str", False),
    },
    "Event": {
        1: ("metadata", "ObjectMeta", False),
        2: ("involvedObject", "ObjectReference", False),
        3: ("reason", "str", False),
        4: ("message", "str", False),
        5: ("source", "EventSource", False),
        6: ("firstTimestamp", "time", False),
        7: ("lastTimestamp", "time", False),
        8: ("count", "int", False),
        9: ("type", "str", False),
        10: ("eventTime", "microtime", False),
        12: ("action", "str", False),
        13: ("related", "ObjectReference", False),
        14: ("reportingComponent", "str", False),
        15: ("reportingInstance", "str", False),
    },
    "EventSource": {1: ("component", "str", False), 2: ("host", "str", False)},
    "Lease": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "LeaseSpec", False)},
    "LeaseSpec": {
        1: ("holderIdentity", "str", False),
        2: ("leaseDurationSeconds", "int", False),
        3: ("acquireTime", "microtime", False),
        4: ("renewTime", "microtime", False),
        5: ("leaseTransitions", "int", False),
        6: ("strategy", "str", False),
        7: ("preferredHolder", "str", False),
    },
    "TokenRequest": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "TokenRequestSpec", False)},
    "TokenRequestSpec": {1: ("audiences", "str", True), 4: ("expirationSeconds", "int", False)},
    "TokenReview": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "TokenReviewSpec", False)},
    "TokenReviewSpec": {1: ("token", "str", False), 2: ("audiences", "str", True)},
    "SubjectAccessReview": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "SubjectAccessReviewSpec", False)},
    "SelfSubjectAccessReview": {
        1: ("metadata", "ObjectMeta", False),
        2: ("spec", "SelfSubjectAccessReviewSpec", False),
    },
    "SubjectAccessReviewSpec": {
        1: ("resourceAttributes", "ResourceAttributes", False),
        2: ("nonResourceAttributes", "NonResourceAttributes", False),
        3: ("user", "str", False),
        4: ("groups", "str", True),
        6: ("uid", "str", False),
    },
    "SelfSubjectAccessReviewSpec": {
        1: ("resourceAttributes", "ResourceAttributes", False),
        2: ("nonResourceAttributes", "NonResourceAttributes", False),
    },
    "ResourceAttributes": {
        1: ("namespace", "str", False),
        2: ("verb", "str", False),
        3: ("group", "str", False),
        4: ("version", "str", False),
        5: ("resource", "str", False),
        6: ("subresource", "str", False),
        7: ("name", "str", False),
    },
    "NonResourceAttributes": {1: ("path", "str", False), 2: ("verb", "str", False)},
    "DeleteOptions": {
        1: ("gracePeriodSeconds", "int", False),
        2: ("preconditions", "Preconditions", False),
        3: ("orphanDependents", "bool", False),
        4: ("propagationPolicy", "str", False),
        5: ("dryRun", "str", True),
    },
    "Preconditions": {1: ("uid", "str", False), 2: ("resourceVersion", "str", False)},
    "Unknown": {1: ("typeMeta", "TypeMeta", False), 2: ("raw", "bytes", False)},
    "TypeMeta": {1: ("apiVersion", "str", False), 2: ("kind", "str", False)},
    "Time": {1: ("seconds", "int", False), 2: ("nanos", "int", False)},
}
_MAP_ENTRY = {1: ("key", "str", False), 2: ("value", "bytes", False)}


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ProtoError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, varint value or length-delimited bytes); fixed-width fields are skipped."""
    fields: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            fields.append((number, value))
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ProtoError("truncated field")
            fields.append((number, data[pos : pos + length]))
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ProtoError(f"unsupported wire type {wire}")
    return fields


def _time(data: bytes, micro: bool) -> str:
    parts = dict(_fields(data))
    seconds, nanos = parts.get(1, 0), parts.get(2, 0)
    if not isinstance(seconds, int) or not isinstance(nanos, int):
        raise ProtoError("bad time")
    moment = dt.datetime.fromtimestamp(seconds, dt.UTC) + dt.timedelta(microseconds=nanos // 1000)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def _scalar(value: int | bytes, kind: str) -> Any:
    if kind in ("bool", "int"):
        if not isinstance(value, int):
            raise ProtoError(f"expected a varint for {kind}")
        if kind == "bool":
            return bool(value)
        return value - (1 << 64) if value >= 1 << 63 else value
    if not isinstance(value, bytes):
        raise ProtoError(f"expected bytes for {kind}")
    if kind == "bytes":
        return base64.b64encode(value).decode()
    if kind in ("time", "microtime"):
        return _time(value, kind == "microtime")
    if kind == "str":
        return value.decode("utf-8", errors="replace")
    return message(value, kind)


def message(data: bytes, name: str) -> dict[str, Any]:
    schema = SCHEMAS[name]
    result: dict[str, Any] = {}
    for number, value in _fields(data):
        if number not in schema:
            continue
        json_name, kind, repeated = schema[number]
        if kind.startswith("map:"):
            if not isinstance(value, bytes):
                raise ProtoError("map entry must be length-delimited")
            entry = {n: v for n, v in _fields(value)}
            key = _scalar(entry.get(1, b""), "str")
            result.setdefault(json_name, {})[key] = _scalar(entry.get(2, b""), kind[4:])
        elif repeated:
            result.setdefault(json_name, []).append(_scalar(value, kind))
        else:
            result[json_name] = _scalar(value, kind)
    return result


def decode(body: bytes) -> dict[str, Any]:
    """The JSON form of a protobuf-encoded object, with its apiVersion and kind."""
    if not body.startswith(MAGIC):
        raise ProtoError("missing the k8s protobuf prefix")
    envelope = message(body[len(MAGIC) :], "Unknown")
    type_meta = envelope.get("typeMeta", {})
    kind = type_meta.get("kind", "")
    if kind not in SCHEMAS or kind in ("Unknown", "TypeMeta", "Time"):
        raise ProtoError(f'no kind "{kind}" is registered for protobuf in this server')
    raw = base64.b64decode(envelope.get("raw", ""))
    obj = message(raw, kind)
    obj["apiVersion"], obj["kind"] = type_meta.get("apiVersion", ""), kind
    return obj
