"""deploy/: `kubectl kustomize` renders it, every object validates offline against the Kubernetes
1.32 JSON schemas (strict), the CRDs are well-formed, the pod is locked down, RBAC is least
privilege, and the config in the ConfigMap is one rotator accepts and that fits the manifests."""

from __future__ import annotations

import copy
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from monitoring_env import KUBECTL, PROMTOOL, REPO

from rotator.settings import IamProviderSettings, TrustedProfileSource, parse

pytestmark = pytest.mark.real

DEPLOY = REPO / "deploy"
K8S_VERSION = "1.32"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
NAMESPACE = "rotator-system"
DELETE = object()  # a table value meaning "remove the field"


def kustomize(path: Path, home: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [KUBECTL, "kustomize", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(home), "KUBECONFIG": str(home / "none")},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The base, rendered by kubectl kustomize."""
    return kustomize(DEPLOY, tmp_path_factory.mktemp("kube-home"))


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def schema_errors(objects: list[dict[str, Any]]) -> list[str]:
    errors = []
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(exc.message)
    return errors


# -- rendering and schemas ---------------------------------------------------------------------


def test_base_renders_every_object(objects: list[dict[str, Any]]) -> None:
    """The base holds exactly the expected objects, namespaced objects all in rotator-system, and no Secret."""
    kinds = sorted(
        (o["kind"], o["metadata"]["name"].rsplit("-", 1)[0] if o["kind"] == "ConfigMap" else o["metadata"]["name"])
        for o in objects
    )
    assert kinds == sorted(
        [
            ("Namespace", NAMESPACE),
            ("ServiceAccount", "rotator"),
            ("ClusterRole", "rotator"),
            ("ClusterRoleBinding", "rotator"),
            ("Role", "rotator"),
            ("RoleBinding", "rotator"),
            ("ConfigMap", "rotator-config"),
            ("Deployment", "rotator"),
            ("Service", "rotator"),
            ("PodDisruptionBudget", "rotator"),
            ("NetworkPolicy", "rotator"),
            ("ServiceMonitor", "rotator"),
            ("PrometheusRule", "rotator"),
        ]
    )
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    for obj in objects:
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["kind"]


def test_every_object_validates_against_kubernetes_schemas(objects: list[dict[str, Any]]) -> None:
    """Each non-CRD object passes the Kubernetes 1.32 JSON schema in strict mode (no unknown fields)."""
    assert len([o for o in objects if o["kind"] not in CRD_KINDS]) == 11
    assert schema_errors(objects) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param(("spec", "template", "spec", "securityContext", "runAsNonRoott"), True, id="unknown-field"),
        pytest.param(("spec", "replicas"), "two", id="wrong-type"),
        pytest.param(("spec", "template", "spec", "containers", 0, "name"), DELETE, id="required-missing"),
    ],
)
def test_schema_validation_rejects_a_broken_deployment(
    objects: list[dict[str, Any]], path: tuple[Any, ...], value: Any
) -> None:
    """The offline validation can fail: a typo'd field, a wrong type or a missing required field is reported."""
    broken = copy.deepcopy(one(objects, "Deployment"))
    node = broken
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    errors = schema_errors([broken])
    assert len(errors) == 1 and errors[0].startswith("Deployment/rotator")


def test_servicemonitor_is_well_formed(objects: list[dict[str, Any]]) -> None:
    """The ServiceMonitor selects the Service by its labels and scrapes its named http port at /metrics."""
    monitor = one(objects, "ServiceMonitor")
    service = one(objects, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["metadata"]) >= {"name", "namespace"}
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # The job label becomes the Service name, which the alert rules select on.
    assert service["metadata"]["name"] == "rotator"


def test_prometheusrule_groups_pass_promtool(objects: list[dict[str, Any]], tmp_path: Path) -> None:
    """The rendered PrometheusRule is well-formed and its groups are rules promtool accepts."""
    rule = one(objects, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"} and rule["spec"]["groups"]
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        assert all(set(r) >= {"alert", "expr", "labels", "annotations"} for r in group["rules"])
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# -- the pod ---------------------------------------------------------------------------------------


def security_problems(deployment: dict[str, Any]) -> list[str]:
    """What is missing from the hardening the Deployment must have (empty: all present)."""
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    sc, psc = container.get("securityContext", {}), pod.get("securityContext", {})
    checks: list[tuple[str, Callable[[], bool]]] = [
        ("runAsNonRoot", lambda: psc.get("runAsNonRoot") is True and sc.get("runAsNonRoot") is not False),
        ("runAsUser 10001", lambda: psc.get("runAsUser") == 10001 and sc.get("runAsUser", 10001) == 10001),
        ("readOnlyRootFilesystem", lambda: sc.get("readOnlyRootFilesystem") is True),
        ("allowPrivilegeEscalation false", lambda: sc.get("allowPrivilegeEscalation") is False),
        ("capabilities drop ALL", lambda: sc.get("capabilities", {}).get("drop") == ["ALL"]),
        ("no added capabilities", lambda: not sc.get("capabilities", {}).get("add")),
        ("seccomp RuntimeDefault", lambda: psc.get("seccompProfile", {}).get("type") == "RuntimeDefault"),
        ("not privileged", lambda: sc.get("privileged") is not True),
        ("requests", lambda: {"cpu", "memory"} <= set(container.get("resources", {}).get("requests", {}))),
        ("limits", lambda: {"cpu", "memory"} <= set(container.get("resources", {}).get("limits", {}))),
        ("no host namespaces", lambda: not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))),
    ]
    return [name for name, ok in checks if not ok()]


def test_pod_is_hardened(objects: list[dict[str, Any]]) -> None:
    """Non-root 10001, read-only root, no privilege escalation, no capabilities, RuntimeDefault seccomp, resources."""
    assert security_problems(one(objects, "Deployment")) == []


@pytest.mark.parametrize(
    ("where", "field", "problem"),
    [
        pytest.param("pod", "runAsNonRoot", "runAsNonRoot", id="runAsNonRoot-removed"),
        pytest.param("container", "readOnlyRootFilesystem", "readOnlyRootFilesystem", id="readOnlyRootFilesystem"),
        pytest.param("container", "allowPrivilegeEscalation", "allowPrivilegeEscalation false", id="escalation"),
        pytest.param("container", "capabilities", "capabilities drop ALL", id="capabilities"),
        pytest.param("pod", "seccompProfile", "seccomp RuntimeDefault", id="seccomp"),
    ],
)
def test_hardening_check_notices_a_removed_setting(
    objects: list[dict[str, Any]], where: str, field: str, problem: str
) -> None:
    """Removing one security setting from the Deployment makes the hardening check fail on exactly it."""
    deployment = copy.deepcopy(one(objects, "Deployment"))
    pod = deployment["spec"]["template"]["spec"]
    target = pod["securityContext"] if where == "pod" else pod["containers"][0]["securityContext"]
    del target[field]
    assert security_problems(deployment) == [problem]


def test_pod_runs_the_daemon_with_probes_and_identity(objects: list[dict[str, Any]]) -> None:
    """2 replicas running `rotator run -c`, probes on 8080, /tmp emptyDir, POD_NAME from the downward API,
    spread over nodes, the admin key from the user-created Secret."""
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"] + container["args"] == ["rotator", "run", "-c", "/etc/rotator/rotator.yaml"]
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert volumes[mounts["/etc/rotator"]]["configMap"]["name"].startswith("rotator-config-")
    apikey = volumes[mounts["/var/run/secrets/rotator"]]["secret"]
    assert apikey["secretName"] == "rotator-admin-apikey" and apikey["optional"] is False
    spread = pod["topologySpreadConstraints"]
    assert "kubernetes.io/hostname" in {c["topologyKey"] for c in spread}
    assert all(c["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"] for c in spread)
    assert pod["serviceAccountName"] == "rotator"


def test_service_pdb_and_selectors_match_the_pods(objects: list[dict[str, Any]]) -> None:
    """The Service (port 8080 named http) and the PDB (minAvailable 1) select the Deployment's pods."""
    labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = one(objects, "Service")
    assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    assert service["spec"]["selector"].items() <= labels.items()
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_networkpolicy_limits_ingress_and_egress(objects: list[dict[str, Any]]) -> None:
    """Ingress only on 8080 (monitoring namespace, labelled API clients); egress only DNS, 6443 and 443."""
    policy = one(objects, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["podSelector"]["matchLabels"].items() <= (
        one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"].items()
    )
    [ingress] = policy["ingress"]
    assert ingress["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert len(ingress["from"]) == 2
    egress_ports = sorted((p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"])
    assert egress_ports == [(53, "TCP"), (53, "UDP"), (443, "TCP"), (6443, "TCP")]


# -- RBAC ----------------------------------------------------------------------------------------


def _config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(one(objects, "ConfigMap")["data"]["rotator.yaml"])
    return data


def test_role_restricts_state_vault_and_lease_by_name(objects: list[dict[str, Any]]) -> None:
    """In rotator-system, configmaps/secrets/leases are get/update by name only (create cannot be
    restricted), and the names are those the config uses."""
    config = _config(objects)
    state_name, lease_name = config["state"]["name"], config["daemon"]["lease_name"]
    expected = {
        ("", "configmaps"): [state_name],
        ("", "secrets"): [f"{state_name}-vault"],
        ("coordination.k8s.io", "leases"): [lease_name],
    }
    role = one(objects, "Role")
    seen: set[tuple[str, str]] = set()
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                key = (group, resource)
                assert key in expected, f"unexpected access to {key}"
                if rule["verbs"] == ["create"]:
                    assert "resourceNames" not in rule
                else:
                    assert sorted(rule["verbs"]) == ["get", "update"]
                    assert rule["resourceNames"] == expected[key]
                    seen.add(key)
    assert seen == set(expected)
    binding = one(objects, "RoleBinding")
    assert binding["roleRef"]["name"] == "rotator"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rotator", "namespace": NAMESPACE}]


def _access(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def test_clusterrole_is_least_privilege(objects: list[dict[str, Any]]) -> None:
    """Cluster-wide: exactly namespaces (read), secrets, serviceaccounts, events and the two reviews."""
    assert _access(one(objects, "ClusterRole")) == {
        ("", "namespaces"): {"get", "list", "watch"},
        ("", "secrets"): {"get", "list", "watch", "create", "update", "patch", "delete"},
        ("", "serviceaccounts"): {"get", "list", "watch", "update", "patch"},
        ("", "events"): {"create", "patch"},
        ("events.k8s.io", "events"): {"create", "patch"},
        ("authentication.k8s.io", "tokenreviews"): {"create"},
        ("authorization.k8s.io", "subjectaccessreviews"): {"create"},
    }
    binding = one(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rotator", "namespace": NAMESPACE}]


def with_component(tmp_path: Path, component: str) -> list[dict[str, Any]]:
    """The base with one of deploy/components, rendered from an overlay."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    base = os.path.relpath(DEPLOY, overlay)
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [base],
                "components": [f"{base}/components/{component}"],
            }
        )
    )
    return kustomize(overlay, tmp_path)


def test_namespaced_rbac_component(tmp_path: Path) -> None:
    """With components/namespaced-rbac the ClusterRole loses secrets and service accounts, each target
    namespace gets a Role for them, and everything still validates."""
    objects = with_component(tmp_path, "namespaced-rbac")
    assert schema_errors(objects) == []
    cluster = _access(one(objects, "ClusterRole"))
    assert ("", "secrets") not in cluster and ("", "serviceaccounts") not in cluster
    assert cluster[("", "namespaces")] == {"get", "list", "watch"}
    targets = [o for o in objects if o["kind"] == "Role" and o["metadata"]["name"] == "rotator-target"]
    assert sorted(o["metadata"]["namespace"] for o in targets) == ["team-a", "team-b"]
    for role in targets:
        assert _access(role)[("", "secrets")] >= {"get", "create", "update"}
    bindings = [o for o in objects if o["kind"] == "RoleBinding" and o["metadata"]["name"] == "rotator-target"]
    assert all(b["subjects"][0]["namespace"] == NAMESPACE for b in bindings) and len(bindings) == 2
    # The base's own Role in rotator-system is untouched.
    assert one(objects, "Role", "rotator")["metadata"]["namespace"] == NAMESPACE


def test_trusted_profile_component(tmp_path: Path) -> None:
    """With components/trusted-profile no API key Secret is mounted; the kubelet projects an ``iam``-audience
    token where the replaced config reads it, and everything still validates."""
    objects = with_component(tmp_path, "trusted-profile")
    assert schema_errors(objects) == []
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert not [v for v in pod["volumes"] if "secret" in v]
    (token,) = [v for v in pod["volumes"] if "projected" in v]
    source = token["projected"]["sources"][0]["serviceAccountToken"]
    assert (source["audience"], source["path"]) == ("iam", "sa-token")
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts[token["name"]] == "/var/run/secrets/tokens" and "admin-apikey" not in mounts
    path = tmp_path / "rotator.yaml"
    path.write_text(one(objects, "ConfigMap")["data"]["rotator.yaml"])
    settings = parse(yaml.safe_load(path.read_text()), source=path, base_dir=tmp_path)
    auth = settings.credentials[0].provider
    assert isinstance(auth, IamProviderSettings) and isinstance(auth.apikey, TrustedProfileSource)
    assert str(auth.apikey.cr_token_file) == f"{mounts[token['name']]}/{source['path']}"


# -- config and image ---------------------------------------------------------------------------------


def test_config_is_valid_and_fits_the_manifests(objects: list[dict[str, Any]], tmp_path: Path) -> None:
    """rotator accepts the ConfigMap's config; it runs in-cluster with ConfigMap state in rotator-system,
    reads the admin key from the mounted Secret, and listens on the probed port."""
    path = tmp_path / "rotator.yaml"
    path.write_text(one(objects, "ConfigMap")["data"]["rotator.yaml"])
    settings = parse(yaml.safe_load(path.read_text()), source=path, base_dir=tmp_path)
    assert settings.kubernetes.in_cluster is True
    assert settings.kubernetes.namespace == NAMESPACE
    assert settings.state.kind == "configmap"
    assert settings.daemon.leader_election is True
    assert settings.server.port == 8080
    assert settings.server.auth.mode == "kubernetes"
    for cred in settings.credentials:
        secret = cred.provider.apikey if isinstance(cred.provider, IamProviderSettings) else cred.provider.password
        assert str(secret.file).startswith("/var/run/secrets/rotator/")
    assert any(isinstance(c.provider, IamProviderSettings) for c in settings.credentials)
    iam = next(c.provider for c in settings.credentials if isinstance(c.provider, IamProviderSettings))
    assert str(iam.apikey.file) == "/var/run/secrets/rotator/apikey"


def test_containerfile_builds_a_non_root_image() -> None:
    """Two stages (wheel build, slim Python 3.11 runtime), user 10001, `rotator` as the entrypoint."""
    text = (DEPLOY / "Containerfile").read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(stages) == 2 and stages[0].endswith(" AS build") and stages[1].endswith(" AS runtime")
    assert "python:3.11-slim" in text
    assert "USER 10001:10001" in text
    assert 'ENTRYPOINT ["rotator"]' in text
    assert "pip wheel" in text


def test_configuration_doc_example_is_a_valid_config(tmp_path: Path) -> None:
    """The complete example in docs/configuration.md is accepted by rotator's config parser as written."""
    text = (REPO / "docs" / "configuration.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    configs = [b for b in blocks if b.startswith("credentials:")]
    assert configs, "docs/configuration.md has no complete example"
    for block in configs:
        settings = parse(yaml.safe_load(block), source=tmp_path / "example.yaml", base_dir=tmp_path)
        assert settings.credentials


def _install_doc_overlays() -> list[str]:
    """The kustomization snippets of docs/install.md (complete ones, and bare resources/components lists)."""
    text = (REPO / "docs" / "install.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    header = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
    return [b if b.startswith(header) else header + b for b in blocks if "../../../deploy" in b]


@pytest.mark.parametrize("overlay", [pytest.param(o, id=f"overlay-{i}") for i, o in enumerate(_install_doc_overlays())])
def test_install_doc_overlays_render_and_validate(overlay: str, tmp_path: Path) -> None:
    """Each overlay shown in docs/install.md renders from a directory three levels down and validates."""
    where = tmp_path / "clusters" / "prod" / "rotator"
    where.mkdir(parents=True)
    base = os.path.relpath(DEPLOY, where)
    (where / "kustomization.yaml").write_text(overlay.replace("../../../deploy", base))
    (where / "rotator.yaml").write_text((DEPLOY / "config" / "rotator.yaml").read_text())
    objects = kustomize(where, tmp_path)
    assert schema_errors(objects) == []
    monitoring = [o for o in objects if o["apiVersion"].startswith("monitoring.coreos.com/")]
    if "$patch: delete" in overlay:
        assert monitoring == []
    elif "images:" in overlay:
        image = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image.startswith("registry.example.com/platform/rotator@sha256:")
        assert all(o["metadata"]["labels"]["release"] == "kube-prometheus-stack" for o in monitoring)
    if "namespaced-rbac" in overlay:
        assert ("", "secrets") not in _access(one(objects, "ClusterRole"))
    if "trusted-profile" in overlay:
        assert not [v for v in one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"] if "secret" in v]


def test_install_doc_has_the_overlays() -> None:
    """The four documented overlays (settings, no operator, namespaced RBAC, trusted profile) are found, so the
    test above runs."""
    overlays = _install_doc_overlays()
    assert len(overlays) == 4
    assert sum("namespaced-rbac" in o for o in overlays) == 1
    assert sum("trusted-profile" in o for o in overlays) == 1
