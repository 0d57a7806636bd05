"""CEL ``x-kubernetes-validations`` of CRD schemas, evaluated with cel-python (``celpy``).

Like the apiserver: a rule sees ``self`` (the value at its schema node, defaulted) and, in a
transition rule, ``oldSelf`` (the stored value; such rules run only on updates that had one). A
false result is a field error at the node, with the rule's ``message`` (else ``failed rule: <rule>``);
a rule that does not compile refuses the definition. Standard CEL only: the Kubernetes extension
libraries (quantity, url, ip, cidr, format, the list/regex additions) and cost limits are not
provided, so a rule using them fails to compile here though a real cluster would accept it.
"""

from __future__ import annotations

import functools
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

_ENV = celpy.Environment()


class CelError(ValueError):
    pass


@functools.lru_cache(maxsize=1024)
def _program(rule: str) -> celpy.Runner:
    try:
        return _ENV.program(_ENV.compile(rule))
    except CELParseError as exc:
        raise CelError(f"compilation failed: {str(exc).splitlines()[0]}") from None


def compile_error(rule: Any) -> str | None:
    """Why ``rule`` does not compile, or None."""
    if not isinstance(rule, str) or not rule.strip():
        return "rule is required"
    try:
        _program(rule)
    except CelError as exc:
        return str(exc)
    return None


def transition(rule: str) -> bool:
    """A rule that reads ``oldSelf`` (evaluated only on an update of an existing value)."""
    return "oldSelf" in rule


def holds(rule: str, value: Any, old: Any = None) -> str | None:
    """None when ``rule`` is true for ``value``; else why not (false, or the evaluation error)."""
    activation: dict[str, Any] = {"self": json_to_cel(value)}
    if old is not None:
        activation["oldSelf"] = json_to_cel(old)
    try:
        result = _program(rule).evaluate(activation)
    except CelError as exc:
        return str(exc)
    except CELEvalError as exc:
        return f"evaluation error: {exc.args[0] if exc.args else exc}"
    if isinstance(result, celtypes.BoolType) and bool(result):
        return None
    if isinstance(result, celtypes.BoolType):
        return ""
    return f"rule evaluated to {type(result).__name__}, not a bool"
