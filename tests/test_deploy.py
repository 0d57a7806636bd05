"""deploy/: `kubectl kustomize` renders it, every object validates offline against the Kubernetes
1.32 JSON schemas (strict), the CRDs are well-formed, the pod is locked down, RBAC is least
privilege, and the config in the ConfigMap is one rotator accepts and that fits the manifests."""

from __future__ import annotations

import base64
import copy
import os
import re
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml
from monitoring_env import KUBECTL, PROMTOOL, REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from rotator.sandbox.control import SandboxProcess
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
            ("CustomResourceDefinition", "registrycredentials.rotator.example.com"),
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
            ("NetworkPolicy", "rotator-registries"),
            ("ServiceMonitor", "rotator"),
            ("PrometheusRule", "rotator"),
        ]
    )
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
    for obj in objects:
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["kind"]


def test_every_object_validates_against_kubernetes_schemas(objects: list[dict[str, Any]]) -> None:
    """Each non-CRD object passes the Kubernetes 1.32 JSON schema in strict mode (no unknown fields)."""
    assert len([o for o in objects if o["kind"] not in CRD_KINDS]) == 13
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


NODE_LOCAL_DNS = "169.254.20.10/32"  # NodeLocal DNSCache's usual link-local address


def egress_ports(policy: dict[str, Any]) -> list[tuple[int, str]]:
    return sorted((p["port"], p["protocol"]) for rule in policy["spec"]["egress"] for p in rule["ports"])


def test_networkpolicy_limits_ingress_and_egress(objects: list[dict[str, Any]]) -> None:
    """Ingress only on 8080, from the monitoring namespace and namespaces labelled as API clients (never
    from any pod that sets a label); egress only DNS (kube-dns and node-local DNS), 6443, and 443 to
    registries in a policy of its own."""
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    main, registries = one(objects, "NetworkPolicy", "rotator"), one(objects, "NetworkPolicy", "rotator-registries")
    for policy in (main, registries):
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert main["spec"]["policyTypes"] == ["Ingress", "Egress"]
    [ingress] = main["spec"]["ingress"]
    assert ingress["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert [peer["namespaceSelector"]["matchLabels"] for peer in ingress["from"]] == [
        {"kubernetes.io/metadata.name": "monitoring"},
        {"rotator.example.com/api-client": "true"},
    ]
    assert all(set(peer) == {"namespaceSelector"} for peer in ingress["from"])  # no pod-label peers
    assert egress_ports(main) == [(53, "TCP"), (53, "UDP"), (6443, "TCP")]
    [dns] = [rule for rule in main["spec"]["egress"] if {"port": 53, "protocol": "UDP"} in rule["ports"]]
    assert {"ipBlock": {"cidr": NODE_LOCAL_DNS}} in dns["to"]
    assert any(peer.get("podSelector", {}).get("matchLabels") == {"k8s-app": "kube-dns"} for peer in dns["to"])
    assert registries["spec"]["policyTypes"] == ["Egress"] and "ingress" not in registries["spec"]
    assert len(registries["spec"]["egress"]) == 1  # one rule: an overlay replaces its ports by index 0
    assert egress_ports(registries) == [(443, "TCP")]


def test_registry_ports_overlay_from_install_doc(tmp_path: Path) -> None:
    """The overlay in docs/install.md ("Registry ports") adds a registry port and changes nothing else."""
    [overlay] = [o for o in _install_doc_overlays() if "rotator-registries" in o]
    where = tmp_path / "clusters" / "prod" / "rotator"
    where.mkdir(parents=True)
    (where / "kustomization.yaml").write_text(overlay.replace("../../../deploy", os.path.relpath(DEPLOY, where)))
    objects = kustomize(where, tmp_path)
    assert schema_errors(objects) == []
    assert egress_ports(one(objects, "NetworkPolicy", "rotator-registries")) == [(443, "TCP"), (5000, "TCP")]
    assert egress_ports(one(objects, "NetworkPolicy", "rotator")) == [(53, "TCP"), (53, "UDP"), (6443, "TCP")]


# -- RBAC ----------------------------------------------------------------------------------------


def _config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(one(objects, "ConfigMap")["data"]["rotator.yaml"])
    return data


def test_role_restricts_state_vault_and_lease_by_name(objects: list[dict[str, Any]]) -> None:
    """In rotator-system, configmaps/secrets/leases are get/update by name only (create cannot be
    restricted), and the names are those the config uses; the admin key Secret the Deployment mounts is
    readable by name (RegistryCredentials' secretKeyRef), nothing else in the namespace."""
    config = _config(objects)
    state_name, lease_name = config["state"]["name"], config["daemon"]["lease_name"]
    volumes = one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    admin_key = next(v["secret"]["secretName"] for v in volumes if "admin" in v.get("secret", {}).get("secretName", ""))
    expected = {
        ("", "configmaps", (state_name,)): ["get", "update"],
        ("", "secrets", (f"{state_name}-vault",)): ["get", "update"],
        ("", "secrets", (admin_key,)): ["get"],
        ("coordination.k8s.io", "leases", (lease_name,)): ["get", "update"],
    }
    role = one(objects, "Role")
    seen: set[tuple[str, str, tuple[str, ...]]] = set()
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                if rule["verbs"] == ["create"]:
                    assert "resourceNames" not in rule and resource in ("configmaps", "secrets", "leases")
                    continue
                key = (group, resource, tuple(rule["resourceNames"]))
                assert expected.get(key) == sorted(rule["verbs"]), f"unexpected access {rule['verbs']} to {key}"
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


def _grants(role: dict[str, Any]) -> dict[tuple[str, str, tuple[str, ...]], set[str]]:
    """(API group, resource, resourceNames) -> verbs."""
    out: dict[tuple[str, str, tuple[str, ...]], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                key = (group, resource, tuple(sorted(rule.get("resourceNames", ()))))
                out.setdefault(key, set()).update(rule["verbs"])
    return out


def _target_names(objects: list[dict[str, Any]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The pull secrets' and service accounts' names the config uses (what RBAC must name)."""
    targets = [c["targets"]["kubernetes"] for c in _config(objects)["credentials"] if "kubernetes" in c["targets"]]
    secrets = tuple(sorted({t["secret_name"] for t in targets}))
    accounts = tuple(sorted({a for t in targets for a in t.get("service_accounts", ())}))
    return secrets, accounts


def test_clusterrole_is_least_privilege(objects: list[dict[str, Any]]) -> None:
    """Cluster-wide: namespaces (read); only the pull secret and service accounts the config names (create,
    which RBAC cannot restrict by name, apart); core Events (create); RegistryCredentials (read, watch,
    patched for the finalizer, status patched); the two reviews. Nothing else."""
    secrets, accounts = _target_names(objects)
    assert _grants(one(objects, "ClusterRole")) == {
        ("", "namespaces", ()): {"get", "list", "watch"},
        ("", "secrets", secrets): {"get", "list", "watch", "update", "patch", "delete"},
        ("", "secrets", ()): {"create"},
        ("", "serviceaccounts", accounts): {"get", "list", "watch", "update"},
        ("", "events", ()): {"create"},
        ("rotator.example.com", "registrycredentials", ()): {"get", "list", "watch", "patch"},
        ("rotator.example.com", "registrycredentials/status", ()): {"patch"},
        ("authentication.k8s.io", "tokenreviews", ()): {"create"},
        ("authorization.k8s.io", "subjectaccessreviews", ()): {"create"},
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
    secrets, accounts = _target_names(objects)
    for role in targets:
        assert _grants(role) == {
            ("", "secrets", secrets): {"get", "update", "delete"},
            ("", "secrets", ()): {"create"},
            ("", "serviceaccounts", accounts): {"get", "update"},
            ("", "events", ()): {"create"},
        }
    bindings = [o for o in objects if o["kind"] == "RoleBinding" and o["metadata"]["name"] == "rotator-target"]
    assert all(b["subjects"][0]["namespace"] == NAMESPACE for b in bindings) and len(bindings) == 2
    # The base's own Role in rotator-system is untouched.
    assert one(objects, "Role", "rotator")["metadata"]["namespace"] == NAMESPACE


def _bound_rules(objects: list[dict[str, Any]], account: str, namespace: str) -> list[dict[str, Any]]:
    """The rules the rendered (Cluster)RoleBindings give a ServiceAccount, as the sandbox's authorizer takes
    them: a ClusterRoleBinding's apply everywhere, a RoleBinding's only in its namespace."""
    subject = {"kind": "ServiceAccount", "name": account, "namespace": namespace}
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objects}
    rules: list[dict[str, Any]] = []
    for binding in (o for o in objects if o["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        if subject not in binding["subjects"]:
            continue
        ref = binding["roleRef"]
        role = roles[
            (ref["kind"], None if ref["kind"] == "ClusterRole" else binding["metadata"]["namespace"], ref["name"])
        ]
        scope = {"namespaces": [binding["metadata"]["namespace"]]} if binding["kind"] == "RoleBinding" else {}
        rules += [{**rule, **scope} for rule in role["rules"]]
    return rules


def _bound_token(sandbox: SandboxProcess, objects: list[dict[str, Any]], tmp_path: Path) -> tuple[str, Path]:
    """A sandbox token for rotator's ServiceAccount with exactly the rendered RBAC, and a kubeconfig with it."""
    rules = _bound_rules(objects, "rotator", NAMESPACE)
    user = f"system:serviceaccount:{NAMESPACE}:rotator"
    token: str = sandbox.admin.post("/kubernetes/tokens", json={"user": user, "rules": rules}).json()["token"]
    kubeconfig = yaml.safe_load(Path(sandbox.endpoints["kubeconfig"]).read_text())
    kubeconfig["users"][0]["user"]["token"] = token
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
    return token, tmp_path / "kubeconfig"


def _sandbox_config(objects: list[dict[str, Any]], sandbox: SandboxProcess, kubeconfig: Path) -> dict[str, Any]:
    """The shipped config, its names untouched (secret, service accounts, state, lease), pointed at the sandbox."""
    from rotator.sandbox.control import iam_provider_config

    ep = sandbox.endpoints
    config = _config(objects)
    cred = config["credentials"][0]
    cred["provider"] = iam_provider_config(ep)
    cred["registry"] = {"server": ep["registry_host"], "images": ep["images"]}
    cred["targets"]["kubernetes"]["namespaces"] = {"selector": ep["namespace_label"]}
    config["kubernetes"] = {**config["kubernetes"], "in_cluster": False, "kubeconfig": str(kubeconfig)}
    config["server"] = {**config["server"], "listen": "127.0.0.1:0"}
    return config


class _RbacRun:
    """rotator (the daemon) with the RBAC-bound token, and what the test needs to follow it."""

    def __init__(self, sandbox: SandboxProcess, config: dict[str, Any], path: Path) -> None:
        from daemon_env import Daemon
        from rotation_env import core

        from rotator.adapters.state import ConfigMapStateStore

        path.write_text(yaml.safe_dump(config))
        self.sandbox, self.config, self.path = sandbox, config, path
        self.cred = config["credentials"][0]
        self.secret = self.cred["targets"]["kubernetes"]["secret_name"]
        self.store = ConfigMapStateStore(core(sandbox), NAMESPACE, config["state"]["name"])
        self.caller = sandbox.admin.post(
            "/kubernetes/tokens",
            json={
                "user": "operator",
                "rules": [{"verbs": ["rotate"], "apiGroups": ["rotator.example.com"], "resources": ["credentials"]}],
                "audiences": ["rotator"],  # server.auth.audiences' default in Kubernetes mode
            },
        ).json()["token"]
        self.daemon = Daemon(path)

    def rotations(self) -> int:
        journal = self.store.load(self.cred["name"])
        return len(journal.history) if journal.rotation is None else 0

    def password(self, namespace: str) -> str:
        from rotation_env import read_secret, stored_doc

        obj = read_secret(self.sandbox, namespace, self.secret)
        entry = stored_doc(obj)["auths"].get(self.sandbox.endpoints["registry_host"], {}) if obj else {}
        return str(entry.get("password", ""))

    def rotate_through_the_api(self) -> None:
        """A rotation asked for through the HTTP API (TokenReview, SubjectAccessReview), waited for."""
        from polling import wait_for

        before = self.rotations()
        url = f"{self.daemon.api()}/v1/credentials/{self.cred['name']}/rotate"
        rotated = httpx.post(url, headers={"Authorization": f"Bearer {self.caller}"})
        assert rotated.status_code == 202, rotated.text
        wait_for(lambda: self.rotations() == before + 1, "the rotation asked for through the API", timeout=60)

    def stop_without_a_denial(self) -> None:
        """Stops the daemon; nothing was refused (401/403) by the API server, no watch or pass failed."""
        assert self.daemon.stop() == 0
        assert [r for r in self.sandbox.requests("kubernetes") if r["status"] in (401, 403)] == []
        failed = ("watch.failed", "worker.failed", "worker.crashed")
        assert not [e for e in self.daemon.events() if e["event"] in failed]


def _install_crd(sandbox: SandboxProcess, objects: list[dict[str, Any]]) -> None:
    """The rendered RegistryCredential definition, and the admin key Secret resources refer to (as an admin
    would install them before rotator starts)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from rotation_env import api_client, core

    definition = one(objects, "CustomResourceDefinition")
    for create in (
        lambda: client.ApiextensionsV1Api(api_client(sandbox)).create_custom_resource_definition(definition),
        lambda: core(sandbox).create_namespaced_secret(
            NAMESPACE,
            {"metadata": {"name": "rotator-admin-apikey"}, "stringData": {"apikey": sandbox.endpoints["admin_apikey"]}},
        ),
    ):
        try:
            create()
        except ApiException as exc:
            if exc.status != 409:  # installed by an earlier test
                raise


def _rotate_through_a_registry_credential(run: _RbacRun, secret: str) -> None:
    """A RegistryCredential (its admin key from a Secret in rotator's namespace, the pull secret's name in the
    unlabelled namespace default) is picked up, rotated, rotated again on its annotation, and released."""
    from kubernetes import client
    from polling import wait_for
    from rotation_env import api_client

    ep = run.sandbox.endpoints
    custom = client.CustomObjectsApi(api_client(run.sandbox))
    group, version, plural, name = "rotator.example.com", "v1alpha1", "registrycredentials", "cr-pull"
    spec = {
        "provider": {
            "kind": "ibm-iam",
            "endpoint": ep["iam"],
            "accountId": ep["account_id"],
            "serviceId": ep["service_id"],
            "apikey": {"secretKeyRef": {"namespace": NAMESPACE, "name": "rotator-admin-apikey", "key": "apikey"}},
        },
        "registry": {"server": ep["registry_host"], "images": ep["images"]},
        "targets": {"kubernetes": {"secretName": secret, "namespaces": {"names": ["default"]}}},
    }
    body = {"apiVersion": f"{group}/{version}", "kind": "RegistryCredential", "metadata": {"name": name}, "spec": spec}
    custom.create_cluster_custom_object(group, version, plural, body)

    def status() -> dict[str, Any]:
        found: dict[str, Any] = custom.get_cluster_custom_object(group, version, plural, name).get("status") or {}
        return found

    def ready() -> bool:
        return any(c["type"] == "Ready" and c["status"] == "True" for c in status().get("conditions", []))

    wait_for(ready, "the RegistryCredential Ready", timeout=60)
    assert run.password("default")
    first = status()["lastRotation"]["id"]
    annotation = {"metadata": {"annotations": {"rotator.example.com/rotate-requested-at": "2026-12-01T12:00:00Z"}}}
    custom.patch_cluster_custom_object(group, version, plural, name, annotation)
    wait_for(lambda: status().get("lastRotation", {}).get("id") not in (None, first), "the annotation's rotation", 60)
    custom.delete_cluster_custom_object(group, version, plural, name)
    wait_for(lambda: not custom.list_cluster_custom_object(group, version, plural)["items"], "the resource released")


def _refused_every_other_secret(sandbox: SandboxProcess, token: str, secret: str, *, where: str) -> None:
    """The token reads the pull secret by name (in ``where``), and no other Secret: not another name, not
    another Secret in rotator's namespace (only the admin key RegistryCredentials refer to), not by a list
    without the name."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from rotation_env import core

    from rotator.adapters.kubernetes import api_client_for

    for namespace in {where, NAMESPACE}:
        try:
            core(sandbox).create_namespaced_secret(
                namespace, {"metadata": {"name": "unrelated"}, "stringData": {"k": "v"}}
            )
        except ApiException as exc:
            if exc.status != 409:  # made by an earlier test
                raise
    scoped = client.CoreV1Api(api_client_for(sandbox.endpoints["kubernetes"], token))
    assert scoped.read_namespaced_secret(secret, where).metadata.name == secret
    for refused in (
        lambda: scoped.read_namespaced_secret("unrelated", where),
        lambda: scoped.read_namespaced_secret("unrelated", NAMESPACE),
        lambda: scoped.list_secret_for_all_namespaces(),
        lambda: scoped.list_namespaced_secret(where),
        lambda: scoped.list_secret_for_all_namespaces(field_selector="metadata.name=unrelated"),
    ):
        with pytest.raises(ApiException) as exc:
            refused()
        assert exc.value.status == 403


def test_shipped_rbac_is_enough_for_a_rotation_and_nothing_more(
    objects: list[dict[str, Any]], sandbox: SandboxProcess, tmp_path: Path
) -> None:
    """rotator, with a token bound to exactly the rendered RBAC and the shipped config's names, rotates
    (by schedule, API and annotation), heals drift through its watches, records Events, elects a leader and
    passes `rotator check` without one 403 from the API server; the same token reads no other Secret."""
    from polling import wait_for
    from rotation_env import core, read_secret, run_rotator

    token, kubeconfig = _bound_token(sandbox, objects, tmp_path)
    _install_crd(sandbox, objects)
    run = _RbacRun(sandbox, _sandbox_config(objects, sandbox, kubeconfig), tmp_path / "rotator.yaml")
    try:
        wait_for(lambda: run.rotations() == 1, "the first rotation", timeout=60)
        first = run.password("team-a")
        run.rotate_through_the_api()
        core(sandbox).patch_namespaced_secret(
            run.secret, "team-b", {"metadata": {"annotations": {"rotator.example.com/rotate": "now"}}}
        )
        wait_for(lambda: run.rotations() == 3, "the rotation asked for by annotation (watch, then patch)", timeout=60)
        current = run.password("team-a")
        assert current not in ("", first) and all(run.password(ns) == current for ns in ("team-b", "team-c"))
        obj = read_secret(sandbox, "team-c", run.secret)
        assert obj is not None
        obj["data"][".dockerconfigjson"] = base64.b64encode(b'{"auths": {}}').decode()
        core(sandbox).replace_namespaced_secret(run.secret, "team-c", obj)
        wait_for(lambda: run.password("team-c") == current, "drift healed through the watch", timeout=30)
        events = core(sandbox).list_namespaced_event("team-a").items
        assert any(e.involved_object.name == run.secret and e.source.component == "rotator" for e in events)
        check = run_rotator("check", "-c", str(run.path))
        assert check.returncode == 0 and "FAIL" not in check.stdout, check.stdout + check.stderr
        _rotate_through_a_registry_credential(run, run.secret)
    finally:
        run.stop_without_a_denial()
    _refused_every_other_secret(sandbox, token, run.secret, where="team-a")


def test_namespaced_rbac_is_enough_for_its_namespaces_and_nothing_more(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """With components/namespaced-rbac, its namespaces listed and watches off (as install.md says), rotator
    rotates (schedule, API) and passes `rotator check` without a 403; the token cannot touch the pull secret's
    name in a namespace without a Role, nor any other Secret."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from polling import wait_for
    from rotation_env import run_rotator

    from rotator.adapters.kubernetes import api_client_for

    objects = with_component(tmp_path, "namespaced-rbac")
    namespaces = sorted(
        o["metadata"]["namespace"] for o in objects if o["kind"] == "Role" and o["metadata"]["name"] == "rotator-target"
    )
    token, kubeconfig = _bound_token(sandbox, objects, tmp_path)
    _install_crd(sandbox, objects)
    config = _sandbox_config(objects, sandbox, kubeconfig)
    config["credentials"][0]["targets"]["kubernetes"]["namespaces"] = {"names": namespaces}
    config["daemon"] = {**config["daemon"], "watch": False}
    run = _RbacRun(sandbox, config, tmp_path / "rotator.yaml")
    try:
        wait_for(lambda: run.rotations() == 1, "the first rotation", timeout=60)
        run.rotate_through_the_api()
        current = run.password(namespaces[0])
        assert current and all(run.password(ns) == current for ns in namespaces)
        check = run_rotator("check", "-c", str(run.path))
        assert check.returncode == 0 and "FAIL" not in check.stdout, check.stdout + check.stderr
    finally:
        run.stop_without_a_denial()
    _refused_every_other_secret(sandbox, token, run.secret, where=namespaces[0])
    scoped = client.CoreV1Api(api_client_for(sandbox.endpoints["kubernetes"], token))
    with pytest.raises(ApiException) as exc:
        scoped.read_namespaced_secret(run.secret, "team-c")  # labelled, but no Role there
    assert exc.value.status == 403


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


def test_caller_example_mounts_a_token_for_rotators_audience(objects: list[dict[str, Any]], tmp_path: Path) -> None:
    """deploy/examples/caller-pod.yaml validates; its pod mounts a projected token for the audience the
    shipped config accepts, as the ServiceAccount its RoleBinding names, and mounts no apiserver token."""
    example = [d for d in yaml.safe_load_all((DEPLOY / "examples" / "caller-pod.yaml").read_text()) if d]
    assert schema_errors(example) == []
    path = tmp_path / "rotator.yaml"
    path.write_text(one(objects, "ConfigMap")["data"]["rotator.yaml"])
    audiences = parse(yaml.safe_load(path.read_text()), source=path, base_dir=tmp_path).server.auth.audiences
    pod = one(example, "Pod")["spec"]
    projected = [s for v in pod["volumes"] for s in v.get("projected", {}).get("sources", [])]
    assert [s["serviceAccountToken"]["audience"] for s in projected] == ["rotator"]
    assert "rotator" in audiences
    account = one(example, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False and pod["serviceAccountName"] == account["metadata"]["name"]
    [subject] = one(example, "RoleBinding")["subjects"]
    assert (subject["name"], subject["namespace"]) == (account["metadata"]["name"], account["metadata"]["namespace"])
    assert one(example, "RoleBinding")["metadata"]["namespace"] == NAMESPACE


def test_containerfile_builds_a_non_root_image_from_pinned_inputs() -> None:
    """Two stages (build, runtime) on the slim Python 3.11 base pinned by digest, dependencies installed
    from the hashed locks only, user 10001, `rotator` as the entrypoint. (tests/test_image.py builds it.)"""
    text = (DEPLOY / "Containerfile").read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(stages) == 2 and stages[0].endswith(" AS build") and stages[1].endswith(" AS runtime")
    base = r"^ARG PYTHON_IMAGE=docker\.io/library/python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}$"
    assert re.search(base, text, re.MULTILINE)
    installs = [line for line in text.splitlines() if "pip install " in line and "--no-index" not in line]
    assert len(installs) == 2 and all("--require-hashes" in line and ".lock" in line for line in installs)
    assert "USER 10001:10001" in text
    assert 'ENTRYPOINT ["rotator"]' in text


def _lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (pinned version, sha256 hashes) of a pip-compile --generate-hashes file."""
    pins: dict[str, tuple[str, list[str]]] = {}
    for entry in re.split(r"\n(?=[a-z0-9])", path.read_text()):
        if match := re.match(r"([a-z0-9._-]+)==(\S+)", entry):
            pins[canonicalize_name(match[1])] = (match[2], re.findall(r"--hash=sha256:([0-9a-f]{64})", entry))
    return pins


def test_lock_pins_every_runtime_dependency_with_hashes() -> None:
    """deploy/requirements.lock (make lock) pins each dependency of pyproject.toml at a version its
    specifier accepts, every pin with hashes; nothing of the test extras is in it."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = _lock(DEPLOY / "requirements.lock")
    assert len(pins) >= len(project["dependencies"])
    for line in project["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in deploy/requirements.lock: run make lock"
        assert requirement.specifier.contains(pins[name][0]), f"{name}=={pins[name][0]} does not fit {line}"
    assert all(hashes for _, hashes in pins.values())
    for line in project["optional-dependencies"]["test"]:
        assert canonicalize_name(Requirement(line).name) not in pins
    tools = _lock(DEPLOY / "build-tools.lock")
    assert {"setuptools", "cyclonedx-bom"} <= set(tools) and all(hashes for _, hashes in tools.values())


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
    """The five documented overlays (settings, no operator, namespaced RBAC, registry ports, trusted profile)
    are found, so the test above runs."""
    overlays = _install_doc_overlays()
    assert len(overlays) == 5
    assert sum("namespaced-rbac" in o for o in overlays) == 1
    assert sum("trusted-profile" in o for o in overlays) == 1
