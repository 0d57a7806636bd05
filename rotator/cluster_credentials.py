"""The cluster's RegistryCredentials as credentials of a command (``rotator status|plan|rotate|reconcile|check``).

With ``credentials_from: cluster | both`` the daemon manages the resources; a command run by hand must see the
same credentials, or ``rotator status`` of a cluster-only set-up shows nothing. Each resource is admitted as
the controller admits it (``regcred_controller.admit``: the same spec parsing, namespace rule, duplicate rule
and secretKeyRef reader), so a command works on exactly what the daemon manages; one the controller refuses
is left out with a note naming it and why. ``credentials_from: file`` makes no Kubernetes request at all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from rotator.kubecore import CoreV1
from rotator.settings import Settings

LIST_TIMEOUT_S = 10.0  # an API server that does not answer ends the command, it does not hang it


def with_cluster_credentials(cfg: Settings, api_client: Any, *, note: Callable[[str], None]) -> Settings:
    """``cfg`` with the credentials of the cluster's RegistryCredentials added after the file's (``cfg``
    itself when ``credentials_from`` is ``file``). ``note`` gets one line for each resource left out: being
    deleted, or refused (InvalidSpec, DuplicateName). Raises RotatorError saying what to do when the resources
    cannot be listed (API server unreachable, definition missing, no right to list them)."""
    if cfg.credentials_from == "file":
        return cfg
    from rotator.regcred_controller import admit, list_resources, secret_reader
    from rotator.regcred_status import Refusal

    items = list_resources(api_client, timeout_s=LIST_TIMEOUT_S)
    reader = secret_reader(CoreV1(api_client))
    added = []
    for obj in items:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name", ""))
        if meta.get("deletionTimestamp"):
            released = "the daemon releases it; with deletionPolicy Revoke, once its keys are revoked"
            note(f"RegistryCredential {name} left out: being deleted ({released})")
            continue
        cred = admit(name, obj.get("spec") or {}, file=cfg, reader=reader)
        if isinstance(cred, Refusal):
            note(f"RegistryCredential {name} left out ({cred.reason}): {'; '.join(cred.message.splitlines())}")
            continue
        added.append(cred)
    return dataclasses.replace(cfg, credentials=(*cfg.credentials, *added))
