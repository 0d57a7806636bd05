"""Schema 1 rewriting: what Docker's registry 2.8 serves an old client that does not accept schema 2.

Measured against docker-registry 2.8.2: a Docker schema 2 manifest fetched by tag without its type in
``Accept`` comes back as a signed ``application/vnd.docker.distribution.manifest.v1+prettyjws``
manifest (a libtrust JWS with an ES256 key the registry generated) when the image config's ``history``
covers every layer, and as 400 ``MANIFEST_INVALID`` otherwise. The digest is that of the payload
without its ``signatures`` block. v1 image IDs here are deterministic but not byte-identical to the
real registry's.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
# The gzip'ed empty tar that schema 1 uses as the blob of a history entry without a layer.
EMPTY_LAYER = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"
_INDENT = "   "


class ConversionError(ValueError):
    """The schema 2 manifest cannot be expressed in schema 1 (config without matching history)."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def libtrust_kid(public_key: ec.EllipticCurvePublicKey) -> str:
    """Docker's libtrust key id: base32 of sha256(SPKI DER)[:30], in 12 groups of 4."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i : i + 4] for i in range(0, 48, 4))


class Schema1Signer:
    """Rewrites schema 2 manifests to signed schema 1 with one EC P-256 key (fresh per process, like the real one)."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())

    def convert(self, *, name: str, tag: str, manifest: dict[str, Any], config: bytes) -> tuple[bytes, str]:
        """The signed schema 1 body and its digest (over the unsigned payload)."""
        payload = _go_json(_unsigned(name, tag, manifest, config), indent=3).encode()
        digest = "sha256:" + hashlib.sha256(payload).hexdigest()
        return self._sign(payload), digest

    def _sign(self, payload: bytes) -> bytes:
        # libtrust "pretty" JWS: the signatures block is spliced in before the payload's closing brace.
        body_end = len(payload.rstrip()[:-1].rstrip())
        tail = payload[body_end:]
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        protected = _b64url(_go_json({"formatLength": body_end, "formatTail": _b64url(tail), "time": stamp}).encode())
        signing_input = f"{protected}.{_b64url(payload)}".encode()
        r, s = decode_dss_signature(self.key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        numbers = self.key.public_key().public_numbers()
        jwk = {
            "crv": "P-256",
            "kid": libtrust_kid(self.key.public_key()),
            "kty": "EC",
            "x": _b64url(numbers.x.to_bytes(32, "big")),
            "y": _b64url(numbers.y.to_bytes(32, "big")),
        }
        signature = _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
        block = [{"header": {"jwk": jwk, "alg": "ES256"}, "signature": signature, "protected": protected}]
        rendered = json.dumps(block, indent=3).replace("\n", "\n" + _INDENT)
        return payload[:body_end] + f',\n{_INDENT}"signatures": {rendered}'.encode() + tail


def _unsigned(name: str, tag: str, manifest: dict[str, Any], config_bytes: bytes) -> dict[str, Any]:
    try:
        config = json.loads(config_bytes)
    except (ValueError, UnicodeDecodeError):
        raise ConversionError("image config is not JSON") from None
    history = config.get("history") if isinstance(config, dict) else None
    layers = [d.get("digest") for d in manifest.get("layers") or [] if isinstance(d, dict)]
    if not isinstance(history, list) or not history:
        raise ConversionError("image config has no history")
    if sum(1 for h in history if isinstance(h, dict) and not h.get("empty_layer")) != len(layers):
        raise ConversionError("image history does not match the layers")
    fs_layers: list[dict[str, str]] = []
    compat: list[dict[str, str]] = []
    parent = ""
    remaining = iter(layers)
    for index, entry in enumerate(history):
        blob = EMPTY_LAYER if entry.get("empty_layer") else str(next(remaining))
        top = index == len(history) - 1
        # v1 IDs chain the layer's hex digest to its parent; the top one also covers the config.
        seed = f"{blob.partition(':')[2]} {parent}" + (f" {config_bytes.decode()}" if top else "")
        v1_id = hashlib.sha256(seed.encode()).hexdigest()
        v1 = _top_v1(config, v1_id, parent, entry) if top else _v1(entry, v1_id, parent)
        fs_layers.insert(0, {"blobSum": blob})
        compat.insert(0, {"v1Compatibility": v1})
        parent = v1_id
    return {
        "schemaVersion": 1,
        "name": name,
        "tag": tag,
        "architecture": config.get("architecture", ""),
        "fsLayers": fs_layers,
        "history": compat,
    }


def _v1(entry: dict[str, Any], v1_id: str, parent: str) -> str:
    """A lower layer's v1Compatibility, fields in the order Go's struct marshals them."""
    v1: dict[str, Any] = {"id": v1_id}
    if parent:
        v1["parent"] = parent
    if entry.get("comment"):
        v1["comment"] = entry["comment"]
    v1["created"] = entry.get("created", "0001-01-01T00:00:00Z")
    v1["container_config"] = {"Cmd": [entry.get("created_by", "")]}
    if entry.get("author"):
        v1["author"] = entry["author"]
    if entry.get("empty_layer"):
        v1["throwaway"] = True
    return _go_json(v1)


def _top_v1(config: dict[str, Any], v1_id: str, parent: str, entry: dict[str, Any]) -> str:
    """The top layer's v1Compatibility: the image config without history/rootfs, plus the IDs (keys sorted)."""
    v1 = {k: v for k, v in config.items() if k not in ("history", "rootfs")}
    v1["id"] = v1_id
    if parent:
        v1["parent"] = parent
    if entry.get("empty_layer"):
        v1["throwaway"] = True
    return _go_json(v1, sort_keys=True)


def _go_json(value: Any, *, indent: int | None = None, sort_keys: bool = False) -> str:
    """JSON as Go's encoding/json writes it: compact or indented, UTF-8, with <, > and & escaped."""
    separators = (",", ": ") if indent is not None else (",", ":")
    text = json.dumps(value, indent=indent, separators=separators, ensure_ascii=False, sort_keys=sort_keys)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
