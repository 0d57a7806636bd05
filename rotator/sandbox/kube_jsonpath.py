"""The JSONPath subset CRD ``additionalPrinterColumns`` use, evaluated on one object.

Supported: ``.field`` steps (also quoted ``['field.with.dots']``), ``[n]`` indexes (negative from the
end), ``[*]`` and ``.*`` wildcards, and filters ``[?(@.a.b=="x")]`` / ``!=`` / an existence test
``[?(@.a)]`` over list items. Not supported (rejected as malformed): recursive descent ``..``, slices,
unions, and arithmetic. A path evaluates to every value it reaches, in order.
"""

from __future__ import annotations

import json
import re
from typing import Any

_STEP = re.compile(
    r"""\.(?P<field>[A-Za-z0-9_$-]+|\*)"""
    r"""|\[(?P<index>-?\d+)\]"""
    r"""|\[(?P<star>\*)\]"""
    r"""|\[['"](?P<quoted>[^'"]+)['"]\]"""
    r"""|\[\?\(@(?P<lhs>(?:\.[A-Za-z0-9_$-]+)+)\s*(?:(?P<op>==|!=)\s*(?P<rhs>"[^"]*"|'[^']*'|-?\d+(?:\.\d+)?|true|false))?\)\]"""
)


class JsonPathError(ValueError):
    pass


def parse(path: str) -> list[re.Match[str]]:
    """The steps of ``path`` (``.a.b`` or ``{.a.b}``), or JsonPathError naming where it stops."""
    text = path.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    if not text.startswith((".", "[")):
        raise JsonPathError(f"must be a simple json path starting with . : {path}")
    steps: list[re.Match[str]] = []
    position = 0
    while position < len(text):
        match = _STEP.match(text, position)
        if match is None:
            raise JsonPathError(f"unsupported json path {path!r} at {text[position:]!r}")
        steps.append(match)
        position = match.end()
    return steps


def _literal(text: str) -> Any:
    if text[0] in "'\"":
        return text[1:-1]
    return json.loads(text)


def _field(value: Any, names: list[str]) -> list[Any]:
    for name in names:
        if not isinstance(value, dict) or name not in value:
            return []
        value = value[name]
    return [value]


def _step(values: list[Any], step: re.Match[str]) -> list[Any]:
    found: list[Any] = []
    for value in values:
        if step["field"] == "*" or step["star"]:
            found += list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else []
        elif step["field"] is not None or step["quoted"] is not None:
            found += _field(value, [step["field"] or step["quoted"]])
        elif step["index"] is not None:
            index = int(step["index"])
            if isinstance(value, list) and -len(value) <= index < len(value):
                found.append(value[index])
        elif step["lhs"] is not None and isinstance(value, list):
            names = step["lhs"].split(".")[1:]
            for item in value:
                reached = _field(item, names)
                if step["op"] is None:
                    keep = bool(reached)
                else:
                    equal = bool(reached) and reached[0] == _literal(step["rhs"])
                    keep = equal if step["op"] == "==" else bool(reached) and not equal
                if keep:
                    found.append(item)
    return found


def evaluate(path: str, obj: Any) -> list[Any]:
    values = [obj]
    for step in parse(path):
        values = _step(values, step)
    return values
