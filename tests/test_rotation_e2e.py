"""End to end over HTTP against the sandbox: mint, distribute, verify, promote, revoke, roll back."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rotation_env import (
    CRED,
    SECRET,
    FakeClock,
    core,
    iam_keys,
    key_id_of,
    live_owned_keys,
    make_app,
    pulls,
    read_secret,
    run_rotator,
    stored_doc,
    stored_password,
    write_config,
)

from rotator.app import App
from rotator.policy import Request
from rotator.sandbox.control import SandboxProcess

TEAMS = ("team-a", "team-b", "team-c")


def seed_existing_secret(sbx: SandboxProcess, namespace: str, doc: dict[str, Any], *, type_: str | None = None) -> str:
    """A pre-existing secret (someone's manual setup); returns its UID."""
    body = {
        "metadata": {"name": SECRET},
        "type": type_ or "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(doc).encode()).decode()},
    }
    if type_ and type_ != "kubernetes.io/dockerconfigjson":
        body["data"] = {"token": base64.b64encode(b"something else").decode()}
    created = core(sbx).create_namespaced_secret(namespace, body, _preload_content=False)
    uid: str = json.loads(created.data)["metadata"]["uid"]
    return uid


def foreign_state(sbx: SandboxProcess) -> dict[str, tuple[Any, ...]]:
    ids = set(sbx.endpoints["foreign_apikey_ids"].values())
    return {
        k["id"]: (k["entity_tag"], k["disabled"], k["deleted"], k["locked"]) for k in iam_keys(sbx) if k["id"] in ids
    }


def test_happy_path_rotates_everywhere_then_revokes(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """New key in every namespace and SA, other registries' entries and UIDs kept, old key disabled then deleted."""
    other = {"username": "bot", "password": "ghcr-token", "auth": base64.b64encode(b"bot:ghcr-token").decode()}
    uid_a = seed_existing_secret(sandbox, "team-a", {"auths": {"ghcr.io": other}})
    foreign_before = foreign_state(sandbox)
    clock = FakeClock()
    app = make_app(write_config(tmp_path, sandbox, schedule={"interval": "1d"}, max_age="30d"), clock=clock)
    try:
        first = app.reconciler(CRED).run(Request(reason="test"))
        assert first.result == "succeeded"
        key1 = stored_password(sandbox, "team-a")
        assert key1 is not None
        second = app.reconciler(CRED).run(Request(reason="test again"))
        assert second.result == "succeeded"
        key2 = stored_password(sandbox, "team-a")
        assert key2 is not None and key2 != key1
        for ns in TEAMS:
            assert stored_password(sandbox, ns) == key2
            sa = core(sandbox).read_namespaced_service_account("default", ns)
            assert [ref.name for ref in sa.image_pull_secrets or []].count(SECRET) == 1
        secret_a = read_secret(sandbox, "team-a")
        assert secret_a is not None
        assert secret_a["metadata"]["uid"] == uid_a
        assert stored_doc(secret_a)["auths"]["ghcr.io"] == other
        assert read_secret(sandbox, "kube-system") is None  # not selected
        assert pulls(sandbox, key2) == "ok"

        old_id = key_id_of(sandbox, key1)
        clock.advance(3599)
        app.reconciler(CRED).run()
        assert next(k for k in iam_keys(sandbox) if k["id"] == old_id)["disabled"] is False  # grace not over
        clock.advance(2)
        app.reconciler(CRED).run()
        assert next(k for k in iam_keys(sandbox) if k["id"] == old_id)["disabled"] is True
        assert pulls(sandbox, key1) == "rejected"
        clock.advance(3601)
        app.reconciler(CRED).run()
        assert next(k for k in iam_keys(sandbox) if k["id"] == old_id)["deleted"] is True
        assert [k["id"] for k in live_owned_keys(sandbox)] == [key_id_of(sandbox, key2)]
    finally:
        app.close()  # flushes the Kubernetes Events queue
    assert foreign_state(sandbox) == foreign_before
    reasons = [(e.reason, e.type, e.involved_object.name) for e in core(sandbox).list_namespaced_event("team-b").items]
    assert reasons.count(("PullSecretRotated", "Normal", SECRET)) == 2


def test_cli_rotate_then_status_shows_ids_not_values(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """``rotator rotate`` exits 0 and ``rotator status --json`` names the key id, never its value."""
    config = str(write_config(tmp_path, sandbox))
    result = run_rotator("rotate", CRED, "-c", config)
    assert result.returncode == 0, result.stderr
    assert "succeeded" in result.stdout
    status = run_rotator("status", "-c", config, "--json")
    assert status.returncode == 0
    value = stored_password(sandbox, "team-b")
    assert value is not None and value not in status.stdout + status.stderr + result.stdout + result.stderr
    data = json.loads(status.stdout)[0]
    assert data["current_key_id"] == key_id_of(sandbox, value)
    assert data["last_result"]["result"] == "succeeded"


def test_rejected_new_key_rolls_back_and_deletes_it(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """A new key the registry refuses is never distributed; every secret keeps the old key, which still pulls."""
    app = make_app(write_config(tmp_path, sandbox))
    try:
        assert app.reconciler(CRED).run(Request(reason="setup")).result == "succeeded"
        old = stored_password(sandbox, "team-a")
        assert old is not None
        sandbox.admin.post("/registry/deny-new-keys", json={"enabled": True}).raise_for_status()
        outcome = app.reconciler(CRED).run(Request(reason="test"))
        assert outcome.result == "failed"
        assert "rejected" in outcome.detail
    finally:
        app.close()
    for ns in TEAMS:
        assert stored_password(sandbox, ns) == old
    assert pulls(sandbox, old) == "ok"
    assert [k["id"] for k in live_owned_keys(sandbox)] == [key_id_of(sandbox, old)]


def rejected_after_distribution(sbx: SandboxProcess, app: App) -> Callable[[], None]:
    """Once armed, the app's next rotation passes its first check of the new key, then the registry
    refuses every manifest: the stored secrets fail their check after distribution."""
    seen: list[str] = []
    armed = [False]

    def on_event(name: str, fields: dict[str, Any]) -> None:
        seen.append(name)
        if name == "verification" and seen.count("verification") == 1 and armed[0]:
            sbx.set_faults(
                "registry", {"path_prefix": "/v2/team/", "methods": ["HEAD"], "error_status": 401, "error_count": 1000}
            )

    def arm() -> None:
        seen.clear()
        armed[0] = True

    app.on_event = on_event
    return arm


def test_rejection_after_distribution_restores_every_secret(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """If the stored bytes fail the check after distribution, every secret gets the old key back."""
    app = make_app(write_config(tmp_path, sandbox))
    arm = rejected_after_distribution(sandbox, app)
    try:
        assert app.reconciler(CRED).run(Request(reason="setup")).result == "succeeded"
        old = stored_password(sandbox, "team-c")
        arm()
        outcome = app.reconciler(CRED).run(Request(reason="test"))
    finally:
        app.close()
    sandbox.clear_faults()
    assert outcome.result == "failed"
    assert "verify_stored" in outcome.detail
    rolled_back = [e for e in core(sandbox).list_namespaced_event("team-a").items if e.reason == "PullSecretRolledBack"]
    assert len(rolled_back) == 1 and rolled_back[0].type == "Warning" and "restored" in rolled_back[0].message
    assert old is not None
    for ns in TEAMS:
        assert stored_password(sandbox, ns) == old
    assert pulls(sandbox, old) == "ok"
    assert len(live_owned_keys(sandbox)) == 1


@pytest.mark.parametrize(
    ("namespace", "kind", "doc"),
    [
        pytest.param("team-b", "Opaque", {}, id="wrong-type"),
        pytest.param("team-b", None, {"auths": ["not", "an", "object"]}, id="malformed-dockerconfigjson"),
    ],
)
def test_unwritable_target_is_refused_and_untouched(
    sandbox: SandboxProcess, tmp_path: Path, namespace: str, kind: str | None, doc: dict[str, Any]
) -> None:
    """A target of another type or with a malformed document is left alone; the others rotate; status says so."""
    seed_existing_secret(sandbox, namespace, doc, type_=kind)
    before = read_secret(sandbox, namespace)
    config = str(write_config(tmp_path, sandbox))
    result = run_rotator("rotate", CRED, "-c", config)
    assert result.returncode == 0, result.stderr
    assert "1 targets refused" in result.stdout
    after = read_secret(sandbox, namespace)
    assert before is not None and after is not None
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert stored_password(sandbox, "team-a") is not None
    status = json.loads(run_rotator("status", "-c", config, "--json").stdout)[0]
    assert f"kubernetes:{namespace}/{SECRET}" in status["last_result"]["detail"]


def test_key_limit_reached_fails_cleanly(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """With the service ID at its key limit the rotation fails with IAM's reason and nothing changes."""
    config = str(write_config(tmp_path, sandbox))
    assert run_rotator("rotate", CRED, "-c", config).returncode == 0
    current = stored_password(sandbox, "team-a")
    sandbox.admin.put("/iam/key-limit", json={"limit": 3}).raise_for_status()  # 2 foreign + ours
    result = run_rotator("rotate", CRED, "-c", config)
    assert result.returncode == 1
    assert "maximum number of API keys" in result.stderr
    for ns in TEAMS:
        assert stored_password(sandbox, ns) == current
    assert len(live_owned_keys(sandbox)) == 1


def test_iam_5xx_burst_and_secret_409_storm_are_ridden_out(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """Transient IAM errors are retried and secret write conflicts re-read and merged; the rotation succeeds."""
    sandbox.set_faults(
        "iam", {"path_prefix": "/v1/apikeys", "methods": ["POST"], "error_status": 503, "error_count": 2}
    )
    sandbox.set_faults(
        "kubernetes",
        {"path_prefix": "/api/v1/namespaces/", "methods": ["PUT", "POST"], "error_status": 409, "error_count": 6},
    )
    result = run_rotator("rotate", CRED, "-c", str(write_config(tmp_path, sandbox)))
    assert result.returncode == 0, result.stderr
    value = stored_password(sandbox, "team-a")
    assert value is not None and all(stored_password(sandbox, ns) == value for ns in TEAMS)
    mints = [r for r in sandbox.requests("iam") if r["method"] == "POST" and r["path"] == "/v1/apikeys"]
    assert [r["status"] for r in mints] == [503, 503, 201]
    conflicts = [r for r in sandbox.requests("kubernetes") if r["status"] == 409]
    assert len(conflicts) == 6
    assert len(live_owned_keys(sandbox)) == 1


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"error_status": 500, "error_count": 1}, id="one-500"),
        pytest.param({"error_status": 503, "error_count": 2}, id="two-503"),
        pytest.param({"throttle_seconds": 0.5, "retry_after": 1}, id="429-retry-after"),
    ],
)
def test_transient_secret_write_errors_are_retried_inside_the_step(
    sandbox: SandboxProcess, tmp_path: Path, fault: dict[str, Any]
) -> None:
    """A 5xx or a 429 on a secret write is retried within distribution (honouring Retry-After): the rotation
    succeeds in the same pass instead of waiting for a step retry with one target behind."""
    clock = FakeClock()
    app = make_app(write_config(tmp_path, sandbox), clock=clock)
    try:
        assert app.reconciler(CRED).run(Request(reason="first")).result == "succeeded"
        sandbox.set_faults("kubernetes", {"path_prefix": "/api/v1/namespaces/", "methods": ["PUT"], **fault})
        outcome = app.reconciler(CRED).run(Request(reason="second"))
    finally:
        app.close()
    assert outcome.result == "succeeded", outcome.detail
    value = stored_password(sandbox, "team-a")
    assert value is not None and all(stored_password(sandbox, ns) == value for ns in TEAMS)
    puts = [r["status"] for r in sandbox.requests("kubernetes") if r["method"] == "PUT" and "/secrets/" in r["path"]]
    assert any(status >= 429 for status in puts), "the fault was not hit"


def test_a_step_that_keeps_failing_waits_the_configured_backoff(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """A distribution still failing after its in-step retries waits schedule.retry_backoff, doubling with each
    failure in a row (not a fixed 30 s), and status shows when it tries again."""
    clock = FakeClock()
    schedule = {"interval": "1d", "retry_backoff": "7s", "retry_backoff_max": "20s"}
    app = make_app(write_config(tmp_path, sandbox, schedule=schedule), clock=clock)
    try:
        assert app.reconciler(CRED).run(Request(reason="first")).result == "succeeded"
        down = {"path_prefix": "/api/v1/namespaces/team-b/", "methods": ["PUT"], "error_status": 503, "error_rate": 1.0}
        sandbox.set_faults("kubernetes", down)
        waits = []
        for _ in range(3):
            started = clock.now()
            outcome = app.reconciler(CRED).run(Request(reason="second") if not waits else None)
            rotation = app.store.load(CRED).rotation
            assert outcome.result == "inconclusive" and rotation is not None and rotation.retry_at is not None
            waits.append((rotation.retry_at - started).total_seconds())
            assert app.status(CRED, clock.now())["rotation_in_progress"]["retry_at"] == rotation.retry_at.isoformat(
                timespec="seconds"
            )
            clock.advance(waits[-1])
        sandbox.clear_faults()
        assert app.reconciler(CRED).run().result == "succeeded"
    finally:
        app.close()
    assert waits == [7.0, 14.0, 20.0]


def test_namespace_deleted_mid_rotation(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """A target namespace that disappears during a rotation is skipped; the rest complete."""
    app = make_app(write_config(tmp_path, sandbox))

    def on_event(name: str, fields: dict[str, Any]) -> None:
        if name == "key.minted":
            core(sandbox).delete_namespace("team-c")

    app.on_event = on_event
    try:
        outcome = app.reconciler(CRED).run(Request(reason="test"))
    finally:
        app.close()
    assert outcome.result == "succeeded", outcome.detail
    assert read_secret(sandbox, "team-c") is None
    value = stored_password(sandbox, "team-a")
    assert value is not None and stored_password(sandbox, "team-b") == value


def test_plan_and_check_have_no_side_effects(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """``rotator plan`` and ``rotator check`` describe and probe, and change nothing anywhere."""
    config = str(write_config(tmp_path, sandbox))

    def key_states() -> list[tuple[Any, ...]]:
        return [(k["id"], k["entity_tag"], k["disabled"], k["deleted"]) for k in iam_keys(sandbox)]

    before_keys = key_states()
    plan = run_rotator("plan", "-c", config)
    assert plan.returncode == 0, plan.stderr
    assert "create kubernetes secret team-a/icr-pull" in plan.stdout
    assert "add icr-pull to serviceaccount team-b/default" in plan.stdout
    check = run_rotator("check", "-c", config)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "FAIL" not in check.stdout
    assert key_states() == before_keys
    for ns in TEAMS:
        assert read_secret(sandbox, ns) is None
    writes = [r for r in sandbox.requests("kubernetes") if r["method"] in ("POST", "PUT", "PATCH", "DELETE")]
    assert all("dryRun=All" in r["query"] for r in writes)


def test_check_reports_a_forbidden_admin_key(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """``rotator check`` with a key that may not manage the service ID says so and exits 1."""
    bad = tmp_path / "outsider-key"
    bad.write_text(sandbox.endpoints["outsider_apikey"])
    config = write_config(tmp_path, sandbox)
    text = config.read_text().replace(sandbox.endpoints["admin_apikey_file"], str(bad))
    config.write_text(text)
    check = run_rotator("check", "-c", str(config))
    assert check.returncode == 1
    assert "FAIL" in check.stdout and "IAM" in check.stdout
    assert sandbox.endpoints["outsider_apikey"] not in check.stdout + check.stderr


def test_check_warns_of_plain_http_and_unverified_tls_and_logs_stay_json(
    sandbox: SandboxProcess, tmp_path: Path
) -> None:
    """``rotator check`` warns of an endpoint allowed plain http to another host and of a kubeconfig that
    skips TLS verification; urllib3's InsecureRequestWarning for the latter (raised on every request) is one
    JSON log line, not text."""
    import yaml

    kubeconfig = yaml.safe_load(Path(sandbox.endpoints["kubeconfig"]).read_text())
    cluster = kubeconfig["clusters"][0]["cluster"]
    del cluster["certificate-authority-data"]
    cluster["insecure-skip-tls-verify"] = True
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
    config = write_config(tmp_path, sandbox, top={"kubernetes": {"kubeconfig": str(tmp_path / "kubeconfig")}})
    doc = yaml.safe_load(config.read_text())
    lab = json.loads(json.dumps(doc["credentials"][0]))  # a second credential, never contacted by `check icr-pull`
    lab["name"] = "lab-pull"
    lab["provider"].update(endpoint="http://iam.lab.example:8080", allow_insecure_http=True)
    doc["credentials"].append(lab)
    config.write_text(yaml.safe_dump(doc))

    check = run_rotator("check", CRED, "-c", str(config))
    assert check.returncode == 0, check.stdout + check.stderr
    warnings = [line for line in check.stdout.splitlines() if line.startswith("WARN ")]
    assert len(warnings) == 2, check.stdout
    assert "credentials[1].provider: http://iam.lab.example:8080 is plain http" in warnings[0]
    assert "insecure-skip-tls-verify" in warnings[1]
    lines = [json.loads(line) for line in check.stderr.splitlines()]  # every line is JSON
    insecure = [e for e in lines if e["event"] == "python.warning"]
    assert [e["category"] for e in insecure] == ["InsecureRequestWarning"]  # once, not once per request


def test_leaked_key_is_disabled_without_waiting_for_grace(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """A key reported leaked is disabled on the next pass; other retired keys keep their grace period."""
    clock = FakeClock()
    app = make_app(write_config(tmp_path, sandbox), clock=clock)
    try:
        assert app.reconciler(CRED).run(Request(reason="first")).result == "succeeded"
        k1 = key_id_of(sandbox, stored_password(sandbox, "team-a") or "")
        assert app.reconciler(CRED).run(Request(reason="second")).result == "succeeded"
        k2 = key_id_of(sandbox, stored_password(sandbox, "team-a") or "")
        leaked = Request(reason="reported leaked", emergency=True, leaked_key_id=k2)
        assert app.reconciler(CRED).run(leaked).result == "succeeded"
        app.reconciler(CRED).run()  # the next pass revokes what is due now
    finally:
        app.close()
    states = {k["id"]: k["disabled"] for k in iam_keys(sandbox)}
    assert states[k2] is True
    assert states[k1] is False  # still inside its grace period


def test_registry_checks_are_logged_with_credential_and_rotation(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """Every ``registry.verified`` line names its credential, and the rotation it serves (a health check: none)."""
    from logtail import LogTail

    tail = LogTail()
    with make_app(write_config(tmp_path, sandbox)) as app:
        outcome = app.reconciler(CRED).run(Request(reason="test"))
        health = app.reconciler(CRED).check_current()
    assert outcome.result == "succeeded" and health is not None and health.ok
    lines = tail.events("registry.verified")
    in_rotation = [line for line in lines if "rotation_id" in line]
    assert len(in_rotation) >= 2 and len(lines) == len(in_rotation) + 1  # verify_new, verify_stored; health
    assert {line.get("credential") for line in lines} == {CRED}
    assert {line["rotation_id"] for line in in_rotation} == {outcome.rotation_id}


def test_leak_of_a_retired_key_disables_it_inside_its_grace(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """A leak report (the request book) naming a key already retired, still inside its 1 h grace, disables it on
    the next pass without a rotation; the current key and the rest stay as they are."""
    import datetime as dt

    from rotator.journal import Leak, RequestBook

    clock = FakeClock()
    app = make_app(write_config(tmp_path, sandbox), clock=clock)
    try:
        assert app.reconciler(CRED).run(Request(reason="first")).result == "succeeded"
        k1 = key_id_of(sandbox, stored_password(sandbox, "team-a") or "")
        assert app.reconciler(CRED).run(Request(reason="second")).result == "succeeded"
        app.reconciler(CRED).run()
        assert {k["id"]: k["disabled"] for k in iam_keys(sandbox)}[k1] is False  # in its grace
        leak = Leak(key_id=k1, reported_at=dt.datetime.now(dt.UTC), by="alice", request_id="r-1")
        app.store.save_requests(CRED, RequestBook(leaks=(leak,)))
        current = app.store.load(CRED).current
        assert app.status(CRED, clock.now())["leaks"][0]["state"] == "retired: disabled once no target holds it"
        assert app.reconciler(CRED).run().result == "idle"
        shown = app.status(CRED, clock.now())["leaks"]  # what `rotator status` and GET /v1/credentials show
        assert [(x["key_id"], x["reported_by"], x["state"]) for x in shown] == [(k1, "alice", "disabled")]
    finally:
        app.close()
    assert {k["id"]: k["disabled"] for k in iam_keys(sandbox)}[k1] is True
    journal = app.store.load(CRED)
    assert journal.current == current and len(journal.history) == 2, "no rotation for a retired key"


def test_rollback_restores_what_a_secret_held_when_it_changed_behind_the_seen_copy(
    sandbox: SandboxProcess, tmp_path: Path
) -> None:
    """The daemon snapshots the secrets as last seen; one whose entry was changed by someone else since (no watch
    here, so the change stays unseen) is found out by the 409 on its write, and the snapshot takes the entry it
    really held before the write is sent: the rollback puts that back, not the stale copy's."""
    from rotator.adapters.kubernetes import KubernetesSink
    from rotator.seensecrets import SeenSecrets

    app = make_app(write_config(tmp_path, sandbox))
    arm = rejected_after_distribution(sandbox, app)
    changed = "changed-behind-the-seen-copy"
    try:
        reconciler = app.reconciler(CRED)
        assert reconciler.run(Request(reason="setup")).result == "succeeded"
        old = stored_password(sandbox, "team-a")
        sink = reconciler.sinks["kubernetes"]
        assert isinstance(sink, KubernetesSink)
        sink.seen = SeenSecrets()
        sink.seen.reset()  # what the daemon does when its secret watch lists
        reconciler.read_targets(reconciler.targets())  # every secret seen
        assert len(sink.seen) == len(TEAMS)
        obj = read_secret(sandbox, "team-b")
        assert obj is not None
        doc = stored_doc(obj)
        host = sandbox.endpoints["registry_host"]
        doc["auths"][host] = {"auth": base64.b64encode(f"iamapikey:{changed}".encode()).decode()}
        obj["data"][".dockerconfigjson"] = base64.b64encode(json.dumps(doc).encode()).decode()
        core(sandbox).replace_namespaced_secret(SECRET, "team-b", obj)
        arm()
        outcome = reconciler.run(Request(reason="test"))
    finally:
        app.close()
    sandbox.clear_faults()
    assert outcome.result == "failed" and "verify_stored" in outcome.detail
    assert stored_password(sandbox, "team-b") == changed, "the rollback put back the stale copy's entry"
    assert old is not None and stored_password(sandbox, "team-a") == stored_password(sandbox, "team-c") == old
