"""The API's bodies come from ``rotator/api_models.py``: the served /openapi.json publishes exactly the models'
schemas (in OpenAPI 3.0's dialect), the 400 for a bad body is the model's refusal, and an answer the model
does not declare cannot go out.

Over real HTTP against ``ApiServer`` in front of the ``FakeControl`` double of the daemon.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from test_server import Api, FakeControl, new_token, running, write_token_file

from rotator import api_models, openapi
from rotator.apiauth import TokenFileAuthenticator

# Every keyword an OpenAPI 3.0.3 Schema Object may hold (its JSON Schema subset plus its own extensions).
OPENAPI30_KEYWORDS = {
    *("title", "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum", "maxLength"),
    *("minLength", "pattern", "maxItems", "minItems", "uniqueItems", "maxProperties", "minProperties"),
    *("required", "enum", "type", "allOf", "oneOf", "anyOf", "not", "items", "properties"),
    *("additionalProperties", "description", "format", "default", "nullable", "discriminator", "readOnly"),
    *("writeOnly", "xml", "externalDocs", "example", "deprecated", "$ref"),
}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    tokens = {"rotate": new_token(), "read": new_token()}
    path = tmp_path / "api-tokens"
    write_token_file(path, {tokens["rotate"]: ("alice", "rotate"), tokens["read"]: ("bob", "read")})
    with running(FakeControl(), TokenFileAuthenticator(path), tokens=tokens) as served:
        yield served


def walk(schema: Any) -> Iterator[dict[str, Any]]:
    """Every schema object inside ``schema`` (properties, items, combinators)."""
    if not isinstance(schema, dict):
        return
    yield schema
    for name, sub in schema.get("properties", {}).items():
        assert isinstance(name, str)
        yield from walk(sub)
    for key in ("items", "additionalProperties", "not"):
        yield from walk(schema.get(key))
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(key, []):
            yield from walk(sub)


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_served_schemas_are_the_models_schemas(api: Api) -> None:
    """components/schemas holds one schema per model, each equal to what pydantic generates for it (so
    nothing in the document is written by hand), and every body the API parses or sends is among them."""
    document = api.call("GET", "/openapi.json").json()
    schemas = document["components"]["schemas"]
    for name, served in schemas.items():
        model = getattr(api_models, name, None)
        assert isinstance(model, type) and issubclass(model, BaseModel), f"{name} is not a model in api_models"
        generated = model.model_json_schema(ref_template=openapi.REF)
        generated.pop("$defs", None)
        assert served == openapi.as_openapi30(generated), name
    assert {m.__name__ for m in (*api_models.REQUESTS, *api_models.RESPONSES)} <= set(schemas)
    dangling = {ref for ref in refs(document) if ref.removeprefix("#/components/schemas/") not in schemas}
    assert dangling == set()


def test_served_schemas_are_openapi_30(api: Api) -> None:
    """The document says 3.0, so its schemas use only 3.0's keywords: no ``const``, no ``null`` type, no
    ``$defs``, and a ``$ref`` stands alone (3.0 ignores its siblings)."""
    document = api.call("GET", "/openapi.json").json()
    assert document["openapi"] == "3.0.3"
    found = list(walk({"properties": document["components"]["schemas"]}))[1:]
    assert len(found) > 50
    for schema in found:
        assert set(schema) <= OPENAPI30_KEYWORDS, schema
        assert isinstance(schema.get("type", "object"), str) and schema.get("type") != "null", schema
        assert "$ref" not in schema or len(schema) == 1, schema
    rotation = document["components"]["schemas"]["Rotation"]["properties"]
    assert rotation["phase"]["nullable"] is True and rotation["phase"]["type"] == "string"
    in_progress = document["components"]["schemas"]["CredentialStatus"]["properties"]["rotation_in_progress"]
    assert in_progress["allOf"] == [{"$ref": "#/components/schemas/RotationInProgress"}] and in_progress["nullable"]
    assert document["components"]["schemas"]["Health"]["properties"]["status"]["enum"] == ["ok"]


def test_bad_fields_are_400_with_each_models_rule_and_no_value(api: Api) -> None:
    """Every refused field is named in the order sent, with the rule its model states; the value (which may
    be a pasted secret) is not echoed; nothing reaches the daemon."""
    secret = "s3cr3t-" + new_token() * 12
    body = {"reason": secret * 10, "key_id": 7}
    response = api.call("POST", "/v1/credentials/icr-pull/leaked", token=api.tokens["rotate"], json=body)
    assert response.status_code == 400
    rules = [api_models.LeakRequest.rule("reason"), api_models.LeakRequest.rule("key_id")]
    assert rules == [
        "reason must be a string of at most 1024 characters",
        "key_id must be a non-empty string of at most 256 characters",
    ]
    assert response.json() == {"error": "; ".join(rules)}
    assert secret not in response.text
    assert api.control.requests == []


def test_strict_types_refuse_what_pydantic_would_coerce(api: Api) -> None:
    """A reason sent as a number or a list is a 400, not coerced into a string."""
    for reason in (7, ["a"], True, None):
        response = api.rotate(json={"reason": reason})
        assert response.status_code == 400, reason
        assert response.json()["error"] == "reason must be a string of at most 1024 characters"
    assert api.control.requests == []


def test_answers_carry_exactly_the_keys_the_daemon_sent(api: Api) -> None:
    """Optional fields the daemon leaves out stay out (no added nulls); a rotation accepted is the model's."""
    accepted = api.rotate(json={"reason": "drill"})
    assert accepted.status_code == 202
    assert set(accepted.json()) == set(api_models.RotationAccepted.model_fields)
    shown = api.call("GET", accepted.headers["Location"], token=api.tokens["read"])
    assert shown.json() == {"id": accepted.json()["rotation_id"], "credential": "icr-pull", "state": "queued"}


def test_a_field_no_model_declares_is_never_sent(api: Api) -> None:
    """If the daemon grew a field the models do not declare, the answer is a 500 (caught by the tests),
    not an undocumented body."""
    api.control.rotations["rot-x"] = {"id": "rot-x", "credential": "icr-pull", "state": "queued", "surprise": 1}
    response = api.call("GET", "/v1/rotations/rot-x", token=api.tokens["read"])
    assert response.status_code == 500
    assert response.json() == {"error": "internal error"}
