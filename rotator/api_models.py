"""The HTTP API's request and response bodies as pydantic models.

``rotator/server.py`` parses every request body with them and sends every JSON answer through them,
and ``rotator/openapi.py`` publishes their JSON Schema, so the document cannot drift from the wire.
Response models forbid unknown fields: a key the daemon adds without declaring it here fails
loudly in the tests (a 500) instead of going out undocumented. Optional response fields are set
only when the daemon sends them (bodies are dumped with ``exclude_unset``), so an answer carries
exactly the keys it always did.
"""

from __future__ import annotations

from typing import Any, Literal

from annotated_types import MaxLen, MinLen
from pydantic import BaseModel, ConfigDict, Field

from rotator.metrics import PassErrorReason

REASON_MAX = 1024  # characters of a rotation reason
KEY_ID_MAX = 256


def _omittable(schema: dict[str, Any]) -> None:
    """An optional request field that may be left out but not sent as null: no ``default: null`` in its
    schema, which would make the document advertise a value the parser refuses."""
    schema.pop("default", None)


def optional(**field: Any) -> Any:
    """A field that may be absent but is never null."""
    return Field(default=None, json_schema_extra=_omittable, **field)


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def body(self) -> dict[str, Any]:
        """The JSON object sent: only the fields that were set, so a missing key stays missing."""
        return self.model_dump(mode="json", exclude_unset=True)


class RequestModel(ApiModel):
    """A request body: strict types (no coercion of 7 into "7"), every field a bounded string."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @classmethod
    def rule(cls, name: str) -> str:
        """What a valid value of ``name`` is, from the field's own constraints (the 400's message)."""
        field = cls.model_fields[name]
        low = max((m.min_length for m in field.metadata if isinstance(m, MinLen)), default=0)
        high = min(m.max_length for m in field.metadata if isinstance(m, MaxLen))
        kind = "a non-empty string" if low >= 1 else "a string"
        return f"{name} must be {kind} of at most {high} characters"


class RotateRequest(RequestModel):
    reason: str = optional(max_length=REASON_MAX, description="Why; default: requested through the API.")


class LeakRequest(RequestModel):
    key_id: str = optional(
        min_length=1, max_length=KEY_ID_MAX, description="The key reported leaked; default: the current key."
    )
    reason: str = optional(max_length=REASON_MAX, description="Why; default: key reported leaked.")


class Error(ApiModel):
    error: str
    detail: Any = optional(description="More about the error: field names, conditions, limits.")
    leader: str | None = Field(default=None, description="The leader's identity, on a follower's 503.")


class Health(ApiModel):
    status: Literal["ok"]


class Ready(ApiModel):
    status: Literal["ready"]
    conditions: dict[str, bool]


class RotationAccepted(ApiModel):
    rotation_id: str
    credential: str
    joined: bool = Field(
        description="True when the request joined a rotation already queued or in progress (waiting included), "
        "or repeated an Idempotency-Key (also across restarts)."
    )
    status_url: str


class LeakProgress(ApiModel):
    """A key reported leaked and its way out."""

    key_id: str
    reported_at: str | None = None
    reported_by: str | None = None
    request_id: str | None = None
    state: str = Field(description="current, being replaced, being rolled out, retired, disabled or deleted.")
    disabled_at: str | None = None


class Rotation(ApiModel):
    id: str
    credential: str
    state: str = Field(
        description="queued, running, waiting (retrying later, see retry_at), the result (succeeded, failed), "
        "or joined (a rotation that started first was still in progress; detail names it)."
    )
    phase: str | None = None
    waiting: str | None = Field(default=None, description="Why a waiting rotation waits.")
    retry_at: str | None = None
    emergency: bool = optional(description="True for a leak report's rotation.")
    requested_by: str | None = None
    leaks: list[LeakProgress] = optional(description="For a leak report: the key's way out.")
    reason: str | None = None
    detail: str | None = None
    requested_at: str | None = None
    finished_at: str | None = None


class RotationInProgress(ApiModel):
    id: str
    phase: str | None = None
    reason: str | None = None
    started_at: str | None = None
    waiting: str | None = None
    retry_at: str | None = None


class PendingRevocation(ApiModel):
    key_id: str
    step: str = Field(description="disable, then delete.")
    deadline: str | None = None
    reason: str | None = None


class ClusterSync(ApiModel):
    """A fleet cluster (targets.kubernetes as a list): in_sync, or out of sync since out_of_sync_since for
    reason (it did not answer), retried at retry_at; holds_old_key while that keeps the replaced key enabled."""

    name: str
    in_sync: bool
    out_of_sync_since: str | None = None
    reason: str | None = None
    retry_at: str | None = None
    holds_old_key: bool = optional()


class LastResult(ApiModel):
    rotation_id: str
    result: str
    reason: str | None = None
    finished_at: str | None = None
    detail: str | None = None


class PassesFailing(ApiModel):
    """Set while passes for the credential fail before they can act."""

    since: str
    failures_in_a_row: int
    reason: PassErrorReason
    detail: str
    next_retry_at: str


class CredentialStatus(ApiModel):
    """What ``rotator status --json`` shows for one credential: key ids, ages, deadlines."""

    name: str
    current_key_id: str | None = None
    current_key_created_at: str | None = None
    current_key_age_seconds: int | None = None
    current_key_expires_at: str | None = None
    max_age_seconds: int | None = None
    next_rotation_at: str | None = None
    next_rotation_reason: str | None = None
    rotation_in_progress: RotationInProgress | None = None
    revocations_pending: list[PendingRevocation] = optional()
    leaks: list[LeakProgress] = optional(
        description="Keys reported leaked: who reported them, when, and their way out."
    )
    clusters: list[ClusterSync] = optional()
    last_success_at: str | None = None
    last_result: LastResult | None = None
    passes_failing: PassesFailing | None = Field(default=None, description="null unless passes fail before acting.")


class CredentialList(ApiModel):
    credentials: list[CredentialStatus]


# The bodies the API parses and sends; openapi.py publishes these (and the models they use) as components.
REQUESTS: tuple[type[RequestModel], ...] = (RotateRequest, LeakRequest)
RESPONSES: tuple[type[ApiModel], ...] = (Error, Health, Ready, RotationAccepted, Rotation, CredentialList)
