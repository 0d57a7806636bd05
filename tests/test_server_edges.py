"""The HTTP API at its edges, over real sockets: token audiences, TLS with certificate reload, failed-auth
limits before any TokenReview, what the mutation budget is charged for, malformed requests, slow headers,
the Server header, HEAD /healthz.

The Kubernetes mode asks the sandbox's Kubernetes emulator, whose request log counts the TokenReviews.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import ipaddress
import json
import os
import secrets
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_server
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CollectorRegistry
from test_server import (
    REVIEWER_RULES,
    Api,
    FakeClock,
    FakeControl,
    FileTokens,
    kube_authenticator,
    kube_tokens,
    new_token,
    running,
    server_settings,
)
from test_settings import GOOD

from rotator import settings as config
from rotator.errors import ConfigError
from rotator.sandbox.control import SandboxProcess
from rotator.sandbox.tokens import self_signed_certificate
from rotator.server import AUTH_FAILURE_BURST, AUTH_FAILURE_PER_MINUTE, ApiServer
from rotator.settings import TlsSettings

# test_server's fixtures, used here too: a token-file server with rotate/read tokens, and its token file.
api, file_tokens = test_server.api, test_server.file_tokens

CLOSE_BOUND_S = 10.0  # how long a test waits for the server to close a connection before failing


# -- audiences --------------------------------------------------------------------------------------------


def parse_server(tmp_path: Path, server: dict[str, Any]) -> config.ServerSettings:
    doc = {**GOOD, "server": server}
    return config.parse(doc, source=tmp_path / "rotator.yaml", base_dir=tmp_path).server


def test_server_settings_for_the_edges(tmp_path: Path) -> None:
    """In kubernetes mode server.auth.audiences defaults to [rotator] ([] asks for the apiserver's own; other
    modes send none); server.tls takes both files (relative to the config); server.header_timeout is 10s."""

    def audiences(auth: dict[str, Any]) -> tuple[str, ...]:
        return parse_server(tmp_path, {"auth": auth}).auth.audiences

    assert audiences({"mode": "kubernetes"}) == ("rotator",)
    assert audiences({"mode": "kubernetes", "audiences": ["rotator", "rotator.example.com"]}) == (
        "rotator",
        "rotator.example.com",
    )
    assert audiences({"mode": "kubernetes", "audiences": []}) == ()
    assert audiences({"mode": "disabled"}) == ()
    server = parse_server(tmp_path, {"tls": {"cert_file": "tls/tls.crt", "key_file": "/etc/tls.key"}})
    assert server.tls == TlsSettings(cert_file=tmp_path / "tls/tls.crt", key_file=Path("/etc/tls.key"))
    assert server.header_timeout == dt.timedelta(seconds=10)
    assert parse_server(tmp_path, {"header_timeout": "2s"}).header_timeout == dt.timedelta(seconds=2)
    with pytest.raises(
        ConfigError, match=r"server\.tls\.key_file: is required; for example: /etc/rotator/tls/tls\.key"
    ):
        parse_server(tmp_path, {"tls": {"cert_file": "tls.crt"}})


def add_token(sbx: SandboxProcess, user: str, rules: list[dict[str, Any]], audiences: list[str] | None) -> str:
    body: dict[str, Any] = {"user": user, "rules": rules}
    if audiences is not None:
        body["audiences"] = audiences
    response = sbx.admin.post("/kubernetes/tokens", json=body)
    response.raise_for_status()
    token: str = response.json()["token"]
    return token


def test_a_token_for_another_audience_is_refused(shared_sandbox: SandboxProcess) -> None:
    """With audiences [rotator], a projected token minted for `rotator` is accepted and one minted for the
    apiserver (the default audience) is 401: its TokenReview answers authenticated=false, as the real
    apiserver does. The rotator-audience token is in turn refused by the apiserver itself."""
    suffix = secrets.token_hex(3)
    reviewer = add_token(shared_sandbox, f"rotator-{suffix}", REVIEWER_RULES, None)
    rule = {"verbs": ["get", "list"], "apiGroups": ["rotator.example.com"], "resources": ["credentials"]}
    for_rotator = add_token(shared_sandbox, f"caller-{suffix}", [rule], ["rotator"])
    for_apiserver = add_token(shared_sandbox, f"other-{suffix}", [rule], None)
    with (
        kube_authenticator(shared_sandbox, reviewer, audiences=("rotator",)) as auth,
        running(FakeControl(), auth) as served,
    ):
        assert served.call("GET", "/v1/credentials", token=for_rotator).status_code == 200
        refused = served.call("GET", "/v1/credentials", token=for_apiserver)
        assert refused.status_code == 401 and refused.json()["error"] == "invalid bearer token"

    kube = shared_sandbox.endpoints["kubernetes"]
    headers = {"Authorization": f"Bearer {reviewer}"}

    def review(token: str, audiences: list[str]) -> dict[str, Any]:
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview"}
        body["spec"] = {"token": token, "audiences": audiences}  # type: ignore[assignment]
        answer = httpx.post(f"{kube}/apis/authentication.k8s.io/v1/tokenreviews", json=body, headers=headers)
        answer.raise_for_status()
        status: dict[str, Any] = answer.json()["status"]
        return status

    assert review(for_rotator, ["rotator", "vault"])["audiences"] == ["rotator"]
    mismatch = review(for_apiserver, ["rotator"])
    assert not mismatch.get("authenticated") and "is invalid for the target audiences" in mismatch["error"]
    own = httpx.get(f"{kube}/served/v1/namespaces", headers={"Authorization": f"Bearer {for_rotator}"})
    assert own.status_code == 401


KUBECTL = shutil.which("kubectl")


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_kubectl_create_token_for_the_rotator_audience_is_accepted(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """`kubectl create token --audience rotator` (a TokenRequest to the emulator) mints a token rotator accepts;
    the same without --audience (issued for the apiserver) is refused. The emulator refuses a TokenRequest for
    an unknown service account (404), from a caller without create on serviceaccounts/token (403), or shorter
    than ten minutes (422), as the real apiserver does."""
    kube = sandbox.endpoints["kubernetes"]
    admin = {"Authorization": f"Bearer {sandbox.endpoints['kubernetes_token']}"}
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "operator"}}
    httpx.post(
        f"{kube}/api/v1/namespaces/rotator-system/serviceaccounts", json=account, headers=admin
    ).raise_for_status()
    rule = {"verbs": ["get", "list"], "apiGroups": ["rotator.example.com"], "resources": ["credentials"]}
    add_token(sandbox, "system:serviceaccount:rotator-system:operator", [rule], None)  # binds the rule to the user

    def create_token(*extra: str) -> str:
        env = dict(os.environ, HOME=str(tmp_path), KUBECONFIG=sandbox.endpoints["kubeconfig"])
        args = [str(KUBECTL), "--cache-dir", str(tmp_path / "cache"), "-n", "rotator-system", "create", "token"]
        result = subprocess.run([*args, "operator", *extra], capture_output=True, text=True, env=env, timeout=30)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    for_rotator, for_apiserver = create_token("--audience", "rotator"), create_token()
    token_url = f"{kube}/api/v1/namespaces/rotator-system/serviceaccounts/{{}}/token"
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"audiences": ["rotator"]}}
    readonly = {"Authorization": f"Bearer {sandbox.endpoints['kubernetes_readonly_token']}"}
    short = request | {"spec": {"expirationSeconds": 60}}
    assert [
        httpx.post(token_url.format("nobody"), json=request, headers=admin).status_code,
        httpx.post(token_url.format("operator"), json=request, headers=readonly).status_code,
        httpx.post(token_url.format("operator"), json=short, headers=admin).status_code,
    ] == [404, 403, 422]
    reviewer = add_token(sandbox, "rotator", REVIEWER_RULES, None)
    with (
        kube_authenticator(sandbox, reviewer, audiences=("rotator",)) as auth,
        running(FakeControl(), auth) as served,
    ):
        assert served.call("GET", "/v1/credentials", token=for_rotator).status_code == 200
        assert served.call("GET", "/v1/credentials", token=for_apiserver).status_code == 401


# -- TLS ---------------------------------------------------------------------------------------------------


def write_pair(directory: Path, common_name: str) -> bytes:
    """A self-signed certificate for 127.0.0.1 and its key, replaced atomically (as a Secret volume update is);
    answers the certificate's DER."""
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = self_signed_certificate(key, common_name, [(san, False)])
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    for name, data in (("tls.key", pem_key), ("tls.crt", cert.public_bytes(serialization.Encoding.PEM))):
        tmp = directory / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, directory / name)
    return cert.public_bytes(serialization.Encoding.DER)


def served_certificate(address: tuple[str, int]) -> bytes:
    """The certificate the server presents on a new connection (no verification: only its identity)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(address, timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_tls_listener_serves_https_and_picks_up_a_renewed_certificate(tmp_path: Path, file_tokens: FileTokens) -> None:
    """With server.tls the API speaks HTTPS (verified against the certificate); after the files are replaced a
    new connection is served the new certificate, without a restart. A half-written pair (a certificate without
    its key) keeps the previous one."""
    first = write_pair(tmp_path, "rotator-1")
    tls = TlsSettings(cert_file=tmp_path / "tls.crt", key_file=tmp_path / "tls.key")
    with running(FakeControl(), file_tokens.authenticator(), server_settings(tls=tls)) as served:
        address = served.server.address
        assert address is not None and served.server.url.startswith("https://")
        verified = ssl.create_default_context(cafile=tmp_path / "tls.crt")
        with httpx.Client(base_url=served.server.url, verify=verified, timeout=10) as client:
            assert client.get("/healthz").json() == {"status": "ok"}
        assert served_certificate(address) == first

        second = write_pair(tmp_path, "rotator-2")
        assert served_certificate(address) == second
        renewed = ssl.create_default_context(cafile=tmp_path / "tls.crt")
        token = file_tokens.tokens["read"]
        with httpx.Client(base_url=served.server.url, verify=renewed, timeout=10) as client:
            assert client.get("/v1/credentials", headers={"Authorization": f"Bearer {token}"}).status_code == 200

        # The certificate replaced by another one whose key has not arrived yet: the pair does not load.
        other = tmp_path / "other"
        other.mkdir()
        write_pair(other, "rotator-3")
        os.replace(other / "tls.crt", tmp_path / "tls.crt")
        assert served_certificate(address) == second


def test_tls_files_that_do_not_load_are_a_config_error(tmp_path: Path, file_tokens: FileTokens) -> None:
    """A missing or mismatched pair fails at construction with a message naming server.tls and the files."""
    write_pair(tmp_path, "rotator")
    other = tmp_path / "other"
    other.mkdir()
    write_pair(other, "other")
    for cert, key in ((tmp_path / "missing.crt", tmp_path / "tls.key"), (other / "tls.crt", tmp_path / "tls.key")):
        settings = server_settings(tls=TlsSettings(cert_file=cert, key_file=key))
        with pytest.raises(ConfigError, match=r"server\.tls: cannot load cert_file .*" + cert.name):
            ApiServer(FakeControl(), CollectorRegistry(), settings, authenticator=file_tokens.authenticator())


# -- failed authentications ---------------------------------------------------------------------------------


def test_failed_authentications_are_limited_per_address_before_any_token_review(sandbox: SandboxProcess) -> None:
    """50 bad tokens at once from one address cause at most AUTH_FAILURE_BURST TokenReviews (the emulator's
    request log); the others answer 429 with Retry-After. The budget refills with time, and a valid token
    gives its unit back, so a client that authenticates does not drain it."""
    tokens = kube_tokens(sandbox)
    clock = FakeClock()
    with (
        kube_authenticator(sandbox, tokens["reviewer"], clock=clock) as auth,
        running(FakeControl(), auth, clock=clock, tokens=tokens) as served,
    ):
        for _ in range(3 * AUTH_FAILURE_BURST):  # valid tokens never use up the budget
            assert served.call("GET", "/v1/credentials", token=tokens["read"]).status_code == 200
        since = sandbox.last_seq("kubernetes")
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda _: served.call("GET", "/v1/credentials", token=new_token()), range(50)))
        reviews = [r for r in sandbox.requests("kubernetes", since=since) if r["path"].endswith("/tokenreviews")]
        assert len(reviews) == AUTH_FAILURE_BURST
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [401] * AUTH_FAILURE_BURST + [429] * (50 - AUTH_FAILURE_BURST)
        limited = next(a for a in answers if a.status_code == 429)
        assert limited.json()["error"] == "too many failed authentications from this address"
        assert int(limited.headers["Retry-After"]) == round(60 / AUTH_FAILURE_PER_MINUTE)
        # While the address is locked out, even a good token waits (it cannot be told from a guess unchecked).
        assert served.call("GET", "/v1/credentials", token=tokens["read"]).status_code == 429
        clock.now += 60 / AUTH_FAILURE_PER_MINUTE
        assert served.call("GET", "/v1/credentials", token=tokens["read"]).status_code == 200


# -- the mutation budget --------------------------------------------------------------------------------------


def test_the_rotation_budget_is_charged_only_for_requests_that_start_or_join_a_rotation(
    file_tokens: FileTokens,
) -> None:
    """With a burst of 2: unknown credentials, bad names, bad bodies, bad Idempotency-Keys and a follower's 503
    use none of it; the two requests that queue a rotation do, and the third is 429."""
    clock = FakeClock()
    control = FakeControl()
    settings = server_settings(rate_per_minute=1, rate_burst=2)
    with running(control, file_tokens.authenticator(), settings, clock=clock, tokens=file_tokens.tokens) as served:
        refused = [
            served.rotate("no-such-credential").status_code,
            served.rotate("Not_A_Name").status_code,
            served.rotate(content=b"{not json", headers={"Content-Type": "application/json"}).status_code,
            served.rotate(json={"unknown": 1}).status_code,
            served.rotate(headers={"Idempotency-Key": "a b"}).status_code,
        ]
        assert refused == [404, 404, 400, 400, 400]
        control.leading = (False, "replica-b")
        assert served.rotate().status_code == 503
        control.leading = (True, "replica-a")
        assert [served.rotate("icr-pull").status_code, served.rotate("hub-pull").status_code] == [202, 202]
        limited = served.rotate("icr-pull")
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        assert [r["name"] for r in control.requests] == ["icr-pull", "hub-pull"]


# -- malformed requests, banners, slow headers ---------------------------------------------------------------


def exchange(address: tuple[str, int], raw: bytes) -> bytes:
    """Send raw bytes, read until the server closes the connection (bounded)."""
    with socket.create_connection(address, timeout=CLOSE_BOUND_S) as sock:
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def split(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, body


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("Authorization: Bearer {token}\x00", id="nul-in-authorization"),
        pytest.param("Authorization: Bearer {token}{padding}", id="oversized-authorization"),
        pytest.param("X-Note\x01: Bearer {token}", id="bad-header-name"),
    ],
)
def test_malformed_requests_get_json_400_without_echoing_headers(api: Api, header: str) -> None:
    """A request that does not parse answers rotator's JSON 400 naming only the error type: no byte of what
    was sent (the token) comes back, and no software version either."""
    token = api.tokens["rotate"]
    line = header.format(token=token, padding="A" * 9000)
    assert api.server.address is not None
    answer = exchange(api.server.address, f"GET /v1/credentials HTTP/1.1\r\nHost: x\r\n{line}\r\n\r\n".encode())
    status, headers, body = split(answer)
    assert status.split(" ")[1] == "400"
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"] == "the request could not be parsed"
    assert token.encode() not in answer and b"Bearer" not in answer and b"AAAAAAAA" not in answer
    assert headers.get("server", "rotator") == "rotator"


def test_no_response_names_the_server_software(api: Api) -> None:
    """Every answer (200, 401, 404, 405, HEAD) carries `Server: rotator` and no aiohttp/Python version."""
    answers = [
        api.call("GET", "/healthz"),
        api.call("GET", "/v1/credentials"),
        api.call("GET", "/v1/nothing"),
        api.call("PUT", "/healthz"),
        api.call("HEAD", "/healthz"),
        api.call("GET", "/v1/credentials", token=api.tokens["read"]),
    ]
    assert [a.headers.get("Server") for a in answers] == ["rotator"] * len(answers)


def test_head_healthz_answers_200_without_a_body(api: Api) -> None:
    """Probes that send HEAD get the liveness answer; a dead daemon is 503 for HEAD too."""
    alive = api.call("HEAD", "/healthz")
    assert (alive.status_code, alive.content) == (200, b"")
    api.control.is_alive = False
    assert api.call("HEAD", "/healthz").status_code == 503


def wait_closed(sock: socket.socket, trickle: bytes = b"") -> float:
    """Seconds until the server closes ``sock``, sending ``trickle`` one byte per 50 ms meanwhile (a slowloris
    client); fails after CLOSE_BOUND_S."""
    started = time.monotonic()
    pending = list(trickle)
    while time.monotonic() - started < CLOSE_BOUND_S:
        readable, _, _ = select.select([sock], [], [], 0.05)
        if readable:
            try:
                if sock.recv(65536) == b"":
                    return time.monotonic() - started
            except ConnectionResetError:
                return time.monotonic() - started
        elif pending:
            with contextlib.suppress(OSError):
                sock.sendall(bytes([pending.pop(0)]))
    raise AssertionError(f"the server kept the connection open for {CLOSE_BOUND_S}s")


@contextlib.contextmanager
def connected(api: Api) -> Iterator[socket.socket]:
    assert api.server.address is not None
    with socket.create_connection(api.server.address, timeout=CLOSE_BOUND_S) as sock:
        yield sock


def test_headers_that_arrive_too_slowly_close_the_connection(file_tokens: FileTokens) -> None:
    """With server.header_timeout 0.5s: a client trickling header bytes, one silent after connecting, and one
    that starts a second request on a kept-alive connection and stalls are all closed within the bound,
    however much they still send."""
    settings = server_settings(header_timeout=dt.timedelta(seconds=0.5))
    with running(FakeControl(), file_tokens.authenticator(), settings) as served:
        endless = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 10_000
        with connected(served) as sock:
            sock.sendall(b"G")
            assert wait_closed(sock, endless) < CLOSE_BOUND_S
        with connected(served) as sock:
            assert wait_closed(sock) < CLOSE_BOUND_S
        with connected(served) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\n")
            assert wait_closed(sock, endless) < CLOSE_BOUND_S


def test_a_slow_handler_is_not_cut_by_the_header_timeout(file_tokens: FileTokens) -> None:
    """The header deadline covers reading headers only: a request whose handler takes longer is answered."""
    control = FakeControl()
    control.gate = threading.Event()
    settings = server_settings(header_timeout=dt.timedelta(seconds=0.2))
    with running(control, file_tokens.authenticator(), settings) as served, connected(served) as sock:
        token = file_tokens.tokens["read"]
        sock.sendall(f"GET /v1/credentials HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        assert control.entered.wait(CLOSE_BOUND_S)
        readable, _, _ = select.select([sock], [], [], 1.0)  # five header timeouts: nothing may arrive
        assert not readable
        control.gate.set()
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
