"""The durable record of each credential: its current key, the rotation in flight, the keys
waiting to be revoked, and recent results. Pure data with JSON (de)serialisation; no values of
keys are ever stored here (those live in the vault, see ``rotator/adapters/state.py``).

A rotation moves through phases; each step is recorded before and after it runs, so a restart
resumes from the phase it finds:

    minting -> minted -> verified -> distributing -> distributed -> stored_verified -> (promoted)
                  \\________________________\\_______________________\\-> rolling_back -> (failed)
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, fields, replace
from typing import Any

from rotator import redact

PHASES = (
    "minting",
    "minted",
    "verified",
    "distributing",
    "distributed",
    "stored_verified",
    "rolling_back",
)
HISTORY_LIMIT = 20


def _ts(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat() if value else None


def _parse_ts(value: Any) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if isinstance(value, str) and value else None


@dataclass(frozen=True, kw_only=True)
class KeyRef:
    id: str
    created_at: dt.datetime
    expires_at: dt.datetime | None = None


@dataclass(frozen=True, kw_only=True)
class Retired:
    """A replaced key on its way out: disabled at ``disable_at``, deleted ``delete_after`` later."""

    key_id: str
    retired_at: dt.datetime
    disable_at: dt.datetime
    disabled_at: dt.datetime | None = None
    delete_at: dt.datetime | None = None
    reason: str = "rotated"


@dataclass(frozen=True, kw_only=True)
class Rotation:
    id: str
    reason: str
    started_at: dt.datetime
    phase: str
    emergency: bool = False
    new_key: KeyRef | None = None
    # The key reported leaked: disabled as soon as the new one is verified, without grace.
    leaked_key_id: str | None = None
    # Why the rotation waits (verification inconclusive) and until when.
    waiting: str = ""
    retry_at: dt.datetime | None = None
    attempts: int = 0
    failure: str = ""
    # Transient step failures in a row: the wait before the next try grows with them (retry_backoff..max).
    retries: int = 0
    # Every target held the current key when this rotation started: a retired key is then held by none,
    # so a revocation that falls due may go ahead between the rotation's steps.
    started_in_sync: bool = False


@dataclass(frozen=True, kw_only=True)
class Result:
    rotation_id: str
    result: str  # "succeeded" | "failed" | "inconclusive"
    reason: str
    finished_at: dt.datetime
    detail: str = ""


@dataclass(frozen=True, kw_only=True)
class Lagging:
    """A fleet cluster rotator could not reach when it last tried: it may still hold a retired key, so
    that key stays enabled (see ``policy.held_by_unreachable``). Dropped once the cluster answers again
    (its targets are then compared like any other)."""

    cluster: str
    since: dt.datetime
    reason: str
    attempts: int = 1  # tries in a row that found it unreachable: the next one waits longer
    retry_at: dt.datetime | None = None


@dataclass(frozen=True, kw_only=True)
class CredentialJournal:
    current: KeyRef | None = None
    rotation: Rotation | None = None
    retired: tuple[Retired, ...] = ()
    last_success_at: dt.datetime | None = None
    history: tuple[Result, ...] = ()
    # After a failed attempt, planned rotations wait until then (emergencies do not).
    backoff_until: dt.datetime | None = None
    failures_in_a_row: int = 0
    # Fleet clusters that did not answer (out of sync until they do), oldest first.
    lagging: tuple[Lagging, ...] = ()

    @property
    def last_result(self) -> Result | None:
        return self.history[-1] if self.history else None

    def known_key_ids(self) -> set[str]:
        ids = {r.key_id for r in self.retired}
        if self.current:
            ids.add(self.current.id)
        if self.rotation and self.rotation.new_key:
            ids.add(self.rotation.new_key.id)
        return ids

    def with_result(self, result: Result) -> CredentialJournal:
        return replace(self, history=(*self.history, result)[-HISTORY_LIMIT:])


@dataclass(frozen=True, kw_only=True)
class Accepted:
    """A rotation request the API (or an event) accepted: written to the request book *before* it is
    answered, so a crash, a restart or a new leader serves it. ``id`` is the rotation id answered;
    ``joined`` means that id is a rotation already queued or in progress, and the record is kept only
    for accounting and Idempotency-Key replays."""

    id: str
    kind: str  # "rotate" | "leaked"
    reason: str
    principal: str
    requested_at: dt.datetime
    emergency: bool = False
    leaked_key_id: str | None = None
    idempotency_key: str = ""
    fingerprint: str = ""
    joined: bool = False
    state: str = "queued"  # queued | running | waiting | succeeded | failed | joined
    detail: str = ""
    finished_at: dt.datetime | None = None


@dataclass(frozen=True, kw_only=True)
class Leak:
    """A key reported leaked: the policy rotates it away (if current) and disables it without grace."""

    key_id: str
    reported_at: dt.datetime
    by: str
    request_id: str


@dataclass(frozen=True, kw_only=True)
class RequestBook:
    """Each credential's accepted requests and leak reports. Kept next to the journal in the same store
    but as its own record: the API writes it while a reconcile pass holds the journal."""

    requests: tuple[Accepted, ...] = ()
    leaks: tuple[Leak, ...] = ()

    def leaked_key_ids(self) -> frozenset[str]:
        return frozenset(leak.key_id for leak in self.leaks)


# -- JSON ------------------------------------------------------------------------------------


def _to_json(obj: Any) -> Any:
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    if isinstance(obj, dt.datetime):
        return _ts(obj)
    if isinstance(obj, tuple | list):
        return [_to_json(x) for x in obj]
    return {f.name: _to_json(getattr(obj, f.name)) for f in fields(obj)}


def _from_json(cls: type, data: dict[str, Any]) -> Any:
    kwargs: dict[str, Any] = {}
    nested = {"new_key": KeyRef, "current": KeyRef, "rotation": Rotation}
    lists = {"retired": Retired, "history": Result, "requests": Accepted, "leaks": Leak, "lagging": Lagging}
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if f.name in nested and isinstance(value, dict):
            value = _from_json(nested[f.name], value)
        elif f.name in lists:
            value = tuple(_from_json(lists[f.name], v) for v in value or [])
        elif isinstance(value, str) and (f.name.endswith("_at") or f.name.endswith("_until") or f.name == "since"):
            value = _parse_ts(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def dump(journal: CredentialJournal) -> dict[str, Any]:
    # Reasons and details quote upstream answers: scrubbed here, on the way to every store.
    result: dict[str, Any] = redact.clean_tree(_to_json(journal))
    result["version"] = 1
    return result


def load(data: dict[str, Any]) -> CredentialJournal:
    data = {k: v for k, v in data.items() if k != "version"}
    journal: CredentialJournal = _from_json(CredentialJournal, data)
    return journal


def dump_book(book: RequestBook) -> dict[str, Any]:
    result: dict[str, Any] = _to_json(book)
    result["version"] = 1
    return result


def load_book(data: dict[str, Any]) -> RequestBook:
    book: RequestBook = _from_json(RequestBook, {k: v for k, v in data.items() if k != "version"})
    return book


@dataclass(kw_only=True)
class Vault:
    """Key values rotator must be able to put back: kept only where secrets are kept (0600 file,
    Kubernetes Secret), never in the journal, logs or status."""

    current: str | None = None
    pending: str | None = None
    # Rollback material: each target's entry before this rotation wrote it.
    snapshot: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"current": self.current, "pending": self.pending, "snapshot": self.snapshot}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Vault:
        return cls(current=data.get("current"), pending=data.get("pending"), snapshot=data.get("snapshot"))
