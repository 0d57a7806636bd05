"""``make demo``: the sandbox with two clusters plus the daemon against config/sandbox-fleet.yaml, for
about a minute.

A newcomer sees one key minted and written into three namespaces of each cluster, the pull check pass,
and the old key disabled then deleted. Then cluster 2 is taken down: the next rotation goes on in cluster
1, cluster 2 shows as out of sync and the old key stays enabled for it; once cluster 2 is back it gets the
current key and the old one goes. A status printout follows each phase. Nothing leaves 127.0.0.1.
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
    print("\ndemo finished; sandbox stopped. Logs of the sandbox: .demo/sandbox.log", flush=True)
    return 0 if daemon.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
