"""IBM Code Engine API v2 emulator: a project (read) and its secrets (create, read, list, replace, delete).

Follows ``protocols.md`` §3 and the official ``ibm-code-engine-sdk`` (``CodeEngineV2``, ``SecretsPager``).
Where IBM's behaviour is unconfirmed (§9) the emulator picks one and says so here; rotator's adapter
(``rotator/adapters/codeengine.py``) relies only on what is listed:

- Errors use the API-handbook shape ``{"errors": [{"code", "message", "more_info", "target"?}], "trace",
  "status_code"}``. Codes are the emulator's own (IBM publishes none for Code Engine): ``bad_request``,
  ``invalid_version``, ``invalid_name``, ``invalid_data``, ``invalid_format``, ``invalid_limit``,
  ``invalid_start``, ``unauthorized``, ``forbidden``, ``not_found``, ``already_exists``,
  ``precondition_required``, ``precondition_failed``, ``limit_exceeded``, ``request_too_large``.
- ``version`` query: optional; when given it must be a real ``YYYY-MM-DD`` date from 2021-03-31 up to
  today (UTC), else 400 ``invalid_version``. The SDK documents "any date between 2021-03-31 and" its
  release date, and sends the parameter on every request.
- Auth: ``Authorization: Bearer <IAM access token>``; tokens are checked against the sandbox signer
  that the IAM emulator signs with (1 s leeway on ``exp``, as IAM does). Missing/invalid → 401.
  Authorization: a project lists the IAM ids that may manage its secrets (the seeded admin service ID);
  anyone else, or a token of another account, gets 403. An unknown project is 404.
- Create of an existing name: **409** ``already_exists``.
- ``PUT`` without ``If-Match``: **428** ``precondition_required``; an ``If-Match`` other than ``*`` or
  the current ``entity_tag`` (quotes and ``W/`` ignored): **412** ``precondition_failed``. A replace
  cannot change ``format`` (400). ``entity_tag`` is a new 10-digit number on every replace and is also
  sent as the ``ETag`` header of GET, POST and PUT.
- GET and list return every ``data`` value in clear, the registry ``password`` included.
- Per-project limit of 100 secrets (IBM's documented figure; ``PUT /codeengine/secret-limit`` changes
  it): a create beyond it is **400** ``limit_exceeded``.
- List: ``limit`` 1..100 (default 50), ordered by name; ``start`` is an opaque token naming where the
  next page begins, also returned as ``next.start`` (what ``SecretsPager`` reads).
- Delete: **202** with an empty body; a missing secret is 404.
- Request bodies over 5 MB: 413 ``request_too_large``.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from rotator.sandbox import ibm_common
from rotator.sandbox.base import Context, read_json
from rotator.sandbox.ibm_common import Caller

DEFAULT_SECRET_LIMIT = 100
DEFAULT_PAGE_LIMIT = 50
MAX_PAGE_LIMIT = 100
MAX_BODY_BYTES = 5 * 1024 * 1024
MAX_VALUE_CHARS = 1_048_576
OLDEST_VERSION = dt.date(2021, 3, 31)
MORE_INFO = "https://cloud.ibm.com/apidocs/codeengine/v2"

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
MAX_NAME_LEN = 253
DATA_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

RESOURCE_TYPES = {
    "generic": "secret_generic_v2",
    "ssh_auth": "secret_auth_ssh_v2",
    "basic_auth": "secret_basic_auth_v2",
    "hmac_auth": "secret_hmac_auth_v2",
    "tls": "secret_tls_v2",
    "service_access": "secret_service_access_v2",
    "registry": "secret_registry_v2",
    "service_operator": "secret_operator_v2",
    "other": "secret_other_v2",
}
# Keys each format's data must carry (the SDK's SecretData* models mark them required).
REQUIRED_DATA = {
    "registry": ("server", "username", "password"),
    "basic_auth": ("username", "password"),
    "ssh_auth": ("ssh_key",),
    "tls": ("tls_cert", "tls_key"),
    "hmac_auth": ("access_key_id", "secret_access_key"),
}
# Formats whose content is an object of its own rather than data.
PROPS_FORMATS = ("service_access", "service_operator")

_CODE_FOR_STATUS = {
    **ibm_common.HANDBOOK_CODES,
    409: "already_exists",
    412: "precondition_failed",
    413: "request_too_large",
    428: "precondition_required",
}
_TOKEN_MESSAGES: dict[ibm_common.TokenProblem, str] = {
    "missing": "Authorization header missing or not a Bearer token.",
    "invalid": "The IAM access token is not valid or has expired.",
    "not_iam": "The token is not an IAM access token.",
}


class CeError(ibm_common.HandbookError):
    """A Code Engine API error; ``target`` names the offending field."""

    codes = _CODE_FOR_STATUS

    def __init__(self, status: int, message: str, *, code: str | None = None, target: str | None = None) -> None:
        super().__init__(status, message, code=code)
        self.target = target


def _bad(code: str, message: str, target: str | None = None) -> CeError:
    return CeError(400, message, code=code, target=target)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _new_tag(previous: str = "") -> str:
    while True:
        tag = str(1_000_000_000 + secrets.randbelow(9_000_000_000))
        if tag != previous:
            return tag


@dataclass(kw_only=True)
class ProjectRecord:
    id: str
    name: str
    region: str
    account_id: str
    managers: list[str]
    created_at: str = field(default_factory=_now)
    resource_group_id: str = "b91e849cedb04e7e92bd68c040c672dc"

    def to_wire(self, base: str) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "created_at": self.created_at,
            "crn": f"crn:v1:bluemix:public:codeengine:{self.region}:a/{self.account_id}:{self.id}::",
            "href": f"{base}/projects/{self.id}",
            "id": self.id,
            "name": self.name,
            "region": self.region,
            "resource_group_id": self.resource_group_id,
            "resource_type": "project_v2",
            "status": "active",
        }


@dataclass(kw_only=True)
class SecretRecord:
    id: str
    name: str
    project_id: str
    format: str
    data: dict[str, str] | None
    entity_tag: str
    created_at: str = field(default_factory=_now)
    service_access: dict[str, Any] | None = None
    service_operator: dict[str, Any] | None = None

    def to_wire(self, base: str, region: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "created_at": self.created_at,
            "entity_tag": self.entity_tag,
            "format": self.format,
            "generated_by": "user",
            "href": f"{base}/projects/{self.project_id}/secrets/{self.name}",
            "id": self.id,
            "name": self.name,
            "project_id": self.project_id,
            "region": region,
            "resource_type": RESOURCE_TYPES[self.format],
        }
        if self.data is not None:
            body["data"] = dict(self.data)
        for attr in PROPS_FORMATS:
            value = getattr(self, attr)
            if value is not None:
                body[attr] = value
        return body


_Handler = Callable[["CodeEngineEmulator", web.Request, Caller], Awaitable[web.Response]]
_Route = Callable[["CodeEngineEmulator", web.Request], Awaitable[web.Response]]


def _api(handler: _Handler) -> _Route:
    """Authenticate, check ``version``, and answer ``CeError`` in the handbook shape."""

    @functools.wraps(handler)
    async def wrapper(self: CodeEngineEmulator, request: web.Request) -> web.Response:
        try:
            caller = self._caller(request)
            _check_version(request.query.get("version"))
            return await handler(self, request, caller)
        except CeError as exc:
            return self._handbook(exc.status, exc.code, exc.message, target=exc.target)

    return wrapper


class CodeEngineEmulator:
    name = "codeengine"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        seed = ctx.seed
        self.base = ctx.urls.get("codeengine", "http://127.0.0.1") + "/v2"
        self.secret_limit = DEFAULT_SECRET_LIMIT
        admin_iam_id = f"iam-{seed.admin_service_id}"
        project = ProjectRecord(
            id=seed.codeengine_project_id,
            name=seed.codeengine_project_name,
            region=seed.codeengine_region,
            account_id=seed.account_id,
            managers=[admin_iam_id, f"iam-{seed.trusted_profile_id}"],
        )
        self.projects: dict[str, ProjectRecord] = {project.id: project}
        self.secrets: dict[str, dict[str, SecretRecord]] = {project.id: {}}

    # -- Emulator protocol ---------------------------------------------------------------------
    def setup(self, app: web.Application) -> None:
        app.router.add_get("/v2/projects/{project_id}", self.get_project)
        app.router.add_get("/v2/projects/{project_id}/secrets", self.list_secrets)
        app.router.add_post("/v2/projects/{project_id}/secrets", self.create_secret)
        app.router.add_get("/v2/projects/{project_id}/secrets/{name}", self.get_secret)
        app.router.add_put("/v2/projects/{project_id}/secrets/{name}", self.replace_secret)
        app.router.add_delete("/v2/projects/{project_id}/secrets/{name}", self.delete_secret)

    def error_response(self, status: int, message: str, *, retry_after: int | None = None) -> web.Response:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return self._handbook(status, _CODE_FOR_STATUS.get(status, "error"), message, headers=headers)

    def describe(self) -> dict[str, Any]:
        seed = self.ctx.seed
        return {
            "codeengine": self.base,
            "codeengine_project_id": seed.codeengine_project_id,
            "codeengine_project_name": seed.codeengine_project_name,
            "codeengine_region": seed.codeengine_region,
        }

    def dump(self) -> dict[str, Any]:
        return {
            "secret_limit": self.secret_limit,
            "projects": [asdict(p) for p in self.projects.values()],
            "secrets": [asdict(s) for by_name in self.secrets.values() for s in by_name.values()],
        }

    def load(self, data: dict[str, Any]) -> None:
        self.secret_limit = int(data.get("secret_limit", DEFAULT_SECRET_LIMIT))
        self.projects = {p["id"]: ProjectRecord(**p) for p in data.get("projects", [])}
        self.secrets = {pid: {} for pid in self.projects}
        for raw in data.get("secrets", []):
            record = SecretRecord(**raw)
            self.secrets.setdefault(record.project_id, {})[record.name] = record

    # -- wire helpers --------------------------------------------------------------------------
    def _handbook(
        self,
        status: int,
        code: str,
        message: str,
        *,
        target: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        error: dict[str, Any] = {"code": code, "message": message, "more_info": MORE_INFO}
        if target is not None:
            error["target"] = {"name": target, "type": "field"}
        return ibm_common.handbook_response(status, error, trace_header="X-Request-Id", headers=headers)

    def _caller(self, request: web.Request) -> Caller:
        try:
            return ibm_common.iam_caller(request, self.ctx.signer)
        except ibm_common.BearerError as exc:
            raise CeError(401, _TOKEN_MESSAGES[exc.problem]) from None

    def _project(self, request: web.Request, caller: Caller) -> ProjectRecord:
        project_id = request.match_info["project_id"]
        project = self.projects.get(project_id)
        if project is None:
            raise CeError(404, f"Project '{project_id}' was not found.")
        if caller.account_id != project.account_id or caller.iam_id not in project.managers:
            raise CeError(403, f"You are not authorized to manage secrets of project '{project_id}'.")
        return project

    def _secret(self, project: ProjectRecord, name: str) -> SecretRecord:
        record = self.secrets.get(project.id, {}).get(name)
        if record is None:
            raise CeError(404, f"Secret '{name}' was not found in project '{project.id}'.")
        return record

    def _secret_response(self, record: SecretRecord, project: ProjectRecord, status: int = 200) -> web.Response:
        return web.json_response(
            record.to_wire(self.base, project.region), status=status, headers={"ETag": record.entity_tag}
        )

    # -- projects ------------------------------------------------------------------------------
    @_api
    async def get_project(self, request: web.Request, caller: Caller) -> web.Response:
        return web.json_response(self._project(request, caller).to_wire(self.base))

    # -- secrets -------------------------------------------------------------------------------
    @_api
    async def list_secrets(self, request: web.Request, caller: Caller) -> web.Response:
        project = self._project(request, caller)
        query = request.query
        limit = _page_limit(query.get("limit"))
        wanted = query.get("format") or None
        if wanted is not None and wanted not in RESOURCE_TYPES:
            raise _bad("invalid_format", f"Format '{wanted}' is not one of {', '.join(RESOURCE_TYPES)}.", "format")
        start = _decode_start(query["start"]) if query.get("start") else ""
        selected = sorted(
            (s for s in self.secrets.get(project.id, {}).values() if wanted is None or s.format == wanted),
            key=lambda s: s.name,
        )
        remaining = [s for s in selected if s.name >= start]
        page, rest = remaining[:limit], remaining[limit:]
        url = f"{self.base}/projects/{project.id}/secrets"
        params = {"limit": str(limit), **({"format": wanted} if wanted else {})}
        body: dict[str, Any] = {
            "limit": limit,
            "first": {"href": f"{url}?{urlencode(params)}"},
            "secrets": [s.to_wire(self.base, project.region) for s in page],
        }
        if rest:
            token = _encode_start(rest[0].name)
            body["next"] = {"href": f"{url}?{urlencode({**params, 'start': token})}", "start": token}
        return web.json_response(body)

    @_api
    async def create_secret(self, request: web.Request, caller: Caller) -> web.Response:
        project = self._project(request, caller)
        body = await _json_object(request)
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise _bad("bad_request", "The property 'name' is required.", "name")
        _check_name(name)
        fmt = _check_format(body.get("format"))
        data, props = _content(fmt, body)
        existing = self.secrets.setdefault(project.id, {})
        if name in existing:
            raise CeError(409, f"A secret named '{name}' already exists in project '{project.id}'.")
        if len(existing) >= self.secret_limit:
            raise _bad(
                "limit_exceeded",
                f"The maximum number of secrets ({self.secret_limit}) in project '{project.name}' has been reached.",
            )
        record = SecretRecord(
            id=str(uuid.uuid4()), name=name, project_id=project.id, format=fmt, data=data, entity_tag=_new_tag()
        )
        for attr, value in props.items():
            setattr(record, attr, value)
        existing[name] = record
        return self._secret_response(record, project, status=201)

    @_api
    async def get_secret(self, request: web.Request, caller: Caller) -> web.Response:
        project = self._project(request, caller)
        return self._secret_response(self._secret(project, request.match_info["name"]), project)

    @_api
    async def replace_secret(self, request: web.Request, caller: Caller) -> web.Response:
        project = self._project(request, caller)
        record = self._secret(project, request.match_info["name"])
        if_match = request.headers.get("If-Match", "").strip()
        if not if_match:
            raise CeError(428, "The If-Match header is required; send the secret's entity_tag or '*'.")
        body = await _json_object(request)
        fmt = _check_format(body.get("format"))
        if fmt != record.format:
            raise _bad("invalid_format", f"The format of a secret cannot change (it is '{record.format}').", "format")
        data, props = _content(fmt, body)
        if if_match != "*" and _strip_tag(if_match) != record.entity_tag:
            raise CeError(412, "The If-Match value does not match the secret's current entity_tag.")
        record.data = data
        for attr, value in props.items():
            setattr(record, attr, value)
        record.entity_tag = _new_tag(record.entity_tag)
        return self._secret_response(record, project)

    @_api
    async def delete_secret(self, request: web.Request, caller: Caller) -> web.Response:
        project = self._project(request, caller)
        record = self._secret(project, request.match_info["name"])
        del self.secrets[project.id][record.name]
        return web.Response(status=202)

    # -- admin (test control) ------------------------------------------------------------------
    def admin_routes(self) -> list[web.RouteDef]:
        return [
            web.put("/codeengine/secret-limit", self._admin_secret_limit),
            web.get("/codeengine/secrets", self._admin_secrets),
        ]

    async def _admin_secret_limit(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        value = body.get("limit") if isinstance(body, dict) else None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise web.HTTPBadRequest(
                text=json.dumps({"error": 'expected {"limit": <integer >= 0>}'}), content_type="application/json"
            )
        self.secret_limit = value
        return web.json_response({"limit": value})

    async def _admin_secrets(self, _: web.Request) -> web.Response:
        """Every project and every secret with its data (test-only)."""
        projects = [{**p.to_wire(self.base), "secret_limit": self.secret_limit} for p in self.projects.values()]
        listed = [
            s.to_wire(self.base, self.projects[pid].region if pid in self.projects else "")
            for pid, by_name in self.secrets.items()
            for s in sorted(by_name.values(), key=lambda s: s.name)
        ]
        return web.json_response({"projects": projects, "secrets": listed})


# -- request parsing ------------------------------------------------------------------------------
def _check_version(raw: str | None) -> None:
    if raw is None:
        return
    problem = f"The version '{raw}' is not a date (YYYY-MM-DD) from {OLDEST_VERSION} up to today."
    if not VERSION_RE.match(raw):
        raise _bad("invalid_version", problem, "version")
    try:
        day = dt.date.fromisoformat(raw)
    except ValueError:
        raise _bad("invalid_version", problem, "version") from None
    if not OLDEST_VERSION <= day <= dt.datetime.now(dt.UTC).date():
        raise _bad("invalid_version", problem, "version")


def _page_limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_PAGE_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE_LIMIT:
        raise _bad("invalid_limit", f"The limit must be a whole number from 1 to {MAX_PAGE_LIMIT}.", "limit")
    return int(raw)


def _encode_start(name: str) -> str:
    return ibm_common.encode_page_token(json.dumps({"n": name}))


def _decode_start(token: str) -> str:
    data = ibm_common.decode_page_token(token)
    if isinstance(data, dict) and isinstance(data.get("n"), str):
        return str(data["n"])
    raise _bad("invalid_start", "The start token is not valid; take it from the next object of a list response.")


async def _json_object(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise CeError(413, "The request body is larger than 5 MB.")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise CeError(413, "The request body is larger than 5 MB.") from None
    if len(raw) > MAX_BODY_BYTES:
        raise CeError(413, "The request body is larger than 5 MB.")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _bad("bad_request", "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise _bad("bad_request", "The request body must be a JSON object.")
    return body


def _check_name(name: str) -> None:
    if len(name) > MAX_NAME_LEN or not NAME_RE.match(name):
        raise _bad(
            "invalid_name",
            "The name must consist of lower case alphanumeric characters, '-' or '.', start and end with an "
            f"alphanumeric character, and be at most {MAX_NAME_LEN} characters long.",
            "name",
        )


def _check_format(fmt: Any) -> str:
    if not isinstance(fmt, str) or not fmt:
        raise _bad("bad_request", "The property 'format' is required.", "format")
    if fmt not in RESOURCE_TYPES:
        raise _bad("invalid_format", f"Format '{fmt}' is not one of {', '.join(RESOURCE_TYPES)}.", "format")
    return fmt


def _content(fmt: str, body: dict[str, Any]) -> tuple[dict[str, str] | None, dict[str, Any]]:
    """(data, {service_access|service_operator: object}) for a create or replace body of ``fmt``."""
    props: dict[str, Any] = {}
    for attr in PROPS_FORMATS:
        value = body.get(attr)
        if value is None:
            continue
        if attr != fmt:
            raise _bad("bad_request", f"The property '{attr}' is only allowed with format '{attr}'.", attr)
        if not isinstance(value, dict) or not value:
            raise _bad("bad_request", f"The property '{attr}' must be a non-empty object.", attr)
        props[attr] = value
    if fmt in PROPS_FORMATS and fmt not in props and "data" not in body:
        raise _bad("bad_request", f"A secret of format '{fmt}' needs the property '{fmt}'.", fmt)
    raw = body.get("data")
    if raw is None:
        if REQUIRED_DATA.get(fmt):
            raise _bad("invalid_data", f"A secret of format '{fmt}' needs data.", "data")
        return None, props
    if not isinstance(raw, dict):
        raise _bad("invalid_data", "The property 'data' must be an object of string values.", "data")
    data: dict[str, str] = {}
    for key, value in raw.items():
        if not DATA_KEY_RE.match(key):
            raise _bad(
                "invalid_data",
                "Data keys consist of alphanumeric characters, '-', '_' or '.' (at most 253).",
                "data",
            )
        if not isinstance(value, str) or len(value) > MAX_VALUE_CHARS:
            raise _bad("invalid_data", f"The value of data key '{key}' must be a string of at most 1 MiB.", "data")
        data[key] = value
    missing = [k for k in REQUIRED_DATA.get(fmt, ()) if not data.get(k)]
    if missing:
        raise _bad("invalid_data", f"A secret of format '{fmt}' needs data keys {', '.join(missing)}.", "data")
    return data, props


def _strip_tag(value: str) -> str:
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"')
