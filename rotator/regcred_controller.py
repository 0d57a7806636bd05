"""RegistryCredential resources as managed credentials (``credentials_from: cluster | both``).

One watch on the resources of the daemon's own cluster (list, then stream; a 410 re-lists) feeds one
controller thread, which turns each resource into a credential of the daemon and back:

    ADDED / MODIFIED ─► finalizer on ─► spec → CredentialSettings ─► daemon.add / worker.replan (generation moved)
                                        └ ConfigError, a file credential's name ─► Ready=False InvalidSpec|DuplicateName
    rotate-requested-at (a new value) ─► daemon.request_rotation (the HTTP API's path: a kept promise)
    deletionTimestamp / DELETED ───────► daemon.remove_credential, finalizer off (Retain: keys left as they are)
    worker passes, rotation events ────► status recomputed (regcred_status.decide), written only when it differs

Status goes through the status subresource (merge patch); a write that would not change it is not sent.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kubernetes.client.exceptions import ApiException

from rotator import logs, settings
from rotator.errors import ConfigError, RotatorError
from rotator.kubecore import ClusterObjects, CoreV1
from rotator.regcred import (
    API_VERSION,
    FINALIZER,
    GROUP,
    KIND,
    PLURAL,
    ROTATE_ANNOTATION,
    VERSION,
    RegistryCredentialStatus,
    TargetCounts,
)
from rotator.regcred_status import Refusal, decide
from rotator.settings import CredentialSettings, IamProviderSettings, SecretKeyReader, SecretSource, Settings
from rotator.watches import ResourceWatch

if TYPE_CHECKING:
    from rotator.daemon import Daemon

log = logs.get("rotator.regcred")
JOIN_S = 5.0


# -- the spec --------------------------------------------------------------------------------------------


def credential_for(
    name: str, spec: Mapping[str, Any], *, namespace: str, reader: SecretKeyReader
) -> CredentialSettings:
    """Resource ``name``'s spec as the settings of credential ``name``; its ``secretKeyRef`` sources read
    through ``reader``, and only Secrets in ``namespace`` (rotator's own: its Role grants ``get`` on Secrets
    there and nowhere else). Raises ConfigError with every problem, naming ``spec.<field>``."""
    cred = settings.credential_from_spec(name, spec, source=f"RegistryCredential {name}")
    elsewhere = [
        f"RegistryCredential {name}: {s.field_path}.secretKeyRef.namespace: {s.secret_key_ref.namespace!r} is not "
        f"rotator's namespace; rotator reads Secrets only in {namespace!r} (its Role): create the Secret there, for "
        f"example secretKeyRef: {{namespace: {namespace}, name: {s.secret_key_ref.name}, key: {s.secret_key_ref.key}}}"
        for s in _secret_sources(cred)
        if s.secret_key_ref is not None and s.secret_key_ref.namespace != namespace
    ]
    if elsewhere:
        raise ConfigError("\n".join(elsewhere))
    return settings.with_secret_reader(cred, reader)


def _secret_sources(cred: CredentialSettings) -> list[SecretSource]:
    provider = cred.provider
    found: list[object] = [provider.apikey if isinstance(provider, IamProviderSettings) else provider.password]
    found.append(cred.codeengine.apikey if cred.codeengine is not None else None)
    return [s for s in found if isinstance(s, SecretSource)]


def secret_reader(core: Any) -> SecretKeyReader:
    """``reader(namespace, name, key) -> value`` for ``secretKeyRef`` sources: one GET of that Secret (re-read
    at every use, as a file source is: a Secret updated in place takes effect at the next sign-in)."""

    def read(namespace: str, name: str, key: str) -> str:
        try:
            data = json.loads(core.read_namespaced_secret(name, namespace).data).get("data") or {}
        except ApiException as exc:
            raise ConfigError(
                f"secretKeyRef: Secret {namespace}/{name} cannot be read (HTTP {exc.status}); create it in "
                f"{namespace} or fix the name"
            ) from None
        if key not in data:
            raise ConfigError(f"secretKeyRef.key: Secret {namespace}/{name} has no key {key!r}; it has {sorted(data)}")
        return base64.b64decode(data[key]).decode()

    return read


def admit(
    name: str, spec: Mapping[str, Any], *, file: Settings, reader: SecretKeyReader
) -> CredentialSettings | Refusal:
    """What rotator makes of resource ``name``'s spec, ``file`` being the settings the config file gave: the
    credential to manage, or why it is refused (Ready=False with that reason). The controller and the
    commands (``rotator status|plan|rotate|reconcile|check``) decide alike through this."""
    if any(c.name == name for c in file.credentials):  # with credentials_from: both, the file's keep their names
        return Refusal(
            reason="DuplicateName",
            message=f"the config file ({file.source}) already defines a credential named {name!r}, and names must "
            "be unique; rename this resource or remove that credential",
        )
    try:
        return credential_for(name, spec, namespace=file.kubernetes.namespace, reader=reader)
    except ConfigError as exc:
        return Refusal(reason="InvalidSpec", message=str(exc))


def list_resources(api_client: Any, *, timeout_s: float | None = None) -> list[dict[str, Any]]:
    """Every RegistryCredential. Raises RotatorError saying what to do when the definition is missing or
    rotator may not list them (an API server that does not answer: ApiServerUnreachable, a RotatorError)."""
    try:
        response = ClusterObjects(api_client, GROUP, VERSION, PLURAL).list(_request_timeout=timeout_s)
    except ApiException as exc:
        if exc.status == 404:
            raise RotatorError(
                "the RegistryCredential definition is not installed: kubectl apply -f deploy/crd/"
            ) from None
        if exc.status in (401, 403):
            raise RotatorError(
                f"rotator may not list registrycredentials (HTTP {exc.status}): grant get, list, watch, update and "
                "patch on them, update and patch on registrycredentials/status (deploy/manifests/clusterrole.yaml)"
            ) from None
        raise RotatorError(f"listing registrycredentials failed: HTTP {exc.status}") from None
    items: list[dict[str, Any]] = json.loads(response.data).get("items") or []
    return items


# -- the controller --------------------------------------------------------------------------------------


@dataclass
class Tracked:
    """One resource as the controller knows it."""

    name: str
    uid: str = ""
    generation: int = 0
    managed_generation: int | None = None  # the spec generation the daemon manages (None: not managed)
    refusal: Refusal | None = None
    # A changed spec handed to the worker, and the generation still in force until it swaps it in.
    replan: tuple[CredentialSettings, int] | None = None
    checked_generation: int | None = None  # the spec generation last parsed (an invalid one is logged once)
    deletion_policy: str = "Retain"
    revoking: bool = False  # deleted with deletionPolicy Revoke: the finalizer stays until no key is left
    finalized: bool = False  # our finalizer is on the resource
    served: str | None = None  # the rotate-requested-at value last acted on
    written: dict[str, Any] | None = None  # the status as last written (wire form)
    status: RegistryCredentialStatus | None = None


@dataclass
class _Inbox:
    objects: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # None: deleted
    dirty: set[str] = field(default_factory=set)
    listed: set[str] | None = None  # a full list: tracked names not in it are gone


class _ListingWatch(ResourceWatch):
    """A ResourceWatch whose list is a full one, handed to the controller (objects created before the
    stream starts, and on a 410 re-list, any deleted meanwhile)."""

    def __init__(self, controller: Controller, **kwargs: Any) -> None:
        super().__init__(PLURAL, controller.api.list, controller.on_watch_event, **kwargs)
        self.controller = controller

    def _list_version(self) -> str:
        body = json.loads(self.list_fn(_preload_content=False).data)
        self.controller.on_list(body.get("items") or [])
        version: str = body["metadata"]["resourceVersion"]
        return version


class Controller:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.api = ClusterObjects(daemon.app.kube, GROUP, VERSION, PLURAL)
        self.reader = secret_reader(CoreV1(daemon.app.kube))
        self.file = daemon.settings  # as the config file gave them, before any resource is added
        self.tracked: dict[str, Tracked] = {}
        self.latest: dict[str, dict[str, Any]] = {}  # each resource as last seen (for a new leader to act on)
        self.targets: dict[str, TargetCounts] = {}
        self.status_writes = 0
        self._inbox = _Inbox()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="regcred-controller", daemon=True)
        self._watch: _ListingWatch | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        self._watch = _ListingWatch(
            self,
            stop=self._stop,
            timeout_s=max(1, int(self.daemon.settings.daemon.watch_timeout.total_seconds())),
        )
        self._watch.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._watch is not None:
            self._watch.stop()
            self._watch.thread.join(JOIN_S)
        if self._thread.ident is not None:
            self._thread.join(JOIN_S)

    # -- inputs (any thread) -----------------------------------------------------------------------------
    def on_list(self, items: list[dict[str, Any]]) -> None:
        with self._cond:
            for obj in items:
                self._inbox.objects[str(obj["metadata"]["name"])] = obj
            self._inbox.listed = {str(obj["metadata"]["name"]) for obj in items}
            self._cond.notify()

    def on_watch_event(self, _: str, event: str, obj: dict[str, Any]) -> None:
        name = str((obj.get("metadata") or {}).get("name", ""))
        with self._cond:
            self._inbox.objects[name] = None if event == "DELETED" else obj
            self._cond.notify()

    def on_app_event(self, name: str, fields: Mapping[str, Any]) -> None:
        """The reconcilers' events: target counts, and a status refresh when a rotation starts or ends."""
        credential = str(fields.get("credential", ""))
        if name == "targets.observed":
            counts = [tuple(c) for c in fields["sinks"].values()]
            total, stale = sum(c[0] for c in counts), sum(c[1] for c in counts)
            refused = int(fields.get("refused", 0))
            self.targets[credential] = TargetCounts(
                total=total, in_sync=total - stale, out_of_sync=max(0, stale - refused), refused=refused
            )
        if name == "rotation.started":  # counted against the old key: unknown until the next pass looks
            self.targets.pop(credential, None)
        if name == "rotation.finished":
            self._event(credential, fields)
        self.touch(credential)

    def resync(self) -> None:
        """This replica became the leader: act on every resource as last seen (finalizers, requests, status)."""
        with self._cond:
            for name, obj in list(self.latest.items()):
                self._inbox.objects.setdefault(name, obj)
            self._cond.notify()

    def touch(self, name: str) -> None:
        """Recompute ``name``'s status (written only if it changed)."""
        with self._cond:
            if name in self.tracked:
                self._inbox.dirty.add(name)
                self._cond.notify()

    # -- the loop ----------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while not (self._inbox.objects or self._inbox.dirty or self._inbox.listed is not None):
                    if self._stop.is_set():
                        return
                    self._cond.wait(timeout=1.0)
                inbox, self._inbox = self._inbox, _Inbox()
            if inbox.listed is not None:
                for gone in set(self.tracked) - inbox.listed - set(inbox.objects):
                    inbox.objects[gone] = None
            for name, obj in inbox.objects.items():
                self._guarded(
                    name, functools.partial(self._sync, name, obj) if obj else functools.partial(self._gone, name)
                )
            for name in inbox.dirty - set(inbox.objects):
                self._guarded(name, functools.partial(self._refresh, name))

    def _guarded(self, name: str, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception as exc:  # one resource's trouble never stops the others
            status = exc.status if isinstance(exc, ApiException) else None
            detail = str(exc) if isinstance(exc, RotatorError) else type(exc).__name__
            # A conflict (written meanwhile) is retried when the watch brings the new version: expected, as
            # the status write and the finalizer patch race on resourceVersion; anything else when the
            # resource or its credential changes next (a pass touches it).
            if status == 409:
                log.info("regcred.conflict", resource=name)
            else:
                log.warning("regcred.sync_failed", resource=name, error=detail, status=status)

    # -- one resource ------------------------------------------------------------------------------------
    def _sync(self, name: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        t = self.tracked.get(name)
        if t is None or t.uid != meta.get("uid"):
            if t is not None:  # deleted and created again under the same name
                self._gone(name)
            previous = _parse_status(obj.get("status"))
            t = Tracked(name=name, uid=str(meta.get("uid", "")), status=previous, written=obj.get("status"))
            t.served = previous.last_rotate_request if previous is not None else None
            self.tracked[name] = t
        t.generation = int(meta.get("generation") or 1)
        self.latest[name] = obj
        acting = self.daemon.may_act()
        if not acting:  # the leader writes: follow what it wrote, to take over from there without a write
            t.written, t.status = obj.get("status"), _parse_status(obj.get("status"))
            t.served = t.status.last_rotate_request if t.status is not None else None
            if t.status is not None and t.status.targets is not None:  # a follower's passes count none
                self.targets[name] = t.status.targets
        if meta.get("deletionTimestamp"):
            if t.managed_generation is None and spec.get("deletionPolicy") == "Revoke":
                # First seen already deleting (a restart while it was revoking, or a deletion missed while
                # down): managed first, or the finalizer would go with the credential's keys still live.
                self._manage(t, spec)
            self._release(t, meta)
            return
        self._manage(t, spec)
        value = (meta.get("annotations") or {}).get(ROTATE_ANNOTATION)
        if value and value != t.served and t.managed_generation is not None and acting:
            rotation_id, joined = self.daemon.request_rotation(
                name,
                reason=f"annotation {ROTATE_ANNOTATION}={value}",
                principal="annotation",
                idempotency_key=f"{ROTATE_ANNOTATION}={value}",  # a restart that sees it again asks nothing
                fingerprint=value,
            )
            log.info("regcred.rotate_requested", resource=name, value=value, rotation_id=rotation_id, joined=joined)
            t.served = value
        self._write_status(name)
        t.finalized = t.finalized or FINALIZER in (meta.get("finalizers") or [])
        if not t.finalized and acting:  # last: a failure here leaves the rest done (retried after a pass)
            self._add_finalizer(t, meta)
            t.finalized = True

    def _manage(self, t: Tracked, spec: Mapping[str, Any]) -> None:
        if t.managed_generation == t.generation or t.checked_generation == t.generation:
            return
        t.checked_generation = t.generation
        cred = admit(t.name, spec, file=self.file, reader=self.reader)
        if isinstance(cred, Refusal):
            kept = f" (generation {t.managed_generation} stays managed)" if t.managed_generation else ""
            t.refusal = Refusal(reason=cred.reason, message=f"{cred.message}{kept}")
            log.warning(
                "regcred.refused", resource=t.name, generation=t.generation, reason=cred.reason, error=cred.message
            )
            self._record(t, t.refusal.reason, t.refusal.message, warning=True)
            return
        t.refusal = None
        t.deletion_policy = cred.deletion_policy
        if t.managed_generation is None:
            self.daemon.add_credential(cred)
        else:
            self.daemon.workers[t.name].replan(cred)
            t.replan = (cred, t.replan[1] if t.replan else t.managed_generation)
        t.managed_generation = t.generation

    def _release(self, t: Tracked, meta: Mapping[str, Any]) -> None:
        """Deleted (deletionTimestamp set): stop managing and remove the finalizer. Retain leaves the keys and
        secrets as they are; Revoke first retires every key of the credential through the grace path (the
        worker decommissions it) and keeps the finalizer until none is left."""
        if t.deletion_policy == "Revoke" and t.managed_generation is not None:
            if not t.revoking:
                t.revoking = True
                self.daemon.workers[t.name].decommission()
                log.info("regcred.revoking", resource=t.name)
            if not self._revoked(t):
                self._write_status(t.name)
                return
        if t.managed_generation is not None:
            self.daemon.remove_credential(t.name)
            t.managed_generation = None
            log.info("regcred.released", resource=t.name, deletion_policy=t.deletion_policy)
        finalizers = list(meta.get("finalizers") or [])
        if FINALIZER in finalizers and self.daemon.may_act():
            finalizers.remove(FINALIZER)
            body = {"metadata": {"finalizers": finalizers, "resourceVersion": meta.get("resourceVersion")}}
            self.api.patch(t.name, body)

    def _revoked(self, t: Tracked) -> bool:
        """Whether a revoking credential has no key left (none current, retired or being rolled out)."""
        journal = self.daemon.app.store.load(t.name)
        left = [r.key_id for r in journal.retired] + ([journal.current.id] if journal.current else [])
        if left or journal.rotation is not None:
            t.refusal = Refusal(
                reason="Revoking",
                message=f"deleted with deletionPolicy Revoke: {len(left)} key(s) left to disable and delete "
                "once their grace period is over",
            )
            return False
        return True

    def _refresh(self, name: str) -> None:
        """After a pass: the resource as last seen synced again (each step is a no-op once done: a step that
        failed is retried here), and for a revoking resource whether its keys are all gone."""
        t, obj = self.tracked.get(name), self.latest.get(name)
        if t is None or obj is None:
            return
        if t.revoking and self.daemon.may_act():
            self._release(t, json.loads(self.api.read(name).data)["metadata"])
        elif not t.revoking:
            self._sync(name, obj)

    def _gone(self, name: str) -> None:
        self.latest.pop(name, None)
        t = self.tracked.pop(name, None)
        self.targets.pop(name, None)
        if t is not None and t.managed_generation is not None:
            self.daemon.remove_credential(name)
            log.info("regcred.released", resource=name, deletion_policy=t.deletion_policy)

    def _add_finalizer(self, t: Tracked, meta: Mapping[str, Any]) -> None:
        finalizers = [*(meta.get("finalizers") or []), FINALIZER]
        self.api.patch(t.name, {"metadata": {"finalizers": finalizers, "resourceVersion": meta.get("resourceVersion")}})

    # -- status ------------------------------------------------------------------------------------------
    def _write_status(self, name: str) -> None:
        t = self.tracked.get(name)
        if t is None or not self.daemon.may_act():  # only the leader writes (a follower's view may lag)
            return
        generation = t.generation
        if t.replan is not None:  # observedGeneration moves once the worker manages the new spec
            swapped = name not in self.daemon.workers or any(c is t.replan[0] for c in self.daemon.settings.credentials)
            t.replan, generation = (None, generation) if swapped else (t.replan, t.replan[1])
        journal = policy = None
        if t.managed_generation is not None and name in self.daemon.workers:
            journal = self.daemon.app.store.load(name)
            policy = self.daemon.app.policy(self.daemon.settings.credential(name))
        status = decide(
            t.status,
            generation=generation,
            journal=journal,
            policy=policy,
            targets=self.targets.get(name),
            refusal=t.refusal,
            last_rotate_request=t.served,
            now=dt.datetime.now(dt.UTC),
        )
        wire = status.wire()
        if wire == t.written:
            return
        # A merge patch: fields gone from the status are removed with an explicit null.
        body = {"status": {**{k: None for k in t.written or {} if k not in wire}, **wire}}
        self.api.patch_status(name, body)
        self.status_writes += 1
        t.status, t.written = status, wire
        log.info("regcred.status_written", resource=name, generation=generation, writes=self.status_writes)

    def _event(self, credential: str, fields: Mapping[str, Any]) -> None:
        """An Event on the resource for a finished rotation."""
        t = self.tracked.get(credential)
        if t is None:
            return
        rotation_id, result = fields.get("rotation_id", ""), fields.get("result", "")
        if result == "succeeded":
            self._record(t, "Rotated", f"rotation {rotation_id} succeeded: a new key is in use")
        else:
            self._record(t, "RotationFailed", f"rotation {rotation_id} {result}", warning=True)

    def _record(self, t: Tracked, reason: str, message: str, *, warning: bool = False) -> None:
        """An Event on the resource (the recorder of the secrets' Events: queued, sent by its thread); the
        leader's only."""
        recorder = self.daemon.app.event_recorder
        if recorder is not None and self.daemon.may_act():
            involved = {"apiVersion": API_VERSION, "kind": KIND, "name": t.name, "uid": t.uid}
            recorder.record_on(involved, reason, message, warning=warning)


def _parse_status(raw: Any) -> RegistryCredentialStatus | None:
    if not isinstance(raw, Mapping) or not raw:
        return None
    try:
        return RegistryCredentialStatus.model_validate(raw)
    except ValueError:  # written by someone else, or an older shape: decided afresh
        return None
