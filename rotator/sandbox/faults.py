"""Run-time fault injection and request accounting for every emulator.

A rule matches requests by method and path prefix and then adds latency, answers 429 with
Retry-After for a time window, or answers an error status for a number of requests or at a
rate. Rules are set through the admin API (see ``server.py``); the request log lets tests and
benchmarks count exactly what a client sent.

``echo`` makes the error quote the credential the request presented (HTTP Basic password, Bearer
token, or an ``apikey``/``password`` form or query field), the way careless upstreams do, in one of
``ECHO_FORMS``: ``raw``, ``base64`` (of the value), ``basic`` (``Basic base64(user:value)``),
``urlencoded`` (every byte ``%XX``), ``long`` (the raw value deep in a long message, where a cut at
120, 160 or 300 characters falls inside it). Clients' redaction is tested against it.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from rotator.sandbox.base import Emulator

LOG_LIMIT = 20_000
ECHO_FORMS = ("raw", "base64", "basic", "urlencoded", "long")
# Where the long form puts the value: so that a cut at 120, 160 or 300 characters, made after a client
# put up to ~25 characters (an error code, a step) before the message, falls inside the value.
_LONG_OFFSETS = (90, 140, 270)


@dataclass(kw_only=True)
class FaultRule:
    path_prefix: str = "/"
    methods: list[str] = field(default_factory=list)  # empty: every method
    latency_ms: float = 0.0
    # 429 window: every matching request until ``throttle_until`` gets 429 + Retry-After.
    throttle_seconds: float = 0.0
    retry_after: int = 1
    throttle_until: float = 0.0
    # Errors: ``error_count`` requests (or a fraction ``error_rate``) answer ``error_status``.
    error_status: int = 0
    error_count: int = 0
    error_rate: float = 0.0
    # With error_status: the error message quotes the presented credential in this form (ECHO_FORMS).
    echo: str = ""

    @classmethod
    def from_json(cls, data: Any) -> FaultRule:
        if not isinstance(data, dict):
            raise ValueError("a fault rule is a JSON object")
        known = {f for f in cls.__dataclass_fields__ if f != "throttle_until"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault fields {sorted(unknown)}; known: {sorted(known)}")
        rule = cls(**data)
        if rule.echo and (rule.echo not in ECHO_FORMS or not rule.error_status):
            raise ValueError(f"echo must be one of {list(ECHO_FORMS)} and needs error_status")
        if rule.throttle_seconds > 0:
            rule.throttle_until = time.monotonic() + rule.throttle_seconds
        return rule

    def matches(self, request: web.Request) -> bool:
        if self.methods and request.method not in self.methods:
            return False
        return request.path.startswith(self.path_prefix)


async def _message(rule: FaultRule, request: web.Request) -> str:
    if not rule.echo:
        return "injected fault"
    user, value = await _presented(request)
    return echo_message(rule.echo, user, value)


async def _presented(request: web.Request) -> tuple[str, str]:
    """(user, value) of the credential the request carries; ("", "") when it carries none."""
    scheme, _, param = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic":
        user, _, value = base64.b64decode(param + "==").decode(errors="replace").partition(":")
        return user, value
    if scheme.lower() == "bearer":
        return "", param
    fields = dict(request.query)
    if request.content_type == "application/x-www-form-urlencoded":
        fields.update({k: str(v) for k, v in (await request.post()).items()})
    for name in ("apikey", "password"):
        if fields.get(name):
            return fields.get("username", "apikey"), fields[name]
    return "", ""


def echo_message(form: str, user: str, value: str) -> str:
    """An error message quoting ``value`` in ``form`` (one of ``ECHO_FORMS``)."""
    if form == "raw":
        return f"the credential {value} is not valid"
    if form == "base64":
        return f"the credential {base64.b64encode(value.encode()).decode()} is not valid"
    if form == "basic":
        pair = base64.b64encode(f"{user}:{value}".encode()).decode()
        return f"refused Authorization: Basic {pair}"
    if form == "urlencoded":
        return "refused apikey=" + "".join(f"%{byte:02X}" for byte in value.encode())
    text = ""
    for offset in _LONG_OFFSETS:
        text = text.ljust(offset - 1, ".") + " " + value
    return text + " was refused"


@dataclass(kw_only=True)
class LoggedRequest:
    seq: int
    time: float
    method: str
    path: str
    query: str
    status: int
    user_agent: str


class ServiceControl:
    """Fault rules and the request log of one emulated service."""

    _seq = itertools.count(1)

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.rules: list[FaultRule] = []
        self.log: deque[LoggedRequest] = deque(maxlen=LOG_LIMIT)
        self._random = random.Random(0)

    def to_json(self) -> dict[str, Any]:
        return {"rules": [asdict(r) for r in self.rules]}

    async def _fault(self, request: web.Request) -> web.StreamResponse | None:
        for rule in self.rules:
            if not rule.matches(request):
                continue
            if rule.latency_ms:
                await asyncio.sleep(rule.latency_ms / 1000)
            if rule.throttle_until > time.monotonic():
                return self.emulator.error_response(429, "too many requests", retry_after=rule.retry_after)
            if rule.error_status and rule.error_count > 0:
                rule.error_count -= 1
                return self.emulator.error_response(rule.error_status, await _message(rule, request))
            if rule.error_status and rule.error_rate and self._random.random() < rule.error_rate:
                return self.emulator.error_response(rule.error_status, await _message(rule, request))
        return None

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        status = 500
        try:
            response = await self._fault(request)
            if response is None:
                response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            if exc.status == 404:
                return self.emulator.error_response(404, "not found")
            if exc.status == 405:
                return self.emulator.error_response(405, f"method {request.method} not allowed")
            raise
        finally:
            self.log.append(
                LoggedRequest(
                    seq=next(self._seq),
                    time=time.time(),
                    method=request.method,
                    path=request.path,
                    query=request.query_string,
                    status=status,
                    user_agent=request.headers.get("User-Agent", ""),
                )
            )
