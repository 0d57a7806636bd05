"""Secrets rotator authenticates with, read again each time they are used.

The admin API key (and a Docker Hub password or token, a Code Engine key) usually comes from a mounted
Kubernetes Secret. When the operator rotates it, the kubelet swaps the file in place; a daemon that read
it once would keep presenting the old value until it is restarted, and fail once that value is revoked.
Adapters read a ``LiveSecret`` for every new access token, so the new value takes effect at the next
token refresh with no restart.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from rotator import logs, redact
from rotator.errors import ConfigError
from rotator.model import SecretStr

log = logs.get("rotator.secrets")


class LiveSecret:
    """Calls ``load`` on every read. The first read happens here, so a missing or empty source is a
    start-up error; later, a failed read keeps the last good value and logs why (a Secret being
    re-mounted must not stop rotations that the old value can still do)."""

    def __init__(self, load: Callable[[], SecretStr], *, field: str) -> None:
        self._load = load
        self._field = field
        self._lock = threading.Lock()
        self._value = load()
        redact.register(self._value)
        self._failing = False

    def __call__(self) -> SecretStr:
        with self._lock:
            try:
                value = self._load()
            except ConfigError as exc:
                if not self._failing:  # once per outage, not once per token refresh
                    log.warning("secret.reload_failed", field=self._field, error=str(exc), using="last value read")
                self._failing = True
                return self._value
            if self._failing:
                log.info("secret.reload_recovered", field=self._field)
            if value != self._value:
                log.info("secret.reloaded", field=self._field)
            self._failing = False
            self._value = value
            redact.register(value)
            return value
