"""Helpers for end-to-end rotation tests: a config for a sandbox, rotator as a subprocess, and
read-only views of what the emulated IAM, cluster and registry hold afterwards."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from masked import masked

from rotator import dockerconfig
from rotator.adapters.kubernetes import api_client_for
from rotator.adapters.registry import RegistryVerifier
from rotator.adapters.state import FileStateStore
from rotator.app import App
from rotator.journal import CredentialJournal, Vault
from rotator.model import RegistryAuth, SecretStr
from rotator.sandbox.control import SandboxProcess, iam_provider_config, labelled_kubernetes_target
from rotator.settings import load

SECRET = "icr-pull"
CRED = "icr-pull"


def write_config(tmp_path: Path, sbx: SandboxProcess, *, top: dict[str, Any] | None = None, **overrides: Any) -> Path:
    """A config for ``sbx``: the labelled namespaces, the default service account, short durations."""
    ep = sbx.endpoints
    cred: dict[str, Any] = {
        "name": CRED,
        "provider": iam_provider_config(ep),
        "registry": {"server": ep["registry_host"], "images": ep["images"], "verify_budget": "10s"},
        "schedule": {"interval": "1h"},
        "max_age": "1d",
        "grace_period": "1h",
        "delete_after": "1h",
        "targets": {"kubernetes": labelled_kubernetes_target(ep, SECRET)},
    }
    for key, value in overrides.items():
        cred[key] = value
    doc = {
        "credentials": [cred],
        "kubernetes": {"kubeconfig": ep["kubeconfig"], "concurrency": 4},
        "state": {"kind": "file", "path": str(tmp_path / "state")},
        "server": {"listen": "127.0.0.1:0"},
    }
    doc.update(top or {})
    path = tmp_path / "rotator.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def make_app(config: Path, **kwargs: Any) -> App:
    return App(load(config), **kwargs)


def run_rotator(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``rotator ARGS`` in a child process; its output is also kept for the suite's log-leak scan."""
    result = subprocess.run(
        [sys.executable, "-m", "rotator", "--log-format", "json", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
    log_dir = Path(os.environ.get("ROTATOR_TEST_LOG_DIR", "/tmp"))
    (log_dir / f"cli-{uuid.uuid4().hex[:12]}.log").write_text(
        f"$ rotator {' '.join(args)}\n{result.stdout}\n{result.stderr}"
    )
    return result


_CLIENTS: dict[tuple[str, str], Any] = {}


def api_client(sbx: SandboxProcess) -> Any:
    """One ApiClient per sandbox, reused. Keyed by URL *and* token: a later sandbox may get the same free
    port, and a client cached for the old one would present a token the new one never issued."""
    key = (sbx.endpoints["kubernetes"], sbx.endpoints["kubernetes_token"])
    if key not in _CLIENTS:
        _CLIENTS[key] = api_client_for(*key)
    return _CLIENTS[key]


def core(sbx: SandboxProcess) -> Any:
    """A CoreV1Api for the sandbox."""
    from kubernetes import client

    return client.CoreV1Api(api_client(sbx))


def read_secret(sbx: SandboxProcess, namespace: str, name: str = SECRET) -> dict[str, Any] | None:
    from kubernetes.client.exceptions import ApiException

    try:
        response = core(sbx).read_namespaced_secret(name, namespace, _preload_content=False)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    obj: dict[str, Any] = json.loads(response.data)
    return obj


def stored_doc(obj: dict[str, Any]) -> dict[str, Any]:
    return dockerconfig.parse(base64.b64decode(obj["data"][".dockerconfigjson"]))


def stored_password(sbx: SandboxProcess, namespace: str) -> str | None:
    obj = read_secret(sbx, namespace)
    if obj is None:
        return None
    entry = dockerconfig.entry(stored_doc(obj), sbx.endpoints["registry_host"])
    return masked(entry.password.reveal()) if entry else None


def iam_keys(sbx: SandboxProcess) -> list[dict[str, Any]]:
    response = sbx.admin.get("/iam/keys")
    response.raise_for_status()
    keys: list[dict[str, Any]] = response.json()["keys"]
    return keys


def live_owned_keys(sbx: SandboxProcess) -> list[dict[str, Any]]:
    return [
        k
        for k in iam_keys(sbx)
        if not k["deleted"]
        and k["name"].startswith(f"rotator-{CRED}-")
        and k["iam_id"] == sbx.endpoints["service_iam_id"]
    ]


def key_id_of(sbx: SandboxProcess, value: str) -> str:
    import httpx

    from rotator.adapters.iam import IamProvider

    with httpx.Client(timeout=10) as client:
        provider = IamProvider(
            base_url=sbx.endpoints["iam"],
            account_id=sbx.endpoints["account_id"],
            service_id=sbx.endpoints["service_id"],
            admin_apikey=SecretStr(sbx.endpoints["admin_apikey"]),
            client=client,
        )
        info = provider.identify(SecretStr(value))
    assert info is not None
    return info.id


def settled_after_crash(
    sbx: SandboxProcess,
    config: str,
    state_dir: Path,
    *,
    credential: str = CRED,
    identify: Callable[[SandboxProcess, str], str] = key_id_of,
) -> tuple[CredentialJournal, Vault]:
    """Run ``rotator reconcile`` after a SIGKILL and check the invariants every crash test shares: it ends
    without a traceback, no rotation is left half-done, and the vault's current value is the journal's
    current key (``identify`` maps a value to the provider's id). The journal and vault, for more checks."""
    rerun = run_rotator("reconcile", credential, "-c", config, "--wait", "5")
    assert rerun.returncode in (0, 1), rerun.stderr  # 1: the resumed rotation was rolled back
    assert "Traceback" not in rerun.stderr

    store = FileStateStore(state_dir)
    journal, vault = store.load(credential), store.load_vault(credential)
    assert journal.rotation is None
    assert journal.current is not None and vault.current is not None
    assert identify(sbx, vault.current) == journal.current.id
    return journal, vault


def pulls(sbx: SandboxProcess, password: str) -> str:
    """The verifier's outcome for ``iamapikey:password`` against the sandbox registry."""
    with httpx.Client(timeout=10) as client:
        verifier = RegistryVerifier(budget_s=5, client=client)
        auth = RegistryAuth(server=sbx.endpoints["registry_host"], username="iamapikey", password=SecretStr(password))
        return verifier.verify(server=auth.server, auth=auth, images=sbx.endpoints["images"]).outcome


class FakeClock:
    """Time that moves only when told to (sleep advances it)."""

    def __init__(self) -> None:
        self.t = dt.datetime.now(dt.UTC)

    def now(self) -> dt.datetime:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self.t += dt.timedelta(seconds=seconds)
