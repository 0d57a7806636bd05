"""The three PATCH flavours the apiserver accepts: RFC 6902, RFC 7386 and strategic merge.

Strategic merge follows the Go struct tags of the types served here: maps merge, lists are
replaced, except lists tagged ``patchStrategy:"merge"`` (keyed lists merge by their merge key,
primitive lists are unioned). ServiceAccount ``imagePullSecrets`` is atomic, so it is replaced.
"""

from __future__ import annotations

import copy
from typing import Any


class PatchError(Exception):
    """The patch document is well-formed JSON but cannot be applied (422 in the apiserver)."""


class PatchFormatError(Exception):
    """The patch document itself is malformed (400 in the apiserver)."""


# -- RFC 6902 --------------------------------------------------------------------------------------


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str):
        raise PatchFormatError("path must be a string")
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f'JSON pointer must be empty or start with a "/": {path}')
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _index(container: list[Any], token: str, *, for_add: bool) -> int:
    if for_add and token == "-":
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise PatchError(f"invalid array index: {token}")
    index = int(token)
    limit = len(container) if for_add else len(container) - 1
    if index > limit:
        raise PatchError(f"array index out of bounds: {index}")
    return index


def _parent(doc: Any, parts: list[str], path: str) -> Any:
    current = doc
    for part in parts[:-1]:
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list):
            current = current[_index(current, part, for_add=False)]
        else:
            raise PatchError(f"doc is missing path: {path}")
    return current


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, for_add=False)]
    raise PatchError(f"doc is missing path: {path}")


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, for_add=True), value)
    else:
        raise PatchError(f"doc is missing path: {path}")
    return doc


def _remove(doc: Any, path: str) -> tuple[Any, Any]:
    parts = _pointer(path)
    if not parts:
        raise PatchError("cannot remove the whole document")
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return doc, parent.pop(last)
    if isinstance(parent, list):
        return doc, parent.pop(_index(parent, last, for_add=False))
    raise PatchError(f"unable to remove nonexistent key: {last}: missing value")


def json_patch(doc: Any, ops: Any) -> Any:
    """Apply an RFC 6902 operation list to a copy of ``doc``."""
    if not isinstance(ops, list):
        raise PatchFormatError("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or not isinstance(op.get("op"), str):
            raise PatchFormatError("json patch operation must be an object with an 'op'")
        doc = _apply_op(doc, op)
    return doc


def _value(op: dict[str, Any]) -> Any:
    if "value" not in op:
        raise PatchError(f"missing value for {op['op']} operation")
    return copy.deepcopy(op["value"])


def _apply_op(doc: Any, op: dict[str, Any]) -> Any:
    kind, path, source = op["op"], op.get("path"), op.get("from", "")
    if not isinstance(path, str) or not isinstance(source, str):
        raise PatchFormatError(f"{kind} operation needs a string 'path' (and 'from' for move/copy)")
    if kind == "add":
        return _add(doc, path, _value(op))
    if kind == "remove":
        return _remove(doc, path)[0]
    if kind == "replace":
        _get(doc, path)
        doc, _ = _remove(doc, path) if _pointer(path) else (doc, None)
        return _add(doc, path, _value(op))
    if kind == "test":
        if _get(doc, path) != op.get("value"):
            raise PatchError(f"testing value {path} failed: test failed")
        return doc
    if kind in ("move", "copy"):
        value = copy.deepcopy(_get(doc, source))
        if kind == "move":
            doc, _ = _remove(doc, source)
        return _add(doc, path, value)
    raise PatchFormatError(f"Unexpected kind: {kind}")


# -- RFC 7386 --------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# -- strategic merge -------------------------------------------------------------------------------

# (kind, path) -> merge key of a keyed list; "" marks a primitive list that is unioned.
_ALL = "*"
MERGE_LISTS: dict[tuple[str, tuple[str, ...]], str] = {
    (_ALL, ("metadata", "ownerReferences")): "uid",
    (_ALL, ("metadata", "finalizers")): "",
    ("ServiceAccount", ("secrets",)): "name",
}


def _merge_key(kind: str, path: tuple[str, ...]) -> str | None:
    return MERGE_LISTS.get((kind, path), MERGE_LISTS.get((_ALL, path)))


def _strip(value: Any) -> Any:
    """A patch value placed where nothing was: directives and nulls removed."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("$") and v is not None}
    if isinstance(value, list):
        return [_strip(v) for v in value if not (isinstance(v, dict) and v.get("$patch") == "delete")]
    return value


def strategic_merge(original: dict[str, Any], patch: Any, kind: str) -> dict[str, Any]:
    if not isinstance(patch, dict):
        raise PatchFormatError("json: cannot unmarshal into Go value of type map[string]interface {}")
    merged = _merge_map(original, patch, (), kind)
    return merged if merged is not None else {}


def _merge_map(
    original: dict[str, Any], patch: dict[str, Any], path: tuple[str, ...], kind: str
) -> dict[str, Any] | None:
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return _strip(patch)  # type: ignore[no-any-return]
    if directive is not None:
        raise PatchError(f"Unknown patch type: {directive} in map: {patch}")
    result = dict(original)
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list) and isinstance(value, list):
                result[field] = [v for v in result[field] if v not in value]
            continue
        if key.startswith("$"):  # $setElementOrder/..., $retainKeys: ordering hints only here
            continue
        _merge_field(result, key, value, (*path, key), kind)
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_field(result: dict[str, Any], key: str, value: Any, path: tuple[str, ...], kind: str) -> None:
    if value is None:
        result.pop(key, None)
        return
    current = result.get(key)
    if isinstance(value, dict):
        merged = _merge_map(current if isinstance(current, dict) else {}, value, path, kind)
        if merged is None:
            result.pop(key, None)
        else:
            result[key] = merged
        return
    merge_key = _merge_key(kind, path)
    if isinstance(value, list) and merge_key is not None:
        result[key] = _merge_list(current if isinstance(current, list) else [], value, merge_key, path, kind)
        return
    result[key] = _strip(value)


def _merge_list(original: list[Any], patch: list[Any], key: str, path: tuple[str, ...], kind: str) -> list[Any]:
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return [_strip(p) for p in patch if not (isinstance(p, dict) and "$patch" in p)]
    if not key:  # primitive list: union, original order first
        return original + [p for p in patch if p not in original]
    result = [copy.deepcopy(item) for item in original]
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise PatchError(f"map: {item} does not contain declared merge key: {key}")
        position = next((i for i, o in enumerate(result) if isinstance(o, dict) and o.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if position is not None:
                result.pop(position)
            continue
        if position is None:
            result.append(_strip(item))
        else:
            merged = _merge_map(result[position], item, path, kind)
            if merged is not None:
                result[position] = merged
    return result
