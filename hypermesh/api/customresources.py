"""CustomResourceDefinitions: kinds that appear and disappear at run time.

Applying a CRD makes its kind servable at once: the registry gains the types, discovery and
OpenAPI regenerate (their caches key on the registry generation), and the new kind gets the
same verbs, watch cache and validation as every built-in one. Deleting a CRD deletes its
objects and then the kind. HyperMesh's own kinds are CRDs too (crds/*.yaml), stored as CRD
objects on first start so `kubectl get crd` shows them like any other.
"""

from __future__ import annotations

import logging
from typing import Any

import yaml

from hypermesh.api import errors, objects
from hypermesh.api.storage import ObjectStorage
from hypermesh.api.watchcache import WatchCache
from hypermesh.resources.registry import CRD_DIR, CRDError, Registry, ResourceType, types_from_crd

log = logging.getLogger(__name__)

# Groups whose kinds the server defines itself; a CRD may not take them over.
RESERVED_GROUPS = frozenset({"", "apiextensions.k8s.io", "coordination.k8s.io", "scheduling.k8s.io", "meta.k8s.io", "apidiscovery.k8s.io"})


def hypermesh_crds() -> list[dict[str, Any]]:
    """The CRD documents of HyperMesh's own kinds (crds/*.yaml)."""
    documents: list[dict[str, Any]] = []
    for path in sorted(CRD_DIR.glob("*.yaml")):
        with path.open(encoding="utf-8") as stream:
            documents.extend(doc for doc in yaml.safe_load_all(stream) if doc)
    return documents


class CustomResources:
    def __init__(self, storage: ObjectStorage, registry: Registry, watchcache: WatchCache) -> None:
        self.storage = storage
        self.registry = registry
        self.watchcache = watchcache

    @property
    def rtype(self) -> ResourceType:
        rtype = self.registry.by_plural("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        assert rtype is not None
        return rtype

    def validate(self, old: dict[str, Any] | None, new: dict[str, Any]) -> list[dict[str, str]]:
        causes: list[dict[str, str]] = []
        try:
            types = types_from_crd(new)
        except CRDError as exc:
            return [{"type": "FieldValueInvalid", "field": getattr(exc, "field", "spec"), "message": str(exc)}]
        spec = new.get("spec", {})
        group, plural = spec.get("group", ""), spec.get("names", {}).get("plural", "")
        expected = f"{plural}.{group}"
        if new["metadata"].get("name") != expected:
            causes.append({"type": "FieldValueInvalid", "field": "metadata.name", "message": f'Invalid value: "{new["metadata"].get("name")}": must be spec.names.plural+"."+spec.group ("{expected}")'})
        if group in RESERVED_GROUPS:
            causes.append({"type": "FieldValueInvalid", "field": "spec.group", "message": f'Invalid value: "{group}": this group is served by the API server itself'})
        if old is not None:
            old_spec = old.get("spec", {})
            for field in ("group", "scope"):
                if old_spec.get(field) != spec.get(field):
                    causes.append({"type": "FieldValueInvalid", "field": f"spec.{field}", "message": "field is immutable"})
        for rtype in types:
            other = self.registry.by_plural(rtype.group, rtype.version, rtype.plural)
            if other is not None and other.kind != rtype.kind:
                causes.append({"type": "FieldValueInvalid", "field": "spec.names.plural", "message": f'"{rtype.plural}" is already the plural of {other.kind}'})
        return causes

    def set_status(self, crd: dict[str, Any]) -> None:
        """A valid CRD is accepted and established at once (there is nothing to wait for)."""
        spec = crd.get("spec", {})
        now = objects.now()
        old_conditions = {c.get("type"): c for c in crd.get("status", {}).get("conditions", []) if isinstance(c, dict)}

        def condition(kind: str, reason: str, message: str) -> dict[str, Any]:
            previous = old_conditions.get(kind)
            since = previous.get("lastTransitionTime") if previous and previous.get("status") == "True" else now
            return {"type": kind, "status": "True", "lastTransitionTime": since, "reason": reason, "message": message}

        storage_versions = [v.get("name") for v in spec.get("versions", []) if isinstance(v, dict) and v.get("storage")]
        crd["status"] = {
            "conditions": [
                condition("NamesAccepted", "NoConflicts", "no conflicts found"),
                condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
            ],
            "acceptedNames": spec.get("names", {}),
            "storedVersions": storage_versions,
        }

    async def changed(self, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        """Bring the registry in line with a CRD that was written or removed."""
        if old is not None:
            for rtype in types_from_crd(old):
                self.registry.remove(rtype.group, rtype.plural)
        if new is not None:
            for rtype in types_from_crd(new):
                self.registry.add(rtype)
        elif old is not None:
            for rtype in types_from_crd(old):
                await self.watchcache.drop(rtype)

    async def delete_objects(self, crd: dict[str, Any]) -> None:
        """Remove every object of the CRD's kinds (the kind is going away with them)."""
        for rtype in types_from_crd(crd):
            if not rtype.storage:
                continue
            page = await self.storage.list(rtype, None)
            for obj in page.items:
                try:
                    await self.storage.delete(rtype, obj, int(obj["metadata"]["resourceVersion"]))
                except errors.ApiError as exc:
                    if exc.code not in (404, 409):
                        raise

    async def load(self) -> None:
        """Register the kinds of every stored CRD (on start)."""
        page = await self.storage.list(self.rtype, None)
        for crd in page.items:
            try:
                for rtype in types_from_crd(crd):
                    self.registry.add(rtype)
            except CRDError as exc:
                log.error("stored CRD %s is invalid and is not served: %s", crd["metadata"]["name"], exc)

    async def install(self, crd: dict[str, Any]) -> None:
        """Store a CRD the server ships (HyperMesh's own kinds), or update it when it changed."""
        name = crd["metadata"]["name"]
        existing = await self.storage.get(self.rtype, None, name)
        if existing is not None and existing.get("spec") == crd.get("spec"):
            return
        obj = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": name}, "spec": crd["spec"]}
        obj["metadata"]["labels"] = {"app.kubernetes.io/managed-by": "hypermesh"}
        self.set_status(obj)
        if existing is None:
            obj["metadata"].update(uid=objects.new_uid(), creationTimestamp=objects.now(), generation=1)
            await self.storage.create(self.rtype, obj)
        else:
            meta = existing["metadata"]
            obj["metadata"].update(uid=meta["uid"], creationTimestamp=meta["creationTimestamp"], generation=int(meta.get("generation", 1)) + 1)
            await self.storage.update(self.rtype, obj, int(meta["resourceVersion"]))
