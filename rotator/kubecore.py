"""The core/v1 calls rotator makes, on the official client's ApiClient, without ``CoreV1Api``.

``CoreV1Api`` costs ~21 MiB and ~0.3 s to import (a few hundred methods, each checked by pydantic,
and every core model class): a fifth of the daemon's memory for the dozen calls below. This class
answers to the same method names and arguments for the calls rotator makes (secrets, service
accounts, config maps, events, namespaces; read, list, create, replace, patch, delete, watch) and
sends them through the same ApiClient (its auth, TLS, connection pool, and the transport mapping of
``adapters/kubernetes.py``). Every call answers the raw response (what ``_preload_content=False``
gives: ``.data`` holds the body) and raises the client's ``ApiException`` for a non-2xx answer, as
``CoreV1Api`` does; ``kubernetes.watch.Watch`` streams its list calls as it streams ``CoreV1Api``'s.
"""

from __future__ import annotations

import functools
from typing import Any

# Resource names of the kinds rotator touches, as they appear in method names and in paths.
PLURALS = {
    "secret": "secrets",
    "service_account": "serviceaccounts",
    "config_map": "configmaps",
    "event": "events",
    "namespace": "namespaces",
}
# Keyword arguments (python names) that become query parameters (API names).
QUERY = {
    "label_selector": "labelSelector",
    "field_selector": "fieldSelector",
    "limit": "limit",
    "_continue": "continue",
    "resource_version": "resourceVersion",
    "timeout_seconds": "timeoutSeconds",
    "watch": "watch",
    "allow_watch_bookmarks": "allowWatchBookmarks",
    "dry_run": "dryRun",
    "field_manager": "fieldManager",
    "pretty": "pretty",
}
VERBS = {"read": "GET", "list": "GET", "create": "POST", "replace": "PUT", "patch": "PATCH", "delete": "DELETE"}
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"


class CoreV1:
    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client

    def __getattr__(self, method: str) -> Any:
        verb, _, rest = method.partition("_")
        if verb not in VERBS:
            raise AttributeError(method)
        namespaced = rest.startswith("namespaced_")
        kind = rest.removeprefix("namespaced_").removesuffix("_for_all_namespaces")
        if kind not in PLURALS:
            raise AttributeError(method)
        call = functools.partial(self._call, verb, kind, namespaced)
        call.__doc__ = ""  # kubernetes.watch reads a return type from the docstring: none, raw events
        return call

    def _call(self, verb: str, kind: str, namespaced: bool, *args: Any, **kwargs: Any) -> Any:
        plural = PLURALS[kind]
        body = kwargs.pop("body", None)
        positional = list(args)
        if verb in ("create", "replace", "patch") and body is None:
            body = positional.pop()  # the client's order: (name, namespace, body) or (namespace, body)
        name = positional.pop(0) if verb not in ("create", "list") else None
        namespace = positional.pop(0) if namespaced else kwargs.pop("namespace", None)
        if positional:
            raise TypeError(f"{verb}_{kind}: unexpected arguments")
        path = "/api/v1" + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}"
        if kind == "namespace" and name is not None:
            path = f"/api/v1/namespaces/{name}"
        elif name is not None:
            path += f"/{name}"
        return send(self.api_client, VERBS[verb], path, body, kwargs, f"{verb}_{kind}")


def send(api_client: Any, method: str, path: str, body: Any, kwargs: dict[str, Any], what: str) -> Any:
    """One request through ``api_client``: query parameters from ``kwargs`` (python names), the raw response
    back, ``ApiException`` for a non-2xx answer."""
    from kubernetes.client.exceptions import ApiException

    timeout = kwargs.pop("_request_timeout", None)
    kwargs.pop("_preload_content", None)  # always the raw response
    query = []
    for key, value in kwargs.items():
        if key not in QUERY:
            raise TypeError(f"{what}: unknown argument {key!r}")
        if value is not None:
            query.append((QUERY[key], str(value).lower() if isinstance(value, bool) else value))
    headers = {"Accept": "application/json"}
    if body is not None:
        if method == "PATCH":
            headers["Content-Type"] = JSON_PATCH if isinstance(body, list) else MERGE_PATCH
        else:
            headers["Content-Type"] = "application/json"
    request = api_client.param_serialize(
        method=method,
        resource_path=path,
        query_params=query,
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api_client.call_api(*request, _request_timeout=timeout)
    if not 200 <= response.status <= 299:
        response.read()
        raise ApiException.from_response(http_resp=response, body=None, data=None)
    return response.response


class ClusterObjects:
    """A cluster-scoped custom resource's REST paths (``/apis/<group>/<version>/<plural>[/name[/status]]``),
    with the raw-response conventions of ``CoreV1``; ``list`` streams under ``kubernetes.watch.Watch``."""

    def __init__(self, api_client: Any, group: str, version: str, plural: str) -> None:
        self.api_client = api_client
        self.base = f"/apis/{group}/{version}/{plural}"
        self.plural = plural

    def list(self, **kwargs: Any) -> Any:
        """The objects; under ``kubernetes.watch.Watch``, their changes (raw events: no return type named)."""
        return send(self.api_client, "GET", self.base, None, kwargs, f"list {self.plural}")

    def read(self, name: str, **kwargs: Any) -> Any:
        return send(self.api_client, "GET", f"{self.base}/{name}", None, kwargs, f"read {self.plural}")

    def patch(self, name: str, body: Any, **kwargs: Any) -> Any:
        return send(self.api_client, "PATCH", f"{self.base}/{name}", body, kwargs, f"patch {self.plural}")

    def patch_status(self, name: str, body: Any, **kwargs: Any) -> Any:
        return send(self.api_client, "PATCH", f"{self.base}/{name}/status", body, kwargs, f"patch {self.plural}")
