"""What ``rotator status`` and ``GET /v1/credentials`` show. Pure: journal + policy + now in, dict out.

Key ids, ages and deadlines only: never a key value.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from rotator.durations import format_duration
from rotator.journal import CredentialJournal, Leak
from rotator.policy import Policy, due, held_by_unreachable


def _iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat(timespec="seconds") if value else None


def credential_status(
    name: str,
    journal: CredentialJournal,
    policy: Policy,
    now: dt.datetime,
    leaks: tuple[Leak, ...] = (),
    clusters: tuple[str, ...] = (),
) -> dict[str, Any]:
    current = journal.current
    due_at, why = due(journal, policy)
    if journal.backoff_until and (due_at is None or journal.backoff_until > due_at):
        due_at, why = journal.backoff_until, f"{why}; backing off after {journal.failures_in_a_row} failure(s)"
    rotation = journal.rotation
    last = journal.last_result
    return {
        "name": name,
        "current_key_id": current.id if current else None,
        "current_key_created_at": _iso(current.created_at) if current else None,
        "current_key_age_seconds": int((now - current.created_at).total_seconds()) if current else None,
        "current_key_expires_at": _iso(current.expires_at) if current else None,
        "max_age_seconds": int(policy.max_age.total_seconds()),
        "next_rotation_at": _iso(due_at) if due_at else _iso(now),
        "next_rotation_reason": why,
        "rotation_in_progress": (
            {
                "id": rotation.id,
                "phase": rotation.phase,
                "reason": rotation.reason,
                "started_at": _iso(rotation.started_at),
                "waiting": rotation.waiting or None,
                "retry_at": _iso(rotation.retry_at),
            }
            if rotation
            else None
        ),
        "revocations_pending": [
            {
                "key_id": r.key_id,
                "step": "delete" if r.disabled_at else "disable",
                "deadline": _iso(r.delete_at if r.disabled_at else r.disable_at),
                "reason": r.reason,
            }
            for r in journal.retired
        ],
        "leaks": [leak_progress(leak, journal) for leak in leaks],
        "clusters": cluster_sync(clusters, journal, policy, now),
        "last_success_at": _iso(journal.last_success_at),
        "last_result": (
            {
                "rotation_id": last.rotation_id,
                "result": last.result,
                "reason": last.reason,
                "finished_at": _iso(last.finished_at),
                "detail": last.detail or None,
            }
            if last
            else None
        ),
    }


def cluster_sync(
    clusters: tuple[str, ...], journal: CredentialJournal, policy: Policy, now: dt.datetime
) -> list[dict[str, Any]]:
    """Each fleet cluster: in sync (answered at the last contact; its targets are compared and healed like
    any), or out of sync since it stopped answering, why, when it is tried next, and whether that holds
    back disabling the old key."""
    lagging = {lag.cluster: lag for lag in journal.lagging}
    holding = held_by_unreachable(journal, policy, now) and any(r.disabled_at is None for r in journal.retired)
    out = []
    for cluster in clusters:
        lag = lagging.get(cluster)
        out.append(
            {
                "name": cluster,
                "in_sync": lag is None,
                "out_of_sync_since": _iso(lag.since) if lag else None,
                "reason": lag.reason if lag else None,
                "retry_at": _iso(lag.retry_at) if lag else None,
                "holds_old_key": bool(lag and holding),
            }
        )
    return out


def leak_progress(leak: Leak, journal: CredentialJournal) -> dict[str, Any]:
    """Where a key reported leaked is on its way out: current (an emergency rotation replaces it), being
    replaced, retired (disabled once no target holds it), disabled, or deleted."""
    retired = next((r for r in journal.retired if r.key_id == leak.key_id), None)
    rotation = journal.rotation
    if journal.current is not None and journal.current.id == leak.key_id:
        state = "being replaced" if rotation is not None else "current: an emergency rotation replaces it"
    elif rotation is not None and rotation.new_key is not None and rotation.new_key.id == leak.key_id:
        state = "being rolled out: replaced by the next rotation"
    elif retired is not None:
        state = "disabled" if retired.disabled_at else "retired: disabled once no target holds it"
    else:
        state = "deleted"
    return {
        "key_id": leak.key_id,
        "reported_at": _iso(leak.reported_at),
        "reported_by": leak.by,
        "request_id": leak.request_id,
        "state": state,
        "disabled_at": _iso(retired.disabled_at) if retired else None,
    }


def render_text(statuses: list[dict[str, Any]], now: dt.datetime) -> str:
    lines = []
    for s in statuses:
        lines.append(f"credential {s['name']}")
        if s["current_key_id"]:
            age = dt.timedelta(seconds=s["current_key_age_seconds"])
            expiry = s.get("current_key_expires_at")
            expires = f", {expires_in(dt.datetime.fromisoformat(expiry), now)}" if expiry else ""
            lines.append(f"  current key   {s['current_key_id']} (age {format_duration(age)}{expires})")
        else:
            lines.append("  current key   none yet")
        next_at = dt.datetime.fromisoformat(s["next_rotation_at"])
        when = "now" if next_at <= now else f"in {format_duration(next_at - now)}"
        lines.append(f"  next rotation {when} ({s['next_rotation_reason']})")
        if s["rotation_in_progress"]:
            r = s["rotation_in_progress"]
            lines.append(
                f"  in progress   {r['id']} phase {r['phase']}" + (f" — {r['waiting']}" if r["waiting"] else "")
            )
        for leak in s.get("leaks", []):
            lines.append(f"  leak          {leak['key_id']} reported by {leak['reported_by']}: {leak['state']}")
        for c in s.get("clusters", []):
            if c["in_sync"]:
                lines.append(f"  cluster       {c['name']} in sync")
                continue
            held = "; the old key stays enabled for it" if c["holds_old_key"] else ""
            lines.append(
                f"  cluster       {c['name']} OUT OF SYNC since {c['out_of_sync_since']} ({c['reason']}); "
                f"next try {c['retry_at']}{held}"
            )
        for rev in s["revocations_pending"]:
            lines.append(f"  pending       {rev['step']} {rev['key_id']} at {rev['deadline']} ({rev['reason']})")
        if s["last_result"]:
            last = s["last_result"]
            detail = f": {last['detail']}" if last["detail"] else ""
            lines.append(f"  last result   {last['result']} at {last['finished_at']} ({last['reason']}){detail}")
    return "\n".join(lines)


def expires_in(expires_at: dt.datetime, now: dt.datetime) -> str:
    """``expires 2026-05-01T10:00:00+00:00 (in 9d)`` or ``EXPIRED at ...``."""
    if expires_at <= now:
        return f"EXPIRED at {_iso(expires_at)}"
    return f"expires {_iso(expires_at)} (in {format_duration(expires_at - now)})"


def key_expiry_check(
    key_id: str, expires_at: dt.datetime | None, margin: dt.timedelta | None, now: dt.datetime
) -> tuple[bool, str]:
    """For ``rotator check``: a key is fine unless it expires within the alert margin (rotation is stuck)."""
    if expires_at is None:
        return True, f"key {key_id} does not expire"
    ok = margin is None or expires_at - now > margin
    return ok, f"key {key_id} {expires_in(expires_at, now)}"
