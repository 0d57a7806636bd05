"""Fidelity of the Code Engine emulator, proven with IBM's own Python SDK (CodeEngineV2 + IAMAuthenticator)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from ibm_cloud_sdk_core import ApiException
from ibm_cloud_sdk_core.authenticators import IAMAuthenticator
from ibm_code_engine_sdk.code_engine_v2 import CodeEngineV2, SecretDataRegistrySecretData, SecretsPager

from rotator.sandbox.control import SandboxProcess

VERSION = "2026-03-27"


def sdk(endpoints: dict[str, Any], apikey: str | None = None) -> CodeEngineV2:
    authenticator = IAMAuthenticator(apikey=apikey or endpoints["admin_apikey"], url=endpoints["iam"])
    service = CodeEngineV2(authenticator=authenticator, version=VERSION)
    service.set_service_url(endpoints["codeengine"])
    return service


def token_for(endpoints: dict[str, Any], apikey: str | None = None) -> str:
    authenticator = IAMAuthenticator(apikey=apikey or endpoints["admin_apikey"], url=endpoints["iam"])
    token: str = authenticator.token_manager.get_token()
    return token


def registry_data(password: str = "key-one", server: str = "us.icr.io") -> SecretDataRegistrySecretData:
    return SecretDataRegistrySecretData(server=server, username="iamapikey", password=password, email="ops@example.com")


def assert_ibm_error(body: dict[str, Any], status: int, code: str | None = None) -> None:
    """The API-handbook error container: errors[] with code and message, a trace, the status code."""
    assert body["status_code"] == status
    assert body["trace"]
    error = body["errors"][0]
    assert error["code"] and error["message"]
    if code is not None:
        assert error["code"] == code


def test_sdk_registry_secret_lifecycle(sandbox: SandboxProcess) -> None:
    """create, get, replace (current and stale tag, and '*'), delete: the SDK's calls run unchanged."""
    endpoints = sandbox.endpoints
    project = endpoints["codeengine_project_id"]
    service = sdk(endpoints)

    created = service.create_secret(project, "registry", "icr-pull", data=registry_data())
    assert created.get_status_code() == 201
    secret = created.get_result()
    assert created.get_headers()["ETag"] == secret["entity_tag"]
    assert secret["resource_type"] == "secret_registry_v2"
    assert (secret["project_id"], secret["region"], secret["generated_by"]) == (project, "us-south", "user")
    assert secret["href"] == f"{endpoints['codeengine']}/projects/{project}/secrets/icr-pull"
    assert secret["id"] and secret["created_at"]

    got = service.get_secret(project, "icr-pull").get_result()
    # Documented choice: GET returns the registry password as stored.
    assert got["data"] == {
        "server": "us.icr.io",
        "username": "iamapikey",
        "password": "key-one",
        "email": "ops@example.com",
    }

    replaced = service.replace_secret(
        project, "icr-pull", got["entity_tag"], "registry", data=registry_data("key-two")
    ).get_result()
    assert replaced["data"]["password"] == "key-two"
    assert replaced["entity_tag"] != got["entity_tag"]
    assert replaced["id"] == secret["id"]

    with pytest.raises(ApiException) as stale:
        service.replace_secret(project, "icr-pull", got["entity_tag"], "registry", data=registry_data("key-three"))
    assert stale.value.code == 412
    assert_ibm_error(stale.value.http_response.json(), 412, "precondition_failed")
    assert service.get_secret(project, "icr-pull").get_result()["data"]["password"] == "key-two"

    forced = service.replace_secret(project, "icr-pull", "*", "registry", data=registry_data("key-four"))
    assert forced.get_result()["data"]["password"] == "key-four"

    assert service.delete_secret(project, "icr-pull").get_status_code() == 202
    with pytest.raises(ApiException) as gone:
        service.get_secret(project, "icr-pull")
    assert gone.value.code == 404


def test_pager_walks_every_page_and_filters_by_format(sandbox: SandboxProcess) -> None:
    """SecretsPager follows next.start across pages of 2 and stops when next is absent; format filters."""
    endpoints = sandbox.endpoints
    project = endpoints["codeengine_project_id"]
    service = sdk(endpoints)
    for i in range(5):
        service.create_secret(project, "generic", f"config-{i}", data={"key": str(i)})
    service.create_secret(project, "registry", "icr-pull", data=registry_data())

    pager = SecretsPager(client=service, project_id=project, limit=2)
    pages = []
    for _ in range(10):
        if not pager.has_next():
            break
        pages.append([s["name"] for s in pager.get_next()])
    assert pages == [["config-0", "config-1"], ["config-2", "config-3"], ["config-4", "icr-pull"]]

    registry_only = SecretsPager(client=service, project_id=project, format="registry", limit=2).get_all()
    assert [s["name"] for s in registry_only] == ["icr-pull"]

    first = service.list_secrets(project, limit=4).get_result()
    assert first["limit"] == 4
    assert first["first"]["href"].endswith("limit=4")
    assert first["next"]["start"] in first["next"]["href"]


@pytest.mark.parametrize(
    ("fmt", "content"),
    [
        pytest.param("generic", {"data": {"a.b_c-d": "v"}}, id="generic"),
        pytest.param("generic", {}, id="generic-without-data"),
        pytest.param("basic_auth", {"data": {"username": "u", "password": "p"}}, id="basic-auth"),
        pytest.param("ssh_auth", {"data": {"ssh_key": "-----BEGIN KEY-----", "known_hosts": "h"}}, id="ssh-auth"),
        pytest.param("tls", {"data": {"tls_cert": "cert", "tls_key": "key"}}, id="tls"),
        pytest.param("hmac_auth", {"data": {"access_key_id": "a", "secret_access_key": "s"}}, id="hmac-auth"),
        pytest.param("other", {"data": {"x": "y"}}, id="other"),
        pytest.param(
            "service_access",
            {"service_access": {"resource_key": {"id": "rk"}, "service_instance": {"id": "si"}}},
            id="service-access",
        ),
        pytest.param("service_operator", {"service_operator": {"resource_group_ids": ["rg"]}}, id="service-operator"),
    ],
)
def test_every_format_is_accepted(
    shared_sandbox: SandboxProcess, fmt: str, content: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    """A secret of each documented format is created and read back with its resource_type."""
    endpoints = shared_sandbox.endpoints
    project = endpoints["codeengine_project_id"]
    service = sdk(endpoints)
    name = f"fmt-{request.node.callspec.id}"
    created = service.create_secret(project, fmt, name, **content).get_result()
    try:
        assert created["format"] == fmt
        assert created["resource_type"].startswith("secret_") and created["resource_type"].endswith("_v2")
        got = service.get_secret(project, name).get_result()
        assert got.get("data") == content.get("data")
        for key in ("service_access", "service_operator"):
            if key in content:
                assert got[key] == content[key]
    finally:
        service.delete_secret(project, name)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda s, p: s.list_secrets(p), id="list"),
        pytest.param(lambda s, p: s.get_secret(p, "anything"), id="get"),
        pytest.param(lambda s, p: s.create_secret(p, "generic", "x", data={"a": "b"}), id="create"),
        pytest.param(lambda s, p: s.replace_secret(p, "x", "*", "generic", data={"a": "b"}), id="replace"),
        pytest.param(lambda s, p: s.delete_secret(p, "x"), id="delete"),
        pytest.param(lambda s, p: s.get_project(p), id="get-project"),
    ],
)
def test_outsider_is_forbidden(shared_sandbox: SandboxProcess, call: Any) -> None:
    """An identity without rights on the project gets 403 in IBM's shape for every operation."""
    endpoints = shared_sandbox.endpoints
    with pytest.raises(ApiException) as denied:
        call(sdk(endpoints, endpoints["outsider_apikey"]), endpoints["codeengine_project_id"])
    assert denied.value.code == 403
    assert_ibm_error(denied.value.http_response.json(), 403, "forbidden")


def test_duplicate_name_is_409_and_limit_is_enforced(sandbox: SandboxProcess) -> None:
    """Creating an existing name is 409; past the project's secret limit a create fails until one is deleted."""
    endpoints = sandbox.endpoints
    project = endpoints["codeengine_project_id"]
    service = sdk(endpoints)
    service.create_secret(project, "generic", "one", data={"a": "b"})
    with pytest.raises(ApiException) as duplicate:
        service.create_secret(project, "generic", "one", data={"a": "c"})
    assert duplicate.value.code == 409
    assert_ibm_error(duplicate.value.http_response.json(), 409, "already_exists")

    sandbox.admin.put("/codeengine/secret-limit", json={"limit": 2}).raise_for_status()
    service.create_secret(project, "generic", "two", data={"a": "b"})
    with pytest.raises(ApiException) as full:
        service.create_secret(project, "generic", "three", data={"a": "b"})
    assert full.value.code == 400
    body = full.value.http_response.json()
    assert_ibm_error(body, 400, "limit_exceeded")
    assert "maximum number of secrets (2)" in body["errors"][0]["message"]
    service.delete_secret(project, "one")
    assert service.create_secret(project, "generic", "three", data={"a": "b"}).get_status_code() == 201
    listed = sandbox.admin.get("/codeengine/secrets").raise_for_status().json()
    assert sorted(s["name"] for s in listed["secrets"]) == ["three", "two"]
    assert listed["projects"][0]["secret_limit"] == 2


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        pytest.param("a", True, id="one-char"),
        pytest.param("icr.pull-secret-2", True, id="dots-and-dashes"),
        pytest.param("9" + "a" * 252, True, id="253-chars"),
        pytest.param("a" * 254, False, id="254-chars"),
        pytest.param("Upper", False, id="upper-case"),
        pytest.param("-lead", False, id="leading-dash"),
        pytest.param("trail.", False, id="trailing-dot"),
        pytest.param("under_score", False, id="underscore"),
        pytest.param("", False, id="empty"),
    ],
)
def test_name_rules(shared_sandbox: SandboxProcess, name: str, ok: bool) -> None:
    """Names are lower-case alphanumerics, '-' and '.', start and end alphanumeric, at most 253 characters."""
    endpoints = shared_sandbox.endpoints
    project = endpoints["codeengine_project_id"]
    service = sdk(endpoints)
    if ok:
        assert service.create_secret(project, "generic", name, data={"a": "b"}).get_status_code() == 201
        service.delete_secret(project, name)
        return
    with pytest.raises(ApiException) as bad:
        service.create_secret(project, "generic", name, data={"a": "b"})
    assert bad.value.code == 400
    assert_ibm_error(bad.value.http_response.json(), 400)


def _future() -> str:
    """A date after the server's today when the request arrives: computed as the test runs, not when the suite
    is collected (a run across midnight UTC made a collected "tomorrow" today), and two days ahead so a
    midnight during the request cannot make it today either."""
    return (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=2)).isoformat()


@pytest.mark.parametrize(
    ("version", "status"),
    [
        pytest.param("2021-03-31", 200, id="oldest"),
        pytest.param("2026-03-27", 200, id="sdk-example"),
        pytest.param(None, 200, id="absent"),
        pytest.param("2021-03-30", 400, id="too-old"),
        pytest.param("2026-02-30", 400, id="not-a-date"),
        pytest.param("20260327", 400, id="no-dashes"),
        pytest.param("latest", 400, id="text"),
        pytest.param(_future, 400, id="future"),
    ],
)
def test_version_query(shared_sandbox: SandboxProcess, version: str | Callable[[], str] | None, status: int) -> None:
    """``version`` is a date from 2021-03-31 up to today; anything else is 400 invalid_version."""
    endpoints = shared_sandbox.endpoints
    if callable(version):
        version = version()
    params = {"version": version} if version is not None else {}
    response = httpx.get(
        f"{endpoints['codeengine']}/projects/{endpoints['codeengine_project_id']}/secrets",
        params=params,
        headers={"Authorization": f"Bearer {token_for(endpoints)}"},
    )
    assert response.status_code == status
    if status != 200:
        assert_ibm_error(response.json(), status, "invalid_version")


PROJECT = "{project}"
REGISTRY = {"format": "registry", "data": {"server": "us.icr.io", "username": "iamapikey", "password": "p"}}


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "auth", "status", "code"),
    [
        pytest.param("POST", "/secrets", {"content": b"{not json"}, True, 400, "bad_request", id="bad-json"),
        pytest.param("POST", "/secrets", {"json": [1]}, True, 400, "bad_request", id="json-not-object"),
        pytest.param("POST", "/secrets", {"json": {"format": "generic"}}, True, 400, "bad_request", id="no-name"),
        pytest.param("POST", "/secrets", {"json": {"name": "x"}}, True, 400, "bad_request", id="no-format"),
        pytest.param(
            "POST", "/secrets", {"json": {"name": "x", "format": "magic"}}, True, 400, "invalid_format", id="bad-format"
        ),
        pytest.param(
            "POST",
            "/secrets",
            {"json": {"name": "x", "format": "registry", "data": {"server": "s", "username": "u"}}},
            True,
            400,
            "invalid_data",
            id="registry-without-password",
        ),
        pytest.param(
            "POST", "/secrets", {"json": {"name": "x", "format": "registry"}}, True, 400, "invalid_data", id="no-data"
        ),
        pytest.param(
            "POST",
            "/secrets",
            {"json": {"name": "x", "format": "generic", "data": {"k": 1}}},
            True,
            400,
            "invalid_data",
            id="data-value-not-string",
        ),
        pytest.param(
            "POST",
            "/secrets",
            {"json": {"name": "x", "format": "generic", "data": {"bad key": "v"}}},
            True,
            400,
            "invalid_data",
            id="data-key-with-space",
        ),
        pytest.param(
            "POST",
            "/secrets",
            {"json": {"name": "x", "format": "generic", "data": ["v"]}},
            True,
            400,
            "invalid_data",
            id="data-not-object",
        ),
        pytest.param(
            "POST",
            "/secrets",
            {"json": {"name": "x", "format": "generic", "service_access": {"a": 1}}},
            True,
            400,
            "bad_request",
            id="props-of-another-format",
        ),
        pytest.param(
            "POST",
            "/secrets",
            {"json": {"name": "x", "format": "service_access"}},
            True,
            400,
            "bad_request",
            id="service-access-without-props",
        ),
        pytest.param(
            "POST",
            "/secrets",
            {"content": b'{"name":"x","format":"generic","data":{"k":"' + b"v" * (5 * 1024 * 1024) + b'"}}'},
            True,
            413,
            "request_too_large",
            id="body-over-5mb",
        ),
        pytest.param(
            "PUT", "/secrets/seeded", {"json": REGISTRY}, True, 428, "precondition_required", id="no-if-match"
        ),
        pytest.param(
            "PUT",
            "/secrets/seeded",
            {"json": {**REGISTRY, "format": "generic"}, "headers": {"If-Match": "*"}},
            True,
            400,
            "invalid_format",
            id="format-change",
        ),
        pytest.param(
            "PUT",
            "/secrets/seeded",
            {"json": {"format": "registry", "data": {"server": "s"}}, "headers": {"If-Match": "*"}},
            True,
            400,
            "invalid_data",
            id="replace-incomplete-registry",
        ),
        pytest.param(
            "PUT",
            "/secrets/missing",
            {"json": REGISTRY, "headers": {"If-Match": "*"}},
            True,
            404,
            "not_found",
            id="replace-missing",
        ),
        pytest.param("DELETE", "/secrets/missing", {}, True, 404, "not_found", id="delete-missing"),
        pytest.param("GET", "/secrets", {"params": {"limit": "0"}}, True, 400, "invalid_limit", id="limit-0"),
        pytest.param("GET", "/secrets", {"params": {"limit": "101"}}, True, 400, "invalid_limit", id="limit-101"),
        pytest.param("GET", "/secrets", {"params": {"limit": "ten"}}, True, 400, "invalid_limit", id="limit-text"),
        pytest.param("GET", "/secrets", {"params": {"start": "@@"}}, True, 400, "invalid_start", id="bad-start"),
        pytest.param("GET", "/secrets", {"params": {"format": "x"}}, True, 400, "invalid_format", id="bad-filter"),
        pytest.param("PATCH", "/secrets/seeded", {}, True, 405, "method_not_allowed", id="wrong-method"),
        pytest.param("GET", "/secrets", {}, False, 401, "unauthorized", id="no-token"),
        pytest.param(
            "GET",
            "/secrets",
            {"headers": {"Authorization": "Bearer a.b.c"}},
            None,
            401,
            "unauthorized",
            id="bad-token",
        ),
        pytest.param(
            "GET",
            "/secrets",
            {"headers": {"Authorization": "Basic dTpw"}},
            None,
            401,
            "unauthorized",
            id="basic-instead-of-bearer",
        ),
    ],
)
def test_malformed_requests(
    shared_sandbox: SandboxProcess,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    auth: bool | None,
    status: int,
    code: str,
) -> None:
    """Malformed requests get a 4xx in IBM's handbook error shape, never a 500."""
    endpoints = shared_sandbox.endpoints
    project = endpoints["codeengine_project_id"]
    token = token_for(endpoints)
    base = f"{endpoints['codeengine']}/projects/{project}"
    seeded = httpx.post(
        f"{base}/secrets",
        params={"version": VERSION},
        json={**REGISTRY, "name": "seeded"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert seeded.status_code in (201, 409)
    headers = dict(kwargs.pop("headers", {}))
    if auth:
        headers["Authorization"] = f"Bearer {token}"
    response = httpx.request(method, base + path, headers=headers, **kwargs)
    assert response.status_code == status
    assert_ibm_error(response.json(), status, code)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        pytest.param("/projects/00000000-0000-0000-0000-000000000000/secrets", 404, id="unknown-project"),
        pytest.param("/projects/00000000-0000-0000-0000-000000000000", 404, id="unknown-project-get"),
        pytest.param("/nowhere", 404, id="unknown-path"),
    ],
)
def test_unknown_paths_are_404_in_ibm_shape(shared_sandbox: SandboxProcess, path: str, status: int) -> None:
    """Unknown projects and paths are 404 with the handbook error container."""
    endpoints = shared_sandbox.endpoints
    response = httpx.get(endpoints["codeengine"] + path, headers={"Authorization": f"Bearer {token_for(endpoints)}"})
    assert response.status_code == status
    assert_ibm_error(response.json(), status, "not_found")


def test_injected_faults_use_ibm_shape(sandbox: SandboxProcess) -> None:
    """A throttled request is 429 with Retry-After, an injected 503 is in the handbook shape too."""
    endpoints = sandbox.endpoints
    service = sdk(endpoints)
    project = endpoints["codeengine_project_id"]
    service.list_secrets(project)  # token fetched before the faults
    sandbox.set_faults("codeengine", {"path_prefix": "/v2/projects", "throttle_seconds": 30, "retry_after": 7})
    with pytest.raises(ApiException) as throttled:
        service.list_secrets(project)
    assert throttled.value.code == 429
    assert throttled.value.http_response.headers["Retry-After"] == "7"
    assert_ibm_error(throttled.value.http_response.json(), 429, "too_many_requests")
    sandbox.set_faults("codeengine", {"path_prefix": "/v2/projects", "error_status": 503, "error_count": 1})
    with pytest.raises(ApiException) as unavailable:
        service.list_secrets(project)
    assert unavailable.value.code == 503
    assert_ibm_error(unavailable.value.http_response.json(), 503, "service_unavailable")
    assert service.list_secrets(project).get_status_code() == 200


def test_secrets_and_limit_survive_a_restart(tmp_path: Path) -> None:
    """With --state-dir, secrets, their entity tags and the secret limit are kept across a restart."""
    with SandboxProcess.start(state_dir=tmp_path) as first:
        endpoints = first.endpoints
        first.admin.put("/codeengine/secret-limit", json={"limit": 7}).raise_for_status()
        created = (
            sdk(endpoints)
            .create_secret(endpoints["codeengine_project_id"], "registry", "kept", data=registry_data())
            .get_result()
        )
    with SandboxProcess.start(state_dir=tmp_path) as second:
        endpoints = second.endpoints
        got = sdk(endpoints).get_secret(endpoints["codeengine_project_id"], "kept").get_result()
        assert (got["entity_tag"], got["data"]["password"]) == (created["entity_tag"], "key-one")
        assert second.admin.get("/codeengine/secrets").json()["projects"][0]["secret_limit"] == 7


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"limit": -1}, id="negative"),
        pytest.param({"limit": "3"}, id="text"),
        pytest.param({"limit": True}, id="bool"),
        pytest.param([3], id="not-object"),
    ],
)
def test_admin_secret_limit_rejects_bad_values(shared_sandbox: SandboxProcess, body: Any) -> None:
    """The test-control route answers 400 naming the expected field, not a 500."""
    response = shared_sandbox.admin.put("/codeengine/secret-limit", json=body)
    assert response.status_code == 400
    assert "limit" in response.json()["error"]
