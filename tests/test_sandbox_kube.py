"""The Kubernetes emulator, proven by clients nobody here wrote: the official Python client and kubectl."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubectl_env import Kubectl, kubectl_runner
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from polling import wait_for

from rotator.sandbox.control import SandboxProcess

DOCKER_CONFIG = {"auths": {"registry.example.com": {"username": "u", "password": "p", "auth": "dTpw"}}}
STALE_MESSAGE = (
    'Operation cannot be fulfilled on secrets "{name}": the object has been modified; please apply your '
    "changes to the latest version and try again"
)


# -- helpers ------------------------------------------------------------------------------------------


def api_client(sbx: SandboxProcess, token: str | None = None) -> client.ApiClient:
    configuration = client.Configuration(
        host=sbx.endpoints["kubernetes"],
        api_key={"authorization": f"Bearer {token or sbx.endpoints['kubernetes_token']}"},
    )
    return client.ApiClient(configuration)


@pytest.fixture(scope="module")
def kube() -> Iterator[SandboxProcess]:
    """One sandbox for this module's tests that only touch their own namespaces."""
    with SandboxProcess.start() as sbx:
        yield sbx


@pytest.fixture(scope="module")
def core(kube: SandboxProcess) -> Iterator[client.CoreV1Api]:
    with api_client(kube) as api:
        yield client.CoreV1Api(api)


@pytest.fixture
def ns(core: client.CoreV1Api) -> str:
    """A fresh namespace, so tests sharing the module sandbox do not see each other's objects."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def b64(data: Any) -> str:
    raw = data if isinstance(data, bytes) else (json.dumps(data) if not isinstance(data, str) else data).encode()
    return base64.b64encode(raw).decode()


def docker_secret(name: str, config_json: Any = DOCKER_CONFIG, **meta: Any) -> client.V1Secret:
    return client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, **meta),
        type="kubernetes.io/dockerconfigjson",
        data={".dockerconfigjson": b64(config_json)},
    )


def raw(sbx: SandboxProcess, method: str, path: str, *, token: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = kwargs.pop("headers", {})
    if token != "":
        headers.setdefault("Authorization", f"Bearer {token or sbx.endpoints['kubernetes_token']}")
    return httpx.request(method, sbx.endpoints["kubernetes"] + path, headers=headers, timeout=10, **kwargs)


def status_of(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    assert body["kind"] == "Status" and body["apiVersion"] == "v1" and body["status"] == "Failure"
    return body


def stats(sbx: SandboxProcess) -> dict[str, Any]:
    response = sbx.admin.get("/kubernetes/stats")
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


# -- discovery ----------------------------------------------------------------------------------------


def test_discovery_lists_every_served_resource(kube: SandboxProcess) -> None:
    """/api, /apis and each group version describe the resources as kubectl needs them."""
    assert raw(kube, "GET", "/api").json()["versions"] == ["v1"]
    groups = {g["name"]: g["preferredVersion"]["groupVersion"] for g in raw(kube, "GET", "/apis").json()["groups"]}
    assert groups == {
        "coordination.k8s.io": "coordination.k8s.io/v1",
        "apiextensions.k8s.io": "apiextensions.k8s.io/v1",
        "authentication.k8s.io": "authentication.k8s.io/v1",
        "authorization.k8s.io": "authorization.k8s.io/v1",
    }
    core_resources = {r["name"]: r for r in raw(kube, "GET", "/api/v1").json()["resources"]}
    assert core_resources["namespaces"]["namespaced"] is False
    assert core_resources["namespaces"]["shortNames"] == ["ns"]
    assert core_resources["secrets"]["kind"] == "Secret" and core_resources["secrets"]["namespaced"] is True
    assert "watch" in core_resources["secrets"]["verbs"] and "patch" in core_resources["secrets"]["verbs"]
    assert core_resources["serviceaccounts"]["shortNames"] == ["sa"]
    leases = raw(kube, "GET", "/apis/coordination.k8s.io/v1").json()["resources"]
    assert [(r["name"], r["kind"]) for r in leases] == [("leases", "Lease")]
    reviews = raw(kube, "GET", "/apis/authentication.k8s.io/v1").json()["resources"]
    assert reviews[0]["name"] == "tokenreviews" and reviews[0]["verbs"] == ["create"]
    missing = raw(kube, "GET", "/openapi/v1")
    assert missing.status_code == 404 and missing.json()["reason"] == "NotFound"


def test_seeded_namespaces_carry_the_label_and_a_default_service_account(
    kube: SandboxProcess, core: client.CoreV1Api
) -> None:
    """The seed's namespaces exist, the labelled ones match the selector, each has a default ServiceAccount."""
    label = kube.endpoints["namespace_label"]
    labelled = {n.metadata.name for n in core.list_namespace(label_selector=label).items}
    assert labelled == set(kube.endpoints["labelled_namespaces"])
    names = {n.metadata.name for n in core.list_namespace().items}
    assert set(kube.endpoints["namespaces"]) | {"rotator-system"} <= names
    for namespace in kube.endpoints["namespaces"]:
        assert core.read_namespaced_service_account("default", namespace).metadata.uid


# -- secrets: CRUD, conflicts, validation ------------------------------------------------------------


def test_secret_create_read_replace_delete(core: client.CoreV1Api, ns: str) -> None:
    """CRUD keeps the uid, bumps the resourceVersion, and deletes with a Success Status."""
    created = core.create_namespaced_secret(ns, docker_secret("pull"))
    assert created.metadata.uid and created.metadata.creation_timestamp is not None
    read = core.read_namespaced_secret("pull", ns)
    assert read.data == created.data and read.type == "kubernetes.io/dockerconfigjson"
    read.data = {".dockerconfigjson": b64({"auths": {}})}
    replaced = core.replace_namespaced_secret("pull", ns, read)
    assert replaced.metadata.uid == created.metadata.uid
    assert int(replaced.metadata.resource_version) > int(created.metadata.resource_version)
    status = core.delete_namespaced_secret("pull", ns)  # typed as "object" by client 37: a dict
    assert status["status"] == "Success" and status["details"]["uid"] == created.metadata.uid
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_secret("pull", ns)
    assert exc.value.status == 404
    assert status_of(exc.value)["message"] == 'secrets "pull" not found'


def test_string_data_is_merged_into_data(core: client.CoreV1Api, ns: str) -> None:
    """stringData is write-only: it lands base64-encoded in data and overrides the same key."""
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name="mixed"), data={"a": b64("old"), "b": b64("keep")}, string_data={"a": "new"}
    )
    created = core.create_namespaced_secret(ns, body)
    assert created.data == {"a": b64("new"), "b": b64("keep")}
    assert created.string_data is None and created.type == "Opaque"


def test_replace_with_a_stale_resource_version_is_a_conflict(core: client.CoreV1Api, ns: str) -> None:
    """A PUT carrying an old resourceVersion gets the real 409 Conflict Status; one without it overwrites."""
    first = core.create_namespaced_secret(ns, docker_secret("s1"))
    core.patch_namespaced_secret("s1", ns, {"metadata": {"labels": {"touched": "yes"}}})
    first.metadata.labels = {"mine": "stale"}
    with pytest.raises(ApiException) as exc:
        core.replace_namespaced_secret("s1", ns, first)
    body = status_of(exc.value)
    assert exc.value.status == 409 and body["reason"] == "Conflict"
    assert body["message"] == STALE_MESSAGE.format(name="s1")
    assert body["details"] == {"name": "s1", "kind": "secrets"}
    first.metadata.resource_version = None
    assert core.replace_namespaced_secret("s1", ns, first).metadata.labels == {"mine": "stale"}


def test_create_twice_is_already_exists_and_replace_of_missing_is_not_found(core: client.CoreV1Api, ns: str) -> None:
    """Create of an existing name is 409 AlreadyExists; PUT never creates (404)."""
    core.create_namespaced_secret(ns, docker_secret("dup"))
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_secret(ns, docker_secret("dup"))
    assert exc.value.status == 409 and status_of(exc.value)["reason"] == "AlreadyExists"
    assert status_of(exc.value)["message"] == 'secrets "dup" already exists'
    with pytest.raises(ApiException) as missing:
        core.replace_namespaced_secret("ghost", ns, docker_secret("ghost"))
    assert missing.value.status == 404


@pytest.mark.parametrize(
    ("data", "field", "reason", "fragment"),
    [
        pytest.param(
            {".dockerconfigjson": b64(b"{not json")},
            "data[.dockerconfigjson]",
            "FieldValueInvalid",
            '"<secret contents redacted>"',
            id="invalid-json",
        ),
        pytest.param(
            {"other": b64("x")}, "data[.dockerconfigjson]", "FieldValueRequired", "Required value", id="missing"
        ),
        pytest.param(
            {".dockerconfigjson": b64(DOCKER_CONFIG), "bad key!": b64("x")},
            "data[bad key!]",
            "FieldValueInvalid",
            "a valid config key",
            id="bad-data-key",
        ),
    ],
)
def test_invalid_dockerconfigjson_secret_is_422(
    core: client.CoreV1Api, ns: str, data: dict[str, str], field: str, reason: str, fragment: str
) -> None:
    """Validation failures are 422 Invalid with the field named in details.causes."""
    body = client.V1Secret(metadata=client.V1ObjectMeta(name="bad"), type="kubernetes.io/dockerconfigjson", data=data)
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_secret(ns, body)
    status = status_of(exc.value)
    assert exc.value.status == 422 and status["reason"] == "Invalid"
    assert status["message"].startswith('Secret "bad" is invalid: ')
    assert status["details"]["kind"] == "Secret"
    causes = {c["field"]: c for c in status["details"]["causes"]}
    assert causes[field]["reason"] == reason and fragment in causes[field]["message"]


def test_secret_type_is_immutable(core: client.CoreV1Api, ns: str) -> None:
    """Changing a Secret's type on update is 422 'field is immutable'."""
    secret = core.create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name="t")))
    secret.type = "kubernetes.io/dockerconfigjson"
    secret.data = {".dockerconfigjson": b64(DOCKER_CONFIG)}
    with pytest.raises(ApiException) as exc:
        core.replace_namespaced_secret("t", ns, secret)
    causes = status_of(exc.value)["details"]["causes"]
    assert exc.value.status == 422
    assert {
        "reason": "FieldValueInvalid",
        "message": 'Invalid value: "kubernetes.io/dockerconfigjson": field is immutable',
        "field": "type",
    } in causes


def test_create_in_a_missing_namespace_is_not_found(core: client.CoreV1Api) -> None:
    """Creating into a namespace that does not exist is 404 naming the namespace."""
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_secret("no-such-ns", docker_secret("x"))
    assert exc.value.status == 404
    assert status_of(exc.value)["details"] == {"name": "no-such-ns", "kind": "namespaces"}


def test_dry_run_validates_without_persisting(core: client.CoreV1Api, ns: str) -> None:
    """dryRun=All answers as a create would but stores nothing and bumps no resourceVersion."""
    before = core.list_namespaced_secret(ns).metadata.resource_version
    core.create_namespaced_secret(ns, docker_secret("dry"), dry_run="All")
    after = core.list_namespaced_secret(ns)
    assert after.items == [] and after.metadata.resource_version == before
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_secret(ns, docker_secret("dry", config_json=b"nope"), dry_run="All")
    assert exc.value.status == 422


# -- patch --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        pytest.param([{"op": "add", "path": "/metadata/labels/tier", "value": "gold"}], None, id="json-patch"),
        pytest.param({"metadata": {"labels": {"tier": "gold"}}}, "application/merge-patch+json", id="merge-patch"),
        pytest.param({"metadata": {"labels": {"tier": "gold"}}}, None, id="strategic-merge-patch"),
    ],
)
def test_patch_in_each_content_type(core: client.CoreV1Api, ns: str, body: Any, content_type: str | None) -> None:
    """All three patch types add a label and keep the other labels and the data."""
    core.create_namespaced_secret(ns, docker_secret("p", labels={"keep": "me"}))
    kwargs = {"_content_type": content_type} if content_type else {}
    patched = core.patch_namespaced_secret("p", ns, body, **kwargs)
    assert patched.metadata.labels == {"keep": "me", "tier": "gold"}
    assert patched.data == {".dockerconfigjson": b64(DOCKER_CONFIG)}


def test_patch_with_a_stale_resource_version_conflicts(core: client.CoreV1Api, ns: str) -> None:
    """A patch that carries metadata.resourceVersion is conditional, like a PUT."""
    created = core.create_namespaced_secret(ns, docker_secret("c"))
    core.patch_namespaced_secret("c", ns, {"metadata": {"labels": {"a": "1"}}})
    stale = {"metadata": {"resourceVersion": created.metadata.resource_version, "labels": {"a": "2"}}}
    with pytest.raises(ApiException) as exc:
        core.patch_namespaced_secret("c", ns, stale)
    assert exc.value.status == 409 and status_of(exc.value)["reason"] == "Conflict"


def test_json_patch_test_op_failure_is_422(core: client.CoreV1Api, ns: str) -> None:
    """A failing RFC 6902 'test' leaves the object untouched and answers 422."""
    core.create_namespaced_secret(ns, docker_secret("j"))
    ops = [{"op": "test", "path": "/type", "value": "Opaque"}, {"op": "remove", "path": "/data"}]
    with pytest.raises(ApiException) as exc:
        core.patch_namespaced_secret("j", ns, ops)
    assert exc.value.status == 422
    assert core.read_namespaced_secret("j", ns).data


def test_service_account_image_pull_secrets_is_atomic_for_strategic_merge(core: client.CoreV1Api, ns: str) -> None:
    """Strategic merge replaces imagePullSecrets (atomic list); JSON patch add /- appends; secrets merge by name."""
    core.patch_namespaced_service_account("default", ns, {"imagePullSecrets": [{"name": "a"}]})
    replaced = core.patch_namespaced_service_account("default", ns, {"imagePullSecrets": [{"name": "b"}]})
    assert [s.name for s in replaced.image_pull_secrets] == ["b"]
    appended = core.patch_namespaced_service_account(
        "default", ns, [{"op": "add", "path": "/imagePullSecrets/-", "value": {"name": "c"}}]
    )
    assert [s.name for s in appended.image_pull_secrets] == ["b", "c"]
    core.patch_namespaced_service_account("default", ns, {"secrets": [{"name": "x"}]})
    merged = core.patch_namespaced_service_account("default", ns, {"secrets": [{"name": "y"}]})
    assert [s.name for s in merged.secrets] == ["x", "y"]


def test_unsupported_patch_type_is_415(kube: SandboxProcess, core: client.CoreV1Api, ns: str) -> None:
    """A patch type not served (CBOR apply, behind a feature gate in 1.32) is a 415 Status naming those that are."""
    core.create_namespaced_secret(ns, docker_secret("ssa"))
    response = raw(
        kube,
        "PATCH",
        f"/api/v1/namespaces/{ns}/secrets/ssa?fieldManager=me",
        content=b"{}",
        headers={"Content-Type": "application/apply-patch+cbor"},
    )
    assert response.status_code == 415 and response.json()["reason"] == "UnsupportedMediaType"
    assert "application/apply-patch+yaml" in response.json()["message"]


# -- list ---------------------------------------------------------------------------------------------


def test_list_with_label_selectors(core: client.CoreV1Api, ns: str) -> None:
    """Equality, inequality, set and existence selectors, comma meaning AND."""
    for name, labels in [("a", {"app": "web", "env": "prod"}), ("b", {"app": "db"}), ("c", {"env": "dev"})]:
        core.create_namespaced_secret(ns, docker_secret(name, labels=labels))

    def names(selector: str) -> list[str]:
        return [s.metadata.name for s in core.list_namespaced_secret(ns, label_selector=selector).items]

    assert names("app=web") == ["a"]
    assert names("app!=web") == ["b", "c"]
    assert names("app in (web,db)") == ["a", "b"]
    assert names("app notin (web)") == ["b", "c"]
    assert names("env") == ["a", "c"]
    assert names("!env") == ["b"]
    assert names("app,env=prod") == ["a"]


def test_field_selectors_on_name_and_type(core: client.CoreV1Api, ns: str) -> None:
    """fieldSelector supports metadata.name and the Secret type; an unknown field is 400."""
    core.create_namespaced_secret(ns, docker_secret("docker"))
    core.create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name="plain")))
    typed = core.list_namespaced_secret(ns, field_selector="type=kubernetes.io/dockerconfigjson")
    assert [s.metadata.name for s in typed.items] == ["docker"]
    named = core.list_namespaced_secret(ns, field_selector="metadata.name!=docker")
    assert [s.metadata.name for s in named.items] == ["plain"]
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_secret(ns, field_selector="spec.nope=1")
    assert exc.value.status == 400 and "field label not supported" in status_of(exc.value)["message"]


def test_pagination_pages_share_the_first_resource_version(core: client.CoreV1Api, ns: str) -> None:
    """limit/continue pages are cut from the first page's snapshot, with remainingItemCount."""
    for index in range(5):
        core.create_namespaced_secret(ns, docker_secret(f"s{index}"))
    first = core.list_namespaced_secret(ns, limit=2)
    assert [s.metadata.name for s in first.items] == ["s0", "s1"]
    assert first.metadata.remaining_item_count == 3 and first.metadata._continue
    core.create_namespaced_secret(ns, docker_secret("s2a"))  # after the snapshot: must not appear
    core.delete_namespaced_secret("s4", ns)  # after the snapshot: must still appear
    second = core.list_namespaced_secret(ns, limit=2, _continue=first.metadata._continue)
    third = core.list_namespaced_secret(ns, limit=2, _continue=second.metadata._continue)
    assert [s.metadata.name for s in second.items + third.items] == ["s2", "s3", "s4"]
    assert second.metadata.resource_version == first.metadata.resource_version
    assert not third.metadata._continue
    names = [s.metadata.name for s in core.list_namespaced_secret(ns).items]
    assert names == ["s0", "s1", "s2", "s2a", "s3"]


def test_cluster_wide_list_spans_namespaces(core: client.CoreV1Api, ns: str) -> None:
    """GET /api/v1/secrets lists every namespace's secrets."""
    core.create_namespaced_secret(ns, docker_secret("everywhere"))
    found = core.list_secret_for_all_namespaces(field_selector=f"metadata.namespace={ns}")
    assert [(s.metadata.namespace, s.metadata.name) for s in found.items] == [(ns, "everywhere")]


# -- watch --------------------------------------------------------------------------------------------


def test_watch_replays_changes_in_order_and_resumes(core: client.CoreV1Api, ns: str) -> None:
    """A watch from a resourceVersion sees ADDED, MODIFIED, DELETED in order; resuming skips what was seen."""
    start = core.list_namespaced_secret(ns).metadata.resource_version
    core.create_namespaced_secret(ns, docker_secret("w"))
    core.patch_namespaced_secret("w", ns, {"metadata": {"labels": {"v": "2"}}})
    core.delete_namespaced_secret("w", ns)
    events = list(watch.Watch().stream(core.list_namespaced_secret, ns, resource_version=start, timeout_seconds=1))
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]
    assert events[1]["object"].metadata.labels == {"v": "2"}
    assert events[0]["raw_object"]["kind"] == "Secret"
    resumed = list(
        watch.Watch().stream(
            core.list_namespaced_secret,
            ns,
            resource_version=events[1]["object"].metadata.resource_version,
            timeout_seconds=1,
        )
    )
    assert [e["type"] for e in resumed] == ["DELETED"]


def test_watch_streams_live_changes_through_a_selector(kube: SandboxProcess, core: client.CoreV1Api, ns: str) -> None:
    """A live watch sees new events as they happen, and only those matching its label selector."""
    seen: list[tuple[str, str]] = []
    start = core.list_namespaced_secret(ns).metadata.resource_version
    watchers_before = stats(kube)["watchers"]

    def consume() -> None:
        # The stream ends at the DELETED; its timeout only bounds a failure, so it leaves a slow machine time for
        # the three writes below (with 3 s a loaded run could close the watch before they were done).
        stream = watch.Watch().stream(
            core.list_namespaced_secret, ns, resource_version=start, label_selector="pick=me", timeout_seconds=30
        )
        for event in stream:
            seen.append((event["type"], event["object"].metadata.name))
            if event["type"] == "DELETED":
                return

    thread = threading.Thread(target=consume)
    thread.start()
    wait_for(lambda: stats(kube)["watchers"] > watchers_before, "the watch to open")
    core.create_namespaced_secret(ns, docker_secret("ignored"))
    core.create_namespaced_secret(ns, docker_secret("picked", labels={"pick": "me"}))
    core.patch_namespaced_secret("picked", ns, {"metadata": {"labels": {"pick": "no"}}})  # leaves the selector
    thread.join(timeout=35)
    assert not thread.is_alive()
    assert seen == [("ADDED", "picked"), ("DELETED", "picked")]


def test_watch_without_resource_version_starts_with_synthetic_adds(core: client.CoreV1Api, ns: str) -> None:
    """With no resourceVersion a watch first sends ADDED for every current object."""
    core.create_namespaced_secret(ns, docker_secret("existing"))
    events = list(watch.Watch().stream(core.list_namespaced_secret, ns, timeout_seconds=1))
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "existing")]


def test_expired_resource_version_after_compaction_is_410(sandbox: SandboxProcess) -> None:
    """After compaction a watch from an old resourceVersion gets an in-stream 410 Expired, and so does a continue."""
    with api_client(sandbox) as api:
        core = client.CoreV1Api(api)
        old = core.list_namespaced_secret("team-a").metadata.resource_version
        for index in range(3):
            core.create_namespaced_secret("team-a", docker_secret(f"e{index}"))
        page = core.list_namespaced_secret("team-a", limit=1)
        core.create_namespaced_secret("team-a", docker_secret("after"))  # the page's revision is now history
        sandbox.admin.post("/kubernetes/compact").raise_for_status()
        stream = raw(sandbox, "GET", f"/api/v1/namespaces/team-a/secrets?watch=1&resourceVersion={old}")
        event = json.loads(stream.text.splitlines()[0])
        assert stream.status_code == 200 and event["type"] == "ERROR"
        assert event["object"]["code"] == 410 and event["object"]["reason"] == "Expired"
        assert event["object"]["message"].startswith(f"too old resource version: {old} (")
        with pytest.raises(ApiException) as exc:
            list(watch.Watch().stream(core.list_namespaced_secret, "team-a", resource_version=old, timeout_seconds=1))
        assert exc.value.status == 410
        with pytest.raises(ApiException) as expired:
            core.list_namespaced_secret("team-a", limit=1, _continue=page.metadata._continue)
        assert expired.value.status == 410 and status_of(expired.value)["reason"] == "Expired"


def test_namespace_deletion_deletes_its_objects_with_events(core: client.CoreV1Api) -> None:
    """Deleting a namespace removes its secrets and service accounts, each with a DELETED event."""
    name = f"gone-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    assert core.read_namespaced_service_account("default", name).metadata.namespace == name
    core.create_namespaced_secret(name, docker_secret("doomed"))
    start = core.list_secret_for_all_namespaces().metadata.resource_version
    core.delete_namespace(name)
    events = list(watch.Watch().stream(core.list_secret_for_all_namespaces, resource_version=start, timeout_seconds=1))
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("DELETED", "doomed")]
    assert core.list_namespaced_service_account(name).items == []
    with pytest.raises(ApiException) as exc:
        core.read_namespace(name)
    assert exc.value.status == 404


# -- other resources ----------------------------------------------------------------------------------


def test_lease_create_update_and_conflict(kube: SandboxProcess, ns: str) -> None:
    """A Lease round-trips with MicroTime at 6 digits; an update from a stale copy is 409."""
    with api_client(kube) as api:
        leases = client.CoordinationV1Api(api)
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "rotator"},
            "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15, "renewTime": "2025-01-02T03:04:05.123456Z"},
        }
        created = leases.create_namespaced_lease(ns, body)
        assert created.spec.holder_identity == "pod-a"
        got = raw(kube, "GET", f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/rotator").json()
        assert got["spec"]["renewTime"] == "2025-01-02T03:04:05.123456Z"
        created.spec.holder_identity = "pod-b"
        updated = leases.replace_namespaced_lease("rotator", ns, created)
        assert updated.spec.holder_identity == "pod-b"
        with pytest.raises(ApiException) as exc:
            leases.replace_namespaced_lease("rotator", ns, created)
        assert exc.value.status == 409
        body["spec"]["renewTime"] = "2025-01-02T03:04:05Z"  # not MicroTime: the real decoder rejects it
        body["metadata"]["name"] = "other"
        with pytest.raises(ApiException) as bad:
            leases.create_namespaced_lease(ns, body)
        assert bad.value.status == 400


def test_token_review_authenticates_known_tokens(kube: SandboxProcess) -> None:
    """TokenReview names the user of a known token and rejects an unknown one."""
    with api_client(kube) as api:
        reviews = client.AuthenticationV1Api(api)
        known = reviews.create_token_review(
            client.V1TokenReview(spec=client.V1TokenReviewSpec(token=kube.endpoints["kubernetes_readonly_token"]))
        )
        assert known.status.authenticated is True and known.status.user.username == "rotator-readonly"
        unknown = reviews.create_token_review(client.V1TokenReview(spec=client.V1TokenReviewSpec(token="nope")))
        assert not unknown.status.authenticated and unknown.status.error


def test_subject_access_review_uses_admin_added_rules(kube: SandboxProcess) -> None:
    """A rule added through the admin API grants a custom resource's subresource, and nothing more."""
    rule = {"verbs": ["create"], "apiGroups": ["rotator.example.com"], "resources": ["credentials/rotate"]}
    added = kube.admin.post("/kubernetes/tokens", json={"user": "rotation-trigger", "rules": [rule]})
    assert added.status_code == 201

    def allowed(user: str, verb: str, subresource: str, *, group: str = "rotator.example.com") -> bool:
        attrs = client.V1ResourceAttributes(
            verb=verb, group=group, resource="credentials", subresource=subresource, namespace="rotator-system"
        )
        spec = client.V1SubjectAccessReviewSpec(user=user, resource_attributes=attrs)
        with api_client(kube) as api:
            review = client.AuthorizationV1Api(api).create_subject_access_review(
                client.V1SubjectAccessReview(spec=spec)
            )
        return bool(review.status.allowed)

    assert allowed("rotation-trigger", "create", "rotate")
    assert not allowed("rotation-trigger", "delete", "rotate")
    assert not allowed("rotation-trigger", "create", "")
    assert not allowed("someone-else", "create", "rotate")
    assert allowed("rotator-readonly", "get", "", group="rotator.example.com")


def test_admin_added_token_is_scoped_to_its_namespaces(kube: SandboxProcess, ns: str) -> None:
    """A token whose rule names a namespace can write there and is forbidden elsewhere."""
    rule = {"verbs": ["get", "create"], "apiGroups": [""], "resources": ["secrets"], "namespaces": [ns]}
    token = kube.admin.post("/kubernetes/tokens", json={"user": "scoped", "rules": [rule]}).json()["token"]
    with api_client(kube, token) as api:
        core = client.CoreV1Api(api)
        core.create_namespaced_secret(ns, docker_secret("mine"))
        with pytest.raises(ApiException) as exc:
            core.create_namespaced_secret("team-b", docker_secret("theirs"))
    assert exc.value.status == 403


def test_resource_names_allow_list_and_watch_only_through_a_name_field_selector(
    kube: SandboxProcess, core: client.CoreV1Api, ns: str
) -> None:
    """As the real API server: a rule naming a secret allows get of it, list and watch only when the
    request's fieldSelector requires metadata.name=<that name>, and never create."""
    core.create_namespaced_secret(ns, docker_secret("mine"))
    core.create_namespaced_secret(ns, docker_secret("theirs"))
    rule = {"verbs": ["get", "list", "watch", "create"], "apiGroups": [""], "resources": ["secrets"]}
    token = kube.admin.post(
        "/kubernetes/tokens", json={"user": "named", "rules": [{**rule, "resourceNames": ["mine"]}]}
    ).json()["token"]

    def status(call: Callable[[], Any]) -> int:
        try:
            call()
        except ApiException as exc:
            return int(exc.status)
        return 200

    with api_client(kube, token) as api:
        named = client.CoreV1Api(api)
        assert status(lambda: named.read_namespaced_secret("mine", ns)) == 200
        assert status(lambda: named.read_namespaced_secret("theirs", ns)) == 403
        listed = named.list_secret_for_all_namespaces(field_selector="metadata.name=mine")
        assert {s.metadata.name for s in listed.items} == {"mine"}
        assert status(lambda: named.list_namespaced_secret(ns, field_selector="metadata.name==mine")) == 200
        assert status(lambda: named.list_secret_for_all_namespaces()) == 403
        assert status(lambda: named.list_secret_for_all_namespaces(field_selector="metadata.name=theirs")) == 403
        assert status(lambda: named.list_secret_for_all_namespaces(field_selector="metadata.name!=theirs")) == 403
        assert status(lambda: named.list_secret_for_all_namespaces(label_selector="a=b")) == 403
        events = watch.Watch().stream(  # type: ignore[no-untyped-call]
            named.list_namespaced_secret, ns, field_selector="metadata.name=mine", timeout_seconds=1
        )
        assert {e["object"].metadata.name for e in events} == {"mine"}
        assert status(lambda: named.create_namespaced_secret(ns, docker_secret("new"))) == 403


# -- auth and malformed requests ----------------------------------------------------------------------


def test_readonly_token_reads_but_cannot_write(kube: SandboxProcess) -> None:
    """The read-only token lists secrets; an update is 403 with the real RBAC message shape."""
    with api_client(kube, kube.endpoints["kubernetes_readonly_token"]) as api:
        core = client.CoreV1Api(api)
        assert core.list_namespaced_secret("team-a").kind == "SecretList"
        with pytest.raises(ApiException) as exc:
            core.replace_namespaced_secret("x", "team-a", docker_secret("x"))
    body = status_of(exc.value)
    assert exc.value.status == 403 and body["reason"] == "Forbidden"
    assert body["message"] == (
        'secrets "x" is forbidden: User "rotator-readonly" cannot update resource "secrets" in API group "" '
        'in the namespace "team-a"'
    )


@pytest.mark.parametrize("token", [pytest.param("", id="missing"), pytest.param("wrong-token", id="unknown")])
def test_missing_or_unknown_token_is_401(kube: SandboxProcess, token: str) -> None:
    """Without a valid bearer token every resource request is 401 Unauthorized Status."""
    response = raw(kube, "GET", "/api/v1/namespaces/team-a/secrets", token=token)
    assert response.status_code == 401
    assert response.json() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Unauthorized",
        "reason": "Unauthorized",
        "code": 401,
    }


SECRETS = "/api/v1/namespaces/team-c/secrets"
JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "reason"),
    [
        pytest.param("POST", SECRETS, b"{not json", JSON, 400, "BadRequest", id="bad-json"),
        pytest.param("POST", SECRETS, b"[]", JSON, 400, "BadRequest", id="array-body"),
        pytest.param(
            "POST",
            SECRETS,
            json.dumps({"kind": "ConfigMap", "metadata": {"name": "k"}}).encode(),
            JSON,
            400,
            "BadRequest",
            id="kind-mismatch",
        ),
        pytest.param(
            "POST",
            SECRETS,
            json.dumps({"apiVersion": "v2", "metadata": {"name": "k"}}).encode(),
            JSON,
            400,
            "BadRequest",
            id="apiversion-mismatch",
        ),
        pytest.param(
            "POST",
            SECRETS,
            json.dumps({"metadata": {"name": "k", "namespace": "team-a"}}).encode(),
            JSON,
            400,
            "BadRequest",
            id="namespace-mismatch",
        ),
        pytest.param(
            "POST",
            SECRETS,
            json.dumps({"metadata": {"name": "k"}, "data": {"a": "%%%"}}).encode(),
            JSON,
            400,
            "BadRequest",
            id="bad-base64",
        ),
        pytest.param(
            "POST",
            SECRETS,
            json.dumps({"metadata": {"name": "k"}, "data": "text"}).encode(),
            JSON,
            400,
            "BadRequest",
            id="data-not-a-map",
        ),
        pytest.param(
            "POST",
            SECRETS,
            json.dumps({"metadata": {"name": "Bad_Name"}}).encode(),
            JSON,
            422,
            "Invalid",
            id="bad-name",
        ),
        pytest.param("POST", SECRETS, json.dumps({"metadata": {}}).encode(), JSON, 422, "Invalid", id="no-name"),
        pytest.param(
            "POST", SECRETS, b"x", {"Content-Type": "text/plain"}, 415, "UnsupportedMediaType", id="text-body"
        ),
        pytest.param("PUT", SECRETS, b"{}", JSON, 405, "MethodNotAllowed", id="put-collection"),
        pytest.param("POST", "/api/v1/secrets", b"{}", JSON, 405, "MethodNotAllowed", id="post-all-namespaces"),
        pytest.param(
            "GET",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            None,
            {},
            405,
            "MethodNotAllowed",
            id="get-tokenreviews",
        ),
        pytest.param("GET", "/api/v1/nothings", None, {}, 404, "NotFound", id="unknown-resource"),
        pytest.param("GET", "/apis/example.com/v1/things", None, {}, 404, "NotFound", id="unknown-group"),
        pytest.param("GET", f"{SECRETS}/x/status", None, {}, 404, "NotFound", id="unknown-subresource"),
        pytest.param("GET", f"{SECRETS}?labelSelector=a%20in%20(", None, {}, 400, "BadRequest", id="bad-selector"),
        pytest.param("GET", f"{SECRETS}?limit=abc", None, {}, 400, "BadRequest", id="bad-limit"),
        pytest.param("GET", f"{SECRETS}?resourceVersion=99999999", None, {}, 504, "Timeout", id="future-rv"),
        pytest.param("GET", f"{SECRETS}?continue=garbage", None, {}, 400, "BadRequest", id="bad-continue"),
        pytest.param("GET", f"{SECRETS}?watch=1&resourceVersion=x", None, {}, 400, "BadRequest", id="bad-watch-rv"),
        pytest.param(
            "PATCH",
            "/api/v1/namespaces/team-c/serviceaccounts/default",
            b"{}",
            {"Content-Type": "application/json-patch+json"},
            400,
            "BadRequest",
            id="json-patch-not-list",
        ),
        pytest.param(
            "PATCH",
            "/api/v1/namespaces/team-c/serviceaccounts/default",
            b"{bad",
            {"Content-Type": "application/merge-patch+json"},
            400,
            "BadRequest",
            id="patch-bad-json",
        ),
        pytest.param("DELETE", "/api/v1/namespaces/default", None, {}, 403, "Forbidden", id="delete-default-ns"),
        pytest.param(
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            json.dumps({"spec": {"user": "u"}}).encode(),
            JSON,
            422,
            "Invalid",
            id="sar-no-attributes",
        ),
    ],
)
def test_malformed_requests_get_a_status_never_a_500(
    kube: SandboxProcess, method: str, path: str, body: bytes | None, headers: dict[str, str], status: int, reason: str
) -> None:
    """Each malformed request gets the real apiserver's status code and a Status body with its reason."""
    response = raw(kube, method, path, content=body, headers=dict(headers))
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["kind"] == "Status" and payload["reason"] == reason and payload["code"] == status


def test_create_carrying_a_resource_version_fails_as_on_a_real_apiserver(core: client.CoreV1Api, ns: str) -> None:
    """Re-creating a fetched object without clearing resourceVersion is the etcd store's 500, not a success."""
    fetched = core.create_namespaced_secret(ns, docker_secret("copy"))
    fetched.metadata.namespace, fetched.metadata.uid = None, None
    other = f"{ns}-b"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_secret(other, fetched)
    body = status_of(exc.value)
    assert exc.value.status == 500 and body["reason"] == "InternalError"
    assert body["message"] == "resourceVersion should not be set on objects to be created"


def test_injected_throttling_answers_a_429_status_with_retry_after(sandbox: SandboxProcess) -> None:
    """Fault injection answers in the apiserver's shape: 429 TooManyRequests with retryAfterSeconds."""
    sandbox.set_faults("kubernetes", {"path_prefix": "/api/v1/namespaces", "throttle_seconds": 30, "retry_after": 3})
    response = raw(sandbox, "GET", "/api/v1/namespaces/team-a/secrets")
    assert response.status_code == 429 and response.headers["Retry-After"] == "3"
    body = response.json()
    assert body["reason"] == "TooManyRequests" and body["details"]["retryAfterSeconds"] == 3


def test_state_survives_a_restart_with_a_state_dir(tmp_path: Path) -> None:
    """dump/load keep objects, uids and the resourceVersion counter across a sandbox restart."""
    state = tmp_path / "state"
    with SandboxProcess.start(state_dir=state) as first, api_client(first) as api:
        created = client.CoreV1Api(api).create_namespaced_secret("team-a", docker_secret("kept"))
    with SandboxProcess.start(state_dir=state) as second, api_client(second) as api:
        core = client.CoreV1Api(api)
        kept = core.read_namespaced_secret("kept", "team-a")
        assert kept.metadata.uid == created.metadata.uid
        later = core.create_namespaced_secret("team-a", docker_secret("later"))
        assert int(later.metadata.resource_version) > int(created.metadata.resource_version)


def test_kubeconfig_reaches_the_tls_listener(kube: SandboxProcess) -> None:
    """The sandbox's kubeconfig (https, CA inline, token) works for the official client too."""
    api = config.new_client_from_config(config_file=kube.endpoints["kubeconfig"])
    with api:
        assert api.configuration.host.startswith("https://127.0.0.1:")
        names = {n.metadata.name for n in client.CoreV1Api(api).list_namespace().items}
    assert "team-a" in names


# -- kubectl ------------------------------------------------------------------------------------------


@pytest.fixture
def kubectl(kube: SandboxProcess, tmp_path: Path) -> Kubectl:
    return kubectl_runner(kube.endpoints["kubeconfig"], tmp_path)


def registry_secret_yaml(kubectl: Kubectl, ns: str, password: str) -> str:
    return kubectl(
        "create",
        "secret",
        "docker-registry",
        "regcred",
        "--docker-server=registry.example.com",
        "--docker-username=robot",
        f"--docker-password={password}",
        "-n",
        ns,
        "--dry-run=client",
        "-o",
        "yaml",
    ).stdout


@pytest.mark.real
def test_kubectl_apply_patch_get_delete(kubectl: Kubectl, core: client.CoreV1Api, ns: str) -> None:
    """kubectl applies a docker-registry secret twice, patches the ServiceAccount, lists and deletes."""
    # Validated (no --validate=false): kubectl finds fieldValidation in /openapi/v3 and lets the server check.
    kubectl("apply", "-f", "-", stdin=registry_secret_yaml(kubectl, ns, "first"))
    first = core.read_namespaced_secret("regcred", ns)
    kubectl("apply", "-f", "-", stdin=registry_secret_yaml(kubectl, ns, "second"))
    second = core.read_namespaced_secret("regcred", ns)
    auths = json.loads(base64.b64decode(second.data[".dockerconfigjson"]))["auths"]
    assert auths["registry.example.com"]["password"] == "second"
    assert second.metadata.uid == first.metadata.uid and second.type == "kubernetes.io/dockerconfigjson"
    listed = json.loads(kubectl("get", "secrets", "-n", ns, "-o", "json").stdout)
    assert [item["metadata"]["name"] for item in listed["items"]] == ["regcred"]
    kubectl("patch", "serviceaccount", "default", "-n", ns, "-p", '{"imagePullSecrets":[{"name":"regcred"}]}')
    account = core.read_namespaced_service_account("default", ns)
    assert [s.name for s in account.image_pull_secrets] == ["regcred"]
    assert ns in kubectl("get", "namespaces").stdout
    kubectl("delete", "secret", "regcred", "-n", ns)
    assert core.list_namespaced_secret(ns).items == []


@pytest.mark.real
def test_kubectl_typed_commands_send_protobuf_that_is_understood(kubectl: Kubectl, core: client.CoreV1Api) -> None:
    """kubectl create namespace / secret generic and auth can-i (protobuf bodies) work end to end."""
    name = f"k-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    kubectl("create", "secret", "generic", "plain", "--from-literal=key=value", "-n", name)
    assert core.read_namespaced_secret("plain", name).data == {"key": b64("value")}
    assert kubectl("auth", "can-i", "create", "secrets", "-n", name).stdout.strip() == "yes"
    refused = kubectl("create", "namespace", "Bad_Name", check=False)
    assert refused.returncode != 0 and "is invalid" in refused.stderr


@pytest.mark.real
def test_kubectl_with_the_readonly_token_is_forbidden_to_write(kube: SandboxProcess, kubectl: Kubectl) -> None:
    """kubectl reports the emulator's 403 and 401 as a real cluster's."""
    token = kube.endpoints["kubernetes_readonly_token"]
    denied = kubectl("--token", token, "delete", "secret", "x", "-n", "team-a", check=False)
    assert denied.returncode != 0 and "Forbidden" in denied.stderr and "cannot delete resource" in denied.stderr
    unknown = kubectl("--token", "bogus", "get", "secrets", "-n", "team-a", check=False)
    assert unknown.returncode != 0 and "Unauthorized" in unknown.stderr + unknown.stdout


def test_configmaps_events_generate_name_and_delete_collection(core: client.CoreV1Api, ns: str) -> None:
    """ConfigMaps and core/v1 Events round-trip; generateName picks a name; deletecollection honours selectors."""
    made = core.create_namespaced_config_map(
        ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(generate_name="state-", labels={"k": "v"}), data={"a": "1"})
    )
    assert made.metadata.name.startswith("state-") and len(made.metadata.name) == len("state-") + 5
    core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="other")))
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(name="rotated.1"),
        involved_object=client.V1ObjectReference(kind="Secret", name="pull", namespace=ns),
        reason="Rotated",
        message="new key distributed",
        type="Normal",
    )
    core.create_namespaced_event(ns, event)
    found = core.list_namespaced_event(ns, field_selector="involvedObject.name=pull,reason=Rotated")
    assert [e.message for e in found.items] == ["new key distributed"]
    core.delete_collection_namespaced_config_map(ns, label_selector="k=v")
    assert [c.metadata.name for c in core.list_namespaced_config_map(ns).items] == ["other"]


def test_watch_bookmarks_carry_the_current_resource_version(sandbox: SandboxProcess) -> None:
    """With allowWatchBookmarks a quiet watch gets BOOKMARK events at the current resourceVersion."""
    sandbox.admin.put("/kubernetes/config", json={"bookmarkIntervalSeconds": 0.05}).raise_for_status()
    with api_client(sandbox) as api:
        core = client.CoreV1Api(api)
        rv = core.list_namespaced_secret("team-a").metadata.resource_version
        # Read until the first bookmark; the timeout only bounds a failure (a 1 s watch could end before a
        # stalled server sent one).
        watcher = watch.Watch()
        bookmarks = []
        for event in watcher.stream(
            core.list_namespaced_secret, "team-a", resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=30
        ):
            if event["type"] == "BOOKMARK":
                bookmarks.append(event)
                watcher.stop()
    assert bookmarks and bookmarks[0]["raw_object"]["metadata"]["resourceVersion"] == rv
    assert bookmarks[0]["raw_object"]["kind"] == "Secret"
