"""The .dockerconfigjson merge keeps everything that is not ours."""

from __future__ import annotations

import base64
import json

import pytest

from rotator import dockerconfig
from rotator.model import RegistryAuth, SecretStr

AUTH = RegistryAuth(server="us.icr.io", username="iamapikey", password=SecretStr("new-key-value"))


def test_merge_keeps_other_registries_and_top_level_fields() -> None:
    """Only our server's entry changes; other entries and unknown fields survive byte-for-byte in meaning."""
    existing = json.dumps(
        {
            "auths": {
                "us.icr.io": {"username": "iamapikey", "password": "old", "auth": "x"},
                "ghcr.io": {"auth": base64.b64encode(b"bot:tok").decode(), "email": "a@b"},
            },
            "credsStore": "desktop",
        }
    ).encode()
    doc = json.loads(dockerconfig.merge(existing, AUTH))
    assert doc["credsStore"] == "desktop"
    assert doc["auths"]["ghcr.io"] == {"auth": base64.b64encode(b"bot:tok").decode(), "email": "a@b"}
    ours = doc["auths"]["us.icr.io"]
    assert ours["password"] == "new-key-value"
    assert base64.b64decode(ours["auth"]) == b"iamapikey:new-key-value"


def test_entry_reads_auth_like_the_kubelet() -> None:
    """When ``auth`` is present it wins over username/password, as the kubelet reads it."""
    doc = {
        "auths": {"us.icr.io": {"username": "u", "password": "p", "auth": base64.b64encode(b"iamapikey:k").decode()}}
    }
    entry = dockerconfig.entry(doc, "us.icr.io")
    assert entry is not None and entry.username == "iamapikey" and entry.password.reveal() == "k"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b"[]", id="not-object"),
        pytest.param(b'{"auths": []}', id="auths-not-object"),
    ],
)
def test_malformed_documents_are_refused_without_echoing_content(raw: bytes) -> None:
    """A malformed document raises, and the message does not repeat what was inside."""
    with pytest.raises(dockerconfig.DockerConfigError) as info:
        dockerconfig.parse(raw)
    assert raw.decode() not in str(info.value)


def test_without_removes_only_our_entry() -> None:
    """Rolling back a created entry leaves the others."""
    merged = dockerconfig.merge(b'{"auths": {"ghcr.io": {"auth": "eA=="}}}', AUTH)
    assert json.loads(dockerconfig.without(merged, "us.icr.io")) == {"auths": {"ghcr.io": {"auth": "eA=="}}}


def test_secret_str_never_shows_its_value() -> None:
    """repr/str/format of a SecretStr hide the value."""
    value = SecretStr("hunter2-long-value")
    assert "hunter2" not in repr(value) + str(value) + f"{value}" + repr(AUTH)
