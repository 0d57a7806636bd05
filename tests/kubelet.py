"""Play the kubelet: ask the Kubernetes emulator's TokenRequest API for a service-account token and
write it where a projected volume would put it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from rotator.sandbox.control import SandboxProcess


def kube(sbx: SandboxProcess, method: str, path: str, body: Any = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {sbx.endpoints['kubernetes_token']}"}
    return httpx.request(method, sbx.endpoints["kubernetes"] + path, headers=headers, json=body, timeout=10)


def ensure_service_account(sbx: SandboxProcess, namespace: str, name: str) -> None:
    response = kube(sbx, "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": name}})
    assert response.status_code in (201, 409), response.text


def request_token(sbx: SandboxProcess, namespace: str, name: str, audience: str = "iam", seconds: int = 3600) -> str:
    body = {"spec": {"audiences": [audience], "expirationSeconds": seconds}}
    response = kube(sbx, "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", body)
    assert response.status_code == 201, response.text
    token: str = response.json()["status"]["token"]
    return token


def project_token(sbx: SandboxProcess, path: Path, namespace: str, name: str, audience: str = "iam") -> Path:
    """Write a fresh token for the service account to ``path`` (creating the account if needed)."""
    ensure_service_account(sbx, namespace, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(request_token(sbx, namespace, name, audience))
    return path
