"""A RegistryCredential's spec as a credential (camelCase, absolute paths, the same error format), and
secret sources that point at a Kubernetes Secret (secret_key_ref / secretKeyRef)."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from test_settings import load, with_change

from rotator import settings
from rotator.errors import ConfigError

SOURCE = "RegistryCredential/icr-pull"
REF = {"namespace": "rotator-system", "name": "icr-admin", "key": "apikey"}
SPEC: dict[str, Any] = {
    "provider": {"accountId": "abc", "serviceId": "ServiceId-1234", "apikey": {"secretKeyRef": REF}},
    "registry": {"server": "us.icr.io", "images": ["us.icr.io/team/app:latest"]},
    "schedule": {"interval": "7d", "retryBackoffMax": "30m"},
    "maxAge": "30d",
    "targets": {"kubernetes": {"secretName": "icr-pull", "namespaces": {"names": ["team-a"]}}},
}


def spec_with(**changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(SPEC), **changes}


def refused(spec: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        settings.credential_from_spec("icr-pull", spec, source=SOURCE)
    return str(info.value)


def test_a_spec_becomes_the_credential_of_its_name() -> None:
    cred = settings.credential_from_spec("icr-pull", SPEC, source=SOURCE)
    assert (cred.name, cred.max_age, cred.deletion_policy) == ("icr-pull", dt.timedelta(days=30), "Retain")
    assert cred.schedule.retry_backoff_max == dt.timedelta(minutes=30)
    assert cred.kubernetes is not None and cred.kubernetes.namespaces.names == ("team-a",)
    assert isinstance(cred.provider, settings.IamProviderSettings)
    assert cred.provider.key_lifetime == dt.timedelta(days=38, hours=1)  # auto: 30d + 1h + 1d + 7d
    revoke = settings.credential_from_spec("icr-pull", spec_with(deletionPolicy="Revoke"), source=SOURCE)
    assert revoke.deletion_policy == "Revoke"


def test_a_secret_key_ref_reads_through_the_bound_reader_only() -> None:
    cred = settings.credential_from_spec("icr-pull", SPEC, source=SOURCE)
    assert isinstance(cred.provider, settings.IamProviderSettings)
    with pytest.raises(ConfigError, match=r"spec\.provider\.apikey\.secret_key_ref: .*RegistryCredential controller"):
        cred.provider.apikey.load()
    asked: list[tuple[str, str, str]] = []

    def reader(namespace: str, name: str, key: str) -> str:
        asked.append((namespace, name, key))
        return " the-admin-key\n"

    bound = settings.with_secret_reader(cred, reader)
    assert isinstance(bound.provider, settings.IamProviderSettings)
    assert bound.provider.apikey.load().reveal() == "the-admin-key"
    assert asked == [("rotator-system", "icr-admin", "apikey")]
    assert bound.provider.apikey.describe() == "secret:rotator-system/icr-admin#apikey"
    with pytest.raises(ConfigError, match="is empty"):
        settings.with_secret_reader(cred, lambda *_: "  ").provider.apikey.load()  # type: ignore[union-attr]


def test_a_bad_spec_names_each_camel_case_field_at_once() -> None:
    spec = spec_with(maxAge="30 days", deletionPolicy="Delete")
    spec["provider"] = {**SPEC["provider"], "service_id": "x", "endpoint": "http://iam.lab.example"}
    spec["schedule"] = {"interval": "7d", "retryBackoff": "10m", "retryBackoffMax": "5m"}
    message = refused(spec)
    for line in (
        f"{SOURCE}: spec.maxAge: '30 days' is not a duration",
        f"{SOURCE}: spec.deletionPolicy: 'Delete' is not 'Retain' or 'Revoke'",
        f"{SOURCE}: spec.provider.service_id: unknown field; known fields here: kind, endpoint, accountId, serviceId",
        f"{SOURCE}: spec.schedule.retryBackoffMax: must not be shorter than retryBackoff",
    ):
        assert line in message
    provider = refused(spec_with(provider={**SPEC["provider"], "endpoint": "http://iam.lab.example"}))
    assert "spec.provider.endpoint: 'http://iam.lab.example' is plain http" in provider
    assert "set spec.provider.allowInsecureHttp: true" in provider


def test_a_spec_refuses_relative_paths_and_never_echoes_a_key() -> None:
    relative = refused(spec_with(provider={**SPEC["provider"], "apikey": {"file": "keys/apikey"}}))
    # A secret source's values are never shown, not even its path.
    assert "spec.provider.apikey.file: (value hidden) is a relative path" in relative
    absolute = settings.credential_from_spec(
        "icr-pull", spec_with(provider={**SPEC["provider"], "apikey": {"file": "/keys/apikey"}}), source=SOURCE
    )
    assert isinstance(absolute.provider, settings.IamProviderSettings)
    assert absolute.provider.apikey.describe() == "file:/keys/apikey"
    inline = refused(spec_with(provider={**SPEC["provider"], "apikey": "AbCdEf0123456789-inline-key"}))
    assert "spec.provider.apikey: expected a mapping, got (value hidden)" in inline
    assert "AbCdEf0123456789-inline-key" not in inline


def test_a_config_file_is_snake_case_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, with_change("credentials[0].maxAge", "30d"))
    assert "credentials[0].maxAge: unknown field; known fields here: provider, registry" in str(info.value)


def test_a_config_file_may_name_a_secret_key_ref(tmp_path: Path) -> None:
    """Accepted (a controller may bind it), and reading it unbound says what is missing."""
    doc = with_change("credentials[0].provider.apikey", {"secret_key_ref": REF})
    apikey = load(tmp_path, doc).credential("icr-pull").provider.apikey
    assert isinstance(apikey, settings.SecretSource) and apikey.secret_key_ref == settings.SecretKeyRef(**REF)
    with pytest.raises(ConfigError, match=r"credentials\[0\]\.provider\.apikey\.secret_key_ref: key apikey of Secret"):
        apikey.load()
    both = with_change("credentials[0].provider.apikey", {"secret_key_ref": REF, "env": "X"})
    with pytest.raises(ConfigError, match="give exactly one of file"):
        load(tmp_path, both)


def test_the_logged_view_of_a_bound_credential_names_the_secret_only() -> None:
    """``redacted()`` shows where the key is; the reader (a client holding a lock) is neither copied nor shown."""
    import threading

    class Client:
        def __init__(self) -> None:
            self.lock = threading.Lock()  # cannot be deep-copied

        def read(self, namespace: str, name: str, key: str) -> str:
            return "the-admin-key"

    cred = settings.with_secret_reader(settings.credential_from_spec("icr-pull", SPEC, source=SOURCE), Client().read)
    view = settings.Settings(source=Path("cluster"), credentials=(cred,)).redacted()
    assert view["credentials"][0]["provider"]["apikey"] == "secret:rotator-system/icr-admin#apikey"
    assert view["credentials"][0]["deletion_policy"] == "Retain" and "the-admin-key" not in repr(view)
