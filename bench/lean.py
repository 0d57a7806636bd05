"""Lean-daemon benchmark: how fast ``rotator run`` is ready, and where its memory goes.

    python bench/lean.py [--python PATH] [--clusters 3] [--idle-seconds 20] [--malloc-arena-max 2]

Against a sandbox with 3 credentials (each with its own Kubernetes secret), it measures:

1. ``ready_s``: from starting ``rotator run`` to its first ``/readyz`` 200 (polled every 10 ms).
2. ``idle``: the daemon's RSS once its first three rotations are done, and after ``--idle-seconds``
   more, with and without ``MALLOC_ARENA_MAX`` (glibc's per-thread malloc arenas; the value the
   Containerfile would set).
3. ``breakdown``: RSS of one process at each stage (interpreter, after the imports ``rotator run``
   needs, after the App and its reconcilers are built, after the daemon started and rotated).
4. ``importtime``: the ten top-level packages that take longest to import (``python -X importtime``).

``--python`` runs the daemon with another interpreter: the image's dependencies only (deploy/
requirements.lock, no test extras such as rich or cryptography) give the figures the image has,
e.g. a venv made with ``pip install --require-hashes --no-deps -r deploy/requirements.lock`` and
this checkout on PYTHONPATH; ``--source`` measures another copy of the rotator package (an older
commit's, for a before/after; leave out its sandbox, as the image does). ``--clusters K`` runs the
sandbox with K Kubernetes emulators and writes every credential into all K (``targets.kubernetes`` as
a list of clusters, the issue's "3 credentials and 3 clusters"): the daemon holds one ApiClient and
one set of watches per cluster, shared by the credentials. Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from events import credential, proc_cpu_rss  # noqa: E402

from rotator.adapters.state import FileStateStore  # noqa: E402
from rotator.sandbox.control import SandboxProcess  # noqa: E402

NAMES = ["lean-a", "lean-b", "lean-c"]
# What ``rotator run`` imports before it reads its config (commands.run, the daemon, the HTTP API),
# and the Kubernetes client the App loads when it builds its ApiClient.
RUN_IMPORTS = "rotator.commands, rotator.daemon, rotator.metrics, rotator.server, kubernetes.client"

STAGES = """
import json, sys, time
from pathlib import Path
def rss():
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20
out = {"interpreter": rss()}
import {imports}
out["imports"] = rss()
from prometheus_client import CollectorRegistry
from rotator import logs
from rotator.app import App
from rotator.daemon import Daemon
from rotator.metrics import Metrics
from rotator.settings import load
logs.configure(level="warning", json_output=True, stream=open("/dev/null", "w"))
registry = CollectorRegistry()
cfg = load(Path(sys.argv[1]))
daemon = Daemon(App(cfg, metrics=Metrics(registry)), registry=registry)
for c in cfg.credentials:
    daemon.app.reconciler(c.name)
out["app_built"] = rss()
daemon.start()
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    if all(daemon.app.store.load(c.name).last_result is not None for c in cfg.credentials):
        break
    time.sleep(0.1)
time.sleep(2)
out["started_and_rotated"] = rss()
daemon.stop()
print(json.dumps({k: round(v, 1) for k, v in out.items()}))
""".replace("{imports}", RUN_IMPORTS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CLUSTERS = [1]  # how many Kubernetes clusters every credential writes to (--clusters)


def fleet_credential(ep: dict[str, Any], name: str) -> dict[str, Any]:
    """A credential of bench/events.py, written into every cluster of the sandbox when it serves several."""
    cred = credential(ep, name)
    if CLUSTERS[0] > 1:
        one = cred["targets"]["kubernetes"]
        cred["targets"]["kubernetes"] = [
            {"name": c["name"], "kubeconfig": ep["kubeconfig"], "context": c["context"], **one} for c in ep["clusters"]
        ]
    return cred


def sandbox() -> SandboxProcess:
    return SandboxProcess.start(extra_args=["--clusters", str(CLUSTERS[0])] if CLUSTERS[0] > 1 else [])


def write_config(tmp: Path, sbx: SandboxProcess, tag: str, port: int) -> Path:
    doc = {
        "credentials": [fleet_credential(sbx.endpoints, n) for n in NAMES],
        "kubernetes": {"kubeconfig": sbx.endpoints["kubeconfig"]},
        "state": {"kind": "file", "path": str(tmp / f"state-{tag}")},
        "server": {"listen": f"127.0.0.1:{port}"},
    }
    path = tmp / f"lean-{tag}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


SOURCE = [REPO]  # the rotator source the measured processes run (--source)


def env_for(python: str, extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SOURCE[0]), **extra}


def run_daemon(
    python: str, tmp: Path, sbx: SandboxProcess, tag: str, seconds: float, extra: dict[str, str]
) -> dict[str, Any]:
    """``rotator run``: time to /readyz 200, then RSS once rotated and after an idle period."""
    port = free_port()
    config = write_config(tmp, sbx, tag, port)
    log = open(tmp / f"daemon-{tag}.log", "wb")  # noqa: SIM115 - owned by the child
    started = time.monotonic()
    proc = subprocess.Popen(
        [python, "-m", "rotator", "--log-format", "json", "run", "-c", str(config)],
        stdout=log,
        stderr=log,
        cwd=SOURCE[0],
        env=env_for(python, extra),
    )
    try:
        ready = None
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() - started < 30 and proc.poll() is None:
                try:
                    if client.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                        ready = time.monotonic() - started
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.01)
        store = FileStateStore(tmp / f"state-{tag}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(store.load(n).last_result is not None for n in NAMES):
            time.sleep(0.1)
        time.sleep(2)  # the passes right after the rotations
        cpu0, rss0 = proc_cpu_rss(proc.pid)
        time.sleep(seconds)
        cpu1, rss1 = proc_cpu_rss(proc.pid)
        threads = len(os.listdir(f"/proc/{proc.pid}/task"))
    finally:
        proc.terminate()
        proc.wait(30)
    return {
        "ready_s": round(ready, 3) if ready is not None else None,
        "rss_mib_rotated": round(rss0, 1),
        "rss_mib_idle": round(rss1, 1),
        "idle_cpu_percent": round(100 * (cpu1 - cpu0) / seconds, 2),
        "threads": threads,
    }


def breakdown(python: str, tmp: Path, sbx: SandboxProcess) -> dict[str, float]:
    config = write_config(tmp, sbx, "stages", free_port())
    out = subprocess.run(
        [python, "-c", STAGES, str(config)],
        capture_output=True,
        text=True,
        cwd=SOURCE[0],
        env=env_for(python, {}),
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def importtime(python: str) -> list[dict[str, Any]]:
    """The ten top-level packages with the longest cumulative import time (ms)."""
    out = subprocess.run(
        [python, "-X", "importtime", "-c", f"import {RUN_IMPORTS}"],
        capture_output=True,
        text=True,
        cwd=SOURCE[0],
        env=env_for(python, {}),
        check=True,
    )
    per_package: dict[str, int] = {}
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line or "cumulative" in line:
            continue
        _, cumulative, name = (part.strip() for part in line.split(":", 1)[1].split("|"))
        top = name.split(".")[0]
        per_package[top] = max(per_package.get(top, 0), int(cumulative))
    ranked = sorted(per_package.items(), key=lambda kv: -kv[1])[:10]
    return [{"package": name, "ms": round(us / 1000, 1)} for name, us in ranked]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs the daemon")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--malloc-arena-max", default="2")
    parser.add_argument(
        "--source",
        type=Path,
        default=REPO,
        help="a directory holding the rotator package to measure (e.g. an older one)",
    )
    parser.add_argument("--clusters", type=int, default=1, help="Kubernetes clusters every credential writes to")
    args = parser.parse_args()
    SOURCE[0] = args.source
    CLUSTERS[0] = args.clusters
    tmp = Path(tempfile.mkdtemp(prefix="rotator-bench-lean-"))
    result: dict[str, Any] = {"python": args.python, "credentials": len(NAMES), "clusters": args.clusters}
    with sandbox() as sbx:
        result["daemon"] = run_daemon(args.python, tmp, sbx, "plain", args.idle_seconds, {})
    with sandbox() as sbx:
        arena = {"MALLOC_ARENA_MAX": args.malloc_arena_max}
        result[f"daemon_malloc_arena_max_{args.malloc_arena_max}"] = run_daemon(
            args.python, tmp, sbx, "arena", args.idle_seconds, arena
        )
    with sandbox() as sbx:
        result["breakdown_rss_mib"] = breakdown(args.python, tmp, sbx)
    result["importtime_top10"] = importtime(args.python)
    print(json.dumps(result, indent=2))
    daemon = result["daemon"]
    ok = daemon["ready_s"] is not None and daemon["ready_s"] < 1.0 and daemon["rss_mib_idle"] < 80
    condition = f"ready < 1 s, idle RSS < 80 MiB with {len(NAMES)} credentials, {args.clusters} clusters"
    print(f"target ({condition}): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
