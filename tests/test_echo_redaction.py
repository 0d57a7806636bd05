"""Upstreams that echo the credential they were sent leave no form of it anywhere rotator writes.

The sandbox's ``echo`` fault makes a service answer an error that quotes the presented credential raw, in
base64, as ``Basic base64(user:value)``, URL-encoded byte by byte, or deep inside a long message (where the
120/160/300-character cuts fall). A rotation or a CLI run is driven against it; the logs, the journal file,
``rotator status --json``, the CLI's error text, the API's ``/v1/credentials`` and the rotation outcome are
searched for every value the sandbox issued, in every form (``leakforms``: built independently of
``rotator.redact``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import start_sandbox
from daemon_env import Daemon
from leakforms import leaks
from logtail import LogTail
from polling import wait_for
from rotation_env import CRED, api_client, core, make_app, run_rotator, write_config

from rotator import redact
from rotator.adapters.kubernetes_events import EventRecorder
from rotator.errors import RotatorError
from rotator.model import TargetRef
from rotator.policy import Request
from rotator.redact import MASK
from rotator.sandbox.control import SandboxProcess
from rotator.sandbox.faults import ECHO_FORMS, echo_message

API_TOKEN = "operator-token-0123456789"


@pytest.fixture(scope="module")
def echoing() -> Iterator[SandboxProcess]:
    """One sandbox for this module (each test has its own state directory); faults cleared after each test."""
    with start_sandbox() as sbx:
        yield sbx


@pytest.fixture(autouse=True)
def _clear(echoing: SandboxProcess) -> Iterator[None]:
    yield
    echoing.clear_faults()


def _config(tmp_path: Path, sbx: SandboxProcess, **top: Any) -> Path:
    ep = sbx.endpoints
    # A 1 s budget: a 503 is retried once or twice, then the check ends inconclusive at once.
    registry = {"server": ep["registry_host"], "images": ep["images"], "verify_budget": "1s"}
    return write_config(tmp_path, sbx, registry=registry, top=top or None)


def _journal_text(tmp_path: Path) -> str:
    """Everything in the file store but the vault (which holds key values by design)."""
    files = [p for p in (tmp_path / "state").glob("*.json") if "vault" not in p.name]
    assert files, "the rotation wrote no journal"
    return "\n".join(p.read_text() for p in files)


def _status_text(config: Path) -> str:
    result = run_rotator("status", "--json", "-c", str(config))
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout + result.stderr


def _assert_clean(sbx: SandboxProcess, **texts: str) -> None:
    values = sbx.issued_values()  # every key minted, the admin key, Docker Hub secrets
    found = {where: leaks(text, values) for where, text in texts.items()}
    assert {where: hits for where, hits in found.items() if hits} == {}


@pytest.mark.parametrize("status", [401, 503])
@pytest.mark.parametrize("form", ECHO_FORMS)
def test_registry_token_service_echo_leaves_no_trace(
    echoing: SandboxProcess, tmp_path: Path, form: str, status: int
) -> None:
    """The token endpoint quotes ``iamapikey:<new key>`` back: 401 (rejected, rolled back) or 503 (waiting)."""
    config = _config(tmp_path, echoing)
    echo = {"path_prefix": "/oauth/token", "error_status": status, "error_rate": 1.0, "echo": form}
    echoing.set_faults("registry", echo)
    seq = echoing.last_seq("registry")
    tail = LogTail()
    with make_app(config) as app:
        outcome = app.reconciler(CRED).run(Request(reason="echo test"))
    assert outcome.result == ("failed" if status == 401 else "inconclusive"), outcome.detail
    echoed = [r for r in echoing.requests("registry", seq) if r["path"] == "/oauth/token"]
    assert echoed and all(r["status"] == status for r in echoed)
    journal = _journal_text(tmp_path)
    _assert_clean(
        echoing,
        outcome=outcome.detail,
        logs=tail.path.read_bytes()[tail.offset :].decode(errors="replace"),
        journal=journal,
        status=_status_text(config),
    )
    assert MASK in journal, "the echo reached the journal, masked"


@pytest.mark.parametrize("form", ECHO_FORMS)
def test_iam_token_endpoint_echo_leaves_no_trace(echoing: SandboxProcess, tmp_path: Path, form: str) -> None:
    """IAM's token endpoint quotes rotator's admin key back (401): the error, in-process and printed by the CLI."""
    config = _config(tmp_path, echoing)
    echo = {"path_prefix": "/identity/token", "error_status": 401, "error_rate": 1.0, "echo": form}
    echoing.set_faults("iam", echo)
    tail = LogTail()
    with make_app(config) as app, pytest.raises(RotatorError) as raised:
        app.reconciler(CRED).run(Request(reason="echo test"))
    cli = run_rotator("rotate", CRED, "-c", str(config))
    assert cli.returncode == 1 and "IAM token" in cli.stderr
    _assert_clean(
        echoing,
        exception=str(raised.value),
        logs=tail.path.read_bytes()[tail.offset :].decode(errors="replace"),
        cli=cli.stdout + cli.stderr,
        status=_status_text(config),
    )
    assert MASK in str(raised.value), "the echo reached the error, masked"


def test_api_shows_a_waiting_rotation_without_the_echoed_key(echoing: SandboxProcess, tmp_path: Path) -> None:
    """A daemon whose pull check keeps getting 503 + ``Basic base64(iamapikey:key)``: /v1/credentials and its
    log carry the wait, not the key."""
    tokens = tmp_path / "api-tokens"
    tokens.write_text(f"{API_TOKEN} alice read\n")
    tokens.chmod(0o600)
    server = {"listen": "127.0.0.1:0", "auth": {"mode": "token-file", "file": str(tokens)}}
    config = _config(tmp_path, echoing, server=server, daemon={"resync": "1h"})
    echo = {"path_prefix": "/oauth/token", "error_status": 503, "error_rate": 1.0, "echo": "basic"}
    echoing.set_faults("registry", echo)
    daemon = Daemon(config)
    try:
        base = daemon.api()

        def waiting() -> str | None:
            response = httpx.get(f"{base}/v1/credentials", headers={"Authorization": f"Bearer {API_TOKEN}"})
            assert response.status_code == 200, response.status_code
            rotation = response.json()["credentials"][0]["rotation_in_progress"]
            return response.text if rotation and rotation["waiting"] else None

        api = wait_for(waiting, "a rotation waiting on the inconclusive check", timeout=30)
    finally:
        daemon.stop()
    assert MASK in api
    _assert_clean(echoing, api=api, logs=daemon.log_path.read_text(errors="replace"))


@pytest.mark.parametrize("form", ECHO_FORMS)
def test_kubernetes_event_messages_are_scrubbed_before_the_cut(echoing: SandboxProcess, form: str) -> None:
    """An Event whose message quotes a key (as an echoing upstream put it) reaches the API server without it,
    even where the 1000-character cut falls inside the value."""
    key = echoing.endpoints["admin_apikey"]
    redact.register(key)  # what the daemon does for every key it holds
    if form == "long":  # the value across the 1000-character cut
        message = "." * 960 + " " + key + " refused"
    else:
        message = echo_message(form, "iamapikey", key)
    target = TargetRef(sink="kubernetes", namespace="team-a", name=f"echo-{form}")
    recorder = EventRecorder(api_client(echoing))
    recorder.record(target, "PullSecretRolledBack", message, warning=True)
    recorder.close()
    events = core(echoing).list_namespaced_event("team-a", field_selector=f"involvedObject.name={target.name}").items
    assert len(events) == 1
    _assert_clean(echoing, event=events[0].message)
    assert MASK in events[0].message


def test_echo_rule_is_checked_when_set(echoing: SandboxProcess) -> None:
    """An unknown form, or an echo without an error status, is refused by the admin API with the known forms."""
    for rule in ({"error_status": 401, "echo": "xml"}, {"echo": "raw"}):
        response = echoing.admin.put("/faults/registry", json={"rules": [rule]})
        assert response.status_code == 400 and "raw" in response.json()["error"] and "error_status" in response.text
