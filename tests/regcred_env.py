"""A sandbox set up for RegistryCredentials as docs/registrycredential.md says (the definition applied, the
admin API key as a Secret in rotator's namespace), driven with the real kubectl, and helpers for resources.

The fixtures are module-scoped; a test module takes them by importing them:
``from regcred_env import kubectl, sbx  # noqa: F401 - the fixtures, shared``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import start_sandbox
from daemon_env import Daemon
from kubectl_env import Kubectl, kubectl_runner
from masked import Masked, masked
from rotation_env import read_secret, stored_doc

from rotator import dockerconfig, regcred
from rotator.sandbox.control import SandboxProcess, iam_provider_spec, labelled_kubernetes_target

REPO = Path(__file__).resolve().parent.parent
CRD = REPO / "deploy" / "crd" / f"{regcred.CRD_NAME}.yaml"
OWN_NAMESPACE = "rotator-system"  # rotator's kubernetes.namespace (default): secretKeyRef reads only here
ADMIN_SECRET = "rotator-admin-apikey"  # the docs' name, which config/registrycredential-sandbox.yaml reads
ADMIN_KEY_REF = {"namespace": OWN_NAMESPACE, "name": ADMIN_SECRET, "key": "apikey"}  # a spec's secretKeyRef
NAMESPACES = ("team-a", "team-b", "team-c")  # the sandbox's labelled namespaces: every resource's targets


@pytest.fixture(scope="module")
def sbx() -> Iterator[SandboxProcess]:
    with start_sandbox() as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def kubectl(sbx: SandboxProcess, tmp_path_factory: pytest.TempPathFactory) -> Kubectl:
    return set_up(sbx, tmp_path_factory.mktemp("kubectl-home"))


def set_up(sbx: SandboxProcess, home: Path) -> Kubectl:
    """A kubectl for ``sbx`` (``home``: its HOME), after the set-up of the docs: the definition applied, the
    admin API key as a Secret in rotator's namespace."""
    run = kubectl_runner(sbx.endpoints["kubeconfig"], home)
    run("apply", "-f", str(CRD))
    apikey = sbx.endpoints["admin_apikey_file"]
    run("-n", OWN_NAMESPACE, "create", "secret", "generic", ADMIN_SECRET, f"--from-file=apikey={apikey}")
    return run


def spec(sbx: SandboxProcess, secret_name: str, **changes: Any) -> dict[str, Any]:
    """One credential's config for ``sbx`` in camelCase, as a RegistryCredential's spec: its admin key read from
    the Secret, the labelled namespaces as targets, short durations."""
    ep = sbx.endpoints
    target = labelled_kubernetes_target(ep, secret_name)
    return {
        "provider": iam_provider_spec(ep, ADMIN_KEY_REF),
        "registry": {"server": ep["registry_host"], "images": ep["images"], "verifyBudget": "10s"},
        "schedule": {"interval": "1h"},
        "maxAge": "1d",
        "gracePeriod": "1h",
        "deleteAfter": "1h",
        "targets": {
            "kubernetes": {
                "secretName": target["secret_name"],
                "namespaces": target["namespaces"],
                "serviceAccounts": target["service_accounts"],
            }
        },
        **changes,
    }


def apply(kubectl: Kubectl, name: str, body: dict[str, Any]) -> None:
    resource = {"apiVersion": regcred.API_VERSION, "kind": regcred.KIND, "metadata": {"name": name}, "spec": body}
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(resource))


def get(kubectl: Kubectl, name: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(kubectl("get", f"regcred/{name}", "-o", "json").stdout)
    return found


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_), None)


def held_passwords(sbx: SandboxProcess, secret_name: str) -> dict[str, Masked | None]:
    """Each labelled namespace's ``secret_name``: the password it holds for the sandbox registry."""
    out: dict[str, Masked | None] = {}
    for ns in NAMESPACES:
        obj = read_secret(sbx, ns, secret_name)
        entry = dockerconfig.entry(stored_doc(obj), sbx.endpoints["registry_host"]) if obj else None
        out[ns] = masked(entry.password.reveal()) if entry else None
    return out


def last_pass(daemon: Daemon, name: str) -> float:
    """When ``daemon`` last finished a pass over ``name`` (its metric; 0 before the first)."""
    text = httpx.get(f"{daemon.api()}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("rotator_last_pass_success_timestamp_seconds{") and f'credential="{name}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0
