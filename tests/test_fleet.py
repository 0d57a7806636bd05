"""A fleet: one key minted and verified once, written into two clusters; cluster 2 stops answering in the
middle of a rotation (the sandbox's admin API takes its emulator down after the first write to cluster 1).
The rotation goes on with cluster 1, cluster 2 is out of sync with the reason, and the old key stays enabled
until cluster 2 answers again and holds the new key; nothing is lost on the way."""

from __future__ import annotations

import base64
import json
import random
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import start_sandbox
from daemon_env import API_AUTH, Daemon
from polling import wait_for
from rotation_env import CRED, SECRET, FakeClock, iam_keys, key_id_of, make_app, pulls, run_rotator

from rotator import dockerconfig
from rotator.adapters.kubernetes import api_client_for
from rotator.adapters.state import FileStateStore
from rotator.policy import Request
from rotator.sandbox.control import SandboxProcess, iam_provider_config
from rotator.status import render_text

TEAMS = ("team-a", "team-b", "team-c")
CLUSTERS = ("cluster-1", "cluster-2")


# Port bases below the kernel's ephemeral range (32768 and up): while cluster 2 is down its port cannot be
# handed to an outgoing connection as its local port, so bringing it back on the same port never finds it taken.
PORT_BASES = range(20000, 32000, 10)
FLEET_PORTS = 8  # the seven services and cluster 2 (port base + 5 + 2)


def free(base: int) -> bool:
    for port in range(base, base + FLEET_PORTS):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


@pytest.fixture
def fleet() -> Iterator[SandboxProcess]:
    for base in random.sample(PORT_BASES, 20):  # bounded: another sandbox may hold a base meanwhile
        if not free(base):
            continue
        try:
            sbx = start_sandbox(port_base=base, extra_args=["--clusters", "2"])
        except RuntimeError:
            continue
        with sbx:
            yield sbx
        return
    pytest.fail("no free port base for a two-cluster sandbox below the ephemeral range")


def fleet_config(tmp_path: Path, sbx: SandboxProcess, *, top: dict[str, Any] | None = None, **overrides: Any) -> Path:
    ep = sbx.endpoints
    clusters = [
        {
            "name": name,
            "kubeconfig": ep["kubeconfig"],
            "context": name,
            "secret_name": SECRET,
            "namespaces": {"selector": ep["namespace_label"]},
            "service_accounts": ["default"],
        }
        for name in CLUSTERS
    ]
    cred = {
        "name": CRED,
        "provider": iam_provider_config(ep),
        "registry": {"server": ep["registry_host"], "images": ep["images"], "verify_budget": "10s"},
        "schedule": {"interval": "1d"},
        "max_age": "30d",
        "grace_period": "1h",
        "delete_after": "1h",
        "targets": {"kubernetes": clusters},
        **overrides,
    }
    doc = {
        "credentials": [cred],
        # One write at a time in each cluster (the clusters are written in parallel): taking cluster 2 down
        # right after its first write leaves it holding the new key in one namespace, the old in the others.
        "kubernetes": {"kubeconfig": ep["kubeconfig"], "concurrency": 1},
        "state": {"kind": "file", "path": str(tmp_path / "state")},
        **(top or {}),
    }
    path = tmp_path / "rotator.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def cluster_core(sbx: SandboxProcess, name: str) -> Any:
    from kubernetes import client

    cluster = next(c for c in sbx.endpoints["clusters"] if c["name"] == name)
    return client.CoreV1Api(api_client_for(cluster["url"], cluster["token"]))


def held(sbx: SandboxProcess, cluster: str) -> dict[str, str | None]:
    """Each team namespace's registry password in ``cluster``."""
    return {ns: held_or_none(sbx, cluster, ns) for ns in TEAMS}


def rotated(reconciler: Any, store: FileStateStore) -> str:
    """A rotation that succeeds; the key value it put in place."""
    assert reconciler.run(Request(reason="rotate")).result == "succeeded"
    key = store.load_vault(CRED).current
    assert key is not None
    return key


def unreachable_events(sbx: SandboxProcess, cluster: str) -> list[Any]:
    events = cluster_core(sbx, cluster).list_event_for_all_namespaces().items
    return [e for e in events if e.reason == "PullSecretClusterUnreachable"]


def key_state(sbx: SandboxProcess, key_id: str) -> dict[str, Any]:
    return next(k for k in iam_keys(sbx) if k["id"] == key_id)


def test_a_cluster_down_mid_rotation_lags_and_keeps_the_old_key_until_it_holds_the_new_one(
    fleet: SandboxProcess, tmp_path: Path
) -> None:
    config = fleet_config(tmp_path, fleet)
    clock = FakeClock()
    armed = {"down": False}

    def on_write(sink: str, result: str) -> None:
        if armed["down"] and sink == "kubernetes@cluster-2" and result in ("created", "updated"):
            armed["down"] = False
            fleet.take_down("kubernetes-2")

    app = make_app(config, clock=clock, hooks={"write": on_write})
    store = FileStateStore(tmp_path / "state")
    try:
        reconciler = app.reconciler(CRED)
        key1 = rotated(reconciler, store)  # one mint, written into both clusters
        for cluster in CLUSTERS:
            assert set(held(fleet, cluster).values()) == {key1}
        key1_id = key_id_of(fleet, key1)

        # Rotate; cluster 2 goes down right after its first write.
        armed["down"] = True
        second = reconciler.run(Request(reason="fleet rotation"))
        assert not armed["down"], "cluster 2 was never taken down"
        assert second.result == "succeeded", second.detail
        key2 = store.load_vault(CRED).current
        assert key2 is not None and key2 != key1
        assert set(held(fleet, "cluster-1").values()) == {key2}
        journal = store.load(CRED)
        (lag,) = journal.lagging
        assert lag.cluster == "cluster-2" and "refused" in lag.reason.lower()
        assert [r.key_id for r in journal.retired] == [key1_id]

        status = app.status(CRED, clock.now())
        sync = {c["name"]: c for c in status["clusters"]}
        assert sync["cluster-1"]["in_sync"] is True
        assert sync["cluster-2"]["in_sync"] is False and sync["cluster-2"]["holds_old_key"] is True
        assert "refused" in sync["cluster-2"]["reason"].lower()
        text = render_text([status], clock.now())
        assert "cluster-2 OUT OF SYNC since" in text and "the old key stays enabled for it" in text
        # Cluster 1 is told too, once (an Event on one of its secrets, not on each).
        wait_for(lambda: unreachable_events(fleet, "cluster-1"), "a PullSecretClusterUnreachable Event in cluster 1")
        (event,) = unreachable_events(fleet, "cluster-1")
        assert event.type == "Warning" and "cluster-2 does not answer" in event.message

        # The grace period passes with cluster 2 still down: the old key stays enabled (it still pulls).
        clock.advance(2 * 3600)
        idle = reconciler.run()
        assert idle.result == "idle"
        assert key_state(fleet, key1_id)["disabled"] is False
        assert pulls(fleet, key1) == "ok"
        assert [lag.cluster for lag in store.load(CRED).lagging] == ["cluster-2"]

        # Cluster 2 comes back with what it held: the new key where it was written, the old one elsewhere.
        fleet.bring_up("kubernetes-2")
        assert sorted(held(fleet, "cluster-2").values()) == sorted([key2, key1, key1])
        clock.advance(3600)  # past the next try to reach it
        assert reconciler.run().result == "idle"
        assert set(held(fleet, "cluster-2").values()) == {key2}
        assert set(held(fleet, "cluster-1").values()) == {key2}
        journal = store.load(CRED)
        assert journal.lagging == ()
        assert key_state(fleet, key1_id)["disabled"] is True  # only now
        assert pulls(fleet, key2) == "ok"
        status = app.status(CRED, clock.now())
        assert all(c["in_sync"] for c in status["clusters"])
    finally:
        app.close()


def test_the_clusters_of_a_fleet_are_written_in_parallel(fleet: SandboxProcess, tmp_path: Path) -> None:
    """Each cluster has its own pool of ``kubernetes.concurrency`` writers: with one writer per cluster and
    cluster 1's first secret answering only after 10 s, cluster 2's three secrets are all written before it
    (a pool shared by the clusters wrote them after cluster 1's)."""
    order: list[str] = []

    def on_write(sink: str, result: str) -> None:
        if result in ("created", "updated"):
            order.append(sink)

    app = make_app(fleet_config(tmp_path, fleet), hooks={"write": on_write})
    try:
        reconciler = app.reconciler(CRED)
        assert reconciler.run(Request(reason="first")).result == "succeeded"
        slow = {"path_prefix": "/api/v1/namespaces/team-a/secrets/", "methods": ["PUT"], "latency_ms": 10_000}
        fleet.set_faults("kubernetes", slow)
        order.clear()
        assert reconciler.run(Request(reason="second")).result == "succeeded"
    finally:
        fleet.clear_faults()
        app.close()
    assert order[:3] == ["kubernetes@cluster-2"] * 3, order
    assert sorted(order) == sorted(["kubernetes@cluster-1"] * 3 + ["kubernetes@cluster-2"] * 3)


def credential_status(api: str) -> dict[str, Any]:
    response = httpx.get(f"{api}/v1/credentials", headers=API_AUTH, timeout=10)
    response.raise_for_status()
    status: dict[str, Any] = response.json()["credentials"][0]
    return status


def metric(api: str, name: str, **labels: str) -> float | None:
    """The value of the series ``name`` with (at least) these labels, from the daemon's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{api}/metrics", headers=API_AUTH, timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return None


def test_the_daemon_watches_every_cluster_and_reports_a_lagging_one(fleet: SandboxProcess, tmp_path: Path) -> None:
    """Each cluster has its own watches: a secret deleted in cluster 2 and one tampered with in cluster 1 are
    put back. With cluster 2 down a rotation still finishes; GET /v1/credentials and the metrics show cluster 2
    out of sync (cluster label) until it is back and holds the new key."""
    tokens = tmp_path / "api-tokens"
    tokens.write_text("operator-token-0123456789 alice rotate\n")
    top = {
        "daemon": {"resync": "1h", "watch_timeout": "1s"},
        "server": {"listen": "127.0.0.1:0", "auth": {"mode": "token-file", "file": str(tokens)}},
    }
    config = fleet_config(tmp_path, fleet, top=top, schedule={"interval": "1d", "retry_backoff": "2s"})
    store = FileStateStore(tmp_path / "state")
    daemon = Daemon(config)
    try:
        api = daemon.api()
        wait_for(lambda: (j := store.load(CRED)).rotation is None and j.last_result is not None, "first rotation")
        key1 = store.load_vault(CRED).current
        assert key1 is not None
        for cluster in CLUSTERS:
            wait_for(lambda c=cluster: set(held(fleet, c).values()) == {key1}, f"{cluster} holds the first key")

        cluster_core(fleet, "cluster-2").delete_namespaced_secret(SECRET, "team-b")
        wait_for(lambda: held_or_none(fleet, "cluster-2", "team-b") == key1, "cluster 2's deleted secret recreated")
        body = {"metadata": {"name": SECRET}, "type": "kubernetes.io/dockerconfigjson"}
        body["data"] = {".dockerconfigjson": base64.b64encode(json.dumps({"auths": {}}).encode()).decode()}
        cluster_core(fleet, "cluster-1").patch_namespaced_secret(SECRET, "team-a", body)
        wait_for(lambda: held_or_none(fleet, "cluster-1", "team-a") == key1, "cluster 1's emptied secret restored")
        assert [c["in_sync"] for c in credential_status(api)["clusters"]] == [True, True]

        # Cluster 2's history is compacted: its own watches get 410, re-list from it and go on;
        # a namespace created there afterwards gets the secret.
        fleet.admin.post("/kubernetes-2/compact").raise_for_status()
        wait_for(lambda: daemon.logged("watch.expired"), "a 410 in cluster 2 seen and re-listed")
        key, _, value = fleet.endpoints["namespace_label"].partition("=")
        body = {"metadata": {"name": "team-d", "labels": {key: value}}}
        cluster_core(fleet, "cluster-2").create_namespace(body)
        wait_for(lambda: held_or_none(fleet, "cluster-2", "team-d") == key1, "the new namespace of cluster 2 served")
        assert held_or_none(fleet, "cluster-1", "team-d") is None  # no such namespace in cluster 1

        fleet.take_down("kubernetes-2")
        response = httpx.post(f"{api}/v1/credentials/{CRED}/rotate", headers=API_AUTH, json={"reason": "t"}, timeout=10)
        assert response.status_code == 202, response.text
        rotation_id = response.json()["rotation_id"]
        # (A pass may find cluster 2 down before the rotation starts: wait for that rotation's result.)
        last = wait_for(
            lambda: (r := store.load(CRED).last_result) is not None and r.rotation_id == rotation_id and r,
            "the rotation finished with cluster 2 down",
            timeout=60,
        )
        assert last.result == "succeeded", last.detail
        assert [lag.cluster for lag in store.load(CRED).lagging] == ["cluster-2"]
        key2 = store.load_vault(CRED).current
        assert key2 != key1 and set(held(fleet, "cluster-1").values()) == {key2}
        lagging = {c["name"]: c for c in credential_status(api)["clusters"]}["cluster-2"]
        assert lagging["in_sync"] is False and lagging["holds_old_key"] is True and lagging["reason"]
        lost = {"credential": CRED, "cluster": "cluster-2"}
        # The gauges follow the journal once the pass is over.
        wait_for(lambda: metric(api, "rotator_cluster_unreachable", **lost) == 1.0, "cluster 2 unreachable")
        assert metric(api, "rotator_cluster_holds_old_key", **lost) == 1.0
        assert metric(api, "rotator_cluster_unreachable", credential=CRED, cluster="cluster-1") == 0.0
        written = {"sink": "kubernetes", "cluster": "cluster-1", "result": "updated"}
        assert (metric(api, "rotator_secret_writes_total", **written) or 0) >= 3

        fleet.bring_up("kubernetes-2")
        wait_for(lambda: set(held(fleet, "cluster-2").values()) == {key2}, "cluster 2 holds the new key", timeout=60)
        wait_for(lambda: all(c["in_sync"] for c in credential_status(api)["clusters"]), "cluster 2 in sync again")
        wait_for(lambda: metric(api, "rotator_cluster_unreachable", **lost) == 0.0, "cluster 2 reachable")
        # Its three secrets were put back to the current key (and one deleted before): heals carry the cluster.
        assert (metric(api, "rotator_secret_heals_total", **lost) or 0) >= 4
    finally:
        assert daemon.stop() == 0


def held_or_none(sbx: SandboxProcess, cluster: str, namespace: str) -> str | None:
    """The registry password in ``namespace`` of ``cluster`` (None while the secret is missing or empty)."""
    from kubernetes.client.exceptions import ApiException

    try:
        response = cluster_core(sbx, cluster).read_namespaced_secret(SECRET, namespace, _preload_content=False)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    doc = dockerconfig.parse(base64.b64decode(json.loads(response.data)["data"][".dockerconfigjson"]))
    entry = dockerconfig.entry(doc, sbx.endpoints["registry_host"])
    return entry.password.reveal() if entry else None


def test_rollback_after_distribution_restores_every_cluster(fleet: SandboxProcess, tmp_path: Path) -> None:
    """The stored bytes fail their check after both clusters were written: both get the old key back (with
    a PullSecretRolledBack Event in each), and the new key is deleted."""
    armed = {"fault": False, "checks": 0}

    def on_event(name: str, fields: dict[str, Any]) -> None:
        if name == "verification" and armed["fault"]:
            armed["checks"] += 1
            if armed["checks"] == 1:  # the new key passed its own check; the stored ones will not
                fleet.set_faults(
                    "registry",
                    {"path_prefix": "/v2/team/", "methods": ["HEAD"], "error_status": 401, "error_count": 1000},
                )

    app = make_app(fleet_config(tmp_path, fleet), on_event=on_event)
    store = FileStateStore(tmp_path / "state")
    try:
        assert app.reconciler(CRED).run(Request(reason="setup")).result == "succeeded"
        old = store.load_vault(CRED).current
        armed["fault"] = True
        outcome = app.reconciler(CRED).run(Request(reason="test"))
    finally:
        app.close()
        fleet.clear_faults()
    assert outcome.result == "failed" and "verify_stored" in outcome.detail
    for cluster in CLUSTERS:
        assert set(held(fleet, cluster).values()) == {old}
        events = cluster_core(fleet, cluster).list_namespaced_event("team-a").items
        assert [e.type for e in events if e.reason == "PullSecretRolledBack"] == ["Warning"], cluster
    assert old is not None and pulls(fleet, old) == "ok"
    owned = [k for k in iam_keys(fleet) if not k["deleted"] and k["name"].startswith(f"rotator-{CRED}-")]
    assert [k["id"] for k in owned] == [key_id_of(fleet, old)]


def test_a_crash_in_the_middle_of_the_fleet_resumes_where_it_stopped(fleet: SandboxProcess, tmp_path: Path) -> None:
    """``rotator rotate`` killed half-way through writing the two clusters (cluster 1 written, cluster 2's
    writes slowed so they are still under way): the next run finishes the same rotation, and both clusters
    hold its key."""
    config = str(fleet_config(tmp_path, fleet))
    store = FileStateStore(tmp_path / "state")
    assert run_rotator("rotate", CRED, "-c", config).returncode == 0
    old = store.load_vault(CRED).current
    # The clusters are written in parallel: cluster 2's answers take 5 s, so the kill (after the first half of
    # the results, cluster 1's) finds it unwritten. A write the emulator finishes after the kill is fine too.
    fleet.set_faults("kubernetes-2", {"path_prefix": "/api/v1/namespaces/", "methods": ["PUT"], "latency_ms": 5000})
    crashed = run_rotator("rotate", CRED, "-c", config, env={"ROTATOR_CRASH_AT": "distribute:partial"})
    assert crashed.returncode == -9, crashed.stderr
    rotation = store.load(CRED).rotation
    assert rotation is not None and rotation.phase == "distributing"
    pending = store.load_vault(CRED).pending
    assert pending is not None and pending != old
    assert set(held(fleet, "cluster-1").values()) == {pending}
    assert old in held(fleet, "cluster-2").values() and set(held(fleet, "cluster-2").values()) <= {old, pending}
    fleet.clear_faults()
    rerun = run_rotator("reconcile", CRED, "-c", config, "--wait", "5")
    assert rerun.returncode == 0, rerun.stderr
    journal = store.load(CRED)
    assert journal.rotation is None and journal.last_result is not None
    assert journal.last_result.rotation_id == rotation.id and journal.last_result.result == "succeeded"
    for cluster in CLUSTERS:
        assert set(held(fleet, cluster).values()) == {pending}


def test_check_names_a_cluster_that_does_not_answer(fleet: SandboxProcess, tmp_path: Path) -> None:
    """``rotator check`` fails on a fleet cluster that does not answer, naming it, and still checks the others."""
    config = str(fleet_config(tmp_path, fleet))
    fleet.take_down("kubernetes-2")
    result = run_rotator("check", "-c", config)
    assert result.returncode != 0
    lines = result.stdout.splitlines()
    assert any("cluster cluster-2 does not answer" in line and "connection refused" in line for line in lines), lines
    assert any(line.startswith("ok") and "kubernetes@cluster-1 targets writable" in line for line in lines), lines
    fleet.bring_up("kubernetes-2")
    assert run_rotator("check", "-c", config).returncode == 0


def test_revoke_despite_unreachable_disables_the_old_key_after_the_timeout(
    fleet: SandboxProcess, tmp_path: Path
) -> None:
    """With revoke_despite_unreachable the old key waits for the down cluster only until unreachable_timeout."""
    config = fleet_config(tmp_path, fleet, unreachable_timeout="3h", revoke_despite_unreachable=True)
    clock = FakeClock()
    app = make_app(config, clock=clock)
    store = FileStateStore(tmp_path / "state")
    try:
        reconciler = app.reconciler(CRED)
        key1 = rotated(reconciler, store)
        fleet.take_down("kubernetes-2")
        assert reconciler.run(Request(reason="second")).result == "succeeded"
        clock.advance(2 * 3600)  # grace over, timeout not yet
        reconciler.run()
        assert key_state(fleet, key_id_of(fleet, key1))["disabled"] is False
        clock.advance(3600 + 60)  # past unreachable_timeout
        reconciler.run()
        assert key_state(fleet, key_id_of(fleet, key1))["disabled"] is True
        assert [lag.cluster for lag in store.load(CRED).lagging] == ["cluster-2"]  # still out of sync
    finally:
        app.close()
        fleet.bring_up("kubernetes-2")


def test_a_missing_cluster_kubeconfig_is_a_config_error_naming_the_cluster(tmp_path: Path) -> None:
    """``rotator run`` exits 2 before starting anything, naming the cluster whose kubeconfig is missing."""
    key = tmp_path / "apikey"
    key.write_text("x" * 44)
    key.chmod(0o600)
    provider = {"kind": "ibm-iam", "account_id": "a", "service_id": "ServiceId-1"}
    missing = str(tmp_path / "spokes" / "missing")
    doc = {
        "credentials": [
            {
                "name": CRED,
                "provider": {**provider, "apikey": {"file": str(key)}},
                "registry": {"server": "127.0.0.1:2", "images": ["127.0.0.1:2/team/app:latest"]},
                "targets": {"kubernetes": [{"name": "spoke", "kubeconfig": missing, "namespaces": {"all": True}}]},
            }
        ],
        "state": {"kind": "file", "path": str(tmp_path / "state")},
        "server": {"listen": "127.0.0.1:0"},
    }
    config = tmp_path / "rotator.yaml"
    config.write_text(yaml.safe_dump(doc))
    result = run_rotator("run", "-c", str(config), timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"targets.kubernetes cluster spoke: kubeconfig {missing} does not exist" in result.stderr
