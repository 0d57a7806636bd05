"""IamProvider against the IAM emulator over HTTP, and the shared RetryPolicy it uses."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from rotator.adapters.iam import IamProvider, key_name, key_tag, parse_marker
from rotator.errors import (
    LimitReachedError,
    NotFoundError,
    NotOwnedError,
    PermanentError,
    RateLimited,
    TransientError,
    UnauthorizedError,
)
from rotator.model import SecretStr
from rotator.retrying import RetryPolicy
from rotator.sandbox.control import SandboxProcess

FAST = RetryPolicy(base_s=0.01, cap_s=0.05, max_total_s=5)
CRED = "icr-pull"


def make_provider(sandbox: SandboxProcess, **overrides: Any) -> IamProvider:
    endpoints = sandbox.endpoints
    kwargs: dict[str, Any] = {
        "base_url": endpoints["iam"],
        "account_id": endpoints["account_id"],
        "service_id": endpoints["service_id"],
        "admin_apikey": SecretStr(endpoints["admin_apikey"]),
        "retry": FAST,
        **overrides,
    }
    return IamProvider(**kwargs)


def emulator_keys(sandbox: SandboxProcess) -> dict[str, dict[str, Any]]:
    """Every key the emulator holds (deleted too), by id, without usage counters."""
    keys = sandbox.admin.get("/iam/keys").raise_for_status().json()["keys"]
    return {k["id"]: {f: v for f, v in k.items() if f != "activity"} for k in keys}


def iam_requests(sandbox: SandboxProcess, since: int, method: str | None = None, path: str = "") -> list[Any]:
    return [
        r
        for r in sandbox.requests("iam", since)
        if (method is None or r["method"] == method) and r["path"].startswith(path)
    ]


def token_works(sandbox: SandboxProcess, value: str) -> bool:
    form = {"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": value}
    return httpx.post(f"{sandbox.endpoints['iam']}/identity/token", data=form).status_code == 200


def create_raw_key(sandbox: SandboxProcess, name: str, description: str) -> str:
    """A key on the target service ID created behind rotator's back (admin token, plain HTTP)."""
    endpoints = sandbox.endpoints
    form = {"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": endpoints["admin_apikey"]}
    token = httpx.post(f"{endpoints['iam']}/identity/token", data=form).json()["access_token"]
    body = {"name": name, "description": description, "iam_id": f"iam-{endpoints['service_id']}"}
    response = httpx.post(f"{endpoints['iam']}/v1/apikeys", json=body, headers={"Authorization": f"Bearer {token}"})
    key_id: str = response.raise_for_status().json()["id"]
    return key_id


# -- the happy path ---------------------------------------------------------------------------------
def test_mint_list_identify(sandbox: SandboxProcess) -> None:
    """Minted keys carry the marker, work at IAM, are the only ones listed as owned, and are identified by value."""
    provider = make_provider(sandbox)
    first = provider.mint(credential=CRED, rotation_id="r1")
    second = provider.mint(credential=CRED, rotation_id="r2")
    assert first.info.name == "rotator-icr-pull-r1"
    assert (first.info.owned, first.info.rotation_id) == (True, "r1")
    assert token_works(sandbox, first.value.reveal())
    owned = provider.list_owned(credential=CRED)
    assert [k.id for k in owned] == [first.info.id, second.info.id]
    assert provider.list_owned(credential="other-cred") == []
    identified = provider.identify(second.value)
    assert identified is not None and identified.id == second.info.id
    assert provider.identify(SecretStr("x" * 44)) is None
    foreign = SecretStr(sandbox.endpoints["foreign_apikeys"]["ci-pipeline"])
    identified_foreign = provider.identify(foreign)
    assert identified_foreign is not None and not identified_foreign.owned
    assert provider.identify(SecretStr(sandbox.endpoints["outsider_apikey"])) is None


def test_disable_enable_delete_are_idempotent(sandbox: SandboxProcess) -> None:
    """Disable/enable/delete change the key once; repeating them sends no second mutation and raises nothing."""
    provider = make_provider(sandbox)
    minted = provider.mint(credential=CRED, rotation_id="r1")
    key_id = minted.info.id
    provider.disable(key_id)
    assert emulator_keys(sandbox)[key_id]["disabled"] and not token_works(sandbox, minted.value.reveal())
    seq = sandbox.last_seq("iam")
    provider.disable(key_id)
    assert iam_requests(sandbox, seq, "POST", "/v1/apikeys/") == []
    provider.enable(key_id)
    provider.enable(key_id)
    assert token_works(sandbox, minted.value.reveal())
    provider.delete(key_id)
    provider.delete(key_id)
    assert emulator_keys(sandbox)[key_id]["deleted"]
    assert provider.get(key_id) is None
    with pytest.raises(NotFoundError):
        provider.disable(key_id)


# -- ownership --------------------------------------------------------------------------------------
@pytest.mark.parametrize("operation", ["disable", "enable", "delete"])
@pytest.mark.parametrize("foreign", ["ci-pipeline", "legacy-manual"])
def test_foreign_keys_are_refused_and_unchanged(shared_sandbox: SandboxProcess, operation: str, foreign: str) -> None:
    """A seeded foreign key is refused with NotOwnedError, no mutating request is sent, and it stays as it was."""
    sandbox = shared_sandbox
    provider = make_provider(sandbox)
    key_id = sandbox.endpoints["foreign_apikey_ids"][foreign]
    before = emulator_keys(sandbox)
    seq = sandbox.last_seq("iam")
    with pytest.raises(NotOwnedError):
        getattr(provider, operation)(key_id)
    assert emulator_keys(sandbox) == before
    assert [r["method"] for r in iam_requests(sandbox, seq, path="/v1/apikeys")] == ["GET"]


@pytest.mark.parametrize(
    ("name", "description"),
    [
        pytest.param("rotator-icr-pull-r9", "made by hand", id="name-only"),
        pytest.param("hand-made", key_tag(CRED, "r9"), id="tag-only"),
        pytest.param("rotator-icr-pull-r8", key_tag(CRED, "r9"), id="name-and-tag-disagree"),
        pytest.param("rotator-icr-pull-r9", "xmanaged-by=rotator credential=icr-pull rotation=r9", id="tag-glued"),
    ],
)
def test_owned_needs_both_name_and_tag(sandbox: SandboxProcess, name: str, description: str) -> None:
    """A key with only half of the marker is not owned: not listed, and deleting it is refused."""
    provider = make_provider(sandbox)
    key_id = create_raw_key(sandbox, name, description)
    info = provider.get(key_id)
    assert info is not None and not info.owned and info.rotation_id is None
    assert provider.list_owned(credential=CRED) == []
    with pytest.raises(NotOwnedError):
        provider.delete(key_id)
    assert not emulator_keys(sandbox)[key_id]["deleted"]


def test_marker_round_trips_and_rejects_bad_names() -> None:
    """The name and tag built for a rotation parse back to it; names with spaces are rejected up front."""
    assert parse_marker(key_name("a.b_c-d", "2024-05-01T10:36Z"), key_tag("a.b_c-d", "2024-05-01T10:36Z")) == (
        "a.b_c-d",
        "2024-05-01T10:36Z",
    )
    with pytest.raises(ValueError):
        key_name("has space", "r1")
    with pytest.raises(ValueError):
        key_tag("ok", "r" * 65)


# -- pagination -------------------------------------------------------------------------------------
def test_list_follows_next_across_pages(sandbox: SandboxProcess) -> None:
    """With a page size of 2, five keys (two foreign, three owned) take three list requests and all are found."""
    provider = make_provider(sandbox, page_size=2)
    minted = [provider.mint(credential=CRED, rotation_id=f"r{i}").info.id for i in range(3)]
    seq = sandbox.last_seq("iam")
    assert [k.id for k in provider.list_owned(credential=CRED)] == minted
    pages = iam_requests(sandbox, seq, "GET", "/v1/apikeys")
    assert len(pages) == 3
    assert all("pagetoken=" in r["query"] for r in pages[1:])


# -- retries and errors -----------------------------------------------------------------------------
def test_5xx_burst_is_retried(sandbox: SandboxProcess) -> None:
    """Two injected 503s on create are retried (and reported to on_retry) and the third attempt mints."""
    retries: list[tuple[str, int, str]] = []
    policy = RetryPolicy(
        base_s=0.01, cap_s=0.05, on_retry=lambda op, n, _w, e: retries.append((op, n, type(e).__name__))
    )
    provider = make_provider(sandbox, retry=policy)
    provider.check_access()  # token fetched before the faults
    sandbox.set_faults(
        "iam", {"path_prefix": "/v1/apikeys", "methods": ["POST"], "error_status": 503, "error_count": 2}
    )
    seq = sandbox.last_seq("iam")
    with capture_logs() as logs:
        minted = provider.mint(credential=CRED, rotation_id="r1")
    assert minted.info.owned
    assert [r["status"] for r in iam_requests(sandbox, seq, "POST", "/v1/apikeys")] == [503, 503, 201]
    assert retries == [("iam.mint", 1, "TransientError"), ("iam.mint", 2, "TransientError")]
    events = [e for e in logs if e["event"] == "retry.attempt"]
    assert [e["attempt"] for e in events] == [1, 2]
    assert all(sandbox.endpoints["admin_apikey"] not in repr(e) for e in logs)


def test_5xx_without_retry_is_transient(sandbox: SandboxProcess) -> None:
    """With RetryPolicy.none() one 503 surfaces as TransientError naming the operation."""
    provider = make_provider(sandbox, retry=RetryPolicy.none())
    sandbox.set_faults("iam", {"path_prefix": "/v1/apikeys", "error_status": 503, "error_count": 1})
    with pytest.raises(TransientError, match="IAM list: HTTP 503"):
        provider.list_owned(credential=CRED)


def test_429_retry_after_is_honoured(sandbox: SandboxProcess) -> None:
    """A 429 with Retry-After: 3 makes the policy wait at least 3 s (recorded, not slept) before retrying."""
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        sandbox.clear_faults()  # the throttle window "passes" while we sleep

    provider = make_provider(sandbox, retry=RetryPolicy(base_s=0.01, cap_s=0.05, sleep=sleep))
    provider.check_access()
    sandbox.set_faults("iam", {"path_prefix": "/v1/apikeys", "throttle_seconds": 60, "retry_after": 3})
    assert provider.list_owned(credential=CRED) == []
    assert len(waits) == 1 and 3.0 <= waits[0] <= 30.0
    sandbox.set_faults("iam", {"path_prefix": "/v1/apikeys", "throttle_seconds": 60, "retry_after": 3})
    with pytest.raises(RateLimited) as limited:
        make_provider(sandbox, retry=RetryPolicy.none()).list_owned(credential=CRED)
    assert limited.value.retry_after == 3.0


def test_key_limit_is_limit_reached_and_not_retried(sandbox: SandboxProcess) -> None:
    """At IAM's key limit minting raises LimitReachedError after a single create request."""
    sandbox.admin.put("/iam/key-limit", json={"limit": 3}).raise_for_status()
    provider = make_provider(sandbox)
    provider.mint(credential=CRED, rotation_id="r1")
    seq = sandbox.last_seq("iam")
    with pytest.raises(LimitReachedError, match="limit_exceeded"):
        provider.mint(credential=CRED, rotation_id="r2")
    assert len(iam_requests(sandbox, seq, "POST", "/v1/apikeys")) == 1


def test_token_is_cached_and_refreshed_after_80_percent(sandbox: SandboxProcess) -> None:
    """One token serves many calls; once 80 % of its lifetime has passed on the provider's clock (a fake:
    only the test moves it) the next call fetches a new one."""
    sandbox.admin.put("/iam/token-lifetime", json={"seconds": 100}).raise_for_status()
    calls: list[tuple[str, str, int]] = []
    now = [1000.0]
    provider = make_provider(
        sandbox, on_request=lambda op, method, status: calls.append((op, method, status)), clock=lambda: now[0]
    )
    provider.check_access()
    provider.get(sandbox.endpoints["foreign_apikey_ids"]["ci-pipeline"])
    assert calls.count(("token", "POST", 200)) == 1
    now[0] += 79  # short of 80 % of the 100 s lifetime
    provider.check_access()
    assert calls.count(("token", "POST", 200)) == 1
    now[0] += 1
    provider.check_access()
    assert calls.count(("token", "POST", 200)) == 2
    assert ("get", "GET", 200) in calls


def test_401_refreshes_the_token_once(sandbox: SandboxProcess) -> None:
    """A 401 on an API call gets one fresh token and a repeat; a second 401 is UnauthorizedError."""
    provider = make_provider(sandbox, retry=RetryPolicy.none())
    provider.check_access()
    sandbox.set_faults("iam", {"path_prefix": "/v1/apikeys", "error_status": 401, "error_count": 1})
    seq = sandbox.last_seq("iam")
    assert provider.list_owned(credential=CRED) == []
    assert [r["path"] for r in iam_requests(sandbox, seq)] == ["/v1/apikeys", "/identity/token", "/v1/apikeys"]
    sandbox.set_faults("iam", {"path_prefix": "/v1/apikeys", "error_status": 401, "error_count": 2})
    with pytest.raises(UnauthorizedError):
        provider.list_owned(credential=CRED)


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        pytest.param({}, None, id="admin-ok"),
        pytest.param({"admin_apikey": "outsider"}, UnauthorizedError, id="outsider-403"),
        pytest.param({"admin_apikey": "unknown"}, UnauthorizedError, id="unknown-key"),
        pytest.param({"service_id": "ServiceId-00000000-0000-0000-0000-000000000000"}, NotFoundError, id="no-such-id"),
    ],
)
def test_check_access(shared_sandbox: SandboxProcess, overrides: dict[str, Any], error: type[Exception] | None) -> None:
    """check_access passes for the admin and names the problem otherwise, without leaking the key."""
    endpoints = shared_sandbox.endpoints
    keys = {"outsider": endpoints["outsider_apikey"], "unknown": "u" * 44}
    if "admin_apikey" in overrides:
        overrides = {"admin_apikey": SecretStr(keys[overrides["admin_apikey"]])}
    provider = make_provider(shared_sandbox, **overrides)
    if error is None:
        provider.check_access()
        return
    with pytest.raises(error) as raised:
        provider.check_access()
    assert "check_access" in str(raised.value) or "token" in str(raised.value)
    assert all(secret not in str(raised.value) for secret in (*keys.values(), endpoints["admin_apikey"]))


def test_connection_refused_is_transient() -> None:
    """No server listening: the retries run out and TransientError says which operation failed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = IamProvider(
        base_url=f"http://127.0.0.1:{port}",
        account_id="a",
        service_id="ServiceId-x",
        admin_apikey=SecretStr("k" * 44),
        retry=RetryPolicy(attempts=2, base_s=0.01, cap_s=0.01),
    )
    with pytest.raises(TransientError, match="IAM token: connection failed"):
        provider.check_access()


# -- the retry policy itself ------------------------------------------------------------------------
class Flaky:
    """Raises the given errors in turn, then returns "ok"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_policy_caps_retry_after_by_the_remaining_budget() -> None:
    """A Retry-After longer than the total budget is cut to what remains of it."""
    waits: list[float] = []
    policy = RetryPolicy(max_total_s=2.0, sleep=waits.append)
    assert policy.call(Flaky(RateLimited("slow down", retry_after=60)), operation="t") == "ok"
    assert len(waits) == 1 and 1.5 < waits[0] <= 2.0


@pytest.mark.parametrize(
    ("error", "calls"),
    [
        pytest.param(PermanentError("no"), 1, id="permanent-not-retried"),
        pytest.param(UnauthorizedError("no"), 1, id="unauthorized-not-retried"),
        pytest.param(TransientError("later"), 3, id="transient-retried-to-the-attempt-limit"),
    ],
)
def test_policy_retries_only_transient_errors(error: Exception, calls: int) -> None:
    """Only TransientError is retried, and never beyond ``attempts``; the last error is re-raised."""
    flaky = Flaky(*[error] * 5)
    with pytest.raises(type(error)):
        RetryPolicy(attempts=3, sleep=lambda _s: None).call(flaky, operation="t")
    assert flaky.calls == calls


def test_policy_backoff_is_jittered_exponential_and_capped() -> None:
    """Waits double from base_s, lose at most half to jitter, and never exceed cap_s."""
    low = RetryPolicy(base_s=0.2, cap_s=1.0, jitter=lambda: 0.0)
    high = RetryPolicy(base_s=0.2, cap_s=1.0, jitter=lambda: 0.999999)
    assert [round(low.backoff(n), 3) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.5]
    assert [round(high.backoff(n), 3) for n in (1, 2, 3, 4)] == [0.2, 0.4, 0.8, 1.0]
