"""TokenRequest: ``POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`` (what ``kubectl create token``
and the kubelet's projected tokens use).

The token is a bound service-account JWT signed by the sandbox signer, shaped like the apiserver's: ``iss``,
``sub: system:serviceaccount:<ns>:<name>``, ``aud`` (``spec.audiences``, the API server's own when empty),
``iat``/``nbf``/``exp`` and a ``kubernetes.io`` claim naming the namespace and service account. The same
token authenticates at this API server for its audiences (rules bound to the service account's user apply),
and the IAM emulator in the same process verifies it for its trusted-profile (compute-resource) sign-in.
The kubelet writes the same kind of token into a projected volume; tests play the kubelet by calling this
API and writing the file. The emulator's own authenticator does not check ``exp`` (IAM does).
"""

from __future__ import annotations

import time
from typing import Any

import jwt
from aiohttp import web

from rotator.sandbox.kube_auth import API_AUDIENCES, Attributes, Authorizer, User
from rotator.sandbox.kube_rest import BODY_TYPES, Call, Rest, read_body, respond
from rotator.sandbox.kube_status import Cause, bad_request, forbidden, invalid, invalid_value, method_not_allowed
from rotator.sandbox.kube_types import SERVICEACCOUNTS
from rotator.sandbox.tokens import TokenSigner

# The apiserver's identity: the issuer of its service-account tokens and their default audience.
ISSUER = API_AUDIENCES[0]
DEFAULT_EXPIRATION_S = 3600  # the real default of spec.expirationSeconds
MIN_EXPIRATION_S = 600  # the real apiserver refuses shorter ("may not specify a duration less than 10 minutes")


def token_request_path(segments: list[str]) -> tuple[str, str] | None:
    """(namespace, service account) when the path is a TokenRequest, else None."""
    if len(segments) == 7 and segments[:3] == ["api", "v1", "namespaces"] and segments[4] == "serviceaccounts":
        return (segments[3], segments[5]) if segments[6] == "token" else None
    return None


def _spec(name: str, body: Any) -> tuple[list[str], int]:
    if body is not None and not isinstance(body, dict):
        raise bad_request("the request body must be a TokenRequest object")
    spec = (body or {}).get("spec") or {}
    if not isinstance(spec, dict):
        raise bad_request("spec must be an object")
    audiences = spec.get("audiences") or list(API_AUDIENCES)
    seconds = spec.get("expirationSeconds") or DEFAULT_EXPIRATION_S
    causes: list[Cause] = []
    if not isinstance(audiences, list) or not all(isinstance(a, str) and a for a in audiences):
        causes.append(invalid_value("spec.audiences", str(audiences), "must be a list of non-empty strings"))
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < MIN_EXPIRATION_S:
        causes.append(
            invalid_value("spec.expirationSeconds", str(seconds), "may not specify a duration less than 10 minutes")
        )
    if causes:
        raise invalid("TokenRequest", "authentication.k8s.io", name, causes)
    return audiences, seconds


async def create_token(
    request: web.Request, caller: User, auth: Authorizer, rest: Rest, signer: TokenSigner, namespace: str, name: str
) -> web.Response:
    if request.method != "POST":
        raise method_not_allowed()
    attrs = Attributes(verb="create", resource="serviceaccounts", subresource="token", namespace=namespace, name=name)
    if not auth.allowed(caller.username, caller.groups, attrs):
        raise forbidden("serviceaccounts", "", name, attrs.describe(caller.username))
    call = Call(request=request, rt=SERVICEACCOUNTS, namespace=namespace, name=name)
    account = rest.existing(call)  # 404 as the real one
    audiences, seconds = _spec(name, await read_body(call, BODY_TYPES))  # kubectl sends protobuf
    now = int(time.time())
    subject = f"system:serviceaccount:{namespace}:{name}"
    claims = {
        "aud": audiences,
        "exp": now + seconds,
        "iat": now,
        "nbf": now,
        "iss": ISSUER,
        "sub": subject,
        "kubernetes.io": {
            "namespace": namespace,
            "serviceaccount": {"name": name, "uid": account["metadata"].get("uid", "")},
        },
    }
    token = signer.sign(claims, x5c=False)
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"]
    auth.add_token(username=subject, groups=groups, rules=[], token=token, audiences=tuple(audiences))
    return respond(
        {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": None},
            "spec": {"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": None},
            "status": {
                "token": token,
                "expirationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + seconds)),
            },
        },
        201,
    )


def verify(signer: TokenSigner, token: str, audience: str) -> dict[str, Any]:
    """The claims of a service-account token this sandbox issued for ``audience``; raises
    ``jwt.PyJWTError`` for a bad signature, another audience, another issuer or an expired token."""
    claims: dict[str, Any] = jwt.decode(
        token, signer.key.public_key(), algorithms=["RS256"], audience=audience, issuer=ISSUER
    )
    return claims
