"""IBM Cloud IAM emulator: the token endpoint and the Identity API v1 (API keys, service IDs).

Follows ``protocols.md`` §1-2. Where IBM's behaviour is unconfirmed the emulator picks one
and says so here (the adapter in ``rotator/adapters/iam.py`` relies only on what is listed):

- Token endpoint errors use IAM's own shape (``errorCode``/``errorMessage``/``context``), status
  400: ``BXNIM0415E`` unknown, disabled, deleted or expired key; ``BXNIM0109E`` missing field;
  ``BXNIM0106E`` bad ``grant_type``/``response_type``. Wrong method: 405 in the same shape.
- Identity API errors use the API-handbook shape ``{"errors":[{code, message_code, message,
  details?}], "status_code", "trace"}``. ``message_code`` is a real, observed code where one is
  known (``BXNIM0102E`` not found, ``BXNIM0109E`` missing, ``BXNIM0106E`` invalid); otherwise a
  placeholder ``BXNIM9<status>E`` (chosen to look synthetic).
- ``PUT`` without ``If-Match``: 400. Stale ``If-Match``: **409** ``conflict``.
- Locked key on update/delete: **409** ``entity_locked`` (disable/enable stay allowed: IBM says a
  lock prevents update and delete).
- Key limit (default 20 live keys per identity, disabled ones count): **400** ``limit_exceeded``.
- Authorization: an identity manages its own keys; the seeded admin service ID also manages the
  target service ID's keys; anything else 403, as is an ``account_id`` of another account.
- An access token stays valid until it expires even after its key is deleted (IBM documents this).
- ``created_at``/``modified_at`` use IBM's minute precision (``2024-05-01T10:36+0000``).
- GET and list answer ``"apikey": ""`` unless the key was created with ``store_value: true``
  (the Go SDK dereferences the field, so it is present).
- ``expires_at`` is accepted with or without seconds (``2049-01-02T18:30+0000``,
  ``2049-01-02T18:30:00+0000``) and echoed as sent.
- ``filter`` on both lists: see ``iam_filter`` (``co`` is what the SDK uses; the rest [UNCONFIRMED]).
  ``group_id`` is not emulated: 400 rather than a silent wrong answer.
- Service IDs: a caller may update, lock, unlock and delete a service ID it created (the seeded ones
  are nobody's to change); deleting one deletes its API keys. Locked: 409 ``entity_locked``.
- Trusted profiles (seeded, plus ``POST /iam/profiles`` on the admin port) with compute-resource
  links ``{cr_type: IKS_SA, crn, namespace, name}``. The ``cr-token`` grant verifies the token as the
  sandbox Kubernetes emulator issued it (signature, issuer, audience ``iam``, expiry) and matches
  its namespace and service account against the named profile's links. Every refusal is 400 in the
  token shape [UNCONFIRMED codes]: ``BXNIM0109E`` missing field, ``BXNIM0106E`` a token that does
  not verify, ``BXNIM0102E`` unknown profile, ``BXNIM0124E`` no link of the profile matches.
- ``POST /iam/keys/{id}/leaked`` (admin) does what IAM does when it finds a key in a public leak:
  applies the key's ``action_when_leaked`` (``disable``, ``delete`` or nothing).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs, urlencode

import jwt
from aiohttp import web

from rotator.sandbox import iam_filter, ibm_common, kube_tokenrequest
from rotator.sandbox.base import Context, read_json
from rotator.sandbox.ibm_common import Caller

GRANT_APIKEY = "urn:ibm:params:oauth:grant-type:apikey"
GRANT_CR_TOKEN = "urn:ibm:params:oauth:grant-type:cr-token"
# The audience IBM documents for the projected service-account token an IKS/ROKS pod signs in with.
CR_TOKEN_AUDIENCE = "iam"
DEFAULT_TOKEN_LIFETIME_S = 3600
DEFAULT_KEY_LIMIT = 20
MAX_NAME_LEN = 1024  # IBM publishes no limit for key names [UNCONFIRMED]; keep one so huge names fail
EXPIRES_AT_FORMATS = ("%Y-%m-%dT%H:%M%z", "%Y-%m-%dT%H:%M:%S%z")
# What a list ``filter`` may name, per list.
KEY_FILTER_FIELDS = ("name", "description", "id", "iam_id", "created_by", "action_when_leaked")
SERVICE_ID_FILTER_FIELDS = ("name", "description", "id", "iam_id")

# Real message codes for the situations where one has been observed (protocols.md §1.3, §2.3).
_KNOWN_MESSAGE_CODES = {"not_found": "BXNIM0102E", "missing": "BXNIM0109E", "invalid": "BXNIM0106E"}
_CODE_FOR_STATUS = {**ibm_common.HANDBOOK_CODES, 409: "conflict"}
_TOKEN_MESSAGES: dict[ibm_common.TokenProblem, str] = {
    "missing": "Authorization header missing or not a Bearer token.",
    "invalid": "Provided authorization token is not valid or has expired.",
    "not_iam": "Provided token is not an IAM access token.",
}


class IamApiError(ibm_common.HandbookError):
    """An Identity API error; ``kind`` picks a real IAM message code where one is known."""

    codes = _CODE_FOR_STATUS

    def __init__(self, status: int, message: str, *, code: str | None = None, kind: str | None = None) -> None:
        super().__init__(status, message, code=code)
        self.message_code = _KNOWN_MESSAGE_CODES.get(kind or "", f"BXNIM9{status:03d}E")


class TokenError(Exception):
    """A token-endpoint error to answer in IAM's token shape."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def _missing(what: str) -> IamApiError:
    return IamApiError(400, f"Property missing or empty. Property: {what}", kind="missing")


def _invalid(what: str) -> IamApiError:
    return IamApiError(400, f"Property validation failed. {what}", kind="invalid")


async def _object_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON body, which IAM's create and update calls take only as an object."""
    body = await read_json(request)
    if not isinstance(body, dict):
        raise _invalid("The request body must be a JSON object.")
    return body


def _wire_time(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M+0000", time.gmtime(ts))


def parse_expires_at(value: str) -> dt.datetime | None:
    """The instant an ``expires_at`` names, in either format IAM takes; None when it is neither."""
    for fmt in EXPIRES_AT_FORMATS:
        try:
            return dt.datetime.strptime(value, fmt)
        except ValueError:
            continue
    return None


def _history_entry(actor: str, account_id: str, action: str, message: str, now: float) -> dict[str, Any]:
    return {
        "timestamp": _wire_time(now),
        "iam_id": actor,
        "iam_id_account": account_id,
        "action": action,
        "params": [],
        "message": message,
    }


@dataclass(kw_only=True)
class ApiKeyRecord:
    id: str
    seq: int
    name: str
    description: str | None
    iam_id: str
    account_id: str
    value: str
    created_by: str
    created_at: float
    modified_at: float
    version: int = 1
    locked: bool = False
    disabled: bool = False
    deleted: bool = False
    store_value: bool = False
    expires_at: str | None = None
    action_when_leaked: str = "none"
    support_sessions: bool = False
    authn_count: int = 0
    last_authn: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def entity_tag(self) -> str:
        digest = hashlib.sha256(f"{self.id}:{self.version}".encode()).hexdigest()[:32]
        return f"{self.version}-{digest}"

    def expired(self, now: float) -> bool:
        when = parse_expires_at(self.expires_at) if self.expires_at else None
        return when is not None and when.timestamp() <= now

    def live(self, now: float) -> bool:
        """May this key get a token?"""
        return not (self.deleted or self.disabled or self.expired(now))

    def touch(self, actor: str, account_id: str, action: str, message: str) -> None:
        now = time.time()
        self.version += 1
        self.modified_at = now
        self.history.append(_history_entry(actor, account_id, action, message, now))

    def to_wire(self, *, with_value: bool = False, history: bool = False, activity: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "entity_tag": self.entity_tag,
            "crn": f"crn:v1:bluemix:public:iam-identity::a/{self.account_id}::apikey:{self.id}",
            "locked": self.locked,
            "disabled": self.disabled,
            "created_at": _wire_time(self.created_at),
            "created_by": self.created_by,
            "modified_at": _wire_time(self.modified_at),
            "name": self.name,
            "support_sessions": self.support_sessions,
            "action_when_leaked": self.action_when_leaked,
            "iam_id": self.iam_id,
            "account_id": self.account_id,
            "apikey": self.value if (with_value or self.store_value) else "",
        }
        if self.description is not None:
            body["description"] = self.description
        if self.expires_at:
            body["expires_at"] = self.expires_at
        if history:
            body["history"] = list(self.history)
        if activity:
            body["activity"] = {"authn_count": self.authn_count}
            if self.last_authn is not None:
                body["activity"]["last_authn"] = _wire_time(self.last_authn)
        return body

    def admin_view(self) -> dict[str, Any]:
        """Everything but the value, for test invariants."""
        view = self.to_wire(activity=True)
        view.pop("apikey")
        view["deleted"] = self.deleted
        view["description"] = self.description
        return view


@dataclass(kw_only=True)
class ServiceIdRecord:
    id: str
    name: str
    account_id: str
    description: str = ""
    created_at: float = field(default_factory=time.time)
    modified_at: float | None = None
    created_by: str = ""  # empty for the seeded service IDs: nobody's to change
    unique_instance_crns: list[str] = field(default_factory=list)
    version: int = 1
    locked: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def iam_id(self) -> str:
        return f"iam-{self.id}"

    @property
    def entity_tag(self) -> str:
        digest = hashlib.sha256(f"{self.id}:{self.version}".encode()).hexdigest()[:32]
        return f"{self.version}-{digest}"

    def touch(self, actor: str, account_id: str, action: str, message: str) -> None:
        now = time.time()
        self.version += 1
        self.modified_at = now
        self.history.append(_history_entry(actor, account_id, action, message, now))

    def to_wire(self, *, history: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "iam_id": self.iam_id,
            "entity_tag": self.entity_tag,
            "crn": f"crn:v1:bluemix:public:iam-identity::a/{self.account_id}::serviceid:{self.id}",
            "locked": self.locked,
            "created_at": _wire_time(self.created_at),
            "modified_at": _wire_time(self.modified_at or self.created_at),
            "account_id": self.account_id,
            "name": self.name,
            "description": self.description,
            "unique_instance_crns": list(self.unique_instance_crns),
        }
        if history:
            body["history"] = list(self.history)
        return body


@dataclass(kw_only=True)
class TrustedProfileRecord:
    """A trusted profile and its compute-resource links (``cr_type``, ``crn``, ``namespace``, ``name``)."""

    id: str
    name: str
    account_id: str
    links: list[dict[str, str]] = field(default_factory=list)

    @property
    def iam_id(self) -> str:
        return f"iam-{self.id}"

    def admits(self, cluster_crn: str, namespace: str, service_account: str) -> bool:
        wanted = {"cr_type": "IKS_SA", "crn": cluster_crn, "namespace": namespace, "name": service_account}
        return any(all(link.get(k) == v for k, v in wanted.items()) for link in self.links)


_H = TypeVar("_H", bound=Callable[..., Awaitable[web.Response]])


def _api(handler: _H) -> _H:
    """Answer ``IamApiError`` in the handbook shape."""

    @functools.wraps(handler)
    async def wrapper(self: IamEmulator, *args: Any) -> web.Response:
        try:
            return await handler(self, *args)
        except IamApiError as exc:
            return self.api_error(exc)

    return cast(_H, wrapper)


class IamEmulator:
    name = "iam"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        seed = ctx.seed
        self.base_url: str = ctx.urls.get("iam", "http://127.0.0.1")
        self.account_id: str = seed.account_id
        self.token_lifetime_s = DEFAULT_TOKEN_LIFETIME_S
        self.key_limit = DEFAULT_KEY_LIMIT
        self.keys: dict[str, ApiKeyRecord] = {}
        self._seq = 0
        self.service_ids: dict[str, ServiceIdRecord] = {}
        self.target_iam_id = f"iam-{seed.service_id}"
        self.admin_iam_id = f"iam-{seed.admin_service_id}"
        for sid, name, description in (
            (seed.service_id, seed.service_name, "pulls images from the registry; keys rotated by rotator"),
            (seed.admin_service_id, "rotator-admin", "rotator's own identity"),
            (seed.outsider_service_id, "outsider", "an identity with no rights on registry-puller"),
        ):
            self.service_ids[sid] = ServiceIdRecord(
                id=sid, name=name, account_id=self.account_id, description=description
            )
        self.profiles: dict[str, TrustedProfileRecord] = {}
        # Identities that manage the target service ID's keys: rotator's admin service ID and its
        # trusted profile (the keyless way in).
        self.managers = {self.admin_iam_id}
        self._seed_profile()
        self._seed_key(self.admin_iam_id, "rotator-admin-key", seed.admin_apikey)
        self._seed_key(f"iam-{seed.outsider_service_id}", "outsider-key", seed.outsider_apikey)
        for name, value in seed.foreign_apikeys.items():
            self._seed_key(self.target_iam_id, name, value)

    # -- state -------------------------------------------------------------------------------------
    def _seed_profile(self) -> None:
        seed = self.ctx.seed
        namespace, account = seed.trusted_profile_link
        self.add_profile(
            seed.trusted_profile_id,
            seed.trusted_profile_name,
            [{"namespace": namespace, "name": account}],
            manager=True,
        )

    def add_profile(
        self, profile_id: str, name: str, links: list[dict[str, str]], *, manager: bool
    ) -> TrustedProfileRecord:
        """A trusted profile whose links name service accounts of the sandbox cluster."""
        crn = self.ctx.seed.cluster_crn
        record = TrustedProfileRecord(
            id=profile_id,
            name=name,
            account_id=self.account_id,
            links=[{"cr_type": "IKS_SA", "crn": crn, **link} for link in links],
        )
        self.profiles[profile_id] = record
        if manager:
            self.managers.add(record.iam_id)
        return record

    def _seed_key(self, iam_id: str, name: str, value: str) -> ApiKeyRecord:
        return self._add_key(name=name, description=f"seeded key {name}", iam_id=iam_id, value=value, created_by=iam_id)

    def _add_key(self, *, name: str, description: str | None, iam_id: str, value: str, created_by: str) -> ApiKeyRecord:
        self._seq += 1
        now = time.time()
        record = ApiKeyRecord(
            id=f"ApiKey-{uuid.uuid4()}",
            seq=self._seq,
            name=name,
            description=description,
            iam_id=iam_id,
            account_id=self.account_id,
            value=value,
            created_by=created_by,
            created_at=now,
            modified_at=now,
        )
        record.history.append(_history_entry(created_by, self.account_id, "create", "API key created", now))
        self.keys[record.id] = record
        return record

    def key_for_value(self, value: str) -> ApiKeyRecord | None:
        """The key (live or not, even deleted) whose value this is."""
        if not value:
            return None
        for record in self.keys.values():
            if secrets.compare_digest(record.value, value):
                return record
        return None

    def authenticate_apikey(self, value: str) -> dict[str, Any] | None:
        """The identity behind a live, enabled key (for peers such as the registry token service)."""
        record = self.key_for_value(value)
        now = time.time()
        if record is None or not record.live(now):
            return None
        record.authn_count += 1
        record.last_authn = now
        return {
            "iam_id": record.iam_id,
            "service_id": record.iam_id.removeprefix("iam-"),
            "account_id": record.account_id,
            "key_id": record.id,
            "key_name": record.name,
            "created_at": dt.datetime.fromtimestamp(record.created_at, dt.UTC).isoformat(),
        }

    def dump(self) -> dict[str, Any]:
        return {
            "token_lifetime_s": self.token_lifetime_s,
            "key_limit": self.key_limit,
            "seq": self._seq,
            "keys": [asdict(k) for k in self.keys.values()],
            "service_ids": [asdict(s) for s in self.service_ids.values()],
            "profiles": [asdict(p) for p in self.profiles.values()],
            "managers": sorted(self.managers),
        }

    def load(self, data: dict[str, Any]) -> None:
        self.token_lifetime_s = int(data.get("token_lifetime_s", DEFAULT_TOKEN_LIFETIME_S))
        self.key_limit = int(data.get("key_limit", DEFAULT_KEY_LIMIT))
        self._seq = int(data.get("seq", 0))
        self.keys = {k["id"]: ApiKeyRecord(**k) for k in data.get("keys", [])}
        self.service_ids = {s["id"]: ServiceIdRecord(**s) for s in data.get("service_ids", [])}
        if "profiles" in data:
            self.profiles = {p["id"]: TrustedProfileRecord(**p) for p in data["profiles"]}
            self.managers = set(data.get("managers", [self.admin_iam_id]))

    def describe(self) -> dict[str, Any]:
        foreign = set(self.ctx.seed.foreign_apikeys)
        ids = {k.name: k.id for k in self.keys.values() if k.iam_id == self.target_iam_id and k.name in foreign}
        seed = self.ctx.seed
        namespace, account = seed.trusted_profile_link
        return {
            "foreign_apikey_ids": ids,
            "outsider_service_id": seed.outsider_service_id,
            "trusted_profile_id": seed.trusted_profile_id,
            "trusted_profile_name": seed.trusted_profile_name,
            "trusted_profile_namespace": namespace,
            "trusted_profile_service_account": account,
            "cr_token_audience": CR_TOKEN_AUDIENCE,
        }

    # -- wire helpers ------------------------------------------------------------------------------
    def api_error(self, exc: IamApiError) -> web.Response:
        return self._handbook(exc.status, exc.code, exc.message_code, exc.message)

    def _handbook(
        self, status: int, code: str, message_code: str, message: str, headers: dict[str, str] | None = None
    ) -> web.Response:
        error = {"code": code, "message_code": message_code, "message": message}
        return ibm_common.handbook_response(status, error, trace_header="Transaction-Id", headers=headers)

    def error_response(self, status: int, message: str, *, retry_after: int | None = None) -> web.Response:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        code = _CODE_FOR_STATUS.get(status, "error")
        kind = "not_found" if status == 404 else ""
        message_code = _KNOWN_MESSAGE_CODES.get(kind, f"BXNIM9{status:03d}E")
        return self._handbook(status, code, message_code, message, headers)

    def _token_error(self, request: web.Request, exc: TokenError) -> web.Response:
        now = dt.datetime.now(dt.UTC)
        stamp = now.strftime("%d.%m.%Y %H:%M:%S:") + f"{now.microsecond // 1000:03d} UTC"
        body = {
            "errorCode": exc.code,
            "errorMessage": exc.message,
            "context": {
                "requestId": uuid.uuid4().hex,
                "requestType": "incoming.Identity_Token",
                "userAgent": request.headers.get("User-Agent", ""),
                "url": self.base_url,
                "instanceId": "sandbox",
                "threadId": "1",
                "host": "sandbox",
                "startTime": stamp,
                "endTime": stamp,
                "elapsedTime": "0",
                "locale": "en_US",
                "clusterName": "iam-id-sandbox",
            },
        }
        return web.json_response(body, status=exc.status, headers={"ibm-cloud-service-name": "iam-identity"})

    # -- routes ------------------------------------------------------------------------------------
    def setup(self, app: web.Application) -> None:
        app.router.add_route("*", "/identity/token", self.token)
        app.router.add_get("/identity/keys", self.jwks)
        app.router.add_get("/v1/apikeys", self.list_keys)
        app.router.add_post("/v1/apikeys", self.create_key)
        app.router.add_get("/v1/apikeys/details", self.key_details)
        app.router.add_get("/v1/apikeys/{id}", self.get_key)
        app.router.add_put("/v1/apikeys/{id}", self.update_key)
        app.router.add_delete("/v1/apikeys/{id}", self.delete_key)
        for flag in ("lock", "disable"):
            app.router.add_post(f"/v1/apikeys/{{id}}/{flag}", functools.partial(self.set_flag, flag, True))
            app.router.add_delete(f"/v1/apikeys/{{id}}/{flag}", functools.partial(self.set_flag, flag, False))
        for path in ("/v1/serviceids/", "/v1/serviceids"):
            app.router.add_get(path, self.list_service_ids)
            app.router.add_post(path, self.create_service_id)
        app.router.add_get("/v1/serviceids/{id}", self.get_service_id)
        app.router.add_put("/v1/serviceids/{id}", self.update_service_id)
        app.router.add_delete("/v1/serviceids/{id}", self.delete_service_id)
        app.router.add_post("/v1/serviceids/{id}/lock", functools.partial(self.lock_service_id, True))
        app.router.add_delete("/v1/serviceids/{id}/lock", functools.partial(self.lock_service_id, False))

    # -- token endpoint ----------------------------------------------------------------------------
    async def token(self, request: web.Request) -> web.Response:
        try:
            if request.method != "POST":
                raise TokenError("BXNIM0106E", f"Method {request.method} is not supported.", 405)
            form = await _read_form(request)
            return web.json_response(self._issue(form.get("grant_type", ""), form))
        except TokenError as exc:
            return self._token_error(request, exc)

    def _issue(self, grant_type: str, form: dict[str, str]) -> dict[str, Any]:
        if not grant_type:
            raise TokenError("BXNIM0109E", "Property missing or empty. Property: grant_type")
        if grant_type == GRANT_CR_TOKEN:
            return self._issue_for_profile(self._profile_for_cr_token(form))
        if grant_type != GRANT_APIKEY:
            raise TokenError("BXNIM0106E", "Property validation failed. Property: grant_type")
        response_type = form.get("response_type")
        if response_type is not None and response_type != "cloud_iam":
            raise TokenError("BXNIM0106E", "Property validation failed. Property: response_type")
        value = form.get("apikey", "")
        if not value:
            raise TokenError("BXNIM0109E", "Property missing or empty. Property: apikey")
        identity = self.authenticate_apikey(value)
        if identity is None:
            raise TokenError("BXNIM0415E", "Provided API key could not be found.")
        service = self.service_ids.get(identity["service_id"])
        name = service.name if service else identity["service_id"]
        return self._access_token(identity["service_id"], name, "ServiceId", GRANT_APIKEY)

    def _issue_for_profile(self, profile: TrustedProfileRecord) -> dict[str, Any]:
        return self._access_token(profile.id, profile.name, "Profile", GRANT_CR_TOKEN)

    def _profile_for_cr_token(self, form: dict[str, str]) -> TrustedProfileRecord:
        """The profile a compute-resource token may assume, or the token-shaped refusal."""
        cr_token = form.get("cr_token", "")
        if not cr_token:
            raise TokenError("BXNIM0109E", "Property missing or empty. Property: cr_token")
        profile_id, profile_name = form.get("profile_id", ""), form.get("profile_name", "")
        if not profile_id and not profile_name:
            raise TokenError("BXNIM0109E", "Property missing or empty. Property: profile_id or profile_name")
        matches = [
            p
            for p in self.profiles.values()
            if (not profile_id or p.id == profile_id) and (not profile_name or p.name == profile_name)
        ]
        if not matches:
            raise TokenError("BXNIM0102E", "Unable to find object. Object type: profile")
        try:
            claims = kube_tokenrequest.verify(self.ctx.signer, cr_token, CR_TOKEN_AUDIENCE)
        except jwt.PyJWTError as exc:
            raise TokenError("BXNIM0106E", f"Property validation failed. Property: cr_token ({exc})") from None
        where = claims.get("kubernetes.io") or {}
        namespace = str(where.get("namespace", "")) if isinstance(where, dict) else ""
        account = where.get("serviceaccount") if isinstance(where, dict) else None
        account_name = str(account.get("name", "")) if isinstance(account, dict) else ""
        for profile in matches:
            if profile.admits(self.ctx.seed.cluster_crn, namespace, account_name):
                return profile
        raise TokenError(
            "BXNIM0124E",
            f"The compute resource {namespace}/{account_name} is not linked to the trusted profile.",
        )

    def _access_token(self, subject: str, name: str, sub_type: str, grant_type: str) -> dict[str, Any]:
        now = int(time.time())
        exp = now + self.token_lifetime_s
        claims = {
            "iam_id": f"iam-{subject}",
            "id": f"iam-{subject}",
            "realmid": "iam",
            "jti": uuid.uuid4().hex,
            "identifier": subject,
            "name": name,
            "sub": subject,
            "sub_type": sub_type,
            "account": {"valid": True, "bss": self.account_id},
            "iat": now,
            "exp": exp,
            "iss": f"{self.base_url}/identity",
            "grant_type": grant_type,
            "scope": "ibm openid",
            "client_id": "default",
            "acr": 1,
            "amr": ["pwd"],
        }
        return {
            "access_token": self.ctx.signer.sign(claims, x5c=False),
            "refresh_token": "not_supported",
            "token_type": "Bearer",
            "expires_in": self.token_lifetime_s,
            "expiration": exp,
            "scope": "ibm openid",
        }

    async def jwks(self, _: web.Request) -> web.Response:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.ctx.signer.key.public_key(), as_dict=True)
        jwk.update(kid=self.ctx.signer.kid, alg="RS256", use="sig")
        return web.json_response({"keys": [jwk]})

    # -- authentication and authorization ---------------------------------------------------------
    def _caller(self, request: web.Request) -> Caller:
        try:
            return ibm_common.iam_caller(request, self.ctx.signer)
        except ibm_common.BearerError as exc:
            raise IamApiError(401, _TOKEN_MESSAGES[exc.problem]) from None

    def _may_manage(self, caller: Caller, iam_id: str) -> bool:
        if caller.iam_id == iam_id:
            return True
        return caller.iam_id in self.managers and iam_id == self.target_iam_id

    def _check_manage(self, caller: Caller, iam_id: str, account_id: str) -> None:
        if account_id != caller.account_id:
            raise IamApiError(403, "You are not authorized to access this account.")
        if not self._may_manage(caller, iam_id):
            raise IamApiError(403, f"You are not authorized to manage API keys of {iam_id}.")

    def _key(self, caller: Caller, key_id: str) -> ApiKeyRecord:
        record = self.keys.get(key_id)
        if record is None or record.deleted:
            raise IamApiError(404, f"Unable to find object. Object type: apikey, id: {key_id}", kind="not_found")
        self._check_manage(caller, record.iam_id, record.account_id)
        return record

    # -- API keys ----------------------------------------------------------------------------------
    @_api
    async def list_keys(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        query = _ListQuery.parse(request, caller)
        if query.filters.get("group_id"):
            raise _invalid("group_id is not supported by the sandbox emulator.")
        account_id = query.filters.get("account_id") or caller.account_id
        if account_id != caller.account_id:
            raise IamApiError(403, "You are not authorized to access this account.")
        scope = query.filters.get("scope") or "entity"
        if scope not in ("entity", "account"):
            raise _invalid("Property: scope")
        iam_id = query.filters.get("iam_id")
        if iam_id:
            self._check_manage(caller, iam_id, account_id)
        selected = [k for k in self.keys.values() if not k.deleted and k.account_id == account_id]
        if iam_id:
            selected = [k for k in selected if k.iam_id == iam_id]
        elif scope == "entity":
            selected = [k for k in selected if k.iam_id == caller.iam_id]
        else:
            selected = [k for k in selected if self._may_manage(caller, k.iam_id)]
        key_type = query.filters.get("type")
        if key_type not in (None, "", "user", "serviceid"):
            raise _invalid("Property: type")
        if key_type == "user":
            selected = []
        matches = _filter(query, KEY_FILTER_FIELDS)
        selected = query.sort([k for k in selected if matches(k.to_wire())])
        history = request.query.get("include_history") == "true"
        page, body = query.page(selected, self.base_url + "/v1/apikeys")
        body["apikeys"] = [k.to_wire(history=history) for k in page]
        return web.json_response(body)

    @_api
    async def create_key(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        body = await _object_body(request)
        name, iam_id = body.get("name"), body.get("iam_id")
        if not isinstance(name, str) or not name.strip():
            raise _missing("name")
        if not isinstance(iam_id, str) or not iam_id:
            raise _missing("iam_id")
        if len(name) > MAX_NAME_LEN:
            raise _invalid(f"Property: name (at most {MAX_NAME_LEN} characters)")
        options = _create_options(body, request)
        self._check_manage(caller, iam_id, body.get("account_id") or caller.account_id)
        record = self._mint(caller, iam_id, name, body.get("description"), options)
        return web.json_response(record.to_wire(with_value=True), status=201, headers={"ETag": record.entity_tag})

    def _mint(
        self, caller: Caller, iam_id: str, name: str, description: str | None, options: dict[str, Any]
    ) -> ApiKeyRecord:
        live = sum(1 for k in self.keys.values() if k.iam_id == iam_id and not k.deleted)
        if live >= self.key_limit:
            raise IamApiError(
                400,
                f"The maximum number of API keys ({self.key_limit}) for {iam_id} has been reached.",
                code="limit_exceeded",
            )
        value = options.pop("apikey", None) or secrets.token_urlsafe(33)[:44]
        if self.key_for_value(value) is not None:
            raise IamApiError(409, "The provided API key value is already in use.")
        record = self._add_key(name=name, description=description, iam_id=iam_id, value=value, created_by=caller.iam_id)
        for attr, val in options.items():
            setattr(record, attr, val)
        return record

    @_api
    async def key_details(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        value = request.headers.get("IAM-ApiKey", "")
        if not value:
            raise _missing("IAM-ApiKey header")
        record = self.key_for_value(value)
        if record is None or record.deleted:
            raise IamApiError(404, "Unable to find object. Object type: apikey", kind="not_found")
        self._check_manage(caller, record.iam_id, record.account_id)
        history = request.query.get("include_history") == "true"
        return web.json_response(record.to_wire(history=history), headers={"ETag": record.entity_tag})

    @_api
    async def get_key(self, request: web.Request) -> web.Response:
        record = self._key(self._caller(request), request.match_info["id"])
        body = record.to_wire(
            history=request.query.get("include_history") == "true",
            activity=request.query.get("include_activity") == "true",
        )
        return web.json_response(body, headers={"ETag": record.entity_tag})

    @_api
    async def update_key(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        record = self._key(caller, request.match_info["id"])
        body = await _update_body(request, record, "API key")
        changes = _update_options(body)
        for attr, val in changes.items():
            setattr(record, attr, val)
        record.touch(caller.iam_id, caller.account_id, "update", "API key updated")
        return web.json_response(record.to_wire(), headers={"ETag": record.entity_tag})

    @_api
    async def delete_key(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        record = self._key(caller, request.match_info["id"])
        if record.locked:
            raise IamApiError(409, f"API key {record.id} is locked.", code="entity_locked")
        record.deleted = True
        record.touch(caller.iam_id, caller.account_id, "delete", "API key deleted")
        return web.Response(status=204)

    @_api
    async def set_flag(self, flag: str, value: bool, request: web.Request) -> web.Response:
        caller = self._caller(request)
        record = self._key(caller, request.match_info["id"])
        attr = "locked" if flag == "lock" else "disabled"
        if getattr(record, attr) != value:
            setattr(record, attr, value)
            action = flag if value else {"lock": "unlock", "disable": "enable"}[flag]
            record.touch(caller.iam_id, caller.account_id, action, f"API key {action}d")
        return web.Response(status=204)

    # -- service IDs -------------------------------------------------------------------------------
    @_api
    async def list_service_ids(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        query = _ListQuery.parse(request, caller)
        account_id = query.filters.get("account_id")
        if not account_id:
            raise _missing("account_id")
        if account_id != caller.account_id:
            raise IamApiError(403, "You are not authorized to access this account.")
        selected = [s for s in self.service_ids.values() if s.account_id == account_id]
        name = query.filters.get("name")
        if name:
            selected = [s for s in selected if s.name == name]
        matches = _filter(query, SERVICE_ID_FILTER_FIELDS)
        selected = [s for s in selected if matches(s.to_wire())]
        page, body = query.page(sorted(selected, key=lambda s: (s.created_at, s.id)), self.base_url + "/v1/serviceids/")
        history = request.query.get("include_history") == "true"
        body["serviceids"] = [s.to_wire(history=history) for s in page]
        return web.json_response(body)

    def _service_id(self, caller: Caller, service_id: str) -> ServiceIdRecord:
        record = self.service_ids.get(service_id)
        if record is None:
            raise IamApiError(404, "Unable to find object. Object type: serviceid", kind="not_found")
        if record.account_id != caller.account_id:
            raise IamApiError(403, "You are not authorized to access this account.")
        return record

    def _own_service_id(self, caller: Caller, service_id: str) -> ServiceIdRecord:
        record = self._service_id(caller, service_id)
        if record.created_by != caller.iam_id:
            raise IamApiError(403, f"You are not authorized to manage service ID {record.id}.")
        return record

    @_api
    async def get_service_id(self, request: web.Request) -> web.Response:
        record = self._service_id(self._caller(request), request.match_info["id"])
        body = record.to_wire(history=request.query.get("include_history") == "true")
        return web.json_response(body, headers={"ETag": record.entity_tag})

    @_api
    async def create_service_id(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        body = await _object_body(request)
        name, account_id = body.get("name"), body.get("account_id")
        if not isinstance(account_id, str) or not account_id:
            raise _missing("account_id")
        if not isinstance(name, str) or not name.strip():
            raise _missing("name")
        if len(name) > MAX_NAME_LEN:
            raise _invalid(f"Property: name (at most {MAX_NAME_LEN} characters)")
        if account_id != caller.account_id:
            raise IamApiError(403, "You are not authorized to access this account.")
        changes = _service_id_changes(body)
        inline_key = body.get("apikey")
        if inline_key is not None and (not isinstance(inline_key, dict) or not inline_key.get("name")):
            raise _invalid("Property: apikey (an object with a name)")
        key_options = _create_options(inline_key, request, headers=False) if inline_key else {}
        now = time.time()
        record = ServiceIdRecord(
            id=f"ServiceId-{uuid.uuid4()}", name=name, account_id=account_id, created_at=now, created_by=caller.iam_id
        )
        for attr, val in changes.items():
            setattr(record, attr, val)
        record.locked = _bool_header(request, "Entity-Lock")
        record.history.append(_history_entry(caller.iam_id, account_id, "create", "Service ID created", now))
        self.service_ids[record.id] = record
        wire = record.to_wire()
        if inline_key:
            key = self._mint(caller, record.iam_id, str(inline_key["name"]), inline_key.get("description"), key_options)
            wire["apikey"] = key.to_wire(with_value=True)
        return web.json_response(wire, status=201, headers={"ETag": record.entity_tag})

    @_api
    async def update_service_id(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        record = self._own_service_id(caller, request.match_info["id"])
        body = await _update_body(request, record, "Service ID")
        changes = _service_id_changes(body)
        if body.get("name") is not None:
            if not isinstance(body["name"], str) or not body["name"].strip() or len(body["name"]) > MAX_NAME_LEN:
                raise _invalid("Property: name")
            changes["name"] = body["name"]
        for attr, val in changes.items():
            setattr(record, attr, val)
        record.touch(caller.iam_id, caller.account_id, "update", "Service ID updated")
        return web.json_response(record.to_wire(), headers={"ETag": record.entity_tag})

    @_api
    async def lock_service_id(self, value: bool, request: web.Request) -> web.Response:
        caller = self._caller(request)
        record = self._own_service_id(caller, request.match_info["id"])
        if record.locked != value:
            record.locked = value
            action = "lock" if value else "unlock"
            record.touch(caller.iam_id, caller.account_id, action, f"Service ID {action}ed")
        return web.Response(status=204)

    @_api
    async def delete_service_id(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        record = self._own_service_id(caller, request.match_info["id"])
        if record.locked:
            raise IamApiError(409, f"Service ID {record.id} is locked.", code="entity_locked")
        for key in self.keys.values():
            if key.iam_id == record.iam_id and not key.deleted:
                key.deleted = True
                key.touch(caller.iam_id, caller.account_id, "delete", "API key deleted with its service ID")
        del self.service_ids[record.id]
        return web.Response(status=204)

    # -- admin (test control) ----------------------------------------------------------------------
    def admin_routes(self) -> list[web.RouteDef]:
        return [
            web.put("/iam/token-lifetime", self._admin_token_lifetime),
            web.put("/iam/key-limit", self._admin_key_limit),
            web.get("/iam/keys", self._admin_keys),
            web.get("/iam/issued-values", self._admin_values),
            web.post("/iam/keys/{id}/leaked", self._admin_leaked),
            web.post("/iam/profiles", self._admin_add_profile),
        ]

    async def _admin_leaked(self, request: web.Request) -> web.Response:
        """IAM found this key in a public leak: apply its ``action_when_leaked``."""
        record = self.keys.get(request.match_info["id"])
        if record is None or record.deleted:
            return web.json_response({"error": "unknown key"}, status=404)
        if record.action_when_leaked == "disable" and not record.disabled:
            record.disabled = True
            record.touch("iam-leak-detection", self.account_id, "disable", "API key disabled: found in a public leak")
        elif record.action_when_leaked == "delete":
            record.deleted = True
            record.touch("iam-leak-detection", self.account_id, "delete", "API key deleted: found in a public leak")
        return web.json_response(record.admin_view())

    async def _admin_add_profile(self, request: web.Request) -> web.Response:
        """Body: {"name", "links": [{"namespace", "name"}], "manager": bool (may manage the target's keys)}."""
        body = await read_json(request)
        links = body.get("links") if isinstance(body, dict) else None
        ok = (
            isinstance(body, dict)
            and isinstance(body.get("name"), str)
            and body["name"]
            and isinstance(links, list)
            and all(isinstance(x, dict) and set(x) == {"namespace", "name"} for x in links)
            and isinstance(body.get("manager", False), bool)
        )
        if not ok:
            return web.json_response(
                {"error": 'expected {"name": str, "links": [{"namespace": str, "name": str}], "manager": bool}'},
                status=400,
            )
        assert isinstance(body, dict) and isinstance(links, list)
        record = self.add_profile(f"Profile-{uuid.uuid4()}", body["name"], links, manager=body.get("manager", False))
        return web.json_response({"id": record.id, "iam_id": record.iam_id, "links": record.links}, status=201)

    async def _admin_int(self, request: web.Request, field_name: str) -> int:
        body = await read_json(request)
        value = body.get(field_name) if isinstance(body, dict) else None
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise web.HTTPBadRequest(
                text=json.dumps({"error": f'expected {{"{field_name}": <integer >= 1>}}'}),
                content_type="application/json",
            )
        return value

    async def _admin_token_lifetime(self, request: web.Request) -> web.Response:
        self.token_lifetime_s = await self._admin_int(request, "seconds")
        return web.json_response({"seconds": self.token_lifetime_s})

    async def _admin_key_limit(self, request: web.Request) -> web.Response:
        self.key_limit = await self._admin_int(request, "limit")
        return web.json_response({"limit": self.key_limit})

    async def _admin_values(self, _: web.Request) -> web.Response:
        """Every key value ever issued (test-only: the suite scans its logs for them)."""
        return web.json_response({"values": [k.value for k in self.keys.values()]})

    async def _admin_keys(self, _: web.Request) -> web.Response:
        keys = sorted(self.keys.values(), key=lambda k: k.seq)
        return web.json_response({"keys": [k.admin_view() for k in keys]})


# -- request parsing ------------------------------------------------------------------------------
async def _read_form(request: web.Request) -> dict[str, str]:
    """The form fields; any other body (JSON, multipart, bad bytes) reads as no fields at all."""
    if request.content_type != "application/x-www-form-urlencoded":
        return {}
    text = (await request.read()).decode("utf-8", errors="replace")
    return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}


async def _update_body(request: web.Request, record: ApiKeyRecord | ServiceIdRecord, what: str) -> dict[str, Any]:
    """The body of a PUT, once ``If-Match`` names the current version of an unlocked entity."""
    if_match = request.headers.get("If-Match", "").strip().strip('"')
    if not if_match:
        raise _missing("If-Match header")
    if record.locked:
        raise IamApiError(409, f"{what} {record.id} is locked.", code="entity_locked")
    if if_match not in ("*", record.entity_tag):
        raise IamApiError(409, "The If-Match value does not match the current entity_tag.")
    return await _object_body(request)


def _bool_header(request: web.Request, name: str) -> bool:
    raw = request.headers.get(name)
    if raw is None:
        return False
    if raw.lower() not in ("true", "false"):
        raise _invalid(f"Header {name} must be true or false.")
    return raw.lower() == "true"


def _expires_at(value: Any) -> str:
    if not isinstance(value, str):
        raise _invalid("Property: expires_at")
    if parse_expires_at(value) is None:
        raise _invalid("Property: expires_at (expected yyyy-MM-ddTHH:mm+0000 or yyyy-MM-ddTHH:mm:ss+0000)")
    return value


def _filter(query: _ListQuery, fields: tuple[str, ...]) -> iam_filter.Predicate:
    text = query.filters.get("filter")
    if not text:
        return lambda _: True
    try:
        return iam_filter.parse(text, fields)
    except iam_filter.FilterError as exc:
        raise _invalid(f"Property: filter ({exc})") from None


def _service_id_changes(body: dict[str, Any]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if body.get("description") is not None:
        if not isinstance(body["description"], str):
            raise _invalid("Property: description")
        changes["description"] = body["description"]
    crns = body.get("unique_instance_crns")
    if crns is not None:
        if not isinstance(crns, list) or not all(isinstance(c, str) for c in crns):
            raise _invalid("Property: unique_instance_crns")
        changes["unique_instance_crns"] = list(crns)
    return changes


def _common_options(body: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if body.get("description") is not None and not isinstance(body["description"], str):
        raise _invalid("Property: description")
    if body.get("expires_at") is not None:
        options["expires_at"] = _expires_at(body["expires_at"])
    leaked = body.get("action_when_leaked")
    if leaked is not None:
        if leaked not in ("none", "disable", "delete"):
            raise _invalid("Property: action_when_leaked")
        options["action_when_leaked"] = leaked
    if body.get("support_sessions") is not None:
        if not isinstance(body["support_sessions"], bool):
            raise _invalid("Property: support_sessions")
        options["support_sessions"] = body["support_sessions"]
    return options


def _create_options(body: dict[str, Any], request: web.Request, *, headers: bool = True) -> dict[str, Any]:
    options = _common_options(body)
    if body.get("account_id") is not None and not isinstance(body["account_id"], str):
        raise _invalid("Property: account_id")
    store = body.get("store_value")
    if store is not None:
        if not isinstance(store, bool):
            raise _invalid("Property: store_value")
        options["store_value"] = store
    value = body.get("apikey")
    if value is not None:
        if not isinstance(value, str) or len(value) < 32:
            raise _invalid("Property: apikey (at least 32 characters)")
        options["apikey"] = value
    if headers:
        options["locked"] = _bool_header(request, "Entity-Lock")
        options["disabled"] = _bool_header(request, "Entity-Disable")
    return options


def _update_options(body: dict[str, Any]) -> dict[str, Any]:
    options = _common_options(body)
    name = body.get("name")
    if name is not None:
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LEN:
            raise _invalid("Property: name")
        options["name"] = name
    if body.get("description") is not None:
        options["description"] = body["description"]
    return options


@dataclass
class _ListQuery:
    """``pagesize``/``pagetoken``/``sort``/``order`` and the filters a page token carries."""

    filters: dict[str, str]
    caller_account: str
    offset: int
    pagesize: int
    sort_by: str | None
    order: str

    FILTERS = ("account_id", "iam_id", "scope", "type", "name", "filter", "group_id")

    @classmethod
    def parse(cls, request: web.Request, caller: Caller) -> _ListQuery:
        query = request.query
        filters = {k: query[k] for k in cls.FILTERS if query.get(k)}
        offset = 0
        token = query.get("pagetoken")
        if token:
            saved = _decode_token(token)
            if saved.get("c") != caller.account_id:
                raise _invalid("Property: pagetoken")
            offset = int(saved["o"])
            filters = {**saved["f"], **filters}
        raw_size = query.get("pagesize", "20")
        try:
            pagesize = int(raw_size)
        except ValueError:
            raise _invalid("Property: pagesize (an integer from 1 to 100)") from None
        if not 1 <= pagesize <= 100:
            raise _invalid("Property: pagesize (an integer from 1 to 100)")
        sort_by = query.get("sort") or None
        if sort_by not in (None, "name", "description", "created_at", "created_by"):
            raise _invalid("Property: sort")
        order = query.get("order") or "asc"
        if order not in ("asc", "desc"):
            raise _invalid("Property: order")
        return cls(filters, caller.account_id, offset, pagesize, sort_by, order)

    def sort(self, keys: list[ApiKeyRecord]) -> list[ApiKeyRecord]:
        attr = self.sort_by

        def sort_key(k: ApiKeyRecord) -> tuple[str, int]:
            value = getattr(k, attr) if attr else ""
            return (str(value or ""), k.seq)

        return sorted(keys, key=sort_key, reverse=self.order == "desc")

    def page(self, items: list[Any], url: str) -> tuple[list[Any], dict[str, Any]]:
        end = self.offset + self.pagesize
        base_params = {**self.filters, "pagesize": str(self.pagesize)}
        body: dict[str, Any] = {
            "offset": self.offset,
            "limit": self.pagesize,
            "first": f"{url}?{urlencode(base_params)}",
        }
        account = self.caller_account
        if self.offset > 0:
            prev = _encode_token(max(0, self.offset - self.pagesize), self.filters, account)
            body["previous"] = f"{url}?{urlencode({**base_params, 'pagetoken': prev})}"
        if end < len(items):
            body["next"] = f"{url}?{urlencode({**base_params, 'pagetoken': _encode_token(end, self.filters, account)})}"
        return items[self.offset : end], body


def _encode_token(offset: int, filters: dict[str, str], account_id: str) -> str:
    return ibm_common.encode_page_token(json.dumps({"o": offset, "f": filters, "c": account_id}, separators=(",", ":")))


def _decode_token(token: str) -> dict[str, Any]:
    data = ibm_common.decode_page_token(token)
    if isinstance(data, dict) and isinstance(data.get("o"), int) and isinstance(data.get("f"), dict):
        return data
    raise _invalid("Property: pagetoken")
