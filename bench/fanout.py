"""Fan-out benchmark: one rotation written to N secrets in N namespaces, Kubernetes API latency added.

    python bench/fanout.py [--n 1000] [--latency-ms 10] [--concurrency 16] [--sequential-sample 0]

Prints the wall time of the write fan-out (GET + PUT per secret), the bound
2 x N x latency / concurrency, the ratio to it, and the speed-up over concurrency 1 measured in
the same run (on all N, or on a sample of --sequential-sample targets, scaled, for N=10,000).
Everything runs against a sandbox on 127.0.0.1; nothing else is contacted.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rotator import logs  # noqa: E402
from rotator.app import App  # noqa: E402
from rotator.policy import Request  # noqa: E402
from rotator.sandbox.control import SandboxProcess, iam_provider_config  # noqa: E402
from rotator.settings import load  # noqa: E402

LABEL = ("bench.rotator.example.com/target", "yes")


def create_namespaces(sbx: SandboxProcess, n: int) -> None:
    url, token = sbx.endpoints["kubernetes"], sbx.endpoints["kubernetes_token"]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:

        def one(i: int) -> None:
            body = {"metadata": {"name": f"bench-{i:05d}", "labels": {LABEL[0]: LABEL[1]}}}
            client.post("/api/v1/namespaces", json=body).raise_for_status()

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(one, range(n)))


def config(tmp: Path, sbx: SandboxProcess, concurrency: int, names: list[str] | None = None) -> Path:
    ep = sbx.endpoints
    namespaces: dict[str, Any] = {"names": names} if names else {"selector": "=".join(LABEL)}
    doc = {
        "credentials": [
            {
                "name": "bench",
                "provider": iam_provider_config(ep),
                "registry": {"server": ep["registry_host"], "images": ep["images"][:1]},
                "schedule": {"interval": "1d"},
                "max_age": "30d",
                "targets": {"kubernetes": {"secret_name": "bench-pull", "namespaces": namespaces}},
            }
        ],
        "kubernetes": {"kubeconfig": ep["kubeconfig"], "concurrency": concurrency},
        "state": {"kind": "file", "path": str(tmp / f"state-{concurrency}-{len(names or [])}")},
    }
    path = tmp / f"bench-{concurrency}-{len(names or [])}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def rotate(path: Path) -> tuple[float, int]:
    """Two rotations (the first creates the secrets); the write fan-out time of the second."""
    timings: list[tuple[float, int]] = []

    def on_event(name: str, fields: dict[str, Any]) -> None:
        if name == "secrets.written":
            timings.append((float(fields["seconds"]), int(fields["targets"])))

    app = App(load(path), on_event=on_event)
    try:
        for _ in range(2):
            outcome = app.reconciler("bench").run(Request(reason="bench"))
            if outcome.result != "succeeded":
                raise SystemExit(f"rotation failed: {outcome.detail}")
    finally:
        app.close()
    return timings[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sequential-sample", type=int, default=0, help="0: measure concurrency 1 on all N")
    args = parser.parse_args()
    logs.configure(level="warning", json_output=True, stream=open("/dev/null", "w"))  # noqa: SIM115
    tmp = Path(tempfile.mkdtemp(prefix="rotator-bench-"))
    with SandboxProcess.start() as sbx:
        create_namespaces(sbx, args.n)
        sbx.set_faults("kubernetes", {"path_prefix": "/api/v1/namespaces/bench-", "latency_ms": args.latency_ms})
        wall, written = rotate(config(tmp, sbx, args.concurrency))
        sample = args.sequential_sample or args.n
        names = [f"bench-{i:05d}" for i in range(sample)] if sample < args.n else None
        seq_wall, seq_written = rotate(config(tmp, sbx, 1, names))
    bound = 2 * written * args.latency_ms / 1000 / args.concurrency
    seq_scaled = seq_wall * written / seq_written
    result = {
        "n": written,
        "latency_ms": args.latency_ms,
        "concurrency": args.concurrency,
        "wall_s": round(wall, 3),
        "bound_s": round(bound, 3),
        "ratio_to_bound": round(wall / bound, 2),
        "sequential_wall_s": round(seq_scaled, 3),
        "sequential_measured_on": seq_written,
        "speedup_over_sequential": round(seq_scaled / wall, 1),
    }
    print(json.dumps(result, indent=2))
    ok = result["ratio_to_bound"] <= 1.5 and result["speedup_over_sequential"] >= 10
    print(f"target (within 1.5x of the bound, >= 10x over sequential): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
