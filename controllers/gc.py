"""The garbage collector: objects whose owners are gone go too (ownerReferences).

Three deletion modes, as in Kubernetes:

- background (the default): the owner is deleted at once; its dependents are found here
  afterwards, their owner's uid no longer existing, and deleted;
- foreground: the owner stays, with a deletionTimestamp and the `foregroundDeletion`
  finalizer, until the collector has deleted its dependents and seen them gone; then the
  finalizer is removed and the owner goes;
- orphan: the owner stays, with the `orphan` finalizer, until the collector has removed the
  owner's entry from every dependent's ownerReferences; the dependents live on.

The API server turns `DELETE ...` with `propagationPolicy: Foreground|Orphan` into those
finalizers (as Kubernetes does); this module carries them out.

An owner is "gone" only after a live GET says so (404, or the name now holds another uid): the
informers of different kinds are not in step, so a dependent can be seen before its freshly
created owner, and a cache miss must never delete anything. Owners of a kind the collector is
not configured for are never judged gone. When some but not all of a dependent's owners are
gone, the dangling references are removed instead of deleting the object.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from controllers.kinds import INSTANCES, WORKLOADS, OwnerIndex, owner_references
from hypermesh.client.errors import ApiError
from hypermesh.client.resources import Resource
from hypermesh.operator import Context, Operator, Result
from hypermesh.operator.controller import Controller
from hypermesh.operator.informer import object_key

log = logging.getLogger(__name__)

FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"


@dataclass(frozen=True)
class GCSettings:
    """Which kinds the collector watches: dependents (carrying ownerReferences) and owners."""

    dependents: tuple[Resource, ...] = (INSTANCES,)
    owners: tuple[Resource, ...] = (WORKLOADS,)
    # How soon a foreground deletion looks again while dependents remain.
    foreground_poll: float = 1.0


class GarbageCollector:
    """Deletes orphaned dependents and finishes foreground and orphan deletions."""

    def __init__(self, op: Operator, index: OwnerIndex, settings: GCSettings) -> None:
        self.op = op
        self.index = index
        self.settings = settings
        self.owners = {(r.api_version, r.kind): r for r in settings.owners}
        self._dependent_controllers: dict[Resource, Controller] = {}
        self._owner_controllers: dict[Resource, Controller] = {}
        for resource in settings.dependents:
            # Only an object with owners can be orphaned: thousands of owner-less Instance
            # events a second need no trip through the queue.
            op.reconcile(resource, events=lambda _type, obj: bool(owner_references(obj)))(self.collect)
            self._dependent_controllers[resource] = op.controllers[-1]
            op.informer(resource).subscribe(self._on_dependent)
        for resource in settings.owners:
            op.reconcile(resource, deleting=True)(self.finish_deletion)
            self._owner_controllers[resource] = op.controllers[-1]
            op.informer(resource).subscribe(self._on_owner)

    # Event mapping

    def _on_dependent(self, _type: str, obj: dict[str, Any]) -> None:
        # A dependent changing or going may let a foreground deletion of its owner finish.
        namespace = obj["metadata"].get("namespace")
        for ref in owner_references(obj):
            resource = self.owners.get((ref.get("apiVersion", ""), ref.get("kind", "")))
            controller = self._owner_controllers.get(resource) if resource else None
            if controller is None or controller.queue is None or resource is None:
                continue
            # Only an owner being deleted waits for its dependents; a live one needs no look.
            name = str(ref.get("name", ""))
            owner = self.op.informer(resource).get(name, namespace if resource.namespaced else None)
            if owner is not None and owner["metadata"].get("deletionTimestamp"):
                controller.queue.add(f"{namespace}/{name}" if resource.namespaced else name)

    def _on_owner(self, event: str, obj: dict[str, Any]) -> None:
        # An owner gone means its dependents need a look.
        if event != "DELETED":
            return
        for resource, key in self.index.dependents(str(obj["metadata"].get("uid"))):
            controller = self._dependent_controllers.get(resource)
            if controller is not None and controller.queue is not None:
                controller.queue.add(key)

    # Dependents

    async def collect(self, obj: dict[str, Any], ctx: Context) -> Result | None:
        """Delete `obj` when all its owners are gone; drop references to the ones that are."""
        refs = owner_references(obj)
        if not refs:
            return None
        meta = obj["metadata"]
        dangling = [ref for ref in refs if await self._owner_gone(ref, meta.get("namespace"))]
        if not dangling:
            return None
        try:
            if len(dangling) == len(refs):
                log.info("deleting %s %s: its owners are gone", ctx.resource.kind, object_key(obj))
                await ctx.client.delete(
                    ctx.resource, meta["name"], meta.get("namespace"), propagation="Background"
                )
            else:
                gone = {ref.get("uid") for ref in dangling}
                await self._set_owner_references(
                    ctx.resource, obj, [r for r in refs if r.get("uid") not in gone]
                )
        except ApiError as exc:
            if exc.status != 404:
                raise
        return None

    async def _owner_gone(self, ref: dict[str, Any], namespace: str | None) -> bool:
        resource = self.owners.get((ref.get("apiVersion", ""), ref.get("kind", "")))
        if resource is None:
            return False
        owner_ns = namespace if resource.namespaced else None
        cached = self.op.informer(resource).get(str(ref.get("name")), owner_ns)
        if cached is not None and cached["metadata"].get("uid") == ref.get("uid"):
            return False
        try:
            live = await self.op.client.get(resource, str(ref.get("name")), owner_ns)
        except ApiError as exc:
            if exc.status == 404:
                return True
            raise
        return bool(live["metadata"].get("uid") != ref.get("uid"))

    async def _set_owner_references(
        self, resource: Resource, obj: dict[str, Any], refs: list[dict[str, Any]]
    ) -> None:
        meta = obj["metadata"]
        patch = {
            "metadata": {"ownerReferences": refs or None, "resourceVersion": meta["resourceVersion"]}
        }
        await self.op.client.patch(
            resource, meta["name"], meta.get("namespace"), patch, field_manager=self.op.name
        )

    # Owners being deleted

    async def finish_deletion(self, owner: dict[str, Any], ctx: Context) -> Result | None:
        """Carry out an owner's `orphan` or `foregroundDeletion` finalizer."""
        meta = owner["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if not meta.get("deletionTimestamp"):
            return None
        if ORPHAN in finalizers:
            await self._orphan_dependents(owner)
            await self._remove_finalizer(ctx.resource, owner, ORPHAN)
            return None
        if FOREGROUND in finalizers:
            if await self._delete_dependents(owner):
                return Result.requeue_after(self.settings.foreground_poll)
            await self._remove_finalizer(ctx.resource, owner, FOREGROUND)
        return None

    def _cached_dependents(self, uid: str) -> list[tuple[Resource, dict[str, Any]]]:
        found = []
        for resource, key in self.index.dependents(uid):
            obj = self.op.informer(resource).get_key(key)
            if obj is not None:
                found.append((resource, obj))
        return found

    async def _orphan_dependents(self, owner: dict[str, Any]) -> None:
        uid = owner["metadata"].get("uid")
        for resource, dependent in self._cached_dependents(str(uid)):
            refs = owner_references(dependent)
            try:
                await self._set_owner_references(
                    resource, dependent, [r for r in refs if r.get("uid") != uid]
                )
            except ApiError as exc:
                if exc.status != 404:
                    raise  # 409: the cache was behind; retry with the newer object

    async def _delete_dependents(self, owner: dict[str, Any]) -> bool:
        """Delete what the owner still owns; True while any dependent remains (live view)."""
        meta = owner["metadata"]
        uid = meta.get("uid")
        remaining = False
        for resource in self.settings.dependents:
            namespace = meta.get("namespace") if resource.namespaced else None
            listing = await self.op.client.list(resource, namespace)
            for dependent in listing.get("items") or []:
                if not any(r.get("uid") == uid for r in owner_references(dependent)):
                    continue
                remaining = True
                dmeta = dependent["metadata"]
                if dmeta.get("deletionTimestamp"):
                    continue
                try:
                    await self.op.client.delete(
                        resource, dmeta["name"], dmeta.get("namespace"), propagation="Background"
                    )
                except ApiError as exc:
                    if exc.status != 404:
                        raise
        return remaining

    async def _remove_finalizer(self, resource: Resource, obj: dict[str, Any], name: str) -> None:
        meta = obj["metadata"]
        finalizers = [f for f in meta.get("finalizers") or [] if f != name]
        patch = {"metadata": {"finalizers": finalizers, "resourceVersion": meta["resourceVersion"]}}
        try:
            await self.op.client.patch(
                resource, meta["name"], meta.get("namespace"), patch, field_manager=self.op.name
            )
        except ApiError as exc:
            if exc.status != 404:
                raise


def setup(op: Operator, index: OwnerIndex, settings: GCSettings | None = None) -> GarbageCollector:
    """Register the garbage collector on `op`."""
    return GarbageCollector(op, index, settings or GCSettings())


__all__ = ["FOREGROUND", "ORPHAN", "GCSettings", "GarbageCollector", "setup"]
