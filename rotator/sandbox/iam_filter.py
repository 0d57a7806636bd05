"""IAM's list ``filter`` parameter: ``<attribute> <op> "<value>"`` terms joined by ``and`` / ``or``.

The SDK's own integration tests use ``name co "Python"``; the emulator also knows ``eq``, ``ne``,
``sw`` (starts with) and ``ew`` (ends with), case-sensitive, with ``and`` binding tighter than ``or``
(the SCIM-style grammar IBM's docs point to; operators beyond ``co`` are [UNCONFIRMED]). Anything it
cannot parse is refused with the reason, never silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

_OPS: dict[str, Callable[[str, str], bool]] = {
    "eq": lambda have, want: have == want,
    "ne": lambda have, want: have != want,
    "co": lambda have, want: want in have,
    "sw": lambda have, want: have.startswith(want),
    "ew": lambda have, want: have.endswith(want),
}
_TOKEN = re.compile(r'\s*(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<word>[^\s"]+))')

Predicate = Callable[[Mapping[str, Any]], bool]


class FilterError(ValueError):
    """The filter cannot be parsed; the message says where."""


def _tokens(text: str) -> list[tuple[str, bool]]:
    """(text, was quoted) pairs."""
    out: list[tuple[str, bool]] = []
    pos = 0
    while pos < len(text):
        if not text[pos:].strip():
            break
        match = _TOKEN.match(text, pos)
        if match is None:
            raise FilterError(f"unterminated quote at position {pos}")
        quoted = match.group("quoted")
        if quoted is not None:
            out.append((re.sub(r"\\(.)", r"\1", quoted), True))
        else:
            out.append((match.group("word"), False))
        pos = match.end()
    return out


def parse(text: str, attributes: tuple[str, ...]) -> Predicate:
    """A predicate over a wire object's fields; ``attributes`` are the ones a filter may name."""
    tokens = _tokens(text)
    if not tokens:
        raise FilterError("empty filter")
    alternatives: list[list[tuple[str, str, str]]] = [[]]
    i = 0
    while True:
        if i + 3 > len(tokens):
            raise FilterError('expected <attribute> <operator> "<value>"')
        (attr, attr_q), (op, op_q), (value, value_q) = tokens[i : i + 3]
        if attr_q or attr not in attributes:
            raise FilterError(f"unknown attribute {attr!r}; known: {', '.join(attributes)}")
        if op_q or op.lower() not in _OPS:
            raise FilterError(f"unknown operator {op!r}; known: {', '.join(_OPS)}")
        if not value_q:
            raise FilterError(f"the value after {attr} {op} must be in double quotes")
        alternatives[-1].append((attr, op.lower(), value))
        i += 3
        if i == len(tokens):
            break
        joiner, joiner_q = tokens[i]
        if joiner_q or joiner.lower() not in ("and", "or"):
            raise FilterError(f"expected and/or, found {joiner!r}")
        if joiner.lower() == "or":
            alternatives.append([])
        i += 1

    def predicate(obj: Mapping[str, Any]) -> bool:
        return any(
            all(_OPS[op](str(obj.get(attr) or ""), value) for attr, op, value in terms) for terms in alternatives
        )

    return predicate
