"""The HTTP API over real HTTP: auth in both modes, rotation requests, limits, errors, health and logs.

The daemon behind the API is ``FakeControl``, a test double of our own ``DaemonControl`` port. The
Kubernetes mode asks the sandbox's Kubernetes emulator for TokenReviews and SubjectAccessReviews.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import itertools
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from rotator.adapters.kubernetes import api_client_for
from rotator.apiauth import Authenticator, KubernetesAuthenticator, TokenFileAuthenticator
from rotator.errors import ConfigError, NotFoundError, RotatorError
from rotator.sandbox.control import SandboxProcess
from rotator.server import MAX_BODY, ApiServer, start_server
from rotator.settings import ApiAuthSettings, ServerSettings, Settings

NAMES = ("icr-pull", "hub-pull")
LOG_FILE = Path(os.environ["ROTATOR_TEST_LOG_DIR"]) / "in-process.jsonl"
GROUP = "rotator.example.com"


# -- the daemon double ------------------------------------------------------------------------------


class FakeControl:
    """Records every call; one rotation per credential at a time (later requests join it)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.is_alive = True
        self.conditions = {"config_loaded": True, "state_store": True, "leadership_known": True}
        self.leading: tuple[bool, str | None] = (True, "replica-a")
        self.in_flight: dict[str, str] = {}
        self.rotations: dict[str, dict[str, Any]] = {}
        self.barrier: threading.Barrier | None = None  # request_rotation waits here when set
        self.gate: threading.Event | None = None  # credentials() waits here when set
        self.entered = threading.Event()  # set when credentials() is called
        self.fail_credentials = False
        self._ids = itertools.count(1)

    def alive(self) -> bool:
        return self.is_alive

    def readiness(self) -> dict[str, bool]:
        return dict(self.conditions)

    def leader(self) -> tuple[bool, str | None]:
        return self.leading

    def credentials(self) -> list[dict[str, Any]]:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail_credentials:
            raise RuntimeError("state store exploded at /secret/path")
        return [{"name": n, "current_key_id": f"ApiKey-{n}", "rotation_in_progress": None} for n in NAMES]

    def request_rotation(
        self,
        name: str,
        *,
        reason: str,
        emergency: bool = False,
        leaked_key_id: str | None = None,
        principal: str = "rotator",
        idempotency_key: str = "",
        fingerprint: str = "",
    ) -> tuple[str, bool]:
        if name not in NAMES:
            raise NotFoundError(f"no credential named {name!r}")
        if self.barrier is not None:
            self.barrier.wait()
        with self.lock:
            self.requests.append(
                {"name": name, "reason": reason, "emergency": emergency, "leaked_key_id": leaked_key_id}
            )
            if name in self.in_flight:
                return self.in_flight[name], True
            rotation_id = f"rot-{next(self._ids)}"
            self.in_flight[name] = rotation_id
            self.rotations[rotation_id] = {"id": rotation_id, "credential": name, "state": "queued"}
            return rotation_id, False

    def finish(self, name: str) -> None:
        with self.lock:
            rotation_id = self.in_flight.pop(name)
            self.rotations[rotation_id]["state"] = "succeeded"

    def rotation(self, rotation_id: str) -> dict[str, Any] | None:
        with self.lock:
            found = self.rotations.get(rotation_id)
            return dict(found) if found else None


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- servers --------------------------------------------------------------------------------------------


@dataclass
class Api:
    server: ApiServer
    control: FakeControl
    http: httpx.Client
    tokens: dict[str, str] = field(default_factory=dict)  # role -> token

    def call(self, method: str, path: str, *, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.http.request(method, path, headers=headers, **kwargs)

    def rotate(self, name: str = "icr-pull", *, role: str = "rotate", **kwargs: Any) -> httpx.Response:
        return self.call("POST", f"/v1/credentials/{name}/rotate", token=self.tokens.get(role), **kwargs)


def server_settings(**changes: Any) -> ServerSettings:
    base = ServerSettings(listen="127.0.0.1:0", rate_per_minute=6000, rate_burst=100)
    return replace(base, **changes)


@contextlib.contextmanager
def running(
    control: FakeControl,
    authenticator: Authenticator,
    settings: ServerSettings | None = None,
    *,
    registry: CollectorRegistry | None = None,
    clock: Callable[[], float] = time.monotonic,
    tokens: dict[str, str] | None = None,
) -> Iterator[Api]:
    server = ApiServer(
        control,
        registry or CollectorRegistry(),
        settings or server_settings(),
        authenticator=authenticator,
        clock=clock,
        shutdown_timeout=1.0,
    )
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            yield Api(server, control, http, dict(tokens or {}))
    finally:
        server.stop()


def write_token_file(path: Path, entries: dict[str, tuple[str, str]]) -> None:
    """entries: token -> (principal, role); written atomically (new inode), as a Secret volume update is."""
    text = "# API clients\n" + "".join(f"{t} {p} {r}  # {p}\n" for t, (p, r) in entries.items())
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class FileTokens:
    path: Path
    tokens: dict[str, str]  # role name in tests -> token

    def authenticator(self) -> TokenFileAuthenticator:
        return TokenFileAuthenticator(self.path)


def new_token() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture
def file_tokens(tmp_path: Path) -> FileTokens:
    """A token file with a rotate client (alice), a read client (bob) and a second rotate client (carol)."""
    tokens = {"rotate": new_token(), "read": new_token(), "other": new_token()}
    path = tmp_path / "api-tokens"
    write_token_file(
        path,
        {tokens["rotate"]: ("alice", "rotate"), tokens["read"]: ("bob", "read"), tokens["other"]: ("carol", "rotate")},
    )
    return FileTokens(path, tokens)


@pytest.fixture
def api(file_tokens: FileTokens) -> Iterator[Api]:
    """An API server in token-file mode in front of a fresh FakeControl."""
    with running(FakeControl(), file_tokens.authenticator(), tokens=file_tokens.tokens) as a:
        yield a


# -- Kubernetes mode ---------------------------------------------------------------------------------

REVIEWER_RULES = [
    {"verbs": ["create"], "apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"]},
    {"verbs": ["create"], "apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"]},
]


def add_kube_token(sbx: SandboxProcess, user: str, rules: list[dict[str, Any]]) -> str:
    response = sbx.admin.post("/kubernetes/tokens", json={"user": user, "groups": ["ci"], "rules": rules})
    response.raise_for_status()
    token: str = response.json()["token"]
    return token


def kube_tokens(sbx: SandboxProcess) -> dict[str, str]:
    """Tokens with RBAC-like rules on rotator.example.com/credentials (unique users per call)."""
    suffix = secrets.token_hex(3)

    def rule(verbs: list[str], names: list[str] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"verbs": verbs, "apiGroups": [GROUP], "resources": ["credentials"]}
        return out | ({"resourceNames": names} if names else {})

    return {
        "reviewer": add_kube_token(sbx, f"system:serviceaccount:rotator-system:rotator-{suffix}", REVIEWER_RULES),
        "rotate": add_kube_token(sbx, f"system:serviceaccount:ci:deployer-{suffix}", [rule(["get", "list", "rotate"])]),
        "read": add_kube_token(sbx, f"system:serviceaccount:monitoring:grafana-{suffix}", [rule(["get", "list"])]),
        "icr-only": add_kube_token(sbx, f"icr-owner-{suffix}", [rule(["get", "rotate"], ["icr-pull"]), rule(["list"])]),
        "nothing": add_kube_token(sbx, f"stranger-{suffix}", []),
    }


@contextlib.contextmanager
def kube_authenticator(sbx: SandboxProcess, reviewer: str, **kwargs: Any) -> Iterator[KubernetesAuthenticator]:
    client = api_client_for(sbx.endpoints["kubernetes"], reviewer)
    try:
        yield KubernetesAuthenticator(client, namespace="rotator-system", **kwargs)
    finally:
        client.close()


@pytest.fixture(scope="module", params=["token-file", "kubernetes"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One API server per auth mode for the read-only matrix tests (tokens: rotate, read)."""
    control = FakeControl()
    if request.param == "token-file":
        path = tmp_path_factory.mktemp("world") / "api-tokens"
        tokens = {"rotate": new_token(), "read": new_token()}
        write_token_file(path, {tokens["rotate"]: ("alice", "rotate"), tokens["read"]: ("bob", "read")})
        with running(control, TokenFileAuthenticator(path), tokens=tokens) as a:
            yield a
        return
    sbx: SandboxProcess = request.getfixturevalue("shared_sandbox")
    tokens = kube_tokens(sbx)
    with kube_authenticator(sbx, tokens["reviewer"]) as auth, running(control, auth, tokens=tokens) as a:
        yield a


AUTH_CASES = [
    pytest.param(None, 401, 401, id="no-token"),
    pytest.param("Basic YWxpY2U6c2VjcmV0", 401, 401, id="not-bearer"),
    pytest.param("Bearer", 401, 401, id="bearer-without-token"),
    pytest.param("bogus", 401, 401, id="unknown-token"),
    pytest.param("read", 403, 200, id="read-token"),
    pytest.param("rotate", 202, 200, id="rotate-token"),
]


def auth_header(api: Api, who: str | None) -> dict[str, str]:
    if who is None:
        return {}
    if who in api.tokens:
        return {"Authorization": f"Bearer {api.tokens[who]}"}
    if who == "bogus":
        return {"Authorization": f"Bearer {new_token()}"}
    return {"Authorization": who}


@pytest.mark.parametrize(("who", "rotate_status", "list_status"), AUTH_CASES)
def test_auth_matrix(world: Api, who: str | None, rotate_status: int, list_status: int) -> None:
    """In both modes: no/malformed/unknown token 401 with the Bearer challenge, read-only 403 on rotate, rotate 202."""
    headers = auth_header(world, who)
    rotate = world.http.post("/v1/credentials/icr-pull/rotate", headers=headers)
    listing = world.http.get("/v1/credentials", headers=headers)
    assert (rotate.status_code, listing.status_code) == (rotate_status, list_status)
    for response in (rotate, listing):
        assert response.headers["content-type"].startswith("application/json")
        if response.status_code == 401:
            assert response.headers["WWW-Authenticate"].startswith('Bearer realm="rotator"')
        if response.status_code >= 400:
            assert isinstance(response.json()["error"], str)
    if rotate_status == 202:
        assert rotate.json()["credential"] == "icr-pull"
        assert [c["name"] for c in listing.json()["credentials"]] == list(NAMES)


def test_kubernetes_authorizes_per_credential_name(shared_sandbox: SandboxProcess) -> None:
    """The SubjectAccessReview names the credential: a token limited to icr-pull may rotate it and not hub-pull."""
    tokens = kube_tokens(shared_sandbox)
    with kube_authenticator(shared_sandbox, tokens["reviewer"]) as auth, running(FakeControl(), auth) as api:
        allowed = api.call("POST", "/v1/credentials/icr-pull/rotate", token=tokens["icr-only"])
        denied = api.call("POST", "/v1/credentials/hub-pull/rotate", token=tokens["icr-only"])
        assert (allowed.status_code, denied.status_code) == (202, 403)
        assert "rotate credentials/hub-pull" in denied.json()["error"]
        rotation_id = allowed.json()["rotation_id"]
        own = api.call("GET", f"/v1/rotations/{rotation_id}", token=tokens["icr-only"])
        assert own.status_code == 200 and own.json()["credential"] == "icr-pull"
        # An unknown id needs get on every credential: 403 for the limited token, 404 for a full reader.
        assert api.call("GET", "/v1/rotations/rot-unknown", token=tokens["icr-only"]).status_code == 403
        assert api.call("GET", "/v1/rotations/rot-unknown", token=tokens["read"]).status_code == 404
        assert api.call("GET", "/v1/credentials", token=tokens["nothing"]).status_code == 403
        assert not [r for r in api.control.requests if r["name"] == "hub-pull"]


def test_kubernetes_reviews_are_cached_for_the_ttl(sandbox: SandboxProcess) -> None:
    """Answers (positive and negative) are reused within the TTL; a revoked token stops working after it."""
    tokens = kube_tokens(sandbox)
    clock = FakeClock()
    with (
        kube_authenticator(sandbox, tokens["reviewer"], cache_ttl=10.0, clock=clock) as auth,
        running(FakeControl(), auth, tokens=tokens) as api,
    ):
        since = sandbox.last_seq("kubernetes")
        assert [api.rotate().status_code for _ in range(3)] == [202, 202, 202]
        bogus = new_token()
        assert [api.call("GET", "/v1/credentials", token=bogus).status_code for _ in range(2)] == [401, 401]
        reviews = [r["path"].rsplit("/", 1)[-1] for r in sandbox.requests("kubernetes", since=since)]
        assert sorted(reviews) == ["subjectaccessreviews", "tokenreviews", "tokenreviews"]
        sandbox.admin.delete(f"/kubernetes/tokens/{tokens['rotate']}").raise_for_status()
        assert api.rotate().status_code == 202  # still cached
        clock.now += 10.5
        assert api.rotate().status_code == 401


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param("apiserver-errors", id="apiserver-500"),
        pytest.param("reviewer-not-allowed", id="reviewer-403"),
        pytest.param("apiserver-gone", id="connection-refused"),
    ],
)
def test_kubernetes_review_failure_answers_503(sandbox: SandboxProcess, failure: str) -> None:
    """When the token cannot be reviewed the API answers 503 with Retry-After, never 500 and never a guess."""
    tokens = kube_tokens(sandbox)
    reviewer = tokens["reviewer"]
    server = sandbox.endpoints["kubernetes"]
    if failure == "apiserver-errors":
        sandbox.set_faults(
            "kubernetes", {"path_prefix": "/apis/authentication.k8s.io", "error_status": 500, "error_count": 1000}
        )
    elif failure == "reviewer-not-allowed":
        reviewer = tokens["nothing"]
    else:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            server = f"http://127.0.0.1:{sock.getsockname()[1]}"
    client = api_client_for(server, reviewer)
    try:
        auth = KubernetesAuthenticator(client, namespace="rotator-system")
        with running(FakeControl(), auth, tokens=tokens) as api:
            response = api.rotate()
            assert response.status_code == 503
            assert response.json()["error"] == "cannot check the token now"
            assert int(response.headers["Retry-After"]) >= 1
            assert not api.control.requests
    finally:
        client.close()


# -- rotation requests -------------------------------------------------------------------------------


def test_rotate_answers_202_with_location_and_passes_the_reason(api: Api) -> None:
    """A rotate request queues one rotation: 202, Location = status_url, reason and principal reach the daemon."""
    response = api.rotate(json={"reason": "suspicious pull from CI"})
    assert response.status_code == 202
    body = response.json()
    assert body == {
        "rotation_id": "rot-1",
        "credential": "icr-pull",
        "joined": False,
        "status_url": "/v1/rotations/rot-1",
    }
    assert response.headers["Location"] == "/v1/rotations/rot-1"
    assert api.control.requests == [
        {"name": "icr-pull", "reason": "suspicious pull from CI (by alice)", "emergency": False, "leaked_key_id": None}
    ]
    status = api.call("GET", body["status_url"], token=api.tokens["read"])
    assert status.status_code == 200 and status.json()["state"] == "queued"


@pytest.mark.parametrize(
    ("body", "leaked_key_id"),
    [
        pytest.param({"key_id": "ApiKey-0123"}, "ApiKey-0123", id="named-key"),
        pytest.param(None, None, id="current-key"),
    ],
)
def test_leaked_requests_an_emergency_rotation(
    api: Api, body: dict[str, str] | None, leaked_key_id: str | None
) -> None:
    """POST leaked asks for an emergency rotation naming the leaked key (default: the current one)."""
    response = api.call("POST", "/v1/credentials/icr-pull/leaked", token=api.tokens["rotate"], json=body)
    assert response.status_code == 202 and response.json()["joined"] is False
    assert api.control.requests == [
        {
            "name": "icr-pull",
            "reason": "key reported leaked (by alice)",
            "emergency": True,
            "leaked_key_id": leaked_key_id,
        }
    ]


def test_same_idempotency_key_answers_the_same_rotation(api: Api) -> None:
    """A repeated Idempotency-Key returns the first rotation (joined) without asking the daemon again."""
    first = api.rotate(headers={"Idempotency-Key": "deploy-42"})
    api.control.finish("icr-pull")  # a new request would now start a new rotation
    again = api.rotate(headers={"Idempotency-Key": "deploy-42"})
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["rotation_id"] == first.json()["rotation_id"]
    assert (first.json()["joined"], again.json()["joined"]) == (False, True)
    assert again.headers["Location"] == first.headers["Location"]
    assert len(api.control.requests) == 1


def test_idempotency_keys_are_per_key_principal_and_credential(api: Api) -> None:
    """A different key, another principal's same key, or the same key on another credential each ask the daemon."""
    first = api.rotate(headers={"Idempotency-Key": "k1"}).json()["rotation_id"]
    api.control.finish("icr-pull")
    other_key = api.rotate(headers={"Idempotency-Key": "k2"}).json()
    api.control.finish("icr-pull")
    other_principal = api.rotate(role="other", headers={"Idempotency-Key": "k1"}).json()
    other_credential = api.rotate("hub-pull", headers={"Idempotency-Key": "k1"}).json()
    ids = {first, other_key["rotation_id"], other_principal["rotation_id"], other_credential["rotation_id"]}
    assert len(ids) == 4
    assert [r["name"] for r in api.control.requests] == ["icr-pull", "icr-pull", "icr-pull", "hub-pull"]


def test_idempotency_key_reused_with_another_body_is_422(api: Api) -> None:
    """Reusing a key for a different request is refused rather than silently answering the first."""
    assert api.rotate(headers={"Idempotency-Key": "k1"}, json={"reason": "a"}).status_code == 202
    reused = api.rotate(headers={"Idempotency-Key": "k1"}, json={"reason": "b"})
    leak = api.call(
        "POST",
        "/v1/credentials/icr-pull/leaked",
        token=api.tokens["rotate"],
        json={"reason": "a"},
        headers={"Idempotency-Key": "k1"},
    )
    assert (reused.status_code, leak.status_code) == (422, 422)
    assert "Idempotency-Key" in reused.json()["error"]
    assert len(api.control.requests) == 1


def test_idempotency_keys_expire_after_the_ttl(file_tokens: FileTokens) -> None:
    """After server.idempotency_ttl the same key starts a new request."""
    clock = FakeClock()
    settings = server_settings(idempotency_ttl=dt.timedelta(hours=1))
    with running(FakeControl(), file_tokens.authenticator(), settings, clock=clock, tokens=file_tokens.tokens) as api:
        first = api.rotate(headers={"Idempotency-Key": "k"}).json()["rotation_id"]
        api.control.finish("icr-pull")
        clock.now += 3599
        assert api.rotate(headers={"Idempotency-Key": "k"}).json()["rotation_id"] == first
        clock.now += 2
        assert api.rotate(headers={"Idempotency-Key": "k"}).json()["rotation_id"] != first
        assert len(api.control.requests) == 2


def parallel(count: int, send: Callable[[], httpx.Response]) -> list[httpx.Response]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(lambda _: send(), range(count)))


def test_concurrent_requests_reach_the_daemon_together_and_join(api: Api) -> None:
    """Concurrent rotate requests are not serialized by the API: the daemon sees all of them at once and
    the joined flag it returns is passed through (one started, the others joined)."""
    api.control.barrier = threading.Barrier(4, timeout=5)
    responses = parallel(4, api.rotate)
    assert [r.status_code for r in responses] == [202] * 4
    assert len({r.json()["rotation_id"] for r in responses}) == 1
    assert sorted(r.json()["joined"] for r in responses) == [False, True, True, True]
    assert len(api.control.requests) == 4


def test_concurrent_requests_with_one_idempotency_key_ask_once(api: Api) -> None:
    """Racing requests with the same Idempotency-Key reach the daemon once and all answer that rotation."""
    responses = parallel(6, lambda: api.rotate(headers={"Idempotency-Key": "same"}))
    assert [r.status_code for r in responses] == [202] * 6
    assert len({r.json()["rotation_id"] for r in responses}) == 1
    assert len(api.control.requests) == 1


@pytest.mark.parametrize("holder", [pytest.param("replica-b", id="known-leader"), pytest.param(None, id="no-leader")])
def test_follower_answers_503_naming_the_leader(api: Api, holder: str | None) -> None:
    """A replica that does not lead refuses rotations with 503, the leader's identity and Retry-After."""
    api.control.leading = (False, holder)
    response = api.rotate()
    assert response.status_code == 503
    assert response.json() == {"error": "not the leader", "leader": holder}
    assert int(response.headers["Retry-After"]) >= 1
    assert api.control.requests == []
    assert api.call("GET", "/v1/credentials", token=api.tokens["read"]).status_code == 200  # reads still served


def test_unknown_credential_is_404(api: Api) -> None:
    """Rotating a credential the daemon does not know answers 404 in JSON (also for names that cannot exist)."""
    for name in ("no-such-credential", "Bad_Name"):
        response = api.rotate(name)
        assert response.status_code == 404 and "no credential" in response.json()["error"]


def test_rate_limit_per_principal_answers_429_with_retry_after(file_tokens: FileTokens) -> None:
    """Past the burst a principal gets 429 with Retry-After; another principal is unaffected; tokens refill."""
    clock = FakeClock()
    settings = server_settings(rate_per_minute=6, rate_burst=2)
    with running(FakeControl(), file_tokens.authenticator(), settings, clock=clock, tokens=file_tokens.tokens) as api:
        assert [api.rotate().status_code for _ in range(3)] == [202, 202, 429]
        limited = api.rotate()
        assert limited.status_code == 429 and limited.json()["error"] == "too many rotation requests"
        assert int(limited.headers["Retry-After"]) == 10  # one request per 10 s
        assert api.rotate(role="other").status_code == 202
        assert api.call("GET", "/v1/credentials", token=file_tokens.tokens["rotate"]).status_code == 200
        clock.now += 10
        assert api.rotate().status_code == 202
        assert len(api.control.requests) == 4


# -- malformed requests ---------------------------------------------------------------------------------


def chunked(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), 4096):
        yield data[i : i + 4096]


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(lambda data: data, id="content-length"),
        pytest.param(chunked, id="chunked"),
    ],
)
def test_body_over_the_limit_is_413(api: Api, content: Callable[[bytes], Any]) -> None:
    """A body over 16 KiB is refused with 413 JSON, announced or streamed."""
    data = json.dumps({"reason": "x" * MAX_BODY}).encode()
    response = api.rotate(content=content(data), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert "larger than" in response.json()["error"]
    assert api.control.requests == []


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(b"{not json", "the body is not valid JSON", id="bad-json"),
        pytest.param(b"\xff\xfe{}", "the body is not valid JSON", id="not-utf8"),
        pytest.param(b'["reason"]', "the body must be a JSON object", id="array"),
        pytest.param(b"null", "the body must be a JSON object", id="null"),
        pytest.param(b"[" * 8000 + b"]" * 8000, "the body is not valid JSON", id="deep-nesting"),
        pytest.param(b'{"reason": "x", "force": true, "dry_run": 1}', "unknown fields: dry_run, force", id="unknown"),
        pytest.param(b'{"reason": 7}', "reason must be a string", id="reason-not-string"),
        pytest.param(json.dumps({"reason": "é" * 1025}).encode(), "at most 1024 characters", id="reason-too-long"),
    ],
)
def test_bad_body_is_400_naming_the_problem(api: Api, content: bytes, expected: str) -> None:
    """Malformed, non-object, oversized-field or unknown-field bodies answer 400 with what is wrong."""
    response = api.rotate(content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert expected in response.json()["error"]
    assert api.control.requests == []


def test_unknown_fields_are_listed_in_detail(api: Api) -> None:
    """The 400 for unknown fields lists them and the allowed ones (leaked allows key_id and reason)."""
    response = api.call("POST", "/v1/credentials/icr-pull/leaked", token=api.tokens["rotate"], json={"key": "ApiKey-1"})
    assert response.status_code == 400
    assert response.json()["detail"] == {"unknown_fields": ["key"], "allowed": ["key_id", "reason"]}
    empty = api.call("POST", "/v1/credentials/icr-pull/leaked", token=api.tokens["rotate"], json={"key_id": ""})
    assert empty.status_code == 400 and "key_id must be a non-empty string" in empty.json()["error"]


@pytest.mark.parametrize(
    "key",
    [pytest.param("has space", id="space"), pytest.param("k" * 256, id="too-long"), pytest.param("", id="empty")],
)
def test_bad_idempotency_key_is_400(api: Api, key: str) -> None:
    """An Idempotency-Key that is not 1-255 visible ASCII characters is refused."""
    response = api.rotate(headers={"Idempotency-Key": key})
    assert response.status_code == 400 and "Idempotency-Key" in response.json()["error"]


@pytest.mark.parametrize(
    "content_type",
    [pytest.param("text/plain", id="text"), pytest.param("application/x-www-form-urlencoded", id="form")],
)
def test_non_json_body_is_415(api: Api, content_type: str) -> None:
    """A body that is not application/json answers 415; an empty body needs no content type."""
    response = api.rotate(content=b"reason=because", headers={"Content-Type": content_type})
    assert response.status_code == 415 and response.json()["detail"] == {"content_type": content_type}
    assert api.rotate(content=b"").status_code == 202


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        pytest.param("GET", "/v1/credentials/icr-pull/rotate", "POST", id="get-rotate"),
        pytest.param("DELETE", "/v1/credentials", "GET", id="delete-credentials"),
        pytest.param("PUT", "/healthz", "GET,HEAD", id="put-healthz"),
        pytest.param("POST", "/v1/rotations/rot-1", "GET", id="post-rotation"),
    ],
)
def test_wrong_method_is_405_with_allow(api: Api, method: str, path: str, allowed: str) -> None:
    """A known path with the wrong method answers 405 JSON and an Allow header."""
    response = api.call(method, path, token=api.tokens["rotate"])
    assert response.status_code == 405
    assert response.headers["Allow"] == allowed
    assert response.json()["error"] == "method not allowed"


@pytest.mark.parametrize(
    "path",
    [pytest.param("/v1/nothing", id="unknown-path"), pytest.param("/v1/rotations/rot-404", id="unknown-rotation")],
)
def test_unknown_things_are_404_json(api: Api, path: str) -> None:
    """Unknown endpoints and rotations answer 404 with a JSON error."""
    response = api.call("GET", path, token=api.tokens["read"])
    assert response.status_code == 404 and response.json()["error"]


def test_daemon_bug_answers_500_without_a_traceback(api: Api) -> None:
    """An unexpected exception in the daemon answers a generic 500 JSON: no traceback, no exception text."""
    api.control.fail_credentials = True
    response = api.call("GET", "/v1/credentials", token=api.tokens["read"])
    assert response.status_code == 500
    assert response.json() == {"error": "internal error"}
    assert "Traceback" not in response.text and "/secret/path" not in response.text


# -- health, readiness, metrics, document ----------------------------------------------------------------


def test_healthz_follows_alive(api: Api) -> None:
    """/healthz is 200 {"status": "ok"} while the daemon is alive and 503 when it is not; no token needed."""
    assert api.call("GET", "/healthz").json() == {"status": "ok"}
    api.control.is_alive = False
    response = api.call("GET", "/healthz")
    assert response.status_code == 503 and response.json()["error"] == "not alive"


def test_readyz_lists_failing_conditions(api: Api) -> None:
    """/readyz is 200 when every condition holds, else 503 naming the failing ones."""
    ready = api.call("GET", "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    api.control.conditions["state_store"] = False
    response = api.call("GET", "/readyz")
    assert response.status_code == 503
    assert response.json()["detail"]["failing"] == ["state_store"]
    assert response.json()["detail"]["conditions"]["config_loaded"] is True


def test_metrics_are_public_by_default(file_tokens: FileTokens) -> None:
    """/metrics serves the registry in Prometheus text format without a token."""
    registry = CollectorRegistry()
    Counter("rotator_test_events", "Test.", registry=registry).inc(3)
    with running(FakeControl(), file_tokens.authenticator(), registry=registry) as api:
        response = api.call("GET", "/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert "rotator_test_events_total 3.0" in response.text


def test_private_metrics_need_a_read_token(file_tokens: FileTokens) -> None:
    """With metrics_public false, /metrics is 401 without a token and 200 with a read token."""
    settings = server_settings(metrics_public=False)
    with running(FakeControl(), file_tokens.authenticator(), settings, tokens=file_tokens.tokens) as api:
        assert api.call("GET", "/metrics").status_code == 401
        assert api.call("GET", "/metrics", token=file_tokens.tokens["read"]).status_code == 200
        document = api.call("GET", "/openapi.json").json()
        assert document["paths"]["/metrics"]["get"]["security"] == [{"bearer": []}]


def test_openapi_document_describes_every_route(api: Api) -> None:
    """/openapi.json is an OpenAPI 3.0 document naming every endpoint the server routes."""
    document = api.call("GET", "/openapi.json").json()
    assert document["openapi"].startswith("3.0")
    assert set(document["paths"]) == {
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/v1/credentials",
        "/v1/credentials/{name}/rotate",
        "/v1/credentials/{name}/leaked",
        "/v1/rotations/{id}",
    }


# -- token file -----------------------------------------------------------------------------------------


def test_token_file_is_reread_when_replaced(api: Api, file_tokens: FileTokens) -> None:
    """Replacing the token file (new inode) revokes removed tokens and admits new ones without a restart."""
    assert api.rotate().status_code == 202
    fresh = new_token()
    write_token_file(file_tokens.path, {fresh: ("alice", "rotate")})
    assert api.rotate().status_code == 401
    assert api.call("POST", "/v1/credentials/icr-pull/rotate", token=fresh).status_code == 202


def test_token_file_is_reread_when_rewritten_in_place(api: Api, file_tokens: FileTokens) -> None:
    """An in-place rewrite of the same size and inode (only the mtime differs) is noticed too."""
    path = file_tokens.path
    before = path.stat()
    old, fresh = file_tokens.tokens["rotate"], new_token()
    assert len(fresh) == len(old)
    path.write_text(path.read_text().replace(old, fresh))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))  # even within one clock tick
    after = path.stat()
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    assert api.rotate().status_code == 401
    assert api.call("POST", "/v1/credentials/icr-pull/rotate", token=fresh).status_code == 202


def test_token_file_gone_refuses_everyone_until_restored(api: Api, file_tokens: FileTokens) -> None:
    """A deleted token file accepts no token (rather than keep possibly revoked ones); restoring it works."""
    text = file_tokens.path.read_text()
    file_tokens.path.unlink()
    assert api.rotate().status_code == 401
    file_tokens.path.write_text(text)
    assert api.rotate().status_code == 202


def test_token_file_bad_lines(tmp_path: Path) -> None:
    """A bad line fails start-up naming server.auth.file and its number, never its token; on reload the same
    file is refused the same way (one parser): no token is accepted until it is fixed, then all are again."""
    token, short = new_token(), "tooshort"
    path = tmp_path / "tokens"
    path.write_text(f"{token} alice rotate\n{short} bob read\n{token}x carol admin\n")
    with pytest.raises(ConfigError) as info:
        TokenFileAuthenticator(path)
    message = str(info.value)
    assert message.startswith("server.auth.file: ")
    assert "line 2" in message and "line 3" in message and "admin" in message
    assert short not in message and token not in message
    path.write_text(f"{token} alice rotate\n")
    auth = TokenFileAuthenticator(path)
    tail = LogTail()
    write_token_file(path, {token: ("alice", "rotate"), "x" * 20: ("mallory", "root")})
    with running(FakeControl(), auth, tokens={"rotate": token}) as api:
        assert api.rotate().status_code == 401  # refused as a whole, as at start-up
        write_token_file(path, {token: ("alice", "rotate")})
        assert api.rotate().status_code == 202
    refused = [e for e in tail.events() if e["event"] == "api.tokens.refused"]
    assert len(refused) == 1 and refused[0]["field"] == "server.auth.file"
    assert refused[0]["error"].startswith("server.auth.file: ") and "line 3" in refused[0]["error"]
    assert "'root' is not one of read, rotate" in refused[0]["error"]
    assert token not in tail.text() and "x" * 20 not in tail.text()


# -- logs -------------------------------------------------------------------------------------------------


class LogTail:
    """The structured log lines this test adds to the suite's log file."""

    def __init__(self) -> None:
        self.offset = LOG_FILE.stat().st_size if LOG_FILE.exists() else 0

    def text(self) -> str:
        with LOG_FILE.open("rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text().splitlines() if line.startswith("{")]


def test_one_log_line_per_request_without_tokens(api: Api) -> None:
    """Each request logs one http.request line (method, route template, status, principal, duration) and no
    token, valid or not, appears in any log line."""
    tail = LogTail()
    bogus = new_token()
    api.rotate(json={"reason": "audit"})
    api.call("GET", "/v1/credentials", token=bogus)
    api.call("GET", "/v1/credentials", token=api.tokens["read"])
    api.http.get("/v1/credentials", headers={"Authorization": f"Basic {bogus}"})
    events = [e for e in tail.events() if e["event"] == "http.request"]
    assert [(e["method"], e["path"], e["status"], e["principal"]) for e in events] == [
        ("POST", "/v1/credentials/{name}/rotate", 202, "alice"),
        ("GET", "/v1/credentials", 401, None),
        ("GET", "/v1/credentials", 200, "bob"),
        ("GET", "/v1/credentials", 401, None),
    ]
    assert all(isinstance(e["duration_ms"], float) for e in events)
    text = tail.text()
    assert all(t not in text for t in [bogus, *api.tokens.values()])
    assert "Authorization" not in text and "authorization" not in text


def test_unparsable_request_is_400_and_logged_without_its_header(api: Api) -> None:
    """A request aiohttp cannot parse (a NUL in the Authorization header) answers 400 and logs one line
    naming the error type only, never the raw header line that carries the token."""
    tail = LogTail()
    token = api.tokens["rotate"]
    host, port = api.server.address or ("", 0)
    raw = f"GET /v1/credentials HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\x00\r\n\r\n".encode()
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(raw)
        answer = sock.recv(4096)
    assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request")
    assert [e["error"] for e in tail.events() if e["event"] == "http.protocol_error"] == ["BadHttpMessage"]
    assert token not in tail.text()


# -- lifecycle --------------------------------------------------------------------------------------------


def test_stop_is_bounded_with_a_request_in_flight(file_tokens: FileTokens) -> None:
    """stop() returns within its budget while a request is stuck in the daemon, and the port is closed."""
    control = FakeControl()
    control.gate = threading.Event()
    server = ApiServer(
        control, CollectorRegistry(), server_settings(), authenticator=file_tokens.authenticator(), shutdown_timeout=0.3
    )
    host, port = server.start()
    headers = {"Authorization": f"Bearer {file_tokens.tokens['read']}"}
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(httpx.get, f"{server.url}/v1/credentials", headers=headers, timeout=10)
        assert control.entered.wait(5)
        started = time.monotonic()
        server.stop(timeout=3)
        assert time.monotonic() - started < 3
        control.gate.set()
        try:
            status: int | None = pending.result(timeout=10).status_code
        except httpx.HTTPError:
            status = None  # the connection was closed under it
        assert status != 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{host}:{port}/healthz", timeout=2)


class StuckAuthenticator:
    """An Authenticator whose every answer hangs until released (a token authority that stopped answering)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def authenticate(self, token: Any) -> None:
        self.entered.release()
        self.release.wait(10)
        return None

    def authorize(self, principal: Any, access: Any) -> bool:
        return False


def test_health_answers_while_the_token_authority_hangs() -> None:
    """Requests stuck in authentication (every auth worker busy) do not starve /healthz and /readyz."""
    auth = StuckAuthenticator()
    with running(FakeControl(), auth) as api, concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
        try:
            stuck = [pool.submit(api.call, "GET", "/v1/credentials", token=new_token()) for _ in range(10)]
            assert all(auth.entered.acquire(timeout=5) for _ in range(8))
            with httpx.Client(base_url=api.server.url, timeout=2) as fresh:
                assert fresh.get("/healthz").status_code == 200
                assert fresh.get("/readyz").status_code == 200
        finally:
            auth.release.set()
        assert [f.result(timeout=10).status_code for f in stuck] == [401] * 10


def test_start_fails_clearly_when_the_port_is_taken(file_tokens: FileTokens) -> None:
    """A listen address in use makes start() raise a RotatorError naming it, without hanging."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        listen = f"127.0.0.1:{sock.getsockname()[1]}"
        server = ApiServer(
            FakeControl(),
            CollectorRegistry(),
            server_settings(listen=listen),
            authenticator=file_tokens.authenticator(),
        )
        with pytest.raises(RotatorError, match=listen):
            server.start()
        server.stop()


def test_start_server_builds_the_authenticator_from_settings(file_tokens: FileTokens, tmp_path: Path) -> None:
    """start_server(control, registry, settings) — the daemon's entry point — serves with the configured auth."""
    auth = ApiAuthSettings(mode="token-file", file=file_tokens.path)
    settings = Settings(source=tmp_path / "rotator.yaml", credentials=(), server=server_settings(auth=auth))
    server = start_server(FakeControl(), CollectorRegistry(), settings)
    try:
        headers = {"Authorization": f"Bearer {file_tokens.tokens['read']}"}
        response = httpx.get(f"{server.url}/v1/credentials", headers=headers, timeout=5)
        assert response.status_code == 200
    finally:
        server.stop()
