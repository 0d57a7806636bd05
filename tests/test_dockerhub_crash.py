"""Crash safety with Docker Hub tokens: SIGKILL ``rotator`` at chosen step boundaries, run it again, check
the Hub equivalents of the crash test's invariants (see tests/test_crash.py).

Docker Hub cannot say which token a value is (``identify`` is None), so these boundaries matter most: a
token minted but not recorded (``mint:after-provider``, ``mint:after-vault``) must be deleted and minted
again, never orphaned or adopted blindly; a half-distributed or half-promoted rotation must finish; a
rollback must leave the old token working.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dockerhub_env import (
    CRED,
    TEAMS,
    foreign_state,
    live_owned,
    pulls,
    registry_pulls,
    stored_password,
    token,
    token_id_of,
    write_config,
)
from rotation_env import make_app, run_rotator, settled_after_crash

from rotator.policy import Request
from rotator.sandbox.control import SandboxProcess

SIGKILL = -9


@pytest.mark.parametrize(
    ("boundary", "scenario"),
    [
        pytest.param("mint:after-provider", "rotate", id="mint-after-provider"),
        pytest.param("mint:after-vault", "rotate", id="mint-after-vault"),
        pytest.param("distribute:partial", "rotate", id="distribute-partial"),
        pytest.param("promote:after-vault", "rotate", id="promote-after-vault"),
        pytest.param("rollback:after-restore", "rollback", id="rollback-after-restore"),
        pytest.param("disable:after", "revoke", id="disable-after"),
    ],
)
def test_kill_at_boundary_then_rerun_is_safe(
    sandbox: SandboxProcess, tmp_path: Path, boundary: str, scenario: str
) -> None:
    """Killed at ``boundary`` and run again: every secret holds the journal's current token, which pulls,
    and no owned token is left that the journal does not account for."""
    foreign_before = foreign_state(sandbox)
    config = str(write_config(tmp_path, sandbox, grace_period="0s", delete_after="0s"))
    app = make_app(Path(config))  # the set-up rotations run in-process; only the crash needs a child
    try:
        assert app.reconciler(CRED).run(Request(reason="setup")).result == "succeeded"
        if scenario == "revoke":
            assert app.reconciler(CRED).run(Request(reason="setup again")).result == "succeeded"
    finally:
        app.close()
    if scenario == "rollback":
        sandbox.admin.post("/dockerhub_registry/deny-new-tokens", json={"enabled": True}).raise_for_status()
    command = "reconcile" if scenario == "revoke" else "rotate"
    crashed = run_rotator(command, CRED, "-c", config, env={"ROTATOR_CRASH_AT": boundary})
    assert crashed.returncode == SIGKILL, f"{boundary} was not reached: {crashed.stdout}{crashed.stderr}"

    journal, vault = settled_after_crash(sandbox, config, tmp_path / "state", credential=CRED, identify=token_id_of)
    assert journal.current is not None and vault.current is not None
    assert token(sandbox, journal.current.id)["is_active"] is True
    for ns in TEAMS:
        assert stored_password(sandbox, ns) == vault.current, f"{ns} does not hold the current token"
    assert pulls(sandbox, vault.current) == "ok"
    owned = {t["id"] for t in live_owned(sandbox)}
    assert owned <= journal.known_key_ids(), f"unaccounted tokens: {owned - journal.known_key_ids()}"
    assert owned == {journal.current.id}  # grace 0: the rerun revoked everything retired
    assert foreign_state(sandbox) == foreign_before
    assert registry_pulls(sandbox)["get"] == 0
