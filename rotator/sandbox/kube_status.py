"""Kubernetes ``Status`` errors, shaped like the real apiserver's (k8s.io/apimachinery/pkg/api/errors).

Handlers raise :class:`KubeError`; the emulator turns it into a ``Status`` body with the same
``reason``, ``message`` and ``details`` a real apiserver would send.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

REASONS: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class KubeError(Exception):
    """An API error that becomes a ``Status`` response."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason if reason is not None else REASONS.get(code, "Unknown")
        self.details = details
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return status_body(self.code, self.message, self.reason, self.details)

    def response(self) -> web.Response:
        return web.Response(
            status=self.code,
            text=json.dumps(self.body()),
            content_type="application/json",
            headers=self.headers,
        )


def status_body(code: int, message: str, reason: str, details: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
    }
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


def success_status(name: str, group: str, plural: str, uid: str) -> dict[str, Any]:
    """What a delete of a non-namespace object returns."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": _details(name, group, plural) | {"uid": uid},
    }


def _details(name: str, group: str, kind: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name}
    if group:
        details["group"] = group
    details["kind"] = kind
    return details


def qualified(plural: str, group: str) -> str:
    """``secrets`` or ``leases.coordination.k8s.io``: how messages name a resource."""
    return f"{plural}.{group}" if group else plural


# -- constructors, one per apimachinery helper --------------------------------------------------


def not_found(plural: str, group: str, name: str) -> KubeError:
    return KubeError(404, f'{qualified(plural, group)} "{name}" not found', details=_details(name, group, plural))


def not_found_path() -> KubeError:
    return KubeError(404, "the server could not find the requested resource", details={})


def already_exists(plural: str, group: str, name: str) -> KubeError:
    return KubeError(
        409,
        f'{qualified(plural, group)} "{name}" already exists',
        reason="AlreadyExists",
        details=_details(name, group, plural),
    )


def conflict(plural: str, group: str, name: str, why: str) -> KubeError:
    return KubeError(
        409,
        f'Operation cannot be fulfilled on {qualified(plural, group)} "{name}": {why}',
        reason="Conflict",
        details=_details(name, group, plural),
    )


STALE = "the object has been modified; please apply your changes to the latest version and try again"


def bad_request(message: str) -> KubeError:
    return KubeError(400, message)


def method_not_allowed() -> KubeError:
    return KubeError(405, "the server does not allow this method on the requested resource", details={})


def unauthorized() -> KubeError:
    return KubeError(401, "Unauthorized")


def forbidden(plural: str, group: str, name: str, why: str) -> KubeError:
    subject = f'{qualified(plural, group)} "{name}"' if name else qualified(plural, group)
    return KubeError(403, f"{subject} is forbidden: {why}", details=_details(name, group, plural))


def expired(message: str) -> KubeError:
    return KubeError(410, message, reason="Expired")


def unsupported_media_type(content_type: str, accepted: list[str]) -> KubeError:
    return KubeError(
        415,
        f"the body of the request was in an unknown format - accepted media types include: {', '.join(accepted)}",
        details={},
    )


@dataclass(frozen=True)
class Cause:
    """One field error: ``reason`` is FieldValueInvalid / FieldValueRequired / ..."""

    reason: str
    field: str
    message: str

    def text(self) -> str:
        return f"{self.field}: {self.message}"


def quote(value: Any) -> str:
    """How field errors print a bad value (Go's %q for strings, %v otherwise: booleans in lower case)."""
    return json.dumps(value) if isinstance(value, str | bool) else str(value)


def invalid_value(field: str, value: Any, detail: str) -> Cause:
    return Cause("FieldValueInvalid", field, f"Invalid value: {quote(value)}: {detail}")


def required(field: str, detail: str = "") -> Cause:
    return Cause("FieldValueRequired", field, "Required value" + (f": {detail}" if detail else ""))


def forbidden_field(field: str, detail: str) -> Cause:
    return Cause("FieldValueForbidden", field, f"Forbidden: {detail}")


def invalid(kind: str, group: str, name: str, causes: list[Cause]) -> KubeError:
    """422 Invalid, as ``NewInvalid``: the message names the Kind, the causes name the fields."""
    texts = [c.text() for c in causes]
    summary = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    qualified_kind = f"{kind}.{group}" if group else kind
    details = _details(name, group, kind)
    details["causes"] = [{"reason": c.reason, "message": c.message, "field": c.field} for c in causes]
    return KubeError(422, f'{qualified_kind} "{name}" is invalid: {summary}', details=details)


def error_response(status: int, message: str, retry_after: int | None = None) -> web.Response:
    """A Status for an injected fault or a throttled request."""
    headers: dict[str, str] = {}
    details: dict[str, Any] | None = None
    if status == 429:
        seconds = retry_after if retry_after is not None else 1
        headers["Retry-After"] = str(seconds)
        details = {"retryAfterSeconds": seconds}
        message = message or "Too many requests, please try again later."
    elif status == 500:
        details = {"causes": [{"message": message}]}
        message = f"Internal error occurred: {message}"
    elif retry_after is not None:
        headers["Retry-After"] = str(retry_after)
        details = {"retryAfterSeconds": retry_after}
    return KubeError(status, message, details=details, headers=headers).response()
