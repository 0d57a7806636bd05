"""End to end over HTTP: one credential fanned out to Kubernetes secrets and a Code Engine registry secret."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from rotation_env import (
    CRED,
    SECRET,
    live_owned_keys,
    make_app,
    pulls,
    read_secret,
    run_rotator,
    stored_password,
    write_config,
)

from rotator.app import App
from rotator.policy import Request
from rotator.sandbox.control import SandboxProcess
from rotator.settings import load

TEAMS = ("team-a", "team-b", "team-c")
VERSION = "2026-03-27"


# -- helpers (also used by test_codeengine_crash.py) ------------------------------------------------
def ce_targets(sbx: SandboxProcess, **codeengine: Any) -> dict[str, Any]:
    """The labelled namespaces plus the seeded Code Engine project, same secret name everywhere."""
    ep = sbx.endpoints
    return {
        "kubernetes": {
            "secret_name": SECRET,
            "namespaces": {"selector": ep["namespace_label"]},
            "service_accounts": ["default"],
        },
        "codeengine": {
            "endpoint": ep["codeengine"],
            "project_id": ep["codeengine_project_id"],
            "secret_name": SECRET,
            **codeengine,
        },
    }


def write_ce_config(tmp_path: Path, sbx: SandboxProcess, **overrides: Any) -> Path:
    return write_config(tmp_path, sbx, targets=ce_targets(sbx), **overrides)


def ce_secret(sbx: SandboxProcess, name: str = SECRET) -> dict[str, Any] | None:
    """The secret as the emulator holds it (test control route: data included)."""
    secrets = sbx.admin.get("/codeengine/secrets").raise_for_status().json()["secrets"]
    return next((s for s in secrets if s["name"] == name), None)


def ce_password(sbx: SandboxProcess) -> str | None:
    secret = ce_secret(sbx)
    return secret["data"]["password"] if secret else None


class CeClient:
    """Someone else calling the Code Engine API with the admin's key."""

    def __init__(self, sbx: SandboxProcess) -> None:
        self.sbx = sbx
        ep = sbx.endpoints
        form = {"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": ep["admin_apikey"]}
        self.token = httpx.post(f"{ep['iam']}/identity/token", data=form).json()["access_token"]
        self.base = f"{ep['codeengine']}/projects/{ep['codeengine_project_id']}/secrets"

    def request(self, method: str, path: str = "", **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return httpx.request(method, self.base + path, params={"version": VERSION}, headers=headers, **kwargs)


def assert_everywhere(sbx: SandboxProcess, value: str) -> None:
    for ns in TEAMS:
        assert stored_password(sbx, ns) == value, ns
    assert ce_password(sbx) == value


@pytest.fixture
def app_factory(sandbox: SandboxProcess, tmp_path: Path) -> Iterator[Any]:
    apps: list[App] = []

    def make(**kwargs: Any) -> App:
        app = make_app(write_ce_config(tmp_path, sandbox), **kwargs)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


# -- tests --------------------------------------------------------------------------------------------
def test_rotation_reaches_kubernetes_and_code_engine(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """``rotator rotate`` puts the new key in every namespace and the CE secret; the second one updates it in place."""
    config = str(write_ce_config(tmp_path, sandbox))
    first = run_rotator("rotate", CRED, "-c", config)
    assert first.returncode == 0, first.stderr
    key1 = stored_password(sandbox, "team-a")
    assert key1 is not None
    assert_everywhere(sandbox, key1)
    created = ce_secret(sandbox)
    assert created is not None
    assert (created["format"], created["data"]["server"], created["data"]["username"]) == (
        "registry",
        sandbox.endpoints["registry_host"],
        "iamapikey",
    )
    assert pulls(sandbox, key1) == "ok"

    second = run_rotator("rotate", CRED, "-c", config)
    assert second.returncode == 0, second.stderr
    key2 = ce_password(sandbox)
    assert key2 is not None and key2 != key1
    assert_everywhere(sandbox, key2)
    updated = ce_secret(sandbox)
    assert updated is not None
    assert updated["id"] == created["id"] and updated["entity_tag"] != created["entity_tag"]
    assert pulls(sandbox, key2) == "ok"
    assert key1 not in first.stdout + first.stderr + second.stdout + second.stderr


def test_rejected_new_key_never_reaches_code_engine(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """A new key the registry refuses is rolled back before distribution: the CE secret is not even written."""
    config = str(write_ce_config(tmp_path, sandbox))
    assert run_rotator("rotate", CRED, "-c", config).returncode == 0
    before = ce_secret(sandbox)
    assert before is not None
    sandbox.admin.post("/registry/deny-new-keys", json={"enabled": True}).raise_for_status()
    result = run_rotator("rotate", CRED, "-c", config)
    assert result.returncode == 1
    assert "rejected" in result.stderr
    assert ce_secret(sandbox) == before
    assert_everywhere(sandbox, before["data"]["password"])
    assert pulls(sandbox, before["data"]["password"]) == "ok"
    assert len(live_owned_keys(sandbox)) == 1


@pytest.mark.parametrize("existed", [pytest.param(True, id="restored"), pytest.param(False, id="created-then-deleted")])
def test_rejection_after_distribution_restores_code_engine(
    sandbox: SandboxProcess, app_factory: Any, existed: bool
) -> None:
    """When the stored bytes fail the check after distribution, the CE secret gets its old key back (or goes)."""
    app = app_factory()
    armed = False
    seen: list[str] = []

    def on_event(name: str, fields: dict[str, Any]) -> None:
        seen.append(name)
        if armed and name == "verification" and seen.count("verification") == 1:
            # The new key passed its first check; from now on the registry refuses every manifest.
            sandbox.set_faults(
                "registry", {"path_prefix": "/v2/team/", "methods": ["HEAD"], "error_status": 401, "error_count": 1000}
            )

    app.on_event = on_event
    reconciler = app.reconciler(CRED)
    old = None
    if existed:
        assert reconciler.run(Request(reason="setup")).result == "succeeded"
        old = ce_password(sandbox)
    seen.clear()
    armed = True
    outcome = reconciler.run(Request(reason="test"))
    sandbox.clear_faults()
    assert outcome.result == "failed" and "verify_stored" in outcome.detail
    if existed:
        assert old is not None
        assert_everywhere(sandbox, old)
        assert pulls(sandbox, old) == "ok"
        assert len(live_owned_keys(sandbox)) == 1
    else:
        assert ce_secret(sandbox) is None
        assert all(read_secret(sandbox, ns) is None for ns in TEAMS)
        assert live_owned_keys(sandbox) == []


@pytest.mark.parametrize(
    "how", [pytest.param("concurrent-writer", id="concurrent-writer"), pytest.param("412", id="injected-412")]
)
def test_stale_entity_tag_is_reread_and_retried(sandbox: SandboxProcess, tmp_path: Path, how: str) -> None:
    """A replace that lands between rotator's read and write (412) is read again and overwritten with the new key."""
    other = CeClient(sandbox)
    armed: list[bool] = []

    def on_request(request: httpx.Request) -> None:
        if armed and request.method == "PUT" and "/secrets/" in request.url.path:
            armed.clear()
            body = {
                "format": "registry",
                "data": {"server": sandbox.endpoints["registry_host"], "username": "iamapikey", "password": "theirs"},
            }
            assert other.request("PUT", f"/{SECRET}", json=body, headers={"If-Match": "*"}).status_code == 200

    def on_event(name: str, fields: dict[str, Any]) -> None:
        if name != "key.minted":
            return
        if how == "412":
            sandbox.set_faults(
                "codeengine", {"path_prefix": "/v2/projects", "methods": ["PUT"], "error_status": 412, "error_count": 1}
            )
        else:
            armed.append(True)

    http = httpx.Client(timeout=httpx.Timeout(15.0, connect=5.0), event_hooks={"request": [on_request]})
    app = App(load(write_ce_config(tmp_path, sandbox)), http=http)
    try:
        assert app.reconciler(CRED).run(Request(reason="setup")).result == "succeeded"
        since = sandbox.last_seq("codeengine")
        app.on_event = on_event
        app.reconciler(CRED).on_event = on_event
        outcome = app.reconciler(CRED).run(Request(reason="test"))
    finally:
        app.close()
    assert outcome.result == "succeeded", outcome.detail
    value = stored_password(sandbox, "team-a")
    assert value is not None
    assert_everywhere(sandbox, value)
    puts = [r["status"] for r in sandbox.requests("codeengine", since) if r["method"] == "PUT"]
    assert puts == ([200, 412, 200] if how == "concurrent-writer" else [412, 200])


def test_secret_limit_fails_clearly_and_loses_nothing(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """A full project refuses the CE target with the limit and a fix; Kubernetes rotates; reconcile fills it later."""
    other = CeClient(sandbox)
    existing = {"format": "generic", "name": "app-config", "data": {"LOG_LEVEL": "debug"}}
    assert other.request("POST", json=existing).status_code == 201
    sandbox.admin.put("/codeengine/secret-limit", json={"limit": 1}).raise_for_status()
    config = str(write_ce_config(tmp_path, sandbox))

    result = run_rotator("rotate", CRED, "-c", config)
    assert result.returncode == 0, result.stderr
    assert f"1 targets refused: codeengine:{sandbox.endpoints['codeengine_project_id']}/{SECRET}" in result.stdout
    lines = (result.stdout + result.stderr).splitlines()
    refusals = [json.loads(line) for line in lines if '"secret.refused"' in line]
    assert refusals and "maximum number of secrets (1)" in refusals[0]["error"]
    assert "delete secrets" in refusals[0]["error"]
    value = stored_password(sandbox, "team-a")
    assert value is not None and all(stored_password(sandbox, ns) == value for ns in TEAMS)
    assert ce_secret(sandbox) is None
    assert ce_secret(sandbox, "app-config") is not None  # nothing of anyone else's was touched
    assert len(live_owned_keys(sandbox)) == 1

    still_full = run_rotator("reconcile", CRED, "-c", config)
    assert still_full.returncode == 1
    assert "LimitReachedError" in still_full.stderr or "maximum number of secrets" in still_full.stderr

    sandbox.admin.put("/codeengine/secret-limit", json={"limit": 100}).raise_for_status()
    healed = run_rotator("reconcile", CRED, "-c", config)
    assert healed.returncode == 0, healed.stderr
    assert ce_password(sandbox) == value
    assert value not in result.stdout + result.stderr + still_full.stderr + healed.stdout + healed.stderr


def test_plan_and_check_report_the_code_engine_target(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """``rotator plan`` lists the CE secret to create; ``rotator check`` reports it readable and writable, read-only."""
    config = str(write_ce_config(tmp_path, sandbox))
    project = sandbox.endpoints["codeengine_project_id"]
    plan = run_rotator("plan", "-c", config)
    assert plan.returncode == 0, plan.stderr
    assert f"create codeengine secret {project}/{SECRET}" in plan.stdout
    check = run_rotator("check", "-c", config)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "ok   icr-pull: 4 target(s) readable" in check.stdout
    assert "ok   icr-pull: codeengine targets writable" in check.stdout
    assert "FAIL" not in check.stdout
    assert ce_secret(sandbox) is None
    assert {r["method"] for r in sandbox.requests("codeengine")} == {"GET"}


def test_check_fails_for_a_code_engine_key_without_rights(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """A Code Engine key of its own that may not manage the project makes ``rotator check`` fail, naming why."""
    key_file = tmp_path / "ce-apikey"
    key_file.write_text(sandbox.endpoints["outsider_apikey"])
    targets = ce_targets(sandbox, apikey={"file": str(key_file)})
    config = str(write_config(tmp_path, sandbox, targets=targets))
    check = run_rotator("check", "-c", config)
    assert check.returncode == 1
    failures = [line for line in check.stdout.splitlines() if line.startswith("FAIL")]
    assert failures and all("Code Engine" in line for line in failures)
    assert any("Writer role" in line for line in failures)
    assert sandbox.endpoints["outsider_apikey"] not in check.stdout + check.stderr
