"""Label and field selectors, with the grammar and error messages of k8s.io/apimachinery."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from rotator.sandbox.kube_status import bad_request

_KEY = r"(?:[A-Za-z0-9.-]+/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET_RE = re.compile(rf"^({_KEY})\s+(in|notin)\s*\((.*)\)$")
_EQ_RE = re.compile(rf"^({_KEY})\s*(==|=|!=)\s*(\S*)$")
_CMP_RE = re.compile(rf"^({_KEY})\s*([<>])\s*(-?\d+)$")
_KEY_RE = re.compile(rf"^{_KEY}$")
_VALUE_RE = re.compile(rf"^{_VALUE}$")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "in", "notin", "exists", "!exists", "gt", "lt"
    values: frozenset[str] = frozenset()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "in":
            return present and value in self.values
        if self.op == "notin":
            return not present or value not in self.values
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if not present or value is None or not re.fullmatch(r"-?\d+", value):
            return False
        bound = int(next(iter(self.values)))
        return int(value) > bound if self.op == "gt" else int(value) < bound


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside ``( )``."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _check_value(value: str) -> None:
    if len(value) > 63 or not _VALUE_RE.match(value):
        raise bad_request(
            f'unable to parse requirement: values[0][{value}]: Invalid value: "{value}": a valid label must be '
            "an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end "
            "with an alphanumeric character"
        )


def _requirement(part: str) -> Requirement:
    if part.startswith("!"):
        key = part[1:].strip()
        if _KEY_RE.match(key):
            return Requirement(key, "!exists")
    elif m := _SET_RE.match(part):
        values = [v.strip() for v in m.group(3).split(",")]
        for value in values:
            _check_value(value)
        return Requirement(m.group(1), m.group(2), frozenset(values))
    elif m := _EQ_RE.match(part):
        _check_value(m.group(3))
        return Requirement(m.group(1), "notin" if m.group(2) == "!=" else "in", frozenset([m.group(3)]))
    elif m := _CMP_RE.match(part):
        return Requirement(m.group(1), "gt" if m.group(2) == ">" else "lt", frozenset([m.group(3)]))
    elif _KEY_RE.match(part):
        return Requirement(part, "exists")
    raise bad_request(f"unable to parse requirement: found '{part}', expected: key, '!', 'in', 'notin', '=', '!='")


def parse_label_selector(text: str) -> list[Requirement]:
    """``a=b,c!=d,e in (x,y),!f``: every requirement must hold."""
    text = text.strip()
    if not text:
        return []
    return [_requirement(part.strip()) for part in _split_top_level(text)]


def labels_match(requirements: list[Requirement], obj: dict[str, Any]) -> bool:
    if not requirements:
        return True
    labels = obj.get("metadata", {}).get("labels") or {}
    return all(r.matches(labels) for r in requirements)


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    value: str
    negate: bool

    def matches(self, obj: dict[str, Any]) -> bool:
        return (field_value(obj, self.field) == self.value) != self.negate


def field_value(obj: dict[str, Any], path: str) -> str:
    current: Any = obj
    for part in path.split("."):
        if not isinstance(current, dict):
            return ""
        current = current.get(part)
    if path == "source" and isinstance(obj.get("source"), dict):
        current = obj["source"].get("component")
    return "" if current is None else str(current)


def parse_field_selector(text: str, allowed: tuple[str, ...]) -> list[FieldRequirement]:
    """``metadata.name=x,type!=Opaque``; unknown fields are a 400 like the real conversion funcs."""
    text = text.strip()
    if not text:
        return []
    result: list[FieldRequirement] = []
    for part in text.split(","):
        for op in ("!=", "==", "="):
            field, sep, value = part.partition(op)
            if sep:
                break
        else:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        field = field.strip()
        if field not in ("metadata.name", "metadata.namespace", *allowed):
            raise bad_request(f"field label not supported: {field}")
        result.append(FieldRequirement(field, value.strip(), op == "!="))
    return result


def fields_match(requirements: list[FieldRequirement], obj: dict[str, Any]) -> bool:
    return all(r.matches(obj) for r in requirements)


@dataclass(frozen=True)
class Selector:
    labels: list[Requirement]
    fields: list[FieldRequirement]

    @classmethod
    def parse(cls, label_text: str, field_text: str, allowed_fields: tuple[str, ...]) -> Selector:
        return cls(parse_label_selector(label_text), parse_field_selector(field_text, allowed_fields))

    @property
    def empty(self) -> bool:
        return not self.labels and not self.fields

    def matches(self, obj: dict[str, Any]) -> bool:
        return labels_match(self.labels, obj) and fields_match(self.fields, obj)
