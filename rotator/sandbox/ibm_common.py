"""Wire pieces the IBM emulators (IAM Identity API, Code Engine) share: the API-handbook error
container, the IAM bearer-token check and opaque page tokens.

Each emulator keeps its own error codes and messages; only the mechanics live here.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import jwt
from aiohttp import web

from rotator.sandbox.tokens import TokenSigner

# The handbook ``code`` for statuses both services answer alike; each emulator adds or overrides its own.
HANDBOOK_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    429: "too_many_requests",
    500: "internal_server_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}

TokenProblem = Literal["missing", "invalid", "not_iam"]


@dataclass(frozen=True)
class Caller:
    iam_id: str
    account_id: str


class HandbookError(Exception):
    """An API error to answer in the handbook shape; ``codes`` maps a status to its default ``code``."""

    codes: ClassVar[dict[int, str]] = HANDBOOK_CODES

    def __init__(self, status: int, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or self.codes.get(status, "error")


class BearerError(Exception):
    """The request's bearer token is unusable; ``problem`` says why (each service words its own 401)."""

    def __init__(self, problem: TokenProblem) -> None:
        super().__init__(problem)
        self.problem: TokenProblem = problem


def iam_caller(request: web.Request, signer: TokenSigner) -> Caller:
    """The identity behind ``Authorization: Bearer <IAM access token>``, signed by the sandbox signer."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise BearerError("missing")
    try:
        # iat/exp are whole seconds; a 1 s leeway keeps a token valid for at least its lifetime.
        claims = jwt.decode(token.strip(), signer.key.public_key(), algorithms=["RS256"], leeway=1)
    except jwt.PyJWTError:
        raise BearerError("invalid") from None
    account = claims.get("account")
    if claims.get("realmid") != "iam" or not isinstance(account, dict) or "iam_id" not in claims:
        raise BearerError("not_iam")
    return Caller(iam_id=str(claims["iam_id"]), account_id=str(account.get("bss", "")))


def handbook_response(
    status: int, error: dict[str, Any], *, trace_header: str, headers: dict[str, str] | None = None
) -> web.Response:
    """``{"errors": [error], "status_code", "trace"}`` with the trace also sent as ``trace_header``."""
    trace = uuid.uuid4().hex
    body = {"errors": [error], "status_code": status, "trace": trace}
    return web.json_response(body, status=status, headers={trace_header: trace, **(headers or {})})


def encode_page_token(text: str) -> str:
    """An opaque, URL-safe page token carrying ``text`` (JSON in practice)."""
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_page_token(token: str) -> Any:
    """The JSON value inside a page token; None when it is not one of ours."""
    try:
        return json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError):
        return None
