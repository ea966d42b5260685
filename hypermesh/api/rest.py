"""The REST verbs of every kind: create, get, list, update, patch, delete.

Every write, whatever verb it came in as, ends in one pipeline (`_commit`): status-subresource
rules, server-owned metadata, admission (per-kind rules), defaults, unknown-field handling,
schema validation, `generation`, field ownership, finalizer-driven deletion, and finally one
compare-and-swap on the object's revision. One pipeline means a merge patch, a JSON patch, an
apply and a PUT can never disagree about what a valid object is.

DELETE is the other writer: finalizers, the garbage collector's propagation finalizers and the
graceful deletion of Instances (`graceful.py`: a bound, unfinished Instance stays Terminating
until its node agent has stopped it) all decide there whether an object goes now or is marked.
"""

from __future__ import annotations

import base64
import copy
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
import yaml

from hypermesh.api import (
    errors,
    fieldmanager,
    graceful,
    objects,
    patching,
    protobuf,
    selectors,
    strategic,
)
from hypermesh.api.http import Request, parse_json
from hypermesh.api.storage import ObjectStorage, Page
from hypermesh.resources.registry import ResourceType

if TYPE_CHECKING:
    from hypermesh.api.admission import Admission

# Field selectors every kind answers, plus the ones particular kinds add (`kubectl describe`
# filters Events by involvedObject; agents filter Instances by node).
COMMON_FIELDS = ("metadata.name", "metadata.namespace")
EXTRA_FIELDS: dict[str, tuple[str, ...]] = {
    "Event": (
        "involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
        "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
        "reason", "reportingComponent", "source", "type",
    ),
    "Instance": ("spec.nodeName", "status.phase"),
    "Secret": ("type",),
    "Namespace": ("status.phase",),
}

PATCH_TYPES = {
    "application/merge-patch+json": "merge",
    "application/json-patch+json": "json",
    "application/apply-patch+yaml": "apply",
    "application/apply-patch+cbor": "apply-cbor",
    "application/strategic-merge-patch+json": "strategic",
}

_MAX_RETRIES = 8


def load_body(body: bytes, content_type: str, what: str = "request body") -> Any:
    """JSON, or YAML for the YAML media types (JSON is valid YAML, which is why kubectl can send
    apply bodies as JSON)."""
    if content_type == protobuf.PROTOBUF:
        # kubectl's typed commands (create namespace, create secret) send core kinds this way.
        try:
            return protobuf.decode_object(body)
        except protobuf.UnsupportedKind as exc:
            raise errors.unsupported_media_type(str(exc)) from None
        except protobuf.ProtobufError as exc:
            raise errors.bad_request(f"the {what} is not a valid Kubernetes protobuf message: {exc}") from None
    if "yaml" in content_type:
        try:
            return yaml.load(body, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except yaml.YAMLError as exc:
            raise errors.bad_request(f"the {what} is not valid YAML: {exc}") from None
    if content_type not in ("application/json", "*/*") and not content_type.endswith("+json"):
        raise errors.unsupported_media_type(f'the media type "{content_type}" is not supported; use application/json or application/yaml')
    return parse_json(body, what)


def field_selector_fields(rtype: ResourceType) -> tuple[str, ...]:
    return COMMON_FIELDS + EXTRA_FIELDS.get(rtype.kind, ())


def manager_name(req: Request) -> str:
    """The field manager: `fieldManager`, else the client's user-agent program name, as the
    Kubernetes API server does."""
    manager = req.query.get("fieldManager")
    if manager:
        if len(manager) > 128:
            raise errors.ApiError(422, "Invalid", "fieldManager: Too long: may not be more than 128 bytes")
        return manager
    agent = req.headers.get("user-agent", "unknown")
    return agent.split("/", 1)[0][:128] or "unknown"


def _strip_times(managed: Any) -> Any:
    if not isinstance(managed, list):
        return managed
    return [{k: v for k, v in e.items() if k != "time"} if isinstance(e, dict) else e for e in managed]


def _same_object(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal for the purpose of skipping a no-op write: managedFields timestamps do not count."""
    am, bm = a.get("metadata", {}), b.get("metadata", {})
    if _strip_times(am.get("managedFields")) != _strip_times(bm.get("managedFields")):
        return False
    skip = ("managedFields", "resourceVersion")
    if {k: v for k, v in am.items() if k not in skip} != {k: v for k, v in bm.items() if k not in skip}:
        return False
    return {k: v for k, v in a.items() if k != "metadata"} == {k: v for k, v in b.items() if k != "metadata"}


class ResourceAPI:
    """Verb implementations shared by every kind."""

    def __init__(self, storage: ObjectStorage, admission: Admission) -> None:
        self.storage = storage
        self.admission = admission

    # ---------------------------------------------------------------- reads

    async def get(self, rtype: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        return await self.storage.get_required(rtype, namespace, name)

    def predicate(self, rtype: ResourceType, req: Request) -> tuple[Any, Any]:
        """Label and field selectors of the request (either may be None)."""
        try:
            labels = selectors.parse_label_selector(req.query["labelSelector"]) if req.query.get("labelSelector") else None
            fields = (
                selectors.parse_field_selector(req.query["fieldSelector"], allowed=field_selector_fields(rtype))
                if req.query.get("fieldSelector")
                else None
            )
        except selectors.SelectorError as exc:
            raise errors.bad_request(str(exc)) from None
        return labels, fields

    async def list_page(self, rtype: ResourceType, namespace: str | None, req: Request) -> Page:
        labels, fields = self.predicate(rtype, req)
        limit_text = req.query.get("limit", "")
        try:
            limit = int(limit_text) if limit_text else 0
        except ValueError:
            raise errors.bad_request(f'limit: invalid value "{limit_text}": must be an integer') from None
        revision = 0
        rv_text = req.query.get("resourceVersion", "")
        if rv_text and rv_text != "0" and req.query.get("resourceVersionMatch") == "Exact":
            revision = _parse_rv(rv_text)
        # A field selector on the name narrows the list to one key.
        if fields is not None:
            exact_ns = fields.exact("metadata.namespace")
            if exact_ns is not None and namespace is None and rtype.namespaced:
                namespace = exact_ns
            exact_name = fields.exact("metadata.name")
            if exact_name is not None and (namespace is not None or not rtype.namespaced) and not req.query.get("continue"):
                obj = await self.storage.get(rtype, namespace, exact_name)
                rev = self.storage.revision
                matched = obj is not None and (labels is None or labels.matches(obj["metadata"].get("labels"))) and fields.matches(obj)
                found = [obj] if matched and obj else []
                return Page([orjson.dumps(o) for o in found], rev, None, None, found)

        def keep(obj: dict[str, Any]) -> bool:
            if labels is not None and not labels.matches(obj["metadata"].get("labels")):
                return False
            return fields is None or fields.matches(obj)

        return await self.storage.list(
            rtype,
            namespace,
            limit=limit,
            continue_token=req.query.get("continue") or None,
            revision=revision,
            predicate=keep if (labels is not None or fields is not None) else None,
        )

    # ---------------------------------------------------------------- create

    async def create(self, rtype: ResourceType, namespace: str | None, req: Request) -> tuple[int, dict[str, Any], list[str]]:
        body = load_body(await req.body(), req.content_type)
        obj = self._check_body(rtype, body, namespace, None)
        meta = obj["metadata"]
        if not meta.get("name"):
            prefix = meta.get("generateName")
            if not prefix or not isinstance(prefix, str):
                raise errors.invalid(rtype.kind, rtype.group, "", [{"type": "FieldValueRequired", "field": "metadata.name", "message": "Required value: name or generateName is required"}])
            meta["name"] = objects.generate_name(prefix)
        result, warnings = await self._create(rtype, obj, req, manager=manager_name(req))
        return 201, result, warnings

    async def _create(
        self, rtype: ResourceType, obj: dict[str, Any], req: Request, *, manager: str, managed: bool = True
    ) -> tuple[dict[str, Any], list[str]]:
        meta = obj["metadata"]
        if rtype.namespaced:
            await self.admission.check_namespace_open(meta["namespace"])
        for field in (*objects.SERVER_FIELDS, "resourceVersion"):
            meta.pop(field, None)
        meta["uid"] = objects.new_uid()
        meta["creationTimestamp"] = objects.now()
        meta["generation"] = 1
        if rtype.has_status:
            obj.pop("status", None)
        obj, warnings = self._validate(rtype, obj, req, old=None)
        await self.admission.before_write(rtype, None, obj)
        if managed:
            obj = _track(fieldmanager.update, None, obj, manager=manager, schema=rtype.schema, now=meta["creationTimestamp"], api_version=rtype.api_version)
        if _dry_run(req):
            return obj, warnings
        created = await self.storage.create(rtype, obj)
        await self.admission.after_write(rtype, None, created)
        return created, warnings

    # ---------------------------------------------------------------- update (PUT)

    async def update(self, rtype: ResourceType, namespace: str | None, name: str, subresource: str | None, req: Request) -> tuple[int, dict[str, Any], list[str]]:
        body = load_body(await req.body(), req.content_type)
        new = self._check_body(rtype, body, namespace, name)
        rv_text = new["metadata"].get("resourceVersion")
        if not rv_text:
            raise errors.invalid(rtype.kind, rtype.group, name, [{"type": "FieldValueInvalid", "field": "metadata.resourceVersion", "message": "Invalid value: 0x0: must be specified for an update"}])
        expected = _parse_rv(rv_text)
        old = await self.storage.get_required(rtype, namespace, name)
        if int(old["metadata"]["resourceVersion"]) != expected:
            raise errors.conflict(rtype.plural, rtype.group, name)
        result, warnings = await self._commit(rtype, old, new, req, manager=manager_name(req), subresource=subresource)
        return 200, result, warnings

    # ---------------------------------------------------------------- patch

    async def patch(self, rtype: ResourceType, namespace: str | None, name: str, subresource: str | None, req: Request) -> tuple[int, dict[str, Any], list[str]]:
        kind = PATCH_TYPES.get(req.content_type)
        if kind is None or kind == "strategic" and rtype.group not in strategic.BUILTIN_GROUPS or kind == "apply-cbor":
            raise errors.unsupported_media_type(
                "the body of the request was in an unknown format - accepted media types include: "
                "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
            )
        raw = await req.body()
        if kind == "apply":
            return await self._apply(rtype, namespace, name, subresource, raw, req)
        ops = load_body(raw, "application/json", "patch")
        manager = manager_name(req)
        for _ in range(_MAX_RETRIES):
            old = await self.storage.get_required(rtype, namespace, name)
            current = old  # the patch functions never modify their input
            try:
                if kind == "merge":
                    patched = patching.merge_patch(current, ops)
                elif kind == "json":
                    if not isinstance(ops, list):
                        raise errors.bad_request("a JSON patch must be a list of operations")
                    patched = patching.json_patch(current, ops)
                else:
                    patched = strategic.strategic_merge_patch(current, ops)
            except patching.PatchTestFailed as exc:
                raise errors.ApiError(422, "Invalid", exc.message) from None
            except patching.PatchError as exc:
                raise errors.ApiError(422, "Invalid", exc.message) from None
            if not isinstance(patched, dict):
                raise errors.bad_request("the patch does not produce an object")
            new = self._check_body(rtype, patched, namespace, name)
            wanted_rv = new["metadata"].get("resourceVersion")
            if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
                # A patch that sets resourceVersion is a precondition, like a PUT.
                raise errors.conflict(rtype.plural, rtype.group, name)
            try:
                result, warnings = await self._commit(rtype, old, new, req, manager=manager, subresource=subresource)
            except errors.ApiError as exc:
                if exc.reason == "Conflict" and not wanted_rv:
                    continue  # someone wrote in between: patch the newer object
                raise
            return 200, result, warnings
        raise errors.conflict(rtype.plural, rtype.group, name, "too many concurrent writers; try again")

    async def _apply(self, rtype: ResourceType, namespace: str | None, name: str, subresource: str | None, raw: bytes, req: Request) -> tuple[int, dict[str, Any], list[str]]:
        manager = req.query.get("fieldManager")
        if not manager:
            raise errors.ApiError(422, "Invalid", 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch')
        config = load_body(raw, "application/apply-patch+yaml", "apply configuration")
        config = self._check_body(rtype, config, namespace, name)
        force = req.flag("force")
        _, strict_unknown = self._unknown_fields(rtype, config, req)
        for _ in range(_MAX_RETRIES):
            old = await self.storage.get(rtype, namespace, name)
            if old is None:
                if subresource:
                    raise errors.not_found(rtype.plural, rtype.group, name)
                obj = copy.deepcopy(config)
                obj["metadata"].pop("resourceVersion", None)
                obj = _track(fieldmanager.apply, None, obj, manager=manager, force=force, schema=rtype.schema, now=objects.now(), api_version=rtype.api_version)
                try:
                    created, warnings = await self._create(rtype, obj, req, manager=manager, managed=False)
                except errors.ApiError as exc:
                    if exc.reason == "AlreadyExists":
                        continue
                    raise
                return 201, created, strict_unknown + warnings
            wanted_rv = config["metadata"].get("resourceVersion")
            if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
                raise errors.conflict(rtype.plural, rtype.group, name)
            try:
                new = fieldmanager.apply(
                    old, config, manager=manager, force=force, schema=rtype.schema,
                    now=objects.now(), api_version=rtype.api_version, subresource=subresource or "",
                )
            except fieldmanager.FieldManagerError as exc:
                raise errors.ApiError(422, "Invalid", f"the apply configuration cannot be merged: {exc}") from None
            except fieldmanager.ApplyConflict as exc:
                causes = [{"reason": "FieldManagerConflict", "message": f'conflict with "{c.manager}"', "field": c.field} for c in exc.conflicts]
                raise errors.ApiError(409, "Conflict", str(exc), details={"name": name, "group": rtype.group, "kind": rtype.plural, "causes": causes}) from None
            try:
                result, warnings = await self._commit(rtype, old, new, req, manager=manager, subresource=subresource, managed=False)
            except errors.ApiError as exc:
                if exc.reason == "Conflict" and not wanted_rv:
                    continue
                raise
            return 200, result, strict_unknown + warnings
        raise errors.conflict(rtype.plural, rtype.group, name, "too many concurrent writers; try again")

    # ---------------------------------------------------------------- delete

    async def delete(self, rtype: ResourceType, namespace: str | None, name: str, req: Request) -> tuple[int, dict[str, Any]]:
        options: dict[str, Any] = {}
        raw = await req.body()
        if raw.strip():
            options = load_body(raw, req.content_type, "delete options")
            if not isinstance(options, dict):
                raise errors.bad_request("the delete options must be an object")
        # Delete options may come as query parameters too (the python client sends them so).
        if "propagationPolicy" in req.query:
            options.setdefault("propagationPolicy", req.query["propagationPolicy"])
        if req.query.get("orphanDependents") in ("true", "false"):
            options.setdefault("orphanDependents", req.query["orphanDependents"] == "true")
        policy_finalizer = _propagation_finalizer(options)
        grace = graceful.requested_grace(options, req.query)
        # kubectl's `delete --dry-run=server` says so in the body, not the query.
        dry_run = graceful.requested_dry_run(options) or _dry_run(req)
        for _ in range(_MAX_RETRIES):
            old = await self.storage.get_required(rtype, namespace, name)
            _check_preconditions(rtype, old, options.get("preconditions"))
            try:
                return await self._delete(rtype, old, dry_run=dry_run, finalizer=policy_finalizer, grace=grace)
            except errors.ApiError as exc:
                if exc.reason == "Conflict" and not options.get("preconditions"):
                    continue
                raise
        raise errors.conflict(rtype.plural, rtype.group, name, "too many concurrent writers; try again")

    async def delete_object(self, rtype: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        """Delete `obj` as a user's DELETE would (finalizers honoured); for server sweeps."""
        return (await self._delete(rtype, obj, dry_run=False))[1]

    async def _delete(
        self,
        rtype: ResourceType,
        old: dict[str, Any],
        *,
        dry_run: bool,
        finalizer: str | None = None,
        grace: int | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Delete, or start deleting: with finalizers (or a propagation `finalizer` for the
        garbage collector) the object only gets its deletionTimestamp, and so does an Instance
        that may still be running (`grace`: the request's gracePeriodSeconds, if any)."""
        meta = old["metadata"]
        redirected = await self.admission.before_delete(rtype, old, dry_run=dry_run)
        if redirected is not None:
            return 200, redirected
        step = graceful.plan(rtype, old, requested=grace, now=datetime.now(UTC))
        if step.action == "pending":
            # A graceful deletion is under way and this one would not shorten it: nothing
            # changes, finalizers included (as in Kubernetes).
            return 200, old
        if step.action == "mark":
            return await self._delete_gracefully(rtype, old, step, dry_run=dry_run, finalizer=finalizer)
        if meta.get("finalizers") or finalizer:
            if meta.get("deletionTimestamp"):
                return 200, old
            new = copy.deepcopy(old)
            if finalizer and finalizer not in (new["metadata"].get("finalizers") or []):
                new["metadata"]["finalizers"] = [*(new["metadata"].get("finalizers") or []), finalizer]
            new["metadata"]["deletionTimestamp"] = objects.now()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            if dry_run:
                return 200, new
            # The object stays, visibly deleting, until its last finalizer is removed.
            updated = await self.storage.update(rtype, new, int(meta["resourceVersion"]))
            await self.admission.after_write(rtype, old, updated)
            return 200, updated
        if dry_run:
            return 200, old
        gone = await self.storage.delete(rtype, copy.deepcopy(old), int(meta["resourceVersion"]))
        await self.admission.after_write(rtype, old, None)
        return 200, gone

    async def _delete_gracefully(
        self, rtype: ResourceType, old: dict[str, Any], step: graceful.Plan, *, dry_run: bool, finalizer: str | None
    ) -> tuple[int, dict[str, Any]]:
        """Mark the object with the plan's deletionTimestamp and grace period; it stays until
        the grace period is 0 and no finalizer is left."""
        meta = old["metadata"]
        new = copy.deepcopy(old)
        new_meta = new["metadata"]
        new_meta["deletionTimestamp"] = step.deletion_timestamp
        new_meta["deletionGracePeriodSeconds"] = step.grace
        if finalizer and finalizer not in (new_meta.get("finalizers") or []):
            new_meta["finalizers"] = [*(new_meta.get("finalizers") or []), finalizer]
        if dry_run:
            return 200, new
        expected = int(meta["resourceVersion"])
        if step.grace or new_meta.get("finalizers") or step.first:
            # Stays: its node agent finishes a grace period, its finalizers' owners the rest.
            # A first delete with no grace period is written too before it goes, as Kubernetes
            # does, so the agent learns from the watch that it must not wait for the spec's.
            updated = await self.storage.update(rtype, new, expected)
            await self.admission.after_write(rtype, old, updated)
            if step.grace or new_meta.get("finalizers"):
                return 200, updated
            new, expected = copy.deepcopy(updated), int(updated["metadata"]["resourceVersion"])
        gone = await self.storage.delete(rtype, new, expected)
        await self.admission.after_write(rtype, old, None)
        return 200, gone

    async def delete_collection(self, rtype: ResourceType, namespace: str | None, req: Request) -> dict[str, Any]:
        page = await self.list_page(rtype, namespace, req)
        deleted = []
        for obj in page.items:
            meta = obj["metadata"]
            try:
                _, result = await self.delete(rtype, meta.get("namespace"), meta["name"], req)
            except errors.ApiError as exc:
                if exc.code == 404:
                    continue
                raise
            deleted.append(result)
        return {"kind": rtype.list_kind, "apiVersion": rtype.api_version, "metadata": {"resourceVersion": str(self.storage.revision)}, "items": deleted}

    # ---------------------------------------------------------------- the write pipeline

    async def _commit(
        self,
        rtype: ResourceType,
        old: dict[str, Any],
        new: dict[str, Any],
        req: Request,
        *,
        manager: str,
        subresource: str | None,
        managed: bool = True,
    ) -> tuple[dict[str, Any], list[str]]:
        """Turn `new` into the stored successor of `old` (CAS on old's revision)."""
        if subresource not in (None, "status") or subresource == "status" and not rtype.has_status:
            raise errors.not_found(rtype.plural, rtype.group, f"{old['metadata']['name']}/{subresource}")
        old_meta = old["metadata"]
        if subresource == "status":
            # The status subresource changes status and nothing else.
            status = new.get("status")
            managed_fields = new["metadata"].get("managedFields")
            new = copy.deepcopy(old)
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
            if managed_fields is not None and not managed:
                new["metadata"]["managedFields"] = managed_fields
        elif rtype.has_status:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        meta = new["metadata"]
        for field in objects.SERVER_FIELDS:
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or ()) - set(old_meta.get("finalizers") or ())
            if added:
                raise errors.forbidden(f"no new finalizers can be added if the object is being deleted, found new finalizers {sorted(added)}")
        new, warnings = self._validate(rtype, new, req, old=old)
        meta = new["metadata"]
        await self.admission.before_write(rtype, old, new)
        if objects.spec_part(new, rtype) != objects.spec_part(old, rtype):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        if managed:
            new = _track(fieldmanager.update, old, new, manager=manager, schema=rtype.schema, now=objects.now(), api_version=rtype.api_version, subresource=subresource or "")
        if _same_object(old, new):
            return old, warnings
        expected = int(old_meta["resourceVersion"])
        if graceful.completes_on_update(meta):
            # The last finalizer is gone and no grace period runs: the deletion completes now.
            if _dry_run(req):
                return new, warnings
            gone = await self.storage.delete(rtype, new, expected)
            await self.admission.after_write(rtype, old, None)
            return gone, warnings
        if _dry_run(req):
            return new, warnings
        updated = await self.storage.update(rtype, new, expected)
        await self.admission.after_write(rtype, old, updated)
        return updated, warnings

    def _unknown_fields(self, rtype: ResourceType, obj: dict[str, Any], req: Request) -> tuple[bool, list[str]]:
        """Apply `fieldValidation` to unknown fields: Strict refuses, Warn warns, Ignore drops.

        Returns whether there were any (they must then be pruned) and the warnings to send.
        """
        mode = req.query.get("fieldValidation", "Warn") or "Warn"
        if mode not in ("Strict", "Warn", "Ignore"):
            raise errors.bad_request(f'fieldValidation: Unsupported value: "{mode}": supported values: "Ignore", "Strict", "Warn"')
        unknown = rtype.validator.unknown_fields(obj)
        if not unknown or mode == "Ignore":
            return bool(unknown), []
        if mode == "Strict":
            listing = ", ".join(f'unknown field "{path}"' for path in unknown)
            raise errors.bad_request(f"strict decoding error: {listing}")
        return True, [f'unknown field "{path}"' for path in unknown]

    def _validate(self, rtype: ResourceType, obj: dict[str, Any], req: Request, *, old: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
        """Defaults, unknown fields and schema validation; 422 with every cause at once."""
        compiled = rtype.validator
        has_unknown, warnings = self._unknown_fields(rtype, obj, req)
        if has_unknown:
            obj = compiled.prune(obj)
        obj = compiled.apply_defaults(obj)
        self.admission.default(rtype, obj)
        causes = objects.validate_metadata(obj, rtype)
        causes += [{"type": c.type, "field": c.field, "message": c.message} for c in compiled.validate(obj)]
        causes += self.admission.validate(rtype, old, obj)
        if causes:
            raise errors.invalid(rtype.kind, rtype.group, obj.get("metadata", {}).get("name", ""), causes)
        return obj, warnings

    def _check_body(self, rtype: ResourceType, body: Any, namespace: str | None, name: str | None) -> dict[str, Any]:
        """The body is an object of this kind, in this namespace, with this name."""
        if not isinstance(body, dict):
            raise errors.bad_request(f"the request body must be a {rtype.kind} object, not {type(body).__name__}")
        api_version, kind = body.get("apiVersion"), body.get("kind")
        if api_version is not None and api_version != rtype.api_version:
            raise errors.bad_request(f"the API version in the data ({api_version}) does not match the expected API version ({rtype.api_version})")
        if kind is not None and kind != rtype.kind:
            raise errors.bad_request(f"the kind in the data ({kind}) does not match the expected kind ({rtype.kind})")
        body["apiVersion"], body["kind"] = rtype.api_version, rtype.kind
        meta = body.get("metadata")
        if meta is None:
            meta = body["metadata"] = {}
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        if rtype.namespaced:
            given = meta.get("namespace")
            if given and namespace and given != namespace:
                raise errors.bad_request(f"the namespace of the object ({given}) does not match the namespace on the request ({namespace})")
            meta["namespace"] = namespace or given
            if not meta["namespace"]:
                raise errors.bad_request("a namespace is required for a namespaced kind")
        else:
            meta.pop("namespace", None)
        if name is not None:
            if meta.get("name") and meta["name"] != name:
                raise errors.bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL ({name})")
            meta["name"] = name
        return body


def _track(function: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run a field-ownership update; input it cannot track (say, a list item without its key,
    or hand-written managedFields that make no sense) is the client's error: 422."""
    try:
        return function(*args, **kwargs)  # type: ignore[no-any-return]
    except fieldmanager.FieldManagerError as exc:
        raise errors.ApiError(422, "Invalid", f"cannot track field ownership: {exc}") from None


def _dry_run(req: Request) -> bool:
    value = req.query.get("dryRun")
    if value is None:
        return False
    if value != "All":
        raise errors.bad_request(f'dryRun: Unsupported value: "{value}": supported values: "All"')
    return True


def _parse_rv(text: Any) -> int:
    try:
        value = int(text)
        if value < 0:
            raise ValueError
        return value
    except (TypeError, ValueError):
        raise errors.bad_request(f'invalid resourceVersion "{text}": must be a non-negative integer') from None


def _propagation_finalizer(options: dict[str, Any]) -> str | None:
    """The finalizer that hands a Foreground or Orphan delete to the garbage collector, as the
    Kubernetes API server does (Background needs none: the collector sees the owner gone)."""
    policy = options.get("propagationPolicy")
    if policy is None and options.get("orphanDependents") is True:
        policy = "Orphan"
    if policy in (None, "Background"):
        return None
    if policy == "Foreground":
        return "foregroundDeletion"
    if policy == "Orphan":
        return "orphan"
    raise errors.bad_request(f'propagationPolicy: Unsupported value: "{policy}": supported values: "Background", "Foreground", "Orphan"')


def _check_preconditions(rtype: ResourceType, obj: dict[str, Any], pre: Any) -> None:
    if not pre:
        return
    meta = obj["metadata"]
    if pre.get("uid") and pre["uid"] != meta.get("uid"):
        raise errors.conflict(rtype.plural, rtype.group, meta["name"], f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: {meta.get('uid')}")
    if pre.get("resourceVersion") and pre["resourceVersion"] != meta.get("resourceVersion"):
        raise errors.conflict(rtype.plural, rtype.group, meta["name"], f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, ResourceVersion in object meta: {meta.get('resourceVersion')}")


def encode_b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)
