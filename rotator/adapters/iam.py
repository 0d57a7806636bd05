"""IBM Cloud IAM API keys of one service ID as a ``CredentialProvider``.

Ownership marker: a key is rotator's only when its name is ``rotator-<credential>-<rotation_id>``
AND its description carries ``managed-by=rotator credential=<credential> rotation=<rotation_id>``
with the same values AND it belongs to the configured service ID. Mutations GET the key first
and refuse (``NotOwnedError``) before any mutating request when it is not rotator's.

IBM publishes no length limit for API key names [UNCONFIRMED]; the credential (<= 63) and
rotation id (<= 64) limits below keep names at most 136 characters either way.

Every HTTP status maps to ``rotator.errors`` in ``error_for`` (the one place). Retries happen
only in ``RetryPolicy.call`` around one request (plus one token refresh on 401).
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx

from rotator.adapters import http, ownership
from rotator.errors import (
    LimitReachedError,
    NotFoundError,
    NotOwnedError,
    PermanentError,
    RotatorError,
    UnauthorizedError,
)
from rotator.faultpoint import boundary
from rotator.model import LOCKED_BY_ROTATOR, KeyInfo, MintedKey, SecretReader, SecretStr, secret_reader
from rotator.retrying import RetryPolicy

OWNED_PREFIX = "rotator-"
GRANT_APIKEY = "urn:ibm:params:oauth:grant-type:apikey"
GRANT_CR_TOKEN = "urn:ibm:params:oauth:grant-type:cr-token"
REFRESH_FRACTION = 0.8  # like the IBM SDK: refresh once 80 % of the lifetime has passed
MAX_PAGES = 1000
_CREDENTIAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_ROTATION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_TAG_RE = re.compile(r"(?:^|\s)managed-by=rotator credential=(\S+) rotation=(\S+)(?:\s|$)")
# IAM's key-limit answer (the sandbox's code; real wording unconfirmed, so the message is checked too).
_LIMIT_CODES = {"limit_exceeded"}
_LIMIT_WORDS = ("maximum number of api keys", "limit")


def key_name(credential: str, rotation_id: str) -> str:
    _validate(credential, rotation_id)
    return f"{OWNED_PREFIX}{credential}-{rotation_id}"


def key_tag(credential: str, rotation_id: str) -> str:
    _validate(credential, rotation_id)
    return f"managed-by=rotator credential={credential} rotation={rotation_id}"


def parse_marker(name: str, description: str) -> tuple[str, str] | None:
    """(credential, rotation_id) when both the name and the description tag say rotator made it."""
    match = _TAG_RE.search(description or "")
    if match is None:
        return None
    credential, rotation_id = match.group(1), match.group(2)
    if not (_CREDENTIAL_RE.fullmatch(credential) and _ROTATION_RE.fullmatch(rotation_id)):
        return None
    if name != f"{OWNED_PREFIX}{credential}-{rotation_id}":
        return None
    return credential, rotation_id


def _validate(credential: str, rotation_id: str) -> None:
    if not _CREDENTIAL_RE.fullmatch(credential):
        raise ValueError(f"credential name {credential!r} must match {_CREDENTIAL_RE.pattern}")
    if not _ROTATION_RE.fullmatch(rotation_id):
        raise ValueError(f"rotation id {rotation_id!r} must match {_ROTATION_RE.pattern}")


@dataclass(frozen=True)
class _Token:
    value: SecretStr
    refresh_at: float  # on the token source's clock


@dataclass(frozen=True)
class ProfileGrant:
    """Keyless sign-in: assume a trusted profile with a compute-resource token (IAM's ``cr-token``
    grant). ``cr_token`` is read for every sign-in: the platform rotates the projected token."""

    cr_token: SecretReader
    profile_id: str | None = None
    profile_name: str | None = None

    def form(self, token: SecretStr) -> dict[str, str]:
        form = {"grant_type": GRANT_CR_TOKEN, "cr_token": token.reveal()}
        if self.profile_id:
            form["profile_id"] = self.profile_id
        if self.profile_name:
            form["profile_name"] = self.profile_name
        return form


class IamTokenSource:
    """IAM access tokens for one API key or trusted profile: fetched on first use, cached, refreshed
    once 80 % of the lifetime has passed (like the IBM SDK). Thread-safe; every client calling IBM
    APIs as the same identity (the Identity API, Code Engine) can share one."""

    def __init__(
        self,
        *,
        base_url: str,
        apikey: SecretStr | SecretReader | ProfileGrant,
        client: httpx.Client,
        on_request: http.OnRequest | None = None,
        clock: Callable[[], float] = time.monotonic,  # when the cached token is due (tests pass a fake one)
    ) -> None:
        self._base = base_url.rstrip("/")
        self._profile = apikey if isinstance(apikey, ProfileGrant) else None
        self._read_apikey = apikey.cr_token if isinstance(apikey, ProfileGrant) else secret_reader(apikey)
        self._clock = clock
        self._apikey: SecretStr | None = None  # the key (or CR token) last used, for scrubbing
        self._client = client
        self._on_request = on_request
        self._token: _Token | None = None
        self._lock = threading.Lock()

    @property
    def secrets(self) -> list[SecretStr]:
        """The key and the cached token, for scrubbing error messages."""
        return [*([self._apikey] if self._apikey is not None else []), *([self._token.value] if self._token else [])]

    def token(self, *, force: bool = False) -> SecretStr:
        """A valid access token; ``force`` fetches a new one (after a 401)."""
        with self._lock:
            cached = self._token
            if force or cached is None or self._clock() >= cached.refresh_at:
                cached = self._token = self._fetch()
            return cached.value

    def _fetch(self) -> _Token:
        # Read the key for every new token: an admin key rotated in its mounted Secret takes effect without a restart.
        apikey = self._apikey = self._read_apikey()
        if self._profile is not None:
            form = self._profile.form(apikey)
        else:
            form = {"grant_type": GRANT_APIKEY, "apikey": apikey.reveal(), "response_type": "cloud_iam"}
        started = self._clock()
        response = http.send(
            self._client,
            self._on_request,
            "IAM",
            "token",
            "POST",
            self._base + "/identity/token",
            data=form,
            headers={"Accept": "application/json"},
        )
        if response.status_code != 200:
            raise error_for("token", response, [apikey])
        data = response.json()
        value, lifetime = data.get("access_token"), data.get("expires_in")
        if not isinstance(value, str) or not value or not isinstance(lifetime, int | float):
            raise PermanentError("token: IAM answered without access_token/expires_in")
        return _Token(value=SecretStr(value), refresh_at=started + REFRESH_FRACTION * float(lifetime))


NOUN = "API key"


class IamProvider:
    kind = "ibm-iam"
    identifies_values = True
    username = "iamapikey"

    def __init__(
        self,
        *,
        base_url: str,
        account_id: str,
        service_id: str,
        admin_apikey: SecretStr | SecretReader | ProfileGrant,
        client: httpx.Client | None = None,
        retry: RetryPolicy | None = None,
        on_request: http.OnRequest | None = None,
        page_size: int = 100,
        clock: Callable[[], float] = time.monotonic,  # when the cached IAM token is due (tests pass a fake one)
        key_lifetime: dt.timedelta | None = None,
        action_when_leaked: str | None = None,
        lock_current_key: bool = False,
    ) -> None:
        if not 1 <= page_size <= 100:
            raise ValueError("page_size must be 1..100 (IAM's pagesize range)")
        self._base = base_url.rstrip("/")
        self._account_id = account_id
        self._service_id = service_id
        self._iam_id = f"iam-{service_id}"
        self._own_client = client is None
        self._client = client or httpx.Client(timeout=httpx.Timeout(10.0, connect=5.0))
        self._retry = retry or RetryPolicy()
        self._on_request = on_request
        self._page_size = page_size
        self._key_lifetime = key_lifetime  # each minted key's expires_at is this far ahead; None: none
        self._action_when_leaked = action_when_leaked
        # Mint keys entity-locked (nobody deletes the current key by mistake); rotator unlocks its own
        # lock before it disables or deletes a key, and never a lock someone else set.
        self._lock = lock_current_key
        self.tokens = IamTokenSource(
            base_url=self._base, apikey=admin_apikey, client=self._client, on_request=on_request, clock=clock
        )

    def close(self) -> None:
        if self._own_client:
            self._client.close()

    # -- CredentialProvider ------------------------------------------------------------------------
    def mint(self, *, credential: str, rotation_id: str) -> MintedKey:
        body = {
            "name": key_name(credential, rotation_id),
            "iam_id": self._iam_id,
            "account_id": self._account_id,
            "description": f"Registry pull key rotated by rotator. {key_tag(credential, rotation_id)}",
            "store_value": False,
        }
        if self._key_lifetime is not None:
            body["expires_at"] = expires_at(dt.datetime.now(dt.UTC) + self._key_lifetime)
        if self._action_when_leaked is not None:
            body["action_when_leaked"] = self._action_when_leaked
        # A 5xx after IAM created the key would leave an orphan; it carries the marker, so the
        # orphan sweep finds and deletes it. Retrying the POST is therefore safe.
        headers = {"Entity-Lock": "true"} if self._lock else None
        data = self._call("mint", "POST", "/v1/apikeys", json=body, headers=headers, ok=(200, 201)).json()
        value = data.get("apikey") if isinstance(data, dict) else None
        if not isinstance(value, str) or not value:
            raise PermanentError("mint: IAM answered without the key value")
        info = self._key_info(data, operation="mint")
        if not info.owned:
            raise PermanentError(f"mint: key {info.id} came back without rotator's marker")
        return MintedKey(info=info, value=SecretStr(value))

    def list_owned(self, *, credential: str) -> list[KeyInfo]:
        """rotator's keys, but not one someone else locked: that lock says it is theirs to keep now."""
        owned = ownership.owned_by(self._list_keys(), credential, lambda k: parse_marker(k.name, k.description))
        return [k for k in owned if k.locked_by in (None, LOCKED_BY_ROTATOR)]

    def get(self, key_id: str) -> KeyInfo | None:
        try:
            # The history says who locked a locked key.
            response = self._call(
                "get", "GET", f"/v1/apikeys/{quote(key_id, safe='')}", params={"include_history": "true"}
            )
        except NotFoundError:
            return None
        return self._key_info(response.json(), operation="get")

    def identify(self, value: SecretStr) -> KeyInfo | None:
        """The key behind ``value``; None when IAM does not know it (404) or it belongs to an
        identity we may not manage (403: not one of the target service ID's keys)."""
        response = self._call(
            "identify",
            "GET",
            "/v1/apikeys/details",
            headers={"IAM-ApiKey": value.reveal()},
            ok=(200, 403, 404),
            secret=value,
        )
        if response.status_code != 200:
            return None
        return self._key_info(response.json(), operation="identify")

    def disable(self, key_id: str) -> None:
        info = self._unlocked(self._owned_or_refuse(key_id, "disable"), "disable")
        if not info.disabled:
            self._call("disable", "POST", f"/v1/apikeys/{quote(key_id, safe='')}/disable", ok=(204,))

    def enable(self, key_id: str) -> None:
        if self._owned_or_refuse(key_id, "enable").disabled:
            self._call("enable", "DELETE", f"/v1/apikeys/{quote(key_id, safe='')}/disable", ok=(204,))

    def delete(self, key_id: str) -> None:
        info = self.get(key_id)
        if info is None:
            return  # already gone
        self._refuse_unless_owned(info, "delete")
        self._unlocked(info, "delete")
        try:
            self._call("delete", "DELETE", f"/v1/apikeys/{quote(key_id, safe='')}", ok=(204,))
        except NotFoundError:
            return

    def check_access(self) -> None:
        try:
            self._call("check_access", "GET", f"/v1/serviceids/{quote(self._service_id, safe='')}")
        except NotFoundError:
            raise NotFoundError(f"check_access: service ID {self._service_id} not found in IAM") from None
        params = {"account_id": self._account_id, "iam_id": self._iam_id, "pagesize": "1"}
        self._call("check_access", "GET", "/v1/apikeys", params=params)

    def _unlocked(self, info: KeyInfo, operation: str) -> KeyInfo:
        """``info`` once rotator's own entity lock is removed; a lock someone else set is refused."""
        if info.locked_by is None:
            return info
        if info.locked_by != LOCKED_BY_ROTATOR:
            raise NotOwnedError(
                f"{operation}: {NOUN} {info.id} was locked by {info.locked_by}, not by rotator: not ours to unlock; "
                "whoever locked it keeps it (unlock it at IAM to let rotator retire it)"
            )
        self._call("unlock", "DELETE", f"/v1/apikeys/{quote(info.id, safe='')}/lock", ok=(204,))
        boundary("unlock:after")
        return replace(info, locked_by=None)

    # -- ownership ---------------------------------------------------------------------------------
    def _owned_or_refuse(self, key_id: str, operation: str) -> KeyInfo:
        return ownership.owned_or_refuse(self.get, key_id, operation, NOUN)

    @staticmethod
    def _refuse_unless_owned(info: KeyInfo, operation: str) -> None:
        ownership.refuse_unless_owned(info, operation, NOUN)

    def _key_info(self, data: Any, *, operation: str) -> KeyInfo:
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise PermanentError(f"{operation}: IAM answered with an unexpected body")
        name = str(data.get("name") or "")
        description = str(data.get("description") or "")
        marker = parse_marker(name, description)
        owned = marker is not None and data.get("iam_id") == self._iam_id
        return KeyInfo(
            locked_by=_locked_by(data),
            id=data["id"],
            name=name,
            description=description,
            created_at=_parse_time(data.get("created_at"), operation),
            disabled=bool(data.get("disabled")),
            expires_at=_parse_time(data["expires_at"], operation) if data.get("expires_at") else None,
            owned=owned,
            rotation_id=marker[1] if owned and marker else None,
        )

    def _list_keys(self) -> list[KeyInfo]:
        params = {
            "account_id": self._account_id,
            "iam_id": self._iam_id,
            "pagesize": str(self._page_size),
            "include_history": "true",  # who locked a locked key
        }
        keys: list[KeyInfo] = []
        seen_tokens: set[str] = set()
        for _ in range(MAX_PAGES):
            data = self._call("list", "GET", "/v1/apikeys", params=params).json()
            page = data.get("apikeys") if isinstance(data, dict) else None
            if not isinstance(page, list):
                raise PermanentError("list: IAM answered without an apikeys array")
            keys.extend(self._key_info(item, operation="list") for item in page)
            token = _next_page_token(data.get("next"))
            if token is None:
                return keys
            if token in seen_tokens:
                raise PermanentError("list: IAM returned the same page token twice")
            seen_tokens.add(token)
            params = {**params, "pagetoken": token}
        raise PermanentError(f"list: more than {MAX_PAGES} pages of API keys")

    # -- HTTP --------------------------------------------------------------------------------------
    def _call(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
        ok: Iterable[int] = (200,),
        secret: SecretStr | None = None,
    ) -> httpx.Response:
        """One Identity API request, retried by the policy; a 401 refreshes the token once."""
        scrub = [s for s in (secret,) if s is not None]

        def send_once(fresh: bool) -> httpx.Response:
            token = self.tokens.token(force=fresh)
            return http.send(
                self._client,
                self._on_request,
                "IAM",
                operation,
                method,
                self._base + path,
                params=params,
                json=json,
                headers=http.bearer_headers(token, headers),
            )

        return http.call_refreshing(
            self._retry,
            f"iam.{operation}",
            send_once,
            ok,
            lambda response: error_for(operation, response, [*self.tokens.secrets, *scrub]),
        )


def error_for(operation: str, response: httpx.Response, scrub: list[SecretStr]) -> RotatorError:
    """THE status mapping for IAM (token endpoint and Identity API); ``scrub`` values never show."""
    status = response.status_code
    code, raw_message = _iam_error(response)
    message = http.scrubbed(raw_message, scrub)
    text = f"IAM {operation}: HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
    retryable = http.retryable_error(status, text, lambda: http.retry_after_seconds(response))
    if retryable is not None:
        return retryable
    if status in (401, 403) or "BXNIM0415E" in code or (operation == "token" and status == 400):
        return UnauthorizedError(text)  # a 400 from the token service: it refused the key (deleted, disabled, wrong)
    if status == 404:
        return NotFoundError(text)
    lowered = message.lower()
    if set(code.split()) & _LIMIT_CODES or ("api key" in lowered and any(w in lowered for w in _LIMIT_WORDS)):
        return LimitReachedError(text)
    return PermanentError(text)


def _iam_error(response: httpx.Response) -> tuple[str, str]:
    """(code, message) from either IAM error shape."""
    try:
        body = response.json()
    except ValueError:
        return "", ""
    if not isinstance(body, dict):
        return "", ""
    errors = body.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        code = " ".join(str(first[k]) for k in ("code", "message_code") if first.get(k))
        return code, str(first.get("message") or "")
    if body.get("errorCode"):
        return str(body["errorCode"]), str(body.get("errorMessage") or "")
    return "", ""


def _next_page_token(next_url: Any) -> str | None:
    if not next_url:
        return None
    href = next_url.get("href") if isinstance(next_url, dict) else next_url
    tokens = parse_qs(urlsplit(str(href)).query).get("pagetoken")
    if not tokens:
        raise PermanentError("list: IAM's next link carries no pagetoken")
    return tokens[0]


def _locked_by(data: dict[str, Any]) -> str | None:
    """Who holds the entity lock: the identity of the last ``lock`` in the history, or, for a key locked
    from its creation (``Entity-Lock``), its creator. Either way it is rotator's own lock when that
    identity created the key (rotator's identity mints its keys)."""
    if not data.get("locked"):
        return None
    history = data.get("history")
    locks = (
        [h for h in history if isinstance(h, dict) and h.get("action") == "lock"] if isinstance(history, list) else []
    )
    holder = str(locks[-1].get("iam_id") or "") if locks else str(data.get("created_by") or "")
    return LOCKED_BY_ROTATOR if holder and holder == data.get("created_by") else (holder or "someone else")


def expires_at(when: dt.datetime) -> str:
    """IAM's ``expires_at`` format (``2049-01-02T18:30+0000``), rounded up to the whole minute so a key
    never expires before ``when``."""
    utc = when.astimezone(dt.UTC)
    if utc.second or utc.microsecond:
        utc = utc.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    return utc.strftime("%Y-%m-%dT%H:%M+0000")


def _parse_time(raw: Any, operation: str) -> dt.datetime:
    """IBM writes ``2020-10-16T10:36+0000``; any ISO 8601 form with an offset is accepted."""
    if not isinstance(raw, str):
        raise PermanentError(f"{operation}: IAM answered without a timestamp")
    try:
        parsed = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise PermanentError(f"{operation}: IAM timestamp {raw!r} is not ISO 8601") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
