"""Start a sandbox in a child process and steer it: used by the demo, the tests and the benchmarks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

READY_TIMEOUT_S = 15.0


class SandboxProcess:
    def __init__(self, proc: subprocess.Popen[bytes], endpoints_file: Path, workdir: Path) -> None:
        self.proc = proc
        self.endpoints_file = endpoints_file
        self.workdir = workdir
        self.endpoints: dict[str, Any] = json.loads(endpoints_file.read_text())
        self.admin = httpx.Client(base_url=self.endpoints["admin"], timeout=10)
        self.on_stop: Callable[[SandboxProcess], None] | None = None

    @classmethod
    def start(
        cls,
        *,
        port_base: int = 0,
        state_dir: Path | None = None,
        files_dir: Path | None = None,
        extra_args: list[str] | None = None,
        log_path: Path | None = None,
    ) -> SandboxProcess:
        workdir = Path(tempfile.mkdtemp(prefix="rotator-sbx-"))
        endpoints_file = workdir / "endpoints.json"
        args = [sys.executable, "-m", "rotator", "sandbox", "--port-base", str(port_base)]
        args += ["--endpoints-file", str(endpoints_file), "--files-dir", str(files_dir or workdir / "files")]
        if state_dir is not None:
            args += ["--state-dir", str(state_dir)]
        args += extra_args or []
        log = open(log_path or workdir / "sandbox.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not endpoints_file.exists():
            if proc.poll() is not None:
                output = (log_path or workdir / "sandbox.log").read_text(errors="replace")
                raise RuntimeError(f"sandbox exited with {proc.returncode}: {output[-2000:]}")
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("sandbox did not become ready in time")
            time.sleep(0.02)
        return cls(proc, endpoints_file, workdir)

    # -- faults and accounting -----------------------------------------------------------------
    def set_faults(self, service: str, *rules: dict[str, Any]) -> None:
        self.admin.put(f"/faults/{service}", json={"rules": list(rules)}).raise_for_status()

    def clear_faults(self) -> None:
        self.admin.delete("/faults").raise_for_status()

    def requests(self, service: str, since: int = 0) -> list[dict[str, Any]]:
        response = self.admin.get(f"/requests/{service}", params={"since": since})
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()
        return result

    def last_seq(self, service: str) -> int:
        log = self.requests(service)
        return int(log[-1]["seq"]) if log else 0

    def take_down(self, service: str) -> None:
        """Stop one emulator (e.g. ``kubernetes-2``, cluster 2 of a fleet): its ports refuse connections."""
        self.admin.post(f"/services/{service}/down").raise_for_status()

    def bring_up(self, service: str) -> None:
        """Serve a stopped emulator again, on the same ports, with the state it had."""
        self.admin.post(f"/services/{service}/up").raise_for_status()

    def issued_values(self) -> list[str]:
        """Every API key value the IAM emulator has issued, and every Docker Hub password and token
        (for the suite's log-leak scan)."""
        response = self.admin.get("/iam/issued-values")
        response.raise_for_status()
        values: list[str] = response.json()["values"]
        hub = self.admin.get("/dockerhub_api/issued-values")
        if hub.status_code == 200:
            values += hub.json()["values"]
        return values

    # -- lifecycle -----------------------------------------------------------------------------
    def stop(self, timeout: float = 10.0) -> int:
        if self.on_stop is not None and self.proc.poll() is None:
            self.on_stop(self)
        self.admin.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> SandboxProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- rotator config pieces pointing at a sandbox (tests, benchmarks) ---------------------------------
def iam_provider_config(endpoints: dict[str, Any]) -> dict[str, Any]:
    """A credential's ``provider``: the keys of the sandbox's target service ID, managed with the admin key."""
    return {
        "kind": "ibm-iam",
        "endpoint": endpoints["iam"],
        "account_id": endpoints["account_id"],
        "service_id": endpoints["service_id"],
        "apikey": {"file": endpoints["admin_apikey_file"]},
    }


def iam_provider_spec(endpoints: dict[str, Any], secret_ref: dict[str, str]) -> dict[str, Any]:
    """A RegistryCredential's ``spec.provider`` (camelCase): as iam_provider_config, the admin key read from
    the Secret key ``secret_ref`` ({namespace, name, key})."""
    return {
        "kind": "ibm-iam",
        "endpoint": endpoints["iam"],
        "accountId": endpoints["account_id"],
        "serviceId": endpoints["service_id"],
        "apikey": {"secretKeyRef": dict(secret_ref)},
    }


def labelled_kubernetes_target(endpoints: dict[str, Any], secret_name: str) -> dict[str, Any]:
    """A credential's ``targets.kubernetes``: ``secret_name`` in every namespace carrying the sandbox's
    label, referenced from the ``default`` service account."""
    return {
        "secret_name": secret_name,
        "namespaces": {"selector": endpoints["namespace_label"]},
        "service_accounts": ["default"],
    }
