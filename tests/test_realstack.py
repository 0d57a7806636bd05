"""The real-components harness itself: Docker's registry with token or htpasswd auth, nginx in front of it.

These tests need no sandbox: they sign registry tokens with a fresh ``TokenSigner`` whose certificate the
registry trusts, so a failure here is the harness's (or the component's), not an emulator's.
"""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from realstack import (
    NginxProxy,
    NginxSettings,
    RegistryProcess,
    TokenAuth,
    bcrypt_available,
    manifest_head,
    mint_registry_token,
    push_test_image,
    skopeo,
    token_registry,
)

from rotator.sandbox.tokens import TokenSigner

pytestmark = pytest.mark.real

REALM = "http://127.0.0.1:9/token"  # never called: the registry does not call its token server


@pytest.fixture(scope="module")
def signer() -> TokenSigner:
    return TokenSigner.generate()


@pytest.fixture(scope="module")
def registry(signer: TokenSigner, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """One token-auth registry for the module, trusting ``signer``."""
    with token_registry(tmp_path_factory.mktemp("registry"), signer, REALM) as running:
        yield running


def _push_token(signer: TokenSigner, *repos: str) -> str:
    return mint_registry_token(signer, repositories={repo: ["pull", "push"] for repo in repos})


def _port_closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_token_registry_challenges_and_trusts_the_signer(registry: RegistryProcess, signer: TokenSigner) -> None:
    """The registry challenges with the configured realm and service and accepts the signer's tokens only."""
    ping = httpx.get(f"{registry.url}/v2/")
    assert ping.status_code == 401
    assert ping.headers["www-authenticate"] == f'Bearer realm="{REALM}",service="registry"'
    token = mint_registry_token(signer, repositories={})
    assert httpx.get(f"{registry.url}/v2/", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    stranger = mint_registry_token(TokenSigner.generate(), repositories={})
    assert httpx.get(f"{registry.url}/v2/", headers={"Authorization": f"Bearer {stranger}"}).status_code == 401


@pytest.mark.parametrize(
    ("flavour", "media_type"),
    [
        pytest.param("oci", "application/vnd.oci.image.manifest.v1+json", id="oci"),
        pytest.param("docker", "application/vnd.docker.distribution.manifest.v2+json", id="docker-v2"),
    ],
)
def test_pushed_image_is_what_skopeo_reads(
    registry: RegistryProcess, signer: TokenSigner, tmp_path: Path, flavour: str, media_type: str
) -> None:
    """push_test_image stores a manifest that skopeo (an independent client) reads back by the same digest."""
    repo = f"harness/{flavour}"
    digest = push_test_image(registry.url, repo, "v1", _push_token(signer, repo), flavour=flavour)
    pull = mint_registry_token(signer, repositories={repo: ["pull"]})
    head = manifest_head(registry.url, repo, "v1", pull)
    assert head.status_code == 200
    assert head.headers["content-type"] == media_type
    assert head.headers["docker-content-digest"] == digest
    out = skopeo(
        tmp_path / "home",
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--registry-token",
        pull,
        f"docker://{registry.host}/{repo}:v1",
    )
    assert out.returncode == 0, out.stderr[-500:]
    assert "sha256:" + hashlib.sha256(out.stdout.encode()).hexdigest() == digest
    assert json.loads(out.stdout)["mediaType"] == media_type


def test_registry_that_cannot_start_fails_fast_with_its_log(tmp_path: Path) -> None:
    """A registry that exits at start-up (missing certificate bundle) fails at once, naming the cause."""
    token = TokenAuth(realm=REALM, rootcertbundle=tmp_path / "missing.pem")
    with pytest.raises(RuntimeError, match="exited") as caught:
        RegistryProcess.start(tmp_path / "registry", token=token)
    assert "missing.pem" in str(caught.value)


def test_stop_ends_the_processes_and_frees_the_ports(signer: TokenSigner, tmp_path: Path) -> None:
    """stop() ends registry and nginx; their ports are closed afterwards."""
    with token_registry(tmp_path / "r", signer, REALM) as running:
        proxy = NginxProxy.start(tmp_path / "n", running.url)
        assert httpx.get(f"{proxy.url}/v2/").status_code == 401
        proxy.stop()
    assert running.proc.poll() is not None and proxy.proc is not None and proxy.proc.poll() is not None
    assert _port_closed(running.port) and _port_closed(proxy.port)


def test_nginx_limit_answers_429_like_a_registry(registry: RegistryProcess, tmp_path: Path) -> None:
    """Over the limit nginx answers 429 with Retry-After and a TOOMANYREQUESTS JSON body; all is in the log."""
    with NginxProxy.start(tmp_path / "nginx", registry.url, rate="1r/m", retry_after=7) as proxy:
        first = httpx.get(f"{proxy.url}/v2/")
        second = httpx.head(f"{proxy.url}/v2/team/app/manifests/latest")
        third = httpx.get(f"{proxy.url}/v2/")
        entries = proxy.access_log()
    assert first.status_code == 401 and "retry-after" not in first.headers
    assert (second.status_code, second.headers["retry-after"]) == (429, "7")
    assert third.status_code == 429
    assert third.headers["content-type"] == "application/json"
    assert third.json() == {"errors": [{"code": "TOOMANYREQUESTS", "message": "too many requests"}]}
    assert [(e["method"], e["uri"], e["status"]) for e in entries] == [
        ("GET", "/v2/", 401),
        ("HEAD", "/v2/team/app/manifests/latest", 429),
        ("GET", "/v2/", 429),
    ]
    assert [e["upstream_status"] for e in entries] == ["401", "", ""]  # 429s never reach the registry


def test_nginx_reload_changes_the_limit(registry: RegistryProcess, tmp_path: Path) -> None:
    """reconfigure() rewrites the config and reloads: a limit appears, then goes away, without a restart."""
    with NginxProxy.start(tmp_path / "nginx", registry.url) as proxy:
        master = proxy.proc.pid if proxy.proc else None
        assert {httpx.get(f"{proxy.url}/v2/").status_code for _ in range(5)} == {401}
        proxy.reconfigure(rate="1r/m")
        assert [httpx.get(f"{proxy.url}/v2/").status_code for _ in range(3)] == [401, 429, 429]
        proxy.reconfigure(rate=None)
        assert {httpx.get(f"{proxy.url}/v2/").status_code for _ in range(5)} == {401}
        assert proxy.generation == 2 and proxy.proc is not None and proxy.proc.pid == master
        assert proxy.proc.poll() is None


def test_nginx_passes_large_pushes(registry: RegistryProcess, signer: TokenSigner, tmp_path: Path) -> None:
    """client_max_body_size 0: a multi-megabyte layer pushes through nginx (uploads follow the Host header)."""
    with NginxProxy.start(tmp_path / "nginx", registry.url) as proxy:
        digest = push_test_image(
            proxy.url, "harness/big", "v1", _push_token(signer, "harness/big"), filler_bytes=3 << 20
        )
        statuses = {e["status"] for e in proxy.access_log()}
    assert digest.startswith("sha256:")
    assert 413 not in statuses and 201 in statuses


def test_nginx_basic_auth_in_front_of_an_open_registry(tmp_path: Path) -> None:
    """basic_users makes nginx answer Basic itself; the right password passes, a wrong one gets 401."""
    with RegistryProcess.start(tmp_path / "open") as open_registry:
        push_test_image(open_registry.url, "team/app", "latest", None)
        with NginxProxy.start(tmp_path / "nginx", open_registry.url, basic_users={"puller": "pw-1"}) as proxy:
            anonymous = httpx.get(f"{proxy.url}/v2/")
            good = manifest_head_basic(proxy.url, ("puller", "pw-1"))
            bad = manifest_head_basic(proxy.url, ("puller", "pw-2"))
            log_text = proxy.access_log_path.read_text()
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == 'Basic realm="registry"'
    assert (good.status_code, bad.status_code) == (200, 401)
    assert "pw-1" not in log_text and "Basic" not in log_text  # the log never holds credentials


def manifest_head_basic(url: str, auth: tuple[str, str]) -> httpx.Response:
    accept = "application/vnd.oci.image.manifest.v1+json"
    return httpx.head(f"{url}/v2/team/app/manifests/latest", auth=auth, headers={"Accept": accept})


def test_nginx_challenge_override_applies_to_401_only(
    registry: RegistryProcess, signer: TokenSigner, tmp_path: Path
) -> None:
    """A configured challenge replaces WWW-Authenticate on 401s and adds nothing to other responses."""
    with NginxProxy.start(tmp_path / "nginx", registry.url, challenge='Bearer realm="broken') as proxy:
        unauthorized = httpx.get(f"{proxy.url}/v2/")
        token = mint_registry_token(signer, repositories={})
        authorized = httpx.get(f"{proxy.url}/v2/", headers={"Authorization": f"Bearer {token}"})
    assert unauthorized.headers.get_list("www-authenticate") == ['Bearer realm="broken']
    assert authorized.status_code == 200 and "www-authenticate" not in authorized.headers


def test_nginx_settings_refuse_what_a_config_string_cannot_hold() -> None:
    """Values that would break out of an nginx string are refused before any config is written."""
    with pytest.raises(ValueError, match="must not contain"):
        NginxSettings(challenge="x'; return 200;'")
    with pytest.raises(ValueError, match="must not contain"):
        NginxSettings(extra_headers={"X-A": "$remote_addr"})
    with pytest.raises(ValueError, match="rate"):
        NginxSettings(rate="fast")


@pytest.mark.skipif(not bcrypt_available(), reason="htpasswd mode needs the bcrypt module (not installed)")
def test_htpasswd_registry(tmp_path: Path) -> None:
    """Registry htpasswd mode: Basic challenge, the bcrypt entry admits the right password only."""
    with RegistryProcess.start(tmp_path / "registry", htpasswd={"puller": "pw-1"}) as running:
        challenge = httpx.get(f"{running.url}/v2/").headers.get("www-authenticate", "")
        good = httpx.get(f"{running.url}/v2/", auth=("puller", "pw-1"))
        bad = httpx.get(f"{running.url}/v2/", auth=("puller", "pw-2"))
    assert challenge.startswith("Basic ")
    assert (good.status_code, bad.status_code) == (200, 401)
