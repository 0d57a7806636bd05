"""The rotation state machine: ``plan(observation, policy) -> Action``. Pure: no I/O, no clock.

Safety invariants (guarded by a property test):
- a key is disabled only after it was replaced, its grace period has passed, and every target
  is known to hold the current key;
- only keys the journal retired are disabled or deleted; orphans are swept only when no target
  holds them and they are older than the safety window;
- a rotation that failed verification rolls back, one that was inconclusive waits;
- revocations are not starved: a due disable of a retired key no target holds (every target held the
  current key when the rotation in flight started) and a due delete of a disabled key go ahead between
  that rotation's steps, so enabled owned keys stay <= 2 + (retired keys inside their grace) however
  often rotations are requested;
- a fleet cluster that did not answer (``journal.lagging``) may still hold a retired key: no retired key
  that was not reported leaked is disabled while one lags, unless ``revoke_despite_unreachable`` is set
  and that cluster has lagged for ``unreachable_timeout``;
- a decommissioned credential (its RegistryCredential deleted with ``deletionPolicy: Revoke``) rotates and
  heals nothing more: its current key is retired like a replaced one, and every retired key is disabled
  once its grace is over and deleted ``delete_after`` later, whatever the targets hold (their owner asked);
- a key reported leaked is disabled without grace as soon as it is retired and no writable target holds
  it; a leaked key still current starts an emergency rotation (outside any window; after a failed one,
  once the backoff is over).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from rotator.journal import CredentialJournal

PHASE_ACTIONS = {
    "minting": "mint",
    "minted": "verify_new",
    "verified": "distribute",
    "distributing": "distribute",
    "distributed": "verify_stored",
    "stored_verified": "promote",
    "rolling_back": "rollback",
}


@dataclass(frozen=True, kw_only=True)
class Policy:
    interval: dt.timedelta | None
    max_age: dt.timedelta
    grace_period: dt.timedelta
    delete_after: dt.timedelta
    cron: str | None = None  # 5-field crontab, UTC
    renew_before: dt.timedelta = dt.timedelta(days=1)
    orphan_window: dt.timedelta = dt.timedelta(minutes=10)
    backoff_base: dt.timedelta = dt.timedelta(minutes=1)
    backoff_cap: dt.timedelta = dt.timedelta(hours=1)
    # Planned rotations start only inside a maintenance window (cron start + duration); emergencies ignore it.
    window_cron: str | None = None
    window_duration: dt.timedelta | None = None
    # A current key this close to its provider-side expiry means rotation is stuck (metric and alert).
    expiry_margin: dt.timedelta | None = None
    # How long a fleet cluster that does not answer holds back disabling retired keys, and whether they
    # are disabled once that is over (otherwise they wait for the cluster, with an alert).
    unreachable_timeout: dt.timedelta = dt.timedelta(hours=24)
    revoke_despite_unreachable: bool = False
    # No longer managed, keys to revoke (RegistryCredential deleted with deletionPolicy: Revoke).
    decommission: bool = False


@dataclass(frozen=True, kw_only=True)
class Request:
    """Someone asked for a rotation (CLI, HTTP, an event, a failed health check)."""

    reason: str
    emergency: bool = False
    leaked_key_id: str | None = None
    rotation_id: str | None = None  # assigned up front when the caller must answer with it (HTTP 202)


@dataclass(frozen=True, kw_only=True)
class Observation:
    journal: CredentialJournal
    now: dt.datetime
    request: Request | None = None
    # Targets whose entry is not the current key; None when not observed.
    out_of_sync: tuple[str, ...] | None = None
    # Targets rotator may not write that still hold a key other than the current one.
    stale_refused: tuple[str, ...] = ()
    # Owned keys at the provider that no journal entry and no target accounts for.
    orphans: tuple[str, ...] = ()
    vault_has_pending: bool = True
    vault_has_current: bool = True
    # Key ids reported leaked (the request book), whatever their state.
    leaked: frozenset[str] = frozenset()


@dataclass(frozen=True, kw_only=True)
class Action:
    kind: str  # idle wait start mint verify_new distribute verify_stored promote rollback heal disable delete sweep
    # retire (decommissioned: the current key joins the retired ones)
    reason: str = ""
    key_id: str | None = None
    targets: tuple[str, ...] = ()
    until: dt.datetime | None = None
    emergency: bool = False
    leaked_key_id: str | None = None
    rotation_id: str | None = None
    in_sync: bool = False  # start: every target held the current key (see Rotation.started_in_sync)


def in_window(policy: Policy, now: dt.datetime) -> tuple[bool, dt.datetime | None]:
    """Whether ``now`` is inside a maintenance window, and when the next one opens if not."""
    if policy.window_cron is None or policy.window_duration is None:
        return True, None
    # The first window start after (now - duration) is the one that could contain now (end exclusive).
    start = cron_next(policy.window_cron, now - policy.window_duration + dt.timedelta(seconds=1))
    if start <= now:
        return True, None
    return False, start


def due(journal: CredentialJournal, policy: Policy) -> tuple[dt.datetime | None, str]:
    """When the next planned rotation is due and why (None: right away, no current key)."""
    current = journal.current
    if current is None:
        return None, "no current key"
    # The schedule counts from the end of the last successful rotation (a slow one must not be followed
    # at once by a scheduled one); a key adopted without one counts from its creation. max_age is the key's.
    since = max(current.created_at, journal.last_success_at or current.created_at)
    candidates: list[tuple[dt.datetime, str]] = [(current.created_at + policy.max_age, "max_age reached")]
    if policy.interval is not None:
        candidates.append((since + policy.interval, "scheduled"))
    if policy.cron is not None:
        candidates.append((cron_next(policy.cron, since), "scheduled (cron)"))
    if current.expires_at is not None:
        candidates.append((current.expires_at - policy.renew_before, "key expires soon"))
    return min(candidates, key=lambda c: c[0])


def cron_next(expression: str, after: dt.datetime) -> dt.datetime:
    """The first fire time of ``expression`` (UTC) after ``after``: arithmetic only, no clock."""
    from apscheduler.triggers.cron import CronTrigger

    fire: dt.datetime | None = CronTrigger.from_crontab(expression, timezone="UTC").get_next_fire_time(None, after)
    assert fire is not None
    return fire


def backoff(failures_in_a_row: int, policy: Policy) -> dt.timedelta:
    exponent = max(0, min(failures_in_a_row - 1, 16))
    delay: dt.timedelta = min(policy.backoff_base * (2**exponent), policy.backoff_cap)
    return delay


def plan(obs: Observation, policy: Policy) -> Action:
    journal, now = obs.journal, obs.now
    rotation = journal.rotation

    # 1. A rotation in flight goes first (finish it or roll it back), but a due revocation of a key that no
    #    target holds is not held back by it: it goes between the rotation's steps.
    held = held_by_unreachable(journal, policy, now)
    if rotation is not None:
        revoke = revocation(obs, policy, in_sync=rotation.started_in_sync and not held)
        if revoke is not None:
            return revoke
        if rotation.phase in ("minted", "verified", "distributing") and not obs.vault_has_pending:
            return Action(kind="rollback", reason="the new key's value was lost before it was distributed")
        if rotation.retry_at is not None and now < rotation.retry_at and rotation.phase != "rolling_back":
            # Wake for a revocation that falls due while the rotation waits, not only for the retry.
            deadlines = revocation_deadlines(journal, in_sync=rotation.started_in_sync and not held)
            until = min([rotation.retry_at, *deadlines])
            return Action(kind="wait", until=until, reason=rotation.waiting or "waiting to retry")
        kind = PHASE_ACTIONS.get(rotation.phase)
        if kind is None:
            return Action(kind="rollback", reason=f"unknown phase {rotation.phase!r} in the journal")
        return Action(kind=kind, reason=rotation.reason)

    if policy.decommission:
        return decommission(obs, policy, held=held)

    # 2. Targets that drifted from the current key are put back before anything is revoked.
    if obs.out_of_sync and journal.current is not None and obs.vault_has_current:
        return Action(kind="heal", targets=obs.out_of_sync, reason="targets do not hold the current key")

    # 3. Revocations that are due, only when every target is known to hold the current key.
    in_sync = obs.out_of_sync is not None and not obs.out_of_sync and not obs.stale_refused and not held
    revoke = revocation(obs, policy, in_sync=in_sync)
    if revoke is not None:
        return revoke

    # 4. Keys of ours that nothing accounts for.
    known = journal.known_key_ids()
    for key_id in obs.orphans:
        if key_id not in known:
            return Action(kind="sweep", key_id=key_id, reason="owned key not accounted for by the journal")

    # 5. Requested or planned rotations. A current key reported leaked is replaced at once, whatever asked
    #    (after a failed attempt, once the backoff is over: a rejected replacement is not minted in a loop).
    request = obs.request
    current = current_id(journal)
    backing_off = journal.backoff_until is not None and now < journal.backoff_until
    if request is None and current is not None and current in obs.leaked and not backing_off:
        return Action(
            kind="start",
            reason=f"key {current} reported leaked",
            emergency=True,
            leaked_key_id=current,
            in_sync=in_sync,
        )
    # Someone asked (CLI, HTTP, annotation, failed health check): that is not held back by a backoff.
    if request is not None:
        return Action(
            kind="start",
            reason=request.reason,
            emergency=request.emergency,
            leaked_key_id=request.leaked_key_id,
            rotation_id=request.rotation_id,
            in_sync=in_sync,
        )
    due_at, why = due(journal, policy)
    open_now, next_window = in_window(policy, now)
    # A credential with no key at all is not held back by a window: nothing can pull without one.
    if (due_at is None or (due_at <= now and open_now)) and not backing_off:
        return Action(kind="start", reason=why, in_sync=in_sync)

    # 6. Nothing to do until the earliest deadline.
    if due_at is not None and due_at <= now and next_window is not None:
        due_at = next_window
    if backing_off and journal.backoff_until is not None and (due_at is None or due_at < journal.backoff_until):
        due_at = journal.backoff_until
    candidates = [due_at, journal.backoff_until]
    # A disable held back by a lagging cluster is not a deadline (it would wake the loop at once); the
    # next try to reach that cluster is, and so is the end of its unreachable_timeout when that releases it.
    candidates += [r.delete_at if r.disabled_at else None if held else r.disable_at for r in journal.retired]
    candidates += [lag.retry_at for lag in journal.lagging]
    if policy.revoke_despite_unreachable and journal.retired:
        candidates += [lag.since + policy.unreachable_timeout for lag in journal.lagging]
    deadlines = [d for d in candidates if d is not None]
    return Action(kind="idle", until=min(deadlines) if deadlines else None)


def decommission(obs: Observation, policy: Policy, *, held: bool) -> Action:
    """Retire the current key, then revoke every retired key through the grace path; idle when none is left."""
    journal = obs.journal
    if journal.current is not None:
        return Action(kind="retire", key_id=journal.current.id, reason="decommissioned (deletionPolicy: Revoke)")
    revoke = revocation(obs, policy, in_sync=not held)
    if revoke is not None:
        return revoke
    deadlines = revocation_deadlines(journal, in_sync=not held) + [
        lag.retry_at for lag in journal.lagging if lag.retry_at
    ]
    return Action(kind="idle", until=min(deadlines) if deadlines else None)


def revocation(obs: Observation, policy: Policy, *, in_sync: bool) -> Action | None:
    """The first due revocation: a disable once its grace is over (at once for a key reported leaked) when
    ``in_sync`` (no target holds a retired key), a delete once the key was disabled long enough."""
    journal, now = obs.journal, obs.now
    rotation = journal.rotation
    # A leaked key is not held back by targets rotator may not write; every writable one must have moved.
    leak_clear = in_sync or (rotation is None and obs.out_of_sync is not None and not obs.out_of_sync)
    for retired in journal.retired:
        if current_id(journal) == retired.key_id or (
            rotation and rotation.new_key and rotation.new_key.id == retired.key_id
        ):
            continue  # never revoke the key in use, nor the one being rolled out
        leaked = retired.key_id in obs.leaked
        if retired.disabled_at is None and ((now >= retired.disable_at and in_sync) or (leaked and leak_clear)):
            why = "reported leaked" if leaked else f"grace period over ({retired.reason})"
            return Action(kind="disable", key_id=retired.key_id, reason=why)
        if retired.disabled_at is not None and retired.delete_at is not None and now >= retired.delete_at:
            return Action(kind="delete", key_id=retired.key_id, reason="disabled long enough")
    return None


def held_by_unreachable(journal: CredentialJournal, policy: Policy, now: dt.datetime) -> bool:
    """Whether a fleet cluster that did not answer may still depend on a retired key, so none is disabled:
    while any cluster lags, unless the config revokes despite it and every one has lagged for the timeout."""
    if policy.revoke_despite_unreachable:
        return any(now < lag.since + policy.unreachable_timeout for lag in journal.lagging)
    return bool(journal.lagging)


def unreachable_overdue(journal: CredentialJournal, policy: Policy, now: dt.datetime) -> list[str]:
    """Lagging clusters past ``unreachable_timeout`` (for the status line and logs)."""
    return [lag.cluster for lag in journal.lagging if now >= lag.since + policy.unreachable_timeout]


def revocation_deadlines(journal: CredentialJournal, *, in_sync: bool) -> list[dt.datetime]:
    """When each pending revocation may go: deletes always, disables only when no target holds the key."""
    out = [r.delete_at for r in journal.retired if r.disabled_at is not None and r.delete_at is not None]
    return out + ([r.disable_at for r in journal.retired if r.disabled_at is None] if in_sync else [])


def current_id(journal: CredentialJournal) -> str | None:
    return journal.current.id if journal.current else None


def orphans(
    owned: list[tuple[str, dt.datetime]],
    journal: CredentialJournal,
    held_by_targets: set[str],
    now: dt.datetime,
    window: dt.timedelta,
) -> tuple[str, ...]:
    """Owned keys (id, created_at) that may be swept: unknown to the journal, held by no target, and
    older than ``window`` (a concurrent rotation elsewhere may have just minted a young one)."""
    known = journal.known_key_ids() | held_by_targets
    return tuple(key_id for key_id, created in owned if key_id not in known and now - created >= window)
