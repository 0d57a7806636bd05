"""What a RegistryCredential's status should say, from the credential's journal (pure: no I/O, no clock
reads). The controller writes the result only when it differs from what it wrote last, so nothing here
may depend on the time of the call except a condition's lastTransitionTime, which moves only with its
status (``regcred.with_condition``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from rotator import redact
from rotator.journal import CredentialJournal
from rotator.policy import Policy, due
from rotator.regcred import (
    Condition,
    CurrentKey,
    LastRotation,
    PendingRevocation,
    RegistryCredentialStatus,
    TargetCounts,
    with_condition,
)


@dataclass(frozen=True, kw_only=True)
class Refusal:
    """Why the resource is not managed (or not as its spec says): Ready=False with this reason."""

    reason: str  # InvalidSpec | DuplicateName | ...
    message: str


def decide(
    previous: RegistryCredentialStatus | None,
    *,
    generation: int,
    journal: CredentialJournal | None,
    policy: Policy | None,
    targets: TargetCounts | None,
    refusal: Refusal | None = None,
    last_rotate_request: str | None = None,
    now: dt.datetime,
) -> RegistryCredentialStatus:
    """The status for a resource at ``generation``: ``journal``/``policy`` are those of the credential
    managed for it (None when none is); ``refusal`` says why it is not managed as its spec says."""
    conditions = previous.conditions if previous is not None else ()
    journal = journal or CredentialJournal()

    def put(type_: str, status: str, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = with_condition(
            conditions,
            type_,  # type: ignore[arg-type]
            status,  # type: ignore[arg-type]
            reason,
            redact.clean(message, limit=1000),
            generation=generation,
            now=now,
        )

    current, rotation, last = journal.current, journal.rotation, journal.last_result
    if refusal is not None:
        put("Ready", "False", refusal.reason, refusal.message)
    elif current is not None:
        put("Ready", "True", "KeyVerified", f"key {current.id} pulls the credential's images and is in use")
    elif rotation is not None:
        put("Ready", "False", "FirstRotation", f"the first key is being rolled out (rotation {rotation.id})")
    else:
        put("Ready", "False", "NoKey", "no key rotated yet: the first rotation runs as soon as the credential is due")
    if rotation is not None:
        # Not its phase: a status write per step would be a write storm for a detail GET /v1/rotations shows.
        waiting = f"; waiting: {rotation.waiting}" if rotation.waiting else ""
        put("Rotating", "True", "RotationInProgress", f"rotation {rotation.id} ({rotation.reason}){waiting}")
    else:
        put("Rotating", "False", "Idle", "no rotation in progress")
    put("Degraded", *_degraded(journal, targets))

    next_at = None
    if policy is not None and current is not None:
        next_at, _ = due(journal, policy)
        if journal.backoff_until and (next_at is None or journal.backoff_until > next_at):
            next_at = journal.backoff_until
    return RegistryCredentialStatus(
        observed_generation=generation,
        conditions=conditions,
        current_key=(
            CurrentKey(id=current.id, created_at=current.created_at, expires_at=current.expires_at) if current else None
        ),
        next_rotation_at=next_at,
        pending_revocations=tuple(
            PendingRevocation(
                key_id=r.key_id,
                action="delete" if r.disabled_at else "disable",
                at=(r.delete_at or r.disable_at) if r.disabled_at else r.disable_at,
            )
            for r in journal.retired
        ),
        last_rotation=(
            LastRotation(id=last.rotation_id, result=last.result, reason=last.reason, finished_at=last.finished_at)
            if last
            else None
        ),
        targets=targets,
        last_rotate_request=last_rotate_request,
    )


def _degraded(journal: CredentialJournal, targets: TargetCounts | None) -> tuple[str, str, str]:
    last = journal.last_result
    if last is not None and last.result == "failed":
        detail = f": {last.detail}" if last.detail else ""
        return "True", "RotationFailed", f"rotation {last.rotation_id} failed{detail}"
    if journal.current is None:  # before the first key, every target is trivially without it
        return "False", "NoKey", "no key to hold yet"
    if targets is not None and targets.refused:
        return "True", "TargetsRefused", f"{targets.refused} of {targets.total} targets refuse rotator's writes"
    if targets is not None and targets.out_of_sync:
        return "True", "TargetsOutOfSync", f"{targets.out_of_sync} of {targets.total} targets do not hold the key"
    if journal.lagging:
        names = ", ".join(lag.cluster for lag in journal.lagging)
        return "True", "ClustersUnreachable", f"clusters not answering: {names}"
    return "False", "AsExpected", "every target holds the current key"


def ready(status: RegistryCredentialStatus) -> Condition | None:
    return next((c for c in status.conditions if c.type == "Ready"), None)
