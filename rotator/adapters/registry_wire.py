"""Pure pieces of the registry pull check: header parsing, token responses, status classification.

No I/O and no clock of its own: ``registry.py`` does the HTTP and passes values in.

How a status is read (the outcome a verifier reports, see ``registry.py``):

=========================  ==========================  =====================================================
step                       status                      verdict
=========================  ==========================  =====================================================
``GET /v2/`` (ping)        200                         ANONYMOUS: no credentials asked
                           401                         CHALLENGE: read ``WWW-Authenticate``
token endpoint             200                         OK
                           400, 401, 403               REJECTED (ICR answers 400 for a bad ``iamapikey`` pair)
``HEAD`` manifest          200                         OK
                           401, 403 (after auth)       REJECTED: credential refused or lacks pull rights
                           404                         MISSING: image unknown, a configuration problem
any                        408, 429, 500, 502-504      RETRY within the time budget, then INCONCLUSIVE
any                        anything else               INCONCLUSIVE
=========================  ==========================  =====================================================
"""

from __future__ import annotations

import datetime as dt
import email.utils
import enum
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from rotator import redact
from rotator.imageref import DOCKER_HUB, plain_http_remote

# Accept all four manifest types: without them registry 2.8 answers 404 for an OCI manifest and 400
# for a Docker v2 one.
MANIFEST_ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)

RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
# Token services a registry is known to delegate to on a host other than its own (its realm host is
# trusted without configuration). ICR, Quay, GHCR and the distribution registry serve their own realm.
KNOWN_REALM_HOSTS: Mapping[str, frozenset[str]] = {DOCKER_HUB: frozenset({"auth.docker.io"})}
REALM_HOSTS_FIELD = "registry.token_realm_hosts"
TOKEN_DEFAULT_EXPIRES_S = 60
TOKEN_MIN_EXPIRES_S = 60
_DETAIL_MAX = 160


class Verdict(enum.Enum):
    OK = "ok"
    ANONYMOUS = "anonymous"
    CHALLENGE = "challenge"
    REJECTED = "rejected"
    MISSING = "missing"
    RETRY = "retry"
    INCONCLUSIVE = "inconclusive"


def classify_ping(status: int) -> Verdict:
    if status == 200:
        return Verdict.ANONYMOUS
    if status == 401:
        return Verdict.CHALLENGE
    return Verdict.RETRY if status in RETRYABLE else Verdict.INCONCLUSIVE


def classify_token(status: int) -> Verdict:
    if status == 200:
        return Verdict.OK
    if status in (400, 401, 403):
        return Verdict.REJECTED
    return Verdict.RETRY if status in RETRYABLE else Verdict.INCONCLUSIVE


def classify_manifest(status: int) -> Verdict:
    if status == 200:
        return Verdict.OK
    if status in (401, 403):
        return Verdict.REJECTED
    if status == 404:
        return Verdict.MISSING
    return Verdict.RETRY if status in RETRYABLE else Verdict.INCONCLUSIVE


# -- token realm -------------------------------------------------------------------------------


def host_of(url_or_netloc: str) -> str:
    """The host name of a URL or ``host[:port]``: lower case, no user-info, no port, no IPv6 brackets."""
    text = url_or_netloc if "://" in url_or_netloc else f"//{url_or_netloc}"
    return urlsplit(text).hostname or ""


def realm_refusal(realm: str, registry: str, allowed: Collection[str]) -> tuple[str, str] | None:
    """Why the credential must not go to the token ``realm``: (outcome, detail), or None when it may.

    ``allowed`` holds host names (no port: a registry and its token service often listen on different
    ports of one host). A realm elsewhere could be anyone's: it would receive the full key, so the check
    is rejected. A plain-http realm is accepted only on loopback, read from the parsed host (never from
    text before an ``@``).
    """
    parts = urlsplit(realm)
    host = parts.hostname or ""
    if host not in allowed:
        return "rejected", (
            f"token realm host {host!r} is neither {registry}'s host nor a known token service of it; "
            f"the credential was not sent (if {host!r} is its token service, list it in {REALM_HOSTS_FIELD})"
        )
    if plain_http_remote(realm):
        return "inconclusive", f"token realm of {registry} is plain http on {host}; credentials not sent"
    return None


# -- Retry-After ---------------------------------------------------------------------------------


def parse_retry_after(value: str | None, *, now: dt.datetime) -> float | None:
    """Seconds to wait: delta-seconds or an HTTP-date relative to ``now``; None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", text):
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" dates parse as naive; HTTP dates are GMT
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - now).total_seconds())


def backoff_delay(attempt: int, *, unit: float, base_s: float = 0.5, cap_s: float = 8.0) -> float:
    """Jittered exponential delay before retry ``attempt`` (1-based); ``unit`` in [0, 1) picks the jitter.

    The delay lies in [d/2, d) with d = min(cap, base * 2**(attempt-1)): never zero, never a herd.
    """
    ceiling = min(cap_s, base_s * 2.0 ** max(0, attempt - 1))
    return ceiling / 2 + ceiling / 2 * unit


# -- rate-limit headers --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Quota:
    """The last pull quota a registry announced (Docker Hub's ``ratelimit-*`` headers)."""

    limit: int | None = None
    remaining: int | None = None
    window_s: int | None = None
    source: str | None = None  # docker-ratelimit-source: the IP or user the quota is counted for


def _rate_value(text: str | None) -> tuple[int | None, int | None]:
    """``"100;w=21600"`` -> (100, 21600); ``"100"`` -> (100, None); unreadable -> (None, None)."""
    if not text:
        return None, None
    first, *params = (part.strip() for part in text.split(";"))
    match = re.match(r"[0-9]+", first)
    if match is None:
        return None, None
    window = None
    for param in params:
        key, _, val = param.partition("=")
        if key.strip().lower() == "w" and val.strip().isdigit():
            window = int(val.strip())
    return int(match.group(0)), window


def parse_ratelimit(headers: Mapping[str, str]) -> Quota | None:
    """Quota from ``ratelimit-limit``/``-remaining`` (or the ``x-ratelimit-`` variants); None without them."""
    lowered = {k.lower(): v for k, v in headers.items()}
    limit_text = lowered.get("ratelimit-limit") or lowered.get("x-ratelimit-limit")
    remaining_text = lowered.get("ratelimit-remaining") or lowered.get("x-ratelimit-remaining")
    if limit_text is None and remaining_text is None:
        return None
    limit, limit_window = _rate_value(limit_text)
    remaining, remaining_window = _rate_value(remaining_text)
    if limit is None and remaining is None:
        return None
    source = lowered.get("docker-ratelimit-source")
    return Quota(limit=limit, remaining=remaining, window_s=limit_window or remaining_window, source=source)


# -- bodies --------------------------------------------------------------------------------------


def one_line(text: str, limit: int = _DETAIL_MAX) -> str:
    """``text`` on one line, scrubbed of every secret in play, and only then cut to ``limit``."""
    return redact.clean(" ".join(text.split()), limit=limit)


def error_summary(body: bytes) -> str:
    """``CODE: message`` of a registry/token error body, or "" when it says nothing readable.

    Reads only the known fields of the registry (``errors[0]``), OAuth (``error``/``error_description``),
    Docker Hub (``details``) and IAM (``errorCode``/``errorMessage``) shapes, so nothing else the server
    echoed can reach a log line.
    """
    try:
        doc = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(doc, dict):
        return ""
    errors = doc.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return _pair(errors[0].get("code"), errors[0].get("message"))
    if "errorCode" in doc or "errorMessage" in doc:
        return _pair(doc.get("errorCode"), doc.get("errorMessage"))
    if "error" in doc:
        return _pair(doc.get("error"), doc.get("error_description"))
    return _pair(None, doc.get("details") or doc.get("detail") or doc.get("message"))


def _pair(code: Any, message: Any) -> str:
    parts = [str(v) for v in (code, message) if isinstance(v, str | int) and str(v)]
    return one_line(": ".join(parts), 120)


@dataclass(frozen=True)
class TokenReply:
    token: str
    expires_in: int


def parse_token_reply(body: bytes) -> TokenReply:
    """``token`` (or OAuth ``access_token``) and a lifetime of at least 60 s (default 60)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("token endpoint answered 200 with a body that is not JSON") from None
    if not isinstance(doc, dict):
        raise ValueError("token endpoint answered 200 with JSON that is not an object")
    token = doc.get("token") or doc.get("access_token")
    if not isinstance(token, str) or not token:
        raise ValueError("token endpoint answered 200 without token or access_token")
    return TokenReply(token=token, expires_in=max(TOKEN_MIN_EXPIRES_S, _lifetime(doc.get("expires_in"))))


def _lifetime(expires: Any) -> int:
    if isinstance(expires, bool):
        return TOKEN_DEFAULT_EXPIRES_S
    if isinstance(expires, int | float):
        return int(expires)
    if isinstance(expires, str) and expires.strip().isdigit():
        return int(expires)
    return TOKEN_DEFAULT_EXPIRES_S
