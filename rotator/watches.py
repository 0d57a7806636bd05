"""Kubernetes watches that turn cluster events into work for the credential workers.

Each watch lists once to learn a resourceVersion, then streams from it; a stream that ends is
resumed from the last resourceVersion seen, and a 410 Expired (history compacted) re-lists.
Nothing is cached here: an event is routed and forgotten, so memory does not grow with the cluster
(the daemon keeps the managed secrets themselves for its writes, see seensecrets.py).
Secrets are watched by name (``metadata.name=<secret_name>``, which RBAC can grant by resourceNames)
and the managed-by label, so rotator never sees (or holds) secret data it does not manage.

``route()`` is pure: event in, triggers out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rotator import logs
from rotator.adapters.kubernetes import CREDENTIAL_ANNOTATION, MANAGED_LABEL, ROTATE_ANNOTATION
from rotator.model import TargetRef

log = logs.get("rotator.watches")

STREAM_TIMEOUT_S = 60


@dataclass(frozen=True, kw_only=True)
class Trigger:
    credential: str
    kind: str  # "heal" | "rotate"
    target: TargetRef
    reason: str


class Selection:
    """What one credential's Kubernetes sink targets (the parts ``route`` needs)."""

    def __init__(
        self, credential: str, matches: Callable[[str, dict[str, str]], bool], target_for: Callable[[str], TargetRef]
    ) -> None:
        self.credential = credential
        self.matches = matches
        self.target_for = target_for


def route(resource: str, event: str, obj: dict[str, Any], selections: Iterable[Selection]) -> list[Trigger]:
    meta = obj.get("metadata") or {}
    name, namespace = meta.get("name", ""), meta.get("namespace", "")
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    triggers: list[Trigger] = []
    for sel in selections:
        if resource == "namespaces":
            if event in ("ADDED", "MODIFIED") and sel.matches(name, labels):
                triggers.append(
                    Trigger(credential=sel.credential, kind="heal", target=sel.target_for(name), reason="namespace")
                )
            continue
        if not namespace:
            continue
        target = sel.target_for(namespace)
        if resource == "secrets":
            if name != target.name or annotations.get(CREDENTIAL_ANNOTATION, sel.credential) != sel.credential:
                continue
            if labels.get(MANAGED_LABEL) != "rotator":
                continue
            if event == "DELETED" or event == "MODIFIED":
                # Whether it drifted is decided on a fresh read; our own writes are filtered before this.
                triggers.append(
                    Trigger(credential=sel.credential, kind="heal", target=target, reason=f"secret {event.lower()}")
                )
            if event != "DELETED" and ROTATE_ANNOTATION in annotations:
                triggers.append(
                    Trigger(
                        credential=sel.credential,
                        kind="rotate",
                        target=target,
                        reason=f"annotation {ROTATE_ANNOTATION} on {namespace}/{name}",
                    )
                )
        elif resource == "serviceaccounts":
            if event == "DELETED" or name not in target.service_accounts:
                continue
            pulls = [ref.get("name") for ref in obj.get("imagePullSecrets") or []]
            if target.name not in pulls:
                triggers.append(
                    Trigger(credential=sel.credential, kind="heal", target=target, reason="service account")
                )
    return triggers


class ResourceWatch:
    """One watch stream (namespaces, managed secrets, or service accounts), in its own thread."""

    def __init__(
        self,
        resource: str,
        list_fn: Callable[..., Any],
        handler: Callable[[str, str, dict[str, Any]], None],
        *,
        stop: threading.Event,
        kwargs: dict[str, Any] | None = None,
        on_relist: Callable[[str], None] | None = None,
        on_list: Callable[[], None] | None = None,
        timeout_s: int = STREAM_TIMEOUT_S,
    ) -> None:
        self.timeout_s = timeout_s
        self.resource = resource
        self.list_fn = list_fn
        self.handler = handler
        self.stop_event = stop
        self.kwargs = kwargs or {}
        self.on_relist = on_relist
        self.on_list = on_list  # before each list: the stream from it shows only what changes after
        self.resource_version: str | None = None
        self.relists = 0
        self.thread = threading.Thread(target=self._run, name=f"watch-{resource}", daemon=True)
        self._stream: Any = None  # the kubernetes Watch in progress

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Interrupt the stream in progress (the caller has set the stop event): the client's Watch.stop
        shuts its socket down, so the thread's read returns instead of waiting out the stream timeout."""
        stream = self._stream
        if stream is not None:
            stream.stop()

    def _list_version(self) -> str:
        import json

        response = self.list_fn(limit=1, _preload_content=False, **self.kwargs)
        version: str = json.loads(response.data)["metadata"]["resourceVersion"]
        return version

    def _run(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        failures = 0
        while not self.stop_event.is_set():
            try:
                if self.resource_version is None:
                    if self.on_list is not None:
                        self.on_list()
                    self.resource_version = self._list_version()
                    self.relists += 1
                    if self.on_relist is not None and self.relists > 1:
                        self.on_relist(self.resource)
                w: Any = watch.Watch()  # type: ignore[no-untyped-call]
                self._stream = w
                for event in w.stream(
                    self.list_fn,
                    resource_version=self.resource_version,
                    timeout_seconds=self.timeout_s,
                    _request_timeout=self.timeout_s + 10,
                    **self.kwargs,
                ):
                    if self.stop_event.is_set():
                        w.stop()
                        break
                    raw = event.get("raw_object") or {}
                    version = (raw.get("metadata") or {}).get("resourceVersion")
                    if version:
                        self.resource_version = version
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self.handler(self.resource, event["type"], raw)
                failures = 0
            except ApiException as exc:
                if exc.status == 410:
                    log.info("watch.expired", resource=self.resource, detail="history compacted; re-listing")
                    self.resource_version = None
                    continue
                failures += 1
                log.warning("watch.failed", resource=self.resource, status=exc.status, failures=failures)
            except Exception as exc:  # connection reset, API server restart: back off and resume
                if self.stop_event.is_set():
                    return  # stop() shut the stream down
                failures += 1
                log.warning("watch.failed", resource=self.resource, error=type(exc).__name__, failures=failures)
            if failures:
                self.stop_event.wait(min(30.0, 0.5 * 2 ** min(failures, 6)))
