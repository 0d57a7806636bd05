"""Real components for tests: Docker's registry 2.8 and nginx on free 127.0.0.1 ports, in a tmp dir.

- ``RegistryProcess.start(workdir, token=TokenAuth(...))``: ``docker-registry serve`` with our own config
  (filesystem storage in ``workdir``, token auth pointing at a realm and a certificate bundle), or
  ``htpasswd={user: password}`` (bcrypt entries; only when the ``bcrypt`` module is importable), or no auth.
- ``NginxProxy.start(workdir, upstream, rate=..., ...)``: nginx in front of it with ``limit_req`` answering
  429 + ``Retry-After`` + a registry JSON error, a JSON access log (``access_log()``), optional Basic auth
  and an optional fixed ``WWW-Authenticate`` on 401s; ``reconfigure(...)`` rewrites the config and reloads.
- ``push_test_image(registry_url, repo, tag, auth)``: a small image through the v2 upload API.
- ``mint_registry_token(signer, ...)``: a token Docker's registry accepts, signed by a ``TokenSigner``.

Start-up waits poll with a deadline (never a fixed sleep); ``stop()`` terminates, then kills.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest

from rotator.sandbox.registry_store import DOCKER_LIST, DOCKER_MANIFEST, IMAGE_FLAVOURS, OCI_INDEX, OCI_MANIFEST
from rotator.sandbox.tokens import TokenSigner

REGISTRY_BIN = "/usr/bin/docker-registry"
NGINX_BIN = "/usr/sbin/nginx"
SKOPEO_BIN = "/usr/bin/skopeo"
START_TIMEOUT_S = 10.0

MANIFEST_ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))


def require(*binaries: str) -> None:
    """Skip the calling test when a real component is not installed (``make test`` installs them)."""
    missing = [b for b in binaries if not os.access(b, os.X_OK)]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    ready: Callable[[], bool], *, what: str, timeout: float = START_TIMEOUT_S, proc: subprocess.Popen[bytes] | None
) -> None:
    """Poll ``ready`` until it is true; fail early when ``proc`` exits, and at the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not ready():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} was not ready within {timeout} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _answers_http(url: str) -> bool:
    try:
        httpx.get(url, timeout=1.0)
    except httpx.TransportError:
        return False
    return True


def _stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def _tail(path: Path, size: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except FileNotFoundError:
        return ""


# -- Docker's registry -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TokenAuth:
    """The registry's ``auth.token`` section: whose tokens it trusts."""

    realm: str
    rootcertbundle: Path
    service: str = "registry"
    issuer: str = "rotator-sandbox"


def bcrypt_available() -> bool:
    try:
        import bcrypt  # noqa: F401
    except ImportError:
        return False
    return True


def bcrypt_htpasswd(users: Mapping[str, str]) -> str:
    import bcrypt

    lines = [f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()}" for user, pw in users.items()]
    return "\n".join(lines) + "\n"


class _Listening:
    """A real component listening on 127.0.0.1:``port``."""

    port: int

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"


@dataclass
class RegistryProcess(_Listening):
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    log_path: Path

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        token: TokenAuth | None = None,
        htpasswd: Mapping[str, str] | None = None,
        port: int | None = None,
    ) -> RegistryProcess:
        """``port``: listen there (to bring a stopped registry back behind the same proxy); default a free one."""
        require(REGISTRY_BIN)
        if token is not None and htpasswd is not None:
            raise ValueError("choose token or htpasswd auth, not both")
        workdir.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(workdir / "data")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
        }
        if token is not None:
            config["auth"] = {
                "token": {
                    "realm": token.realm,
                    "service": token.service,
                    "issuer": token.issuer,
                    "rootcertbundle": str(token.rootcertbundle),
                }
            }
        elif htpasswd is not None:
            if not bcrypt_available():
                pytest.skip("htpasswd mode needs the bcrypt module (registry 2.8 reads bcrypt entries only)")
            path = workdir / "htpasswd"
            path.write_text(bcrypt_htpasswd(htpasswd))
            config["auth"] = {"htpasswd": {"realm": "registry", "path": str(path)}}
        config_path = workdir / "registry.yml"
        config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        log_path = workdir / "registry.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config_path)], stdout=log, stderr=subprocess.STDOUT)
        registry = cls(proc=proc, port=port, workdir=workdir, log_path=log_path)
        try:
            wait_until(lambda: _answers_http(f"{registry.url}/v2/"), what="docker-registry", proc=proc)
        except RuntimeError as exc:
            registry.stop()
            raise RuntimeError(f"{exc}: {_tail(log_path)}") from None
        return registry

    def stop(self) -> None:
        _stop_process(self.proc)

    def __enter__(self) -> RegistryProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- nginx -----------------------------------------------------------------------------------------

# One access-log line per request, JSON: tests parse method, uri and status. No header values (they
# could carry credentials).
_LOG_FORMAT = (
    'log_format registry_json escape=json \'{"time":$msec,"method":"$request_method",'
    '"uri":"$request_uri","status":$status,"upstream_status":"$upstream_status"}\';'
)
_UNQUOTABLE = re.compile(r"[$'\\\n\r]")  # what a single-quoted nginx string cannot hold


@dataclass(kw_only=True)
class NginxSettings:
    rate: str | None = None  # limit_req rate, e.g. "1r/s", "30r/m"; None: no limit
    burst: int = 0
    retry_after: int = 1  # the Retry-After seconds sent with 429
    basic_users: Mapping[str, str] | None = None  # nginx answers Basic itself (registry without auth behind)
    challenge: str | None = None  # replaces WWW-Authenticate on every 401 (e.g. a malformed one)
    extra_headers: Mapping[str, str] = field(default_factory=dict)  # added to every proxied response
    anonymous_ping: bool = False  # answer GET /v2/ with 200 itself (a registry that challenges per repository)

    def __post_init__(self) -> None:
        if self.rate is not None and not re.fullmatch(r"[0-9]+r/[sm]", self.rate):
            raise ValueError("rate is like 10r/s or 30r/m")
        for value in [self.challenge or "", *self.extra_headers, *self.extra_headers.values()]:
            if _UNQUOTABLE.search(value):
                raise ValueError("header values must not contain $ ' \\ or newlines (nginx config syntax)")


def _nginx_without() -> set[str]:
    out = subprocess.run([NGINX_BIN, "-V"], capture_output=True, text=True, timeout=10).stderr
    return set(re.findall(r"--without-(\w+)", out))


def _ssha(password: str) -> str:
    """An RFC 2307 {SSHA} entry, which nginx's auth_basic_user_file reads."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()  # the format nginx reads
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


@dataclass
class NginxProxy(_Listening):
    workdir: Path
    upstream: str
    port: int
    control_port: int
    settings: NginxSettings
    proc: subprocess.Popen[bytes] | None = None
    generation: int = 0
    _without: set[str] = field(default_factory=set)

    @property
    def conf_path(self) -> Path:
        return self.workdir / "nginx.conf"

    @property
    def access_log_path(self) -> Path:
        return self.workdir / "access.log"

    @classmethod
    def start(cls, workdir: Path, upstream: str, **settings: Any) -> NginxProxy:
        require(NGINX_BIN)
        checked = NginxSettings(**settings)  # refuses bad values before anything is written
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "tmp").mkdir(exist_ok=True)
        proxy = cls(
            workdir=workdir,
            upstream=upstream.rstrip("/"),
            port=free_port(),
            control_port=free_port(),
            settings=checked,
            _without=_nginx_without(),
        )
        proxy._write_config()
        log = open(workdir / "nginx.out", "ab")  # noqa: SIM115 - the child owns it
        proxy.proc = subprocess.Popen(
            [NGINX_BIN, "-p", str(workdir), "-c", str(proxy.conf_path)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        try:
            proxy._wait_generation()
        except RuntimeError as exc:
            proxy.stop()
            raise RuntimeError(f"{exc}: {_tail(workdir / 'error.log')}{_tail(workdir / 'nginx.out')}") from None
        return proxy

    def reconfigure(self, **changes: Any) -> None:
        """Rewrite the config with ``changes`` and reload (same -p/-c); returns once new workers serve."""
        values = {**self.settings.__dict__, **changes}
        self.settings = NginxSettings(**values)
        self.generation += 1
        self._write_config()
        old_workers = self._workers()
        result = subprocess.run(
            [NGINX_BIN, "-p", str(self.workdir), "-c", str(self.conf_path), "-s", "reload"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if result.returncode != 0:
            raise RuntimeError(f"nginx reload failed: {result.stderr[-1000:]}")
        self._wait_generation()
        # Old workers keep accepting on the shared socket for a moment: wait until they are gone.
        wait_until(lambda: not (old_workers & self._workers()), what="old nginx workers to exit", proc=self.proc)

    def _workers(self) -> set[int]:
        """Pids of the master's children (its workers)."""
        assert self.proc is not None
        pid = self.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children")
        if children.exists():
            return {int(p) for p in children.read_text().split()}
        found = set()
        for entry in Path("/proc").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.add(int(entry.name))
        return found

    def _wait_generation(self) -> None:
        url = f"http://127.0.0.1:{self.control_port}/generation"

        def serving() -> bool:
            try:
                # A new connection each time: an old worker finishing up must not answer.
                return httpx.get(url, timeout=1.0, headers={"Connection": "close"}).text == str(self.generation)
            except httpx.TransportError:
                return False

        wait_until(serving, what=f"nginx generation {self.generation}", proc=self.proc)

    def access_log(self, since: int = 0) -> list[dict[str, Any]]:
        """Parsed access-log entries after the first ``since`` lines.

        nginx logs a request just after sending its response, so a client can read the log too early.
        A request to an unlogged location first: the single worker serves it only after it has logged
        every request it answered before.
        """
        with contextlib.suppress(httpx.TransportError):
            httpx.get(f"{self.url}/__harness/flush", timeout=5.0, headers={"Connection": "close"})
        try:
            lines = self.access_log_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines[since:] if line.strip()]

    def log_mark(self) -> int:
        """The number of access-log lines so far: pass it to ``access_log(since=...)``."""
        return len(self.access_log())

    def _write_config(self) -> None:
        self.conf_path.write_text(self._render())

    def _render(self) -> str:
        s, d, gen = self.settings, self.workdir, self.generation
        temp = [("client_body", "client_body_temp_path"), ("proxy", "proxy_temp_path")]
        temp += [(m, f"{m}_temp_path") for m in ("fastcgi", "uwsgi", "scgi") if f"http_{m}_module" not in self._without]
        temp_lines = "\n".join(f"    {directive} {d}/tmp/{name};" for name, directive in temp)
        zone = f"limit_req_zone $binary_remote_addr zone=rl{gen}:1m rate={s.rate};" if s.rate else ""
        burst = f" burst={s.burst} nodelay" if s.burst else ""  # nginx refuses burst=0
        limit = f"limit_req zone=rl{gen}{burst};" if s.rate else ""
        basic = ""
        if s.basic_users:
            (d / "htpasswd").write_text("".join(f"{u}:{_ssha(p)}\n" for u, p in s.basic_users.items()))
            basic = f'auth_basic "registry"; auth_basic_user_file {d}/htpasswd;'
        challenge_map = challenge = ""
        if s.challenge is not None:
            challenge_map = f"map $status $challenge_override {{ 401 '{s.challenge}'; default ''; }}"
            challenge = "proxy_hide_header WWW-Authenticate; add_header WWW-Authenticate $challenge_override always;"
        anonymous_ping = ""
        if s.anonymous_ping:
            anonymous_ping = "location = /v2/ { default_type application/json; return 200 '{}'; }"
        extra = " ".join(f"add_header {k} '{v}' always;" for k, v in s.extra_headers.items())
        user = "user root;" if os.geteuid() == 0 else ""
        return f"""
{user}
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
{temp_lines}
    {_LOG_FORMAT}
    access_log off;
    client_max_body_size 0;
    limit_req_status 429;
    {zone}
    {challenge_map}
    server {{
        listen 127.0.0.1:{self.port};
        access_log {d}/access.log registry_json;
        error_page 429 = @toomany;
        location @toomany {{
            default_type application/json;
            add_header Retry-After {s.retry_after} always;
            add_header Docker-Distribution-API-Version registry/2.0 always;
            return 429 '{{"errors":[{{"code":"TOOMANYREQUESTS","message":"too many requests"}}]}}';
        }}
        {anonymous_ping}
        location = /__harness/flush {{
            access_log off;
            return 204;
        }}
        location / {{
            {limit}
            {basic}
            {challenge}
            {extra}
            proxy_pass {self.upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_request_buffering off;
            proxy_buffering off;
        }}
    }}
    server {{
        listen 127.0.0.1:{self.control_port};
        location = /generation {{ return 200 '{gen}'; }}
    }}
}}
"""

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc, signal.SIGTERM)

    def __enter__(self) -> NginxProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- images and tokens -----------------------------------------------------------------------------


def mint_registry_token(
    signer: TokenSigner,
    *,
    repositories: Mapping[str, list[str]],
    service: str = "registry",
    issuer: str = "rotator-sandbox",
    ttl_s: int = 300,
) -> str:
    """A JWT Docker's registry accepts when ``signer``'s certificate is its rootcertbundle."""
    now = int(time.time())
    claims = {
        "iss": issuer,
        "sub": "realstack",
        "aud": service,
        "exp": now + ttl_s,
        "nbf": now - 1,
        "iat": now,
        "jti": uuid.uuid4().hex,
        "access": [{"type": "repository", "name": r, "actions": a} for r, a in repositories.items()],
    }
    return signer.sign(claims)


def build_image(label: str, flavour: str = "oci", *, filler_bytes: int = 0) -> tuple[dict[str, bytes], bytes, str]:
    """(blobs by digest, manifest bytes, manifest media type) of a one-layer image holding ``label``.

    ``filler_bytes`` of random data make the layer that large (to exercise body-size limits).
    """
    manifest_type, config_type, layer_type = IMAGE_FLAVOURS[flavour]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        files = {"label.txt": label.encode()}
        if filler_bytes:
            files["filler.bin"] = secrets.token_bytes(filler_bytes)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    layer = gzip.compress(raw.getvalue(), mtime=0)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"realstack": label}},
            "rootfs": {"type": "layers", "diff_ids": [_digest(raw.getvalue())]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, "digest": _digest(config), "size": len(config)},
            "layers": [{"mediaType": layer_type, "digest": _digest(layer), "size": len(layer)}],
        }
    ).encode()
    return {_digest(config): config, _digest(layer): layer}, manifest, manifest_type


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_test_image(
    registry_url: str,
    repo: str,
    tag: str,
    token_or_creds: str | tuple[str, str] | None = None,
    *,
    flavour: str = "oci",
    filler_bytes: int = 0,
) -> str:
    """Push a small image with the v2 upload API; returns its manifest digest.

    ``token_or_creds``: a bearer token with push rights, or ``(username, password)`` exchanged at the
    registry's token realm for ``pull,push`` (or sent as Basic when the registry asks for Basic), or None.
    """
    blobs, manifest, media_type = build_image(f"{repo}:{tag}", flavour, filler_bytes=filler_bytes)
    base = registry_url.rstrip("/")
    with httpx.Client(timeout=30) as client:
        headers = _push_auth(client, base, repo, token_or_creds)
        for digest, data in blobs.items():
            if client.head(f"{base}/v2/{repo}/blobs/{digest}", headers=headers).status_code == 200:
                continue
            started = client.post(f"{base}/v2/{repo}/blobs/uploads/", headers=headers)
            _expect(started, 202, "start upload")
            location = httpx.URL(urljoin(base + "/", started.headers["location"]))
            done = client.put(
                location.copy_merge_params({"digest": digest}),
                content=data,
                headers={**headers, "Content-Type": "application/octet-stream"},
            )
            _expect(done, 201, "finish upload")
        put = client.put(
            f"{base}/v2/{repo}/manifests/{tag}", content=manifest, headers={**headers, "Content-Type": media_type}
        )
        _expect(put, 201, "put manifest")
    return put.headers.get("docker-content-digest") or _digest(manifest)


def _expect(response: httpx.Response, status: int, what: str) -> None:
    if response.status_code != status:
        raise RuntimeError(f"{what}: {response.status_code} {response.text[:300]}")


def _push_auth(
    client: httpx.Client, base: str, repo: str, token_or_creds: str | tuple[str, str] | None
) -> dict[str, str]:
    if token_or_creds is None:
        return {}
    if isinstance(token_or_creds, str):
        return {"Authorization": f"Bearer {token_or_creds}"}
    user, password = token_or_creds
    ping = client.get(f"{base}/v2/")
    challenge = ping.headers.get("www-authenticate", "")
    if ping.status_code == 200 or challenge.lower().startswith("basic"):
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    # A deliberately small reading of the challenge, independent of rotator.wwwauth.
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    query = {"service": params.get("service", ""), "scope": f"repository:{repo}:pull,push", "account": user}
    reply = client.get(params["realm"], params=query, auth=(user, password))
    _expect(reply, 200, "push token")
    body = reply.json()
    return {"Authorization": f"Bearer {body.get('token') or body['access_token']}"}


def manifest_head(registry_url: str, repo: str, reference: str, token: str | None = None) -> httpx.Response:
    headers = {"Accept": MANIFEST_ACCEPT}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.head(f"{registry_url.rstrip('/')}/v2/{repo}/manifests/{reference}", headers=headers, timeout=10)


@contextlib.contextmanager
def token_registry(workdir: Path, signer: TokenSigner, realm: str) -> Iterator[RegistryProcess]:
    """A registry trusting ``signer`` (its certificate written into ``workdir``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cert = workdir / "token-cert.pem"
    cert.write_bytes(signer.cert_pem())
    with RegistryProcess.start(workdir / "registry", token=TokenAuth(realm=realm, rootcertbundle=cert)) as registry:
        yield registry


def skopeo(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run skopeo with its own HOME (so it never reads or writes the user's auth files)."""
    require(SKOPEO_BIN)
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(home)}
    return subprocess.run([SKOPEO_BIN, *args], capture_output=True, text=True, timeout=timeout, env=env)
