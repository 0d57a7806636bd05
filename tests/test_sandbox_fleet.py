"""``rotator sandbox --clusters N``: independent Kubernetes emulators, one kubeconfig, and an admin API
that takes one cluster down and brings it back with its state."""

from __future__ import annotations

import json
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubectl_env import kubectl_runner
from kubernetes import client
from kubernetes.client.rest import ApiException

from rotator.adapters.kubernetes import api_client_for
from rotator.sandbox.control import SandboxProcess

# Generous for a loaded machine: the sandbox cuts open connections within about a second.
WATCH_CUT_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def fleet() -> Iterator[SandboxProcess]:
    with SandboxProcess.start(extra_args=["--clusters", "2"]) as sbx:
        yield sbx


def core_api(cluster: dict[str, Any], token: str | None = None) -> client.CoreV1Api:
    return client.CoreV1Api(api_client_for(cluster["url"], token or cluster["token"]))


def secret(name: str) -> client.V1Secret:
    return client.V1Secret(metadata=client.V1ObjectMeta(name=name), string_data={"k": "v"})


def test_endpoints_list_every_cluster_and_keep_the_single_cluster_keys(fleet: SandboxProcess) -> None:
    endpoints = fleet.endpoints
    first, second = endpoints["clusters"]
    assert [first["name"], second["name"]] == ["cluster-1", "cluster-2"]
    assert [first["service"], second["service"]] == ["kubernetes", "kubernetes-2"]
    # Today's keys describe cluster 1.
    assert endpoints["kubernetes"] == first["url"] and endpoints["kubernetes_token"] == first["token"]
    assert endpoints["kubernetes_tls"] == first["tls_url"]
    assert endpoints["kubernetes-2"] == second["url"]
    ports = {first["url"], second["url"], first["tls_url"], second["tls_url"]}
    assert len(ports) == 4
    assert first["token"] != second["token"] and first["readonly_token"] != second["readonly_token"]
    assert Path(second["ca_file"]).read_text() != Path(first["ca_file"]).read_text()


def test_clusters_are_independent(fleet: SandboxProcess) -> None:
    """A secret written to one cluster is absent from the other; a token of one is refused by the other."""
    first, second = fleet.endpoints["clusters"]
    name = f"only-one-{uuid.uuid4().hex[:8]}"
    since = {service: fleet.last_seq(service) for service in ("kubernetes", "kubernetes-2")}
    core_api(first).create_namespaced_secret("team-a", secret(name))
    with pytest.raises(ApiException) as missing:
        core_api(second).read_namespaced_secret(name, "team-a")
    assert missing.value.status == 404
    with pytest.raises(ApiException) as refused:
        core_api(second, token=first["token"]).list_namespaced_secret("team-a")
    assert refused.value.status == 401
    with pytest.raises(ApiException) as refused_back:
        core_api(first, token=second["readonly_token"]).list_namespaced_secret("team-a")
    assert refused_back.value.status == 401
    # Each cluster's admin token works on its own cluster.
    assert core_api(second).list_namespaced_secret("team-a").items == []
    # Request logs (and fault rules) are per cluster too.
    posts = [(r["method"], r["status"]) for r in fleet.requests("kubernetes", since["kubernetes"])]
    assert ("POST", 201) in posts
    assert all(r["method"] != "POST" for r in fleet.requests("kubernetes-2", since["kubernetes-2"]))


@pytest.mark.real
def test_kubectl_reaches_each_cluster_by_context(fleet: SandboxProcess, tmp_path: Path) -> None:
    kubectl_run = kubectl_runner(fleet.endpoints["kubeconfig"], tmp_path)

    def kubectl(*args: str) -> str:
        return kubectl_run(*args).stdout

    namespace = f"ctx-{uuid.uuid4().hex[:8]}"
    kubectl("--context", "cluster-2", "create", "namespace", namespace)
    in_two = json.loads(kubectl("--context", "cluster-2", "get", "namespaces", "-o", "json"))
    in_one = json.loads(kubectl("--context", "cluster-1", "get", "namespaces", "-o", "json"))
    via_alias = json.loads(kubectl("--context", "sandbox", "get", "namespaces", "-o", "json"))
    names = [{item["metadata"]["name"] for item in listing["items"]} for listing in (in_two, in_one, via_alias)]
    assert namespace in names[0]
    assert namespace not in names[1] and names[1] == names[2]


def test_a_cluster_taken_down_refuses_connections_and_comes_back_with_its_state(fleet: SandboxProcess) -> None:
    first, second = fleet.endpoints["clusters"]
    name = f"kept-{uuid.uuid4().hex[:8]}"
    core_api(second).create_namespaced_secret("team-b", secret(name))
    fleet.take_down("kubernetes-2")
    try:
        assert fleet.admin.get("/healthz").json()["down"] == ["kubernetes-2"]
        for url in (second["url"], second["tls_url"]):
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{url}/healthz", verify=False, timeout=5)
        # Cluster 1 is unaffected.
        assert core_api(first).list_namespaced_secret("team-b").items is not None
    finally:
        fleet.bring_up("kubernetes-2")
    assert fleet.admin.get("/healthz").json()["down"] == []
    assert core_api(second).read_namespaced_secret(name, "team-b").metadata.name == name
    trusted = ssl.create_default_context(cafile=second["ca_file"])
    assert httpx.get(f"{second['tls_url']}/healthz", verify=trusted, timeout=5).text == "ok"


def test_service_state_names_unknown_services(fleet: SandboxProcess) -> None:
    response = fleet.admin.post("/services/kubernetes-9/down")
    assert response.status_code == 404 and "kubernetes-2" in response.json()["error"]


def test_one_cluster_keeps_todays_kubeconfig_and_endpoints(tmp_path: Path) -> None:
    """N=1 (the default): one context named sandbox, user admin, and a one-entry clusters list."""
    with SandboxProcess.start() as sbx:
        kubeconfig = Path(sbx.endpoints["kubeconfig"]).read_text()
        assert "- name: sandbox\n  context:\n    cluster: sandbox\n    user: admin\n" in kubeconfig
        assert kubeconfig.count("- name: ") == 3
        (only,) = sbx.endpoints["clusters"]
        assert only["name"] == only["context"] == "sandbox" and only["token"] == sbx.endpoints["kubernetes_token"]
        assert "kubernetes-2" not in sbx.endpoints


def test_taking_a_cluster_down_cuts_its_open_watches(fleet: SandboxProcess) -> None:
    """A client watching cluster 2 sees its stream end (as when a real API server goes away), well before
    its read timeout: no bytes flow on this watch otherwise (no events, no bookmarks asked for)."""
    second = fleet.endpoints["clusters"][1]
    headers = {"Authorization": f"Bearer {second['token']}"}
    url = f"{second['url']}/api/v1/namespaces/team-c/secrets"
    params = {"watch": "true", "timeoutSeconds": "300"}
    outcome = "still open"
    with (
        httpx.Client(timeout=WATCH_CUT_TIMEOUT_S) as session,
        session.stream("GET", url, params=params, headers=headers) as stream,
    ):
        assert stream.status_code == 200
        fleet.take_down("kubernetes-2")
        try:
            for _ in stream.iter_bytes():
                pass
            outcome = "ended"
        except httpx.ReadTimeout:
            outcome = "timed out"
        except httpx.HTTPError:
            outcome = "cut"
        finally:
            fleet.bring_up("kubernetes-2")
    assert outcome in ("ended", "cut")


def test_clusters_keep_objects_and_tokens_across_restarts_with_a_state_dir(tmp_path: Path) -> None:
    name = f"persisted-{uuid.uuid4().hex[:8]}"
    state = tmp_path / "state"
    with SandboxProcess.start(state_dir=state, extra_args=["--clusters", "2"]) as first_run:
        second = first_run.endpoints["clusters"][1]
        core_api(second).create_namespaced_secret("team-a", secret(name))
    with SandboxProcess.start(state_dir=state, extra_args=["--clusters", "2"]) as second_run:
        again = second_run.endpoints["clusters"][1]
        assert again["token"] == second["token"]
        assert core_api(again).read_namespaced_secret(name, "team-a").metadata.name == name
        with pytest.raises(ApiException) as missing:
            core_api(second_run.endpoints["clusters"][0]).read_namespaced_secret(name, "team-a")
        assert missing.value.status == 404


def test_a_bad_cluster_count_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as refused:
        SandboxProcess.start(extra_args=["--clusters", "0"], log_path=tmp_path / "sandbox.log")
    assert "--clusters takes a whole number from 1 to 50" in str(refused.value)
