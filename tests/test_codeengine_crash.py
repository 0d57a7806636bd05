"""Crash safety with a Code Engine target: SIGKILL at the boundaries that write or restore secrets, rerun.

The same invariants as ``test_crash.py`` (secrets pull, no unaccounted key, journal and vault agree), with
the Code Engine registry secret held to them too. The rollback case rolls back *after* distribution (the
new key is disabled at IAM once it is everywhere), so the restore writes the CE secret back.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from rotation_env import CRED, key_id_of, live_owned_keys, pulls, run_rotator, settled_after_crash, stored_password
from test_codeengine_e2e import ce_password, write_ce_config
from test_crash import SIGKILL, TEAMS

from rotator.adapters.state import FileStateStore
from rotator.faultpoint import BOUNDARIES
from rotator.sandbox.control import SandboxProcess

CASES = ("distribute:partial", "distribute:after", "promote:after-vault", "rollback:after-restore")


def test_cases_are_real_boundaries() -> None:
    """Every boundary named here exists in rotator.faultpoint."""
    assert set(CASES) <= set(BOUNDARIES)


def disable_key(sbx: SandboxProcess, key_id: str) -> None:
    """What an operator (or IAM's leak response) does: the new key stops working."""
    ep = sbx.endpoints
    form = {"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": ep["admin_apikey"]}
    token = httpx.post(f"{ep['iam']}/identity/token", data=form).json()["access_token"]
    response = httpx.post(f"{ep['iam']}/v1/apikeys/{key_id}/disable", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 204


@pytest.mark.parametrize("boundary", CASES)
def test_kill_at_boundary_with_code_engine_then_rerun_is_safe(
    sandbox: SandboxProcess, tmp_path: Path, boundary: str
) -> None:
    """Killed at ``boundary`` and run again, the CE secret and every namespace hold the one working key."""
    config = str(write_ce_config(tmp_path, sandbox, grace_period="0s", delete_after="0s"))
    assert run_rotator("rotate", CRED, "-c", config).returncode == 0
    before = ce_password(sandbox)
    store = FileStateStore(tmp_path / "state")
    if boundary.startswith("rollback:"):
        crashed = run_rotator("rotate", CRED, "-c", config, env={"ROTATOR_CRASH_AT": "distribute:after"})
        assert crashed.returncode == SIGKILL
        pending = store.load_vault(CRED).pending
        assert pending is not None and ce_password(sandbox) == pending  # distributed, not yet verified
        disable_key(sandbox, key_id_of(sandbox, pending))
        crashed = run_rotator("reconcile", CRED, "-c", config, env={"ROTATOR_CRASH_AT": boundary})
        assert crashed.returncode == SIGKILL, f"{boundary} was not reached: {crashed.stdout}{crashed.stderr}"
        assert ce_password(sandbox) == before  # restored before the kill
    else:
        crashed = run_rotator("rotate", CRED, "-c", config, env={"ROTATOR_CRASH_AT": boundary})
        assert crashed.returncode == SIGKILL, f"{boundary} was not reached: {crashed.stdout}{crashed.stderr}"

    journal, vault = settled_after_crash(sandbox, config, tmp_path / "state")
    assert journal.current is not None and vault.current is not None
    for ns in TEAMS:
        assert stored_password(sandbox, ns) == vault.current, f"{ns} does not hold the current key"
    assert ce_password(sandbox) == vault.current, "the Code Engine secret does not hold the current key"
    assert pulls(sandbox, vault.current) == "ok"
    if boundary.startswith("rollback:"):
        assert vault.current == before
    owned = {k["id"] for k in live_owned_keys(sandbox)}
    assert owned == {journal.current.id}, f"unaccounted keys: {owned - journal.known_key_ids()}"
