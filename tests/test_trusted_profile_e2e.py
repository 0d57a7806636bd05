"""Keyless operation: the daemon signs in to IAM and Code Engine as a trusted profile, with a service-account
token projected from the Kubernetes emulator, and no API key anywhere in its config or environment."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest
from daemon_env import Daemon
from kubelet import project_token
from polling import wait_for
from rotation_env import live_owned_keys, stored_password, write_config
from test_codeengine_e2e import ce_password, ce_targets
from test_daemon import daemons  # noqa: F401 - the fixture, shared

from rotator.adapters.state import FileStateStore
from rotator.sandbox.control import SandboxProcess, iam_provider_config

OPERATOR = "operator-token-0123456789"


def keyless_config(tmp_path: Path, sbx: SandboxProcess, token_file: Path) -> Path:
    ep = sbx.endpoints
    provider = {k: v for k, v in iam_provider_config(ep).items() if k != "apikey"}
    provider["auth"] = {
        "kind": "trusted-profile",
        "profile_name": ep["trusted_profile_name"],
        "cr_token_file": str(token_file),
    }
    tokens = tmp_path / "api-tokens"
    tokens.write_text(f"{OPERATOR} alice rotate\n")
    top = {"server": {"listen": "127.0.0.1:0", "auth": {"mode": "token-file", "file": str(tokens)}}}
    return write_config(tmp_path, sbx, top=top, provider=provider, targets=ce_targets(sbx))


def test_daemon_rotates_with_no_api_key_anywhere(
    sandbox: SandboxProcess,
    tmp_path: Path,
    daemons: list[Daemon],  # noqa: F811 - the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """First rotation and a requested one (mint, distribute to Kubernetes and Code Engine, retire) run as the
    trusted profile; a token the kubelet rotated in place is picked up at the next sign-in."""
    ep = sandbox.endpoints
    namespace, account = ep["trusted_profile_namespace"], ep["trusted_profile_service_account"]
    token_file = project_token(sandbox, tmp_path / "tokens" / "sa-token", namespace, account)
    config = keyless_config(tmp_path, sandbox, token_file)
    assert ep["admin_apikey"] not in config.read_text()
    for name in [n for n in os.environ if "APIKEY" in n.upper()]:
        monkeypatch.delenv(name)
    # Short-lived access tokens: the daemon signs in again within seconds, reading the token file each time.
    sandbox.admin.put("/iam/token-lifetime", json={"seconds": 2}).raise_for_status()
    daemons.append(daemon := Daemon(config))
    store = FileStateStore(tmp_path / "state")
    wait_for(lambda: (j := store.load("icr-pull")).last_result is not None and j.rotation is None, "first rotation")
    first = stored_password(sandbox, "team-a")
    assert first is not None and ce_password(sandbox) == first

    base, operator = daemon.api(), {"Authorization": f"Bearer {OPERATOR}"}

    def rotate(key: str) -> str:
        response = httpx.post(
            f"{base}/v1/credentials/icr-pull/rotate", headers={**operator, "Idempotency-Key": key}, json={"reason": key}
        )
        assert response.status_code == 202, response.text
        rotation_id = response.json()["rotation_id"]

        def finished() -> str | None:
            state = httpx.get(f"{base}/v1/rotations/{rotation_id}", headers=operator).json()["state"]
            return str(state) if state in ("succeeded", "failed") else None

        return wait_for(finished, f"rotation {key}")

    # The file now holds a token of a service account the profile does not link: sign-in is refused.
    project_token(sandbox, token_file, namespace, "not-rotator")
    # Whatever access token the daemon holds was issued before the swap and is refreshed within its
    # 2 s lifetime: once that has passed (both clocks are this machine's), its next call must sign in again.
    last_sign_in = max(r["time"] for r in sandbox.requests("iam") if r["path"] == "/identity/token")
    wait_for(lambda: time.time() > last_sign_in + 2.0, "the daemon's access token to expire")
    assert rotate("unlinked-token") == "failed"
    assert stored_password(sandbox, "team-a") == first
    # The kubelet writes the right token again: the next sign-in reads it and the rotation goes through.
    project_token(sandbox, token_file, namespace, account)
    assert rotate("linked-token") == "succeeded"
    second = stored_password(sandbox, "team-a")
    assert second not in (None, first) and ce_password(sandbox) == second
    owned = live_owned_keys(sandbox)
    assert owned and all(k["created_by"] == f"iam-{ep['trusted_profile_id']}" for k in owned)
    log = daemon.log_path.read_text()
    for secret in (token_file.read_text(), first, second):
        assert secret not in log
