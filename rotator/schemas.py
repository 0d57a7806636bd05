"""Documents generated from rotator's models, printed by ``rotator schema <name>`` and checked in (tests
compare the committed copies with freshly generated ones, so they never drift)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

CONFIG_SCHEMA_ID = "https://rotator.example.com/schemas/rotator.schema.json"
CONFIG_SCHEMA_FILE = "config/rotator.schema.json"


def config_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the config file: snake_case field names, as files write them."""
    from rotator.config_model import ConfigFileSpec

    body = ConfigFileSpec.model_json_schema(by_alias=False)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": CONFIG_SCHEMA_ID,
        **body,
        "title": "rotator configuration",
    }


def crd() -> str:
    """The RegistryCredential CustomResourceDefinition (YAML), as deploy/crd/ holds it."""
    from rotator import crd

    return crd.render()


def _json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2) + "\n"


# name -> the text `rotator schema <name>` prints (imports stay inside: the CLI builds its parser from this).
GENERATORS: dict[str, Callable[[], str]] = {
    "config": lambda: _json(config_schema()),
    "crd": crd,
}
