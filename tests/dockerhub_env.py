"""Helpers for Docker Hub end-to-end tests: a config rotating an organization access token into
Kubernetes secrets of a sandbox, and read-only views of the Hub emulators' state afterwards."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import yaml
from masked import masked
from rotation_env import read_secret

from rotator import dockerconfig
from rotator.adapters.registry import RegistryVerifier
from rotator.model import RegistryAuth, SecretStr
from rotator.sandbox.control import SandboxProcess, labelled_kubernetes_target

CRED = "hub-pull"
SECRET = "hub-pull"
SERVER = "https://index.docker.io/v1/"
TEAMS = ("team-a", "team-b", "team-c")


def write_config(
    tmp_path: Path, sbx: SandboxProcess, *, provider: dict[str, Any] | None = None, **overrides: Any
) -> Path:
    """An org-token config for ``sbx``: the labelled namespaces, the default service account, short durations."""
    ep = sbx.endpoints
    org = ep["dockerhub_org"]
    cred: dict[str, Any] = {
        "name": CRED,
        "provider": {
            "kind": "dockerhub",
            "endpoint": ep["dockerhub_api"],
            "username": ep["dockerhub_username"],
            "password": {"file": ep["dockerhub_password_file"]},
            "token_type": "organization",
            "org": org,
            "scopes": ["repo-pull"],
            "repositories": [f"{org}/app"],
            **(provider or {}),
        },
        "registry": {
            "server": SERVER,
            "images": ep["dockerhub_images"],
            "endpoint": ep["dockerhub_registry"],
            "verify_budget": "10s",
        },
        "schedule": {"interval": "1h"},
        "max_age": "1d",
        "grace_period": "1h",
        "delete_after": "1h",
        "targets": {"kubernetes": labelled_kubernetes_target(ep, SECRET)},
    }
    cred.update(overrides)
    doc = {
        "credentials": [cred],
        "kubernetes": {"kubeconfig": ep["kubeconfig"], "concurrency": 4},
        "state": {"kind": "file", "path": str(tmp_path / "state")},
    }
    path = tmp_path / "rotator-dockerhub.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def stored_entry(sbx: SandboxProcess, namespace: str) -> RegistryAuth | None:
    obj = read_secret(sbx, namespace, SECRET)
    if obj is None:
        return None
    doc = dockerconfig.parse(base64.b64decode(obj["data"][".dockerconfigjson"]))
    return dockerconfig.entry(doc, SERVER)


def stored_password(sbx: SandboxProcess, namespace: str) -> str | None:
    entry = stored_entry(sbx, namespace)
    return masked(entry.password.reveal()) if entry else None


def hub_tokens(sbx: SandboxProcess) -> list[dict[str, Any]]:
    """Every PAT and OAT at the Hub API emulator (deleted ones too), never a value."""
    tokens: list[dict[str, Any]] = sbx.admin.get("/dockerhub_api/tokens").raise_for_status().json()["tokens"]
    return tokens


def token(sbx: SandboxProcess, token_id: str) -> dict[str, Any]:
    return next(t for t in hub_tokens(sbx) if t.get("id", t.get("uuid")) == token_id)


def live_owned(sbx: SandboxProcess) -> list[dict[str, Any]]:
    """rotator's tokens for CRED that are not deleted (by label, as the provider decides ownership)."""
    label_of = {"organization": "label", "personal": "token_label"}
    return [
        t for t in hub_tokens(sbx) if not t["deleted"] and str(t[label_of[t["kind"]]]).startswith(f"rotator-{CRED}-")
    ]


def token_id_of(sbx: SandboxProcess, value: str) -> str:
    """The emulator's id for a token value (a test oracle: the real Hub API cannot answer this)."""
    response = sbx.admin.post("/dockerhub_api/identify", json={"token": value})
    response.raise_for_status()
    token_id: str = response.json()["id"]
    return token_id


def foreign_state(sbx: SandboxProcess) -> dict[str, Any]:
    """The tokens rotator must never touch, as the emulator holds them (usage times left out)."""
    ids = {sbx.endpoints["dockerhub_foreign_pat_id"], sbx.endpoints["dockerhub_foreign_oat_id"]}
    return {
        t.get("id", t.get("uuid")): {k: v for k, v in t.items() if k not in ("last_used", "last_used_at")}
        for t in hub_tokens(sbx)
        if t.get("id", t.get("uuid")) in ids
    }


def pulls(sbx: SandboxProcess, password: str, username: str | None = None) -> str:
    """The verifier's outcome (HEAD only) for ``username:password`` against the Docker Hub registry emulator."""
    user = username or sbx.endpoints["dockerhub_org"]
    with httpx.Client(timeout=10) as client:
        verifier = RegistryVerifier(
            budget_s=5, client=client, endpoint_overrides={SERVER: sbx.endpoints["dockerhub_registry"]}
        )
        auth = RegistryAuth(server=SERVER, username=user, password=SecretStr(password))
        return verifier.verify(server=SERVER, auth=auth, images=sbx.endpoints["dockerhub_images"]).outcome


def registry_pulls(sbx: SandboxProcess) -> dict[str, Any]:
    counts: dict[str, Any] = sbx.admin.get("/dockerhub_registry/pulls").raise_for_status().json()
    return counts
