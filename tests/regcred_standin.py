"""A stand-in for ``rotator.config_model.RegistryCredentialSpec`` until that model lands (branch ``model``):
one credential's config, camelCase, with the same shapes the real one has (a provider union discriminated
by kind, secret sources file|env|secretKeyRef, targets.kubernetes as a mapping or a list of fleet clusters,
durations as strings) and the cross-field rules as model validators with rotator/crd.py's messages.
Once the real model is merged, tests/test_regcred_crd.py takes it instead (see SPEC there)."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from rotator.crd import DURATION_PATTERN

Duration = Annotated[str, Field(pattern=DURATION_PATTERN, examples=["90s", "24h"])]
Name = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253)]


def exactly_one(*given: object) -> bool:
    return sum(bool(g) for g in given) == 1


class _Spec(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, extra="forbid")


class SecretKeyRef(_Spec):
    namespace: Name
    name: Name
    key: str = Field(min_length=1)


class SecretSource(_Spec):
    """Where a secret comes from: a file, an environment variable, a key of a Kubernetes Secret."""

    file: str | None = None
    env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    secret_key_ref: SecretKeyRef | None = None

    @model_validator(mode="after")
    def _one(self) -> Self:
        if not exactly_one(self.file, self.env, self.secret_key_ref):
            raise ValueError("give exactly one of file, env or secretKeyRef; keys are never written inline")
        return self


class TrustedProfileAuth(_Spec):
    kind: Literal["trusted-profile"] = "trusted-profile"
    profile_id: str | None = Field(default=None, pattern=r"^Profile-")
    profile_name: str | None = None
    cr_token_file: str = "/var/run/secrets/tokens/sa-token"

    @model_validator(mode="after")
    def _one(self) -> Self:
        if not exactly_one(self.profile_id, self.profile_name):
            raise ValueError("give exactly one of profileId or profileName")
        return self


class IamProvider(_Spec):
    kind: Literal["ibm-iam"] = "ibm-iam"
    endpoint: str = Field(default="https://iam.cloud.ibm.com", pattern=r"^https?://[^\s/]+")
    account_id: str = Field(min_length=1, title="Account")
    service_id: str = Field(pattern=r"^ServiceId-", description="The service ID whose keys are rotated.")
    apikey: SecretSource | None = None
    auth: TrustedProfileAuth | None = None
    key_expiry: Literal["auto", "off"] | Duration = "auto"
    action_when_leaked: Literal["none", "disable", "delete"] = "disable"
    allow_insecure_http: bool = False

    @model_validator(mode="after")
    def _one(self) -> Self:
        if not exactly_one(self.apikey, self.auth):
            raise ValueError("give exactly one of apikey or auth")
        return self


class DockerHubProvider(_Spec):
    kind: Literal["dockerhub"]
    endpoint: str = Field(default="https://hub.docker.com", pattern=r"^https?://[^\s/]+")
    username: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{1,38}$")
    password: SecretSource
    token_type: Literal["personal", "organization"] = "personal"
    org: str | None = None
    repositories: list[str] = []
    allow_insecure_http: bool = False

    @model_validator(mode="after")
    def _tokens(self) -> Self:
        if self.token_type == "organization" and not (self.org and self.repositories):
            raise ValueError("an organization access token needs the organization (org) and at least one repository")
        if self.token_type != "organization" and self.repositories:
            raise ValueError("repositories apply to organization access tokens only")
        return self


class Registry(_Spec):
    server: str = Field(min_length=1)
    username: str = "iamapikey"
    images: list[str] = Field(min_length=1)
    endpoint: str | None = None
    verify_budget: Duration = "60s"


class Window(_Spec):
    cron: str
    duration: Duration


class Schedule(_Spec):
    interval: Duration | None = None
    cron: str | None = None
    jitter: Duration = "0s"
    window: Window | None = None

    @model_validator(mode="after")
    def _one(self) -> Self:
        if not exactly_one(self.interval, self.cron):
            raise ValueError("give exactly one of interval or cron")
        return self


class NamespaceSelection(_Spec):
    names: list[Name] = []
    selector: str | None = None
    all: bool = False
    exclude: list[Name] = []

    @model_validator(mode="after")
    def _one(self) -> Self:
        if not exactly_one(self.names, self.selector, self.all):
            raise ValueError("choose namespaces by exactly one of names, selector or all")
        return self


class KubernetesTarget(_Spec):
    secret_name: Name
    namespaces: NamespaceSelection
    service_accounts: list[Name] = []


class ClusterTarget(KubernetesTarget):
    name: Name
    kubeconfig: str | None = None


class CodeEngineProject(_Spec):
    project_id: str
    endpoint: str | None = None


class CodeEngineTarget(_Spec):
    secret_name: Name
    endpoint: str | None = None
    project_id: str | None = None
    projects: list[CodeEngineProject] | None = None
    apikey: SecretSource | None = None

    @model_validator(mode="after")
    def _one(self) -> Self:
        if not exactly_one(self.project_id, self.projects):
            raise ValueError("give exactly one of projectId or projects")
        return self


class Targets(_Spec):
    kubernetes: KubernetesTarget | list[ClusterTarget] | None = None
    codeengine: CodeEngineTarget | None = None

    @model_validator(mode="after")
    def _some(self) -> Self:
        if self.kubernetes is None and self.codeengine is None:
            raise ValueError("names no target: give kubernetes or codeengine")
        return self


class RegistryCredentialSpec(_Spec):
    provider: Annotated[IamProvider | DockerHubProvider, Field(discriminator="kind")]
    registry: Registry
    schedule: Schedule = Schedule(interval="24h")
    max_age: Duration = "90d"
    grace_period: Duration = "1h"
    delete_after: Duration = "24h"
    targets: Targets
    deletion_policy: Literal["Retain", "Revoke"] = Field(
        default="Retain", description="Retain: keys and secrets stay when the resource is deleted; Revoke: revoked."
    )
