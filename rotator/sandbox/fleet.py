"""Several independent Kubernetes emulators in one sandbox (``rotator sandbox --clusters N``).

Cluster 1 is the ``kubernetes`` service with today's port, tokens, files and kubeconfig context
``sandbox``; cluster i > 1 is the service ``kubernetes-i`` with its own port, store, TLS
certificate and tokens. With N > 1 the one kubeconfig names the clusters ``cluster-1`` ..
``cluster-N`` (a context each) and keeps ``sandbox`` as a second context for cluster 1, so
``config/sandbox.yaml`` and ``--context sandbox`` still reach it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

FIRST_SERVICE = "kubernetes"
SINGLE_CONTEXT = "sandbox"
KUBE_SPEC = "rotator.sandbox.kube:KubeEmulator"
# Cluster i > 1 listens at port base + 5 + i: after the seven fixed services (offsets 0..6).
EXTRA_OFFSET = 5
MAX_CLUSTERS = 50  # ports stay inside a small, predictable range above the port base


def service_name(index: int) -> str:
    return FIRST_SERVICE if index == 1 else f"{FIRST_SERVICE}-{index}"


def extra_services(count: int) -> list[tuple[str, int, str]]:
    """(service, port offset, class) of clusters 2..count."""
    return [(service_name(i), EXTRA_OFFSET + i, KUBE_SPEC) for i in range(2, count + 1)]


def is_extra_service(name: str) -> bool:
    prefix, _, index = name.partition("-")
    return prefix == FIRST_SERVICE and index.isdigit() and 2 <= int(index) <= MAX_CLUSTERS


def cluster_name(service: str, count: int) -> str:
    """The cluster's name, which is also its kubeconfig context."""
    if count == 1:
        return SINGLE_CONTEXT
    return "cluster-1" if service == FIRST_SERVICE else "cluster-" + service.rsplit("-", 1)[1]


def derived_token(seed_token: str, service: str, role: str) -> str:
    """A bearer token of cluster ``service``, stable across restarts with the same seed and unlike
    every other cluster's (a token of one cluster is refused by the others, as real clusters do)."""
    digest = hmac.new(seed_token.encode(), f"{service}/{role}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class KubeconfigEntry:
    context: str
    user: str
    server: str
    ca_data: str
    token: str


def kubeconfig(entries: list[KubeconfigEntry], aliases: dict[str, str] | None = None) -> str:
    """One kubeconfig with a cluster, a user and a context per entry; ``aliases`` adds contexts
    (alias -> an entry's context) for the same cluster and user. The first entry is current."""
    clusters = "".join(
        f"- name: {e.context}\n  cluster:\n    server: {e.server}\n    certificate-authority-data: {e.ca_data}\n"
        for e in entries
    )
    users = "".join(f"- name: {e.user}\n  user:\n    token: {e.token}\n" for e in entries)
    by_context = {e.context: e for e in entries}
    contexts = [(e.context, e) for e in entries] + [(a, by_context[c]) for a, c in (aliases or {}).items()]
    context_text = "".join(
        f"- name: {name}\n  context:\n    cluster: {e.context}\n    user: {e.user}\n" for name, e in contexts
    )
    return (
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n{clusters}users:\n{users}contexts:\n{context_text}current-context: {entries[0].context}\n"
    )
