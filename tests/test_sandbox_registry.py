"""The registry emulator speaks Docker's v2 API and token auth well enough for skopeo, a real client."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from rotator.model import SecretStr
from rotator.sandbox.control import SandboxProcess

SKOPEO = shutil.which("skopeo") or "/usr/bin/skopeo"
ALL_MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
IMAGES = [
    pytest.param("team/app:latest", OCI_MANIFEST, id="oci-app"),
    pytest.param("team/worker:1.0", DOCKER_MANIFEST, id="docker-worker"),
]

# -- helpers -----------------------------------------------------------------------------------------
# Keys and tokens travel as SecretStr or inside headers built outside assert expressions, so a failing
# assertion's introspection never prints a credential.


def _key(sbx: SandboxProcess, who: str) -> SecretStr:
    """A seeded key: "target" (a foreign key of the target service ID), "admin" or "outsider"."""
    if who == "target":
        return SecretStr(next(iter(sbx.endpoints["foreign_apikeys"].values())))
    return SecretStr(sbx.endpoints[f"{who}_apikey"])


def _iam_token(sbx: SandboxProcess, apikey: SecretStr) -> SecretStr:
    response = httpx.post(
        f"{sbx.endpoints['iam']}/identity/token",
        data={"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": apikey.reveal()},
    )
    response.raise_for_status()
    return SecretStr(response.json()["access_token"])


def _iam(sbx: SandboxProcess) -> httpx.Client:
    headers = {"Authorization": f"Bearer {_iam_token(sbx, _key(sbx, 'admin')).reveal()}"}
    return httpx.Client(base_url=sbx.endpoints["iam"], headers=headers, timeout=10)


def _create_key(sbx: SandboxProcess, name: str = "registry-test") -> tuple[str, SecretStr]:
    """A fresh API key on the target service ID, made by the admin identity; returns (id, value)."""
    with _iam(sbx) as iam:
        body = {"name": name, "iam_id": sbx.endpoints["service_iam_id"], "account_id": sbx.endpoints["account_id"]}
        response = iam.post("/v1/apikeys", json=body)
        assert response.status_code == 201
        return str(response.json()["id"]), SecretStr(response.json()["apikey"])


def _basic(user: str, password: SecretStr) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password.reveal()}".encode()).decode()


def _token(sbx: SandboxProcess, apikey: SecretStr | None, *scopes: str) -> httpx.Response:
    headers = {"Authorization": _basic("iamapikey", apikey)} if apikey is not None else {}
    params = [("service", "registry"), *[("scope", s) for s in scopes]]
    return httpx.get(sbx.endpoints["registry_realm"], params=params, headers=headers)


def _bearer(sbx: SandboxProcess, apikey: SecretStr | None, *scopes: str) -> dict[str, str]:
    response = _token(sbx, apikey, *scopes)
    assert response.status_code == 200
    return {"Authorization": f"Bearer {response.json()['token']}"}


def _authfile(sbx: SandboxProcess, tmp_path: Path, apikey: SecretStr) -> Path:
    """A docker config with only the ``auth`` field, as a pull secret holds it (all skopeo reads)."""
    auth = base64.b64encode(f"iamapikey:{apikey.reveal()}".encode()).decode()
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"auths": {sbx.endpoints["registry_host"]: {"auth": auth}}}))
    return path


def _skopeo(
    sbx: SandboxProcess, tmp_path: Path, apikey: SecretStr, image: str, *args: str
) -> subprocess.CompletedProcess[str]:
    authfile = _authfile(sbx, tmp_path, apikey)
    target = f"docker://{sbx.endpoints['registry_host']}/{image}"
    command = [SKOPEO, "inspect", *args, "--tls-verify=false", "--authfile", str(authfile), target]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=_skopeo_env(tmp_path))


def _skopeo_env(tmp_path: Path) -> dict[str, str]:
    """A private HOME so skopeo's blob-info cache and auth lookups never leak between tests."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}


def _pulls(sbx: SandboxProcess, tmp_path: Path, apikey: SecretStr, image: str) -> bool:
    """Whether ``skopeo inspect --raw`` reads the manifest with this key."""
    return _skopeo(sbx, tmp_path, apikey, image, "--raw").returncode == 0


def _error_code(response: httpx.Response) -> str:
    body: dict[str, Any] = response.json()
    return str(body["errors"][0]["code"])


def _admin(sbx: SandboxProcess, path: str, body: dict[str, Any]) -> None:
    sbx.admin.post(f"/registry/{path}", json=body).raise_for_status()


def real(test: Any) -> Any:
    """Marks a test that drives skopeo, the independent registry client."""
    skip = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed (make system-deps)")
    return pytest.mark.real(skip(test))


# -- skopeo, the independent client ------------------------------------------------------------------


@real
@pytest.mark.parametrize(("image", "media_type"), IMAGES)
def test_skopeo_inspect_raw_reads_each_seeded_manifest(
    shared_sandbox: SandboxProcess, tmp_path: Path, image: str, media_type: str
) -> None:
    """skopeo --raw with a live key of the target service ID gets each seeded manifest in its own format."""
    result = _skopeo(shared_sandbox, tmp_path, _key(shared_sandbox, "target"), image, "--raw")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["mediaType"] == media_type


@real
@pytest.mark.parametrize(("image", "media_type"), IMAGES)
def test_skopeo_inspect_reads_config_blob_and_tags(
    shared_sandbox: SandboxProcess, tmp_path: Path, image: str, media_type: str
) -> None:
    """Without --raw skopeo also reads the config blob and the tags list, and the digests agree."""
    result = _skopeo(shared_sandbox, tmp_path, _key(shared_sandbox, "target"), image)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    repo, _, tag = image.partition(":")
    assert info["RepoTags"] == [tag]
    assert info["Labels"]["org.example.repository"] == repo
    assert info["Architecture"] == "amd64" and len(info["Layers"]) == 1
    raw = _skopeo(shared_sandbox, tmp_path, _key(shared_sandbox, "target"), image, "--raw").stdout
    assert info["Digest"] == "sha256:" + hashlib.sha256(raw.encode()).hexdigest()


@real
@pytest.mark.parametrize("revoke", ["delete", "disable"])
def test_skopeo_fails_once_the_key_is_revoked(sandbox: SandboxProcess, tmp_path: Path, revoke: str) -> None:
    """A freshly minted key pulls; after it is deleted or disabled in IAM the very next pull fails."""
    key_id, value = _create_key(sandbox)
    assert _pulls(sandbox, tmp_path, value, "team/app:latest")
    with _iam(sandbox) as iam:
        path = f"/v1/apikeys/{key_id}"
        response = iam.delete(path) if revoke == "delete" else iam.post(f"{path}/disable")
        assert response.status_code == 204
    result = _skopeo(sandbox, tmp_path, value, "team/app:latest", "--raw")
    assert result.returncode != 0
    leaked = value.reveal() in result.stderr
    assert not leaked, "skopeo's error names the key"
    assert _token(sandbox, value, "repository:team/app:pull").status_code == 400


@real
def test_deny_new_keys_fails_keys_minted_after_the_switch(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """With deny-new-keys on, a key minted afterwards fails while an older key still pulls; off restores it."""
    _admin(sandbox, "deny-new-keys", {"enabled": True})
    _, fresh = _create_key(sandbox)
    assert not _pulls(sandbox, tmp_path, fresh, "team/worker:1.0")
    assert _pulls(sandbox, tmp_path, _key(sandbox, "target"), "team/worker:1.0")
    _admin(sandbox, "deny-new-keys", {"enabled": False})
    assert _pulls(sandbox, tmp_path, fresh, "team/worker:1.0")


@real
def test_unquoted_challenge_like_cp_icr_io_is_served_and_defeats_skopeo(
    sandbox: SandboxProcess, tmp_path: Path
) -> None:
    """The unquoted cp.icr.io challenge style is served verbatim; skopeo 1.9 reads its realm as "http".

    That is why rotator's verifier parses challenges leniently itself instead of relying on a client library.
    """
    _admin(sandbox, "challenge", {"style": "unquoted"})
    response = httpx.get(f"{sandbox.endpoints['registry']}/v2/team/app/manifests/latest")
    realm = sandbox.endpoints["registry_realm"]
    expected = f"Bearer realm={realm}, service=registry, scope=repository:team/app:pull"
    assert response.headers["WWW-Authenticate"] == expected
    assert not _pulls(sandbox, tmp_path, _key(sandbox, "target"), "team/app:latest")
    _admin(sandbox, "challenge", {"style": "quoted"})
    assert _pulls(sandbox, tmp_path, _key(sandbox, "target"), "team/app:latest")


@real
def test_a_malformed_challenge_breaks_a_real_client(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """An overridden WWW-Authenticate value is served verbatim, and skopeo cannot get a token from it."""
    _admin(sandbox, "challenge", {"header": "Bearer service=registry"})
    response = httpx.get(f"{sandbox.endpoints['registry']}/v2/")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer service=registry"
    assert not _pulls(sandbox, tmp_path, _key(sandbox, "target"), "team/app:latest")


@real
def test_admin_pushes_with_skopeo_copy_and_the_target_pulls(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """skopeo copy with the admin key pushes through the upload API ; the puller reads the copy."""
    host = sandbox.endpoints["registry_host"]
    authfile = _authfile(sandbox, tmp_path, _key(sandbox, "admin"))
    command = [SKOPEO, "copy", "--src-tls-verify=false", "--dest-tls-verify=false", "--authfile", str(authfile)]
    command += [f"docker://{host}/team/worker:1.0", f"docker://{host}/team/copied:2.0"]
    copied = subprocess.run(command, capture_output=True, text=True, timeout=60, env=_skopeo_env(tmp_path))
    assert copied.returncode == 0, copied.stderr
    result = _skopeo(sandbox, tmp_path, _key(sandbox, "target"), "team/copied:2.0")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["RepoTags"] == ["2.0"]


# -- tokens ------------------------------------------------------------------------------------------


def test_token_verifies_with_the_signer_certificate(shared_sandbox: SandboxProcess) -> None:
    """The token is an RS256 JWT Docker's registry accepts: x5c in standard base64, string aud, access list."""
    response = _token(shared_sandbox, _key(shared_sandbox, "target"), "repository:team/app:pull")
    assert response.status_code == 200
    body = response.json()
    assert body["token"] == body["access_token"] and body["expires_in"] >= 60
    assert body["issued_at"].endswith("Z")
    cert = x509.load_pem_x509_certificate(Path(shared_sandbox.endpoints["registry_token_cert"]).read_bytes())
    claims = jwt.decode(
        body["token"],
        cert.public_key(),  # type: ignore[arg-type]
        algorithms=["RS256"],
        audience="registry",
        issuer=shared_sandbox.endpoints["registry_token_issuer"],
    )
    header = jwt.get_unverified_header(body["token"])
    assert header["alg"] == "RS256"
    assert base64.b64decode(header["x5c"][0], validate=True) == cert.public_bytes(serialization.Encoding.DER)
    assert isinstance(claims["aud"], str)
    assert {"exp", "nbf", "iat", "jti", "sub"} <= set(claims)
    assert claims["sub"] == shared_sandbox.endpoints["service_iam_id"]
    assert claims["access"] == [{"type": "repository", "name": "team/app", "actions": ["pull"]}]


@pytest.mark.parametrize(
    ("who", "scopes", "expected"),
    [
        pytest.param(
            "target",
            ["repository:team/app:pull,push", "repository:other/x:pull"],
            [{"type": "repository", "name": "team/app", "actions": ["pull"]}],
            id="target-pull-only-team",
        ),
        pytest.param(
            "admin",
            ["repository:other/x:pull,push repository:team/app:pull"],
            [
                {"type": "repository", "name": "other/x", "actions": ["pull", "push"]},
                {"type": "repository", "name": "team/app", "actions": ["pull"]},
            ],
            id="admin-space-separated",
        ),
        pytest.param("outsider", ["repository:team/app:pull"], [], id="outsider-nothing"),
        pytest.param("anonymous", ["repository:team/app:pull"], [], id="anonymous-nothing"),
        pytest.param("target", ["registry:catalog:*"], [], id="catalog-never-granted"),
    ],
)
def test_token_access_is_the_intersection_of_request_and_grants(
    shared_sandbox: SandboxProcess, who: str, scopes: list[str], expected: list[dict[str, Any]]
) -> None:
    """Missing rights are not an error at the token service: the token carries only what is granted."""
    keys = {
        "target": _key(shared_sandbox, "target"),
        "admin": _key(shared_sandbox, "admin"),
        "outsider": _key(shared_sandbox, "outsider"),
        "anonymous": None,
    }
    response = _token(shared_sandbox, keys[who], *scopes)
    assert response.status_code == 200
    claims = jwt.decode(response.json()["token"], options={"verify_signature": False})
    assert claims["access"] == expected


def test_outsider_token_is_denied_at_the_manifest(sandbox: SandboxProcess) -> None:
    """An empty-access token gets 403 DENIED (ICR style), or 401 insufficient_scope once switched."""
    headers = _bearer(sandbox, _key(sandbox, "outsider"), "repository:team/app:pull")
    url = f"{sandbox.endpoints['registry']}/v2/team/app/manifests/latest"
    denied = httpx.get(url, headers=headers)
    assert denied.status_code == 403 and _error_code(denied) == "DENIED"
    _admin(sandbox, "insufficient-scope", {"status": 401})
    challenged = httpx.get(url, headers=headers)
    assert challenged.status_code == 401 and _error_code(challenged) == "UNAUTHORIZED"
    assert 'error="insufficient_scope"' in challenged.headers["WWW-Authenticate"]
    assert 'scope="repository:team/app:pull"' in challenged.headers["WWW-Authenticate"]


def test_granting_the_outsider_lets_it_pull(sandbox: SandboxProcess) -> None:
    """Grants set through the admin API take effect on the next token request."""
    outsider = f"iam-{sandbox.endpoints['outsider_service_id']}"
    grants = {"grants": [{"pattern": "team/w*", "actions": ["pull"]}]}
    sandbox.admin.put(f"/registry/grants/{outsider}", json=grants).raise_for_status()
    headers = _bearer(sandbox, _key(sandbox, "outsider"), "repository:team/worker:pull")
    headers["Accept"] = ALL_MANIFEST_TYPES
    assert (
        httpx.head(f"{sandbox.endpoints['registry']}/v2/team/worker/manifests/1.0", headers=headers).status_code == 200
    )
    bad = sandbox.admin.put(f"/registry/grants/{outsider}", json={"grants": [{"pattern": "x"}]})
    assert bad.status_code == 400 and "actions" in bad.json()["error"]


def test_bad_credentials_status_is_400_like_icr_or_401_when_switched(sandbox: SandboxProcess) -> None:
    """An unknown key gets 400 UNAUTHORIZED by default and 401 with a Basic challenge after the switch."""
    first = _token(sandbox, SecretStr("not-a-real-key"), "repository:team/app:pull")
    assert first.status_code == 400 and _error_code(first) == "UNAUTHORIZED"
    _admin(sandbox, "bad-credentials", {"status": 401})
    second = _token(sandbox, SecretStr("not-a-real-key"), "repository:team/app:pull")
    assert second.status_code == 401 and _error_code(second) == "UNAUTHORIZED"
    assert second.headers["WWW-Authenticate"].startswith("Basic ")
    assert sandbox.admin.post("/registry/bad-credentials", json={"status": 500}).status_code == 400


def test_oauth2_password_grant_and_iambearer_are_accepted(shared_sandbox: SandboxProcess) -> None:
    """POST with grant_type=password, and Basic iambearer:<IAM access token>, both yield pull tokens."""
    form = {
        "grant_type": "password",
        "service": "registry",
        "client_id": "rotator-test",
        "scope": "repository:team/app:pull",
        "username": "iamapikey",
        "password": _key(shared_sandbox, "target").reveal(),
    }
    posted = httpx.post(shared_sandbox.endpoints["registry_realm"], data=form)
    assert posted.status_code == 200
    assert posted.json()["scope"] == "repository:team/app:pull"
    iam_token = _iam_token(shared_sandbox, _key(shared_sandbox, "target"))
    bearer = httpx.get(
        shared_sandbox.endpoints["registry_realm"],
        params={"service": "registry", "scope": "repository:team/worker:pull"},
        headers={"Authorization": _basic("iambearer", iam_token)},
    )
    assert bearer.status_code == 200
    claims = jwt.decode(bearer.json()["token"], options={"verify_signature": False})
    assert claims["access"][0]["name"] == "team/worker"


# -- the v2 API --------------------------------------------------------------------------------------


def test_v2_ping_challenges_then_answers_with_a_token(shared_sandbox: SandboxProcess) -> None:
    """GET /v2/ answers 401 with the ICR-style Bearer challenge, then 200 {} with any valid token."""
    url = f"{shared_sandbox.endpoints['registry']}/v2/"
    challenged = httpx.get(url)
    assert challenged.status_code == 401
    assert challenged.headers["WWW-Authenticate"] == (
        f'Bearer realm="{shared_sandbox.endpoints["registry_realm"]}",service="registry"'
    )
    assert challenged.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert shared_sandbox.endpoints["registry_service"] == "registry"
    ok = httpx.get(url, headers=_bearer(shared_sandbox, None))
    assert ok.status_code == 200 and ok.json() == {}


@pytest.mark.parametrize(("image", "media_type"), IMAGES)
def test_head_returns_digest_and_length_without_a_body(
    shared_sandbox: SandboxProcess, image: str, media_type: str
) -> None:
    """HEAD carries the same Docker-Content-Digest, Content-Type and Content-Length as GET, and no body."""
    repo, _, tag = image.partition(":")
    headers = _bearer(shared_sandbox, _key(shared_sandbox, "target"), f"repository:{repo}:pull")
    headers["Accept"] = ALL_MANIFEST_TYPES
    url = f"{shared_sandbox.endpoints['registry']}/v2/{repo}/manifests/{tag}"
    head = httpx.head(url, headers=headers)
    got = httpx.get(url, headers=headers)
    assert head.status_code == got.status_code == 200
    assert head.content == b""
    digest = "sha256:" + hashlib.sha256(got.content).hexdigest()
    assert head.headers["Docker-Content-Digest"] == got.headers["Docker-Content-Digest"] == digest
    assert head.headers["Content-Type"] == got.headers["Content-Type"] == media_type
    assert int(head.headers["Content-Length"]) == len(got.content)
    by_digest = httpx.head(f"{shared_sandbox.endpoints['registry']}/v2/{repo}/manifests/{digest}", headers=headers)
    assert by_digest.status_code == 200


@pytest.mark.parametrize(
    ("path", "accept", "status", "answer"),
    [
        pytest.param("team/app/manifests/latest", None, 404, "MANIFEST_UNKNOWN", id="oci-without-accept"),
        pytest.param("team/app/manifests/latest", DOCKER_MANIFEST, 404, "MANIFEST_UNKNOWN", id="oci-docker-only"),
        pytest.param("team/app/manifests/latest", OCI_MANIFEST, 200, OCI_MANIFEST, id="oci-with-accept"),
        pytest.param("team/worker/manifests/1.0", None, 200, SCHEMA1, id="docker-by-tag-rewritten-to-schema1"),
        pytest.param("team/worker/manifests/1.0", "*/*", 200, SCHEMA1, id="docker-wildcard-is-no-accept"),
        pytest.param("team/worker/manifests/1.0", DOCKER_MANIFEST, 200, DOCKER_MANIFEST, id="docker-with-accept"),
    ],
)
def test_manifest_accept_negotiation_matches_docker_registry(
    shared_sandbox: SandboxProcess, path: str, accept: str | None, status: int, answer: str
) -> None:
    """Accept handling as measured on Docker's registry 2.8: OCI without its type is 404, Docker v2 becomes schema 1."""
    scopes = "repository:team/app:pull repository:team/worker:pull"
    headers = _bearer(shared_sandbox, _key(shared_sandbox, "target"), scopes)
    if accept:
        headers["Accept"] = accept
    response = httpx.get(f"{shared_sandbox.endpoints['registry']}/v2/{path}", headers=headers)
    assert response.status_code == status
    if status == 200:
        assert response.headers["Content-Type"] == answer
    else:
        assert _error_code(response) == answer


def test_schema1_rewrite_is_a_libtrust_signed_manifest(shared_sandbox: SandboxProcess) -> None:
    """The schema 1 answer carries a valid ES256 JWS and its digest is that of the unsigned payload."""
    headers = _bearer(shared_sandbox, _key(shared_sandbox, "target"), "repository:team/worker:pull")
    url = f"{shared_sandbox.endpoints['registry']}/v2/team/worker/manifests/1.0"
    response = httpx.get(url, headers=headers)
    head = httpx.head(url, headers=headers)
    document = json.loads(response.content)
    assert document["schemaVersion"] == 1 and document["tag"] == "1.0"
    v2 = httpx.get(url, headers={**headers, "Accept": DOCKER_MANIFEST}).json()
    assert document["fsLayers"] == [{"blobSum": layer["digest"]} for layer in reversed(v2["layers"])]
    signature = document["signatures"][0]
    protected = json.loads(_unb64url(signature["protected"]))
    payload = response.content[: protected["formatLength"]] + _unb64url(protected["formatTail"])
    assert json.loads(payload) == {k: v for k, v in document.items() if k != "signatures"}
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()
    assert response.headers["Docker-Content-Digest"] == head.headers["Docker-Content-Digest"] == digest
    jwk = signature["header"]["jwk"]
    x, y = (int.from_bytes(_unb64url(jwk[c]), "big") for c in ("x", "y"))
    public_key = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    raw = _unb64url(signature["signature"])
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    signed = f"{signature['protected']}.{base64.urlsafe_b64encode(payload).decode().rstrip('=')}".encode()
    public_key.verify(der, signed, ec.ECDSA(hashes.SHA256()))  # raises InvalidSignature when wrong


def test_docker_manifest_without_history_cannot_become_schema1(sandbox: SandboxProcess) -> None:
    """A Docker v2 image whose config lacks history is 400 MANIFEST_INVALID by tag without Accept, 200 by digest."""
    digest = _push_raw(sandbox, "team/plain", "v1", DOCKER_MANIFEST)
    headers = _bearer(sandbox, _key(sandbox, "target"), "repository:team/plain:pull")
    base = f"{sandbox.endpoints['registry']}/v2/team/plain/manifests"
    by_tag = httpx.get(f"{base}/v1", headers=headers)
    assert by_tag.status_code == 400 and _error_code(by_tag) == "MANIFEST_INVALID"
    by_digest = httpx.get(f"{base}/{digest}", headers=headers)
    assert by_digest.status_code == 200 and by_digest.headers["Content-Type"] == DOCKER_MANIFEST


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


MALFORMED = [
    # (method, path, auth, status, code); auth: target/admin key, a raw header, or user:password
    pytest.param("GET", "/oauth/token?service=registry&scope=garbage", "target", 400, "UNSUPPORTED", id="bad-scope"),
    pytest.param(
        "GET", "/oauth/token?scope=repository:Team/App:pull", "target", 400, "UNSUPPORTED", id="bad-scope-name"
    ),
    pytest.param("GET", "/oauth/token?service=elsewhere", "target", 400, "UNSUPPORTED", id="wrong-service"),
    pytest.param("GET", "/oauth/token?service=registry", "Basic !!!not-base64", 400, "UNAUTHORIZED", id="bad-basic"),
    pytest.param(
        "GET",
        "/oauth/token?service=registry",
        "Basic " + base64.b64encode(b"nocolon").decode(),
        400,
        "UNAUTHORIZED",
        id="basic-without-colon",
    ),
    pytest.param("GET", "/oauth/token?service=registry", "Bearer abc", 400, "UNAUTHORIZED", id="bearer-at-token"),
    pytest.param("GET", "/oauth/token", "user:wrong", 400, "UNAUTHORIZED", id="wrong-username"),
    pytest.param("PUT", "/oauth/token", None, 405, "UNSUPPORTED", id="token-wrong-method"),
    pytest.param("POST", "/oauth/token", None, 400, "UNSUPPORTED", id="oauth-post-without-fields"),
    pytest.param("GET", "/v2/team/app/manifests/latest", None, 401, "UNAUTHORIZED", id="no-auth"),
    pytest.param("GET", "/v2/team/app/manifests/latest", "Bearer not.a.jwt", 401, "UNAUTHORIZED", id="bad-token"),
    pytest.param("DELETE", "/v2/team/app/manifests/latest", "admin", 405, "UNSUPPORTED", id="delete-manifest"),
    pytest.param("POST", "/v2/", None, 405, "UNSUPPORTED", id="post-ping"),
    pytest.param("PATCH", "/v2/team/app/tags/list", "admin", 405, "UNSUPPORTED", id="patch-tags"),
    pytest.param("GET", "/v2/team/nope/manifests/latest", "target", 404, "NAME_UNKNOWN", id="unknown-repo"),
    pytest.param("GET", "/v2/team/app/manifests/nope", "target", 404, "MANIFEST_UNKNOWN", id="unknown-tag"),
    pytest.param("GET", "/v2/team/app/manifests/sha256:zzz", "target", 400, "DIGEST_INVALID", id="bad-digest"),
    pytest.param("GET", "/v2/team/app/blobs/sha256:1234", "target", 400, "DIGEST_INVALID", id="bad-blob-digest"),
    pytest.param("GET", "/v2/team/app/blobs/" + "sha256:" + "0" * 64, "target", 404, "BLOB_UNKNOWN", id="unknown-blob"),
    pytest.param("GET", "/v2/Team/App/tags/list", "target", 400, "NAME_INVALID", id="bad-name"),
    pytest.param("GET", "/v2/team/app/tags/list?n=many", "target", 400, "PAGINATION_NUMBER_INVALID", id="bad-n"),
    pytest.param("GET", "/v2/no-such-endpoint", "target", 404, "NAME_UNKNOWN", id="unknown-path"),
    pytest.param("PUT", "/v2/team/x/manifests/v1", "admin", 400, "MANIFEST_INVALID", id="manifest-not-json"),
    pytest.param("PATCH", "/v2/team/x/blobs/uploads/nope", "admin", 404, "BLOB_UPLOAD_UNKNOWN", id="unknown-upload"),
]


@pytest.mark.parametrize(("method", "path", "auth", "status", "code"), MALFORMED)
def test_malformed_requests_get_registry_errors_never_500(
    shared_sandbox: SandboxProcess, method: str, path: str, auth: str | None, status: int, code: str
) -> None:
    """Each malformed request gets the registry's status and error shape, never a 500."""
    match = re.match(r"/v2/(.+?)/(?:manifests|blobs|tags)/", path)
    scope = f"repository:{match[1].lower() if match else 'team/app'}:pull,push"
    if auth == "target":
        headers = {"Authorization": _basic("iamapikey", _key(shared_sandbox, "target"))}
        if path.startswith("/v2/"):
            headers = _bearer(shared_sandbox, _key(shared_sandbox, "target"), scope)
    elif auth == "admin":
        headers = _bearer(shared_sandbox, _key(shared_sandbox, "admin"), scope)
    elif auth and auth.startswith(("Basic ", "Bearer ")):
        headers = {"Authorization": auth}
    elif auth:
        user, _, password = auth.partition(":")
        headers = {"Authorization": _basic(user, SecretStr(password))}
    else:
        headers = {}
    response = httpx.request(method, f"{shared_sandbox.endpoints['registry']}{path}", headers=headers, content=b"{")
    assert response.status_code == status
    assert _error_code(response) == code
    assert response.headers["Content-Type"].startswith("application/json")


def test_missing_token_challenge_names_the_scope(shared_sandbox: SandboxProcess) -> None:
    """A repository request without a token is challenged with the scope it needs (pull, or pull,push)."""
    base = shared_sandbox.endpoints["registry"]
    pull = httpx.head(f"{base}/v2/team/app/manifests/latest")
    assert pull.status_code == 401 and pull.content == b""
    assert pull.headers["WWW-Authenticate"].endswith(',scope="repository:team/app:pull"')
    push = httpx.post(f"{base}/v2/team/app/blobs/uploads/")
    assert push.headers["WWW-Authenticate"].endswith(',scope="repository:team/app:pull,push"')


def test_rate_limit_fault_answers_toomanyrequests_with_retry_after(sandbox: SandboxProcess) -> None:
    """An injected throttle answers 429 TOOMANYREQUESTS with Retry-After in the registry's shape."""
    sandbox.set_faults("registry", {"path_prefix": "/v2/", "throttle_seconds": 30, "retry_after": 7})
    response = httpx.head(f"{sandbox.endpoints['registry']}/v2/team/app/manifests/latest")
    assert response.status_code == 429 and response.headers["Retry-After"] == "7"
    assert _error_code(httpx.get(f"{sandbox.endpoints['registry']}/v2/")) == "TOOMANYREQUESTS"


def test_tags_list_paginates_with_a_link_header(sandbox: SandboxProcess) -> None:
    """tags/list honours n and last, and announces the next page in a Link header."""
    for tag in ("a", "b", "c"):
        body = {"repository": f"team/many:{tag}", "format": "docker"}
        assert sandbox.admin.post("/registry/images", json=body).status_code == 201
    headers = _bearer(sandbox, _key(sandbox, "target"), "repository:team/many:pull")
    url = f"{sandbox.endpoints['registry']}/v2/team/many/tags/list"
    first = httpx.get(url, params={"n": 2}, headers=headers)
    assert first.json() == {"name": "team/many", "tags": ["a", "b"]}
    assert first.headers["Link"] == '</v2/team/many/tags/list?n=2&last=b>; rel="next"'
    rest = httpx.get(url, params={"n": 2, "last": "b"}, headers=headers)
    assert rest.json()["tags"] == ["c"] and "Link" not in rest.headers


# -- pushing -----------------------------------------------------------------------------------------


def _push_raw(sbx: SandboxProcess, repo: str, tag: str, media_type: str = OCI_MANIFEST) -> str:
    """Push config + layer (one chunked, one monolithic) and a manifest by the raw upload API."""
    client = httpx.Client(base_url=sbx.endpoints["registry"], timeout=10)
    client.headers.update(_bearer(sbx, _key(sbx, "admin"), f"repository:{repo}:pull,push"))
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    layer = b"not really a tarball"
    digests = {}
    for data in (config.encode(), layer):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        digests[data] = digest
        if data == layer:
            done = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=data)
        else:
            started = client.post(f"/v2/{repo}/blobs/uploads/")
            assert started.status_code == 202 and started.headers["Range"] == "0-0"
            patched = client.patch(started.headers["Location"], content=data[:10])
            assert patched.status_code == 202 and patched.headers["Range"] == "0-9"
            done = client.put(patched.headers["Location"], params={"digest": digest}, content=data[10:])
        assert done.status_code == 201 and done.headers["Docker-Content-Digest"] == digest
    oci = media_type == OCI_MANIFEST
    config_type = (
        "application/vnd.oci.image.config.v1+json" if oci else "application/vnd.docker.container.image.v1+json"
    )
    layer_type = (
        "application/vnd.oci.image.layer.v1.tar+gzip" if oci else "application/vnd.docker.image.rootfs.diff.tar.gzip"
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config_type, "digest": digests[config.encode()], "size": len(config)},
        "layers": [{"mediaType": layer_type, "digest": digests[layer], "size": len(layer)}],
    }
    body = json.dumps(manifest).encode()
    put = client.put(f"/v2/{repo}/manifests/{tag}", content=body, headers={"Content-Type": media_type})
    assert put.status_code == 201
    client.close()
    return str(put.headers["Docker-Content-Digest"])


def test_raw_upload_api_push_then_pull(sandbox: SandboxProcess) -> None:
    """The admin pushes blobs (chunked and monolithic) and a manifest; the target key pulls it by digest."""
    digest = _push_raw(sandbox, "team/pushed", "v1")
    headers = _bearer(sandbox, _key(sandbox, "target"), "repository:team/pushed:pull")
    headers["Accept"] = OCI_MANIFEST
    got = httpx.get(f"{sandbox.endpoints['registry']}/v2/team/pushed/manifests/{digest}", headers=headers)
    assert got.status_code == 200 and got.headers["Docker-Content-Digest"] == digest


def test_blob_mount_links_a_blob_from_another_repository(sandbox: SandboxProcess) -> None:
    """POST uploads with mount/from links an existing blob (201); an unknown one starts an upload (202)."""
    base = sandbox.endpoints["registry"]
    scopes = ("repository:team/mounted:pull,push", "repository:team/app:pull")
    headers = _bearer(sandbox, _key(sandbox, "admin"), *scopes)
    manifest = httpx.get(f"{base}/v2/team/app/manifests/latest", headers={**headers, "Accept": OCI_MANIFEST})
    layer = manifest.json()["layers"][0]["digest"]
    params = {"mount": layer, "from": "team/app"}
    mounted = httpx.post(f"{base}/v2/team/mounted/blobs/uploads/", params=params, headers=headers)
    assert mounted.status_code == 201 and mounted.headers["Location"] == f"/v2/team/mounted/blobs/{layer}"
    blob = httpx.head(f"{base}/v2/team/mounted/blobs/{layer}", headers=headers)
    assert blob.status_code == 200 and blob.headers["Docker-Content-Digest"] == layer
    params["mount"] = "sha256:" + "2" * 64
    fallback = httpx.post(f"{base}/v2/team/mounted/blobs/uploads/", params=params, headers=headers)
    assert fallback.status_code == 202 and fallback.headers["Location"].startswith("/v2/team/mounted/blobs/uploads/")


def test_a_layer_larger_than_the_request_limit_uploads_in_one_patch(sandbox: SandboxProcess) -> None:
    """A 9 MiB layer (over the sandbox's 8 MiB request limit) streams through PATCH and verifies on PUT."""
    headers = _bearer(sandbox, _key(sandbox, "admin"), "repository:team/big:pull,push")
    base = sandbox.endpoints["registry"]
    layer = bytes(range(256)) * (9 * 4096)
    digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    started = httpx.post(f"{base}/v2/team/big/blobs/uploads/", headers=headers)
    patched = httpx.patch(base + started.headers["Location"], content=layer, headers=headers, timeout=30)
    assert patched.status_code == 202 and patched.headers["Range"] == f"0-{len(layer) - 1}"
    done = httpx.put(base + patched.headers["Location"], params={"digest": digest}, headers=headers)
    assert done.status_code == 201
    blob = httpx.head(f"{base}/v2/team/big/blobs/{digest}", headers=headers)
    assert int(blob.headers["Content-Length"]) == len(layer)


def test_target_key_cannot_push(sandbox: SandboxProcess) -> None:
    """The target service ID holds pull only, so starting an upload is denied."""
    headers = _bearer(sandbox, _key(sandbox, "target"), "repository:team/app:pull,push")
    response = httpx.post(f"{sandbox.endpoints['registry']}/v2/team/app/blobs/uploads/", headers=headers)
    assert response.status_code == 403 and _error_code(response) == "DENIED"


def test_manifest_with_unknown_blobs_or_wrong_digest_is_rejected(sandbox: SandboxProcess) -> None:
    """A manifest naming blobs the repository lacks, or PUT under a digest it does not have, is a 400."""
    headers = _bearer(sandbox, _key(sandbox, "admin"), "repository:team/bad:pull,push")
    headers["Content-Type"] = OCI_MANIFEST
    missing = "sha256:" + "1" * 64
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"digest": missing}, "layers": []})
    url = f"{sandbox.endpoints['registry']}/v2/team/bad/manifests"
    unknown = httpx.put(f"{url}/v1", content=body, headers=headers)
    assert unknown.status_code == 400 and _error_code(unknown) == "MANIFEST_BLOB_UNKNOWN"
    wrong = httpx.put(f"{url}/{missing}", content=body, headers=headers)
    assert wrong.status_code == 400 and _error_code(wrong) == "DIGEST_INVALID"


# -- persistence -------------------------------------------------------------------------------------


def test_pushed_images_grants_and_switches_survive_a_restart(tmp_path: Path) -> None:
    """With --state-dir, pushed images, grants and settings come back after the sandbox restarts."""
    state = tmp_path / "state"
    with SandboxProcess.start(state_dir=state) as first:
        digest = _push_raw(first, "team/kept", "v1")
        outsider = f"iam-{first.endpoints['outsider_service_id']}"
        first.admin.put(f"/registry/grants/{outsider}", json={"grants": [{"pattern": "*", "actions": ["pull"]}]})
        _admin(first, "bad-credentials", {"status": 401})
    with SandboxProcess.start(state_dir=state) as second:
        headers = _bearer(second, _key(second, "outsider"), "repository:team/kept:pull")
        headers["Accept"] = OCI_MANIFEST
        got = httpx.head(f"{second.endpoints['registry']}/v2/team/kept/manifests/v1", headers=headers)
        assert got.status_code == 200 and got.headers["Docker-Content-Digest"] == digest
        assert _token(second, SecretStr("not-a-real-key")).status_code == 401
