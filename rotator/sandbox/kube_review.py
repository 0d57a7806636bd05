"""TokenReview, SubjectAccessReview and SelfSubjectAccessReview: answered, never stored."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from rotator.sandbox.kube_auth import API_AUDIENCES, Attributes, Authorizer, User
from rotator.sandbox.kube_rest import BODY_TYPES, Call, read_body, respond
from rotator.sandbox.kube_status import Cause, KubeError, bad_request, invalid, invalid_value
from rotator.sandbox.kube_types import SELFSUBJECTACCESSREVIEWS, SUBJECTACCESSREVIEWS, TOKENREVIEWS
from rotator.sandbox.kube_validate import decode

EXACTLY_ONE = "exactly one of nonResourceAttributes or resourceAttributes must be specified"


def _attributes(spec: dict[str, Any], kind: str) -> Attributes:
    resource, non_resource = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
    if (resource is None) == (non_resource is None):
        raise invalid(kind, "authorization.k8s.io", "", [invalid_value("spec.resourceAttributes", "null", EXACTLY_ONE)])
    attrs = resource if resource is not None else non_resource
    if not isinstance(attrs, dict) or not all(isinstance(v, str) for v in attrs.values() if v is not None):
        raise bad_request(f'{kind} in version "v1" cannot be handled as a {kind}: attributes must be strings')
    if non_resource is not None:
        return Attributes(verb=attrs.get("verb") or "", path=attrs.get("path") or "")
    return Attributes(
        verb=attrs.get("verb") or "",
        group=attrs.get("group") or "",
        resource=attrs.get("resource") or "",
        subresource=attrs.get("subresource") or "",
        namespace=attrs.get("namespace") or "",
        name=attrs.get("name") or "",
    )


def _go_quoted(values: Any) -> str:
    return "[" + " ".join(json.dumps(v) for v in values) + "]"


def _decision(auth: Authorizer, username: str, groups: list[str], attrs: Attributes) -> dict[str, Any]:
    if auth.allowed(username, groups, attrs):
        return {"allowed": True, "reason": "allowed by a sandbox rule"}
    return {"allowed": False}


class Reviews:
    def __init__(self, auth: Authorizer) -> None:
        self.auth = auth

    async def create(self, call: Call, caller: User) -> web.Response:
        obj, _ = decode(call.rt, await read_body(call, BODY_TYPES))
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            spec = {}
        obj["metadata"] = {"creationTimestamp": None} | {k: v for k, v in obj["metadata"].items() if k == "name"}
        if call.rt is TOKENREVIEWS:
            obj["status"] = self._token_review(spec)
        elif call.rt is SUBJECTACCESSREVIEWS:
            obj["status"] = self._subject_review(spec)
        elif call.rt is SELFSUBJECTACCESSREVIEWS:
            attrs = _attributes(spec, "SelfSubjectAccessReview")
            obj["status"] = _decision(self.auth, caller.username, list(caller.groups), attrs)
        else:  # pragma: no cover - routing only sends the three kinds here
            raise KubeError(404, "the server could not find the requested resource", details={})
        obj["spec"] = spec
        return respond(obj, 201)

    def _token_review(self, spec: dict[str, Any]) -> dict[str, Any]:
        token = spec.get("token")
        if not isinstance(token, str) or not token:
            raise bad_request("token is required for TokenReview in authentication")
        wanted = spec.get("audiences") or list(API_AUDIENCES)
        if not isinstance(wanted, list) or not all(isinstance(a, str) for a in wanted):
            raise bad_request("TokenReview spec.audiences must be a list of strings")
        if token not in self.auth.tokens:
            return {"user": {}, "error": "[invalid bearer token, token lookup failed]"}
        found = self.auth.authenticate(token, tuple(wanted))
        if found is None:  # issued for other audiences: the real API server's wording (Go's %q of a slice)
            issued = _go_quoted(self.auth.audiences.get(token, API_AUDIENCES))
            error = f"token audiences {issued} is invalid for the target audiences {_go_quoted(wanted)}"
            return {"user": {}, "error": f"[invalid bearer token, {error}]"}
        user, matched = found
        return {"authenticated": True, "user": user.to_json(), "audiences": matched}

    def _subject_review(self, spec: dict[str, Any]) -> dict[str, Any]:
        username, groups = spec.get("user") or "", spec.get("groups") or []
        causes: list[Cause] = []
        if not isinstance(username, str) or not isinstance(groups, list):
            raise bad_request("SubjectAccessReview spec.user must be a string and spec.groups a list")
        if not username and not groups:
            causes.append(invalid_value("spec.user", "", "at least one of user or group must be specified"))
        if causes:
            raise invalid("SubjectAccessReview", "authorization.k8s.io", "", causes)
        attrs = _attributes(spec, "SubjectAccessReview")
        return _decision(self.auth, username, [str(g) for g in groups], attrs)
