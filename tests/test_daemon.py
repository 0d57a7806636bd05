"""The daemon: reacts to cluster events, and with two replicas exactly one acts, even across a crash."""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from daemon_env import API_AUTH, Daemon, api_config, first_rotation_done
from polling import POLL_S, wait_for
from rotation_env import (
    SECRET,
    api_client,
    core,
    iam_keys,
    read_secret,
    stored_password,
    write_config,
)

from rotator.adapters.state import ConfigMapStateStore, FileStateStore
from rotator.journal import HISTORY_LIMIT
from rotator.sandbox.control import SandboxProcess


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop()


def namespace(sbx: SandboxProcess, name: str, *, labelled: bool = True) -> None:
    key, _, value = sbx.endpoints["namespace_label"].partition("=")
    labels = {key: value} if labelled else {}
    core(sbx).create_namespace({"metadata": {"name": name, "labels": labels}})


def test_daemon_follows_cluster_events(sandbox: SandboxProcess, tmp_path: Path, daemons: list[Daemon]) -> None:
    """New namespace, drift, deletion, a stripped service account, an annotation and a 410 are all handled."""
    config = write_config(tmp_path, sandbox, top={"daemon": {"watch_timeout": "1s", "resync": "1h"}})
    daemons.append(daemon := Daemon(config))
    current = first_rotation_done(sandbox, tmp_path)

    namespace(sandbox, "team-d")
    assert wait_for(lambda: stored_password(sandbox, "team-d") == current, "secret in the new namespace")
    wait_for(
        lambda: (
            SECRET
            in [
                r.name
                for r in core(sandbox).read_namespaced_service_account("default", "team-d").image_pull_secrets or []
            ]
        ),
        "the new namespace's default service account patched",
    )
    namespace(sandbox, "team-x", labelled=False)

    obj = read_secret(sandbox, "team-a")
    assert obj is not None
    doc = {"auths": {sandbox.endpoints["registry_host"]: {"username": "iamapikey", "password": "tampered"}}}
    obj["data"][".dockerconfigjson"] = base64.b64encode(json.dumps(doc).encode()).decode()
    core(sandbox).replace_namespaced_secret(SECRET, "team-a", obj)
    wait_for(lambda: stored_password(sandbox, "team-a") == current, "drifted secret restored")

    core(sandbox).delete_namespaced_secret(SECRET, "team-b")
    wait_for(lambda: stored_password(sandbox, "team-b") == current, "deleted secret recreated")
    wait_for(
        lambda: any(e.reason == "PullSecretHealed" for e in core(sandbox).list_namespaced_event("team-b").items),
        "a PullSecretHealed event on the recreated secret",
    )

    core(sandbox).patch_namespaced_service_account(
        "default", "team-c", [{"op": "replace", "path": "/imagePullSecrets", "value": [{"name": "other"}]}]
    )
    wait_for(
        lambda: (
            [r.name for r in core(sandbox).read_namespaced_service_account("default", "team-c").image_pull_secrets]
            == ["other", SECRET]
        ),
        "service account patched again, other pull secret kept",
    )

    sandbox.admin.post("/kubernetes/compact").raise_for_status()
    wait_for(lambda: daemon.logged("watch.expired"), "a 410 seen and re-listed")
    namespace(sandbox, "team-e")
    assert wait_for(lambda: stored_password(sandbox, "team-e") == current, "secret after the re-list")

    core(sandbox).patch_namespaced_secret(
        SECRET, "team-a", {"metadata": {"annotations": {"rotator.example.com/rotate": "please"}}}
    )
    rotated = wait_for(lambda: (v := stored_password(sandbox, "team-e")) != current and v, "rotation by annotation")
    for ns in ("team-a", "team-b", "team-c", "team-d"):
        assert wait_for(lambda ns=ns: stored_password(sandbox, ns) == rotated, f"{ns} rotated")
    annotations = (read_secret(sandbox, "team-a") or {})["metadata"].get("annotations") or {}
    assert "rotator.example.com/rotate" not in annotations
    assert read_secret(sandbox, "team-x") is None  # not selected
    assert daemon.stop() == 0
    stopped = [e for e in daemon.events() if e.get("event") == "daemon.stopped"]
    assert stopped and stopped[0]["threads_left"] == [], "stop() left threads running (watches, events, API)"


def lease_holder(sbx: SandboxProcess) -> str:
    from kubernetes import client
    from rotation_env import api_client

    coordination = client.CoordinationV1Api(api_client(sbx))
    try:
        lease = coordination.read_namespaced_lease("rotator-leader", "rotator-system")
    except client.exceptions.ApiException as exc:
        if exc.status == 404:
            return ""
        raise
    return str(lease.spec.holder_identity or "")


def replicated_config(tmp_path: Path, sbx: SandboxProcess) -> Path:
    """Two replicas' config: a Lease, the state in a ConfigMap, the API with the operator token."""
    top: dict[str, Any] = {
        "state": {"kind": "configmap", "name": "rotator-state"},
        "daemon": {
            "leader_election": True,
            # Short enough for a quick takeover, long enough that a loaded CI machine does not lose the lease.
            "lease_duration": "6s",
            "renew_deadline": "4s",
            "retry_period": "1s",
            "resync": "1h",
        },
    }
    tokens = tmp_path / "api-tokens"
    tokens.write_text("operator-token-0123456789 alice rotate\n")
    top["server"] = {"listen": "127.0.0.1:0", "auth": {"mode": "token-file", "file": str(tokens)}}
    return write_config(tmp_path, sbx, top=top)


def test_two_replicas_one_leader_survives_a_leader_crash(
    sandbox: SandboxProcess, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """Exactly one replica rotates; SIGKILL it mid-rotation and the other resumes the same rotation."""
    config = replicated_config(tmp_path, sandbox)
    daemons.append(Daemon(config, identity="replica-a"))
    daemons.append(Daemon(config, identity="replica-b"))
    store = ConfigMapStateStore(core(sandbox), "rotator-system", "rotator-state")

    first = wait_for(lambda: store.load("icr-pull").last_success_at, "the first rotation")
    assert first is not None
    minted = [k for k in iam_keys(sandbox) if k["name"].startswith("rotator-icr-pull-")]
    assert len(minted) == 1, "one mint, not one per replica"
    leader_name = wait_for(lambda: lease_holder(sandbox), "a lease holder")
    leader = next(d for d in daemons if d.identity == leader_name)
    follower = next(d for d in daemons if d.identity != leader_name)
    follower_api = follower.api()

    def follower_names_leader() -> bool:
        refused = httpx.post(f"{follower_api}/v1/credentials/icr-pull/rotate", headers=API_AUTH)
        if refused.status_code == 429:  # polled past the mutation rate limit: wait for a token
            return False
        assert refused.status_code == 503, refused.text
        return bool(refused.json()["leader"] == leader_name)

    wait_for(follower_names_leader, "the follower to answer 503 naming the leader", timeout=30)

    # Slow the writes down so the rotation can be caught in flight, then ask for one.
    sandbox.set_faults("kubernetes", {"path_prefix": "/api/v1/namespaces/", "methods": ["PUT"], "latency_ms": 800})
    core(sandbox).patch_namespaced_secret(
        SECRET, "team-a", {"metadata": {"annotations": {"rotator.example.com/rotate": "now"}}}
    )
    journal = wait_for(
        lambda: (j := store.load("icr-pull")).rotation is not None and j.rotation.phase == "distributing" and j,
        "the rotation to reach distribution",
    )
    in_flight = journal.rotation.id
    leader.stop(signal.SIGKILL)
    sandbox.clear_faults()

    wait_for(lambda: lease_holder(sandbox) == follower.identity, "the follower to take the lease", timeout=20)
    done = wait_for(
        lambda: (j := store.load("icr-pull")).rotation is None and j.last_result.rotation_id == in_flight and j,
        "the follower to finish the same rotation",
        timeout=30,
    )
    assert done.last_result.result == "succeeded"
    minted = [k for k in iam_keys(sandbox) if k["name"].startswith("rotator-icr-pull-")]
    assert len(minted) == 2, "the crashed rotation's key was reused, not minted twice"
    value = stored_password(sandbox, "team-a")
    assert value is not None and all(stored_password(sandbox, ns) == value for ns in ("team-b", "team-c"))
    assert follower.logged("leader.acquired")


def test_rotate_endpoint_drives_a_real_rotation(sandbox: SandboxProcess, tmp_path: Path, daemons: list[Daemon]) -> None:
    """POST /rotate answers 202 with an id; the id reaches succeeded; a retry with the same key gets the same id."""
    tokens = tmp_path / "api-tokens"
    tokens.write_text("operator-token-0123456789 alice rotate\nviewer-token-0123456789ab bob read\n")
    top = {"server": {"listen": "127.0.0.1:0", "auth": {"mode": "token-file", "file": str(tokens)}}}
    config = write_config(tmp_path, sandbox, top=top)
    daemons.append(daemon := Daemon(config))
    before = first_rotation_done(sandbox, tmp_path)
    base = daemon.api()
    operator = {"Authorization": "Bearer operator-token-0123456789", "Idempotency-Key": "change-42"}
    assert httpx.post(f"{base}/v1/credentials/icr-pull/rotate").status_code == 401
    viewer = {"Authorization": "Bearer viewer-token-0123456789ab"}
    assert httpx.post(f"{base}/v1/credentials/icr-pull/rotate", headers=viewer).status_code == 403
    first = httpx.post(f"{base}/v1/credentials/icr-pull/rotate", headers=operator, json={"reason": "change 42"})
    assert first.status_code == 202, first.text
    rotation_id = first.json()["rotation_id"]
    again = httpx.post(f"{base}/v1/credentials/icr-pull/rotate", headers=operator, json={"reason": "change 42"})
    assert again.status_code == 202 and again.json()["rotation_id"] == rotation_id

    def state() -> str | None:
        body = httpx.get(f"{base}/v1/rotations/{rotation_id}", headers=viewer).json()
        return body["state"] if body["state"] in ("succeeded", "failed") else None

    assert wait_for(state, "the requested rotation to finish") == "succeeded"
    after = stored_password(sandbox, "team-a")
    assert after is not None and after != before
    status = httpx.get(f"{base}/v1/credentials", headers=viewer).json()["credentials"][0]
    assert status["last_result"]["rotation_id"] == rotation_id
    assert after not in json.dumps(status) and before not in json.dumps(status)


def test_idle_daemon_sends_nothing(sandbox: SandboxProcess, tmp_path: Path, daemons: list[Daemon]) -> None:
    """With nothing due, the daemon makes no IAM, registry or Kubernetes requests beyond its open watches."""
    config = write_config(tmp_path, sandbox, top={"daemon": {"resync": "1h"}})
    daemons.append(Daemon(config))
    first_rotation_done(sandbox, tmp_path)

    def counts() -> tuple[int, int, int]:
        kube = [r for r in sandbox.requests("kubernetes") if "watch" not in r["query"]]
        return len(sandbox.requests("iam")), len(sandbox.requests("registry")), len(kube)

    # Settled: the counts hold still for a second (the passes right after the rotation are done).
    settled: list[tuple[int, int, int]] = []

    def still() -> bool:
        settled.append(counts())
        return len(settled) > 20 and settled[-1] == settled[-21]

    wait_for(still, "the daemon to settle")
    quiet_until = time.monotonic() + 3
    while time.monotonic() < quiet_until:  # an observation window: nothing may happen in it
        assert counts() == settled[-1], "an idle daemon sent requests"
        time.sleep(POLL_S)


def test_sigterm_mid_rotation_finishes_the_step_and_leaves_a_resumable_journal(
    sandbox: SandboxProcess, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """SIGTERM during distribution: the step completes, the process exits 0, and a rerun finishes the rotation."""
    from rotation_env import pulls, run_rotator

    config = write_config(tmp_path, sandbox, top={"daemon": {"resync": "1h", "shutdown_grace": "20s"}})
    daemons.append(daemon := Daemon(config))
    before = first_rotation_done(sandbox, tmp_path)  # a SIGTERM inside the first rotation would be taken for this one
    store = FileStateStore(tmp_path / "state")
    sandbox.set_faults("kubernetes", {"path_prefix": "/api/v1/namespaces/", "methods": ["PUT"], "latency_ms": 800})
    core(sandbox).patch_namespaced_secret(
        SECRET, "team-a", {"metadata": {"annotations": {"rotator.example.com/rotate": "now"}}}
    )
    wait_for(
        lambda: (j := store.load("icr-pull")).rotation is not None and j.rotation.phase == "distributing",
        "the rotation to reach distribution",
    )
    assert daemon.stop(signal.SIGTERM) == 0
    sandbox.clear_faults()
    journal = store.load("icr-pull")  # parses: not corrupted
    phase = journal.rotation.phase if journal.rotation else "done"
    assert phase in ("distributed", "stored_verified", "done"), f"stopped inside a step: {phase}"
    assert run_rotator("reconcile", "icr-pull", "-c", str(config)).returncode == 0
    finished = store.load("icr-pull")
    assert finished.rotation is None and finished.last_result is not None
    assert finished.last_result.result == "succeeded"
    after = stored_password(sandbox, "team-a")
    assert after is not None and after != before and pulls(sandbox, after) == "ok"


def test_pass_that_cannot_run_is_retried_with_backoff_and_counted(
    sandbox: SandboxProcess, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """IAM refuses rotator's own key (400): each pass fails, is counted and retried after a growing
    wait, with no event or request to wake it; once IAM takes the key again, the first rotation completes."""
    from monitoring_env import sample, scrape

    sandbox.set_faults("iam", {"path_prefix": "/identity/token", "error_status": 400, "error_rate": 1.0})
    schedule = {"interval": "1h", "retry_backoff": "1s", "retry_backoff_max": "2s"}
    tokens = tmp_path / "api-tokens"
    tokens.write_text("operator-token-0123456789 alice rotate\n")
    server = {"listen": "127.0.0.1:0", "auth": {"mode": "token-file", "file": str(tokens)}}
    config = write_config(tmp_path, sandbox, schedule=schedule, top={"daemon": {"resync": "1h"}, "server": server})
    daemons.append(daemon := Daemon(config))
    base = daemon.api()

    def errors() -> float:
        return sample(scrape(base), "rotator_pass_errors_total", credential="icr-pull", reason="unauthorized")

    wait_for(lambda: errors() >= 3, "three failed passes (two of them retries nobody asked for)")
    failures = [e for e in daemon.events() if e.get("event") == "worker.failed"]
    assert [f["retry_in"] for f in failures[:3]] == [1.0, 2.0, 2.0], "backoff doubles from 1s, capped at 2s"
    assert all("IAM token" in f["error"] and f["reason"] == "unauthorized" for f in failures)
    started = sample(scrape(base), "rotator_last_pass_success_timestamp_seconds", credential="icr-pull")
    failing = credential_status(base)["passes_failing"]
    assert failing["reason"] == "unauthorized" and failing["failures_in_a_row"] >= 3
    assert "IAM token" in failing["detail"] and failing["next_retry_at"] >= failing["since"]

    sandbox.clear_faults()
    first_rotation_done(sandbox, tmp_path)
    assert sample(scrape(base), "rotator_last_pass_success_timestamp_seconds", credential="icr-pull") > started
    assert credential_status(base)["passes_failing"] is None


def credential_status(base: str) -> dict[str, Any]:
    """The daemon's GET /v1/credentials entry for the one credential."""
    response = httpx.get(f"{base}/v1/credentials", headers=API_AUTH, timeout=5)
    assert response.status_code == 200, response.text
    entry: dict[str, Any] = response.json()["credentials"][0]
    return entry


def test_own_writes_route_no_heal_while_outside_changes_do(
    sandbox: SandboxProcess, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """A rotation's own writes (distribution, the annotation taken) come back as watch events, often before
    the writes' responses, and route nothing; an outside change to a secret routes one heal. The watch
    stream is ordered, so once the outside change is routed every event of the rotation before it was seen."""
    tokens = tmp_path / "api-tokens"
    tokens.write_text("operator-token-0123456789 alice rotate\n")
    top = {
        "daemon": {"resync": "1h"},
        "server": {"listen": "127.0.0.1:0", "auth": {"mode": "token-file", "file": str(tokens)}},
    }
    daemons.append(daemon := Daemon(write_config(tmp_path, sandbox, top=top)))
    first_rotation_done(sandbox, tmp_path)
    store = FileStateStore(tmp_path / "state")

    def routed_after(seen: int) -> list[tuple[str, str, str]]:
        lines = [e for e in daemon.events() if e.get("event") == "event.routed"][seen:]
        return [(e["kind"], e["target"], e["reason"]) for e in lines]

    def tamper(ns: str) -> None:
        obj = read_secret(sandbox, ns)
        assert obj is not None
        obj["data"][".dockerconfigjson"] = base64.b64encode(b'{"auths": {}}').decode()
        core(sandbox).replace_namespaced_secret(SECRET, ns, obj)

    def rotations() -> int:
        journal = store.load("icr-pull")
        return len(journal.history) if journal.rotation is None else 0

    seen = len(routed_after(0))
    rotated = httpx.post(f"{daemon.api()}/v1/credentials/icr-pull/rotate", headers=API_AUTH)
    assert rotated.status_code == 202, rotated.text
    wait_for(lambda: rotations() == 2, "the rotation asked for through the API")
    tamper("team-c")
    healed = ("heal", f"kubernetes:team-c/{SECRET}", "secret modified")
    assert wait_for(lambda: routed_after(seen), "the outside change routed") == [healed]

    seen += 1
    core(sandbox).patch_namespaced_secret(
        SECRET, "team-a", {"metadata": {"annotations": {"rotator.example.com/rotate": "now"}}}
    )
    wait_for(lambda: rotations() == 3, "the rotation asked for by annotation")
    tamper("team-c")
    wait_for(lambda: healed in routed_after(seen), "the second outside change routed")
    annotated = [
        ("heal", f"kubernetes:team-a/{SECRET}", "secret modified"),
        ("rotate", f"kubernetes:team-a/{SECRET}", f"annotation rotator.example.com/rotate on team-a/{SECRET}"),
    ]
    assert routed_after(seen) == [*annotated, healed], "only the annotation (an outside change) and the tampering"


def test_requests_while_a_rotation_waits_join_it_and_a_leak_ends_disabled(
    sandbox: SandboxProcess, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """While a rotation waits out a retry (one namespace refuses writes), a rotate request joins it and its status
    is that rotation's, never another's failure; a leak report of the key being replaced is recorded at once and
    the key is disabled as soon as the replacement is in place, without the grace period (1 h here)."""
    schedule = {"interval": "1h", "retry_backoff": "1s", "retry_backoff_max": "2s"}
    config = api_config(tmp_path, sandbox, schedule=schedule)
    daemons.append(daemon := Daemon(config))
    first_rotation_done(sandbox, tmp_path)
    base = daemon.api()
    store = FileStateStore(tmp_path / "state")
    old_key = store.load("icr-pull").current
    assert old_key is not None
    down = {"path_prefix": "/api/v1/namespaces/team-b/", "methods": ["PUT"], "error_status": 503, "error_rate": 1.0}
    sandbox.set_faults("kubernetes", down)
    first = httpx.post(f"{base}/v1/credentials/icr-pull/rotate", headers=API_AUTH, json={"reason": "first"})
    assert first.status_code == 202, first.text
    in_flight = first.json()["rotation_id"]
    wait_for(
        lambda: (r := store.load("icr-pull").rotation) is not None and r.id == in_flight and r.waiting,
        "the rotation to wait out a retry",
    )
    second = httpx.post(f"{base}/v1/credentials/icr-pull/rotate", headers=API_AUTH, json={"reason": "second"})
    assert second.status_code == 202, second.text
    assert second.json()["joined"] is True and second.json()["rotation_id"] == in_flight
    shown = httpx.get(f"{base}/v1/rotations/{in_flight}", headers=API_AUTH).json()
    assert shown["state"] in ("waiting", "running") and shown["id"] == in_flight
    assert shown["state"] == "running" or shown["retry_at"] is not None

    stranger = httpx.post(f"{base}/v1/credentials/icr-pull/leaked", headers=API_AUTH, json={"key_id": "ApiKey-nope"})
    assert stranger.status_code == 422 and "not one of" in stranger.json()["error"], stranger.text
    leak = httpx.post(f"{base}/v1/credentials/icr-pull/leaked", headers=API_AUTH, json={"key_id": old_key.id})
    assert leak.status_code == 202 and leak.json()["rotation_id"] == in_flight, leak.text
    recorded = store.load_requests("icr-pull").leaks
    assert [(x.key_id, x.by) for x in recorded] == [(old_key.id, "alice")]

    sandbox.clear_faults()
    done = wait_for(
        lambda: httpx.get(f"{base}/v1/rotations/{in_flight}", headers=API_AUTH).json()["state"] == "succeeded",
        "the joined rotation to succeed",
    )
    assert done
    wait_for(lambda: {k["id"]: k["disabled"] for k in iam_keys(sandbox)}[old_key.id], "the leaked key disabled")
    leaks = credential_status(base)["leaks"]
    assert [(x["key_id"], x["state"]) for x in leaks] == [(old_key.id, "disabled")]
    journal = store.load("icr-pull")
    assert [r.rotation_id for r in journal.history].count(in_flight) == 1
    assert all(r.rotation_id == in_flight or r is journal.history[0] for r in journal.history), "one rotation only"


def test_a_request_accepted_by_a_leader_that_dies_is_served_by_the_next(
    sandbox: SandboxProcess, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """The leader records a request and is killed before starting it: the other replica takes the lease, finds
    the request in the shared state, serves it, and answers the same Idempotency-Key with the same id."""
    config = replicated_config(tmp_path, sandbox)
    daemons.append(leader := Daemon(config, identity="replica-a", env={"ROTATOR_CRASH_AT": "request:before-start"}))
    wait_for(lambda: lease_holder(sandbox) == "replica-a", "replica-a to lead", timeout=30)
    store = ConfigMapStateStore(core(sandbox), "rotator-system", "rotator-state")
    wait_for(lambda: store.load("icr-pull").last_success_at, "the first rotation", timeout=30)
    daemons.append(other := Daemon(config, identity="replica-b"))
    other_api = other.api()
    headers = {**API_AUTH, "Idempotency-Key": "change-9"}
    with contextlib.suppress(httpx.TransportError):  # killed before it answered, or just after
        httpx.post(f"{leader.api()}/v1/credentials/icr-pull/rotate", headers=headers, json={"reason": "c9"}, timeout=10)
    assert leader.proc.wait(30) == -signal.SIGKILL
    recorded = [r for r in store.load_requests("icr-pull").requests if r.idempotency_key == "change-9"]
    assert len(recorded) == 1 and recorded[0].state == "queued"

    wait_for(lambda: lease_holder(sandbox) == "replica-b", "replica-b to take the lease", timeout=30)
    status_url = f"{other_api}/v1/rotations/{recorded[0].id}"
    state = wait_for(
        lambda: (s := httpx.get(status_url, headers=API_AUTH).json()["state"]) in ("succeeded", "failed") and s,
        "the new leader to serve the recorded request",
        timeout=30,
    )
    assert state == "succeeded"
    again = httpx.post(f"{other_api}/v1/credentials/icr-pull/rotate", headers=headers, json={"reason": "c9"})
    assert again.status_code == 202 and again.json()["rotation_id"] == recorded[0].id, again.text
    assert [r.rotation_id for r in store.load("icr-pull").history].count(recorded[0].id) == 1


def test_a_warm_daemon_writes_each_secret_with_one_put_and_merges_after_a_409(
    sandbox: SandboxProcess, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """With the managed secrets seen by its watch, a rotation costs one PUT per secret and no GET (observation,
    snapshot, stored-secret check and write all go from the secret as last seen). A secret changed while the
    watch could not see it is written over with a stale resourceVersion: the 409 makes the daemon read it again,
    and the other registry's entry the outside write added survives."""
    from kubernetes import client

    from rotator import dockerconfig

    tokens = tmp_path / "api-tokens"
    tokens.write_text("operator-token-0123456789 alice rotate\n")
    top = {
        "daemon": {"watch_timeout": "1s", "resync": "1h"},
        "server": {"listen": "127.0.0.1:0", "auth": {"mode": "token-file", "file": str(tokens)}},
    }
    daemons.append(daemon := Daemon(write_config(tmp_path, sandbox, top=top)))
    first_rotation_done(sandbox, tmp_path)
    watch_path = "/api/v1/secrets"  # the secret watch (all namespaces, by name and label)
    wait_for(
        lambda: any(r["path"] == watch_path and "watch" in r["query"] for r in sandbox.requests("kubernetes")),
        "the secret watch to stream",
    )
    base = daemon.api()
    namespaces = ("team-a", "team-b", "team-c")
    paths = {f"/api/v1/namespaces/{ns}/secrets/{SECRET}": ns for ns in namespaces}
    outside_agent = "outside-writer/1.0"

    def rotate() -> list[dict[str, Any]]:
        """One rotation through the API; the daemon's requests on the target secrets meanwhile."""
        since = sandbox.last_seq("kubernetes")
        rotation_id = httpx.post(f"{base}/v1/credentials/icr-pull/rotate", headers=API_AUTH).json()["rotation_id"]

        def finished() -> str | None:
            state = httpx.get(f"{base}/v1/rotations/{rotation_id}", headers=API_AUTH).json()["state"]
            return state if state in ("succeeded", "failed") else None

        assert wait_for(finished, "the rotation") == "succeeded"
        return [
            r
            for r in sandbox.requests("kubernetes", since=since)
            if r["path"] in paths and r["user_agent"] != outside_agent
        ]

    def per_secret(log: list[dict[str, Any]]) -> dict[str, list[tuple[str, int]]]:
        out: dict[str, list[tuple[str, int]]] = {ns: [] for ns in namespaces}
        for r in log:
            out[paths[r["path"]]].append((r["method"], r["status"]))
        return out

    rotate()  # every secret seen since the watch listed: read once (or written) into what the daemon keeps
    warm = per_secret(rotate())
    assert warm == {ns: [("PUT", 200)] for ns in namespaces}, warm

    # The watch cannot reconnect (its stream ends every second): changes from now on stay unseen.
    sandbox.set_faults(
        "kubernetes", {"path_prefix": watch_path, "methods": ["GET"], "error_status": 500, "error_count": 1_000_000}
    )
    since = sandbox.last_seq("kubernetes")
    wait_for(
        lambda: any(
            r["path"] == watch_path and r["status"] == 500 for r in sandbox.requests("kubernetes", since=since)
        ),
        "the secret watch to be cut off",
    )
    outside = client.ApiClient(api_client(sandbox).configuration)
    outside.user_agent = outside_agent
    outside_core = client.CoreV1Api(outside)
    obj = outside_core.read_namespaced_secret(SECRET, "team-b", _preload_content=False)
    secret = json.loads(obj.data)
    doc = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
    doc["auths"]["other.example.com"] = {"auth": base64.b64encode(b"robot:other-registry-token").decode()}
    secret["data"][".dockerconfigjson"] = base64.b64encode(json.dumps(doc).encode()).decode()
    outside_core.replace_namespaced_secret(SECRET, "team-b", secret)

    try:
        stale = per_secret(rotate())
    finally:
        sandbox.clear_faults()
        outside.close()
    assert stale["team-b"] == [("PUT", 409), ("GET", 200), ("PUT", 200)], stale
    assert stale["team-a"] == stale["team-c"] == [("PUT", 200)], stale
    stored = read_secret(sandbox, "team-b")
    assert stored is not None
    merged = dockerconfig.parse(base64.b64decode(stored["data"][".dockerconfigjson"]))
    assert "other.example.com" in merged["auths"], "the outside write's entry was lost"
    assert stored_password(sandbox, "team-b") == stored_password(sandbox, "team-a")


def test_a_request_that_joined_a_scheduled_rotation_keeps_its_outcome_past_the_history(
    sandbox: SandboxProcess, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """A request that joins a rotation no request started (the first, scheduled one) was answered that
    rotation's id; after more rotations than the journal's history keeps, GET /v1/rotations/<id> still shows its
    outcome from the joined record (it answered 404 once the history had moved on: seen in the chaos test)."""
    sandbox.admin.put("/iam/key-limit", json={"limit": 100}).raise_for_status()  # keys retire after 1 h here
    down = {"path_prefix": "/api/v1/namespaces/team-b/", "methods": ["POST", "PUT"], "error_status": 503}
    sandbox.set_faults("kubernetes", {**down, "error_rate": 1.0})
    schedule = {"interval": "1h", "retry_backoff": "1s", "retry_backoff_max": "2s"}
    config = api_config(tmp_path, sandbox, schedule=schedule)
    doc = yaml.safe_load(config.read_text())
    doc["server"]["rate_limit"] = {"per_minute": 1000, "burst": 100}  # 21 requests in a row
    config.write_text(yaml.safe_dump(doc))
    daemons.append(daemon := Daemon(config))
    store = FileStateStore(tmp_path / "state")
    scheduled = wait_for(
        lambda: (r := store.load("icr-pull").rotation) is not None and r.waiting and r.id,
        "the scheduled first rotation to wait out a retry",
    )
    assert not store.load_requests("icr-pull").requests, "no request started it"
    base = daemon.api()

    def finished(rotation_id: str) -> str | None:
        body = httpx.get(f"{base}/v1/rotations/{rotation_id}", headers=API_AUTH).json()
        return body["state"] if body["state"] in ("succeeded", "failed") else None

    joined = httpx.post(f"{base}/v1/credentials/icr-pull/rotate", headers=API_AUTH, json={"reason": "join"})
    assert joined.status_code == 202 and joined.json() == {**joined.json(), "rotation_id": scheduled, "joined": True}
    sandbox.clear_faults()
    assert wait_for(lambda: finished(scheduled), "the scheduled rotation to finish") == "succeeded"
    for i in range(HISTORY_LIMIT):
        answer = httpx.post(f"{base}/v1/credentials/icr-pull/rotate", headers=API_AUTH, json={"reason": f"r{i}"})
        assert answer.status_code == 202 and answer.json()["joined"] is False, answer.text
        rotation_id = answer.json()["rotation_id"]
        assert wait_for(functools.partial(finished, rotation_id), f"rotation {i}") == "succeeded"
    assert scheduled not in [r.rotation_id for r in store.load("icr-pull").history], "past the history"
    shown = httpx.get(f"{base}/v1/rotations/{scheduled}", headers=API_AUTH)
    assert shown.status_code == 200, shown.text
    assert (shown.json()["id"], shown.json()["state"]) == (scheduled, "succeeded")
