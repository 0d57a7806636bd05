"""Build, parse and merge ``.dockerconfigjson`` documents. Pure: bytes in, bytes out.

Merging keeps every other registry's entry and every unknown top-level field (``credsStore``,
``HttpHeaders``...) as it was; only the entry for our server key changes.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from rotator.model import RegistryAuth, SecretStr


class DockerConfigError(ValueError):
    """The document is not a usable .dockerconfigjson (message never echoes its content)."""


def parse(raw: bytes | str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise DockerConfigError("is not valid JSON") from None
    if not isinstance(doc, dict):
        raise DockerConfigError("is not a JSON object")
    auths = doc.get("auths", {})
    if not isinstance(auths, dict):
        raise DockerConfigError('"auths" is not a JSON object')
    return doc


def entry(doc: dict[str, Any], server: str) -> RegistryAuth | None:
    """Our entry as a kubelet would read it: ``auth`` wins over username/password when present."""
    raw = doc.get("auths", {}).get(server)
    if not isinstance(raw, dict):
        return None
    username, password = raw.get("username"), raw.get("password")
    if isinstance(raw.get("auth"), str) and raw["auth"]:
        try:
            username, _, password = base64.b64decode(raw["auth"], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
    if not isinstance(username, str) or not isinstance(password, str) or not password:
        return None
    email = raw.get("email") if isinstance(raw.get("email"), str) else None
    return RegistryAuth(server=server, username=username, password=SecretStr(password), email=email)


def _entry_json(auth: RegistryAuth) -> dict[str, str]:
    password = auth.password.reveal()
    out = {
        "username": auth.username,
        "password": password,
        "auth": base64.b64encode(f"{auth.username}:{password}".encode()).decode(),
    }
    if auth.email:
        out["email"] = auth.email
    return out


def merge(existing: bytes | None, auth: RegistryAuth) -> bytes:
    """``existing`` with our entry set (a new document when None)."""
    doc = parse(existing) if existing else {}
    auths = dict(doc.get("auths", {}))
    auths[auth.server] = _entry_json(auth)
    doc["auths"] = auths
    return dump(doc)


def without(existing: bytes, server: str) -> bytes:
    """``existing`` with our entry removed (other entries kept)."""
    doc = parse(existing)
    auths = dict(doc.get("auths", {}))
    auths.pop(server, None)
    doc["auths"] = auths
    return dump(doc)


def dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def authfile(auth: RegistryAuth) -> bytes:
    """A minimal document holding only ``auth`` (for skopeo --authfile and similar)."""
    return merge(None, auth)
