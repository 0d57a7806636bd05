"""CodeEngineSink against the Code Engine emulator over HTTP, and the ``codeengine`` config target."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rotator.adapters.codeengine import CONFLICT_RETRIES, CodeEngineSink
from rotator.adapters.iam import IamProvider, IamTokenSource
from rotator.errors import (
    ConfigError,
    LimitReachedError,
    NotFoundError,
    RateLimited,
    TargetRefusedError,
    TransientError,
    UnauthorizedError,
)
from rotator.model import RegistryAuth, SecretStr, TargetRef
from rotator.retrying import RetryPolicy
from rotator.sandbox.control import SandboxProcess
from rotator.settings import CodeEngineProject, CodeEngineTarget, parse

FAST = RetryPolicy(base_s=0.01, cap_s=0.05, max_total_s=5)
SECRET = "icr-pull"
VERSION = "2026-03-27"
RequestHook = Callable[[httpx.Request], None]


class Env:
    """A sink for the sandbox's project, plus a second client acting as 'someone else'."""

    def __init__(self, sandbox: SandboxProcess, *, apikey: str | None = None, hook: RequestHook | None = None):
        self.sandbox = sandbox
        ep = sandbox.endpoints
        self.project = ep["codeengine_project_id"]
        self.server = ep["registry_host"]
        self.hooks: list[RequestHook] = [hook] if hook else []
        self.client = httpx.Client(timeout=10, event_hooks={"request": [self._on_request]})
        self.other = httpx.Client(timeout=10)
        self.iam_requests: list[str] = []
        self._token: str | None = None
        self.tokens = IamTokenSource(
            base_url=ep["iam"],
            apikey=SecretStr(apikey or ep["admin_apikey"]),
            client=self.client,
            on_request=lambda op, method, status: self.iam_requests.append(op),
        )
        self.target = CodeEngineTarget(
            secret_name=SECRET, projects=(CodeEngineProject(project_id=self.project, endpoint=ep["codeengine"]),)
        )
        self.writes: list[str] = []
        self.sink = CodeEngineSink(
            self.target,
            credential="icr-pull",
            tokens=self.tokens,
            client=self.client,
            retry=FAST,
            on_write=lambda sink, result: self.writes.append(result),
        )
        self.ref = TargetRef(sink="codeengine", namespace=self.project, name=SECRET)

    def _on_request(self, request: httpx.Request) -> None:
        for hook in self.hooks:
            hook(request)

    def auth(self, password: str, email: str | None = None) -> RegistryAuth:
        return RegistryAuth(server=self.server, username="iamapikey", password=SecretStr(password), email=email)

    # "someone else": straight API calls with the admin's token
    def api(self, method: str, path: str = "", **kwargs: Any) -> httpx.Response:
        ep = self.sandbox.endpoints
        if self._token is None:
            self._token = httpx.post(
                f"{ep['iam']}/identity/token",
                data={"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": ep["admin_apikey"]},
            ).json()["access_token"]
        token = self._token
        url = f"{ep['codeengine']}/projects/{self.project}/secrets{path}"
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        return self.other.request(method, url, params={"version": VERSION}, headers=headers, **kwargs)

    def stored(self, name: str = SECRET) -> dict[str, Any] | None:
        response = self.api("GET", f"/{name}")
        return response.json() if response.status_code == 200 else None

    def close(self) -> None:
        self.client.close()
        self.other.close()


@pytest.fixture
def env(sandbox: SandboxProcess) -> Iterator[Env]:
    e = Env(sandbox)
    yield e
    e.close()


def test_create_then_unchanged_then_update_in_place(env: Env) -> None:
    """Missing → created; same credential → unchanged; new password → updated with a new entity tag, same id."""
    assert env.sink.resolve_targets() == [env.ref]
    assert env.sink.read_state(env.ref, env.server).exists is False
    assert env.sink.write_entry(env.ref, env.auth("key-one")) == "created"
    first = env.stored()
    assert first is not None and first["format"] == "registry"
    assert first["data"] == {"server": env.server, "username": "iamapikey", "password": "key-one"}
    state = env.sink.read_state(env.ref, env.server)
    assert state.exists and state.entry == env.auth("key-one") and not state.refused
    assert env.sink.write_entry(env.ref, env.auth("key-one")) == "unchanged"
    assert env.sink.write_entry(env.ref, env.auth("key-two")) == "updated"
    second = env.stored()
    assert second is not None
    assert (second["id"], second["data"]["password"]) == (first["id"], "key-two")
    assert second["entity_tag"] != first["entity_tag"]
    assert env.writes == ["created", "unchanged", "updated"]


def test_update_keeps_email_and_extra_keys(env: Env) -> None:
    """Someone's email and extra data keys survive our replace; an equivalent server spelling is ours."""
    data = {"server": f"https://{env.server}", "username": "old", "password": "p", "email": "a@b.c", "note": "x"}
    assert env.api("POST", json={"name": SECRET, "format": "registry", "data": data}).status_code == 201
    assert env.sink.write_entry(env.ref, env.auth("key-one")) == "updated"
    stored = env.stored()
    assert stored is not None
    assert stored["data"] == {
        "server": env.server,
        "username": "iamapikey",
        "password": "key-one",
        "email": "a@b.c",
        "note": "x",
    }
    assert env.sink.read_state(env.ref, env.server).entry == env.auth("key-one", "a@b.c")
    assert env.sink.write_entry(env.ref, env.auth("key-one")) == "unchanged"


def test_stale_entity_tag_is_reread_and_retried(env: Env) -> None:
    """A replace between our read and our write (412) makes the sink read again and write on top."""
    data = {"server": env.server, "username": "iamapikey", "password": "old"}
    assert env.api("POST", json={"name": SECRET, "format": "registry", "data": data}).status_code == 201
    bumped: list[int] = []

    def concurrent(request: httpx.Request) -> None:
        if request.method == "PUT" and not bumped:
            bumped.append(1)
            body = {"format": "registry", "data": {"server": env.server, "username": "iamapikey", "password": "theirs"}}
            assert env.api("PUT", f"/{SECRET}", json=body, headers={"If-Match": "*"}).status_code == 200

    env.hooks.append(concurrent)
    since = env.sandbox.last_seq("codeengine")
    assert env.sink.write_entry(env.ref, env.auth("ours")) == "updated"
    stored = env.stored()
    assert stored is not None and stored["data"]["password"] == "ours"
    puts = [r["status"] for r in env.sandbox.requests("codeengine", since) if r["method"] == "PUT"]
    assert puts == [200, 412, 200]  # theirs, our stale one, our retry
    assert env.writes == ["conflict", "updated"]


def test_endless_conflicts_end_in_a_transient_error(env: Env) -> None:
    """A secret that changes before every write of ours is given up after a bounded number of attempts."""
    env.api(
        "POST",
        json={"name": SECRET, "format": "registry", "data": {"server": env.server, "username": "u", "password": "p"}},
    )

    def always(request: httpx.Request) -> None:
        if request.method == "PUT":
            body = {"format": "registry", "data": {"server": env.server, "username": "u", "password": "p2"}}
            env.api("PUT", f"/{SECRET}", json=body, headers={"If-Match": "*"})

    env.hooks.append(always)
    with pytest.raises(TransientError, match="still conflicting"):
        env.sink.write_entry(env.ref, env.auth("ours"))
    assert env.writes.count("conflict") == CONFLICT_RETRIES


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param({"format": "generic", "data": {"token": "t"}}, "format 'generic'", id="other-format"),
        pytest.param(
            {"format": "registry", "data": {"server": "docker.io", "username": "bot", "password": "hub-token"}},
            "registry 'docker.io'",
            id="other-registry",
        ),
    ],
)
def test_foreign_secret_is_refused_and_untouched(env: Env, body: dict[str, Any], reason: str) -> None:
    """A secret of another format or another registry is refused, never overwritten nor removed."""
    assert env.api("POST", json={"name": SECRET, **body}).status_code == 201
    before = env.stored()
    state = env.sink.read_state(env.ref, env.server)
    assert state.exists and state.entry is None and reason in state.refused
    with pytest.raises(TargetRefusedError, match=reason):
        env.sink.write_entry(env.ref, env.auth("ours"))
    env.sink.remove_entry(env.ref, env.server)
    assert env.stored() == before
    assert env.writes == ["refused"]


def test_remove_entry_deletes_our_secret_only(env: Env) -> None:
    """Undoing a create deletes the secret that holds our registry; a missing secret is fine."""
    env.sink.remove_entry(env.ref, env.server)  # nothing there
    env.sink.write_entry(env.ref, env.auth("ours"))
    env.sink.remove_entry(env.ref, env.server)
    assert env.stored() is None


def test_outsider_key_is_unauthorized_with_a_fix(sandbox: SandboxProcess) -> None:
    """A key without rights on the project reads as UnauthorizedError naming the role it needs."""
    env = Env(sandbox, apikey=sandbox.endpoints["outsider_apikey"])
    try:
        with pytest.raises(UnauthorizedError, match="Writer role") as raised:
            env.sink.read_state(env.ref, env.server)
        assert sandbox.endpoints["outsider_apikey"] not in str(raised.value)
        denied = env.sink.check_writable([env.ref])
        assert len(denied) == 1 and "403" in denied[0]
    finally:
        env.close()


def test_unknown_api_key_is_unauthorized(sandbox: SandboxProcess) -> None:
    """An API key IAM does not know fails at the token endpoint as UnauthorizedError, without the key."""
    env = Env(sandbox, apikey="x" * 44)
    try:
        with pytest.raises(UnauthorizedError, match="BXNIM0415E") as raised:
            env.sink.read_state(env.ref, env.server)
        assert "x" * 44 not in str(raised.value)
    finally:
        env.close()


def test_secret_limit_is_a_clear_limit_error(env: Env) -> None:
    """A project at its secret limit gives LimitReachedError with what to do; nothing is written."""
    env.sandbox.admin.put("/codeengine/secret-limit", json={"limit": 0}).raise_for_status()
    with pytest.raises(LimitReachedError, match="delete secrets") as raised:
        env.sink.write_entry(env.ref, env.auth("ours"))
    assert "maximum number of secrets" in str(raised.value) and "ours" not in str(raised.value)
    assert env.stored() is None
    assert env.writes == ["error"]


def test_check_writable_warns_before_the_documented_limit(env: Env) -> None:
    """``rotator check`` says a missing secret could not be created in a project holding 100 secrets."""
    assert env.sink.check_writable([env.ref]) == []
    for i in range(100):
        env.api("POST", json={"name": f"filler-{i:03d}", "format": "generic", "data": {"a": "b"}})
    denied = env.sink.check_writable([env.ref])
    assert len(denied) == 1 and "holds 100 secrets" in denied[0]
    assert env.sink.check_writable([TargetRef(sink="kubernetes", namespace="team-a", name=SECRET)]) == []


def test_unknown_project_is_not_found(sandbox: SandboxProcess) -> None:
    """A project that does not exist reads as no secret and fails the write with a clear NotFoundError."""
    env = Env(sandbox)
    try:
        missing = "00000000-0000-0000-0000-000000000000"
        target = CodeEngineTarget(
            secret_name=SECRET,
            projects=(CodeEngineProject(project_id=missing, endpoint=sandbox.endpoints["codeengine"]),),
        )
        sink = CodeEngineSink(target, credential="icr-pull", tokens=env.tokens, client=env.client, retry=FAST)
        ref = sink.resolve_targets()[0]
        assert sink.read_state(ref, env.server).exists is False
        with pytest.raises(NotFoundError, match="check project_id"):
            sink.write_entry(ref, env.auth("ours"))
    finally:
        env.close()


PATIENT = RetryPolicy(attempts=10, base_s=0.02, cap_s=0.05, max_total_s=5)
SHORT = RetryPolicy(attempts=3, base_s=0.01, cap_s=0.02, max_total_s=2)


@pytest.mark.parametrize(
    ("rule", "retry", "error", "statuses"),
    [
        pytest.param({"error_status": 503, "error_count": 2}, PATIENT, None, [503, 503, 404, 201], id="503-burst"),
        pytest.param({"throttle_seconds": 0.1, "retry_after": 0}, PATIENT, None, None, id="429-window"),
        pytest.param({"error_status": 503, "error_count": 1000}, SHORT, TransientError, None, id="503-forever"),
        pytest.param({"throttle_seconds": 60, "retry_after": 0}, SHORT, RateLimited, None, id="429-forever"),
    ],
)
def test_transient_statuses(
    env: Env, rule: dict[str, Any], retry: RetryPolicy, error: type[Exception] | None, statuses: list[int] | None
) -> None:
    """429 and 5xx are retried within the policy's budget, then surface as transient errors."""
    sink = CodeEngineSink(env.target, credential="icr-pull", tokens=env.tokens, client=env.client, retry=retry)
    sink.read_state(env.ref, env.server)  # token fetched before the faults
    since = env.sandbox.last_seq("codeengine")
    env.sandbox.set_faults("codeengine", {"path_prefix": "/v2/projects", **rule})
    if error is not None:
        with pytest.raises(error):
            sink.write_entry(env.ref, env.auth("ours"))
        env.sandbox.clear_faults()
        assert env.api("GET", f"/{SECRET}").status_code == 404
        return
    assert sink.write_entry(env.ref, env.auth("ours")) == "created"
    if statuses is not None:
        assert [r["status"] for r in env.sandbox.requests("codeengine", since)] == statuses


def test_401_refreshes_the_token_once(env: Env) -> None:
    """One 401 gets a fresh IAM token and the request again; two in a row are UnauthorizedError."""
    env.sink.read_state(env.ref, env.server)
    assert env.iam_requests == ["token"]
    env.sandbox.set_faults("codeengine", {"path_prefix": "/v2/projects", "error_status": 401, "error_count": 1})
    assert env.sink.read_state(env.ref, env.server).exists is False
    assert env.iam_requests == ["token", "token"]
    env.sandbox.set_faults("codeengine", {"path_prefix": "/v2/projects", "error_status": 401, "error_count": 2})
    with pytest.raises(UnauthorizedError, match="check the API key"):
        env.sink.read_state(env.ref, env.server)


def test_shares_the_iam_providers_token(sandbox: SandboxProcess) -> None:
    """With the provider's admin key the sink reuses IamProvider's cached token: one token request in all."""
    ep = sandbox.endpoints
    with httpx.Client(timeout=10) as client:
        provider = IamProvider(
            base_url=ep["iam"],
            account_id=ep["account_id"],
            service_id=ep["service_id"],
            admin_apikey=SecretStr(ep["admin_apikey"]),
            client=client,
            retry=FAST,
        )
        target = CodeEngineTarget(
            secret_name=SECRET,
            projects=(CodeEngineProject(project_id=ep["codeengine_project_id"], endpoint=ep["codeengine"]),),
        )
        sink = CodeEngineSink(target, credential="icr-pull", tokens=provider.tokens, client=client, retry=FAST)
        since = sandbox.last_seq("iam")
        provider.check_access()
        sink.read_state(sink.resolve_targets()[0], ep["registry_host"])
        tokens = [r for r in sandbox.requests("iam", since) if r["path"] == "/identity/token"]
        assert len(tokens) == 1


# -- config ----------------------------------------------------------------------------------------
ENDPOINT = "https://api.us-south.codeengine.cloud.ibm.com/v2"
PID = "4a6c8e0f-1b3d-4f5a-8c7e-9d0b2a4c6e8f"
PID2 = "5b7d9f1a-2c4e-4a6b-9d8f-0e1c3b5d7f9a"


def config_with(codeengine: dict[str, Any]) -> dict[str, Any]:
    return {
        "credentials": [
            {
                "name": "icr-pull",
                "provider": {
                    "kind": "ibm-iam",
                    "account_id": "a",
                    "service_id": "ServiceId-1",
                    "apikey": {"env": "ROTATOR_ADMIN_APIKEY"},
                },
                "registry": {"server": "us.icr.io", "images": ["us.icr.io/team/app:1"]},
                "targets": {"codeengine": codeengine},
            }
        ]
    }


@pytest.mark.parametrize(
    ("codeengine", "projects"),
    [
        pytest.param({"endpoint": ENDPOINT, "project_id": PID, "secret_name": "icr"}, [(PID, ENDPOINT)], id="one"),
        pytest.param(
            {
                "endpoint": ENDPOINT,
                "secret_name": "icr",
                "projects": [
                    {"project_id": PID},
                    {"project_id": PID2, "endpoint": ENDPOINT.replace("us-south", "eu-de")},
                ],
            },
            [(PID, ENDPOINT), (PID2, ENDPOINT.replace("us-south", "eu-de"))],
            id="list-across-regions",
        ),
        pytest.param(
            {"endpoint": ENDPOINT + "/", "project_id": PID.upper(), "secret_name": "icr"},
            [(PID, ENDPOINT)],
            id="normalised",
        ),
    ],
)
def test_config_target_parses(tmp_path: Path, codeengine: dict[str, Any], projects: list[tuple[str, str]]) -> None:
    """``targets.codeengine`` takes one project_id or a list of projects, each with its region endpoint."""
    cred = parse(config_with(codeengine), source=tmp_path / "c.yaml", base_dir=tmp_path).credentials[0]
    assert cred.codeengine is not None and cred.kubernetes is None
    assert [(p.project_id, p.endpoint) for p in cred.codeengine.projects] == projects
    assert cred.codeengine.apikey is None


def test_config_apikey_is_shown_by_location_only(tmp_path: Path) -> None:
    """A Code Engine key of its own is read from a file or env var and logged by location."""
    doc = config_with({"endpoint": ENDPOINT, "project_id": PID, "secret_name": "icr", "apikey": {"file": "ce-key"}})
    settings = parse(doc, source=tmp_path / "c.yaml", base_dir=tmp_path)
    target = settings.credentials[0].codeengine
    assert target is not None and target.apikey is not None and target.apikey.file == tmp_path / "ce-key"
    assert settings.redacted()["credentials"][0]["codeengine"]["apikey"] == f"file:{tmp_path / 'ce-key'}"


@pytest.mark.parametrize(
    ("codeengine", "expected"),
    [
        pytest.param({"project_id": PID, "secret_name": "icr"}, "codeengine.endpoint: is required", id="no-endpoint"),
        pytest.param(
            {"endpoint": "https://api.us-south.codeengine.cloud.ibm.com", "project_id": PID, "secret_name": "icr"},
            "ending in /v2",
            id="endpoint-without-v2",
        ),
        pytest.param(
            {"endpoint": ENDPOINT, "secret_name": "icr"}, "exactly one of project_id or projects", id="no-project"
        ),
        pytest.param(
            {"endpoint": ENDPOINT, "project_id": PID, "projects": [{"project_id": PID2}], "secret_name": "icr"},
            "exactly one of project_id or projects",
            id="both",
        ),
        pytest.param(
            {"endpoint": ENDPOINT, "project_id": "team-apps", "secret_name": "icr"}, "a UUID", id="name-not-id"
        ),
        pytest.param(
            {"endpoint": ENDPOINT, "project_id": PID, "secret_name": "ICR_Pull"},
            "Code Engine secret name",
            id="bad-secret-name",
        ),
        pytest.param(
            {"endpoint": ENDPOINT, "projects": [{"project_id": PID}, {"project_id": PID}], "secret_name": "icr"},
            "listed twice",
            id="duplicate-project",
        ),
        pytest.param({"endpoint": ENDPOINT, "projects": [], "secret_name": "icr"}, "non-empty list", id="empty-list"),
        pytest.param(
            {"projects": [{"project_id": PID}], "secret_name": "icr"},
            "projects[0].endpoint: is required",
            id="list-without-endpoint",
        ),
        pytest.param(
            {"endpoint": ENDPOINT, "project_id": PID, "secret_name": "icr", "region": "us-south"},
            "codeengine.region: unknown field",
            id="unknown-field",
        ),
        pytest.param(
            {"endpoint": ENDPOINT, "project_id": PID, "secret_name": "icr", "apikey": {"value": "k"}},
            "codeengine.apikey",
            id="inline-key",
        ),
    ],
)
def test_config_errors_name_the_field(tmp_path: Path, codeengine: dict[str, Any], expected: str) -> None:
    """A bad ``codeengine`` target is reported with its field path and a fix."""
    with pytest.raises(ConfigError) as raised:
        parse(config_with(codeengine), source=tmp_path / "c.yaml", base_dir=tmp_path)
    assert expected in str(raised.value)
    assert "credentials[0].targets.codeengine" in str(raised.value)
