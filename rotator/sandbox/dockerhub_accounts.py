"""Docker Hub's accounts as the two Docker Hub emulators share them: users, organizations, repositories,
personal access tokens (PATs) and organization access tokens (OATs), and who may pull what. No HTTP.

Rights (docs.docker.com "Access token reference"; protocols.md 6.3):

- A password sign-in acts as the user: pull and push on the user's own namespace and on the
  repositories of organizations the user belongs to; pull on public repositories.
- A PAT narrows that: ``repo:public_read`` pulls public repositories only, ``repo:read`` also private
  ones the user may read, ``repo:write``/``repo:admin`` also push (higher scopes imply lower ones).
- An OAT acts for its organization and can do only what its ``resources`` list says: a ``TYPE_REPO``
  path is a repository of the organization, a glob such as ``acme/*``, or ``*/*/public`` (every public
  repository). ``repo-pull`` (and the newer spelling ``scope-image-pull``) allows pulls, ``repo-push``
  (``scope-image-push``) pushes. An OAT gets nothing implicitly, not even public repositories
  [UNCONFIRMED; anonymous pulls of public repositories still work].
- Inactive, deleted or expired tokens sign in nowhere.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import secrets
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

PAT_SCOPES = ("repo:public_read", "repo:read", "repo:write", "repo:admin")  # low to high
OAT_PULL = frozenset({"repo-pull", "scope-image-pull"})
OAT_PUSH = frozenset({"repo-push", "scope-image-push"})
OAT_ORG_SCOPES = frozenset({"member-read", "member-edit", "team-read", "team-edit", "audit-log-read"})
PUBLIC_PATH = "*/*/public"
PULL = "pull"
PUSH = "push"


def new_pat_value() -> str:
    return "dckr_pat_" + secrets.token_urlsafe(21)[:27]


def new_oat_value() -> str:
    return "dckr_oat_" + secrets.token_urlsafe(24)[:32]


def wire_time(ts: float | None) -> str | None:
    """Docker Hub writes RFC 3339 UTC with a ``Z``."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(kw_only=True)
class User:
    username: str
    password: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass(kw_only=True)
class Org:
    name: str
    owners: list[str]
    members: list[str] = field(default_factory=list)

    def has_member(self, username: str) -> bool:
        return username in self.owners or username in self.members


@dataclass(kw_only=True)
class PersonalToken:
    uuid: str
    owner: str
    label: str
    scopes: list[str]
    value: str
    created_at: float
    seq: int
    is_active: bool = True
    deleted: bool = False
    expires_at: float | None = None
    last_used: float | None = None
    creator_ip: str = ""
    creator_ua: str = ""

    def usable(self, now: float) -> bool:
        return self.is_active and not self.deleted and (self.expires_at is None or self.expires_at > now)

    def to_wire(self, *, with_value: bool = False) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "client_id": "HUB",
            "creator_ip": self.creator_ip,
            "creator_ua": self.creator_ua,
            "created_at": wire_time(self.created_at),
            "last_used": wire_time(self.last_used),
            "generated_by": "manual",
            "is_active": self.is_active,
            "token": self.value if with_value else "",
            "token_label": self.label,
            "scopes": list(self.scopes),
            "expires_at": wire_time(self.expires_at),
        }

    def admin_view(self) -> dict[str, Any]:
        view = self.to_wire()
        view.pop("token")
        return {**view, "kind": "personal", "owner": self.owner, "deleted": self.deleted}


@dataclass(kw_only=True)
class OrgToken:
    id: str
    org: str
    label: str
    description: str
    resources: list[dict[str, Any]]
    value: str
    created_by: str
    created_at: float
    seq: int
    is_active: bool = True
    deleted: bool = False
    expires_at: float | None = None
    last_used_at: float | None = None

    def usable(self, now: float) -> bool:
        return self.is_active and not self.deleted and (self.expires_at is None or self.expires_at > now)

    def to_wire(self, *, with_value: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "label": self.label,
            "description": self.description,
            "created_by": self.created_by,
            "is_active": self.is_active,
            "created_at": wire_time(self.created_at),
            "expires_at": wire_time(self.expires_at),
            "last_used_at": wire_time(self.last_used_at),
            "resources": [dict(r) for r in self.resources],
        }
        if with_value:
            body["token"] = self.value
        return body

    def admin_view(self) -> dict[str, Any]:
        return {**self.to_wire(), "kind": "organization", "org": self.org, "deleted": self.deleted}


@dataclass(frozen=True, kw_only=True)
class Principal:
    """Who signed in and with what: the account (Docker ID or organization) and the credential kind."""

    account: str
    kind: str  # "password" | "pat" | "oat"
    token_id: str | None = None
    created_at: float | None = None  # of the token; None for a password

    @property
    def user(self) -> str | None:
        """The Docker ID acting, None for an organization token."""
        return None if self.kind == "oat" else self.account


class Hub:
    """The state both Docker Hub emulators read: accounts, repositories and tokens."""

    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.orgs: dict[str, Org] = {}
        self.repositories: dict[str, bool] = {}  # "ns/repo" -> private
        self.pats: dict[str, PersonalToken] = {}
        self.oats: dict[str, OrgToken] = {}
        self._seq = 0

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # -- tokens ----------------------------------------------------------------------------------
    def add_pat(
        self,
        *,
        owner: str,
        label: str,
        scopes: list[str],
        value: str | None = None,
        expires_at: float | None = None,
        creator_ip: str = "",
        creator_ua: str = "",
    ) -> PersonalToken:
        token = PersonalToken(
            uuid=str(uuid.uuid4()),
            owner=owner,
            label=label,
            scopes=scopes,
            value=value or new_pat_value(),
            created_at=time.time(),
            seq=self.next_seq(),
            expires_at=expires_at,
            creator_ip=creator_ip,
            creator_ua=creator_ua,
        )
        self.pats[token.uuid] = token
        return token

    def add_oat(
        self,
        *,
        org: str,
        label: str,
        description: str,
        resources: list[dict[str, Any]],
        created_by: str,
        expires_at: float | None = None,
    ) -> OrgToken:
        token = OrgToken(
            id=str(uuid.uuid4()),
            org=org,
            label=label,
            description=description,
            resources=resources,
            value=new_oat_value(),
            created_by=created_by,
            created_at=time.time(),
            seq=self.next_seq(),
            expires_at=expires_at,
        )
        self.oats[token.id] = token
        return token

    def live_pats(self, owner: str) -> list[PersonalToken]:
        """Newest first, like Docker Hub's list."""
        tokens = [t for t in self.pats.values() if t.owner == owner and not t.deleted]
        return sorted(tokens, key=lambda t: -t.seq)

    def live_oats(self, org: str) -> list[OrgToken]:
        tokens = [t for t in self.oats.values() if t.org == org and not t.deleted]
        return sorted(tokens, key=lambda t: -t.seq)

    def issued_values(self) -> list[str]:
        return [t.value for t in self.pats.values()] + [t.value for t in self.oats.values()]

    # -- signing in ------------------------------------------------------------------------------
    def sign_in(self, identifier: str, secret: str) -> Principal | None:
        """The principal for ``identifier`` + password, PAT or OAT; None when refused."""
        if not identifier or not secret:
            return None
        now = time.time()
        user = self.users.get(identifier)
        if user is not None:
            if secrets.compare_digest(user.password.encode(), secret.encode()):
                return Principal(account=identifier, kind="password")
            for pat in self.pats.values():
                if pat.owner == identifier and pat.usable(now) and secrets.compare_digest(pat.value, secret):
                    pat.last_used = now
                    return Principal(account=identifier, kind="pat", token_id=pat.uuid, created_at=pat.created_at)
            return None
        if identifier in self.orgs:
            for oat in self.oats.values():
                if oat.org == identifier and oat.usable(now) and secrets.compare_digest(oat.value, secret):
                    oat.last_used_at = now
                    return Principal(account=identifier, kind="oat", token_id=oat.id, created_at=oat.created_at)
        return None

    # -- rights ----------------------------------------------------------------------------------
    def is_private(self, repository: str) -> bool:
        """Unknown repositories count as private: only their namespace's owners reach them."""
        return self.repositories.get(repository, True)

    def may_manage_org(self, principal: Principal, org: str) -> bool:
        owner = principal.user
        found = self.orgs.get(org)
        return owner is not None and found is not None and owner in found.owners

    def actions(self, principal: Principal | None, repository: str) -> set[str]:
        """What ``principal`` (None: anonymous) may do on ``repository``: a subset of pull, push."""
        public = not self.is_private(repository)
        if principal is None:
            return {PULL} if public else set()
        if principal.kind == "oat":
            return self._oat_actions(principal, repository, public)
        user_rights = self._user_actions(principal.account, repository, public)
        if principal.kind == "password":
            return user_rights
        pat = self.pats.get(principal.token_id or "")
        if pat is None:
            return set()
        level = max((PAT_SCOPES.index(s) for s in pat.scopes if s in PAT_SCOPES), default=-1)
        allowed: set[str] = set()
        if level >= PAT_SCOPES.index("repo:public_read") and public:
            allowed.add(PULL)
        if level >= PAT_SCOPES.index("repo:read"):
            allowed.add(PULL)
        if level >= PAT_SCOPES.index("repo:write"):
            allowed.add(PUSH)
        return allowed & user_rights

    def _user_actions(self, username: str, repository: str, public: bool) -> set[str]:
        namespace = repository.split("/", 1)[0]
        org = self.orgs.get(namespace)
        if namespace == username or (org is not None and org.has_member(username)):
            return {PULL, PUSH}
        return {PULL} if public else set()

    def _oat_actions(self, principal: Principal, repository: str, public: bool) -> set[str]:
        oat = self.oats.get(principal.token_id or "")
        if oat is None:
            return set()
        allowed: set[str] = set()
        for resource in oat.resources:
            if resource.get("type") != "TYPE_REPO":
                continue
            path = str(resource.get("path", ""))
            if path == PUBLIC_PATH:
                matches = public
            else:
                matches = path.split("/", 1)[0] == oat.org and fnmatch.fnmatchcase(repository, path)
            if not matches:
                continue
            scopes = set(resource.get("scopes") or [])
            if scopes & OAT_PULL:
                allowed.add(PULL)
            if scopes & OAT_PUSH:
                allowed.add(PUSH)
        return allowed

    # -- persistence -----------------------------------------------------------------------------
    def dump(self) -> dict[str, Any]:
        return {
            "users": [asdict(u) for u in self.users.values()],
            "orgs": [asdict(o) for o in self.orgs.values()],
            "repositories": dict(self.repositories),
            "pats": [asdict(t) for t in self.pats.values()],
            "oats": [asdict(t) for t in self.oats.values()],
            "seq": self._seq,
        }

    def load(self, data: dict[str, Any]) -> None:
        self.users = {u["username"]: User(**u) for u in data.get("users", [])}
        self.orgs = {o["name"]: Org(**o) for o in data.get("orgs", [])}
        self.repositories = {str(k): bool(v) for k, v in (data.get("repositories") or {}).items()}
        self.pats = {t["uuid"]: PersonalToken(**t) for t in data.get("pats", [])}
        self.oats = {t["id"]: OrgToken(**t) for t in data.get("oats", [])}
        self._seq = int(data.get("seq", 0))
