"""The small interfaces the reconciler drives. Adapters in ``rotator/adapters`` implement them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from rotator.journal import CredentialJournal, RequestBook, Vault
from rotator.model import KeyInfo, MintedKey, RegistryAuth, SecretStr, TargetRef, TargetState, VerifyResult

# Told what a write is about to replace (the rollback snapshot must hold what the target really held).
Replacing = Callable[[TargetState], None]


class Clock(Protocol):
    def now(self) -> dt.datetime: ...

    def sleep(self, seconds: float) -> None: ...


class CredentialProvider(Protocol):
    """Mints and revokes the rotated credential (IBM IAM API keys, Docker Hub tokens).

    Ownership: a key is rotator's when its name starts with ``OWNED_PREFIX`` + credential name
    and its description carries the rotator tag. Every mutating call on a key that is not owned
    raises ``NotOwnedError`` before any request is sent.
    """

    kind: str  # "ibm-iam" | "dockerhub"
    username: str  # the registry username that goes with the key ("iamapikey", a Docker ID)
    # True when identify() answers for any value, so None means "none of the keys we manage" (IAM);
    # False when it cannot tell (Docker Hub): then no unknown key is swept while a target holds such a value.
    identifies_values: bool

    def mint(self, *, credential: str, rotation_id: str) -> MintedKey: ...

    def list_owned(self, *, credential: str) -> list[KeyInfo]: ...

    def get(self, key_id: str) -> KeyInfo | None: ...

    def identify(self, value: SecretStr) -> KeyInfo | None:
        """Which key a value belongs to (None when the provider does not know it)."""
        ...

    def disable(self, key_id: str) -> None: ...

    def enable(self, key_id: str) -> None: ...

    def delete(self, key_id: str) -> None: ...

    def check_access(self) -> None:
        """Raise if the admin credential cannot list/manage the keys (for ``rotator check``)."""
        ...


class RegistryVerifier(Protocol):
    """Proves that a username/password pulls the given images (HEAD of each manifest)."""

    def verify(self, *, server: str, auth: RegistryAuth, images: Sequence[str]) -> VerifyResult: ...


class SecretSink(Protocol):
    """Where pull secrets live (Kubernetes, Code Engine)."""

    name: str
    # What the current fan-out does (reason, message, warning), for sinks that record events on what they write.
    activity: tuple[str, str, bool] | None

    def resolve_targets(self) -> list[TargetRef]: ...

    def in_scope(self, target: TargetRef) -> bool:
        """Whether the config selects this target right now (events name targets the config may not)."""
        ...

    def read_state(self, target: TargetRef, server: str) -> TargetState:
        """The target as stored: exists, our entry (as the kubelet would read it), refusal reason."""
        ...

    def write_entry(self, target: TargetRef, auth: RegistryAuth, *, replacing: Replacing | None = None) -> str:
        """Create or merge our entry, keeping other entries; "created", "updated", "unchanged" or "skipped".
        ``replacing`` is told the state each write attempt is about to replace, before it is sent."""
        ...

    def remove_entry(self, target: TargetRef, server: str) -> None:
        """Undo a create (delete a secret rotator created) or drop our entry."""
        ...

    def check_writable(self, targets: list[TargetRef]) -> list[str]:
        """For ``rotator check``: the targets a write would be refused on, without writing."""
        ...

    def service_account_missing(self, target: TargetRef) -> list[str]:
        """For ``rotator plan``: listed service accounts that do not reference the secret yet."""
        ...


class StateStore(Protocol):
    """Durable journal (no secrets) and vault (key values) per credential."""

    def load(self, credential: str) -> CredentialJournal: ...

    def save(self, credential: str, journal: CredentialJournal) -> None: ...

    def load_requests(self, credential: str) -> RequestBook:
        """Accepted requests and leak reports (written by the API before it answers)."""
        ...

    def save_requests(self, credential: str, book: RequestBook) -> None: ...

    def load_vault(self, credential: str) -> Vault: ...

    def save_vault(self, credential: str, vault: Vault) -> None: ...

    def lock(self, credential: str) -> AbstractContextManager[None]:
        """Held for a whole reconcile pass; raises ``LockedError`` when another process holds it."""
        ...

    def check(self) -> None:
        """Raise if the store cannot be read and written."""
        ...


class DaemonControl(Protocol):
    """What the HTTP API (``rotator/server.py``) asks of the running daemon."""

    def alive(self) -> bool:
        """The event loop is turning (for /healthz)."""
        ...

    def readiness(self) -> dict[str, bool]:
        """Named readiness conditions, e.g. config_loaded, state_store, leadership_known (for /readyz)."""
        ...

    def leader(self) -> tuple[bool, str | None]:
        """(this replica leads, identity of the current leader or None when unknown)."""
        ...

    def credentials(self) -> list[dict[str, Any]]:
        """``rotator status --json`` for every credential."""
        ...

    def request_rotation(
        self,
        name: str,
        *,
        reason: str,
        emergency: bool = False,
        leaked_key_id: str | None = None,
        principal: str = "rotator",
        idempotency_key: str = "",
        fingerprint: str = "",
    ) -> tuple[str, bool]:
        """Record the request durably, then queue it or join the rotation queued or in progress: (rotation id,
        joined). A repeated ``idempotency_key`` of ``principal`` answers the first id (joined).
        Raises ``NotFoundError`` for an unknown credential, ``RequestRefused`` for a key id that is not the
        credential's or a reused Idempotency-Key with another request."""
        ...

    def rotation(self, rotation_id: str) -> dict[str, Any] | None:
        """A rotation's state: queued, running (with phase), or its result; None when unknown."""
        ...
