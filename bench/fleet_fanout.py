"""Fleet fan-out benchmark: one daemon writes one key into K clusters, one request per secret.

    python bench/fleet_fanout.py [--clusters 3] [--n 1000] [--latency-ms 10] [--concurrency 16]
                                 [--daemon-per-cluster]

A sandbox with ``--clusters K`` serves K independent Kubernetes emulators, each with N labelled
namespaces and LATENCY ms added to every request under them. ONE rotator daemon holds a credential
whose ``targets.kubernetes`` lists all K clusters (the fleet path: one mint, one verification, the
secrets of every cluster written in one distribute step). It rotates once (creating the secrets),
waits until every cluster's secret watch has seen every secret, then rotates again: that rotation's
distribute step is measured.

Reported:

- ``fleet_fanout_s``: the distribute step's write fan-out as the daemon times it (the
  ``secrets.written`` event: from the start of the writes to the last result, every cluster);
  per cluster, ``last_write_s``: from that start to the cluster's last secret PUT as its emulator
  logged it (the request log's wall-clock ``time``, taken when the response is sent).
- ``bound_s``: the one-request bound N x LATENCY / CONCURRENCY (clusters in parallel, CONCURRENCY
  per cluster), and the ratios to it.
- ``requests_per_secret`` per cluster during the measured rotation, from the emulator's request log
  (target 1.0, plus a GET and a PUT per 409).
- ``bare_client_put_s``: right after, in the same sandbox, a bare httpx client PUTs the same N
  secrets back, CONCURRENCY at a time in every cluster at once, over the same TLS port: the
  emulator's own floor on this machine (one Python process serves every cluster); and the ratio
  daemon / bare client.

``--daemon-per-cluster`` runs the layout before fleet support instead: K daemons side by side, one
per cluster (each its own process, kubeconfig context, key and distribute step). Everything runs on
127.0.0.1.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
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

from rotator.sandbox.control import SandboxProcess, iam_provider_config  # noqa: E402

LABEL = ("bench.rotator.example.com/target", "yes")
SECRET = "bench-pull"
CREDENTIAL = "bench"


def create_namespaces(cluster: dict[str, Any], n: int) -> None:
    headers = {"Authorization": f"Bearer {cluster['token']}"}
    with httpx.Client(base_url=cluster["url"], headers=headers, timeout=30) as client:

        def one(i: int) -> None:
            body = {"metadata": {"name": f"bench-{i:05d}", "labels": {LABEL[0]: LABEL[1]}}}
            client.post("/api/v1/namespaces", json=body).raise_for_status()

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(one, range(n)))


def config(tmp: Path, sbx: SandboxProcess, clusters: list[dict[str, Any]], concurrency: int, tag: str) -> Path:
    """One credential writing SECRET into the labelled namespaces of every cluster given: a fleet
    (``targets.kubernetes`` as a list) when there are several, the one-cluster form otherwise."""
    ep = sbx.endpoints
    target = {"secret_name": SECRET, "namespaces": {"selector": "=".join(LABEL)}}
    if len(clusters) > 1:
        fleet: Any = [
            {"name": c["name"], "kubeconfig": ep["kubeconfig"], "context": c["context"], **target} for c in clusters
        ]
    else:
        fleet = target
    doc = {
        "credentials": [
            {
                "name": CREDENTIAL,
                "provider": iam_provider_config(ep),
                "registry": {"server": ep["registry_host"], "images": ep["images"][:1]},
                "schedule": {"interval": "1d"},
                "max_age": "30d",
                "targets": {"kubernetes": fleet},
            }
        ],
        "kubernetes": {"kubeconfig": ep["kubeconfig"], "context": clusters[0]["context"], "concurrency": concurrency},
        "state": {"kind": "file", "path": str(tmp / f"state-{tag}")},
        "daemon": {"resync": "1h"},
        "server": {"listen": "127.0.0.1:0"},
    }
    path = tmp / f"fleet-{tag}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def child(path: Path) -> int:
    """One daemon: rotate once, see every secret, say "ready", rotate on "go", print the fan-out time."""
    from prometheus_client import CollectorRegistry

    from rotator import logs
    from rotator.app import App
    from rotator.daemon import Daemon
    from rotator.metrics import Metrics
    from rotator.settings import load

    # The answers go to the parent on stdout; whatever else prints (logs) goes nowhere.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    logs.configure(level="warning", json_output=True, stream=open(os.devnull, "w"))  # noqa: SIM115
    written: list[dict[str, Any]] = []

    def on_event(name: str, fields: dict[str, Any]) -> None:
        if name == "secrets.written":
            seconds = float(fields["seconds"])
            # The wall-clock start too: the emulators' request logs carry wall-clock times.
            written.append({"seconds": seconds, "targets": int(fields["targets"]), "started": time.time() - seconds})

    registry = CollectorRegistry()
    daemon = Daemon(App(load(path), metrics=Metrics(registry), on_event=on_event), registry=registry)
    daemon.start()
    try:
        store = daemon.app.store
        until(lambda: store.load(CREDENTIAL).last_result is not None, "the first rotation")
        reconciler = daemon.app.reconciler(CREDENTIAL)
        targets = reconciler.targets()
        watches = [w for w in daemon.watches if w.resource == "secrets"]  # one per cluster
        until(lambda: all(w.resource_version is not None for w in watches), "the secret watches")
        reconciler.read_targets(targets)  # what the watches listed after the first writes: read once

        def seen() -> int:
            return sum(len(s) for s in daemon._seen.values())

        until(lambda: seen() == len(targets), "every secret seen")
        print(json.dumps({"ready": seen()}), file=answers, flush=True)
        sys.stdin.readline()
        before = len(written)
        daemon.request_rotation(CREDENTIAL, reason="bench")
        until(lambda: len(written) > before and store.load(CREDENTIAL).rotation is None, "the measured rotation")
        print(json.dumps(written[-1]), file=answers, flush=True)
    finally:
        daemon.stop()
    return 0


def until(condition: Any, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def per_secret(log: list[dict[str, Any]]) -> dict[str, Any]:
    """Requests on the benchmark's secrets (reads, writes, creates) in a request log, and the time of
    the last secret write."""
    counts: collections.Counter[str] = collections.Counter()
    secrets = set()
    last_write = 0.0
    for r in log:
        parts = r["path"].split("/")  # /api/v1/namespaces/<ns>/secrets[/<name>]
        if len(parts) >= 6 and parts[3] == "namespaces" and parts[4].startswith("bench-") and parts[5] == "secrets":
            if len(parts) == 7 and parts[6] != SECRET:
                continue
            secrets.add(parts[4])
            counts[f"{r['method']} {r['status']}"] += 1
            if r["method"] in ("PUT", "POST"):
                last_write = max(last_write, float(r["time"]))
    return {"secrets": len(secrets), "requests": dict(counts), "total": sum(counts.values()), "last_write": last_write}


def floor(cluster: dict[str, Any], n: int, concurrency: int) -> float:
    """Seconds for a bare client to PUT the same N secrets back unchanged, CONCURRENCY at a time, over
    the same TLS port: what the emulator itself allows (it is one Python process serving every cluster)."""
    headers = {"Authorization": f"Bearer {cluster['token']}"}
    limits = httpx.Limits(max_connections=concurrency)
    with httpx.Client(
        base_url=cluster["tls_url"], verify=cluster["ca_file"], headers=headers, timeout=30, limits=limits
    ) as client:
        paths = [f"/api/v1/namespaces/bench-{i:05d}/secrets/{SECRET}" for i in range(n)]
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            bodies = list(pool.map(lambda p: client.get(p).json(), paths))
            started = time.monotonic()
            list(pool.map(lambda pb: client.put(pb[0], json=pb[1]).raise_for_status(), zip(paths, bodies, strict=True)))
            return time.monotonic() - started


def spawn(path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--child", str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clusters", type=int, default=3)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--daemon-per-cluster", action="store_true", help="K daemons, one per cluster (no fleet)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    tmp = Path(tempfile.mkdtemp(prefix="rotator-bench-fleet-"))
    extra = ["--clusters", str(args.clusters)] if args.clusters > 1 else []
    with SandboxProcess.start(extra_args=extra) as sbx:
        clusters = sbx.endpoints.get("clusters") or [
            {"name": "sandbox", "service": "kubernetes", "context": "sandbox"} | _single(sbx)
        ]
        with concurrent.futures.ThreadPoolExecutor(len(clusters)) as pool:
            list(pool.map(lambda c: create_namespaces(c, args.n), clusters))
        for c in clusters:
            sbx.set_faults(c["service"], {"path_prefix": "/api/v1/namespaces/bench-", "latency_ms": args.latency_ms})
        if args.daemon_per_cluster:
            layouts = [[c] for c in clusters]
        else:
            layouts = [clusters]
        children = [spawn(config(tmp, sbx, group, args.concurrency, group[0]["name"])) for group in layouts]
        try:
            ready = [json.loads(p.stdout.readline() or "{}") for p in children if p.stdout]
            if any("ready" not in r for r in ready):
                raise SystemExit(f"a daemon did not get ready: {ready}")
            since = {c["service"]: sbx.last_seq(c["service"]) for c in clusters}
            for p in children:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            fanouts = [json.loads(p.stdout.readline() or "{}") for p in children if p.stdout]
        finally:
            for p in children:
                p.wait(60)
        if any("seconds" not in f for f in fanouts):
            raise SystemExit(f"a daemon did not report its fan-out: {fanouts}")
        logs = {c["service"]: per_secret(sbx.requests(c["service"], since=since[c["service"]])) for c in clusters}
        with concurrent.futures.ThreadPoolExecutor(len(clusters)) as pool:
            floors = list(pool.map(lambda c: floor(c, args.n, args.concurrency), clusters))
    bound = args.n * args.latency_ms / 1000 / args.concurrency
    started = {c["name"]: fan for group, fan in zip(layouts, fanouts, strict=True) for c in group}
    per_cluster = []
    for c in clusters:
        log, fan = logs[c["service"]], started[c["name"]]
        last = log["last_write"] - fan["started"]
        per_cluster.append(
            {
                "cluster": c["name"],
                "last_write_s": round(last, 3),
                "ratio_to_bound": round(last / bound, 2),
                "requests": log["requests"],
                "requests_per_secret": round(log["total"] / max(1, log["secrets"]), 3),
            }
        )
    wall = max(f["seconds"] for f in fanouts)
    bare = max(floors)
    result = {
        "layout": "one daemon per cluster" if args.daemon_per_cluster else "one fleet daemon",
        "clusters": len(clusters),
        "namespaces_per_cluster": args.n,
        "latency_ms": args.latency_ms,
        "concurrency_per_cluster": args.concurrency,
        "secrets_written": sum(int(f["targets"]) for f in fanouts),
        "bound_s": round(bound, 3),
        "fleet_fanout_s": round(wall, 3),
        "fleet_ratio_to_bound": round(wall / bound, 2),
        # The same PUTs from a bare client in every cluster at once: the emulator's own limit on this machine.
        "bare_client_put_s": round(bare, 3),
        "bare_client_ratio_to_bound": round(bare / bound, 2),
        "fleet_ratio_to_bare_client": round(wall / bare, 2),
        "per_cluster": per_cluster,
    }
    print(json.dumps(result, indent=2))
    ok = result["fleet_ratio_to_bound"] <= 1.5 and all(p["requests_per_secret"] <= 1.05 for p in per_cluster)
    print(f"target (within 1.5x of the one-request bound, ~1.0 request per secret): {'met' if ok else 'NOT met'}")
    return 0


def _single(sbx: SandboxProcess) -> dict[str, Any]:
    ep = sbx.endpoints
    return {
        "url": ep["kubernetes"],
        "token": ep["kubernetes_token"],
        "tls_url": ep.get("kubernetes_tls"),
        "ca_file": ep.get("kubernetes_ca_file"),
    }


if __name__ == "__main__":
    sys.exit(main())
