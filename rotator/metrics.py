"""Prometheus metrics, all ``rotator_*``, created on a registry passed in.

Timestamps are exported as ``*_timestamp_seconds`` so that alerts are ``time() - x`` arithmetic.
Labels stay low-cardinality: credential, sink, cluster, registry, result, method, code, provider,
operation, reason. Never a namespace, a key id or a value. ``cluster`` is the fleet cluster's name on
per-target series ("" for the single cluster of the top-level ``kubernetes`` connection and Code Engine).
"""

from __future__ import annotations

import datetime as dt
import platform
from typing import Any, Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from rotator import __version__
from rotator.errors import LockedError, RotatorError, StateError, TransientError, UnauthorizedError
from rotator.journal import CredentialJournal
from rotator.policy import Policy, due, held_by_unreachable

# rotator_pass_errors_total's reason label: a fixed set, so every series exists at zero from the start.
PassErrorReason = Literal["unauthorized", "transient", "state", "permanent", "unexpected"]
PASS_ERROR_REASONS: tuple[str, ...] = get_args(PassErrorReason)

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def _ts(value: dt.datetime | None) -> float:
    return value.timestamp() if value else 0.0


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._clusters: dict[str, set[str]] = {}  # fleet clusters with series, per credential

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, labels, registry=registry)

        self.rotations = counter("rotator_rotations", "Rotations finished, by result.", ("credential", "result"))
        self.rotation_duration = Histogram(
            "rotator_rotation_duration_seconds",
            "Wall time of finished rotations, from start to promotion or rollback.",
            ("credential",),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.last_failure = gauge(
            "rotator_last_failure_timestamp_seconds", "When the last rotation failed (0: never).", ("credential",)
        )
        self.last_success = gauge(
            "rotator_last_success_timestamp_seconds", "When the last rotation succeeded.", ("credential",)
        )
        self.key_created = gauge(
            "rotator_key_created_timestamp_seconds", "Creation time of the current key.", ("credential",)
        )
        self.key_max_age = gauge("rotator_key_max_age_seconds", "Configured max_age of the key.", ("credential",))
        self.next_rotation = gauge(
            "rotator_next_rotation_timestamp_seconds", "When the next planned rotation is due.", ("credential",)
        )
        self.key_expiry = gauge(
            "rotator_key_expiry_timestamp_seconds",
            "Expiry of the current key (0: it does not expire).",
            ("credential",),
        )
        self.key_expiry_margin = gauge(
            "rotator_key_expiry_margin_seconds",
            "Alert when the current key is this close to its expiry (0: keys do not expire by config).",
            ("credential",),
        )
        self.rotation_in_progress = gauge(
            "rotator_rotation_in_progress", "1 while a rotation is in flight.", ("credential",)
        )
        self.rotation_waiting = gauge(
            "rotator_rotation_waiting",
            "1 while a rotation waits on an inconclusive verification (rate limit, registry down).",
            ("credential",),
        )
        self.revocations_pending = gauge(
            "rotator_revocations_pending", "Replaced keys not yet disabled or deleted.", ("credential",)
        )
        self.revocation_deadline = gauge(
            "rotator_revocation_deadline_timestamp_seconds",
            "Earliest deadline among pending revocations (0: none pending).",
            ("credential",),
        )
        self.secrets_managed = gauge(
            "rotator_secrets_managed", "Target secrets, by sink and cluster.", ("credential", "sink", "cluster")
        )
        self.secrets_out_of_sync = gauge(
            "rotator_secrets_out_of_sync",
            "Target secrets that do not hold the current key (or could not be written).",
            ("credential", "sink", "cluster"),
        )
        self.secret_writes = counter(
            "rotator_secret_writes", "Secret writes, by sink, cluster and result.", ("sink", "cluster", "result")
        )
        self.cluster_unreachable = gauge(
            "rotator_cluster_unreachable",
            "1 while a fleet cluster did not answer at the last try (its secrets lag; the old key stays enabled).",
            ("credential", "cluster"),
        )
        self.cluster_unreachable_since = gauge(
            "rotator_cluster_unreachable_since_timestamp_seconds",
            "Since when a fleet cluster has not answered (0: it answers).",
            ("credential", "cluster"),
        )
        self.cluster_holds_old_key = gauge(
            "rotator_cluster_holds_old_key",
            "1 while an unreachable cluster keeps a replaced key enabled (revocation waits for it).",
            ("credential", "cluster"),
        )
        self.verifications = counter(
            "rotator_verifications", "Pull checks, by result.", ("credential", "registry", "result")
        )
        self.verification_duration = Histogram(
            "rotator_verification_duration_seconds",
            "Wall time of pull checks.",
            ("credential", "registry"),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.registry_requests = counter(
            "rotator_registry_requests", "Requests sent to registries.", ("registry", "method", "code")
        )
        self.registry_rate_limited = counter(
            "rotator_registry_rate_limited", "HTTP 429 answers from registries.", ("registry",)
        )
        self.registry_quota_remaining = gauge(
            "rotator_registry_quota_remaining",
            "Pulls left in the registry's window, where it reports one.",
            ("registry",),
        )
        self.registry_quota_limit = gauge(
            "rotator_registry_quota_limit", "Pull limit of the registry's window, where it reports one.", ("registry",)
        )
        self.provider_requests = counter(
            "rotator_provider_requests", "Requests to credential providers.", ("provider", "operation", "code")
        )
        self.pass_errors = counter(
            "rotator_pass_errors",
            "Passes (rotations, reconciles, heals, health checks) that could not run, by reason; each is retried "
            "with backoff.",
            ("credential", "reason"),
        )
        self.last_pass = gauge(
            "rotator_last_pass_success_timestamp_seconds",
            "When a reconcile or rotation pass last ran to its end (start-up time until the first one).",
            ("credential",),
        )
        self.retries = counter("rotator_retries", "Retried transient failures, by operation.", ("operation",))
        self.revocations = counter("rotator_revocations", "Keys disabled or deleted.", ("credential", "step"))
        self.heals = counter(
            "rotator_secret_heals", "Targets put back to the current key, by cluster.", ("credential", "cluster")
        )
        self.leader = gauge("rotator_leader", "1 when this replica is the leader.")
        self.build_info = gauge("rotator_build_info", "Build information.", ("version", "python"))
        self.build_info.labels(__version__, platform.python_version()).set(1)

    def init_credential(self, credential: str, registry: str) -> None:
        """Create the result series at zero, so the first failure is an increase alerts can see."""
        for result in ("succeeded", "failed"):
            self.rotations.labels(credential, result)
        for result in ("ok", "rejected", "inconclusive"):
            self.verifications.labels(credential, registry, result)
        for reason in PASS_ERROR_REASONS:
            self.pass_errors.labels(credential, reason)
        self.last_pass.labels(credential).set_to_current_time()

    def drop_credential(self, credential: str) -> None:
        """Remove every series of a credential no longer managed (its RegistryCredential was deleted), so
        no alert fires on a credential that is gone."""
        self._clusters.pop(credential, None)
        for metric in vars(self).values():
            names = getattr(metric, "_labelnames", ())
            if "credential" not in names:
                continue
            series = {
                tuple(sample.labels[n] for n in names)
                for family in metric.collect()
                for sample in family.samples
                if sample.labels.get("credential") == credential
            }
            for labels in series:
                metric.remove(*labels)

    # -- hooks the adapters and the reconciler call -----------------------------------------------
    def on_event(self, name: str, fields: dict[str, Any]) -> None:
        credential = str(fields.get("credential", ""))
        if name == "rotation.finished":
            self.rotations.labels(credential, fields["result"]).inc()
            self.rotation_duration.labels(credential).observe(float(fields.get("seconds", 0.0)))
        elif name == "verification":
            registry = str(fields.get("registry", ""))
            self.verifications.labels(credential, registry, fields["result"]).inc()
            self.verification_duration.labels(credential, registry).observe(float(fields.get("seconds", 0.0)))
            quota = fields.get("quota")
            if quota is not None:
                if getattr(quota, "remaining", None) is not None:
                    self.registry_quota_remaining.labels(registry).set(quota.remaining)
                if getattr(quota, "limit", None) is not None:
                    self.registry_quota_limit.labels(registry).set(quota.limit)
        elif name == "targets.observed":
            for name, (managed, out_of_sync) in fields["sinks"].items():
                sink, cluster = sink_and_cluster(name)
                self.secrets_managed.labels(credential, sink, cluster).set(managed)
                self.secrets_out_of_sync.labels(credential, sink, cluster).set(out_of_sync)
        elif name == "key.revoked":
            self.revocations.labels(credential, fields["step"]).inc()
        elif name == "secret.healed":  # target: <sink>[@<cluster>]:<namespace>/<name>
            self.heals.labels(credential, sink_and_cluster(str(fields.get("target", "")).split(":", 1)[0])[1]).inc()

    def secret_write(self, sink: str, result: str) -> None:
        self.secret_writes.labels(*sink_and_cluster(sink), result).inc()

    def init_clusters(self, credential: str, clusters: tuple[str, ...]) -> None:
        """Every fleet cluster's series at zero from the start (an alert compares against them)."""
        self._clusters.setdefault(credential, set()).update(clusters)
        for cluster in clusters:
            self.cluster_unreachable.labels(credential, cluster).set(0)
            self.cluster_unreachable_since.labels(credential, cluster).set(0)
            self.cluster_holds_old_key.labels(credential, cluster).set(0)

    def registry_request(self, registry: str, method: str, status: str) -> None:
        self.registry_requests.labels(registry, method, status).inc()
        if status == "429":
            self.registry_rate_limited.labels(registry).inc()

    def provider_request(self, provider: str) -> Any:
        def hook(operation: str, method: str, status: int) -> None:
            self.provider_requests.labels(provider, operation, str(status) if status else "error").inc()

        return hook

    def retry(self, operation: str, attempt: int, wait: float, error: BaseException) -> None:
        self.retries.labels(operation).inc()

    def observe_journal(self, credential: str, journal: CredentialJournal, policy: Policy) -> None:
        """Gauges derived from the journal, refreshed after every pass."""
        current = journal.current
        self.key_created.labels(credential).set(_ts(current.created_at) if current else 0)
        self.key_expiry.labels(credential).set(_ts(current.expires_at) if current else 0)
        self.key_max_age.labels(credential).set(policy.max_age.total_seconds())
        margin = policy.expiry_margin
        self.key_expiry_margin.labels(credential).set(margin.total_seconds() if margin else 0)
        due_at, _ = due(journal, policy)
        if journal.backoff_until and (due_at is None or journal.backoff_until > due_at):
            due_at = journal.backoff_until
        self.next_rotation.labels(credential).set(_ts(due_at) if due_at else dt.datetime.now(dt.UTC).timestamp())
        self.last_success.labels(credential).set(_ts(journal.last_success_at))
        failures = [r.finished_at for r in journal.history if r.result == "failed"]
        self.last_failure.labels(credential).set(_ts(max(failures)) if failures else 0)
        rotation = journal.rotation
        self.rotation_in_progress.labels(credential).set(1 if rotation else 0)
        self.rotation_waiting.labels(credential).set(1 if rotation and rotation.waiting else 0)
        self.revocations_pending.labels(credential).set(len(journal.retired))
        deadlines = [r.delete_at if r.disabled_at else r.disable_at for r in journal.retired]
        known = [d for d in deadlines if d is not None]
        self.revocation_deadline.labels(credential).set(_ts(min(known)) if known else 0)
        now = dt.datetime.now(dt.UTC)
        holding = held_by_unreachable(journal, policy, now) and any(r.disabled_at is None for r in journal.retired)
        lagging = {lag.cluster: lag for lag in journal.lagging}
        seen = self._clusters.setdefault(credential, set())
        seen |= set(lagging)  # a cluster that answers again goes back to 0, not away
        for cluster in seen:
            lag = lagging.get(cluster)
            self.cluster_unreachable.labels(credential, cluster).set(1 if lag else 0)
            self.cluster_unreachable_since.labels(credential, cluster).set(_ts(lag.since) if lag else 0)
            self.cluster_holds_old_key.labels(credential, cluster).set(1 if lag and holding else 0)


def sink_and_cluster(name: str) -> tuple[str, str]:
    """A sink's name as metric labels: ``kubernetes@prod-eu`` is sink kubernetes, cluster prod-eu."""
    sink, _, cluster = name.partition("@")
    return sink, cluster


def pass_error_reason(exc: BaseException) -> str:
    """The ``reason`` label for an exception that ended a pass."""
    if isinstance(exc, UnauthorizedError):
        return "unauthorized"  # the provider refused rotator's own key
    if isinstance(exc, TransientError):
        return "transient"  # an API kept failing past its retries
    if isinstance(exc, StateError | LockedError):
        return "state"
    return "permanent" if isinstance(exc, RotatorError) else "unexpected"
