"""Object storage with a cluster-wide resourceVersion, a bounded change history and live watches.

Objects are indexed resource -> namespace -> name, so a get, a write or a namespaced list costs
O(1) or O(namespace size). Stored dicts are never mutated after they are stored: every write
stores a new dict, so the history and open watches can hold references safely.

The history (a ring of the last ``history_limit`` changes) serves three things the real apiserver
serves from etcd's MVCC window: watches resumed from a resourceVersion, paginated lists whose
later pages show the first page's snapshot, and lists at an exact resourceVersion. Anything older
than the ring is answered with 410 Expired, like a compacted etcd.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rotator.sandbox.kube_select import Selector
from rotator.sandbox.kube_status import KubeError, expired

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"
DEFAULT_HISTORY = 10_000
WATCH_QUEUE_LIMIT = 100_000

Obj = dict[str, Any]


@dataclass(slots=True, frozen=True)
class Change:
    rv: int
    type: str
    key: str  # ResourceType.key
    namespace: str
    name: str
    obj: Obj  # the new state; for DELETED the last state, carrying the deletion's resourceVersion
    prev: Obj | None


def watch_event(change_type: str, obj: Obj) -> dict[str, Any]:
    return {"type": change_type, "object": obj}


class Watcher:
    """One open watch: changes of one resource, in one namespace (or all), through a selector."""

    def __init__(self, key: str, namespace: str | None, selector: Selector) -> None:
        self.key = key
        self.namespace = namespace
        self.selector = selector
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.overflowed = False

    def event_for(self, change: Change) -> dict[str, Any] | None:
        """The event this watcher sees, translating selector entry/exit into ADDED/DELETED."""
        if self.namespace is not None and change.namespace != self.namespace:
            return None
        if change.type == DELETED:
            return watch_event(DELETED, change.obj) if self.selector.matches(change.obj) else None
        now = self.selector.matches(change.obj)
        before = change.prev is not None and self.selector.matches(change.prev)
        if now and before:
            return watch_event(MODIFIED, change.obj)
        if now:
            return watch_event(ADDED, change.obj)
        return watch_event(DELETED, change.obj) if before else None

    def offer(self, change: Change) -> None:
        if self.overflowed:
            return
        event = self.event_for(change)
        if event is None:
            return
        if self.queue.qsize() >= WATCH_QUEUE_LIMIT:
            # A consumer this far behind is dropped, as the apiserver drops slow watchers.
            self.overflowed = True
            return
        self.queue.put_nowait(event)


class Store:
    def __init__(self, history_limit: int = DEFAULT_HISTORY) -> None:
        self.rv = 0
        self.objects: dict[str, dict[str, dict[str, Obj]]] = {}
        self.history: deque[Change] = deque()
        self.history_limit = history_limit
        # Every change with rv > compacted_rv is in the history.
        self.compacted_rv = 0
        self.watchers: dict[str, set[Watcher]] = {}

    # -- reads --------------------------------------------------------------------------------------
    def get(self, key: str, namespace: str, name: str) -> Obj | None:
        return self.objects.get(key, {}).get(namespace, {}).get(name)

    def scope(self, key: str, namespace: str | None) -> Iterator[Obj]:
        by_ns = self.objects.get(key, {})
        if namespace is not None:
            yield from by_ns.get(namespace, {}).values()
            return
        for objs in by_ns.values():
            yield from objs.values()

    def namespace_keys(self, namespace: str) -> list[str]:
        return [key for key, by_ns in self.objects.items() if by_ns.get(namespace)]

    def count(self, key: str) -> int:
        return sum(len(objs) for objs in self.objects.get(key, {}).values())

    # -- writes -------------------------------------------------------------------------------------
    def _stamp(self, obj: Obj) -> int:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        return self.rv

    def put(self, key: str, obj: Obj, prev: Obj | None) -> Obj:
        """Store a create (``prev`` None) or an update of ``prev``; ``obj`` is owned by the store now."""
        meta = obj["metadata"]
        namespace, name = meta.get("namespace", ""), meta["name"]
        rv = self._stamp(obj)
        self.objects.setdefault(key, {}).setdefault(namespace, {})[name] = obj
        self._record(Change(rv, MODIFIED if prev else ADDED, key, namespace, name, obj, prev))
        return obj

    def remove(self, key: str, namespace: str, name: str, final: Obj | None = None) -> Obj | None:
        """Delete; the DELETED event carries ``final`` (an update that completes a deletion) or the last state."""
        by_name = self.objects.get(key, {}).get(namespace)
        if not by_name or name not in by_name:
            return None
        prev = by_name.pop(name)
        if not by_name:
            del self.objects[key][namespace]
        final = dict(final or prev, metadata=dict((final or prev)["metadata"]))
        rv = self._stamp(final)
        self._record(Change(rv, DELETED, key, namespace, name, final, prev))
        return final

    def _record(self, change: Change) -> None:
        self.history.append(change)
        while len(self.history) > self.history_limit:
            self.compacted_rv = self.history.popleft().rv
        for watcher in self.watchers.get(change.key, ()):
            watcher.offer(change)

    def compact(self) -> int:
        """Forget the whole history, as an etcd compaction at the current revision."""
        self.history.clear()
        self.compacted_rv = self.rv
        return self.rv

    def set_history_limit(self, limit: int) -> None:
        self.history_limit = max(1, limit)
        while len(self.history) > self.history_limit:
            self.compacted_rv = self.history.popleft().rv

    # -- history ------------------------------------------------------------------------------------
    def too_old(self, rv: int) -> KubeError:
        return expired(f"too old resource version: {rv} ({self.compacted_rv + 1})")

    def changes_after(self, key: str, rv: int) -> list[Change]:
        if rv < self.compacted_rv:
            raise self.too_old(rv)
        return [c for c in self._tail(rv) if c.key == key]

    def _tail(self, rv: int) -> Iterator[Change]:
        """Changes with a resourceVersion above ``rv``, oldest first."""
        if rv >= self.rv:
            return iter(())
        newer: list[Change] = []
        for change in reversed(self.history):
            if change.rv <= rv:
                break
            newer.append(change)
        return reversed(newer)

    def snapshot(self, key: str, namespace: str | None, rv: int) -> list[Obj]:
        """The objects in scope as they were at ``rv`` (current state with later changes undone)."""
        if rv < self.compacted_rv:
            raise self.too_old(rv)
        if rv >= self.rv:
            return list(self.scope(key, namespace))
        state: dict[tuple[str, str], Obj | None] = {
            (o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in self.scope(key, namespace)
        }
        for change in reversed(list(self._tail(rv))):
            if change.key != key or (namespace is not None and change.namespace != namespace):
                continue
            state[(change.namespace, change.name)] = change.prev
        return [o for o in state.values() if o is not None]

    # -- watches ------------------------------------------------------------------------------------
    def subscribe(self, watcher: Watcher) -> None:
        self.watchers.setdefault(watcher.key, set()).add(watcher)

    def unsubscribe(self, watcher: Watcher) -> None:
        self.watchers.get(watcher.key, set()).discard(watcher)

    def watcher_count(self) -> int:
        return sum(len(w) for w in self.watchers.values())

    # -- persistence --------------------------------------------------------------------------------
    def dump(self) -> dict[str, Any]:
        return {"rv": self.rv, "objects": {key: list(self.scope(key, None)) for key in self.objects}}

    def load(self, data: dict[str, Any]) -> None:
        self.objects = {}
        for key, objs in data.get("objects", {}).items():
            for obj in objs:
                meta = obj["metadata"]
                self.objects.setdefault(key, {}).setdefault(meta.get("namespace", ""), {})[meta["name"]] = obj
        self.rv = int(data.get("rv", 0))
        self.history.clear()
        self.compacted_rv = self.rv
