"""Structured logs: stable dotted event names, JSON when not on a terminal, and redaction.

Redaction is layered: ``SecretStr`` values render as ``***``; fields whose name says secret
(password, token, apikey...) are masked; and every value rotator has handled (minted or loaded
keys, tokens) is registered with ``rotator.redact`` and scrubbed, in every encoding, from any string
that would otherwise carry it.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import warnings
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from rotator import redact as redaction
from rotator.model import SecretLocation, SecretStr

MASK = redaction.MASK
_SECRET_FIELD = re.compile(r"(pass(word)?|secret|token|api_?key|authorization|credential_value)$", re.I)
register_secret = redaction.register  # scrub the value from every message from now on


def scrub(text: str) -> str:
    return redaction.clean(text)


def _clean(key: str, value: Any) -> Any:
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, SecretLocation):
        return str(value)
    if isinstance(value, str):
        if _SECRET_FIELD.search(key) and value:
            return MASK
        return scrub(value)
    if isinstance(value, dict):
        return {k: _clean(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(key, v) for v in value]
    return value


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        event_dict[key] = _clean(key, event_dict[key])
    return event_dict


def configure(*, level: str = "info", json_output: bool | None = None, stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    if json_output is None:
        json_output = not stream.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    _route_python_logs()


_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()
WARNINGS_KEPT = 1000  # distinct warnings remembered; a flood of new texts is not worth more memory


def _log_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, *_: Any, **__: Any
) -> None:
    """Python warnings as log lines, not text amid the JSON; each distinct one once per process (urllib3
    raises InsecureRequestWarning on every request to an unverified server)."""
    text = scrub(str(message))[:300]
    key = (category.__name__, text)
    with _warned_lock:
        if key in _warned or len(_warned) >= WARNINGS_KEPT:
            return
        _warned.add(key)
    get("py.warnings").warning(
        "python.warning", category=category.__name__, message=text, source=f"{filename}:{lineno}", once=True
    )


class _ToStructlog(logging.Handler):
    """Records of libraries that use stdlib logging (urllib3's "Connection pool is full", retries) as log
    lines: without a handler Python prints them as bare text on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        if _is_transport_retry(record):
            return
        try:
            text = record.getMessage()
        except Exception:  # a library's broken format string must not break logging
            text = str(record.msg)
        get(record.name).log(record.levelno, "python.log", logger=record.name, message=scrub(text)[:300])


def _is_transport_retry(record: logging.LogRecord) -> bool:
    """urllib3's note of each connection retry (three per contact while an API server is down): rotator's
    own ``retry.attempt`` and ``cluster.unreachable`` lines already say it once, with the field to check."""
    return record.name == "urllib3.connectionpool" and isinstance(record.msg, str) and record.msg.startswith("Retrying")


def _route_python_logs() -> None:
    warnings.showwarning = _log_warning
    root = logging.getLogger()
    if not any(isinstance(h, _ToStructlog) for h in root.handlers):
        root.addHandler(_ToStructlog(level=logging.WARNING))


def get(name: str = "rotator", **bound: Any) -> Any:
    """A logger that takes the configuration in force when it logs, not when it was made: module-level
    loggers are made at import, before ``configure`` runs (they printed console text on stdout at debug)."""
    return structlog.get_logger(name, **bound)
