"""What a RegistryCredential's status says, decided from the journal (pure, no I/O)."""

from __future__ import annotations

import datetime as dt

from rotator.journal import CredentialJournal, KeyRef, Result, Retired, Rotation
from rotator.policy import Policy
from rotator.regcred import TargetCounts
from rotator.regcred_status import Refusal, decide

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
POLICY = Policy(
    interval=dt.timedelta(hours=1),
    max_age=dt.timedelta(days=1),
    grace_period=dt.timedelta(minutes=5),
    delete_after=dt.timedelta(minutes=10),
)
KEY = KeyRef(id="ApiKey-2", created_at=T0)
ROTATED = CredentialJournal(
    current=KEY,
    last_success_at=T0,
    retired=(Retired(key_id="ApiKey-1", retired_at=T0, disable_at=T0 + dt.timedelta(minutes=5)),),
    history=(Result(rotation_id="r1", result="succeeded", reason="no current key", finished_at=T0),),
)
IN_SYNC = TargetCounts(total=3, in_sync=3)


def conditions(status: object) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}  # type: ignore[attr-defined]


def test_a_rotated_credential_is_ready_with_its_key_schedule_and_revocations() -> None:
    status = decide(None, generation=2, journal=ROTATED, policy=POLICY, targets=IN_SYNC, now=T0)
    assert conditions(status) == {
        "Ready": ("True", "KeyVerified"),
        "Rotating": ("False", "Idle"),
        "Degraded": ("False", "AsExpected"),
    }
    wire = status.wire()
    assert wire["observedGeneration"] == 2 and wire["currentKey"]["id"] == "ApiKey-2"
    assert wire["nextRotationAt"] == "2026-12-01T13:00:00Z"
    assert wire["pendingRevocations"] == [{"keyId": "ApiKey-1", "action": "disable", "at": "2026-12-01T12:05:00Z"}]
    assert wire["lastRotation"] == {
        "id": "r1",
        "result": "succeeded",
        "reason": "no current key",
        "finishedAt": "2026-12-01T12:00:00Z",
    }


def test_nothing_changed_decides_the_same_status_later() -> None:
    """The controller writes only on a difference: the time of the decision must not show in it."""
    first = decide(None, generation=1, journal=ROTATED, policy=POLICY, targets=IN_SYNC, now=T0)
    later = decide(first, generation=1, journal=ROTATED, policy=POLICY, targets=IN_SYNC, now=T0 + dt.timedelta(hours=1))
    assert later.wire() == first.wire()


def test_a_rotation_in_flight_a_failure_and_drifted_targets_show_in_the_conditions() -> None:
    rotation = Rotation(id="r2", reason="annotation", started_at=T0, phase="distributing")
    rotating = decide(
        None, generation=1, journal=CredentialJournal(rotation=rotation), policy=POLICY, targets=None, now=T0
    )
    assert conditions(rotating)["Ready"] == ("False", "FirstRotation")
    assert conditions(rotating)["Rotating"] == ("True", "RotationInProgress")
    failed = CredentialJournal(
        current=KEY,
        history=(Result(rotation_id="r3", result="failed", reason="x", finished_at=T0, detail="registry refused"),),
    )
    degraded = decide(None, generation=1, journal=failed, policy=POLICY, targets=IN_SYNC, now=T0)
    assert conditions(degraded)["Degraded"] == ("True", "RotationFailed")
    assert "registry refused" in degraded.conditions[2].message
    drifted = TargetCounts(total=3, in_sync=2, out_of_sync=1)
    assert conditions(decide(None, generation=1, journal=ROTATED, policy=POLICY, targets=drifted, now=T0))[
        "Degraded"
    ] == ("True", "TargetsOutOfSync")


def test_a_refused_resource_is_not_ready_and_says_why() -> None:
    refusal = Refusal(reason="InvalidSpec", message="RegistryCredential x: spec.registry: is required")
    status = decide(None, generation=3, journal=None, policy=None, targets=None, refusal=refusal, now=T0)
    ready = status.conditions[0]
    assert (ready.type, ready.status, ready.reason, ready.observed_generation) == ("Ready", "False", "InvalidSpec", 3)
    assert ready.message == refusal.message and "currentKey" not in status.wire()
