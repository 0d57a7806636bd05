"""RegistryCredential promises under faults (docs/registrycredential.md, "How rotator manages them"): a
rotate-requested-at value recorded in the request book and then lost to a crash is served once, and once
only, by the next daemon; a status write the API server refuses is retried on a later pass until the
status matches the journal; a Revoke deletion interrupted by a SIGKILL is carried to its end by the next
daemon (keys retired through the grace path, finalizer removed)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from daemon_env import Daemon
from kubectl_env import Kubectl
from polling import wait_for
from regcred_env import apply, condition, get, kubectl, last_pass, sbx, spec  # noqa: F401 - kubectl, sbx: the fixtures
from rotation_env import iam_keys

from rotator.adapters.state import FileStateStore
from rotator.journal import CredentialJournal
from rotator.regcred import API_VERSION, FINALIZER, ROTATE_ANNOTATION
from rotator.sandbox.control import SandboxProcess

READY_S = 60.0  # the first rotation on a loaded 2-core machine


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("regcred-faults-state")


@pytest.fixture(scope="module")
def config(sbx: SandboxProcess, kubectl: Kubectl, state_dir: Path) -> Path:
    """One config for every daemon of the module: the same state, so a restarted daemon carries on."""
    doc = {
        "credentials_from": "cluster",
        "kubernetes": {"kubeconfig": sbx.endpoints["kubeconfig"], "concurrency": 4},
        "state": {"kind": "file", "path": str(state_dir)},
        "server": {"listen": "127.0.0.1:0"},
        "daemon": {"resync": "1s"},  # a refused status write is retried within a second or two
    }
    path = state_dir.parent / "rotator-regcred-faults.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def daemon(config: Path) -> Iterator[Daemon]:
    proc = Daemon(config, identity="regcred-faults")
    proc.api()
    yield proc
    assert proc.stop() == 0


def status(kubectl: Kubectl, name: str) -> dict[str, Any]:
    found: dict[str, Any] = get(kubectl, name).get("status") or {}
    return found


def settled(store: FileStateStore, name: str, results: int) -> CredentialJournal | None:
    """The journal once no rotation is under way and at least ``results`` are in its history."""
    journal = store.load(name)
    return journal if journal.rotation is None and len(journal.history) >= results else None


def ready_and_idle(kubectl: Kubectl, store: FileStateStore, name: str) -> str:
    """Waits until ``name`` is Ready, its rotation over and its status showing it; returns that rotation's id."""
    kubectl("wait", "--for=condition=Ready", f"regcred/{name}", f"--timeout={READY_S:.0f}s")
    journal = wait_for(lambda: settled(store, name, 1), "idle")
    rotation_id = journal.last_result.rotation_id  # type: ignore[union-attr]
    wait_for(lambda: status(kubectl, name).get("lastRotation", {}).get("id") == rotation_id, "status in sync")
    return rotation_id


def annotation_requests(store: FileStateStore, name: str, value: str) -> list[Any]:
    """The book's records of the annotation's ``value`` (the controller's Idempotency-Key names the annotation)."""
    key = f"{ROTATE_ANNOTATION}={value}"
    return [r for r in store.load_requests(name).requests if r.idempotency_key == key]


def test_an_annotation_recorded_before_a_crash_is_served_once_by_the_next_daemon(
    sbx: SandboxProcess, kubectl: Kubectl, config: Path, state_dir: Path
) -> None:
    name, value = "crash", "2026-12-01T20:00:00Z"
    store = FileStateStore(state_dir)
    first = Daemon(config, identity="regcred-faults")
    try:
        first.api()
        apply(kubectl, name, spec(sbx, "regcred-crash"))
        ready_and_idle(kubectl, store, name)
    finally:
        assert first.stop() == 0
    before = len(store.load(name).history)

    armed = Daemon(config, identity="regcred-faults", env={"ROTATOR_CRASH_AT": "request:recorded"})
    try:
        armed.api()
        kubectl("annotate", "--overwrite", f"regcred/{name}", f"{ROTATE_ANNOTATION}={value}")
        wait_for(lambda: armed.proc.poll() is not None, "the armed daemon dead at request:recorded")
    finally:
        assert armed.stop() == -signal.SIGKILL
    # Recorded, not served: the book holds it, no rotation ran, the status does not claim it.
    assert [r.state for r in annotation_requests(store, name, value)] == ["queued"]
    assert len(store.load(name).history) == before
    assert status(kubectl, name).get("lastRotateRequest") != value

    after = Daemon(config, identity="regcred-faults")
    try:
        after.api()
        wait_for(lambda: status(kubectl, name).get("lastRotateRequest") == value, "the request served")
        journal = wait_for(lambda: settled(store, name, before + 1), "the rotation")
        assert len(journal.history) == before + 1
        assert journal.history[-1].result == "succeeded", journal.history[-1]
        [record] = annotation_requests(store, name, value)
        assert (record.principal, record.state, record.id) == (
            "annotation",
            "succeeded",
            journal.history[-1].rotation_id,
        )
        wait_for(lambda: status(kubectl, name)["lastRotation"]["id"] == record.id, "the status showing it")

        # Later passes (resync 1s) see the same value served: no second rotation, no second record.
        kubectl("label", "--overwrite", f"regcred/{name}", "touched=yes")  # a watch event, and passes go on
        seen = store.load(name)
        for _ in range(3):
            at = last_pass(after, name)
            wait_for(lambda at=at: last_pass(after, name) > at, "a pass", timeout=20)  # type: ignore[misc]
        assert len(store.load(name).history) == len(seen.history) == before + 1
        assert len(annotation_requests(store, name, value)) == 1
        kubectl("delete", f"regcred/{name}", "--wait=true", "--timeout=30s")  # released by its finalizer
    finally:
        assert after.stop() == 0


def test_a_refused_status_write_is_retried_until_the_status_matches_the_journal(
    sbx: SandboxProcess, kubectl: Kubectl, daemon: Daemon, state_dir: Path
) -> None:
    name, value = "refused", "2026-12-01T20:10:00Z"
    store = FileStateStore(state_dir)
    apply(kubectl, name, spec(sbx, "regcred-refused"))
    old = ready_and_idle(kubectl, store, name)
    before = len(store.load(name).history)

    path = f"/apis/{API_VERSION}/registrycredentials/{name}/status"
    sbx.set_faults(
        "kubernetes", {"path_prefix": path, "methods": ["PATCH", "PUT"], "error_status": 503, "error_rate": 1.0}
    )
    try:
        since = sbx.last_seq("kubernetes")
        kubectl("annotate", "--overwrite", f"regcred/{name}", f"{ROTATE_ANNOTATION}={value}")
        # The rotation runs (its writes go to Secrets and IAM, not to this path).
        journal = wait_for(lambda: settled(store, name, before + 1), "the rotation", timeout=READY_S)
        rotated = journal.history[-1]
        assert rotated.result == "succeeded" and rotated.rotation_id != old
        # Passes after it tried to say so, and were refused each time: retried, not given up after one.
        done = sbx.last_seq("kubernetes")
        wait_for(lambda: len(refused(sbx, path, done)) >= 2, "refused status writes after the rotation", timeout=30)
        assert {r["status"] for r in writes(sbx, path, since)} == {503}
        shown = status(kubectl, name)
        assert shown["lastRotation"]["id"] == old and shown.get("lastRotateRequest") != value
    finally:
        sbx.clear_faults()

    def caught_up() -> dict[str, Any] | None:
        now = status(kubectl, name)
        in_sync = now.get("lastRotation", {}).get("id") == rotated.rotation_id
        return now if in_sync and now.get("lastRotateRequest") == value else None

    shown = wait_for(caught_up, "the status written once the API server accepts it", timeout=30)
    assert (condition({"status": shown}, "Ready") or {}).get("status") == "True", shown
    assert shown["lastRotation"]["result"] == "succeeded"
    assert len(store.load(name).history) == before + 1  # the refusals asked for nothing more
    kubectl("delete", f"regcred/{name}", "--wait=true", "--timeout=30s")


def writes(sbx: SandboxProcess, path: str, since: int) -> list[dict[str, Any]]:
    return [r for r in sbx.requests("kubernetes", since) if r["path"] == path and r["method"] in ("PATCH", "PUT")]


def refused(sbx: SandboxProcess, path: str, since: int) -> list[dict[str, Any]]:
    return [r for r in writes(sbx, path, since) if r["status"] == 503]


def test_a_revoke_interrupted_by_a_kill_is_finished_by_the_next_daemon(
    sbx: SandboxProcess, kubectl: Kubectl, config: Path, state_dir: Path
) -> None:
    name = "revoke-kill"
    store = FileStateStore(state_dir)
    first = Daemon(config, identity="regcred-faults")
    try:
        first.api()
        body = spec(sbx, "regcred-revoke-kill", gracePeriod="5s", deleteAfter="1s", deletionPolicy="Revoke")
        apply(kubectl, name, body)
        ready_and_idle(kubectl, store, name)
        key_id = store.load(name).current.id  # type: ignore[union-attr]
        assert live(sbx, key_id)
        kubectl("delete", f"regcred/{name}", "--wait=false")
        wait_for(lambda: (condition(get(kubectl, name), "Ready") or {}).get("reason") == "Revoking", "Revoking")
    finally:
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    # Killed within the grace period: the resource is still held, its key still live.
    assert FINALIZER in get(kubectl, name)["metadata"].get("finalizers", [])
    assert live(sbx, key_id)

    after = Daemon(config, identity="regcred-faults")
    try:
        after.api()
        gone = lambda: kubectl("get", f"regcred/{name}", check=False).returncode != 0  # noqa: E731
        wait_for(gone, "the resource gone", timeout=60)
        assert not live(sbx, key_id), "the finalizer was removed while the credential's key was still live"
        # Through the grace path: the next daemon disabled it, then deleted it.
        steps = [e["event"] for e in after.events() if e.get("key_id") == key_id]
        assert [x for x in steps if x in ("key.disabled", "key.deleted")] == ["key.disabled", "key.deleted"], steps
    finally:
        assert after.stop() == 0


def live(sbx: SandboxProcess, key_id: str) -> bool:
    return any(k["id"] == key_id and not k["deleted"] for k in iam_keys(sbx))
