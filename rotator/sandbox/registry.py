"""An IBM Cloud Container Registry-like registry: the Docker v2 API behind Docker token auth.

What a client sees (protocols.md sections 4-5, real-components.md):

- ``GET /v2/`` without a token: 401 with ``WWW-Authenticate: Bearer realm=".../oauth/token",service="registry"``.
- ``GET|POST /oauth/token``: HTTP Basic ``iamapikey:<API key>`` (or ``iambearer:<IAM access token>``), checked
  live against the IAM emulator on every request. Bad credentials answer **400** like ICR (401 through
  ``POST /registry/bad-credentials``). Missing rights are not an error: the token carries the granted part
  of the requested scopes, possibly none. Tokens are RS256 JWTs with an ``x5c`` header, a string ``aud``
  and an ``access`` list; Docker's registry 2.8 accepts them (checked by hand against docker-registry 2.8.2).
- Manifests, blobs and tags under ``/v2/<name>/...``; pushes through the upload API for identities granted
  ``push``. Accept negotiation and the schema 1 rewrite follow docker-registry 2.8.2 as measured
  (``Store.negotiate``).

Where this emulator chooses (and why):

- A token without the needed action gets **403 DENIED** ("requested access to the resource is denied", the
  message ICR users report); ``POST /registry/insufficient-scope {"status": 401}`` switches to distribution's
  401 ``UNAUTHORIZED`` with ``error="insufficient_scope"`` in the challenge.
- An unknown repository is 404 ``NAME_UNKNOWN`` (the spec's code; distribution 2.8 says ``MANIFEST_UNKNOWN``
  for manifests). A malformed digest is 400 ``DIGEST_INVALID`` (distribution answers 500 for some).
  A wrong method is 405 ``UNSUPPORTED`` (distribution authenticates first).
- Monolithic ``POST .../blobs/uploads/?digest=`` is accepted (the OCI spec allows it; 2.8 ignores it).
  Upload ``Location`` headers are relative, which clients resolve against the URL they called.
- Token request errors (bad scope, unknown service, OAuth2 form without ``client_id``) are 400 in the
  registry error shape with code ``UNSUPPORTED``.

Test controls live on the admin port under ``/registry/`` (see ``admin_routes``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import jwt
from aiohttp import web

from rotator.sandbox.base import Context, read_json
from rotator.sandbox.registry_auth import (
    TOKEN_TTL_S,
    ChallengeStyle,
    Grant,
    Scope,
    ScopeError,
    allows,
    intersect,
    parse_scopes,
    token_claims,
)
from rotator.sandbox.registry_store import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    Store,
    StoreError,
    accepted_types,
    check_digest,
    check_name,
    check_reference,
)
from rotator.sandbox.tokens import ISSUER
from rotator.sandbox.world import Seed

SERVICE = "registry"
API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")
MAX_UPLOADS = 64
# Blob bodies are streamed past the app's 8 MiB request limit (which still bounds manifests, like the
# real registry's 4 MiB manifest limit) so ordinary image layers can be pushed.
MAX_BLOB_BYTES = 256 * 1024**2
_PULL: tuple[str, ...] = ("pull",)
_PUSH: tuple[str, ...] = ("pull", "push")
_ERROR_CODES = {
    400: "UNSUPPORTED",
    401: "UNAUTHORIZED",
    403: "DENIED",
    404: "NAME_UNKNOWN",
    405: "UNSUPPORTED",
    413: "SIZE_INVALID",
    429: "TOOMANYREQUESTS",
    503: "UNAVAILABLE",
}
# /v2/<name>/<kind>/<rest>: the repository name is everything before the last known kind segment.
_ROUTES = [
    ("upload", re.compile(r"(?P<name>.+)/blobs/uploads/(?P<ref>[^/]*)")),
    ("manifest", re.compile(r"(?P<name>.+)/manifests/(?P<ref>[^/]+)")),
    ("blob", re.compile(r"(?P<name>.+)/blobs/(?P<ref>[^/]+)")),
    ("tags", re.compile(r"(?P<name>.+)/tags/list(?P<ref>)")),
]
_METHODS = {
    "manifest": {"GET", "HEAD", "PUT"},
    "blob": {"GET", "HEAD"},
    "tags": {"GET", "HEAD"},
    "upload": {"POST", "PATCH", "PUT", "GET", "DELETE"},
}

Handler = Callable[[web.Request, str, str], Awaitable[web.Response]]


@dataclass
class Settings:
    """Behaviour switches tests flip through the admin API."""

    bad_credentials_status: int = 400
    insufficient_scope_status: int = 403
    # Keys created after this epoch second fail authentication (a key "not yet known" to the registry).
    deny_keys_created_after: float | None = None
    challenge: ChallengeStyle = field(default_factory=ChallengeStyle)


@dataclass
class Upload:
    name: str
    data: bytearray = field(default_factory=bytearray)


def registry_error(
    status: int, code: str, message: str, *, detail: Any = None, headers: dict[str, str] | None = None
) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if detail is not None:
        error["detail"] = detail
    return web.json_response({"errors": [error]}, status=status, headers=headers)


class RegistryEmulator:
    name = "registry"
    # Subclasses (the Docker Hub registry) change these and the hooks ``seed_images``, ``_authenticate``,
    # ``_access`` and ``_bad_credentials``.
    service = SERVICE  # the token audience and the challenge's service
    token_path = "/oauth/token"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.store = Store()
        self.settings = Settings()
        self.grants: dict[str, list[Grant]] = {
            Seed.iam_id(ctx.seed.service_id): [Grant("team/*", _PULL)],
            Seed.iam_id(ctx.seed.admin_service_id): [Grant("*", _PUSH)],
        }
        self.uploads: OrderedDict[str, Upload] = OrderedDict()
        self.seed_images()

    def seed_images(self) -> None:
        for index, reference in enumerate(self.ctx.seed.repositories):
            # The first seeded image is an OCI manifest, the others Docker schema 2.
            self.store.seed_image(reference, "oci" if index == 0 else "docker")

    @property
    def realm(self) -> str:
        return f"{self.ctx.urls[self.name]}{self.token_path}"

    # -- Emulator protocol ---------------------------------------------------------------------
    def setup(self, app: web.Application) -> None:
        app.router.add_route("*", "/v2/", self._base)
        app.router.add_route("*", "/v2/{tail:.+}", self._dispatch)
        app.router.add_route("*", self.token_path, self._token)
        app.on_response_prepare.append(_add_api_version)

    def error_response(self, status: int, message: str, *, retry_after: int | None = None) -> web.Response:
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        if status == 401:
            headers["WWW-Authenticate"] = self._challenge()
        return registry_error(status, _ERROR_CODES.get(status, "UNKNOWN"), message, headers=headers)

    def describe(self) -> dict[str, Any]:
        return {"registry_realm": self.realm, "registry_service": self.service}

    def dump(self) -> dict[str, Any]:
        settings = asdict(self.settings)
        return {
            "store": self.store.dump(),
            "grants": {iam_id: [g.to_json() for g in grants] for iam_id, grants in self.grants.items()},
            "settings": settings,
        }

    def load(self, data: dict[str, Any]) -> None:
        if "store" in data:
            self.store.load(data["store"])
        if "grants" in data:
            self.grants = {k: [Grant.from_json(g) for g in v] for k, v in data["grants"].items()}
        raw = dict(data.get("settings") or {})
        raw["challenge"] = ChallengeStyle(**(raw.get("challenge") or {}))
        self.settings = Settings(**raw)

    # -- /v2/ ----------------------------------------------------------------------------------
    async def _base(self, request: web.Request) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            return self._unsupported(request)
        claims, problem = self._bearer(request)
        if claims is None:
            return self._unauthorized(None, problem)
        return web.json_response({})

    # -- /v2/<name>/... ------------------------------------------------------------------------
    async def _dispatch(self, request: web.Request) -> web.Response:
        kind, name, ref = _route(request.match_info["tail"])
        if kind is None:
            return registry_error(404, "NAME_UNKNOWN", "repository name not known to registry")
        if request.method not in _METHODS[kind]:
            return self._unsupported(request)
        try:
            check_name(name)
            needed = _PULL if request.method in ("GET", "HEAD") and kind != "upload" else _PUSH
            denied = self._authorize(request, name, needed)
            if denied is not None:
                return denied
            return await self._handlers()[kind](request, name, ref)
        except StoreError as exc:
            return registry_error(exc.status, exc.code, exc.message)
        except web.HTTPRequestEntityTooLarge:
            return registry_error(413, "SIZE_INVALID", "request body too large")

    def _handlers(self) -> dict[str, Handler]:
        return {"manifest": self._manifest, "blob": self._blob, "tags": self._tags, "upload": self._upload}

    async def _manifest(self, request: web.Request, name: str, ref: str) -> web.Response:
        check_reference(ref)
        if request.method == "PUT":
            digest = self.store.put_manifest(name, ref, request.headers.get("Content-Type", ""), await request.read())
            return _created(f"/v2/{name}/manifests/{digest}", digest)
        manifest = self.store.negotiate(name, ref, accepted_types(request.headers.getall("Accept", [])))
        headers = {"Docker-Content-Digest": manifest.digest, "ETag": f'"{manifest.digest}"'}
        return web.Response(body=manifest.body, content_type=manifest.media_type, headers=headers)

    async def _blob(self, request: web.Request, name: str, ref: str) -> web.Response:
        data = self.store.blob(name, check_digest(ref))
        headers = {"Docker-Content-Digest": ref, "ETag": f'"{ref}"', "Cache-Control": "max-age=31536000"}
        return web.Response(body=data, content_type="application/octet-stream", headers=headers)

    async def _tags(self, request: web.Request, name: str, _: str) -> web.Response:
        raw_n = request.query.get("n")
        if raw_n is not None and not raw_n.isdigit():
            raise StoreError(400, "PAGINATION_NUMBER_INVALID", "invalid number of results requested")
        limit = int(raw_n) if raw_n is not None else None
        tags, more = self.store.tag_page(name, limit=limit, last=request.query.get("last", ""))
        headers = {}
        if more and tags:
            headers["Link"] = f'</v2/{name}/tags/list?n={limit}&last={tags[-1]}>; rel="next"'
        return web.json_response({"name": name, "tags": tags}, headers=headers)

    # -- uploads -------------------------------------------------------------------------------
    async def _upload(self, request: web.Request, name: str, ref: str) -> web.Response:
        if request.method == "POST":
            if ref:
                return self._unsupported(request)
            return await self._start_upload(request, name)
        upload = self.uploads.get(ref)
        if upload is None or upload.name != name:
            raise StoreError(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry")
        if request.method == "DELETE":
            del self.uploads[ref]
            return web.Response(status=204)
        if request.method in ("PATCH", "PUT"):
            upload.data.extend(await _blob_body(request, MAX_BLOB_BYTES - len(upload.data)))
        if request.method == "PUT":
            digest = self.store.put_blob(name, bytes(upload.data), check_digest(request.query.get("digest", "")))
            del self.uploads[ref]
            return _created(f"/v2/{name}/blobs/{digest}", digest)
        return _upload_status(name, ref, upload, 202 if request.method == "PATCH" else 204)

    async def _start_upload(self, request: web.Request, name: str) -> web.Response:
        mount, source = request.query.get("mount"), request.query.get("from")
        if mount and source and self._may(request, source, _PULL) and self.store.mount_blob(name, mount, source):
            return _created(f"/v2/{name}/blobs/{mount}", mount)
        digest = request.query.get("digest")
        if digest is not None:
            stored = self.store.put_blob(name, await _blob_body(request, MAX_BLOB_BYTES), check_digest(digest))
            return _created(f"/v2/{name}/blobs/{stored}", stored)
        ref = str(uuid.uuid4())
        self.uploads[ref] = Upload(name)
        while len(self.uploads) > MAX_UPLOADS:
            self.uploads.popitem(last=False)
        return _upload_status(name, ref, self.uploads[ref], 202)

    # -- authorization -------------------------------------------------------------------------
    def _bearer(self, request: web.Request) -> tuple[dict[str, Any] | None, str | None]:
        """The verified claims of the request's bearer token, or None and the challenge error."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None, None
        try:
            claims = self.ctx.signer.verify(token.strip(), audience=self.service)
        except jwt.PyJWTError:
            return None, "invalid_token"
        if not isinstance(claims, dict) or claims.get("iss") != ISSUER:
            return None, "invalid_token"
        return claims, None

    def _may(self, request: web.Request, name: str, actions: tuple[str, ...]) -> bool:
        claims, _ = self._bearer(request)
        return claims is not None and allows(claims, name, actions)

    def _authorize(self, request: web.Request, name: str, actions: tuple[str, ...]) -> web.Response | None:
        scope = Scope("repository", name, actions)
        claims, problem = self._bearer(request)
        if claims is None:
            return self._unauthorized(scope, problem)
        if allows(claims, name, actions):
            return None
        if self.settings.insufficient_scope_status == 401:
            return self._unauthorized(scope, "insufficient_scope")
        detail = [{"Type": "repository", "Name": name, "Action": a} for a in actions]
        return registry_error(403, "DENIED", "requested access to the resource is denied", detail=detail)

    def _challenge(self, scope: Scope | None = None, error: str | None = None) -> str:
        return self.settings.challenge.render(
            realm=self.realm, service=self.service, scope=str(scope) if scope else None, error=error
        )

    def _unauthorized(self, scope: Scope | None, error: str | None) -> web.Response:
        detail = [{"Type": "repository", "Name": scope.name, "Action": a} for a in scope.actions] if scope else None
        return registry_error(
            401,
            "UNAUTHORIZED",
            "authentication required",
            detail=detail,
            headers={"WWW-Authenticate": self._challenge(scope, error)},
        )

    def _unsupported(self, request: web.Request) -> web.Response:
        return registry_error(405, "UNSUPPORTED", f"the operation is unsupported: method {request.method}")

    # -- token service -------------------------------------------------------------------------
    async def _token(self, request: web.Request) -> web.Response:
        if request.method == "GET":
            params: dict[str, Any] = {
                "service": request.query.get("service"),
                "scope": request.query.getall("scope", []),
            }
            credentials = _basic_credentials(request.headers.get("Authorization"))
        elif request.method == "POST":
            form = await request.post()
            problem = _oauth_form_problem(form)
            if problem:
                return registry_error(400, "UNSUPPORTED", problem)
            params = {"service": form.get("service"), "scope": [str(form.get("scope") or "")]}
            credentials = (str(form.get("username", "")), str(form.get("password", "")))
        else:
            return self._unsupported(request)
        if params["service"] not in (None, self.service):
            return registry_error(400, "UNSUPPORTED", f"unknown service; this token server serves {self.service!r}")
        try:
            scopes = parse_scopes(params["scope"])
        except ScopeError as exc:
            return registry_error(400, "UNSUPPORTED", str(exc))
        return self._issue(request, credentials, scopes)

    def _issue(
        self, request: web.Request, credentials: tuple[str, str] | Literal[False] | None, scopes: list[Scope]
    ) -> web.Response:
        identity: dict[str, Any] | None = None
        if credentials is not None:
            identity = self._authenticate(credentials) if isinstance(credentials, tuple) else None
            if identity is None:
                return self._bad_credentials()
        subject, granted = self._access(identity, scopes)
        now = time.time()
        token = self.ctx.signer.sign(token_claims(subject=subject, service=self.service, access=granted, now=now))
        body: dict[str, Any] = {
            "token": token,
            "access_token": token,
            "expires_in": TOKEN_TTL_S,
            "issued_at": dt.datetime.fromtimestamp(int(now), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if request.method == "POST":
            body["scope"] = " ".join(str(s) for s in granted)
        return web.json_response(body)

    def _access(self, identity: dict[str, Any] | None, scopes: list[Scope]) -> tuple[str, list[Scope]]:
        """The token's subject and the part of ``scopes`` it grants (None: anonymous, nothing)."""
        if identity is None:
            return "", []
        subject = str(identity.get("iam_id", ""))
        return subject, intersect(scopes, self.grants.get(subject, []))

    def _bad_credentials(self) -> web.Response:
        status = self.settings.bad_credentials_status
        headers = {"WWW-Authenticate": f'Basic realm="{self.realm}"'} if status == 401 else None
        return registry_error(
            status,
            "UNAUTHORIZED",
            "The login credentials are not valid, or your IBM Cloud account is not active.",
            headers=headers,
        )

    def _authenticate(self, credentials: tuple[str, str]) -> dict[str, Any] | None:
        """The IAM identity for ``iamapikey:<key>`` / ``iambearer:<token>``, asked of IAM on every call."""
        username, password = credentials
        iam = self.ctx.peers.get("iam")
        if iam is None or not password:
            return None
        identity: dict[str, Any] | None
        if username == "iamapikey":
            identity = iam.authenticate_apikey(password)
        elif username == "iambearer":
            identity = self._identity_from_access_token(password)
        else:
            return None
        if identity is None or self._denied_as_new(identity):
            return None
        return identity

    def _identity_from_access_token(self, token: str) -> dict[str, Any] | None:
        """IAM access tokens are signed by the sandbox's one signer: verify them locally."""
        try:
            claims: dict[str, Any] = self.ctx.signer.verify(token)
        except jwt.PyJWTError:
            return None
        if claims.get("realmid") != "iam" or not isinstance(claims.get("iam_id"), str):
            return None  # signed by the same signer, but not an IAM access token (e.g. a registry token)
        return claims

    def _denied_as_new(self, identity: dict[str, Any]) -> bool:
        cutoff = self.settings.deny_keys_created_after
        if cutoff is None or "created_at" not in identity:  # access tokens carry no key age
            return False
        created = _epoch(identity["created_at"])
        return created is None or created > cutoff

    # -- admin routes --------------------------------------------------------------------------
    def admin_routes(self) -> list[web.RouteDef]:
        """Test controls (JSON bodies; 400 ``{"error": ...}`` when malformed):

        - ``GET /registry/config``: current switches, realm and service.
        - ``POST /registry/bad-credentials {"status": 400|401}``: status for a bad key at the token endpoint.
        - ``POST /registry/insufficient-scope {"status": 403|401}``: 403 DENIED or 401 insufficient_scope.
        - ``GET /registry/grants``; ``PUT /registry/grants/{iam_id} {"grants": [{"pattern": "team/*",
          "actions": ["pull"]}]}`` (fnmatch patterns); ``DELETE /registry/grants/{iam_id}``.
        - ``POST /registry/deny-new-keys {"enabled": true}``: keys created after this moment fail at the
          token endpoint as bad credentials (older keys still pass); ``false`` lifts it.
        - ``POST /registry/challenge {"style": "quoted"|"unquoted", "header": null|"<verbatim value>"}``.
        - ``POST /registry/images {"repository": "ns/repo:tag", "format": "oci"|"docker"}``: seed an image.
        """
        return [
            web.get("/registry/config", self._admin_config),
            web.post("/registry/bad-credentials", self._admin_bad_credentials),
            web.post("/registry/insufficient-scope", self._admin_insufficient_scope),
            web.get("/registry/grants", self._admin_grants),
            web.put("/registry/grants/{iam_id}", self._admin_set_grants),
            web.delete("/registry/grants/{iam_id}", self._admin_delete_grants),
            web.post("/registry/deny-new-keys", self._admin_deny_new_keys),
            web.post("/registry/challenge", self._admin_challenge),
            web.post("/registry/images", self._admin_add_image),
        ]

    async def _admin_config(self, _: web.Request) -> web.Response:
        return web.json_response({"settings": asdict(self.settings), "realm": self.realm, "service": self.service})

    async def _admin_bad_credentials(self, request: web.Request) -> web.Response:
        status = await _admin_status(request, (400, 401))
        self.settings.bad_credentials_status = status
        return await self._admin_config(request)

    async def _admin_insufficient_scope(self, request: web.Request) -> web.Response:
        status = await _admin_status(request, (401, 403))
        self.settings.insufficient_scope_status = status
        return await self._admin_config(request)

    async def _admin_grants(self, _: web.Request) -> web.Response:
        return web.json_response({k: [g.to_json() for g in v] for k, v in self.grants.items()})

    async def _admin_set_grants(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        try:
            raw = body.get("grants") if isinstance(body, dict) else None
            if not isinstance(raw, list):
                raise ValueError('expected {"grants": [{"pattern": "ns/*", "actions": ["pull"]}]}')
            grants = [Grant.from_json(g) for g in raw]
        except ValueError as exc:
            raise _admin_bad_request(str(exc)) from None
        self.grants[request.match_info["iam_id"]] = grants
        return await self._admin_grants(request)

    async def _admin_delete_grants(self, request: web.Request) -> web.Response:
        self.grants.pop(request.match_info["iam_id"], None)
        return web.Response(status=204)

    async def _admin_deny_new_keys(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool):
            raise _admin_bad_request('expected {"enabled": true|false}')
        self.settings.deny_keys_created_after = time.time() if body["enabled"] else None
        return await self._admin_config(request)

    async def _admin_challenge(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        header = body.get("header") if isinstance(body, dict) else None
        style = body.get("style", "quoted") if isinstance(body, dict) else None
        if style not in ("quoted", "unquoted") or not (header is None or isinstance(header, str)):
            raise _admin_bad_request('expected {"header": "<value>"|null, "style": "quoted"|"unquoted"}')
        self.settings.challenge = ChallengeStyle(unquoted=style == "unquoted", header=header)
        return await self._admin_config(request)

    async def _admin_add_image(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        reference = body.get("repository") if isinstance(body, dict) else None
        flavour = body.get("format", "oci") if isinstance(body, dict) else None
        if not isinstance(reference, str) or ":" not in reference or flavour not in ("oci", "docker"):
            raise _admin_bad_request('expected {"repository": "ns/repo:tag", "format": "oci"|"docker"}')
        try:
            check_name(reference.rpartition(":")[0])
            check_reference(reference.rpartition(":")[2])
            digest = self.store.seed_image(reference, str(flavour))
        except StoreError as exc:
            raise _admin_bad_request(exc.message) from None
        media_type = OCI_MANIFEST if flavour == "oci" else DOCKER_MANIFEST
        return web.json_response({"repository": reference, "digest": digest, "media_type": media_type}, status=201)


# -- helpers ---------------------------------------------------------------------------------------


async def _add_api_version(_: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault(*API_VERSION_HEADER)


async def _blob_body(request: web.Request, limit: int) -> bytes:
    data = bytearray()
    async for chunk in request.content.iter_chunked(1 << 16):
        data.extend(chunk)
        if len(data) > limit:
            raise StoreError(413, "SIZE_INVALID", "blob too large for the sandbox registry")
    return bytes(data)


def _route(tail: str) -> tuple[str | None, str, str]:
    for kind, pattern in _ROUTES:
        match = pattern.fullmatch(tail)
        if match:
            return kind, match["name"], match["ref"]
    return None, "", ""


def _created(location: str, digest: str) -> web.Response:
    headers = {"Location": location, "Docker-Content-Digest": digest}
    return web.Response(status=201, headers=headers)


def _upload_status(name: str, ref: str, upload: Upload, status: int) -> web.Response:
    headers = {
        "Location": f"/v2/{name}/blobs/uploads/{ref}",
        "Docker-Upload-UUID": ref,
        "Range": f"0-{max(len(upload.data) - 1, 0)}",
    }
    return web.Response(status=status, headers=headers)


def _basic_credentials(header: str | None) -> tuple[str, str] | Literal[False] | None:
    """``(user, password)`` from a Basic header; None when absent; False when present but unreadable."""
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return False
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else False


def _oauth_form_problem(form: Any) -> str | None:
    """Why an OAuth2 ``POST`` token request cannot be served (only ``grant_type=password``)."""
    if form.get("grant_type") != "password":
        return "unsupported grant_type: only password is supported"
    if not form.get("client_id"):
        return "client_id is required"
    if not form.get("username") or not form.get("password"):
        return "username and password are required"
    return None


def _epoch(value: Any) -> float | None:
    """Seconds since the epoch of a datetime, a number or an ISO 8601 string."""
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
    return None


async def _admin_status(request: web.Request, allowed: tuple[int, ...]) -> int:
    body = await read_json(request)
    status = body.get("status") if isinstance(body, dict) else None
    if status not in allowed:
        raise _admin_bad_request(f'expected {{"status": one of {list(allowed)}}}')
    return int(status)


def _admin_bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")
