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
