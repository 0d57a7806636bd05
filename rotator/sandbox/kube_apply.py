"""Server-side apply and ``metadata.managedFields`` for the Kubernetes emulator.

Every write records which field manager set which fields, in the real ``managedFields`` shape
(``manager``, ``operation`` Apply or Update, ``apiVersion``, ``time``, ``fieldsType: FieldsV1``,
``fieldsV1`` with ``f:<field>`` keys and ``.`` for a map that manager created). A PATCH with
``application/apply-patch+yaml`` merges the applied configuration into the live object: fields the
manager applied before and leaves out now are removed unless someone else owns them; a field the
applied value would change that another manager owns is a conflict (409, ``FieldManagerConflict``
causes, the apiserver's wording) unless ``force=true``, which takes ownership.

Simplified, compared with the real structured-merge-diff:
- every list is atomic (one field owned as a whole; no ``k:``/``v:`` list-item keys), and maps are
  always granular (each key its own field) — right for the maps of the kinds served here (labels,
  annotations, data) and for ServiceAccount ``imagePullSecrets`` (atomic in k8s.io/api too), coarser
  than the real thing for ``secrets`` (a map keyed by name), ``ownerReferences`` and ``finalizers``;
- a conflict is an exact field owned by another manager name (the applier's own Update entry does not
  conflict with its Apply);
- Update ownership comes from a leaf-by-leaf diff of the stored object (defaults included), and a
  ``managedFields`` sent by a client is ignored rather than used to reset ownership;
- no subresources (``status``) and no conversion between versions (one version per kind).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from rotator.sandbox.kube_status import KubeError
from rotator.sandbox.kube_types import now_rfc3339

Path = tuple[str, ...]
Obj = dict[str, Any]

APPLY, UPDATE = "Apply", "Update"
# Identity and server-owned fields: never managed (as in the real apiserver's field manager).
UNMANAGED_TOP = frozenset({"apiVersion", "kind", "status"})
UNMANAGED_META = frozenset(
    {
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "generation",
        "managedFields",
        "selfLink",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    }
)
MAX_MANAGER_LENGTH = 128  # the apiserver's limit on fieldManager
_MARK = object()  # a field set's own node, rendered as "."
_MISSING = object()


@dataclass
class Entry:
    manager: str
    operation: str
    api_version: str
    time: str
    fields: set[Path] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        return {
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(self.fields),
        }


# -- field sets ---------------------------------------------------------------------------------------
def _managed_part(obj: Obj) -> Obj:
    top = {k: v for k, v in obj.items() if k not in UNMANAGED_TOP}
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in UNMANAGED_META}
    top.pop("metadata", None)
    if meta:
        top["metadata"] = meta
    return top


def fields_of(obj: Obj) -> tuple[dict[Path, Any], set[Path]]:
    """``obj``'s managed fields with their values (maps are walked key by key; scalars, lists and empty
    maps are fields), and the paths of the non-empty maps between them (``metadata`` itself excluded)."""
    found: dict[Path, Any] = {}
    inner: set[Path] = set()

    def walk(node: Obj, path: Path) -> None:
        for key, value in node.items():
            here = (*path, key)
            if isinstance(value, dict) and value:
                inner.add(here)
                walk(value, here)
            else:
                found[here] = value

    walk(_managed_part(obj), ())
    inner.discard(("metadata",))
    return found, inner


def leaves(obj: Obj) -> dict[Path, Any]:
    return fields_of(obj)[0]


def to_fields_v1(paths: set[Path]) -> dict[str, Any]:
    tree: dict[Any, Any] = {}
    for path in paths:
        node = tree
        for key in path:
            node = node.setdefault(key, {})
        node[_MARK] = True

    def render(node: dict[Any, Any]) -> dict[str, Any]:
        children = {k: v for k, v in node.items() if k is not _MARK}
        out: dict[str, Any] = {".": {}} if node.get(_MARK) and children else {}
        for key in sorted(children):
            out[f"f:{key}"] = render(children[key])
        return out

    return render(tree)


def from_fields_v1(fields: dict[str, Any], prefix: Path = ()) -> set[Path]:
    paths: set[Path] = set()
    for key, child in fields.items():
        if key == ".":
            paths.add(prefix)
        elif key.startswith("f:"):
            here = (*prefix, key[2:])
            paths |= from_fields_v1(child, here) if child else {here}
    return paths


def entries_of(obj: Obj | None) -> list[Entry]:
    found = []
    for raw in ((obj or {}).get("metadata") or {}).get("managedFields") or []:
        found.append(
            Entry(
                manager=raw.get("manager", ""),
                operation=raw.get("operation", UPDATE),
                api_version=raw.get("apiVersion", ""),
                time=raw.get("time", ""),
                fields=from_fields_v1(raw.get("fieldsV1") or {}),
            )
        )
    return found


def _entry(entries: list[Entry], manager: str, operation: str, api_version: str) -> Entry:
    for entry in entries:
        if (entry.manager, entry.operation, entry.api_version) == (manager, operation, api_version):
            return entry
    entry = Entry(manager, operation, api_version, now_rfc3339())
    entries.append(entry)
    return entry


def _value(obj: Obj, path: Path) -> Any:
    node: Any = obj
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return _MISSING
        node = node[key]
    return node


def _set(obj: Obj, path: Path, value: Any) -> None:
    node = obj
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[path[-1]] = copy.deepcopy(value)


def _delete(obj: Obj, path: Path) -> None:
    parent = _value(obj, path[:-1])
    if isinstance(parent, dict):
        parent.pop(path[-1], None)


def _finish(entries: list[Entry], present: set[Path]) -> list[dict[str, Any]]:
    """Drop fields the object no longer has (``present``: its leaves and maps) and entries left empty."""
    result = []
    for entry in entries:
        entry.fields &= present
        if entry.fields:
            result.append(entry.to_json())
    return result


# -- Update: create, replace and the other patch types --------------------------------------------------
def track_update(old: Obj | None, new: Obj, manager: str, api_version: str) -> list[dict[str, Any]]:
    """``new``'s managedFields after ``manager`` wrote it over ``old`` (None for a create): the fields it
    changed become its own, and no one else's."""
    entries = entries_of(old)
    before, old_maps = fields_of(old) if old is not None else ({}, set())
    after, new_maps = fields_of(new)
    changed = {p for p, v in after.items() if before.get(p, _MISSING) != v}
    created = new_maps - old_maps - set(before)
    if changed or created:
        for entry in entries:
            entry.fields -= changed
        mine = _entry(entries, manager, UPDATE, api_version)
        mine.fields |= changed | created
        mine.time = now_rfc3339()
    return _finish(entries, set(after) | new_maps)


# -- Apply ----------------------------------------------------------------------------------------------
def conflict_error(conflicts: list[tuple[Entry, Path]]) -> KubeError:
    """409 as the apiserver words it: one line for one conflict, else grouped by manager."""

    def who(entry: Entry) -> str:
        name = f'"{entry.manager}"'
        return f"{name} using {entry.api_version}" if entry.operation == UPDATE else name

    def dotted(path: Path) -> str:
        return "".join(f".{key}" for key in path)

    if len(conflicts) == 1:
        entry, path = conflicts[0]
        message = f"Apply failed with 1 conflict: conflict with {who(entry)}: {dotted(path)}"
    else:
        lines: list[str] = []
        for manager in sorted({who(e) for e, _ in conflicts}):
            lines.append(f"conflicts with {manager}:")
            lines += [f"- {dotted(p)}" for e, p in conflicts if who(e) == manager]
        message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
    causes = [
        {"reason": "FieldManagerConflict", "message": f"conflict with {who(e)}", "field": dotted(p)}
        for e, p in conflicts
    ]
    return KubeError(409, message, details={"causes": causes})


def apply(
    live: Obj | None, applied: Obj, applied_leaves: dict[Path, Any], manager: str, force: bool, api_version: str
) -> tuple[Obj, list[dict[str, Any]]]:
    """The object after ``manager`` applied ``applied`` (its fields ``applied_leaves``) to ``live``
    (None: create), and its managedFields. Raises the 409 on conflicts unless ``force``."""
    entries = entries_of(live)
    current = leaves(live) if live is not None else {}
    conflicts = [
        (entry, path)
        for path, value in sorted(applied_leaves.items())
        if current.get(path, value) != value
        for entry in entries
        if entry.manager != manager and path in entry.fields
    ]
    if conflicts and not force:
        raise conflict_error(conflicts)
    for entry, path in conflicts:
        entry.fields.discard(path)
    identity = {k: v for k, v in applied["metadata"].items() if k in ("name", "namespace")}
    result = copy.deepcopy(live) if live is not None else {"metadata": identity}
    for key in ("apiVersion", "kind"):
        result[key] = applied[key]
    for path, value in applied_leaves.items():
        _set(result, path, value)
    mine = _entry(entries, manager, APPLY, api_version)
    others = set().union(*(e.fields for e in entries if e is not mine))
    dropped = mine.fields - set(applied_leaves) - others
    for path in dropped:
        _delete(result, path)
    # A repeated apply that changes nothing keeps its time, so it stores nothing (no new resourceVersion).
    changed = dropped or conflicts or any(current.get(p, _MISSING) != v for p, v in applied_leaves.items())
    if changed or mine.fields != set(applied_leaves):
        mine.time = now_rfc3339()
    mine.fields = set(applied_leaves)
    result_leaves, result_maps = fields_of(result)
    return result, _finish(entries, set(result_leaves) | result_maps)
