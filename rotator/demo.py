"""``make demo``: the sandbox with two clusters plus the daemon against config/sandbox-fleet.yaml, for
about a minute.

A newcomer sees one key minted and written into three namespaces of each cluster, the pull check pass,
and the old key disabled then deleted. Then cluster 2 is taken down: the next rotation goes on in cluster
1, cluster 2 shows as out of sync and the old key stays enabled for it; once cluster 2 is back it gets the
current key and the old one goes. A status printout follows each phase.

Then the same with kubectl only (when kubectl is installed): a one-cluster sandbox, the RegistryCredential
definition and config/registrycredential-sandbox.yaml applied, the daemon with config/sandbox-cluster.yaml
(credentials_from: cluster); `kubectl wait` for Ready, `kubectl get regcred`, `kubectl describe`, a
rotation asked for with `kubectl annotate`. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rotator.sandbox.control import SandboxProcess

REPO = Path(__file__).resolve().parents[1]
SECONDS = float(os.environ.get("ROTATOR_DEMO_SECONDS", "75"))
CLUSTER_2 = "kubernetes-2"  # the sandbox service of cluster 2


def rotator(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rotator", *args], text=True, check=False, **kw)  # type: ignore[call-overload, no-any-return]


def main() -> int:
    workdir = REPO / ".demo"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir()
    env = dict(os.environ, ROTATOR_SANDBOX_DIR=str(workdir / "sandbox"), ROTATOR_STATE_DIR=str(workdir / "state"))
    config = str(REPO / "config" / "sandbox-fleet.yaml")
    print("== starting the sandbox (IAM, two Kubernetes API servers, registry) on 127.0.0.1:18600-18607", flush=True)
    try:
        sandbox = SandboxProcess.start(
            port_base=18600,
            files_dir=workdir / "sandbox",
            log_path=workdir / "sandbox.log",
            extra_args=["--clusters", "2"],
        )
    except RuntimeError as exc:
        print(f"demo: the sandbox did not start: {exc}", file=sys.stderr)
        return 1
    with sandbox:
        print("== rotator check", flush=True)
        rotator("--log-level", "warning", "check", "-c", config, env=env)
        print("\n== rotator plan", flush=True)
        rotator("--log-level", "warning", "plan", "-c", config, env=env)
        print(
            f"\n== rotator run for {SECONDS:.0f}s: rotation every 20s, grace 5s, delete 5s after disabling\n",
            flush=True,
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "rotator", "--log-format", "console", "run", "-c", config, "--resync", "2"], env=env
        )
        # (fraction of the run, what happens then): cluster 2 is down from 30 % to 70 % of the run.
        phases: list[tuple[float, Callable[[], None] | None, str]] = [
            (0.3, lambda: sandbox.take_down(CLUSTER_2), "taking cluster 2 down: the next rotation goes on without it"),
            (0.7, lambda: sandbox.bring_up(CLUSTER_2), "cluster 2 is back: it gets the current key"),
            (1.0, None, ""),
        ]
        started = time.monotonic()
        try:
            for fraction, act, what in phases:
                time.sleep(max(0.0, started + SECONDS * fraction - time.monotonic()))
                if daemon.poll() is not None:
                    break
                print("\n== rotator status", flush=True)
                rotator("--log-level", "warning", "status", "-c", config, env=env)
                if act is not None:
                    print(f"\n== {what}\n", flush=True)
                    act()
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
        kubeconfig = sandbox.endpoints["kubeconfig"]
        if shutil.which("kubectl"):
            for context in ("cluster-1", "cluster-2"):
                print(f"\n== what {context} holds now (kubectl against the sandbox)", flush=True)
                managed = "-l=app.kubernetes.io/managed-by=rotator"
                subprocess.run(
                    ["kubectl", "--kubeconfig", kubeconfig, "--context", context, "get", "secrets", "-A", managed],
                    env=dict(env, HOME=str(workdir)),
                    check=False,
                )
    fleet_ok = daemon.returncode == 0
    resources_ok = registry_credentials(workdir) if shutil.which("kubectl") else True
    print("\ndemo finished; sandboxes stopped. Logs of the sandboxes: .demo/sandbox*.log", flush=True)
    return 0 if fleet_ok and resources_ok else 1


def registry_credentials(workdir: Path) -> bool:
    """The RegistryCredential part: kubectl only, against a fresh one-cluster sandbox."""
    files = workdir / "sandbox-cluster"
    env = dict(os.environ, ROTATOR_SANDBOX_DIR=str(files), ROTATOR_STATE_DIR=str(workdir / "state-cluster"))
    print("\n== a RegistryCredential managed with kubectl: a one-cluster sandbox on 127.0.0.1:18600-18604", flush=True)
    try:
        sandbox = SandboxProcess.start(port_base=18600, files_dir=files, log_path=workdir / "sandbox-cluster.log")
    except RuntimeError as exc:
        print(f"demo: the sandbox did not start: {exc}", file=sys.stderr)
        return False
    kube_env = dict(env, HOME=str(workdir), KUBECONFIG=sandbox.endpoints["kubeconfig"])

    def kubectl(*args: str) -> bool:
        print(f"\n$ kubectl {' '.join(args)}", flush=True)
        return subprocess.run(["kubectl", *args], env=kube_env, check=False, timeout=90).returncode == 0

    with sandbox:
        kubectl("apply", "-f", str(REPO / "deploy" / "crd"))
        apikey = f"--from-file=apikey={files / 'admin-apikey'}"
        kubectl("-n", "rotator-system", "create", "secret", "generic", "rotator-admin-apikey", apikey)
        kubectl("apply", "-f", str(REPO / "config" / "registrycredential-sandbox.yaml"))
        config = str(REPO / "config" / "sandbox-cluster.yaml")
        print(f"\n== rotator run -c {config} (credentials_from: cluster)", flush=True)
        daemon = subprocess.Popen(
            [sys.executable, "-m", "rotator", "--log-format", "console", "--log-level", "warning", "run", "-c", config],
            env=env,
        )
        try:
            ok = kubectl("wait", "--for=condition=Ready", "regcred/sandbox-pull", "--timeout=60s")
            kubectl("wait", "--for=jsonpath={.status.targets.inSync}=3", "regcred/sandbox-pull", "--timeout=30s")
            kubectl("get", "regcred", "-o", "wide")
            kubectl("describe", "regcred/sandbox-pull")
            asked = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            kubectl(
                "annotate", "--overwrite", "regcred/sandbox-pull", f"rotator.example.com/rotate-requested-at={asked}"
            )
            served = f"--for=jsonpath={{.status.lastRotateRequest}}={asked}"
            ok = kubectl("wait", served, "regcred/sandbox-pull", "--timeout=60s") and ok
            kubectl("wait", "--for=jsonpath={.status.targets.inSync}=3", "regcred/sandbox-pull", "--timeout=30s")
            kubectl("get", "regcred")
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
    return ok and daemon.returncode == 0


if __name__ == "__main__":
    sys.exit(main())
