"""Prove that a registry credential pulls: ``GET /v2/``, one token for every repository, ``HEAD`` each manifest.

Outcomes of ``RegistryVerifier.verify`` (``VerifyResult.outcome``):

- ``ok``: every image's manifest ``HEAD`` answered 200.
- ``rejected``: the credential itself is refused: 400/401/403 at the token endpoint (ICR answers 400 for a
  bad ``iamapikey``/key pair), or 401/403 on a manifest with a fresh token or Basic credentials (the key is
  valid but has no pull rights there). A rotation rolls back on this.
- ``inconclusive``: the check says nothing about the credential, so a rotation neither rolls back nor
  promotes: an unknown image (404; a configuration problem: a typo in the image list must not undo a good
  key), a malformed challenge (a registry problem), 5xx, timeouts, connection errors, 429 past the budget.

Requests: one ping per registry (cached ``ping_ttl_s``), one token request naming every repository of the
check (cached per registry, user, password fingerprint and scope set for the token's lifetime), then one
``HEAD`` per image. Never a manifest or blob ``GET``. Retries (408/429/5xx, connection errors) honour
``Retry-After`` and share one time budget per check; a wait that does not fit the budget ends the check
as inconclusive at once rather than sleeping to the deadline (so ``rotator.retrying`` is not used here:
its budget is per call and it sleeps out what is left).

Nothing here puts a password or token in a key, a log line or a detail: cache keys carry an HMAC of the
password under a per-process random key.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import hashlib
import hmac
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import structlog

from rotator import redact, wwwauth
from rotator.adapters.registry_wire import (
    KNOWN_REALM_HOSTS,
    MANIFEST_ACCEPT,
    RETRYABLE,
    Quota,
    Verdict,
    backoff_delay,
    classify_manifest,
    classify_ping,
    classify_token,
    error_summary,
    host_of,
    one_line,
    parse_ratelimit,
    parse_retry_after,
    parse_token_reply,
    realm_refusal,
)
from rotator.imageref import ImageRef, ImageRefError, is_loopback, normalize_host, parse_image, registry_for_server
from rotator.model import RegistryAuth, SecretStr, VerifyResult

__all__ = ["OnRequest", "Quota", "RegistryVerifier"]

log = structlog.get_logger("rotator.registry")

# on_request(registry, method, status): status is the HTTP status as text, or "error" without a response.
OnRequest = Callable[[str, str, str], None]

DEFAULT_BUDGET_S = 60.0
DEFAULT_MAX_ATTEMPTS = 4
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_PING_TTL_S = 300.0
_TOKEN_CACHE_LIMIT = 256


class _Stop(Exception):
    """Ends a check early with its outcome; never leaves this module."""

    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail


@dataclass
class _Ping:
    challenge: wwwauth.AuthChallenge | None  # None: the registry asked for no credentials
    expires_at: float


@dataclass
class _Token:
    value: SecretStr
    scopes: frozenset[str]
    expires_at: float


@dataclass
class _Check:
    """One ``verify`` call: where it goes, its deadline and how many requests it made."""

    registry: str
    base: str
    auth: RegistryAuth
    deadline: float
    requests: int = 0
    challenge: wwwauth.AuthChallenge | None = None
    authorization: str | None = None  # the Authorization header value for HEADs, None when anonymous
    token_from_cache: bool = False
    reauthorized: bool = False
    missing: list[str] = field(default_factory=list)


class RegistryVerifier:
    """``rotator.ports.RegistryVerifier`` over the registry v2 API (ICR, Docker Hub, any distribution)."""

    def __init__(
        self,
        *,
        client: httpx.Client | None = None,
        budget_s: float = DEFAULT_BUDGET_S,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        endpoint_overrides: Mapping[str, str] | None = None,
        hosts: Mapping[str, str] | None = None,
        on_request: OnRequest | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        request_timeout_s: float = DEFAULT_TIMEOUT_S,
        ping_ttl_s: float = DEFAULT_PING_TTL_S,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        rng: random.Random | None = None,
        token_realm_hosts: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        """``endpoint_overrides`` (alias ``hosts``) maps a registry host or server key to a base URL.

        Without an override a registry is reached over https, except loopback hosts (127.0.0.0/8,
        localhost, ::1), which Docker treats as plain-HTTP registries.

        The credential goes only to a token realm on the registry's own host (or its endpoint's), a token
        service the registry is known to use, or a host ``token_realm_hosts`` lists for that registry.
        """
        if budget_s <= 0 or max_attempts < 1:
            raise ValueError("budget_s must be > 0 and max_attempts >= 1")
        self._own_client = client is None
        self._client = client or httpx.Client(timeout=request_timeout_s)
        self._budget_s = budget_s
        self._sleep = sleep
        self._clock = clock
        self._now = now
        self._rng = rng or random.Random()  # jitter only
        self._max_attempts = max_attempts
        self._timeout_s = request_timeout_s
        self._ping_ttl_s = ping_ttl_s
        self._on_request = on_request
        overrides = {**(hosts or {}), **(endpoint_overrides or {})}
        self._overrides = {registry_for_server(k): v.rstrip("/") for k, v in overrides.items()}
        self._realm_hosts: dict[str, frozenset[str]] = {}
        for server, hosts_ in (token_realm_hosts or {}).items():
            registry = registry_for_server(server)
            listed = frozenset(h.lower() for h in hosts_)
            self._realm_hosts[registry] = self._realm_hosts.get(registry, frozenset()) | listed
        self._fingerprint_key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._pings: dict[str, _Ping] = {}
        self._tokens: dict[tuple[str, ...], list[_Token]] = {}
        self._quotas: dict[str, Quota] = {}
        self.request_counts: Counter[tuple[str, str, str]] = Counter()

    # -- public --------------------------------------------------------------------------------

    def verify(self, *, server: str, auth: RegistryAuth, images: Sequence[str]) -> VerifyResult:
        wanted = tuple(dict.fromkeys(images))
        redact.register(auth.password)  # a server may echo it, in any encoding, in what ends up in a detail
        registry = ""
        check: _Check | None = None
        try:
            registry = registry_for_server(server)
            refs = self._parse_images(registry, wanted)
            check = _Check(
                registry=registry,
                base=self.base_url(registry),
                auth=auth,
                deadline=self._clock() + self._budget_s,
            )
            outcome, detail = self._run(check, refs)
        except ImageRefError as exc:
            outcome, detail = "inconclusive", f"cannot check: {exc}"
        except _Stop as stop:
            outcome, detail = stop.outcome, stop.detail
            if outcome == "inconclusive" and check is not None:
                self._forget_ping(check.base)  # a registry problem: the next check looks afresh
        # Last guard: a server may echo what it was sent; the detail goes to logs and the journal.
        authorization = (check.authorization or "") if check else ""
        bearer = authorization.removeprefix("Bearer ") if authorization.startswith("Bearer ") else ""
        detail = redact.clean(detail, extra=[auth.password, bearer])
        requests = check.requests if check else 0
        log.info(
            "registry.verified",
            registry=registry or server[:80],
            outcome=outcome,
            images=len(wanted),
            requests=requests,
            detail=detail,
        )
        return VerifyResult(outcome=outcome, detail=detail, requests=requests, images=wanted)

    def quota(self, registry: str) -> Quota | None:
        """The last pull quota the registry announced (``ratelimit-*`` headers), None if it never did."""
        with self._lock:
            return self._quotas.get(registry_for_server(registry))

    def base_url(self, registry: str) -> str:
        host = normalize_host(registry)
        if host in self._overrides:
            return self._overrides[host]
        return f"{'http' if is_loopback(host) else 'https'}://{host}"

    def close(self) -> None:
        if self._own_client:
            self._client.close()

    def __enter__(self) -> RegistryVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the check -----------------------------------------------------------------------------

    def _parse_images(self, registry: str, images: Sequence[str]) -> list[tuple[str, ImageRef]]:
        if not images:
            raise ImageRefError("no images to check")
        refs = []
        for text in images:
            ref = parse_image(text)
            if ref.registry != registry:
                raise ImageRefError(f"image {text[:80]!r} is on {ref.registry}, not on {registry}")
            refs.append((text, ref))
        return refs

    def _run(self, check: _Check, refs: list[tuple[str, ImageRef]]) -> tuple[str, str]:
        check.challenge = self._ping(check)
        repos = sorted({ref.repository for _, ref in refs})
        check.authorization = self._authorization(check, check.challenge, repos, fresh=False)
        for text, ref in refs:
            self._check_image(check, repos, text, ref)
        if check.missing:
            return "inconclusive", one_line(
                f"unknown on {check.registry}: {'; '.join(check.missing)}; check the image list "
                "(the credential was not refused, so nothing is rolled back or promoted)",
                400,
            )
        if check.challenge is None:
            how = "anonymously (the registry asked for no credentials)"
        else:
            how = f"as {_who(check)}"
        return "ok", f"{len(refs)} image(s) on {check.registry} answered HEAD 200 {how}"

    def _check_image(self, check: _Check, repos: list[str], text: str, ref: ImageRef) -> None:
        response = self._head(check, ref, text)
        verdict = classify_manifest(response.status_code)
        if verdict is Verdict.REJECTED and not check.reauthorized and self._reauthorize(check, response, repos):
            # A cached token may have lapsed early, or an anonymous registry may challenge per repository:
            # once per check, try again with fresh credentials before calling the credential bad.
            response = self._head(check, ref, text)
            verdict = classify_manifest(response.status_code)
        if verdict is Verdict.OK:
            return
        if verdict is Verdict.MISSING:
            check.missing.append(f"{text} (HEAD 404{_reason(response)})")
            return
        if verdict is Verdict.REJECTED:
            raise _Stop(
                "rejected",
                f"HEAD {text} answered {response.status_code}{_reason(response)} for {_who(check)}: "
                "the credential is refused or has no pull rights there",
            )
        raise _Stop("inconclusive", f"HEAD {text} answered {response.status_code}{_reason(response)}")

    def _reauthorize(self, check: _Check, response: httpx.Response, repos: list[str]) -> bool:
        """Fresh credentials for the rest of the check; False when there is nothing fresher to try."""
        check.reauthorized = True
        if check.challenge is None and response.status_code == 401:
            check.challenge = self._challenge_of(check, response, "HEAD")
            self._remember_ping(check.base, check.challenge)
        elif not (isinstance(check.challenge, wwwauth.BearerChallenge) and check.token_from_cache):
            return False
        check.authorization = self._authorization(check, check.challenge, repos, fresh=True)
        return True

    # -- ping ----------------------------------------------------------------------------------

    def _ping(self, check: _Check) -> wwwauth.AuthChallenge | None:
        with self._lock:
            cached = self._pings.get(check.base)
        if cached is not None and cached.expires_at > self._clock():
            return cached.challenge
        response = self._send(check, "GET", f"{check.base}/v2/", what=f"GET /v2/ on {check.registry}")
        verdict = classify_ping(response.status_code)
        if verdict is Verdict.ANONYMOUS:
            challenge = None
        elif verdict is Verdict.CHALLENGE:
            challenge = self._challenge_of(check, response, "GET /v2/")
        else:
            raise _Stop(
                "inconclusive",
                f"GET /v2/ on {check.registry} answered {response.status_code}{_reason(response)}: "
                "not a usable registry v2 API",
            )
        self._remember_ping(check.base, challenge)
        return challenge

    def _challenge_of(self, check: _Check, response: httpx.Response, what: str) -> wwwauth.AuthChallenge:
        try:
            return wwwauth.parse(response.headers.get_list("www-authenticate") or None)
        except wwwauth.ChallengeError as exc:
            raise _Stop(
                "inconclusive",
                f"{what} on {check.registry}: malformed auth challenge ({exc}); a registry problem, "
                "the credential was not tried",
            ) from None

    def _remember_ping(self, base: str, challenge: wwwauth.AuthChallenge | None) -> None:
        with self._lock:
            self._pings[base] = _Ping(challenge=challenge, expires_at=self._clock() + self._ping_ttl_s)

    def _forget_ping(self, base: str) -> None:
        with self._lock:
            self._pings.pop(base, None)

    # -- credentials ---------------------------------------------------------------------------

    def _authorization(
        self, check: _Check, challenge: wwwauth.AuthChallenge | None, repos: list[str], *, fresh: bool
    ) -> str | None:
        if challenge is None:
            return None
        if isinstance(challenge, wwwauth.BasicChallenge):
            return _basic(check.auth)
        scopes = frozenset(f"repository:{repo}:pull" for repo in repos)
        key = self._token_key(check, challenge)
        token = None if fresh else self._cached_token(key, scopes)
        check.token_from_cache = token is not None
        if token is None:
            token = self._fetch_token(check, challenge, scopes)
            self._store_token(key, token)
        return f"Bearer {token.value.reveal()}"

    def _token_key(self, check: _Check, challenge: wwwauth.BearerChallenge) -> tuple[str, ...]:
        password = check.auth.password.reveal().encode()
        fingerprint = hmac.new(self._fingerprint_key, password, hashlib.sha256).hexdigest()
        return (check.registry, challenge.realm, challenge.service or "", check.auth.username, fingerprint)

    def _cached_token(self, key: tuple[str, ...], scopes: frozenset[str]) -> _Token | None:
        now = self._clock()
        with self._lock:
            for token in self._tokens.get(key, []):
                if token.expires_at > now and scopes <= token.scopes:
                    return token
        return None

    def _store_token(self, key: tuple[str, ...], token: _Token) -> None:
        now = self._clock()
        with self._lock:
            if len(self._tokens) >= _TOKEN_CACHE_LIMIT:
                self._tokens = {k: v for k, v in self._tokens.items() if any(t.expires_at > now for t in v)}
                while len(self._tokens) >= _TOKEN_CACHE_LIMIT:
                    self._tokens.pop(next(iter(self._tokens)))
            live = [t for t in self._tokens.get(key, []) if t.expires_at > now and not t.scopes <= token.scopes]
            self._tokens[key] = [*live, token]

    def _fetch_token(self, check: _Check, challenge: wwwauth.BearerChallenge, scopes: frozenset[str]) -> _Token:
        where = urlsplit(challenge.realm).netloc.rpartition("@")[2]  # host[:port], never user-info
        refusal = realm_refusal(challenge.realm, check.registry, self._realm_hosts_allowed(check))
        if refusal is not None:
            raise _Stop(*refusal)
        params = [("service", challenge.service)] if challenge.service else []
        params += [("scope", scope) for scope in sorted(scopes)]
        params.append(("account", check.auth.username))
        # Merged, not replaced: a realm may carry its own query.
        url = str(httpx.URL(challenge.realm).copy_merge_params(tuple(params)))
        headers = {"Authorization": _basic(check.auth), "Accept": "application/json"}
        response = self._send(check, "GET", url, headers=headers, what=f"token request to {where}")
        verdict = classify_token(response.status_code)
        if verdict is Verdict.REJECTED:
            raise _Stop(
                "rejected",
                f"token endpoint {where} refused {_who(check)}: {response.status_code}{_reason(response, body=True)}",
            )
        if verdict is not Verdict.OK:
            raise _Stop(
                "inconclusive",
                f"token endpoint {where} answered {response.status_code}{_reason(response, body=True)}",
            )
        try:
            reply = parse_token_reply(response.content)
        except ValueError as exc:
            raise _Stop("inconclusive", f"{exc} ({where})") from None
        margin = min(30.0, reply.expires_in * 0.1)  # renew a little early: clocks and transit differ
        return _Token(value=SecretStr(reply.token), scopes=scopes, expires_at=self._clock() + reply.expires_in - margin)

    def _realm_hosts_allowed(self, check: _Check) -> frozenset[str]:
        own = {host_of(check.registry), host_of(check.base)}
        known = KNOWN_REALM_HOSTS.get(check.registry, frozenset())
        return frozenset(own) | known | self._realm_hosts.get(check.registry, frozenset())

    # -- manifests -----------------------------------------------------------------------------

    def _head(self, check: _Check, ref: ImageRef, text: str) -> httpx.Response:
        headers = {"Accept": MANIFEST_ACCEPT}
        if check.authorization:
            headers["Authorization"] = check.authorization
        url = f"{check.base}/v2/{ref.repository}/manifests/{ref.reference}"
        return self._send(check, "HEAD", url, headers=headers, what=f"HEAD {text}")

    # -- transport -----------------------------------------------------------------------------

    def _send(
        self,
        check: _Check,
        method: str,
        url: str,
        *,
        what: str,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """The first non-retryable response; retries within the attempts and the check's budget."""
        attempt = 0
        while True:
            attempt += 1
            remaining = check.deadline - self._clock()
            if remaining <= 0:
                raise _Stop("inconclusive", f"{what}: the {self._budget_s:g} s budget is used up")
            timeout = min(self._timeout_s, remaining)
            try:
                response = self._client.request(
                    method,
                    url,
                    headers=headers,
                    timeout=timeout,
                    follow_redirects=True,
                )
            except httpx.TransportError as exc:
                self._count(check, method, "error")
                problem, wait = f"{_transport_problem(exc)}", None
            else:
                for hop in (*response.history, response):
                    self._count(check, method, str(hop.status_code), hop.headers)
                if response.status_code not in RETRYABLE:
                    return response
                problem = f"{response.status_code}{_reason(response, body=method != 'HEAD')}"
                wait = parse_retry_after(response.headers.get("retry-after"), now=self._server_now(response))
            self._wait_or_stop(check, what, attempt, problem, wait)

    def _wait_or_stop(self, check: _Check, what: str, attempt: int, problem: str, retry_after: float | None) -> None:
        if attempt >= self._max_attempts:
            raise _Stop("inconclusive", f"{what}: {problem} after {attempt} attempts")
        if retry_after is not None:
            delay = retry_after + retry_after * 0.1 * self._rng.random()
        else:
            delay = backoff_delay(attempt, unit=self._rng.random())
        left = check.deadline - self._clock()
        if delay > left:
            said = f"Retry-After {retry_after:g} s" if retry_after is not None else f"a {delay:.1f} s backoff"
            raise _Stop(
                "inconclusive",
                f"{what}: {problem}; {said} does not fit the {max(left, 0):.1f} s left of the "
                f"{self._budget_s:g} s budget (attempt {attempt})",
            )
        log.warning(
            "retry.attempt",
            operation="registry.verify",
            registry=check.registry,
            step=what,
            attempt=attempt,
            wait=round(delay, 3),
            error=problem,
        )
        self._sleep(delay)

    def _server_now(self, response: httpx.Response) -> dt.datetime:
        """The server's clock from its Date header (an HTTP-date Retry-After is relative to it)."""
        date = response.headers.get("date")
        if date:
            try:
                parsed = email.utils.parsedate_to_datetime(date)
                return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
            except (TypeError, ValueError, IndexError):
                pass
        return self._now()

    def _count(self, check: _Check, method: str, status: str, headers: httpx.Headers | None = None) -> None:
        check.requests += 1
        with self._lock:
            self.request_counts[(check.registry, method, status)] += 1
            quota = parse_ratelimit(headers) if headers is not None else None
            if quota is not None:
                self._quotas[check.registry] = quota
        if self._on_request is not None:
            try:
                self._on_request(check.registry, method, status)
            except Exception:  # a metrics hook must not break a pull check
                log.exception("registry.on_request_failed", registry=check.registry)


def _basic(auth: RegistryAuth) -> str:
    pair = f"{auth.username}:{auth.password.reveal()}".encode()
    return "Basic " + base64.b64encode(pair).decode()


def _who(check: _Check) -> str:
    return f"user {check.auth.username!r}"


def _reason(response: httpx.Response, *, body: bool = True) -> str:
    """`` (CODE: message)`` from the body or the challenge's ``error`` parameter; "" when none."""
    parts = []
    summary = error_summary(response.content) if body and response.content else ""
    if summary:
        parts.append(summary)
    header = response.headers.get("www-authenticate")
    if header:
        try:
            error = next((c.get("error") for c in wwwauth.parse_challenges(header) if c.get("error")), None)
        except wwwauth.ChallengeError:
            error = None
        if error:
            parts.append(f"error={one_line(error, 40)}")
    return f" ({'; '.join(parts)})" if parts else ""


def _transport_problem(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    return f"unreachable ({type(exc).__name__})"
