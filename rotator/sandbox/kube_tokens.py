"""The TokenRequest API: ``POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token``.

Issues a bound service-account token (a JWT signed by the sandbox signer, which the IAM emulator in the
same process verifies for its compute-resource sign-in), shaped like the apiserver's projected tokens:
``iss``, ``sub: system:serviceaccount:<ns>:<name>``, ``aud`` (a list), ``iat``/``nbf``/``exp`` and a
``kubernetes.io`` claim naming the namespace and service account. The kubelet writes the same kind of
token into a projected volume; tests play the kubelet by calling this API and writing the file.
"""

from __future__ import annotations

import re
import time
from typing import Any

import jwt

from rotator.sandbox.kube_status import Cause, bad_request, invalid, invalid_value, not_found
from rotator.sandbox.kube_types import SERVICEACCOUNTS
from rotator.sandbox.tokens import TokenSigner

PATH = re.compile(r"^/api/v1/namespaces/(?P<namespace>[^/]+)/serviceaccounts/(?P<name>[^/]+)/token/?$")
# The apiserver's own identity, the default audience and issuer of a cluster's service-account tokens.
ISSUER = "https://kubernetes.default.svc"
DEFAULT_EXPIRATION_S = 3600
MIN_EXPIRATION_S = 600  # the apiserver refuses shorter tokens ("may not specify a duration less than 10 minutes")


def issue(store: Any, signer: TokenSigner, namespace: str, name: str, body: Any) -> dict[str, Any]:
    """The TokenRequest answered: the request echoed back with ``status.token`` filled in."""
    account = store.get(SERVICEACCOUNTS.key, namespace, name)
    if account is None:
        raise not_found(SERVICEACCOUNTS.plural, "", name)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise bad_request("the request body must be a TokenRequest object")
    spec = body.get("spec") or {}
    if not isinstance(spec, dict):
        raise bad_request("spec must be an object")
    audiences = spec.get("audiences") or [ISSUER]
    seconds = spec.get("expirationSeconds", DEFAULT_EXPIRATION_S)
    causes: list[Cause] = []
    if not isinstance(audiences, list) or not all(isinstance(a, str) and a for a in audiences):
        causes.append(invalid_value("spec.audiences", audiences, "must be a list of non-empty strings"))
    if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds < MIN_EXPIRATION_S:
        causes.append(
            invalid_value("spec.expirationSeconds", seconds, "may not specify a duration less than 10 minutes")
        )
    if causes:
        raise invalid("TokenRequest", "authentication.k8s.io", name, causes)
    now = int(time.time())
    exp = now + int(seconds)
    uid = account["metadata"].get("uid", "")
    claims = {
        "aud": list(audiences),
        "exp": exp,
        "iat": now,
        "nbf": now,
        "iss": ISSUER,
        "sub": f"system:serviceaccount:{namespace}:{name}",
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}},
    }
    return {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": None},
        "spec": {"audiences": list(audiences), "expirationSeconds": int(seconds), "boundObjectRef": None},
        "status": {
            "token": signer.sign(claims, x5c=False),
            "expirationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(exp)),
        },
    }


def verify(signer: TokenSigner, token: str, audience: str) -> dict[str, Any]:
    """The claims of a service-account token this sandbox issued for ``audience``; raises
    ``jwt.PyJWTError`` for a bad signature, another audience, another issuer or an expired token."""
    claims: dict[str, Any] = jwt.decode(
        token, signer.key.public_key(), algorithms=["RS256"], audience=audience, issuer=ISSUER
    )
    return claims
