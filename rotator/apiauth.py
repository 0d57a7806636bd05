"""Who may call rotator's HTTP API: bearer tokens, checked by a token file or by Kubernetes.

Access is one of three verbs on ``credentials`` (``get`` one, ``list`` all, ``rotate`` one), or
``get`` on a non-resource path (``/metrics`` when it is not public).

**Token file** (``server.auth: {mode: token-file, file: PATH}``), for use outside a cluster. One
client per line, ``#`` starts a comment::

    # <token>                                  <principal>  <role>
    3c1d0a4e2f6b47d8a9e0b1c2d3e4f5a6b7c8d9e0     ci-bot       rotate
    0f9e8d7c6b5a49382716a5b4c3d2e1f00f1e2d3c     grafana      read

Roles: ``read`` (list and get) and ``rotate`` (read, plus rotate and report leaks); every
credential alike. Tokens are at least 16 characters. The file is read again whenever it changes
(inode, size or modification time), so tokens are added and revoked without a restart. A file
with a line that does not parse is refused as a whole, at start-up and on reload alike (one
parser, ``load_token_file``): ``rotator run`` does not start, and a running daemon accepts no
token until the file is fixed, so a typo never keeps a revoked token alive. Problems are reported
by line number, never by content. Tokens are compared in
constant time: the SHA-256 of the presented token against the digest of every entry, with no
early exit.

**Kubernetes** (``server.auth: {mode: kubernetes}``), in a cluster. The token goes to a
TokenReview with ``server.auth.audiences`` (default ``[rotator]``: callers mount a projected token
for that audience, and a token issued for another audience is refused), then the user and groups it
names to a SubjectAccessReview for::

    resourceAttributes: {group: rotator.example.com, resource: credentials, namespace: <server.auth.namespace>,
                         name: <credential>, verb: rotate | get | list}
    nonResourceAttributes: {path: /metrics, verb: get}      # only when server.metrics_public is false

Grant callers with RBAC (a Role in rotator's namespace, or a ClusterRole for every namespace)::

    apiVersion: rbac.authorization.k8s.io/v1
    kind: Role
    metadata: {name: rotator-api-rotate, namespace: rotator-system}
    rules:
    - apiGroups: ["rotator.example.com"]
      resources: ["credentials"]
      verbs: ["get", "list", "rotate"]      # drop "rotate" for read-only callers
      # resourceNames: ["icr-pull"]         # optional: only these credentials ("list" needs no name)

and bind it to the ServiceAccount or user with a RoleBinding. Private metrics need a ClusterRole rule
``{nonResourceURLs: ["/metrics"], verbs: ["get"]}`` and a ClusterRoleBinding. rotator's own ServiceAccount needs
``create`` on ``tokenreviews`` (authentication.k8s.io) and ``subjectaccessreviews``
(authorization.k8s.io), i.e. a ClusterRoleBinding to the built-in ``system:auth-delegator``.
Both answers, allowed or not, are cached for ``server.auth.cache_ttl`` (10 s) under the SHA-256 of
the token, so a revoked token or binding stops working within that time. A review that fails
(apiserver down, rotator not allowed to review) raises ``AuthUnavailable``: the API answers 503,
never a guess.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rotator import logs
from rotator.errors import ConfigError, TransientError
from rotator.model import SecretStr
from rotator.settings import ApiAuthSettings

log = logs.get("rotator.apiauth")

API_GROUP = "rotator.example.com"
RESOURCE = "credentials"
ROLES = ("read", "rotate")
READ_VERBS = ("get", "list")
MIN_TOKEN_LENGTH = 16
REVIEW_TIMEOUT_S = 5.0
CACHE_ENTRIES = 4096


class AuthUnavailable(TransientError):
    """The authority that checks tokens could not be asked (answered 503)."""


@dataclass(frozen=True, kw_only=True)
class Principal:
    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()
    role: str = ""  # token file only


@dataclass(frozen=True, kw_only=True)
class Access:
    """What a request wants: a verb on a credential (name empty: all of them), or on a path."""

    verb: str  # "get" | "list" | "rotate"
    credential: str = ""
    path: str = ""  # a non-resource URL such as /metrics; then credential is unused


class Authenticator(Protocol):
    """Blocking; the server calls it from a worker thread."""

    def authenticate(self, token: SecretStr) -> Principal | None:
        """The principal the token belongs to, None when it is unknown or invalid."""
        ...

    def authorize(self, principal: Principal, access: Access) -> bool: ...


def token_digest(token: SecretStr) -> bytes:
    return hashlib.sha256(token.reveal().encode()).digest()


class DenyAll:
    """``mode: disabled``: no token is valid."""

    def authenticate(self, token: SecretStr) -> Principal | None:
        return None

    def authorize(self, principal: Principal, access: Access) -> bool:
        return False


# -- token file -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    principal: str
    role: str


TOKEN_FILE_FIELD = "server.auth.file"


def parse_token_file(text: str) -> tuple[list[_Entry], list[str]]:
    """Entries and problems (by line number, never quoting the line: it holds a token)."""
    entries: list[_Entry] = []
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 3:
            problems.append(f"line {number}: expected '<token> <principal> <role>', got {len(fields)} fields")
        elif len(fields[0]) < MIN_TOKEN_LENGTH:
            problems.append(f"line {number}: the token is shorter than {MIN_TOKEN_LENGTH} characters")
        elif fields[2] not in ROLES:
            problems.append(f"line {number}: role {fields[2]!r} is not one of {', '.join(ROLES)}")
        else:
            entries.append(_Entry(token_digest(SecretStr(fields[0])), fields[1], fields[2]))
    return entries, problems


def load_token_file(path: Path) -> list[_Entry]:
    """The entries of ``server.auth.file``, or a ConfigError naming the field, the file, every bad line
    (by number) and the fix. ``rotator check``, ``rotator run`` start-up and live reload all use this."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        why = "does not exist" if isinstance(exc, FileNotFoundError) else f"cannot be read ({type(exc).__name__})"
        raise ConfigError(
            f"{TOKEN_FILE_FIELD}: {path} {why}; create it with lines '<token> <principal> <read|rotate>', mode 0600"
        ) from None
    entries, problems = parse_token_file(text)
    if problems:
        raise ConfigError(
            f"{TOKEN_FILE_FIELD}: {path}: " + "; ".join(problems) + f"; each line is '<token> <principal> <role>' "
            f"with a token of at least {MIN_TOKEN_LENGTH} characters and a role of {', '.join(ROLES)}"
        )
    return entries


class TokenFileAuthenticator:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._signature = self._stat()
        self._entries = load_token_file(path)  # a bad file stops start-up (ConfigError, exit 2)

    def _stat(self) -> tuple[int, ...] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def _refresh(self) -> list[_Entry]:
        with self._lock:
            signature = self._stat()
            if signature == self._signature:
                return self._entries
            self._signature = signature
            try:
                self._entries = load_token_file(self.path)
            except ConfigError as exc:
                # Refused as at start-up; accept nobody rather than tokens that may have been revoked.
                log.error("api.tokens.refused", field=TOKEN_FILE_FIELD, path=str(self.path), error=str(exc))
                self._entries = []
                return self._entries
            log.info("api.tokens.reloaded", field=TOKEN_FILE_FIELD, path=str(self.path), entries=len(self._entries))
            return self._entries

    def authenticate(self, token: SecretStr) -> Principal | None:
        digest = token_digest(token)
        found: _Entry | None = None
        for entry in self._refresh():
            # Every entry is compared; the result is kept without leaving the loop early.
            if hmac.compare_digest(entry.digest, digest) and found is None:
                found = entry
        return Principal(name=found.principal, role=found.role) if found else None

    def authorize(self, principal: Principal, access: Access) -> bool:
        if access.verb in READ_VERBS:
            return principal.role in ROLES
        return access.verb == "rotate" and principal.role == "rotate"


# -- Kubernetes -------------------------------------------------------------------------------------


class _TtlCache:
    """A small bounded LRU of answers that expire, safe across worker threads."""

    def __init__(self, ttl: float, clock: Callable[[], float], size: int = CACHE_ENTRIES) -> None:
        self.ttl, self.clock, self.size = ttl, clock, size
        self._items: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> tuple[bool, Any]:
        with self._lock:
            item = self._items.get(key)
            if item is None or item[0] <= self.clock():
                self._items.pop(key, None)
                return False, None
            self._items.move_to_end(key)
            return True, item[1]

    def put(self, key: Any, value: Any) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            self._items[key] = (self.clock() + self.ttl, value)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


class KubernetesAuthenticator:
    def __init__(
        self,
        api_client: Any,
        *,
        namespace: str,
        audiences: tuple[str, ...] = (),
        cache_ttl: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from kubernetes import client

        self._client = client
        self._authn = client.AuthenticationV1Api(api_client)
        self._authz = client.AuthorizationV1Api(api_client)
        self.namespace = namespace
        self.audiences = audiences
        self._tokens = _TtlCache(cache_ttl, clock)
        self._decisions = _TtlCache(cache_ttl, clock)

    def authenticate(self, token: SecretStr) -> Principal | None:
        key = token_digest(token)
        hit, cached = self._tokens.get(key)
        if hit:
            return cached  # type: ignore[no-any-return]
        spec = self._client.V1TokenReviewSpec(token=token.reveal(), audiences=list(self.audiences) or None)
        review = self._client.V1TokenReview(spec=spec)
        result = self._call(
            "tokenreview", lambda: self._authn.create_token_review(review, _request_timeout=REVIEW_TIMEOUT_S)
        )
        principal = self._principal(result.status)
        self._tokens.put(key, principal)
        return principal

    def _principal(self, status: Any) -> Principal | None:
        if status is None or not status.authenticated or status.user is None or not status.user.username:
            return None
        if self.audiences and not set(self.audiences) & set(status.audiences or ()):
            return None  # issued for another audience
        user = status.user
        extra = tuple(sorted((k, tuple(v or ())) for k, v in (user.extra or {}).items()))
        return Principal(name=user.username, groups=tuple(user.groups or ()), uid=user.uid or "", extra=extra)

    def authorize(self, principal: Principal, access: Access) -> bool:
        key = (principal, access)
        hit, cached = self._decisions.get(key)
        if hit:
            return bool(cached)
        c = self._client
        if access.path:
            attrs: dict[str, Any] = {
                "non_resource_attributes": c.V1NonResourceAttributes(path=access.path, verb=access.verb)
            }
        else:
            resource = c.V1ResourceAttributes(
                group=API_GROUP,
                resource=RESOURCE,
                namespace=self.namespace,
                name=access.credential or None,
                verb=access.verb,
            )
            attrs = {"resource_attributes": resource}
        spec = c.V1SubjectAccessReviewSpec(
            user=principal.name,
            groups=list(principal.groups) or None,
            uid=principal.uid or None,
            extra={k: list(v) for k, v in principal.extra} or None,
            **attrs,
        )
        review = c.V1SubjectAccessReview(spec=spec)
        result = self._call(
            "subjectaccessreview",
            lambda: self._authz.create_subject_access_review(review, _request_timeout=REVIEW_TIMEOUT_S),
        )
        allowed = bool(result.status is not None and result.status.allowed and not result.status.denied)
        self._decisions.put(key, allowed)
        return allowed

    def _call(self, what: str, send: Callable[[], Any]) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return send()
        except ApiException as exc:
            # Status and reason only: the body may echo the review, token included.
            log.error("api.auth.review_failed", review=what, status=exc.status, reason=exc.reason)
            raise AuthUnavailable(f"{what} failed with HTTP {exc.status}") from None
        except Exception as exc:  # connection refused, timeouts, TLS: the authority is unreachable
            log.error("api.auth.review_failed", review=what, error=type(exc).__name__)
            raise AuthUnavailable(f"{what} failed: {type(exc).__name__}") from None


def build_authenticator(settings: ApiAuthSettings, *, api_client: Any = None) -> Authenticator:
    """The authenticator ``server.auth`` asks for; ``api_client`` is required in kubernetes mode."""
    if settings.mode == "token-file":
        assert settings.file is not None
        return TokenFileAuthenticator(settings.file)
    if settings.mode == "kubernetes":
        if api_client is None:
            raise ConfigError("server.auth.mode kubernetes needs a Kubernetes API client")
        return KubernetesAuthenticator(
            api_client,
            namespace=settings.namespace,
            audiences=settings.audiences,
            cache_ttl=settings.cache_ttl.total_seconds(),
        )
    return DenyAll()
