"""``make demo``: the sandbox plus the daemon against config/sandbox.yaml, for about a minute.

A newcomer sees a key minted, secrets written in three namespaces, the pull check pass, and the
old key disabled then deleted; a status printout follows each phase. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from rotator.sandbox.control import SandboxProcess

REPO = Path(__file__).resolve().parents[1]
SECONDS = float(os.environ.get("ROTATOR_DEMO_SECONDS", "75"))


def rotator(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rotator", *args], text=True, check=False, **kw)  # type: ignore[call-overload, no-any-return]


def main() -> int:
    workdir = REPO / ".demo"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir()
    env = dict(os.environ, ROTATOR_SANDBOX_DIR=str(workdir / "sandbox"), ROTATOR_STATE_DIR=str(workdir / "state"))
    config = str(REPO / "config" / "sandbox.yaml")
    print("== starting the sandbox (local IAM, Kubernetes API, registry) on 127.0.0.1:18600-18606", flush=True)
    try:
        sandbox = SandboxProcess.start(port_base=18600, files_dir=workdir / "sandbox", log_path=workdir / "sandbox.log")
    except RuntimeError as exc:
        print(f"demo: the sandbox did not start: {exc}", file=sys.stderr)
        return 1
    with sandbox:
        print("== rotator check", flush=True)
        rotator("--log-level", "warning", "check", "-c", config, env=env)
        print("\n== rotator plan", flush=True)
        rotator("--log-level", "warning", "plan", "-c", config, env=env)
        print(
            f"\n== rotator run for {SECONDS:.0f}s: rotation every 30s, grace 5s, delete 5s after disabling\n",
            flush=True,
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "rotator", "--log-format", "console", "run", "-c", config, "--resync", "2"], env=env
        )
        deadline = time.monotonic() + SECONDS
        try:
            while time.monotonic() < deadline and daemon.poll() is None:
                time.sleep(min(20.0, max(0.0, deadline - time.monotonic())))
                print("\n== rotator status", flush=True)
                rotator("--log-level", "warning", "status", "-c", config, env=env)
                print(flush=True)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
        print("\n== what the cluster holds now (kubectl against the sandbox)", flush=True)
        kubeconfig = sandbox.endpoints["kubeconfig"]
        if shutil.which("kubectl"):
            subprocess.run(
                [
                    "kubectl",
                    "--kubeconfig",
                    kubeconfig,
                    "get",
                    "secrets",
                    "-A",
                    "-l",
                    "app.kubernetes.io/managed-by=rotator",
                ],
                env=dict(env, HOME=str(workdir)),
                check=False,
            )
    print("\ndemo finished; sandbox stopped. Logs of the sandbox: .demo/sandbox.log", flush=True)
    return 0 if daemon.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
