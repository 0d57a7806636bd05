"""The RegistryCredential CustomResourceDefinition, generated from the typed models.

The spec is one credential's config (``RegistryCredentialSpec``), the status is ``RegistryCredentialStatus``;
both reach the API server as a *structural* openAPIV3Schema, which pydantic's JSON Schema is not: Kubernetes
wants every node typed, no ``$ref``, no ``anyOf``/``oneOf`` carrying types or properties, no ``const``,
``title``, ``examples`` or ``$schema``, and a boolean ``exclusiveMinimum``. ``structural()`` rewrites one
into the other. A union of objects becomes one object with every branch's properties; the choice between
branches, and the model's cross-field rules (its ``model_validator``s, which JSON Schema cannot say), become
CEL ``x-kubernetes-validations`` from the one table ``RULES`` (tests/test_regcred_crd.py checks that the API
server and the model refuse the same specs). Where the file model takes two JSON types for one field,
the resource takes one (``PREFERRED_TYPES``): ``targets.kubernetes`` is the mapping form only, since a
RegistryCredential targets the cluster it lives in; fleets of clusters stay in the config file.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel

from rotator import regcred
from rotator.config_model import DURATION_PATTERN, RegistryCredentialSpec

Schema = dict[str, Any]

# Formats the API server knows (others are dropped: they would only be warned about, or mean something
# else, as ``duration`` does: Go's syntax there, ISO 8601 in JSON Schema).
KEPT_FORMATS = ("date-time", "date", "byte", "int32", "int64", "double", "float", "email", "uri", "hostname")
# The JSON type kept when a field takes several: the first of these among its branches.
PREFERRED_TYPES = ("object", "string", "array", "integer", "number", "boolean")
# Keywords of JSONSchemaProps that a structural schema keeps; everything else pydantic writes is dropped.
KEPT = frozenset(
    {
        "type",
        "description",
        "properties",
        "required",
        "items",
        "additionalProperties",
        "enum",
        "default",
        "nullable",
        "format",
        "pattern",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "anyOf",
    }
)
# Inside anyOf only value validations are allowed (no type, description, default, properties...).
VALUE_VALIDATIONS = frozenset(
    {"enum", "pattern", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}
    | {"minItems", "maxItems", "format"}
)


@dataclass(frozen=True)
class Rule:
    """One CEL rule on a schema node: ``rule`` must hold for ``self`` (that node's value); a refusal is
    reported at ``field_path`` below the node (``.apikey``) when given, as ``reason`` when given."""

    rule: str
    message: str
    field_path: str = ""
    reason: str = ""

    def wire(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


def one_of(*fields: str) -> str:
    """CEL: exactly one of ``fields`` is present."""
    return f"[{', '.join(_given(f) for f in fields)}].filter(x, x).size() == 1"


def _given(field: str) -> str:
    return f"has(self.{field})"


def _required(field: str, rule: str, message: str) -> Rule:
    """A rule that asks for ``field`` (reported as a Required value at it)."""
    return Rule(rule, message, field_path=f".{field}", reason="FieldValueRequired")


SECRET_SOURCE = Rule(
    one_of("file", "env", "secretKeyRef"),
    "give exactly one of file (a path to a file holding the key), env (an environment variable name) or "
    "secretKeyRef (a key of a Kubernetes Secret); keys are never written inline",
)
NOT_BOTH_AUTH = Rule("!(has(self.apikey) && has(self.auth))", "give either apikey or auth, not both", ".auth")
ORGANIZATION = "has(self.tokenType) && self.tokenType == 'organization'"

# Cross-field rules of the model (rotator.config_model), keyed by its JSON Schema definition name (a
# model's class name): each is the CEL twin of a check of a model_validator, with the message the model
# gives for a resource (settings.credential_from_spec: field names camelCase).
# Rules that compare durations (retry_backoff_max >= retry_backoff, interval <= max_age, key_expiry)
# or walk lists (duplicate projects) are left to the model: CEL's durations have no days or weeks, and
# the API server budgets the cost of a rule over a list of unbounded length. The controller reports
# those in the resource's status.
RULES: Mapping[str, tuple[Rule, ...]] = {
    "SecretSourceSpec": (SECRET_SOURCE,),
    "ApiKeyAuthSpec": (SECRET_SOURCE,),
    "TrustedProfileAuthSpec": (
        Rule(one_of("profileId", "profileName"), "give exactly one of profileId or profileName"),
    ),
    "IamProviderSpec": (
        NOT_BOTH_AUTH,
        _required("apikey", "has(self.apikey) || has(self.auth)", "is required (or auth)"),
    ),
    "DockerHubProviderSpec": (
        Rule(
            f"!({ORGANIZATION}) || has(self.org)",
            "an organization access token needs the organization (org)",
            ".org",
            "FieldValueRequired",
        ),
        Rule(
            f"!({ORGANIZATION}) || (has(self.repositories) && size(self.repositories) > 0)",
            "an organization access token needs at least one repository (org/repo)",
            ".repositories",
            "FieldValueRequired",
        ),
        Rule(
            f"{ORGANIZATION} || !has(self.repositories) || size(self.repositories) == 0",
            "repositories apply to organization access tokens only (PATs cover every repository)",
            ".repositories",
            "FieldValueForbidden",
        ),
        Rule("!has(self.scopes) || size(self.scopes) > 0", "scopes must not be empty", ".scopes"),
    ),
    "RegistrySpec": (
        _required("images", "size(self.images) > 0", "is empty; name at least one image the key must pull"),
    ),
    "ScheduleSpec": (
        Rule("!(has(self.interval) && has(self.cron))", "give interval or cron, not both"),
        Rule("has(self.interval) || has(self.cron)", "needs interval or cron"),
    ),
    "NamespacesSpec": (
        Rule(
            "[has(self.names) && size(self.names) > 0, has(self.selector), has(self.all) && self.all]"
            ".filter(x, x).size() == 1",
            "choose namespaces by exactly one of names, selector or all",
        ),
    ),
    "CodeEngineTargetSpec": (
        NOT_BOTH_AUTH,
        Rule(one_of("projectId", "projects"), "give exactly one of projectId or projects"),
        _required("endpoint", "!has(self.projectId) || has(self.endpoint)", "is required"),
        Rule("!has(self.projects) || size(self.projects) > 0", "is not a non-empty list", ".projects"),
    ),
    "TargetsSpec": (Rule("has(self.kubernetes) || has(self.codeengine)", "names no target"),),
    "RegistryCredentialSpec": (
        _required(
            "targets.codeengine.apikey",
            "self.provider.kind == 'ibm-iam' || !has(self.targets.codeengine) || has(self.targets.codeengine.apikey)"
            " || has(self.targets.codeengine.auth)",
            "is required: the dockerhub provider has no IAM API key to call Code Engine with",
        ),
    ),
}


# -- JSON Schema -> structural schema ----------------------------------------------------------------


def structural(schema: Schema, rules: Mapping[str, Iterable[Rule]] = RULES) -> Schema:
    """``schema`` (pydantic's, with ``$defs``) as a structural schema with CEL rules attached."""
    converted: Schema = _ordered(_Converter(schema.get("$defs") or {}, rules).node(schema, name=schema.get("title")))
    return converted


_FIRST = ("type", "description", "required")


def _ordered(value: Any) -> Any:
    """Keywords in a reading order (type, description, required, the rest as written), recursively."""
    if isinstance(value, list):
        return [_ordered(v) for v in value]
    if not isinstance(value, dict):
        return value
    keys = [k for k in _FIRST if k in value] + [k for k in value if k not in _FIRST]
    return {k: value[k] if k in ("enum", "default") else _ordered(value[k]) for k in keys}


class _Converter:
    def __init__(self, defs: Mapping[str, Schema], rules: Mapping[str, Iterable[Rule]]) -> None:
        self.defs = defs
        self.rules = rules

    def node(self, raw: Schema, depth: int = 0, name: str | None = None) -> Schema:
        """``raw`` as a structural node; ``name``: the definition it is (the root's title), for its rules."""
        if depth > 64:
            raise ValueError("schema nests deeper than 64 levels (a recursive model?); a CRD cannot say that")
        raw, ref_name = self._resolve(raw)
        name = ref_name or name
        branches = [b for b in raw.get("anyOf") or raw.get("oneOf") or [] if b.get("type") != "null"]
        if branches:
            outer = {k: v for k, v in raw.items() if k not in ("anyOf", "oneOf", "discriminator")}
            merged = self._union([self.node(b, depth + 1) for b in branches])
            out = merged | self._scalars(outer)
        else:
            out = self._scalars(raw)
            if "properties" in raw:
                out["properties"] = {k: self.node(v, depth + 1) for k, v in raw["properties"].items()}
            if isinstance(raw.get("additionalProperties"), dict):
                out["additionalProperties"] = self.node(raw["additionalProperties"], depth + 1)
            if isinstance(raw.get("items"), dict):
                out["items"] = self.node(raw["items"], depth + 1)
            elif raw.get("prefixItems"):  # a fixed tuple: any of its item types
                out["items"] = self._union([self.node(i, depth + 1) for i in raw["prefixItems"]])
            if raw.get("uniqueItems") and out.get("items", {}).get("type") not in (None, "object", "array"):
                out["x-kubernetes-list-type"] = "set"
        _typed(out)
        rules = [r.wire() for r in self.rules.get(name or "", ())]
        rules += list(raw.get("x-kubernetes-validations") or [])  # from a model's json_schema_extra
        if rules:
            out["x-kubernetes-validations"] = out.get("x-kubernetes-validations", []) + rules
        _check_default(out)
        return out

    def _resolve(self, raw: Schema) -> tuple[Schema, str | None]:
        """``raw`` with its ``$ref`` (or single-item ``allOf`` of one) inlined, and the definition's name."""
        ref = raw.get("$ref")
        if ref is None and len(raw.get("allOf") or []) == 1:
            ref = raw["allOf"][0].get("$ref")
        if ref is None:
            return raw, None
        name = ref.rsplit("/", 1)[-1]
        siblings = {k: v for k, v in raw.items() if k not in ("$ref", "allOf")}
        return self.defs[name] | siblings, name

    @staticmethod
    def _scalars(raw: Schema) -> Schema:
        """The keywords of ``raw`` a structural node keeps, in Kubernetes' spelling."""
        out: Schema = {}
        for key, value in raw.items():
            if key == "const":
                out["enum"] = [value]
            elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
                out[key.replace("exclusiveM", "m")] = value  # JSON Schema 2020: a number; OpenAPI 3.0: a flag
                out[key] = True
            elif key == "format":
                if value == "duration":
                    out["pattern"] = DURATION_PATTERN
                elif value in KEPT_FORMATS:
                    out["format"] = value
            elif key == "x-kubernetes-validations":
                continue  # attached by node()
            elif key == "additionalProperties":
                if value is True:  # false (extra=forbid) is what pruning does anyway; a schema is a child
                    out[key] = True
            elif key.startswith("x-kubernetes-") or (key in KEPT and key not in ("properties", "items", "anyOf")):
                out[key] = copy.deepcopy(value)
        if out.get("default") is None:
            out.pop("default", None)
        return out

    def _union(self, branches: list[Schema]) -> Schema:
        """One structural node for a value matching any of ``branches`` (converted nodes)."""
        if all(b == branches[0] for b in branches):
            return branches[0]
        types = {b.get("type") for b in branches}
        if types == {"integer", "string"}:
            return {"x-kubernetes-int-or-string": True}
        kept = next(t for t in PREFERRED_TYPES if t in types) if types - {None} else None
        branches = [b for b in branches if b.get("type") == kept]
        if len(branches) == 1:
            return branches[0]
        if kept == "object":
            return _object_union(branches, self._union)
        if kept == "array":
            return {"type": "array", "items": self._union([b["items"] for b in branches])}
        alternatives = [{k: v for k, v in b.items() if k in VALUE_VALIDATIONS} for b in branches]
        out: Schema = {"type": kept}
        if all(alternatives):  # a branch without constraints takes any value of the type
            enums = [a for a in alternatives if set(a) == {"enum"}]
            others = [a for a in alternatives if set(a) != {"enum"}]
            merged_enum = [v for a in enums for v in a["enum"]]
            alternatives = others + ([{"enum": merged_enum}] if merged_enum else [])
            alternatives = [a for i, a in enumerate(alternatives) if a not in alternatives[:i]]
            if len(alternatives) == 1:
                out |= alternatives[0]
            else:
                out["anyOf"] = alternatives
        return out


def _object_union(branches: list[Schema], union: Callable[[list[Schema]], Schema]) -> Schema:
    """Branches of objects as one object: every property, each branch's required ones asked for by CEL,
    keyed on the discriminator (a property each branch fixes to its own value) when there is one."""
    properties: dict[str, Schema] = {}
    for branch in branches:
        for key, child in (branch.get("properties") or {}).items():
            properties[key] = child if key not in properties else union([properties[key], child])
            if properties[key].get("type") is None and "x-kubernetes-int-or-string" not in properties[key]:
                properties[key] = child
    for key, child in properties.items():
        if not all(key in (b.get("properties") or {}) for b in branches) and "default" in child:
            # A default of one branch's field would be filled in for every branch.
            properties[key] = {k: v for k, v in child.items() if k != "default"}
    required_sets = [set(b.get("required") or ()) for b in branches]
    always = set.intersection(*required_sets)
    out: Schema = {"type": "object", "properties": properties}
    tag = _discriminator(branches)
    rules: list[dict[str, str]] = []
    if tag is None:
        shapes = [sorted(r - always) for r in required_sets]
        if all(shapes):
            alternatives = [" && ".join(_given(f) for f in shape) for shape in shapes]
            rules.append(
                {
                    "rule": f"[{', '.join(f'({a})' for a in alternatives)}].filter(x, x).size() == 1",
                    "message": "give exactly one of " + ", ".join(" and ".join(s) for s in shapes),
                }
            )
    else:
        values = [b["properties"][tag]["enum"][0] for b in branches]
        properties[tag] = {"type": "string", "enum": values}
        defaults = [b["properties"][tag].get("default") for b in branches]
        if any(defaults):
            properties[tag]["default"] = next(d for d in defaults if d)
        for value, branch, needed in zip(values, branches, required_sets, strict=True):
            unless = f"self.{tag} != '{value}'"
            own = set(branch.get("properties") or {})
            missing = sorted(needed - always - {tag})
            if missing:
                test = " && ".join(_given(f) for f in missing)
                rules.append({"rule": f"{unless} || ({test})", "message": f"{tag} {value} needs {', '.join(missing)}"})
            foreign = sorted(set(properties) - own)
            if foreign:
                test = " && ".join(f"!{_given(f)}" for f in foreign)
                rules.append(
                    {"rule": f"{unless} || ({test})", "message": f"{', '.join(foreign)}: not a field of {tag} {value}"}
                )
            for rule in branch.get("x-kubernetes-validations") or []:
                rules.append(rule | {"rule": f"{unless} || ({rule['rule']})"})
        if all(tag in r for r in required_sets):
            always.add(tag)
    if always:
        out["required"] = sorted(always)
    if rules:
        out["x-kubernetes-validations"] = rules
    return out


def _discriminator(branches: list[Schema]) -> str | None:
    """A property every branch fixes to one value of its own (``kind: ibm-iam`` / ``kind: dockerhub``)."""
    common: set[str] = set.intersection(*(set(b.get("properties") or {}) for b in branches))
    for key in sorted(common):
        fixed = [b["properties"][key].get("enum") for b in branches]
        if all(isinstance(f, list) and len(f) == 1 for f in fixed) and len({f[0] for f in fixed if f}) == len(fixed):
            return key
    return None


def _typed(node: Schema) -> None:
    """Give ``node`` the type its keywords imply; an untyped value (Any) keeps whatever it holds."""
    if "type" in node or node.get("x-kubernetes-int-or-string"):
        return
    if "properties" in node or "additionalProperties" in node:
        node["type"] = "object"
    elif "items" in node:
        node["type"] = "array"
    elif node.get("enum") and all(isinstance(v, str) for v in node["enum"]):
        node["type"] = "string"
    else:
        node["x-kubernetes-preserve-unknown-fields"] = True


def _check_default(node: Schema) -> None:
    """Keep a default only where the API server would accept it (a scalar of the node's type and enum)."""
    if "default" not in node:
        return
    value, kind = node["default"], node.get("type")
    scalar: dict[str, type | tuple[type, ...]] = {
        "string": str,
        "integer": int,
        "number": (int, float),
        "boolean": bool,
    }
    fits = kind in scalar and isinstance(value, scalar[kind]) and value in node.get("enum", [value])
    if not fits or (isinstance(value, str) and re.search(node.get("pattern", ""), value) is None):
        del node["default"]


# -- the definition ---------------------------------------------------------------------------------


PRINTER_COLUMNS = (
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Key Age", "type": "date", "jsonPath": ".status.currentKey.createdAt"},
    {"name": "Next Rotation", "type": "string", "jsonPath": ".status.nextRotationAt"},
    {"name": "In Sync", "type": "integer", "jsonPath": ".status.targets.inSync"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Provider", "type": "string", "jsonPath": ".spec.provider.kind", "priority": 1},
    {"name": "Last Rotation", "type": "string", "jsonPath": ".status.lastRotation.result", "priority": 1},
)


def definition(spec: type[BaseModel] = RegistryCredentialSpec) -> dict[str, Any]:
    """The CustomResourceDefinition (apiextensions.k8s.io/v1) as a dict."""
    spec_schema = structural(spec.model_json_schema(by_alias=True))
    spec_schema["description"] = "One credential's configuration, as in the config file but camelCase."
    status_schema = structural(regcred.RegistryCredentialStatus.model_json_schema(by_alias=True))
    status_schema["description"] = "What rotator observed: conditions, the current key, targets, the last rotation."
    conditions = status_schema["properties"]["conditions"]
    conditions |= {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}
    schema: Schema = _ordered(
        {
            "type": "object",
            "description": "A registry pull credential that rotator rotates and distributes.",
            "required": ["spec"],
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object"},
                "spec": spec_schema,
                "status": status_schema,
            },
        }
    )
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": regcred.CRD_NAME},
        "spec": {
            "group": regcred.GROUP,
            "scope": "Cluster",
            "names": {
                "plural": regcred.PLURAL,
                "singular": regcred.SINGULAR,
                "kind": regcred.KIND,
                "listKind": f"{regcred.KIND}List",
                "shortNames": list(regcred.SHORT_NAMES),
                "categories": list(regcred.CATEGORIES),
            },
            "versions": [
                {
                    "name": regcred.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [dict(c) for c in PRINTER_COLUMNS],
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


HEADER = (
    "# Generated by `rotator schema crd` from rotator's models (rotator/crd.py); do not edit.\n"
    "# Regenerate: python -m rotator schema crd > deploy/crd/registrycredentials.rotator.example.com.yaml\n"
)


@functools.lru_cache(maxsize=1)
def render() -> str:
    """The definition as the YAML document that deploy/crd/ holds."""
    return HEADER + yaml.safe_dump(definition(), sort_keys=False, width=120)
