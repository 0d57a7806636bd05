"""What the daemon does not load: the sandbox (its aiohttp emulators, token signer and cryptography)
and the client's ``CoreV1Api`` (~21 MiB and ~0.3 s of pydantic-checked methods and models); its
core/v1 calls go through ``rotator.kubecore``. Measured in bench/lean.py; guarded here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rotation_env import write_config

from rotator.sandbox.control import SandboxProcess

HEAVY = ("rotator.sandbox", "kubernetes.client.api.core_v1_api", "cryptography")

# A daemon as ``rotator run`` builds it (the CLI's parser first), one rotation, then what it loaded.
DAEMON = """
import json, sys, threading
from pathlib import Path
from prometheus_client import CollectorRegistry
from rotator.cli import build_parser
args = build_parser(sandbox=False).parse_args(["run", "-c", sys.argv[1]])
from rotator.app import App
from rotator.daemon import Daemon
from rotator.metrics import Metrics
from rotator.settings import load
registry = CollectorRegistry()
finished = threading.Event()  # set by the reconciler's own event when the first rotation ends
def on_event(name, fields):
    if name == "rotation.finished":
        finished.set()
app = App(load(Path(args.config)), metrics=Metrics(registry), on_event=on_event)
daemon = Daemon(app, registry=registry)
daemon.start()
try:
    finished.wait(60)
    result = daemon.app.store.load("icr-pull").last_result
finally:
    daemon.stop()
print(json.dumps({"result": result.result if result else None, "loaded": sorted(
    m for m in sys.modules if m.startswith(%r) or m in %r)}))
"""


def test_the_daemon_rotates_without_loading_the_sandbox_or_core_v1_api(sandbox: SandboxProcess, tmp_path: Path) -> None:
    config = write_config(tmp_path, sandbox, top={"server": {"listen": "127.0.0.1:0"}})
    script = DAEMON % (HEAVY, HEAVY)
    out = subprocess.run(
        [sys.executable, "-c", script, str(config)], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    assert answer["result"] == "succeeded"
    assert answer["loaded"] == [], f"the daemon loaded {answer['loaded']}"
