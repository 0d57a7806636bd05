"""Kubernetes Events on the secrets rotator writes: rotated, rolled back, healed, refused.

Events are sent by one background thread from a bounded queue, so a rotation's fan-out never
waits on them and a slow API server cannot make memory grow: when the queue is full, events are
dropped and counted. Failing to record an event never fails anything else.
"""

from __future__ import annotations

import datetime as dt
import queue
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from rotator import logs, redact
from rotator.model import TargetRef

log = logs.get("rotator.events")
QUEUE_LIMIT = 2000
COMPONENT = "rotator"


@dataclass(frozen=True, kw_only=True)
class PendingEvent:
    target: TargetRef
    reason: str
    message: str
    type: str  # Normal | Warning
    # Another object than the target's Secret (a RegistryCredential): its involvedObject reference.
    involved: dict[str, str] | None = None


class EventRecorder:
    def __init__(self, api: Any, *, instance: str = "") -> None:
        from rotator.kubecore import CoreV1

        self.core: Any = CoreV1(api)
        self.instance = instance
        self.dropped = 0
        self._queue: queue.Queue[PendingEvent | None] = queue.Queue(maxsize=QUEUE_LIMIT)
        self._thread = threading.Thread(target=self._run, name="k8s-events", daemon=True)
        self._thread.start()

    def record(self, target: TargetRef, reason: str, message: str, *, warning: bool = False) -> None:
        self._put(PendingEvent(target=target, reason=reason, message=message, type="Warning" if warning else "Normal"))

    def record_on(self, involved: dict[str, str], reason: str, message: str, *, warning: bool = False) -> None:
        """An Event about ``involved`` (apiVersion, kind, name, uid[, namespace]); one of a cluster-scoped
        object goes to the ``default`` namespace, where kubectl describe finds it."""
        namespace = involved.get("namespace") or "default"
        target = TargetRef(sink="kubernetes", namespace=namespace, name=involved["name"])
        kind = "Warning" if warning else "Normal"
        self._put(PendingEvent(target=target, reason=reason, message=message, type=kind, involved=involved))

    def _put(self, event: PendingEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (bounded by ``timeout``), then stop."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            try:
                self._send(event)
            except Exception as exc:  # an event is a courtesy: never let it fail anything
                log.debug("event.send_failed", reason=event.reason, error=type(exc).__name__)

    def _send(self, event: PendingEvent) -> None:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        target = event.target
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{target.name}.{uuid.uuid4().hex[:16]}", "namespace": target.namespace},
            "involvedObject": event.involved
            or {"apiVersion": "v1", "kind": "Secret", "name": target.name, "namespace": target.namespace},
            "reason": event.reason,
            "message": redact.clean(event.message, limit=1000),
            "type": event.type,
            "source": {"component": COMPONENT, "host": self.instance},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": COMPONENT,
            "reportingInstance": self.instance,
        }
        self.core.create_namespaced_event(target.namespace, body, _preload_content=False)
