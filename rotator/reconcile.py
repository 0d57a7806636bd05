"""The only place that joins the policy to the adapters: observe -> plan -> act -> record -> repeat.

Each step is journaled before and after it runs (see ``journal.py``), so a process killed at
any point resumes from the journal: a rotation is finished or rolled back, a key is never
orphaned, and a key is never revoked while a target still holds it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import structlog

from rotator import logs, redact
from rotator.errors import (
    NotFoundError,
    NotOwnedError,
    PermanentError,
    RateLimited,
    RotatorError,
    TransientError,
    Unreachable,
)
from rotator.faultpoint import boundary
from rotator.journal import CredentialJournal, KeyRef, Lagging, Result, Retired, Rotation, Vault
from rotator.model import RegistryAuth, SecretStr, TargetRef, TargetState, VerifyResult
from rotator.policy import Action, Observation, Policy, Request, backoff, orphans, plan
from rotator.ports import Clock, CredentialProvider, RegistryVerifier, SecretSink, StateStore

_T = TypeVar("_T")  # what a fan-out step returns per target

# A rotation waits this long after an inconclusive verification before checking again (the default of
# ``Reconciler(inconclusive_retry=...)``; the daemon and CLI set it from ``registry.recheck_interval``).
INCONCLUSIVE_RETRY = dt.timedelta(seconds=30)
# Before anything is distributed, give up (and delete the new key) after this many inconclusive checks.
MAX_INCONCLUSIVE_BEFORE_DISTRIBUTION = 5
MAX_REDISTRIBUTIONS = 3


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


@dataclass(frozen=True, kw_only=True)
class TargetView:
    target: TargetRef
    exists: bool
    entry: RegistryAuth | None
    refused: str


@dataclass(frozen=True, kw_only=True)
class Outcome:
    result: str  # succeeded | failed | inconclusive | idle | waiting
    rotation_id: str | None = None
    detail: str = ""
    next_at: dt.datetime | None = None


# on_event(name, fields) lets metrics and Kubernetes Events follow what happens.
EventHook = Callable[[str, dict[str, Any]], None]


class Reconciler:
    def __init__(
        self,
        *,
        credential: str,
        server: str,
        username: str,
        images: tuple[str, ...],
        provider: CredentialProvider,
        sinks: list[SecretSink],
        verifier: RegistryVerifier,
        store: StateStore,
        policy: Policy,
        clock: Clock | None = None,
        concurrency: int = 16,
        on_event: EventHook | None = None,
        inconclusive_retry: dt.timedelta = INCONCLUSIVE_RETRY,
    ) -> None:
        self.credential = credential
        self.server = server
        self.username = username
        self.images = images
        self.provider = provider
        self.sinks = {sink.name: sink for sink in sinks}
        self.verifier = verifier
        self.store = store
        self.policy = policy
        self.clock = clock or SystemClock()
        self.concurrency = concurrency
        self.on_event = on_event
        self.inconclusive_retry = inconclusive_retry
        self.log = logs.get("rotator.reconcile", credential=credential)
        # One pool of ``concurrency`` per sink (each fleet cluster, each Code Engine sink): a fleet's
        # clusters are written in parallel, each at the configured concurrency, as each has its own
        # connection pool of that size; one shared pool wrote them one after another (bench/fleet_fanout.py).
        self._pools: dict[str, concurrent.futures.ThreadPoolExecutor] = {}
        self._pools_lock = threading.Lock()
        self._lock = threading.Lock()
        # Fleet clusters this step reached, and those that did not answer (cluster -> why): recorded in
        # the journal's ``lagging`` after the step. Fan-out threads add to them.
        self._reached: set[str] = set()
        self._unreachable: dict[str, str] = {}
        self._found: dict[str, list[TargetRef]] = {}  # each fleet sink's targets, as resolved this step
        self._contact_lock = threading.Lock()

    def close(self) -> None:
        with self._pools_lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.shutdown(wait=True)

    def _map(self, fn: Callable[[TargetRef], _T], targets: Iterable[TargetRef]) -> Iterator[_T]:
        """``fn`` over ``targets``, each on its sink's pool; results in the targets' order."""
        futures = []
        for target in targets:
            with self._pools_lock:
                pool = self._pools.get(target.sink)
                if pool is None:
                    pool = self._pools[target.sink] = concurrent.futures.ThreadPoolExecutor(
                        max_workers=self.concurrency, thread_name_prefix=f"fanout-{target.sink}"
                    )
            futures.append(pool.submit(fn, target))
        for future in futures:
            yield future.result()

    # -- the loop --------------------------------------------------------------------------------
    def run(
        self,
        request: Request | None = None,
        *,
        wait_budget: float = 0.0,
        max_steps: int = 200,
        should_continue: Callable[[], bool] | None = None,
    ) -> Outcome:
        """Work until idle (or until a wait longer than ``wait_budget`` seconds); one pass at a time.

        ``should_continue`` is asked before every step: a replica that lost its leadership, or a
        daemon shutting down, stops between steps and leaves the journal consistent.
        """
        with self._lock, self.store.lock(self.credential):
            started = self.clock.now()
            # Targets as read this pass; only a step that writes them (heal) makes a fresh read necessary,
            # so disabling, deleting or sweeping keys does not re-read every secret.
            views: list[TargetView] | None = None
            for _ in range(max_steps):
                if should_continue is not None and not should_continue():
                    return Outcome(result="stopped", detail="stopped between steps (shutdown or lost leadership)")
                journal = self.store.load(self.credential)
                vault = self.store.load_vault(self.credential)
                for value in (vault.current, vault.pending):
                    if value:
                        logs.register_secret(value)
                self._forget_contacts()
                if journal.rotation is None and views is None:
                    views = self.read_targets(self.targets())
                    if self._record_contacts():
                        journal = self.store.load(self.credential)
                obs = self._observe(journal, vault, request, views)
                action = plan(obs, self.policy)
                if action.kind == "idle":
                    return Outcome(result="idle", next_at=action.until)
                if action.kind == "wait":
                    assert action.until is not None
                    waited = (self.clock.now() - started).total_seconds()
                    delay = (action.until - self.clock.now()).total_seconds()
                    if waited + delay > wait_budget:
                        rotation_id = journal.rotation.id if journal.rotation else None
                        return Outcome(
                            result="inconclusive", rotation_id=rotation_id, detail=action.reason, next_at=action.until
                        )
                    self.log.info("rotation.waiting", seconds=round(delay, 1), reason=action.reason)
                    self.clock.sleep(delay)
                    continue
                if action.kind == "start":
                    request = None  # consumed
                if action.kind == "heal":
                    views = None
                outcome = self._act(action, journal, vault)
                self._record_contacts()
                if outcome is not None:
                    return outcome  # one rotation per pass; what is due next comes on the next pass
            return Outcome(result="waiting", detail=f"stopped after {max_steps} steps")

    def heal(self, targets: list[TargetRef]) -> dict[str, str]:
        """Write the current key to these targets (new namespace, drifted or deleted secret, new
        service account). Skipped while a rotation is in flight: it re-checks every target itself."""
        with self._lock, self.store.lock(self.credential):
            journal = self.store.load(self.credential)
            vault = self.store.load_vault(self.credential)
            if journal.rotation is not None or not vault.current:
                return {t.key: "deferred" for t in targets}
            # Events name targets by namespace; only those the config selects right now are written.
            targets = [t for t in targets if self.sinks[t.sink].in_scope(t)]
            auth = self._auth(vault.current)
            key_id = journal.current.id if journal.current else "?"
            self._activity("PullSecretHealed", f"{self.credential} entry put back to the current key {key_id}")
            results = self._fan_out(targets, lambda t: self.sinks[t.sink].write_entry(t, auth))
        out: dict[str, str] = {}
        for key, result in results.items():
            out[key] = result if isinstance(result, str) else f"error: {result}"
            if result in ("created", "updated"):
                self.log.info("secret.healed", target=key, result=result)
                self._emit("secret.healed", target=key)
            elif not isinstance(result, str):
                self.log.warning("secret.heal_failed", target=key, error=str(result))
        return out

    def check_current(self) -> VerifyResult | None:
        """Is the current key still enabled at the provider, then a HEAD-only pull check of it (None when
        there is none yet). The registry may keep honouring a token it issued before the key was disabled
        (IAM disables a key it finds in a public leak: ``action_when_leaked``), so ask the provider first."""
        vault = self.store.load_vault(self.credential)
        if not vault.current:
            return None
        current = self.store.load(self.credential).current
        problem = self._gone_at_provider(current.id) if current is not None else None
        if problem is not None:
            return VerifyResult(outcome="rejected", detail=problem)
        return self._verify([self._auth(vault.current)])

    def _gone_at_provider(self, key_id: str) -> str | None:
        """Why the provider no longer honours the key (deleted, disabled), or None."""
        try:
            info = self.provider.get(key_id)
        except TransientError as exc:  # the provider is busy: the registry check still runs
            self.log.warning("health.provider_unavailable", key_id=key_id, error=str(exc))
            return None
        if info is None:
            return f"current key {key_id} is deleted at the provider"
        if info.disabled:
            return f"current key {key_id} is disabled at the provider (a leak found by IAM does this)"
        return None

    # -- observation -----------------------------------------------------------------------------
    def targets(self) -> list[TargetRef]:
        """Every sink's targets; a fleet cluster that does not answer adds none (and is marked lagging)."""
        out: list[TargetRef] = []
        for sink in self.sinks.values():
            cluster: str = getattr(sink, "cluster", "")
            try:
                found = sink.resolve_targets()
            except Unreachable as exc:
                if not cluster:
                    raise
                self._lost(cluster, exc)
                continue
            if cluster:
                with self._contact_lock:
                    self._reached.add(cluster)
                    self._found[sink.name] = found
            out += found
        return out

    def read_targets(self, targets: Iterable[TargetRef]) -> list[TargetView]:
        def read(target: TargetRef) -> TargetView | None:
            try:
                state = self.sinks[target.sink].read_state(target, self.server)
            except Unreachable as exc:
                if not self._cluster_of(target):
                    raise
                self._lost(self._cluster_of(target), exc)
                return None
            return TargetView(target=target, exists=state.exists, entry=state.entry, refused=state.refused)

        return [view for view in self._map(read, targets) if view is not None]

    # -- fleet clusters that do not answer --------------------------------------------------------
    def _cluster_of(self, target: TargetRef) -> str:
        cluster: str = getattr(self.sinks[target.sink], "cluster", "")
        return cluster

    def _lost(self, cluster: str, exc: Exception) -> None:
        with self._contact_lock:
            self._unreachable.setdefault(cluster, redact.clean(str(exc), limit=300))

    def unreachable_clusters(self) -> dict[str, str]:
        """Fleet clusters that did not answer since the current step began (cluster -> why): ``rotator check``."""
        with self._contact_lock:
            return dict(self._unreachable)

    def _forget_contacts(self) -> None:
        with self._contact_lock:
            self._reached, self._unreachable, self._found = set(), {}, {}

    def _record_contacts(self) -> bool:
        """Record in the journal which fleet clusters did not answer this step (since when, why, when to try
        again, backing off) and drop those that answered; True when the journal changed."""
        with self._contact_lock:
            reached, lost = self._reached - set(self._unreachable), dict(self._unreachable)
        if not reached and not lost:
            return False
        journal = self.store.load(self.credential)
        now = self.clock.now()
        by_cluster = {lag.cluster: lag for lag in journal.lagging}
        for cluster in reached & set(by_cluster):
            lag = by_cluster.pop(cluster)
            self.log.info("cluster.reachable", cluster=cluster, lagged_since=lag.since.isoformat())
            self._emit("cluster.reachable", cluster=cluster)
        for cluster, reason in lost.items():
            old = by_cluster.get(cluster)
            attempts = old.attempts + 1 if old else 1
            by_cluster[cluster] = Lagging(
                cluster=cluster,
                since=old.since if old else now,
                reason=reason,
                attempts=attempts,
                retry_at=now + backoff(attempts, self.policy),
            )
            # A warning once per outage; each further failed contact (one per step while it lasts) at info,
            # so a long outage does not flood the log (the gauge and RotatorClusterUnreachable carry it).
            (self.log.warning if old is None else self.log.info)(
                "cluster.unreachable", cluster=cluster, reason=reason, attempts=attempts
            )
            self._emit("cluster.unreachable", cluster=cluster)
            if old is None:
                self._announce(cluster, reached)
        lagging = tuple(sorted(by_cluster.values(), key=lambda lag: (lag.since, lag.cluster)))
        if lagging == journal.lagging:
            return False
        self._save(replace(journal, lagging=lagging))
        return True

    def _observe(
        self, journal: CredentialJournal, vault: Vault, request: Request | None, views: list[TargetView] | None
    ) -> Observation:
        now = self.clock.now()
        obs = Observation(
            journal=journal,
            now=now,
            request=request,
            vault_has_pending=bool(vault.pending),
            vault_has_current=bool(vault.current),
            leaked=self.store.load_requests(self.credential).leaked_key_ids(),
        )
        if journal.rotation is not None or views is None:
            return obs
        current = vault.current

        def stale(view: TargetView) -> bool:  # does not hold the current key
            return view.entry is None or view.entry.password.reveal() != current

        out_of_sync = tuple(v.target.key for v in views if not v.refused and stale(v))
        stale_refused = tuple(v.target.key for v in views if v.refused and v.entry is not None and stale(v))
        per_sink: dict[str, list[int]] = {name: [0, 0] for name in self.sinks}
        for view in views:
            counts = per_sink[view.target.sink]
            counts[0] += 1
            counts[1] += 1 if view.refused or stale(view) else 0
        refused = sum(1 for view in views if view.refused)
        self._emit("targets.observed", sinks={name: tuple(c) for name, c in per_sink.items()}, refused=refused)
        owned = self.provider.list_owned(credential=self.credential)
        unknown = [k for k in owned if k.id not in journal.known_key_ids()]
        held: set[str] = set()
        untold = 0  # targets holding, under our username, a value the provider cannot name
        if unknown:
            for username, value in {(v.entry.username, v.entry.password.reveal()) for v in views if v.entry} - {
                (self.username, current)
            }:
                info = self.provider.identify(SecretStr(value))
                if info is not None:
                    held.add(info.id)
                elif not self.provider.identifies_values and username == self.username:
                    untold += 1
        sweepable = orphans([(k.id, k.created_at) for k in unknown], journal, held, now, self.policy.orphan_window)
        if journal.lagging and sweepable:
            # A cluster that did not answer may hold any of them: no sweep until every cluster answers.
            self.log.info("orphans.held_back", orphans=len(sweepable), lagging=[lag.cluster for lag in journal.lagging])
            sweepable = ()
        if untold and sweepable:
            # Any unknown key may be the one those targets hold (a lost journal leaves every secret holding one):
            # never revoke a key a target may still hold. The sweep resumes once they hold the current key.
            self.log.info("orphans.held_back", orphans=len(sweepable), unidentified_values=untold)
            sweepable = ()
        return replace(
            obs,
            out_of_sync=out_of_sync if current else None,
            stale_refused=stale_refused,
            orphans=sweepable,
        )

    def _announce(self, cluster: str, reached: set[str]) -> None:
        """A Warning Event in every cluster that answered (on its first target secret: one per cluster, not
        one per namespace), so those watching their own cluster learn why the old key lives on."""
        message = (
            f"cluster {cluster} does not answer: replaced keys of {self.credential} stay enabled until it holds "
            "the current key"
        )
        for sink in self.sinks.values():
            recorder = getattr(sink, "recorder", None)
            found = self._found.get(sink.name)
            if recorder is not None and found and getattr(sink, "cluster", "") in reached:
                recorder.record(found[0], "PullSecretClusterUnreachable", message, warning=True)

    # -- acting ----------------------------------------------------------------------------------
    def _emit(self, name: str, **fields: Any) -> None:
        if self.on_event is not None:
            self.on_event(name, {"credential": self.credential, **fields})

    def _save(self, journal: CredentialJournal) -> None:
        self.store.save(self.credential, journal)

    def _act(self, action: Action, journal: CredentialJournal, vault: Vault) -> Outcome | None:
        handler: Callable[[Action, CredentialJournal, Vault], Outcome | None] = getattr(self, f"_do_{action.kind}")
        rotation_id = journal.rotation.id if journal.rotation else None
        log = self.log.bind(rotation_id=rotation_id) if rotation_id else self.log
        log.debug("step.started", step=action.kind)
        try:
            return handler(action, journal, vault)
        except TransientError as exc:
            # The step will be tried again (the adapters already retried within it): after the credential's
            # retry_backoff, doubling with each failure in a row, or later if the upstream asked for more.
            log.warning("step.failed", step=action.kind, error=str(exc), transient=True)
            if journal.rotation is not None:
                retries = journal.rotation.retries + 1
                delay = backoff(retries, self.policy)
                if isinstance(exc, RateLimited) and exc.retry_after is not None:
                    delay = max(delay, dt.timedelta(seconds=exc.retry_after))
                retry_at = self.clock.now() + delay
                waiting = replace(journal.rotation, waiting=f"{action.kind}: {exc}", retry_at=retry_at, retries=retries)
                self._save(replace(journal, rotation=waiting))
                return None
            raise
        except PermanentError as exc:
            # Before anything is distributed a permanent failure (key limit, no rights) ends the rotation:
            # roll back, which deletes whatever was minted. Later phases are retried after a backoff.
            rotation = journal.rotation
            if rotation is None or rotation.phase not in ("minting", "minted", "verified"):
                raise
            log.error("step.failed", step=action.kind, error=str(exc), transient=False)
            failure = f"{action.kind}: {exc}"
            self._save(replace(journal, rotation=replace(rotation, phase="rolling_back", failure=failure)))
            return None

    def _activity(self, reason: str, message: str, *, warning: bool = False) -> None:
        """What the next fan-out does, for the Events sinks record on the secrets they write."""
        for sink in self.sinks.values():
            sink.activity = (reason, message, warning)

    def _auth(self, value: str) -> RegistryAuth:
        return RegistryAuth(server=self.server, username=self.username, password=SecretStr(value))

    def _do_start(self, action: Action, journal: CredentialJournal, vault: Vault) -> Outcome | None:
        now = self.clock.now()
        rotation = Rotation(
            id=action.rotation_id or new_rotation_id(now),
            reason=action.reason,
            started_at=now,
            phase="minting",
            emergency=action.emergency,
            leaked_key_id=action.leaked_key_id,
            started_in_sync=action.in_sync,
        )
        self._save(replace(journal, rotation=rotation))
        self.log.info("rotation.started", rotation_id=rotation.id, reason=action.reason, emergency=action.emergency)
        self._emit("rotation.started", rotation_id=rotation.id)
        boundary("start:after")
        return None

    def _do_mint(self, action: Action, journal: CredentialJournal, vault: Vault) -> Outcome | None:
        rotation = journal.rotation
        assert rotation is not None
        boundary("mint:before")
        # A previous run may have minted for this rotation and died before recording it: a key whose
        # value we still hold is adopted, one whose value is lost is deleted.
        for key in self.provider.list_owned(credential=self.credential):
            if key.rotation_id != rotation.id:
                continue
            if vault.pending and (found := self.provider.identify(SecretStr(vault.pending))) and found.id == key.id:
                new_key = KeyRef(id=key.id, created_at=key.created_at, expires_at=key.expires_at)
                self._save(replace(journal, rotation=replace(rotation, phase="minted", new_key=new_key)))
                return None
            self.provider.delete(key.id)
            self.log.info("key.deleted", key_id=key.id, reason="minted by an interrupted run, value lost")
        # IAM reports creation to the minute; our own clock before the call bounds it from below.
        minted_at = self.clock.now()
        minted = self.provider.mint(credential=self.credential, rotation_id=rotation.id)
        logs.register_secret(minted.value)
        boundary("mint:after-provider")
        self.store.save_vault(self.credential, Vault(current=vault.current, pending=minted.value.reveal()))
        boundary("mint:after-vault")
        created_at = max(minted.info.created_at, minted_at)
        new_key = KeyRef(id=minted.info.id, created_at=created_at, expires_at=minted.info.expires_at)
        self._save(replace(journal, rotation=replace(rotation, phase="minted", new_key=new_key)))
        self.log.info("key.minted", rotation_id=rotation.id, key_id=new_key.id)
        self._emit("key.minted", rotation_id=rotation.id)
        boundary("mint:after")
        return None

    def _verify(self, auths: list[RegistryAuth], *, rotation: Rotation | None = None) -> VerifyResult:
        """All distinct stored credentials must pull; the worst outcome wins."""
        worst: VerifyResult | None = None
        order = {"ok": 0, "inconclusive": 1, "rejected": 2}
        # The verifier's own log lines (registry.verified, retries) say which credential and rotation they serve.
        context = {"credential": self.credential, **({"rotation_id": rotation.id} if rotation else {})}
        for auth in auths:
            started = time.monotonic()
            with structlog.contextvars.bound_contextvars(**context):
                result = self.verifier.verify(server=self.server, auth=auth, images=self.images)
            quota_of = getattr(self.verifier, "quota", None)
            self._emit(
                "verification",
                result=result.outcome,
                registry=self.server,
                seconds=time.monotonic() - started,
                quota=quota_of(self.server) if quota_of else None,
            )
            if worst is None or order[result.outcome] > order[worst.outcome]:
                worst = result
        assert worst is not None
        return worst

    def _verification_outcome(
        self, result: VerifyResult, journal: CredentialJournal, *, next_phase: str, step: str, distributed: bool
    ) -> Outcome | None:
        rotation = journal.rotation
        assert rotation is not None
        log = self.log.bind(rotation_id=rotation.id)
        if result.ok:
            log.info("verification.passed", step=step, requests=result.requests)
            self._save(
                replace(journal, rotation=replace(rotation, phase=next_phase, waiting="", retry_at=None, retries=0))
            )
            return None
        if result.outcome == "rejected":
            log.warning("verification.rejected", step=step, detail=result.detail)
            failure = f"{step}: registry rejected the new key: {result.detail}"
            self._save(replace(journal, rotation=replace(rotation, phase="rolling_back", failure=failure)))
            return None
        attempts = rotation.attempts + 1
        log.warning("verification.inconclusive", step=step, detail=result.detail, attempt=attempts)
        if not distributed and attempts >= MAX_INCONCLUSIVE_BEFORE_DISTRIBUTION:
            failure = f"{step}: verification stayed inconclusive ({result.detail}); nothing was distributed"
            self._save(replace(journal, rotation=replace(rotation, phase="rolling_back", failure=failure)))
            return None
        retry_at = self.clock.now() + self.inconclusive_retry
        waiting = f"{step} inconclusive: {result.detail}"
        self._save(replace(journal, rotation=replace(rotation, attempts=attempts, waiting=waiting, retry_at=retry_at)))
        return None

    def _do_verify_new(self, action: Action, journal: CredentialJournal, vault: Vault) -> Outcome | None:
        assert vault.pending
        result = self._verify([self._auth(vault.pending)], rotation=journal.rotation)
        outcome = self._verification_outcome(
            result, journal, next_phase="verified", step="verify_new", distributed=False
        )
        boundary("verify_new:after")
        return outcome

    def _do_distribute(self, action: Action, journal: CredentialJournal, vault: Vault) -> Outcome | None:
        rotation = journal.rotation
        assert rotation is not None and vault.pending
        boundary("distribute:before")
        if rotation.phase != "distributing":
            rotation = replace(rotation, phase="distributing")
            journal = replace(journal, rotation=rotation)
            self._save(journal)
        targets = self.targets()
        if vault.snapshot is None:
            views = self.read_targets(targets)
            vault = Vault(current=vault.current, pending=vault.pending, snapshot=_snapshot(views))
            self.store.save_vault(self.credential, vault)
        else:
            # A fleet cluster that did not answer when the snapshot was taken (or a namespace new since) is
            # added to it before its first write, so a rollback restores it too.
            known = {*vault.snapshot.get("targets", {}), *vault.snapshot.get("refused", {})}
            late = self.read_targets([t for t in targets if t.key not in known])
            if late:
                vault = replace(vault, snapshot=_merge_snapshots(vault.snapshot, _snapshot(late)))
                self.store.save_vault(self.credential, vault)
        boundary("distribute:after-snapshot")
        assert vault.snapshot is not None and vault.pending
        refused = set(vault.snapshot.get("refused", {}))
        snapshotted = set(vault.snapshot.get("targets", {}))
        writable = [t for t in targets if t.key not in refused and t.key in snapshotted]
        auth = self._auth(vault.pending)
        new_id = rotation.new_key.id if rotation.new_key else "?"
        self._activity("PullSecretRotated", f"rotation {rotation.id}: {self.credential} now uses key {new_id}")
        started = time.monotonic()
        snapshot_lock = threading.Lock()

        def replacing(target: TargetRef) -> Callable[[TargetState], None]:
            def check(state: TargetState) -> None:
                # The snapshot was read before the writes (in the daemon, from the secrets as last seen): a
                # write that finds something else there records what it really replaces before it is sent.
                nonlocal vault
                with snapshot_lock:
                    assert vault.snapshot is not None
                    fixed = _snapshot_replaced(vault.snapshot, target.key, state.entry)
                    if fixed is not None:
                        vault = replace(vault, snapshot=fixed)
                        self.store.save_vault(self.credential, vault)

            return check

        results = self._fan_out(
            writable,
            lambda t: self.sinks[t.sink].write_entry(t, auth, replacing=replacing(t)),
            partial_boundary="distribute:partial",
        )
        self._emit("secrets.written", targets=len(writable), seconds=time.monotonic() - started)
        # A fleet cluster that stopped answering does not hold the others back: it lags (the old key
        # stays enabled for it) and is written when it answers again.
        by_key = {t.key: t for t in writable}
        for key, result in list(results.items()):
            if isinstance(result, Unreachable) and self._cluster_of(by_key[key]):
                self._lost(self._cluster_of(by_key[key]), result)
                results[key] = "lagging"
        transient = [k for k, r in results.items() if isinstance(r, TransientError)]
        failed = {k: r for k, r in results.items() if isinstance(r, RotatorError) and k not in transient}
        for key, error in failed.items():
            self.log.error("secret.refused", rotation_id=rotation.id, target=key, error=str(error))
        counts: dict[str, int] = {}
        for r in results.values():
            label = r if isinstance(r, str) else type(r).__name__
            counts[label] = counts.get(label, 0) + 1
        self.log.info("secrets.written", rotation_id=rotation.id, targets=len(writable), results=counts)
        if transient:
            raise TransientError(f"{len(transient)} of {len(writable)} targets could not be written yet")
        if failed:
            snapshot = dict(vault.snapshot)
            snapshot["refused"] = {**snapshot.get("refused", {}), **{k: str(e) for k, e in failed.items()}}
            self.store.save_vault(self.credential, replace(vault, snapshot=snapshot))
        self._save(
            replace(journal, rotation=replace(rotation, phase="distributed", waiting="", retry_at=None, retries=0))
        )
        boundary("distribute:after")
        return None

    def _fan_out(
        self, targets: list[TargetRef], fn: Callable[[TargetRef], str], *, partial_boundary: str = ""
    ) -> dict[str, str | Exception]:
        results: dict[str, str | Exception] = {}
        half = max(1, len(targets) // 2)

        def one(target: TargetRef) -> tuple[str, str | Exception]:
            try:
                return target.key, fn(target)
            except RotatorError as exc:
                return target.key, exc

        for i, (key, result) in enumerate(self._map(one, targets), start=1):
            results[key] = result
            if i == half and partial_boundary:
                boundary(partial_boundary)
        return results

    def _do_verify_stored(self, action: Action, journal: CredentialJournal, vault: Vault) -> Outcome | None:
        rotation = journal.rotation
        assert rotation is not None
        refused = set((vault.snapshot or {}).get("refused", {}))
        views = [v for v in self.read_targets(self.targets()) if v.target.key not in refused and not v.refused]
        expected = vault.pending or vault.current
        behind = [v.target.key for v in views if v.entry is None or v.entry.password.reveal() != expected]
        if behind:
            attempts = rotation.attempts + 1
            self.log.warning("secrets.behind", rotation_id=rotation.id, targets=len(behind), attempt=attempts)
            if attempts > MAX_REDISTRIBUTIONS:
                failure = f"{len(behind)} targets kept losing the new key (someone else writes them)"
                self._save(replace(journal, rotation=replace(rotation, phase="rolling_back", failure=failure)))
            else:
                self._save(replace(journal, rotation=replace(rotation, phase="verified", attempts=attempts)))
            return None
        # Check exactly what is stored: every distinct entry, as the kubelet would read it.
        stored = {(v.entry.username, v.entry.password.reveal()): v.entry for v in views if v.entry is not None}
        auths = list(stored.values()) or ([self._auth(expected)] if expected else [])
        result = self._verify(auths, rotation=journal.rotation)
        outcome = self._verification_outcome(
            result, journal, next_phase="stored_verified", step="verify_stored", distributed=True
        )
        boundary("verify_stored:after")
        return outcome

    def _do_promote(self, action: Action, journal: CredentialJournal, vault: Vault) -> Outcome | None:
        rotation = journal.rotation
        assert rotation is not None and rotation.new_key is not None
        now = self.clock.now()
        if vault.pending:
            self.store.save_vault(self.credential, Vault(current=vault.pending))
        boundary("promote:after-vault")
        # A key reported leaked (by this request or any other) is disabled right after this promotion,
        # not after the grace period.
        leaks = self.store.load_requests(self.credential).leaked_key_ids() | {rotation.leaked_key_id}
        retired = [replace(r, disable_at=now, reason="leaked") if r.key_id in leaks else r for r in journal.retired]
        old = journal.current
        if old is not None and old.id != rotation.new_key.id:
            leaked = old.id in leaks
            disable_at = now if leaked else now + self.policy.grace_period
            retired.append(
                Retired(key_id=old.id, retired_at=now, disable_at=disable_at, reason="leaked" if leaked else "rotated")
            )
        refused = sorted((vault.snapshot or {}).get("refused", {}))
        detail = f"{len(refused)} targets refused: {', '.join(refused[:5])}" if refused else ""
        result = Result(
            rotation_id=rotation.id, result="succeeded", reason=rotation.reason, finished_at=now, detail=detail
        )
        promoted = replace(
            journal,
            current=rotation.new_key,
            rotation=None,
            retired=tuple(retired),
            last_success_at=now,
            backoff_until=None,
            failures_in_a_row=0,
        ).with_result(result)
        self._save(promoted)
        duration = (now - rotation.started_at).total_seconds()
        self.log.info(
            "rotation.succeeded",
            rotation_id=rotation.id,
            key_id=rotation.new_key.id,
            replaced=old.id if old else None,
            seconds=round(duration, 3),
            reason=rotation.reason,
            refused=len(refused),
        )
        self._emit("rotation.finished", rotation_id=rotation.id, result="succeeded", seconds=duration)
        boundary("promote:after")
        return Outcome(result="succeeded", rotation_id=rotation.id, detail=detail)

    def _do_rollback(self, action: Action, journal: CredentialJournal, vault: Vault) -> Outcome | None:
        rotation = journal.rotation
        assert rotation is not None
        now = self.clock.now()
        failure = rotation.failure or action.reason
        if vault.snapshot is not None:
            said = redact.clean(failure, limit=200)
            self._activity(
                "PullSecretRolledBack", f"rotation {rotation.id} failed ({said}); entry restored", warning=True
            )
            self._restore(vault.snapshot, rotation.id)
        boundary("rollback:after-restore")
        if rotation.new_key is not None:
            self._delete_key(rotation.new_key.id, reason="rolled back")
        else:  # died while minting: delete whatever this rotation minted
            for key in self.provider.list_owned(credential=self.credential):
                if key.rotation_id == rotation.id:
                    self._delete_key(key.id, reason="rolled back")
        boundary("rollback:after-delete")
        self.store.save_vault(self.credential, Vault(current=vault.current))
        failures = journal.failures_in_a_row + 1
        result = Result(
            rotation_id=rotation.id, result="failed", reason=rotation.reason, finished_at=now, detail=failure
        )
        self._save(
            replace(
                journal,
                rotation=None,
                failures_in_a_row=failures,
                backoff_until=now + backoff(failures, self.policy),
            ).with_result(result)
        )
        self.log.error("rotation.failed", rotation_id=rotation.id, reason=rotation.reason, detail=failure)
        self._emit(
            "rotation.finished",
            rotation_id=rotation.id,
            result="failed",
            seconds=(now - rotation.started_at).total_seconds(),
        )
        return Outcome(result="failed", rotation_id=rotation.id, detail=failure)

    def _restore(self, snapshot: dict[str, Any], rotation_id: str) -> None:
        previous: dict[str, Any] = snapshot.get("targets", {})
        values: list[dict[str, Any]] = snapshot.get("values", [])
        targets = {t.key: t for t in self.targets()}
        # A target gone since (namespace deleted) has nothing to restore.
        pending = [targets[k] for k in previous if k in targets]

        def restore(target: TargetRef) -> str:
            index = previous[target.key]
            sink = self.sinks[target.sink]
            if index is None:
                sink.remove_entry(target, self.server)
                return "removed"
            raw = values[index]
            auth = RegistryAuth(
                server=self.server,
                username=raw["username"],
                password=SecretStr(raw["password"]),
                email=raw.get("email"),
            )
            return sink.write_entry(target, auth)

        results = self._fan_out(pending, restore)
        for key, result in list(results.items()):
            # A fleet cluster that stopped answering is put back by a heal (to the current key) once it answers.
            if isinstance(result, Unreachable) and self._cluster_of(targets[key]):
                self._lost(self._cluster_of(targets[key]), result)
                results[key] = "lagging"
        errors = {k: r for k, r in results.items() if isinstance(r, Exception)}
        transient = {k: e for k, e in errors.items() if isinstance(e, TransientError)}
        if transient:
            raise TransientError(f"restore: {len(transient)} targets could not be written back yet")
        for key, error in errors.items():
            self.log.error("secret.restore_failed", rotation_id=rotation_id, target=key, error=str(error))
        self.log.info("secrets.restored", rotation_id=rotation_id, targets=len(results) - len(errors))

    def _delete_key(self, key_id: str, *, reason: str) -> None:
        with contextlib.suppress(NotFoundError):
            self.provider.delete(key_id)
        self.log.info("key.deleted", key_id=key_id, reason=reason)

    def _do_heal(self, action: Action, journal: CredentialJournal, vault: Vault) -> Outcome | None:
        assert vault.current
        auth = self._auth(vault.current)
        key_id = journal.current.id if journal.current else "?"
        self._activity("PullSecretHealed", f"{self.credential} entry put back to the current key {key_id}")
        wanted = set(action.targets)
        targets = [t for t in self.targets() if t.key in wanted]
        results = self._fan_out(targets, lambda t: self.sinks[t.sink].write_entry(t, auth))
        healed = [k for k, r in results.items() if isinstance(r, str)]
        errors = {k: r for k, r in results.items() if isinstance(r, Exception)}
        self.log.info("secrets.healed", targets=len(healed), failed=len(errors))
        for key in healed:
            self._emit("secret.healed", target=key)
        if errors:
            first = next(iter(errors.values()))
            if isinstance(first, TransientError):
                raise first
            raise PermanentError(f"{len(errors)} targets could not be healed: {first}")
        return None

    def _update_retired(self, journal: CredentialJournal, key_id: str, retired: Retired | None) -> None:
        kept = tuple(r for r in journal.retired if r.key_id != key_id)
        self._save(replace(journal, retired=kept + ((retired,) if retired else ())))

    def _do_disable(self, action: Action, journal: CredentialJournal, vault: Vault) -> Outcome | None:
        assert action.key_id
        entry = next(r for r in journal.retired if r.key_id == action.key_id)
        now = self.clock.now()
        try:
            self.provider.disable(action.key_id)
        except (NotFoundError, NotOwnedError) as exc:
            self.log.warning("key.forgotten", key_id=action.key_id, reason=str(exc))
            self._update_retired(journal, action.key_id, None)
            return None
        self._update_retired(
            journal, action.key_id, replace(entry, disabled_at=now, delete_at=now + self.policy.delete_after)
        )
        self.log.info("key.disabled", key_id=action.key_id, reason=action.reason)
        self._emit("key.revoked", step="disable")
        boundary("disable:after")
        return None

    def _do_retire(self, action: Action, journal: CredentialJournal, vault: Vault) -> Outcome | None:
        """A decommissioned credential's current key joins the retired ones (grace, disable, delete)."""
        assert journal.current is not None and action.key_id == journal.current.id
        now = self.clock.now()
        entry = Retired(
            key_id=action.key_id, retired_at=now, disable_at=now + self.policy.grace_period, reason="decommissioned"
        )
        self._save(replace(journal, current=None, retired=(*journal.retired, entry)))
        self.log.info("key.retired", key_id=action.key_id, reason=action.reason)
        return None

    def _do_delete(self, action: Action, journal: CredentialJournal, vault: Vault) -> Outcome | None:
        assert action.key_id
        try:
            self._delete_key(action.key_id, reason=action.reason)
        except NotOwnedError as exc:
            self.log.warning("key.forgotten", key_id=action.key_id, reason=str(exc))
        self._update_retired(journal, action.key_id, None)
        self._emit("key.revoked", step="delete")
        boundary("delete:after")
        return None

    def _do_sweep(self, action: Action, journal: CredentialJournal, vault: Vault) -> Outcome | None:
        assert action.key_id
        self._delete_key(action.key_id, reason="orphan: owned, unknown to the journal, held by no target")
        return None


def new_rotation_id(now: dt.datetime) -> str:
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def _merge_snapshots(first: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """``first`` with the targets of ``more`` added (their values re-indexed into one list)."""
    values: list[dict[str, Any]] = list(first.get("values", []))
    targets: dict[str, int | None] = dict(first.get("targets", {}))
    for key, index in more["targets"].items():
        if index is None:
            targets[key] = None
            continue
        value = more["values"][index]
        if value not in values:
            values.append(value)
        targets[key] = values.index(value)
    refused = {**first.get("refused", {}), **more["refused"]}
    return {**first, "targets": targets, "values": values, "refused": refused}


def _snapshot_replaced(snapshot: dict[str, Any], key: str, entry: RegistryAuth | None) -> dict[str, Any] | None:
    """The snapshot with ``key``'s entry changed to ``entry``, or None when it already holds that (or does not
    cover the target: one that appeared since has nothing to restore)."""
    targets: dict[str, int | None] = snapshot.get("targets", {})
    if key not in targets:
        return None
    values: list[dict[str, Any]] = snapshot.get("values", [])
    index = targets[key]
    held = None if index is None else values[index]
    wanted = (
        None
        if entry is None
        else {"username": entry.username, "password": entry.password.reveal(), "email": entry.email}
    )
    if held == wanted:
        return None
    if wanted is not None and wanted not in values:
        values = [*values, wanted]
    position = None if wanted is None else values.index(wanted)
    return {**snapshot, "targets": {**targets, key: position}, "values": values}


def _snapshot(views: list[TargetView]) -> dict[str, Any]:
    """Each target's entry before the rotation writes it (values de-duplicated), and refusals."""
    values: list[dict[str, Any]] = []
    index: dict[tuple[str, str, str | None], int] = {}
    targets: dict[str, int | None] = {}
    refused: dict[str, str] = {}
    for view in views:
        if view.refused:
            refused[view.target.key] = view.refused
            continue
        if view.entry is None:
            targets[view.target.key] = None
            continue
        ident = (view.entry.username, view.entry.password.reveal(), view.entry.email)
        if ident not in index:
            index[ident] = len(values)
            values.append({"username": ident[0], "password": ident[1], "email": ident[2]})
        targets[view.target.key] = index[ident]
    return {"targets": targets, "values": values, "refused": refused}
