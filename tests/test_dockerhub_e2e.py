"""Docker Hub end to end over HTTP through the real reconciler: an organization access token minted,
distributed to Kubernetes secrets, verified with HEADs only, revoked after the grace period; rollbacks,
sign-in failure, Hub API 429 during the mint, and the orphan sweep with ``identify`` answering None."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from dockerhub_env import (
    CRED,
    SECRET,
    SERVER,
    TEAMS,
    foreign_state,
    hub_tokens,
    live_owned,
    pulls,
    registry_pulls,
    stored_entry,
    stored_password,
    token,
    token_id_of,
    write_config,
)
from rotation_env import FakeClock, core, make_app, read_secret, run_rotator

from rotator.adapters.dockerhub import DockerHubProvider
from rotator.adapters.kubernetes import KubernetesSink
from rotator.errors import RotatorError
from rotator.model import RegistryAuth, SecretStr, TargetRef
from rotator.policy import Request
from rotator.retrying import RetryPolicy
from rotator.sandbox.control import SandboxProcess


def test_org_token_rotates_verifies_with_head_only_then_revokes(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """OAT in every secret as the org; the check used HEADs only (zero GETs counted) and read the quota
    headers; the old token is deactivated after the grace period, deleted later; foreign tokens untouched."""
    foreign_before = foreign_state(sandbox)
    org = sandbox.endpoints["dockerhub_org"]
    clock = FakeClock()
    app = make_app(write_config(tmp_path, sandbox, schedule={"interval": "1d"}, max_age="30d"), clock=clock)
    try:
        assert app.reconciler(CRED).run(Request(reason="test")).result == "succeeded"
        first = stored_password(sandbox, "team-a")
        assert first is not None and first.startswith("dckr_oat_")
        assert app.reconciler(CRED).run(Request(reason="again")).result == "succeeded"
        second = stored_password(sandbox, "team-a")
        assert second is not None and second != first
        for ns in TEAMS:
            entry = stored_entry(sandbox, ns)
            assert entry is not None and entry.username == org and entry.password.reveal() == second
            sa = core(sandbox).read_namespaced_service_account("default", ns)
            assert [ref.name for ref in sa.image_pull_secrets or []].count(SECRET) == 1
        assert read_secret(sandbox, "kube-system", SECRET) is None

        counted = registry_pulls(sandbox)
        assert counted["get"] == 0 and counted["head"] >= 4  # two checks per rotation, two rotations
        quota = app.verifier.quota(SERVER)
        assert quota is not None and quota.limit == 200 and quota.remaining == 200 and quota.source == org

        old_id = token_id_of(sandbox, first)
        clock.advance(3599)
        app.reconciler(CRED).run()
        assert token(sandbox, old_id)["is_active"] is True  # grace period not over
        clock.advance(2)
        app.reconciler(CRED).run()
        assert token(sandbox, old_id)["is_active"] is False
        assert pulls(sandbox, first) == "rejected"
        clock.advance(3601)
        app.reconciler(CRED).run()
        assert token(sandbox, old_id)["deleted"] is True
        assert [t["id"] for t in live_owned(sandbox)] == [token_id_of(sandbox, second)]
        assert pulls(sandbox, second) == "ok"
    finally:
        app.close()
    assert foreign_state(sandbox) == foreign_before
    assert registry_pulls(sandbox)["get"] == 0


def test_personal_token_pulls_as_the_docker_id(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """With token_type personal a PAT is rotated and stored with the Docker ID as the username."""
    config = write_config(
        tmp_path, sandbox, provider={"token_type": "personal", "org": None, "scopes": ["repo:read"], "repositories": []}
    )
    result = run_rotator("rotate", CRED, "-c", str(config))
    assert result.returncode == 0, result.stderr
    entry = stored_entry(sandbox, "team-b")
    assert entry is not None and entry.username == sandbox.endpoints["dockerhub_username"]
    assert entry.password.reveal().startswith("dckr_pat_")
    assert entry.password.reveal() not in result.stdout + result.stderr
    assert [t["kind"] for t in live_owned(sandbox)] == ["personal"]


def test_rejected_new_token_rolls_back_and_deletes_it(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """A token the registry refuses is never distributed; secrets keep the old one, which still pulls."""
    app = make_app(write_config(tmp_path, sandbox))
    try:
        assert app.reconciler(CRED).run(Request(reason="setup")).result == "succeeded"
        old = stored_password(sandbox, "team-a")
        assert old is not None
        sandbox.admin.post("/dockerhub_registry/deny-new-tokens", json={"enabled": True}).raise_for_status()
        outcome = app.reconciler(CRED).run(Request(reason="test"))
    finally:
        app.close()
    assert outcome.result == "failed" and "rejected" in outcome.detail
    for ns in TEAMS:
        assert stored_password(sandbox, ns) == old
    assert pulls(sandbox, old) == "ok"
    assert [t["id"] for t in live_owned(sandbox)] == [token_id_of(sandbox, old)]
    rolled_back = [t for t in hub_tokens(sandbox) if t["kind"] == "organization" and t["deleted"]]
    assert len(rolled_back) == 1


def test_rejection_after_distribution_restores_every_secret(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """If the stored bytes fail the check after distribution, every secret gets the old token back."""
    app = make_app(write_config(tmp_path, sandbox))
    verifications = 0
    armed = False

    def on_event(name: str, fields: dict[str, Any]) -> None:
        nonlocal verifications
        if name == "verification" and armed:
            verifications += 1
            if verifications == 1:  # the new token passed its first check: now every manifest HEAD is refused
                rule = {"path_prefix": "/v2/acme/", "methods": ["HEAD"], "error_status": 401, "error_count": 1000}
                sandbox.set_faults("dockerhub_registry", rule)

    app.on_event = on_event
    try:
        assert app.reconciler(CRED).run(Request(reason="setup")).result == "succeeded"
        old = stored_password(sandbox, "team-c")
        armed = True
        outcome = app.reconciler(CRED).run(Request(reason="test"))
    finally:
        app.close()
    sandbox.clear_faults()
    assert outcome.result == "failed" and "verify_stored" in outcome.detail
    assert old is not None
    for ns in TEAMS:
        assert stored_password(sandbox, ns) == old
    assert pulls(sandbox, old) == "ok"
    assert [t["id"] for t in live_owned(sandbox)] == [token_id_of(sandbox, old)]


def test_sign_in_failure_fails_cleanly(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """A wrong password: the rotation fails with a clear sign-in error, no token, no secret, no value printed."""
    wrong = tmp_path / "wrong-password"
    wrong.write_text("definitely-not-it")
    wrong.chmod(0o600)
    config = write_config(tmp_path, sandbox, provider={"password": {"file": str(wrong)}})
    tokens_before = len(hub_tokens(sandbox))
    result = run_rotator("rotate", CRED, "-c", str(config))
    assert result.returncode == 1
    assert "sign in as 'rotatorbot'" in result.stderr
    assert "definitely-not-it" not in result.stdout + result.stderr
    assert len(hub_tokens(sandbox)) == tokens_before
    for ns in TEAMS:
        assert read_secret(sandbox, ns, SECRET) is None
    check = run_rotator("check", "-c", str(config))
    assert check.returncode == 1 and "FAIL" in check.stdout and "Docker Hub" in check.stdout


def test_hub_api_429_during_mint_is_waited_out(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """The Hub API throttles the create: rotator waits until X-Retry-After, then mints once and succeeds."""
    org = sandbox.endpoints["dockerhub_org"]
    path = f"/v2/orgs/{org}/access-tokens"
    # One 429 on the create; its X-Retry-After points at the end of a one-second rate window.
    sandbox.admin.put("/dockerhub_api/rate-limit", json={"limit": 1000, "window_s": 1}).raise_for_status()
    sandbox.set_faults(
        "dockerhub_api", {"path_prefix": path, "methods": ["POST"], "error_status": 429, "error_count": 1}
    )
    result = run_rotator("rotate", CRED, "-c", str(write_config(tmp_path, sandbox)))
    assert result.returncode == 0, result.stderr
    creates = [r for r in sandbox.requests("dockerhub_api") if r["method"] == "POST" and r["path"] == path]
    assert [r["status"] for r in creates] == [429, 201]
    assert creates[-1]["time"] - creates[-2]["time"] >= 0.9  # X-Retry-After is at least a second away
    assert len(live_owned(sandbox)) == 1
    assert all(stored_password(sandbox, ns) is not None for ns in TEAMS)


def test_owned_token_unknown_to_the_journal_is_healed_away_then_swept_after_the_window(
    sandbox: SandboxProcess, tmp_path: Path
) -> None:
    """identify answers None for Hub tokens: a target holding an unknown owned token is healed back to the
    current one first, and that token is deleted only once the orphan window has passed."""
    ep = sandbox.endpoints
    clock = FakeClock()
    app = make_app(write_config(tmp_path, sandbox, schedule={"interval": "1d"}, max_age="30d"), clock=clock)
    provider = DockerHubProvider(
        base_url=ep["dockerhub_api"],
        username=ep["dockerhub_username"],
        secret=SecretStr(ep["dockerhub_password"]),
        token_type="organization",
        org=ep["dockerhub_org"],
        repositories=[f"{ep['dockerhub_org']}/app"],
        retry=RetryPolicy.none(),
    )
    try:
        assert app.reconciler(CRED).run(Request(reason="setup")).result == "succeeded"
        current = stored_password(sandbox, "team-a")
        assert current is not None
        stray = provider.mint(credential=CRED, rotation_id="20200101T000000Z-dead00")  # e.g. another replica's
        cred = app.settings.credential(CRED)
        assert cred.kubernetes is not None
        sink = KubernetesSink(app.kube, cred.kubernetes, credential=CRED)
        target = TargetRef(sink="kubernetes", namespace="team-b", name=SECRET)
        sink.write_entry(target, RegistryAuth(server=SERVER, username=ep["dockerhub_org"], password=stray.value))

        assert app.reconciler(CRED).run().result == "idle"
        assert stored_password(sandbox, "team-b") == current  # healed before anything else
        assert token(sandbox, stray.info.id)["deleted"] is False  # younger than the window
        clock.advance(9 * 60)
        app.reconciler(CRED).run()
        assert token(sandbox, stray.info.id)["deleted"] is False
        clock.advance(2 * 60)
        app.reconciler(CRED).run()
        assert token(sandbox, stray.info.id)["deleted"] is True
        assert all(stored_password(sandbox, ns) == current for ns in TEAMS)
        assert pulls(sandbox, current) == "ok"
    finally:
        provider.close()
        app.close()


def test_plan_and_check_describe_the_docker_hub_provider(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """``rotator plan`` names the org token to mint and ``rotator check`` signs in; neither creates a token."""
    config = str(write_config(tmp_path, sandbox))
    before = len(hub_tokens(sandbox))
    plan = run_rotator("plan", "-c", config, "--json")
    assert plan.returncode == 0, plan.stderr
    actions = json.loads(plan.stdout)[0]["actions"]
    assert actions[0] == "mint a new organization access token of acme (dockerhub)"
    check = run_rotator("check", "-c", config)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "may manage organization access tokens of acme" in check.stdout
    assert len(hub_tokens(sandbox)) == before
    assert registry_pulls(sandbox)["get"] == 0


def test_lost_state_never_sweeps_the_token_the_secrets_hold(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """The state store is lost (a new ConfigMap, a wiped volume): the token in every secret is now owned but
    unknown, and Docker Hub cannot say which token a value is. It must not be swept while secrets hold it,
    even when the rotation that replaces it fails; once a rotation replaced it everywhere, it is swept."""
    import shutil

    clock = FakeClock()
    config = write_config(tmp_path, sandbox, schedule={"interval": "1d"}, max_age="30d", grace_period="0s")
    app = make_app(config, clock=clock)
    try:
        assert app.reconciler(CRED).run(Request(reason="setup")).result == "succeeded"
        old = stored_password(sandbox, "team-a")
        assert old is not None
        old_id = token_id_of(sandbox, old)
    finally:
        app.close()
    shutil.rmtree(tmp_path / "state")
    clock.advance(11 * 60)  # past the orphan window: only "held by a target" protects the token now
    org = sandbox.endpoints["dockerhub_org"]
    mint = {"path_prefix": f"/v2/orgs/{org}/access-tokens", "methods": ["POST"], "error_status": 400}
    sandbox.set_faults("dockerhub_api", {**mint, "error_count": 1000})
    app = make_app(config, clock=clock)
    try:
        with contextlib.suppress(RotatorError):  # the bootstrap rotation cannot mint: failed or raised
            app.reconciler(CRED).run()
        assert token(sandbox, old_id)["deleted"] is False, "the token every secret holds was swept"
        assert all(stored_password(sandbox, ns) == old for ns in TEAMS)
        assert pulls(sandbox, old) == "ok"

        sandbox.clear_faults()
        clock.advance(2 * 60)  # past the backoff the failed bootstrap rotation set
        assert app.reconciler(CRED).run().result == "succeeded"
        new = stored_password(sandbox, "team-a")
        assert new is not None and new != old and pulls(sandbox, new) == "ok"
        app.reconciler(CRED).run()
        assert token(sandbox, old_id)["deleted"] is True, "replaced everywhere, the unknown token is swept"
        assert [t["id"] for t in live_owned(sandbox)] == [token_id_of(sandbox, new)]
    finally:
        app.close()
