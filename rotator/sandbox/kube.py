"""A Kubernetes API server emulator: enough of core/v1, coordination.k8s.io/v1 and the review APIs
for kubectl, the official Python client and rotator's adapter.

Served: discovery, namespaces, secrets, serviceaccounts, configmaps, events, leases (CRUD, list with
selectors and pagination, watch, three patch types, dry-run), TokenReview and (Self)SubjectAccessReview,
and the TokenRequest subresource ``serviceaccounts/{name}/token`` (kube_tokens: bound service-account
tokens the IAM emulator accepts for its trusted-profile sign-in).
Every error is a ``Status`` shaped like the real apiserver's. See protocols.md section 7.

Module map: kube_types (resources, discovery), kube_status (errors), kube_validate (decode and
validation), kube_patch (patches), kube_select (selectors), kube_store (objects, history, watches),
kube_rest (write verbs), kube_list (list and watch), kube_review (reviews), kube_auth (tokens, rules),
kube_table (kubectl tables), kube_proto (kubectl's protobuf bodies), kube_tls (the https listener kubectl
needs: it sends no token over plain http).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web

from rotator.sandbox import kube_tokens
from rotator.sandbox import kube_types as types
from rotator.sandbox.kube_auth import Attributes, Authorizer, Rule, User
from rotator.sandbox.kube_list import Lister
from rotator.sandbox.kube_rest import Call, Rest, respond
from rotator.sandbox.kube_review import Reviews
from rotator.sandbox.kube_status import (
    KubeError,
    bad_request,
    error_response,
    forbidden,
    method_not_allowed,
    not_found_path,
    unauthorized,
)
from rotator.sandbox.kube_store import Store
from rotator.sandbox.kube_tls import TlsListener, load_or_create
from rotator.sandbox.kube_types import NAMESPACES, ResourceType

log = logging.getLogger(__name__)

SYSTEM_NAMESPACE = "rotator-system"
PUBLIC_PATHS = ("/version", "/healthz", "/livez", "/readyz")
VERBS_BY_METHOD = {
    # (method, addresses one object) -> verb
    ("GET", True): "get",
    ("PUT", True): "update",
    ("PATCH", True): "patch",
    ("DELETE", True): "delete",
    ("GET", False): "list",
    ("POST", False): "create",
    ("DELETE", False): "deletecollection",
}


class KubeEmulator:
    name = "kubernetes"

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.store = Store()
        self.auth = Authorizer()
        self.auth.seed(admin_token=ctx.seed.kubernetes_token, readonly_token=ctx.seed.kubernetes_readonly_token)
        self.rest = Rest(self.store)
        self.lister = Lister(self.store)
        self.reviews = Reviews(self.auth)
        files_dir = Path(ctx.files_dir) if ctx.files_dir else Path(tempfile.mkdtemp(prefix="rotator-kube-"))
        self.tls = TlsListener(load_or_create(files_dir))
        self.ca_file = files_dir / "kube-apiserver-ca.crt"
        self.ca_file.write_text(self.tls.ca_pem())
        self._seed_world()

    def _seed_world(self) -> None:
        seed = self.ctx.seed
        key, value = seed.namespace_label
        for namespace in dict.fromkeys([*seed.namespaces, SYSTEM_NAMESPACE]):
            labels = {key: value} if namespace in seed.labelled_namespaces else {}
            body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels}}
            self.rest.insert(NAMESPACES, body)

    # -- Emulator protocol ----------------------------------------------------------------------------
    def setup(self, app: web.Application) -> None:
        route = web.route("*", "/{tail:.*}", self.handle)
        app.add_routes([route])
        self.tls.attach(app, route)

    def error_response(self, status: int, message: str, *, retry_after: int | None = None) -> web.Response:
        return error_response(status, message, retry_after)

    def describe(self) -> dict[str, Any]:
        return {
            "kubernetes_system_namespace": SYSTEM_NAMESPACE,
            "kubernetes_tls": self.tls.url,
            "kubernetes_ca_file": str(self.ca_file),
        }

    def kubeconfig(self) -> str:
        """A kubeconfig for kubectl (and any client): the TLS listener, its CA inline, the admin token."""
        return (
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: sandbox\n  cluster:\n    server: {self.tls.url}\n"
            f"    certificate-authority-data: {self.tls.ca_data()}\n"
            f"users:\n- name: admin\n  user:\n    token: {self.ctx.seed.kubernetes_token}\n"
            "contexts:\n- name: sandbox\n  context:\n    cluster: sandbox\n    user: admin\n"
            "current-context: sandbox\n"
        )

    def dump(self) -> dict[str, Any]:
        return {"store": self.store.dump(), "tokens": self.auth.dump()}

    def load(self, data: dict[str, Any]) -> None:
        self.store.load(data.get("store", {}))
        self.auth.load(data.get("tokens", []))

    # -- request handling ---------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._dispatch(request)
        except KubeError as exc:
            return exc.response()
        except Exception as exc:  # a bug here must still answer in the API's shape
            log.exception("kubernetes emulator error on %s %s", request.method, request.path)
            return error_response(500, f"sandbox emulator error: {type(exc).__name__}")

    def _authenticate(self, request: web.Request) -> User | None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            if request.path in PUBLIC_PATHS:
                return None
            raise unauthorized()
        user = self.auth.authenticate(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise unauthorized()
        return user

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        user = self._authenticate(request)
        segments = [s for s in request.path.split("/") if s]
        discovery = self._discovery(request, segments)
        if discovery is not None:
            if request.method != "GET":
                raise method_not_allowed()
            return discovery
        token_request = kube_tokens.PATH.match(request.path)
        if token_request is not None and user is not None:
            return await self._token_request(request, user, **token_request.groupdict())
        call = self._resolve(request, segments)
        if call is None or user is None:
            raise not_found_path()
        return await self._serve(call, user)

    def _discovery(self, request: web.Request, segments: list[str]) -> web.StreamResponse | None:
        path = "/" + "/".join(segments)
        if path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok")
        if path == "/version":
            return respond(types.SERVER_VERSION)
        if path == "/api":
            return respond(types.api_versions(request.host))
        if path == "/apis":
            return respond(types.api_group_list())
        if path == "/api/v1":
            return respond(types.api_resource_list("", "v1"))
        if len(segments) == 2 and segments[0] == "apis" and segments[1] in types.GROUPS:
            return respond(types.api_group_doc(segments[1]))
        if len(segments) == 3 and segments[0] == "apis" and segments[2] in types.BY_PATH.get(segments[1], {}):
            return respond(types.api_resource_list(segments[1], segments[2]))
        return None

    def _resolve(self, request: web.Request, segments: list[str]) -> Call | None:
        """The resource, namespace and name a path addresses, or None for an unknown path."""
        if len(segments) >= 2 and segments[0] == "api" and segments[1] == "v1":
            group, version, rest = "", "v1", segments[2:]
        elif len(segments) >= 3 and segments[0] == "apis":
            group, version, rest = segments[1], segments[2], segments[3:]
        else:
            return None
        served = types.BY_PATH.get(group, {}).get(version)
        query = dict(request.query)
        if served is None or not rest:
            return None
        if rest[0] == "watch":  # the deprecated /watch/ paths
            query["watch"], rest = "true", rest[1:]
        namespaced = len(rest) >= 3 and rest[0] == "namespaces" and rest[2] in served and served[rest[2]].namespaced
        namespace = rest[1] if namespaced else None
        rest = rest[2:] if namespaced else rest
        if not rest or len(rest) > 2 or rest[0] not in served:
            return None
        rt = served[rest[0]]
        name = rest[1] if len(rest) == 2 else None
        if rt.namespaced and namespace is None and name is not None:
            return None
        return Call(request=request, rt=rt, namespace=namespace, name=name, query=query)

    async def _serve(self, call: Call, user: User) -> web.StreamResponse:
        method, rt = call.request.method, call.rt
        if not rt.stored:
            if method != "POST" or call.name is not None:
                raise method_not_allowed()
            self._authorize(user, call, "create")
            return await self.reviews.create(call, user)
        all_namespaces = rt.namespaced and call.namespace is None
        verb = VERBS_BY_METHOD.get((method, call.name is not None))
        if verb is None or (all_namespaces and verb != "list"):
            raise method_not_allowed()
        watching = verb in ("list", "get") and call.query.get("watch") in ("1", "true", "True")
        if watching and call.name is not None:
            field = f"metadata.name={call.name}"
            existing = call.query.get("fieldSelector")
            call.query["fieldSelector"] = f"{existing},{field}" if existing else field
            call.name = None
        self._authorize(user, call, "watch" if watching else verb)
        if watching:
            return await self.lister.watch(call)
        handler = {
            "get": self.rest.get,
            "list": self.lister.list_objects,
            "create": self.rest.create,
            "update": self.rest.replace,
            "patch": self.rest.patch,
            "delete": self.rest.delete,
            "deletecollection": self.lister.delete_collection,
        }[verb]
        return await handler(call)

    async def _token_request(self, request: web.Request, user: User, *, namespace: str, name: str) -> web.Response:
        if request.method != "POST":
            raise method_not_allowed()
        attrs = Attributes(
            verb="create", resource="serviceaccounts", subresource="token", namespace=namespace, name=name
        )
        if not self.auth.allowed(user.username, user.groups, attrs):
            raise forbidden("serviceaccounts", "", name, attrs.describe(user.username))
        try:
            body = json.loads(await request.read() or b"null")
        except ValueError:
            raise bad_request("the request body is not JSON") from None
        return respond(kube_tokens.issue(self.store, self.ctx.signer, namespace, name, body), status=201)

    def _authorize(self, user: User, call: Call, verb: str) -> None:
        rt = call.rt
        attrs = Attributes(verb=verb, group=rt.group, resource=rt.plural, namespace=call.ns, name=call.name or "")
        if rt is NAMESPACES and call.name:
            attrs = Attributes(verb=verb, resource=rt.plural, namespace=call.name, name=call.name)
        if not self.auth.allowed(user.username, user.groups, attrs):
            shown = Attributes(verb=verb, group=rt.group, resource=rt.plural, namespace=attrs.namespace)
            raise forbidden(rt.plural, rt.group, call.name or "", shown.describe(user.username))

    # -- admin API (served on the sandbox admin port) -----------------------------------------------
    def admin_routes(self) -> list[web.RouteDef]:
        return [
            web.post("/kubernetes/tokens", self._admin_add_token),
            web.delete("/kubernetes/tokens/{token}", self._admin_remove_token),
            web.post("/kubernetes/compact", self._admin_compact),
            web.get("/kubernetes/stats", self._admin_stats),
            web.put("/kubernetes/config", self._admin_config),
        ]

    @staticmethod
    def _admin_error(status: int, message: str) -> web.Response:
        return web.json_response({"error": message}, status=status)

    async def _admin_add_token(self, request: web.Request) -> web.Response:
        """Body: {"user": "name", "groups": [...], "rules": [{verbs, apiGroups, resources, namespaces,
        resourceNames, nonResourceURLs}], "token": optional}. Answers the token and the user."""
        try:
            body = json.loads(await request.read())
            if not isinstance(body, dict) or not isinstance(body.get("user"), str) or not body["user"]:
                raise ValueError("'user' (a non-empty string) is required")
            groups = body.get("groups", [])
            if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
                raise ValueError("'groups' must be a list of strings")
            rules = [Rule.from_json(r) for r in body.get("rules", [])]
            token = body.get("token")
            if token is not None and (not isinstance(token, str) or not token):
                raise ValueError("'token' must be a non-empty string")
        except (ValueError, TypeError) as exc:
            return self._admin_error(400, f"bad token request: {exc}")
        token, user = self.auth.add_token(username=body["user"], groups=groups, rules=rules, token=token)
        return web.json_response({"token": token, "user": user.to_json()}, status=201)

    async def _admin_remove_token(self, request: web.Request) -> web.Response:
        if not self.auth.remove_token(request.match_info["token"]):
            return self._admin_error(404, "unknown token")
        return web.Response(status=204)

    async def _admin_compact(self, _: web.Request) -> web.Response:
        return web.json_response({"compactedResourceVersion": str(self.store.compact())})

    async def _admin_stats(self, _: web.Request) -> web.Response:
        return web.json_response(self._stats())

    def _stats(self) -> dict[str, Any]:
        return {
            "resourceVersion": str(self.store.rv),
            "compactedResourceVersion": str(self.store.compacted_rv),
            "historySize": len(self.store.history),
            "historyLimit": self.store.history_limit,
            "watchers": self.store.watcher_count(),
            "bookmarkIntervalSeconds": self.lister.bookmark_interval_s,
            "objects": {rt.key: self.store.count(rt.key) for rt in types.RESOURCES if rt.stored},
        }

    async def _admin_config(self, request: web.Request) -> web.Response:
        """Body: {"historyLimit": int, "bookmarkIntervalSeconds": float}; either may be left out."""
        try:
            body = json.loads(await request.read())
            if not isinstance(body, dict) or set(body) - {"historyLimit", "bookmarkIntervalSeconds"}:
                raise ValueError("known fields: historyLimit, bookmarkIntervalSeconds")
            limit, interval = body.get("historyLimit"), body.get("bookmarkIntervalSeconds")
            if limit is not None and (not isinstance(limit, int) or limit < 1):
                raise ValueError("historyLimit must be a positive integer")
            if interval is not None and (not isinstance(interval, int | float) or interval <= 0):
                raise ValueError("bookmarkIntervalSeconds must be a positive number")
        except (ValueError, TypeError) as exc:
            return self._admin_error(400, f"bad config: {exc}")
        if limit is not None:
            self.store.set_history_limit(limit)
        if interval is not None:
            self.lister.bookmark_interval_s = float(interval)
        return web.json_response(self._stats())


__all__ = ["KubeEmulator", "ResourceType"]
