"""Which Instances a Workload controls: adopting matching orphans, releasing what stopped matching.

A Workload's `spec.selector` is a promise about ownership, as a ReplicaSet's is: an Instance in
its namespace that carries matching labels and no controller is adopted (the Workload becomes
its controller owner), and an Instance it controls whose labels no longer match is released
(the reference goes; the Instance lives on, owned by nobody). So a Workload deleted with
`--cascade=orphan` and applied again takes its old Instances back instead of starting a second
set, and relabelling an Instance takes it out of service without deleting it.

Both are writes guarded by the Instance's resourceVersion, so a concurrent change (another
Workload adopting the same orphan) loses cleanly with 409 and is looked at again.

Orphans are indexed per namespace from the Instance informer, so a reconcile looks only at the
namespace's ownerless Instances, not at every Instance of the cluster.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from controllers.kinds import INSTANCES, WORKLOADS, controller_of, owner_references
from hypermesh.client.aio import AsyncClient
from hypermesh.client.errors import ApiError
from hypermesh.operator.informer import Informer, object_key
from hypermesh.scheduler.selectors import Requirement, SpecError, label_selector, matches

log = logging.getLogger(__name__)


def owner_reference(workload: dict[str, Any]) -> dict[str, Any]:
    """The controller reference a Workload puts on its Instances."""
    meta = workload["metadata"]
    return {
        "apiVersion": WORKLOADS.api_version,
        "kind": WORKLOADS.kind,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def selector_of(workload: dict[str, Any]) -> tuple[Requirement, ...]:
    """The Workload's selector as requirements; empty (matching nothing) when it is missing or
    unreadable: adopting everything would be the worse mistake."""
    selector = (workload.get("spec") or {}).get("selector")
    if not selector:
        return ()
    try:
        return label_selector(selector, field="spec.selector")
    except SpecError:
        return ()


def selects(requirements: tuple[Requirement, ...], instance: dict[str, Any]) -> bool:
    """Whether a Workload's selector (from `selector_of`) matches the Instance's labels."""
    return bool(requirements) and matches(requirements, instance["metadata"].get("labels") or {})


class Orphans:
    """Live, ownerless Instances by namespace, kept in step with the Instance informer."""

    def __init__(self, instances: Informer) -> None:
        self.instances = instances
        self._by_namespace: dict[str, set[str]] = defaultdict(set)

    def track(self, event: str, obj: dict[str, Any]) -> bool:
        """Fold one Instance event in; returns whether the Instance is now an orphan."""
        namespace = str(obj["metadata"].get("namespace") or "")
        key = object_key(obj)
        if event == "DELETED" or controller_of(obj) is not None or obj["metadata"].get("deletionTimestamp"):
            keys = self._by_namespace.get(namespace)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_namespace[namespace]
            return False
        self._by_namespace[namespace].add(key)
        return True

    def in_namespace(self, namespace: str) -> list[dict[str, Any]]:
        """The namespace's orphans as the cache has them now."""
        found = (self.instances.get_key(key) for key in sorted(self._by_namespace.get(namespace, ())))
        return [i for i in found if i is not None and controller_of(i) is None]


async def adopt(client: AsyncClient, workload: dict[str, Any], instance: dict[str, Any], manager: str) -> bool:
    """Make `workload` the controller of an orphan; False if the Instance changed meanwhile."""
    refs = [*owner_references(instance), owner_reference(workload)]
    return await _set_references(client, instance, refs, manager, f"adopting {object_key(instance)}")


async def release(client: AsyncClient, workload: dict[str, Any], instance: dict[str, Any], manager: str) -> bool:
    """Drop `workload`'s reference from an Instance it no longer selects."""
    uid = workload["metadata"].get("uid")
    refs = [r for r in owner_references(instance) if r.get("uid") != uid]
    return await _set_references(client, instance, refs, manager, f"releasing {object_key(instance)}")


async def _set_references(
    client: AsyncClient, instance: dict[str, Any], refs: list[dict[str, Any]], manager: str, what: str
) -> bool:
    meta = instance["metadata"]
    patch = {"metadata": {"resourceVersion": meta["resourceVersion"], "ownerReferences": refs}}
    try:
        await client.patch(INSTANCES, meta["name"], meta.get("namespace"), patch, field_manager=manager)
    except ApiError as exc:
        if exc.status in (404, 409):
            return False  # gone, or changed: the watch brings the news and another look
        log.warning("%s failed: %s", what, exc)
        return False
    return True
