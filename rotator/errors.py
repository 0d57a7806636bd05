"""rotator's exceptions. Adapters map every HTTP status to one of these in one place.

    RotatorError
    ├── ConfigError                 bad configuration; names file, field, value and a fix
    ├── TransientError              worth retrying: timeouts, 429, 5xx, 409 conflicts
    │   ├── RateLimited             429; carries retry_after seconds when the server said
    │   └── Unreachable             the server could not be talked to at all (refused, timed out)
    └── PermanentError              retrying will not help
        ├── NotOwnedError           a key or secret rotator did not create; never touched
        ├── LimitReachedError       a provider quota (IAM key limit, Code Engine secret limit)
        ├── UnauthorizedError       our own credential is rejected (401) or lacks rights (403)
        ├── NotFoundError           the object is gone (404)
        ├── TargetRefusedError      a target we must not write (wrong type, malformed content)
        ├── LockedError             another process is working on the same credential
        ├── StateError              the state store is unreadable or corrupt (never overwritten)
        └── RequestRefused          a rotation request that cannot be accepted as asked (HTTP 422)

Messages never contain a key, token or password.
"""

from __future__ import annotations


class RotatorError(Exception):
    """Base of every error rotator raises on purpose."""


class ConfigError(RotatorError):
    pass


class TransientError(RotatorError):
    pass


class RateLimited(TransientError):
    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unreachable(TransientError):
    """Nothing answered (connection refused, reset, timed out): a fleet cluster in this state is marked
    out of sync and the rotation goes on with the others."""


class PermanentError(RotatorError):
    pass


class NotOwnedError(PermanentError):
    pass


class LimitReachedError(PermanentError):
    pass


class UnauthorizedError(PermanentError):
    pass


class NotFoundError(PermanentError):
    pass


class TargetRefusedError(PermanentError):
    pass


class LockedError(PermanentError):
    pass


class StateError(PermanentError):
    pass


class RequestRefused(PermanentError):
    """A request naming a key the credential does not have, or an Idempotency-Key reused for another request."""
