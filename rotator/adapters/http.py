"""HTTP plumbing shared by the bearer-token API clients (IAM, Docker Hub, Code Engine).

Each client keeps its own status mapping; what lives here is the part that is the same for all of
them: sending one request (transport failures become ``TransientError``, every outcome is counted),
the one-refresh-on-401 attempt wrapped in the retry policy, scrubbing secrets out of error text, the
retryable statuses (429, 408, 5xx) and ``Retry-After``.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx

from rotator import redact
from rotator.errors import RateLimited, RotatorError, TransientError
from rotator.model import SecretStr
from rotator.retrying import RetryPolicy

OnRequest = Callable[[str, str, int], None]  # (operation, method, status; 0 = no response)
MAX_MESSAGE = 300


def send(
    client: httpx.Client,
    on_request: OnRequest | None,
    service: str,
    operation: str,
    method: str,
    url: str,
    **kwargs: Any,
) -> httpx.Response:
    """One request; transport failures become ``TransientError`` naming ``service``, every outcome is counted."""
    try:
        response = client.request(method, url, **kwargs)
    except httpx.TimeoutException as exc:
        _count(on_request, operation, method, 0)
        raise TransientError(f"{service} {operation}: timed out ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        _count(on_request, operation, method, 0)
        raise TransientError(f"{service} {operation}: connection failed ({type(exc).__name__})") from None
    _count(on_request, operation, method, response.status_code)
    return response


def _count(on_request: OnRequest | None, operation: str, method: str, status: int) -> None:
    if on_request is not None:
        on_request(operation, method, status)


def bearer_headers(token: SecretStr, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"Accept": "application/json", "Authorization": f"Bearer {token.reveal()}", **(extra or {})}


def call_refreshing(
    retry: RetryPolicy,
    operation: str,
    send_once: Callable[[bool], httpx.Response],
    ok: Iterable[int],
    error_for: Callable[[httpx.Response], RotatorError],
) -> httpx.Response:
    """``send_once(fresh)`` retried by the policy; a 401 is sent once more with a fresh token, and a
    status outside ``ok`` raises ``error_for(response)``."""
    expected = tuple(ok)

    def attempt() -> httpx.Response:
        response = send_once(False)
        if response.status_code == 401:
            response = send_once(True)
        if response.status_code not in expected:
            raise error_for(response)
        return response

    return retry.call(attempt, operation=operation)


def scrubbed(message: str, secrets: Iterable[SecretStr]) -> str:
    """``message`` with every secret value masked (in every encoding), then cut to a log-friendly length."""
    return redact.clean(message, extra=secrets, limit=MAX_MESSAGE)


def retryable_error(
    status: int, text: str, retry_after: Callable[[], float | None]
) -> RateLimited | TransientError | None:
    """The error for a status worth retrying (429 with its wait, 408, 5xx); None for any other."""
    if status == 429:
        return RateLimited(text, retry_after=retry_after())
    if status >= 500 or status == 408:
        return TransientError(text)
    return None


def retry_after_seconds(response: httpx.Response, now: Callable[[], float] = time.time) -> float | None:
    """``Retry-After`` in seconds (delta, or HTTP date measured against ``now()``); None when absent or
    unreadable."""
    raw = response.headers.get("Retry-After")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now())
