"""IBM Code Engine registry secrets as a sink: API v2 over httpx with IAM bearer tokens.

A Code Engine registry secret holds exactly one server/username/password. rotator keeps the secret
named in the config in every listed project: it is created when missing, else replaced with
``If-Match`` = the ``entity_tag`` just read; a stale tag (412) means someone wrote in between, so the
secret is read again and the write retried (bounded). A secret of another format, or one holding
another registry's credential, is refused and never overwritten.

Every HTTP status maps to ``rotator.errors`` in ``error_for`` (the one place): 429 and 5xx are
transient, 401/403 ``UnauthorizedError``, the project's secret limit ``LimitReachedError``, 404
``NotFoundError``. Retries happen only in ``RetryPolicy.call`` around one request (plus one token
refresh on 401). Tokens come from an ``IamTokenSource`` (shared with ``IamProvider`` when the same key
is used).

Unconfirmed at IBM (protocols.md §9): whether GET returns the registry ``password`` (the sandbox
does; a secret read without one counts as not holding our entry and is rewritten), and the status of
a stale ``If-Match`` (412 here; 409 is treated the same).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

import httpx

from rotator.adapters import http
from rotator.adapters.iam import IamTokenSource
from rotator.errors import (
    LimitReachedError,
    NotFoundError,
    PermanentError,
    RotatorError,
    TargetRefusedError,
    TransientError,
    UnauthorizedError,
)
from rotator.imageref import ImageRefError, registry_for_server
from rotator.model import RegistryAuth, SecretStr, TargetRef, TargetState
from rotator.ports import Replacing
from rotator.retrying import RetryPolicy
from rotator.settings import CodeEngineTarget

# The API behaviour rotator was written against (any date the service accepts works the same for secrets).
API_VERSION = "2026-03-27"
REGISTRY_FORMAT = "registry"
CONFLICT_RETRIES = 10
# IBM's documented per-project limit, used only by ``check_writable`` (the service enforces its own).
DOCUMENTED_SECRET_LIMIT = 100
MAX_PAGES = 100
OUR_KEYS = ("server", "username", "password", "email")

# on_write(sink, result) for metrics: created/updated/unchanged/conflict/error/refused
WriteHook = Callable[[str, str], None]


class CodeEngineSink:
    name = "codeengine"

    def __init__(
        self,
        target: CodeEngineTarget,
        *,
        credential: str,
        tokens: IamTokenSource,
        client: httpx.Client,
        retry: RetryPolicy | None = None,
        on_write: WriteHook | None = None,
        on_request: http.OnRequest | None = None,
        version: str = API_VERSION,
    ) -> None:
        self.target = target
        self.credential = credential
        self._tokens = tokens
        self._client = client
        self._retry = retry or RetryPolicy()
        self._on_write = on_write
        self._on_request = on_request
        self._version = version
        self._endpoints = {p.project_id: p.endpoint.rstrip("/") for p in target.projects}
        self.activity: tuple[str, str, bool] | None = None  # Code Engine has no events to record it in

    # -- targets -------------------------------------------------------------------------------
    def resolve_targets(self) -> list[TargetRef]:
        return [TargetRef(sink=self.name, namespace=pid, name=self.target.secret_name) for pid in self._endpoints]

    def in_scope(self, target: TargetRef) -> bool:
        return target.namespace in self._endpoints and target.name == self.target.secret_name

    def service_account_missing(self, target: TargetRef) -> list[str]:
        """Code Engine has no service accounts to reference the secret (``rotator plan`` asks every sink)."""
        return []

    # -- reading -------------------------------------------------------------------------------
    def read_state(self, target: TargetRef, server: str) -> TargetState:
        return self._inspect(target, self._get(target), server)

    def read_entry(self, target: TargetRef, server: str) -> RegistryAuth | None:
        return self.read_state(target, server).entry

    def _inspect(self, target: TargetRef, secret: dict[str, Any] | None, server: str) -> TargetState:
        if secret is None:
            return TargetState(exists=False)
        fmt = secret.get("format")
        if fmt != REGISTRY_FORMAT:
            return TargetState(
                exists=True,
                refused=f"Code Engine secret {target.name} has format {fmt!r}, not {REGISTRY_FORMAT}; rename the "
                "target or delete that secret",
            )
        raw = secret.get("data")
        data: dict[str, Any] = raw if isinstance(raw, dict) else {}
        stored_server = data.get("server")
        if not _same_registry(stored_server, server):
            return TargetState(
                exists=True,
                refused=f"Code Engine secret {target.name} holds the credential of registry {stored_server!r}, not "
                f"{server!r}; a registry secret holds one registry, so give rotator a secret_name of its own",
            )
        username, password, email = data.get("username"), data.get("password"), data.get("email")
        if not isinstance(username, str) or not isinstance(password, str) or not password:
            return TargetState(exists=True)  # nothing readable of ours: the next write replaces it
        entry = RegistryAuth(
            server=server,
            username=username,
            password=SecretStr(password),
            email=email if isinstance(email, str) and email else None,
        )
        return TargetState(exists=True, entry=entry)

    def _get(self, target: TargetRef) -> dict[str, Any] | None:
        response = self._call("read", target, "GET", self._secret_url(target), ok=(200, 404))
        if response.status_code == 404:
            return None
        return _json_object(response, f"read secret {self._where(target)}")

    # -- writing -------------------------------------------------------------------------------
    def write_entry(self, target: TargetRef, auth: RegistryAuth, *, replacing: Replacing | None = None) -> str:
        """Create or replace; "created", "updated" or "unchanged"."""
        for _ in range(CONFLICT_RETRIES):
            try:
                result = self._write_once(target, auth, replacing)
            except TargetRefusedError:
                raise  # reported as refused
            except RotatorError:
                self._report("error")
                raise
            if result is not None:
                return self._report(result)
            self._report("conflict")
        self._report("error")
        raise TransientError(
            f"write Code Engine secret {self._where(target)}: still conflicting after {CONFLICT_RETRIES} attempts"
        )

    def _write_once(self, target: TargetRef, auth: RegistryAuth, replacing: Replacing | None) -> str | None:
        """One read-then-write; None when someone else wrote in between (read again)."""
        secret = self._get(target)
        if secret is None:
            if replacing is not None:
                replacing(TargetState(exists=False))
            body = {"format": REGISTRY_FORMAT, "name": target.name, "data": _data(None, auth)}
            response = self._call(
                "create", target, "POST", self._collection_url(target), json=body, ok=(201, 404, 409), secret=auth
            )
            if response.status_code == 404:
                raise NotFoundError(
                    f"create Code Engine secret {self._where(target)}: project {target.namespace} not found at "
                    f"{self._endpoints[target.namespace]}; check project_id and the region endpoint"
                )
            return "created" if response.status_code == 201 else None
        state = self._inspect(target, secret, auth.server)
        if state.refused:
            self._report("refused")
            raise TargetRefusedError(f"Code Engine secret {self._where(target)}: {state.refused}")
        if _matches(state.entry, auth):
            return "unchanged"
        tag = secret.get("entity_tag")
        if not isinstance(tag, str) or not tag:
            raise PermanentError(f"read secret {self._where(target)}: Code Engine answered without an entity_tag")
        if replacing is not None:
            replacing(state)
        raw = secret.get("data")
        body = {"format": REGISTRY_FORMAT, "data": _data(raw if isinstance(raw, dict) else None, auth)}
        response = self._call(
            "replace",
            target,
            "PUT",
            self._secret_url(target),
            json=body,
            headers={"If-Match": tag},
            ok=(200, 404, 409, 412),
            secret=auth,
        )
        return "updated" if response.status_code == 200 else None

    def remove_entry(self, target: TargetRef, server: str) -> None:
        """Undo a create: delete the secret when it holds our registry's credential (a registry secret
        holds nothing else); a secret of another format or registry is left alone."""
        secret = self._get(target)
        state = self._inspect(target, secret, server)
        if secret is None or state.refused:
            return
        self._call("delete", target, "DELETE", self._secret_url(target), ok=(202, 204, 404))

    def _report(self, result: str) -> str:
        if self._on_write is not None:
            self._on_write(self.name, result)
        return result

    # -- rotator check ---------------------------------------------------------------------------
    def check_writable(self, targets: Iterable[TargetRef]) -> list[str]:
        """The project answers and rotator may read it; a missing secret could still be created.

        Code Engine has no dry-run, so the write permission itself is only proven by a rotation.
        """
        denied: list[str] = []
        for target in targets:
            if target.sink != self.name:
                continue
            try:
                endpoint = self._endpoints[target.namespace]
                self._call("project", target, "GET", f"{endpoint}/projects/{quote(target.namespace, safe='')}")
                if self._get(target) is None:
                    count = self._count_secrets(target)
                    if count >= DOCUMENTED_SECRET_LIMIT:
                        denied.append(
                            f"{self._where(target)}: the project holds {count} secrets, Code Engine's limit is "
                            f"{DOCUMENTED_SECRET_LIMIT}; creating {target.name} would fail"
                        )
            except RotatorError as exc:
                denied.append(f"{self._where(target)}: {exc}")
        return denied

    def _count_secrets(self, target: TargetRef) -> int:
        count, start = 0, None
        for _ in range(MAX_PAGES):
            params = {"limit": "100", **({"start": start} if start else {})}
            response = self._call("list", target, "GET", self._collection_url(target), params=params)
            page = _json_object(response, f"list secrets of project {target.namespace}")
            count += len(page.get("secrets") or [])
            start = (page.get("next") or {}).get("start")
            if not start:
                break
        return count

    # -- HTTP --------------------------------------------------------------------------------------
    def _where(self, target: TargetRef) -> str:
        return f"{target.namespace}/{target.name}"

    def _collection_url(self, target: TargetRef) -> str:
        return f"{self._endpoints[target.namespace]}/projects/{quote(target.namespace, safe='')}/secrets"

    def _secret_url(self, target: TargetRef) -> str:
        return f"{self._collection_url(target)}/{quote(target.name, safe='')}"

    def _call(
        self,
        operation: str,
        target: TargetRef,
        method: str,
        url: str,
        *,
        params: dict[str, str] | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
        ok: Iterable[int] = (200,),
        secret: RegistryAuth | None = None,
    ) -> httpx.Response:
        """One Code Engine request, retried by the policy; a 401 refreshes the token once."""
        scrub = [*([secret.password] if secret else [])]
        query = {"version": self._version, **(params or {})}

        def send_once(fresh: bool) -> httpx.Response:
            token = self._tokens.token(force=fresh)
            return http.send(
                self._client,
                self._on_request,
                "Code Engine",
                operation,
                method,
                url,
                params=query,
                json=json,
                headers=http.bearer_headers(token, headers),
            )

        return http.call_refreshing(
            self._retry,
            f"codeengine.{operation}",
            send_once,
            ok,
            lambda response: error_for(operation, self._where(target), response, [*scrub, *self._tokens.secrets]),
        )


def error_for(operation: str, where: str, response: httpx.Response, scrub: list[SecretStr]) -> RotatorError:
    """THE status mapping for Code Engine; ``scrub`` values never show in the message."""
    status = response.status_code
    code, raw_message = _handbook_error(response)
    message = http.scrubbed(raw_message, scrub)
    text = f"Code Engine {operation} {where}: HTTP {status}" + (f" {code}" if code else "")
    text += f": {message}" if message else ""
    project = where.split("/", 1)[0]
    retryable = http.retryable_error(status, text, lambda: http.retry_after_seconds(response))
    if retryable is not None:
        return retryable
    if status == 401:
        return UnauthorizedError(f"{text}; IAM's token was refused, check the API key")
    if status == 403:
        return UnauthorizedError(f"{text}; the API key needs the Writer role on Code Engine project {project}")
    if "limit" in code or "maximum number of secrets" in message.lower():
        return LimitReachedError(
            f"{text}; delete secrets project {project} no longer needs (ibmcloud ce secret list) or ask IBM to "
            "raise the limit; nothing was changed"
        )
    if status == 404:
        return NotFoundError(text)
    if status in (409, 412):
        return TransientError(text)
    return PermanentError(text)


def _handbook_error(response: httpx.Response) -> tuple[str, str]:
    """(code, message) of the first error in IBM's API-handbook container."""
    try:
        body = response.json()
    except ValueError:
        return "", ""
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return str(errors[0].get("code") or ""), str(errors[0].get("message") or "")
    return "", ""


def _json_object(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise PermanentError(f"{what}: Code Engine answered with an unexpected body")
    return body


def _same_registry(stored: Any, server: str) -> bool:
    if not isinstance(stored, str):
        return False
    try:
        return registry_for_server(stored) == registry_for_server(server)
    except ImageRefError:
        return False


def _matches(entry: RegistryAuth | None, auth: RegistryAuth) -> bool:
    """Our credential is stored (an email is compared only when we have one to write)."""
    if entry is None:
        return False
    same = entry.username == auth.username and entry.password == auth.password
    return same and (auth.email is None or entry.email == auth.email)


def _data(existing: dict[str, Any] | None, auth: RegistryAuth) -> dict[str, str]:
    """The secret's data with our credential: other string keys kept, an email kept unless we set one."""
    existing = existing or {}
    data = {k: v for k, v in existing.items() if isinstance(v, str) and k not in OUR_KEYS}
    data.update(server=auth.server, username=auth.username, password=auth.password.reveal())
    kept = existing.get("email")
    email = auth.email or (kept if isinstance(kept, str) else None)
    if email:
        data["email"] = email
    return data
