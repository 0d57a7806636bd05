"""Value objects shared by the policy, the reconciler and the adapters. No I/O here."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field


class SecretStr:
    """A credential value that never shows itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ValueError("a secret value must be a non-empty string")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "SecretStr('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretStr) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class SecretLocation(str):
    """Where a secret is read from (``file:PATH``, ``env:NAME``), never its value: logged as it is, even
    under a field name (``apikey``, ``password``) whose values the log redaction would otherwise hide."""

    __slots__ = ()


SecretReader = Callable[[], SecretStr]
"""Gives a secret's current value; a source that can change (a mounted file) is read on every call."""


def secret_reader(secret: SecretStr | SecretReader) -> SecretReader:
    """A fixed value or a reader, as a reader: adapters take either."""
    if isinstance(secret, SecretStr):
        return lambda: secret
    return secret


@dataclass(frozen=True, kw_only=True)
class KeyInfo:
    """A credential at the provider, as listed (never with its value)."""

    id: str
    name: str
    description: str = ""
    created_at: dt.datetime
    disabled: bool = False
    expires_at: dt.datetime | None = None
    owned: bool = False  # carries rotator's marker (name prefix + description tag)
    rotation_id: str | None = None  # parsed from the marker when owned
    # None: not locked; LOCKED_BY_ROTATOR: rotator's own entity lock; else the identity that locked it.
    locked_by: str | None = None


LOCKED_BY_ROTATOR = "rotator"


@dataclass(frozen=True, kw_only=True)
class MintedKey:
    """A key just created: the only moment its value is known to the provider's caller."""

    info: KeyInfo
    value: SecretStr


@dataclass(frozen=True, kw_only=True)
class RegistryAuth:
    """One registry entry of a .dockerconfigjson (server key as written, e.g. ``us.icr.io``)."""

    server: str
    username: str
    password: SecretStr
    email: str | None = None


@dataclass(frozen=True, kw_only=True)
class TargetRef:
    """One pull secret to keep: a Kubernetes secret or a Code Engine registry secret."""

    sink: str  # "kubernetes" | "codeengine"
    namespace: str  # Kubernetes namespace, or Code Engine project id
    name: str
    service_accounts: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.sink}:{self.namespace}/{self.name}"


@dataclass(frozen=True, kw_only=True)
class TargetState:
    """A target as read: whether the secret exists, our entry, and why we would refuse it."""

    exists: bool
    entry: RegistryAuth | None = None
    refused: str = ""
    managed: bool = False


@dataclass(frozen=True, kw_only=True)
class VerifyResult:
    """Outcome of a pull check: ok, rejected (the credential is bad), or inconclusive."""

    outcome: str  # "ok" | "rejected" | "inconclusive"
    detail: str = ""
    requests: int = 0
    images: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"
