"""RegistryCredentials with two replicas (leader election): only the leader writes the status; a new leader
takes over without rewriting a status that did not change, and serves the rotate-requested-at annotation."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from daemon_env import Daemon
from kubectl_env import Kubectl
from polling import wait_for
from regcred_env import OWN_NAMESPACE, apply, condition, get, set_up, spec
from rotation_env import core
from test_daemon import lease_holder
from test_regcred_kubectl import last_pass, status_writes

from rotator.adapters.state import ConfigMapStateStore
from rotator.regcred import ROTATE_ANNOTATION
from rotator.sandbox.control import SandboxProcess

NAME = "replicated"


@pytest.fixture
def sbx() -> Iterator[SandboxProcess]:
    with SandboxProcess.start() as sandbox:
        yield sandbox


@pytest.fixture
def kubectl(sbx: SandboxProcess, tmp_path: Path) -> Kubectl:
    return set_up(sbx, tmp_path / "kubectl-home")


def test_only_the_leader_writes_and_a_new_leader_takes_over_quietly(
    sbx: SandboxProcess, kubectl: Kubectl, tmp_path: Path
) -> None:
    config = tmp_path / "rotator.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "credentials_from": "cluster",
                "kubernetes": {"kubeconfig": sbx.endpoints["kubeconfig"], "concurrency": 4},
                "state": {"kind": "configmap", "name": "rotator-state"},
                "server": {"listen": "127.0.0.1:0"},
                "daemon": {
                    "leader_election": True,
                    "lease_duration": "6s",
                    "renew_deadline": "4s",
                    "retry_period": "1s",
                    "resync": "1s",
                },
            }
        )
    )
    replicas = [Daemon(config, identity="replica-a"), Daemon(config, identity="replica-b")]
    try:
        for replica in replicas:
            replica.api()
        apply(kubectl, NAME, spec(sbx, "regcred-replicated"))
        kubectl("wait", "--for=condition=Ready", f"regcred/{NAME}", "--timeout=60s")
        wait_for(lambda: (get(kubectl, NAME).get("status") or {}).get("targets", {}).get("inSync") == 3, "targets")
        leader_name = wait_for(lambda: lease_holder(sbx), "a lease holder")
        leader = next(r for r in replicas if r.identity == leader_name)
        follower = next(r for r in replicas if r.identity != leader_name)
        assert not follower.logged("regcred.status_written") and leader.logged("regcred.status_written")

        since = sbx.last_seq("kubernetes")
        assert leader.stop(signal.SIGTERM) == 0  # releases the lease
        wait_for(lambda: lease_holder(sbx) == follower.identity, "the follower to lead", timeout=20)
        wait_for(lambda: follower.logged("leader.acquired"), "the takeover")
        store = ConfigMapStateStore(core(sbx), OWN_NAMESPACE, "rotator-state")
        # A few passes of the new leader (resync 1s): the status it computes is the one its predecessor wrote.
        wait_for_passes(follower, 3)
        assert status_writes(sbx, NAME, since) == 0
        before = len(store.load(NAME).history)
        kubectl("annotate", "--overwrite", f"regcred/{NAME}", f"{ROTATE_ANNOTATION}=after-takeover")
        wait_for(lambda: get(kubectl, NAME)["status"].get("lastRotateRequest") == "after-takeover", "served")
        wait_for(lambda: len((j := store.load(NAME)).history) == before + 1 and j.rotation is None, "one rotation")
        assert (condition(get(kubectl, NAME), "Ready") or {}).get("status") == "True"
    finally:
        for replica in replicas:
            replica.stop()


def wait_for_passes(daemon: Daemon, count: int) -> None:
    """Until ``daemon`` ran ``count`` more passes of the credential (its last-pass metric moved as often)."""
    seen = {last_pass(daemon, NAME)}

    def passed() -> bool:
        seen.add(last_pass(daemon, NAME))
        return len(seen) > count

    wait_for(passed, f"{count} passes", timeout=30)
