"""CustomResourceDefinitions in the Kubernetes emulator, driven by the real kubectl and the official Python
client (ApiextensionsV1Api, CustomObjectsApi, its watch): a definition is validated (names, versions,
the structural-schema rule) and established; its objects are served at their REST paths and in
discovery, validated against the schema, pruned, defaulted, printed with the printer columns, and
follow the status subresource and finalizer rules. The definition is tests/registrycredential-crd.yaml."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubectl_env import KUBECTL, KUBECTL_TIMEOUT_S, Kubectl, kubectl_runner
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from rotator.adapters.kubernetes import api_client_for
from rotator.sandbox import kube_jsonpath
from rotator.sandbox.control import SandboxProcess

CRD_FILE = Path(__file__).parent / "registrycredential-crd.yaml"
GROUP, VERSION, PLURAL = "rotator.example.com", "v1alpha1", "registrycredentials"
FINALIZER = "rotator.example.com/revoke"
WATCH_TIMEOUT_S = 10


@pytest.fixture(scope="module")
def kube() -> Iterator[SandboxProcess]:
    with SandboxProcess.start() as sbx:
        yield sbx


@pytest.fixture(scope="module")
def api(kube: SandboxProcess) -> Iterator[client.ApiClient]:
    with api_client_for(kube.endpoints["kubernetes"], kube.endpoints["kubernetes_token"]) as api_client:
        yield api_client


@pytest.fixture(scope="module")
def kubectl(kube: SandboxProcess, tmp_path_factory: pytest.TempPathFactory) -> Kubectl:
    return kubectl_runner(kube.endpoints["kubeconfig"], tmp_path_factory.mktemp("kubectl-home"))


@pytest.fixture(scope="module")
def crd(kubectl: Kubectl) -> str:
    """The fixture definition, applied with kubectl as a user would."""
    kubectl("apply", "-f", str(CRD_FILE))
    return f"{PLURAL}.{GROUP}"


@pytest.fixture
def custom(api: client.ApiClient, crd: str) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


@pytest.fixture
def http(kube: SandboxProcess) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {kube.endpoints['kubernetes_token']}"}
    with httpx.Client(base_url=kube.endpoints["kubernetes"], headers=headers, timeout=10) as session:
        yield session


def regcred(name: str, **spec: Any) -> dict[str, Any]:
    body = {"provider": "ibm", "targets": [{"namespace": "team-a", "name": "icr-pull"}]} | spec
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RegistryCredential", "metadata": {"name": name}, "spec": body}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create(custom: client.CustomObjectsApi, body: dict[str, Any]) -> dict[str, Any]:
    created: dict[str, Any] = custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)
    return created


def read(custom: client.CustomObjectsApi, name: str) -> dict[str, Any]:
    found: dict[str, Any] = custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
    return found


def set_ready(custom: client.CustomObjectsApi, name: str, status: str = "True") -> dict[str, Any]:
    """What the controller would write: the Ready condition and a key made three days ago, through /status."""
    created = (dt.datetime.now(dt.UTC) - dt.timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {
        "status": {
            "conditions": [{"type": "Ready", "status": status, "reason": "Rotated", "message": "key in use"}],
            "currentKey": {"id": "ApiKey-1", "createdAt": created},
            "nextRotationAt": "2030-01-01T00:00:00Z",
            "targets": {"total": 3, "inSync": 3},
        }
    }
    patched: dict[str, Any] = custom.patch_cluster_custom_object_status(GROUP, VERSION, PLURAL, name, body)
    return patched


def status_body(error: ApiException) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(error.body)
    return found


# -- the definition -------------------------------------------------------------------------------------


def test_an_applied_definition_is_established_and_discovered(
    api: client.ApiClient, crd: str, kubectl: Kubectl, http: httpx.Client
) -> None:
    definition = client.ApiextensionsV1Api(api).read_custom_resource_definition(crd)
    conditions = {c.type: c.status for c in definition.status.conditions}
    assert conditions == {"NamesAccepted": "True", "Established": "True"}
    assert definition.status.accepted_names.short_names == ["regcred"]
    assert definition.status.stored_versions == [VERSION]
    assert definition.metadata.generation == 1
    resources = kubectl("api-resources", f"--api-group={GROUP}", "--no-headers").stdout.split()
    assert resources == [PLURAL, "regcred", f"{GROUP}/{VERSION}", "false", "RegistryCredential"]
    listed = http.get(f"/apis/{GROUP}/{VERSION}").json()["resources"]
    main, status = listed
    assert main["name"] == PLURAL and main["categories"] == ["rotator"] and "watch" in main["verbs"]
    assert status == {
        "name": f"{PLURAL}/status",
        "singularName": "",
        "namespaced": False,
        "kind": "RegistryCredential",
        "verbs": ["get", "patch", "update"],
    }
    groups = {g["name"]: g["preferredVersion"]["version"] for g in http.get("/apis").json()["groups"]}
    assert groups[GROUP] == VERSION
    # kubectl explain reads the group version's OpenAPI v3 document, served from the definition's schema.
    explained = kubectl("explain", "regcred.spec.provider").stdout
    assert "ENUM:" in explained and "dockerhub" in explained
    v3_index = http.get("/openapi/v3").json()["paths"]
    assert f"apis/{GROUP}/{VERSION}" in v3_index
    v2_kinds = http.get("/openapi/v2").json()["definitions"]["com.example.rotator.v1alpha1.RegistryCredential"]
    assert v2_kinds["x-kubernetes-group-version-kind"] == [
        {"group": GROUP, "version": VERSION, "kind": "RegistryCredential"}
    ]
    assert v2_kinds["properties"]["spec"]["properties"]["provider"]["enum"] == ["ibm", "dockerhub"]
    header = kubectl("get", "crd", crd).stdout.splitlines()[0]
    assert header.split() == ["NAME", "CREATED", "AT"]


def crd_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(CRD_FILE.read_text())
    body["metadata"]["name"] = "widgets.example.com"
    body["spec"]["group"] = "example.com"
    body["spec"]["names"] = {"plural": "widgets", "kind": "Widget"}
    body["spec"] |= changes
    return body


def refused_definition(api: client.ApiClient, body: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(ApiException) as refused:
        client.ApiextensionsV1Api(api).create_custom_resource_definition(body)
    assert refused.value.status == 422
    return status_body(refused.value)


def test_a_non_structural_schema_is_refused_like_the_apiserver(api: client.ApiClient) -> None:
    body = crd_body()
    schema = body["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    del schema["properties"]["spec"]["type"]
    schema["properties"]["status"]["properties"]["targets"]["x-kubernetes-preserve-unknown-fields"] = False
    status = refused_definition(api, body)
    root = "spec.versions[0].schema.openAPIV3Schema"
    assert status["message"] == (
        'CustomResourceDefinition.apiextensions.k8s.io "widgets.example.com" is invalid: ['
        f"{root}.properties[spec].type: Required value: must not be empty for specified object fields, "
        f"{root}.properties[status].properties[targets].x-kubernetes-preserve-unknown-fields: "
        "Invalid value: false: must be true or undefined]"
    )
    broken_rule = crd_body()
    spec_schema = broken_rule["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_schema["x-kubernetes-validations"] = [{"rule": "self.provider ==", "message": "never compiles"}]
    (cause,) = refused_definition(api, broken_rule)["details"]["causes"]
    assert cause["field"] == f"{root}.properties[spec].x-kubernetes-validations[0].rule"
    assert cause["message"].startswith('Invalid value: "self.provider ==": compilation failed:')
    missing = crd_body()
    del missing["spec"]["versions"][0]["schema"]
    assert refused_definition(api, missing)["details"]["causes"] == [
        {"reason": "FieldValueRequired", "message": "Required value: schemas are required", "field": root}
    ]


def test_definition_names_scope_and_versions_are_checked(api: client.ApiClient) -> None:
    body = crd_body(scope="Galaxy")
    body["metadata"]["name"] = "gadgets.example.com"
    second = copy.deepcopy(body["spec"]["versions"][0]) | {"name": "v1"}
    body["spec"]["versions"].append(second)
    fields = {c["field"]: c["message"] for c in refused_definition(api, body)["details"]["causes"]}
    assert fields == {
        "metadata.name": 'Invalid value: "gadgets.example.com": must be spec.names.plural+"."+spec.group',
        "spec.scope": 'Unsupported value: "Galaxy": supported values: "Cluster", "Namespaced"',
        "spec.versions": fields["spec.versions"],
    }
    assert fields["spec.versions"].endswith("must have exactly one version marked as storage version")
    bad_column = crd_body()
    bad_column["spec"]["versions"][0]["additionalPrinterColumns"][0]["jsonPath"] = "status..ready"
    (cause,) = refused_definition(api, bad_column)["details"]["causes"]
    assert cause["field"] == "spec.versions[0].additionalPrinterColumns[0].jsonPath"


# -- custom objects: kubectl ----------------------------------------------------------------------------


def test_kubectl_get_prints_the_printer_columns(kubectl: Kubectl, custom: client.CustomObjectsApi) -> None:
    name = unique("printed")
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(regcred(name)))
    before = kubectl("get", "regcred", name).stdout.splitlines()
    assert before[0].split() == ["NAME", "READY", "KEY", "AGE", "NEXT", "ROTATION", "IN", "SYNC", "AGE"]
    # No status yet: the cells are null, which kubectl prints as blanks; only NAME and AGE show.
    assert before[1].split()[0] == name and len(before[1].split()) == 2
    set_ready(custom, name)
    row = kubectl("get", "registrycredentials", name, "--no-headers").stdout.split()
    assert row[:2] == [name, "True"]
    assert row[2:5] == ["3d", "2030-01-01T00:00:00Z", "3"]  # KEY AGE is a date column: shown as an age
    listed = kubectl("get", "regcred", "-o", "name").stdout.split()
    assert f"registrycredential.{GROUP}/{name}" in listed
    wide = kubectl("get", "regcred", name, "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-1] == "PROVIDER" and wide[1].split()[-1] == "ibm"  # priority 1: only with -o wide


def test_kubectl_refuses_an_invalid_object_with_the_schema_message(kubectl: Kubectl) -> None:
    bad = regcred("bad", provider="gcr", graceSeconds=-1, serviceId="iam-id", description="")
    bad["spec"]["targets"] = [{"namespace": "team-a"}]
    refused = kubectl("apply", "-f", "-", stdin=yaml.safe_dump(bad), check=False)
    assert refused.returncode != 0
    assert 'The RegistryCredential "bad" is invalid:' in refused.stderr
    for line in (
        '* spec.provider: Unsupported value: "gcr": supported values: "ibm", "dockerhub"',
        "* spec.graceSeconds: Invalid value: -1: spec.graceSeconds in body should be greater than or equal to 0",
        "* spec.serviceId: Invalid value: \"iam-id\": spec.serviceId in body should match '^ServiceId-[0-9a-f-]+$'",
        '* spec.description: Invalid value: "": spec.description in body should be at least 1 chars long',
        "* spec.targets[0].name: Required value",
    ):
        assert line in refused.stderr
    assert "bad" not in kubectl("get", "regcred", "-o", "name").stdout


def test_kubectl_apply_refuses_unknown_fields_as_it_asks_for_strict_validation(kubectl: Kubectl) -> None:
    unknown = regcred(unique("strict"), bogus=True)
    refused = kubectl("apply", "-f", "-", stdin=yaml.safe_dump(unknown), check=False)
    assert refused.returncode != 0 and 'unknown field "spec.bogus"' in refused.stderr


def test_kubectl_wait_returns_once_a_status_write_sets_ready(
    kubectl: Kubectl, kube: SandboxProcess, custom: client.CustomObjectsApi, tmp_path: Path
) -> None:
    name = unique("waited")
    create(custom, regcred(name))
    early = kubectl("wait", "--for=condition=Ready", f"regcred/{name}", "--timeout=1s", check=False)
    assert early.returncode != 0 and "timed out" in early.stderr
    assert KUBECTL is not None  # the kubectl fixture skipped the test otherwise
    waiting = subprocess.Popen(  # kubectl_runner's environment, run in the background
        [
            KUBECTL,
            "--cache-dir",
            str(tmp_path / "cache"),
            "wait",
            "--for=condition=Ready",
            f"regcred/{name}",
            f"--timeout={KUBECTL_TIMEOUT_S}s",
        ],
        env=dict(os.environ, HOME=str(tmp_path), KUBECONFIG=kube.endpoints["kubeconfig"]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        set_ready(custom, name)
        out, err = waiting.communicate(timeout=KUBECTL_TIMEOUT_S + 5)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, err
    assert out.strip() == f"registrycredential.{GROUP}/{name} condition met"


# -- custom objects: the official client -----------------------------------------------------------------


def test_unknown_fields_are_pruned_and_defaults_applied(custom: client.CustomObjectsApi) -> None:
    body = regcred(unique("pruned"), bogus="dropped")
    body["spec"]["targets"][0]["extra"] = 1
    body["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
    body["topLevel"] = "dropped"
    created = create(custom, body)
    assert created["spec"] == {
        "provider": "ibm",
        "targets": [{"namespace": "team-a", "name": "icr-pull", "kind": "Secret"}],
        "interval": "720h",
        "graceSeconds": 3600,
        "deletionPolicy": "Retain",
    }
    assert "status" not in created and "topLevel" not in created  # status is written only through /status
    assert read(custom, created["metadata"]["name"]) == created


def test_schema_errors_name_every_field_path(custom: client.CustomObjectsApi) -> None:
    bad = regcred("typed", graceSeconds="soon", labels={"team": 7}, interval="1 week")
    bad["spec"]["targets"] = []
    with pytest.raises(ApiException) as refused:
        create(custom, bad)
    assert refused.value.status == 422
    status = status_body(refused.value)
    assert status["reason"] == "Invalid" and status["details"]["kind"] == "RegistryCredential"
    assert status["details"]["group"] == GROUP
    assert {c["field"]: c["message"] for c in status["details"]["causes"]} == {
        "spec.graceSeconds": 'Invalid value: "string": spec.graceSeconds in body must be of type integer: "string"',
        "spec.labels.team": 'Invalid value: "integer": spec.labels.team in body must be of type string: "integer"',
        "spec.interval": "Invalid value: \"1 week\": spec.interval in body should match '^[0-9]+[smhd]$'",
        "spec.targets": "Invalid value: 0: spec.targets in body should have at least 1 items",
    }
    with pytest.raises(ApiException) as too_big:
        create(custom, regcred("big", graceSeconds=604801))
    assert "spec.graceSeconds in body should be less than or equal to 604800" in status_body(too_big.value)["message"]


def test_cel_rules_refuse_objects_and_changes(custom: client.CustomObjectsApi) -> None:
    """The fixture's x-kubernetes-validations: a cross-field rule on spec, a transition rule on provider."""
    with pytest.raises(ApiException) as cross:
        create(custom, regcred("cel", provider="dockerhub", serviceId="ServiceId-1"))
    assert cross.value.status == 422
    assert status_body(cross.value)["details"]["causes"] == [
        {"reason": "FieldValueInvalid", "message": 'Invalid value: "object": serviceId is only for provider ibm'}
        | {"field": "spec"}
    ]
    name = unique("cel")
    create(custom, regcred(name))  # a transition rule is not evaluated on create
    with pytest.raises(ApiException) as changed:
        custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, name, {"spec": {"provider": "dockerhub"}})
    assert status_body(changed.value)["message"] == (
        f'RegistryCredential.{GROUP} "{name}" is invalid: spec.provider: Invalid value: "string": provider is immutable'
    )
    kept = custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, name, {"spec": {"graceSeconds": 5}})
    assert kept["spec"]["provider"] == "ibm" and kept["spec"]["graceSeconds"] == 5


def test_status_subresource_separates_spec_and_status_writes(custom: client.CustomObjectsApi) -> None:
    name = unique("gen")
    created = create(custom, regcred(name))
    assert created["metadata"]["generation"] == 1
    spec_change = custom.patch_cluster_custom_object(
        GROUP, VERSION, PLURAL, name, {"spec": {"graceSeconds": 60}, "status": {"targets": {"total": 9}}}
    )
    assert spec_change["metadata"]["generation"] == 2 and "status" not in spec_change
    label_only = custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, name, {"metadata": {"labels": {"a": "b"}}})
    assert label_only["metadata"]["generation"] == 2
    status_write = custom.patch_cluster_custom_object_status(
        GROUP, VERSION, PLURAL, name, {"spec": {"graceSeconds": 1}, "status": {"targets": {"total": 2, "inSync": 1}}}
    )
    assert status_write["status"] == {"targets": {"total": 2, "inSync": 1}}
    assert status_write["spec"]["graceSeconds"] == 60 and status_write["metadata"]["generation"] == 2
    assert int(status_write["metadata"]["resourceVersion"]) > int(label_only["metadata"]["resourceVersion"])
    fetched = custom.get_cluster_custom_object_status(GROUP, VERSION, PLURAL, name)
    assert fetched["status"] == status_write["status"]
    with pytest.raises(ApiException) as invalid_status:
        custom.patch_cluster_custom_object_status(GROUP, VERSION, PLURAL, name, {"status": {"targets": {"total": -1}}})
    assert invalid_status.value.status == 422


def test_finalizers_hold_a_deletion_and_the_watch_sees_it(custom: client.CustomObjectsApi) -> None:
    name = unique("final")
    body = regcred(name)
    body["metadata"]["finalizers"] = [FINALIZER]
    created = create(custom, body)
    custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
    held = read(custom, name)
    assert held["metadata"]["deletionTimestamp"] and held["metadata"]["finalizers"] == [FINALIZER]
    custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, name, {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as gone:
        read(custom, name)
    assert gone.value.status == 404
    events = watch.Watch().stream(
        custom.list_cluster_custom_object,
        GROUP,
        VERSION,
        PLURAL,
        field_selector=f"metadata.name={name}",
        resource_version=created["metadata"]["resourceVersion"],
        timeout_seconds=WATCH_TIMEOUT_S,
    )
    seen = []
    for event in events:
        seen.append((event["type"], bool(event["object"]["metadata"].get("deletionTimestamp"))))
        if event["type"] == "DELETED":
            break
    assert seen == [("MODIFIED", True), ("DELETED", True)]


def test_deleting_a_collection_keeps_objects_with_finalizers(custom: client.CustomObjectsApi) -> None:
    team = unique("held")
    for name, finalizers in ((f"{team}-free", []), (f"{team}-held", [FINALIZER])):
        body = regcred(name)
        body["metadata"] |= {"labels": {"team": team}, "finalizers": finalizers}
        create(custom, body)
    custom.delete_collection_cluster_custom_object(GROUP, VERSION, PLURAL, label_selector=f"team={team}")
    left = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, label_selector=f"team={team}")["items"]
    assert [o["metadata"]["name"] for o in left] == [f"{team}-held"]
    assert left[0]["metadata"]["deletionTimestamp"]


def test_strategic_merge_patch_is_refused_for_custom_objects(
    custom: client.CustomObjectsApi, http: httpx.Client
) -> None:
    name = unique("smp")
    create(custom, regcred(name))
    refused = http.patch(
        f"/apis/{GROUP}/{VERSION}/{PLURAL}/{name}",
        content=json.dumps({"spec": {"graceSeconds": 1}}),
        headers={"Content-Type": "application/strategic-merge-patch+json"},
    )
    assert refused.status_code == 415
    assert refused.json()["message"] == (
        "the body of the request was in an unknown format - accepted media types include: "
        "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
    )


def test_lists_select_and_paginate_custom_objects(custom: client.CustomObjectsApi) -> None:
    team = unique("team")
    for index in range(3):
        body = regcred(f"{team}-{index}")
        body["metadata"]["labels"] = {"team": team}
        create(custom, body)
    first = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, label_selector=f"team={team}", limit=2)
    assert first["kind"] == "RegistryCredentialList" and len(first["items"]) == 2
    rest = custom.list_cluster_custom_object(
        GROUP, VERSION, PLURAL, label_selector=f"team={team}", _continue=first["metadata"]["continue"]
    )
    names = [o["metadata"]["name"] for o in first["items"] + rest["items"]]
    assert names == [f"{team}-{i}" for i in range(3)]


def test_a_namespaced_definition_serves_namespaced_paths_and_is_cleaned_up(
    api: client.ApiClient, http: httpx.Client
) -> None:
    extensions, objects = client.ApiextensionsV1Api(api), client.CustomObjectsApi(api)
    body = crd_body(scope="Namespaced")
    version = body["spec"]["versions"][0]
    del version["subresources"], version["additionalPrinterColumns"]
    extensions.create_custom_resource_definition(body)
    widget = {"apiVersion": "example.com/v1alpha1", "kind": "Widget", "metadata": {"name": "w"}} | {
        "spec": regcred("w")["spec"]
    }
    created = objects.create_namespaced_custom_object("example.com", "v1alpha1", "default", "widgets", widget)
    assert created["metadata"]["namespace"] == "default" and created["spec"]["graceSeconds"] == 3600
    across = objects.list_cluster_custom_object("example.com", "v1alpha1", "widgets")
    assert [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in across["items"]] == [("default", "w")]
    assert http.get("/apis/example.com/v1alpha1/widgets/w").status_code == 404  # no cluster-scoped path
    assert http.get("/apis/example.com/v1alpha1/namespaces/default/widgets/w/status").status_code == 404
    table = http.get(
        "/apis/example.com/v1alpha1/namespaces/default/widgets",
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
    ).json()
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Age"]
    extensions.delete_custom_resource_definition("widgets.example.com")
    assert http.get("/apis/example.com/v1alpha1/namespaces/default/widgets/w").status_code == 404
    assert "example.com" not in {g["name"] for g in http.get("/apis").json()["groups"]}


def test_defaults_added_to_the_schema_apply_when_objects_are_read(
    api: client.ApiClient, custom: client.CustomObjectsApi, crd: str
) -> None:
    name = unique("later")
    create(custom, regcred(name))
    extensions = client.ApiextensionsV1Api(api)
    definition = extensions.read_custom_resource_definition(crd)
    spec = definition.spec.versions[0].schema.open_apiv3_schema.properties["spec"]
    spec.properties["region"] = client.V1JSONSchemaProps(type="string", default="us-south")
    try:
        updated = extensions.replace_custom_resource_definition(crd, definition)
        assert updated.metadata.generation == 2
        assert read(custom, name)["spec"]["region"] == "us-south"
    finally:
        del spec.properties["region"]
        definition.metadata.resource_version = None
        extensions.replace_custom_resource_definition(crd, definition)


# -- the printer columns' JSONPath subset ----------------------------------------------------------------


def test_jsonpath_subset_for_printer_columns() -> None:
    obj = {
        "status": {
            "conditions": [{"type": "Degraded", "status": "False"}, {"type": "Ready", "status": "True"}],
            "targets": {"a.b": 1},
        }
    }
    assert kube_jsonpath.evaluate('.status.conditions[?(@.type=="Ready")].status', obj) == ["True"]
    assert kube_jsonpath.evaluate("{.status.conditions[-1].type}", obj) == ["Ready"]
    assert kube_jsonpath.evaluate(".status.conditions[*].type", obj) == ["Degraded", "Ready"]
    assert kube_jsonpath.evaluate(".status.targets['a.b']", obj) == [1]
    assert kube_jsonpath.evaluate(".status.missing.field", obj) == []
    with pytest.raises(kube_jsonpath.JsonPathError):
        kube_jsonpath.parse(".status..ready")
