"""``provider.auth`` / ``targets.codeengine.auth``: an API key source or a trusted profile, checked at load."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from test_settings import DELETE, load, with_change

from rotator import settings
from rotator.errors import ConfigError

PROFILE = {"kind": "trusted-profile", "profile_name": "rotator", "cr_token_file": "tokens/sa-token"}


def keyless(**auth: Any) -> dict[str, Any]:
    doc = with_change("credentials[0].provider.apikey", DELETE)
    doc["credentials"][0]["provider"]["auth"] = auth
    return doc


def test_trusted_profile_loads_and_reads_the_token_file_each_time(tmp_path: Path) -> None:
    cfg = load(tmp_path, keyless(**PROFILE))
    auth = cfg.credential("icr-pull").provider.apikey
    assert isinstance(auth, settings.TrustedProfileSource)
    assert (auth.profile_name, auth.cr_token_file) == ("rotator", tmp_path / "tokens/sa-token")
    with pytest.raises(ConfigError, match=r"provider\.auth\.cr_token_file: cannot read .*sa-token"):
        auth.load()
    (tmp_path / "tokens").mkdir()
    (tmp_path / "tokens/sa-token").write_text("first\n")
    assert auth.load().reveal() == "first"
    (tmp_path / "tokens/sa-token").write_text("second")
    assert auth.load().reveal() == "second"
    redacted = str(cfg.redacted())
    assert "trusted-profile:name rotator" in redacted and "second" not in redacted


def test_trusted_profile_defaults_to_the_iks_token_path(tmp_path: Path) -> None:
    cfg = load(tmp_path, keyless(kind="trusted-profile", profile_id="Profile-1234"))
    auth = cfg.credential("icr-pull").provider.apikey
    assert isinstance(auth, settings.TrustedProfileSource)
    assert str(auth.cr_token_file) == "/var/run/secrets/tokens/sa-token"


def test_auth_kind_apikey_is_the_same_as_apikey(tmp_path: Path) -> None:
    cfg = load(tmp_path, keyless(kind="apikey", env="ROTATOR_TEST_APIKEY"))
    auth = cfg.credential("icr-pull").provider.apikey
    assert isinstance(auth, settings.SecretSource) and auth.env == "ROTATOR_TEST_APIKEY"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (keyless(kind="trusted-profile", cr_token_file="/t"), "give exactly one of profile_id or profile_name"),
        (keyless(kind="trusted-profile", profile_id="Profile-1", profile_name="x"), "exactly one of profile_id"),
        (keyless(kind="trusted-profile", profile_id="ServiceId-1"), "is not a trusted profile ID"),
        (keyless(kind="oauth"), "'oauth' is not apikey or trusted-profile"),
        (keyless(kind="trusted-profile", profile_name="r", apikey="x"), "provider.auth.apikey: unknown field"),
        ({**keyless(**PROFILE)}, None),
    ],
)
def test_bad_auth_names_the_field(tmp_path: Path, doc: dict[str, Any], message: str | None) -> None:
    if message is None:
        load(tmp_path, doc)
        return
    with pytest.raises(ConfigError) as info:
        load(tmp_path, doc)
    assert message in str(info.value)


def test_apikey_and_auth_together_are_refused(tmp_path: Path) -> None:
    doc = with_change("credentials[0].provider.auth", PROFILE)
    with pytest.raises(ConfigError, match=r"provider\.auth: give either apikey or auth, not both"):
        load(tmp_path, doc)
    none = with_change("credentials[0].provider.apikey", DELETE)
    with pytest.raises(ConfigError, match=r"provider\.apikey: is required \(or auth\)"):
        load(tmp_path, none)


def test_key_expiry_auto_covers_every_lifetime_plus_a_week(tmp_path: Path) -> None:
    """GOOD: max_age 30d, grace 1h, delete_after 1d (default): keys live 31d 1h + 7d."""
    provider = load(tmp_path, with_change("credentials[0].delete_after", "1d")).credential("icr-pull").provider
    assert isinstance(provider, settings.IamProviderSettings)
    assert provider.key_lifetime == dt.timedelta(days=38, hours=1)
    assert provider.key_expiry_margin == dt.timedelta(days=7)
    assert provider.action_when_leaked == "disable"


def test_key_expiry_off_and_explicit(tmp_path: Path) -> None:
    off = load(tmp_path, with_change("credentials[0].provider.key_expiry", "off")).credential("icr-pull").provider
    assert isinstance(off, settings.IamProviderSettings) and off.key_lifetime is None and off.key_expiry_margin is None
    doc = with_change("credentials[0].provider.key_expiry", "40d")
    explicit = load(tmp_path, doc).credential("icr-pull").provider
    assert isinstance(explicit, settings.IamProviderSettings)
    # 40d minus max_age 30d, grace 1h and delete_after 1d.
    assert (explicit.key_lifetime, explicit.key_expiry_margin) == (
        dt.timedelta(days=40),
        dt.timedelta(days=8, hours=23),
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("key_expiry", "30d", "provider.key_expiry: is not longer than max_age + grace_period + delete_after"),
        ("key_expiry", "never", "provider.key_expiry: 'never'"),
        ("action_when_leaked", "shred", "provider.action_when_leaked: 'shred' is not one of none, disable, delete"),
    ],
)
def test_bad_key_safety_settings_name_the_field(tmp_path: Path, field: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, with_change(f"credentials[0].provider.{field}", value))
    assert message in str(info.value)


def test_codeengine_target_may_sign_in_as_its_own_profile(tmp_path: Path) -> None:
    doc = with_change(
        "credentials[0].targets.codeengine",
        {
            "endpoint": "https://api.us-south.codeengine.cloud.ibm.com/v2",
            "project_id": "4a6c8e0f-1b3d-4f5a-8c7e-9d0b2a4c6e8f",
            "secret_name": "icr-pull",
            "auth": {"kind": "trusted-profile", "profile_name": "rotator-ce"},
        },
    )
    target = load(tmp_path, doc).credential("icr-pull").codeengine
    assert target is not None and isinstance(target.apikey, settings.TrustedProfileSource)
    assert target.apikey.profile_name == "rotator-ce"
    bad = copy.deepcopy(doc)
    bad["credentials"][0]["targets"]["codeengine"]["auth"] = {"kind": "trusted-profile"}
    with pytest.raises(ConfigError, match=r"targets\.codeengine\.auth: give exactly one of profile_id or profile_name"):
        load(tmp_path, bad)
