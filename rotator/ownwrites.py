"""Telling rotator's own writes from someone else's when they come back as watch events.

A write's watch event can arrive before the write's response (the API server sends both at once, and
the watch thread may run first), so the resourceVersion of the response alone misses it. Each write
is therefore announced before it is sent: while it is in flight, an event for that object carrying
exactly the content written is ours; once the response is in, its resourceVersion identifies the event.
"""

from __future__ import annotations

import collections
import hashlib
import json
import threading
from typing import Any

# Enough resourceVersions for the events of the largest fan-out still on their way.
RECENT_WRITES = 4096


def fingerprint(obj: dict[str, Any]) -> str:
    """What rotator writes and a watch event carries: data, type, labels, annotations, pull secrets."""
    meta = obj.get("metadata") or {}
    content = {
        "name": f"{meta.get('namespace', '')}/{meta.get('name', '')}",
        "type": obj.get("type"),
        "data": obj.get("data") or {},
        "labels": meta.get("labels") or {},
        "annotations": meta.get("annotations") or {},
        "imagePullSecrets": obj.get("imagePullSecrets") or [],
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


class OwnWrites:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight: collections.Counter[str] = collections.Counter()
        self._versions: collections.OrderedDict[str, None] = collections.OrderedDict()

    def expect(self, obj: dict[str, Any]) -> str:
        """Announce a write of ``obj`` (namespace and name in its metadata) before sending it."""
        token = fingerprint(obj)
        with self._lock:
            self._in_flight[token] += 1
        return token

    def done(self, token: str, response: Any) -> None:
        """The write's answer (None when it failed): from now on its resourceVersion identifies the event."""
        version = _resource_version(response)
        with self._lock:
            if version:
                self._versions[version] = None
                while len(self._versions) > RECENT_WRITES:
                    self._versions.popitem(last=False)
            self._in_flight[token] -= 1
            if self._in_flight[token] <= 0:
                del self._in_flight[token]

    def is_own(self, event: str, obj: dict[str, Any]) -> bool:
        version = str((obj.get("metadata") or {}).get("resourceVersion", ""))
        with self._lock:
            if version and version in self._versions:
                return True
            # A deletion carries the last content, which may well be ours: only a version identifies it.
            return event != "DELETED" and fingerprint(obj) in self._in_flight


def _resource_version(response: Any) -> str:
    try:
        return str(json.loads(response.data)["metadata"]["resourceVersion"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return ""
