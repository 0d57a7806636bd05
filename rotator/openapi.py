"""The OpenAPI 3.0 document of rotator's HTTP API, built in code so it cannot drift from the routes'
limits (they share the constants below). ``tests/test_server_schemathesis.py`` checks it against
the running server.
"""

from __future__ import annotations

from typing import Any

from rotator import __version__
from rotator.metrics import PASS_ERROR_REASONS

REASON_MAX = 1024  # characters of a rotation reason
KEY_ID_MAX = 256
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"  # visible ASCII, as most clients send
CREDENTIAL_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
ROTATION_ID_MAX = 200

_JSON = "application/json"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str, *, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {_JSON: {"schema": _ref("Error")}}}
    if headers:
        out["headers"] = headers
    return out


_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "integer"}}}
_WWW_AUTH = {"WWW-Authenticate": {"description": 'Always `Bearer realm="rotator"`.', "schema": {"type": "string"}}}


def _auth_errors() -> dict[str, Any]:
    return {
        "401": _error("No bearer token, a malformed Authorization header, or an unknown token.", headers=_WWW_AUTH),
        "403": _error("The token is valid but not allowed this access."),
        "429": _error(
            "Too many failed authentications from this address: no token is checked until Retry-After.",
            headers=_RETRY_AFTER,
        ),
        "503": _error("The authority that checks tokens could not be reached.", headers=_RETRY_AFTER),
    }


def _schemas() -> dict[str, Any]:
    nullable_string = {"type": "string", "nullable": True}
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {"type": "string"},
                "detail": {"description": "More about the error: field names, conditions, limits."},
                "leader": {**nullable_string, "description": "The leader's identity, on a follower's 503."},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"type": "string", "enum": ["ok"]}},
        },
        "Ready": {
            "type": "object",
            "required": ["status", "conditions"],
            "properties": {
                "status": {"type": "string", "enum": ["ready"]},
                "conditions": {"type": "object", "additionalProperties": {"type": "boolean"}},
            },
        },
        "RotateRequest": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"reason": {"type": "string", "maxLength": REASON_MAX}},
        },
        "LeakRequest": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "key_id": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": KEY_ID_MAX,
                    "description": "The key reported leaked; default: the current key.",
                },
                "reason": {"type": "string", "maxLength": REASON_MAX},
            },
        },
        "RotationAccepted": {
            "type": "object",
            "required": ["rotation_id", "credential", "joined", "status_url"],
            "properties": {
                "rotation_id": {"type": "string"},
                "credential": {"type": "string"},
                "joined": {
                    "type": "boolean",
                    "description": "True when the request joined a rotation already queued or in progress "
                    "(waiting included), or repeated an Idempotency-Key (also across restarts).",
                },
                "status_url": {"type": "string"},
            },
        },
        "Rotation": {
            "type": "object",
            "required": ["id", "credential", "state"],
            "properties": {
                "id": {"type": "string"},
                "credential": {"type": "string"},
                "state": {
                    "type": "string",
                    "description": "queued, running, waiting (retrying later, see retry_at), the result "
                    "(succeeded, failed), or joined (a rotation that started first was still in progress; "
                    "detail names it).",
                },
                "phase": nullable_string,
                "retry_at": nullable_string,
                "requested_by": nullable_string,
                "leaks": {
                    "type": "array",
                    "items": {"type": "object"},
                    "description": "For a leak report: the key's way out (state, disabled_at).",
                },
                "reason": nullable_string,
                "detail": nullable_string,
                "requested_at": nullable_string,
                "finished_at": nullable_string,
            },
        },
        "CredentialStatus": {
            "type": "object",
            "required": ["name"],
            "description": "What `rotator status --json` shows for one credential: key ids, ages, deadlines.",
            "properties": {
                "name": {"type": "string"},
                "current_key_id": nullable_string,
                "current_key_age_seconds": {"type": "integer", "nullable": True},
                "next_rotation_at": nullable_string,
                "rotation_in_progress": {"type": "object", "nullable": True},
                "revocations_pending": {"type": "array", "items": {"type": "object"}},
                "leaks": {
                    "type": "array",
                    "items": {"type": "object"},
                    "description": "Keys reported leaked: who reported them, when, and their way out (state, "
                    "disabled_at).",
                },
                "last_result": {"type": "object", "nullable": True},
                "clusters": {
                    "type": "array",
                    "description": "Fleet clusters (targets.kubernetes as a list): in_sync, or out of sync since "
                    "out_of_sync_since for reason (it did not answer), retried at retry_at; holds_old_key while "
                    "that keeps the replaced key enabled.",
                    "items": {
                        "type": "object",
                        "required": ["name", "in_sync"],
                        "properties": {
                            "name": {"type": "string"},
                            "in_sync": {"type": "boolean"},
                            "out_of_sync_since": nullable_string,
                            "reason": nullable_string,
                            "retry_at": nullable_string,
                            "holds_old_key": {"type": "boolean"},
                        },
                    },
                },
                "passes_failing": {
                    "type": "object",
                    "nullable": True,
                    "description": "Set while passes for the credential fail before they can act (null otherwise).",
                    "properties": {
                        "since": {"type": "string"},
                        "failures_in_a_row": {"type": "integer"},
                        "reason": {"type": "string", "enum": list(PASS_ERROR_REASONS)},
                        "detail": {"type": "string"},
                        "next_retry_at": {"type": "string"},
                    },
                },
            },
        },
        "CredentialList": {
            "type": "object",
            "required": ["credentials"],
            "properties": {"credentials": {"type": "array", "items": _ref("CredentialStatus")}},
        },
    }


def _rotate_operation(*, leaked: bool) -> dict[str, Any]:
    body = "LeakRequest" if leaked else "RotateRequest"
    summary = (
        "Report a key leaked: rotate now (ignoring maintenance windows) and revoke that key at once."
        if leaked
        else "Rotate a credential now (or join the rotation already queued or running)."
    )
    return {
        "operationId": "reportLeak" if leaked else "rotateCredential",
        "summary": summary,
        "security": [{"bearer": []}],
        "parameters": [
            {
                "name": "name",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": CREDENTIAL_NAME_PATTERN, "maxLength": 253},
            },
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "Repeating a key (per credential and caller, kept for server.idempotency_ttl) "
                "answers the rotation it started instead of asking for another.",
                "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
            },
        ],
        "requestBody": {"required": False, "content": {_JSON: {"schema": _ref(body)}}},
        "responses": {
            "202": {
                "description": "Accepted: the rotation to follow at status_url.",
                "headers": {"Location": {"description": "The rotation's status URL.", "schema": {"type": "string"}}},
                "content": {_JSON: {"schema": _ref("RotationAccepted")}},
                "links": {
                    "GetRotation": {
                        "operationId": "getRotation",
                        "parameters": {"id": "$response.body#/rotation_id"},
                    }
                },
            },
            "400": _error("The body is not JSON, not an object, or has unknown or invalid fields."),
            **_auth_errors(),
            "404": _error("No credential by that name."),
            "413": _error("The body is larger than the limit."),
            "415": _error("A body that is not application/json."),
            "422": _error(
                "The Idempotency-Key was used before with a different body, or key_id is not one of the "
                "credential's keys (current, pending or retired)."
            ),
            "429": _error(
                "Too many rotation requests from this caller, or failed authentications from this address.",
                headers=_RETRY_AFTER,
            ),
            "503": _error(
                "Not the leader (the body names it), or the token authority is unreachable.", headers=_RETRY_AFTER
            ),
        },
    }


def document(*, metrics_public: bool) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "operationId": "metrics",
        "summary": "Prometheus text exposition of rotator_* metrics.",
        "responses": {"200": {"description": "Metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}}},
    }
    if metrics_public:
        metrics["security"] = []
    else:
        metrics["security"] = [{"bearer": []}]
        metrics["responses"].update(_auth_errors())
    read_errors = _auth_errors()
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "rotator",
            "version": __version__,
            "description": "Status and on-demand rotation of registry pull credentials. Errors are "
            '`{"error": "...", "detail": ...}`; an unknown path is 404, a wrong method 405, a request that '
            "does not parse (bad header bytes, headers over 8190 bytes) 400.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": _schemas(),
        },
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "Liveness: the daemon's loop is turning.",
                    "security": [],
                    "responses": {
                        "200": {"description": "Alive.", "content": {_JSON: {"schema": _ref("Health")}}},
                        "503": _error("Not alive."),
                    },
                },
                "head": {
                    "operationId": "healthzHead",
                    "summary": "Liveness without a body, for probes that send HEAD.",
                    "security": [],
                    "responses": {"200": {"description": "Alive."}, "503": {"description": "Not alive."}},
                },
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Readiness: every condition holds.",
                    "security": [],
                    "responses": {
                        "200": {"description": "Ready.", "content": {_JSON: {"schema": _ref("Ready")}}},
                        "503": _error("Not ready; detail lists the conditions and which fail."),
                    },
                }
            },
            "/metrics": {"get": metrics},
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document.",
                    "security": [],
                    "responses": {"200": {"description": "OpenAPI 3.0.", "content": {_JSON: {"schema": {}}}}},
                }
            },
            "/v1/credentials": {
                "get": {
                    "operationId": "listCredentials",
                    "summary": "Status of every credential (needs list).",
                    "responses": {
                        "200": {"description": "Statuses.", "content": {_JSON: {"schema": _ref("CredentialList")}}},
                        **read_errors,
                    },
                }
            },
            "/v1/credentials/{name}/rotate": {"post": _rotate_operation(leaked=False)},
            "/v1/credentials/{name}/leaked": {"post": _rotate_operation(leaked=True)},
            "/v1/rotations/{id}": {
                "get": {
                    "operationId": "getRotation",
                    "summary": "A rotation: queued, running (with phase), or its result (needs get on its credential).",
                    "parameters": [
                        {
                            "name": "id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "minLength": 1, "maxLength": ROTATION_ID_MAX},
                        }
                    ],
                    "responses": {
                        "200": {"description": "The rotation.", "content": {_JSON: {"schema": _ref("Rotation")}}},
                        **read_errors,
                        "404": _error("No rotation by that id."),
                    },
                }
            },
        },
    }
