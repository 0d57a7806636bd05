"""The sandbox process itself: readiness, endpoints file, busy ports, fault admin API."""

from __future__ import annotations

import subprocess
import sys

import httpx

from rotator.sandbox.control import SandboxProcess

REQUIRED_KEYS = {
    "iam",
    "kubernetes",
    "registry",
    "account_id",
    "service_id",
    "admin_apikey",
    "kubernetes_token",
    "namespaces",
    "images",
}


def test_endpoints_file_names_every_service_and_identity(sandbox: SandboxProcess) -> None:
    """The endpoints file carries every key the demo and the tests rely on."""
    missing = REQUIRED_KEYS - set(sandbox.endpoints)
    assert not missing
    for service in ("iam", "kubernetes", "registry"):
        assert sandbox.endpoints[service].startswith("http://127.0.0.1:")


def test_second_start_on_busy_ports_fails_with_a_clear_message(sandbox: SandboxProcess) -> None:
    """Starting on ports another sandbox holds says which port and what to do, without a traceback."""
    port = int(sandbox.endpoints["admin"].rsplit(":", 1)[1])
    result = subprocess.run(
        [sys.executable, "-m", "rotator", "sandbox", "--port-base", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "already in use" in result.stderr
    assert "--port-base" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_fault_rule_is_rejected_with_the_field_named(sandbox: SandboxProcess) -> None:
    """An unknown fault field is a 400 that names it, not a 500."""
    response = httpx.put(f"{sandbox.endpoints['admin']}/faults/iam", json={"rules": [{"latncy_ms": 5}]})
    assert response.status_code == 400
    assert "latncy_ms" in response.text
