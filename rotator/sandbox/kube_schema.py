"""A CustomResourceDefinition's ``openAPIV3Schema``: the structural rule, and validation, pruning and
defaulting of custom objects against it, with the apiserver's field paths and messages.

Supported keywords: type (object, array, string, integer, number, boolean), properties, required,
items, additionalProperties (a schema), enum, minimum/maximum (and exclusive*), minLength/maxLength,
pattern, minItems/maxItems, nullable, default, x-kubernetes-preserve-unknown-fields,
x-kubernetes-int-or-string, x-kubernetes-embedded-resource (kept as is), and CEL
``x-kubernetes-validations`` (see kube_cel). ``format`` is accepted and not checked.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from rotator.sandbox import kube_cel
from rotator.sandbox.kube_status import Cause, forbidden_field, invalid_value, quote, required

Schema = dict[str, Any]
TYPES = ("object", "array", "string", "integer", "number", "boolean")
# Fields every object has whatever its schema says; never pruned, never validated here.
ROOT_FIELDS = ("apiVersion", "kind", "metadata")
METADATA_ALLOWED = ("name", "generateName")


# -- the structural rule ------------------------------------------------------------------------------


def structural_causes(schema: Any, path: str) -> list[Cause]:
    """Why ``schema`` (at field path ``path``) is not structural; [] when it is."""
    if not isinstance(schema, dict):
        return [required(path, "schemas are required")]
    causes: list[Cause] = []
    if schema.get("type") != "object":
        causes.append(invalid_value(f"{path}.type", schema.get("type", ""), "must be object at the root"))
    metadata = (schema.get("properties") or {}).get("metadata")
    if isinstance(metadata, dict) and set(metadata.get("properties") or {}) - set(METADATA_ALLOWED):
        causes.append(
            forbidden_field(
                f"{path}.properties[metadata]",
                "must not specify anything other than name and generateName, but metadata is implicitly specified",
            )
        )
    return causes + _node_causes(schema, path)


def _node_causes(node: Schema, path: str) -> list[Cause]:
    causes: list[Cause] = []
    kind = node.get("type", "")
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if preserve is False:
        causes.append(invalid_value(f"{path}.x-kubernetes-preserve-unknown-fields", False, "must be true or undefined"))
    if not kind and not node.get("x-kubernetes-int-or-string") and not preserve:
        causes.append(required(f"{path}.type", "must not be empty for specified object fields"))
    elif kind and kind not in TYPES:
        supported = ", ".join(quote(t) for t in TYPES)
        causes.append(
            Cause(
                "FieldValueNotSupported",
                f"{path}.type",
                f"Unsupported value: {quote(kind)}: supported values: {supported}",
            )
        )
    if "$ref" in node:
        causes.append(forbidden_field(f"{path}.$ref", "$ref is not supported"))
    properties = node.get("properties") or {}
    if properties and isinstance(node.get("additionalProperties"), dict):
        causes.append(
            forbidden_field(f"{path}.additionalProperties", "additionalProperties and properties are mutual exclusive")
        )
    if kind == "array" and not isinstance(node.get("items"), dict):
        causes.append(required(f"{path}.items", "must be specified"))
    for index, rule in enumerate(node.get("x-kubernetes-validations") or []):
        text = rule.get("rule") if isinstance(rule, dict) else rule
        error = kube_cel.compile_error(text)
        if error:
            causes.append(invalid_value(f"{path}.x-kubernetes-validations[{index}].rule", text, error))
    for name, child in properties.items():
        if isinstance(child, dict):
            causes += _node_causes(child, f"{path}.properties[{name}]")
    if isinstance(node.get("items"), dict):
        causes += _node_causes(node["items"], f"{path}.items")
    if isinstance(node.get("additionalProperties"), dict):
        causes += _node_causes(node["additionalProperties"], f"{path}.additionalProperties")
    return causes


# -- pruning and defaulting ---------------------------------------------------------------------------


def prune(obj: dict[str, Any], schema: Schema) -> tuple[dict[str, Any], list[str]]:
    """``obj`` without the fields its schema does not name, and those fields' paths."""
    obj = copy.deepcopy(obj)
    dropped: list[str] = []
    root = {k: v for k, v in obj.items() if k not in ROOT_FIELDS}
    _prune(root, schema, "", dropped)
    return {k: v for k, v in obj.items() if k in ROOT_FIELDS} | root, dropped


def _prune(value: Any, node: Schema, path: str, dropped: list[str]) -> None:
    if isinstance(value, dict):
        if node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-embedded-resource"):
            return
        properties = node.get("properties") or {}
        extra = node.get("additionalProperties")
        for key in list(value):
            child = properties.get(key) or (extra if isinstance(extra, dict) else None)
            if child is None and extra is not True:
                dropped.append(f"{path}.{key}" if path else key)
                del value[key]
            elif child is not None:
                _prune(value[key], child, f"{path}.{key}" if path else key, dropped)
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for index, item in enumerate(value):
            _prune(item, node["items"], f"{path}[{index}]", dropped)


def apply_defaults(value: Any, node: Schema) -> Any:
    """Fill each absent property that has a ``default``, top-down (a default's own fields too)."""
    if isinstance(value, dict):
        for key, child in (node.get("properties") or {}).items():
            if key not in value and "default" in child:
                value[key] = copy.deepcopy(child["default"])
            if key in value:
                value[key] = apply_defaults(value[key], child)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value:
                if key not in (node.get("properties") or {}):
                    value[key] = apply_defaults(value[key], extra)
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        return [apply_defaults(item, node["items"]) for item in value]
    return value


# -- validation ---------------------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _is_type(value: Any, kind: str) -> bool:
    actual = _type_name(value)
    return actual == kind or (kind == "number" and actual == "integer")


def validate(obj: dict[str, Any], schema: Schema, old: dict[str, Any] | None = None) -> list[Cause]:
    """Every field error of ``obj`` (apiVersion/kind/metadata left to the generic checks); ``old``,
    the stored object on an update, feeds the CEL transition rules."""
    causes: list[Cause] = []
    body = {k: v for k, v in obj.items() if k not in ROOT_FIELDS}
    rooted = dict(
        schema, properties={k: v for k, v in (schema.get("properties") or {}).items() if k not in ROOT_FIELDS}
    )
    rooted["required"] = [r for r in schema.get("required") or [] if r not in ROOT_FIELDS]
    rooted.pop("x-kubernetes-validations", None)
    _validate(body, rooted, "", causes, old)
    # Root rules see the object with its name, as the apiserver gives them.
    _rules(_cel_root(obj), schema, "", causes, None if old is None else _cel_root(old))
    return causes


def _cel_root(obj: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k in METADATA_ALLOWED}
    return obj | {"metadata": meta}


def _rules(value: Any, node: Schema, path: str, causes: list[Cause], old: Any) -> None:
    shown = path or "<root>"
    for rule in node.get("x-kubernetes-validations") or []:
        text = rule["rule"]
        if kube_cel.transition(text) and old is None:
            continue  # transition rules judge changes; nothing to compare on create
        failed = kube_cel.holds(text, value, old if kube_cel.transition(text) else None)
        if failed is None:
            continue
        message = rule.get("message") or f"failed rule: {text}"
        if failed:
            message = f"{message}: {failed}"
        where = shown + rule["fieldPath"] if rule.get("fieldPath") else shown
        reason = rule.get("reason", "FieldValueInvalid")
        if reason == "FieldValueForbidden":
            causes.append(forbidden_field(where, message))
        elif reason == "FieldValueRequired":
            causes.append(required(where, message))
        else:
            causes.append(invalid_value(where, _type_name(value), message))


def _validate(value: Any, node: Schema, path: str, causes: list[Cause], old: Any = None) -> None:
    shown = path or "<root>"
    kind = node.get("type", "")
    if value is None:
        if not node.get("nullable") and kind:
            causes.append(invalid_value(shown, "null", f'{shown} in body must be of type {kind}: "null"'))
        return
    if node.get("x-kubernetes-int-or-string"):
        if not isinstance(value, int | str) or isinstance(value, bool):
            causes.append(invalid_value(shown, _type_name(value), f"{shown} in body must be of type integer or string"))
            return
    elif kind and not _is_type(value, kind):
        actual = _type_name(value)
        causes.append(invalid_value(shown, actual, f"{shown} in body must be of type {kind}: {quote(actual)}"))
        return
    if "enum" in node and value not in node["enum"]:
        supported = ", ".join(quote(v) for v in node["enum"])
        causes.append(
            Cause("FieldValueNotSupported", shown, f"Unsupported value: {quote(value)}: supported values: {supported}")
        )
    if isinstance(value, int | float) and not isinstance(value, bool):
        _number_causes(value, node, shown, causes)
    if isinstance(value, str):
        _string_causes(value, node, shown, causes)
    if isinstance(value, list):
        _array_causes(value, node, path, causes)
    if isinstance(value, dict):
        _object_causes(value, node, path, causes, old)
    _rules(value, node, path, causes, old)


def _number_causes(value: float, node: Schema, shown: str, causes: list[Cause]) -> None:
    low, high = node.get("minimum"), node.get("maximum")
    if low is not None and (value < low or (node.get("exclusiveMinimum") and value == low)):
        relation = "greater than" if node.get("exclusiveMinimum") else "greater than or equal to"
        causes.append(invalid_value(shown, value, f"{shown} in body should be {relation} {low}"))
    if high is not None and (value > high or (node.get("exclusiveMaximum") and value == high)):
        relation = "less than" if node.get("exclusiveMaximum") else "less than or equal to"
        causes.append(invalid_value(shown, value, f"{shown} in body should be {relation} {high}"))


def _string_causes(value: str, node: Schema, shown: str, causes: list[Cause]) -> None:
    if "minLength" in node and len(value) < node["minLength"]:
        causes.append(invalid_value(shown, value, f"{shown} in body should be at least {node['minLength']} chars long"))
    if "maxLength" in node and len(value) > node["maxLength"]:
        causes.append(Cause("FieldValueTooLong", shown, f"Too long: may not be more than {node['maxLength']} bytes"))
    if "pattern" in node and re.search(node["pattern"], value) is None:
        causes.append(invalid_value(shown, value, f"{shown} in body should match '{node['pattern']}'"))


def _array_causes(value: list[Any], node: Schema, path: str, causes: list[Cause]) -> None:
    shown = path or "<root>"
    if "minItems" in node and len(value) < node["minItems"]:
        causes.append(
            invalid_value(shown, len(value), f"{shown} in body should have at least {node['minItems']} items")
        )
    if "maxItems" in node and len(value) > node["maxItems"]:
        causes.append(
            Cause("FieldValueTooMany", shown, f"Too many: {len(value)}: must have at most {node['maxItems']} items")
        )
    items = node.get("items")
    if isinstance(items, dict):
        for index, item in enumerate(value):
            _validate(item, items, f"{path}[{index}]", causes)


def _object_causes(value: dict[str, Any], node: Schema, path: str, causes: list[Cause], old: Any) -> None:
    for name in node.get("required") or []:
        if name not in value:
            causes.append(required(f"{path}.{name}" if path else name))
    properties = node.get("properties") or {}
    extra = node.get("additionalProperties")
    for key, item in value.items():
        child = properties.get(key) or (extra if isinstance(extra, dict) else None)
        if child is not None:
            before = old.get(key) if isinstance(old, dict) else None
            _validate(item, child, f"{path}.{key}" if path else key, causes, before)
