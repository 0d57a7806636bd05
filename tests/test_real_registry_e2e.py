"""Rotations proven against Docker's real registry (2.8, token auth) with nginx in front.

The registry's token realm is the sandbox registry emulator's ``/oauth/token``: it checks every IBM
API key live in the IAM emulator and signs tokens the real registry trusts, so keys that rotator mints
and revokes in IAM open and close a real registry. The credential's ``registry.server`` is nginx's
``127.0.0.1:PORT``: that is the key written into the secrets and the host skopeo pulls from. IAM and
Kubernetes are the sandbox's. nginx's access log is the ground truth for what the verifier sent; the
sandbox's request log counts token requests (the realm is not behind nginx).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from logtail import LogTail
from masked import masked
from polling import POLL_S
from realstack import (
    NGINX_BIN,
    REGISTRY_BIN,
    SKOPEO_BIN,
    NginxProxy,
    RegistryProcess,
    TokenAuth,
    push_test_image,
    require,
    skopeo,
)
from rotation_env import CRED, iam_keys, live_owned_keys, make_app, read_secret, run_rotator, stored_doc, write_config

from rotator import dockerconfig
from rotator.adapters.state import FileStateStore
from rotator.journal import CredentialJournal
from rotator.policy import Request
from rotator.sandbox.control import SandboxProcess

pytestmark = pytest.mark.real

IMAGES = (("team/app", "latest", "oci"), ("team/worker", "1.0", "docker"), ("team/tool", "2.0", "oci"))
K = len(IMAGES)
OUTSIDE_GRANT = ("other/app", "latest", "oci")  # pushed, but the service ID may pull team/* only
ABSENT = "team/absent:latest"
TEAMS = ("team-a", "team-b", "team-c")
TOKEN_PATH = "/oauth/token"
BUDGET_S = 2  # registry.verify_budget
RECHECK_S = 1  # registry.recheck_interval (the reconciler's wait after an inconclusive check)


# -- the stack ---------------------------------------------------------------------------------------


@dataclass
class Stack:
    sandbox: SandboxProcess
    registry: RegistryProcess
    nginx: NginxProxy
    tmp: Path
    digests: dict[str, str]
    nginx_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def host(self) -> str:
        return self.nginx.host

    def images(self, *extra: str) -> list[str]:
        return [f"{self.host}/{repo}:{tag}" for repo, tag, _ in IMAGES] + [f"{self.host}/{e}" for e in extra]

    def config(self, *extra_images: str, recheck_s: int = RECHECK_S) -> Path:
        """rotator.yaml: the credential on nginx's host, grace 0 (the old key is disabled on the next pass)."""
        registry = {
            "server": self.host,
            "images": self.images(*extra_images),
            "verify_budget": f"{BUDGET_S}s",
            "recheck_interval": f"{recheck_s}s",
        }
        return write_config(self.tmp, self.sandbox, registry=registry, grace_period="0s", delete_after="1h")

    def journal(self) -> CredentialJournal:
        return FileStateStore(self.tmp / "state").load(CRED)

    def current_key_id(self) -> str:
        current = self.journal().current
        assert current is not None, "no current key in the journal"
        return current.id

    def mark(self) -> tuple[int, int]:
        """Positions in nginx's access log and the token service's request log."""
        with self.nginx_lock:
            return self.nginx.log_mark(), self.sandbox.last_seq("registry")


def admin_creds(sbx: SandboxProcess) -> tuple[str, str]:
    return ("iamapikey", str(sbx.endpoints["admin_apikey"]))  # the token service grants it push everywhere


def token_auth(sbx: SandboxProcess) -> TokenAuth:
    """The real registry's token section: the sandbox's realm, and trust in the sandbox's signer."""
    ep = sbx.endpoints
    return TokenAuth(
        realm=ep["registry_realm"],
        rootcertbundle=Path(ep["registry_token_cert"]),
        service=ep["registry_service"],
        issuer=ep["registry_token_issuer"],
    )


@pytest.fixture
def stack(sandbox: SandboxProcess, tmp_path: Path) -> Iterator[Stack]:
    """A real registry trusting this sandbox's token service, images pushed, nginx in front (no limits yet)."""
    require(REGISTRY_BIN, NGINX_BIN, SKOPEO_BIN)
    if "registry_realm" not in sandbox.endpoints:
        pytest.skip("the sandbox has no registry emulator")
    # What the real registry trusts: the token service lets the rotated service ID pull team/* only.
    grants = sandbox.admin.get("/registry/grants").json()[sandbox.endpoints["service_iam_id"]]
    assert grants == [{"pattern": "team/*", "actions": ["pull"]}]
    registry = RegistryProcess.start(tmp_path / "registry", token=token_auth(sandbox))
    try:
        digests = {
            f"{repo}:{tag}": push_test_image(registry.url, repo, tag, admin_creds(sandbox), flavour=flavour)
            for repo, tag, flavour in (*IMAGES, OUTSIDE_GRANT)
        }
        with NginxProxy.start(tmp_path / "nginx", registry.url) as nginx:
            built = Stack(sandbox=sandbox, registry=registry, nginx=nginx, tmp=tmp_path, digests=digests)
            try:
                yield built
            finally:
                registry = built.registry  # a test may have restarted it
    finally:
        registry.stop()


# -- what the cluster, IAM and the logs hold --------------------------------------------------------


def stored_key(stack: Stack, namespace: str) -> str | None:
    obj = read_secret(stack.sandbox, namespace)
    if obj is None:
        return None
    entry = dockerconfig.entry(stored_doc(obj), stack.host)
    return masked(entry.password.reveal()) if entry else None


def authfile(stack: Stack, namespace: str, name: str) -> Path:
    """The namespace's ``.dockerconfigjson`` exactly as the cluster stores it (read with the kubernetes client)."""
    obj = read_secret(stack.sandbox, namespace)
    assert obj is not None, f"{namespace} has no secret"
    path = stack.tmp / "authfiles" / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(base64.b64decode(obj["data"][".dockerconfigjson"]))
    path.chmod(0o600)
    return path


def skopeo_inspect(stack: Stack, auth: Path, image: str = "team/app:latest") -> subprocess.CompletedProcess[str]:
    return skopeo(
        stack.tmp / "skopeo-home",
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--authfile",
        str(auth),
        f"docker://{stack.host}/{image}",
    )


def assert_pulls(stack: Stack, auth: Path) -> None:
    """skopeo (an independent client) reads team/app:latest through nginx with this authfile, same digest."""
    out = skopeo_inspect(stack, auth)
    assert out.returncode == 0, out.stderr[-500:]
    assert "sha256:" + hashlib.sha256(out.stdout.encode()).hexdigest() == stack.digests["team/app:latest"]


def key_record(sbx: SandboxProcess, key_id: str) -> dict[str, Any]:
    return next(k for k in iam_keys(sbx) if k["id"] == key_id)


def disable_key(sbx: SandboxProcess, key_id: str) -> None:
    """Disable a key through the IAM API (as an administrator revoking it would)."""
    ep = sbx.endpoints
    grant = {"grant_type": "urn:ibm:params:oauth:grant-type:apikey", "apikey": ep["admin_apikey"]}
    token = httpx.post(f"{ep['iam']}/identity/token", data=grant, timeout=10).json()["access_token"]
    reply = httpx.post(
        f"{ep['iam']}/v1/apikeys/{key_id}/disable", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert reply.status_code == 204, reply.text


def status(config: Path) -> dict[str, Any]:
    """``rotator status --json`` for the credential, run as its own process."""
    result = run_rotator("status", "-c", str(config), "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)[0]
    return data


@dataclass
class Check:
    """What one verification sent: nginx access-log entries and token requests at the sandbox."""

    result: str
    entries: list[dict[str, Any]]
    tokens: int

    def count(self, method: str, uri_part: str = "") -> int:
        return sum(1 for e in self.entries if e["method"] == method and uri_part in e["uri"])


class CheckRecorder:
    """Cuts the request logs at every check's end (the ``verification`` event), from ``key.minted`` on."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.windows: list[tuple[str, tuple[int, int], tuple[int, int]]] = []
        self._start: tuple[int, int] | None = None

    def on_event(self, name: str, fields: dict[str, Any]) -> None:
        if name == "key.minted":
            self._start = self.stack.mark()
        elif name == "verification":
            assert self._start is not None
            end = self.stack.mark()
            self.windows.append((str(fields["result"]), self._start, end))
            self._start = end

    def checks(self) -> list[Check]:
        entries = self.stack.nginx.access_log()
        tokens = [r for r in self.stack.sandbox.requests("registry") if r["path"] == TOKEN_PATH]
        out = []
        for result, (log0, seq0), (log1, seq1) in self.windows:
            out.append(
                Check(
                    result=result,
                    entries=entries[log0:log1],
                    tokens=sum(1 for r in tokens if seq0 < int(r["seq"]) <= seq1),
                )
            )
        return out


def rotate(stack: Stack, config: Path, reason: str, **app_kwargs: Any) -> tuple[str, str]:
    """One rotation in a fresh App (fresh verifier caches); (rotation result, new key value)."""
    app = make_app(config, **app_kwargs)
    try:
        outcome = app.reconciler(CRED).run(Request(reason=reason))
    finally:
        app.close()
    value = stored_key(stack, TEAMS[0])
    assert value is not None
    return outcome.result, value


# -- the happy path and what one check costs --------------------------------------------------------


def test_rotated_secret_pulls_from_the_real_registry_and_the_revoked_key_does_not(stack: Stack) -> None:
    """After a rotation each namespace's stored .dockerconfigjson pulls via skopeo; the revoked old key fails."""
    config = stack.config()
    first, old_key = rotate(stack, config, "setup")
    assert first == "succeeded"
    old_authfile = authfile(stack, "team-a", "old")
    assert_pulls(stack, old_authfile)
    old_id = stack.current_key_id()

    app = make_app(config)
    try:
        second = app.reconciler(CRED).run(Request(reason="test"))
        assert second.result == "succeeded", second.detail
        new_key = stored_key(stack, "team-a")
        assert new_key is not None and new_key != old_key
        assert key_record(stack.sandbox, old_id)["disabled"] is False  # promoted, not revoked yet
        for ns in TEAMS:
            assert stored_key(stack, ns) == new_key
            doc = json.loads(authfile(stack, ns, ns).read_text())
            assert list(doc["auths"]) == [stack.host]
            assert_pulls(stack, authfile(stack, ns, ns))
        app.reconciler(CRED).run()  # grace 0: this pass revokes the old key
    finally:
        app.close()

    assert key_record(stack.sandbox, old_id)["disabled"] is True
    seq = stack.sandbox.last_seq("registry")
    refused = skopeo_inspect(stack, old_authfile)
    assert refused.returncode != 0
    token_statuses = [r["status"] for r in stack.sandbox.requests("registry", seq) if r["path"] == TOKEN_PATH]
    assert token_statuses and set(token_statuses) == {400}  # the token service refused the revoked key
    new_id = stack.current_key_id()
    assert {k["id"]: k["disabled"] for k in live_owned_keys(stack.sandbox)} == {old_id: True, new_id: False}


def test_each_check_is_at_most_one_ping_one_token_and_k_heads(stack: Stack) -> None:
    """Two real rotations (4 checks of K images): <= 1 ping + 1 token + K HEADs each, fewer when cached, no GET."""
    config = stack.config()
    recorder = CheckRecorder(stack)
    tail = LogTail()
    app = make_app(config, on_event=recorder.on_event)
    try:
        for reason in ("first", "second"):
            outcome = app.reconciler(CRED).run(Request(reason=reason))
            assert outcome.result == "succeeded", outcome.detail
    finally:
        app.close()

    checks = recorder.checks()
    assert [c.result for c in checks] == ["ok"] * 4
    for check in checks:
        assert check.count("GET", "/v2/") <= 1 and check.tokens <= 1
        assert check.count("HEAD", "/manifests/") == K
        assert len(check.entries) == check.count("GET", "/v2/") + K  # nothing else: no manifest or blob GET
        assert all(e["uri"] == "/v2/" for e in check.entries if e["method"] == "GET")
    # (pings, tokens, HEADs): a fresh verifier pays all three; the stored-secret check reuses ping and token;
    # the second rotation's new key needs its own token but not a new ping.
    shape = [(c.count("GET", "/v2/"), c.tokens, c.count("HEAD")) for c in checks]
    assert shape == [(1, 1, K), (0, 0, K), (0, 1, K), (0, 0, K)]
    # The verifier's own count (logged per check) matches what nginx and the token service saw.
    logged = [e["requests"] for e in tail.events("registry.verified", registry=stack.host)]
    assert logged == [len(c.entries) + c.tokens for c in checks]
    print(f"\nrequests per check (ping, token, HEAD) with K={K}: {shape}; verifier counted {logged}")


# -- a 429 storm during the post-distribution check ---------------------------------------------------

STORM_S = 30.0
STORM_RATE_PER_S = 1  # nginx limit_req "1r/s", burst 0
STORM_RETRY_AFTER_S = 1
STORM_RECHECK_S = 2
# Requests nginx can see in one check during the storm. 429s: each but the check's last is followed by a
# wait of at least Retry-After (the jitter only adds), so <= budget / Retry-After + 1. Let through: at
# most a ping and K HEADs, and the limiter passes at most budget x rate + 1 within one check.
PER_CHECK_BOUND = BUDGET_S // STORM_RETRY_AFTER_S + 1 + min(1 + K, BUDGET_S * STORM_RATE_PER_S + 1)  # 6
# Why a storm check cannot pass: its K HEADs (K + 1 requests with a fresh ping) need >= (K - 1) / rate
# seconds at 1 r/s, more than the budget, so every check in the storm is inconclusive.
assert (K - 1) / STORM_RATE_PER_S >= BUDGET_S


class Storm:
    """Starts the 429 storm when the new key's first check has passed (before the post-distribution check)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.started_at: float | None = None
        self.cuts: list[tuple[str, int]] = []  # (check result, access-log position at its end)
        self.start_mark = 0

    def on_event(self, name: str, fields: dict[str, Any]) -> None:
        if name != "verification":
            return
        if self.started_at is None:
            assert fields["result"] == "ok"
            with self.stack.nginx_lock:
                self.stack.nginx.reconfigure(rate=f"{STORM_RATE_PER_S}r/s", burst=0, retry_after=STORM_RETRY_AFTER_S)
                self.start_mark = self.stack.nginx.log_mark()
            self.started_at = time.monotonic()
            return
        self.cuts.append((str(fields["result"]), self.stack.mark()[0]))

    def elapsed(self) -> float:
        return 0.0 if self.started_at is None else time.monotonic() - self.started_at


def test_429_storm_holds_the_rotation_without_revoking_then_it_completes(stack: Stack) -> None:
    """Under ~30 s of 1 r/s + 429 the rotation waits (old key live, requests bounded), then completes."""
    config = stack.config(recheck_s=STORM_RECHECK_S)
    first, old_key = rotate(stack, config, "setup")
    assert first == "succeeded"
    old_id = stack.current_key_id()
    old_authfile = authfile(stack, "team-b", "old")
    storm = Storm(stack)
    tail = LogTail()
    app = make_app(config, on_event=storm.on_event)
    outcome: list[Any] = []
    worker = threading.Thread(
        target=lambda: outcome.append(app.reconciler(CRED).run(Request(reason="storm"), wait_budget=STORM_S + 60)),
        daemon=True,
    )
    worker.start()
    waiting: dict[str, Any] | None = None
    try:
        deadline = time.monotonic() + STORM_S + 30
        while storm.started_at is None or storm.elapsed() < STORM_S:
            assert time.monotonic() < deadline, "the storm never started or never ran its course"
            assert worker.is_alive(), f"the rotation ended during the storm: {outcome}"
            rotation = stack.journal().rotation
            if waiting is None and rotation is not None and rotation.waiting:
                waiting = status(config)["rotation_in_progress"]
                assert key_record(stack.sandbox, old_id)["disabled"] is False
            time.sleep(POLL_S)
        assert stack.journal().rotation is not None
        assert stack.current_key_id() == old_id
        assert key_record(stack.sandbox, old_id)["disabled"] is False
        storm_s = storm.elapsed()
        with stack.nginx_lock:
            end_mark = stack.nginx.log_mark()
            stack.nginx.reconfigure(rate=None)
        worker.join(timeout=STORM_RECHECK_S + BUDGET_S + 20)
        assert not worker.is_alive(), "the rotation did not complete after the storm"
    finally:
        if worker.is_alive():  # a failed assertion above: lift the limit so the rotation can finish
            with stack.nginx_lock:
                stack.nginx.reconfigure(rate=None)
            worker.join(timeout=BUDGET_S + STORM_RECHECK_S + 20)
        app.close()

    assert outcome and outcome[0].result == "succeeded", outcome
    # While the storm lasted: the state said why the rotation waited, the new key was out, the old one live.
    assert waiting is not None and waiting["phase"] == "distributed"
    assert waiting["waiting"].startswith("verify_stored inconclusive:")
    assert "429" in waiting["waiting"] and "Retry-After" in waiting["waiting"]
    inconclusive = tail.events("verification.inconclusive", step="verify_stored")
    assert inconclusive and all("429" in e["detail"] for e in inconclusive)

    results = [r for r, _ in storm.cuts]
    assert results[-1] == "ok" and set(results[:-1]) == {"inconclusive"}
    storm_checks = len(results) - 1
    # Checks start >= recheck interval apart, so at most storm_s / recheck + 1 start in the storm, and
    # one more (the one that succeeds) may overlap its end.
    assert storm_checks + 1 <= storm_s / STORM_RECHECK_S + 2
    entries = stack.nginx.access_log()
    positions = [storm.start_mark] + [pos for _, pos in storm.cuts]
    windows = [entries[a:b] for a, b in itertools.pairwise(positions)]
    per_check = [len(w) for w in windows]
    assert all(n <= PER_CHECK_BOUND for n in per_check), per_check
    in_storm = entries[storm.start_mark : end_mark]
    passed = [e for e in in_storm if e["status"] != 429]
    assert len(in_storm) <= (storm_checks + 1) * PER_CHECK_BOUND
    assert len(passed) <= storm_s * STORM_RATE_PER_S + 1  # nginx's limit, as a sanity check of the setup
    assert all(e["method"] == "HEAD" or e["uri"] == "/v2/" for e in in_storm)
    print(
        f"\nstorm {storm_s:.1f} s at {STORM_RATE_PER_S} r/s, budget {BUDGET_S} s, recheck {STORM_RECHECK_S} s: "
        f"{storm_checks} inconclusive checks, nginx saw {len(in_storm)} requests ({len(in_storm) - len(passed)} "
        f"answered 429), per check {per_check} (bound {PER_CHECK_BOUND} each); the checks: "
        + " | ".join(" ".join(f"{e['method'][0]}{e['status']}" for e in w) for w in windows)
    )

    new_key = stored_key(stack, "team-b")
    assert new_key is not None and new_key != old_key
    assert_pulls(stack, authfile(stack, "team-b", "new"))
    app = make_app(config)
    try:
        app.reconciler(CRED).run()  # grace 0: revoked only now, after the rotation completed
    finally:
        app.close()
    assert key_record(stack.sandbox, old_id)["disabled"] is True
    assert skopeo_inspect(stack, old_authfile).returncode != 0


# -- each failure during a rotation: classified, explained, and the rotation reacts right -------------


@dataclass(frozen=True, kw_only=True)
class Fault:
    outcome: str  # how the check is classified: rejected | inconclusive
    step: str  # the check that meets it: verify_new | verify_stored
    says: tuple[str, ...]  # what the log's detail and `rotator status` must both say
    extra_image: str | None = None


def arm(kind: str, stack: Stack) -> Callable[[str, dict[str, Any]], None] | None:
    """Sets the fault up; returns the reconciler hook that springs it mid-rotation, if it needs one."""
    if kind == "revoked-key":

        def revoke_new_key(name: str, fields: dict[str, Any]) -> None:
            if name == "key.minted":
                rotation = stack.journal().rotation
                assert rotation is not None and rotation.new_key is not None
                disable_key(stack.sandbox, rotation.new_key.id)

        return revoke_new_key
    if kind == "registry-down":
        stopped: list[bool] = []

        def stop_registry(name: str, fields: dict[str, Any]) -> None:
            if name == "verification" and not stopped:
                stopped.append(True)
                stack.registry.stop()  # after the new key's first check passed: nginx now answers 502

        return stop_registry
    if kind == "malformed-challenge":
        realm = stack.sandbox.endpoints["registry_realm"]
        with stack.nginx_lock:
            stack.nginx.reconfigure(challenge=f'Bearer realm="{realm}')  # unterminated quote
    return None


def repair(kind: str, stack: Stack) -> None:
    if kind == "unknown-repository":
        repo, _, tag = ABSENT.partition(":")
        push_test_image(stack.registry.url, repo, tag, admin_creds(stack.sandbox))
    elif kind == "registry-down":
        old = stack.registry
        stack.registry = RegistryProcess.start(old.workdir, token=token_auth(stack.sandbox), port=old.port)
    elif kind == "malformed-challenge":
        with stack.nginx_lock:
            stack.nginx.reconfigure(challenge=None)


@pytest.mark.parametrize(
    ("kind", "fault"),
    [
        pytest.param(
            "revoked-key",
            Fault(outcome="rejected", step="verify_new", says=("token endpoint", "refused user 'iamapikey'", "400")),
            id="revoked-key",
        ),
        pytest.param(
            "no-pull-rights",
            Fault(
                outcome="rejected",
                step="verify_new",
                says=("other/app:latest answered 401", "insufficient_scope", "no pull rights"),
                extra_image=":".join(OUTSIDE_GRANT[:2]),
            ),
            id="key-without-pull-rights",
        ),
        pytest.param(
            "unknown-repository",
            Fault(
                outcome="inconclusive",
                step="verify_new",
                says=(f"{ABSENT} (HEAD 404", "check the image list"),
                extra_image=ABSENT,
            ),
            id="unknown-repository",
        ),
        pytest.param(
            "registry-down",
            Fault(outcome="inconclusive", step="verify_stored", says=("team/app:latest", "502")),
            id="registry-down",
        ),
        pytest.param(
            "malformed-challenge",
            Fault(outcome="inconclusive", step="verify_new", says=("malformed auth challenge", "unterminated")),
            id="malformed-challenge",
        ),
    ],
)
def test_failure_during_a_rotation_is_classified_explained_and_handled(stack: Stack, kind: str, fault: Fault) -> None:
    """Rejected rolls back (old key everywhere, still pulls); inconclusive waits (not promoted, old key live)."""
    first, old_key = rotate(stack, stack.config(), "setup")
    assert first == "succeeded"
    old_id = stack.current_key_id()
    old_authfile = authfile(stack, "team-c", "old")
    config = stack.config(*([fault.extra_image] if fault.extra_image else []))
    tail = LogTail()
    app = make_app(config, on_event=arm(kind, stack))
    try:
        outcome = app.reconciler(CRED).run(Request(reason=kind))
        rotation_id = outcome.rotation_id
        # The log explains it: the verifier's line and the reconciler's, both with the reason.
        verified = tail.events("registry.verified", registry=stack.host, outcome=fault.outcome)
        assert verified and all(s in verified[-1]["detail"] for s in fault.says), verified
        explained = tail.events(f"verification.{fault.outcome}", rotation_id=rotation_id, step=fault.step)
        assert explained and all(s in explained[0]["detail"] for s in fault.says), explained
        shown = status(config)

        if fault.outcome == "rejected":
            assert outcome.result == "failed" and fault.step in outcome.detail
            assert shown["rotation_in_progress"] is None
            assert shown["last_result"]["result"] == "failed"
            assert "registry rejected the new key" in shown["last_result"]["detail"]
            assert all(s in shown["last_result"]["detail"] for s in fault.says)
            assert tail.events("rotation.failed", rotation_id=rotation_id)
            # Rolled back: every secret keeps the old key, which still pulls; the new key is gone.
            for ns in TEAMS:
                assert stored_key(stack, ns) == old_key
                assert_pulls(stack, authfile(stack, ns, ns))
            assert [k["id"] for k in live_owned_keys(stack.sandbox)] == [old_id]
            assert stack.current_key_id() == old_id
            return

        assert outcome.result == "inconclusive"
        waiting = shown["rotation_in_progress"]
        assert waiting is not None and waiting["id"] == rotation_id
        assert waiting["phase"] == ("minted" if fault.step == "verify_new" else "distributed")
        assert waiting["waiting"].startswith(f"{fault.step} inconclusive:")
        assert all(s in waiting["waiting"] for s in fault.says)
        assert shown["last_result"]["result"] == "succeeded"  # the setup: nothing failed or rolled back
        # Not rolled back (the new key lives, and is in the secrets once distributed), not promoted, old key live.
        assert len(live_owned_keys(stack.sandbox)) == 2
        assert stack.current_key_id() == old_id
        assert key_record(stack.sandbox, old_id)["disabled"] is False
        held = {stored_key(stack, ns) for ns in TEAMS}
        assert (held == {old_key}) == (fault.step == "verify_new")
        assert not tail.events("rotation.failed", rotation_id=rotation_id)

        repair(kind, stack)
        assert_pulls(stack, old_authfile)  # still live while the rotation waited
        resumed = app.reconciler(CRED).run(wait_budget=RECHECK_S + BUDGET_S + 10)
        assert (resumed.result, resumed.rotation_id) == ("succeeded", rotation_id), resumed.detail
    finally:
        app.close()
    new_key = stored_key(stack, "team-a")
    assert new_key is not None and new_key != old_key
    assert {stored_key(stack, ns) for ns in TEAMS} == {new_key}
    assert_pulls(stack, authfile(stack, "team-a", "new"))
