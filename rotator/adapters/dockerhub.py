"""Docker Hub access tokens as a ``CredentialProvider``: personal (PAT) or organization (OAT) tokens.

rotator signs in to the Hub API with ``POST /v2/auth/token`` (its Docker ID and its own password or
PAT, never a rotated token) and keeps the JWT until 80 % of its lifetime (10 minutes at Docker) has
passed. It then mints one of, as configured:

- a PAT of that Docker ID (``POST /v2/access-tokens``, ``scopes`` such as ``repo:read``); the registry
  username is the Docker ID;
- an OAT of an organization the Docker ID owns (``POST /v2/orgs/<org>/access-tokens`` with a
  ``TYPE_REPO`` resource per configured repository, scopes such as ``repo-pull``); the registry
  username is the organization name.

Ownership marker: the label is ``rotator-<credential>-<rotation_id>`` (OATs also carry
``managed-by=rotator credential=<c> rotation=<r>`` in their description, for people). Docker Hub
tokens have nothing else to mark, so the label alone decides; to keep it unambiguous the rotation
id holds exactly one ``-`` (rotator's own ids look like ``20250101T000000Z-1a2b3c``) and the whole
label fits Docker's 100 characters. Mutations GET the token first and refuse (``NotOwnedError``)
before any mutating request when it is not rotator's.

``identify`` always answers None: the Hub API cannot look a token up by its value (only signing in
with it would tell, and rotator does not use rotated tokens to talk to the Hub API), so the provider
says ``identifies_values = False``. The reconciler copes: while any target holds, under our username,
a value other than the current one, no unknown token is swept (after a lost journal every secret holds
one); otherwise an unknown token is swept only after the orphan window, and a minting run that died
before recording its token deletes it and mints again.

Every HTTP status maps to ``rotator.errors`` in ``_error_for`` (the one place). Retries happen only
in ``RetryPolicy.call`` around one request (plus one sign-in refresh on 401); a 429 is honoured
through ``X-Retry-After``, which Docker sends as a unix timestamp.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx

from rotator.adapters import http, ownership
from rotator.errors import (
    LimitReachedError,
    NotFoundError,
    PermanentError,
    RotatorError,
    UnauthorizedError,
)
from rotator.model import KeyInfo, MintedKey, SecretReader, SecretStr, secret_reader
from rotator.retrying import RetryPolicy

DEFAULT_ENDPOINT = "https://hub.docker.com"
OWNED_PREFIX = "rotator-"
MAX_LABEL = 100  # Docker Hub's token_label limit
TOKEN_TYPES = ("personal", "organization")
PAT_SCOPES = ("repo:public_read", "repo:read", "repo:write", "repo:admin")
DEFAULT_SCOPES = {"personal": ("repo:read",), "organization": ("repo-pull",)}
REFRESH_FRACTION = 0.8
DEFAULT_JWT_LIFETIME_S = 600.0
MAX_PAGES = 1000
_CREDENTIAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_ROTATION_RE = re.compile(r"[A-Za-z0-9._:]{1,40}-[A-Za-z0-9._:]{1,40}")
_OAT_SCOPE_RE = re.compile(r"[a-z][a-z-]{0,62}")
_REPOSITORY_RE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*/(?:\*|[a-z0-9]+(?:[._-][a-z0-9]+)*)")
_LIMIT_WORDS = ("maximum number", "limit reached", "too many tokens")


def token_label(credential: str, rotation_id: str) -> str:
    if not _CREDENTIAL_RE.fullmatch(credential):
        raise ValueError(f"credential name {credential!r} must match {_CREDENTIAL_RE.pattern}")
    if not _ROTATION_RE.fullmatch(rotation_id):
        raise ValueError(f"rotation id {rotation_id!r} must match {_ROTATION_RE.pattern} (exactly one '-')")
    label = f"{OWNED_PREFIX}{credential}-{rotation_id}"
    if len(label) > MAX_LABEL:
        raise ValueError(f"token label for {credential!r} would exceed Docker Hub's {MAX_LABEL} characters")
    return label


def token_tag(credential: str, rotation_id: str) -> str:
    return f"managed-by=rotator credential={credential} rotation={rotation_id}"


def parse_label(label: str) -> tuple[str, str] | None:
    """(credential, rotation_id) when ``label`` is rotator's marker; the rotation id is the last two parts."""
    if not label.startswith(OWNED_PREFIX):
        return None
    parts = label[len(OWNED_PREFIX) :].rsplit("-", 2)
    if len(parts) != 3:
        return None
    credential, rotation_id = parts[0], f"{parts[1]}-{parts[2]}"
    if not (_CREDENTIAL_RE.fullmatch(credential) and _ROTATION_RE.fullmatch(rotation_id)):
        return None
    return credential, rotation_id


@dataclass(frozen=True)
class _Jwt:
    value: SecretStr
    refresh_at: float  # on the provider's clock


@dataclass(frozen=True)
class _Kind:
    """What differs between PATs and OATs on the wire."""

    collection: str
    id_field: str
    label_field: str
    noun: str


class DockerHubProvider:
    kind = "dockerhub"
    identifies_values = False

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_ENDPOINT,
        username: str,
        secret: SecretStr | SecretReader,
        token_type: str = "personal",  # noqa: S107 - a kind of token, not a secret
        org: str | None = None,
        scopes: Iterable[str] | None = None,
        repositories: Iterable[str] = (),
        client: httpx.Client | None = None,
        retry: RetryPolicy | None = None,
        on_request: http.OnRequest | None = None,
        page_size: int = 100,
        clock: Callable[[], float] = time.monotonic,  # when the cached JWT is due (tests pass a fake one)
    ) -> None:
        if not 1 <= page_size <= 100:
            raise ValueError("page_size must be 1..100 (Docker Hub's page_size range)")
        self._scopes = validate_token_settings(token_type, org, scopes, repositories)
        self._repositories = tuple(repositories)
        self._base = base_url.rstrip("/")
        self._docker_id = username
        self._read_secret = secret_reader(secret)
        self._secret: SecretStr | None = None  # the value last used, for scrubbing
        self._token_type = token_type
        self._org = org
        # The registry username that goes with a minted token.
        self.username = org if token_type == "organization" and org else username
        if token_type == "organization":
            path = f"/v2/orgs/{quote(org or '', safe='')}/access-tokens"
            self._wire = _Kind(collection=path, id_field="id", label_field="label", noun="organization access token")
        else:
            self._wire = _Kind(
                collection="/v2/access-tokens", id_field="uuid", label_field="token_label", noun="personal access token"
            )
        self._own_client = client is None
        self._client = client or httpx.Client(timeout=httpx.Timeout(10.0, connect=5.0))
        self._retry = retry or RetryPolicy()
        self._on_request = on_request
        self._page_size = page_size
        self._clock = clock
        self._jwt: _Jwt | None = None
        self._jwt_lock = threading.Lock()

    def close(self) -> None:
        if self._own_client:
            self._client.close()

    # -- CredentialProvider ------------------------------------------------------------------------
    def mint(self, *, credential: str, rotation_id: str) -> MintedKey:
        label = token_label(credential, rotation_id)
        body: dict[str, Any]
        if self._token_type == "organization":
            body = {
                "label": label,
                "description": f"Registry pull token rotated by rotator. {token_tag(credential, rotation_id)}",
                "resources": [
                    {"type": "TYPE_REPO", "path": repo, "scopes": list(self._scopes)} for repo in self._repositories
                ],
            }
        else:
            body = {"token_label": label, "scopes": list(self._scopes)}
        # A 5xx after Docker Hub created the token would leave an orphan; it carries the marker, so the
        # orphan sweep finds and deletes it. Retrying the POST is therefore safe.
        data = self._call("mint", "POST", self._wire.collection, json=body, ok=(200, 201)).json()
        value = data.get("token") if isinstance(data, dict) else None
        if not isinstance(value, str) or not value:
            raise PermanentError(f"mint: Docker Hub answered without the {self._wire.noun}'s value")
        info = self._key_info(data, operation="mint")
        if not info.owned:
            raise PermanentError(f"mint: {self._wire.noun} {info.id} came back without rotator's label")
        return MintedKey(info=info, value=SecretStr(value))

    def list_owned(self, *, credential: str) -> list[KeyInfo]:
        return ownership.owned_by(self._list_tokens(), credential, lambda k: parse_label(k.name))

    def get(self, key_id: str) -> KeyInfo | None:
        try:
            response = self._call("get", "GET", self._item(key_id))
        except NotFoundError:
            return None
        return self._key_info(response.json(), operation="get")

    def identify(self, value: SecretStr) -> KeyInfo | None:
        """Always None: the Hub API cannot look a token up by its value (see the module docstring)."""
        return None

    def disable(self, key_id: str) -> None:
        if not self._owned_or_refuse(key_id, "disable").disabled:
            self._call("disable", "PATCH", self._item(key_id), json={"is_active": False})

    def enable(self, key_id: str) -> None:
        if self._owned_or_refuse(key_id, "enable").disabled:
            self._call("enable", "PATCH", self._item(key_id), json={"is_active": True})

    def delete(self, key_id: str) -> None:
        info = self.get(key_id)
        if info is None:
            return  # already gone
        self._refuse_unless_owned(info, "delete")
        try:
            self._call("delete", "DELETE", self._item(key_id), ok=(204,))
        except NotFoundError:
            return

    def check_access(self) -> None:
        """Sign in afresh and list one page of the tokens rotator would manage."""
        with self._jwt_lock:
            self._jwt = None
        self._call("check_access", "GET", self._wire.collection, params={"page": "1", "page_size": "1"})

    # -- ownership ---------------------------------------------------------------------------------
    def _item(self, key_id: str) -> str:
        return f"{self._wire.collection}/{quote(key_id, safe='')}"

    def _owned_or_refuse(self, key_id: str, operation: str) -> KeyInfo:
        return ownership.owned_or_refuse(self.get, key_id, operation, self._wire.noun)

    def _refuse_unless_owned(self, info: KeyInfo, operation: str) -> None:
        ownership.refuse_unless_owned(info, operation, self._wire.noun)

    def _key_info(self, data: Any, *, operation: str) -> KeyInfo:
        wire = self._wire
        if not isinstance(data, dict) or not isinstance(data.get(wire.id_field), str):
            raise PermanentError(f"{operation}: Docker Hub answered with an unexpected body")
        name = str(data.get(wire.label_field) or "")
        marker = parse_label(name)
        return KeyInfo(
            id=data[wire.id_field],
            name=name,
            description=str(data.get("description") or ""),
            created_at=_parse_time(data.get("created_at"), operation),
            disabled=data.get("is_active") is False,
            expires_at=_parse_time(data["expires_at"], operation) if data.get("expires_at") else None,
            owned=marker is not None,
            rotation_id=marker[1] if marker else None,
        )

    def _list_tokens(self) -> list[KeyInfo]:
        tokens: list[KeyInfo] = []
        page = 1
        for _ in range(MAX_PAGES):
            params = {"page": str(page), "page_size": str(self._page_size)}
            data = self._call("list", "GET", self._wire.collection, params=params).json()
            results = data.get("results") if isinstance(data, dict) else None
            if not isinstance(results, list):
                raise PermanentError("list: Docker Hub answered without a results array")
            tokens.extend(self._key_info(item, operation="list") for item in results)
            following = _next_page(data.get("next"))
            if following is None:
                return tokens
            if following <= page:
                raise PermanentError("list: Docker Hub's next link does not move forward")
            page = following
        raise PermanentError(f"list: more than {MAX_PAGES} pages of access tokens")

    # -- HTTP --------------------------------------------------------------------------------------
    def _call(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json: Any = None,
        ok: Iterable[int] = (200,),
    ) -> httpx.Response:
        """One Hub API request, retried by the policy; a 401 signs in again once."""

        def send_once(fresh: bool) -> httpx.Response:
            headers = http.bearer_headers(self._access_token(force=fresh))
            return self._send(operation, method, self._base + path, params=params, json=json, headers=headers)

        return http.call_refreshing(
            self._retry, f"dockerhub.{operation}", send_once, ok, lambda response: self._error_for(operation, response)
        )

    def _access_token(self, *, force: bool) -> SecretStr:
        with self._jwt_lock:
            cached = self._jwt
            if force or cached is None or self._clock() >= cached.refresh_at:
                cached = self._jwt = self._sign_in()
            return cached.value

    def _sign_in(self) -> _Jwt:
        # Read the secret for every sign-in: a token rotated in its mounted Secret takes effect without a restart.
        self._secret = self._read_secret()
        body = {"identifier": self._docker_id, "secret": self._secret.reveal()}
        started = self._clock()
        response = self._send("sign_in", "POST", self._base + "/v2/auth/token", json=body)
        if response.status_code != 200:
            raise self._error_for("sign_in", response)
        try:
            value = response.json().get("access_token")
        except (ValueError, AttributeError):
            value = None
        if not isinstance(value, str) or not value:
            raise PermanentError("sign_in: Docker Hub answered without an access_token")
        return _Jwt(value=SecretStr(value), refresh_at=started + REFRESH_FRACTION * _lifetime(value))

    def _send(self, operation: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return http.send(self._client, self._on_request, "Docker Hub", operation, method, url, **kwargs)

    def _error_for(self, operation: str, response: httpx.Response) -> RotatorError:
        """THE status mapping for Docker Hub (sign-in and the access-token API)."""
        status = response.status_code
        used = [*([self._secret] if self._secret is not None else []), *([self._jwt.value] if self._jwt else [])]
        message = http.scrubbed(_hub_message(response), used)
        text = f"Docker Hub {operation}: HTTP {status}" + (f": {message}" if message else "")
        retryable = http.retryable_error(status, text, lambda: _retry_after(response))
        if retryable is not None:
            return retryable
        if operation == "sign_in" and status in (400, 401, 403):
            who = f"{self._docker_id!r}"
            return UnauthorizedError(
                f"{text}; Docker Hub refused to sign in as {who}: check the password or personal access "
                "token in the file or environment variable the config names"
            )
        if status in (401, 403):
            return UnauthorizedError(f"{text}; {self._docker_id!r} may not manage these {self._wire.noun}s")
        if status == 404:
            return NotFoundError(text)
        if any(word in message.lower() for word in _LIMIT_WORDS):
            return LimitReachedError(text)
        return PermanentError(text)


def validate_token_settings(
    token_type: str, org: str | None, scopes: Iterable[str] | None, repositories: Iterable[str]
) -> tuple[str, ...]:
    """The scopes to mint with (defaults filled in); ValueError naming the problem otherwise.

    Shared with ``rotator.settings`` so that a config is refused at start-up for the same reasons."""
    if token_type not in TOKEN_TYPES:
        raise ValueError(f"token_type {token_type!r} is not one of {', '.join(TOKEN_TYPES)}")
    chosen = tuple(scopes) if scopes is not None else DEFAULT_SCOPES[token_type]
    repositories = tuple(repositories)
    if not chosen:
        raise ValueError("scopes must not be empty")
    if token_type == "personal":
        unknown = [s for s in chosen if s not in PAT_SCOPES]
        if unknown:
            raise ValueError(f"personal access token scopes {unknown} are not among {list(PAT_SCOPES)}")
        if repositories:
            raise ValueError("repositories apply to organization access tokens only (PATs cover every repository)")
        return chosen
    if not org:
        raise ValueError("an organization access token needs the organization (org)")
    if not repositories:
        raise ValueError("an organization access token needs at least one repository (org/repo)")
    bad = [r for r in repositories if not _REPOSITORY_RE.fullmatch(r) or r.split("/", 1)[0] != org]
    if bad:
        raise ValueError(f"repositories {bad} are not repositories of {org} (write {org}/<repo> or {org}/*)")
    unknown = [s for s in chosen if not _OAT_SCOPE_RE.fullmatch(s)]
    if unknown:
        raise ValueError(f"organization access token scopes {unknown} are not scope names such as repo-pull")
    return chosen


def _hub_message(response: httpx.Response) -> str:
    """The human part of any Docker Hub error body: ``detail``/``message``, or ``text`` and ``fields``."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    for key in ("detail", "message", "details"):
        if isinstance(body.get(key), str) and body[key]:
            return str(body[key])
    text = str(body.get("text") or "")
    fields = body.get("fields")
    if isinstance(fields, dict) and fields:
        problems = "; ".join(
            f"{name}: {', '.join(map(str, v)) if isinstance(v, list) else v}" for name, v in fields.items()
        )
        text = f"{text} ({problems})" if text else problems
    return text


def _retry_after(response: httpx.Response, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait: ``X-Retry-After`` is a unix timestamp (measured against the server's Date when
    it sent one); a plain ``Retry-After`` is seconds or an HTTP date."""
    stamp = response.headers.get("X-Retry-After")
    if stamp:
        try:
            when = float(stamp)
        except ValueError:
            when = None
        if when is not None:
            return max(0.0, when - _server_now(response, now))
    return http.retry_after_seconds(response, now=lambda: _server_now(response, now))


def _server_now(response: httpx.Response, now: Callable[[], float]) -> float:
    raw = response.headers.get("Date")
    if raw:
        try:
            return email.utils.parsedate_to_datetime(raw).timestamp()
        except (TypeError, ValueError):
            pass
    return now()


def _lifetime(token: str) -> float:
    """Seconds the JWT is valid (``exp - iat``), read without checking the signature (not ours to check)."""
    import jwt  # here: PyJWT loads cryptography when it is installed, which a daemon without Docker Hub never needs

    try:
        claims = jwt.decode(token, options={"verify_signature": False})
        lifetime = float(claims["exp"]) - float(claims["iat"])
    except (jwt.PyJWTError, KeyError, TypeError, ValueError):
        return DEFAULT_JWT_LIFETIME_S
    return lifetime if lifetime > 0 else DEFAULT_JWT_LIFETIME_S


def _next_page(next_url: Any) -> int | None:
    if not next_url:
        return None
    pages = parse_qs(urlsplit(str(next_url)).query).get("page")
    if not pages or not pages[0].isdigit():
        raise PermanentError("list: Docker Hub's next link carries no page number")
    return int(pages[0])


def _parse_time(raw: Any, operation: str) -> dt.datetime:
    if not isinstance(raw, str):
        raise PermanentError(f"{operation}: Docker Hub answered without a timestamp")
    try:
        parsed = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise PermanentError(f"{operation}: Docker Hub timestamp {raw!r} is not ISO 8601") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
