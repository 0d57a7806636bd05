"""The Docker Hub emulators over HTTP: Hub API sign-in, PATs, OATs, pagination, rate limit, error shapes;
the Docker Hub registry's token service, pull rights by token, and the pull rate limit (GET counts, HEAD not)."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from conftest import start_sandbox

from rotator.sandbox.control import SandboxProcess

PULL_LIMIT_MESSAGE = (
    "You have reached your pull rate limit. You may increase the limit by authenticating and upgrading: "
    "https://www.docker.com/increase-rate-limits"
)
MANIFEST_ACCEPT = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"


# -- helpers ---------------------------------------------------------------------------------------------


def api(sbx: SandboxProcess) -> str:
    return str(sbx.endpoints["dockerhub_api"])


def sign_in(sbx: SandboxProcess, identifier: str | None = None, secret: str | None = None) -> httpx.Response:
    body = {
        "identifier": identifier or sbx.endpoints["dockerhub_username"],
        "secret": secret or sbx.endpoints["dockerhub_password"],
    }
    return httpx.post(f"{api(sbx)}/v2/auth/token", json=body)


def bearer(sbx: SandboxProcess, identifier: str | None = None, secret: str | None = None) -> dict[str, str]:
    response = sign_in(sbx, identifier, secret)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def create_pat(sbx: SandboxProcess, label: str, scopes: list[str] | None = None) -> dict[str, Any]:
    body = {"token_label": label, "scopes": scopes or ["repo:read"]}
    response = httpx.post(f"{api(sbx)}/v2/access-tokens", json=body, headers=bearer(sbx))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def create_oat(sbx: SandboxProcess, label: str, resources: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    org = sbx.endpoints["dockerhub_org"]
    default = [{"type": "TYPE_REPO", "path": f"{org}/app", "scopes": ["repo-pull"]}]
    body = {"label": label, "resources": default if resources is None else resources}
    response = httpx.post(f"{api(sbx)}/v2/orgs/{org}/access-tokens", json=body, headers=bearer(sbx))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def registry(sbx: SandboxProcess) -> str:
    return str(sbx.endpoints["dockerhub_registry"])


def registry_token(sbx: SandboxProcess, user: str | None, password: str | None, repo: str) -> httpx.Response:
    params = {"service": "registry.docker.io", "scope": f"repository:{repo}:pull"}
    headers = {}
    if user is not None and password is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return httpx.get(f"{registry(sbx)}/token", params=params, headers=headers)


def manifest(sbx: SandboxProcess, method: str, repo: str, token: str | None) -> httpx.Response:
    headers = {"Accept": MANIFEST_ACCEPT}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.request(method, f"{registry(sbx)}/v2/{repo}/manifests/latest", headers=headers)


def pull_status(sbx: SandboxProcess, user: str | None, password: str | None, repo: str) -> int:
    """HEAD of ``repo``'s manifest with a token for ``user:password`` (None: anonymous)."""
    response = registry_token(sbx, user, password, repo)
    assert response.status_code == 200, response.text
    return manifest(sbx, "HEAD", repo, response.json()["token"]).status_code


# -- Hub API: sign-in ------------------------------------------------------------------------------------


def test_sign_in_returns_a_ten_minute_jwt(shared_sandbox: SandboxProcess) -> None:
    """A Docker ID and its password get a JWT valid for 10 minutes, with the rate-limit headers."""
    before = int(time.time())  # the reset is at or after the server's now, which is after this
    response = sign_in(shared_sandbox)
    assert response.status_code == 200
    claims = jwt.decode(response.json()["access_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 600
    assert int(response.headers["X-RateLimit-Limit"]) >= 1
    assert int(response.headers["X-RateLimit-Reset"]) >= before


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        pytest.param({"identifier": "rotatorbot", "secret": "wrong"}, 401, None, id="wrong-password"),
        pytest.param({"identifier": "nobody", "secret": "x"}, 401, None, id="unknown-user"),
        pytest.param({"identifier": "acme", "secret": "not-an-oat"}, 401, None, id="org-without-token"),
        pytest.param({"identifier": "rotatorbot"}, 400, "secret", id="missing-secret"),
        pytest.param({"identifier": 3, "secret": "x"}, 400, "identifier", id="identifier-not-a-string"),
        pytest.param(["identifier"], 400, "non_field_errors", id="not-an-object"),
    ],
)
def test_sign_in_refusals_use_hub_error_shapes(
    shared_sandbox: SandboxProcess, body: Any, status: int, field: str | None
) -> None:
    """Bad credentials are 401 {detail, message}; malformed bodies are 400 {fields, text}."""
    response = httpx.post(f"{api(shared_sandbox)}/v2/auth/token", json=body)
    assert response.status_code == status
    data = response.json()
    if status == 400:
        assert field in data["fields"] and isinstance(data["text"], str)
    else:
        assert data["detail"] and data["message"]
        assert "access_token" not in data


def test_sign_in_with_a_pat_of_the_user_and_with_an_oat_of_the_org(shared_sandbox: SandboxProcess) -> None:
    """A PAT signs in as its Docker ID, an OAT as its organization; neither as the other."""
    pat = create_pat(shared_sandbox, "sign-in-pat")["token"]
    oat = create_oat(shared_sandbox, "sign-in-oat")["token"]
    org = shared_sandbox.endpoints["dockerhub_org"]
    assert sign_in(shared_sandbox, secret=pat).status_code == 200
    assert sign_in(shared_sandbox, org, oat).status_code == 200
    assert sign_in(shared_sandbox, org, pat).status_code == 401
    assert sign_in(shared_sandbox, secret=oat).status_code == 401
    assert sign_in(shared_sandbox, shared_sandbox.endpoints["dockerhub_outsider_username"], pat).status_code == 401


def test_malformed_json_and_wrong_method_never_500(shared_sandbox: SandboxProcess) -> None:
    """Bad JSON is a 400 {fields, text}; an unsupported method a 405 {detail}; unknown paths a 404 {detail}."""
    base = api(shared_sandbox)
    headers = {**bearer(shared_sandbox), "Content-Type": "application/json"}
    bad_json = httpx.post(f"{base}/v2/access-tokens", content=b"{nope", headers=headers)
    assert bad_json.status_code == 400 and "fields" in bad_json.json()
    wrong = httpx.put(f"{base}/v2/access-tokens", headers=headers)
    assert wrong.status_code == 405 and "PUT" in wrong.json()["detail"]
    missing = httpx.get(f"{base}/v2/nothing-here", headers=headers)
    assert missing.status_code == 404 and missing.json()["detail"]
    get_login = httpx.get(f"{base}/v2/auth/token")
    assert get_login.status_code == 405


# -- Hub API: personal access tokens ---------------------------------------------------------------------


def test_pat_lifecycle_value_only_at_creation(shared_sandbox: SandboxProcess) -> None:
    """Create (201 with dckr_pat_), get and list (token ""), deactivate (sign-in fails), reactivate, delete (404)."""
    base = api(shared_sandbox)
    created = create_pat(shared_sandbox, "lifecycle", ["repo:read"])
    value, token_id = created["token"], created["uuid"]
    assert value.startswith("dckr_pat_") and created["is_active"] is True and created["scopes"] == ["repo:read"]
    headers = bearer(shared_sandbox)
    got = httpx.get(f"{base}/v2/access-tokens/{token_id}", headers=headers).json()
    assert got["token"] == "" and got["token_label"] == "lifecycle"
    listed = httpx.get(f"{base}/v2/access-tokens", params={"page_size": 100}, headers=headers).json()
    assert all(t["token"] == "" for t in listed["results"])
    assert token_id in {t["uuid"] for t in listed["results"]}

    off = httpx.patch(f"{base}/v2/access-tokens/{token_id}", json={"is_active": False}, headers=headers)
    assert off.status_code == 200 and off.json()["is_active"] is False
    assert sign_in(shared_sandbox, secret=value).status_code == 401
    on = httpx.patch(
        f"{base}/v2/access-tokens/{token_id}", json={"is_active": True, "token_label": "renamed"}, headers=headers
    )
    assert on.json()["is_active"] is True and on.json()["token_label"] == "renamed"
    assert sign_in(shared_sandbox, secret=value).status_code == 200

    assert httpx.delete(f"{base}/v2/access-tokens/{token_id}", headers=headers).status_code == 204
    assert httpx.get(f"{base}/v2/access-tokens/{token_id}", headers=headers).status_code == 404
    assert httpx.delete(f"{base}/v2/access-tokens/{token_id}", headers=headers).status_code == 404
    assert sign_in(shared_sandbox, secret=value).status_code == 401


@pytest.mark.parametrize(
    ("method", "body", "field"),
    [
        pytest.param("POST", {"scopes": ["repo:read"]}, "token_label", id="no-label"),
        pytest.param("POST", {"token_label": "x" * 101, "scopes": ["repo:read"]}, "token_label", id="label-too-long"),
        pytest.param("POST", {"token_label": "x", "scopes": ["repo:everything"]}, "scopes", id="unknown-scope"),
        pytest.param("POST", {"token_label": "x", "scopes": []}, "scopes", id="no-scopes"),
        pytest.param("POST", {"token_label": "x", "scopes": "repo:read"}, "scopes", id="scopes-not-a-list"),
        pytest.param(
            "POST", {"token_label": "x", "scopes": ["repo:read"], "expires_at": "soon"}, "expires_at", id="bad-expiry"
        ),
        pytest.param("PATCH", {"is_active": "no"}, "is_active", id="is-active-not-bool"),
        pytest.param("PATCH", {"token_label": 7}, "token_label", id="label-not-a-string"),
    ],
)
def test_pat_validation_errors(shared_sandbox: SandboxProcess, method: str, body: dict[str, Any], field: str) -> None:
    """Invalid PAT fields are 400 with the field named in ``fields``."""
    base = api(shared_sandbox)
    url = f"{base}/v2/access-tokens"
    if method == "PATCH":
        url += "/" + shared_sandbox.endpoints["dockerhub_foreign_pat_id"]
    response = httpx.request(method, url, json=body, headers=bearer(shared_sandbox))
    assert response.status_code == 400
    assert field in response.json()["fields"]


def test_pat_list_pages_like_django_rest_framework(sandbox: SandboxProcess) -> None:
    """count/next/previous/active_count per page, absolute next links, 404 past the end, bad sizes fall back."""
    base = api(sandbox)
    headers = bearer(sandbox)
    for i in range(11):
        create_pat(sandbox, f"page-{i}")
    token_id = create_pat(sandbox, "inactive")["uuid"]
    httpx.patch(f"{base}/v2/access-tokens/{token_id}", json={"is_active": False}, headers=headers)
    seen: list[str] = []
    url: str | None = f"{base}/v2/access-tokens?page=1&page_size=5"
    for _ in range(10):
        if url is None:
            break
        page = httpx.get(url, headers=headers).json()
        assert page["count"] == 13 and page["active_count"] == 12  # + the seeded foreign PAT
        seen += [t["uuid"] for t in page["results"]]
        url = page["next"]
    assert len(seen) == len(set(seen)) == 13
    last = httpx.get(f"{base}/v2/access-tokens", params={"page": 3, "page_size": 5}, headers=headers).json()
    assert last["next"] is None and "page=2" in last["previous"] and len(last["results"]) == 3
    assert httpx.get(f"{base}/v2/access-tokens", params={"page": 4, "page_size": 5}, headers=headers).status_code == 404
    assert (
        httpx.get(f"{base}/v2/access-tokens", params={"page": "x"}, headers=headers).json()["detail"] == "Invalid page."
    )
    fallback = httpx.get(f"{base}/v2/access-tokens", params={"page_size": "lots"}, headers=headers).json()
    assert len(fallback["results"]) == 10


# -- Hub API: organization access tokens -----------------------------------------------------------------


def test_oat_lifecycle(shared_sandbox: SandboxProcess) -> None:
    """Create (201 with dckr_oat_ and resources), list {total}, get without value, deactivate, delete."""
    base, org = api(shared_sandbox), shared_sandbox.endpoints["dockerhub_org"]
    headers = bearer(shared_sandbox)
    created = create_oat(shared_sandbox, "oat-lifecycle")
    value, token_id = created["token"], created["id"]
    assert value.startswith("dckr_oat_") and created["resources"][0]["path"] == f"{org}/app"
    listed = httpx.get(f"{base}/v2/orgs/{org}/access-tokens", headers=headers).json()
    assert listed["total"] >= 2 and set(listed) >= {"next", "previous", "results"}
    assert all("token" not in t for t in listed["results"])
    got = httpx.get(f"{base}/v2/orgs/{org}/access-tokens/{token_id}", headers=headers).json()
    assert "token" not in got and got["label"] == "oat-lifecycle"
    off = httpx.patch(f"{base}/v2/orgs/{org}/access-tokens/{token_id}", json={"is_active": False}, headers=headers)
    assert off.json()["is_active"] is False
    assert sign_in(shared_sandbox, org, value).status_code == 401
    assert httpx.delete(f"{base}/v2/orgs/{org}/access-tokens/{token_id}", headers=headers).status_code == 204
    assert httpx.get(f"{base}/v2/orgs/{org}/access-tokens/{token_id}", headers=headers).status_code == 404


def test_org_tokens_need_an_owner(shared_sandbox: SandboxProcess) -> None:
    """Outsiders get 403, unknown organizations 404, OAT sign-ins 403, no or bad JWT 401."""
    base, org = api(shared_sandbox), shared_sandbox.endpoints["dockerhub_org"]
    outsider = bearer(
        shared_sandbox,
        shared_sandbox.endpoints["dockerhub_outsider_username"],
        shared_sandbox.endpoints["dockerhub_outsider_password"],
    )
    assert httpx.get(f"{base}/v2/orgs/{org}/access-tokens", headers=outsider).status_code == 403
    assert httpx.get(f"{base}/v2/orgs/nosuchorg/access-tokens", headers=bearer(shared_sandbox)).status_code == 404
    as_org = bearer(shared_sandbox, org, create_oat(shared_sandbox, "as-org")["token"])
    assert httpx.get(f"{base}/v2/orgs/{org}/access-tokens", headers=as_org).status_code == 403
    assert httpx.get(f"{base}/v2/access-tokens", headers=as_org).status_code == 403
    assert httpx.get(f"{base}/v2/access-tokens").status_code == 401
    bad = httpx.get(f"{base}/v2/access-tokens", headers={"Authorization": "Bearer not.a.jwt"})
    assert bad.status_code == 401 and bad.json()["detail"]
    foreign = shared_sandbox.endpoints["dockerhub_foreign_pat_id"]
    assert httpx.get(f"{base}/v2/access-tokens/{foreign}", headers=outsider).status_code == 404


@pytest.mark.parametrize(
    ("resources", "field"),
    [
        pytest.param(
            [{"type": "TYPE_REPO", "path": "other/app", "scopes": ["repo-pull"]}], "resources[0].path", id="other-org"
        ),
        pytest.param(
            [{"type": "TYPE_REPO", "path": "acme/missing", "scopes": ["repo-pull"]}],
            "resources[0].path",
            id="no-such-repo",
        ),
        pytest.param(
            [{"type": "TYPE_X", "path": "acme/app", "scopes": ["repo-pull"]}], "resources[0].type", id="bad-type"
        ),
        pytest.param(
            [{"type": "TYPE_REPO", "path": "acme/app", "scopes": ["repo-fly"]}], "resources[0].scopes", id="bad-scope"
        ),
        pytest.param([{"type": "TYPE_REPO", "path": "acme/app"}], "resources[0].scopes", id="no-scopes"),
        pytest.param("acme/app", "resources", id="not-a-list"),
        pytest.param(["acme/app"], "resources[0]", id="item-not-an-object"),
    ],
)
def test_oat_resource_validation(shared_sandbox: SandboxProcess, resources: Any, field: str) -> None:
    """Bad OAT resources are 400 naming the resource field; nothing is created."""
    base, org = api(shared_sandbox), shared_sandbox.endpoints["dockerhub_org"]
    headers = bearer(shared_sandbox)
    before = httpx.get(f"{base}/v2/orgs/{org}/access-tokens", headers=headers).json()["total"]
    body = {"label": "bad", "resources": resources}
    response = httpx.post(f"{base}/v2/orgs/{org}/access-tokens", json=body, headers=headers)
    assert response.status_code == 400 and field in response.json()["fields"]
    assert httpx.get(f"{base}/v2/orgs/{org}/access-tokens", headers=headers).json()["total"] == before


# -- Hub API: rate limit -----------------------------------------------------------------------------------


def test_hub_api_rate_limit_answers_429_with_x_retry_after(sandbox: SandboxProcess) -> None:
    """Past the per-window limit: 429 {"detail": "Rate limit exceeded", "error": false}, X-Retry-After a unix time."""
    sandbox.admin.put("/dockerhub_api/rate-limit", json={"limit": 3, "window_s": 60}).raise_for_status()
    remaining = [int(sign_in(sandbox).headers["X-RateLimit-Remaining"]) for _ in range(3)]
    assert remaining == [2, 1, 0]
    limited = sign_in(sandbox)
    assert limited.status_code == 429
    assert limited.json() == {"detail": "Rate limit exceeded", "error": False}
    retry_at = int(limited.headers["X-Retry-After"])
    assert time.time() - 1 <= retry_at <= time.time() + 61
    assert retry_at == int(limited.headers["X-RateLimit-Reset"])
    assert limited.headers["X-RateLimit-Limit"] == "3" and limited.headers["X-RateLimit-Remaining"] == "0"
    sandbox.admin.put("/dockerhub_api/rate-limit", json={"limit": None}).raise_for_status()
    assert sign_in(sandbox).status_code == 200


def test_injected_429_uses_the_hub_shape(sandbox: SandboxProcess) -> None:
    """A fault-injected 429 carries the Hub body and X-Retry-After = now + the rule's seconds."""
    sandbox.set_faults("dockerhub_api", {"path_prefix": "/v2/auth/token", "throttle_seconds": 30, "retry_after": 7})
    before = time.time()  # bracket the server's now, however long the request takes
    response = sign_in(sandbox)
    after = time.time()
    assert response.status_code == 429
    assert response.json() == {"detail": "Rate limit exceeded", "error": False}
    assert before + 7 <= int(response.headers["X-Retry-After"]) <= after + 8  # the server's now, rounded up, + 7


@pytest.mark.parametrize(
    ("status", "key"),
    [pytest.param(503, "detail", id="503"), pytest.param(500, "detail", id="500"), pytest.param(400, "text", id="400")],
)
def test_injected_errors_use_hub_shapes(sandbox: SandboxProcess, status: int, key: str) -> None:
    """Injected errors answer in Docker Hub's own shapes."""
    sandbox.set_faults("dockerhub_api", {"path_prefix": "/v2/", "error_status": status, "error_count": 1})
    response = sign_in(sandbox)
    assert response.status_code == status and key in response.json()


# -- registry: token service and pull rights ---------------------------------------------------------------


def test_registry_challenge_names_its_own_token_realm(shared_sandbox: SandboxProcess) -> None:
    """GET /v2/ challenges with realm=<emulator>/token and service=registry.docker.io."""
    response = httpx.get(f"{registry(shared_sandbox)}/v2/")
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge == f'Bearer realm="{registry(shared_sandbox)}/token",service="registry.docker.io"'


def _identities(sbx: SandboxProcess) -> dict[str, tuple[str | None, str | None]]:
    ep = sbx.endpoints
    me, org = ep["dockerhub_username"], ep["dockerhub_org"]
    return {
        "anonymous": (None, None),
        "password": (me, ep["dockerhub_password"]),
        "outsider": (ep["dockerhub_outsider_username"], ep["dockerhub_outsider_password"]),
        "pat-read": (me, create_pat(sbx, "rights-read", ["repo:read"])["token"]),
        "pat-public": (me, create_pat(sbx, "rights-public", ["repo:public_read"])["token"]),
        "oat-app": (org, create_oat(sbx, "rights-app")["token"]),
        "oat-glob": (
            org,
            create_oat(sbx, "rights-glob", [{"type": "TYPE_REPO", "path": f"{org}/*", "scopes": ["scope-image-pull"]}])[
                "token"
            ],
        ),
        "oat-public": (
            org,
            create_oat(sbx, "rights-public", [{"type": "TYPE_REPO", "path": "*/*/public", "scopes": ["repo-pull"]}])[
                "token"
            ],
        ),
        "oat-org-only": (
            org,
            create_oat(sbx, "rights-org", [{"type": "TYPE_ORG", "path": org, "scopes": ["member-read"]}])["token"],
        ),
    }


@pytest.mark.parametrize(
    ("who", "private", "public"),
    [
        pytest.param("anonymous", 401, 200, id="anonymous"),
        pytest.param("password", 200, 200, id="password"),
        pytest.param("outsider", 401, 200, id="outsider"),
        pytest.param("pat-read", 200, 200, id="pat-repo-read"),
        pytest.param("pat-public", 401, 200, id="pat-public-read"),
        pytest.param("oat-app", 200, 401, id="oat-acme-app"),
        pytest.param("oat-glob", 200, 401, id="oat-acme-glob"),
        pytest.param("oat-public", 401, 200, id="oat-all-public"),
        pytest.param("oat-org-only", 401, 401, id="oat-org-scope-only"),
    ],
)
def test_pull_rights_follow_token_scopes(sandbox: SandboxProcess, who: str, private: int, public: int) -> None:
    """A PAT's scopes and an OAT's resources decide what pulls; anonymous pulls public repositories only."""
    user, password = _identities(sandbox)[who]
    assert pull_status(sandbox, user, password, "acme/app") == private
    assert pull_status(sandbox, user, password, "library/alpine") == public


def test_refused_pull_is_401_insufficient_scope(shared_sandbox: SandboxProcess) -> None:
    """A token without pull rights gets 401 UNAUTHORIZED with error="insufficient_scope" in the challenge."""
    token = registry_token(shared_sandbox, None, None, "acme/app").json()["token"]
    response = manifest(shared_sandbox, "GET", "acme/app", token)
    assert response.status_code == 401
    assert response.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


def test_inactive_deleted_or_wrong_tokens_fail_at_the_token_endpoint(sandbox: SandboxProcess) -> None:
    """Deactivated, deleted and wrong secrets answer 401 {"details": "incorrect username or password"}."""
    base, org = api(sandbox), sandbox.endpoints["dockerhub_org"]
    headers = bearer(sandbox)
    oat = create_oat(sandbox, "soon-inactive")
    assert registry_token(sandbox, org, oat["token"], "acme/app").status_code == 200
    httpx.patch(f"{base}/v2/orgs/{org}/access-tokens/{oat['id']}", json={"is_active": False}, headers=headers)
    pat = create_pat(sandbox, "soon-deleted")
    httpx.delete(f"{base}/v2/access-tokens/{pat['uuid']}", headers=headers)
    for user, secret in ((org, oat["token"]), ("rotatorbot", pat["token"]), ("rotatorbot", "wrong")):
        response = registry_token(sandbox, user, secret, "acme/app")
        assert response.status_code == 401
        assert response.json() == {"details": "incorrect username or password"}
    garbled = httpx.get(f"{registry(sandbox)}/token", headers={"Authorization": "Basic !!!"})
    assert garbled.status_code == 401


def test_deny_new_tokens_switch(sandbox: SandboxProcess) -> None:
    """With deny-new-tokens on, tokens made afterwards fail at the token endpoint; older ones still pass."""
    org = sandbox.endpoints["dockerhub_org"]
    old = create_oat(sandbox, "old")["token"]
    sandbox.admin.post("/dockerhub_registry/deny-new-tokens", json={"enabled": True}).raise_for_status()
    new = create_oat(sandbox, "new")["token"]
    assert registry_token(sandbox, org, new, "acme/app").status_code == 401
    assert registry_token(sandbox, org, old, "acme/app").status_code == 200
    sandbox.admin.post("/dockerhub_registry/deny-new-tokens", json={"enabled": False}).raise_for_status()
    assert registry_token(sandbox, org, new, "acme/app").status_code == 200


# -- registry: pull rate limit ---------------------------------------------------------------------------


def test_manifest_get_counts_head_does_not(sandbox: SandboxProcess) -> None:
    """HEADs leave the quota alone, GETs use it up, then GET is 429 TOOMANYREQUESTS while HEAD still answers."""
    sandbox.admin.put("/dockerhub_registry/rate-limit", json={"limit": 3, "window_s": 3600}).raise_for_status()
    token = registry_token(sandbox, "rotatorbot", sandbox.endpoints["dockerhub_password"], "acme/app").json()["token"]
    for _ in range(5):
        head = manifest(sandbox, "HEAD", "acme/app", token)
        assert head.status_code == 200
        assert head.headers["ratelimit-limit"] == "3;w=3600"
        assert head.headers["ratelimit-remaining"] == "3;w=3600"
    remaining = []
    for _ in range(3):
        get = manifest(sandbox, "GET", "acme/app", token)
        assert get.status_code == 200 and get.headers["docker-ratelimit-source"] == "rotatorbot"
        remaining.append(get.headers["ratelimit-remaining"])
    assert remaining == ["2;w=3600", "1;w=3600", "0;w=3600"]
    limited = manifest(sandbox, "GET", "acme/app", token)
    assert limited.status_code == 429
    assert limited.json() == {"errors": [{"code": "TOOMANYREQUESTS", "message": PULL_LIMIT_MESSAGE}]}
    assert int(limited.headers["Retry-After"]) > 0
    after = manifest(sandbox, "HEAD", "acme/app", token)
    assert after.status_code == 200 and after.headers["ratelimit-remaining"] == "0;w=3600"
    pulls = sandbox.admin.get("/dockerhub_registry/pulls").json()
    assert pulls["sources"]["rotatorbot"] == {"get": 4, "head": 6, "counted": 3}


def test_anonymous_pulls_count_per_address_and_unlimited_sends_no_headers(sandbox: SandboxProcess) -> None:
    """Anonymous pulls count against the client address; with no limit there are no ratelimit headers."""
    body = {"limit": None, "anonymous_limit": 1, "window_s": 60}
    sandbox.admin.put("/dockerhub_registry/rate-limit", json=body).raise_for_status()
    token = registry_token(sandbox, None, None, "library/alpine").json()["token"]
    assert manifest(sandbox, "GET", "library/alpine", token).headers["docker-ratelimit-source"] == "127.0.0.1"
    assert manifest(sandbox, "GET", "library/alpine", token).status_code == 429
    authed = registry_token(sandbox, "rotatorbot", sandbox.endpoints["dockerhub_password"], "library/alpine")
    response = manifest(sandbox, "GET", "library/alpine", authed.json()["token"])
    assert response.status_code == 200 and "ratelimit-limit" not in response.headers


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"limit": -1}, id="negative"),
        pytest.param({"window_s": 0}, id="zero-window"),
        pytest.param({"limit": "ten"}, id="not-a-number"),
        pytest.param(["limit"], id="not-an-object"),
    ],
)
def test_admin_rate_limit_rejects_bad_bodies(shared_sandbox: SandboxProcess, body: Any) -> None:
    """The admin route answers 400 for malformed limits and keeps the current ones."""
    before = shared_sandbox.admin.get("/dockerhub_registry/config").json()["limits"]
    response = shared_sandbox.admin.put("/dockerhub_registry/rate-limit", json=body)
    assert response.status_code == 400 and "error" in response.json()
    assert shared_sandbox.admin.get("/dockerhub_registry/config").json()["limits"] == before


# -- robustness and persistence ------------------------------------------------------------------------------

_NO_SUCH = "00000000-0000-0000-0000-000000000000"
_JUNK_BODIES = [
    b"",
    b"null",
    b"[]",
    b"\xff\xfe",
    b'{"token_label": null, "label": null}',
    b'{"scopes": [1, 2], "token_label": "x"}',
    b'{"expires_at": 12, "token_label": "x", "scopes": ["repo:read"]}',
    b'{"resources": {"a": 1}, "label": "x"}',
    b'{"resources": [{"type": "TYPE_REPO", "path": 5, "scopes": ["repo-pull"]}], "label": "x"}',
    b'{"identifier": ["a"], "secret": {"b": 1}, "username": 1}',
]


_JUNK_PATHS = [
    "/v2/auth/token",
    "/v2/users/login",
    "/v2/access-tokens",
    f"/v2/access-tokens/{_NO_SUCH}",
    "/v2/access-tokens/not-a-uuid",
    "/v2/orgs/acme/access-tokens",
    f"/v2/orgs/acme/access-tokens/{_NO_SUCH}",
    "/v2/orgs/acme/access-tokens?page=-1&page_size=0",
    "/v2/orgs/nosuchorg/access-tokens",
]


def test_junk_requests_never_get_a_500(sandbox: SandboxProcess) -> None:
    """Every route, every method, every malformed body: a 4xx in a Hub error shape, never a 500."""
    sandbox.admin.put("/dockerhub_api/rate-limit", json={"limit": None}).raise_for_status()
    headers = {**bearer(sandbox), "Content-Type": "application/json"}
    answered: set[int] = set()
    with httpx.Client(base_url=api(sandbox), headers=headers, timeout=10) as client:
        for path in _JUNK_PATHS:
            for method in ("GET", "POST", "PATCH", "PUT", "DELETE"):
                for body in _JUNK_BODIES:
                    response = client.request(method, path, content=body)
                    answered.add(response.status_code)
                    assert response.status_code < 500, (path, method, body, response.text)
                    if response.status_code >= 400:
                        data = response.json()
                        assert "fields" in data or "detail" in data, (path, method, body, data)
    assert {400, 404, 405} <= answered
    tokens = sandbox.admin.get("/dockerhub_api/tokens").json()["tokens"]
    labels = sorted(t.get("label") or t.get("token_label") for t in tokens)
    assert labels == ["ci-pipeline", "legacy-deploy"]  # junk created nothing
    assert not any(t["deleted"] or not t["is_active"] for t in tokens)


def test_state_survives_a_restart(tmp_path: Path) -> None:
    """With --state-dir, tokens, their activity flags and the password come back after a restart."""
    state = tmp_path / "state"
    with start_sandbox(state_dir=state) as first:
        created = create_pat(first, "survivor")
        password = first.endpoints["dockerhub_password"]
        first.admin.put("/dockerhub_registry/rate-limit", json={"limit": 7}).raise_for_status()
    with start_sandbox(state_dir=state) as second:
        assert second.endpoints["dockerhub_password"] == password
        assert sign_in(second, secret=created["token"]).status_code == 200
        got = httpx.get(f"{api(second)}/v2/access-tokens/{created['uuid']}", headers=bearer(second))
        assert got.status_code == 200 and got.json()["token_label"] == "survivor"
        assert second.admin.get("/dockerhub_registry/config").json()["limits"]["limit"] == 7
