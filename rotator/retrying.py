"""The one retry policy every adapter uses: transient errors only, jittered, bounded, logged, counted.

Only ``TransientError`` (and its ``RateLimited``) is retried; a ``Retry-After`` the server sent
is honoured but never beyond what is left of the total time budget. Each retry is logged as
``retry.attempt`` with the operation, attempt, wait and error class (never the message, so no
value can leak) and reported to ``on_retry`` for metrics.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import structlog
import tenacity

from rotator.errors import RateLimited, TransientError

T = TypeVar("T")

# on_retry(operation, attempt, wait_seconds, error)
RetryHook = Callable[[str, int, float, BaseException], None]

log = structlog.get_logger("rotator.retrying")


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    attempts: int = 5
    max_total_s: float = 30.0
    base_s: float = 0.2
    cap_s: float = 5.0
    sleep: Callable[[float], None] = time.sleep
    on_retry: RetryHook | None = None
    jitter: Callable[[], float] = field(default=random.random, repr=False)  # uniform in [0, 1)

    @classmethod
    def none(cls) -> RetryPolicy:
        """One attempt, no sleeping: for tests that want to see the first error."""
        return cls(attempts=1)

    def call(self, fn: Callable[[], T], *, operation: str) -> T:
        """Run ``fn``, retrying transient failures within the attempt and time budget."""
        started = time.monotonic()
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransientError),
            stop=tenacity.stop_after_attempt(self.attempts) | tenacity.stop_after_delay(self.max_total_s),
            wait=lambda state: self._wait(state, started),
            sleep=self.sleep,
            before_sleep=lambda state: self._report(state, operation),
            reraise=True,
        )
        return retrying(fn)

    def backoff(self, attempt: int) -> float:
        """Exponential from ``base_s``, capped, with up to 50 % jitter taken off (never zero)."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** (attempt - 1))
        return ceiling * (0.5 + 0.5 * self.jitter())

    def _wait(self, state: tenacity.RetryCallState, started: float) -> float:
        wait = self.backoff(state.attempt_number)
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, RateLimited) and error.retry_after is not None:
            wait = max(wait, error.retry_after)
        remaining = self.max_total_s - (time.monotonic() - started)
        return max(0.0, min(wait, remaining))

    def _report(self, state: tenacity.RetryCallState, operation: str) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        assert error is not None
        log.warning(
            "retry.attempt",
            operation=operation,
            attempt=state.attempt_number,
            wait=round(wait, 3),
            error=type(error).__name__,
        )
        if self.on_retry is not None:
            self.on_retry(operation, state.attempt_number, wait, error)
