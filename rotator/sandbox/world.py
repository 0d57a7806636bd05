"""The seeded world: identities, namespaces and images every emulator starts from.

Values are generated once and kept in ``--state-dir`` when one is given, so a restarted sandbox
keeps its identities. The endpoints file publishes them to the demo and the tests.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


def _apikey() -> str:
    # IBM API keys are 44 URL-safe characters.
    return secrets.token_urlsafe(33)[:44]


@dataclass(frozen=True, kw_only=True)
class Seed:
    # Identifiers are fixed so that config/sandbox.yaml works against any default sandbox;
    # credential values are random per sandbox.
    account_id: str = "5e1f0d2c9a8b4c7d8e6f1a2b3c4d5e6f"
    # The service ID whose API keys rotator rotates (it has pull rights in the registry).
    service_id: str = "ServiceId-7b0c0a62-0d5b-4c43-9a3e-5f7c2d1e8a90"
    service_name: str = "registry-puller"
    # rotator's own identity: may manage the target service ID's keys.
    admin_service_id: str = "ServiceId-0a1d2e3f-4b5c-4d6e-8f70-81a2b3c4d5e6"
    admin_apikey: str = field(default_factory=_apikey)
    # An identity with no rights on the target service ID (for 403 tests).
    outsider_service_id: str = "ServiceId-9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"
    outsider_apikey: str = field(default_factory=_apikey)
    # Keys on the target service ID that rotator did not create and must never touch.
    foreign_apikeys: dict[str, str] = field(
        default_factory=lambda: {"ci-pipeline": _apikey(), "legacy-manual": _apikey()}
    )
    # rotator's keyless identity: a trusted profile whose compute-resource link admits the service
    # account (namespace, name) of the sandbox cluster named by cluster_crn; may manage the target's keys.
    trusted_profile_id: str = "Profile-3c2b1a09-8f7e-4d6c-9b5a-4e3d2c1b0a98"
    trusted_profile_name: str = "rotator"
    trusted_profile_link: tuple[str, str] = ("rotator-system", "rotator")
    cluster_crn: str = (
        "crn:v1:bluemix:public:containers-kubernetes:us-south:a/5e1f0d2c9a8b4c7d8e6f1a2b3c4d5e6f:sandbox-cluster::"
    )
    kubernetes_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    # Bearer token allowed to read but not write (for 403 tests).
    kubernetes_readonly_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    namespaces: tuple[str, ...] = ("team-a", "team-b", "team-c", "kube-system", "default")
    # Namespaces that carry this label are selected by config/sandbox.yaml.
    namespace_label: tuple[str, str] = ("rotator.example.com/pull-secrets", "enabled")
    labelled_namespaces: tuple[str, ...] = ("team-a", "team-b", "team-c")
    # Repositories (namespace/repo:tag) pushed into the registry emulator.
    repositories: tuple[str, ...] = ("team/app:latest", "team/worker:1.0")
    # IBM Code Engine: one project whose secrets rotator's admin identity may manage.
    codeengine_project_id: str = "3f6a9c2e-8b1d-4e7a-9c5f-2d8e1b7a4c60"
    codeengine_project_name: str = "team-apps"
    codeengine_region: str = "us-south"
    # Docker Hub: rotator's Docker ID and its password, an organization it owns, and a personal access
    # token of that Docker ID which rotator did not create and must never touch.
    dockerhub_username: str = "rotatorbot"
    dockerhub_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    dockerhub_org: str = "acme"
    dockerhub_foreign_pat: str = field(default_factory=lambda: "dckr_pat_" + secrets.token_urlsafe(21)[:27])

    @staticmethod
    def iam_id(service_id: str) -> str:
        return f"iam-{service_id}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Seed:
        data = dict(data)
        for name in ("namespaces", "labelled_namespaces", "repositories", "namespace_label", "trusted_profile_link"):
            if name in data:
                data[name] = tuple(data[name])
        return cls(**data)

    @classmethod
    def load_or_create(cls, state_dir: Path | None) -> Seed:
        if state_dir is None:
            return cls()
        path = state_dir / "seed.json"
        if path.exists():
            return cls.from_json(json.loads(path.read_text()))
        seed = cls()
        path.write_text(json.dumps(seed.to_json(), indent=2))
        path.chmod(0o600)
        return seed
