"""Run-time fault injection and request accounting for every emulator.

A rule matches requests by method and path prefix and then adds latency, answers 429 with
Retry-After for a time window, or answers an error status for a number of requests or at a
rate. Rules are set through the admin API (see ``server.py``); the request log lets tests and
benchmarks count exactly what a client sent.
"""

from __future__ import annotations

import asyncio
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

    @classmethod
    def from_json(cls, data: Any) -> FaultRule:
        if not isinstance(data, dict):
            raise ValueError("a fault rule is a JSON object")
        known = {f for f in cls.__dataclass_fields__ if f != "throttle_until"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault fields {sorted(unknown)}; known: {sorted(known)}")
        rule = cls(**data)
        if rule.throttle_seconds > 0:
            rule.throttle_until = time.monotonic() + rule.throttle_seconds
        return rule

    def matches(self, request: web.Request) -> bool:
        if self.methods and request.method not in self.methods:
            return False
        return request.path.startswith(self.path_prefix)


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
                return self.emulator.error_response(rule.error_status, "injected fault")
            if rule.error_status and rule.error_rate and self._random.random() < rule.error_rate:
                return self.emulator.error_response(rule.error_status, "injected fault")
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
