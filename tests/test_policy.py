"""The pure state machine: schedule arithmetic on a fake clock, and its safety invariants."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rotator.journal import PHASES, CredentialJournal, KeyRef, Lagging, Retired, Rotation
from rotator.policy import Action, Observation, Policy, Request, due, plan

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
POLICY = Policy(
    interval=dt.timedelta(days=7),
    max_age=dt.timedelta(days=30),
    grace_period=dt.timedelta(hours=1),
    delete_after=dt.timedelta(days=1),
)


def journal_with_current(created: dt.datetime = T0, **kw: object) -> CredentialJournal:
    return CredentialJournal(current=KeyRef(id="k-cur", created_at=created), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("policy", "key", "expected", "reason"),
    [
        pytest.param(POLICY, KeyRef(id="k", created_at=T0), T0 + dt.timedelta(days=7), "scheduled", id="interval"),
        pytest.param(
            Policy(
                interval=None, max_age=dt.timedelta(days=30), grace_period=dt.timedelta(0), delete_after=dt.timedelta(0)
            ),
            KeyRef(id="k", created_at=T0),
            T0 + dt.timedelta(days=30),
            "max_age reached",
            id="max-age-only",
        ),
        pytest.param(
            POLICY,
            KeyRef(id="k", created_at=T0, expires_at=T0 + dt.timedelta(days=3)),
            T0 + dt.timedelta(days=2),
            "key expires soon",
            id="expiry-minus-renew-before",
        ),
        pytest.param(
            Policy(
                interval=None,
                cron="0 3 * * *",
                max_age=dt.timedelta(days=30),
                grace_period=dt.timedelta(0),
                delete_after=dt.timedelta(0),
            ),
            KeyRef(id="k", created_at=T0 + dt.timedelta(hours=5)),
            T0 + dt.timedelta(days=1, hours=3),
            "scheduled (cron)",
            id="cron-next-day",
        ),
    ],
)
def test_due_is_the_earliest_deadline(policy: Policy, key: KeyRef, expected: dt.datetime, reason: str) -> None:
    """The next rotation is due at the earliest of schedule, max age and expiry margin."""
    assert due(CredentialJournal(current=key), policy) == (expected, reason)


def test_no_current_key_starts_a_rotation() -> None:
    """A credential without a key is rotated right away (bootstrap)."""
    action = plan(Observation(journal=CredentialJournal(), now=T0), POLICY)
    assert action.kind == "start"


def test_idle_until_due_then_start() -> None:
    """Before the interval nothing happens; at the interval a rotation starts."""
    obs = Observation(journal=journal_with_current(), now=T0 + dt.timedelta(days=6), out_of_sync=())
    assert plan(obs, POLICY).kind == "idle"
    assert plan(obs, POLICY).until == T0 + dt.timedelta(days=7)
    obs = Observation(journal=journal_with_current(), now=T0 + dt.timedelta(days=7), out_of_sync=())
    assert plan(obs, POLICY).kind == "start"


def test_backoff_holds_planned_rotations_not_requests() -> None:
    """After a failure, planned rotations wait for the backoff; an explicit request does not."""
    j = journal_with_current(backoff_until=T0 + dt.timedelta(days=8), failures_in_a_row=1)
    now = T0 + dt.timedelta(days=7)
    idle = plan(Observation(journal=j, now=now, out_of_sync=()), POLICY)
    assert idle.kind == "idle" and idle.until == T0 + dt.timedelta(days=8)
    assert (
        plan(Observation(journal=j, now=now, out_of_sync=(), request=Request(reason="manual")), POLICY).kind == "start"
    )


def test_disable_waits_for_grace_and_sync() -> None:
    """A retired key is disabled only after its grace period and only when every target holds the current key."""
    retired = Retired(key_id="k-old", retired_at=T0, disable_at=T0 + dt.timedelta(hours=1))
    j = journal_with_current(retired=(retired,))
    early = Observation(journal=j, now=T0 + dt.timedelta(minutes=59), out_of_sync=())
    assert plan(early, POLICY).kind == "idle"
    unsynced = Observation(journal=j, now=T0 + dt.timedelta(hours=2), out_of_sync=("kubernetes:a/s",))
    assert plan(unsynced, POLICY).kind == "heal"
    unknown = Observation(journal=j, now=T0 + dt.timedelta(hours=2), out_of_sync=None)
    assert plan(unknown, POLICY).kind != "disable"
    ready = Observation(journal=j, now=T0 + dt.timedelta(hours=2), out_of_sync=())
    assert plan(ready, POLICY).kind == "disable"


def test_rotation_in_flight_resumes_by_phase() -> None:
    """Each journaled phase maps to the step that finishes it."""
    expected = {
        "minting": "mint",
        "minted": "verify_new",
        "verified": "distribute",
        "distributing": "distribute",
        "distributed": "verify_stored",
        "stored_verified": "promote",
        "rolling_back": "rollback",
    }
    for phase, kind in expected.items():
        rot = Rotation(id="r", reason="x", started_at=T0, phase=phase, new_key=KeyRef(id="k-new", created_at=T0))
        assert plan(Observation(journal=journal_with_current(rotation=rot), now=T0), POLICY).kind == kind


def test_lost_pending_value_rolls_back_before_distribution() -> None:
    """If the new key's value is gone before it was written anywhere, the rotation rolls back."""
    rot = Rotation(id="r", reason="x", started_at=T0, phase="verified", new_key=KeyRef(id="k-new", created_at=T0))
    obs = Observation(journal=journal_with_current(rotation=rot), now=T0, vault_has_pending=False)
    assert plan(obs, POLICY).kind == "rollback"


times = st.integers(min_value=0, max_value=60 * 24 * 90).map(lambda m: T0 + dt.timedelta(minutes=m))
key_ids = st.sampled_from(["k1", "k2", "k3", "k4"])


@st.composite
def journals(draw: st.DrawFn) -> CredentialJournal:
    current = draw(st.none() | st.builds(KeyRef, id=key_ids, created_at=times))
    retired = draw(
        st.lists(
            st.builds(
                Retired,
                key_id=key_ids,
                retired_at=times,
                disable_at=times,
                disabled_at=st.none() | times,
                delete_at=st.none() | times,
            ),
            max_size=3,
            unique_by=lambda r: r.key_id,  # a key is retired once
        )
    )
    rotation = draw(
        st.none()
        | st.builds(
            Rotation,
            id=st.just("r"),
            reason=st.just("x"),
            started_at=times,
            phase=st.sampled_from(PHASES),
            new_key=st.none() | st.builds(KeyRef, id=key_ids, created_at=times),
            started_in_sync=st.booleans(),
            retry_at=st.none() | times,
        )
    )
    lagging = draw(
        st.lists(
            st.builds(Lagging, cluster=st.sampled_from(["c1", "c2"]), since=times, reason=st.just("refused")),
            max_size=2,
            unique_by=lambda lag: lag.cluster,
        )
    )
    return CredentialJournal(current=current, retired=tuple(retired), rotation=rotation, lagging=tuple(lagging))


# The fleet's two ways with a cluster that stays unreachable: wait for it, or revoke after the timeout.
POLICIES = st.sampled_from(
    [
        POLICY,
        replace(POLICY, unreachable_timeout=dt.timedelta(days=2), revoke_despite_unreachable=True),
    ]
)


@settings(max_examples=600, deadline=None)
@given(
    journal=journals(),
    now=times,
    out_of_sync=st.none() | st.lists(st.just("kubernetes:a/s"), max_size=1).map(tuple),
    stale=st.lists(st.just("kubernetes:b/s"), max_size=1).map(tuple),
    orphan_ids=st.lists(key_ids, max_size=2).map(tuple),
    leaked=st.frozensets(key_ids, max_size=2),
    request=st.none() | st.just(Request(reason="asked")),
    policy=POLICIES,
)
def test_safety_invariants(
    journal: CredentialJournal,
    now: dt.datetime,
    out_of_sync: tuple[str, ...] | None,
    stale: tuple[str, ...],
    orphan_ids: tuple[str, ...],
    leaked: frozenset[str],
    request: Request | None,
    policy: Policy,
) -> None:
    """Whatever the state: never revoke the current key or the one being rolled out, never a key a target may
    hold (nor one a cluster that did not answer may hold, unless the config revokes despite it once the
    timeout is over); and never starve a revocation that may go (the bound on enabled keys rests on that)."""
    obs = Observation(
        journal=journal,
        now=now,
        out_of_sync=out_of_sync,
        stale_refused=stale,
        orphans=orphan_ids,
        leaked=leaked,
        request=request,
    )
    action = plan(obs, policy)
    rotation = journal.rotation
    in_use = {
        journal.current.id if journal.current else None,
        rotation.new_key.id if rotation and rotation.new_key else None,
    }
    # A lagging cluster holds back every disable but a leak's, until its timeout when the config says so.
    timed_out = policy.revoke_despite_unreachable and all(
        now >= lag.since + policy.unreachable_timeout for lag in journal.lagging
    )
    fleet_clear = not journal.lagging or timed_out
    in_sync = (rotation.started_in_sync if rotation else (out_of_sync == () and stale == ())) and fleet_clear
    if action.kind in ("disable", "delete", "sweep"):
        assert action.key_id not in in_use
    if action.kind == "sweep":
        assert rotation is None and action.key_id not in journal.known_key_ids()
    if action.kind == "disable":
        retired = [r for r in journal.retired if r.key_id == action.key_id]
        assert retired and retired[0].disabled_at is None
        # Grace over with no target holding it, or reported leaked with every writable target moved on.
        assert (retired[0].disable_at <= now and in_sync) or (
            action.key_id in leaked and (in_sync or (rotation is None and out_of_sync == ()))
        )
        assert fleet_clear or action.key_id in leaked
    if action.kind == "delete":
        retired = [r for r in journal.retired if r.key_id == action.key_id]
        assert retired and retired[0].disabled_at is not None and retired[0].delete_at is not None
        assert retired[0].delete_at <= now
    # No starvation: a revocation that may go is what happens next, rotation or not (a rotation in flight
    # is only ahead of it when there is none; before one starts, heals come first).
    may_go = [
        r
        for r in journal.retired
        if r.key_id not in in_use
        and (
            (r.disabled_at is None and r.disable_at <= now and in_sync)
            or (r.disabled_at is not None and r.delete_at is not None and r.delete_at <= now)
        )
    ]
    if may_go and (rotation is not None or not out_of_sync):
        assert action.kind in ("disable", "delete"), f"{action.kind} while {may_go[0].key_id} is due"


def test_revocation_goes_between_the_steps_of_a_waiting_rotation() -> None:
    """A key whose grace ends while a rotation waits out a retry is disabled then, not after the rotation
    (which may take long, and be followed by another): the wait wakes for it."""
    retired = Retired(key_id="k-old", retired_at=T0, disable_at=T0 + dt.timedelta(minutes=10))
    rot = Rotation(
        id="r",
        reason="asked",
        started_at=T0,
        phase="distributing",
        new_key=KeyRef(id="k-new", created_at=T0),
        retry_at=T0 + dt.timedelta(hours=1),
        started_in_sync=True,
    )
    j = journal_with_current(retired=(retired,), rotation=rot)
    waiting = plan(Observation(journal=j, now=T0 + dt.timedelta(minutes=5)), POLICY)
    assert waiting.kind == "wait" and waiting.until == T0 + dt.timedelta(minutes=10)
    assert plan(Observation(journal=j, now=T0 + dt.timedelta(minutes=10)), POLICY).kind == "disable"
    # Targets that did not all hold the current key when it started may still hold the old one: not then.
    unsure = replace(j, rotation=replace(rot, started_in_sync=False))
    assert plan(Observation(journal=unsure, now=T0 + dt.timedelta(minutes=10)), POLICY).kind == "wait"


def test_leaked_key_is_disabled_without_grace_or_replaced_at_once() -> None:
    """A retired key reported leaked is disabled inside its grace once no writable target holds it; a leaked
    current key starts an emergency rotation, nobody asking."""
    retired = Retired(key_id="k-old", retired_at=T0, disable_at=T0 + dt.timedelta(hours=1))
    j = journal_with_current(retired=(retired,))
    early = T0 + dt.timedelta(minutes=1)
    assert plan(Observation(journal=j, now=early, out_of_sync=()), POLICY).kind == "idle"
    leak = Observation(
        journal=j, now=early, out_of_sync=(), stale_refused=("kubernetes:b/s",), leaked=frozenset({"k-old"})
    )
    assert plan(leak, POLICY).kind == "disable"
    assert plan(replace(leak, out_of_sync=None), POLICY).kind == "idle"  # targets unknown: not yet
    start = plan(Observation(journal=j, now=early, out_of_sync=(), leaked=frozenset({"k-cur"})), POLICY)
    assert (start.kind, start.emergency, start.leaked_key_id) == ("start", True, "k-cur")
    # After a failed attempt the next one waits the backoff (a rejected replacement is not minted in a loop).
    backing_off = replace(j, backoff_until=early + dt.timedelta(minutes=2), failures_in_a_row=1)
    held = plan(Observation(journal=backing_off, now=early, out_of_sync=(), leaked=frozenset({"k-cur"})), POLICY)
    assert (held.kind, held.until) == ("idle", early + dt.timedelta(minutes=2))


def test_schedule_counts_from_the_last_successful_rotation() -> None:
    """A rotation whose key was minted at T0 but that only succeeded 30 s later (it waited out a retry) is
    followed by the next scheduled one an interval after it succeeded, not 0.2 s after it ended."""
    policy = replace(POLICY, interval=dt.timedelta(seconds=30), max_age=dt.timedelta(days=1))
    finished = T0 + dt.timedelta(seconds=30)
    j = journal_with_current(last_success_at=finished)
    assert due(j, policy) == (finished + dt.timedelta(seconds=30), "scheduled")
    assert plan(Observation(journal=j, now=finished + dt.timedelta(seconds=1), out_of_sync=()), policy).kind == "idle"
    # A key adopted without a recorded success counts from its creation; max_age always from the key.
    assert due(journal_with_current(), policy)[0] == T0 + dt.timedelta(seconds=30)
    old = journal_with_current(last_success_at=T0 + dt.timedelta(days=2))
    assert due(old, replace(policy, interval=dt.timedelta(days=7)))[0] == T0 + dt.timedelta(days=1)


@pytest.mark.parametrize(
    ("now", "kind"),
    [
        pytest.param(T0 + dt.timedelta(days=7, hours=1), "idle", id="due-but-outside-window"),
        pytest.param(T0 + dt.timedelta(days=8, hours=2, minutes=30), "start", id="inside-window"),
        pytest.param(T0 + dt.timedelta(days=8, hours=4), "idle", id="window-closed-again"),
    ],
)
def test_maintenance_window_holds_planned_rotations(now: dt.datetime, kind: str) -> None:
    """A due rotation waits for the window (daily 02:00 for 2 h); idle points at the next opening."""
    policy = Policy(
        interval=dt.timedelta(days=7),
        max_age=dt.timedelta(days=30),
        grace_period=dt.timedelta(hours=1),
        delete_after=dt.timedelta(days=1),
        window_cron="0 2 * * *",
        window_duration=dt.timedelta(hours=2),
    )
    action = plan(Observation(journal=journal_with_current(), now=now, out_of_sync=()), policy)
    assert action.kind == kind
    if kind == "idle":
        assert action.until is not None and action.until.hour == 2 and action.until > now


def test_emergency_ignores_the_window() -> None:
    """An emergency rotation starts outside the maintenance window."""
    policy = Policy(
        interval=dt.timedelta(days=7),
        max_age=dt.timedelta(days=30),
        grace_period=dt.timedelta(hours=1),
        delete_after=dt.timedelta(days=1),
        window_cron="0 2 * * *",
        window_duration=dt.timedelta(hours=2),
    )
    now = T0 + dt.timedelta(days=1, hours=12)
    obs = Observation(
        journal=journal_with_current(), now=now, out_of_sync=(), request=Request(reason="leak", emergency=True)
    )
    assert plan(obs, policy).kind == "start"


def test_a_lagging_cluster_holds_the_old_key_until_it_answers_or_the_timeout_releases_it() -> None:
    """Targets that answered all hold the current key, one cluster did not answer: the retired key stays
    enabled (and the wake-up is the next try to reach it, not the overdue disable); once the cluster is no
    longer lagging the disable goes. With revoke_despite_unreachable it goes after unreachable_timeout."""
    retired = Retired(key_id="k-old", retired_at=T0, disable_at=T0 + dt.timedelta(hours=1))
    retry_at = T0 + dt.timedelta(hours=3)
    lag = Lagging(cluster="c2", since=T0, reason="connection refused", retry_at=retry_at)
    j = journal_with_current(retired=(retired,), lagging=(lag,))
    later = T0 + dt.timedelta(hours=2)
    held = plan(Observation(journal=j, now=later, out_of_sync=()), POLICY)
    assert held.kind == "idle" and held.until == retry_at
    assert plan(Observation(journal=j, now=T0 + dt.timedelta(days=1), out_of_sync=()), POLICY).kind == "idle"
    answered = replace(j, lagging=())
    assert plan(Observation(journal=answered, now=later, out_of_sync=()), POLICY).kind == "disable"
    anyway = replace(POLICY, unreachable_timeout=dt.timedelta(hours=24), revoke_despite_unreachable=True)
    assert plan(Observation(journal=j, now=later, out_of_sync=()), anyway).kind == "idle"
    overdue = plan(Observation(journal=j, now=T0 + dt.timedelta(hours=24), out_of_sync=()), anyway)
    assert overdue.kind == "disable" and overdue.key_id == "k-old"


def test_a_decommissioned_credential_retires_its_key_and_revokes_through_the_grace_path() -> None:
    policy = replace(POLICY, decommission=True)
    # Drifted targets and a request change nothing: no heal, no rotation.
    obs = Observation(
        journal=journal_with_current(), now=T0, out_of_sync=("kubernetes:a/x",), request=Request(reason="r")
    )
    assert (plan(obs, policy).kind, plan(obs, policy).key_id) == ("retire", "k-cur")
    retired = CredentialJournal(retired=(Retired(key_id="k-cur", retired_at=T0, disable_at=T0 + POLICY.grace_period),))
    waiting = plan(Observation(journal=retired, now=T0, out_of_sync=("kubernetes:a/x",)), policy)
    assert (waiting.kind, waiting.until) == ("idle", T0 + POLICY.grace_period)
    later = T0 + POLICY.grace_period
    assert plan(Observation(journal=retired, now=later, out_of_sync=("kubernetes:a/x",)), policy).kind == "disable"
    disabled = CredentialJournal(
        retired=(replace(retired.retired[0], disabled_at=later, delete_at=later + POLICY.delete_after),)
    )
    assert plan(Observation(journal=disabled, now=later + POLICY.delete_after), policy).kind == "delete"
    assert plan(Observation(journal=CredentialJournal(), now=later), policy) == Action(kind="idle", until=None)
