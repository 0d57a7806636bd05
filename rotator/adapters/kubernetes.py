"""Kubernetes pull secrets through the official client.

Secrets are updated in place (same UID): read, merge our registry entry into
``.dockerconfigjson`` (other registries' entries survive), replace with the read
``resourceVersion``; a 409 means someone else wrote in between, so re-read and merge again.
In the daemon the read is the secret as its watch last saw it (``seen``, see seensecrets.py):
one PUT per secret, and a GET only after a 409 or for a secret not seen yet.
Secrets of another type, or whose ``.dockerconfigjson`` is not JSON, are refused unless the
config allows overwriting. Service accounts get the secret appended to ``imagePullSecrets``
(an atomic list: read-modify-write with resourceVersion, never a merge patch).
"""

from __future__ import annotations

import base64
import json
import os
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rotator import dockerconfig, redact
from rotator.errors import (
    ConfigError,
    NotFoundError,
    PermanentError,
    RateLimited,
    TargetRefusedError,
    TransientError,
    UnauthorizedError,
    Unreachable,
)
from rotator.model import RegistryAuth, TargetRef, TargetState
from rotator.ownwrites import OwnWrites
from rotator.ports import Replacing
from rotator.retrying import RetryPolicy
from rotator.settings import KubernetesSettings, KubernetesTarget

if TYPE_CHECKING:
    from rotator.seensecrets import SeenSecrets

DOCKERCONFIGJSON = "kubernetes.io/dockerconfigjson"
MANAGED_LABEL = "app.kubernetes.io/managed-by"
CREDENTIAL_ANNOTATION = "rotator.example.com/credential"
# Put on a managed secret to ask for a rotation; rotator removes it when it takes the request.
ROTATE_ANNOTATION = "rotator.example.com/rotate"
CONFLICT_RETRIES = 10

# on_write(sink, result) for metrics: result is created/updated/unchanged/conflict/error/refused/skipped
WriteHook = Callable[[str, str], None]


def api_client(settings: KubernetesSettings, *, origin: str | None = None) -> Any:
    """An ApiClient of its own (never the global configuration), sized for the fan-out pool; a
    kubeconfig or in-cluster config that cannot be loaded is a ConfigError naming the field
    (``origin``: that field, when it is not the top-level ``kubernetes`` section's)."""
    from kubernetes import client, config

    origin = origin or config_origin(settings)
    configuration = client.Configuration()
    try:
        if settings.in_cluster:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            if settings.kubeconfig is not None and not settings.kubeconfig.is_file():
                raise ConfigError(
                    f"kubernetes.kubeconfig: {settings.kubeconfig} does not exist; give the path of a kubeconfig, "
                    "or set kubernetes.in_cluster: true when rotator runs in the cluster"
                )
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(settings.kubeconfig) if settings.kubeconfig else None,
                context=settings.context,
                client_configuration=configuration,
                persist_config=False,
            )
    except ConfigError:
        raise
    except Exception as exc:  # a YAML error would quote the file (tokens too): only the loader's own words
        text = str(exc).strip() if isinstance(exc, config.ConfigException) else ""
        detail = text.splitlines()[0] if text else type(exc).__name__
        fix = (
            "run inside a pod with a service account, or set kubernetes.kubeconfig instead"
            if settings.in_cluster
            else "fix that file, or set kubernetes.context to a context it has"
        )
        raise ConfigError(f"{origin}: cannot load the Kubernetes client config ({detail[:200]}); {fix}") from None
    configuration.connection_pool_maxsize = max(settings.concurrency, 4)
    api = client.ApiClient(configuration)
    # Wrapped rather than subclassed: the client calls only request() and close() on it.
    api.rest_client = _MappedRest(api.rest_client, origin, str(configuration.host))  # type: ignore[assignment]
    return api


def config_origin(settings: KubernetesSettings) -> str:
    """The config field that decides which API server rotator talks to (for messages)."""
    if settings.in_cluster:
        return "kubernetes.in_cluster"
    if settings.kubeconfig is not None:
        return f"kubernetes.kubeconfig {settings.kubeconfig}"
    return "kubernetes.kubeconfig (unset: $KUBECONFIG or ~/.kube/config)"


class ApiServerUnreachable(Unreachable):
    """The API server could not be talked to (refused, reset, timed out, name or TLS failure).

    Transient while the daemon runs (the pass backs off and is counted); ``tls`` tells start-up
    checks that a retry will not help until the CA or server URL is fixed."""

    def __init__(self, message: str, *, tls: bool) -> None:
        super().__init__(message)
        self.tls = tls


def _transport_cause(exc: BaseException) -> tuple[str, bool] | None:
    """What went wrong below HTTP, in a few words, and whether it was TLS; None for anything else."""
    import ssl

    import urllib3
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):  # the client turns a bare urllib3 SSLError into status 0
        if exc.status == 0 and str(exc.reason).startswith("SSLError"):
            return "TLS handshake failed", True
        return None
    if not isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        return None
    chain: list[BaseException] = [exc]
    index = 0
    while index < min(len(chain), 8):  # the causes urllib3 wraps: MaxRetryError.reason, args, __cause__
        item = chain[index]
        nested = [getattr(item, "reason", None), item.__cause__, item.__context__, *item.args]
        chain += [e for e in nested if isinstance(e, BaseException) and e not in chain]
        index += 1
    for item in chain:
        if isinstance(item, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted ({item.verify_message})", True
    for item in chain:
        if isinstance(item, ssl.SSLError):
            return f"TLS handshake failed ({item.reason or type(item).__name__})", True
    if any(isinstance(item, urllib3.exceptions.SSLError) for item in chain):
        return "TLS handshake failed", True
    if any(isinstance(item, urllib3.exceptions.NameResolutionError) for item in chain):
        return "host name does not resolve", False
    for item in chain:  # refused, reset, unreachable: the system's words
        if isinstance(item, OSError) and item.errno:
            return os.strerror(item.errno).lower(), False
    if any(isinstance(item, urllib3.exceptions.TimeoutError | TimeoutError) for item in chain):
        return "timed out", False
    return f"connection failed ({type(chain[-1]).__name__})", False


def transport_error(exc: BaseException, origin: str, what: str) -> ApiServerUnreachable | None:
    """The one place that maps the kubernetes client's failures below HTTP (urllib3 MaxRetryError,
    ProtocolError, SSLError, timeouts, refused connections) to rotator's TransientError, so a pass
    that meets an unreachable API server is retried with backoff and counted, never a crash."""
    cause = _transport_cause(exc)
    if cause is None:
        return None
    why, tls = cause
    fix = f"check the certificate authority in {origin}" if tls else f"check that it is up and that {origin} names it"
    return ApiServerUnreachable(f"{what}: Kubernetes API server {why}; {fix}", tls=tls)


class _MappedRest:
    """The client's REST layer with transport failures mapped by ``transport_error``. Bodies of
    non-watch answers are read here, so a connection lost mid-body is mapped too (urllib3 keeps the
    body it read for the client and the caller)."""

    def __init__(self, inner: Any, origin: str, host: str) -> None:
        self.inner, self.origin, self.host = inner, origin, host

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        parts = urllib.parse.urlsplit(url)
        try:
            response = self.inner.request(method, url, *args, **kwargs)
            if "watch=" not in parts.query:
                response.response.data  # noqa: B018 - read now, inside the mapping
            return response
        except Exception as exc:
            mapped = transport_error(exc, self.origin, f"{method} {self.host}{parts.path}")
            if mapped is None:
                raise
            raise mapped from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def api_client_for(server: str, token: str, *, pool: int = 16) -> Any:
    """An ApiClient for a server URL and bearer token (sandbox, tests, benchmarks)."""
    from kubernetes import client

    configuration = client.Configuration(host=server, api_key={"authorization": f"Bearer {token}"})
    configuration.connection_pool_maxsize = pool
    return client.ApiClient(configuration)


def kubeconfig_path(path: str | Path) -> KubernetesSettings:
    return KubernetesSettings(kubeconfig=Path(path))


def map_api_error(exc: Exception, what: str) -> Exception:
    """One place that turns an ApiException into rotator's error tree (message without bodies)."""
    status = getattr(exc, "status", None)
    reason = ""
    body = getattr(exc, "body", None)
    if body:
        try:
            reason = redact.clean(str(json.loads(body).get("message", "")), limit=300)
        except (ValueError, AttributeError):
            reason = ""
    text = f"{what}: Kubernetes answered {status}" + (f" ({reason})" if reason else "")
    if status == 429:
        headers = getattr(exc, "headers", None) or {}
        retry_after = headers.get("Retry-After") if hasattr(headers, "get") else None
        return RateLimited(text, retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None)
    if status is None or status == 0 or status >= 500 or status == 409:
        return TransientError(text)
    if status in (401, 403):
        return UnauthorizedError(text + "; check rotator's RBAC for this namespace")
    if status == 404:
        return NotFoundError(text)
    return PermanentError(text)


class KubernetesSink:
    name = "kubernetes"  # "kubernetes@<cluster>" for a fleet cluster (set by the composition root)
    cluster = ""  # the fleet cluster's name; "" for the one cluster of the top-level kubernetes connection

    def __init__(
        self,
        api: Any,
        target: KubernetesTarget,
        *,
        credential: str,
        retry: RetryPolicy | None = None,
        on_write: WriteHook | None = None,
    ) -> None:
        from rotator.kubecore import CoreV1

        self.core: Any = CoreV1(api)
        self.target = target
        self.credential = credential
        self.retry = retry or RetryPolicy()
        self.on_write = on_write
        # Kubernetes Events on written secrets: the recorder, and what the current fan-out is doing
        # (set by the reconciler before each fan-out: reason, message, warning).
        self.recorder: Any = None
        self.activity: tuple[str, str, bool] | None = None
        # Our own writes, so the watch events they cause are not mistaken for drift.
        self._own = OwnWrites()
        # The managed secrets as last seen, kept by the daemon's watch (None: read before each write).
        self.seen: SeenSecrets | None = None

    def _write(self, obj: dict[str, Any], send: Callable[[], Any]) -> Any:
        """Send a write whose result is ``obj`` (announced first: its event may beat its response)."""
        token = self._own.expect(obj)
        response = None
        try:
            response = send()
            return response
        finally:
            self._own.done(token, response)

    def is_own_write(self, event: str, obj: dict[str, Any]) -> bool:
        """Whether a watch event on a secret or service account is one of our writes coming back."""
        return self._own.is_own(event, obj)

    def in_scope(self, target: TargetRef) -> bool:
        """Whether the target's namespace is selected right now (one namespace read for selectors)."""
        selection = self.target.namespaces
        if target.namespace in selection.exclude or target.name != self.target.secret_name:
            return False
        if selection.names:
            return target.namespace in selection.names
        if selection.all:
            return True
        try:
            response = self._call(
                lambda: self.core.read_namespace(target.namespace, _preload_content=False),
                f"read namespace {target.namespace}",
            )
        except NotFoundError:
            return False
        labels = (json.loads(response.data).get("metadata") or {}).get("labels") or {}
        return selector_matches(selection.selector or "", labels)

    def target_for(self, namespace: str) -> TargetRef:
        return TargetRef(
            sink=self.name,
            namespace=namespace,
            name=self.target.secret_name,
            service_accounts=self.target.service_accounts,
        )

    def clear_rotate_annotation(self, target: TargetRef) -> None:
        """Take a rotation request made by annotation (JSON patch: remove exactly that key)."""
        from kubernetes.client.exceptions import ApiException

        key = ROTATE_ANNOTATION.replace("~", "~0").replace("/", "~1")
        obj = self._read_secret(target)
        annotations = dict(((obj or {}).get("metadata") or {}).get("annotations") or {})
        if obj is None or annotations.pop(ROTATE_ANNOTATION, None) is None:
            return  # gone, or already taken
        expected = {**obj, "metadata": {**obj["metadata"], "annotations": annotations}}
        patch = [{"op": "remove", "path": f"/metadata/annotations/{key}"}]
        try:
            self._write(
                expected,
                lambda: self.core.patch_namespaced_secret(target.name, target.namespace, patch, _preload_content=False),
            )
        except ApiException as exc:
            if exc.status not in (404, 422):  # gone, or already removed
                raise map_api_error(exc, f"patch secret {target.namespace}/{target.name}") from None

    # -- targets -------------------------------------------------------------------------------
    def resolve_targets(self) -> list[TargetRef]:
        selection = self.target.namespaces
        if selection.names:
            namespaces = list(selection.names)
        else:
            namespaces = self._list_namespaces(selection.selector)
        excluded = set(selection.exclude)
        return [self.target_for(ns) for ns in sorted(namespaces) if ns not in excluded]

    def _list_namespaces(self, selector: str | None) -> list[str]:
        names: list[str] = []
        token: str | None = None
        for _ in range(10_000):  # pages of 500: bounded at 5M namespaces
            kwargs: dict[str, Any] = {"limit": 500, "_preload_content": False}
            if selector:
                kwargs["label_selector"] = selector
            if token:
                kwargs["_continue"] = token
            page = self._call(lambda: self.core.list_namespace(**kwargs), "list namespaces")  # noqa: B023
            doc = json.loads(page.data)
            names += [item["metadata"]["name"] for item in doc.get("items", [])]
            token = (doc.get("metadata") or {}).get("continue")
            if not token:
                break
        return names

    def matches(self, namespace: str, labels: dict[str, str]) -> bool:
        """Whether a namespace (seen in a watch event) is one of this sink's targets."""
        selection = self.target.namespaces
        if namespace in selection.exclude:
            return False
        if selection.names:
            return namespace in selection.names
        if selection.all:
            return True
        return selector_matches(selection.selector or "", labels)

    # -- reading -------------------------------------------------------------------------------
    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        from kubernetes.client.exceptions import ApiException

        def once() -> Any:
            try:
                return fn()
            except ApiException as exc:
                raise map_api_error(exc, what) from None
            except OSError as exc:  # connection refused/reset: urllib3 wraps them in OSError subclasses
                raise TransientError(f"{what}: {type(exc).__name__}") from None

        return self.retry.call(once, operation=f"kubernetes.{what.split(' ')[0]}")

    def _read_secret(self, target: TargetRef, *, fresh: bool = True) -> dict[str, Any] | None:
        """The secret (None: there is none); unless ``fresh``, as last seen when the watch keeps it."""
        seen = self.seen
        if not fresh and seen is not None:
            obj = seen.get(target.namespace, target.name)
            if obj is not None:
                return obj
        epoch = seen.epoch if seen is not None else 0
        what = f"read secret {target.namespace}/{target.name}"
        try:
            response = self._call(
                lambda: self.core.read_namespaced_secret(target.name, target.namespace, _preload_content=False), what
            )
        except NotFoundError:
            if seen is not None:
                seen.forget(target.namespace, target.name)
            return None
        read: dict[str, Any] = json.loads(response.data)
        if seen is not None:
            seen.put(read, epoch=epoch)
        return read

    def _inspect(self, obj: dict[str, Any] | None, server: str) -> TargetState:
        if obj is None:
            return TargetState(exists=False)
        managed = (obj.get("metadata", {}).get("labels") or {}).get(MANAGED_LABEL) == "rotator"
        if obj.get("type") != DOCKERCONFIGJSON:
            return TargetState(
                exists=True,
                managed=managed,
                refused=f"secret has type {obj.get('type')!r}, not {DOCKERCONFIGJSON}; rename the target "
                "or delete that secret",
            )
        raw = (obj.get("data") or {}).get(".dockerconfigjson")
        try:
            doc = dockerconfig.parse(base64.b64decode(raw or ""))
        except (dockerconfig.DockerConfigError, ValueError) as exc:
            if self.target.overwrite_invalid:
                return TargetState(exists=True, managed=managed)  # will be replaced on write
            return TargetState(
                exists=True,
                managed=managed,
                refused=f".dockerconfigjson {exc}; fix it, or set overwrite_invalid: true to replace it",
            )
        return TargetState(exists=True, managed=managed, entry=dockerconfig.entry(doc, server))

    def read_state(self, target: TargetRef, server: str) -> TargetState:
        return self._inspect(self._read_secret(target, fresh=False), server)

    def read_entry(self, target: TargetRef, server: str) -> RegistryAuth | None:
        return self.read_state(target, server).entry

    # -- writing -------------------------------------------------------------------------------
    def _report(self, result: str) -> str:
        if self.on_write is not None:
            self.on_write(self.name, result)
        return result

    def write_entry(self, target: TargetRef, auth: RegistryAuth, *, replacing: Replacing | None = None) -> str:
        """Create or merge; "created", "updated", "unchanged", or "skipped" (namespace gone). A transient
        answer (5xx, 429 with its Retry-After, a dropped connection) is retried by the one retry policy,
        inside the step, before the step itself gives up and waits for the credential's retry_backoff."""
        return self.retry.call(lambda: self._write_once(target, auth, replacing), operation="kubernetes.write")

    def _write_once(self, target: TargetRef, auth: RegistryAuth, replacing: Replacing | None) -> str:
        from kubernetes.client.exceptions import ApiException

        fresh = False  # the first attempt may write over the secret as last seen
        for _ in range(CONFLICT_RETRIES):
            obj = self._read_secret(target, fresh=fresh)
            cached, fresh = not fresh and self.seen is not None, True
            try:
                if obj is None:
                    if replacing is not None:
                        replacing(TargetState(exists=False))
                    result = self._create(target, auth)
                else:
                    result = self._update(target, obj, auth, replacing)
            except ApiException as exc:
                if exc.status == 409:
                    self._report("conflict")
                    continue
                if exc.status == 404 and cached and obj is not None:
                    continue  # deleted since it was seen: read (and create) again
                error = map_api_error(exc, f"write secret {target.namespace}/{target.name}")
                self._report("error")
                raise error from None
            except OSError as exc:  # connection refused/reset or a read timeout on the write
                self._report("error")
                raise TransientError(f"write secret {target.namespace}/{target.name}: {type(exc).__name__}") from None
            if result != "skipped":
                self._ensure_service_accounts(target)
            if result in ("created", "updated"):
                self._record(target)
            return self._report(result)
        self._report("error")
        raise TransientError(
            f"write secret {target.namespace}/{target.name}: still conflicting after {CONFLICT_RETRIES} attempts"
        )

    def _record(self, target: TargetRef, *, refused: str = "") -> None:
        if self.recorder is None or self.activity is None:
            return
        reason, message, warning = self.activity
        if refused:
            reason, message, warning = "PullSecretRefused", f"{message}; not written: {refused}", True
        self.recorder.record(target, reason, message, warning=warning)

    def _create(self, target: TargetRef, auth: RegistryAuth) -> str:
        from kubernetes.client.exceptions import ApiException

        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": DOCKERCONFIGJSON,
            "metadata": {
                "name": target.name,
                "namespace": target.namespace,
                "labels": {MANAGED_LABEL: "rotator"},
                "annotations": {CREDENTIAL_ANNOTATION: self.credential},
            },
            "data": {".dockerconfigjson": base64.b64encode(dockerconfig.merge(None, auth)).decode()},
        }
        try:
            self._write_secret(
                body, lambda: self.core.create_namespaced_secret(target.namespace, body, _preload_content=False)
            )
        except ApiException as exc:
            if exc.status == 404:  # the namespace itself is gone
                return "skipped"
            raise
        return "created"

    def _update(self, target: TargetRef, obj: dict[str, Any], auth: RegistryAuth, replacing: Replacing | None) -> str:
        state = self._inspect(obj, auth.server)
        existing: bytes | None = base64.b64decode((obj.get("data") or {}).get(".dockerconfigjson") or "")
        if state.refused:
            if obj.get("type") != DOCKERCONFIGJSON or not self.target.overwrite_invalid:
                self._report("refused")
                self._record(target, refused=state.refused)
                raise TargetRefusedError(f"secret {target.namespace}/{target.name}: {state.refused}")
            existing = None  # overwrite_invalid: replace the malformed document
        if state.entry == auth:
            return "unchanged"
        if replacing is not None:
            replacing(state)
        obj.setdefault("data", {})
        obj["data"] = dict(obj["data"] or {})
        obj["data"][".dockerconfigjson"] = base64.b64encode(dockerconfig.merge(existing, auth)).decode()
        obj.pop("stringData", None)
        self._write_secret(
            obj,
            lambda: self.core.replace_namespaced_secret(target.name, target.namespace, obj, _preload_content=False),
        )
        return "updated"

    def _write_secret(self, obj: dict[str, Any], send: Callable[[], Any]) -> None:
        """A secret write (see ``_write``). What it answers is what the secret now holds: the next write
        goes from there, unless the watch listed again meanwhile (then it may not follow that version)."""
        epoch = self.seen.epoch if self.seen is not None else 0
        response = self._write(obj, send)
        if self.seen is not None:
            self.seen.put(json.loads(response.data), epoch=epoch)

    def remove_entry(self, target: TargetRef, server: str) -> None:
        """Undo our write: delete a secret only rotator's entry lives in, else drop our entry."""

        def attempt() -> None:
            obj = self._read_secret(target)
            if obj is None:
                return
            state = self._inspect(obj, server)
            if state.refused or state.entry is None:
                return
            raw = base64.b64decode((obj.get("data") or {}).get(".dockerconfigjson") or "")
            remaining = dockerconfig.without(raw, server)
            if state.managed and not dockerconfig.parse(remaining).get("auths"):
                rv = obj["metadata"]["resourceVersion"]
                self.core.delete_namespaced_secret(
                    target.name, target.namespace, body={"preconditions": {"resourceVersion": rv}}
                )
                if self.seen is not None:
                    self.seen.forget(target.namespace, target.name)
            else:
                obj["data"][".dockerconfigjson"] = base64.b64encode(remaining).decode()
                self._write_secret(
                    obj,
                    lambda: self.core.replace_namespaced_secret(
                        target.name, target.namespace, obj, _preload_content=False
                    ),
                )

        _until_no_conflict(f"restore secret {target.namespace}/{target.name}", attempt)

    def _ensure_service_accounts(self, target: TargetRef) -> None:
        for account in target.service_accounts:
            self._ensure_service_account(target, account)

    def _ensure_service_account(self, target: TargetRef, account: str) -> None:
        what = f"patch serviceaccount {target.namespace}/{account}"

        def attempt() -> None:
            try:
                response = self._call(
                    lambda: self.core.read_namespaced_service_account(
                        account, target.namespace, _preload_content=False
                    ),
                    what,
                )
            except NotFoundError:
                return  # the account does not exist (yet): an event will bring us back
            obj = json.loads(response.data)
            pulls = list(obj.get("imagePullSecrets") or [])
            if any(ref.get("name") == target.name for ref in pulls):
                return
            obj["imagePullSecrets"] = [*pulls, {"name": target.name}]
            self._write(
                obj,
                lambda: self.core.replace_namespaced_service_account(
                    account, target.namespace, obj, _preload_content=False
                ),
            )

        _until_no_conflict(what, attempt)

    def check_writable(self, targets: list[TargetRef]) -> list[str]:
        """Server-side dry-run writes (nothing persists); the targets that would be refused."""
        from kubernetes.client.exceptions import ApiException

        denied = []
        for target in targets:
            obj = self._read_secret(target)
            try:
                if obj is None:
                    body = {
                        "metadata": {"name": target.name},
                        "type": DOCKERCONFIGJSON,
                        "data": {".dockerconfigjson": base64.b64encode(b'{"auths":{}}').decode()},
                    }
                    self.core.create_namespaced_secret(target.namespace, body, dry_run="All", _preload_content=False)
                else:
                    self.core.replace_namespaced_secret(
                        target.name, target.namespace, obj, dry_run="All", _preload_content=False
                    )
            except ApiException as exc:
                denied.append(f"{target.namespace}/{target.name}: {map_api_error(exc, 'dry-run write')}")
        return denied

    def service_account_missing(self, target: TargetRef) -> list[str]:
        """Listed service accounts that do not reference the secret (for plan and status)."""
        missing = []
        for account in target.service_accounts:
            try:
                response = self._call(
                    lambda: self.core.read_namespaced_service_account(
                        account,  # noqa: B023 - called before the loop moves on
                        target.namespace,
                        _preload_content=False,
                    ),
                    f"read serviceaccount {target.namespace}/{account}",
                )
            except NotFoundError:
                continue
            pulls = json.loads(response.data).get("imagePullSecrets") or []
            if not any(ref.get("name") == target.name for ref in pulls):
                missing.append(account)
        return missing


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Equality-based label selectors (``a=b,c!=d,e``), the subset rotator's config accepts for events."""
    for raw in filter(None, (part.strip() for part in selector.split(","))):
        if "!=" in raw:
            key, value = raw.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in raw:
            key, value = raw.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif raw.startswith("!"):
            if raw[1:] in labels:
                return False
        elif raw not in labels:
            return False
    return True


def _until_no_conflict(what: str, attempt: Callable[[], None]) -> None:
    """Run ``attempt`` (a read, then a write that fails with 409 when someone wrote in between) until it
    goes through: a 409 reads and tries again, a 404 (the object went away) ends it; bounded."""
    from kubernetes.client.exceptions import ApiException

    for _ in range(CONFLICT_RETRIES):
        try:
            attempt()
            return
        except ApiException as exc:
            if exc.status == 409:
                continue
            if exc.status == 404:
                return
            raise map_api_error(exc, what) from None
    raise TransientError(f"{what}: still conflicting after {CONFLICT_RETRIES} attempts")
