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

START_TIMEOUT_S = 30.0  # a loaded 2-core machine: interpreter start, config, sandbox discovery


class Daemon:
    """``rotator run`` in a child process, its JSON log where the suite's leak scan looks."""

    def __init__(self, config: Path, *, identity: str = "replica-a") -> None:
        log_dir = Path(os.environ.get("ROTATOR_TEST_LOG_DIR", "/tmp"))
        self.log_path = log_dir / f"daemon-{identity}-{uuid.uuid4().hex[:8]}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rotator", "--log-format", "json", "run", "-c", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "POD_NAME": identity},
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
