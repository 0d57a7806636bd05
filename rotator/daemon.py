"""``rotator run``: the long-running daemon.

Every trigger becomes work for one credential's worker thread, which does one thing at a time:

    schedule (APScheduler date job at the policy's next deadline) ─┐
    Kubernetes watches (namespaces, managed secrets, SAs) ─────────┼─► Worker(credential) ─► Reconciler
    HTTP API (rotate, leaked) and annotations ─────────────────────┤   coalesces: many ticks → one pass,
    health check of the current key (HEAD) ────────────────────────┘   concurrent requests → one rotation

Only the leader acts (Lease election when enabled); followers keep serving health, metrics and
status. A leader that loses its lease, or a daemon told to stop, finishes the step in progress
and stops before the next one, leaving the journal consistent for whoever resumes.

Every input is loaded and checked before any thread starts (``prepare``, see ``preflight.py``);
``stop`` stops whatever ``start`` started, each thread joined with a bounded wait.
A rotation request is written to the credential's request book before it is answered (see
``Worker.request``), so the process that serves it may be a later one, or another replica.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import functools
import os
import random
import signal
import socket
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry

from rotator import logs, preflight
from rotator.adapters.kubernetes import MANAGED_LABEL, KubernetesSink
from rotator.app import App
from rotator.errors import NotFoundError, RequestRefused, RotatorError
from rotator.faultpoint import boundary
from rotator.journal import Accepted, CredentialJournal, Leak, RequestBook
from rotator.metrics import Metrics, pass_error_reason
from rotator.model import TargetRef
from rotator.policy import Request, backoff
from rotator.reconcile import Reconciler, new_rotation_id
from rotator.seensecrets import SeenSecrets
from rotator.settings import CredentialSettings, Settings
from rotator.status import leak_progress
from rotator.watches import ResourceWatch, Selection, Trigger, route

log = logs.get("rotator.daemon")
# How long stop() waits for the watch threads once their streams are shut (each returns at once).
WATCH_JOIN_S = 5.0
# Finished requests kept in each credential's book (for GET /v1/rotations/<id> and Idempotency-Key replays):
# a few days of requests at any sane rate, and small enough for a ConfigMap (~300 bytes each).
REQUESTS_KEPT = 500
LEAKS_KEPT = 100
FINISHED = ("succeeded", "failed", "joined")


@dataclass(frozen=True, kw_only=True)
class Ask:
    """A rotation request as it arrives (API, annotation, failed health check)."""

    reason: str
    emergency: bool = False
    leaked_key_id: str | None = None
    principal: str = "rotator"
    idempotency_key: str = ""
    fingerprint: str = ""


class Worker:
    """One credential's queue: ticks, heals and rotation requests, coalesced, handled one at a time.

    Accepted requests live in the credential's request book (``journal.RequestBook`` in the state store),
    written before the caller is answered; the in-memory queue holds only their ids, and is rebuilt from
    the book at start and whenever this replica becomes the leader.
    """

    def __init__(self, name: str, daemon: Daemon) -> None:
        self.name = name
        self.daemon = daemon
        self.cond = threading.Condition()
        self.tick_due = True
        self.health_due = False
        self.recover_due = True
        self.recovered = False  # the queue was rebuilt from the stored book
        self.heals: dict[str, TargetRef] = {}
        self.tickets: collections.deque[str] = collections.deque()  # ids of own, queued requests
        self.running: str | None = None
        self.book: RequestBook | None = None  # this credential's request book, as last saved
        self.failing: dict[str, Any] | None = None  # the current streak of passes that could not run
        self.heartbeat = time.monotonic()
        self.retired = False  # no longer managed (its RegistryCredential was deleted): the loop ends
        self.replan_to: CredentialSettings | None = None  # a changed spec, swapped in between passes
        self.decommissioned = False  # revoke its keys through the grace path, rotate nothing more
        self.thread = threading.Thread(target=self._loop, name=f"worker-{name}", daemon=True)

    # -- submitting work ----------------------------------------------------------------------
    def tick(self) -> None:
        with self.cond:
            self.tick_due = True
            self.cond.notify()

    def health(self) -> None:
        with self.cond:
            self.health_due = True
            self.cond.notify()

    def heal(self, target: TargetRef) -> None:
        with self.cond:
            self.heals[target.key] = target
            self.cond.notify()

    def replan(self, cred: CredentialSettings) -> None:
        """Manage ``cred`` (a changed spec) from the next pass on; the pass in progress finishes on the old one."""
        with self.cond:
            self.replan_to = cred
            self.cond.notify()

    def decommission(self) -> None:
        """From the next pass on: no rotation, no heal; the current key is retired and every retired key
        disabled after its grace and deleted after delete_after (``policy.decommission``)."""
        with self.cond:
            self.decommissioned = True
            self.tick_due = True
            self.cond.notify()

    def retire(self) -> None:
        """Stop after the step in progress; the credential's keys and secrets stay as they are."""
        with self.cond:
            self.retired = True
            self.cond.notify()

    def recover(self) -> None:
        """Rebuild the queue from the stored book (start-up, or this replica just became the leader)."""
        with self.cond:
            self.recover_due = True
            self.cond.notify()

    def request(self, ask: Ask) -> tuple[str, bool]:
        """Record a request in the book, then queue it or join the rotation it belongs with (see
        docs/runbooks.md, "Rotation requests"): (rotation id, joined). Nothing is answered before the
        record is stored, so an answered request survives a crash."""
        now = dt.datetime.now(dt.UTC)
        with self.cond:
            book = self._book()
            if ask.idempotency_key:
                ttl = self.daemon.settings.server.idempotency_ttl
                for old in reversed(book.requests):
                    if (old.principal, old.idempotency_key) == (ask.principal, ask.idempotency_key) and (
                        now - old.requested_at < ttl
                    ):
                        if old.fingerprint != ask.fingerprint:
                            raise RequestRefused("this Idempotency-Key was used with a different request")
                        return old.id, True
            journal = self.daemon.app.store.load(self.name)
            if ask.leaked_key_id is not None and ask.leaked_key_id not in journal.known_key_ids():
                raise RequestRefused(
                    f"key {ask.leaked_key_id!r} is not one of {self.name}'s keys (current, pending or retired); "
                    f"GET /v1/credentials shows them"
                )
            target = self._joinable(ask, journal)
            record = Accepted(
                id=target or new_rotation_id(now),
                kind="leaked" if ask.leaked_key_id else "rotate",
                reason=ask.reason,
                principal=ask.principal,
                requested_at=now,
                emergency=ask.emergency,
                leaked_key_id=ask.leaked_key_id,
                idempotency_key=ask.idempotency_key,
                fingerprint=ask.fingerprint,
                joined=target is not None,
                state="joined" if target else "queued",
                detail=f"joined rotation {target}" if target else "",
            )
            leaks = book.leaks
            if ask.leaked_key_id and ask.leaked_key_id not in book.leaked_key_ids():
                leaks += (Leak(key_id=ask.leaked_key_id, reported_at=now, by=ask.principal, request_id=record.id),)
            requests = book.requests
            if target is not None and ask.emergency:  # a queued rotation joined by an emergency becomes one
                requests = tuple(
                    replace(r, emergency=True, leaked_key_id=r.leaked_key_id or ask.leaked_key_id)
                    if r.id == target and not r.joined and r.state == "queued"
                    else r
                    for r in requests
                )
            self._save(RequestBook(requests=(*requests, record), leaks=leaks))
            boundary("request:recorded")
            if target is None:
                self.tickets.append(record.id)
                self.cond.notify()
            return record.id, target is not None

    def _joinable(self, ask: Ask, journal: CredentialJournal) -> str | None:
        """The rotation this request joins, if any: one queued, running, or in flight in the journal (any
        phase, waiting included), except that a leak of the key that rotation is rolling out needs one after it."""
        rotation = journal.rotation
        if self.tickets:
            return self.tickets[-1]
        rolling_out = rotation is not None and rotation.new_key is not None and rotation.new_key.id == ask.leaked_key_id
        if rotation is not None and not rolling_out:
            return rotation.id
        return self.running if not rolling_out else None

    # -- the request book ---------------------------------------------------------------------------
    def _book(self) -> RequestBook:
        if self.book is None:
            self.book = self.daemon.app.store.load_requests(self.name)
        return self.book

    def _save(self, book: RequestBook) -> None:
        """Store the book (finished records beyond the newest kept are dropped), then keep it in memory."""
        done = [r for r in book.requests if r.state in FINISHED]
        drop = {id(r) for r in done[: max(0, len(done) - REQUESTS_KEPT)]}
        book = replace(
            book, requests=tuple(r for r in book.requests if id(r) not in drop), leaks=book.leaks[-LEAKS_KEPT:]
        )
        self.daemon.app.store.save_requests(self.name, book)
        self.book = book

    def _update(self, request_id: str, **changes: Any) -> None:
        with self.cond:
            book = self._book()
            requests = tuple(replace(r, **changes) if r.id == request_id and not r.joined else r for r in book.requests)
            self._save(replace(book, requests=requests))

    def _record(self, request_id: str) -> Accepted | None:
        return next((r for r in self._book().requests if r.id == request_id and not r.joined), None)

    def _recover(self) -> None:
        with self.cond:
            self.recovered, self.book = False, None
            book = self._book()
            queued = [r.id for r in book.requests if not r.joined and r.state in ("queued", "running")]
            self.tickets = collections.deque(queued)
            self.recovered = True
            self.tick_due = True  # a tick taken to retry recovering still owes its pass
        self._settle()

    def _settle(self) -> None:
        """Records still running or waiting take the result the journal holds for their rotation (a waiting
        rotation is finished by later passes, not by the request that started it)."""
        journal = self.daemon.app.store.load(self.name)
        results = {r.rotation_id: r for r in journal.history}
        with self.cond:
            book = self._book()
            changed = False
            requests = []
            for r in book.requests:
                result = results.get(r.id)
                own_open = not r.joined and r.state in ("running", "waiting") and r.id != self.running
                # A joined record keeps its rotation's outcome too: a rotation no request started (a scheduled
                # one, a health check's) has no other record, and the journal's history is bounded.
                joined_open = r.joined and r.finished_at is None
                if result is not None and (own_open or joined_open):
                    r = replace(r, state=result.result, detail=result.detail, finished_at=result.finished_at)
                    changed = True
                requests.append(r)
            if changed:
                self._save(replace(book, requests=tuple(requests)))

    # -- the loop -------------------------------------------------------------------------------
    def _take(self) -> tuple[str, Any]:
        with self.cond:
            while not self.daemon.stopping.is_set() and not self.retired:
                self.heartbeat = time.monotonic()
                if self.replan_to is not None:
                    cred, self.replan_to = self.replan_to, None
                    return "replan", cred
                if self.daemon.may_act():
                    if self.recover_due:
                        self.recover_due = False
                        return "recover", None
                    if self.tickets:
                        boundary("request:before-start")
                        self.running = self.tickets.popleft()
                        return "rotate", self.running
                    if self.heals:
                        heals, self.heals = list(self.heals.values()), {}
                        return "heal", heals
                    if self.health_due:
                        self.health_due = False
                        return "health", None
                    if self.tick_due:
                        self.tick_due = False
                        # The book could not be read when recovering (store down): again, on this retry tick.
                        return ("tick" if self.recovered else "recover"), None
                else:
                    self.heals.clear()  # the leader heals; a follower forgets
                self.cond.wait(timeout=1.0)
        return "stop", None

    def _loop(self) -> None:
        while True:
            kind, item = self._take()
            if kind == "stop":
                if self.retired:
                    self.daemon.forget(self.name)
                return
            try:
                self._handle(kind, item)
            except RotatorError as exc:
                retry_in = self._retry_later(exc)
                log.error(
                    "worker.failed",
                    credential=self.name,
                    work=kind,
                    reason=pass_error_reason(exc),
                    error=str(exc),
                    retry_in=retry_in,
                )
            except Exception as exc:  # the daemon never dies of one failed pass
                retry_in = self._retry_later(exc)
                log.exception("worker.crashed", credential=self.name, work=kind, error=type(exc).__name__)
            else:
                if kind in ("rotate", "tick"):
                    self.failing = None
                    self.daemon.metrics.last_pass.labels(self.name).set_to_current_time()
            finally:
                self.daemon.observe(self.name)
                try:
                    self._settle()
                except Exception as exc:  # the store is down: records settle after a later pass
                    log.warning("requests.settle_failed", credential=self.name, error=type(exc).__name__)

    def _retry_later(self, exc: BaseException) -> float:
        """A pass that raised scheduled nothing after it: without this tick the credential would wait for
        the next cluster event or request. The wait doubles with each failure in a row (the credential's
        retry_backoff .. retry_backoff_max), so a revoked admin key is not hammered."""
        now = dt.datetime.now(dt.UTC)
        streak = self.failing or {"since": now.isoformat(timespec="seconds"), "failures_in_a_row": 0}
        failures = streak["failures_in_a_row"] + 1
        reason = pass_error_reason(exc)
        self.daemon.metrics.pass_errors.labels(self.name, reason).inc()
        delay = backoff(failures, self.daemon.app.policy(self.daemon.settings.credential(self.name)))
        self.daemon.schedule_tick(self.name, now + delay, keep_earlier=True)
        # What the status API shows until a pass runs to its end again (errors are scrubbed of secrets).
        self.failing = {
            "since": streak["since"],
            "failures_in_a_row": failures,
            "reason": reason,
            "detail": str(exc) if isinstance(exc, RotatorError) else type(exc).__name__,
            "next_retry_at": (now + delay).isoformat(timespec="seconds"),
        }
        return delay.total_seconds()

    def _handle(self, kind: str, item: Any) -> None:
        if kind == "replan":
            self.daemon.swap_credential(item)
            return
        reconciler = self.daemon.app.reconciler(self.name)
        if self.decommissioned and not reconciler.policy.decommission:  # also a reconciler rebuilt since
            reconciler.policy = replace(reconciler.policy, decommission=True)
        if kind == "recover":
            self._recover()
        elif kind == "rotate":
            self._serve(reconciler, item)
        elif kind == "heal":
            reconciler.heal(item)
        elif kind == "health":
            result = reconciler.check_current()
            if result is not None and result.outcome == "rejected":
                log.error("health.key_rejected", credential=self.name, detail=result.detail)
                self.request(Ask(reason=f"current key rejected by the registry: {result.detail}", emergency=True))
        elif kind == "tick":
            outcome = reconciler.run(None, should_continue=self.daemon.may_act)
            self._schedule_after(outcome.next_at, now=outcome.result in ("succeeded", "failed"))

    def _serve(self, reconciler: Reconciler, request_id: str) -> None:
        """Run one queued request. Its record always ends describing its own rotation: the result, waiting
        (later passes finish it), joined (a rotation that started in between was still in progress), or
        queued again (stopped: whoever acts next serves it)."""
        try:
            with self.cond:
                record = self._record(request_id)
            if record is None:
                return
            self._update(request_id, state="running")
            # A leak of a key already retired needs no rotation: the pass disables it.
            retired_leak = bool(record.leaked_key_id) and record.leaked_key_id in {
                r.key_id for r in self.daemon.app.store.load(self.name).retired
            }
            request = Request(
                reason=record.reason,
                emergency=record.emergency,
                leaked_key_id=record.leaked_key_id,
                rotation_id=record.id,
            )
            ask = None if retired_leak else request
            outcome = reconciler.run(ask, should_continue=self.daemon.may_act)
            if outcome.rotation_id not in (None, record.id) and outcome.result in ("succeeded", "failed"):
                outcome = reconciler.run(ask, should_continue=self.daemon.may_act)  # one left in flight: now ours
            if outcome.result == "stopped":
                changes: dict[str, Any] = {"state": "queued"}
            elif outcome.rotation_id == record.id:
                changes = {"state": "waiting" if outcome.result == "inconclusive" else outcome.result}
                changes["detail"] = outcome.detail
            elif outcome.rotation_id is not None:
                changes = {"state": "joined", "detail": f"joined rotation {outcome.rotation_id} (still in progress)"}
            else:
                changes = {"state": "succeeded", "detail": f"key {record.leaked_key_id} was already retired"}
            if changes["state"] in FINISHED:
                changes["finished_at"] = dt.datetime.now(dt.UTC)
            self._update(request_id, **changes)
            # A finished rotation leaves revocations due later: the next pass right away computes when.
            self._schedule_after(outcome.next_at, now=outcome.result in ("succeeded", "failed"))
        except Exception as exc:  # the pass could not run: the request failed, and says why
            with contextlib.suppress(RotatorError):  # the store down too: the record stays, recovered later
                journal = self.daemon.app.store.load(self.name)
                if journal.rotation is not None and journal.rotation.id == request_id:
                    self._update(request_id, state="waiting")  # started: later passes finish it
                else:
                    detail = str(exc) if isinstance(exc, RotatorError) else type(exc).__name__
                    self._update(request_id, state="failed", detail=detail, finished_at=dt.datetime.now(dt.UTC))
            raise
        finally:
            with self.cond:
                self.running = None

    def _schedule_after(self, next_at: dt.datetime | None, *, now: bool = False) -> None:
        settings = self.daemon.app.settings
        current = dt.datetime.now(dt.UTC)
        if now:
            self.daemon.schedule_tick(self.name, current + dt.timedelta(milliseconds=200))
            return
        at = current + settings.daemon.resync
        if next_at is not None:
            jitter = settings.credential(self.name).schedule.jitter.total_seconds() * random.random()
            at = min(at, next_at + dt.timedelta(seconds=jitter))
        self.daemon.schedule_tick(self.name, max(at, current + dt.timedelta(milliseconds=200)))


class Daemon:
    """Owns the workers, the scheduler, the watches, leader election and the HTTP API."""

    def __init__(self, app: App, *, registry: CollectorRegistry | None = None, identity: str | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.metrics = app.metrics or Metrics(self.registry)
        self.app = app
        self.identity = identity or os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        self.stopping = threading.Event()
        self.scheduler = BackgroundScheduler(timezone=dt.UTC, job_defaults={"coalesce": True, "max_instances": 1})
        # Replaced, never changed in place, when a credential comes or goes (RegistryCredential resources):
        # a thread iterating the old dict is not disturbed.
        self.workers = {c.name: Worker(c.name, self) for c in self.settings.credentials}
        self._changing = threading.Lock()  # one credential added, swapped or removed at a time
        self._started = False
        self.controller: Any = None  # RegistryCredential controller (credentials_from: cluster | both)
        if self.settings.credentials_from != "file":
            from rotator.regcred_controller import Controller

            self.controller = Controller(self)
            inner = app.on_event  # the reconcilers (built later) report to both

            def on_event(name: str, fields: dict[str, Any]) -> None:
                if inner is not None:
                    inner(name, fields)
                self.controller.on_app_event(name, fields)

            app.on_event = on_event
        self.elector: Any = None
        self.watches: list[ResourceWatch] = []
        self.server: Any = None
        # Kubernetes sinks by cluster ("" for the top-level connection): (credential, sink) pairs.
        self._kube: dict[str, list[tuple[str, KubernetesSink]]] | None = None
        # By (cluster, secret name): what each cluster's secret watch keeps current for the sinks' writes.
        self._seen: dict[tuple[str, str], SeenSecrets] = {}
        self._accounts: dict[str, set[str]] = {}  # by cluster: the service accounts watched
        self._namespaces_watched: set[str] = set()  # clusters whose namespaces are watched
        self._store_ok = (0.0, False)
        self._prepared: tuple[Any, socket.socket] | None = None  # (authenticator, bound listener)

    @property
    def settings(self) -> Settings:
        """The settings in force: the credentials among them change with RegistryCredential resources."""
        return self.app.settings

    # -- credentials that come and go --------------------------------------------------------------
    def add_credential(self, cred: CredentialSettings) -> None:
        """Manage ``cred`` from now on: its worker, metrics, health checks and watches, as if configured."""
        with self._changing:
            if cred.name in self.workers:
                raise RequestRefused(f"a credential named {cred.name!r} is already managed")
            self.app.settings = replace(self.settings, credentials=(*self.settings.credentials, cred))
            worker = Worker(cred.name, self)
            self.workers = {**self.workers, cred.name: worker}
            self.app.forget(cred.name)  # a credential of this name managed before, or none: built afresh
            if self._started and not self.stopping.is_set():
                self._init_credential(cred)
                worker.thread.start()
                self._schedule_health(cred)
                self._kube = None
                if self.settings.daemon.watch:
                    self._start_watches()
        log.info("credential.added", credential=cred.name)

    def swap_credential(self, cred: CredentialSettings) -> None:
        """Manage ``cred`` instead of the credential of its name (on that credential's worker thread, between
        passes): its reconciler is rebuilt from the new settings and a pass re-plans at once."""
        with self._changing:
            if cred.name not in self.workers:
                return
            self.app.settings = replace(
                self.settings, credentials=tuple(cred if c.name == cred.name else c for c in self.settings.credentials)
            )
            self.app.forget(cred.name)
            self._init_credential(cred)
            self._schedule_health(cred)
            self._kube = None
            if self.settings.daemon.watch:
                self._start_watches()
        log.info("credential.replanned", credential=cred.name)
        self.workers[cred.name].tick()

    def remove_credential(self, name: str) -> None:
        """Stop managing ``name`` after the step in progress; its keys and secrets are left as they are."""
        with self._changing:
            worker = self.workers.get(name)
            if worker is None:
                return
            self.workers = {n: w for n, w in self.workers.items() if n != name}
            self.app.settings = replace(
                self.settings, credentials=tuple(c for c in self.settings.credentials if c.name != name)
            )
            self._kube = None
            for job in (f"tick-{name}", f"health-{name}"):
                with contextlib.suppress(Exception):  # not scheduled (yet)
                    self.scheduler.remove_job(job)
            worker.retire()
            if worker.thread.ident is None:
                self.forget(name)
        log.info("credential.removed", credential=name)

    def forget(self, name: str) -> None:
        """A removed credential's worker is done: its reconciler's pools closed, its metrics series gone
        (unless a credential of the same name was added meanwhile)."""
        if name not in self.workers:
            self.app.forget(name)
            self.metrics.drop_credential(name)

    def _init_credential(self, cred: CredentialSettings) -> None:
        self.metrics.init_credential(cred.name, cred.registry.server)
        # The single cluster of the top-level connection is cluster "" (its series carry no cluster label).
        clusters = tuple(t.cluster.name if t.cluster else "" for t in cred.kubernetes_targets)
        self.metrics.init_clusters(cred.name, clusters)
        # Built here, once, before the threads that share them: App builds lazily and without a lock,
        # so a worker and the watches racing for it made two (and an event thread nobody stopped).
        self.app.reconciler(cred.name)

    def _schedule_health(self, cred: CredentialSettings) -> None:
        check = cred.schedule.health_check
        if check is not None and check.total_seconds() > 0:
            self.scheduler.add_job(
                self.workers[cred.name].health,
                "interval",
                seconds=check.total_seconds(),
                id=f"health-{cred.name}",
                replace_existing=True,
            )

    # -- DaemonControl --------------------------------------------------------------------------
    def alive(self) -> bool:
        stale = [w for w in self.workers.values() if time.monotonic() - w.heartbeat > 600 and w.running is None]
        return not self.stopping.is_set() and self.scheduler.running and not stale

    def readiness(self) -> dict[str, bool]:
        checked_at, ok = self._store_ok
        if time.monotonic() - checked_at > 10:
            try:
                self.app.store.check()
                ok = True
            except Exception:
                ok = False
            self._store_ok = (time.monotonic(), ok)
        return {
            "config_loaded": True,
            "state_store": ok,
            "leadership_known": self.elector is None or self.elector.known.is_set(),
        }

    def leader(self) -> tuple[bool, str | None]:
        if self.elector is None:
            return True, self.identity
        return self.elector.is_leader, self.elector.holder

    def credentials(self) -> list[dict[str, Any]]:
        now = dt.datetime.now(dt.UTC)
        workers = self.workers
        return [
            {**self.app.status(c.name, now), "passes_failing": workers[c.name].failing}
            for c in self.settings.credentials
            if c.name in workers
        ]

    def request_rotation(
        self,
        name: str,
        *,
        reason: str,
        emergency: bool = False,
        leaked_key_id: str | None = None,
        principal: str = "rotator",
        idempotency_key: str = "",
        fingerprint: str = "",
    ) -> tuple[str, bool]:
        worker = self.workers.get(name)
        if worker is None:
            raise NotFoundError(f"no credential named {name!r}")
        ask = Ask(
            reason=reason,
            emergency=emergency,
            leaked_key_id=leaked_key_id,
            principal=principal,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
        )
        rotation_id, joined = worker.request(ask)
        log.info("rotation.requested", credential=name, rotation_id=rotation_id, joined=joined, emergency=emergency)
        return rotation_id, joined

    def rotation(self, rotation_id: str) -> dict[str, Any] | None:
        """The request's own record when one started it, the journal for its live phase and result."""
        for name in list(self.workers):
            book = self.app.store.load_requests(name)
            records = [r for r in book.requests if r.id == rotation_id]
            record = next((r for r in records if not r.joined), None)
            journal = self.app.store.load(name)
            out = rotation_view(rotation_id, name, record, journal)
            if out is None and records:  # past the journal's history: a request that joined it kept the outcome
                record = records[-1]
                out = rotation_view(rotation_id, name, record, journal)
            if out is not None:
                if record is not None and record.leaked_key_id:
                    out["leaks"] = [leak_progress(x, journal) for x in book.leaks if x.request_id == rotation_id]
                return out
        return None

    # -- internals ------------------------------------------------------------------------------
    def may_act(self) -> bool:
        return not self.stopping.is_set() and (self.elector is None or self.elector.is_leader)

    def observe(self, name: str) -> None:
        """After each pass: the credential's metrics, and its RegistryCredential's status (if it has one)."""
        if self.controller is not None:
            self.controller.touch(name)
        try:
            cred = self.settings.credential(name)
            self.metrics.observe_journal(name, self.app.store.load(name), self.app.policy(cred))
        except Exception as exc:
            log.warning("metrics.observe_failed", credential=name, error=type(exc).__name__)

    def schedule_tick(self, name: str, at: dt.datetime, *, keep_earlier: bool = False) -> None:
        """The credential's next pass at ``at`` (one pending tick per credential); ``keep_earlier`` leaves a
        tick that is already due sooner in place (a retry must not postpone a revocation that is due)."""
        worker = self.workers.get(name)
        if self.stopping.is_set() or worker is None:
            return
        if keep_earlier:
            pending = self.scheduler.get_job(f"tick-{name}")
            if pending is not None and pending.next_run_time is not None and pending.next_run_time <= at:
                return
        self.scheduler.add_job(worker.tick, "date", run_date=at, id=f"tick-{name}", replace_existing=True)

    def _on_leadership(self, leading: bool) -> None:
        self.metrics.leader.set(1 if leading else 0)
        if leading:  # a new leader resumes whatever the journal and the request book hold
            for worker in self.workers.values():
                worker.recover()
                worker.tick()
            if self.controller is not None:
                self.controller.resync()

    def _on_event(self, resource: str, event: str, obj: dict[str, Any], cluster: str = "") -> None:
        if resource == "secrets":
            self._remember(event, obj, cluster)
        sinks = self._kube_sinks().get(cluster, [])
        if resource != "namespaces" and any(s.is_own_write(event, obj) for _, s in sinks):
            return  # our own write coming back
        for trigger in route(resource, event, obj, [Selection(n, s.matches, s.target_for) for n, s in sinks]):
            self._dispatch(trigger)

    def _remember(self, event: str, obj: dict[str, Any], cluster: str = "") -> None:
        meta = obj.get("metadata") or {}
        seen = self._seen.get((cluster, str(meta.get("name", ""))))
        if seen is None:
            return
        if event == "DELETED":
            seen.forget(str(meta.get("namespace", "")), str(meta.get("name", "")))
        else:
            seen.put(obj)

    def _dispatch(self, trigger: Trigger) -> None:
        worker = self.workers.get(trigger.credential)
        if worker is None:
            return  # no longer managed
        log.info(
            "event.routed",
            credential=trigger.credential,
            kind=trigger.kind,
            target=trigger.target.key,
            reason=trigger.reason,
        )
        if trigger.kind == "heal":
            worker.heal(trigger.target)
        elif trigger.kind == "rotate" and self.may_act():
            for credential, sink in (pair for pairs in self._kube_sinks().values() for pair in pairs):
                if credential == trigger.credential and sink.name == trigger.target.sink:
                    sink.clear_rotate_annotation(trigger.target)
            worker.request(Ask(reason=trigger.reason, principal="annotation"))

    def _kube_sinks(self) -> dict[str, list[tuple[str, KubernetesSink]]]:
        """Each cluster's Kubernetes sinks with their credentials (built once; every watch event consults
        them). A fleet has one per cluster and credential; the single-cluster form one per credential."""
        found = self._kube
        if found is None:  # built whole, then published: other threads read it meanwhile
            found = {}
            for cred in self.settings.credentials:
                for sink in self.app.reconciler(cred.name).sinks.values():
                    if isinstance(sink, KubernetesSink):
                        found.setdefault(sink.cluster, []).append((cred.name, sink))
            self._kube = found
        return found

    def _start_watches(self) -> None:
        """Every cluster has its own watches (own streams, resourceVersions and 410 recovery); called again
        when credentials come or go, it starts only the watches not running yet."""
        for cluster, sinks in self._kube_sinks().items():
            self._start_cluster_watches(cluster, [s for _, s in sinks])

    def _start_cluster_watches(self, cluster: str, sinks: list[KubernetesSink]) -> None:
        core: Any = sinks[0].core  # the cluster's own ApiClient
        # Secrets and service accounts are watched by name (one watch per distinct name), so the
        # ClusterRole can grant list/watch with resourceNames instead of on every Secret in the cluster.
        names = sorted({s.target.secret_name for s in sinks} - {n for c, n in self._seen if c == cluster})
        accounts = sorted({a for s in sinks for a in s.target.service_accounts} - self._accounts.get(cluster, set()))
        self._accounts.setdefault(cluster, set()).update(accounts)
        # Each secret watch keeps the secrets of its name in its cluster as last seen, for the sinks' writes.
        for name in names:
            self._seen[(cluster, name)] = SeenSecrets()
        for sink in sinks:
            sink.seen = self._seen[(cluster, sink.target.secret_name)]
        specs: list[tuple[str, Any, dict[str, Any], Any]] = []
        if cluster not in self._namespaces_watched:
            self._namespaces_watched.add(cluster)
            specs.append(("namespaces", core.list_namespace, {}, None))
        specs += [
            (
                "secrets",
                core.list_secret_for_all_namespaces,
                {"field_selector": f"metadata.name={n}", "label_selector": f"{MANAGED_LABEL}=rotator"},
                self._seen[(cluster, n)].reset,
            )
            for n in names
        ]
        specs += [
            (
                "serviceaccounts",
                core.list_service_account_for_all_namespaces,
                {"field_selector": f"metadata.name={a}"},
                None,
            )
            for a in accounts
        ]
        for resource, list_fn, kwargs, on_list in specs:
            watch = ResourceWatch(
                resource,
                list_fn,
                functools.partial(self._on_event, cluster=cluster),
                stop=self.stopping,
                kwargs=kwargs,
                on_relist=self._on_relist,
                on_list=on_list,
                timeout_s=max(1, int(self.settings.daemon.watch_timeout.total_seconds())),
            )
            watch.start()
            self.watches.append(watch)

    def _on_relist(self, resource: str) -> None:
        for worker in self.workers.values():  # events may have been missed: a full pass catches up
            worker.tick()

    def _start_election(self) -> None:
        from rotator.leader import LeaseElector

        d = self.settings.daemon
        self.elector = LeaseElector(
            self.app.kube,
            namespace=self.settings.kubernetes.namespace,
            name=d.lease_name,
            identity=self.identity,
            lease_duration=d.lease_duration.total_seconds(),
            renew_deadline=d.renew_deadline.total_seconds(),
            retry_period=d.retry_period.total_seconds(),
            on_change=self._on_leadership,
        )
        self.elector.start()

    def _start_server(self) -> None:
        assert self._prepared is not None
        authenticator, listener = self._prepared
        try:
            from rotator.server import start_server  # type: ignore[import-not-found,unused-ignore]
        except ImportError:  # the HTTP API is optional for the CLI-only build
            listener.close()
            return
        self.server = start_server(self, self.registry, self.settings, authenticator=authenticator, sock=listener)

    def prepare(self) -> None:
        """Load and check every input before any thread starts: the API token file, the listen socket
        (bound here), the Kubernetes config and API server, the state store. Raises ConfigError (exit 2)
        or another RotatorError (exit 1) with nothing started and nothing left open."""
        if self._prepared is not None:
            return
        listener: socket.socket | None = None
        try:
            authenticator = preflight.authenticator(self.app)
            listener = preflight.bind_listener(self.settings.server)
            preflight.check_tls(self.settings.server)
            if preflight.uses_kubernetes(self.settings):
                preflight.check_api_server(self.app)
            preflight.check_state(self.app)
        except BaseException:
            if listener is not None:
                listener.close()
            self.app.close()
            raise
        self._prepared = (authenticator, listener)

    def start(self) -> None:
        self.prepare()
        for cred in self.settings.credentials:
            self._init_credential(cred)
        self.scheduler.start()
        if self.settings.daemon.leader_election:
            self._start_election()
        else:
            self.metrics.leader.set(1)
        with self._changing:  # credentials added from now on start their own threads
            self._started = True
            for worker in self.workers.values():
                worker.thread.start()
            for cred in self.settings.credentials:
                self._schedule_health(cred)
            if self.settings.daemon.watch:
                self._start_watches()
        if self.controller is not None:
            self.controller.start()
        self._start_server()
        log.info(
            "daemon.started",
            identity=self.identity,
            credentials=list(self.workers),
            leader_election=self.settings.daemon.leader_election,
        )

    def stop(self) -> None:
        """Stop what ``start`` started (all of it, or the part it got to), each wait bounded."""
        log.info("daemon.stopping")
        self.stopping.set()
        if self.controller is not None:
            self.controller.stop()
        for worker in self.workers.values():
            with worker.cond:
                worker.cond.notify_all()
        deadline = time.monotonic() + self.settings.daemon.shutdown_grace.total_seconds()
        for worker in self.workers.values():
            if worker.thread.ident is not None:
                worker.thread.join(timeout=max(0.1, deadline - time.monotonic()))
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self.elector is not None:
            self.elector.stop(release=True)
        for watch in self.watches:
            watch.stop()  # shuts its stream's socket, so a read in progress returns now
        watches_deadline = time.monotonic() + WATCH_JOIN_S
        for watch in self.watches:
            watch.thread.join(timeout=max(0.1, watches_deadline - time.monotonic()))
        if self.server is not None:
            self.server.stop()
        elif self._prepared is not None:
            self._prepared[1].close()
        self.app.close()
        left = [t.name for t in threading.enumerate() if t.daemon and t.is_alive()]
        log.info("daemon.stopped", threads_left=left)

    def serve(self) -> int:
        """``rotator run``: check every input, start, run until SIGTERM or SIGINT, stop; 0 after a signal."""
        self.prepare()  # raises with nothing started
        stop = threading.Event()

        def on_signal(signum: int, _: Any) -> None:
            log.info("daemon.signal", signal=signal.Signals(signum).name)
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        try:
            self.start()
            stop.wait()
        finally:
            self.stop()
        return 0


def rotation_view(
    rotation_id: str, credential: str, record: Accepted | None, journal: CredentialJournal
) -> dict[str, Any] | None:
    """GET /v1/rotations/<id>: the request that started it (if any) and what the journal says of it."""
    out: dict[str, Any] = {"id": rotation_id, "credential": credential, "state": "queued", "detail": None}
    if record is not None:
        out.update(
            state=record.state,
            reason=record.reason,
            emergency=record.emergency,
            requested_by=record.principal,
            detail=record.detail or None,
            requested_at=record.requested_at.isoformat(timespec="seconds"),
            finished_at=record.finished_at.isoformat(timespec="seconds") if record.finished_at else None,
        )
    if journal.rotation is not None and journal.rotation.id == rotation_id:
        rotation = journal.rotation
        out.update(
            state="waiting" if rotation.waiting else "running",
            reason=rotation.reason,
            phase=rotation.phase,
            waiting=rotation.waiting or None,
            retry_at=rotation.retry_at.isoformat(timespec="seconds") if rotation.retry_at else None,
        )
        return out
    result = next((r for r in journal.history if r.rotation_id == rotation_id), None)
    if result is not None:
        out.update(
            state=result.result,
            reason=result.reason,
            detail=result.detail or None,
            finished_at=result.finished_at.isoformat(timespec="seconds"),
        )
        return out
    return out if record is not None else None
