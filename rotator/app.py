"""Composition root: builds clients, adapters and reconcilers from settings. No decisions here."""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from rotator.adapters.codeengine import CodeEngineSink
from rotator.adapters.dockerhub import DockerHubProvider
from rotator.adapters.iam import IamProvider, IamTokenSource, ProfileGrant
from rotator.adapters.kubernetes import KubernetesSink, api_client
from rotator.adapters.kubernetes_events import EventRecorder
from rotator.adapters.registry import RegistryVerifier
from rotator.adapters.state import ConfigMapStateStore, FileStateStore
from rotator.errors import ConfigError
from rotator.imageref import registry_for_server
from rotator.livesecret import LiveSecret
from rotator.metrics import Metrics
from rotator.policy import Policy
from rotator.ports import Clock, StateStore
from rotator.reconcile import EventHook, Reconciler
from rotator.retrying import RetryPolicy
from rotator.settings import (
    ClusterConnection,
    CredentialSettings,
    DockerHubProviderSettings,
    IamAuth,
    IamProviderSettings,
    KubernetesSettings,
    Settings,
    TrustedProfileSource,
)
from rotator.status import credential_status

# Tries per call to a fleet cluster inside a step (the retry policy's default is 5): see App.sinks.
FLEET_RETRY_ATTEMPTS = 2


@dataclass
class App:
    settings: Settings
    clock: Clock | None = None
    on_event: EventHook | None = None
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=httpx.Timeout(15.0, connect=5.0)))
    _kube: Any = None
    _store: StateStore | None = None
    _reconcilers: dict[str, Reconciler] = field(default_factory=dict)
    _reconcilers_lock: threading.Lock = field(default_factory=threading.Lock)
    _providers: dict[str, IamProvider | DockerHubProvider] = field(default_factory=dict)
    _verifier: RegistryVerifier | None = None
    _events: EventRecorder | None = None
    # Fleet clusters: one ApiClient (and connection pool) and one Event recorder per cluster connection,
    # shared by every credential that writes there.
    _clusters: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    _cluster_events: dict[tuple[Any, ...], EventRecorder] = field(default_factory=dict)
    hooks: dict[str, Callable[..., None]] = field(default_factory=dict)
    metrics: Metrics | None = None

    def __post_init__(self) -> None:
        if self.metrics is not None:
            m = self.metrics
            self.hooks.setdefault("write", m.secret_write)
            self.hooks.setdefault("registry_request", m.registry_request)
            self.hooks.setdefault("provider_request", m.provider_request("ibm-iam"))
            self.hooks.setdefault("retry", m.retry)
            user_hook = self.on_event

            def on_event(name: str, fields: dict[str, Any]) -> None:
                m.on_event(name, fields)
                if user_hook is not None:
                    user_hook(name, fields)

            self.on_event = on_event

    @property
    def kube(self) -> Any:
        if self._kube is None:
            self._kube = api_client(self.settings.kubernetes)
        return self._kube

    @property
    def store(self) -> StateStore:
        if self._store is None:
            state = self.settings.state
            if state.kind == "configmap":
                from rotator.kubecore import CoreV1

                core = CoreV1(self.kube)
                self._store = ConfigMapStateStore(core, self.settings.kubernetes.namespace, state.name)
            else:
                self._store = FileStateStore(state.path)
        return self._store

    @property
    def event_recorder(self) -> EventRecorder | None:
        """Kubernetes Events on written secrets (``kubernetes.events``), one recorder per process."""
        if not self.settings.kubernetes.events:
            return None
        if self._events is None:
            self._events = EventRecorder(self.kube, instance=os.environ.get("POD_NAME", socket.gethostname()))
        return self._events

    def cluster_client(self, cluster: ClusterConnection) -> Any:
        """The ApiClient of a fleet cluster, built once per connection (kubeconfig, context, in_cluster)."""
        key = (cluster.kubeconfig, cluster.context, cluster.in_cluster)
        if key not in self._clusters:
            if cluster.kubeconfig is not None and not cluster.kubeconfig.is_file():
                raise ConfigError(
                    f"targets.kubernetes cluster {cluster.name}: kubeconfig {cluster.kubeconfig} does not exist; "
                    "give the path of that cluster's kubeconfig (a mounted Secret, see install.md), or "
                    "in_cluster: true for the cluster rotator runs in"
                )
            connection = KubernetesSettings(
                kubeconfig=cluster.kubeconfig,
                context=cluster.context,
                in_cluster=cluster.in_cluster,
                concurrency=self.settings.kubernetes.concurrency,
            )
            where = "in_cluster" if cluster.in_cluster else f"kubeconfig {cluster.kubeconfig}"
            origin = f"targets.kubernetes cluster {cluster.name} ({where})"
            self._clusters[key] = api_client(connection, origin=origin)
        return self._clusters[key]

    def cluster_recorder(self, cluster: ClusterConnection) -> EventRecorder | None:
        if not self.settings.kubernetes.events:
            return None
        key = (cluster.kubeconfig, cluster.context, cluster.in_cluster)
        if key not in self._cluster_events:
            instance = os.environ.get("POD_NAME", socket.gethostname())
            self._cluster_events[key] = EventRecorder(self.cluster_client(cluster), instance=instance)
        return self._cluster_events[key]

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(on_retry=self.hooks.get("retry"))

    def provider(self, cred: CredentialSettings) -> IamProvider | DockerHubProvider:
        if cred.name not in self._providers:
            p = cred.provider
            if isinstance(p, DockerHubProviderSettings):
                self._providers[cred.name] = self.dockerhub_provider(p)
                return self._providers[cred.name]
            self._providers[cred.name] = IamProvider(
                base_url=p.endpoint,
                account_id=p.account_id,
                service_id=p.service_id,
                admin_apikey=_iam_credential(p.apikey),
                key_lifetime=p.key_lifetime,
                action_when_leaked=p.action_when_leaked,
                lock_current_key=p.lock_current_key,
                client=self.http,
                retry=self.retry_policy(),
                on_request=self.hooks.get("provider_request"),
            )
        return self._providers[cred.name]

    def dockerhub_provider(self, p: DockerHubProviderSettings) -> DockerHubProvider:
        if self.metrics is not None:
            on_request = self.metrics.provider_request("dockerhub")
        else:
            on_request = self.hooks.get("provider_request")
        return DockerHubProvider(
            base_url=p.endpoint,
            username=p.username,
            secret=LiveSecret(p.password.load, field=p.password.field_path),
            token_type=p.token_type,
            org=p.org,
            scopes=p.scopes,
            repositories=p.repositories,
            client=self.http,
            retry=self.retry_policy(),
            on_request=on_request,
        )

    @property
    def verifier(self) -> RegistryVerifier:
        if self._verifier is None:
            overrides = {
                registry_for_server(c.registry.server): c.registry.endpoint
                for c in self.settings.credentials
                if c.registry.endpoint
            }
            budget = max(c.registry.verify_budget.total_seconds() for c in self.settings.credentials)
            realm_hosts: dict[str, list[str]] = {}
            for c in self.settings.credentials:
                realm_hosts.setdefault(c.registry.server, []).extend(c.registry.token_realm_hosts)
            self._verifier = RegistryVerifier(
                endpoint_overrides=overrides,
                budget_s=budget,
                on_request=self.hooks.get("registry_request"),
                token_realm_hosts=realm_hosts,
            )
        return self._verifier

    def sinks(self, cred: CredentialSettings) -> list[KubernetesSink | CodeEngineSink]:
        sinks: list[KubernetesSink | CodeEngineSink] = []
        for target in cred.kubernetes_targets:
            cluster = target.cluster
            # A fleet cluster that does not answer lags and is tried again by the reconciler with backoff:
            # fewer tries inside a step, so it does not hold up the step for the clusters that do answer.
            retry = self.retry_policy()
            if cluster is not None:
                retry = replace(retry, attempts=FLEET_RETRY_ATTEMPTS)
            sink = KubernetesSink(
                self.kube if cluster is None else self.cluster_client(cluster),
                target,
                credential=cred.name,
                retry=retry,
                on_write=self.hooks.get("write"),
            )
            if cluster is None:
                sink.recorder = self.event_recorder
            else:  # its targets, metrics and status name the cluster
                sink.name, sink.cluster = f"kubernetes@{cluster.name}", cluster.name
                sink.recorder = self.cluster_recorder(cluster)
            sinks.append(sink)
        if cred.codeengine is not None:
            sinks.append(self.codeengine_sink(cred))
        return sinks

    def codeengine_sink(self, cred: CredentialSettings) -> CodeEngineSink:
        target = cred.codeengine
        assert target is not None
        if target.apikey is None:  # the provider's admin key: share its token cache
            provider = self.provider(cred)
            assert isinstance(provider, IamProvider)  # settings require codeengine.apikey otherwise
            tokens = provider.tokens
        else:
            own = cred.provider.endpoint if isinstance(cred.provider, IamProviderSettings) else None
            iam = target.iam_endpoint or own or "https://iam.cloud.ibm.com"
            tokens = IamTokenSource(base_url=iam, apikey=_iam_credential(target.apikey), client=self.http)
        return CodeEngineSink(
            target,
            credential=cred.name,
            tokens=tokens,
            client=self.http,
            retry=self.retry_policy(),
            on_write=self.hooks.get("write"),
        )

    def policy(self, cred: CredentialSettings) -> Policy:
        return Policy(
            interval=cred.schedule.interval,
            cron=cred.schedule.cron,
            max_age=cred.max_age,
            grace_period=cred.grace_period,
            delete_after=cred.delete_after,
            window_cron=cred.schedule.window_cron,
            window_duration=cred.schedule.window_duration,
            backoff_base=cred.schedule.retry_backoff,
            backoff_cap=cred.schedule.retry_backoff_max,
            expiry_margin=cred.provider.key_expiry_margin if isinstance(cred.provider, IamProviderSettings) else None,
            unreachable_timeout=cred.unreachable_timeout,
            revoke_despite_unreachable=cred.revoke_despite_unreachable,
        )

    def reconciler(self, name: str) -> Reconciler:
        # Workers and the watches ask at the same time when the daemon starts: one reconciler (and one
        # set of sinks, which know their own writes) per credential, or a watch sees strangers' writes.
        with self._reconcilers_lock:
            return self._reconciler(name)

    def _reconciler(self, name: str) -> Reconciler:
        if name not in self._reconcilers:
            cred = self.settings.credential(name)
            self._reconcilers[name] = Reconciler(
                credential=cred.name,
                server=cred.registry.server,
                username=cred.registry.username,
                images=cred.registry.images,
                provider=self.provider(cred),
                sinks=list(self.sinks(cred)),
                verifier=self.verifier,
                store=self.store,
                policy=self.policy(cred),
                clock=self.clock,
                concurrency=self.settings.kubernetes.concurrency,
                on_event=self.on_event,
                inconclusive_retry=cred.registry.recheck_interval,
            )
        return self._reconcilers[name]

    def forget(self, name: str) -> None:
        """Drop what was built for credential ``name`` (it changed or went away): the next ``reconciler(name)``
        builds from the settings then in force. The registry verifier is rebuilt too (it knows every
        credential's endpoint); reconcilers already built keep the one they have."""
        with self._reconcilers_lock:
            reconciler = self._reconcilers.pop(name, None)
            self._providers.pop(name, None)
            self._verifier = None
        if reconciler is not None:
            reconciler.close()

    def status(self, name: str, now: dt.datetime) -> dict[str, Any]:
        """``rotator status --json`` for one credential (the CLI and the HTTP API show the same)."""
        cred = self.settings.credential(name)
        policy = self.policy(cred)
        clusters = tuple(t.cluster.name for t in cred.clusters if t.cluster is not None)
        leaks = self.store.load_requests(name).leaks
        return credential_status(name, self.store.load(name), policy, now, leaks, clusters)

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
        for recorder in self._cluster_events.values():
            recorder.close()
        for reconciler in self._reconcilers.values():
            reconciler.close()
        self.http.close()
        if self._kube is not None:
            self._kube.close()
        for api in self._clusters.values():
            api.close()


def _iam_credential(auth: IamAuth) -> LiveSecret | ProfileGrant:
    """What an IAM token source signs in with; the key or CR token is re-read for every sign-in."""
    live = LiveSecret(auth.load, field=auth.field_path)
    if isinstance(auth, TrustedProfileSource):
        return ProfileGrant(cr_token=live, profile_id=auth.profile_id, profile_name=auth.profile_name)
    return live
