"""The seeded world: identities, namespaces and images every emulator starts from.

Values are generated once and kept in ``--state-dir`` when one is given, so a restarted sandbox
keeps its identities. The endpoints file publishes them to the demo and the tests.
"""

from __future__ import annotations

import json
import secrets
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


def _apikey() -> str:
    # IBM API keys are 44 URL-safe characters.
    return secrets.token_urlsafe(33)[:44]


def _service_id() -> str:
    return f"ServiceId-{uuid.uuid4()}"


@dataclass(frozen=True, kw_only=True)
class Seed:
    account_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # The service ID whose API keys rotator rotates (it has pull rights in the registry).
    service_id: str = field(default_factory=_service_id)
    service_name: str = "registry-puller"
    # rotator's own identity: may manage the target service ID's keys.
    admin_service_id: str = field(default_factory=_service_id)
    admin_apikey: str = field(default_factory=_apikey)
    # An identity with no rights on the target service ID (for 403 tests).
    outsider_service_id: str = field(default_factory=_service_id)
    outsider_apikey: str = field(default_factory=_apikey)
    # Keys on the target service ID that rotator did not create and must never touch.
    foreign_apikeys: dict[str, str] = field(
        default_factory=lambda: {"ci-pipeline": _apikey(), "legacy-manual": _apikey()}
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

    @staticmethod
    def iam_id(service_id: str) -> str:
        return f"iam-{service_id}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Seed:
        data = dict(data)
        for name in ("namespaces", "labelled_namespaces", "repositories", "namespace_label"):
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
