"""The registry pull verifier: pure parsing tables, then checks against Docker's real registry behind nginx.

The real-stack tests run ``docker-registry`` with token auth whose realm is the sandbox registry emulator's
``/oauth/token``: that endpoint checks the IBM API key live in the IAM emulator and signs tokens the real
registry trusts, so IAM keys open (or fail to open) a real registry.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from realstack import (
    NGINX_BIN,
    REGISTRY_BIN,
    NginxProxy,
    RegistryProcess,
    TokenAuth,
    free_port,
    push_test_image,
    require,
)

from rotator import wwwauth
from rotator.adapters.registry import RegistryVerifier
from rotator.adapters.registry_wire import (
    Quota,
    Verdict,
    backoff_delay,
    classify_manifest,
    classify_ping,
    classify_token,
    error_summary,
    parse_ratelimit,
    parse_retry_after,
    parse_token_reply,
)
from rotator.imageref import ImageRef, ImageRefError, parse_image, registry_for_server
from rotator.model import RegistryAuth, SecretStr
from rotator.sandbox.control import SandboxProcess

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
DIGEST = "sha256:" + "ab" * 32

# -- pure: WWW-Authenticate -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io"',
            wwwauth.BearerChallenge(realm="https://auth.docker.io/token", service="registry.docker.io"),
            id="quoted",
        ),
        pytest.param(
            "Bearer realm=https://cp.icr.io/oauth/token, service=registry, scope=repository:cp/x:pull",
            wwwauth.BearerChallenge(
                realm="https://cp.icr.io/oauth/token", service="registry", scope="repository:cp/x:pull"
            ),
            id="unquoted-cp.icr.io",
        ),
        pytest.param(
            "Bearer realm=https://r.example/t, scope=repository:a/b:pull,push, service=reg",
            wwwauth.BearerChallenge(realm="https://r.example/t", service="reg", scope="repository:a/b:pull,push"),
            id="unquoted-value-with-comma",
        ),
        pytest.param(
            'Bearer realm="https://gcr.example/token"',
            wwwauth.BearerChallenge(realm="https://gcr.example/token"),
            id="missing-service",
        ),
        pytest.param(
            'bEaReR REALM="https://r.example/t" , Service="s", foo=bar, x="y\\"z"',
            wwwauth.BearerChallenge(realm="https://r.example/t", service="s"),
            id="case-spaces-unknown-params-escape",
        ),
        pytest.param(
            'Basic realm="Registry Realm", Bearer realm="https://r.example/t",service="s"',
            wwwauth.BearerChallenge(realm="https://r.example/t", service="s"),
            id="bearer-preferred-over-basic",
        ),
        pytest.param('Basic realm="Registry"', wwwauth.BasicChallenge(realm="Registry"), id="basic"),
        pytest.param("basic", wwwauth.BasicChallenge(), id="basic-bare"),
        pytest.param("Negotiate YIIabc==, Basic realm=x", wwwauth.BasicChallenge(realm="x"), id="token68-then-basic"),
    ],
)
def test_challenge_parses(header: str, expected: wwwauth.AuthChallenge) -> None:
    """Quoted, unquoted, case-mixed and multi-challenge headers yield the challenge a client answers."""
    assert wwwauth.parse(header) == expected


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        pytest.param(None, "without a WWW-Authenticate", id="absent"),
        pytest.param("   ", "empty", id="blank"),
        pytest.param(" , ,", "no challenge", id="only-commas"),
        pytest.param('Bearer realm="https://r.example/t', "unterminated", id="unterminated-quote"),
        pytest.param('realm="https://r.example/t"', "before any auth scheme", id="param-without-scheme"),
        pytest.param('Bearer service="registry"', "without a realm", id="bearer-no-realm"),
        pytest.param("Bearer realm=/relative/token", "absolute", id="realm-not-url"),
        pytest.param("garbage", "no Bearer or Basic", id="garbage-word"),
        pytest.param('=x, "', "unexpected character", id="stray-characters"),
    ],
)
def test_challenge_malformed(header: str | None, reason: str) -> None:
    """A challenge that cannot be answered raises ChallengeError naming why."""
    with pytest.raises(wwwauth.ChallengeError, match=reason):
        wwwauth.parse(header)


def test_challenge_reason_never_echoes_the_whole_header() -> None:
    """Error messages quote at most a short piece of server-controlled text."""
    header = 'x="' + "s" * 500
    with pytest.raises(wwwauth.ChallengeError) as caught:
        wwwauth.parse("  " + header[3:] + "=" + "y" * 200 + ', realm="')
    assert len(str(caught.value)) < 80


# -- pure: Retry-After, rate-limit headers, backoff -------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("5", 5.0, id="seconds"),
        pytest.param(" 0 ", 0.0, id="zero-spaces"),
        pytest.param("1.5", 1.5, id="fractional"),
        pytest.param("Sun, 01 Mar 2026 12:00:30 GMT", 30.0, id="http-date-ahead"),
        pytest.param("Sunday, 01-Mar-26 12:00:10 GMT", 10.0, id="rfc850-date"),
        pytest.param("Sun, 01 Mar 2026 11:00:00 GMT", 0.0, id="http-date-past"),
        pytest.param("-3", None, id="negative"),
        pytest.param("soon", None, id="garbage"),
        pytest.param("", None, id="empty"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_retry_after(value: str | None, expected: float | None) -> None:
    """Retry-After reads as delta-seconds or an HTTP-date relative to now; garbage is ignored."""
    assert parse_retry_after(value, now=NOW) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(
            {
                "RateLimit-Limit": "100;w=21600",
                "RateLimit-Remaining": "76;w=21600",
                "Docker-RateLimit-Source": "1.2.3.4",
            },
            Quota(limit=100, remaining=76, window_s=21600, source="1.2.3.4"),
            id="docker-hub",
        ),
        pytest.param(
            {"x-ratelimit-limit": "100;w=3600", "x-ratelimit-remaining": "0;w=3600"},
            Quota(limit=100, remaining=0, window_s=3600),
            id="x-variant",
        ),
        pytest.param({"ratelimit-remaining": "7"}, Quota(remaining=7), id="remaining-only-no-window"),
        pytest.param({"ratelimit-limit": "lots"}, None, id="garbage"),
        pytest.param({"content-type": "application/json"}, None, id="absent"),
    ],
)
def test_ratelimit_headers(headers: dict[str, str], expected: Quota | None) -> None:
    """Docker Hub's ratelimit headers (and the x- variants) become a Quota; anything else is None."""
    assert parse_ratelimit(headers) == expected


@pytest.mark.parametrize(
    ("attempt", "low", "high"),
    [
        pytest.param(1, 0.25, 0.5, id="first"),
        pytest.param(3, 1.0, 2.0, id="third"),
        pytest.param(10, 4.0, 8.0, id="capped"),
    ],
)
def test_backoff_is_jittered_exponential_and_capped(attempt: int, low: float, high: float) -> None:
    """The delay without Retry-After grows by doubling, is capped, and is never zero."""
    assert backoff_delay(attempt, unit=0.0) == low
    assert low <= backoff_delay(attempt, unit=0.999) < high


# -- pure: image references and server keys ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "us.icr.io/team/app:latest", ImageRef(registry="us.icr.io", repository="team/app", tag="latest"), id="icr"
        ),
        pytest.param(
            f"127.0.0.1:5000/team/app@{DIGEST}",
            ImageRef(registry="127.0.0.1:5000", repository="team/app", digest=DIGEST),
            id="port-and-digest",
        ),
        pytest.param(
            f"localhost:5000/a/b/c:v1@{DIGEST}",
            ImageRef(registry="localhost:5000", repository="a/b/c", tag="v1", digest=DIGEST),
            id="tag-and-digest",
        ),
        pytest.param("nginx", ImageRef(registry="registry-1.docker.io", repository="library/nginx"), id="hub-short"),
        pytest.param(
            "team/app:1.0", ImageRef(registry="registry-1.docker.io", repository="team/app", tag="1.0"), id="hub-ns"
        ),
        pytest.param(
            "docker.io/nginx:1",
            ImageRef(registry="registry-1.docker.io", repository="library/nginx", tag="1"),
            id="hub-host",
        ),
        pytest.param(
            "index.docker.io/team/app",
            ImageRef(registry="registry-1.docker.io", repository="team/app"),
            id="hub-index-alias",
        ),
        pytest.param("localhost/app", ImageRef(registry="localhost", repository="app"), id="localhost"),
        pytest.param("US.ICR.IO/team/app", ImageRef(registry="us.icr.io", repository="team/app"), id="host-case"),
    ],
)
def test_image_reference(text: str, expected: ImageRef) -> None:
    """Image references split into API host, repository and tag/digest the way Docker reads them."""
    assert parse_image(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("Team/App", "lower-case", id="upper-case-repo"),
        pytest.param("us.icr.io/team/app:bad tag", "tag", id="bad-tag"),
        pytest.param("a/b@sha256:abc", "digest", id="short-digest"),
        pytest.param("https://us.icr.io/team/app", "scheme", id="url"),
        pytest.param("us.icr.io/", "repository", id="no-repository"),
    ],
)
def test_image_reference_invalid(text: str, reason: str) -> None:
    """A malformed image reference is refused with the problem named."""
    with pytest.raises(ImageRefError, match=reason):
        parse_image(text)


def test_image_reference_prefers_digest() -> None:
    """A digest-pinned reference is checked by digest, a bare name by ``latest``."""
    assert parse_image(f"r.example/a:v1@{DIGEST}").reference == DIGEST
    assert parse_image("r.example/a").reference == "latest"


@pytest.mark.parametrize(
    ("server", "host"),
    [
        pytest.param("https://index.docker.io/v1/", "registry-1.docker.io", id="hub-key"),
        pytest.param("index.docker.io", "registry-1.docker.io", id="hub-index"),
        pytest.param("docker.io", "registry-1.docker.io", id="hub-short"),
        pytest.param("registry-1.docker.io", "registry-1.docker.io", id="hub-api"),
        pytest.param("us.icr.io", "us.icr.io", id="icr"),
        pytest.param("http://127.0.0.1:5000/", "127.0.0.1:5000", id="loopback-scheme"),
        pytest.param("127.0.0.1:5000", "127.0.0.1:5000", id="loopback"),
    ],
)
def test_server_key_maps_to_api_host(server: str, host: str) -> None:
    """dockerconfigjson keys fold into the registry API host (Docker Hub's aliases into registry-1)."""
    assert registry_for_server(server) == host


# -- pure: classification, token replies, error bodies ----------------------------------------------


@pytest.mark.parametrize(
    ("classify", "status", "verdict"),
    [
        pytest.param(classify_ping, 200, Verdict.ANONYMOUS, id="ping-200"),
        pytest.param(classify_ping, 401, Verdict.CHALLENGE, id="ping-401"),
        pytest.param(classify_ping, 404, Verdict.INCONCLUSIVE, id="ping-404"),
        pytest.param(classify_ping, 503, Verdict.RETRY, id="ping-503"),
        pytest.param(classify_token, 200, Verdict.OK, id="token-200"),
        pytest.param(classify_token, 400, Verdict.REJECTED, id="token-400-icr"),
        pytest.param(classify_token, 401, Verdict.REJECTED, id="token-401"),
        pytest.param(classify_token, 403, Verdict.REJECTED, id="token-403"),
        pytest.param(classify_token, 404, Verdict.INCONCLUSIVE, id="token-404"),
        pytest.param(classify_token, 429, Verdict.RETRY, id="token-429"),
        pytest.param(classify_manifest, 200, Verdict.OK, id="head-200"),
        pytest.param(classify_manifest, 401, Verdict.REJECTED, id="head-401"),
        pytest.param(classify_manifest, 403, Verdict.REJECTED, id="head-403"),
        pytest.param(classify_manifest, 404, Verdict.MISSING, id="head-404"),
        pytest.param(classify_manifest, 429, Verdict.RETRY, id="head-429"),
        pytest.param(classify_manifest, 502, Verdict.RETRY, id="head-502"),
        pytest.param(classify_manifest, 501, Verdict.INCONCLUSIVE, id="head-501"),
        pytest.param(classify_manifest, 400, Verdict.INCONCLUSIVE, id="head-400"),
    ],
)
def test_classification(classify: Any, status: int, verdict: Verdict) -> None:
    """Each step maps a status to one verdict (the table in registry_wire's docstring)."""
    assert classify(status) is verdict


@pytest.mark.parametrize(
    ("body", "token", "expires_in"),
    [
        pytest.param(b'{"token":"t1","expires_in":300}', "t1", 300, id="token"),
        pytest.param(b'{"access_token":"t2"}', "t2", 60, id="access-token-default-60"),
        pytest.param(b'{"token":"t3","expires_in":10}', "t3", 60, id="minimum-60"),
        pytest.param(b'{"token":"t4","expires_in":"120"}', "t4", 120, id="string-seconds"),
        pytest.param(b'{"token":"t5","expires_in":true}', "t5", 60, id="bool-ignored"),
    ],
)
def test_token_reply(body: bytes, token: str, expires_in: int) -> None:
    """``token`` or ``access_token`` is read; the lifetime defaults to 60 s and is never below 60 s."""
    reply = parse_token_reply(body)
    assert (reply.token, reply.expires_in) == (token, expires_in)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<html>", id="not-json"),
        pytest.param(b"[]", id="not-object"),
        pytest.param(b'{"expires_in":60}', id="no-token"),
        pytest.param(b'{"token":""}', id="empty-token"),
    ],
)
def test_token_reply_unusable(body: bytes) -> None:
    """A 200 without a usable token is an error (the verifier reports it inconclusive)."""
    with pytest.raises(ValueError, match="token"):
        parse_token_reply(body)


@pytest.mark.parametrize(
    ("body", "summary"),
    [
        pytest.param(
            b'{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}',
            "DENIED: requested access to the resource is denied",
            id="registry",
        ),
        pytest.param(
            b'{"errorCode":"BXNIM0415E","errorMessage":"not found","context":{}}', "BXNIM0415E: not found", id="iam"
        ),
        pytest.param(b'{"details":"incorrect username or password"}', "incorrect username or password", id="hub"),
        pytest.param(b'{"error":"invalid_grant","error_description":"bad"}', "invalid_grant: bad", id="oauth"),
        pytest.param(b'{"password":"hunter2"}', "", id="unknown-fields-ignored"),
        pytest.param(b"oops", "", id="not-json"),
    ],
)
def test_error_summary(body: bytes, summary: str) -> None:
    """Only known error fields reach a detail; other body content never does."""
    assert error_summary(body) == summary


# -- the real stack -----------------------------------------------------------------------------------

IMAGES = [("team/app", "latest", "oci"), ("team/worker", "1.0", "docker"), ("team/tool", "2.0", "oci")]
OTHER_IMAGES = [("other/app", "latest", "oci"), ("library/hello", "latest", "docker")]
TOKEN_PATH = "/oauth/token"


@dataclass
class Stack:
    sandbox: SandboxProcess
    registry: RegistryProcess
    nginx: NginxProxy
    workdir: Path

    @property
    def host(self) -> str:
        return self.nginx.host

    def images(self, k: int = len(IMAGES)) -> list[str]:
        return [f"{self.host}/{repo}:{tag}" for repo, tag, _ in IMAGES[:k]]

    def auth(self, key: str, server: str | None = None) -> RegistryAuth:
        return RegistryAuth(server=server or self.host, username="iamapikey", password=SecretStr(key))

    @property
    def service_key(self) -> str:
        """A seeded key of the service ID that has pull rights on ``team/*``."""
        return str(self.sandbox.endpoints["foreign_apikeys"]["ci-pipeline"])

    def token_requests(self, since: int) -> int:
        return sum(1 for r in self.sandbox.requests("registry", since) if r["path"] == TOKEN_PATH)


def _token_auth(endpoints: dict[str, Any]) -> TokenAuth:
    return TokenAuth(
        realm=endpoints["registry_realm"],
        rootcertbundle=Path(endpoints["registry_token_cert"]),
        service=endpoints["registry_service"],
        issuer=endpoints["registry_token_issuer"],
    )


@pytest.fixture(scope="module")
def stack(shared_sandbox: SandboxProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Real registry (token auth via the sandbox emulator) with test images, behind nginx without limits."""
    require(REGISTRY_BIN, NGINX_BIN)
    endpoints = shared_sandbox.endpoints
    if "registry_realm" not in endpoints:
        pytest.skip("the sandbox has no registry emulator")
    workdir = tmp_path_factory.mktemp("registry-stack")
    with RegistryProcess.start(workdir / "registry", token=_token_auth(endpoints)) as registry:
        admin = ("iamapikey", str(endpoints["admin_apikey"]))  # granted push on every repository
        for repo, tag, flavour in IMAGES + OTHER_IMAGES:
            push_test_image(registry.url, repo, tag, admin, flavour=flavour)
        with NginxProxy.start(workdir / "nginx", registry.url) as nginx:
            yield Stack(sandbox=shared_sandbox, registry=registry, nginx=nginx, workdir=workdir)


class Sleeps:
    """A fake sleep that records each wait and moves a fake clock (``now``) by it; ``then`` runs after each
    wait, in place of the time passing (e.g. a rate limit lifted). Pass ``clock=sleeps.now`` to the verifier
    so its budget counts these waits and nothing depends on how fast the machine is."""

    def __init__(self, *, limit_s: float = 5.0, then: Callable[[], None] | None = None) -> None:
        self.limit_s = limit_s
        self.then = then
        self.calls: list[float] = []
        self.t = 0.0

    def __call__(self, seconds: float) -> None:
        assert seconds <= self.limit_s, f"asked to sleep {seconds} s"
        self.calls.append(seconds)
        self.t += seconds
        if self.then is not None:
            self.then()

    def now(self) -> float:
        return self.t


def _verifier(**kwargs: Any) -> RegistryVerifier:
    kwargs.setdefault("budget_s", 10.0)
    kwargs.setdefault("sleep", Sleeps())
    return RegistryVerifier(**kwargs)


def _manifest_or_blob_gets(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if e["method"] == "GET" and ("/manifests/" in e["uri"] or "/blobs/" in e["uri"])]


@pytest.mark.real
def test_live_key_verifies_with_one_ping_one_token_and_one_head_per_image(stack: Stack) -> None:
    """A live IAM key pulls K images with exactly 1 ping + 1 token + K HEADs, and never GETs a manifest."""
    images = stack.images()
    mark, seq = stack.nginx.log_mark(), stack.sandbox.last_seq("registry")
    hooked: list[tuple[str, str, str]] = []
    with _verifier(on_request=lambda *call: hooked.append(call)) as verifier:
        result = verifier.verify(server=stack.host, auth=stack.auth(stack.service_key), images=images)
    assert result.outcome == "ok", result.detail
    k = len(images)
    assert result.requests == 2 + k
    assert verifier.request_counts == {
        (stack.host, "GET", "401"): 1,
        (stack.host, "GET", "200"): 1,
        (stack.host, "HEAD", "200"): k,
    }
    assert sorted(hooked) == sorted(verifier.request_counts.elements())
    entries = stack.nginx.access_log(mark)
    assert [(e["method"], e["uri"]) for e in entries] == [("GET", "/v2/")] + [
        ("HEAD", f"/v2/{repo}/manifests/{tag}") for repo, tag, _ in IMAGES
    ]
    assert _manifest_or_blob_gets(entries) == []
    assert stack.token_requests(seq) == 1


@pytest.mark.real
def test_second_check_within_token_lifetime_sends_only_heads(stack: Stack) -> None:
    """A repeat check reuses the cached ping and token: K HEADs and nothing else."""
    images = stack.images()
    with _verifier() as verifier:
        first = verifier.verify(server=stack.host, auth=stack.auth(stack.service_key), images=images)
        mark, seq = stack.nginx.log_mark(), stack.sandbox.last_seq("registry")
        second = verifier.verify(server=stack.host, auth=stack.auth(stack.service_key), images=images)
        subset = verifier.verify(server=stack.host, auth=stack.auth(stack.service_key), images=images[:1])
    assert (first.outcome, second.outcome, subset.outcome) == ("ok", "ok", "ok")
    assert (second.requests, subset.requests) == (len(images), 1)
    assert [e["method"] for e in stack.nginx.access_log(mark)] == ["HEAD"] * (len(images) + 1)
    assert stack.token_requests(seq) == 0


@pytest.mark.real
def test_different_credentials_never_share_a_token(stack: Stack) -> None:
    """A second key against the same registry gets its own token, even right after the first one."""
    other_key = str(stack.sandbox.endpoints["foreign_apikeys"]["legacy-manual"])
    with _verifier() as verifier:
        verifier.verify(server=stack.host, auth=stack.auth(stack.service_key), images=stack.images(1))
        seq = stack.sandbox.last_seq("registry")
        bad = verifier.verify(server=stack.host, auth=stack.auth("x" * 44), images=stack.images(1))
        other = verifier.verify(server=stack.host, auth=stack.auth(other_key), images=stack.images(1))
    assert (bad.outcome, other.outcome) == ("rejected", "ok")
    assert stack.token_requests(seq) == 2


def _iam(sandbox: SandboxProcess) -> httpx.Client:
    endpoints = sandbox.endpoints
    reply = httpx.post(
        f"{endpoints['iam']}/identity/token",
        data={"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": endpoints["admin_apikey"]},
        timeout=10,
    )
    reply.raise_for_status()
    headers = {"Authorization": f"Bearer {reply.json()['access_token']}"}
    return httpx.Client(base_url=endpoints["iam"], headers=headers, timeout=10)


@pytest.mark.real
def test_deleted_key_is_rejected(stack: Stack) -> None:
    """A key that pulled is rejected once deleted in IAM (a new verifier holds no token of it)."""
    endpoints = stack.sandbox.endpoints
    with _iam(stack.sandbox) as iam:
        created = iam.post(
            "/v1/apikeys",
            json={
                "name": "registry-test-key",
                "iam_id": endpoints["service_iam_id"],
                "account_id": endpoints["account_id"],
            },
        )
        assert created.status_code == 201, created.text
        key, key_id = created.json()["apikey"], created.json()["id"]
        try:
            with _verifier() as before:
                live = before.verify(server=stack.host, auth=stack.auth(key), images=stack.images(1))
        finally:
            assert iam.delete(f"/v1/apikeys/{key_id}").status_code == 204
    with _verifier() as after:
        gone = after.verify(server=stack.host, auth=stack.auth(key), images=stack.images(1))
    assert live.outcome == "ok", live.detail
    assert gone.outcome == "rejected"
    assert "token endpoint" in gone.detail and "400" in gone.detail
    assert key not in gone.detail
    assert gone.requests == 2  # ping + token: no HEAD once the token is refused


@pytest.mark.real
@pytest.mark.parametrize(
    ("key_name", "image"),
    [
        pytest.param("outsider_apikey", "team/app:latest", id="identity-without-any-grant"),
        pytest.param("service", "other/app:latest", id="repository-outside-the-grant"),
    ],
)
def test_key_without_pull_rights_is_rejected(stack: Stack, key_name: str, image: str) -> None:
    """A valid IAM key whose token lacks pull on the repository gets 401 insufficient_scope: rejected."""
    key = stack.service_key if key_name == "service" else str(stack.sandbox.endpoints[key_name])
    with _verifier() as verifier:
        result = verifier.verify(server=stack.host, auth=stack.auth(key), images=[f"{stack.host}/{image}"])
    assert result.outcome == "rejected"
    assert "401" in result.detail and "insufficient_scope" in result.detail and image in result.detail
    assert result.requests == 3


@pytest.mark.real
def test_unknown_repository_is_inconclusive_with_clear_detail(stack: Stack) -> None:
    """A missing image is a configuration problem: inconclusive, naming the image and the 404."""
    images = [*stack.images(1), f"{stack.host}/team/absent:latest", f"{stack.host}/team/app:no-such-tag"]
    with _verifier() as verifier:
        result = verifier.verify(server=stack.host, auth=stack.auth(stack.service_key), images=images)
    assert result.outcome == "inconclusive"
    assert "team/absent:latest (HEAD 404)" in result.detail
    assert "team/app:no-such-tag (HEAD 404)" in result.detail
    assert "check the image list" in result.detail
    assert result.requests == 2 + len(images)


@pytest.mark.real
def test_hub_short_names_reach_the_overridden_docker_hub_host(stack: Stack) -> None:
    """Docker Hub's server key and short image names map to registry-1.docker.io, overridable to a local URL."""
    admin = str(stack.sandbox.endpoints["admin_apikey"])
    mark = stack.nginx.log_mark()
    with _verifier(hosts={"registry-1.docker.io": stack.nginx.url}) as verifier:
        result = verifier.verify(
            server="https://index.docker.io/v1/",
            auth=stack.auth(admin, server="https://index.docker.io/v1/"),
            images=["hello", "docker.io/team/app:latest"],
        )
    assert result.outcome == "ok", result.detail
    heads = [e["uri"] for e in stack.nginx.access_log(mark) if e["method"] == "HEAD"]
    assert heads == ["/v2/library/hello/manifests/latest", "/v2/team/app/manifests/latest"]


@pytest.mark.real
def test_image_on_another_registry_is_inconclusive_without_requests(stack: Stack) -> None:
    """An image that is not on the credential's registry is a configuration error, checked before any request."""
    with _verifier() as verifier:
        result = verifier.verify(
            server=stack.host, auth=stack.auth(stack.service_key), images=["us.icr.io/team/app:latest"]
        )
    assert (result.outcome, result.requests) == ("inconclusive", 0)
    assert "us.icr.io" in result.detail


@pytest.mark.real
@pytest.mark.parametrize(
    "broken",
    [
        pytest.param("refused", id="connection-refused"),
        pytest.param("bad-gateway", id="proxy-answers-502"),
    ],
)
def test_registry_down_is_inconclusive_after_bounded_attempts(stack: Stack, tmp_path: Path, broken: str) -> None:
    """A registry that is down gives inconclusive after max_attempts, with jittered backoff between them."""
    dead = f"http://127.0.0.1:{free_port()}"
    proxy = NginxProxy.start(tmp_path / "nginx", dead) if broken == "bad-gateway" else None
    host = proxy.host if proxy else dead.removeprefix("http://")
    sleeps = Sleeps()
    try:
        with _verifier(sleep=sleeps, max_attempts=3) as verifier:
            result = verifier.verify(server=host, auth=stack.auth(stack.service_key, host), images=[f"{host}/team/app"])
    finally:
        if proxy:
            proxy.stop()
    assert result.outcome == "inconclusive"
    assert ("unreachable" if broken == "refused" else "502") in result.detail
    assert "after 3 attempts" in result.detail
    assert result.requests == 3
    assert len(sleeps.calls) == 2 and 0.25 <= sleeps.calls[0] < 0.5 and 0.5 <= sleeps.calls[1] < 1.0


@pytest.mark.real
@pytest.mark.parametrize(
    ("challenge", "outcome"),
    [
        pytest.param('Bearer realm="{realm}', "inconclusive", id="unterminated-quote"),
        pytest.param('Bearer service="registry"', "inconclusive", id="bearer-without-realm"),
        pytest.param("Negotiate", "inconclusive", id="no-usable-scheme"),
        pytest.param("Bearer realm={realm}, service=registry", "ok", id="unquoted-like-cp.icr.io"),
    ],
)
def test_challenge_variants_from_a_real_proxy(stack: Stack, tmp_path: Path, challenge: str, outcome: str) -> None:
    """A malformed challenge is a registry problem (inconclusive, no credential sent); an unquoted one works."""
    realm = str(stack.sandbox.endpoints["registry_realm"])
    seq = stack.sandbox.last_seq("registry")
    proxy = NginxProxy.start(tmp_path / "nginx", stack.registry.url, challenge=challenge.format(realm=realm))
    with proxy, _verifier() as verifier:
        images = [f"{proxy.host}/team/app:latest"]
        result = verifier.verify(server=proxy.host, auth=stack.auth(stack.service_key, proxy.host), images=images)
    assert result.outcome == outcome, result.detail
    if outcome == "inconclusive":
        assert "malformed auth challenge" in result.detail
        assert result.requests == 1
        assert stack.token_requests(seq) == 0


@pytest.mark.real
def test_registry_that_answers_basic_gets_basic_on_the_heads(stack: Stack, tmp_path: Path) -> None:
    """Behind Basic auth (nginx in front of an open registry) the HEADs carry Basic; a wrong password is rejected."""
    with RegistryProcess.start(tmp_path / "open-registry") as open_registry:
        for repo, tag, flavour in IMAGES[:2]:
            push_test_image(open_registry.url, repo, tag, None, flavour=flavour)
        users = {"puller": "correct-horse"}
        with NginxProxy.start(tmp_path / "nginx", open_registry.url, basic_users=users) as proxy:
            images = [f"{proxy.host}/{repo}:{tag}" for repo, tag, _ in IMAGES[:2]]

            def auth(password: str) -> RegistryAuth:
                return RegistryAuth(server=proxy.host, username="puller", password=SecretStr(password))

            with _verifier() as verifier:
                good = verifier.verify(server=proxy.host, auth=auth("correct-horse"), images=images)
                bad = verifier.verify(server=proxy.host, auth=auth("wrong-horse"), images=images)
            entries = proxy.access_log()
    assert good.outcome == "ok", good.detail
    assert good.requests == 1 + len(images)  # ping, then HEADs: no token endpoint for Basic
    assert bad.outcome == "rejected" and "401" in bad.detail
    assert bad.requests == 1  # cached ping, first HEAD refused, stop
    assert [e["status"] for e in entries] == [401, 200, 200, 401]


@pytest.mark.real
def test_429_with_retry_after_is_waited_out_within_budget(stack: Stack, tmp_path: Path) -> None:
    """nginx's 429 + Retry-After: 1 during the check is honoured (one ~1 s wait) and the check succeeds.

    nginx lets the ping and one HEAD through (burst 1 of 1 r/min), so the second HEAD is refused however fast
    or slow the machine is; the wait lifts the limit instead of waiting for nginx's bucket to refill."""
    images = stack.images(2)
    with NginxProxy.start(tmp_path / "nginx", stack.registry.url, rate="1r/m", burst=1, retry_after=1) as proxy:
        sleeps = Sleeps(limit_s=1.5, then=lambda: proxy.reconfigure(rate=None))
        images = [image.replace(stack.host, proxy.host) for image in images]
        with _verifier(sleep=sleeps, clock=sleeps.now, budget_s=5.0) as verifier:
            result = verifier.verify(server=proxy.host, auth=stack.auth(stack.service_key, proxy.host), images=images)
            counts = dict(verifier.request_counts)
        entries = proxy.access_log()
    assert result.outcome == "ok", result.detail
    assert len(sleeps.calls) == 1 and 1.0 <= sleeps.calls[0] <= 1.1  # Retry-After (+ <=10 % jitter), no backoff
    assert counts[(proxy.host, "HEAD", "429")] == 1 and counts[(proxy.host, "HEAD", "200")] == 2
    statuses = [(e["uri"], e["status"]) for e in entries if e["method"] == "HEAD"]
    assert statuses[-2:] == [(statuses[-1][0], 429), (statuses[-1][0], 200)]
    assert result.requests == 1 + 1 + 2 + 1


@pytest.mark.real
@pytest.mark.parametrize(
    ("retry_after", "budget_s", "max_heads"),
    [
        # Waits of >= 1 s fit twice in 2.5 s: at most 1 + 2 HEAD attempts.
        pytest.param(1, 2.5, 3, id="sustained-short-retry-after"),
        # A Retry-After longer than the budget ends the check at once: one HEAD, no sleep.
        pytest.param(30, 5.0, 1, id="retry-after-beyond-budget"),
    ],
)
def test_sustained_429_past_budget_is_inconclusive_and_bounded(
    stack: Stack, tmp_path: Path, retry_after: int, budget_s: float, max_heads: int
) -> None:
    """Under a sustained 429 the check gives up inconclusive inside its budget; requests <= 2 + max_heads.
    The budget runs on a fake clock that only the waits move, so the bound holds on any machine."""
    sleeps = Sleeps(limit_s=1.5)
    settings = {"rate": "1r/m", "retry_after": retry_after}
    with NginxProxy.start(tmp_path / "nginx", stack.registry.url, **settings) as proxy:
        images = [f"{proxy.host}/team/app:latest"]
        with _verifier(sleep=sleeps, clock=sleeps.now, budget_s=budget_s, max_attempts=10) as verifier:
            result = verifier.verify(server=proxy.host, auth=stack.auth(stack.service_key, proxy.host), images=images)
        heads = [e for e in proxy.access_log() if e["method"] == "HEAD"]
    assert result.outcome == "inconclusive"
    assert "HEAD" in result.detail and "429" in result.detail and "Retry-After" in result.detail
    assert 1 <= len(heads) <= max_heads and all(e["status"] == 429 for e in heads)
    assert result.requests <= 2 + max_heads  # ping (let through) + token (sandbox) + HEAD attempts
    assert sum(sleeps.calls) <= budget_s
    assert all(s >= retry_after for s in sleeps.calls)


@pytest.mark.real
def test_ratelimit_headers_are_kept_per_registry(stack: Stack, tmp_path: Path) -> None:
    """Docker Hub-style ratelimit headers on the HEADs are readable through quota(registry)."""
    headers = {"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "76;w=21600"}
    proxy = NginxProxy.start(tmp_path / "nginx", stack.registry.url, extra_headers=headers)
    with proxy, _verifier() as verifier:
        assert verifier.quota(proxy.host) is None
        images = [f"{proxy.host}/team/app:latest"]
        result = verifier.verify(server=proxy.host, auth=stack.auth(stack.service_key, proxy.host), images=images)
        quota = verifier.quota(f"http://{proxy.host}/")
    assert result.outcome == "ok", result.detail
    assert quota == Quota(limit=100, remaining=76, window_s=21600)


@pytest.mark.real
def test_no_key_or_token_in_details_or_logs(stack: Stack) -> None:
    """Neither the key nor the registry token appears in any detail or log event, whatever the outcome."""
    keys = [stack.service_key, str(stack.sandbox.endpoints["outsider_apikey"]), "y" * 44]
    images = [*stack.images(1), f"{stack.host}/team/absent:latest"]
    with structlog.testing.capture_logs() as logs, _verifier() as verifier:
        results = [verifier.verify(server=stack.host, auth=stack.auth(key), images=images) for key in keys]
    assert {r.outcome for r in results} == {"inconclusive", "rejected"}
    assert [e["event"] for e in logs].count("registry.verified") == len(keys)
    text = repr(logs) + repr(results)
    for secret in keys:
        assert secret not in text
    assert "eyJ" not in text  # the start of every JWT: no registry token either


@pytest.mark.real
def test_registry_that_challenges_only_per_repository_is_learned(stack: Stack, tmp_path: Path) -> None:
    """/v2/ answers 200 but the repository challenges: the verifier learns the challenge once and pulls."""
    proxy = NginxProxy.start(tmp_path / "nginx", stack.registry.url, anonymous_ping=True)
    with proxy, _verifier() as verifier:
        images = [f"{proxy.host}/{repo}:{tag}" for repo, tag, _ in IMAGES[:2]]
        result = verifier.verify(server=proxy.host, auth=stack.auth(stack.service_key, proxy.host), images=images)
        again = verifier.verify(server=proxy.host, auth=stack.auth(stack.service_key, proxy.host), images=images)
        statuses = [(e["method"], e["status"]) for e in proxy.access_log()]
    assert result.outcome == "ok", result.detail
    assert "as user 'iamapikey'" in result.detail  # the credential was used, not an anonymous pull
    assert result.requests == 1 + 1 + 1 + 2  # ping 200, HEAD 401, token, HEAD 200 x2
    assert statuses[:4] == [("GET", 200), ("HEAD", 401), ("HEAD", 200), ("HEAD", 200)]
    assert again.requests == 2  # the learned challenge and the token are cached


@pytest.mark.real
def test_cached_ping_and_token_expire_with_the_clock(stack: Stack) -> None:
    """Past the token lifetime (300 s, renewed 30 s early) and the ping TTL, a check pings and asks again."""
    now = [1000.0]
    images = stack.images(2)
    with _verifier(clock=lambda: now[0], ping_ttl_s=600) as verifier:

        def check() -> int:
            result = verifier.verify(server=stack.host, auth=stack.auth(stack.service_key), images=images)
            assert result.outcome == "ok", result.detail
            return result.requests

        first = check()
        now[0] += 260  # inside the token's cached lifetime (300 - 30)
        inside = check()
        now[0] += 20  # past it; the ping (600 s) still holds
        token_only = check()
        now[0] += 601  # past both
        both = check()
    assert (first, inside, token_only, both) == (2 + 2, 2, 1 + 2, 2 + 2)


# -- the ICR-like registry emulator itself ------------------------------------------------------------


@pytest.fixture
def icr(shared_sandbox: SandboxProcess) -> Iterator[SandboxProcess]:
    """The sandbox registry emulator, reached as us.icr.io; faults and challenge style reset afterwards."""
    if "registry_realm" not in shared_sandbox.endpoints:
        pytest.skip("the sandbox has no registry emulator")
    yield shared_sandbox
    shared_sandbox.clear_faults()
    httpx.post(f"{shared_sandbox.endpoints['admin']}/registry/challenge", json={"style": "quoted"}).raise_for_status()


def _icr_verifier(sandbox: SandboxProcess, **kwargs: Any) -> RegistryVerifier:
    return _verifier(endpoint_overrides={"us.icr.io": sandbox.endpoints["registry"]}, **kwargs)


def _icr_auth(key: str) -> RegistryAuth:
    return RegistryAuth(server="us.icr.io", username="iamapikey", password=SecretStr(key))


ICR_IMAGES = ["us.icr.io/team/app:latest", "us.icr.io/team/worker:1.0"]


@pytest.mark.parametrize(
    ("key_name", "images", "outcome", "says"),
    [
        pytest.param("ci-pipeline", ICR_IMAGES, "ok", "answered HEAD 200", id="live-key"),
        pytest.param("outsider_apikey", ICR_IMAGES[:1], "rejected", "403", id="no-pull-rights-403-denied"),
        pytest.param("bad", ICR_IMAGES, "rejected", "400", id="bad-key-400-like-icr"),
        pytest.param("ci-pipeline", ["us.icr.io/team/absent:1"], "inconclusive", "HEAD 404", id="unknown-image"),
    ],
)
def test_icr_emulator_outcomes(icr: SandboxProcess, key_name: str, images: list[str], outcome: str, says: str) -> None:
    """Against the ICR-like emulator (us.icr.io overridden to it) each credential case gets its outcome."""
    endpoints = icr.endpoints
    keys = {
        "ci-pipeline": str(endpoints["foreign_apikeys"]["ci-pipeline"]),
        "outsider_apikey": str(endpoints["outsider_apikey"]),
        "bad": "z" * 44,
    }
    key = keys[key_name]
    with _icr_verifier(icr) as verifier:
        result = verifier.verify(server="us.icr.io", auth=_icr_auth(key), images=images)
    assert result.outcome == outcome, result.detail
    assert says in result.detail


def test_icr_unquoted_challenge_is_understood(icr: SandboxProcess) -> None:
    """The emulator's cp.icr.io-style unquoted challenge still leads to a token and a pull."""
    admin = icr.endpoints["admin"]
    httpx.post(f"{admin}/registry/challenge", json={"style": "unquoted"}).raise_for_status()
    assert "realm=http" in httpx.get(f"{icr.endpoints['registry']}/v2/").headers["www-authenticate"]
    with _icr_verifier(icr) as verifier:
        result = verifier.verify(
            server="us.icr.io", auth=_icr_auth(icr.endpoints["foreign_apikeys"]["ci-pipeline"]), images=ICR_IMAGES
        )
    assert result.outcome == "ok", result.detail


def test_token_endpoint_5xx_is_retried_with_backoff(icr: SandboxProcess) -> None:
    """Two 503s from the token endpoint are retried (jittered backoff) and the check still succeeds."""
    icr.set_faults("registry", {"path_prefix": "/oauth/token", "error_status": 503, "error_count": 2})
    sleeps = Sleeps()
    with _icr_verifier(icr, sleep=sleeps) as verifier:
        result = verifier.verify(
            server="us.icr.io", auth=_icr_auth(icr.endpoints["foreign_apikeys"]["ci-pipeline"]), images=ICR_IMAGES
        )
        counts = verifier.request_counts
    assert result.outcome == "ok", result.detail
    assert result.requests == 1 + 3 + len(ICR_IMAGES)
    assert counts[("us.icr.io", "GET", "503")] == 2
    assert len(sleeps.calls) == 2 and sleeps.calls[0] < sleeps.calls[1] < 1.0


def test_manifest_timeouts_are_inconclusive(icr: SandboxProcess) -> None:
    """HEADs slower than the request timeout end inconclusive ("timed out"), counted with status "error"."""
    icr.set_faults("registry", {"path_prefix": "/v2/team/", "methods": ["HEAD"], "latency_ms": 400})
    with _icr_verifier(icr, request_timeout_s=0.1, max_attempts=2) as verifier:
        result = verifier.verify(
            server="us.icr.io", auth=_icr_auth(icr.endpoints["foreign_apikeys"]["ci-pipeline"]), images=ICR_IMAGES
        )
        errors = verifier.request_counts[("us.icr.io", "HEAD", "error")]
    assert result.outcome == "inconclusive"
    assert "timed out" in result.detail and "after 2 attempts" in result.detail
    assert errors == 2
