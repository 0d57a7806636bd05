"""Typed, validated configuration (YAML file + ``${ENV}`` interpolation).

Every problem is reported with the file, the field path, the bad value and a valid example, all
at once. Secrets are never inline: the admin API key is read from a file or an environment
variable named in the config, and ``redacted()`` is what gets logged.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml

from rotator.adapters.dockerhub import validate_token_settings
from rotator.durations import parse_duration
from rotator.errors import ConfigError
from rotator.imageref import DOCKER_HUB, ImageRefError, plain_http_remote, registry_for_server
from rotator.model import SecretLocation, SecretStr

T = TypeVar("T")

# Kubernetes object names (DNS-1123 subdomain), as the seed states them.
K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
K8S_LABEL_VALUE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# A config has a few hundred values, six levels deep. YAML aliases share one node however often they are
# used, but ${ENV} interpolation copies each use: an alias bomb (a billion uses) would be expanded in
# full. Interpolation stops at these bounds instead, long before memory or the recursion limit suffer.
MAX_VALUES = 100_000
MAX_DEPTH = 64
PROVIDERS = ("ibm-iam", "dockerhub")
# Where the credentials come from: the config file, RegistryCredential resources in the cluster, or both.
CREDENTIALS_FROM = ("file", "cluster", "both")


@dataclass(frozen=True, kw_only=True)
class SecretSource:
    """Where a secret comes from: a file path or an environment variable, never the config itself."""

    file: Path | None = None
    env: str | None = None
    field_path: str = ""

    def load(self) -> SecretStr:
        if self.file is not None:
            try:
                value = self.file.read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"{self.field_path}: cannot read {self.file}: {exc.strerror}; create the file holding the key "
                    "(mode 0600) or point the field at the right path"
                ) from None
            where = f"file {self.file}"
        else:
            assert self.env is not None
            if self.env not in os.environ:
                raise ConfigError(
                    f"{self.field_path}: environment variable {self.env} is not set; set it in rotator's "
                    "environment to the API key, or use file: instead of env:"
                )
            value = os.environ[self.env].strip()
            where = f"environment variable {self.env}"
        if not value:
            raise ConfigError(f"{self.field_path}: {where} is empty; put the API key there")
        return SecretStr(value)

    def describe(self) -> SecretLocation:
        return SecretLocation(f"file:{self.file}" if self.file is not None else f"env:{self.env}")


@dataclass(frozen=True, kw_only=True)
class TrustedProfileSource:
    """Keyless IAM sign-in: assume a trusted profile with the compute-resource token the platform
    projects into the pod (re-read for every sign-in: the kubelet rotates it)."""

    profile_id: str | None = None
    profile_name: str | None = None
    cr_token_file: Path
    field_path: str = ""

    def load(self) -> SecretStr:
        """The current CR token (a credential: never shown)."""
        try:
            value = self.cr_token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"{self.field_path}.cr_token_file: cannot read {self.cr_token_file}: {exc.strerror}; mount the "
                "projected service-account token there (deploy/components/trusted-profile) or fix the path"
            ) from None
        if not value:
            raise ConfigError(f"{self.field_path}.cr_token_file: {self.cr_token_file} is empty")
        return SecretStr(value)

    def describe(self) -> SecretLocation:
        profile = f"id {self.profile_id}" if self.profile_id else f"name {self.profile_name}"
        return SecretLocation(f"trusted-profile:{profile} cr_token_file:{self.cr_token_file}")


IamAuth = SecretSource | TrustedProfileSource


@dataclass(frozen=True, kw_only=True)
class IamProviderSettings:
    kind: str = "ibm-iam"
    endpoint: str = "https://iam.cloud.ibm.com"
    account_id: str
    service_id: str
    apikey: IamAuth  # an admin API key's source, or a trusted profile (config: apikey or auth)
    # How long a minted key lives at IAM (its expires_at), None: it does not expire; resolved from
    # key_expiry (auto: max_age + grace_period + delete_after + KEY_EXPIRY_MARGIN) when the credential loads.
    key_lifetime: dt.timedelta | None = None
    # Alert when the current key is this close to its expires_at (rotation is stuck).
    key_expiry_margin: dt.timedelta | None = None
    key_expiry: str | dt.timedelta = "auto"  # as configured: auto | off | a duration
    action_when_leaked: str = "disable"  # what IAM does with a key it finds in a public leak
    lock_current_key: bool = False  # mint keys entity-locked; rotator unlocks its own lock to retire one
    allow_insecure_http: bool = False  # endpoint may be plain http to a host that is not loopback

    # How `rotator plan` and `rotator check` name the provider.
    @property
    def key_noun(self) -> str:
        return f"API key for {self.service_id}"

    @property
    def service_label(self) -> str:
        return f"IAM {self.endpoint}"

    @property
    def rights_label(self) -> str:
        return f"may manage keys of {self.service_id}"


@dataclass(frozen=True, kw_only=True)
class DockerHubProviderSettings:
    kind: str = "dockerhub"
    endpoint: str = "https://hub.docker.com"
    username: str  # rotator's Docker ID: signs in to the Hub API and owns the tokens (or the organization)
    password: SecretSource  # its password or a personal access token of its own
    token_type: str = "personal"  # personal | organization
    org: str | None = None
    scopes: tuple[str, ...] = ("repo:read",)
    repositories: tuple[str, ...] = ()  # organization tokens: org/repo (or org/*) with the scopes
    allow_insecure_http: bool = False  # endpoint may be plain http to a host that is not loopback

    @property
    def registry_username(self) -> str:
        """Who pulls with a minted token: the Docker ID (PAT) or the organization (OAT)."""
        return self.org if self.token_type == "organization" and self.org else self.username

    @property
    def key_noun(self) -> str:
        return f"{self.token_type} access token of {self.registry_username}"

    @property
    def service_label(self) -> str:
        return f"Docker Hub {self.endpoint}"

    @property
    def rights_label(self) -> str:
        return f"may manage {self.token_type} access tokens of {self.registry_username}"


@dataclass(frozen=True, kw_only=True)
class RegistrySettings:
    server: str
    username: str
    images: tuple[str, ...]
    # Base URL to reach the registry's v2 API when it differs from https://<server> (sandbox, mirrors).
    endpoint: str | None = None
    verify_budget: dt.timedelta = dt.timedelta(seconds=60)
    # How long a rotation waits after an inconclusive check (429, 5xx, unknown image) before checking again.
    recheck_interval: dt.timedelta = dt.timedelta(seconds=30)
    # Token realm hosts, besides the registry's own and known ones, that may receive the credential.
    token_realm_hosts: tuple[str, ...] = ()
    allow_insecure_http: bool = False  # endpoint may be plain http to a host that is not loopback


@dataclass(frozen=True, kw_only=True)
class ScheduleSettings:
    interval: dt.timedelta | None = None
    cron: str | None = None
    jitter: dt.timedelta = dt.timedelta(0)
    # Planned rotations start only inside this window (cron start + duration); emergencies ignore it.
    window_cron: str | None = None
    window_duration: dt.timedelta | None = None
    # How often the current key is checked at the registry (HEAD only); a rejected key rotates at once.
    health_check: dt.timedelta | None = dt.timedelta(minutes=5)
    # After a failed rotation, or a pass that could not run (provider refused the admin key, API down):
    # the next try waits retry_backoff, doubling each time, at most retry_backoff_max.
    retry_backoff: dt.timedelta = dt.timedelta(minutes=1)
    retry_backoff_max: dt.timedelta = dt.timedelta(hours=1)


@dataclass(frozen=True, kw_only=True)
class NamespaceSelection:
    names: tuple[str, ...] = ()
    selector: str | None = None
    all: bool = False
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class KubernetesTarget:
    secret_name: str
    namespaces: NamespaceSelection
    service_accounts: tuple[str, ...] = ()
    # Replace a .dockerconfigjson that is not valid JSON instead of refusing to touch it.
    overwrite_invalid: bool = False
    # A cluster of a fleet (``targets.kubernetes`` as a list); None: the cluster of the top-level
    # ``kubernetes`` connection (the single-mapping form).
    cluster: ClusterConnection | None = None


@dataclass(frozen=True, kw_only=True)
class ClusterConnection:
    """How to reach one cluster of a fleet: a kubeconfig (and context) or the pod's own service account."""

    name: str
    kubeconfig: Path | None = None
    context: str | None = None
    in_cluster: bool = False


@dataclass(frozen=True, kw_only=True)
class CodeEngineProject:
    project_id: str
    # The project's regional API base URL, /v2 included: https://api.<region>.codeengine.cloud.ibm.com/v2
    endpoint: str


@dataclass(frozen=True, kw_only=True)
class CodeEngineTarget:
    """A registry secret of the same name in each listed Code Engine project."""

    secret_name: str
    projects: tuple[CodeEngineProject, ...]
    # An IAM API key (or trusted profile) that may manage the projects' secrets; None: the provider's.
    apikey: IamAuth | None = None
    # IAM token endpoint for that key; None: the provider's IAM endpoint.
    iam_endpoint: str | None = None
    allow_insecure_http: bool = False  # the endpoints above may be plain http to a host that is not loopback


@dataclass(frozen=True, kw_only=True)
class CredentialSettings:
    name: str
    provider: IamProviderSettings | DockerHubProviderSettings
    registry: RegistrySettings
    schedule: ScheduleSettings
    max_age: dt.timedelta
    grace_period: dt.timedelta
    delete_after: dt.timedelta
    kubernetes: KubernetesTarget | None = None
    codeengine: CodeEngineTarget | None = None
    # ``targets.kubernetes`` as a list: one target per cluster (then ``kubernetes`` is None).
    clusters: tuple[KubernetesTarget, ...] = ()
    # A fleet cluster unreachable this long no longer holds back disabling a retired key, but only
    # when ``revoke_despite_unreachable`` says so; otherwise the key stays enabled (and alerts).
    unreachable_timeout: dt.timedelta = dt.timedelta(hours=24)
    revoke_despite_unreachable: bool = False

    @property
    def kubernetes_targets(self) -> tuple[KubernetesTarget, ...]:
        """Every Kubernetes target: the one of the single-mapping form, or one per fleet cluster."""
        return (self.kubernetes,) if self.kubernetes is not None else self.clusters


@dataclass(frozen=True, kw_only=True)
class KubernetesSettings:
    kubeconfig: Path | None = None
    context: str | None = None
    in_cluster: bool = False
    concurrency: int = 16
    # Where rotator itself lives: its state ConfigMap, its Lease.
    namespace: str = "rotator-system"
    # Record Kubernetes Events on the secrets rotator writes (rotated, rolled back, healed, refused).
    events: bool = True


@dataclass(frozen=True, kw_only=True)
class DaemonSettings:
    # Leader election on a coordination.k8s.io Lease in kubernetes.namespace; off outside a cluster.
    leader_election: bool = False
    lease_name: str = "rotator-leader"
    lease_duration: dt.timedelta = dt.timedelta(seconds=15)
    renew_deadline: dt.timedelta = dt.timedelta(seconds=10)
    retry_period: dt.timedelta = dt.timedelta(seconds=2)
    # Kubernetes watches: new namespaces, drifted or deleted secrets, new service accounts.
    watch: bool = True
    # Each watch stream is re-opened (from its resourceVersion) after this long.
    watch_timeout: dt.timedelta = dt.timedelta(minutes=1)
    # Longest sleep between passes when nothing is due (drift is caught by watches sooner).
    resync: dt.timedelta = dt.timedelta(minutes=5)
    # How long SIGTERM waits for the step in progress.
    shutdown_grace: dt.timedelta = dt.timedelta(seconds=25)


@dataclass(frozen=True, kw_only=True)
class StateSettings:
    kind: str = "file"  # "file" | "configmap"
    path: Path = Path("rotator-state")
    name: str = "rotator-state"


AUTH_MODES = ("token-file", "kubernetes", "disabled")
# The audience callers' projected service-account tokens are minted for (deploy/examples/caller-pod.yaml).
KUBERNETES_AUDIENCE = "rotator"


@dataclass(frozen=True, kw_only=True)
class ApiAuthSettings:
    """How the HTTP API checks bearer tokens (see ``rotator/apiauth.py``).

    ``disabled`` accepts no token at all: the /v1 endpoints answer 401 and only /healthz, /readyz,
    /metrics (when public) and /openapi.json are served.
    """

    mode: str = "disabled"  # "token-file" | "kubernetes" | "disabled"
    file: Path | None = None  # token-file: lines "<token> <principal> <read|rotate>"
    # kubernetes: TokenReview audiences; a token must be issued for one of them. The parser defaults
    # this to (KUBERNETES_AUDIENCE,) in kubernetes mode, so a token minted for the apiserver (or for
    # another service) cannot be replayed here. Empty: the apiserver's own audiences.
    audiences: tuple[str, ...] = ()
    cache_ttl: dt.timedelta = dt.timedelta(seconds=10)  # kubernetes: review results kept this long
    namespace: str = "rotator-system"  # kubernetes: namespace of the SubjectAccessReview


@dataclass(frozen=True, kw_only=True)
class TlsSettings:
    """The API listener's certificate chain and key (PEM), re-read when either file changes."""

    cert_file: Path
    key_file: Path


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    listen: str = "0.0.0.0:8080"  # host:port, [v6]:port; port 0 picks a free one
    metrics_public: bool = True
    auth: ApiAuthSettings = field(default_factory=ApiAuthSettings)
    tls: TlsSettings | None = None  # plain HTTP when unset
    # A request's headers must arrive within this long (from the connection or its first byte), so a
    # client trickling headers (slowloris) cannot hold a connection open.
    header_timeout: dt.timedelta = dt.timedelta(seconds=10)
    # Token bucket per principal on the mutating endpoints.
    rate_per_minute: float = 10.0
    rate_burst: int = 5
    idempotency_ttl: dt.timedelta = dt.timedelta(hours=24)

    @property
    def host(self) -> str:
        return _split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return _split_listen(self.listen)[1]


@dataclass(frozen=True, kw_only=True)
class Settings:
    source: Path
    credentials: tuple[CredentialSettings, ...]
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)
    state: StateSettings = field(default_factory=StateSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    credentials_from: str = "file"  # "file" | "cluster" | "both"

    def credential(self, name: str) -> CredentialSettings:
        for cred in self.credentials:
            if cred.name == name:
                return cred
        known = ", ".join(c.name for c in self.credentials)
        raise ConfigError(f"{self.source}: no credential named {name!r}; configured: {known}")

    def insecure_endpoints(self) -> list[str]:
        """Endpoints that ``allow_insecure_http`` lets be plain http to another host (``rotator check`` warns)."""
        found = []
        for i, cred in enumerate(self.credentials):
            urls: list[tuple[str, bool, tuple[str | None, ...]]] = [
                ("provider", cred.provider.allow_insecure_http, (cred.provider.endpoint,)),
                ("registry", cred.registry.allow_insecure_http, (cred.registry.endpoint,)),
            ]
            if (ce := cred.codeengine) is not None:
                endpoints = (ce.iam_endpoint, *(p.endpoint for p in ce.projects))
                urls.append(("targets.codeengine", ce.allow_insecure_http, endpoints))
            found += [
                f"credentials[{i}].{where}: {url} is plain http (allow_insecure_http: true): keys and tokens "
                "cross the network unencrypted"
                for where, allowed, endpoints in urls
                for url in dict.fromkeys(endpoints)
                if allowed and url and plain_http_remote(url)
            ]
        return found

    def redacted(self) -> dict[str, Any]:
        """The loaded config for logging: secret sources are shown by location, never by value."""

        def clean(value: Any) -> Any:
            if isinstance(value, SecretSource | TrustedProfileSource):
                return value.describe()
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items() if k != "field_path"}
            if isinstance(value, list | tuple):
                return [clean(v) for v in value]
            if isinstance(value, dt.timedelta):
                return f"{int(value.total_seconds())}s"
            if isinstance(value, Path):
                return str(value)
            return value

        data = {f: getattr(self, f) for f in ("credentials", "kubernetes", "state", "daemon", "server")}
        out = {
            k: clean(asdict(v) if hasattr(v, "__dataclass_fields__") else [asdict(c) for c in v])
            for k, v in data.items()
        }
        # asdict turned SecretSource into dicts: restore the short description.
        for cred, raw in zip(self.credentials, out["credentials"], strict=True):
            if isinstance(cred.provider, DockerHubProviderSettings):
                raw["provider"]["password"] = cred.provider.password.describe()
            else:
                raw["provider"]["apikey"] = cred.provider.apikey.describe()
            if cred.codeengine is not None and cred.codeengine.apikey is not None:
                raw["codeengine"]["apikey"] = cred.codeengine.apikey.describe()
        out["source"] = str(self.source)
        return out


# -- reading ---------------------------------------------------------------------------------


class _Errors:
    def __init__(self, source: Path) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, path: str, message: str, example: str | None = None) -> None:
        text = f"{self.source}: {path}: {message}"
        if example is not None:
            text += f"; for example: {example}"
        self.items.append(text)


class _Node:
    """A mapping in the YAML document, with its field path for error messages."""

    def __init__(self, data: Any, path: str, errors: _Errors) -> None:
        self.path = path
        self.errors = errors
        self.data: dict[str, Any] = data if isinstance(data, dict) else {}
        if not isinstance(data, dict):
            errors.add(path or "(top level)", f"expected a mapping, got {_show(data, path)}")

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def known(self, *keys: str) -> None:
        for key in self.data:
            if key not in keys:
                self.errors.add(self.at(str(key)), f"unknown field; known fields here: {', '.join(keys)}")

    def value(self, key: str, convert: Callable[[Any], T], *, example: str, default: Any = ...) -> T | None:
        if key not in self.data or self.data[key] is None:
            if default is ...:
                self.errors.add(self.at(key), "is required", example)
                return None
            return default  # type: ignore[no-any-return]
        try:
            return convert(self.data[key])
        except (ValueError, TypeError) as exc:
            self.errors.add(self.at(key), f"{_show(self.data[key], self.at(key))} {exc}", example)
            return None

    def child(self, key: str, *, required: bool = True) -> _Node | None:
        if key not in self.data:
            if required:
                self.errors.add(self.at(key), "is required")
            return None
        return _Node(self.data[key], self.at(key), self.errors)


_SECRET_PATH = re.compile(r"(apikey|password|secret|token)(\.|$)", re.IGNORECASE)


def _show(value: Any, path: str = "") -> str:
    """The bad value for an error message; never the value of a field that holds a credential."""
    # The field itself (apikey: "...") or its child (apikey.env: ...): look at the last two names.
    if _SECRET_PATH.search(".".join(path.split(".")[-2:])):
        return "(value hidden)"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("is not a non-empty string")
    return value.strip()


def _k8s_name(value: Any) -> str:
    text = _string(value)
    if len(text) > 253 or not K8S_NAME.match(text):
        raise ValueError(
            "is not a valid Kubernetes name (lowercase letters, digits, '-' and '.', starting and ending "
            "with a letter or digit, at most 253 characters)"
        )
    return text


def _namespace_name(value: Any) -> str:
    text = _string(value)
    if len(text) > 63 or not K8S_LABEL_VALUE_NAME.match(text):
        raise ValueError("is not a valid namespace name (lowercase letters, digits and '-', at most 63)")
    return text


def _duration(value: Any) -> dt.timedelta:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("is not a duration")
    if isinstance(value, int):
        raise ValueError("has no unit; write e.g. 90s, 15m, 24h or 30d")
    return parse_duration(value)


def _positive_duration(value: Any) -> dt.timedelta:
    delta = _duration(value)
    if delta.total_seconds() <= 0:
        raise ValueError("must be longer than zero")
    return delta


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("is not true or false")
    return value


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"is not a whole number from {low} to {high}")
        return value

    return convert


def _list_of(convert: Callable[[Any], T]) -> Callable[[Any], tuple[T, ...]]:
    def convert_list(value: Any) -> tuple[T, ...]:
        if not isinstance(value, list):
            raise ValueError("is not a list")
        out = []
        for i, item in enumerate(value):
            try:
                out.append(convert(item))
            except ValueError as exc:
                raise ValueError(f"(item {i}: {_show(item)}) {exc}") from None
        return tuple(out)

    return convert_list


def _url(value: Any) -> str:
    text = _string(value)
    if not re.match(r"^https?://[^\s/]+", text):
        raise ValueError("is not an http(s) URL")
    return text.rstrip("/")


def _host_name(value: Any) -> str:
    text = _string(value).lower()
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?|[0-9a-f:.]*:[0-9a-f:.]*", text):
        raise ValueError("is not a host name (no scheme, port or path: auth.example.com)")
    return text


def _insecure_http(node: _Node, keys: tuple[str, ...]) -> bool:
    """``allow_insecure_http`` of this node; without it, refuse each of ``keys`` that is plain remote http."""
    allowed = bool(node.value("allow_insecure_http", _bool, example="false", default=False))
    for key in keys:
        values = node.data.get(key)
        urls = [values] if not isinstance(values, list) else [v.get("endpoint") for v in values if isinstance(v, dict)]
        for url in urls:
            if not allowed and isinstance(url, str) and plain_http_remote(url.strip()):
                node.errors.add(
                    node.at(key),
                    f"{url.strip()!r} is plain http to a host that is not loopback: keys and tokens would cross the "
                    f"network unencrypted; use https, or (a lab only) set {node.at('allow_insecure_http')}: true",
                    url.strip().replace("http://", "https://", 1),
                )
    return allowed


def _cron(value: Any) -> str:
    text = _string(value)
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(text, timezone="UTC")
    except ValueError as exc:
        raise ValueError(f"is not a 5-field cron expression ({exc})") from None
    return text


def _image(value: Any) -> str:
    text = _string(value)
    if "/" not in text or any(c.isspace() for c in text):
        raise ValueError("is not an image reference of the form registry/namespace/repository:tag")
    return text


def _split_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError("is not host:port (e.g. 0.0.0.0:8080, [::]:8080, 127.0.0.1:0)")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise ValueError("is not host:port (e.g. 0.0.0.0:8080, [::]:8080, 127.0.0.1:0)")
        host = host[1:-1]
    elif ":" in host or any(c.isspace() for c in host):
        raise ValueError("is not host:port; write an IPv6 address in brackets, e.g. [::]:8080")
    return host, int(port)


def _listen(value: Any) -> str:
    text = _string(value)
    _split_listen(text)
    return text


def _positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1_000_000:
        raise ValueError("is not a number above 0 (and at most 1000000)")
    return float(value)


class _Interpolation:
    """``${ENV}`` and ``${ENV:-default}`` in every string, counting the values it copies."""

    def __init__(self, errors: _Errors) -> None:
        self.errors = errors
        self.values = 0

    def __call__(self, value: Any, path: str = "", depth: int = 0) -> Any:
        self.values += 1
        if self.values > MAX_VALUES or depth > MAX_DEPTH:
            what = f"more than {MAX_VALUES} values" if self.values > MAX_VALUES else f"more than {MAX_DEPTH} levels"
            raise ConfigError(
                f"{self.errors.source}: the document expands to {what} (at {path or 'the top level'}); "
                "a YAML anchor used over and over, or one that contains itself, is refused: "
                "write the values out (a rotator config has a few hundred)"
            )
        if isinstance(value, str):
            return _INTERPOLATION.sub(lambda match: self._variable(match, path), value)
        if isinstance(value, dict):
            return {k: self(v, f"{path}.{k}" if path else str(k), depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [self(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
        return value

    def _variable(self, match: re.Match[str], path: str) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        self.errors.add(path, f"environment variable {name} is not set", f"export {name}=... or ${{{name}:-default}}")
        return ""


def _secret_source(node: _Node, base_dir: Path) -> SecretSource | None:
    node.known("file", "env")
    has_file, has_env = "file" in node.data, "env" in node.data
    if has_file == has_env:
        node.errors.add(
            node.path,
            "give exactly one of file (a path to a file holding the key) or env (an environment variable "
            "name); keys are never written inline",
            "apikey: {file: /var/run/secrets/rotator/apikey}",
        )
        return None
    if has_file:
        path = node.value("file", _string, example="/var/run/secrets/rotator/apikey")
        if path is None:
            return None
        resolved = Path(path) if Path(path).is_absolute() else base_dir / path
        return SecretSource(file=resolved, field_path=node.path)
    env = node.value("env", _string, example="ROTATOR_ADMIN_APIKEY")
    if env is None:
        return None
    if not ENV_NAME.match(env):
        node.errors.add(node.at("env"), f"{env!r} is not an environment variable name", "ROTATOR_ADMIN_APIKEY")
        return None
    return SecretSource(env=env, field_path=node.path)


# auto key_expiry: how long a key outlives its last planned deletion, so a stuck rotator is alerted on
# (RotatorKeyExpiringSoon) a week before its keys expire, time for someone to notice and fix it.
KEY_EXPIRY_MARGIN = dt.timedelta(days=7)
LEAK_ACTIONS = ("none", "disable", "delete")


def _key_expiry(value: Any) -> str | dt.timedelta:
    if value in ("auto", "off"):
        return str(value)
    if value is False:  # YAML reads a bare off as false
        return "off"
    return _positive_duration(value)


TRUSTED_PROFILE_EXAMPLE = (
    "auth: {kind: trusted-profile, profile_name: rotator, cr_token_file: /var/run/secrets/tokens/sa-token}"
)
# Where IKS/ROKS project the service-account token for IAM (IBM's documented mount), the SDK's default too.
DEFAULT_CR_TOKEN_FILE = "/var/run/secrets/tokens/sa-token"


def _iam_auth(node: _Node, base_dir: Path, *, required: bool) -> tuple[bool, IamAuth | None]:
    """(given, source) from ``apikey: {file|env}`` or ``auth: {kind: apikey|trusted-profile, ...}``."""
    apikey_node, auth_node = node.child("apikey", required=False), node.child("auth", required=False)
    if apikey_node is not None and auth_node is not None:
        node.errors.add(node.at("auth"), "give either apikey or auth, not both", TRUSTED_PROFILE_EXAMPLE)
        return True, None
    if apikey_node is not None:
        return True, _secret_source(apikey_node, base_dir)
    if auth_node is None:
        if required:
            node.errors.add(
                node.at("apikey"), "is required (or auth)", "apikey: {file: /var/run/secrets/rotator/apikey}"
            )
        return False, None
    kind = auth_node.value("kind", _string, example="trusted-profile")
    if kind == "apikey":
        auth_node.data = {k: v for k, v in auth_node.data.items() if k != "kind"}
        return True, _secret_source(auth_node, base_dir)
    if kind != "trusted-profile":
        if kind is not None:
            auth_node.errors.add(
                auth_node.at("kind"), f"{kind!r} is not apikey or trusted-profile", TRUSTED_PROFILE_EXAMPLE
            )
        return True, None
    auth_node.known("kind", "profile_id", "profile_name", "cr_token_file")
    profile_id = auth_node.value("profile_id", _string, example="Profile-3c2b1a09-...", default=None)
    profile_name = auth_node.value("profile_name", _string, example="rotator", default=None)
    if (profile_id is None) == (profile_name is None):
        auth_node.errors.add(auth_node.path, "give exactly one of profile_id or profile_name", TRUSTED_PROFILE_EXAMPLE)
        return True, None
    if profile_id is not None and not profile_id.startswith("Profile-"):
        auth_node.errors.add(auth_node.at("profile_id"), f"{profile_id!r} is not a trusted profile ID (Profile-<uuid>)")
        return True, None
    token_file = auth_node.value("cr_token_file", _string, example=DEFAULT_CR_TOKEN_FILE, default=DEFAULT_CR_TOKEN_FILE)
    if token_file is None:
        return True, None
    resolved = Path(token_file) if Path(token_file).is_absolute() else base_dir / token_file
    return True, TrustedProfileSource(
        profile_id=profile_id, profile_name=profile_name, cr_token_file=resolved, field_path=auth_node.path
    )


def _provider(node: _Node, base_dir: Path) -> IamProviderSettings | DockerHubProviderSettings | None:
    kind = node.value("kind", _string, example="ibm-iam")
    if kind is not None and kind not in PROVIDERS:
        node.errors.add(node.at("kind"), f"{kind!r} is not a known provider ({', '.join(PROVIDERS)})", "ibm-iam")
        return None
    if kind == "dockerhub":
        return _dockerhub_provider(node, base_dir)
    return _iam_provider(node, base_dir)


def _iam_provider(node: _Node, base_dir: Path) -> IamProviderSettings | None:
    node.known(
        "kind",
        "endpoint",
        "account_id",
        "service_id",
        "apikey",
        "auth",
        "key_expiry",
        "action_when_leaked",
        "lock_current_key",
        "allow_insecure_http",
    )
    endpoint = node.value("endpoint", _url, example="https://iam.cloud.ibm.com", default="https://iam.cloud.ibm.com")
    insecure = _insecure_http(node, ("endpoint",))
    account_id = node.value("account_id", _string, example="5e1f0d2c9a8b4c7d8e6f1a2b3c4d5e6f")
    service_id = node.value("service_id", _string, example="ServiceId-7b0c0a62-0d5b-4c43-9a3e-5f7c2d1e8a90")
    if service_id is not None and not service_id.startswith("ServiceId-"):
        node.errors.add(
            node.at("service_id"),
            f"{service_id!r} is not a service ID (ServiceId-<uuid>)",
            "ServiceId-7b0c0a62-0d5b-4c43-9a3e-5f7c2d1e8a90",
        )
    _, apikey = _iam_auth(node, base_dir, required=True)
    key_expiry = node.value("key_expiry", _key_expiry, example="auto, off or 120d", default="auto")
    leaked = node.value("action_when_leaked", _string, example="disable", default="disable")
    lock = node.value("lock_current_key", _bool, example="true", default=False)
    if leaked is not None and leaked not in LEAK_ACTIONS:
        node.errors.add(node.at("action_when_leaked"), f"{leaked!r} is not one of {', '.join(LEAK_ACTIONS)}", "disable")
        leaked = None
    if None in (endpoint, account_id, service_id, apikey, key_expiry, leaked, lock):
        return None
    assert endpoint and account_id and service_id and apikey and key_expiry and leaked
    return IamProviderSettings(
        endpoint=endpoint,
        account_id=account_id,
        service_id=service_id,
        apikey=apikey,
        key_expiry=key_expiry,
        action_when_leaked=leaked,
        lock_current_key=bool(lock),
        allow_insecure_http=insecure,
    )


def _with_key_expiry(node: _Node, provider: IamProviderSettings, lifetimes: dt.timedelta) -> IamProviderSettings | None:
    """``provider`` with key_lifetime and key_expiry_margin resolved against the credential's lifetimes
    (max_age + grace_period + delete_after: how long rotator itself keeps a key)."""
    if provider.key_expiry == "off":
        return provider
    if provider.key_expiry == "auto":
        return replace(provider, key_lifetime=lifetimes + KEY_EXPIRY_MARGIN, key_expiry_margin=KEY_EXPIRY_MARGIN)
    assert isinstance(provider.key_expiry, dt.timedelta)
    if provider.key_expiry <= lifetimes:
        node.errors.add(
            node.at("provider.key_expiry"),
            f"is not longer than max_age + grace_period + delete_after ({int(lifetimes.total_seconds())}s): keys "
            "would expire before rotator retires them",
            "auto",
        )
        return None
    return replace(provider, key_lifetime=provider.key_expiry, key_expiry_margin=provider.key_expiry - lifetimes)


_DOCKER_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{1,38}$")
DOCKERHUB_EXAMPLE = (
    "{kind: dockerhub, username: rotatorbot, password: {file: /var/run/secrets/rotator/dockerhub-password}, "
    "token_type: organization, org: acme, repositories: [acme/app]}"
)


def _docker_id(value: Any) -> str:
    text = _string(value)
    if not _DOCKER_ID.match(text):
        raise ValueError("is not a Docker ID or organization name (lowercase letters and digits)")
    return text


def _dockerhub_provider(node: _Node, base_dir: Path) -> DockerHubProviderSettings | None:
    node.known(
        "kind", "endpoint", "username", "password", "token_type", "org", "scopes", "repositories", "allow_insecure_http"
    )
    endpoint = node.value("endpoint", _url, example="https://hub.docker.com", default="https://hub.docker.com")
    insecure = _insecure_http(node, ("endpoint",))
    username = node.value("username", _docker_id, example="rotatorbot")
    token_type = node.value("token_type", _string, example="organization", default="personal")
    org = node.value("org", _docker_id, example="acme", default=None)
    scopes = node.value("scopes", _list_of(_string), example="[repo:read] or [repo-pull]", default=None)
    repositories = node.value("repositories", _list_of(_string), example="[acme/app]", default=())
    password_node = node.child("password")
    password = _secret_source(password_node, base_dir) if password_node else None
    if None in (endpoint, username, token_type, password, repositories):
        return None
    assert endpoint and username and token_type and password and repositories is not None
    try:
        chosen = validate_token_settings(token_type, org, scopes, repositories)
    except ValueError as exc:
        node.errors.add(node.path, str(exc), DOCKERHUB_EXAMPLE)
        return None
    return DockerHubProviderSettings(
        endpoint=endpoint,
        username=username,
        password=password,
        token_type=token_type,
        org=org,
        scopes=chosen,
        repositories=repositories,
        allow_insecure_http=insecure,
    )


def _dockerhub_registry(
    node: _Node, registry: RegistrySettings, provider: DockerHubProviderSettings
) -> RegistrySettings:
    """Docker Hub tokens pull from Docker Hub, as the Docker ID (PAT) or the organization (OAT)."""
    try:
        host = registry_for_server(registry.server)
    except ImageRefError:
        host = ""
    if host != DOCKER_HUB:
        node.errors.add(
            node.at("server"),
            f"{registry.server!r} is not Docker Hub, where {provider.key_noun}s pull (set endpoint to reach a mirror)",
            "https://index.docker.io/v1/",
        )
    expected = provider.registry_username
    if "username" not in node.data:
        return replace(registry, username=expected)
    if registry.username != expected:
        node.errors.add(
            node.at("username"),
            f"{registry.username!r} does not go with a {provider.token_type} access token; it pulls as {expected!r}",
            expected,
        )
    return registry


def _registry(node: _Node) -> RegistrySettings | None:
    node.known(
        "server",
        "username",
        "images",
        "endpoint",
        "verify_budget",
        "recheck_interval",
        "token_realm_hosts",
        "allow_insecure_http",
    )
    server = node.value("server", _string, example="us.icr.io")
    username = node.value("username", _string, example="iamapikey", default="iamapikey")
    images = node.value("images", _list_of(_image), example="[us.icr.io/team/app:latest]")
    if images is not None and not images:
        node.errors.add(
            node.at("images"),
            "is empty; name at least one image the key must pull",
            "[us.icr.io/team/app:latest]",
        )
    endpoint = node.value("endpoint", _url, example="https://us.icr.io", default=None)
    insecure = _insecure_http(node, ("endpoint",))
    budget = node.value("verify_budget", _positive_duration, example="60s", default=dt.timedelta(seconds=60))
    recheck = node.value("recheck_interval", _positive_duration, example="30s", default=dt.timedelta(seconds=30))
    realm_hosts = node.value("token_realm_hosts", _list_of(_host_name), example="[auth.example.com]", default=())
    if None in (server, username, images, budget, recheck, realm_hosts):
        return None
    assert server and username and images is not None and budget and recheck and realm_hosts is not None
    return RegistrySettings(
        server=server,
        username=username,
        images=images,
        endpoint=endpoint,
        verify_budget=budget,
        recheck_interval=recheck,
        token_realm_hosts=realm_hosts,
        allow_insecure_http=insecure,
    )


def _schedule(node: _Node | None) -> ScheduleSettings:
    if node is None:
        return ScheduleSettings(interval=dt.timedelta(days=1))
    node.known("interval", "cron", "jitter", "window", "health_check", "retry_backoff", "retry_backoff_max")
    interval = node.value("interval", _positive_duration, example="24h", default=None)
    cron = node.value("cron", _cron, example="0 3 * * *", default=None)
    jitter = node.value("jitter", _duration, example="5m", default=dt.timedelta(0))
    health = node.value("health_check", _duration, example="5m", default=dt.timedelta(minutes=5))
    backoff = node.value("retry_backoff", _positive_duration, example="1m", default=dt.timedelta(minutes=1))
    backoff_max = node.value("retry_backoff_max", _positive_duration, example="1h", default=dt.timedelta(hours=1))
    if backoff and backoff_max and backoff_max < backoff:
        node.errors.add(node.at("retry_backoff_max"), "must not be shorter than retry_backoff", "retry_backoff_max: 1h")
    if interval is not None and cron is not None:
        node.errors.add(node.path, "give interval or cron, not both", "interval: 24h")
    if interval is None and cron is None and "interval" not in node.data and "cron" not in node.data:
        node.errors.add(node.path, "needs interval or cron", "interval: 24h")
    window_cron = window_duration = None
    window = node.child("window", required=False)
    if window is not None:
        window.known("cron", "duration")
        window_cron = window.value("cron", _cron, example="0 2 * * 1-5")
        window_duration = window.value("duration", _positive_duration, example="2h")
    return ScheduleSettings(
        interval=interval,
        cron=cron,
        jitter=jitter or dt.timedelta(0),
        window_cron=window_cron,
        window_duration=window_duration,
        health_check=health if health else None,
        retry_backoff=backoff or dt.timedelta(minutes=1),
        retry_backoff_max=backoff_max or dt.timedelta(hours=1),
    )


def _namespaces(node: _Node) -> NamespaceSelection | None:
    node.known("names", "selector", "all", "exclude")
    names = node.value("names", _list_of(_namespace_name), example="[team-a, team-b]", default=())
    selector = node.value("selector", _string, example="rotator.example.com/pull-secrets=enabled", default=None)
    every = node.value("all", _bool, example="true", default=False)
    exclude = node.value("exclude", _list_of(_namespace_name), example="[kube-system]", default=())
    chosen = sum(bool(x) for x in (names, selector, every))
    if chosen != 1:
        node.errors.add(
            node.path,
            "choose namespaces by exactly one of names, selector or all",
            "{selector: team=platform} or {names: [team-a]} or {all: true, exclude: [kube-system]}",
        )
        return None
    return NamespaceSelection(names=names or (), selector=selector, all=bool(every), exclude=exclude or ())


def _kubernetes_target(
    node: _Node, *, cluster: ClusterConnection | None = None, default_name: str | None = None
) -> KubernetesTarget | None:
    if cluster is None:
        node.known("secret_name", "namespaces", "service_accounts", "overwrite_invalid")
    default = ... if default_name is None else default_name
    secret_name = node.value("secret_name", _k8s_name, example="icr-pull-secret", default=default)
    ns_node = node.child("namespaces")
    namespaces = _namespaces(ns_node) if ns_node else None
    service_accounts = node.value("service_accounts", _list_of(_k8s_name), example="[default]", default=())
    overwrite = node.value("overwrite_invalid", _bool, example="false", default=False)
    if secret_name is None or namespaces is None:
        return None
    return KubernetesTarget(
        secret_name=secret_name,
        namespaces=namespaces,
        service_accounts=service_accounts or (),
        overwrite_invalid=bool(overwrite),
        cluster=cluster,
    )


CLUSTER_EXAMPLE = "{name: prod-eu, kubeconfig: /etc/rotator/spokes/prod-eu, context: prod-eu, namespaces: {all: true}}"


def _kubernetes_clusters(node: _Node, key: str, base_dir: Path, credential: str | None) -> tuple[KubernetesTarget, ...]:
    """``targets.kubernetes`` as a list: one cluster each, named, with its own connection and targets
    (``secret_name`` defaults to the credential's name)."""
    items = node.data[key]
    path = node.at(key)
    if not items:
        node.errors.add(path, "lists no cluster", f"[{CLUSTER_EXAMPLE}]")
        return ()
    out: list[KubernetesTarget] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        child = _Node(item, f"{path}[{index}]", node.errors)
        if not isinstance(item, dict):
            continue
        child.known(
            "name",
            "kubeconfig",
            "context",
            "in_cluster",
            "secret_name",
            "namespaces",
            "service_accounts",
            "overwrite_invalid",
        )
        name = child.value("name", _k8s_name, example="prod-eu")
        kubeconfig = child.value("kubeconfig", _string, example="/etc/rotator/spokes/prod-eu", default=None)
        context = child.value("context", _string, example="prod-eu", default=None)
        in_cluster = bool(child.value("in_cluster", _bool, example="true", default=False))
        if in_cluster and (kubeconfig or context):
            child.errors.add(
                child.at("in_cluster"), "is true, so kubeconfig and context must not be set", "in_cluster: true"
            )
        if not in_cluster and kubeconfig is None:
            child.errors.add(
                child.at("kubeconfig"),
                "is required (or in_cluster: true for the cluster rotator runs in)",
                "kubeconfig: /etc/rotator/spokes/prod-eu",
            )
        if name is not None and name in seen:
            child.errors.add(child.at("name"), f"{name!r} names two clusters; give each cluster its own name")
        if name is None:
            continue
        seen.add(name)
        file = None
        if kubeconfig is not None:
            file = Path(kubeconfig).expanduser()
            file = file if file.is_absolute() else base_dir / file
        connection = ClusterConnection(name=name, kubeconfig=file, context=context, in_cluster=in_cluster)
        target = _kubernetes_target(child, cluster=connection, default_name=credential or "")
        if target is not None:
            out.append(target)
    return tuple(out)


CE_ENDPOINT_EXAMPLE = "https://api.us-south.codeengine.cloud.ibm.com/v2"
CE_PROJECT_EXAMPLE = "4a6c8e0f-1b3d-4f5a-8c7e-9d0b2a4c6e8f"
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _ce_endpoint(value: Any) -> str:
    text = _url(value)
    if not text.endswith("/v2"):
        raise ValueError("is not a Code Engine API base URL ending in /v2")
    return text


def _ce_project_id(value: Any) -> str:
    text = _string(value).lower()
    if not _UUID.match(text):
        raise ValueError("is not a Code Engine project ID (a UUID; see ibmcloud ce project get --name NAME)")
    return text


def _ce_secret_name(value: Any) -> str:
    text = _string(value)
    if len(text) > 253 or not K8S_NAME.match(text):
        raise ValueError(
            "is not a valid Code Engine secret name (lowercase letters, digits, '-' and '.', starting and "
            "ending with a letter or digit, at most 253 characters)"
        )
    return text


def _ce_projects(node: _Node, default_endpoint: str | None) -> list[CodeEngineProject]:
    """``project_id`` (one project) or ``projects`` (a list), each with an endpoint or the shared one."""
    single = node.value("project_id", _ce_project_id, example=CE_PROJECT_EXAMPLE, default=None)
    raw_list = node.data.get("projects")
    if (single is None) == (raw_list is None):
        if "project_id" not in node.data or raw_list is not None:
            node.errors.add(
                node.path,
                "give exactly one of project_id or projects",
                f"project_id: {CE_PROJECT_EXAMPLE}, or projects: [{{project_id: ..., endpoint: ...}}]",
            )
        return []
    if single is not None:
        if default_endpoint is None:
            node.errors.add(node.at("endpoint"), "is required", CE_ENDPOINT_EXAMPLE)
            return []
        return [CodeEngineProject(project_id=single, endpoint=default_endpoint)]
    if not isinstance(raw_list, list) or not raw_list:
        node.errors.add(node.at("projects"), "is not a non-empty list", f"[{{project_id: {CE_PROJECT_EXAMPLE}}}]")
        return []
    projects: list[CodeEngineProject] = []
    for i, item in enumerate(raw_list):
        child = _Node(item, f"{node.at('projects')}[{i}]", node.errors)
        child.known("project_id", "endpoint")
        project_id = child.value("project_id", _ce_project_id, example=CE_PROJECT_EXAMPLE)
        endpoint = child.value("endpoint", _ce_endpoint, example=CE_ENDPOINT_EXAMPLE, default=default_endpoint)
        if endpoint is None and "endpoint" not in child.data:
            child.errors.add(
                child.at("endpoint"), "is required (or set endpoint for every project)", CE_ENDPOINT_EXAMPLE
            )
        if project_id is None or endpoint is None:
            continue
        if any(p.project_id == project_id for p in projects):
            child.errors.add(child.at("project_id"), f"{project_id!r} is listed twice")
            continue
        projects.append(CodeEngineProject(project_id=project_id, endpoint=endpoint))
    return projects


def _codeengine_target(node: _Node, base_dir: Path) -> CodeEngineTarget | None:
    node.known(
        "endpoint", "project_id", "projects", "secret_name", "apikey", "auth", "iam_endpoint", "allow_insecure_http"
    )
    insecure = _insecure_http(node, ("endpoint", "iam_endpoint", "projects"))
    secret_name = node.value("secret_name", _ce_secret_name, example="icr-pull")
    endpoint = node.value("endpoint", _ce_endpoint, example=CE_ENDPOINT_EXAMPLE, default=None)
    projects = _ce_projects(node, endpoint)
    given, apikey = _iam_auth(node, base_dir, required=False)
    iam_endpoint = node.value("iam_endpoint", _url, example="https://iam.cloud.ibm.com", default=None)
    if secret_name is None or not projects or (given and apikey is None):
        return None
    return CodeEngineTarget(
        secret_name=secret_name,
        projects=tuple(projects),
        apikey=apikey,
        iam_endpoint=iam_endpoint,
        allow_insecure_http=insecure,
    )


def _credential(node: _Node, base_dir: Path) -> CredentialSettings | None:
    node.known(
        "name",
        "provider",
        "registry",
        "schedule",
        "max_age",
        "grace_period",
        "delete_after",
        "targets",
        "unreachable_timeout",
        "revoke_despite_unreachable",
    )
    name = node.value("name", _k8s_name, example="icr-pull")
    provider_node, registry_node = node.child("provider"), node.child("registry")
    provider = _provider(provider_node, base_dir) if provider_node else None
    registry = _registry(registry_node) if registry_node else None
    if isinstance(provider, DockerHubProviderSettings) and registry is not None and registry_node is not None:
        registry = _dockerhub_registry(registry_node, registry, provider)
    schedule = _schedule(node.child("schedule", required=False))
    max_age = node.value("max_age", _positive_duration, example="30d", default=dt.timedelta(days=90))
    grace = node.value("grace_period", _duration, example="1h", default=dt.timedelta(hours=1))
    delete_after = node.value("delete_after", _duration, example="24h", default=dt.timedelta(days=1))
    unreachable_timeout = node.value(
        "unreachable_timeout", _positive_duration, example="24h", default=dt.timedelta(hours=24)
    )
    revoke_anyway = node.value("revoke_despite_unreachable", _bool, example="false", default=False)
    targets = node.child("targets")
    clusters: tuple[KubernetesTarget, ...] = ()
    kubernetes = None
    codeengine = None
    if targets is not None:
        targets.known("kubernetes", "codeengine")
        k8s_node = None
        if isinstance(targets.data.get("kubernetes"), list):
            clusters = _kubernetes_clusters(targets, "kubernetes", base_dir, name)
            k8s_node = targets
        else:
            k8s_node = targets.child("kubernetes", required=False)
            kubernetes = _kubernetes_target(k8s_node) if k8s_node else None
        ce_node = targets.child("codeengine", required=False)
        codeengine = _codeengine_target(ce_node, base_dir) if ce_node else None
        if k8s_node is None and ce_node is None:
            targets.errors.add(
                targets.path,
                "names no target",
                "kubernetes: {secret_name: icr-pull, ...} and/or codeengine: {secret_name: icr-pull, ...}",
            )
        kind = getattr(provider, "kind", "ibm-iam") if provider is not None else "ibm-iam"
        if codeengine is not None and codeengine.apikey is None and kind != "ibm-iam":
            targets.errors.add(
                targets.at("codeengine.apikey"),
                f"is required: the {kind} provider has no IAM API key to call Code Engine with",
                "apikey: {file: /var/run/secrets/rotator/codeengine-apikey}",
            )
    if schedule.interval and max_age and schedule.interval > max_age:
        node.errors.add(
            node.at("schedule.interval"),
            "is longer than max_age, so keys would outlive it",
            "interval: 7d with max_age: 30d",
        )
    if isinstance(provider, IamProviderSettings) and None not in (max_age, grace, delete_after):
        assert max_age is not None and grace is not None and delete_after is not None
        provider = _with_key_expiry(node, provider, max_age + grace + delete_after)
    if None in (name, provider, registry, max_age, grace, delete_after):
        return None
    assert name and provider and registry and max_age is not None and grace is not None
    assert delete_after is not None
    return CredentialSettings(
        name=name,
        provider=provider,
        registry=registry,
        schedule=schedule,
        max_age=max_age,
        grace_period=grace,
        delete_after=delete_after,
        kubernetes=kubernetes,
        codeengine=codeengine,
        clusters=clusters,
        unreachable_timeout=unreachable_timeout or dt.timedelta(hours=24),
        revoke_despite_unreachable=bool(revoke_anyway),
    )


def _kubernetes(node: _Node | None, base_dir: Path) -> KubernetesSettings:
    if node is None:
        return KubernetesSettings(in_cluster="KUBERNETES_SERVICE_HOST" in os.environ)
    node.known("kubeconfig", "context", "in_cluster", "concurrency", "namespace", "events")
    kubeconfig = node.value("kubeconfig", _string, example="~/.kube/config", default=None)
    path = None
    if kubeconfig is not None:
        path = Path(kubeconfig).expanduser()
        path = path if path.is_absolute() else base_dir / path
    return KubernetesSettings(
        kubeconfig=path,
        context=node.value("context", _string, example="prod", default=None),
        in_cluster=bool(node.value("in_cluster", _bool, example="true", default=False)),
        concurrency=node.value("concurrency", _int_range(1, 256), example="16", default=16) or 16,
        namespace=node.value("namespace", _namespace_name, example="rotator-system", default="rotator-system")
        or "rotator-system",
        events=bool(node.value("events", _bool, example="true", default=True)),
    )


def _state(node: _Node | None, base_dir: Path) -> StateSettings:
    if node is None:
        return StateSettings(path=base_dir / "rotator-state")
    node.known("kind", "path", "name")
    kind = node.value("kind", _string, example="configmap", default="file")
    if kind not in ("file", "configmap"):
        node.errors.add(node.at("kind"), f"{kind!r} is not file or configmap", "configmap")
    raw_path = node.value("path", _string, example="/var/lib/rotator", default="rotator-state") or "rotator-state"
    path = Path(raw_path) if Path(raw_path).is_absolute() else base_dir / raw_path
    name = node.value("name", _k8s_name, example="rotator-state", default="rotator-state") or "rotator-state"
    return StateSettings(kind=kind or "file", path=path, name=name)


def _daemon(node: _Node | None) -> DaemonSettings:
    if node is None:
        return DaemonSettings()
    node.known(
        "watch_timeout",
        "leader_election",
        "lease_name",
        "lease_duration",
        "renew_deadline",
        "retry_period",
        "watch",
        "resync",
        "shutdown_grace",
    )
    d = DaemonSettings()
    out = DaemonSettings(
        leader_election=bool(node.value("leader_election", _bool, example="true", default=d.leader_election)),
        lease_name=node.value("lease_name", _k8s_name, example="rotator-leader", default=d.lease_name) or d.lease_name,
        lease_duration=node.value("lease_duration", _positive_duration, example="15s", default=d.lease_duration)
        or d.lease_duration,
        renew_deadline=node.value("renew_deadline", _positive_duration, example="10s", default=d.renew_deadline)
        or d.renew_deadline,
        retry_period=node.value("retry_period", _positive_duration, example="2s", default=d.retry_period)
        or d.retry_period,
        watch=bool(node.value("watch", _bool, example="true", default=d.watch)),
        watch_timeout=node.value("watch_timeout", _positive_duration, example="1m", default=d.watch_timeout)
        or d.watch_timeout,
        resync=node.value("resync", _positive_duration, example="5m", default=d.resync) or d.resync,
        shutdown_grace=node.value("shutdown_grace", _positive_duration, example="25s", default=d.shutdown_grace)
        or d.shutdown_grace,
    )
    if not out.lease_duration > out.renew_deadline > out.retry_period:
        node.errors.add(
            node.path,
            "needs lease_duration > renew_deadline > retry_period",
            "{lease_duration: 15s, renew_deadline: 10s, retry_period: 2s}",
        )
    return out


def _api_auth(node: _Node | None, base_dir: Path, kubernetes: KubernetesSettings) -> ApiAuthSettings:
    default_mode = "kubernetes" if kubernetes.in_cluster else "disabled"
    if node is None:
        audiences = (KUBERNETES_AUDIENCE,) if default_mode == "kubernetes" else ()
        return ApiAuthSettings(mode=default_mode, namespace=kubernetes.namespace, audiences=audiences)
    node.known("mode", "file", "audiences", "cache_ttl", "namespace")
    mode = node.value("mode", _string, example="token-file", default=default_mode) or default_mode
    if mode not in AUTH_MODES:
        node.errors.add(node.at("mode"), f"{mode!r} is not one of {', '.join(AUTH_MODES)}", "kubernetes")
    raw_file = node.value("file", _string, example="/etc/rotator/api-tokens", default=None)
    file = None
    if raw_file is not None:
        file = Path(raw_file) if Path(raw_file).is_absolute() else base_dir / raw_file
    if mode == "token-file" and file is None:
        node.errors.add(node.at("file"), "is required with mode token-file", "/etc/rotator/api-tokens")
    if mode != "token-file" and file is not None:
        node.errors.add(node.at("file"), f"is only used with mode token-file, not {mode}")
    default_audiences = (KUBERNETES_AUDIENCE,) if mode == "kubernetes" else ()
    return ApiAuthSettings(
        mode=mode,
        file=file,
        audiences=node.value("audiences", _list_of(_string), example="[rotator]", default=default_audiences) or (),
        cache_ttl=node.value("cache_ttl", _duration, example="10s", default=dt.timedelta(seconds=10))
        or dt.timedelta(0),
        namespace=node.value("namespace", _namespace_name, example="rotator-system", default=kubernetes.namespace)
        or kubernetes.namespace,
    )


def _server(node: _Node | None, base_dir: Path, kubernetes: KubernetesSettings) -> ServerSettings:
    if node is None:
        return ServerSettings(auth=_api_auth(None, base_dir, kubernetes))
    node.known("listen", "metrics_public", "auth", "tls", "header_timeout", "rate_limit", "idempotency_ttl")
    listen = node.value("listen", _listen, example="0.0.0.0:8080", default="0.0.0.0:8080") or "0.0.0.0:8080"
    public = node.value("metrics_public", _bool, example="true", default=True)
    auth = _api_auth(node.child("auth", required=False), base_dir, kubernetes)
    per_minute, burst = 10.0, 5
    limit = node.child("rate_limit", required=False)
    if limit is not None:
        limit.known("per_minute", "burst")
        per_minute = limit.value("per_minute", _positive_number, example="10", default=10.0) or 10.0
        burst = limit.value("burst", _int_range(1, 10_000), example="5", default=5) or 5
    ttl = node.value("idempotency_ttl", _positive_duration, example="24h", default=dt.timedelta(hours=24))
    header_timeout = node.value("header_timeout", _positive_duration, example="10s", default=None)
    return ServerSettings(
        listen=listen,
        metrics_public=public is not False,
        auth=auth,
        rate_per_minute=per_minute,
        rate_burst=burst,
        idempotency_ttl=ttl or dt.timedelta(hours=24),
        tls=_tls(node.child("tls", required=False), base_dir),
        header_timeout=header_timeout or ServerSettings().header_timeout,
    )


def _tls(node: _Node | None, base_dir: Path) -> TlsSettings | None:
    if node is None:
        return None
    node.known("cert_file", "key_file")
    paths = []
    for key, example in (("cert_file", "/etc/rotator/tls/tls.crt"), ("key_file", "/etc/rotator/tls/tls.key")):
        raw = node.value(key, _string, example=example)
        paths.append(Path(raw) if raw and Path(raw).is_absolute() else base_dir / (raw or ""))
    return TlsSettings(cert_file=paths[0], key_file=paths[1])


def load(path: str | Path, *, base_dir: Path | None = None) -> Settings:
    """Read and validate ``path``; relative paths inside resolve from ``base_dir`` (default: cwd)."""
    source = Path(path)
    try:
        text = source.read_text()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the config file: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{source}: is not a config: nested too deeply for the YAML parser") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{source}: is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return parse(raw, source=source, base_dir=base_dir or Path.cwd())


def parse(raw: Any, *, source: Path, base_dir: Path) -> Settings:
    errors = _Errors(source)
    raw = _Interpolation(errors)(raw)
    top = _Node(raw, "", errors)
    top.known("credentials", "credentials_from", "kubernetes", "state", "daemon", "server")
    credentials_from = top.value("credentials_from", _string, example="both", default="file")
    if credentials_from not in CREDENTIALS_FROM:
        errors.add("credentials_from", f"{credentials_from!r} is not one of {', '.join(CREDENTIALS_FROM)}", "both")
    creds_raw = top.data.get("credentials")
    credentials: list[CredentialSettings] = []
    if credentials_from == "cluster":  # every credential comes from a RegistryCredential resource
        if creds_raw not in (None, []):
            errors.add(
                "credentials",
                "must be empty with credentials_from: cluster (credentials come from RegistryCredential resources)",
                "credentials_from: both, to keep these besides the resources",
            )
    elif not isinstance(creds_raw, list) or not creds_raw:
        errors.add("credentials", "is required: a list of at least one credential", "- name: icr-pull ...")
    else:
        seen: set[str] = set()
        for i, item in enumerate(creds_raw):
            cred = _credential(_Node(item, f"credentials[{i}]", errors), base_dir)
            if cred is None:
                continue
            if cred.name in seen:
                errors.add(f"credentials[{i}].name", f"{cred.name!r} is used twice; names must be unique")
            seen.add(cred.name)
            credentials.append(cred)
    kubernetes = _kubernetes(top.child("kubernetes", required=False), base_dir)
    state = _state(top.child("state", required=False), base_dir)
    daemon = _daemon(top.child("daemon", required=False))
    server = _server(top.child("server", required=False), base_dir, kubernetes)
    if errors.items:
        raise ConfigError("\n".join(errors.items))
    return Settings(
        source=source,
        credentials=tuple(credentials),
        kubernetes=kubernetes,
        state=state,
        daemon=daemon,
        server=server,
        credentials_from=credentials_from or "file",
    )
