"""The RegistryCredential custom resource: its names and its status, as typed models.

The spec is one credential's config (``rotator.config_model``); the status follows the Kubernetes API
conventions for conditions, so ``kubectl wait --for=condition=Ready`` and GitOps health checks read it.
No I/O here: the controller decides a status with these and writes it only when it differs.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "rotator.example.com"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "RegistryCredential"
PLURAL = "registrycredentials"
SINGULAR = "registrycredential"
SHORT_NAMES = ("regcred",)
CATEGORIES = ("rotator",)
CRD_NAME = f"{PLURAL}.{GROUP}"
# Asks for a rotation when its value changes (any text; an RFC 3339 time by convention, like `cmctl renew`).
ROTATE_ANNOTATION = f"{GROUP}/rotate-requested-at"
# Holds a deleted resource until its keys are revoked (deletionPolicy: Revoke) or released (Retain).
FINALIZER = f"{GROUP}/revoke-keys"

ConditionType = Literal["Ready", "Rotating", "Degraded"]
ConditionStatus = Literal["True", "False", "Unknown"]


class _Status(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields from a newer writer are dropped."""

    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, frozen=True)


class Condition(_Status):
    type: ConditionType
    status: ConditionStatus
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)
    message: str = Field(default="", max_length=32768)
    last_transition_time: dt.datetime
    observed_generation: int | None = Field(default=None, ge=0)


class CurrentKey(_Status):
    id: str
    created_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None


class PendingRevocation(_Status):
    key_id: str
    action: Literal["disable", "delete"]
    at: dt.datetime


class LastRotation(_Status):
    id: str
    result: str
    reason: str = ""
    finished_at: dt.datetime | None = None


class TargetCounts(_Status):
    total: int = Field(default=0, ge=0)
    in_sync: int = Field(default=0, ge=0)
    out_of_sync: int = Field(default=0, ge=0)
    refused: int = Field(default=0, ge=0)


class RegistryCredentialStatus(_Status):
    observed_generation: int | None = Field(default=None, ge=0)
    conditions: tuple[Condition, ...] = ()
    current_key: CurrentKey | None = None
    next_rotation_at: dt.datetime | None = None
    pending_revocations: tuple[PendingRevocation, ...] = ()
    last_rotation: LastRotation | None = None
    targets: TargetCounts | None = None
    # The rotate-requested-at annotation value the last rotation served (so a repeat of it asks nothing).
    last_rotate_request: str | None = None

    def wire(self) -> dict[str, object]:
        """The status as the API server stores it (camelCase, RFC 3339 times, no empty fields)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def with_condition(
    conditions: tuple[Condition, ...],
    type_: ConditionType,
    status: ConditionStatus,
    reason: str,
    message: str,
    *,
    generation: int | None,
    now: dt.datetime,
) -> tuple[Condition, ...]:
    """``conditions`` with ``type_`` set; lastTransitionTime moves only when the status does (the convention)."""
    old = next((c for c in conditions if c.type == type_), None)
    since = old.last_transition_time if old is not None and old.status == status else now
    new = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )
    return tuple(new if c.type == type_ else c for c in conditions) if old else (*conditions, new)
