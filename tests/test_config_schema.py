"""The config file's JSON Schema: generated from the models, committed, and in agreement with the loader."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from test_settings import GOOD, with_change

from rotator import config_model as m
from rotator import settings
from rotator.errors import ConfigError
from rotator.schemas import CONFIG_SCHEMA_FILE, config_schema

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / CONFIG_SCHEMA_FILE
REGENERATE = f"python -m rotator schema config > {CONFIG_SCHEMA_FILE}"
EDITOR_LINE = "# yaml-language-server: $schema=rotator.schema.json"


def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(COMMITTED.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def config_files() -> list[Path]:
    """The config files in config/ (Kubernetes manifests there, such as a RegistryCredential, are not configs)."""
    return [p for p in sorted((REPO / "config").glob("*.yaml")) if "apiVersion" not in yaml.safe_load(p.read_text())]


def test_the_committed_schema_is_the_generated_one() -> None:
    assert json.loads(COMMITTED.read_text()) == config_schema(), f"the schema drifted from the models: {REGENERATE}"


def test_rotator_schema_config_prints_it() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "rotator", "schema", "config"], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout == COMMITTED.read_text(), f"regenerate with: {REGENERATE}"
    schema = json.loads(out.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert (schema["$id"], schema["title"]) == (
        "https://rotator.example.com/schemas/rotator.schema.json",
        "rotator configuration",
    )


@pytest.mark.parametrize("path", config_files(), ids=lambda p: p.name)
def test_each_shipped_config_is_valid_for_the_schema_and_the_loader(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Editors (the first line names the schema) and rotator agree on every shipped config."""
    monkeypatch.setenv("ROTATOR_ADMIN_APIKEY", "x" * 44)
    text = path.read_text()
    assert text.splitlines()[0] == EDITOR_LINE
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator().iter_errors(yaml.safe_load(text))]
    assert errors == []
    loaded = settings.load(path, base_dir=REPO)
    assert loaded.credentials or loaded.credentials_from == "cluster"  # those come from RegistryCredentials


def test_a_field_described_in_the_schema_shows_its_example_and_default() -> None:
    registry = json.loads(COMMITTED.read_text())["$defs"]["RegistrySpec"]["properties"]["recheck_interval"]
    assert registry["default"] == "30s" and registry["examples"] == ["30s"] and registry["description"]


def with_top(key: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(GOOD)
    doc[key] = value
    return doc


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        (with_change("credentials[0].nmae", "x"), "credentials[0].nmae"),
        (with_change("credentials[0].provider.kind", "aws"), "credentials[0].provider.kind"),
        (with_change("credentials[0].provider.serviceId", "ServiceId-1"), "credentials[0].provider.serviceId"),
        (with_change("credentials[0].max_age", 30), "credentials[0].max_age"),
        (with_change("credentials[0].targets.kubernetes.namespaces.names", ["Team_A"]), "namespaces.names"),
        (with_change("credentials[0].provider.apikey", "inline"), "credentials[0].provider.apikey"),
        (with_top("kubernetes", {"concurrency": 0}), "kubernetes.concurrency"),
        (with_top("server", {"auth": {"mode": "basic"}}), "server.auth.mode"),
        ({"credentials": "icr-pull"}, "credentials"),
    ],
    ids=["unknown", "provider-kind", "camel-case", "no-unit", "namespace", "inline-key", "concurrency", "mode", "list"],
)
def test_a_bad_document_is_refused_by_both(tmp_path: Path, doc: dict[str, Any], field: str) -> None:
    assert list(validator().iter_errors(doc)), "the schema accepted it"
    path = tmp_path / "rotator.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as info:
        settings.load(path, base_dir=tmp_path)
    assert f"{field}" in str(info.value)


def all_sections(model: type[m.Spec]) -> set[type[m.Spec]]:
    return {model}.union(*(all_sections(sub) for sub in model.__subclasses__()))


def test_every_field_has_a_description_and_an_example() -> None:
    """Editors show the description; error messages quote the example."""
    bare = [
        f"{section.__name__}.{name}"
        for section in all_sections(m.Spec)
        for name, info in section.model_fields.items()
        if not info.description or not info.examples
    ]
    assert bare == []
