"""The config file's shape as pydantic models: one source for validation, the JSON Schema and the CRD.

Field names are snake_case in the file (``model_validate(data, by_name=True, by_alias=False)``) and
camelCase in a ``RegistryCredential`` spec (``by_alias=True, by_name=False``). Every field carries a
description and an example: editors show the one, error messages quote the other.

Leaf values are checked by small functions (``PlainValidator``) that raise ``ValueError`` with a message
meant to follow the bad value ("'30 days' is not a duration ..."); cross-field rules raise
``Problems`` naming the sub-field they concern. ``rotator.settings`` turns both into the error lines of
a ``ConfigError`` and the validated models into the runtime dataclasses.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from pathlib import PurePosixPath
from types import UnionType
from typing import Annotated, Any, Literal, NamedTuple, Self, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from rotator.adapters.dockerhub import validate_token_settings
from rotator.durations import parse_duration
from rotator.imageref import DOCKER_HUB, ImageRefError, plain_http_remote, registry_for_server

# Kubernetes object names (DNS-1123 subdomain), as the seed states them.
K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
K8S_LABEL_VALUE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_DOCKER_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{1,38}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_HOST = re.compile(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?|[0-9a-f:.]*:[0-9a-f:.]*")
DURATION_PATTERN = r"^\s*([0-9]+(\.[0-9]+)?\s*(ms|s|m|h|d|w)\s*)+$"
PROVIDERS = ("ibm-iam", "dockerhub")
AUTH_MODES = ("token-file", "kubernetes", "disabled")
LEAK_ACTIONS = ("none", "disable", "delete")
TRUSTED_PROFILE_EXAMPLE = {
    "kind": "trusted-profile",
    "profile_name": "rotator",
    "cr_token_file": "/var/run/secrets/tokens/sa-token",
}
# Where IKS/ROKS project the service-account token for IAM (IBM's documented mount), the SDK's default too.
DEFAULT_CR_TOKEN_FILE = "/var/run/secrets/tokens/sa-token"
APIKEY_EXAMPLE = {"file": "/var/run/secrets/rotator/apikey"}
CE_ENDPOINT_EXAMPLE = "https://api.us-south.codeengine.cloud.ibm.com/v2"
CE_PROJECT_EXAMPLE = "4a6c8e0f-1b3d-4f5a-8c7e-9d0b2a4c6e8f"
CLUSTER_EXAMPLE = {
    "name": "prod-eu",
    "kubeconfig": "/etc/rotator/spokes/prod-eu",
    "context": "prod-eu",
    "namespaces": {"all": True},
}
DOCKERHUB_EXAMPLE = {
    "kind": "dockerhub",
    "username": "rotatorbot",
    "password": {"file": "/var/run/secrets/rotator/dockerhub-password"},
    "token_type": "organization",
    "org": "acme",
    "repositories": ["acme/app"],
}
# Validation context key: a RegistryCredential has no directory that relative paths could resolve from.
ABSOLUTE_PATHS = "absolute_paths"


# -- cross-field problems ----------------------------------------------------------------------


class Problem(NamedTuple):
    """One broken rule: ``at`` is a dotted path below the model that found it ("" for the model itself);
    ``{here}`` in the message stands for the model's own path."""

    at: str
    message: str
    example: Any = None


def refuse(problems: list[Problem]) -> None:
    """Raise every problem a model validator found, as one pydantic error the loader expands."""
    if problems:
        raise PydanticCustomError("rotator", "{summary}", {"summary": problems[0].message, "problems": problems})


def _insecure(model: Any, *keys: str) -> list[Problem]:
    """Each of ``keys`` that is plain http to a host that is not loopback, unless allow_insecure_http (as
    written: the message quotes it); then the URLs lose a trailing slash (the adapters append paths)."""
    out = []
    for key in keys:
        value = getattr(model, key)
        holders = value if isinstance(value, list) else [model]
        attr = "endpoint" if isinstance(value, list) else key
        for holder in holders:
            url = getattr(holder, attr)
            if url and plain_http_remote(url) and not model.allow_insecure_http:
                out.append(
                    Problem(
                        key,
                        f"{url!r} is plain http to a host that is not loopback: keys and tokens would cross the "
                        "network unencrypted; use https, or (a lab only) set {here}.allow_insecure_http: true",
                        url.replace("http://", "https://", 1),
                    )
                )
            if url:
                setattr(holder, attr, url.rstrip("/"))
    return out


# -- leaf types ------------------------------------------------------------------------------


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("is not a non-empty string")
    return value.strip()


def _matching(pattern: re.Pattern[str], message: str, *, max_len: int = 10_000, lower: bool = False) -> Any:
    def check(value: Any) -> str:
        text = _string(value).lower() if lower else _string(value)
        if len(text) > max_len or not pattern.fullmatch(text):
            raise ValueError(message)
        return text

    return check


def _prefixed(prefix: str, message: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        text = _string(value)
        if not text.startswith(prefix):
            raise ValueError(message)
        return text

    return check


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("is not true or false")
    return value


def _duration(value: Any) -> dt.timedelta:
    if isinstance(value, dt.timedelta):
        return value
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


def _key_expiry(value: Any) -> str | dt.timedelta:
    if value in ("auto", "off"):
        return str(value)
    if value is False:  # YAML reads a bare off as false
        return "off"
    return _positive_duration(value)


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"is not a whole number from {low} to {high}")
        return value

    return check


def _positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1_000_000:
        raise ValueError("is not a number above 0 (and at most 1000000)")
    return float(value)


def _one_of(choices: tuple[str, ...], message: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        text = _string(value)
        if text not in choices:
            raise ValueError(message)
        return text

    return check


def _url(value: Any) -> str:
    text = _string(value)
    if not re.match(r"^https?://[^\s/]+", text):
        raise ValueError("is not an http(s) URL")
    return text


def _ce_endpoint(value: Any) -> str:
    text = _url(value)
    if not text.rstrip("/").endswith("/v2"):
        raise ValueError("is not a Code Engine API base URL ending in /v2")
    return text


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


def split_listen(text: str) -> tuple[str, int]:
    """``host:port`` (IPv6 in brackets) -> (host, port); ValueError saying the accepted forms."""
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
    split_listen(text)
    return text


def _path(value: Any, info: ValidationInfo) -> str:
    text = _string(value)
    if (info.context or {}).get(ABSOLUTE_PATHS) and not PurePosixPath(text).is_absolute():
        raise ValueError("is a relative path, and a RegistryCredential has no directory to resolve it from")
    return text


_STR = {"type": "string", "minLength": 1}
_DURATION = {"type": "string", "pattern": DURATION_PATTERN}

Text = Annotated[str, PlainValidator(_string), WithJsonSchema(_STR)]
FilePath = Annotated[str, PlainValidator(_path), WithJsonSchema(_STR)]
Bool = Annotated[bool, PlainValidator(_bool), WithJsonSchema({"type": "boolean"})]
Duration = Annotated[dt.timedelta, PlainValidator(_duration), WithJsonSchema(_DURATION)]
PositiveDuration = Annotated[dt.timedelta, PlainValidator(_positive_duration), WithJsonSchema(_DURATION)]
K8sName = Annotated[
    str,
    PlainValidator(
        _matching(
            K8S_NAME,
            "is not a valid Kubernetes name (lowercase letters, digits, '-' and '.', starting and ending with a "
            "letter or digit, at most 253 characters)",
            max_len=253,
        )
    ),
    WithJsonSchema({"type": "string", "pattern": K8S_NAME.pattern, "maxLength": 253}),
]
NamespaceName = Annotated[
    str,
    PlainValidator(
        _matching(
            K8S_LABEL_VALUE_NAME,
            "is not a valid namespace name (lowercase letters, digits and '-', at most 63)",
            max_len=63,
        )
    ),
    WithJsonSchema({"type": "string", "pattern": K8S_LABEL_VALUE_NAME.pattern, "maxLength": 63}),
]
EnvName = Annotated[
    str,
    PlainValidator(_matching(ENV_NAME, "is not an environment variable name")),
    WithJsonSchema({"type": "string", "pattern": ENV_NAME.pattern}),
]
SecretKey = Annotated[
    str,
    PlainValidator(_matching(SECRET_KEY, "is not a Secret data key (letters, digits, '-', '_' and '.')", max_len=253)),
    WithJsonSchema({"type": "string", "pattern": SECRET_KEY.pattern, "maxLength": 253}),
]
Url = Annotated[str, PlainValidator(_url), WithJsonSchema({"type": "string", "pattern": r"^https?://[^\s/]+"})]
CodeEngineEndpoint = Annotated[
    str, PlainValidator(_ce_endpoint), WithJsonSchema({"type": "string", "pattern": r"^https?://[^\s/]+.*/v2/?$"})
]
HostName = Annotated[
    str,
    PlainValidator(_matching(_HOST, "is not a host name (no scheme, port or path: auth.example.com)", lower=True)),
    WithJsonSchema({"type": "string", "minLength": 1}),
]
Cron = Annotated[
    str,
    PlainValidator(_cron),
    WithJsonSchema({"type": "string", "minLength": 9, "description": "a 5-field cron expression (UTC)"}),
]
Image = Annotated[str, PlainValidator(_image), WithJsonSchema({"type": "string", "pattern": r"^\S+/\S+$"})]
Listen = Annotated[
    str,
    PlainValidator(_listen),
    WithJsonSchema({"type": "string", "pattern": r"^(\[[0-9a-fA-F:.]+\]|[^:\[\]\s]+):[0-9]{1,5}$"}),
]
KeyExpiry = Annotated[
    str | dt.timedelta,
    PlainValidator(_key_expiry),
    WithJsonSchema({"anyOf": [{"type": "string", "enum": ["auto", "off"]}, {"const": False}, _DURATION]}),
]
ServiceId = Annotated[
    str,
    PlainValidator(_prefixed("ServiceId-", "is not a service ID (ServiceId-<uuid>)")),
    WithJsonSchema({"type": "string", "pattern": "^ServiceId-"}),
]
ProfileId = Annotated[
    str,
    PlainValidator(_prefixed("Profile-", "is not a trusted profile ID (Profile-<uuid>)")),
    WithJsonSchema({"type": "string", "pattern": "^Profile-"}),
]
DockerId = Annotated[
    str,
    PlainValidator(_matching(_DOCKER_ID, "is not a Docker ID or organization name (lowercase letters and digits)")),
    WithJsonSchema({"type": "string", "pattern": _DOCKER_ID.pattern}),
]
ProjectId = Annotated[
    str,
    PlainValidator(
        _matching(
            _UUID, "is not a Code Engine project ID (a UUID; see ibmcloud ce project get --name NAME)", lower=True
        )
    ),
    WithJsonSchema(
        {"type": "string", "pattern": "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"}
    ),
]
CodeEngineSecretName = Annotated[
    str,
    PlainValidator(
        _matching(
            K8S_NAME,
            "is not a valid Code Engine secret name (lowercase letters, digits, '-' and '.', starting and ending "
            "with a letter or digit, at most 253 characters)",
            max_len=253,
        )
    ),
    WithJsonSchema({"type": "string", "pattern": K8S_NAME.pattern, "maxLength": 253}),
]


LeakAction = Annotated[
    str,
    PlainValidator(_one_of(LEAK_ACTIONS, f"is not one of {', '.join(LEAK_ACTIONS)}")),
    WithJsonSchema({"type": "string", "enum": list(LEAK_ACTIONS)}),
]
TokenType = Annotated[
    str,
    PlainValidator(_one_of(("personal", "organization"), "is not personal or organization")),
    WithJsonSchema({"type": "string", "enum": list(("personal", "organization"))}),
]
StateKind = Annotated[
    str,
    PlainValidator(_one_of(("file", "configmap"), "is not file or configmap")),
    WithJsonSchema({"type": "string", "enum": list(("file", "configmap"))}),
]
AuthMode = Annotated[
    str,
    PlainValidator(_one_of(AUTH_MODES, f"is not one of {', '.join(AUTH_MODES)}")),
    WithJsonSchema({"type": "string", "enum": list(AUTH_MODES)}),
]
IntConcurrency = Annotated[
    int, PlainValidator(_int_range(1, 256)), WithJsonSchema({"type": "integer", "minimum": 1, "maximum": 256})
]
IntBurst = Annotated[
    int, PlainValidator(_int_range(1, 10_000)), WithJsonSchema({"type": "integer", "minimum": 1, "maximum": 10_000})
]
PositiveNumber = Annotated[
    float,
    PlainValidator(_positive_number),
    WithJsonSchema({"type": "number", "exclusiveMinimum": 0, "maximum": 1_000_000}),
]


_INSECURE_DOC = "Let endpoint be plain http to a host that is not loopback (a lab only; rotator check warns)."


def field(description: str, example: Any, default: Any = ..., **kwargs: Any) -> Any:
    """A field with the description editors show and the example error messages quote."""
    return Field(default, description=description, examples=[example], **kwargs)


class Spec(BaseModel):
    """Base of every section: unknown fields refused; snake_case names in files, camelCase in resources."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        validate_default=True,
    )


# -- secret sources ----------------------------------------------------------------------------


class SecretKeyRefSpec(Spec):
    """A key of a Kubernetes Secret (read through the API by the RegistryCredential controller)."""

    namespace: NamespaceName = field("Namespace of the Secret.", "rotator-system")
    name: K8sName = field("Name of the Secret.", "icr-admin-apikey")
    key: SecretKey = field("Key in the Secret's data.", "apikey")


class SecretSourceSpec(Spec):
    """Where a secret comes from: exactly one of a file, an environment variable or a Secret's key."""

    file: FilePath | None = field(
        "A file holding the secret (read again at every sign-in).", "/var/run/secrets/rotator/apikey", None
    )
    env: EnvName | None = field("An environment variable holding the secret.", "ROTATOR_ADMIN_APIKEY", None)
    secret_key_ref: SecretKeyRefSpec | None = field(
        "A key of a Kubernetes Secret (RegistryCredential resources).",
        {"namespace": "rotator-system", "name": "icr-admin-apikey", "key": "apikey"},
        None,
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if sum(x is not None for x in (self.file, self.env, self.secret_key_ref)) != 1:
            refuse(
                [
                    Problem(
                        "",
                        "give exactly one of file (a path to a file holding the key), env (an environment variable "
                        "name) or secret_key_ref (a key of a Kubernetes Secret); keys are never written inline",
                        APIKEY_EXAMPLE,
                    )
                ]
            )
        return self


class ApiKeyAuthSpec(SecretSourceSpec):
    """``auth: {kind: apikey, ...}``: the same as ``apikey: {...}``."""

    kind: Literal["apikey"] = field("Sign in with an API key from a secret source.", "apikey")


class TrustedProfileAuthSpec(Spec):
    """Keyless IAM sign-in: a trusted profile assumed with the pod's projected service-account token."""

    kind: Literal["trusted-profile"] = field("Sign in as an IAM trusted profile.", "trusted-profile")
    profile_id: ProfileId | None = field("The trusted profile's ID (or profile_name).", "Profile-3c2b1a09-...", None)
    profile_name: Text | None = field("The trusted profile's name (or profile_id).", "rotator", None)
    cr_token_file: FilePath = field(
        "The projected service-account token (read again at every sign-in).",
        DEFAULT_CR_TOKEN_FILE,
        DEFAULT_CR_TOKEN_FILE,
    )

    @model_validator(mode="after")
    def _one_profile(self) -> Self:
        if (self.profile_id is None) == (self.profile_name is None):
            refuse([Problem("", "give exactly one of profile_id or profile_name", TRUSTED_PROFILE_EXAMPLE)])
        return self


def _kind_of(default: str | None) -> Callable[[Any], str | None]:
    """The discriminator of a tagged section: its ``kind`` (``default`` when absent)."""

    def kind(value: Any) -> str | None:
        if isinstance(value, dict):
            found = value.get("kind", default)
            return found if isinstance(found, str) or found is None else repr(found)
        return getattr(value, "kind", default)

    return kind


IamAuthSpec = Annotated[
    Annotated[ApiKeyAuthSpec, Tag("apikey")] | Annotated[TrustedProfileAuthSpec, Tag("trusted-profile")],
    Discriminator(
        _kind_of("apikey-or-profile"),
        custom_error_type="rotator_kind",
        custom_error_message="is not apikey or trusted-profile",
    ),
]


def _auth_rules(model: Any, *, required: bool) -> list[Problem]:
    if model.apikey is not None and model.auth is not None:
        return [Problem("auth", "give either apikey or auth, not both", TRUSTED_PROFILE_EXAMPLE)]
    if required and model.apikey is None and model.auth is None:
        return [Problem("apikey", "is required (or auth)", APIKEY_EXAMPLE)]
    return []


# -- provider, registry, schedule ----------------------------------------------------------------


class IamProviderSpec(Spec):
    """IBM Cloud IAM: API keys of a service ID."""

    kind: Literal["ibm-iam"] = field("The provider: IBM Cloud IAM.", "ibm-iam", "ibm-iam")
    endpoint: Url = field(
        "IAM base URL (token endpoint and Identity API).", "https://iam.cloud.ibm.com", "https://iam.cloud.ibm.com"
    )
    account_id: Text = field("The account of the service ID.", "5e1f0d2c9a8b4c7d8e6f1a2b3c4d5e6f")
    service_id: ServiceId = field(
        "The service ID whose API keys are the pull credentials.", "ServiceId-7b0c0a62-0d5b-4c43-9a3e-5f7c2d1e8a90"
    )
    apikey: SecretSourceSpec | None = field("Secret source of rotator's admin API key.", APIKEY_EXAMPLE, None)
    auth: IamAuthSpec | None = field(
        "Instead of apikey: how rotator signs in to IAM (apikey or trusted-profile).", TRUSTED_PROFILE_EXAMPLE, None
    )
    key_expiry: KeyExpiry = field(
        "IAM expiry of minted keys: auto (lifetimes + 7 days), off, or a duration.", "auto", "auto"
    )
    action_when_leaked: LeakAction = field(
        "What IAM does with a minted key found in a public leak.", "disable", "disable"
    )
    lock_current_key: Bool = field("Mint every key with an IAM entity lock.", True, False)
    allow_insecure_http: Bool = field(_INSECURE_DOC, False, False)

    @model_validator(mode="after")
    def _rules(self) -> Self:
        refuse(_insecure(self, "endpoint") + _auth_rules(self, required=True))
        return self


class DockerHubProviderSpec(Spec):
    """Docker Hub: personal or organization access tokens."""

    kind: Literal["dockerhub"] = field("The provider: Docker Hub.", "dockerhub")
    endpoint: Url = field("Docker Hub API base URL.", "https://hub.docker.com", "https://hub.docker.com")
    username: DockerId = field("rotator's Docker ID: signs in and owns personal tokens.", "rotatorbot")
    password: SecretSourceSpec = field(
        "Secret source of its password or a personal access token of its own.",
        {"file": "/var/run/secrets/rotator/dockerhub-password"},
    )
    token_type: TokenType = field("personal or organization.", "organization", "personal")
    org: DockerId | None = field("The organization; required for organization tokens.", "acme", None)
    scopes: list[Text] | None = field(
        "Token scopes (default: repo:read for personal, repo-pull for organization).", ["repo:read"], None
    )
    repositories: list[Text] = field(
        "Organization tokens only, and required there: org/repo or org/*.", ["acme/app"], []
    )
    allow_insecure_http: Bool = field(_INSECURE_DOC, False, False)

    @property
    def registry_username(self) -> str:
        """Who pulls with a minted token: the Docker ID (PAT) or the organization (OAT)."""
        return self.org if self.token_type == "organization" and self.org else self.username

    @model_validator(mode="after")
    def _rules(self) -> Self:
        problems = _insecure(self, "endpoint")
        try:
            validate_token_settings(self.token_type, self.org, self.scopes, self.repositories)
        except ValueError as exc:
            problems.append(Problem("", str(exc), DOCKERHUB_EXAMPLE))
        refuse(problems)
        return self


ProviderSpec = Annotated[
    Annotated[IamProviderSpec, Tag("ibm-iam")] | Annotated[DockerHubProviderSpec, Tag("dockerhub")],
    Discriminator(
        _kind_of("ibm-iam"),
        custom_error_type="rotator_kind",
        custom_error_message=f"is not a known provider ({', '.join(PROVIDERS)})",
    ),
]


class RegistrySpec(Spec):
    """The registry the keys must pull from; rotator proves they do."""

    server: Text = field("The registry key in .dockerconfigjson (auths.<server>).", "us.icr.io")
    username: Text | None = field(
        "The user name stored with the key (default: iamapikey, or the token's identity on Docker Hub).",
        "iamapikey",
        None,
    )
    images: list[Image] = field("Images the key must be able to pull (manifest HEAD).", ["us.icr.io/team/app:latest"])
    endpoint: Url | None = field(
        "Base URL of the registry's v2 API when it differs from https://<server>.", "https://us.icr.io", None
    )
    verify_budget: PositiveDuration = field("Time budget of one pull check.", "60s", "60s")
    recheck_interval: PositiveDuration = field(
        "How long a rotation waits after an inconclusive check before checking again.", "30s", "30s"
    )
    token_realm_hosts: list[HostName] = field(
        "Hosts, besides the registry's own, whose token service may receive the key.", ["auth.example.com"], []
    )
    allow_insecure_http: Bool = field(_INSECURE_DOC, False, False)

    @model_validator(mode="after")
    def _rules(self) -> Self:
        problems = _insecure(self, "endpoint")
        if not self.images:
            problems.append(
                Problem("images", "is empty; name at least one image the key must pull", ["us.icr.io/team/app:latest"])
            )
        refuse(problems)
        return self


class WindowSpec(Spec):
    """Planned rotations start only inside this window; emergencies ignore it."""

    cron: Cron = field("When the window opens (5-field cron, UTC).", "0 2 * * 1-5")
    duration: PositiveDuration = field("How long it stays open.", "2h")


class ScheduleSpec(Spec):
    """When planned rotations happen: exactly one of interval or cron."""

    interval: PositiveDuration | None = field("Rotate this long after the last rotation.", "24h", None)
    cron: Cron | None = field("Rotate at the times of a 5-field cron expression (UTC).", "0 3 * * *", None)
    jitter: Duration = field("Random delay up to this long added to each planned rotation.", "5m", "0s")
    window: WindowSpec | None = field(
        "Planned rotations start only inside this window.", {"cron": "0 2 * * 1-5", "duration": "3h"}, None
    )
    health_check: Duration = field("How often the current key is checked; 0s turns it off.", "5m", "5m")
    retry_backoff: PositiveDuration = field("First wait after a failure, doubling each time.", "1m", "1m")
    retry_backoff_max: PositiveDuration = field("The longest such wait.", "1h", "1h")

    @model_validator(mode="after")
    def _rules(self) -> Self:
        problems = []
        if self.retry_backoff_max < self.retry_backoff:
            problems.append(
                Problem("retry_backoff_max", "must not be shorter than retry_backoff", "retry_backoff_max: 1h")
            )
        if self.interval is not None and self.cron is not None:
            problems.append(Problem("", "give interval or cron, not both", "interval: 24h"))
        if self.interval is None and self.cron is None:
            problems.append(Problem("", "needs interval or cron", "interval: 24h"))
        refuse(problems)
        return self


# -- targets ----------------------------------------------------------------------------------


class NamespacesSpec(Spec):
    """Exactly one of names, selector or all; plus exclude."""

    names: list[NamespaceName] = field("These namespaces.", ["team-a", "team-b"], [])
    selector: Text | None = field(
        "Namespaces with these labels, including ones created later.", "rotator.example.com/pull-secrets=enabled", None
    )
    all: Bool = field("Every namespace.", True, False)
    exclude: list[NamespaceName] = field("Never these.", ["kube-system"], [])

    @model_validator(mode="after")
    def _rules(self) -> Self:
        if sum(bool(x) for x in (self.names, self.selector, self.all)) != 1:
            refuse(
                [
                    Problem(
                        "",
                        "choose namespaces by exactly one of names, selector or all",
                        "{selector: team=platform} or {names: [team-a]} or {all: true, exclude: [kube-system]}",
                    )
                ]
            )
        return self


NAMESPACES_EXAMPLE = {"selector": "team=platform"}


class KubernetesTargetSpec(Spec):
    """A pull Secret of one name in the chosen namespaces of rotator's cluster."""

    secret_name: K8sName = field("Name of the pull Secret in every namespace.", "icr-pull-secret")
    namespaces: NamespacesSpec = field("Which namespaces get the Secret.", NAMESPACES_EXAMPLE)
    service_accounts: list[K8sName] = field(
        "Service accounts in each namespace that get the Secret in imagePullSecrets.", ["default"], []
    )
    overwrite_invalid: Bool = field("Replace a .dockerconfigjson that is not valid JSON.", False, False)


class ClusterTargetSpec(Spec):
    """One cluster of a fleet: how to reach it, and its pull Secret."""

    name: K8sName = field("The cluster's name, unique in the list.", "prod-eu")
    kubeconfig: FilePath | None = field(
        "Kubeconfig of that cluster (required unless in_cluster).", "/etc/rotator/spokes/prod-eu", None
    )
    context: Text | None = field("Context in that kubeconfig.", "prod-eu", None)
    in_cluster: Bool = field("The cluster rotator runs in (its service account).", True, False)
    secret_name: K8sName | None = field("Name of the pull Secret (default: the credential's name).", "icr-pull", None)
    namespaces: NamespacesSpec = field("Which namespaces get the Secret.", NAMESPACES_EXAMPLE)
    service_accounts: list[K8sName] = field(
        "Service accounts in each namespace that get the Secret in imagePullSecrets.", ["default"], []
    )
    overwrite_invalid: Bool = field("Replace a .dockerconfigjson that is not valid JSON.", False, False)

    @model_validator(mode="after")
    def _rules(self) -> Self:
        problems = []
        if self.in_cluster and (self.kubeconfig or self.context):
            problems.append(Problem("in_cluster", "is true, so kubeconfig and context must not be set", True))
        if not self.in_cluster and self.kubeconfig is None:
            problems.append(
                Problem(
                    "kubeconfig",
                    "is required (or in_cluster: true for the cluster rotator runs in)",
                    "/etc/rotator/spokes/prod-eu",
                )
            )
        refuse(problems)
        return self


class CodeEngineProjectSpec(Spec):
    """One Code Engine project."""

    project_id: ProjectId = field("The project's ID (a UUID).", CE_PROJECT_EXAMPLE)
    endpoint: CodeEngineEndpoint | None = field(
        "The project's regional API base URL (default: the shared endpoint).", CE_ENDPOINT_EXAMPLE, None
    )


class CodeEngineTargetSpec(Spec):
    """A registry secret of one name in each listed Code Engine project."""

    secret_name: CodeEngineSecretName = field("Name of the registry secret in every project.", "icr-pull")
    endpoint: CodeEngineEndpoint | None = field(
        "The project's regional API base URL (ends in /v2); the default for projects items.", CE_ENDPOINT_EXAMPLE, None
    )
    project_id: ProjectId | None = field(
        "One project (exactly one of project_id and projects).", CE_PROJECT_EXAMPLE, None
    )
    projects: list[CodeEngineProjectSpec] | None = field(
        "Several projects, each with its own or the shared endpoint.",
        [{"project_id": CE_PROJECT_EXAMPLE, "endpoint": "https://api.eu-de.codeengine.cloud.ibm.com/v2"}],
        None,
    )
    apikey: SecretSourceSpec | None = field(
        "Secret source of an IAM API key that may manage the projects' secrets (default: the provider's).",
        {"file": "/var/run/secrets/rotator/codeengine-apikey"},
        None,
    )
    auth: IamAuthSpec | None = field(
        "Instead of apikey: sign in to IAM for Code Engine as a trusted profile.",
        {"kind": "trusted-profile", "profile_name": "rotator-ce"},
        None,
    )
    iam_endpoint: Url | None = field(
        "IAM token endpoint for that key (default: the provider's).", "https://iam.cloud.ibm.com", None
    )
    allow_insecure_http: Bool = field(
        "Let the endpoints be plain http to a host that is not loopback (a lab only).", False, False
    )

    @model_validator(mode="after")
    def _rules(self) -> Self:
        problems = _insecure(self, "endpoint", "iam_endpoint", "projects") + _auth_rules(self, required=False)
        if (self.project_id is None) == (self.projects is None):
            problems.append(
                Problem(
                    "",
                    "give exactly one of project_id or projects",
                    f"project_id: {CE_PROJECT_EXAMPLE}, or projects: [{{project_id: ..., endpoint: ...}}]",
                )
            )
        elif self.project_id is not None and self.endpoint is None:
            problems.append(Problem("endpoint", "is required", CE_ENDPOINT_EXAMPLE))
        elif self.projects is not None and not self.projects:
            problems.append(Problem("projects", "is not a non-empty list", [{"project_id": CE_PROJECT_EXAMPLE}]))
        seen: set[str] = set()
        for i, project in enumerate(self.projects or ()):
            if project.endpoint is None and self.endpoint is None:
                problems.append(
                    Problem(
                        f"projects[{i}].endpoint",
                        "is required (or set endpoint for every project)",
                        CE_ENDPOINT_EXAMPLE,
                    )
                )
            if project.project_id in seen:
                problems.append(Problem(f"projects[{i}].project_id", f"{project.project_id!r} is listed twice"))
            seen.add(project.project_id)
        refuse(problems)
        return self


def _mapping_or_list(value: Any) -> str:
    return "fleet" if isinstance(value, list) else "single"


KubernetesTargetsSpec = Annotated[
    Annotated[KubernetesTargetSpec, Tag("single")] | Annotated[list[ClusterTargetSpec], Tag("fleet")],
    Discriminator(_mapping_or_list),
]


class TargetsSpec(Spec):
    """Where the key is written: kubernetes and/or codeengine."""

    kubernetes: KubernetesTargetsSpec | None = field(
        "A pull Secret in rotator's cluster (a mapping), or one per cluster of a fleet (a list).",
        {"secret_name": "icr-pull", "namespaces": NAMESPACES_EXAMPLE},
        None,
    )
    codeengine: CodeEngineTargetSpec | None = field(
        "A registry secret in Code Engine projects.",
        {"secret_name": "icr-pull", "project_id": CE_PROJECT_EXAMPLE, "endpoint": CE_ENDPOINT_EXAMPLE},
        None,
    )

    @model_validator(mode="after")
    def _rules(self) -> Self:
        problems = []
        if self.kubernetes is None and self.codeengine is None:
            problems.append(
                Problem(
                    "",
                    "names no target",
                    "kubernetes: {secret_name: icr-pull, ...} and/or codeengine: {secret_name: icr-pull, ...}",
                )
            )
        if isinstance(self.kubernetes, list):
            if not self.kubernetes:
                problems.append(Problem("kubernetes", "lists no cluster", [CLUSTER_EXAMPLE]))
            seen: set[str] = set()
            for i, cluster in enumerate(self.kubernetes):
                if cluster.name in seen:
                    problems.append(
                        Problem(
                            f"kubernetes[{i}].name",
                            f"{cluster.name!r} names two clusters; give each cluster its own name",
                        )
                    )
                seen.add(cluster.name)
        refuse(problems)
        return self


# -- a credential -------------------------------------------------------------------------------


class CredentialFieldsSpec(Spec):
    """One credential without its name: what a config file's list item and a RegistryCredential share."""

    provider: ProviderSpec = field(
        "Who mints and revokes the keys (kind: ibm-iam, the default, or dockerhub).",
        {"kind": "ibm-iam", "account_id": "...", "service_id": "ServiceId-...", "apikey": APIKEY_EXAMPLE},
    )
    registry: RegistrySpec = field(
        "Where the keys must pull from.", {"server": "us.icr.io", "images": ["us.icr.io/team/app:latest"]}
    )
    schedule: ScheduleSpec | None = field(
        "When planned rotations happen (default: interval 24h).", {"interval": "7d"}, None
    )
    max_age: PositiveDuration = field("Longest a key may stay current.", "30d", "90d")
    grace_period: Duration = field("How long a replaced key keeps working before it is disabled.", "1h", "1h")
    delete_after: Duration = field("How long a disabled key is kept before it is deleted.", "24h", "24h")
    targets: TargetsSpec = field(
        "Where the key is written: kubernetes and/or codeengine.",
        {"kubernetes": {"secret_name": "icr-pull", "namespaces": NAMESPACES_EXAMPLE}},
    )
    unreachable_timeout: PositiveDuration = field(
        "How long an unreachable fleet cluster holds back disabling a replaced key.", "24h", "24h"
    )
    revoke_despite_unreachable: Bool = field(
        "Disable the replaced key once a cluster has been unreachable for unreachable_timeout.", False, False
    )

    @property
    def lifetimes(self) -> dt.timedelta:
        """How long rotator itself keeps a key: max_age + grace_period + delete_after."""
        return self.max_age + self.grace_period + self.delete_after

    @model_validator(mode="after")
    def _rules(self) -> Self:
        problems = []
        provider = self.provider
        if self.schedule is not None and self.schedule.interval is not None and self.schedule.interval > self.max_age:
            problems.append(
                Problem(
                    "schedule.interval",
                    "is longer than max_age, so keys would outlive it",
                    "interval: 7d with max_age: 30d",
                )
            )
        expiry = provider.key_expiry if isinstance(provider, IamProviderSpec) else None
        if isinstance(expiry, dt.timedelta) and expiry <= self.lifetimes:
            problems.append(
                Problem(
                    "provider.key_expiry",
                    "is not longer than max_age + grace_period + delete_after "
                    f"({int(self.lifetimes.total_seconds())}s): keys would expire before rotator retires them",
                    "auto",
                )
            )
        if isinstance(provider, DockerHubProviderSpec):
            problems += _dockerhub_registry(self.registry, provider)
        ce = self.targets.codeengine
        if ce is not None and ce.apikey is None and ce.auth is None and provider.kind != "ibm-iam":
            problems.append(
                Problem(
                    "targets.codeengine.apikey",
                    f"is required: the {provider.kind} provider has no IAM API key to call Code Engine with",
                    {"file": "/var/run/secrets/rotator/codeengine-apikey"},
                )
            )
        refuse(problems)
        return self


def _dockerhub_registry(registry: RegistrySpec, provider: DockerHubProviderSpec) -> list[Problem]:
    """Docker Hub tokens pull from Docker Hub, as the Docker ID (PAT) or the organization (OAT)."""
    problems = []
    try:
        host = registry_for_server(registry.server)
    except ImageRefError:
        host = ""
    if host != DOCKER_HUB:
        problems.append(
            Problem(
                "registry.server",
                f"{registry.server!r} is not Docker Hub, where {provider.token_type} access tokens of "
                f"{provider.registry_username} pull (set endpoint to reach a mirror)",
                "https://index.docker.io/v1/",
            )
        )
    expected = provider.registry_username
    if registry.username is not None and registry.username != expected:
        problems.append(
            Problem(
                "registry.username",
                f"{registry.username!r} does not go with a {provider.token_type} access token; "
                f"it pulls as {expected!r}",
                expected,
            )
        )
    return problems


class CredentialSpec(CredentialFieldsSpec):
    """One credential of the config file."""

    name: K8sName = field("Unique name: labels metrics, names minted keys, keys the state.", "icr-pull")


class RegistryCredentialSpec(CredentialFieldsSpec):
    """The spec of a RegistryCredential resource: one credential (its name is the resource's)."""

    deletion_policy: Literal["Retain", "Revoke"] = field(
        "When the resource is deleted: Retain leaves keys and secrets as they are; Revoke revokes its keys "
        "through the normal grace path.",
        "Retain",
        "Retain",
    )


# -- the rest of the file ------------------------------------------------------------------------


class KubernetesSpec(Spec):
    """How rotator reaches its own cluster."""

    kubeconfig: FilePath | None = field("Kubeconfig file when not in-cluster.", "~/.kube/config", None)
    context: Text | None = field("Kubeconfig context.", "prod", None)
    in_cluster: Bool = field("Use the pod's ServiceAccount token.", True, False)
    concurrency: IntConcurrency = field("Secrets written in parallel during a fan-out (1 to 256).", 16, 16)
    namespace: NamespaceName = field(
        "rotator's own namespace: state ConfigMap, vault Secret, Lease.", "rotator-system", "rotator-system"
    )
    events: Bool = field("Record Kubernetes Events on the Secrets rotator writes.", True, True)


class StateSpec(Spec):
    """Where rotator keeps its state."""

    kind: StateKind = field("file (a directory) or configmap (in kubernetes.namespace).", "configmap", "file")
    path: FilePath = field("Directory for kind: file.", "/var/lib/rotator", "rotator-state")
    name: K8sName = field("Object name for kind: configmap.", "rotator-state", "rotator-state")


class DaemonSpec(Spec):
    """Leader election, watches and the pace of the daemon's passes."""

    leader_election: Bool = field("Elect one acting replica with a coordination.k8s.io Lease.", True, False)
    lease_name: K8sName = field("The Lease's name.", "rotator-leader", "rotator-leader")
    lease_duration: PositiveDuration = field("How long a lease is valid without renewal.", "15s", "15s")
    renew_deadline: PositiveDuration = field("The leader steps down if it cannot renew within this.", "10s", "10s")
    retry_period: PositiveDuration = field("How often candidates retry.", "2s", "2s")
    watch: Bool = field("Watch namespaces, managed Secrets and service accounts.", True, True)
    watch_timeout: PositiveDuration = field("Each watch stream is re-opened after this long.", "1m", "1m")
    resync: PositiveDuration = field("Longest pause between passes when nothing is due.", "5m", "5m")
    shutdown_grace: PositiveDuration = field("How long SIGTERM waits for the step in progress.", "25s", "25s")

    @model_validator(mode="after")
    def _rules(self) -> Self:
        if not self.lease_duration > self.renew_deadline > self.retry_period:
            refuse(
                [
                    Problem(
                        "",
                        "needs lease_duration > renew_deadline > retry_period",
                        "{lease_duration: 15s, renew_deadline: 10s, retry_period: 2s}",
                    )
                ]
            )
        return self


class ApiAuthSpec(Spec):
    """How the HTTP API checks bearer tokens."""

    mode: AuthMode | None = field(
        "token-file, kubernetes or disabled (default: kubernetes in a cluster, else disabled).", "token-file", None
    )
    file: FilePath | None = field("token-file: the token file.", "/etc/rotator/api-tokens", None)
    audiences: list[Text] | None = field("kubernetes: TokenReview audiences (default: [rotator]).", ["rotator"], None)
    cache_ttl: Duration = field("kubernetes: how long review answers are cached.", "10s", "10s")
    namespace: NamespaceName | None = field(
        "kubernetes: namespace of the SubjectAccessReview (default: kubernetes.namespace).", "rotator-system", None
    )

    @model_validator(mode="after")
    def _rules(self) -> Self:
        problems = []
        if self.mode == "token-file" and self.file is None:
            problems.append(Problem("file", "is required with mode token-file", "/etc/rotator/api-tokens"))
        if self.mode != "token-file" and self.file is not None:
            problems.append(Problem("file", f"is only used with mode token-file, not {self.mode or 'the default'}"))
        refuse(problems)
        return self


class TlsSpec(Spec):
    """The API listener's certificate chain and key (PEM)."""

    cert_file: FilePath = field("PEM certificate chain.", "/etc/rotator/tls/tls.crt")
    key_file: FilePath = field("Its PEM private key.", "/etc/rotator/tls/tls.key")


class RateLimitSpec(Spec):
    """Token bucket per principal on the mutating endpoints."""

    per_minute: PositiveNumber = field("Requests per minute.", 10, 10)
    burst: IntBurst = field("Its burst.", 5, 5)


class ServerSpec(Spec):
    """The HTTP API and /metrics."""

    listen: Listen = field("host:port (IPv6 in brackets; port 0 picks a free one).", "0.0.0.0:8080", "0.0.0.0:8080")
    metrics_public: Bool = field("Serve /metrics without a token.", True, True)
    auth: ApiAuthSpec | None = field(
        "How bearer tokens are checked.", {"mode": "token-file", "file": "/etc/rotator/api-tokens"}, None
    )
    tls: TlsSpec | None = field(
        "HTTPS on listen (plain HTTP when unset).",
        {"cert_file": "/etc/rotator/tls/tls.crt", "key_file": "/etc/rotator/tls/tls.key"},
        None,
    )
    header_timeout: PositiveDuration = field("A request's headers must arrive within this long.", "10s", "10s")
    rate_limit: RateLimitSpec | None = field(
        "Rate limit of the mutating endpoints.", {"per_minute": 30, "burst": 10}, None
    )
    idempotency_ttl: PositiveDuration = field("How long an Idempotency-Key is remembered.", "24h", "24h")


class ConfigFileSpec(Spec):
    """rotator's configuration file."""

    credentials: list[CredentialSpec] = field(
        "The credentials to rotate (at least one, unless credentials_from is cluster).",
        [{"name": "icr-pull", "provider": "...", "registry": "...", "targets": "..."}],
        [],
    )
    credentials_from: Literal["file", "cluster", "both"] = field(
        "Where credentials come from: this file, RegistryCredential resources in rotator's cluster, or both "
        "(a resource named like a credential of this file is refused).",
        "both",
        "file",
    )
    kubernetes: KubernetesSpec | None = field(
        "How rotator reaches its own cluster (default: in-cluster inside a pod).", {"in_cluster": True}, None
    )
    state: StateSpec | None = field("Where rotator keeps its state.", {"kind": "configmap"}, None)
    daemon: DaemonSpec | None = field("The daemon's leader election and watches.", {"leader_election": True}, None)
    server: ServerSpec | None = field("The HTTP API.", {"listen": "0.0.0.0:8080"}, None)

    @model_validator(mode="after")
    def _rules(self) -> Self:
        problems = []
        if self.credentials_from == "cluster" and self.credentials:
            problems.append(
                Problem(
                    "credentials",
                    "must be empty with credentials_from: cluster (credentials come from RegistryCredential resources)",
                    "credentials_from: both, to keep these besides the resources",
                )
            )
        elif not self.credentials and self.credentials_from != "cluster":
            problems.append(
                Problem("credentials", "is required: a list of at least one credential", "- name: icr-pull ...")
            )
        seen: set[str] = set()
        for i, cred in enumerate(self.credentials):
            if cred.name in seen:
                problems.append(Problem(f"credentials[{i}].name", f"{cred.name!r} is used twice; names must be unique"))
            seen.add(cred.name)
        refuse(problems)
        return self


def unwrap(annotation: Any) -> tuple[dict[str, Any], Any]:
    """(tag -> member of a tagged union, the type without Optional/Annotated) of a field's annotation:
    how error messages and docs find a field's section model."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
            continue
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1 and get_origin(annotation) in (Union, UnionType):  # Optional[X]
            annotation = args[0]
            continue
        tags = {
            meta.tag: get_args(arg)[0]
            for arg in args
            for meta in getattr(arg, "__metadata__", ())
            if hasattr(meta, "tag") and hasattr(arg, "__metadata__")
        }
        return tags, annotation
