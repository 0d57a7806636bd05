"""``apiextensions.k8s.io/v1`` CustomResourceDefinitions: their own validation and defaults, and the
resource types they add (served at once: a created definition is Established in the same write).

Checked like the real apiserver: the name is ``<plural>.<group>``, the group a dotted domain, the
names (plural, singular, kind, listKind, shortNames) DNS labels or kinds, the scope Cluster or
Namespaced (and immutable), at least one version and exactly one storage version, each version's
``openAPIV3Schema`` structural (see kube_schema), subresources limited to ``status``, printer columns
with a name, a known type and a JSONPath the table printer can evaluate (see kube_jsonpath).
CEL rules must compile (see kube_cel). Conversion webhooks, ``scale`` subresources and
``selectableFields`` are not served; deleting a definition deletes its objects at once (finalizers
on them are not waited for).
"""

from __future__ import annotations

import re
from typing import Any

from rotator.sandbox import kube_jsonpath, kube_schema
from rotator.sandbox.kube_status import Cause, forbidden_field, invalid_value, quote, required
from rotator.sandbox.kube_store import Obj, Store
from rotator.sandbox.kube_types import BY_PATH, CRDS, CustomKind, Paths, PrinterColumn, ResourceType, now_rfc3339

DNS1035_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic "
    "character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for "
    "validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)
DNS1035_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
KIND_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
SCOPES = ("Cluster", "Namespaced")
COLUMN_TYPES = ("integer", "number", "string", "boolean", "date")
VERSION_RE = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def _supported(field: str, value: Any, supported: tuple[str, ...]) -> Cause:
    choices = ", ".join(quote(s) for s in supported)
    return Cause("FieldValueNotSupported", field, f"Unsupported value: {quote(value)}: supported values: {choices}")


def normalise(obj: Obj, old: Obj | None) -> Obj:
    """Defaults (singular, listKind) and the status the controllers would write: names accepted,
    Established, the storage version recorded."""
    spec = obj.setdefault("spec", {})
    names = spec.setdefault("names", {})
    if isinstance(names.get("kind"), str):
        names.setdefault("singular", names["kind"].lower())
        names.setdefault("listKind", names["kind"] + "List")
    for version in spec.get("versions") or []:
        if isinstance(version, dict):
            version.setdefault("served", True)
            version.setdefault("storage", False)
    spec.setdefault("conversion", {"strategy": "None"})
    stored = list(((old or {}).get("status") or {}).get("storedVersions") or [])
    for version in spec.get("versions") or []:
        if isinstance(version, dict) and version.get("storage") and version.get("name") not in stored:
            stored.append(version.get("name"))
    since = now_rfc3339()
    conditions = [
        {"type": t, "status": "True", "lastTransitionTime": since, "reason": r, "message": m}
        for t, r, m in (
            ("NamesAccepted", "NoConflicts", "no conflicts found"),
            ("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        )
    ]
    old_conditions = ((old or {}).get("status") or {}).get("conditions")
    obj["status"] = {"conditions": old_conditions or conditions, "acceptedNames": names, "storedVersions": stored}
    return obj


def causes(obj: Obj, old: Obj | None) -> list[Cause]:
    spec = obj.get("spec") or {}
    names: dict[str, Any] = spec["names"] if isinstance(spec.get("names"), dict) else {}
    group, plural = spec.get("group") or "", names.get("plural") or ""
    found: list[Cause] = []
    name = obj["metadata"].get("name", "")
    if name and name != f"{plural}.{group}":
        found.append(invalid_value("metadata.name", name, 'must be spec.names.plural+"."+spec.group'))
    if not group:
        found.append(required("spec.group"))
    elif "." not in group:
        found.append(invalid_value("spec.group", group, "should be a domain with at least one dot"))
    found += _names_causes(names)
    scope = spec.get("scope")
    if not scope:
        found.append(required("spec.scope"))
    elif scope not in SCOPES:
        found.append(_supported("spec.scope", scope, SCOPES))
    elif old is not None and scope != (old.get("spec") or {}).get("scope"):
        found.append(invalid_value("spec.scope", scope, "field is immutable"))
    found += _versions_causes(spec.get("versions"))
    return found


def _names_causes(names: dict[str, Any]) -> list[Cause]:
    found: list[Cause] = []
    for key in ("plural", "singular"):
        value = names.get(key)
        if key == "plural" and not value:
            found.append(required("spec.names.plural"))
        elif value and not (isinstance(value, str) and DNS1035_RE.match(value)):
            found.append(
                invalid_value(
                    f"spec.names.{key}",
                    value,
                    DNS1035_MSG,
                )
            )
    for key in ("kind", "listKind"):
        value = names.get(key)
        if key == "kind" and not value:
            found.append(required("spec.names.kind"))
        elif value and not (isinstance(value, str) and KIND_RE.match(value)):
            found.append(
                invalid_value(
                    f"spec.names.{key}",
                    value,
                    "may have mixed case, but should otherwise match: ^[a-z]([-a-z0-9]*[a-z0-9])?$",
                )
            )
    for index, short in enumerate(names.get("shortNames") or []):
        if not (isinstance(short, str) and DNS1035_RE.match(short)):
            found.append(invalid_value(f"spec.names.shortNames[{index}]", short, DNS1035_MSG))
    return found


def _versions_causes(versions: Any) -> list[Cause]:
    if not isinstance(versions, list) or not versions:
        return [required("spec.versions", "must have at least one version")]
    found: list[Cause] = []
    seen: set[str] = set()
    for index, version in enumerate(versions):
        where = f"spec.versions[{index}]"
        if not isinstance(version, dict) or not version.get("name"):
            found.append(required(f"{where}.name"))
            continue
        if version["name"] in seen:
            found.append(invalid_value(f"{where}.name", version["name"], "must be unique"))
        seen.add(version["name"])
        if not DNS1035_RE.match(version["name"]):
            found.append(invalid_value(f"{where}.name", version["name"], DNS1035_MSG))
        found += kube_schema.structural_causes(
            (version.get("schema") or {}).get("openAPIV3Schema"), f"{where}.schema.openAPIV3Schema"
        )
        for key in version.get("subresources") or {}:
            if key != "status":
                found.append(
                    forbidden_field(f"{where}.subresources.{key}", "the emulator serves only the status subresource")
                )
        for column_index, column in enumerate(version.get("additionalPrinterColumns") or []):
            found += _column_causes(column, f"{where}.additionalPrinterColumns[{column_index}]")
    storage = sum(1 for v in versions if isinstance(v, dict) and v.get("storage") is True)
    if storage != 1:
        found.append(
            invalid_value("spec.versions", versions, "must have exactly one version marked as storage version")
        )
    if not any(isinstance(v, dict) and v.get("served", True) for v in versions):
        found.append(invalid_value("spec.versions", versions, "must have at least one version marked as served"))
    return found


def _column_causes(column: Any, where: str) -> list[Cause]:
    if not isinstance(column, dict):
        return [required(where)]
    found: list[Cause] = []
    if not column.get("name"):
        found.append(required(f"{where}.name"))
    if not column.get("type"):
        found.append(required(f"{where}.type"))
    elif column["type"] not in COLUMN_TYPES:
        found.append(_supported(f"{where}.type", column["type"], COLUMN_TYPES))
    if not column.get("jsonPath"):
        found.append(required(f"{where}.jsonPath"))
    else:
        try:
            kube_jsonpath.parse(column["jsonPath"])
        except kube_jsonpath.JsonPathError as exc:
            found.append(invalid_value(f"{where}.jsonPath", column["jsonPath"], str(exc)))
    return found


# -- the kinds the definitions add --------------------------------------------------------------------


def _version_order(name: str) -> tuple[int, int, int, str]:
    """Kubernetes version priority: GA before beta before alpha, higher numbers first, others last."""
    match = VERSION_RE.match(name)
    if match is None:
        return (3, 0, 0, name)
    stage = {None: 0, "beta": 1, "alpha": 2}[match[2]]
    return (stage, -int(match[1]), -int(match[3] or 0), name)


def resource_types(crd: Obj) -> list[ResourceType]:
    spec, names = crd["spec"], crd["spec"]["names"]
    found = []
    for version in sorted(spec["versions"], key=lambda v: _version_order(v["name"])):
        if not version.get("served", True):
            continue
        columns = tuple(
            PrinterColumn(
                c["name"], c["type"], c["jsonPath"], c.get("format", ""), c.get("description", ""), c.get("priority", 0)
            )
            for c in version.get("additionalPrinterColumns") or []
        )
        custom = CustomKind(
            version["schema"]["openAPIV3Schema"], "status" in (version.get("subresources") or {}), columns
        )
        found.append(
            ResourceType(
                spec["group"],
                version["name"],
                names["plural"],
                names.get("singular") or names["kind"].lower(),
                names["kind"],
                spec["scope"] == "Namespaced",
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                custom=custom,
            )
        )
    return found


class CustomKinds:
    """The served paths (built-in and custom), rebuilt when a definition changes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._seen: tuple[str, ...] = ()
        self._paths: Paths = BY_PATH

    def paths(self) -> Paths:
        crds = sorted(self.store.scope(CRDS.key, None), key=lambda c: str(c["metadata"]["name"]))
        seen = tuple(c["metadata"]["resourceVersion"] for c in crds)
        if seen != self._seen:
            paths: Paths = {g: {v: dict(p) for v, p in vs.items()} for g, vs in BY_PATH.items()}
            for crd in crds:
                for rt in resource_types(crd):
                    paths.setdefault(rt.group, {}).setdefault(rt.version, {})[rt.plural] = rt
            self._seen, self._paths = seen, paths
        return self._paths

    def custom(self) -> list[ResourceType]:
        return [rt for versions in self.paths().values() for by in versions.values() for rt in by.values() if rt.custom]
