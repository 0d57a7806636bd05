"""Entity locks (``lock_current_key: true``): the current key is locked at IAM; rotator unlocks only its own
lock, right before it disables or deletes a key, and a SIGKILL at any boundary of that path resumes safely.
A key someone else locked is refused, with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ibm_cloud_sdk_core import ApiException
from kubelet import project_token
from rotation_env import CRED, live_owned_keys
from test_adapter_iam import make_provider
from test_crash import crash_then_settle, locking_provider
from test_sandbox_iam import sdk
from test_sandbox_trusted_profile import container_sdk

from rotator.errors import NotOwnedError
from rotator.model import LOCKED_BY_ROTATOR
from rotator.sandbox.control import SandboxProcess

# The boundaries a locked key passes: minted locked, rolled back (deleted), retired (unlocked, disabled,
# deleted).
LOCK_PATH = (
    "mint:after-provider",
    "promote:after",
    "rollback:after-restore",
    "rollback:after-delete",
    "unlock:after",
    "disable:after",
    "delete:after",
)


def locks(sandbox: SandboxProcess) -> dict[str, bool]:
    return {k["id"]: k["locked"] for k in live_owned_keys(sandbox)}


@pytest.mark.parametrize("boundary", LOCK_PATH)
def test_lock_path_survives_a_kill_at_each_boundary(sandbox: SandboxProcess, tmp_path: Path, boundary: str) -> None:
    journal, _ = crash_then_settle(sandbox, tmp_path, boundary, provider=locking_provider(sandbox))
    assert journal.current is not None
    # Only the current key is left, and it is locked: every retired or rolled-back one was unlocked and removed.
    assert locks(sandbox) == {journal.current.id: True}


def test_retiring_unlocks_then_disables_our_own_lock(sandbox: SandboxProcess) -> None:
    provider = make_provider(sandbox, lock_current_key=True)
    minted = provider.mint(credential=CRED, rotation_id="r1")
    assert provider.get(minted.info.id).locked_by == LOCKED_BY_ROTATOR  # type: ignore[union-attr]
    endpoints = sandbox.endpoints
    service = sdk(endpoints, endpoints["admin_apikey"])
    with pytest.raises(ApiException) as by_hand:  # what the lock is for: nobody deletes it by mistake
        service.delete_api_key(id=minted.info.id)
    assert by_hand.value.code == 409
    provider.disable(minted.info.id)
    key = service.get_api_key(id=minted.info.id, include_history=True).get_result()
    assert (key["locked"], key["disabled"]) == (False, True)
    assert [h["action"] for h in key["history"]][-2:] == ["unlock", "disable"]


@pytest.mark.parametrize("operation", ["disable", "delete"])
def test_a_key_someone_else_locked_is_refused(sandbox: SandboxProcess, tmp_path: Path, operation: str) -> None:
    """Another identity that may manage the keys (here the trusted profile, an operator's) locks a key
    rotator minted: rotator neither unlocks it nor touches it, says who locked it, and leaves it out of
    its own keys."""
    provider = make_provider(sandbox)
    minted = provider.mint(credential=CRED, rotation_id="r1")
    endpoints = sandbox.endpoints
    token = project_token(
        sandbox,
        tmp_path / "sa-token",
        endpoints["trusted_profile_namespace"],
        endpoints["trusted_profile_service_account"],
    )
    operator = container_sdk(endpoints, token, iam_profile_name=endpoints["trusted_profile_name"])
    operator.lock_api_key(id=minted.info.id)
    with pytest.raises(NotOwnedError) as refused:
        getattr(provider, operation)(minted.info.id)
    assert f"locked by iam-{endpoints['trusted_profile_id']}, not by rotator: not ours to unlock" in str(refused.value)
    key: dict[str, Any] = operator.get_api_key(id=minted.info.id).get_result()
    assert (key["locked"], key["disabled"]) == (True, False)
    assert provider.list_owned(credential=CRED) == []
