"""Content store of the registry emulator: blobs by digest, repositories of manifests and tags.

Pure data and validation, no HTTP: ``registry.py`` maps ``StoreError`` to registry error bodies.
Manifest selection by ``Accept`` follows Docker's registry 2.8 (see ``Store.negotiate``).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import tarfile
from dataclasses import dataclass, field
from typing import Any

from rotator.sandbox.registry_schema1 import SCHEMA1_SIGNED, ConversionError, Schema1Signer

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = frozenset({OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})

# Layer and config media types per manifest flavour (seeded images here; tests/realstack.py's pushed ones).
IMAGE_FLAVOURS = {
    "oci": (OCI_MANIFEST, "application/vnd.oci.image.config.v1+json", "application/vnd.oci.image.layer.v1.tar+gzip"),
    "docker": (
        DOCKER_MANIFEST,
        "application/vnd.docker.container.image.v1+json",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
    ),
}

NAME_RE = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST_HEX = {"sha256": 64, "sha512": 128}


class StoreError(Exception):
    """A registry error: ``code`` is the distribution error code, ``status`` its HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def is_digest(reference: str) -> bool:
    """True for a well-formed ``algorithm:hex`` digest of a supported algorithm."""
    algorithm, sep, hexpart = reference.partition(":")
    size = _DIGEST_HEX.get(algorithm)
    return bool(sep) and size is not None and len(hexpart) == size and re.fullmatch(r"[a-f0-9]+", hexpart) is not None


def check_digest(reference: str) -> str:
    if not is_digest(reference):
        raise StoreError(400, "DIGEST_INVALID", "provided digest did not match uploaded content")
    return reference


def check_name(name: str) -> str:
    if len(name) > 255 or NAME_RE.fullmatch(name) is None:
        raise StoreError(400, "NAME_INVALID", "invalid repository name")
    return name


def check_reference(reference: str) -> str:
    """A tag or a digest; anything with a colon must be a valid digest."""
    if ":" in reference:
        return check_digest(reference)
    if TAG_RE.fullmatch(reference) is None:
        raise StoreError(400, "TAG_INVALID", "manifest tag did not match URI")
    return reference


def accepted_types(accept_headers: list[str]) -> set[str]:
    """Media types named in every ``Accept`` header, parameters dropped (``*/*`` counts for nothing)."""
    types: set[str] = set()
    for header in accept_headers:
        for item in header.split(","):
            media_type = item.split(";", 1)[0].strip().lower()
            if media_type:
                types.add(media_type)
    return types


@dataclass(frozen=True)
class Manifest:
    media_type: str
    body: bytes
    # A signed schema 1 manifest's digest covers its payload without the signatures.
    payload_digest: str | None = None

    @property
    def digest(self) -> str:
        return self.payload_digest or digest_of(self.body)


@dataclass
class Repository:
    manifests: dict[str, Manifest] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    blobs: set[str] = field(default_factory=set)


class Store:
    """Blobs (content-addressed, shared) and repositories that link blobs and hold manifests."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.repos: dict[str, Repository] = {}
        self.schema1 = Schema1Signer()

    # -- reading -------------------------------------------------------------------------------
    def repo(self, name: str) -> Repository:
        repo = self.repos.get(name)
        if repo is None:
            raise StoreError(404, "NAME_UNKNOWN", "repository name not known to registry")
        return repo

    def manifest(self, name: str, reference: str) -> Manifest:
        repo = self.repo(name)
        digest = repo.tags.get(reference, reference)
        found = repo.manifests.get(digest)
        if found is None:
            raise StoreError(404, "MANIFEST_UNKNOWN", "manifest unknown")
        return found

    def negotiate(self, name: str, reference: str, accepted: set[str]) -> Manifest:
        """What Docker's registry 2.8 answers for ``reference`` given the client's Accept types.

        OCI manifests and indexes are never rewritten: without their type in Accept they are 404
        ``MANIFEST_UNKNOWN``. By tag, a Docker manifest list falls back to its linux/amd64 entry and a
        Docker schema 2 manifest is rewritten to signed schema 1 (400 ``MANIFEST_INVALID`` when its
        config's history cannot describe the layers). By digest, the stored manifest is returned.
        """
        manifest = self.manifest(name, reference)
        kind = manifest.media_type
        if kind == OCI_MANIFEST and kind not in accepted:
            raise StoreError(
                404, "MANIFEST_UNKNOWN", "OCI manifest found, but accept header does not support OCI manifests"
            )
        if kind == OCI_INDEX and kind not in accepted:
            raise StoreError(404, "MANIFEST_UNKNOWN", "OCI index found, but accept header does not support OCI indexes")
        if is_digest(reference):
            return manifest
        if kind == DOCKER_LIST and kind not in accepted:
            manifest = self.manifest(name, _default_platform(manifest))
        if manifest.media_type == DOCKER_MANIFEST and DOCKER_MANIFEST not in accepted:
            return self._to_schema1(name, reference, manifest)
        return manifest

    def _to_schema1(self, name: str, tag: str, manifest: Manifest) -> Manifest:
        document = json.loads(manifest.body)
        config = self.blobs.get(str((document.get("config") or {}).get("digest")))
        try:
            if config is None:
                raise ConversionError("config blob unknown")
            body, digest = self.schema1.convert(name=name, tag=tag, manifest=document, config=config)
        except ConversionError:
            raise StoreError(400, "MANIFEST_INVALID", "manifest invalid") from None
        return Manifest(SCHEMA1_SIGNED, body, digest)

    def blob(self, name: str, digest: str) -> bytes:
        repo = self.repo(name)
        data = self.blobs.get(digest)
        if digest not in repo.blobs or data is None:
            raise StoreError(404, "BLOB_UNKNOWN", "blob unknown to registry")
        return data

    def tag_page(self, name: str, *, limit: int | None, last: str) -> tuple[list[str], bool]:
        """Sorted tags after ``last``, at most ``limit``; the flag says whether more follow."""
        tags = sorted(t for t in self.repo(name).tags if t > last)
        if limit is None or len(tags) <= limit:
            return tags, False
        return tags[:limit], True

    # -- writing -------------------------------------------------------------------------------
    def put_blob(self, name: str, data: bytes, expected: str | None = None) -> str:
        digest = digest_of(data, expected.partition(":")[0] if expected else "sha256")
        if expected is not None and digest != expected:
            raise StoreError(400, "DIGEST_INVALID", "provided digest did not match uploaded content")
        self.blobs[digest] = data
        self.repos.setdefault(name, Repository()).blobs.add(digest)
        return digest

    def mount_blob(self, name: str, digest: str, source: str) -> bool:
        """Link a blob another repository already has (cross-repository mount)."""
        src = self.repos.get(source)
        if src is None or digest not in src.blobs or digest not in self.blobs:
            return False
        self.repos.setdefault(name, Repository()).blobs.add(digest)
        return True

    def put_manifest(self, name: str, reference: str, content_type: str, body: bytes) -> str:
        media_type = _manifest_media_type(content_type, body)
        by_digest = is_digest(reference)
        if by_digest and digest_of(body, reference.partition(":")[0]) != reference:
            raise StoreError(400, "DIGEST_INVALID", "provided digest did not match uploaded content")
        repo = self.repos.get(name) or Repository()
        self._check_references(repo, media_type, body)
        self.repos[name] = repo
        manifest = Manifest(media_type, body)  # stored under its sha256 digest
        repo.manifests[manifest.digest] = manifest
        if not by_digest:
            repo.tags[reference] = manifest.digest
        return manifest.digest

    def _check_references(self, repo: Repository, media_type: str, body: bytes) -> None:
        document = json.loads(body)
        if media_type in INDEX_TYPES:
            wanted = [m.get("digest") for m in document.get("manifests") or [] if isinstance(m, dict)]
            missing = [d for d in wanted if d not in repo.manifests]
        else:
            parts = [document.get("config"), *(document.get("layers") or [])]
            wanted = [p.get("digest") for p in parts if isinstance(p, dict)]
            missing = [d for d in wanted if d not in repo.blobs]
        if missing or not wanted:
            raise StoreError(400, "MANIFEST_BLOB_UNKNOWN", "blob unknown to registry")

    def seed_image(self, reference: str, flavour: str) -> str:
        """Build a tiny image (config + one gzip layer) and tag it; returns the manifest digest."""
        name, _, tag = reference.rpartition(":")
        manifest_type, config_type, layer_type = IMAGE_FLAVOURS[flavour]
        layer, diff_id = _layer(name)
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "created": "2024-01-01T00:00:00Z",
                "config": {"Cmd": ["/hello"], "Labels": {"org.example.repository": name}},
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "rotator sandbox seed"}],
            },
            separators=(",", ":"),
        ).encode()
        descriptors = []
        for data, media_type in ((config, config_type), (layer, layer_type)):
            descriptors.append({"mediaType": media_type, "digest": self.put_blob(name, data), "size": len(data)})
        manifest = {"schemaVersion": 2, "mediaType": manifest_type, "config": descriptors[0], "layers": descriptors[1:]}
        body = json.dumps(manifest, indent=3).encode()
        return self.put_manifest(name, tag, manifest_type, body)

    # -- persistence ---------------------------------------------------------------------------
    def dump(self) -> dict[str, Any]:
        return {
            "blobs": {d: base64.b64encode(b).decode() for d, b in self.blobs.items()},
            "repositories": {
                name: {
                    "manifests": {
                        d: {"media_type": m.media_type, "body": base64.b64encode(m.body).decode()}
                        for d, m in repo.manifests.items()
                    },
                    "tags": dict(repo.tags),
                    "blobs": sorted(repo.blobs),
                }
                for name, repo in self.repos.items()
            },
        }

    def load(self, data: dict[str, Any]) -> None:
        self.blobs = {d: base64.b64decode(b) for d, b in data.get("blobs", {}).items()}
        self.repos = {}
        for name, raw in data.get("repositories", {}).items():
            manifests = {
                d: Manifest(m["media_type"], base64.b64decode(m["body"])) for d, m in raw.get("manifests", {}).items()
            }
            self.repos[name] = Repository(manifests, dict(raw.get("tags", {})), set(raw.get("blobs", [])))


def _manifest_media_type(content_type: str, body: bytes) -> str:
    """The manifest's type from Content-Type, else from its ``mediaType`` field; must be JSON."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise StoreError(400, "MANIFEST_INVALID", "manifest invalid: not JSON") from None
    if not isinstance(document, dict) or document.get("schemaVersion") != 2:
        raise StoreError(400, "MANIFEST_INVALID", "manifest invalid: schemaVersion 2 expected")
    declared = content_type.split(";", 1)[0].strip().lower()
    field_type = document.get("mediaType")
    media_type = declared if declared in MANIFEST_TYPES else field_type
    if media_type not in MANIFEST_TYPES:
        raise StoreError(400, "MANIFEST_INVALID", "manifest invalid: unsupported manifest media type")
    if field_type is not None and field_type != media_type:
        raise StoreError(400, "MANIFEST_INVALID", "manifest invalid: mediaType does not match Content-Type")
    return str(media_type)


def _default_platform(index: Manifest) -> str:
    """The linux/amd64 entry of a manifest list, which old clients get instead of the list."""
    for entry in json.loads(index.body).get("manifests") or []:
        platform = (entry.get("platform") if isinstance(entry, dict) else None) or {}
        if platform.get("os") == "linux" and platform.get("architecture") == "amd64":
            return str(entry.get("digest"))
    raise StoreError(404, "MANIFEST_UNKNOWN", "Could not find a manifest for the default platform")


def _layer(name: str) -> tuple[bytes, str]:
    """A reproducible gzip'ed tar with one file; returns it and its diff_id (digest of the tar)."""
    content = f"hello from {name}\n".encode()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size, info.mtime, info.mode = len(content), 0, 0o644
        tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), digest_of(tar_bytes)
