"""Create, get, replace, patch and delete of stored objects, in the apiserver's order of checks.

create: decode (400) -> name/namespace rules (400) -> validate (422) -> namespace exists (404) ->
already exists (409). replace/patch: decode -> object exists (404) -> resourceVersion matches
(409) -> validate against the old object (422). A write that changes nothing bumps no
resourceVersion and sends no watch event, like the real registry. apply (PATCH
application/apply-patch+yaml): PatchOptions (422) -> decode (400) -> name/namespace (400) ->
conflicts (409) -> create (201) or the replace checks. Every write records its field manager in
``managedFields`` (see kube_apply).
"""

from __future__ import annotations

import copy
import json
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

import yaml
from aiohttp import web
from multidict import CIMultiDict

from rotator.sandbox import kube_apply, kube_patch, kube_proto
from rotator.sandbox.kube_status import (
    STALE,
    KubeError,
    already_exists,
    bad_request,
    conflict,
    forbidden,
    not_found,
    success_status,
    unsupported_media_type,
)
from rotator.sandbox.kube_store import Obj, Store
from rotator.sandbox.kube_table import table, wants_table
from rotator.sandbox.kube_types import CRDS, NAMESPACES, SERVICEACCOUNTS, ResourceType, now_rfc3339
from rotator.sandbox.kube_validate import decode, normalise, on_read, validate

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
PATCH_TYPES = [JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH, APPLY_PATCH]
PROTOBUF = "application/vnd.kubernetes.protobuf"
BODY_TYPES = ["application/json", "application/yaml", PROTOBUF]
PROTECTED_NAMESPACES = ("default", "kube-system", "kube-public")
GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
MAX_BODY = 3 * 1024 * 1024
# Query booleans as the apiserver parses them (Go's strconv.ParseBool): the Python client sends "True".
GO_BOOLS = {v: True for v in ("1", "t", "T", "TRUE", "true", "True")} | {
    v: False for v in ("0", "f", "F", "FALSE", "false", "False")
}
SYSTEM_FIELDS = (
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "generation",
    "managedFields",
)


@dataclass
class Call:
    """One resource request, resolved: what it addresses and how it was asked."""

    request: web.Request
    rt: ResourceType
    namespace: str | None
    name: str | None
    query: dict[str, str] = field(default_factory=dict)
    subresource: str | None = None  # "status" for a custom kind's /status

    @property
    def ns(self) -> str:
        return self.namespace or ""

    @property
    def dry_run(self) -> bool:
        value = self.query.get("dryRun", "")
        if value not in ("", "All"):
            raise bad_request(f"Invalid dry run value: {value}; supported values: All")
        return value == "All"

    @property
    def strict(self) -> bool:
        return self.query.get("fieldValidation", "") == "Strict"

    @property
    def field_manager(self) -> str:
        """``fieldManager``, else (not for apply) the User-Agent's product, as the apiserver defaults it."""
        manager = self.query.get("fieldManager") or self.request.headers.get("User-Agent", "").split("/")[0]
        return manager[: kube_apply.MAX_MANAGER_LENGTH]


def respond(obj: Any, status: int = 200, warnings: list[str] | None = None) -> web.Response:
    headers: CIMultiDict[str] = CIMultiDict()
    for warning in warnings or ():
        headers.add("Warning", f"299 - {json.dumps(warning)}")
    return web.Response(status=status, text=json.dumps(obj), content_type="application/json", headers=headers)


async def read_body(call: Call, accepted: list[str]) -> Any:
    """The request body, parsed by its content type (JSON, or YAML like the real apiserver accepts)."""
    try:
        raw = await call.request.read()
    except web.HTTPRequestEntityTooLarge:
        raise KubeError(413, f"Request entity too large: limit is {MAX_BODY}") from None
    if len(raw) > MAX_BODY:
        raise KubeError(413, f"Request entity too large: limit is {MAX_BODY}")
    if not raw and call.request.method == "DELETE":
        return None
    # Like the real negotiation, no Content-Type means the first supported type (JSON).
    content_type = call.request.content_type if "Content-Type" in call.request.headers else accepted[0]
    if content_type not in accepted:
        raise unsupported_media_type(content_type, accepted)
    try:
        if content_type == PROTOBUF:
            return kube_proto.decode(raw)
        if content_type == "application/yaml":
            return yaml.safe_load(raw)
        return json.loads(raw)
    except kube_proto.ProtoError as exc:
        raise bad_request(f"the object provided is unrecognized (must be of type {call.rt.kind}): {exc}") from None
    except (ValueError, yaml.YAMLError) as exc:
        detail = str(exc).split("\n", 1)[0]
        raise bad_request(
            f"the object provided is unrecognized (must be of type {call.rt.kind}): couldn't get version/kind; "
            f"json parse error: {detail}"
        ) from None


def _invalid_patch_options(field: str, detail: str) -> KubeError:
    """422 as the apiserver's PatchOptions validation answers it."""
    return KubeError(
        422,
        f'PatchOptions.meta.k8s.io "" is invalid: {field}: {detail}',
        details={"group": "meta.k8s.io", "kind": "PatchOptions", "causes": [{"field": field, "message": detail}]},
    )


def mark_deleted(store: Store, rt: ResourceType, old: Obj, *, dry_run: bool = False) -> Obj:
    """Delete an object that has finalizers: it stays, marked with a deletionTimestamp (one MODIFIED
    event), until an update removes the last finalizer (see Rest.commit)."""
    if old["metadata"].get("deletionTimestamp"):
        return old
    marked = copy.deepcopy(old)
    marked["metadata"]["deletionTimestamp"] = now_rfc3339()
    marked["metadata"]["deletionGracePeriodSeconds"] = 0
    return marked if dry_run else store.put(rt.key, marked, old)


def _generational(rt: ResourceType) -> bool:
    """Kinds whose metadata.generation counts changes to their desired state."""
    return rt.custom is not None or rt is CRDS


def _without(obj: Obj, *keys: str) -> Obj:
    return {k: v for k, v in obj.items() if k not in keys}


def _split_status(call: Call, old: Obj, obj: Obj) -> Obj:
    """With a status subresource, /status writes change only status and the main resource never does."""
    custom = call.rt.custom
    if custom is None or not custom.status:
        return obj
    if call.subresource == "status":
        result = copy.deepcopy(old)
        result["metadata"]["resourceVersion"] = obj["metadata"]["resourceVersion"]
        if "managedFields" in obj["metadata"]:
            result["metadata"]["managedFields"] = obj["metadata"]["managedFields"]
        result.pop("status", None)
        if "status" in obj:
            result["status"] = obj["status"]
        return result
    obj.pop("status", None)
    if "status" in old:
        obj["status"] = old["status"]
    return obj


def _check_identity(call: Call, meta: dict[str, Any]) -> None:
    """A body written to an object's URL names that object (or no one)."""
    if (meta.get("name") or call.name) != call.name:
        raise bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL ({call.name})")
    meta["name"] = call.name
    _check_namespace(call, meta)


def _check_namespace(call: Call, meta: dict[str, Any]) -> None:
    if not call.rt.namespaced:
        meta.pop("namespace", None)
        return
    if meta.get("namespace") and meta["namespace"] != call.ns:
        raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
    meta["namespace"] = call.ns


class Rest:
    """The verbs on stored resources, over one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- create -------------------------------------------------------------------------------------
    async def create(self, call: Call) -> web.Response:
        obj, warnings = decode(call.rt, await read_body(call, BODY_TYPES), strict=call.strict)
        meta = obj["metadata"]
        _check_namespace(call, meta)
        rv = meta.get("resourceVersion") or ""
        if rv.isdigit() and int(rv) != 0:
            # What a real apiserver answers (the etcd3 store's check, passed through as a 500); an
            # unparsable resourceVersion escapes that check and is simply dropped.
            raise KubeError(500, "resourceVersion should not be set on objects to be created")
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(secrets.choice(GENERATE_ALPHABET) for _ in range(5))
        stored = self.insert(call.rt, obj, dry_run=call.dry_run, manager=call.field_manager)
        return respond(stored, 201, warnings)

    def insert(
        self,
        rt: ResourceType,
        obj: Obj,
        *,
        dry_run: bool = False,
        manager: str | None = None,
        managed: list[dict[str, Any]] | None = None,
    ) -> Obj:
        """Create ``obj`` (decoded, namespace set) with every server-side rule; used by seeding too.
        ``manager`` owns every field (an Update), unless ``managed`` (an apply's) says who owns what."""
        meta = obj["metadata"]
        for key in SYSTEM_FIELDS:
            meta.pop(key, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        if _generational(rt):
            meta["generation"] = 1
        if rt.custom is not None and rt.custom.status:
            obj.pop("status", None)  # only the /status subresource writes it
        obj = normalise(rt, obj)
        validate(rt, obj)
        if managed is None and manager is not None:
            managed = kube_apply.track_update(None, obj, manager, rt.api_version)
        if managed:
            obj["metadata"]["managedFields"] = managed
        namespace, name = meta.get("namespace", ""), obj["metadata"]["name"]
        if rt.namespaced and self.store.get(NAMESPACES.key, "", namespace) is None:
            raise not_found("namespaces", "", namespace)
        if self.store.get(rt.key, namespace, name) is not None:
            raise already_exists(rt.plural, rt.group, name)
        if dry_run:
            return obj
        stored = self.store.put(rt.key, obj, None)
        if rt is NAMESPACES:
            # The serviceaccount controller's work, done at once.
            account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": name}}
            self.insert(SERVICEACCOUNTS, account)
        return stored

    # -- read ---------------------------------------------------------------------------------------
    def existing(self, call: Call) -> Obj:
        obj = self.store.get(call.rt.key, call.ns, call.name or "")
        if obj is None:
            raise not_found(call.rt.plural, call.rt.group, call.name or "")
        return obj

    async def get(self, call: Call) -> web.Response:
        obj = on_read(call.rt, self.existing(call))
        if wants_table(call.request.headers.get("Accept", "")):
            return respond(table(call.rt, [obj], {"resourceVersion": obj["metadata"]["resourceVersion"]}))
        return respond(obj)

    # -- replace and patch --------------------------------------------------------------------------
    async def replace(self, call: Call) -> web.Response:
        obj, warnings = decode(call.rt, await read_body(call, BODY_TYPES), strict=call.strict)
        _check_identity(call, obj["metadata"])
        old = self.existing(call)
        return respond(self.commit(call, old, obj), 200, warnings)

    async def patch(self, call: Call) -> web.Response:
        content_type = call.request.content_type
        if content_type not in PATCH_TYPES:
            raise unsupported_media_type(content_type, PATCH_TYPES)
        if content_type == STRATEGIC_PATCH and call.rt.custom is not None:
            # Custom kinds have no Go struct to read merge strategies from, so the apiserver refuses it.
            raise unsupported_media_type(content_type, [t for t in PATCH_TYPES if t != STRATEGIC_PATCH])
        if content_type == APPLY_PATCH:
            return await self.apply(call)
        if "force" in call.query:
            raise _invalid_patch_options("force", "Forbidden: may not be specified for non-apply patch")
        raw = await call.request.read()
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise bad_request(f"error decoding patch: {exc}") from None
        old = self.existing(call)
        try:
            if content_type == JSON_PATCH:
                patched = kube_patch.json_patch(old, body)
            elif content_type == MERGE_PATCH:
                if not isinstance(body, dict):
                    raise kube_patch.PatchFormatError("merge patch must be a JSON object")
                patched = kube_patch.merge_patch(old, body)
            else:
                patched = kube_patch.strategic_merge(old, body, call.rt.kind)
        except kube_patch.PatchFormatError as exc:
            raise bad_request(str(exc)) from None
        except kube_patch.PatchError as exc:
            raise KubeError(422, str(exc)) from None
        obj, warnings = decode(call.rt, patched, strict=call.strict)
        meta = obj["metadata"]
        if meta.get("name") != call.name or (call.rt.namespaced and meta.get("namespace") != call.ns):
            raise bad_request("the name or namespace of the object may not be changed by a patch")
        return respond(self.commit(call, old, obj), 200, warnings)

    async def apply(self, call: Call) -> web.Response:
        """Server-side apply: merge the applied configuration, track ownership, create if absent."""
        manager = call.query.get("fieldManager", "")
        if not manager:
            raise _invalid_patch_options("fieldManager", "Required value: is required for apply patch")
        if len(manager) > kube_apply.MAX_MANAGER_LENGTH:
            raise _invalid_patch_options(
                "fieldManager", f"Too long: may not be more than {kube_apply.MAX_MANAGER_LENGTH} bytes"
            )
        force = call.query.get("force", "false")
        if force not in GO_BOOLS:
            raise bad_request(f'force: invalid value "{force}": expected true or false')
        try:
            body = yaml.safe_load(await call.request.read())  # YAML, and JSON as a YAML subset
        except yaml.YAMLError as exc:
            raise bad_request(f"error decoding YAML: {str(exc).splitlines()[0]}") from None
        if isinstance(body, dict) and (not body.get("apiVersion") or not body.get("kind")):
            raise bad_request("invalid object type: apply patches need apiVersion and kind")
        rt = call.rt
        applied, warnings = decode(rt, body, strict=call.strict)
        _check_identity(call, applied["metadata"])
        # The applied fields, in their stored encoding (stringData folded into data), as sent.
        sent = kube_apply.leaves(applied)
        canonical = kube_apply.leaves(normalise(rt, applied))
        fields = {p: v for p, v in canonical.items() if p in sent or (p[0] == "data" and "stringData" in applied)}
        live = self.store.get(rt.key, call.ns, call.name or "")
        merged, managed = kube_apply.apply(live, applied, fields, manager, GO_BOOLS[force], rt.api_version)
        if live is None:
            return respond(self.insert(rt, merged, dry_run=call.dry_run, managed=managed), 201, warnings)
        return respond(self.commit(call, live, merged, managed), 200, warnings)

    def commit(self, call: Call, old: Obj, obj: Obj, managed: list[dict[str, Any]] | None = None) -> Obj:
        """Store ``obj`` over ``old`` if its resourceVersion (when given) is still current; ``managed``
        is an apply's managedFields, else the caller's field manager takes what it changed."""
        rt, meta, old_meta = call.rt, obj["metadata"], old["metadata"]
        if meta.get("resourceVersion") and meta["resourceVersion"] != old_meta["resourceVersion"]:
            raise conflict(rt.plural, rt.group, old_meta["name"], STALE)
        if meta.get("uid") and meta["uid"] != old_meta["uid"]:
            raise conflict(
                rt.plural,
                rt.group,
                old_meta["name"],
                f"Precondition failed: UID in precondition: {meta['uid']}, UID in object meta: {old_meta['uid']}",
            )
        for key in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
            meta.pop(key, None)
            if key in old_meta:
                meta[key] = old_meta[key]
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if rt is NAMESPACES:
            obj["status"] = old.get("status", {})
        obj = _split_status(call, old, obj)
        obj = normalise(rt, obj, old)
        if _generational(rt) and _without(obj, "metadata", "status") != _without(old, "metadata", "status"):
            obj["metadata"]["generation"] = old_meta.get("generation", 1) + 1
        validate(rt, obj, old)
        if managed is None:
            managed = kube_apply.track_update(old, obj, call.field_manager, rt.api_version)
        obj["metadata"].pop("managedFields", None)
        if managed:
            obj["metadata"]["managedFields"] = managed
        if obj == old or call.dry_run:
            return obj
        if obj["metadata"].get("deletionTimestamp") and not obj["metadata"].get("finalizers"):
            # The last finalizer is gone: the pending deletion completes (one DELETED event).
            self.store.remove(rt.key, call.ns, old_meta["name"], final=obj)
            return obj
        return self.store.put(rt.key, obj, old)

    # -- delete -------------------------------------------------------------------------------------
    async def delete(self, call: Call) -> web.Response:
        options = await self._delete_options(call)
        old = self.existing(call)
        self._preconditions(call, old, options.get("preconditions") or {})
        rt, name = call.rt, call.name or ""
        dry_run = call.dry_run or options.get("dryRun") == ["All"]
        if rt is NAMESPACES:
            if name in PROTECTED_NAMESPACES:
                raise forbidden("namespaces", "", name, "this namespace may not be deleted")
            terminating = copy.deepcopy(old)
            terminating["metadata"]["deletionTimestamp"] = now_rfc3339()
            terminating["status"] = {"phase": "Terminating"}
            if not dry_run:
                self.delete_namespace(name)
            return respond(terminating)
        if old["metadata"].get("finalizers"):
            return respond(mark_deleted(self.store, rt, old, dry_run=dry_run))
        if not dry_run:
            if rt is CRDS:
                self._drop_custom_objects(old)
            self.store.remove(rt.key, call.ns, name)
        return respond(success_status(name, rt.group, rt.plural, old["metadata"]["uid"]))

    def _drop_custom_objects(self, crd: Obj) -> None:
        """A definition's objects go with it, as the apiserver's cleanup finalizer deletes them."""
        key = f"{crd['spec']['group']}/{crd['spec']['names']['plural']}"
        for obj in list(self.store.scope(key, None)):
            meta = obj["metadata"]
            self.store.remove(key, meta.get("namespace", ""), meta["name"])

    def delete_namespace(self, namespace: str) -> None:
        """Everything in the namespace goes first (DELETED events), then the namespace itself."""
        for key in self.store.namespace_keys(namespace):
            for obj in list(self.store.scope(key, namespace)):
                self.store.remove(key, namespace, obj["metadata"]["name"])
        self.store.remove(NAMESPACES.key, "", namespace)

    async def _delete_options(self, call: Call) -> dict[str, Any]:
        if not call.request.can_read_body:
            return {}
        body = await read_body(call, BODY_TYPES)
        if body is None:
            return {}
        if not isinstance(body, dict):
            raise bad_request("DeleteOptions must be a JSON object")
        return body

    def _preconditions(self, call: Call, old: Obj, preconditions: Any) -> None:
        if not isinstance(preconditions, dict):
            raise bad_request("preconditions must be an object")
        rt, meta = call.rt, old["metadata"]
        want_rv, want_uid = preconditions.get("resourceVersion"), preconditions.get("uid")
        if want_uid and want_uid != meta["uid"]:
            raise conflict(
                rt.plural,
                rt.group,
                meta["name"],
                f"the UID in the precondition ({want_uid}) does not match the UID in record "
                f"({meta['uid']}). The object might have been deleted and then recreated",
            )
        if want_rv and want_rv != meta["resourceVersion"]:
            raise conflict(
                rt.plural,
                rt.group,
                meta["name"],
                f"the ResourceVersion in the precondition ({want_rv}) does not match the "
                f"ResourceVersion in record ({meta['resourceVersion']}). The object might have "
                "been modified",
            )
