"""IAM-side safety nets on the keys rotator mints: an expiry (``expires_at``), IAM's leak action
(``action_when_leaked``), seen through IBM's own SDK; a leak IAM acted on is noticed and rotated away."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from daemon_env import Daemon
from monitoring_env import sample, scrape
from polling import wait_for
from rotation_env import CRED, make_app, run_rotator, stored_password, write_config
from test_adapter_iam import make_provider
from test_daemon import daemons  # noqa: F401 - the fixture, shared
from test_sandbox_iam import sdk

from rotator.adapters.state import FileStateStore
from rotator.sandbox.control import SandboxProcess

NINE_DAYS = dt.timedelta(days=9)


def iam_time(raw: str) -> dt.datetime:
    return dt.datetime.fromisoformat(raw)


def test_minted_key_carries_expiry_and_leak_action_seen_by_the_sdk(sandbox: SandboxProcess) -> None:
    provider = make_provider(sandbox, key_lifetime=NINE_DAYS, action_when_leaked="disable")
    before = dt.datetime.now(dt.UTC)
    minted = provider.mint(credential=CRED, rotation_id="r1")
    after = dt.datetime.now(dt.UTC)
    endpoints = sandbox.endpoints
    key = sdk(endpoints, endpoints["admin_apikey"]).get_api_key(id=minted.info.id).get_result()
    expires = iam_time(key["expires_at"])
    # IAM's format has minutes; rotator rounds up, so the key never expires early.
    assert before + NINE_DAYS <= expires <= after + NINE_DAYS + dt.timedelta(minutes=1)
    assert key["action_when_leaked"] == "disable"
    assert minted.info.expires_at == expires and provider.get(minted.info.id).expires_at == expires  # type: ignore[union-attr]


def test_key_expiry_off_mints_keys_that_do_not_expire(sandbox: SandboxProcess) -> None:
    minted = make_provider(sandbox).mint(credential=CRED, rotation_id="r1")
    endpoints = sandbox.endpoints
    key = sdk(endpoints, endpoints["admin_apikey"]).get_api_key(id=minted.info.id).get_result()
    assert "expires_at" not in key and minted.info.expires_at is None


def test_status_and_check_show_each_keys_expiry(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """With the default ``key_expiry: auto`` the key expires max_age + grace + delete_after + 7 d after minting."""
    config = write_config(tmp_path, sandbox)  # max_age 1d, grace 1h, delete_after 1h
    assert run_rotator("rotate", CRED, "-c", str(config)).returncode == 0
    status = run_rotator("status", CRED, "-c", str(config))
    assert status.returncode == 0 and "expires " in status.stdout and "(in 8d" in status.stdout, status.stdout
    check = run_rotator("check", "-c", str(config))
    lines = [line for line in check.stdout.splitlines() if " expires " in line]
    assert len(lines) == 1 and lines[0].startswith("ok   icr-pull: key ApiKey-"), check.stdout
    endpoints = sandbox.endpoints
    listed = sdk(endpoints, endpoints["admin_apikey"]).list_api_keys(
        iam_id=endpoints["service_iam_id"], filter='name sw "rotator-"'
    )
    (key,) = listed.get_result()["apikeys"]
    lifetime = iam_time(key["expires_at"]) - iam_time(key["created_at"])
    assert dt.timedelta(days=8, hours=2) <= lifetime <= dt.timedelta(days=8, hours=2, minutes=2)
    assert key["action_when_leaked"] == "disable"


def test_check_fails_for_a_key_within_the_margin(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """A key minted to expire in 26h1m is fine while the margin is 1 min; with ``key_expiry: 30d`` (a margin of
    30d - 26h) the same key is inside the margin: rotation would be stuck, check says FAIL."""
    ep = sandbox.endpoints
    provider: dict[str, Any] = {
        "kind": "ibm-iam",
        "endpoint": ep["iam"],
        "account_id": ep["account_id"],
        "service_id": ep["service_id"],
        "apikey": {"file": ep["admin_apikey_file"]},
        "key_expiry": "26h1m",  # max_age 1d + grace 1h + delete_after 1h = 26 h: a margin of 1 min
    }
    config = write_config(tmp_path, sandbox, provider=provider)
    assert run_rotator("rotate", CRED, "-c", str(config)).returncode == 0
    check = run_rotator("check", "-c", str(config))
    assert check.returncode == 0, check.stdout
    long_margin = write_config(tmp_path, sandbox, provider={**provider, "key_expiry": "30d"})
    check = run_rotator("check", "-c", str(long_margin))
    line = next(line for line in check.stdout.splitlines() if " expires " in line)
    assert line.startswith("FAIL icr-pull: key ApiKey-") and "(in 1d2h" in line, check.stdout
    assert check.returncode == 1


def test_a_key_iam_disabled_for_a_leak_is_rotated_away(
    sandbox: SandboxProcess,
    tmp_path: Path,
    daemons: list[Daemon],  # noqa: F811 - the fixture imported above
) -> None:
    """IAM finds the current key in a public leak and disables it (``action_when_leaked: disable``, which
    rotator set when minting); the health check notices and an emergency rotation replaces it."""
    config = write_config(tmp_path, sandbox, schedule={"interval": "1h", "health_check": "1s"})
    daemons.append(daemon := Daemon(config))
    store = FileStateStore(tmp_path / "state")
    wait_for(lambda: (j := store.load(CRED)).rotation is None and j.current is not None, "the first rotation")
    leaked = store.load(CRED).current
    assert leaked is not None and leaked.expires_at is not None

    def exported() -> dict[str, float] | None:
        samples = scrape(daemon.api())
        expiry = sample(samples, "rotator_key_expiry_timestamp_seconds", credential=CRED)
        return (
            {"expiry": expiry, "margin": sample(samples, "rotator_key_expiry_margin_seconds", credential=CRED)}
            if expiry
            else None
        )

    # The current key's expiry and the alert margin (auto: 7 days) are exported for RotatorKeyExpiringSoon.
    assert wait_for(exported, "the expiry metrics") == {"expiry": leaked.expires_at.timestamp(), "margin": 7 * 86400}
    before = stored_password(sandbox, "team-a")
    sandbox.admin.post(f"/iam/keys/{leaked.id}/leaked").raise_for_status()

    def replaced() -> bool:
        journal = store.load(CRED)
        return journal.current is not None and journal.current.id != leaked.id and journal.rotation is None

    wait_for(replaced, "the emergency rotation", timeout=30)
    assert daemon.logged("health.key_rejected")
    assert stored_password(sandbox, "team-a") not in (None, before)


def test_health_check_asks_the_provider_and_goes_on_when_it_is_busy(sandbox: SandboxProcess, tmp_path: Path) -> None:
    """A busy IAM (429 for longer than the retry budget) does not fail the health check: the registry
    check still runs. A key IAM disabled is rejected with the reason, though the registry still takes it."""
    config = write_config(tmp_path, sandbox)
    assert run_rotator("rotate", CRED, "-c", str(config)).returncode == 0
    with make_app(config) as app:
        reconciler = app.reconciler(CRED)
        current = app.store.load(CRED).current
        assert current is not None
        sandbox.set_faults(
            "iam", {"path_prefix": "/v1/apikeys/", "methods": ["GET"], "throttle_seconds": 600, "retry_after": 600}
        )
        since = sandbox.last_seq("iam")
        busy = reconciler.check_current()
        assert busy is not None and busy.outcome == "ok", busy
        asked = [r["status"] for r in sandbox.requests("iam", since) if r["path"] == f"/v1/apikeys/{current.id}"]
        assert asked and set(asked) == {429}
        sandbox.clear_faults()
        sandbox.admin.post(f"/iam/keys/{current.id}/leaked").raise_for_status()
        rejected = reconciler.check_current()
    assert rejected is not None and rejected.outcome == "rejected"
    assert rejected.detail == f"current key {current.id} is disabled at the provider (a leak found by IAM does this)"
