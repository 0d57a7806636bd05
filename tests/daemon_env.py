"""The daemon as a child process (``rotator run``), for the tests that need a running one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from polling import wait_for
from rotation_env import stored_password, write_config

from rotator.adapters.state import FileStateStore
from rotator.sandbox.control import SandboxProcess

API_AUTH = {"Authorization": "Bearer operator-token-0123456789"}
START_TIMEOUT_S = 30.0  # a loaded 2-core machine: interpreter start, config, sandbox discovery


class Daemon:
    """``rotator run`` in a child process, its JSON log where the suite's leak scan looks."""

    def __init__(self, config: Path, *, identity: str = "replica-a", env: dict[str, str] | None = None) -> None:
        log_dir = Path(os.environ.get("ROTATOR_TEST_LOG_DIR", "/tmp"))
        self.log_path = log_dir / f"daemon-{identity}-{uuid.uuid4().hex[:8]}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rotator", "--log-format", "json", "run", "-c", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "POD_NAME": identity, **(env or {})},
        )
        self.identity = identity

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def api(self) -> str:
        """The HTTP API's base URL, from the daemon's ``api.listening`` log line."""

        def listening() -> dict[str, Any] | None:
            assert self.proc.poll() is None, self.log_path.read_text(errors="replace")[-2000:]  # died starting
            return next((e for e in self.events() if e.get("event") == "api.listening"), None)

        line = wait_for(listening, "the HTTP API", timeout=START_TIMEOUT_S)
        return f"http://{line['host']}:{line['port']}"

    def logged(self, event: str) -> bool:
        return any(e.get("event") == event for e in self.events())

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def first_rotation_done(sbx: SandboxProcess, tmp_path: Path) -> str:
    """Waits until the daemon's first rotation is over (not just under way) and returns the credential it stored.

    Its distribution writes the namespaces one by one, so a secret that already holds the new value does not
    mean the rotation is done; a test that acts on a half-finished first rotation races with it.
    """
    store = FileStateStore(tmp_path / "state")
    wait_for(lambda: (j := store.load("icr-pull")).rotation is None and j.last_result is not None, "the first rotation")
    current = stored_password(sbx, "team-a")
    assert current is not None and all(stored_password(sbx, ns) == current for ns in ("team-b", "team-c"))
    return current


def api_config(tmp_path: Path, sbx: SandboxProcess, **overrides: Any) -> Path:
    """A daemon config with the HTTP API on a free port and the operator token of API_AUTH."""
    tokens = tmp_path / "api-tokens"
    tokens.write_text("operator-token-0123456789 alice rotate\n")
    top = {
        "daemon": {"resync": "1h"},
        "server": {"listen": "127.0.0.1:0", "auth": {"mode": "token-file", "file": str(tokens)}},
    }
    return write_config(tmp_path, sbx, top=top, **overrides)
