"""Docker Hub's registry (``registry-1.docker.io``) with its token service, as one emulator.

The v2 API, content store and token machinery are the sandbox registry's (``registry.py``,
``registry_store``, ``registry_auth``); this class changes what Docker Hub does differently
(protocols.md 6.1-6.2):

- The challenge is ``Bearer realm="<this emulator>/token",service="registry.docker.io"`` (the real
  realm is ``https://auth.docker.io/token``).
- The token endpoint takes Basic ``<Docker ID or organization>:<password | PAT | OAT>`` and checks it
  live against the Hub API emulator's accounts: inactive, deleted, expired or wrong secrets answer
  401 ``{"details": "incorrect username or password"}``. A PAT's scopes and an OAT's resources decide
  what the token grants (see ``dockerhub_accounts``); anonymous tokens pull public repositories.
- A repository the token may not pull answers 401 ``UNAUTHORIZED`` with ``error="insufficient_scope"``.
- Pull rate limit per source (the Docker ID or organization; the client address when anonymous):
  a manifest **GET** counts, a **HEAD** does not. Manifest GET and HEAD carry ``ratelimit-limit:
  N;w=S``, ``ratelimit-remaining: N;w=S`` and ``docker-ratelimit-source``; no limit, no headers.
  Past the limit a GET answers 429 ``TOOMANYREQUESTS`` with Docker's message and a ``Retry-After``
  [OBS only]; a HEAD still answers (remaining 0), which is how Docker says to check the quota.
  Defaults follow the newest pulls.md: 200 (authenticated) and 100 (anonymous) per 6 hours.

Test controls live on the admin port under ``/dockerhub_registry/`` (see ``admin_routes``).
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from rotator.sandbox.base import Context, read_json
from rotator.sandbox.dockerhub_accounts import Hub, Principal
from rotator.sandbox.dockerhub_api import PRIVATE_IMAGES, PUBLIC_IMAGES
from rotator.sandbox.registry import RegistryEmulator, registry_error
from rotator.sandbox.registry_auth import Grant, Scope, intersect

HUB_SERVICE = "registry.docker.io"
PULL_LIMIT_MESSAGE = (
    "You have reached your pull rate limit. You may increase the limit by authenticating and upgrading: "
    "https://www.docker.com/increase-rate-limits"
)
DEFAULT_LIMIT = 200
DEFAULT_ANONYMOUS_LIMIT = 100
DEFAULT_WINDOW_S = 21600


@dataclass
class PullLimits:
    """Sliding-window pull counts per source; a limit of None means unlimited (and no headers)."""

    limit: int | None = DEFAULT_LIMIT
    anonymous_limit: int | None = DEFAULT_ANONYMOUS_LIMIT
    window_s: int = DEFAULT_WINDOW_S
    pulls: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    gets: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    heads: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def limit_for(self, anonymous: bool) -> int | None:
        return self.anonymous_limit if anonymous else self.limit

    def counted(self, source: str, now: float) -> int:
        window = self.pulls[source]
        while window and window[0] <= now - self.window_s:
            window.popleft()
        return len(window)

    def retry_after(self, source: str, now: float) -> int:
        window = self.pulls[source]
        return max(1, math.ceil(window[0] + self.window_s - now)) if window else 1

    def headers(self, source: str, anonymous: bool, now: float) -> dict[str, str]:
        limit = self.limit_for(anonymous)
        if limit is None:
            return {}
        remaining = max(0, limit - self.counted(source, now))
        return {
            "ratelimit-limit": f"{limit};w={self.window_s}",
            "ratelimit-remaining": f"{remaining};w={self.window_s}",
            "docker-ratelimit-source": source,
        }

    def reset(self) -> None:
        self.pulls.clear()
        self.gets.clear()
        self.heads.clear()

    def settings(self) -> dict[str, Any]:
        return {"limit": self.limit, "anonymous_limit": self.anonymous_limit, "window_s": self.window_s}


class DockerHubRegistryEmulator(RegistryEmulator):
    name = "dockerhub_registry"
    service = HUB_SERVICE
    token_path = "/token"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.grants = {}  # rights come from the Hub accounts, not from grants
        self.settings.bad_credentials_status = 401
        self.settings.insufficient_scope_status = 401
        self.limits = PullLimits()

    def seed_images(self) -> None:
        for reference in (*PRIVATE_IMAGES, *PUBLIC_IMAGES):
            self.store.seed_image(reference, "docker")

    @property
    def hub(self) -> Hub | None:
        api = self.ctx.peers.get("dockerhub_api")
        hub: Hub | None = getattr(api, "hub", None)
        return hub

    # -- Emulator protocol -----------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {"dockerhub_registry_realm": self.realm, "dockerhub_registry_service": self.service}

    def dump(self) -> dict[str, Any]:
        return {**super().dump(), "limits": self.limits.settings()}

    def load(self, data: dict[str, Any]) -> None:
        super().load(data)
        self.grants = {}
        raw = data.get("limits") or {}
        self.limits = PullLimits(**{k: v for k, v in raw.items() if k in ("limit", "anonymous_limit", "window_s")})

    # -- token service hooks -----------------------------------------------------------------------
    def _authenticate(self, credentials: tuple[str, str]) -> dict[str, Any] | None:
        """The Hub principal for Basic ``identifier:secret``, asked of the Hub accounts on every call."""
        hub = self.hub
        username, password = credentials
        principal = hub.sign_in(username, password) if hub is not None else None
        if principal is None:
            return None
        identity: dict[str, Any] = {"account": principal.account, "kind": principal.kind}
        if principal.token_id is not None:
            identity["token_id"] = principal.token_id
        if principal.created_at is not None:
            identity["created_at"] = principal.created_at
        return None if self._denied_as_new(identity) else identity

    def _access(self, identity: dict[str, Any] | None, scopes: list[Scope]) -> tuple[str, list[Scope]]:
        hub = self.hub
        if hub is None:
            return "", []
        principal = None
        if identity is not None:
            principal = Principal(
                account=str(identity["account"]), kind=str(identity["kind"]), token_id=identity.get("token_id")
            )
        grants = [
            Grant(scope.name, tuple(sorted(hub.actions(principal, scope.name))))
            for scope in scopes
            if scope.type == "repository"
        ]
        return (principal.account if principal else ""), intersect(scopes, grants)

    def _bad_credentials(self) -> web.Response:
        return web.json_response({"details": "incorrect username or password"}, status=401)

    # -- manifests: the pull rate limit ------------------------------------------------------------
    async def _manifest(self, request: web.Request, name: str, ref: str) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            return await super()._manifest(request, name, ref)
        now = time.time()
        source, anonymous = self._source(request)
        limit = self.limits.limit_for(anonymous)
        over = limit is not None and self.limits.counted(source, now) >= limit
        if request.method == "GET" and over:
            self.limits.gets[source] += 1
            headers = {**self.limits.headers(source, anonymous, now)}
            headers["Retry-After"] = str(self.limits.retry_after(source, now))
            return registry_error(429, "TOOMANYREQUESTS", PULL_LIMIT_MESSAGE, headers=headers)
        response = await super()._manifest(request, name, ref)
        if request.method == "GET":
            self.limits.gets[source] += 1
            if limit is not None:
                self.limits.pulls[source].append(now)
        else:
            self.limits.heads[source] += 1
        response.headers.update(self.limits.headers(source, anonymous, now))
        return response

    def _source(self, request: web.Request) -> tuple[str, bool]:
        """Whom a pull counts against: the token's subject, else the client address."""
        claims, _ = self._bearer(request)
        subject = str(claims.get("sub") or "") if claims else ""
        if subject:
            return subject, False
        return request.remote or "unknown", True

    # -- admin routes ----------------------------------------------------------------------------
    def admin_routes(self) -> list[web.RouteDef]:
        """Test controls (JSON; 400 ``{"error": ...}`` when malformed):

        - ``GET /dockerhub_registry/config``: realm, service, limits.
        - ``PUT /dockerhub_registry/rate-limit {"limit": n|null, "anonymous_limit": n|null, "window_s": s}``.
        - ``GET /dockerhub_registry/pulls``: manifest GETs and HEADs per source and in total, and the
          pulls counted in the current window; ``DELETE`` resets them.
        - ``POST /dockerhub_registry/deny-new-tokens {"enabled": true}``: tokens created after this moment
          fail at the token endpoint (older ones and passwords still pass); ``false`` lifts it.
        - ``POST /dockerhub_registry/images {"repository": "ns/repo:tag", "format": "oci"|"docker"}``; a new
          repository is private unless ``PUT /dockerhub_api/repositories`` says otherwise.
        - ``POST /dockerhub_registry/challenge`` as the sandbox registry's.
        """
        prefix = f"/{self.name}"
        return [
            web.get(f"{prefix}/config", self._admin_hub_config),
            web.put(f"{prefix}/rate-limit", self._admin_rate_limit),
            web.get(f"{prefix}/pulls", self._admin_pulls),
            web.delete(f"{prefix}/pulls", self._admin_reset_pulls),
            web.post(f"{prefix}/deny-new-tokens", self._admin_deny_new_keys),
            web.post(f"{prefix}/images", self._admin_add_image),
            web.post(f"{prefix}/challenge", self._admin_challenge),
        ]

    async def _admin_hub_config(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "realm": self.realm,
                "service": self.service,
                "limits": self.limits.settings(),
                "deny_tokens_created_after": self.settings.deny_keys_created_after,
            }
        )

    async def _admin_config(self, request: web.Request) -> web.Response:
        return await self._admin_hub_config(request)

    async def _admin_rate_limit(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise _bad_request("expected a JSON object")
        current = self.limits.settings()
        values = {k: body.get(k, current[k]) for k in current}
        if not all(v is None or _is_count(v) for k, v in values.items() if k != "window_s"):
            raise _bad_request('"limit" and "anonymous_limit" must be whole numbers >= 0 or null')
        if not _is_count(values["window_s"]) or values["window_s"] < 1:
            raise _bad_request('"window_s" must be a whole number >= 1')
        self.limits.limit, self.limits.anonymous_limit = values["limit"], values["anonymous_limit"]
        self.limits.window_s = values["window_s"]
        return await self._admin_hub_config(request)

    async def _admin_pulls(self, _: web.Request) -> web.Response:
        now = time.time()
        sources = sorted(set(self.limits.gets) | set(self.limits.heads))
        return web.json_response(
            {
                "get": sum(self.limits.gets.values()),
                "head": sum(self.limits.heads.values()),
                "sources": {
                    s: {
                        "get": self.limits.gets.get(s, 0),
                        "head": self.limits.heads.get(s, 0),
                        "counted": self.limits.counted(s, now),
                    }
                    for s in sources
                },
            }
        )

    async def _admin_reset_pulls(self, _: web.Request) -> web.Response:
        self.limits.reset()
        return web.Response(status=204)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")
