"""docs/configuration.md's field tables agree with the models: the same fields, the same defaults."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from rotator import config_model as m

DOCS = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

# Each heading whose field table documents a section, and that section's model.
SECTIONS: dict[str, type[BaseModel]] = {
    "Secret sources": m.SecretSourceSpec,
    "credentials": m.CredentialSpec,
    "provider kind ibm-iam": m.IamProviderSpec,
    "provider kind dockerhub": m.DockerHubProviderSpec,
    "credentials[].registry": m.RegistrySpec,
    "credentials[].schedule": m.ScheduleSpec,
    "targets.kubernetes": m.KubernetesTargetSpec,
    "targets.kubernetes as a list: a fleet of clusters": m.ClusterTargetSpec,
    "targets.codeengine": m.CodeEngineTargetSpec,
    "kubernetes": m.KubernetesSpec,
    "state": m.StateSpec,
    "daemon": m.DaemonSpec,
    "server": m.ServerSpec,
}


def tables() -> dict[str, list[tuple[list[str], str]]]:
    """heading -> rows of its field table: (the field names of the first cell, the Default cell)."""
    out: dict[str, list[tuple[list[str], str]]] = {}
    heading, in_table = "", False
    for line in DOCS.read_text().splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        in_table = line.startswith("| Field | Default |") or (in_table and line.startswith("|"))
        if in_table and line.startswith("| `"):
            names, default = [c.strip() for c in line.strip("|").split(" | ")][:2]
            out.setdefault(heading, []).append((re.findall(r"`([^`]+)`", names), default))
    return out


def shown(value: Any) -> str:
    """A model default as the docs write it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def submodel(model: type[BaseModel], name: str) -> type[BaseModel]:
    annotation = m.unwrap(model.model_fields[name].annotation)[1]
    assert isinstance(annotation, type) and issubclass(annotation, BaseModel), f"{model.__name__}.{name}"
    return annotation


def test_every_field_table_is_a_section_of_the_model() -> None:
    assert set(tables()) == set(SECTIONS)


def test_each_table_lists_the_fields_of_its_model() -> None:
    for heading, rows in tables().items():
        model = SECTIONS[heading]
        names = [name for row_names, _ in rows for name in row_names]
        assert {n.split(".")[0] for n in names} == set(model.model_fields), heading
        for parent in {n.split(".")[0] for n in names if "." in n}:
            documented = {n.split(".", 1)[1] for n in names if n.startswith(f"{parent}.")}
            assert documented == set(submodel(model, parent).model_fields), f"{heading}: {parent}"


def test_the_default_column_agrees_with_the_model() -> None:
    for heading, rows in tables().items():
        for names, default in rows:
            for name in names:
                model = SECTIONS[heading]
                *parents, last = name.split(".")
                for parent in parents:
                    model = submodel(model, parent)
                info = model.model_fields[last]
                where = f"{heading}: {name}"
                if default == "as above":  # refers to another table's row
                    continue
                if info.default is PydanticUndefined:
                    # A sub-field of an optional section is required only when the section is given.
                    assert parents or default.startswith("required"), where
                elif info.default is not None and default.startswith("`"):
                    assert default.split("`")[1] == shown(info.default), where
