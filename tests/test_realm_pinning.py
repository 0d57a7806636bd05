"""The pull check sends the key only to a token realm on the registry's host, a known one, or a configured one.

A registry here is a small HTTP listener on 127.0.0.1 that challenges with a chosen realm; the "foreign" token
service is a second listener that counts every request and the Authorization headers it saw. ``localhost`` and
``127.0.0.1`` are different host names, so a realm on ``localhost`` stands for a stranger's host.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from masked import Masked

from rotator import settings
from rotator.adapters.registry import RegistryVerifier
from rotator.adapters.registry_wire import KNOWN_REALM_HOSTS, realm_refusal
from rotator.app import App
from rotator.errors import ConfigError
from rotator.imageref import DOCKER_HUB
from rotator.model import RegistryAuth, SecretStr

KEY = Masked("pinning-test-key-0123456789abcdefghijklmnop")
TOKEN = "stub-registry-token-0123456789"


@dataclass
class Listener:
    """One HTTP server on 127.0.0.1: ``answer(method, path)`` gives (status, headers, body); requests are kept."""

    answer: Callable[[str, str], tuple[int, dict[str, str], bytes]]
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, Authorization

    def __post_init__(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                outer.seen.append((self.command, self.path, self.headers.get("Authorization")))
                status, headers, body = outer.answer(self.command, self.path)
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = _serve

            def log_message(self, *args: object) -> None:  # quiet: the test reads ``seen``
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _token_service(_: str, path: str) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "application/json"}, json.dumps({"token": TOKEN, "expires_in": 300}).encode()


def _registry(realm: Callable[[], str]) -> Callable[[str, str], tuple[int, dict[str, str], bytes]]:
    """A registry that challenges for /v2/ with ``realm()`` and serves every manifest to a Bearer token."""

    def answer(_: str, path: str) -> tuple[int, dict[str, str], bytes]:
        if path == "/v2/":
            return 401, {"WWW-Authenticate": f'Bearer realm="{realm()}",service="stub"'}, b"{}"
        return 200, {"Docker-Content-Digest": "sha256:" + "0" * 64}, b""

    return answer


@pytest.fixture
def foreign() -> Iterator[Listener]:
    listener = Listener(_token_service)
    yield listener
    listener.close()


@pytest.fixture
def registry_for() -> Iterator[Callable[[str], Listener]]:
    made: list[Listener] = []

    def make(realm: str) -> Listener:
        listener = Listener(_registry(lambda: realm))
        made.append(listener)
        return listener

    yield make
    for listener in made:
        listener.close()


def _verify(registry: Listener, **kwargs: object) -> tuple[str, str, int]:
    host = f"127.0.0.1:{registry.port}"
    auth = RegistryAuth(server=host, username="iamapikey", password=SecretStr(KEY))
    with RegistryVerifier(budget_s=5, sleep=lambda _: None, **kwargs) as verifier:  # type: ignore[arg-type]
        result = verifier.verify(server=host, auth=auth, images=[f"{host}/team/app:1"])
    return result.outcome, result.detail, result.requests


def test_foreign_realm_is_rejected_and_receives_nothing(
    foreign: Listener, registry_for: Callable[[str], Listener]
) -> None:
    """A realm on another host: rejected, naming the host and the config field; zero requests reach it."""
    registry = registry_for(f"http://localhost:{foreign.port}/token")
    outcome, detail, requests = _verify(registry)
    assert outcome == "rejected"
    assert "'localhost'" in detail and "registry.token_realm_hosts" in detail and "not sent" in detail
    assert foreign.seen == []
    assert requests == 1  # the ping only


def test_configured_realm_host_receives_the_credential(
    foreign: Listener, registry_for: Callable[[str], Listener]
) -> None:
    """The same realm listed in token_realm_hosts gets the token request (so the listener above does count)."""
    registry = registry_for(f"http://localhost:{foreign.port}/token")
    server = f"127.0.0.1:{registry.port}"
    outcome, detail, _ = _verify(registry, token_realm_hosts={server: ["localhost"]})
    assert outcome == "ok", detail
    assert [(method, auth is not None and auth.startswith("Basic ")) for method, _, auth in foreign.seen] == [
        ("GET", True)
    ]


def test_realm_on_the_registry_host_and_another_port_is_used(
    foreign: Listener, registry_for: Callable[[str], Listener]
) -> None:
    """Same host name, different port (the sandbox's layout): allowed without configuration."""
    registry = registry_for(f"http://127.0.0.1:{foreign.port}/token")
    outcome, detail, _ = _verify(registry)
    assert outcome == "ok", detail
    assert len(foreign.seen) == 1


def test_user_info_does_not_make_a_realm_loopback(registry_for: Callable[[str], Listener]) -> None:
    """``http://127.0.0.1:80@evil.invalid/``'s host is evil.invalid: not loopback, not contacted."""
    registry = registry_for("http://127.0.0.1:80@evil.invalid/token")
    outcome, detail, requests = _verify(registry)
    assert (outcome, requests) == ("rejected", 1)
    assert "'evil.invalid'" in detail
    server = f"127.0.0.1:{registry.port}"
    outcome, detail, requests = _verify(registry, token_realm_hosts={server: ["evil.invalid"]})
    assert (outcome, requests) == ("inconclusive", 1)  # listed, yet plain http off loopback: still not sent
    assert "plain http on evil.invalid" in detail


def test_redirect_to_another_host_carries_no_credential(foreign: Listener) -> None:
    """A same-host realm that redirects to another host: the request arrives there without Authorization."""

    def redirecting(method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        if path.startswith("/token"):
            return 302, {"Location": f"http://localhost:{foreign.port}/token"}, b""
        return _registry(lambda: f"http://127.0.0.1:{registry.port}/token")(method, path)

    registry = Listener(redirecting)
    try:
        outcome, detail, _ = _verify(registry)
    finally:
        registry.close()
    assert outcome == "ok", detail  # the stub token service accepts anyone
    assert [(method, auth) for method, _, auth in foreign.seen] == [("GET", None)]
    assert any(auth and auth.startswith("Basic ") for _, path, auth in registry.seen if path.startswith("/token"))


@pytest.mark.parametrize(
    ("realm", "registry", "allowed", "expected"),
    [
        pytest.param("https://us.icr.io/oauth/token", "us.icr.io", {"us.icr.io"}, None, id="own-host"),
        pytest.param("https://us.icr.io:8443/t", "us.icr.io", {"us.icr.io"}, None, id="own-host-other-port"),
        pytest.param("https://US.ICR.IO/t", "us.icr.io", {"us.icr.io"}, None, id="host-case-folded"),
        pytest.param("https://auth.docker.io/token", DOCKER_HUB, KNOWN_REALM_HOSTS[DOCKER_HUB], None, id="hub"),
        pytest.param("https://evil.example/t", "us.icr.io", {"us.icr.io"}, "rejected", id="other-host"),
        pytest.param("https://us.icr.io.evil.example/t", "us.icr.io", {"us.icr.io"}, "rejected", id="suffix-trick"),
        pytest.param("https://us.icr.io@evil.example/t", "us.icr.io", {"us.icr.io"}, "rejected", id="user-info"),
        pytest.param("http://127.0.0.1:80@evil.example/", "x", {"evil.example"}, "inconclusive", id="http-user-info"),
        pytest.param("http://[::1]:5001/t", "[::1]:5000", {"::1"}, None, id="ipv6-loopback-http"),
        pytest.param("http://us.icr.io/t", "us.icr.io", {"us.icr.io"}, "inconclusive", id="plain-http-off-loopback"),
    ],
)
def test_realm_refusal_table(realm: str, registry: str, allowed: set[str], expected: str | None) -> None:
    """Which realm may receive the key: the pure decision, case by case."""
    refusal = realm_refusal(realm, registry, allowed)
    assert (refusal[0] if refusal else None) == expected


def _app_config(tmp_path: Path, server: str, realm_hosts: list[str] | None) -> Path:
    registry: dict[str, Any] = {"server": server, "images": [f"{server}/team/app:1"], "verify_budget": "5s"}
    if realm_hosts is not None:
        registry["token_realm_hosts"] = realm_hosts
    provider = {"kind": "ibm-iam", "account_id": "a", "service_id": "ServiceId-1", "apikey": {"env": "PIN_KEY"}}
    targets = {"kubernetes": {"secret_name": "pull", "namespaces": {"names": ["team-a"]}}}
    doc = {
        "credentials": [
            {"name": "pull", "provider": provider, "registry": registry, "max_age": "30d", "targets": targets}
        ]
    }
    path = tmp_path / "rotator.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(("realm_hosts", "outcome"), [(None, "rejected"), (["LocalHost"], "ok")])
def test_config_field_reaches_the_verifier(
    foreign: Listener,
    registry_for: Callable[[str], Listener],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    realm_hosts: list[str] | None,
    outcome: str,
) -> None:
    """``registry.token_realm_hosts`` in a config file decides, through the App's verifier (case-insensitive)."""
    monkeypatch.setenv("PIN_KEY", "admin-key-not-used-here-0123456789")
    registry = registry_for(f"http://localhost:{foreign.port}/token")
    server = f"127.0.0.1:{registry.port}"
    with App(settings.load(_app_config(tmp_path, server, realm_hosts))) as app:
        auth = RegistryAuth(server=server, username="iamapikey", password=SecretStr(KEY))
        result = app.verifier.verify(server=server, auth=auth, images=[f"{server}/team/app:1"])
    assert result.outcome == outcome, result.detail
    assert len(foreign.seen) == (1 if outcome == "ok" else 0)


def test_bad_realm_host_is_a_config_error_naming_the_field(tmp_path: Path) -> None:
    """A URL where a host name belongs: the error names the field and shows the fix."""
    with pytest.raises(ConfigError) as info:
        settings.load(_app_config(tmp_path, "us.icr.io", ["https://auth.example.com/token"]))
    assert "credentials[0].registry.token_realm_hosts" in str(info.value)
    assert "is not a host name" in str(info.value)
