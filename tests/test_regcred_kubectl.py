"""RegistryCredential resources driven with the real kubectl against the sandbox, `rotator run` (with
``credentials_from: cluster``) managing them: a resource applied is picked up and rotated, `kubectl wait
--for=condition=Ready` returns after the first rotation, `kubectl get` prints the columns, `kubectl
describe` shows conditions and Events, the rotate-requested-at annotation triggers exactly one rotation,
a spec change re-plans (observedGeneration), an invalid spec is refused in the status, a deleted
resource (deletionPolicy Retain) is released with its secrets left, and the status is written only when
it changes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from daemon_env import Daemon
from kubectl_env import Kubectl, kubectl_runner
from masked import masked
from polling import wait_for
from regcred_env import (  # noqa: F401 - kubectl, sbx: the fixtures
    ADMIN_SECRET,
    CRD,
    OWN_NAMESPACE,
    apply,
    condition,
    get,
    held_passwords,
    kubectl,
    last_pass,
    sbx,
    spec,
)
from rotation_env import iam_keys, pulls, run_rotator, write_config

from rotator.adapters.state import FileStateStore
from rotator.regcred import FINALIZER, ROTATE_ANNOTATION
from rotator.sandbox.control import SandboxProcess

PICKUP_S = 5.0  # "within a second" on an idle machine; bounded generously for a loaded 2-core one


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("regcred-state")


@pytest.fixture(scope="module")
def daemon(sbx: SandboxProcess, kubectl: Kubectl, state_dir: Path) -> Iterator[Daemon]:
    ep = sbx.endpoints
    doc = {
        "credentials_from": "cluster",
        "kubernetes": {"kubeconfig": ep["kubeconfig"], "concurrency": 4},
        "state": {"kind": "file", "path": str(state_dir)},
        "server": {"listen": "127.0.0.1:0"},
        "daemon": {"resync": "1s"},  # many passes: the status must still be written only on change
    }
    config = state_dir.parent / "rotator-regcred.yaml"
    config.write_text(yaml.safe_dump(doc))
    proc = Daemon(config, identity="regcred")
    proc.api()  # started
    yield proc
    assert proc.stop() == 0


def status_writes(sbx: SandboxProcess, name: str, since: int = 0) -> int:
    """Writes of the resource's status the API server received (its request log)."""
    path = f"/apis/rotator.example.com/v1alpha1/registrycredentials/{name}/status"
    return sum(1 for r in sbx.requests("kubernetes", since) if r["path"] == path and r["method"] in ("PUT", "PATCH"))


def test_a_resource_is_managed_shown_rotated_on_request_replanned_and_released(
    sbx: SandboxProcess, kubectl: Kubectl, daemon: Daemon, state_dir: Path
) -> None:
    name = "pull"
    started = time.monotonic()
    apply(kubectl, name, spec(sbx, "regcred-pull"))
    wait_for(lambda: FINALIZER in get(kubectl, name)["metadata"].get("finalizers", []), "pickup", timeout=PICKUP_S)
    picked_up_s = time.monotonic() - started

    waited = kubectl("wait", "--for=condition=Ready", f"regcred/{name}", "--timeout=60s", check=False)
    assert waited.returncode == 0, waited.stderr
    held = held_passwords(sbx, "regcred-pull")
    assert len(set(held.values())) == 1 and None not in held.values()
    assert pulls(sbx, next(iter(held.values()))) == "ok"  # type: ignore[arg-type]

    # The columns, once the pass after the rotation counted the targets.
    wait_for(lambda: (get(kubectl, name).get("status") or {}).get("targets", {}).get("inSync") == 3, "targets")
    table = kubectl("get", "regcred").stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "KEY", "AGE", "NEXT", "ROTATION", "IN", "SYNC", "AGE"]
    row = next(line.split() for line in table[1:] if line.split()[0] == name)
    assert row[1] == "True" and row[4] == "3", table
    obj = get(kubectl, name)
    status = obj["status"]
    assert status["observedGeneration"] == obj["metadata"]["generation"] == 1
    assert status["lastRotation"]["result"] == "succeeded"
    assert condition(obj, "Rotating")["status"] == "False"  # type: ignore[index]
    assert condition(obj, "Degraded")["status"] == "False"  # type: ignore[index]

    def described() -> str | None:
        out = kubectl("describe", f"regcred/{name}").stdout
        return out if "Rotated" in out else None

    text = wait_for(described, "the Rotated event in describe")
    assert "Conditions:" in text and "KeyVerified" in text and "Events:" in text, text

    # Nothing changes over several passes (resync 1s): not one status write reaches the API server.
    writes = status_writes(sbx, name)
    since = sbx.last_seq("kubernetes")
    version = get(kubectl, name)["metadata"]["resourceVersion"]
    first = last_pass(daemon, name)
    for _ in range(3):
        seen = last_pass(daemon, name)
        wait_for(lambda seen=seen: last_pass(daemon, name) > seen, "a pass", timeout=20)  # type: ignore[misc]
    assert last_pass(daemon, name) > first
    assert status_writes(sbx, name, since) == 0
    assert get(kubectl, name)["metadata"]["resourceVersion"] == version

    # The annotation asks for exactly one rotation.
    store = FileStateStore(state_dir)
    before = len(store.load(name).history)
    kubectl("annotate", "--overwrite", f"regcred/{name}", f"{ROTATE_ANNOTATION}=2026-12-01T12:00:00Z")
    wait_for(
        lambda: (get(kubectl, name).get("status") or {}).get("lastRotateRequest") == "2026-12-01T12:00:00Z",
        "the request served",
    )
    wait_for(lambda: len((j := store.load(name)).history) == before + 1 and j.rotation is None, "one rotation")
    kubectl("label", "--overwrite", f"regcred/{name}", "touched=yes")  # another change: no second rotation
    wait_for(lambda: get(kubectl, name)["metadata"].get("labels", {}).get("touched") == "yes", "the label")
    seen = last_pass(daemon, name)
    wait_for(lambda: last_pass(daemon, name) > seen, "a pass after the label", timeout=20)
    assert len(store.load(name).history) == before + 1

    # A spec change re-plans.
    kubectl("patch", f"regcred/{name}", "--type=merge", "-p", json.dumps({"spec": {"schedule": {"interval": "2h"}}}))
    wait_for(lambda: get(kubectl, name)["status"]["observedGeneration"] == 2, "observedGeneration 2")
    assert daemon.logged("credential.replanned")

    # Deleted with Retain: released, its secrets left as they were.
    held = held_passwords(sbx, "regcred-pull")
    kubectl("delete", f"regcred/{name}", "--wait=true", "--timeout=30s")
    assert kubectl("get", f"regcred/{name}", check=False).returncode != 0
    assert held_passwords(sbx, "regcred-pull") == held
    wait_for(lambda: daemon.logged("credential.removed"), "the credential removed")
    # Its series are gone with it (no alert on a credential that is no longer managed).
    wait_for(lambda: f'credential="{name}"' not in httpx.get(f"{daemon.api()}/metrics", timeout=10).text, "series")
    print(f"picked up in {picked_up_s:.2f}s; status writes: {writes} to Ready, {status_writes(sbx, name)} in all")


def test_a_secret_outside_rotators_namespace_is_refused_in_the_status(
    sbx: SandboxProcess, kubectl: Kubectl, daemon: Daemon
) -> None:
    """The API server accepts it (any namespace is a valid name); rotator reads Secrets only in its own."""
    body = spec(sbx, "regcred-bad")
    body["provider"]["apikey"] = {"secretKeyRef": {"namespace": "team-a", "name": ADMIN_SECRET, "key": "apikey"}}
    apply(kubectl, "bad", body)
    ready = wait_for(lambda: condition(get(kubectl, "bad"), "Ready"), "a Ready condition")
    assert ready["status"] == "False" and ready["reason"] == "InvalidSpec"
    assert "spec.provider.apikey.secretKeyRef.namespace: 'team-a'" in ready["message"], ready
    assert f"namespace: {OWN_NAMESPACE}" in ready["message"]  # the fix
    wait_for(lambda: "InvalidSpec" in kubectl("describe", "regcred/bad").stdout.split("Events:")[-1], "a Warning event")
    assert not daemon.logged("credential.added") or "bad" not in json.dumps(
        [e for e in daemon.events() if e.get("event") == "credential.added"]
    )
    kubectl("delete", "regcred/bad", "--wait=true", "--timeout=30s")


def test_deletion_policy_revoke_retires_the_keys_through_the_grace_path_before_the_resource_goes(
    sbx: SandboxProcess, kubectl: Kubectl, daemon: Daemon, state_dir: Path
) -> None:
    name = "revoked"
    apply(kubectl, name, spec(sbx, "regcred-revoked", gracePeriod="2s", deleteAfter="1s", deletionPolicy="Revoke"))
    kubectl("wait", "--for=condition=Ready", f"regcred/{name}", "--timeout=60s")
    key_id = FileStateStore(state_dir).load(name).current.id  # type: ignore[union-attr]
    assert live(sbx, key_id)

    kubectl("delete", f"regcred/{name}", "--wait=false")
    # Held by the finalizer while the key waits out its grace period, then disabled, then deleted.
    wait_for(lambda: (condition(get(kubectl, name), "Ready") or {}).get("reason") == "Revoking", "Revoking")
    wait_for(lambda: kubectl("get", f"regcred/{name}", check=False).returncode != 0, "the resource gone", timeout=60)
    assert not live(sbx, key_id)
    events = [e for e in daemon.events() if e.get("key_id") == key_id]
    assert [e["event"] for e in events if e["event"] in ("key.retired", "key.disabled", "key.deleted")] == [
        "key.retired",
        "key.disabled",
        "key.deleted",
    ]
    assert held_passwords(sbx, "regcred-revoked")["team-a"] is not None  # secrets are left; their key is gone


def live(sbx: SandboxProcess, key_id: str) -> bool:
    return any(k["id"] == key_id and not k["deleted"] for k in iam_keys(sbx))


def test_a_resource_named_like_a_file_credential_is_refused(tmp_path: Path) -> None:
    """credentials_from: both: the file's credential keeps its name; the resource says why it is not managed."""
    with SandboxProcess.start() as other:
        run = kubectl_runner(other.endpoints["kubeconfig"], tmp_path / "kubectl-home")
        config = write_config(tmp_path, other, top={"credentials_from": "both"})  # file credential icr-pull
        missing = run_rotator("check", "-c", str(config))
        assert missing.returncode == 1
        assert "FAIL RegistryCredentials: the RegistryCredential definition is not installed" in missing.stdout
        shown = run_rotator("status", "-c", str(config))  # a command that works on the credentials: a clear error
        assert shown.returncode == 1 and "Traceback" not in shown.stderr
        not_installed = "the RegistryCredential definition is not installed: kubectl apply -f deploy/crd/"
        assert f"and they cannot be listed: {not_installed}" in shown.stderr
        run("apply", "-f", str(CRD))
        assert "ok   RegistryCredentials: 0 resource(s)" in run_rotator("check", "-c", str(config)).stdout
        proc = Daemon(config, identity="regcred-both")
        try:
            proc.api()
            apply(run, "icr-pull", spec(other, "regcred-dup"))
            ready = wait_for(lambda: condition(get(run, "icr-pull"), "Ready"), "a Ready condition")
            assert (ready["status"], ready["reason"]) == ("False", "DuplicateName")
            assert f"the config file ({config}) already defines a credential named 'icr-pull'" in ready["message"]
            assert [e for e in proc.events() if e.get("event") == "credential.added"] == []
            run("delete", "regcred/icr-pull", "--wait=true", "--timeout=30s")  # released: nothing to revoke
        finally:
            assert proc.stop() == 0


def test_the_secret_key_reader_reads_a_key_and_says_what_is_missing(sbx: SandboxProcess, kubectl: Kubectl) -> None:
    from rotation_env import api_client

    from rotator.errors import ConfigError
    from rotator.kubecore import CoreV1
    from rotator.regcred_controller import secret_reader

    read = secret_reader(CoreV1(api_client(sbx)))
    assert masked(read(OWN_NAMESPACE, ADMIN_SECRET, "apikey").strip()) == masked(sbx.endpoints["admin_apikey"])
    with pytest.raises(ConfigError, match=r"Secret rotator-system/nope cannot be read \(HTTP 404\); create it"):
        read(OWN_NAMESPACE, "nope", "apikey")
    with pytest.raises(ConfigError, match=r"has no key 'password'; it has \['apikey'\]"):
        read(OWN_NAMESPACE, ADMIN_SECRET, "password")
