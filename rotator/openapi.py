"""The OpenAPI 3.0 document of rotator's HTTP API. Paths and operations are declared here; every body
schema is generated from the pydantic models in ``rotator/api_models.py`` that the server parses and
answers with, so the document cannot drift from the wire. ``tests/test_server_schemathesis.py``
checks it against the running server.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from rotator import __version__, api_models
from rotator.api_models import LeakRequest, RotateRequest

IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"  # visible ASCII, as most clients send
CREDENTIAL_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
ROTATION_ID_MAX = 200
REF = "#/components/schemas/{model}"

_JSON = "application/json"


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": REF.format(model=model.__name__)}


def component_schemas() -> dict[str, Any]:
    """components/schemas: each body model's JSON Schema and those of the models it uses, in OpenAPI 3.0
    form. Two models may not share a name (one would silently replace the other)."""
    out: dict[str, Any] = {}
    for model in (*api_models.REQUESTS, *api_models.RESPONSES):
        schema = model.model_json_schema(ref_template=REF)
        for name, found in [*schema.pop("$defs", {}).items(), (model.__name__, schema)]:
            converted = as_openapi30(found)
            if out.setdefault(name, converted) != converted:
                raise ValueError(f"two API models are named {name}")
    return out


def as_openapi30(schema: Any) -> Any:
    """JSON Schema as pydantic writes it (2020-12) in OpenAPI 3.0's dialect: ``X | None`` (anyOf with a
    null type) becomes ``nullable``, ``const`` an ``enum``, and a ``$ref`` with siblings (which 3.0
    ignores) is wrapped in ``allOf``."""
    if isinstance(schema, list):
        return [as_openapi30(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: as_openapi30(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "allOf", "anyOf", "oneOf", "not"):
            out[key] = as_openapi30(value)
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = value
    branches = out.get("anyOf")
    if isinstance(branches, list) and {"type": "null"} in branches:
        rest = [b for b in branches if b != {"type": "null"}]
        del out["anyOf"]
        if len(rest) == 1:
            out = {**rest[0], **out}
        else:
            out["anyOf"] = rest
        out["nullable"] = True
    if "$ref" in out and len(out) > 1:
        out = {"allOf": [{"$ref": out.pop("$ref")}], **out}
    return out


def _error(description: str, *, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {_JSON: {"schema": _ref(api_models.Error)}}}
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


def _rotate_operation(*, leaked: bool) -> dict[str, Any]:
    body = LeakRequest if leaked else RotateRequest
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
                "content": {_JSON: {"schema": _ref(api_models.RotationAccepted)}},
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
            "schemas": component_schemas(),
        },
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "Liveness: the daemon's loop is turning.",
                    "security": [],
                    "responses": {
                        "200": {"description": "Alive.", "content": {_JSON: {"schema": _ref(api_models.Health)}}},
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
                        "200": {"description": "Ready.", "content": {_JSON: {"schema": _ref(api_models.Ready)}}},
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
                        "200": {
                            "description": "Statuses.",
                            "content": {_JSON: {"schema": _ref(api_models.CredentialList)}},
                        },
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
                        "200": {
                            "description": "The rotation.",
                            "content": {_JSON: {"schema": _ref(api_models.Rotation)}},
                        },
                        **read_errors,
                        "404": _error("No rotation by that id."),
                    },
                }
            },
        },
    }
