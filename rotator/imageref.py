"""Image references and registry hosts, the way Docker and the kubelet read them. Pure.

- ``us.icr.io/team/app:1.0``, ``127.0.0.1:5000/team/app@sha256:<hex>``, ``localhost/app``: the first
  path component is a registry host when it holds a ``.`` or a ``:`` or is ``localhost``.
- ``nginx``, ``team/app``, ``docker.io/team/app``, ``index.docker.io/...``: Docker Hub, whose v2 API is
  served by ``registry-1.docker.io``; single-name Hub repositories live under ``library/``.
- A dockerconfigjson server key (``us.icr.io``, ``https://index.docker.io/v1/``, ``127.0.0.1:5000``)
  maps to the same host names, so an image and a key can be compared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

DOCKER_HUB = "registry-1.docker.io"
HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")
_HOST_RE = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::[0-9]{1,5})?")
_DIGEST_HEX = {"sha256": 64, "sha512": 128}


class ImageRefError(ValueError):
    """An image reference or server key that cannot be read; the message names the problem."""


@dataclass(frozen=True, kw_only=True)
class ImageRef:
    registry: str  # API host, lower case, with port when given: "us.icr.io", "registry-1.docker.io"
    repository: str  # "team/app", "library/nginx"
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        sep = "@" if self.digest else ":"
        return f"{self.registry}/{self.repository}{sep}{self.reference}"


def normalize_host(host: str) -> str:
    """Lower-cased host with Docker Hub's aliases folded into ``registry-1.docker.io``."""
    host = host.strip().lower()
    return DOCKER_HUB if host in HUB_ALIASES else host


def registry_for_server(server: str) -> str:
    """The API host a dockerconfigjson key stands for: scheme and path dropped, Hub aliases folded."""
    text = server.strip()
    if not text:
        raise ImageRefError("empty registry server key")
    host = urlsplit(text).netloc if "://" in text else text.split("/", 1)[0]
    if not host or not _HOST_RE.fullmatch(host):
        raise ImageRefError(f"registry server key {server[:80]!r} has no valid host")
    return normalize_host(host)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost: Docker treats these as plain-HTTP registries by default."""
    name = host.lower()
    if name.startswith("["):
        name = name[1 : name.find("]")]
    else:
        name = name.rsplit(":", 1)[0]
    return name in ("localhost", "::1") or re.fullmatch(r"127(?:\.[0-9]{1,3}){3}", name) is not None


def plain_http_remote(url: str) -> bool:
    """An http:// URL to a host that is not loopback: what it carries is readable on the wire. The host
    comes from the parsed URL (never from text before an ``@``: ``http://127.0.0.1:80@evil.example/``)."""
    parts = urlsplit(url)
    host = parts.hostname or ""  # without user-info, port and brackets
    return parts.scheme.lower() == "http" and not is_loopback(f"[{host}]" if ":" in host else host)


def parse_image(text: str) -> ImageRef:
    ref = text.strip()
    if not ref:
        raise ImageRefError("empty image reference")
    if "://" in ref:
        raise ImageRefError(f"image reference {ref[:80]!r} must not carry a URL scheme")
    name, digest = _split_digest(ref)
    host, path = _split_host(name)
    path, tag = _split_tag(path)
    if host == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not REPOSITORY_RE.fullmatch(path):
        raise ImageRefError(f"image {ref[:80]!r}: repository {path[:80]!r} is not a valid lower-case name")
    return ImageRef(registry=host, repository=path, tag=tag, digest=digest)


def _split_digest(ref: str) -> tuple[str, str | None]:
    if "@" not in ref:
        return ref, None
    name, digest = ref.rsplit("@", 1)
    algorithm, _, hexpart = digest.partition(":")
    size = _DIGEST_HEX.get(algorithm)
    valid = DIGEST_RE.fullmatch(digest) and (size is None or re.fullmatch(rf"[a-f0-9]{{{size}}}", hexpart))
    if not valid:
        raise ImageRefError(f"image {ref[:80]!r}: digest is not <algorithm>:<hex>")
    return name, digest


def _split_host(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        if not _HOST_RE.fullmatch(first):
            raise ImageRefError(f"image {name[:80]!r}: registry host {first[:80]!r} is not valid")
        return normalize_host(first), rest
    return DOCKER_HUB, name


def _split_tag(path: str) -> tuple[str, str | None]:
    last_slash = path.rfind("/")
    colon = path.rfind(":")
    if colon <= last_slash:
        return path, None
    tag = path[colon + 1 :]
    if not TAG_RE.fullmatch(tag):
        raise ImageRefError(f"tag {tag[:80]!r} is not valid")
    return path[:colon], tag
