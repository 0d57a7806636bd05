"""A Kubernetes API server emulator: enough of core/v1, coordination.k8s.io/v1 and the review APIs
for kubectl, the official Python client and rotator's adapter.

Served: discovery and OpenAPI v2/v3, namespaces, secrets, serviceaccounts, configmaps, events, leases
(CRUD, list with selectors and pagination, watch, three patch types and server-side apply with
managedFields, dry-run), TokenRequest (serviceaccounts/token: bound service-account JWTs, which the IAM
emulator also accepts for its trusted-profile sign-in), TokenReview and (Self)SubjectAccessReview,
and apiextensions.k8s.io/v1 CustomResourceDefinitions: each definition's kinds are served at once at
their REST paths, in discovery and OpenAPI, with schema validation, pruning, defaults, the status
subresource, printer columns, finalizers and CEL ``x-kubernetes-validations`` (with cel-python).
Every error is a ``Status`` shaped like the real apiserver's. See protocols.md section 7.

Module map: kube_types (resources, discovery), kube_status (errors), kube_validate (decode and
validation), kube_crd (definitions and the kinds they add), kube_schema (openAPIV3Schema: structural
rule, validation, pruning, defaults), kube_cel (CEL rules), kube_jsonpath (printer columns' JSONPath subset),
kube_patch (patches), kube_apply (server-side apply, managedFields), kube_openapi
(/openapi/v2 and /openapi/v3 for kubectl), kube_select (selectors), kube_store (objects, history, watches),
kube_rest (write verbs), kube_list (list and watch), kube_review (reviews), kube_tokenrequest (minting
service-account tokens for audiences), kube_auth (tokens, rules),
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

from rotator.sandbox import fleet
from rotator.sandbox import kube_openapi as openapi
from rotator.sandbox import kube_types as types
from rotator.sandbox.kube_auth import API_AUDIENCES, Attributes, Authorizer, Rule, User, name_from_field_selector
from rotator.sandbox.kube_crd import CustomKinds
from rotator.sandbox.kube_list import Lister
from rotator.sandbox.kube_rest import Call, Rest, respond
from rotator.sandbox.kube_review import Reviews
from rotator.sandbox.kube_status import (
    KubeError,
    error_response,
    forbidden,
    method_not_allowed,
    not_found_path,
    unauthorized,
)
from rotator.sandbox.kube_store import Store
from rotator.sandbox.kube_tls import TlsListener, load_or_create
from rotator.sandbox.kube_tokenrequest import create_token, token_request_path
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
    def __init__(self, ctx: Any, name: str = fleet.FIRST_SERVICE) -> None:
        """``name`` is the service: ``kubernetes`` (cluster 1, the seed's tokens) or ``kubernetes-i``
        (cluster i of a fleet: tokens derived from the seed's, files in a subdirectory)."""
        self.ctx = ctx
        self.name = name
        self.admin_token, self.readonly_token = ctx.seed.kubernetes_token, ctx.seed.kubernetes_readonly_token
        if name != fleet.FIRST_SERVICE:
            self.admin_token = fleet.derived_token(ctx.seed.kubernetes_token, name, "admin")
            self.readonly_token = fleet.derived_token(ctx.seed.kubernetes_token, name, "readonly")
        self.store = Store()
        self.auth = Authorizer()
        self.auth.seed(admin_token=self.admin_token, readonly_token=self.readonly_token)
        self.rest = Rest(self.store)
        self.kinds = CustomKinds(self.store)
        self.lister = Lister(self.store)
        self.reviews = Reviews(self.auth)
        files_dir = Path(ctx.files_dir) if ctx.files_dir else Path(tempfile.mkdtemp(prefix="rotator-kube-"))
        if name != fleet.FIRST_SERVICE:
            files_dir = files_dir / name
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
        """Today's endpoint keys, for cluster 1 only (a fleet's clusters are in ``clusters``)."""
        if self.name != fleet.FIRST_SERVICE:
            return {}
        return {
            "kubernetes_system_namespace": SYSTEM_NAMESPACE,
            "kubernetes_tls": self.tls.url,
            "kubernetes_ca_file": str(self.ca_file),
        }

    def cluster(self, count: int) -> dict[str, Any]:
        """This cluster's entry in the endpoints file's ``clusters`` list."""
        return {
            "name": fleet.cluster_name(self.name, count),
            "service": self.name,
            "url": self.ctx.urls[self.name],
            "tls_url": self.tls.url,
            "ca_file": str(self.ca_file),
            "token": self.admin_token,
            "readonly_token": self.readonly_token,
            "context": fleet.cluster_name(self.name, count),
        }

    def kubeconfig_entry(self, context: str, user: str) -> fleet.KubeconfigEntry:
        return fleet.KubeconfigEntry(context, user, self.tls.url, self.tls.ca_data(), self.admin_token)

    def kubeconfig(self) -> str:
        """A kubeconfig for kubectl (and any client): the TLS listener, its CA inline, the admin token."""
        return fleet.kubeconfig([self.kubeconfig_entry(fleet.SINGLE_CONTEXT, "admin")])

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
        found = self.auth.authenticate(token.strip()) if scheme.lower() == "bearer" else None
        if found is None:
            raise unauthorized()
        return found[0]

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        user = self._authenticate(request)
        segments = [s for s in request.path.split("/") if s]
        discovery = self._discovery(request, segments)
        if discovery is not None:
            if request.method != "GET":
                raise method_not_allowed()
            return discovery
        token_request = token_request_path(segments)
        if token_request is not None and user is not None:
            return await create_token(request, user, self.auth, self.rest, self.ctx.signer, *token_request)
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
        if segments[:1] == ["openapi"]:
            return self._openapi(request, segments[1:])
        paths = self.kinds.paths()
        if path == "/api":
            return respond(types.api_versions(request.host))
        if path == "/apis":
            return respond(types.api_group_list(paths))
        if path == "/api/v1":
            return respond(types.api_resource_list("", "v1"))
        if len(segments) == 2 and segments[0] == "apis" and segments[1] in paths:
            return respond(types.api_group_doc(segments[1], paths))
        if len(segments) == 3 and segments[0] == "apis" and segments[2] in paths.get(segments[1], {}):
            return respond(types.api_resource_list(segments[1], segments[2], paths))
        return None

    def _openapi(self, request: web.Request, segments: list[str]) -> web.StreamResponse:
        custom = self.kinds.custom()
        if segments == ["v3"]:
            return respond(openapi.v3_index(custom))
        if segments[:1] == ["v3"]:
            document = openapi.v3_lookup(segments[1:], custom)
            if document is None:
                raise not_found_path()
            return respond(document)
        if segments == ["v2"]:
            accept = request.headers.get("Accept", "*/*")
            if not any(t in accept for t in ("application/json", "*/*")):
                raise KubeError(406, "the server was unable to respond with a content type that the client supports")
            return respond(openapi.v2_document(custom))
        raise not_found_path()

    def _resolve(self, request: web.Request, segments: list[str]) -> Call | None:
        """The resource, namespace and name a path addresses, or None for an unknown path."""
        if len(segments) >= 2 and segments[0] == "api" and segments[1] == "v1":
            group, version, rest = "", "v1", segments[2:]
        elif len(segments) >= 3 and segments[0] == "apis":
            group, version, rest = segments[1], segments[2], segments[3:]
        else:
            return None
        served = self.kinds.paths().get(group, {}).get(version)
        query = dict(request.query)
        if served is None or not rest:
            return None
        if rest[0] == "watch":  # the deprecated /watch/ paths
            query["watch"], rest = "true", rest[1:]
        namespaced = len(rest) >= 3 and rest[0] == "namespaces" and rest[2] in served and served[rest[2]].namespaced
        namespace = rest[1] if namespaced else None
        rest = rest[2:] if namespaced else rest
        if not rest or len(rest) > 3 or rest[0] not in served:
            return None
        rt = served[rest[0]]
        name = rest[1] if len(rest) >= 2 else None
        subresource = rest[2] if len(rest) == 3 else None
        if subresource is not None and (subresource != "status" or rt.custom is None or not rt.custom.status):
            return None
        if rt.namespaced and namespace is None and name is not None:
            return None
        return Call(request=request, rt=rt, namespace=namespace, name=name, query=query, subresource=subresource)

    async def _serve(self, call: Call, user: User) -> web.StreamResponse:
        method, rt = call.request.method, call.rt
        if not rt.stored:
            if method != "POST" or call.name is not None:
                raise method_not_allowed()
            self._authorize(user, call, "create")
            return await self.reviews.create(call, user)
        all_namespaces = rt.namespaced and call.namespace is None
        verb = VERBS_BY_METHOD.get((method, call.name is not None))
        if verb is None or (all_namespaces and verb != "list") or (call.subresource and verb == "delete"):
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

    def _authorize(self, user: User, call: Call, verb: str) -> None:
        rt = call.rt
        name = call.name or ""
        if verb in ("list", "watch"):
            name = name_from_field_selector(call.query.get("fieldSelector", ""))
        attrs = Attributes(
            verb=verb,
            group=rt.group,
            resource=rt.plural,
            subresource=call.subresource or "",
            namespace=call.ns,
            name=name,
        )
        if rt is NAMESPACES and call.name:
            attrs = Attributes(verb=verb, resource=rt.plural, namespace=call.name, name=call.name)
        if not self.auth.allowed(user.username, user.groups, attrs):
            shown = Attributes(verb=verb, group=rt.group, resource=rt.plural, namespace=attrs.namespace)
            raise forbidden(rt.plural, rt.group, call.name or "", shown.describe(user.username))

    # -- admin API (served on the sandbox admin port) -----------------------------------------------
    def admin_routes(self) -> list[web.RouteDef]:
        return [
            web.post(f"/{self.name}/tokens", self._admin_add_token),
            web.delete(f"/{self.name}/tokens/{{token}}", self._admin_remove_token),
            web.post(f"/{self.name}/compact", self._admin_compact),
            web.get(f"/{self.name}/stats", self._admin_stats),
            web.put(f"/{self.name}/config", self._admin_config),
        ]

    @staticmethod
    def _admin_error(status: int, message: str) -> web.Response:
        return web.json_response({"error": message}, status=status)

    async def _admin_add_token(self, request: web.Request) -> web.Response:
        """Body: {"user": "name", "groups": [...], "rules": [{verbs, apiGroups, resources, namespaces,
        resourceNames, nonResourceURLs}], "token": optional, "audiences": optional (default: the API
        server's)}. Answers the token, the user and the audiences."""
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
            audiences = body.get("audiences", list(API_AUDIENCES))
            if not isinstance(audiences, list) or not audiences or not all(isinstance(a, str) and a for a in audiences):
                raise ValueError("'audiences' must be a non-empty list of non-empty strings")
        except (ValueError, TypeError) as exc:
            return self._admin_error(400, f"bad token request: {exc}")
        token, user = self.auth.add_token(
            username=body["user"], groups=groups, rules=rules, token=token, audiences=tuple(audiences)
        )
        return web.json_response({"token": token, "user": user.to_json(), "audiences": audiences}, status=201)

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
            "objects": {
                rt.key: self.store.count(rt.key) for rt in [*types.RESOURCES, *self.kinds.custom()] if rt.stored
            },
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
