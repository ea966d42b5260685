"""Per-kind rules that run inside every write.

Most kinds need nothing beyond schema validation. A few have server-side behaviour that
Kubernetes clients rely on, and it lives here so the verb code stays generic:

- namespaced objects can only be created in a namespace that exists and is not terminating;
- Secrets fold `stringData` into base64 `data`;
- a Workload's `selector` defaults to its template's labels (a label naming the Workload when
  the template has none) and must select them;
- Namespaces get `status.phase` and terminate by emptying themselves (see namespaces.py);
- CustomResourceDefinitions register and unregister kinds (see customresources.py);
- PriorityClasses follow Kubernetes' rules, and a new Instance gets its `spec.priority` from
  the class it names or the global default (see priorities.py).
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from hypermesh.api import authz, errors, rbacadmission, selectors
from hypermesh.api.authz import PolicySource
from hypermesh.api.priorities import PriorityClasses
from hypermesh.api.storage import ObjectStorage
from hypermesh.resources.registry import Registry, ResourceType

if TYPE_CHECKING:
    from hypermesh.api.customresources import CustomResources
    from hypermesh.api.namespaces import Namespaces


def _workload_causes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[dict[str, str]]:
    """A Workload must select the Instances its template makes; the selector is immutable
    (changing it would orphan every running Instance)."""
    spec = new.get("spec")
    if not isinstance(spec, dict):
        return []
    selector = spec.get("selector")
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    if selector is None:
        return [{"type": "FieldValueRequired", "field": "spec.selector", "message": "Required value: set spec.selector or spec.template.metadata.labels"}]
    try:
        parsed = selectors.selector_from_spec(selector, where="spec.selector")
    except selectors.SelectorError as exc:
        return [{"type": "FieldValueInvalid", "field": "spec.selector", "message": str(exc)}]
    causes = []
    if not parsed.matches(labels if isinstance(labels, dict) else {}):
        causes.append({"type": "FieldValueInvalid", "field": "spec.template.metadata.labels", "message": f"Invalid value: {labels!r}: `selector` does not match template `labels`"})
    if old is not None and (old.get("spec") or {}).get("selector") not in (None, selector):
        causes.append({"type": "FieldValueInvalid", "field": "spec.selector", "message": "field is immutable"})
    return causes


def _is(rtype: ResourceType, group: str, kind: str) -> bool:
    return rtype.group == group and rtype.kind == kind


class Admission:
    """Dispatches the write hooks to the kinds that have rules."""

    def __init__(self, storage: ObjectStorage, registry: Registry) -> None:
        self.storage = storage
        self.registry = registry
        # Wired by the server after construction (they need the verb layer themselves).
        self.namespaces: Namespaces | None = None
        self.crds: CustomResources | None = None
        self.priorities = PriorityClasses(storage, registry)
        # The RBAC index (wired by the server): escalation checks on Roles and bindings, and
        # the index refreshed by every write of one.
        self.policy: PolicySource | None = None

    async def check_namespace_open(self, namespace: str) -> None:
        assert self.namespaces is not None
        if not await self.namespaces.is_open(namespace):
            raise errors.forbidden(f"unable to create new content in namespace {namespace} because it is being terminated")

    def default(self, rtype: ResourceType, obj: dict[str, Any]) -> None:
        """Defaults no schema can express (they depend on other fields)."""
        if _is(rtype, "hypermesh.io", "Workload"):
            spec = obj.get("spec")
            if not isinstance(spec, dict) or "selector" in spec:
                return
            template = spec.get("template")
            if not isinstance(template, dict):
                return
            meta = template.setdefault("metadata", {})
            if not isinstance(meta, dict):
                return
            labels = meta.get("labels")
            if not labels:
                # A template without labels gets one naming its Workload, so it can be selected.
                labels = meta["labels"] = {"hypermesh.io/workload": obj["metadata"].get("name", "")}
            if isinstance(labels, dict):
                spec["selector"] = {"matchLabels": dict(labels)}

    def validate(self, rtype: ResourceType, old: dict[str, Any] | None, new: dict[str, Any]) -> list[dict[str, str]]:
        if _is(rtype, "apiextensions.k8s.io", "CustomResourceDefinition") and self.crds is not None:
            return self.crds.validate(old, new)
        if _is(rtype, "hypermesh.io", "Workload"):
            return _workload_causes(old, new)
        if _is(rtype, "scheduling.k8s.io", "PriorityClass"):
            return self.priorities.validate(old, new)
        return []

    async def before_write(self, rtype: ResourceType, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
        if self.policy is not None:
            rbacadmission.check(self.policy.authorizer, rtype, old, new)
        if _is(rtype, "hypermesh.io", "Instance"):
            await self.priorities.admit_instance(rtype, old, new)
        elif _is(rtype, "scheduling.k8s.io", "PriorityClass"):
            await self.priorities.admit_class(old, new)
        elif _is(rtype, "", "Secret"):
            string_data = new.pop("stringData", None)
            if isinstance(string_data, dict):
                data = new.setdefault("data", {})
                for key, value in string_data.items():
                    data[key] = base64.b64encode(str(value).encode()).decode()
        elif _is(rtype, "", "Namespace"):
            status = new.setdefault("status", {})
            status["phase"] = "Terminating" if new["metadata"].get("deletionTimestamp") else "Active"
        elif _is(rtype, "apiextensions.k8s.io", "CustomResourceDefinition") and self.crds is not None:
            self.crds.set_status(new)

    async def after_write(self, rtype: ResourceType, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if self.policy is not None and rtype.group == authz.GROUP:
            self.policy.written(rtype, old, new)
        if _is(rtype, "apiextensions.k8s.io", "CustomResourceDefinition") and self.crds is not None:
            await self.crds.changed(old, new)
        elif _is(rtype, "scheduling.k8s.io", "PriorityClass"):
            self.priorities.observe(old, new)

    async def before_delete(self, rtype: ResourceType, obj: dict[str, Any], *, dry_run: bool) -> dict[str, Any] | None:
        """A replacement answer when the kind deletes in its own way, else None."""
        if _is(rtype, "", "Namespace") and self.namespaces is not None:
            return await self.namespaces.delete(obj, dry_run=dry_run)
        if _is(rtype, "scheduling.k8s.io", "PriorityClass"):
            self.priorities.check_delete(obj)
        if _is(rtype, "apiextensions.k8s.io", "CustomResourceDefinition") and self.crds is not None and not dry_run:
            await self.crds.delete_objects(obj)
        return None
