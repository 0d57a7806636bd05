"""The commands run by hand (`rotator status|plan|rotate|reconcile|check`) with ``credentials_from: cluster |
both`` work on the cluster's RegistryCredentials as the daemon does: a resource's credential is listed,
rotated and planned like one of the file; one the controller refuses (InvalidSpec, DuplicateName) is named on
stderr and left out; an API server that does not answer is a one-line error; and ``credentials_from: file``
asks the API server nothing."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from typing import Any

import yaml
from kubectl_env import Kubectl
from regcred_env import (  # noqa: F401 - kubectl, sbx: the fixtures
    ADMIN_SECRET,
    apply,
    held_passwords,
    kubectl,
    sbx,
    spec,
)
from rotation_env import CRED, SECRET, pulls, run_rotator, write_config

from rotator.adapters.state import FileStateStore
from rotator.regcred import API_VERSION, KIND
from rotator.sandbox.control import SandboxProcess

REGCRED_PATH = "/apis/rotator.example.com/v1alpha1/registrycredentials"


def config(tmp_path: Path, sbx: SandboxProcess, credentials_from: str) -> Path:
    """A config for ``sbx``; with ``cluster`` no credential of its own, otherwise the file credential icr-pull."""
    top: dict[str, Any] = {"credentials_from": credentials_from}
    if credentials_from == "cluster":
        top["credentials"] = []
    return write_config(tmp_path, sbx, top=top)


def notes(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The lines rotator wrote on stderr for the operator (its log lines are JSON)."""
    return [line for line in result.stderr.splitlines() if line.startswith("rotator")]


def outside_namespace(sbx: SandboxProcess, secret_name: str) -> dict[str, Any]:
    """A spec the API server accepts and rotator refuses: its admin key in a namespace not rotator's."""
    body = spec(sbx, secret_name)
    body["provider"]["apikey"]["secretKeyRef"] = {"namespace": "team-a", "name": ADMIN_SECRET, "key": "apikey"}
    return body


def test_a_resources_credential_is_listed_rotated_planned_and_checked(
    sbx: SandboxProcess, kubectl: Kubectl, tmp_path: Path
) -> None:
    apply(kubectl, "cli-pull", spec(sbx, "cli-pull"))
    apply(kubectl, "cli-bad", outside_namespace(sbx, "cli-bad"))
    cfg = config(tmp_path, sbx, "cluster")
    refused = (
        "rotator: RegistryCredential cli-bad left out (InvalidSpec): RegistryCredential cli-bad: "
        "spec.provider.apikey.secretKeyRef.namespace: 'team-a' is not rotator's namespace"
    )

    before = run_rotator("status", "-c", str(cfg))
    assert before.returncode == 0, before.stderr
    assert "credential cli-pull\n  current key   none yet" in before.stdout
    assert "cli-bad" not in before.stdout
    assert [line for line in notes(before) if "cli-bad" in line] == [line for line in notes(before) if refused in line]
    assert len(notes(before)) == 1, notes(before)

    rotated = run_rotator("rotate", "cli-pull", "-c", str(cfg))
    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout.startswith("rotated cli-pull: rotation ") and "succeeded" in rotated.stdout
    held = held_passwords(sbx, "cli-pull")
    assert None not in held.values() and len(set(held.values())) == 1
    assert pulls(sbx, next(iter(held.values()))) == "ok"  # type: ignore[arg-type]

    current = FileStateStore(tmp_path / "state").load("cli-pull").current
    assert current is not None
    shown = run_rotator("status", "-c", str(cfg), "--json")
    assert shown.returncode == 0, shown.stderr
    assert [(s["name"], s["current_key_id"]) for s in json.loads(shown.stdout)] == [("cli-pull", current.id)]

    planned = run_rotator("plan", "cli-pull", "-c", str(cfg))
    assert planned.returncode == 0, planned.stderr
    assert "credential cli-pull: a rotation would" in planned.stdout
    assert "update kubernetes secret team-a/cli-pull" in planned.stdout
    assert f"retire key {current.id}" in planned.stdout
    reconciled = run_rotator("reconcile", "-c", str(cfg))
    assert (reconciled.returncode, reconciled.stdout.splitlines()) == (0, ["cli-pull: idle"]), reconciled.stderr

    checked = run_rotator("check", "-c", str(cfg))
    assert "ok   RegistryCredentials: 2 resource(s)" in checked.stdout
    assert f"WARN {refused.removeprefix('rotator: ')}" in checked.stdout
    assert "ok   cli-pull: 3 target(s) readable" in checked.stdout
    assert checked.returncode == 0, checked.stdout

    # The refused resource is not a credential here either: asked for by name, the note says why.
    missing = run_rotator("rotate", "cli-bad", "-c", str(cfg))
    assert missing.returncode == 2
    assert refused in missing.stderr and "no credential named 'cli-bad'" in missing.stderr
    kubectl("delete", "regcred/cli-bad")


def test_a_resource_named_like_a_file_credential_is_left_out(
    sbx: SandboxProcess, kubectl: Kubectl, tmp_path: Path
) -> None:
    """credentials_from: both: the file's credential keeps its name, as in the daemon."""
    apply(kubectl, CRED, spec(sbx, "cli-dup"))
    cfg = config(tmp_path, sbx, "both")
    planned = run_rotator("plan", CRED, "-c", str(cfg))
    assert planned.returncode == 0, planned.stderr
    assert f"secret team-a/{SECRET}" in planned.stdout and "cli-dup" not in planned.stdout  # the file's
    assert (
        f"rotator: RegistryCredential {CRED} left out (DuplicateName): the config file ({cfg}) already defines a "
        f"credential named '{CRED}'"
    ) in planned.stderr
    shown = run_rotator("status", "-c", str(cfg), "--json")
    names = [s["name"] for s in json.loads(shown.stdout)]
    assert names.count(CRED) == 1 and names[0] == CRED, names  # the file's first, then the resources'
    kubectl("delete", f"regcred/{CRED}")


def test_credentials_from_file_asks_the_api_server_nothing(
    sbx: SandboxProcess, kubectl: Kubectl, tmp_path: Path
) -> None:
    apply(kubectl, "file-mode-bad", outside_namespace(sbx, "file-mode-bad"))  # would be named, if looked at
    cfg = config(tmp_path, sbx, "file")
    since = sbx.last_seq("kubernetes")
    shown = run_rotator("status", "-c", str(cfg))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"credential {CRED}\n") and "file-mode-bad" not in shown.stdout
    assert notes(shown) == []
    assert [r["path"] for r in sbx.requests("kubernetes", since)] == []
    # The same command with credentials_from: cluster lists them, through the same log.
    (tmp_path / "cluster").mkdir()
    listed = run_rotator("status", "-c", str(config(tmp_path / "cluster", sbx, "cluster")))
    assert listed.returncode == 0, listed.stderr
    assert REGCRED_PATH in [r["path"] for r in sbx.requests("kubernetes", since)]
    assert any("file-mode-bad" in line for line in notes(listed))
    kubectl("delete", "regcred/file-mode-bad")


def test_a_resource_being_deleted_is_left_out(sbx: SandboxProcess, kubectl: Kubectl, tmp_path: Path) -> None:
    hold = "example.com/hold"  # a finalizer of someone else's keeps it in deletion while the test looks
    resource = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "cli-gone", "finalizers": [hold]}}
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump({**resource, "spec": spec(sbx, "cli-gone")}))
    kubectl("delete", "regcred/cli-gone", "--wait=false")
    shown = run_rotator("status", "-c", str(config(tmp_path, sbx, "cluster")))
    assert shown.returncode == 0, shown.stderr
    assert "cli-gone" not in shown.stdout
    assert "rotator: RegistryCredential cli-gone left out: being deleted" in shown.stderr
    kubectl("patch", "regcred/cli-gone", "--type=merge", "-p", json.dumps({"metadata": {"finalizers": None}}))


def test_an_api_server_that_does_not_answer_is_a_one_line_error(sbx: SandboxProcess, tmp_path: Path) -> None:
    kubeconfig = yaml.safe_load(Path(sbx.endpoints["kubeconfig"]).read_text())
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for cluster in kubeconfig["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{port}"
    dead = tmp_path / "dead-kubeconfig"
    dead.write_text(yaml.safe_dump(kubeconfig))
    cfg = config(tmp_path, sbx, "cluster")
    doc = yaml.safe_load(cfg.read_text())
    doc["kubernetes"]["kubeconfig"] = str(dead)
    cfg.write_text(yaml.safe_dump(doc))

    result = run_rotator("status", "-c", str(cfg))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = notes(result)
    assert line.startswith(
        f"rotator status: RotatorError: credentials_from: cluster ({cfg}) reads credentials from the cluster's "
        "RegistryCredentials, and they cannot be listed: "
    ), line
    assert "Kubernetes API server connection refused; check that it is up" in line
    assert f"kubernetes.kubeconfig {dead} names it" in line
