"""Token-auth pieces of the registry emulator: scopes, grants, token claims and challenges.

Follows the distribution token spec (``docs/content/spec/auth/{token,scope}.md``): a token
request names scopes ``type:name:action[,action]``; the token server grants the intersection of
what was asked and what the identity may do, never an error for missing rights.
"""

from __future__ import annotations

import fnmatch
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from rotator.sandbox.registry_store import NAME_RE
from rotator.sandbox.tokens import ISSUER

TOKEN_TTL_S = 300
_TYPE_RE = re.compile(r"[a-z0-9]+(?:\([a-z0-9]+\))?")
_ACTION_RE = re.compile(r"[a-z*]+")


class ScopeError(ValueError):
    """A scope string that does not follow the grammar."""


@dataclass(frozen=True)
class Scope:
    type: str
    name: str
    actions: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"

    def to_claim(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


@dataclass(frozen=True)
class Grant:
    """``actions`` on every repository whose name matches the fnmatch ``pattern``."""

    pattern: str
    actions: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"pattern": self.pattern, "actions": list(self.actions)}

    @classmethod
    def from_json(cls, data: Any) -> Grant:
        if not isinstance(data, dict) or not isinstance(data.get("pattern"), str):
            raise ValueError('a grant is {"pattern": "ns/*", "actions": ["pull"]}')
        actions = data.get("actions")
        if not isinstance(actions, list) or not all(isinstance(a, str) and _ACTION_RE.fullmatch(a) for a in actions):
            raise ValueError("grant actions must be a list of action names such as pull, push, *")
        return cls(data["pattern"], tuple(actions))


def parse_scopes(values: list[str]) -> list[Scope]:
    """Every scope in the ``scope`` parameters (each may hold several, space-separated)."""
    scopes: list[Scope] = []
    for value in values:
        for item in value.split():
            scopes.append(_parse_scope(item))
    return scopes


def _parse_scope(item: str) -> Scope:
    kind, _, rest = item.partition(":")
    name, _, actions = rest.rpartition(":")
    action_list = tuple(a for a in actions.split(",") if a)
    if not _TYPE_RE.fullmatch(kind) or not name or not action_list:
        raise ScopeError("invalid scope: expected type:name:action[,action]")
    if not all(_ACTION_RE.fullmatch(a) for a in action_list):
        raise ScopeError("invalid scope: unknown action")
    if kind == "repository" and NAME_RE.fullmatch(name) is None:
        raise ScopeError("invalid scope: invalid repository name")
    return Scope(kind, name, action_list)


def intersect(scopes: list[Scope], grants: list[Grant]) -> list[Scope]:
    """The requested access the grants allow; scopes left with no action are dropped."""
    granted: list[Scope] = []
    for scope in scopes:
        if scope.type != "repository":
            continue
        allowed: set[str] = set()
        for grant in grants:
            if fnmatch.fnmatchcase(scope.name, grant.pattern):
                allowed.update(grant.actions)
        actions = tuple(a for a in scope.actions if a in allowed or "*" in allowed)
        if actions:
            granted.append(Scope(scope.type, scope.name, actions))
    return granted


def token_claims(*, subject: str, service: str, access: list[Scope], now: float | None = None) -> dict[str, Any]:
    """Claims Docker's registry 2.8 accepts: string ``aud``, ``exp``, and the ``access`` list."""
    issued = int(now if now is not None else time.time())
    return {
        "iss": ISSUER,
        "sub": subject,
        "aud": service,
        "exp": issued + TOKEN_TTL_S,
        "nbf": issued - 1,
        "iat": issued,
        "jti": uuid.uuid4().hex,
        "access": [scope.to_claim() for scope in access],
    }


def allows(claims: dict[str, Any], name: str, actions: tuple[str, ...]) -> bool:
    """Whether the token's ``access`` claim grants every action on repository ``name``."""
    held: set[str] = set()
    entries = claims.get("access")
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and entry.get("type") == "repository" and entry.get("name") == name:
            held.update(a for a in entry.get("actions") or [] if isinstance(a, str))
    return "*" in held or all(a in held for a in actions)


@dataclass
class ChallengeStyle:
    """How ``WWW-Authenticate`` is written: quoted (distribution), unquoted (cp.icr.io), or fixed."""

    unquoted: bool = False
    header: str | None = None

    def render(self, *, realm: str, service: str, scope: str | None = None, error: str | None = None) -> str:
        if self.header is not None:
            return self.header
        params = [("realm", realm), ("service", service)]
        if scope:
            params.append(("scope", scope))
        if error:
            params.append(("error", error))
        if self.unquoted:
            return "Bearer " + ", ".join(f"{k}={v}" for k, v in params)
        return "Bearer " + ",".join(f'{k}="{v}"' for k, v in params)
