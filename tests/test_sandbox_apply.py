"""Server-side apply, managedFields and the OpenAPI documents of the Kubernetes emulator, driven by the
official Python client (its typed ``patch_*`` with ``_content_type``, and the requests of its own e2e tests:
``DynamicClient.server_side_apply`` with a dry run, ``create_from_yaml(apply=True)`` twice) and the real
kubectl (``apply`` validated by the server, ``apply --server-side`` with and without ``--force-conflicts``)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubectl_env import Kubectl, kubectl_runner
from kubernetes import client, utils
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient

from rotator.adapters.kubernetes import api_client_for
from rotator.sandbox.control import SandboxProcess

APPLY = "application/apply-patch+yaml"


@pytest.fixture(scope="module")
def kube() -> Iterator[SandboxProcess]:
    with SandboxProcess.start() as sbx:
        yield sbx


@pytest.fixture(scope="module")
def core(kube: SandboxProcess) -> Iterator[client.CoreV1Api]:
    with api_client_for(kube.endpoints["kubernetes"], kube.endpoints["kubernetes_token"]) as api:
        yield client.CoreV1Api(api)


@pytest.fixture
def ns(core: client.CoreV1Api) -> str:
    name = f"ssa-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


@pytest.fixture
def http(kube: SandboxProcess) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {kube.endpoints['kubernetes_token']}"}
    with httpx.Client(base_url=kube.endpoints["kubernetes"], headers=headers, timeout=10) as session:
        yield session


def configmap(name: str, data: dict[str, str], labels: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name} | ({"labels": labels} if labels else {})
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}


def secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}


def managed(obj: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """(manager, operation) -> fieldsV1 of a client model's managedFields."""
    return {(e.manager, e.operation): e.fields_v1 for e in obj.metadata.managed_fields or []}


def status_of(error: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(error.body)
    return body


# -- the official client --------------------------------------------------------------------------------
def test_apply_patch_creates_then_updates_and_shows_managed_fields(core: client.CoreV1Api, ns: str) -> None:
    """The client's apply (its own e2e test's request): create on first apply, update on the second."""
    created = core.patch_namespaced_config_map(
        "applied", ns, configmap("applied", {"key": "one"}), field_manager="e2e-tests", _content_type=APPLY
    )
    assert created.data == {"key": "one"}
    updated = core.patch_namespaced_config_map(
        "applied", ns, configmap("applied", {"key": "two"}), field_manager="e2e-tests", _content_type=APPLY
    )
    assert updated.data == {"key": "two"} and updated.metadata.uid == created.metadata.uid
    fetched = core.read_namespaced_config_map("applied", ns)
    assert managed(fetched) == {("e2e-tests", "Apply"): {"f:data": {"f:key": {}}}}
    (entry,) = fetched.metadata.managed_fields
    assert entry.api_version == "v1" and entry.fields_type == "FieldsV1" and entry.time is not None


def test_a_second_manager_conflicts_and_force_takes_ownership(core: client.CoreV1Api, ns: str) -> None:
    core.patch_namespaced_secret("pull", ns, secret("pull", {"k": "first"}), field_manager="one", _content_type=APPLY)
    with pytest.raises(ApiException) as refused:
        core.patch_namespaced_secret(
            "pull", ns, secret("pull", {"k": "second"}), field_manager="two", _content_type=APPLY
        )
    assert refused.value.status == 409
    status = status_of(refused.value)
    assert status["reason"] == "Conflict"
    assert status["message"] == 'Apply failed with 1 conflict: conflict with "one": .data.k'
    assert status["details"]["causes"] == [
        {"reason": "FieldManagerConflict", "message": 'conflict with "one"', "field": ".data.k"}
    ]
    assert core.read_namespaced_secret("pull", ns).data == {"k": "Zmlyc3Q="}  # nothing written
    forced = core.patch_namespaced_secret(
        "pull", ns, secret("pull", {"k": "second"}), field_manager="two", force=True, _content_type=APPLY
    )
    assert forced.data == {"k": "c2Vjb25k"}
    owners = managed(core.read_namespaced_secret("pull", ns))
    assert owners == {("two", "Apply"): {"f:data": {"f:k": {}}}}


def test_the_same_value_is_shared_without_conflict(core: client.CoreV1Api, ns: str) -> None:
    core.patch_namespaced_config_map(
        "shared", ns, configmap("shared", {"a": "1"}), field_manager="x", _content_type=APPLY
    )
    core.patch_namespaced_config_map(
        "shared", ns, configmap("shared", {"a": "1"}), field_manager="y", _content_type=APPLY
    )
    owners = managed(core.read_namespaced_config_map("shared", ns))
    assert owners == {("x", "Apply"): {"f:data": {"f:a": {}}}, ("y", "Apply"): {"f:data": {"f:a": {}}}}


def test_conflicts_with_several_managers_are_grouped_by_manager(core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_config_map(ns, configmap("many", {"a": "1", "b": "1"}), field_manager="creator")
    core.patch_namespaced_config_map("many", ns, {"data": {"c": "1"}}, field_manager="patcher")
    with pytest.raises(ApiException) as refused:
        core.patch_namespaced_config_map(
            "many", ns, configmap("many", {"a": "2", "b": "2", "c": "2"}), field_manager="applier", _content_type=APPLY
        )
    assert status_of(refused.value)["message"] == (
        "Apply failed with 3 conflicts: "
        'conflicts with "creator" using v1:\n- .data.a\n- .data.b\n'
        'conflicts with "patcher" using v1:\n- .data.c'
    )


def test_fields_left_out_of_the_next_apply_are_removed_unless_someone_else_owns_them(
    core: client.CoreV1Api, ns: str
) -> None:
    labels = {"app": "web", "tier": "front"}
    core.patch_namespaced_config_map(
        "pruned", ns, configmap("pruned", {"a": "1", "b": "2"}, labels), field_manager="me", _content_type=APPLY
    )
    core.patch_namespaced_config_map(
        "pruned", ns, configmap("pruned", {"b": "2"}), field_manager="other", _content_type=APPLY
    )
    after = core.patch_namespaced_config_map(
        "pruned", ns, configmap("pruned", {"a": "1"}, {"app": "web"}), field_manager="me", _content_type=APPLY
    )
    assert after.data == {"a": "1", "b": "2"}  # b stays: "other" still applies it
    assert after.metadata.labels == {"app": "web"}  # tier is gone: only "me" had it


def test_updates_record_their_manager_and_take_the_fields_they_change(core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_config_map(ns, configmap("upd", {"a": "1", "b": "1"}), field_manager="creator")
    core.patch_namespaced_config_map("upd", ns, {"data": {"a": "2"}}, field_manager="patcher")
    owners = managed(core.read_namespaced_config_map("upd", ns))
    assert owners == {
        ("creator", "Update"): {"f:data": {".": {}, "f:b": {}}},
        ("patcher", "Update"): {"f:data": {"f:a": {}}},
    }
    # Without fieldManager, the User-Agent's product names the manager, as the apiserver does.
    default = core.create_namespaced_config_map(ns, configmap("ua", {"a": "1"}))
    assert [e.manager for e in default.metadata.managed_fields] == ["OpenAPI-Generator"]


def test_an_apply_that_changes_nothing_stores_nothing(core: client.CoreV1Api, ns: str) -> None:
    body = configmap("same", {"a": "1"})
    first = core.patch_namespaced_config_map("same", ns, body, field_manager="m", _content_type=APPLY)
    again = core.patch_namespaced_config_map("same", ns, body, field_manager="m", _content_type=APPLY)
    assert again.metadata.resource_version == first.metadata.resource_version


# -- the wire: YAML bodies and the apiserver's errors -------------------------------------------------
def test_a_yaml_body_is_applied_and_bad_requests_are_refused_like_the_apiserver(http: httpx.Client, ns: str) -> None:
    url = f"/api/v1/namespaces/{ns}/configmaps/from-yaml"
    body = yaml.safe_dump(configmap("from-yaml", {"k": "v"}))
    created = http.patch(url, params={"fieldManager": "yaml"}, content=body, headers={"Content-Type": APPLY})
    assert created.status_code == 201 and created.json()["data"] == {"k": "v"}
    no_manager = http.patch(url, content=body, headers={"Content-Type": APPLY})
    assert no_manager.status_code == 422
    assert no_manager.json()["message"] == (
        'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch'
    )
    other_name = http.patch(
        url,
        params={"fieldManager": "yaml"},
        content=yaml.safe_dump(configmap("elsewhere", {})),
        headers={"Content-Type": APPLY},
    )
    assert other_name.status_code == 400 and "does not match the name on the URL" in other_name.json()["message"]
    forced_merge = http.patch(
        url, params={"force": "true"}, content="{}", headers={"Content-Type": "application/merge-patch+json"}
    )
    assert forced_merge.status_code == 422
    assert "force: Forbidden: may not be specified for non-apply patch" in forced_merge.json()["message"]


def test_openapi_v3_lists_every_group_version_and_v2_is_json_only(http: httpx.Client) -> None:
    index = http.get("/openapi/v3").json()["paths"]
    assert set(index) >= {"api/v1", "apis/coordination.k8s.io/v1", "apis/authorization.k8s.io/v1"}
    core_doc = http.get(index["api/v1"]["serverRelativeURL"]).json()
    patch = core_doc["paths"]["/api/v1/namespaces/{namespace}/secrets/{name}"]["patch"]
    assert patch["x-kubernetes-group-version-kind"] == {"group": "", "version": "v1", "kind": "Secret"}
    assert {"fieldValidation", "fieldManager", "force"} <= {p["name"] for p in patch["parameters"]}
    assert APPLY in patch["requestBody"]["content"]
    secret_schema = core_doc["components"]["schemas"]["io.k8s.api.core.v1.Secret"]
    assert secret_schema["properties"]["data"]["additionalProperties"] == {"type": "string", "format": "byte"}
    # List patch strategies match the emulator's strategic merge: secrets merge by name, imagePullSecrets is atomic.
    account = core_doc["components"]["schemas"]["io.k8s.api.core.v1.ServiceAccount"]["properties"]
    assert account["secrets"]["x-kubernetes-patch-merge-key"] == "name"
    assert "x-kubernetes-patch-strategy" not in account["imagePullSecrets"]
    assert http.get("/openapi/v3/apis/nothing.example.com/v1").status_code == 404
    v2 = http.get("/openapi/v2", headers={"Accept": "application/json"})
    assert v2.json()["swagger"] == "2.0" and "io.k8s.api.core.v1.ConfigMap" in v2.json()["definitions"]
    protobuf = http.get("/openapi/v2", headers={"Accept": "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"})
    assert protobuf.status_code == 406


# -- kubectl --------------------------------------------------------------------------------------------
@pytest.fixture
def kubectl(kube: SandboxProcess, tmp_path: Path) -> Kubectl:
    return kubectl_runner(kube.endpoints["kubeconfig"], tmp_path)


def manifest(ns: str, value: str) -> str:
    return yaml.safe_dump(configmap("web", {"setting": value}) | {"metadata": {"name": "web", "namespace": ns}})


@pytest.mark.real
def test_kubectl_server_side_apply_conflicts_with_client_side_apply_until_forced(
    kubectl: Kubectl, core: client.CoreV1Api, ns: str
) -> None:
    kubectl("apply", "-f", "-", stdin=manifest(ns, "one"))  # client-side, validated by the server
    refused = kubectl("apply", "--server-side", "-f", "-", stdin=manifest(ns, "two"), check=False)
    assert refused.returncode != 0
    assert 'Apply failed with 1 conflict: conflict with "kubectl-client-side-apply" using v1: .data.setting' in (
        refused.stderr
    )
    assert core.read_namespaced_config_map("web", ns).data == {"setting": "one"}
    kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=manifest(ns, "two"))
    live = core.read_namespaced_config_map("web", ns)
    assert live.data == {"setting": "two"}
    assert managed(live)[("kubectl", "Apply")] == {"f:data": {"f:setting": {}}}


@pytest.mark.real
def test_kubectl_validation_is_done_by_the_server(kubectl: Kubectl, ns: str) -> None:
    """kubectl apply (no --validate=false) sends fieldValidation=Strict: an unknown field is refused."""
    bad = yaml.safe_load(manifest(ns, "x")) | {"bogus": 1}
    refused = kubectl("apply", "-f", "-", stdin=yaml.safe_dump(bad), check=False)
    assert refused.returncode != 0 and 'unknown field "bogus"' in refused.stderr
    created = kubectl("apply", "--server-side", "-f", "-", stdin=manifest(ns, "x"))
    assert "serverside-applied" in created.stdout


# -- the client's own apply helpers: DynamicClient.server_side_apply and create_from_yaml(apply=True) ----
@pytest.fixture
def dynamic(kube: SandboxProcess) -> Iterator[DynamicClient]:
    """The client's DynamicClient (its discovery cache file is keyed by this sandbox's URL)."""
    with api_client_for(kube.endpoints["kubernetes"], kube.endpoints["kubernetes_token"]) as api:
        yield DynamicClient(api)


def test_dynamic_client_server_side_apply_dry_run_then_forced(
    dynamic: DynamicClient, core: client.CoreV1Api, ns: str
) -> None:
    """As the client's own e2e test: a dry-run apply answers the object with its manager, storing nothing;
    force_conflicts (sent as force=True) takes a field from another manager."""
    configmaps = dynamic.resources.get(api_version="v1", kind="ConfigMap")
    body = configmap("dyn", {"k": "mine"})
    dry = configmaps.server_side_apply(namespace=ns, body=body, field_manager="kubernetes-unittests", dry_run="All")
    assert dry.metadata.managedFields[0].manager == "kubernetes-unittests"
    with pytest.raises(ApiException) as absent:
        core.read_namespaced_config_map("dyn", ns)
    assert absent.value.status == 404
    core.create_namespaced_config_map(ns, configmap("dyn", {"k": "theirs"}), field_manager="someone")
    taken = configmaps.server_side_apply(
        namespace=ns, body=body, field_manager="kubernetes-unittests", force_conflicts=True
    )
    assert taken.data.k == "mine"


def test_create_from_yaml_with_apply_is_idempotent(dynamic: DynamicClient, ns: str, tmp_path: Path) -> None:
    manifest_file = tmp_path / "configmap.yaml"
    manifest_file.write_text(yaml.safe_dump(configmap("from-file", {"k": "v"})))
    for _ in range(2):
        utils.create_from_yaml(dynamic.client, str(manifest_file), namespace=ns, apply=True)
    stored = dynamic.resources.get(api_version="v1", kind="ConfigMap").get(name="from-file", namespace=ns)
    assert stored.data.k == "v"
    assert [(e.manager, e.operation) for e in stored.metadata.managedFields] == [("python-client", "Apply")]
