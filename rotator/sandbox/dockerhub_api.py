"""Docker Hub API emulator (https://hub.docker.com): sign-in, personal and organization access tokens.

Follows protocols.md 6.3 and Docker's Hub API reference (``latest.yaml``). What a client sees:

- ``POST /v2/auth/token {"identifier", "secret"}``: a Docker ID with its password or a PAT, or an
  organization with an OAT; 200 ``{"access_token": <JWT, 10 min>}``, 401 ``{"detail", "message"}``.
  ``POST /v2/users/login {"username", "password"}`` (deprecated) answers ``{"token"}``.
- PATs: ``POST|GET /v2/access-tokens``, ``GET|PATCH|DELETE /v2/access-tokens/{uuid}``; the secret
  ``dckr_pat_...`` only in the 201 of the create, ``"token": ""`` everywhere else.
- OATs: ``POST|GET /v2/orgs/{org}/access-tokens``, ``GET|PATCH|DELETE .../{id}``; ``dckr_oat_...``.
- Lists page like Django REST framework (Docker Hub is built on it): ``page`` (from 1) and
  ``page_size`` (default 10, at most 100; an unreadable size falls back to the default), absolute
  ``next``/``previous`` URLs, and 404 ``Invalid page.`` past the end.
- Errors: 400 ``{"fields": {<field>: [<problem>]}, "text"}``; 401/403/404/405/5xx ``{"detail", "message"}``.
- Rate limit (every API route): ``X-RateLimit-Limit`` (per window, default 600 per 60 s),
  ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (unix time) on each answer; past the limit 429
  ``{"detail": "Rate limit exceeded", "error": false}`` with ``X-Retry-After`` as a **unix timestamp**.

Where this emulator chooses ([UNCONFIRMED] at Docker):

- A JWT stays valid until it expires even when the PAT it came from is deactivated or deleted.
- A JWT from an OAT may not manage tokens (403); one from a password or PAT may manage its user's PATs
  and, for an organization owner, the organization's OATs. Anyone else gets 403 on an organization.
- A token of another user, a deleted token and an unknown id are all 404.
- ``resources`` of an OAT: ``TYPE_REPO`` paths must name an existing repository of the organization,
  a glob under it (``acme/*``), or ``*/*/public``; scopes ``repo-pull``/``repo-push`` (or the newer
  ``scope-image-pull``/``scope-image-push``). ``TYPE_ORG`` paths name the organization.

Test controls live on the admin port under ``/dockerhub_api/`` (see ``admin_routes``).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web

from rotator.sandbox.base import Context, read_json
from rotator.sandbox.dockerhub_accounts import (
    OAT_ORG_SCOPES,
    OAT_PULL,
    OAT_PUSH,
    PAT_SCOPES,
    PUBLIC_PATH,
    Hub,
    Org,
    OrgToken,
    PersonalToken,
    Principal,
    User,
)

JWT_AUDIENCE = "hub.docker.com"
JWT_ISSUER = "rotator-sandbox-hub"
DEFAULT_TOKEN_LIFETIME_S = 600  # Docker documents 10 minutes
DEFAULT_RATE_LIMIT = 600
DEFAULT_RATE_WINDOW_S = 60
DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 100
MAX_LABEL = 100
MAX_DESCRIPTION = 255
PASSWORD_FILE = "dockerhub-password"
# Repositories on the emulated Hub (the registry emulator serves an image for each).
PRIVATE_IMAGES = ("acme/app:latest",)
PUBLIC_IMAGES = ("library/alpine:latest",)
OUTSIDER = "outsider"
_REPO_PATH = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*/[a-z0-9*?]+(?:[._-][a-z0-9*?]+)*")
_MESSAGES = {
    401: "Authentication credentials were not provided.",
    403: "You do not have permission to perform this action.",
    404: "Not found.",
}


_Handler = Callable[[web.Request], Awaitable[web.Response]]


class HubError(Exception):
    """An error to answer in Docker Hub's shape: ``fields``/``text`` for 400, ``detail`` otherwise."""

    def __init__(self, status: int, detail: str, *, fields: dict[str, list[str]] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.fields = fields or {}


def _invalid(field_name: str, problem: str) -> HubError:
    return HubError(400, f"{field_name}: {problem}", fields={field_name: [problem]})


def hub_error(status: int, detail: str, *, fields: dict[str, list[str]] | None = None) -> web.Response:
    if status == 400:
        return web.json_response({"fields": fields or {}, "text": detail}, status=400)
    return web.json_response({"detail": detail, "message": detail}, status=status)


@dataclass
class RateLimit:
    """A fixed window per emulator (the sandbox has one client); ``limit`` None switches it off. A window
    opens at the first request after the last one closed (not at a wall-clock multiple of ``window_s``), so a
    test that sets a limit and sends a few requests never sees a window boundary fall between them."""

    limit: int | None = DEFAULT_RATE_LIMIT
    window_s: int = DEFAULT_RATE_WINDOW_S
    window_start: float = 0.0
    used: int = 0

    def reset_at(self) -> int:
        return math.ceil(self.window_start + self.window_s)

    def take(self, now: float) -> bool:
        """Count one request; False when it is over the limit."""
        if now >= self.window_start + self.window_s:
            self.window_start, self.used = now, 0
        if self.limit is None:
            return True
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    def headers(self) -> dict[str, str]:
        if self.limit is None:
            return {}
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(0, self.limit - self.used)),
            "X-RateLimit-Reset": str(self.reset_at()),
        }


class DockerHubApiEmulator:
    name = "dockerhub_api"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        seed = ctx.seed
        self.hub = Hub()
        self.token_lifetime_s = DEFAULT_TOKEN_LIFETIME_S
        self.rate = RateLimit()
        self.hub.users[seed.dockerhub_username] = User(
            username=seed.dockerhub_username, password=seed.dockerhub_password
        )
        self.hub.users[OUTSIDER] = User(username=OUTSIDER, password=secrets.token_urlsafe(18))
        self.hub.orgs[seed.dockerhub_org] = Org(name=seed.dockerhub_org, owners=[seed.dockerhub_username])
        for reference in PRIVATE_IMAGES:
            self.hub.repositories[reference.partition(":")[0]] = True
        for reference in PUBLIC_IMAGES:
            self.hub.repositories[reference.partition(":")[0]] = False
        # Tokens someone else made: rotator must list past them and never change them.
        self.foreign_pat = self.hub.add_pat(
            owner=seed.dockerhub_username, label="ci-pipeline", scopes=["repo:read"], value=seed.dockerhub_foreign_pat
        )
        self.foreign_oat = self.hub.add_oat(
            org=seed.dockerhub_org,
            label="legacy-deploy",
            description="made by hand",
            resources=[{"type": "TYPE_REPO", "path": f"{seed.dockerhub_org}/app", "scopes": ["repo-pull"]}],
            created_by=seed.dockerhub_username,
        )
        self._write_password_file()

    @property
    def password(self) -> str:
        """rotator's Docker ID's password as the accounts hold it (restored state wins over the seed)."""
        user = self.hub.users.get(self.ctx.seed.dockerhub_username)
        return user.password if user is not None else str(self.ctx.seed.dockerhub_password)

    def _write_password_file(self) -> None:
        if self.ctx.files_dir is None:
            return
        path = Path(self.ctx.files_dir) / PASSWORD_FILE
        path.write_text(self.password)
        path.chmod(0o600)

    # -- Emulator protocol -----------------------------------------------------------------------
    def setup(self, app: web.Application) -> None:
        app.router.add_route("*", "/v2/auth/token", self._route(self.auth_token, "POST"))
        app.router.add_route("*", "/v2/users/login", self._route(self.users_login, "POST"))
        app.router.add_route("*", "/v2/access-tokens", self._route(self.pat_collection, "GET", "POST"))
        app.router.add_route("*", "/v2/access-tokens/{uuid}", self._route(self.pat_item, "GET", "PATCH", "DELETE"))
        app.router.add_route("*", "/v2/orgs/{org}/access-tokens", self._route(self.oat_collection, "GET", "POST"))
        app.router.add_route(
            "*", "/v2/orgs/{org}/access-tokens/{id}", self._route(self.oat_item, "GET", "PATCH", "DELETE")
        )

    def error_response(self, status: int, message: str, *, retry_after: int | None = None) -> web.Response:
        if status == 429:
            now = math.ceil(time.time())
            # Without a wait of its own, an injected 429 points at the end of the current window.
            retry_at = now + retry_after if retry_after is not None else max(self.rate.reset_at(), now + 1)
            return self._too_many(retry_at)
        return hub_error(status, message)

    def _too_many(self, retry_at: int) -> web.Response:
        headers = {**self.rate.headers(), "X-Retry-After": str(retry_at)}
        if self.rate.limit is not None:
            headers["X-RateLimit-Remaining"] = "0"
        return web.json_response({"detail": "Rate limit exceeded", "error": False}, status=429, headers=headers)

    def describe(self) -> dict[str, Any]:
        seed = self.ctx.seed
        files = Path(self.ctx.files_dir) if self.ctx.files_dir is not None else None
        return {
            "dockerhub_api": self.ctx.urls.get(self.name, ""),
            "dockerhub_registry": self.ctx.urls.get("dockerhub_registry", ""),
            "dockerhub_username": seed.dockerhub_username,
            "dockerhub_password": self.password,
            "dockerhub_password_file": str(files / PASSWORD_FILE) if files else "",
            "dockerhub_org": seed.dockerhub_org,
            "dockerhub_images": [f"docker.io/{ref}" for ref in PRIVATE_IMAGES],
            "dockerhub_public_images": [f"docker.io/{ref}" for ref in PUBLIC_IMAGES],
            "dockerhub_foreign_pat_id": self.foreign_pat.uuid,
            "dockerhub_foreign_oat_id": self.foreign_oat.id,
            "dockerhub_outsider_username": OUTSIDER,
            "dockerhub_outsider_password": self.hub.users[OUTSIDER].password,
        }

    def dump(self) -> dict[str, Any]:
        return {
            "hub": self.hub.dump(),
            "rate": asdict(self.rate),
            "token_lifetime_s": self.token_lifetime_s,
            "foreign": [self.foreign_pat.uuid, self.foreign_oat.id],
        }

    def load(self, data: dict[str, Any]) -> None:
        if "hub" in data:
            self.hub.load(data["hub"])
        if "rate" in data:
            self.rate = RateLimit(**data["rate"])
        self.token_lifetime_s = int(data.get("token_lifetime_s", self.token_lifetime_s))
        pat_id, oat_id = data.get("foreign") or [None, None]
        self.foreign_pat = self.hub.pats.get(pat_id or "", self.foreign_pat)
        self.foreign_oat = self.hub.oats.get(oat_id or "", self.foreign_oat)
        self._write_password_file()

    # -- plumbing --------------------------------------------------------------------------------
    def _route(self, handler: _Handler, *methods: str) -> _Handler:
        """Rate limit, method check and error mapping around one handler; never a bare 500."""

        async def wrapped(request: web.Request) -> web.Response:
            if not self.rate.take(time.time()):
                return self._too_many(self.rate.reset_at())
            try:
                if request.method not in methods:
                    raise HubError(405, f'Method "{request.method}" not allowed.')
                response = await handler(request)
            except HubError as exc:
                response = hub_error(exc.status, exc.detail, fields=exc.fields)
            response.headers.update(self.rate.headers())
            return response

        return wrapped

    async def _body(self, request: web.Request) -> dict[str, Any]:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise HubError(
                400, "the request body must be a JSON object", fields={"non_field_errors": ["Invalid data."]}
            )
        return body

    def _sign(self, principal: Principal) -> str:
        now = int(time.time())
        claims = {
            "iss": JWT_ISSUER,
            "aud": JWT_AUDIENCE,
            "sub": principal.account,
            "username": principal.account,
            "kind": principal.kind,
            "token_id": principal.token_id,
            "iat": now,
            "exp": now + self.token_lifetime_s,
            "jti": uuid.uuid4().hex,
        }
        token: str = self.ctx.signer.sign(claims, x5c=False)
        return token

    def _caller(self, request: web.Request) -> Principal:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() not in ("bearer", "jwt") or not token.strip():
            raise HubError(401, _MESSAGES[401])
        try:
            claims = self.ctx.signer.verify(token.strip(), audience=JWT_AUDIENCE)
        except jwt.PyJWTError:
            raise HubError(401, "Invalid or expired token.") from None
        if claims.get("iss") != JWT_ISSUER or claims.get("kind") not in ("password", "pat", "oat"):
            raise HubError(401, "Invalid or expired token.")
        return Principal(account=str(claims["username"]), kind=str(claims["kind"]), token_id=claims.get("token_id"))

    def _user(self, request: web.Request) -> str:
        """The Docker ID behind the request's JWT (organization tokens may not manage tokens)."""
        caller = self._caller(request)
        if caller.user is None:
            raise HubError(403, "Organization access tokens cannot manage access tokens.")
        return caller.user

    # -- sign-in ---------------------------------------------------------------------------------
    async def auth_token(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        identifier, secret = body.get("identifier"), body.get("secret")
        for name, value in (("identifier", identifier), ("secret", secret)):
            if not isinstance(value, str) or not value:
                raise _invalid(name, "This field is required.")
        principal = self.hub.sign_in(str(identifier), str(secret))
        if principal is None:
            raise HubError(401, "Incorrect authentication credentials.")
        return web.json_response({"access_token": self._sign(principal)})

    async def users_login(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        username, password = body.get("username"), body.get("password")
        for name, value in (("username", username), ("password", password)):
            if not isinstance(value, str) or not value:
                raise _invalid(name, "This field is required.")
        principal = self.hub.sign_in(str(username), str(password))
        if principal is None or principal.kind == "oat":
            raise HubError(401, "Incorrect authentication credentials.")
        return web.json_response({"token": self._sign(principal)})

    # -- personal access tokens ------------------------------------------------------------------
    async def pat_collection(self, request: web.Request) -> web.Response:
        user = self._user(request)
        if request.method == "GET":
            tokens = self.hub.live_pats(user)
            page, links = _page(request, tokens)
            return web.json_response(
                {
                    "count": len(tokens),
                    **links,
                    "active_count": sum(t.is_active for t in tokens),
                    "results": [t.to_wire() for t in page],
                }
            )
        body = await self._body(request)
        label = _label(body, "token_label", required=True)
        scopes = _pat_scopes(body.get("scopes"))
        token = self.hub.add_pat(
            owner=user,
            label=label or "",
            scopes=scopes,
            expires_at=_expires_at(body.get("expires_at")),
            creator_ip=request.remote or "",
            creator_ua=request.headers.get("User-Agent", ""),
        )
        return web.json_response(token.to_wire(with_value=True), status=201)

    def _pat(self, request: web.Request) -> PersonalToken:
        user = self._user(request)
        token = self.hub.pats.get(request.match_info["uuid"])
        if token is None or token.deleted or token.owner != user:
            raise HubError(404, _MESSAGES[404])
        return token

    async def pat_item(self, request: web.Request) -> web.Response:
        token = self._pat(request)
        if request.method == "DELETE":
            token.deleted = True
            return web.Response(status=204)
        if request.method == "PATCH":
            body = await self._body(request)
            label = _label(body, "token_label", required=False)
            active = _optional_bool(body, "is_active")
            if label is not None:
                token.label = label
            if active is not None:
                token.is_active = active
        return web.json_response(token.to_wire())

    # -- organization access tokens --------------------------------------------------------------
    def _org(self, request: web.Request) -> str:
        caller = self._caller(request)
        if caller.user is None:
            raise HubError(403, "Organization access tokens cannot manage access tokens.")
        org = request.match_info["org"]
        if org not in self.hub.orgs:
            raise HubError(404, _MESSAGES[404])
        if not self.hub.may_manage_org(caller, org):
            raise HubError(403, _MESSAGES[403])
        return org

    async def oat_collection(self, request: web.Request) -> web.Response:
        org = self._org(request)
        if request.method == "GET":
            tokens = self.hub.live_oats(org)
            page, links = _page(request, tokens)
            return web.json_response({"total": len(tokens), **links, "results": [t.to_wire() for t in page]})
        body = await self._body(request)
        label = _label(body, "label", required=True)
        token = self.hub.add_oat(
            org=org,
            label=label or "",
            description=_description(body),
            resources=self._resources(org, body.get("resources", [])),
            created_by=self._caller(request).account,
            expires_at=_expires_at(body.get("expires_at")),
        )
        return web.json_response(token.to_wire(with_value=True), status=201)

    def _oat(self, request: web.Request) -> OrgToken:
        org = self._org(request)
        token = self.hub.oats.get(request.match_info["id"])
        if token is None or token.deleted or token.org != org:
            raise HubError(404, _MESSAGES[404])
        return token

    async def oat_item(self, request: web.Request) -> web.Response:
        token = self._oat(request)
        if request.method == "DELETE":
            token.deleted = True
            return web.Response(status=204)
        if request.method == "PATCH":
            body = await self._body(request)
            label = _label(body, "label", required=False)
            description = _description(body) if "description" in body else None
            resources = self._resources(token.org, body["resources"]) if "resources" in body else None
            active = _optional_bool(body, "is_active")
            token.label = label if label is not None else token.label
            token.description = description if description is not None else token.description
            token.resources = resources if resources is not None else token.resources
            token.is_active = active if active is not None else token.is_active
        return web.json_response(token.to_wire())

    def _resources(self, org: str, raw: Any) -> list[dict[str, Any]]:
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise _invalid("resources", "Expected a list of items.")
        return [self._resource(org, i, item) for i, item in enumerate(raw)]

    def _resource(self, org: str, index: int, item: Any) -> dict[str, Any]:
        where = f"resources[{index}]"
        if not isinstance(item, dict):
            raise _invalid(where, "Expected an object with type, path and scopes.")
        kind, path, scopes = item.get("type"), item.get("path"), item.get("scopes")
        if kind not in ("TYPE_REPO", "TYPE_ORG"):
            raise _invalid(f"{where}.type", "Must be TYPE_REPO or TYPE_ORG.")
        if not isinstance(path, str) or not path:
            raise _invalid(f"{where}.path", "This field is required.")
        if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
            raise _invalid(f"{where}.scopes", "Expected a non-empty list of scopes.")
        allowed = OAT_PULL | OAT_PUSH if kind == "TYPE_REPO" else OAT_ORG_SCOPES
        unknown = sorted(set(scopes) - allowed)
        if unknown:
            raise _invalid(f"{where}.scopes", f"Unknown scopes {unknown}; allowed: {sorted(allowed)}.")
        if kind == "TYPE_ORG" and path != org:
            raise _invalid(f"{where}.path", f"Must be the organization {org!r}.")
        if kind == "TYPE_REPO" and path != PUBLIC_PATH:
            self._check_repo_path(org, f"{where}.path", path)
        return {"type": kind, "path": path, "scopes": list(scopes)}

    def _check_repo_path(self, org: str, where: str, path: str) -> None:
        if not _REPO_PATH.fullmatch(path) or path.split("/", 1)[0] != org:
            raise _invalid(where, f"Must be a repository of {org} (e.g. {org}/app), a glob ({org}/*) or */*/public.")
        if not any(c in path for c in "*?") and path not in self.hub.repositories:
            raise _invalid(where, f"Repository {path} does not exist.")

    # -- admin (test control) --------------------------------------------------------------------
    def admin_routes(self) -> list[web.RouteDef]:
        """Test controls (JSON; 400 ``{"error": ...}`` when malformed):

        - ``GET /dockerhub_api/tokens``: every PAT and OAT (deleted too), never a value.
        - ``GET /dockerhub_api/issued-values``: every secret issued (for the suite's log-leak scan).
        - ``POST /dockerhub_api/identify {"token": value}``: ``{"id", "kind"}`` of a token (test oracle;
          the real Hub cannot do this), 404 when unknown.
        - ``GET /dockerhub_api/config``; ``PUT /dockerhub_api/rate-limit {"limit": n|null, "window_s": s}``;
          ``PUT /dockerhub_api/token-lifetime {"seconds": n}``.
        - ``PUT /dockerhub_api/repositories {"repository": "ns/repo", "private": bool}``.
        """
        prefix = f"/{self.name}"
        return [
            web.get(f"{prefix}/tokens", self._admin_tokens),
            web.get(f"{prefix}/issued-values", self._admin_values),
            web.post(f"{prefix}/identify", self._admin_identify),
            web.get(f"{prefix}/config", self._admin_config),
            web.put(f"{prefix}/rate-limit", self._admin_rate_limit),
            web.put(f"{prefix}/token-lifetime", self._admin_token_lifetime),
            web.put(f"{prefix}/repositories", self._admin_repository),
        ]

    async def _admin_tokens(self, _: web.Request) -> web.Response:
        tokens = [t.admin_view() for t in self.hub.pats.values()] + [t.admin_view() for t in self.hub.oats.values()]
        return web.json_response({"tokens": tokens})

    async def _admin_values(self, _: web.Request) -> web.Response:
        passwords = [u.password for u in self.hub.users.values()]
        return web.json_response({"values": self.hub.issued_values() + passwords})

    async def _admin_identify(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        value = body.get("token") if isinstance(body, dict) else None
        if not isinstance(value, str):
            raise _admin_bad_request('expected {"token": "<value>"}')
        for pat in self.hub.pats.values():
            if pat.value == value:
                return web.json_response({"id": pat.uuid, "kind": "personal", "deleted": pat.deleted})
        for oat in self.hub.oats.values():
            if oat.value == value:
                return web.json_response({"id": oat.id, "kind": "organization", "deleted": oat.deleted})
        return web.json_response({"error": "unknown token"}, status=404)

    async def _admin_config(self, _: web.Request) -> web.Response:
        return web.json_response(
            {"rate_limit": self.rate.limit, "window_s": self.rate.window_s, "token_lifetime_s": self.token_lifetime_s}
        )

    async def _admin_rate_limit(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        limit = body.get("limit", -1) if isinstance(body, dict) else -1
        window = body.get("window_s", self.rate.window_s) if isinstance(body, dict) else 0
        if not (limit is None or _positive(limit)) or not _positive(window):
            raise _admin_bad_request('expected {"limit": <n >= 1>|null, "window_s": <n >= 1>}')
        self.rate = RateLimit(limit=limit, window_s=window)
        return await self._admin_config(request)

    async def _admin_token_lifetime(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        seconds = body.get("seconds") if isinstance(body, dict) else None
        if not isinstance(seconds, int) or not _positive(seconds):
            raise _admin_bad_request('expected {"seconds": <n >= 1>}')
        self.token_lifetime_s = seconds
        return await self._admin_config(request)

    async def _admin_repository(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        name = body.get("repository") if isinstance(body, dict) else None
        private = body.get("private") if isinstance(body, dict) else None
        if not isinstance(name, str) or not _REPO_PATH.fullmatch(name) or not isinstance(private, bool):
            raise _admin_bad_request('expected {"repository": "ns/repo", "private": true|false}')
        self.hub.repositories[name] = private
        return web.json_response({"repositories": self.hub.repositories})


# -- request parsing ---------------------------------------------------------------------------------


def _label(body: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise _invalid(name, "This field is required.")
        return None
    if not isinstance(value, str) or not value.strip():
        raise _invalid(name, "Not a valid string.")
    if len(value) > MAX_LABEL:
        raise _invalid(name, f"Ensure this field has no more than {MAX_LABEL} characters.")
    return value


def _description(body: dict[str, Any]) -> str:
    value = body.get("description", "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _invalid("description", "Not a valid string.")
    if len(value) > MAX_DESCRIPTION:
        raise _invalid("description", f"Ensure this field has no more than {MAX_DESCRIPTION} characters.")
    return value


def _pat_scopes(raw: Any) -> list[str]:
    if raw is None:
        raise _invalid("scopes", "This field is required.")
    if not isinstance(raw, list) or not raw or not all(isinstance(s, str) for s in raw):
        raise _invalid("scopes", "Expected a non-empty list of scopes.")
    unknown = sorted(set(raw) - set(PAT_SCOPES))
    if unknown:
        raise _invalid("scopes", f"Unknown scopes {unknown}; allowed: {list(PAT_SCOPES)}.")
    return list(dict.fromkeys(raw))


def _optional_bool(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise _invalid(name, "Must be a valid boolean.")
    return value


def _expires_at(raw: Any) -> float | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise _invalid("expires_at", "Datetime has wrong format.")
    try:
        when = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise _invalid("expires_at", "Datetime has wrong format. Use RFC 3339.") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    if when.timestamp() <= time.time():
        raise _invalid("expires_at", "Must be in the future.")
    return when.timestamp()


def _page(request: web.Request, items: list[Any]) -> tuple[list[Any], dict[str, str | None]]:
    """One page the way Django REST framework's PageNumberPagination cuts it."""
    size = _int_or(request.query.get("page_size"), DEFAULT_PAGE_SIZE)
    size = min(size if size >= 1 else DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    raw_page = request.query.get("page", "1")
    pages = max(1, math.ceil(len(items) / size))
    if raw_page == "last":
        raw_page = str(pages)
    number = _int_or(raw_page, 0)
    if number < 1 or number > pages:
        raise HubError(404, "Invalid page.")
    start = (number - 1) * size

    def link(target: int) -> str:
        return str(request.url.update_query({"page": str(target)}))

    links = {
        "next": link(number + 1) if number < pages else None,
        "previous": link(number - 1) if number > 1 else None,
    }
    return items[start : start + size], links


def _int_or(raw: str | None, default: int) -> int:
    if raw is None or not raw.strip().isdigit():
        return default
    return int(raw)


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _admin_bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")
