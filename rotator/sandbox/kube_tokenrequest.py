"""TokenRequest: ``POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`` (what ``kubectl create token``
and the kubelet's projected tokens use). The token is issued for ``spec.audiences`` (the API server's own
when empty) to the user ``system:serviceaccount:<ns>:<name>``; rules bound to that user apply to it.
Tokens do not expire in the emulator; the answer still carries an expiration, as the real one does.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web

from rotator.sandbox.kube_auth import API_AUDIENCES, Attributes, Authorizer, User
from rotator.sandbox.kube_rest import BODY_TYPES, Call, Rest, read_body, respond
from rotator.sandbox.kube_status import bad_request, forbidden, invalid, invalid_value, method_not_allowed
from rotator.sandbox.kube_types import SERVICEACCOUNTS

DEFAULT_EXPIRATION_S = 3600  # the real default of spec.expirationSeconds
MIN_EXPIRATION_S = 600  # the real apiserver refuses shorter


def token_request_path(segments: list[str]) -> tuple[str, str] | None:
    """(namespace, service account) when the path is a TokenRequest, else None."""
    if len(segments) == 7 and segments[:3] == ["api", "v1", "namespaces"] and segments[4] == "serviceaccounts":
        return (segments[3], segments[5]) if segments[6] == "token" else None
    return None


def _spec(body: Any) -> tuple[list[str], int]:
    spec = body.get("spec") if isinstance(body, dict) else None
    spec = spec if isinstance(spec, dict) else {}
    audiences = spec.get("audiences") or list(API_AUDIENCES)
    if not isinstance(audiences, list) or not all(isinstance(a, str) and a for a in audiences):
        raise bad_request("TokenRequest spec.audiences must be a list of non-empty strings")
    expiration = spec.get("expirationSeconds") or DEFAULT_EXPIRATION_S
    if isinstance(expiration, bool) or not isinstance(expiration, int) or expiration < MIN_EXPIRATION_S:
        cause = invalid_value(
            "spec.expirationSeconds", str(expiration), "may not specify a duration less than 10 minutes"
        )
        raise invalid("TokenRequest", "authentication.k8s.io", "", [cause])
    return audiences, expiration


async def create_token(
    request: web.Request, caller: User, auth: Authorizer, rest: Rest, namespace: str, name: str
) -> web.Response:
    if request.method != "POST":
        raise method_not_allowed()
    attrs = Attributes(verb="create", resource="serviceaccounts", subresource="token", namespace=namespace, name=name)
    if not auth.allowed(caller.username, caller.groups, attrs):
        raise forbidden("serviceaccounts", "", name, attrs.describe(caller.username))
    call = Call(request=request, rt=SERVICEACCOUNTS, namespace=namespace, name=name)
    rest.existing(call)  # 404 as the real one
    audiences, expiration = _spec(await read_body(call, BODY_TYPES))  # kubectl sends protobuf
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"]
    token, _ = auth.add_token(
        username=f"system:serviceaccount:{namespace}:{name}", groups=groups, rules=[], audiences=tuple(audiences)
    )
    expires = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=expiration)
    return respond(
        {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": None},
            "spec": {"audiences": audiences, "expirationSeconds": expiration, "boundObjectRef": None},
            "status": {"token": token, "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ")},
        },
        201,
    )
