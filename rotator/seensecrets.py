"""Managed secrets as last seen, so the daemon writes one with a single PUT instead of a GET and a PUT.

The daemon's secret watch (one per secret name) feeds it; a write's response and a read that missed
update it too. An entry may be stale (a change whose event is still on its way): the PUT carries the
entry's resourceVersion, so a stale one costs a 409 and a fresh read, never a lost change.

Entries are kept only while the watch keeps them current: ``reset`` (each time the watch lists, before
it streams) drops everything, and a read that started before a reset is not stored after it, since
the watch streams only what changed after its list. Only labelled secrets are kept (what the watch
sees), so memory is bounded by the managed secrets of that name, about 1 KiB each.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

from rotator.adapters.kubernetes import MANAGED_LABEL


class SeenSecrets:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str], dict[str, Any]] = {}
        self._epoch = 0
        self._active = False  # until the watch has listed, nothing it would keep current

    @property
    def epoch(self) -> int:
        """Taken before a read; ``put(obj, epoch=...)`` then stores it only if no reset came in between."""
        with self._lock:
            return self._epoch

    def reset(self) -> None:
        """The watch (re)listed: what was kept may have missed changes, start over."""
        with self._lock:
            self._objects.clear()
            self._epoch += 1
            self._active = True

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A copy of the secret as last seen (the caller may change it), or None."""
        with self._lock:
            obj = self._objects.get((namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def put(self, obj: dict[str, Any], *, epoch: int | None = None) -> None:
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        with self._lock:
            if not self._active or (epoch is not None and epoch != self._epoch):
                return
            if (meta.get("labels") or {}).get(MANAGED_LABEL) != "rotator":
                self._objects.pop(key, None)  # no longer watched: its changes would not reach us
                return
            held = self._objects.get(key)
            if held is not None and _older(meta, held.get("metadata") or {}):
                return  # a read answered before an event that is newer
            self._objects[key] = copy.deepcopy(obj)

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._objects.pop((namespace, name), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)


def _older(meta: dict[str, Any], held: dict[str, Any]) -> bool:
    """Whether ``meta``'s resourceVersion is older than the held one. resourceVersions are opaque to
    clients, but etcd's (and the sandbox's) are integers; anything else is taken as newer, which at
    worst costs a 409."""
    new, old = str(meta.get("resourceVersion", "")), str(held.get("resourceVersion", ""))
    return new.isdigit() and old.isdigit() and int(new) < int(old)
