"""Typed, validated configuration (YAML file + ``${ENV}`` interpolation).

Every problem is reported with the file, the field path, the bad value and a valid example, all
at once. Secrets are never inline: the admin API key is read from a file or an environment
variable named in the config, and ``redacted()`` is what gets logged.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo

from rotator import config_model as m
from rotator.adapters.dockerhub import validate_token_settings
from rotator.config_model import AUTH_MODES as AUTH_MODES
from rotator.config_model import DEFAULT_CR_TOKEN_FILE as DEFAULT_CR_TOKEN_FILE
from rotator.config_model import ENV_NAME as ENV_NAME
from rotator.config_model import K8S_LABEL_VALUE_NAME as K8S_LABEL_VALUE_NAME
from rotator.config_model import K8S_NAME as K8S_NAME
from rotator.config_model import LEAK_ACTIONS as LEAK_ACTIONS
from rotator.config_model import PROVIDERS as PROVIDERS
from rotator.errors import ConfigError
from rotator.imageref import plain_http_remote
from rotator.model import SecretLocation, SecretStr

_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# A config has a few hundred values, six levels deep. YAML aliases share one node however often they are
# used, but ${ENV} interpolation copies each use: an alias bomb (a billion uses) would be expanded in
# full. Interpolation stops at these bounds instead, long before memory or the recursion limit suffer.
MAX_VALUES = 100_000
MAX_DEPTH = 64
T = TypeVar("T")
# auto key_expiry: how long a key outlives its last planned deletion, so a stuck rotator is alerted on
# (RotatorKeyExpiringSoon) a week before its keys expire, time for someone to notice and fix it.
KEY_EXPIRY_MARGIN = dt.timedelta(days=7)
# Reads one key of a Kubernetes Secret: (namespace, name, key) -> value (the RegistryCredential controller's).
SecretKeyReader = Callable[[str, str, str], str]


@dataclass(frozen=True, kw_only=True)
class SecretKeyRef:
    namespace: str
    name: str
    key: str


@dataclass(frozen=True, kw_only=True)
class SecretSource:
    """Where a secret comes from: a file path, an environment variable or a key of a Kubernetes Secret,
    never the config itself."""

    file: Path | None = None
    env: str | None = None
    secret_key_ref: SecretKeyRef | None = None
    # Bound by with_secret_reader() where a Kubernetes client is at hand (the RegistryCredential controller).
    reader: SecretKeyReader | None = field(default=None, compare=False, repr=False)
    field_path: str = ""

    def load(self) -> SecretStr:
        if (ref := self.secret_key_ref) is not None:
            where = f"key {ref.key} of Secret {ref.namespace}/{ref.name}"
            if self.reader is None:
                raise ConfigError(
                    f"{self.field_path}.secret_key_ref: {where} can only be read through the Kubernetes API, by "
                    "the RegistryCredential controller; in a config file use file: or env: instead"
                )
            value = self.reader(ref.namespace, ref.name, ref.key).strip()
        elif self.file is not None:
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
        if (ref := self.secret_key_ref) is not None:
            return SecretLocation(f"secret:{ref.namespace}/{ref.name}#{ref.key}")
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
    # A RegistryCredential's spec.deletionPolicy: Revoke revokes its keys when the resource is deleted.
    deletion_policy: str = "Retain"

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
        return m.split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return m.split_listen(self.listen)[1]


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
            # By hand, not asdict(): that deep-copies every value, a bound secret reader's client too.
            if isinstance(value, SecretSource | TrustedProfileSource):
                return value.describe()
            if hasattr(value, "__dataclass_fields__"):
                return {f.name: clean(getattr(value, f.name)) for f in fields(value) if f.name != "field_path"}
            if isinstance(value, list | tuple):
                return [clean(v) for v in value]
            if isinstance(value, dt.timedelta):
                return f"{int(value.total_seconds())}s"
            if isinstance(value, Path):
                return str(value)
            return value

        out = {f: clean(getattr(self, f)) for f in ("credentials", "kubernetes", "state", "daemon", "server")}
        out["source"] = str(self.source)
        return out


# -- reading ---------------------------------------------------------------------------------


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
    """Validate a config document (``${ENV}`` interpolated first) into the runtime settings."""
    interpolate = _Interpolation(str(source))
    raw = interpolate(raw)
    problems = list(interpolate.problems)
    try:
        spec = m.ConfigFileSpec.model_validate(raw, by_name=True, by_alias=False)
    except ValidationError as exc:
        problems += _problems(exc, raw, m.ConfigFileSpec, alias=False)
    if problems:
        raise ConfigError("\n".join(_line(str(source), *p) for p in problems))
    kubernetes = _kubernetes(spec.kubernetes, base_dir)
    return Settings(
        source=source,
        credentials=tuple(
            _credential(c, c.name, f"credentials[{i}]", base_dir) for i, c in enumerate(spec.credentials)
        ),
        kubernetes=kubernetes,
        state=_state(spec.state, base_dir),
        daemon=_copy(DaemonSettings, spec.daemon) if spec.daemon else DaemonSettings(),
        server=_server(spec.server or m.ServerSpec(), base_dir, kubernetes),
        credentials_from=spec.credentials_from,
    )


def credential_from_spec(name: str, spec: Mapping[str, Any], *, source: str) -> CredentialSettings:
    """A RegistryCredential's spec (camelCase) as a credential named ``name``; errors read
    ``{source}: spec.provider.serviceId: ...``. Paths in it must be absolute (a resource has no directory to
    resolve a relative one from), and ``${ENV}`` is not interpolated: the resource's author must not be able
    to read rotator's environment into a field sent over the network."""
    try:
        model = m.RegistryCredentialSpec.model_validate(
            spec, by_alias=True, by_name=False, context={m.ABSOLUTE_PATHS: True}
        )
    except ValidationError as exc:
        lines = _problems(exc, spec, m.RegistryCredentialSpec, alias=True, prefix=["spec"])
        raise ConfigError("\n".join(_line(source, *p) for p in lines)) from None
    return _credential(model, name, "spec", Path("/"))


def with_secret_reader(cred: CredentialSettings, reader: SecretKeyReader) -> CredentialSettings:
    """``cred`` with every secret_key_ref source reading through ``reader`` (namespace, name, key) -> value."""

    def bind(source: Any) -> Any:
        if isinstance(source, SecretSource) and source.secret_key_ref is not None:
            return replace(source, reader=reader)
        return source

    provider: IamProviderSettings | DockerHubProviderSettings
    if isinstance(cred.provider, IamProviderSettings):
        provider = replace(cred.provider, apikey=bind(cred.provider.apikey))
    else:
        provider = replace(cred.provider, password=bind(cred.provider.password))
    ce = cred.codeengine
    return replace(cred, provider=provider, codeengine=ce and replace(ce, apikey=bind(ce.apikey)))


class _Interpolation:
    """``${ENV}`` and ``${ENV:-default}`` in every string, counting the values it copies; a null value is
    dropped (the field takes its default, as when it is left out)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.values = 0
        self.problems: list[tuple[str, str, Any]] = []

    def __call__(self, value: Any, path: str = "", depth: int = 0) -> Any:
        self.values += 1
        if self.values > MAX_VALUES or depth > MAX_DEPTH:
            what = f"more than {MAX_VALUES} values" if self.values > MAX_VALUES else f"more than {MAX_DEPTH} levels"
            raise ConfigError(
                f"{self.source}: the document expands to {what} (at {path or 'the top level'}); "
                "a YAML anchor used over and over, or one that contains itself, is refused: "
                "write the values out (a rotator config has a few hundred)"
            )
        if isinstance(value, str):
            return _INTERPOLATION.sub(lambda match: self._variable(match, path), value)
        if isinstance(value, dict):
            return {k: self(v, f"{path}.{k}" if path else str(k), depth + 1) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [self(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
        return value

    def _variable(self, match: re.Match[str], path: str) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        self.problems.append(
            (path, f"environment variable {name} is not set", f"export {name}=... or ${{{name}:-default}}")
        )
        return ""


# -- pydantic's errors as ours: "{source}: {field path}: {bad value} {problem}; for example: {example}" -----


def _line(source: str, path: str, message: str, example: Any = None) -> str:
    text = f"{source}: {path or '(top level)'}: {message}"
    return text if example is None else f"{text}; for example: {_flow(example)}"


def _flow(value: Any) -> str:
    """An example as a YAML flow value: {file: /x}, [a, b], true."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return str(value)


_SECRET_PATH = re.compile(r"(apikey|password|secret|token)(\.|$)", re.IGNORECASE)


def _show(value: Any, path: str = "") -> str:
    """The bad value for an error message; never the value of a field that holds a credential."""
    # The field itself (apikey: "...") or its child (apikey.env: ...): look at the last two names.
    if _SECRET_PATH.search(".".join(path.split(".")[-2:])):
        return "(value hidden)"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_STEPS = re.compile(r"[^.\[\]]+|\[\d+\]")


def _join(parts: list[str | int]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _locate(root: type[BaseModel], loc: tuple[str | int, ...]) -> tuple[list[str | int], FieldInfo | None, Any]:
    """Walk ``loc`` through the models: (the path without union tags, the last field, the model holding it)."""
    current: Any = root
    parts: list[str | int] = []
    info: FieldInfo | None = None
    owner: Any = None
    for part in loc:
        tags, current = m.unwrap(current)
        if part in tags:
            current = tags[part]
            continue
        parts.append(part)
        if isinstance(part, int) and get_origin(current) is list:
            current = get_args(current)[0]
        elif isinstance(current, type) and issubclass(current, BaseModel):
            owner = current
            name = next((n for n, f in current.model_fields.items() if part in (n, f.alias)), None)
            info = current.model_fields[name] if name else None
            current = info.annotation if info else None
        else:
            current = None
    return parts, info, owner


def _document_order(data: Any, parts: list[str | int]) -> tuple[int, ...]:
    """Where ``parts`` is in the document, to report problems top to bottom (absent keys after present ones)."""
    key = []
    for part in parts:
        if isinstance(data, dict | list) and (part in data if isinstance(data, dict) else part in range(len(data))):
            key.append(list(data).index(part) if isinstance(data, dict) else int(part))
            data = data[part]  # type: ignore[index]
        else:
            key.append(1 << 30)
            data = None
    return tuple(key)


def _problems(
    exc: ValidationError, data: Any, root: type[BaseModel], *, alias: bool, prefix: list[str | int] | None = None
) -> list[tuple[str, str, Any]]:
    """Each error as (field path, message, example), in the document's order."""
    out: list[tuple[str, str, Any]] = []
    errors = exc.errors(include_url=False)
    for err in sorted(errors, key=lambda e: _document_order(data, _locate(root, e["loc"])[0])):
        parts, info, owner = _locate(root, err["loc"])
        parts = [*(prefix or []), *parts]
        path, kind, value, ctx = _join(parts), err["type"], err["input"], err.get("ctx") or {}
        example = info.examples[0] if info is not None and info.examples else None
        if kind == "rotator":
            for problem in ctx["problems"]:
                at = [int(t[1:-1]) if t[0] == "[" else to_camel(t) if alias else t for t in _STEPS.findall(problem.at)]
                where = _join([*parts, *at])
                out.append((where, problem.message.replace("{here}", path), problem.example))
        elif kind == "missing":
            out.append((path, "is required", example))
        elif kind == "extra_forbidden":
            parent = owner.model_fields.items() if owner is not None else ()
            known = ", ".join((f.alias or n) if alias else n for n, f in parent)
            out.append((path, f"unknown field; known fields here: {known}", None))
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            out.append((path, f"expected a mapping, got {_show(value, path)}", None))
        elif kind == "list_type":
            out.append((path, f"{_show(value, path)} is not a list", example))
        elif kind == "rotator_kind":
            given = value.get("kind") if isinstance(value, dict) else None
            tags = " or ".join(m.unwrap(info.annotation)[0]) if info is not None else None
            shown = "is required" if given is None else f"{_show(given)} {err['msg']}"
            out.append((f"{path}.kind", shown, tags))
        elif kind == "literal_error":
            out.append((path, f"{_show(value, path)} is not {ctx['expected']}", example))
        elif kind == "value_error" and parts and isinstance(parts[-1], int):
            item = f"(item {parts[-1]}: {_show(value, path)}) {ctx['error']}"
            out.append((_join(parts[:-1]), item, example))
        else:
            problem = str(ctx["error"]) if kind == "value_error" else err["msg"]
            out.append((path, f"{_show(value, path)} {problem}", example))
    if alias:  # a resource's fields are camelCase, also where a message or an example names them
        return [(path, _camel_words(text), None if ex is None else _camel_words(_flow(ex))) for path, text, ex in out]
    return out


def _camel_words(text: str) -> str:
    return _FIELD_WORDS.sub(lambda match: to_camel(match.group(0)), text)


def _field_names(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields).union(*(_field_names(sub) for sub in model.__subclasses__()))


# Every multi-word field name of the models (retry_backoff, allow_insecure_http, ...).
_FIELD_WORDS = re.compile(r"\b(" + "|".join(sorted(n for n in _field_names(m.Spec) if "_" in n)) + r")\b")


# -- the validated model as runtime settings ---------------------------------------------------------


def _copy(cls: type[T], spec: BaseModel, **overrides: Any) -> T:
    """``cls`` (a settings dataclass) from the same-named fields of ``spec`` (lists as tuples)."""
    values = {
        f.name: tuple(v) if isinstance(v := getattr(spec, f.name), list) else v
        for f in fields(cls)  # type: ignore[arg-type]
        if f.name not in overrides and f.name in type(spec).model_fields
    }
    return cls(**values, **overrides)


def _resolve(text: str, base_dir: Path, *, home: bool = False) -> Path:
    path = Path(text).expanduser() if home else Path(text)
    return path if path.is_absolute() else base_dir / path


def _secret(spec: m.SecretSourceSpec, path: str, base_dir: Path) -> SecretSource:
    ref = spec.secret_key_ref
    return SecretSource(
        file=_resolve(spec.file, base_dir) if spec.file is not None else None,
        env=spec.env,
        secret_key_ref=_copy(SecretKeyRef, ref) if ref is not None else None,
        field_path=path,
    )


def _iam_auth(spec: m.IamProviderSpec | m.CodeEngineTargetSpec, path: str, base_dir: Path) -> IamAuth | None:
    """``apikey: {...}``, or ``auth: {kind: apikey | trusted-profile, ...}``."""
    if spec.apikey is not None:
        return _secret(spec.apikey, f"{path}.apikey", base_dir)
    if isinstance(spec.auth, m.ApiKeyAuthSpec):
        return _secret(spec.auth, f"{path}.auth", base_dir)
    if spec.auth is None:
        return None
    return _copy(
        TrustedProfileSource,
        spec.auth,
        cr_token_file=_resolve(spec.auth.cr_token_file, base_dir),
        field_path=f"{path}.auth",
    )


def _provider(
    spec: m.IamProviderSpec | m.DockerHubProviderSpec, path: str, lifetimes: dt.timedelta, base_dir: Path
) -> IamProviderSettings | DockerHubProviderSettings:
    if isinstance(spec, m.DockerHubProviderSpec):
        scopes = validate_token_settings(spec.token_type, spec.org, spec.scopes, spec.repositories)
        password = _secret(spec.password, f"{path}.password", base_dir)
        return _copy(DockerHubProviderSettings, spec, password=password, scopes=scopes)
    apikey = _iam_auth(spec, path, base_dir)
    assert apikey is not None  # the model requires apikey or auth
    # key_lifetime and key_expiry_margin from key_expiry against how long rotator itself keeps a key.
    lifetime, margin = {"off": (None, None), "auto": (lifetimes + KEY_EXPIRY_MARGIN, KEY_EXPIRY_MARGIN)}.get(
        str(spec.key_expiry),
        (spec.key_expiry, spec.key_expiry - lifetimes if isinstance(spec.key_expiry, dt.timedelta) else None),
    )
    return _copy(IamProviderSettings, spec, apikey=apikey, key_lifetime=lifetime, key_expiry_margin=margin)


def _kubernetes_target(
    spec: m.KubernetesTargetSpec | m.ClusterTargetSpec, cluster: ClusterConnection | None, default_name: str
) -> KubernetesTarget:
    return _copy(
        KubernetesTarget,
        spec,
        secret_name=spec.secret_name or default_name,
        namespaces=_copy(NamespaceSelection, spec.namespaces),
        cluster=cluster,
    )


def _codeengine(spec: m.CodeEngineTargetSpec, path: str, base_dir: Path) -> CodeEngineTarget:
    if spec.project_id is not None:
        projects = [CodeEngineProject(project_id=spec.project_id, endpoint=spec.endpoint or "")]
    else:
        projects = [
            CodeEngineProject(project_id=p.project_id, endpoint=p.endpoint or spec.endpoint or "")
            for p in spec.projects or ()
        ]
    return _copy(
        CodeEngineTarget, spec, projects=tuple(projects), apikey=_iam_auth(spec, f"{path}.targets.codeengine", base_dir)
    )


def _credential(spec: m.CredentialFieldsSpec, name: str, path: str, base_dir: Path) -> CredentialSettings:
    provider = _provider(spec.provider, f"{path}.provider", spec.lifetimes, base_dir)
    username = spec.registry.username or getattr(provider, "registry_username", "iamapikey")
    targets = spec.targets.kubernetes
    clusters = tuple(
        _kubernetes_target(
            c,
            ClusterConnection(
                name=c.name,
                kubeconfig=_resolve(c.kubeconfig, base_dir, home=True) if c.kubeconfig else None,
                context=c.context,
                in_cluster=c.in_cluster,
            ),
            name,
        )
        for c in (targets if isinstance(targets, list) else ())
    )
    ce = spec.targets.codeengine
    return _copy(
        CredentialSettings,
        spec,
        name=name,
        provider=provider,
        registry=_copy(RegistrySettings, spec.registry, username=username),
        schedule=_schedule(spec.schedule),
        kubernetes=_kubernetes_target(targets, None, name) if isinstance(targets, m.KubernetesTargetSpec) else None,
        clusters=clusters,
        codeengine=_codeengine(ce, path, base_dir) if ce is not None else None,
        deletion_policy=getattr(spec, "deletion_policy", "Retain"),
    )


def _schedule(spec: m.ScheduleSpec | None) -> ScheduleSettings:
    if spec is None:
        return ScheduleSettings(interval=dt.timedelta(days=1))
    window = spec.window
    return _copy(
        ScheduleSettings,
        spec,
        window_cron=window.cron if window else None,
        window_duration=window.duration if window else None,
        health_check=spec.health_check or None,
    )


def _kubernetes(spec: m.KubernetesSpec | None, base_dir: Path) -> KubernetesSettings:
    if spec is None:
        return KubernetesSettings(in_cluster="KUBERNETES_SERVICE_HOST" in os.environ)
    kubeconfig = _resolve(spec.kubeconfig, base_dir, home=True) if spec.kubeconfig else None
    return _copy(KubernetesSettings, spec, kubeconfig=kubeconfig)


def _state(spec: m.StateSpec | None, base_dir: Path) -> StateSettings:
    spec = spec or m.StateSpec()
    return _copy(StateSettings, spec, path=_resolve(spec.path, base_dir))


def _server(spec: m.ServerSpec, base_dir: Path, kubernetes: KubernetesSettings) -> ServerSettings:
    auth = spec.auth or m.ApiAuthSpec()
    mode = auth.mode or ("kubernetes" if kubernetes.in_cluster else "disabled")
    audiences = auth.audiences if auth.audiences is not None else [KUBERNETES_AUDIENCE] * (mode == "kubernetes")
    limit = spec.rate_limit or m.RateLimitSpec()
    tls = spec.tls
    return _copy(
        ServerSettings,
        spec,
        auth=ApiAuthSettings(
            mode=mode,
            file=_resolve(auth.file, base_dir) if auth.file else None,
            audiences=tuple(audiences),
            cache_ttl=auth.cache_ttl,
            namespace=auth.namespace or kubernetes.namespace,
        ),
        tls=tls and TlsSettings(cert_file=_resolve(tls.cert_file, base_dir), key_file=_resolve(tls.key_file, base_dir)),
        rate_per_minute=limit.per_minute,
        rate_burst=limit.burst,
    )
