"""Crash safety: SIGKILL ``rotator`` at every step boundary, run it again, check the invariants.

Every name in ``rotator.faultpoint.BOUNDARIES`` is covered (the test below fails if one is added
without being exercised). After the rerun: every target secret holds a key the registry accepts,
every owned key at IAM is accounted for by the journal, no rotation is left half-done, and the
vault's current value is the journal's current key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_env import API_AUTH, Daemon, api_config, first_rotation_done
from polling import wait_for
from rotation_env import CRED, live_owned_keys, pulls, run_rotator, settled_after_crash, stored_password, write_config

from rotator.adapters.state import FileStateStore
from rotator.faultpoint import BOUNDARIES, REQUEST_BOUNDARIES
from rotator.journal import CredentialJournal, Vault
from rotator.sandbox.control import SandboxProcess, iam_provider_config

TEAMS = ("team-a", "team-b", "team-c")
SIGKILL = -9


def scenario(boundary: str) -> str:
    if boundary.startswith("rollback:"):
        return "rollback"
    if boundary.startswith(("unlock:", "disable:", "delete:")):
        return "revoke"
    return "rotate"


def locking_provider(sbx: SandboxProcess) -> dict[str, Any]:
    return {**iam_provider_config(sbx.endpoints), "lock_current_key": True}


def test_every_boundary_is_exercised() -> None:
    """Each boundary belongs to a scenario below that reaches it."""
    assert {scenario(b) for b in BOUNDARIES} == {"rotate", "rollback", "revoke"}
    assert len(BOUNDARIES) == len(set(BOUNDARIES))


def crash_then_settle(
    sandbox: SandboxProcess, tmp_path: Path, boundary: str, **overrides: Any
) -> tuple[CredentialJournal, Vault]:
    """Killed at ``boundary`` and run again: every target holds the vault's current key and it pulls."""
    config = str(write_config(tmp_path, sandbox, grace_period="0s", delete_after="0s", **overrides))
    assert run_rotator("rotate", CRED, "-c", config).returncode == 0
    kind = scenario(boundary)
    if kind == "rollback":
        sandbox.admin.post("/registry/deny-new-keys", json={"enabled": True}).raise_for_status()
    if kind == "revoke":
        assert run_rotator("rotate", CRED, "-c", config).returncode == 0
    command = "reconcile" if kind == "revoke" else "rotate"
    crashed = run_rotator(command, CRED, "-c", config, env={"ROTATOR_CRASH_AT": boundary})
    assert crashed.returncode == SIGKILL, f"{boundary} was not reached: {crashed.stdout}{crashed.stderr}"

    journal, vault = settled_after_crash(sandbox, config, tmp_path / "state")
    assert journal.current is not None
    for ns in TEAMS:
        value = stored_password(sandbox, ns)
        assert value is not None, f"{ns} lost its secret"
        assert pulls(sandbox, value) == "ok", f"{ns} holds a key the registry refuses"
        assert value == vault.current
    return journal, vault


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_kill_at_boundary_then_rerun_is_safe(sandbox: SandboxProcess, tmp_path: Path, boundary: str) -> None:
    """Killed at ``boundary`` and run again, rotator leaves working secrets and no unaccounted key."""
    # The unlock boundary exists only on the entity-lock path (test_lock_crash.py covers that path at large).
    locked = {"provider": locking_provider(sandbox)} if boundary.startswith("unlock:") else {}
    journal, _ = crash_then_settle(sandbox, tmp_path, boundary, **locked)
    assert journal.current is not None
    owned = {k["id"] for k in live_owned_keys(sandbox)}
    assert owned <= journal.known_key_ids(), f"unaccounted keys: {owned - journal.known_key_ids()}"
    assert owned == {journal.current.id}  # grace 0: the rerun's passes revoked everything retired


@pytest.mark.parametrize("boundary", REQUEST_BOUNDARIES)
def test_accepted_request_survives_a_kill_of_the_daemon(sandbox: SandboxProcess, tmp_path: Path, boundary: str) -> None:
    """SIGKILL ``rotator run`` after it recorded a request (before or just after the 202): the restarted daemon
    serves that request, and the same Idempotency-Key answers the same rotation id, which succeeds, once."""
    config = api_config(tmp_path, sandbox)
    daemon = Daemon(config, env={"ROTATOR_CRASH_AT": boundary})
    try:
        first_rotation_done(sandbox, tmp_path)
        url = f"{daemon.api()}/v1/credentials/{CRED}/rotate"
        headers = {**API_AUTH, "Idempotency-Key": "change-7"}
        answered: str | None = None
        try:
            response = httpx.post(url, headers=headers, json={"reason": "change 7"}, timeout=10)
            answered = response.json()["rotation_id"] if response.status_code == 202 else None
        except httpx.TransportError:
            pass  # killed before it answered
        assert daemon.proc.wait(30) == SIGKILL, f"{boundary} was not reached"
    finally:
        daemon.stop()
    store = FileStateStore(tmp_path / "state")
    recorded = [r for r in store.load_requests(CRED).requests if r.idempotency_key == "change-7"]
    assert len(recorded) == 1 and recorded[0].state in ("queued", "running")

    restarted = Daemon(config)
    try:
        again = httpx.post(
            restarted.api() + f"/v1/credentials/{CRED}/rotate", headers=headers, json={"reason": "change 7"}
        )
        assert again.status_code == 202 and again.json()["rotation_id"] == recorded[0].id, again.text
        assert answered in (None, recorded[0].id)
        status_url = restarted.api() + f"/v1/rotations/{recorded[0].id}"
        state = wait_for(
            lambda: (s := httpx.get(status_url, headers=API_AUTH).json()["state"]) in ("succeeded", "failed") and s,
            "the recorded request to be served",
        )
    finally:
        restarted.stop()
    assert state == "succeeded"
    history = [r.rotation_id for r in store.load(CRED).history]
    assert history.count(recorded[0].id) == 1 and len(history) == 2, "bootstrap, then the one requested rotation"
