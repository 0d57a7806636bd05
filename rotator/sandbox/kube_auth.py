"""Bearer-token authentication and an RBAC-like rule authorizer.

Rules are bound to user names or group names, so a SubjectAccessReview about a user answers the
same as that user's own requests. Group ``system:masters`` may do anything, as in a real cluster.
A rule with ``resourceNames`` allows ``list`` and ``watch`` only of a request whose fieldSelector
names one of them (``metadata.name=X``), and never ``create``, as in RBAC.
Rules may name resources this emulator does not serve (e.g. ``credentials/rotate`` in
``rotator.example.com``): they only matter to SubjectAccessReviews.

Every token is issued for audiences, as a TokenRequest-minted token is: by default the API server's
own (``API_AUDIENCES``), or those the admin API names (a projected token with ``audience: rotator``).
The API server accepts a token only when its audiences meet its own; a TokenReview only when they
meet the review's ``spec.audiences`` (the API server's when empty), answering the overlap in
``status.audiences``.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

SUPERUSER_GROUP = "system:masters"
API_AUDIENCES = ("https://kubernetes.default.svc.cluster.local",)  # the real default of --api-audiences
AUTHENTICATED = "system:authenticated"
READ_VERBS = ("get", "list", "watch")


@dataclass(frozen=True, kw_only=True)
class Rule:
    verbs: tuple[str, ...]
    api_groups: tuple[str, ...] = ("*",)
    resources: tuple[str, ...] = ("*",)
    # Not in RBAC (which scopes by RoleBinding): empty means every namespace and the cluster scope.
    namespaces: tuple[str, ...] = ()
    resource_names: tuple[str, ...] = ()
    non_resource_urls: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: Any) -> Rule:
        if not isinstance(data, dict) or not isinstance(data.get("verbs"), list):
            raise ValueError("a rule is an object with a 'verbs' list")
        names = {
            "verbs": "verbs",
            "apiGroups": "api_groups",
            "resources": "resources",
            "namespaces": "namespaces",
            "resourceNames": "resource_names",
            "nonResourceURLs": "non_resource_urls",
        }
        unknown = set(data) - set(names)
        if unknown:
            raise ValueError(f"unknown rule fields {sorted(unknown)}; known: {sorted(names)}")
        values: dict[str, tuple[str, ...]] = {}
        for key, attr in names.items():
            if key in data:
                if not isinstance(data[key], list) or not all(isinstance(v, str) for v in data[key]):
                    raise ValueError(f"rule field {key!r} must be a list of strings")
                values[attr] = tuple(data[key])
        if "nonResourceURLs" in data and "apiGroups" not in data and "resources" not in data:
            values.setdefault("api_groups", ())
            values.setdefault("resources", ())
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return {
            "verbs": list(self.verbs),
            "apiGroups": list(self.api_groups),
            "resources": list(self.resources),
            "namespaces": list(self.namespaces),
            "resourceNames": list(self.resource_names),
            "nonResourceURLs": list(self.non_resource_urls),
        }

    def allows(self, attrs: Attributes) -> bool:
        if not _has(self.verbs, attrs.verb):
            return False
        if attrs.path is not None:
            return any(
                u == attrs.path or u == "*" or (u.endswith("*") and attrs.path.startswith(u[:-1]))
                for u in self.non_resource_urls
            )
        if not _has(self.api_groups, attrs.group):
            return False
        wanted = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
        subresource_wildcard = bool(attrs.subresource) and f"*/{attrs.subresource}" in self.resources
        if not (_has(self.resources, wanted) or subresource_wildcard):
            return False
        if self.namespaces and not _has(self.namespaces, attrs.namespace):
            return False
        return not self.resource_names or attrs.name in self.resource_names


def _has(allowed: tuple[str, ...], value: str) -> bool:
    return "*" in allowed or value in allowed


def name_from_field_selector(selector: str) -> str:
    """The object name a list or watch is confined to, as the real API server's request resolver finds
    it: a ``metadata.name=X`` (or ``==``) term of the fieldSelector. That name is what a rule's
    ``resourceNames`` is checked against, so a named rule allows ``list``/``watch`` only with it."""
    for term in selector.split(","):
        field, sep, value = term.partition("=")
        value = value.removeprefix("=").strip()
        if sep and not field.endswith("!") and field.strip() == "metadata.name" and _path_segment(value):
            return value
    return ""


def _path_segment(name: str) -> bool:
    """What Kubernetes accepts as a name in a URL path (path.IsValidPathSegmentName)."""
    return bool(name) and name not in (".", "..") and "/" not in name and "%" not in name


@dataclass(frozen=True, kw_only=True)
class Attributes:
    verb: str
    group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str | None = None  # set for a non-resource request

    def describe(self, username: str) -> str:
        """The tail of the real RBAC denial message."""
        if self.path is not None:
            return f'User "{username}" cannot {self.verb} path "{self.path}"'
        resource = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        where = f'in the namespace "{self.namespace}"' if self.namespace else "at the cluster scope"
        return f'User "{username}" cannot {self.verb} resource "{resource}" in API group "{self.group}" {where}'


@dataclass(frozen=True, kw_only=True)
class User:
    username: str
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    groups: tuple[str, ...] = (AUTHENTICATED,)

    def to_json(self) -> dict[str, Any]:
        return {"username": self.username, "uid": self.uid, "groups": list(self.groups)}


class Authorizer:
    def __init__(self) -> None:
        self.tokens: dict[str, User] = {}
        self.audiences: dict[str, tuple[str, ...]] = {}  # token -> the audiences it was issued for
        # "user:<name>" / "group:<name>" -> rules
        self.bindings: dict[str, list[Rule]] = {}
        self.added: list[dict[str, Any]] = []  # tokens added at run time, for dump()

    def seed(self, *, admin_token: str, readonly_token: str) -> None:
        self.tokens[admin_token] = User(username="kubernetes-admin", groups=(SUPERUSER_GROUP, AUTHENTICATED))
        self.tokens[readonly_token] = User(username="rotator-readonly")
        self.bindings["user:rotator-readonly"] = [Rule(verbs=READ_VERBS)]
        # Every authenticated user may discover the API and review its own access, as in a real cluster.
        self.bindings[f"group:{AUTHENTICATED}"] = [
            Rule(
                verbs=("get",),
                api_groups=(),
                resources=(),
                non_resource_urls=("/api", "/api/*", "/apis", "/apis/*", "/version"),
            ),
            Rule(verbs=("create",), api_groups=("authorization.k8s.io",), resources=("selfsubjectaccessreviews",)),
        ]

    def add_token(
        self,
        *,
        username: str,
        groups: list[str],
        rules: list[Rule],
        token: str | None = None,
        audiences: tuple[str, ...] = API_AUDIENCES,
    ) -> tuple[str, User]:
        token = token or secrets.token_urlsafe(32)
        user = User(username=username, groups=tuple(dict.fromkeys([*groups, AUTHENTICATED])))
        self.tokens[token] = user
        self.audiences[token] = audiences
        self.bindings.setdefault(f"user:{username}", []).extend(rules)
        added = {"token": token, "user": user.to_json(), "rules": [r.to_json() for r in rules]}
        self.added.append(added | {"audiences": list(audiences)})
        return token, user

    def remove_token(self, token: str) -> bool:
        self.added = [a for a in self.added if a["token"] != token]
        self.audiences.pop(token, None)
        return self.tokens.pop(token, None) is not None

    def authenticate(self, token: str, audiences: tuple[str, ...] = API_AUDIENCES) -> tuple[User, list[str]] | None:
        """The token's user and the audiences (of those wanted) it was issued for; None when unknown or
        issued for none of them."""
        user = self.tokens.get(token)
        issued_for = self.audiences.get(token, API_AUDIENCES)
        matched = [a for a in audiences if a in issued_for]
        return (user, matched) if user is not None and matched else None

    def allowed(self, username: str, groups: tuple[str, ...] | list[str], attrs: Attributes) -> bool:
        if SUPERUSER_GROUP in groups:
            return True
        subjects = [f"user:{username}"] + [f"group:{g}" for g in groups]
        return any(rule.allows(attrs) for s in subjects for rule in self.bindings.get(s, ()))

    def dump(self) -> list[dict[str, Any]]:
        return list(self.added)

    def load(self, added: list[dict[str, Any]]) -> None:
        for entry in added:
            user = entry["user"]
            self.tokens[entry["token"]] = User(username=user["username"], uid=user["uid"], groups=tuple(user["groups"]))
            self.audiences[entry["token"]] = tuple(entry.get("audiences", API_AUDIENCES))
            rules = [Rule.from_json(r) for r in entry["rules"]]
            self.bindings.setdefault(f"user:{user['username']}", []).extend(rules)
            self.added.append(entry)
