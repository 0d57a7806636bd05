"""Leader election on a coordination.k8s.io/v1 Lease, as client-go does it.

Why not ``kubernetes.leaderelection``'s LeaseLock: it reads the process-global client
configuration (rotator keeps one ApiClient of its own per process) and its config calls
``sys.exit`` on bad values. The protocol is small: read the Lease; create it if missing; renew it
if we hold it; take it over when its record has not changed for ``lease_duration`` as measured
on our own monotonic clock (so clock skew between replicas does not matter). Every write carries
the read resourceVersion, so two candidates cannot both win: the loser gets 409.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from rotator import logs, redact

log = logs.get("rotator.leader")


def micro_time(value: dt.datetime) -> str:
    """Kubernetes MicroTime: RFC 3339 with exactly six fractional digits."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    def __init__(
        self,
        api: Any,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_change: Callable[[bool], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        from kubernetes import client

        self.coordination: Any = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.on_change = on_change
        self.monotonic = monotonic
        self.holder: str | None = None
        self.known = threading.Event()  # set once the lease has been read at least once
        self._leading = threading.Event()
        self._stop = threading.Event()
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self._last_renew = 0.0
        self._thread: threading.Thread | None = None

    @property
    def is_leader(self) -> bool:
        return self._leading.is_set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="leader-election", daemon=True)
        self._thread.start()

    def stop(self, *, release: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.retry_period + 5)
        if release and self.is_leader:
            self._release()
        self._set_leading(False)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._try_acquire_or_renew()
            except Exception as exc:  # the API server is unreachable: we cannot prove we still lead
                log.warning("leader.renew_failed", error=type(exc).__name__, detail=redact.clean(str(exc), limit=200))
            if self.is_leader and self.monotonic() - self._last_renew > self.renew_deadline:
                log.warning("leader.lost", reason="could not renew within the renew deadline")
                self._set_leading(False)
            self._stop.wait(self.retry_period)

    def _set_leading(self, leading: bool) -> None:
        if leading == self.is_leader:
            return
        if leading:
            self._leading.set()
        else:
            self._leading.clear()
        log.info("leader.changed", leading=leading, identity=self.identity)
        if self.on_change is not None:
            self.on_change(leading)

    def _read(self) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            response = self.coordination.read_namespaced_lease(self.name, self.namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        lease: dict[str, Any] = json.loads(response.data)
        return lease

    def _try_acquire_or_renew(self) -> None:
        from kubernetes.client.exceptions import ApiException

        now = dt.datetime.now(dt.UTC)
        lease = self._read()
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(now, acquire=True, transitions=0),
            }
            try:
                self.coordination.create_namespaced_lease(self.namespace, body, _preload_content=False)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                # Another replica created it first: learn who holds it now rather than a period later.
                lease = self._read()
                if lease is None:
                    return
            else:
                self._won(now)
                return
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, str(spec.get("renewTime")))
        if record != self._observed:
            self._observed, self._observed_at = record, self.monotonic()
        self.holder = holder or None
        self.known.set()
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        expired = not holder or self.monotonic() - self._observed_at > duration
        if holder != self.identity and not expired:
            self._set_leading(False)
            return
        taking_over = holder != self.identity
        transitions = int(spec.get("leaseTransitions") or 0) + (1 if taking_over else 0)
        new_spec = self._spec(now, acquire=taking_over, transitions=transitions)
        if not taking_over:
            new_spec["acquireTime"] = spec.get("acquireTime") or new_spec["acquireTime"]
        lease["spec"] = new_spec
        try:
            self.coordination.replace_namespaced_lease(self.name, self.namespace, lease, _preload_content=False)
        except ApiException as exc:
            if exc.status == 409:  # someone else wrote in between: they won this round
                self._set_leading(False)
                return
            raise
        if taking_over:
            log.info("leader.acquired", identity=self.identity, previous=holder or None)
        self._won(now)

    def _won(self, now: dt.datetime) -> None:
        self.holder = self.identity
        self._last_renew = self.monotonic()
        self._observed = (self.identity, micro_time(now))
        self._observed_at = self._last_renew
        self.known.set()
        self._set_leading(True)

    def _spec(self, now: dt.datetime, *, acquire: bool, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_duration),
            "acquireTime": micro_time(now),
            "renewTime": micro_time(now),
            "leaseTransitions": transitions,
        }

    def _release(self) -> None:
        """Hand the lease back on a clean shutdown so the other replica need not wait it out."""
        try:
            lease = self._read()
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"]["holderIdentity"] = ""
            lease["spec"]["leaseDurationSeconds"] = 1
            self.coordination.replace_namespaced_lease(self.name, self.namespace, lease, _preload_content=False)
            log.info("leader.released", identity=self.identity)
        except Exception as exc:
            log.warning("leader.release_failed", error=type(exc).__name__)
