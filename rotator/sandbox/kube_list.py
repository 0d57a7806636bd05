"""List (with selectors, limit/continue and exact resourceVersions) and watch streams.

A continue token carries the first page's resourceVersion and the last key served; later pages are
cut from the snapshot at that resourceVersion, so every page shows the same moment, and a token
older than the change history is 410 Expired, as with a compacted etcd.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import json
import time
from typing import Any

from aiohttp import web

from rotator.sandbox.kube_rest import Call, mark_deleted, respond
from rotator.sandbox.kube_select import Selector
from rotator.sandbox.kube_status import KubeError, bad_request, expired
from rotator.sandbox.kube_store import ADDED, Obj, Store, Watcher, watch_event
from rotator.sandbox.kube_table import table, wants_table
from rotator.sandbox.kube_validate import on_read

CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new list "
    "without the continue parameter, or use the continue token in this response to retrieve the remainder of "
    "the results. Continuing with the provided token results in an inconsistent list - objects that were "
    "created, modified, or deleted between the time the first chunk was returned and now may show up in the list."
)
DEFAULT_WATCH_TIMEOUT_S = 1800
WRITE_BATCH_BYTES = 64 * 1024


def _sort_key(obj: Obj) -> tuple[str, str]:
    meta = obj["metadata"]
    return meta.get("namespace", ""), meta["name"]


def _int_param(call: Call, name: str) -> int | None:
    text = call.query.get(name, "")
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise bad_request(f'invalid value for {name}: "{text}"') from None


def _resource_version(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise bad_request(f'invalid resource version "{text}"') from None
    if value < 0:
        raise bad_request(f'invalid resource version "{text}"')
    return value


def encode_continue(rv: int, start: tuple[str, str]) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": list(start)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_continue(token: str) -> tuple[int, tuple[str, str]]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        rv, start = int(data["rv"]), data["start"]
        if not (isinstance(start, list) and len(start) == 2 and all(isinstance(s, str) for s in start)):
            raise ValueError("bad start key")
    except (ValueError, KeyError, TypeError):
        raise bad_request("continue key is not valid: illegal base64 data or malformed token") from None
    return rv, (start[0], start[1])


def _strip_type(obj: Obj) -> Obj:
    """List items carry no kind/apiVersion in the real API; the list does."""
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


class Lister:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.bookmark_interval_s = 60.0

    def _selector(self, call: Call) -> Selector:
        return Selector.parse(
            call.query.get("labelSelector", ""), call.query.get("fieldSelector", ""), call.rt.field_labels
        )

    def _items(self, call: Call, selector: Selector) -> tuple[int, list[Obj], tuple[str, str] | None]:
        """(list resourceVersion, matching objects in key order, key to resume after)."""
        token, rv_text = call.query.get("continue", ""), call.query.get("resourceVersion", "")
        match = call.query.get("resourceVersionMatch", "")
        if match not in ("", "Exact", "NotOlderThan"):
            raise bad_request(f'resourceVersionMatch: Unsupported value: "{match}"')
        start: tuple[str, str] | None = None
        if token:
            if rv_text and rv_text != "0":
                raise bad_request("specifying resource version is not allowed when using continue")
            list_rv, start = decode_continue(token)
            try:
                objs = self.store.snapshot(call.rt.key, call.namespace, list_rv)
            except KubeError:
                raise expired(CONTINUE_EXPIRED) from None
        elif match == "Exact":
            list_rv = self._not_future(_resource_version(rv_text))
            objs = self.store.snapshot(call.rt.key, call.namespace, list_rv)
        else:
            if rv_text:
                self._not_future(_resource_version(rv_text))
            list_rv, objs = self.store.rv, list(self.store.scope(call.rt.key, call.namespace))
        matching = [o for o in objs if selector.matches(o)] if not selector.empty else objs
        matching.sort(key=_sort_key)
        return list_rv, matching, start

    def _not_future(self, rv: int) -> int:
        """A resourceVersion the store has not reached: the real apiserver waits ~3 s, then says this."""
        if rv > self.store.rv:
            raise KubeError(
                504,
                f"Too large resource version: {rv}, current: {self.store.rv}",
                details={
                    "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                    "retryAfterSeconds": 1,
                },
                headers={"Retry-After": "1"},
            )
        return rv

    async def list_objects(self, call: Call) -> web.Response:
        selector = self._selector(call)
        limit = _int_param(call, "limit")
        list_rv, items, start = self._items(call, selector)
        if start is not None:
            items = items[bisect.bisect_right([_sort_key(o) for o in items], start) :]
        meta: dict[str, Any] = {"resourceVersion": str(list_rv)}
        if limit is not None and limit > 0 and len(items) > limit:
            meta["continue"] = encode_continue(list_rv, _sort_key(items[limit - 1]))
            if selector.empty:
                meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        items = [on_read(call.rt, o) for o in items]
        if wants_table(call.request.headers.get("Accept", "")):
            return respond(table(call.rt, items, meta))
        body = {
            "kind": f"{call.rt.kind}List",
            "apiVersion": call.rt.api_version,
            "metadata": meta,
            "items": [_strip_type(o) for o in items],
        }
        return respond(body)

    async def delete_collection(self, call: Call) -> web.Response:
        selector = self._selector(call)
        _, items, _ = self._items(call, selector)
        if not call.dry_run:
            for obj in items:
                if obj["metadata"].get("finalizers"):
                    mark_deleted(self.store, call.rt, obj)
                else:
                    self.store.remove(call.rt.key, obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        body = {
            "kind": f"{call.rt.kind}List",
            "apiVersion": call.rt.api_version,
            "metadata": {"resourceVersion": str(self.store.rv)},
            "items": [_strip_type(o) for o in items],
        }
        return respond(body)

    # -- watch --------------------------------------------------------------------------------------
    def _open(self, call: Call, selector: Selector) -> tuple[Watcher, list[dict[str, Any]]]:
        """Subscribe and collect the events to send first, with no await in between (nothing is missed)."""
        rv_text = call.query.get("resourceVersion", "")
        send_initial = call.query.get("sendInitialEvents") == "true"
        watcher = Watcher(call.rt.key, call.namespace, selector)
        first: list[dict[str, Any]] = []
        if rv_text in ("", "0") or send_initial:
            objs = [o for o in self.store.scope(call.rt.key, call.namespace) if selector.matches(o)]
            first = [watch_event(ADDED, o) for o in sorted(objs, key=_sort_key)]
            if send_initial and call.query.get("allowWatchBookmarks") == "true":
                first.append(self._bookmark(call, initial_end=True))
        else:
            rv = _resource_version(rv_text)
            try:
                changes = self.store.changes_after(call.rt.key, rv)
            except KubeError as exc:
                return watcher, [{"type": "ERROR", "object": exc.body()}]
            first = [e for e in (watcher.event_for(c) for c in changes) if e is not None]
        self.store.subscribe(watcher)
        return watcher, first

    def _bookmark(self, call: Call, *, initial_end: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"resourceVersion": str(self.store.rv)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {
            "type": "BOOKMARK",
            "object": {"kind": call.rt.kind, "apiVersion": call.rt.api_version, "metadata": meta},
        }

    async def watch(self, call: Call) -> web.StreamResponse:
        selector = self._selector(call)
        timeout = _int_param(call, "timeoutSeconds")
        deadline = time.monotonic() + (timeout if timeout is not None and timeout > 0 else DEFAULT_WATCH_TIMEOUT_S)
        watcher, first = self._open(call, selector)
        try:
            response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            response.enable_chunked_encoding()
            await response.prepare(call.request)
            await self._write(call, response, first)
            if first and first[-1]["type"] == "ERROR":
                return response
            await self._pump(call, watcher, response, deadline)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away; nothing to answer
        finally:
            self.store.unsubscribe(watcher)
        return response

    async def _pump(self, call: Call, watcher: Watcher, response: web.StreamResponse, deadline: float) -> None:
        bookmarks = call.query.get("allowWatchBookmarks") == "true"
        while not watcher.overflowed or not watcher.queue.empty():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            wait = min(remaining, self.bookmark_interval_s) if bookmarks else remaining
            try:
                event = await asyncio.wait_for(watcher.queue.get(), wait)
            except TimeoutError:
                if bookmarks and deadline - time.monotonic() > 0:
                    await self._write(call, response, [self._bookmark(call)])
                continue
            batch = [event]
            while not watcher.queue.empty() and len(batch) < 1000:
                batch.append(watcher.queue.get_nowait())
            await self._write(call, response, batch)

    @staticmethod
    def _as_table(call: Call, event: dict[str, Any]) -> dict[str, Any]:
        """kubectl get -w asks for Table events: each object becomes a one-row Table."""
        if event["type"] in ("ERROR", "BOOKMARK"):
            return event
        obj = event["object"]
        meta = {"resourceVersion": obj["metadata"]["resourceVersion"]}
        return {"type": event["type"], "object": table(call.rt, [obj], meta)}

    async def _write(self, call: Call, response: web.StreamResponse, events: list[dict[str, Any]]) -> None:
        if wants_table(call.request.headers.get("Accept", "")):
            events = [self._as_table(call, e) for e in events]
        chunk: list[str] = []
        size = 0
        for event in events:
            line = json.dumps(event) + "\n"
            chunk.append(line)
            size += len(line)
            if size >= WRITE_BATCH_BYTES:
                await response.write("".join(chunk).encode())
                chunk, size = [], 0
        if chunk:
            await response.write("".join(chunk).encode())
