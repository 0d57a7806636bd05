"""rotator's HTTP API: health, readiness, metrics, credential status and on-demand rotation.

An aiohttp application on its own thread and event loop, so it keeps answering whatever the
daemon's threads do; every call into the daemon (``DaemonControl``) and into the token authority
(``Authenticator``) runs on a small worker pool. Endpoints and their answers are in
``rotator/openapi.py`` (served at ``/openapi.json``); every JSON body read or sent goes through its
model in ``rotator/api_models.py``. Errors are always JSON ``{"error": ..., "detail"?: ...}``; a bug
answers 500 with a generic message and is logged, never a traceback. One ``http.request`` line is
logged per request (method, route template, status, principal, duration): never a header, so never
the bearer token.

Mutating endpoints are rate limited per principal (token bucket), charged only when a rotation is
started or joined (not for a bad body, a bad name, an unknown credential), and honour
``Idempotency-Key``: the same key from the same principal for the same credential answers the
rotation it first started (``joined: true``) for ``server.idempotency_ttl``, in a bounded LRU.

Tokens are checked only while the caller's address has failure budget left (``AUTH_FAILURE_BURST``,
refilled at ``AUTH_FAILURE_PER_MINUTE``): each check takes one unit and a token that proves valid
gives it back, so a client guessing tokens causes at most the burst of TokenReviews at once and then
gets 429 with ``Retry-After`` without any review being sent. The listener itself (malformed requests,
header timeout, TLS) is ``rotator/apitransport.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import re
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import ValidationError

from rotator import apitransport, logs, openapi, redact
from rotator.api_models import (
    ApiModel,
    CredentialList,
    Error,
    Health,
    LeakRequest,
    Ready,
    RequestModel,
    RotateRequest,
    Rotation,
    RotationAccepted,
)
from rotator.apiauth import Access, Authenticator, AuthUnavailable, Principal, build_authenticator
from rotator.errors import NotFoundError, RequestRefused, RotatorError, TransientError
from rotator.model import SecretStr
from rotator.ports import DaemonControl
from rotator.settings import ServerSettings, Settings

log = logs.get("rotator.api")
T = TypeVar("T")
R = TypeVar("R", bound=RequestModel)

MAX_BODY = 16 * 1024
REALM = 'Bearer realm="rotator"'
FOLLOWER_RETRY_AFTER = 5
UNAVAILABLE_RETRY_AFTER = 5
START_TIMEOUT_S = 10.0
IDEMPOTENCY_ENTRIES = 10_000
RATE_BUCKETS = 10_000
WORKERS = 8
# Per source address: ten tokens may be tried at once (a client with a few stale tokens recovers
# without waiting), then one every two seconds, so a guesser costs the apiserver 30 TokenReviews a minute.
AUTH_FAILURE_BURST = 10
AUTH_FAILURE_PER_MINUTE = 30.0
PRINCIPAL = web.RequestKey("principal", str)
_TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")  # RFC 6750 b64token
_IDEMPOTENCY_KEY = re.compile(openapi.IDEMPOTENCY_KEY_PATTERN)
_CREDENTIAL_NAME = re.compile(openapi.CREDENTIAL_NAME_PATTERN)


class ApiError(Exception):
    """An answer other than success, raised anywhere in a handler and rendered by the middleware."""

    def __init__(
        self,
        status: int,
        error: str,
        *,
        detail: Any = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(error)
        self.status, self.error, self.detail = status, error, detail
        self.headers = headers or {}
        self.extra = extra or {}

    def response(self) -> web.Response:
        body: dict[str, Any] = {"error": self.error, **self.extra}
        if self.detail is not None:
            body["detail"] = self.detail
        return _send(Error.model_validate(body), self.status, headers=self.headers)


def _send(model: ApiModel, status: int = 200, *, headers: dict[str, str] | None = None) -> web.Response:
    return _json(model.body(), status, headers=headers)


def _json(body: Any, status: int = 200, *, headers: dict[str, str] | None = None) -> web.Response:
    text = json.dumps(redact.clean_tree(body), default=str)
    return web.Response(text=text, status=status, content_type="application/json", headers=headers)


class RateLimiter:
    """A token bucket per principal: ``burst`` requests at once, refilled at ``per_minute``."""

    def __init__(self, per_minute: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, updated at

    def take(self, principal: str) -> float:
        """0 when the request may go ahead, else the seconds until it could."""
        tokens, now = self._level(principal)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._store(principal, tokens, now)
        return wait

    def refund(self, principal: str) -> None:
        """Give back what ``take`` charged for a request that turned out not to count."""
        tokens, now = self._level(principal)
        self._store(principal, min(self.burst, tokens + 1), now)

    def _level(self, principal: str) -> tuple[float, float]:
        now = self.clock()
        tokens, at = self._buckets.get(principal, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate), now

    def _store(self, principal: str, tokens: float, now: float) -> None:
        self._buckets[principal] = (tokens, now)
        self._buckets.move_to_end(principal)
        while len(self._buckets) > RATE_BUCKETS:
            self._buckets.popitem(last=False)


class IdempotencyStore:
    """(principal, credential, key) -> (rotation id, request fingerprint), for ``ttl`` seconds, LRU-bounded."""

    def __init__(self, ttl: float, clock: Callable[[], float], size: int = IDEMPOTENCY_ENTRIES) -> None:
        self.ttl, self.clock, self.size = ttl, clock, size
        self._items: OrderedDict[tuple[str, str, str], tuple[float, str, str]] = OrderedDict()

    def get(self, key: tuple[str, str, str]) -> tuple[str, str] | None:
        item = self._items.get(key)
        if item is None or item[0] <= self.clock():
            self._items.pop(key, None)
            return None
        return item[1], item[2]

    def put(self, key: tuple[str, str, str], rotation_id: str, fingerprint: str) -> None:
        self._items[key] = (self.clock() + self.ttl, rotation_id, fingerprint)
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


def _bearer(request: web.Request) -> SecretStr:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or not _TOKEN.match(token):
        raise ApiError(401, "a bearer token is required", headers={"WWW-Authenticate": REALM})
    return SecretStr(token)


class _ProtocolErrors(logging.Handler):
    """aiohttp's errors below the application (a request that does not parse) as one structured line.
    The exception text quotes the offending raw header line, which may be an Authorization header,
    so only its type is kept."""

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        log.warning("http.protocol_error", error=type(error).__name__ if error else record.levelname)


def _protocol_logger() -> logging.Logger:
    logger = logging.Logger("rotator.api.protocol", level=logging.WARNING)
    logger.propagate = False
    logger.addHandler(_ProtocolErrors())
    return logger


def _route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "(unmatched)"


class ApiServer:
    def __init__(
        self,
        control: DaemonControl,
        metrics_registry: CollectorRegistry,
        settings: ServerSettings,
        *,
        authenticator: Authenticator,
        clock: Callable[[], float] = time.monotonic,
        shutdown_timeout: float = 5.0,
        sock: socket.socket | None = None,
    ) -> None:
        self.control = control
        self.sock = sock  # bound before the daemon starts anything (a busy port stops start-up)
        self.registry = metrics_registry
        self.settings = settings
        self.authenticator = authenticator
        self.shutdown_timeout = shutdown_timeout
        self.limiter = RateLimiter(settings.rate_per_minute, settings.rate_burst, clock)
        self.auth_failures = RateLimiter(AUTH_FAILURE_PER_MINUTE, AUTH_FAILURE_BURST, clock)
        self.tls = apitransport.ReloadingTls(settings.tls.cert_file, settings.tls.key_file) if settings.tls else None
        self.idempotency = IdempotencyStore(settings.idempotency_ttl.total_seconds(), clock)
        self.document = openapi.document(metrics_public=settings.metrics_public)
        self.address: tuple[str, int] | None = None
        # Separate pools, so a hanging token authority cannot starve /healthz and /readyz.
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="rotator-api")
        self._auth_pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="rotator-api-auth")
        self._idempotency_lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> tuple[str, int]:
        """Listen on ``settings.listen``; returns the bound (host, port) once connections are accepted."""
        if self._thread is not None:
            raise RuntimeError("the API server was already started")
        self._thread = threading.Thread(target=self._run, name="rotator-api", daemon=True)
        self._thread.start()
        if not self._started.wait(START_TIMEOUT_S):
            raise RotatorError(f"the API server did not start listening on {self.settings.listen} in time")
        if self._start_error is not None:
            raise RotatorError(f"the API server cannot listen on {self.settings.listen}: {self._start_error}")
        assert self.address is not None
        log.info("api.listening", host=self.address[0], port=self.address[1])
        return self.address

    @property
    def url(self) -> str:
        assert self.address is not None
        host, port = self.address
        scheme = "https" if self.tls else "http"
        return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._listen())
        except Exception as exc:  # reported to start()'s caller
            self._start_error = exc
            loop.close()
            self._started.set()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _listen(self) -> None:
        self._idempotency_lock = asyncio.Lock()
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._middleware])
        app.on_response_prepare.append(apitransport.drop_server_banner)
        app.add_routes(
            [
                web.get("/healthz", self._healthz),  # HEAD too: load balancers probe with it
                web.get("/readyz", self._readyz, allow_head=False),
                web.get("/metrics", self._metrics, allow_head=False),
                web.get("/openapi.json", self._openapi, allow_head=False),
                web.get("/v1/credentials", self._list_credentials, allow_head=False),
                web.post("/v1/credentials/{name}/rotate", self._rotate),
                web.post("/v1/credentials/{name}/leaked", self._leaked),
                web.get("/v1/rotations/{id}", self._get_rotation, allow_head=False),
            ]
        )
        runner = apitransport.HardenedRunner(
            app,
            header_timeout=self.settings.header_timeout.total_seconds(),
            access_log=None,
            logger=_protocol_logger(),
            shutdown_timeout=self.shutdown_timeout,
        )
        await runner.setup()
        self._runner = runner
        ssl_context = self.tls.context if self.tls else None
        site: web.BaseSite
        if self.sock is not None:
            site = web.SockSite(runner, self.sock, ssl_context=ssl_context)
        else:
            site = web.TCPSite(
                runner, self.settings.host, self.settings.port, reuse_address=True, ssl_context=ssl_context
            )
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        bound = runner.addresses[0]
        self.address = (str(bound[0]), int(bound[1]))

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, let requests in flight finish (up to the shutdown timeout), then end the loop."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or self._start_error is not None or loop.is_closed():
            self._shutdown_pools()
            return
        budget = timeout if timeout is not None else self.shutdown_timeout + 2.0
        deadline = time.monotonic() + budget
        if self._runner is not None:
            future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop)
            try:
                future.result(timeout=budget)
            except Exception as exc:  # a stuck shutdown must not hang the daemon's own
                log.warning("api.stop_incomplete", error=type(exc).__name__)
        with contextlib.suppress(RuntimeError):  # the loop ended on its own meanwhile
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=max(0.1, deadline - time.monotonic()))
        self._shutdown_pools()
        log.info("api.stopped")

    # -- plumbing ---------------------------------------------------------------------------------
    def _shutdown_pools(self) -> None:
        for pool in (self._pool, self._auth_pool):
            pool.shutdown(wait=False, cancel_futures=True)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    async def _auth_call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._auth_pool, lambda: fn(*args))

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        started = time.perf_counter()
        response: web.StreamResponse
        try:
            response = await handler(request)
        except ApiError as exc:
            response = exc.response()
        except web.HTTPException as exc:  # routing (404, 405) and aiohttp's own body limit (413)
            response = self._http_error(exc)
        except Exception as exc:  # a bug: answer without a traceback, log the type only
            log.error("http.error", path=_route_template(request), error=type(exc).__name__)
            response = _send(Error(error="internal error"), 500)
        log.info(
            "http.request",
            method=request.method,
            path=_route_template(request),
            status=response.status,
            principal=request.get(PRINCIPAL),
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return response

    @staticmethod
    def _http_error(exc: web.HTTPException) -> web.Response:
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow",)}
        if exc.status == 413:
            return ApiError(413, f"the body is larger than {MAX_BODY} bytes").response()
        if exc.status == 404:
            return ApiError(404, "no such endpoint; see /openapi.json").response()
        if exc.status == 405:
            allowed = headers.get("Allow", "")
            return ApiError(405, "method not allowed", detail={"allowed": allowed}, headers=headers).response()
        return ApiError(exc.status, exc.reason, headers=headers).response()

    async def _authenticate(self, request: web.Request) -> Principal:
        token = _bearer(request)
        source = request.remote or ""
        wait = self.auth_failures.take(source)  # reserved before the check, so concurrent guesses count too
        if wait > 0:
            raise ApiError(429, "too many failed authentications from this address", headers=self._retry_after(wait))
        try:
            principal = await self._auth_call(self.authenticator.authenticate, token)
        except AuthUnavailable as exc:
            self.auth_failures.refund(source)
            raise self._unavailable(exc) from None
        if principal is None:
            raise ApiError(401, "invalid bearer token", headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'})
        self.auth_failures.refund(source)
        request[PRINCIPAL] = principal.name
        return principal

    async def _authorize(self, request: web.Request, access: Access) -> Principal:
        principal = await self._authenticate(request)
        await self._permit(principal, access)
        return principal

    def _unavailable(self, exc: AuthUnavailable) -> ApiError:
        headers = self._retry_after(UNAVAILABLE_RETRY_AFTER)
        return ApiError(503, "cannot check the token now", detail=str(exc), headers=headers)

    async def _permit(self, principal: Principal, access: Access) -> None:
        try:
            allowed = await self._auth_call(self.authenticator.authorize, principal, access)
        except AuthUnavailable as exc:
            raise self._unavailable(exc) from None
        if not allowed:
            what = f"{access.verb} {access.path}" if access.path else f"{access.verb} credentials"
            if access.credential:
                what += f"/{access.credential}"
            raise ApiError(403, f"{principal.name} may not {what}")

    @staticmethod
    def _retry_after(seconds: float) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(seconds)))}

    # -- health, metrics, document ----------------------------------------------------------------
    async def _healthz(self, _: web.Request) -> web.Response:
        try:
            alive = await self._call(self.control.alive)
        except Exception as exc:
            log.warning("api.alive_failed", error=type(exc).__name__)
            alive = False
        if not alive:
            raise ApiError(503, "not alive")
        return _send(Health(status="ok"))

    async def _readyz(self, _: web.Request) -> web.Response:
        try:
            conditions = dict(await self._call(self.control.readiness))
        except Exception as exc:
            raise ApiError(503, "not ready", detail={"error": type(exc).__name__}) from None
        failing = sorted(name for name, ok in conditions.items() if not ok)
        if failing:
            raise ApiError(503, "not ready", detail={"failing": failing, "conditions": conditions})
        return _send(Ready(status="ready", conditions=conditions))

    async def _metrics(self, request: web.Request) -> web.Response:
        if not self.settings.metrics_public:
            await self._authorize(request, Access(verb="get", path="/metrics"))
        body = await self._call(generate_latest, self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _openapi(self, _: web.Request) -> web.Response:
        return _json(self.document)

    # -- reads ------------------------------------------------------------------------------------
    async def _list_credentials(self, request: web.Request) -> web.Response:
        await self._authorize(request, Access(verb="list"))
        statuses = await self._call(self.control.credentials)
        return _send(CredentialList.model_validate({"credentials": statuses}))

    async def _get_rotation(self, request: web.Request) -> web.Response:
        rotation_id = request.match_info["id"]
        principal = await self._authenticate(request)
        rotation = None
        if len(rotation_id) <= openapi.ROTATION_ID_MAX:
            rotation = await self._call(self.control.rotation, rotation_id)
        # Authorized on the rotation's credential; an unknown id needs get on every credential,
        # so a caller limited to some credentials cannot probe for others' rotations.
        credential = str(rotation.get("credential", "")) if rotation else ""
        await self._permit(principal, Access(verb="get", credential=credential))
        if rotation is None:
            raise ApiError(404, "no rotation by that id")
        return _send(Rotation.model_validate(rotation))

    # -- rotation requests ------------------------------------------------------------------------
    async def _rotate(self, request: web.Request) -> web.Response:
        return await self._request_rotation(request, leaked=False)

    async def _leaked(self, request: web.Request) -> web.Response:
        return await self._request_rotation(request, leaked=True)

    async def _request_rotation(self, request: web.Request, *, leaked: bool) -> web.Response:
        name = request.match_info["name"]
        principal = await self._authorize(request, Access(verb="rotate", credential=name))
        body = await _read_body(request, LeakRequest if leaked else RotateRequest)
        fields = body.body()
        key = _idempotency_key(request)
        if len(name) > 253 or not _CREDENTIAL_NAME.match(name):
            raise ApiError(404, "no credential by that name")
        is_leader, holder = await self._call(self.control.leader)
        if not is_leader:
            raise ApiError(
                503,
                "not the leader",
                extra={"leader": holder},
                headers=self._retry_after(FOLLOWER_RETRY_AFTER),
            )
        fingerprint = hashlib.sha256(json.dumps([leaked, fields], sort_keys=True).encode()).hexdigest()
        # Charged here, once the request is well-formed; given back when it starts or joins nothing.
        wait = self.limiter.take(principal.name)
        if wait > 0:
            raise ApiError(429, "too many rotation requests", headers=self._retry_after(wait))
        assert self._idempotency_lock is not None
        try:
            # One at a time with a key, so two racing requests with the same key cannot both start one.
            async with self._idempotency_lock if key else contextlib.nullcontext():
                rotation_id, joined, replay = await self._start_or_replay(
                    principal, name, key, fingerprint, fields, leaked
                )
        except ApiError:
            self.limiter.refund(principal.name)
            raise
        log.info(
            "api.rotation_requested",
            credential=name,
            principal=principal.name,
            rotation_id=rotation_id,
            joined=joined,
            replay=replay,
            emergency=leaked,
            leaked_key_id=fields.get("key_id"),
        )
        url = f"/v1/rotations/{rotation_id}"
        accepted = RotationAccepted(rotation_id=rotation_id, credential=name, joined=joined, status_url=url)
        return _send(accepted, 202, headers={"Location": url})

    async def _start_or_replay(
        self, principal: Principal, name: str, key: str | None, fingerprint: str, fields: dict[str, Any], leaked: bool
    ) -> tuple[str, bool, bool]:
        slot = (principal.name, name, key or "")
        if key:
            previous = self.idempotency.get(slot)
            if previous is not None:
                if previous[1] != fingerprint:
                    raise ApiError(422, "this Idempotency-Key was used with a different request")
                return previous[0], True, True
        reason = fields.get("reason") or ("key reported leaked" if leaked else "requested through the API")
        try:
            rotation_id, joined = await self._call(
                self.control.request_rotation,
                name,
                reason=f"{reason} (by {principal.name})",
                emergency=leaked,
                leaked_key_id=fields.get("key_id"),
                principal=principal.name,
                idempotency_key=key or "",
                fingerprint=fingerprint,
            )
        except NotFoundError:
            raise ApiError(404, f"no credential named {name!r}") from None
        except RequestRefused as exc:
            raise ApiError(422, str(exc)) from None
        except TransientError as exc:
            raise ApiError(
                503, "cannot queue the rotation now", detail=str(exc), headers=self._retry_after(5)
            ) from None
        if key:
            self.idempotency.put(slot, rotation_id, fingerprint)
        return rotation_id, joined, False


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.match(key):
        raise ApiError(400, "Idempotency-Key must be 1 to 255 visible ASCII characters")
    return key


async def _read_body(request: web.Request, model: type[R]) -> R:
    """The optional JSON object body, validated by ``model`` (an empty body is an empty object)."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, f"the body is larger than {MAX_BODY} bytes")
    raw = await request.read()
    if not raw:
        return model()
    content_type = request.content_type
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise ApiError(415, "the body must be application/json", detail={"content_type": content_type})
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _refusal(model, list(data), exc) from None


def _refusal(model: type[RequestModel], sent: list[str], exc: ValidationError) -> ApiError:
    """The 400 for a body the model refused: unknown fields first (listed with the allowed ones), else every
    bad field in the order sent, each with its rule. Never the value: a reason may quote a secret."""
    bad = {str(e["loc"][0]): e["type"] for e in exc.errors(include_url=False, include_input=False) if e["loc"]}
    unknown = sorted(name for name, kind in bad.items() if kind == "extra_forbidden")
    if unknown:
        allowed = list(model.model_fields)
        return ApiError(
            400, f"unknown fields: {', '.join(unknown)}", detail={"unknown_fields": unknown, "allowed": allowed}
        )
    return ApiError(400, "; ".join(model.rule(name) for name in sent if name in bad) or "the body is invalid")


def start_server(
    control: DaemonControl,
    metrics_registry: CollectorRegistry,
    settings: Settings,
    *,
    api_client: Any = None,
    authenticator: Authenticator | None = None,
    sock: socket.socket | None = None,
) -> ApiServer:
    """Start the API with ``authenticator`` (default: built from ``settings.server.auth``) on ``sock`` (default:
    bind ``server.listen``): the daemon's entry point, which loads and binds both before starting anything."""
    if authenticator is None:
        if settings.server.auth.mode == "kubernetes" and api_client is None:
            from rotator.adapters.kubernetes import api_client as kube_client

            api_client = kube_client(settings.kubernetes)
        authenticator = build_authenticator(settings.server.auth, api_client=api_client)
    server = ApiServer(control, metrics_registry, settings.server, authenticator=authenticator, sock=sock)
    server.start()
    return server
