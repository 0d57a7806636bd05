"""DockerHubProvider against the Docker Hub API emulator over HTTP: PATs and OATs minted, listed, disabled and
deleted; foreign tokens refused without a request; sign-in failures; 429 with X-Retry-After honoured."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from rotator.adapters.dockerhub import DockerHubProvider, parse_label, token_label
from rotator.errors import NotFoundError, NotOwnedError, RateLimited, TransientError, UnauthorizedError
from rotator.model import SecretStr
from rotator.retrying import RetryPolicy
from rotator.sandbox.control import SandboxProcess

FAST = RetryPolicy(base_s=0.01, cap_s=0.05, max_total_s=5)
CRED = "hub-pull"
ROT = "20250101T000000Z-0a1b2c"


def make_provider(sbx: SandboxProcess, **overrides: Any) -> DockerHubProvider:
    ep = sbx.endpoints
    kwargs: dict[str, Any] = {
        "base_url": ep["dockerhub_api"],
        "username": ep["dockerhub_username"],
        "secret": SecretStr(ep["dockerhub_password"]),
        "retry": FAST,
        **overrides,
    }
    return DockerHubProvider(**kwargs)


def org_provider(sbx: SandboxProcess, **overrides: Any) -> DockerHubProvider:
    org = sbx.endpoints["dockerhub_org"]
    return make_provider(sbx, token_type="organization", org=org, repositories=[f"{org}/app"], **overrides)


def hub_tokens(sbx: SandboxProcess) -> dict[str, dict[str, Any]]:
    """Every PAT and OAT the emulator holds (deleted too), by id, without usage times."""
    tokens = sbx.admin.get("/dockerhub_api/tokens").raise_for_status().json()["tokens"]
    return {
        t.get("uuid") or t["id"]: {k: v for k, v in t.items() if k not in ("last_used", "last_used_at")} for t in tokens
    }


def hub_requests(sbx: SandboxProcess, since: int = 0, method: str | None = None) -> list[dict[str, Any]]:
    return [r for r in sbx.requests("dockerhub_api", since) if method is None or r["method"] == method]


# -- the label marker -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        pytest.param(f"rotator-{CRED}-{ROT}", (CRED, ROT), id="ours"),
        pytest.param(f"rotator-dh-{ROT}", ("dh", ROT), id="short-credential"),
        pytest.param(f"rotator-dh-pull-{ROT}", ("dh-pull", ROT), id="dashed-credential-is-not-dh"),
        pytest.param("rotator-hub-pull", None, id="no-rotation-id"),
        pytest.param("ci-pipeline", None, id="foreign"),
        pytest.param(f"Rotator-{CRED}-{ROT}", None, id="wrong-case-prefix"),
        pytest.param(f"rotator-{CRED}-{ROT} copy", None, id="edited"),
    ],
)
def test_parse_label(label: str, expected: tuple[str, str] | None) -> None:
    """Only rotator's exact label shape parses, and a dashed credential is never read as a shorter one."""
    assert parse_label(label) == expected


@pytest.mark.parametrize(
    ("credential", "rotation_id"),
    [
        pytest.param(CRED, "nodash", id="rotation-without-dash"),
        pytest.param(CRED, "a-b-c", id="rotation-with-two-dashes"),
        pytest.param("x" * 63, "y" * 30 + "-" + "z" * 10, id="longer-than-100"),
        pytest.param("bad name", ROT, id="bad-credential"),
    ],
)
def test_token_label_refuses_ambiguous_or_long_labels(credential: str, rotation_id: str) -> None:
    """Labels that could be misread or that Docker Hub would truncate are refused before any request."""
    with pytest.raises(ValueError):
        token_label(credential, rotation_id)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"token_type": "team"}, id="unknown-type"),
        pytest.param({"repositories": ["acme/app"]}, id="pat-with-repositories"),
        pytest.param({"scopes": ["repo:everything"]}, id="unknown-pat-scope"),
        pytest.param({"token_type": "organization", "repositories": ["acme/app"]}, id="oat-without-org"),
        pytest.param({"token_type": "organization", "org": "acme"}, id="oat-without-repositories"),
        pytest.param(
            {"token_type": "organization", "org": "acme", "repositories": ["other/app"]}, id="oat-foreign-repo"
        ),
        pytest.param({"page_size": 0}, id="page-size"),
    ],
)
def test_constructor_validation(kwargs: dict[str, Any]) -> None:
    """Misconfigured providers fail when built, naming the problem."""
    with pytest.raises(ValueError):
        DockerHubProvider(base_url="http://127.0.0.1:9", username="u", secret=SecretStr("p"), **kwargs)


# -- personal access tokens -------------------------------------------------------------------------------


def test_pat_mint_list_disable_enable_delete(sandbox: SandboxProcess) -> None:
    """A PAT is minted with the label and scopes, listed as owned, deactivated, reactivated and deleted."""
    provider = make_provider(sandbox)
    try:
        assert provider.username == sandbox.endpoints["dockerhub_username"]
        minted = provider.mint(credential=CRED, rotation_id=ROT)
        assert minted.value.reveal().startswith("dckr_pat_")
        assert minted.info.owned and minted.info.rotation_id == ROT and minted.info.name == f"rotator-{CRED}-{ROT}"
        stored = hub_tokens(sandbox)[minted.info.id]
        assert stored["scopes"] == ["repo:read"] and stored["is_active"] is True
        assert [k.id for k in provider.list_owned(credential=CRED)] == [minted.info.id]
        assert provider.list_owned(credential="other") == []

        provider.disable(minted.info.id)
        assert hub_tokens(sandbox)[minted.info.id]["is_active"] is False
        info = provider.get(minted.info.id)
        assert info is not None and info.disabled
        provider.enable(minted.info.id)
        assert hub_tokens(sandbox)[minted.info.id]["is_active"] is True
        provider.delete(minted.info.id)
        assert hub_tokens(sandbox)[minted.info.id]["deleted"] is True
        assert provider.get(minted.info.id) is None
        provider.delete(minted.info.id)  # already gone: nothing to do
        with pytest.raises(NotFoundError):
            provider.disable(minted.info.id)
    finally:
        provider.close()


def test_foreign_pat_is_refused_without_a_mutating_request(sandbox: SandboxProcess) -> None:
    """disable/enable/delete of a PAT rotator did not make raise NotOwnedError and send no PATCH or DELETE."""
    foreign = sandbox.endpoints["dockerhub_foreign_pat_id"]
    before = hub_tokens(sandbox)[foreign]
    provider = make_provider(sandbox)
    since = sandbox.last_seq("dockerhub_api")
    try:
        for operation in (provider.disable, provider.enable, provider.delete):
            with pytest.raises(NotOwnedError, match="not rotator's"):
                operation(foreign)
        assert provider.list_owned(credential=CRED) == []
    finally:
        provider.close()
    assert {r["method"] for r in hub_requests(sandbox, since)} <= {"GET", "POST"}
    assert [r["path"] for r in hub_requests(sandbox, since, "POST")] == ["/v2/auth/token"]
    assert hub_tokens(sandbox)[foreign] == before


def test_list_owned_pages_through_every_token(sandbox: SandboxProcess) -> None:
    """With a small page size every owned token is found across pages, and only this credential's."""
    provider = make_provider(sandbox, page_size=2)
    try:
        ids = {provider.mint(credential=CRED, rotation_id=f"r{i}-x").info.id for i in range(5)}
        other = provider.mint(credential=f"{CRED}-b", rotation_id="r9-x").info.id
        since = sandbox.last_seq("dockerhub_api")
        assert {k.id for k in provider.list_owned(credential=CRED)} == ids
        pages = [r for r in hub_requests(sandbox, since, "GET") if r["path"] == "/v2/access-tokens"]
        assert len(pages) == 4  # 7 tokens (one foreign), 2 a page
        assert [k.id for k in provider.list_owned(credential=f"{CRED}-b")] == [other]
    finally:
        provider.close()


def test_identify_answers_none_without_asking(sandbox: SandboxProcess) -> None:
    """The Hub API cannot look a token up by value: identify is None and sends nothing."""
    provider = make_provider(sandbox)
    try:
        minted = provider.mint(credential=CRED, rotation_id=ROT)
        since = sandbox.last_seq("dockerhub_api")
        assert provider.identify(minted.value) is None
        assert hub_requests(sandbox, since) == []
    finally:
        provider.close()


# -- organization access tokens -----------------------------------------------------------------------------


def test_oat_mint_list_disable_delete(sandbox: SandboxProcess) -> None:
    """An OAT is minted for the org with repo-pull resources; the registry username is the org."""
    org = sandbox.endpoints["dockerhub_org"]
    provider = org_provider(sandbox)
    try:
        assert provider.username == org
        minted = provider.mint(credential=CRED, rotation_id=ROT)
        assert minted.value.reveal().startswith("dckr_oat_")
        stored = hub_tokens(sandbox)[minted.info.id]
        assert stored["resources"] == [{"type": "TYPE_REPO", "path": f"{org}/app", "scopes": ["repo-pull"]}]
        assert f"credential={CRED} rotation={ROT}" in stored["description"]
        assert [k.id for k in provider.list_owned(credential=CRED)] == [minted.info.id]
        provider.disable(minted.info.id)
        assert hub_tokens(sandbox)[minted.info.id]["is_active"] is False
        provider.delete(minted.info.id)
        assert hub_tokens(sandbox)[minted.info.id]["deleted"] is True
    finally:
        provider.close()


def test_foreign_oat_is_refused_and_untouched(sandbox: SandboxProcess) -> None:
    """An organization token someone else made is never disabled or deleted."""
    foreign = sandbox.endpoints["dockerhub_foreign_oat_id"]
    before = hub_tokens(sandbox)[foreign]
    provider = org_provider(sandbox)
    try:
        with pytest.raises(NotOwnedError):
            provider.delete(foreign)
        with pytest.raises(NotOwnedError):
            provider.disable(foreign)
    finally:
        provider.close()
    assert hub_tokens(sandbox)[foreign] == before


# -- sign-in and errors -------------------------------------------------------------------------------------


def test_sign_in_failure_is_a_clear_unauthorized_error(shared_sandbox: SandboxProcess) -> None:
    """A wrong password gives UnauthorizedError naming the Docker ID and the fix, never the password."""
    provider = make_provider(shared_sandbox, secret=SecretStr("not-the-password-123"))
    try:
        with pytest.raises(UnauthorizedError) as caught:
            provider.mint(credential=CRED, rotation_id=ROT)
    finally:
        provider.close()
    message = str(caught.value)
    assert "sign_in: HTTP 401" in message and "'rotatorbot'" in message and "password" in message
    assert "not-the-password-123" not in message


def test_outsider_may_not_manage_org_tokens(shared_sandbox: SandboxProcess) -> None:
    """A Docker ID that does not own the organization gets UnauthorizedError from check_access and mint."""
    ep = shared_sandbox.endpoints
    provider = org_provider(
        shared_sandbox, username=ep["dockerhub_outsider_username"], secret=SecretStr(ep["dockerhub_outsider_password"])
    )
    try:
        with pytest.raises(UnauthorizedError, match="HTTP 403"):
            provider.check_access()
        with pytest.raises(UnauthorizedError):
            provider.mint(credential=CRED, rotation_id=ROT)
    finally:
        provider.close()
    owner = org_provider(shared_sandbox)
    try:
        owner.check_access()
    finally:
        owner.close()


def test_jwt_is_cached_then_refreshed_near_expiry(sandbox: SandboxProcess) -> None:
    """One sign-in serves every call until 80 % of the JWT's lifetime has passed on the provider's clock; the
    next call signs in again. check_access always signs in afresh. The clock is a fake: only it moves time."""
    now = [1000.0]
    provider = make_provider(sandbox, clock=lambda: now[0])
    foreign = sandbox.endpoints["dockerhub_foreign_pat_id"]

    def sign_ins() -> int:
        return sum(1 for r in hub_requests(sandbox, since) if r["path"] == "/v2/auth/token")

    try:
        sandbox.admin.put("/dockerhub_api/token-lifetime", json={"seconds": 100}).raise_for_status()
        since = sandbox.last_seq("dockerhub_api")
        for _ in range(3):
            provider.get(foreign)
        assert sign_ins() == 1
        provider.check_access()
        assert sign_ins() == 2
        now[0] += 79  # short of 80 % of the 100 s the JWT's claims give it
        provider.get(foreign)
        assert sign_ins() == 2
        now[0] += 1
        provider.get(foreign)
        assert sign_ins() == 3
    finally:
        provider.close()


def test_hub_429_waits_until_x_retry_after(sandbox: SandboxProcess) -> None:
    """A 429 from the Hub API's rate limit is retried after the X-Retry-After time (a unix timestamp)."""
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # the emulator's window is lifted instead of waiting it out
        waits.append(seconds)
        sandbox.admin.put("/dockerhub_api/rate-limit", json={"limit": None}).raise_for_status()

    provider = make_provider(sandbox, retry=RetryPolicy(base_s=0.01, cap_s=0.05, max_total_s=120, sleep=sleep))
    try:
        provider.check_access()  # sign-in + one list: 2 requests
        sandbox.admin.put("/dockerhub_api/rate-limit", json={"limit": 1, "window_s": 3600}).raise_for_status()
        provider.get(sandbox.endpoints["dockerhub_foreign_pat_id"])  # uses up the new window's one request
        since = sandbox.last_seq("dockerhub_api")
        minted = provider.mint(credential=CRED, rotation_id=ROT)
    finally:
        provider.close()
    statuses = [r["status"] for r in hub_requests(sandbox, since, "POST")]
    assert statuses == [429, 201]
    assert minted.info.owned
    assert len(waits) == 1 and 0 < waits[0] <= 3601


def test_injected_429_reports_retry_after_seconds(sandbox: SandboxProcess) -> None:
    """Without retries a 429 surfaces as RateLimited whose retry_after is X-Retry-After minus the server's now."""
    sandbox.set_faults("dockerhub_api", {"path_prefix": "/v2/access-tokens", "throttle_seconds": 30, "retry_after": 20})
    provider = make_provider(sandbox, retry=RetryPolicy.none())
    try:
        with pytest.raises(RateLimited) as caught:
            provider.mint(credential=CRED, rotation_id=ROT)
    finally:
        provider.close()
    assert caught.value.retry_after is not None and 18 <= caught.value.retry_after <= 22


def test_5xx_on_mint_is_retried(sandbox: SandboxProcess) -> None:
    """Two 503s on the create are ridden out; exactly one token results."""
    sandbox.set_faults(
        "dockerhub_api",
        {"path_prefix": "/v2/access-tokens", "methods": ["POST"], "error_status": 503, "error_count": 2},
    )
    counted: list[tuple[str, str, int]] = []
    provider = make_provider(sandbox, on_request=lambda op, method, status: counted.append((op, method, status)))
    try:
        minted = provider.mint(credential=CRED, rotation_id=ROT)
        assert [k.id for k in provider.list_owned(credential=CRED)] == [minted.info.id]
    finally:
        provider.close()
    assert [s for op, _, s in counted if op == "mint"] == [503, 503, 201]


def test_unreachable_hub_is_transient() -> None:
    """A connection failure is a TransientError that names no secret."""
    provider = DockerHubProvider(
        base_url="http://127.0.0.1:9", username="u", secret=SecretStr("sekrit-value"), retry=RetryPolicy.none()
    )
    try:
        with pytest.raises(TransientError) as caught:
            provider.check_access()
    finally:
        provider.close()
    assert "sekrit-value" not in str(caught.value)


def test_minted_token_pulls_through_the_hub_registry(sandbox: SandboxProcess) -> None:
    """The minted OAT gets a registry token at the Docker Hub registry emulator for its org's repository."""
    org = sandbox.endpoints["dockerhub_org"]
    provider = org_provider(sandbox)
    try:
        minted = provider.mint(credential=CRED, rotation_id=ROT)
    finally:
        provider.close()
    response = httpx.get(
        f"{sandbox.endpoints['dockerhub_registry']}/token",
        params={"service": "registry.docker.io", "scope": f"repository:{org}/app:pull"},
        auth=(org, minted.value.reveal()),
    )
    assert response.status_code == 200
