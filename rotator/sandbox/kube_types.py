"""The API resources the Kubernetes emulator serves, and the discovery documents that list them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

CRUD = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
CREATE_ONLY = ("create",)


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    verbs: tuple[str, ...] = CRUD
    short_names: tuple[str, ...] = ()
    # Field-selector labels beyond metadata.name / metadata.namespace.
    field_labels: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    # Set for a CustomResourceDefinition's kinds: how its objects are checked and printed.
    custom: CustomKind | None = field(default=None, compare=False, repr=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        return f"{self.group}/{self.plural}"

    @property
    def stored(self) -> bool:
        """Reviews are answered, never stored."""
        return "get" in self.verbs

    def discovery(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(self.verbs),
        }
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        if self.categories:
            entry["categories"] = list(self.categories)
        return entry


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    type: str
    json_path: str
    format: str = ""
    description: str = ""
    priority: int = 0


@dataclass(frozen=True)
class CustomKind:
    """One served version of a CustomResourceDefinition."""

    schema: dict[str, Any] = field(compare=False)
    status: bool = False  # the /status subresource is enabled
    columns: tuple[PrinterColumn, ...] = ()


NAMESPACES = ResourceType(
    "", "v1", "namespaces", "namespace", "Namespace", False, short_names=("ns",), field_labels=("status.phase",)
)
SECRETS = ResourceType("", "v1", "secrets", "secret", "Secret", True, field_labels=("type",))
SERVICEACCOUNTS = ResourceType(
    "", "v1", "serviceaccounts", "serviceaccount", "ServiceAccount", True, short_names=("sa",)
)
CONFIGMAPS = ResourceType("", "v1", "configmaps", "configmap", "ConfigMap", True, short_names=("cm",))
EVENTS = ResourceType(
    "",
    "v1",
    "events",
    "event",
    "Event",
    True,
    short_names=("ev",),
    field_labels=(
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ),
)
LEASES = ResourceType("coordination.k8s.io", "v1", "leases", "lease", "Lease", True)
CRDS = ResourceType(
    "apiextensions.k8s.io",
    "v1",
    "customresourcedefinitions",
    "customresourcedefinition",
    "CustomResourceDefinition",
    False,
    short_names=("crd", "crds"),
    categories=("api-extensions",),
)
TOKENREVIEWS = ResourceType(
    "authentication.k8s.io", "v1", "tokenreviews", "tokenreview", "TokenReview", False, verbs=CREATE_ONLY
)
SUBJECTACCESSREVIEWS = ResourceType(
    "authorization.k8s.io",
    "v1",
    "subjectaccessreviews",
    "subjectaccessreview",
    "SubjectAccessReview",
    False,
    verbs=CREATE_ONLY,
)
SELFSUBJECTACCESSREVIEWS = ResourceType(
    "authorization.k8s.io",
    "v1",
    "selfsubjectaccessreviews",
    "selfsubjectaccessreview",
    "SelfSubjectAccessReview",
    False,
    verbs=CREATE_ONLY,
)

RESOURCES: tuple[ResourceType, ...] = (
    NAMESPACES,
    SECRETS,
    SERVICEACCOUNTS,
    CONFIGMAPS,
    EVENTS,
    LEASES,
    CRDS,
    TOKENREVIEWS,
    SUBJECTACCESSREVIEWS,
    SELFSUBJECTACCESSREVIEWS,
)
# group -> version -> plural -> type
BY_PATH: dict[str, dict[str, dict[str, ResourceType]]] = {}
for _rt in RESOURCES:
    BY_PATH.setdefault(_rt.group, {}).setdefault(_rt.version, {})[_rt.plural] = _rt
BY_KEY: dict[str, ResourceType] = {rt.key: rt for rt in RESOURCES}
GROUPS = [g for g in BY_PATH if g]

SERVER_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-rotator-sandbox",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-12-11T00:00:00Z",
    "goVersion": "go1.23.3",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


Paths = dict[str, dict[str, dict[str, ResourceType]]]


def api_group(group: str, paths: Paths = BY_PATH) -> dict[str, Any]:
    versions = [{"groupVersion": f"{group}/{v}", "version": v} for v in paths[group]]
    return {"name": group, "versions": versions, "preferredVersion": versions[0]}


def api_group_list(paths: Paths = BY_PATH) -> dict[str, Any]:
    groups = [api_group(g, paths) for g in paths if g]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group_doc(group: str, paths: Paths = BY_PATH) -> dict[str, Any]:
    return {"kind": "APIGroup", "apiVersion": "v1"} | api_group(group, paths)


def api_resource_list(group: str, version: str, paths: Paths = BY_PATH) -> dict[str, Any]:
    resources: list[dict[str, Any]] = []
    for rt in paths[group][version].values():
        resources.append(rt.discovery())
        if rt.custom is not None and rt.custom.status:
            resources.append(
                {"name": f"{rt.plural}/status", "singularName": "", "namespaced": rt.namespaced, "kind": rt.kind}
                | {"verbs": ["get", "patch", "update"]}
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str) -> dt.datetime | None:
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
