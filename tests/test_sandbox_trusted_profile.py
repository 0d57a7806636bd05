"""Keyless sign-in at the IAM emulator: a trusted profile assumed with a compute-resource token from the
Kubernetes emulator's TokenRequest API, judged by IBM's own ContainerAuthenticator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from ibm_cloud_sdk_core import ApiException
from ibm_cloud_sdk_core.authenticators import ContainerAuthenticator
from ibm_platform_services import IamIdentityV1
from kubelet import ensure_service_account, kube, project_token, request_token

from rotator.sandbox.control import SandboxProcess


def container_sdk(endpoints: dict[str, Any], token_file: Path, **profile: str) -> IamIdentityV1:
    authenticator = ContainerAuthenticator(cr_token_filename=str(token_file), url=endpoints["iam"], **profile)
    service = IamIdentityV1(authenticator=authenticator)
    service.set_service_url(endpoints["iam"])
    return service


def linked(endpoints: dict[str, Any]) -> tuple[str, str]:
    return endpoints["trusted_profile_namespace"], endpoints["trusted_profile_service_account"]


def test_token_request_issues_a_bound_service_account_token(shared_sandbox: SandboxProcess) -> None:
    namespace, name = "team-a", "tokened"
    ensure_service_account(shared_sandbox, namespace, name)
    claims = jwt.decode(request_token(shared_sandbox, namespace, name), options={"verify_signature": False})
    assert claims["sub"] == f"system:serviceaccount:{namespace}:{name}"
    assert claims["aud"] == ["iam"] and claims["exp"] - claims["iat"] == 3600
    assert claims["kubernetes.io"]["serviceaccount"]["name"] == name
    missing = kube(shared_sandbox, "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/nobody/token", {})
    assert (missing.status_code, missing.json()["reason"]) == (404, "NotFound")
    short = kube(
        shared_sandbox,
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
        {"spec": {"audiences": ["iam"], "expirationSeconds": 60}},
    )
    assert (short.status_code, short.json()["details"]["causes"][0]["field"]) == (422, "spec.expirationSeconds")


@pytest.mark.parametrize("by", ["iam_profile_name", "iam_profile_id"])
def test_container_authenticator_signs_in_as_the_profile(
    shared_sandbox: SandboxProcess, tmp_path: Path, by: str
) -> None:
    """The official SDK reads the token file, assumes the profile, and may manage the target's keys."""
    endpoints = shared_sandbox.endpoints
    token_file = project_token(shared_sandbox, tmp_path / "sa-token", *linked(endpoints))
    value = endpoints["trusted_profile_name"] if by == "iam_profile_name" else endpoints["trusted_profile_id"]
    service = container_sdk(endpoints, token_file, **{by: value})
    keys = service.list_api_keys(iam_id=endpoints["service_iam_id"]).get_result()["apikeys"]
    assert {k["name"] for k in keys} >= set(endpoints["foreign_apikeys"])
    access = service.authenticator.token_manager.get_token()
    claims = jwt.decode(access, options={"verify_signature": False})
    assert (claims["iam_id"], claims["sub_type"]) == (f"iam-{endpoints['trusted_profile_id']}", "Profile")


@pytest.mark.parametrize(
    ("where", "audience"),
    [
        ("other-service-account", "iam"),
        ("other-namespace", "iam"),
        ("linked", "https://kubernetes.default.svc.cluster.local"),
    ],
)
def test_a_token_the_profile_does_not_link_is_refused(
    shared_sandbox: SandboxProcess, tmp_path: Path, where: str, audience: str
) -> None:
    endpoints = shared_sandbox.endpoints
    namespace, name = linked(endpoints)
    if where == "other-service-account":
        name = "not-rotator"
    elif where == "other-namespace":
        namespace = "team-b"
    token_file = project_token(shared_sandbox, tmp_path / "sa-token", namespace, name, audience)
    service = container_sdk(endpoints, token_file, iam_profile_name=endpoints["trusted_profile_name"])
    with pytest.raises(ApiException) as refused:
        service.list_api_keys(iam_id=endpoints["service_iam_id"])
    assert refused.value.code == 400
    expected = "BXNIM0106E" if audience != "iam" else "BXNIM0124E"
    assert refused.value.http_response.json()["errorCode"] == expected


def test_a_forged_or_unknown_profile_token_is_refused(shared_sandbox: SandboxProcess, tmp_path: Path) -> None:
    endpoints = shared_sandbox.endpoints
    token_file = project_token(shared_sandbox, tmp_path / "sa-token", *linked(endpoints))
    unknown = container_sdk(endpoints, token_file, iam_profile_name="no-such-profile")
    with pytest.raises(ApiException) as refused:
        unknown.list_api_keys(iam_id=endpoints["service_iam_id"])
    assert refused.value.http_response.json()["errorCode"] == "BXNIM0102E"
    claims = jwt.decode(token_file.read_text(), options={"verify_signature": False})
    forged = tmp_path / "forged"
    another_cluster = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged.write_text(jwt.encode(claims, another_cluster, algorithm="RS256"))
    service = container_sdk(endpoints, forged, iam_profile_name=endpoints["trusted_profile_name"])
    with pytest.raises(ApiException) as bad:
        service.list_api_keys(iam_id=endpoints["service_iam_id"])
    assert bad.value.http_response.json()["errorCode"] == "BXNIM0106E"


def test_an_expired_service_account_token_is_refused(shared_sandbox: SandboxProcess, tmp_path: Path) -> None:
    """The cluster's own key signed it for the linked account, but it expired: IAM refuses it."""
    endpoints = shared_sandbox.endpoints
    token_file = project_token(shared_sandbox, tmp_path / "sa-token", *linked(endpoints))
    claims = jwt.decode(token_file.read_text(), options={"verify_signature": False})
    claims.update(iat=claims["iat"] - 7200, nbf=claims["nbf"] - 7200, exp=claims["iat"] - 3600)
    cluster_key = serialization.load_pem_private_key(
        (Path(endpoints["files_dir"]) / "signer-key.pem").read_bytes(), password=None
    )
    token_file.write_text(jwt.encode(claims, cluster_key, algorithm="RS256"))  # type: ignore[arg-type]
    service = container_sdk(endpoints, token_file, iam_profile_name=endpoints["trusted_profile_name"])
    with pytest.raises(ApiException) as refused:
        service.list_api_keys(iam_id=endpoints["service_iam_id"])
    body = refused.value.http_response.json()
    assert body["errorCode"] == "BXNIM0106E" and "expired" in body["errorMessage"]
