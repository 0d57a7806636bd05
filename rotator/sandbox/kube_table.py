"""``meta.k8s.io/v1`` Table rendering, which kubectl asks for (``Accept: ...;as=Table``) to print columns."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from rotator.sandbox import kube_jsonpath
from rotator.sandbox.kube_types import PrinterColumn, ResourceType, parse_time

Obj = dict[str, Any]
Column = tuple[str, str, Callable[[Obj, dt.datetime], Any]]


def _since(stamp: Any, now: dt.datetime) -> str:
    created = parse_time(stamp) if isinstance(stamp, str) else None
    if created is None:
        return "<unknown>"
    seconds = max(0, int((now - created).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _age(obj: Obj, now: dt.datetime) -> str:
    return _since(obj["metadata"].get("creationTimestamp"), now)


def _printer_cell(column: PrinterColumn) -> Callable[[Obj, dt.datetime], Any]:
    """A CRD printer column's cell: the JSONPath's first value (None when absent, which kubectl
    prints as <none>); a date column shows the time since, like the apiserver's table convertor."""

    def cell(obj: Obj, now: dt.datetime) -> Any:
        values = kube_jsonpath.evaluate(column.json_path, obj)
        if not values or values[0] is None:
            return None
        value = values[0]
        if column.type == "date":
            return _since(value, now)
        if column.type == "string" and not isinstance(value, str):
            return value if isinstance(value, int | float | bool) else str(value)
        return value

    return cell


def _columns(rt: ResourceType) -> list[Column]:
    if rt.custom is None:
        return COLUMNS.get(rt.kind, [("Name", "string", _name), ("Age", "string", _age)])
    if not rt.custom.columns:
        return [("Name", "string", _name), ("Age", "date", _age)]
    return [("Name", "string", _name)] + [(c.name, c.type, _printer_cell(c)) for c in rt.custom.columns]


def _name(obj: Obj, _: dt.datetime) -> str:
    return str(obj["metadata"]["name"])


COLUMNS: dict[str, list[Column]] = {
    "Secret": [
        ("Name", "string", _name),
        ("Type", "string", lambda o, _: o.get("type", "")),
        ("Data", "integer", lambda o, _: len(o.get("data") or {})),
        ("Age", "string", _age),
    ],
    "Namespace": [
        ("Name", "string", _name),
        ("Status", "string", lambda o, _: (o.get("status") or {}).get("phase", "")),
        ("Age", "string", _age),
    ],
    "ServiceAccount": [
        ("Name", "string", _name),
        ("Secrets", "string", lambda o, _: len(o.get("secrets") or [])),
        ("Age", "string", _age),
    ],
    "ConfigMap": [
        ("Name", "string", _name),
        ("Data", "integer", lambda o, _: len(o.get("data") or {}) + len(o.get("binaryData") or {})),
        ("Age", "string", _age),
    ],
    "Lease": [
        ("Name", "string", _name),
        ("Holder", "string", lambda o, _: (o.get("spec") or {}).get("holderIdentity", "")),
        ("Age", "string", _age),
    ],
    "CustomResourceDefinition": [
        ("Name", "string", _name),
        ("Created At", "date", lambda o, _: o["metadata"].get("creationTimestamp")),
    ],
    "Event": [
        ("Name", "string", _name),
        ("Type", "string", lambda o, _: o.get("type", "")),
        ("Reason", "string", lambda o, _: o.get("reason", "")),
        ("Message", "string", lambda o, _: o.get("message", "")),
        ("Age", "string", _age),
    ],
}


def _partial(obj: Obj) -> Obj:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}


def table(rt: ResourceType, objects: list[Obj], list_meta: dict[str, Any]) -> dict[str, Any]:
    columns = _columns(rt)
    # kubectl shows a column of priority > 0 only with -o wide; built-in kinds' columns all have 0.
    priorities = [0] + [c.priority for c in rt.custom.columns] if rt.custom and rt.custom.columns else []
    now = dt.datetime.now(dt.UTC)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": [
            {
                "name": name,
                "type": kind_,
                "format": "name" if name == "Name" else "",
                "description": "",
                "priority": priorities[i] if priorities else 0,
            }
            for i, (name, kind_, _) in enumerate(columns)
        ],
        "rows": [{"cells": [fn(o, now) for _, _, fn in columns], "object": _partial(o)} for o in objects],
    }


def wants_table(accept: str) -> bool:
    return "as=Table" in accept
