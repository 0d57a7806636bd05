"""RegistryCredential status: wire form and the conditions convention (pure, no I/O)."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from rotator.regcred import Condition, CurrentKey, RegistryCredentialStatus, TargetCounts, with_condition

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(minutes=5)


def test_transition_time_moves_only_when_the_status_changes() -> None:
    ready = with_condition((), "Ready", "False", "Pending", "first rotation not done", generation=1, now=T0)
    same = with_condition(ready, "Ready", "False", "Verifying", "checking a pull", generation=2, now=T1)
    assert same[0].last_transition_time == T0 and same[0].reason == "Verifying" and same[0].observed_generation == 2
    flipped = with_condition(same, "Ready", "True", "Rotated", "key pulls", generation=2, now=T1)
    assert flipped[0].last_transition_time == T1 and len(flipped) == 1
    both = with_condition(flipped, "Degraded", "False", "AsExpected", "", generation=2, now=T1)
    assert [c.type for c in both] == ["Ready", "Degraded"]


def test_wire_form_is_camel_case_without_empty_fields() -> None:
    status = RegistryCredentialStatus(
        observed_generation=3,
        conditions=with_condition((), "Ready", "True", "Rotated", "ok", generation=3, now=T0),
        current_key=CurrentKey(id="ApiKey-1", created_at=T0),
        targets=TargetCounts(total=2, in_sync=2),
    )
    wire = status.wire()
    assert wire["observedGeneration"] == 3
    assert wire["currentKey"] == {"id": "ApiKey-1", "createdAt": "2026-12-01T12:00:00Z"}
    assert wire["targets"] == {"total": 2, "inSync": 2, "outOfSync": 0, "refused": 0}
    assert "nextRotationAt" not in wire and wire["conditions"][0]["lastTransitionTime"] == "2026-12-01T12:00:00Z"
    assert RegistryCredentialStatus.model_validate(wire) == status


def test_a_reason_must_be_a_camel_case_word() -> None:
    with pytest.raises(ValidationError, match="reason"):
        Condition(type="Ready", status="True", reason="not a reason", last_transition_time=T0)
