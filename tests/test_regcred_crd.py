"""The RegistryCredential CustomResourceDefinition generated from the models (rotator/crd.py), applied
with kubectl to the Kubernetes emulator: it is structural, its CEL rules compile, the committed copy is
the generated one, the sandbox sample is accepted and listed with the printer columns, and the API server
refuses what the model refuses, with the same messages."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubectl_env import Kubectl
from regcred_env import ADMIN_SECRET, OWN_NAMESPACE, kubectl, sbx  # noqa: F401 - kubectl, sbx: the fixtures

from rotator import crd, regcred, settings
from rotator.config_model import RegistryCredentialSpec
from rotator.errors import ConfigError
from rotator.sandbox import kube_cel, kube_schema

REPO = Path(__file__).resolve().parents[1]
CRD_FILE = REPO / "deploy" / "crd" / f"{regcred.CRD_NAME}.yaml"
SAMPLE = REPO / "config" / "registrycredential-sandbox.yaml"
REGENERATE = f"python -m rotator schema crd > {CRD_FILE.relative_to(REPO)}"


def model_refusal(spec: dict[str, Any]) -> str:
    """Why the config model refuses ``spec`` as a RegistryCredential's ("" when it accepts it)."""
    try:
        settings.credential_from_spec("checked", spec, source="RegistryCredential checked")
    except ConfigError as exc:
        return str(exc)
    return ""


# -- the generated definition, offline -----------------------------------------------------------------


def openapi_schema() -> dict[str, Any]:
    schema: dict[str, Any] = crd.definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_the_committed_definition_is_the_generated_one() -> None:
    assert CRD_FILE.read_text() == crd.render(), f"{CRD_FILE} is stale; regenerate it: {REGENERATE}"


# JSONSchemaProps fields a structural schema may carry (apiextensions.k8s.io/v1), and those allowed
# inside anyOf (value validations: no type, description, default, properties...).
STRUCTURAL_KEYS = crd.KEPT | {
    "x-kubernetes-validations",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, child in (schema.get("properties") or {}).items():
        yield from nodes(child, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from nodes(schema[key], f"{path}[{key}]")


def test_the_definition_is_structural_and_every_rule_compiles() -> None:
    schema = openapi_schema()
    assert kube_schema.structural_causes(schema, "openAPIV3Schema") == []
    rules = 0
    for path, node in nodes(schema):
        assert set(node) <= STRUCTURAL_KEYS, f"{path}: {sorted(set(node) - STRUCTURAL_KEYS)}"
        assert node.get("type") or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        for branch in node.get("anyOf") or []:
            assert set(branch) <= crd.VALUE_VALIDATIONS, f"{path}.anyOf carries {sorted(branch)}"
        for rule in node.get("x-kubernetes-validations") or []:
            assert kube_cel.compile_error(rule["rule"]) is None, f"{path}: {rule['rule']}"
            assert rule["message"], f"{path}: a rule without a message"
            rules += 1
    assert rules >= sum(len(r) for r in crd.RULES.values())


def test_every_rule_of_the_table_names_a_model_definition() -> None:
    """A renamed model class would silently drop its rules from the definition."""
    schema = RegistryCredentialSpec.model_json_schema(by_alias=True)
    defined = {schema["title"], *schema["$defs"]}
    assert set(crd.RULES) <= defined, f"RULES keys without a definition: {sorted(set(crd.RULES) - defined)}"


def test_the_resource_takes_the_mapping_form_of_kubernetes_targets_only() -> None:
    targets = openapi_schema()["properties"]["spec"]["properties"]["targets"]["properties"]["kubernetes"]
    assert targets["type"] == "object" and "secretName" in targets["properties"]
    spec = openapi_schema()["properties"]["spec"]
    assert spec["properties"]["deletionPolicy"] == spec["properties"]["deletionPolicy"] | {
        "type": "string",
        "enum": ["Retain", "Revoke"],
        "default": "Retain",
    }


def test_structural_conversion_of_json_schema_unions() -> None:
    """The converter on its own: $ref inlined, null dropped, const to enum, an exclusive bound to a flag,
    int|string, and a union of objects without a discriminator asking for exactly one shape."""
    schema = {
        "$defs": {
            "A": {"type": "object", "title": "A", "properties": {"a": {"type": "string"}}, "required": ["a"]},
            "B": {"type": "object", "properties": {"b": {"type": "integer"}}, "required": ["b"]},
        },
        "type": "object",
        "properties": {
            "ref": {"anyOf": [{"$ref": "#/$defs/A"}, {"type": "null"}], "default": None, "description": "an A"},
            "fixed": {"const": "x", "title": "Fixed"},
            "positive": {"type": "integer", "exclusiveMinimum": 0},
            "port": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
            "shape": {"anyOf": [{"$ref": "#/$defs/A"}, {"$ref": "#/$defs/B"}], "examples": [{"a": "1"}]},
        },
    }
    assert crd.structural(schema, rules={})["properties"] == {
        "ref": {"type": "object", "description": "an A", "required": ["a"], "properties": {"a": {"type": "string"}}},
        "fixed": {"type": "string", "enum": ["x"]},
        "positive": {"type": "integer", "minimum": 0, "exclusiveMinimum": True},
        "port": {"x-kubernetes-int-or-string": True},
        "shape": {
            "type": "object",
            "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
            "x-kubernetes-validations": [
                {
                    "rule": "[(has(self.a)), (has(self.b))].filter(x, x).size() == 1",
                    "message": "give exactly one of a, b",
                }
            ],
        },
    }


# -- against the emulator, with kubectl --------------------------------------------------------------------


def resource(name: str, spec: dict[str, Any]) -> str:
    return yaml.safe_dump(
        {"apiVersion": regcred.API_VERSION, "kind": regcred.KIND, "metadata": {"name": name}, "spec": spec}
    )


def sample_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())["spec"]
    return spec


def test_the_sandbox_sample_is_accepted_and_listed_with_the_columns(kubectl: Kubectl) -> None:
    """The steps of docs/registrycredential.md (the fixture created the admin key's Secret), then the sample."""
    assert model_refusal(sample_spec()) == ""
    assert sample_spec()["provider"]["apikey"]["secretKeyRef"] == {
        "namespace": OWN_NAMESPACE,
        "name": ADMIN_SECRET,
        "key": "apikey",
    }
    applied = kubectl("apply", "-f", str(SAMPLE)).stdout
    assert applied.strip() == f"registrycredential.{regcred.GROUP}/sandbox-pull created"
    header, row = kubectl("get", "regcred", "sandbox-pull").stdout.splitlines()
    assert header.split() == ["NAME", "READY", "KEY", "AGE", "NEXT", "ROTATION", "IN", "SYNC", "AGE"]
    assert row.split()[0] == "sandbox-pull"
    wide = kubectl("get", "regcred", "sandbox-pull", "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-3:] == ["PROVIDER", "LAST", "ROTATION"] and wide[1].split()[-1] == "ibm-iam"
    stored = json.loads(kubectl("get", "regcred", "sandbox-pull", "-o", "json").stdout)
    assert stored["spec"]["provider"]["apikey"] == sample_spec()["provider"]["apikey"]
    assert kubectl("get", "rotator", "-o", "name").stdout.split() == [
        f"registrycredential.{regcred.GROUP}/sandbox-pull"
    ]


def test_kubectl_explain_reads_the_spec_descriptions(kubectl: Kubectl) -> None:
    explained = kubectl("explain", "registrycredential.spec").stdout
    assert "One credential's configuration" in explained
    for field in ("provider", "registry", "schedule", "targets", "deletionPolicy"):
        assert f"  {field}\t" in explained or f"  {field} " in explained, field
    policy = kubectl("explain", "regcred.spec.deletionPolicy").stdout
    assert "Retain" in policy and "Revoke" in policy


def test_defaults_are_applied(kubectl: Kubectl) -> None:
    spec = sample_spec()
    del spec["deletionPolicy"], spec["maxAge"]
    kubectl("apply", "-f", "-", stdin=resource("defaulted", spec))
    stored = json.loads(kubectl("get", "regcred", "defaulted", "-o", "json").stdout)["spec"]
    assert stored["deletionPolicy"] == "Retain" and stored["maxAge"] == "90d"
    # A default of one provider kind's field would be filled into the other kind too: the model applies those.
    assert "tokenType" not in stored["provider"] and "actionWhenLeaked" not in stored["provider"]


def refused(kubectl: Kubectl, name: str, spec: dict[str, Any], *args: str) -> str:
    """kubectl's error for a resource the API server must refuse (and does not store)."""
    result = kubectl("apply", *args, "-f", "-", stdin=resource(name, spec), check=False)
    assert result.returncode != 0, f"{name} was accepted"
    assert name not in kubectl("get", "regcred", "-o", "name").stdout
    return result.stderr


def changed(**edits: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    spec = sample_spec()
    for edit in edits.values():
        edit(spec)
    return spec


def test_schema_errors_are_refused_with_the_schema_message(kubectl: Kubectl) -> None:
    spec = sample_spec()
    del spec["registry"]
    spec["deletionPolicy"] = "Sometimes"
    spec["maxAge"] = "a week"
    spec["targets"]["kubernetes"]["serviceAccounts"] = ["Not_A_Name"]
    errors = refused(kubectl, "schema-errors", spec)
    assert 'The RegistryCredential "schema-errors" is invalid:' in errors
    for line in (
        "* spec.registry: Required value",
        '* spec.deletionPolicy: Unsupported value: "Sometimes": supported values: "Retain", "Revoke"',
        f"* spec.maxAge: Invalid value: \"a week\": spec.maxAge in body should match '{crd.DURATION_PATTERN}'",
        '* spec.targets.kubernetes.serviceAccounts[0]: Invalid value: "Not_A_Name"',
    ):
        assert line in errors, errors
    refusal = model_refusal(spec)  # the model refuses all four too
    for path in ("registry", "deletionPolicy", "maxAge", "targets.kubernetes.serviceAccounts"):
        assert f"RegistryCredential checked: spec.{path}: " in refusal, refusal


def test_unknown_fields_are_refused_by_strict_apply_and_pruned_otherwise(kubectl: Kubectl) -> None:
    spec = sample_spec()
    spec["rotateEvery"] = "1h"
    spec["registry"]["verify_budget"] = "20s"  # the file's snake_case spelling: unknown here
    errors = refused(kubectl, "unknown-fields", spec)
    assert 'unknown field "spec.rotateEvery"' in errors and 'unknown field "spec.registry.verify_budget"' in errors
    refusal = model_refusal(spec)
    assert "spec.rotateEvery: unknown field" in refusal and "spec.registry.verify_budget: unknown field" in refusal
    kubectl("apply", "--validate=false", "-f", "-", stdin=resource("pruned", spec))
    stored = json.loads(kubectl("get", "regcred", "pruned", "-o", "json").stdout)["spec"]
    assert "rotateEvery" not in stored and "verify_budget" not in stored["registry"]


# One violation per CEL rule: (definition, rule index) of crd.RULES -> how to break the sample spec.
def _put(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split(".")

    def edit(spec: dict[str, Any]) -> None:
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = copy.deepcopy(value)

    return edit


HUB_PASSWORD = {"secretKeyRef": {"namespace": "rotator-system", "name": "hub", "key": "password"}}
DOCKERHUB = {"kind": "dockerhub", "username": "rotatorbot", "password": HUB_PASSWORD}
HUB_REGISTRY = {"server": "https://index.docker.io/v1/", "images": ["docker.io/acme/app:latest"]}
CE_ENDPOINT = "https://api.us-south.codeengine.cloud.ibm.com/v2"
CE_PROJECT = "4a6c8e0f-1b3d-4f5a-8c7e-9d0b2a4c6e8f"
PROFILE = {"kind": "trusted-profile", "profileName": "rotator"}


def _hub(**fields: Any) -> tuple[Callable[[dict[str, Any]], None], ...]:
    return (_put("provider", DOCKERHUB | fields), _put("registry", HUB_REGISTRY))


# One violation per CEL rule: (definition, rule index) of crd.RULES -> edits of the sample spec that break it.
VIOLATIONS: dict[tuple[str, int], tuple[Callable[[dict[str, Any]], None], ...]] = {
    ("SecretSourceSpec", 0): (_put("provider.apikey.env", "ROTATOR_ADMIN_APIKEY"),),
    ("ApiKeyAuthSpec", 0): (_put("provider.apikey", None), _put("provider.auth", {"kind": "apikey"})),
    ("TrustedProfileAuthSpec", 0): (
        _put("provider.apikey", None),
        _put("provider.auth", PROFILE | {"profileId": "Profile-3c2b1a09"}),
    ),
    ("IamProviderSpec", 0): (_put("provider.auth", PROFILE),),
    ("IamProviderSpec", 1): (_put("provider.apikey", None),),
    ("DockerHubProviderSpec", 0): _hub(tokenType="organization", repositories=["acme/app"]),
    ("DockerHubProviderSpec", 1): _hub(tokenType="organization", org="acme"),
    ("DockerHubProviderSpec", 2): _hub(repositories=["acme/app"]),
    ("DockerHubProviderSpec", 3): _hub(scopes=[]),
    ("RegistrySpec", 0): (_put("registry.images", []),),
    ("ScheduleSpec", 0): (_put("schedule.cron", "0 3 * * *"),),
    ("ScheduleSpec", 1): (_put("schedule", {"jitter": "5m"}),),
    ("NamespacesSpec", 0): (_put("targets.kubernetes.namespaces.all", True),),
    ("CodeEngineTargetSpec", 0): (
        _put(
            "targets.codeengine",
            {"secretName": "icr-pull", "projectId": CE_PROJECT, "endpoint": CE_ENDPOINT}
            | {"apikey": {"env": "CE_APIKEY"}, "auth": PROFILE},
        ),
    ),
    ("CodeEngineTargetSpec", 1): (_put("targets.codeengine", {"secretName": "icr-pull", "endpoint": CE_ENDPOINT}),),
    ("CodeEngineTargetSpec", 2): (_put("targets.codeengine", {"secretName": "icr-pull", "projectId": CE_PROJECT}),),
    ("CodeEngineTargetSpec", 3): (
        _put("targets.codeengine", {"secretName": "icr-pull", "endpoint": CE_ENDPOINT, "projects": []}),
    ),
    ("TargetsSpec", 0): (_put("targets.kubernetes", None),),
    ("RegistryCredentialSpec", 0): (
        *_hub(),
        _put("targets.codeengine", {"secretName": "icr-pull", "projectId": CE_PROJECT, "endpoint": CE_ENDPOINT}),
    ),
}


def test_every_rule_has_a_violation_case() -> None:
    table = {(name, index) for name, rules in crd.RULES.items() for index in range(len(rules))}
    assert table == set(VIOLATIONS)


@pytest.mark.parametrize(("definition", "index"), sorted(VIOLATIONS), ids=lambda v: str(v))
def test_each_rule_is_enforced_by_the_api_server_and_the_model(kubectl: Kubectl, definition: str, index: int) -> None:
    message = crd.RULES[definition][index].message
    spec = changed(**{f"e{i}": edit for i, edit in enumerate(VIOLATIONS[definition, index])})
    name = f"rule-{definition.lower()}-{index}"
    errors = refused(kubectl, name, spec)
    assert message in errors, errors
    assert message in model_refusal(spec)


def test_provider_kinds_ask_for_their_own_fields(kubectl: Kubectl) -> None:
    """The provider union's choice, as CEL keyed on kind: each kind's required fields, no other kind's."""
    mixed = changed(p=_put("provider.username", "rotatorbot"))
    assert "username: not a field of kind ibm-iam" in refused(kubectl, "mixed-provider", mixed)
    assert model_refusal(mixed)
    bare = changed(p=_put("provider", {"kind": "dockerhub"}), r=_put("registry", HUB_REGISTRY))
    assert "kind dockerhub needs password, username" in refused(kubectl, "bare-dockerhub", bare)
    assert model_refusal(bare)
    hub = changed(**{f"e{i}": edit for i, edit in enumerate(_hub())})
    assert model_refusal(hub) == ""
    kubectl("apply", "-f", "-", stdin=resource("hub", hub))
    stored = json.loads(kubectl("get", "regcred", "hub", "-o", "json").stdout)["spec"]["provider"]
    assert stored["kind"] == "dockerhub" and "actionWhenLeaked" not in stored


def test_rotator_schema_crd_prints_the_committed_definition() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rotator", "schema", "crd"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == CRD_FILE.read_text(), f"stale: {REGENERATE}"
