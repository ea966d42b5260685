"""Namespace lifecycle: the defaults that always exist, and deletion that empties first.

Deleting a namespace marks it Terminating (new content is refused), then deletes everything in
it through the normal verb path, so objects with finalizers get their `deletionTimestamp` and
their controllers a chance to clean up. The namespace itself goes once nothing is left. The
sweep re-runs until then, and again on every server start for namespaces left terminating.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import TYPE_CHECKING, Any

from hypermesh.api import errors, objects
from hypermesh.api.storage import ObjectStorage
from hypermesh.api.watchcache import CachedEvent, WatchCache
from hypermesh.resources.registry import Registry, ResourceType

if TYPE_CHECKING:
    from hypermesh.api.rest import ResourceAPI

log = logging.getLogger(__name__)

DEFAULT_NAMESPACES = ("default", "hypermesh-system", "kube-system", "hypermesh-node-lease")
PROTECTED = frozenset(DEFAULT_NAMESPACES)
SWEEP_INTERVAL = 0.5


class Namespaces:
    def __init__(self, storage: ObjectStorage, registry: Registry, watchcache: WatchCache) -> None:
        self.storage = storage
        self.registry = registry
        self.watchcache = watchcache
        self.api: ResourceAPI | None = None
        self._sweeps: dict[str, asyncio.Task[None]] = {}
        # Every create of a namespaced object checks its namespace; a map kept in step with the
        # namespaces' watch spares that store read. name -> terminating.
        self._known: dict[str, bool] = {}
        self._tracker: asyncio.Task[None] | None = None

    async def is_open(self, name: str) -> bool:
        """Whether objects may be created in namespace `name` (NotFound when it is missing)."""
        terminating = self._known.get(name)
        if terminating is None:
            # Not seen yet (just created, or the tracker is behind): ask the store.
            ns = await self.storage.get(self.rtype, None, name)
            if ns is None:
                raise errors.not_found("namespaces", "", name)
            terminating = bool(ns["metadata"].get("deletionTimestamp"))
        return not terminating

    async def _track(self) -> None:
        """Keep `_known` equal to the stored namespaces, resubscribing if the watch ends."""
        while True:
            cache = self.watchcache.for_type(self.rtype)
            subscription = cache.subscribe(lambda obj: True, None)
            assert subscription is not None
            watcher, _, revision = subscription
            try:
                page = await self.storage.list(self.rtype, None, revision=revision)
                self._known = {ns["metadata"]["name"]: bool(ns["metadata"].get("deletionTimestamp")) for ns in page.items}
                while not watcher.closed or watcher.items:
                    await watcher.wait(60.0)
                    while watcher.items:
                        item = watcher.items.popleft()
                        if isinstance(item, CachedEvent):
                            name = item.obj["metadata"]["name"]
                            if item.type == "DELETED":
                                self._known.pop(name, None)
                            else:
                                self._known[name] = bool(item.obj["metadata"].get("deletionTimestamp"))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("namespace tracking failed; restarting")
                await asyncio.sleep(0.5)
            finally:
                cache.unsubscribe(watcher)
            self._known = {}

    @property
    def rtype(self) -> ResourceType:
        rtype = self.registry.by_plural("", "v1", "namespaces")
        assert rtype is not None
        return rtype

    async def ensure_defaults(self) -> None:
        """Create the namespaces every cluster has (first start only)."""
        for name in DEFAULT_NAMESPACES:
            if await self.storage.get(self.rtype, None, name) is None:
                now = objects.now()
                obj = {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": name, "uid": objects.new_uid(), "creationTimestamp": now, "generation": 1, "labels": {"kubernetes.io/metadata.name": name}},
                    "spec": {},
                    "status": {"phase": "Active"},
                }
                try:
                    await self.storage.create(self.rtype, obj)
                except errors.ApiError as exc:
                    if exc.reason != "AlreadyExists":
                        raise
        self._tracker = asyncio.get_running_loop().create_task(self._track(), name="namespace-tracker")
        # Resume the sweeps of namespaces that were terminating when the server stopped.
        page = await self.storage.list(self.rtype, None)
        for ns in page.items:
            if ns["metadata"].get("deletionTimestamp"):
                self._start_sweep(ns["metadata"]["name"])

    async def delete(self, ns: dict[str, Any], *, dry_run: bool) -> dict[str, Any]:
        name = ns["metadata"]["name"]
        if name in PROTECTED:
            raise errors.forbidden(f'namespaces "{name}" is forbidden: this namespace may not be deleted')
        if ns["metadata"].get("deletionTimestamp"):
            return ns
        new = copy.deepcopy(ns)
        new["metadata"]["deletionTimestamp"] = objects.now()
        new.setdefault("status", {})["phase"] = "Terminating"
        if dry_run:
            return new
        updated = await self.storage.update(self.rtype, new, int(ns["metadata"]["resourceVersion"]))
        self._start_sweep(name)
        return updated

    def _start_sweep(self, name: str) -> None:
        if name not in self._sweeps or self._sweeps[name].done():
            self._sweeps[name] = asyncio.get_running_loop().create_task(self._sweep(name), name=f"namespace-sweep:{name}")

    async def _sweep(self, name: str) -> None:
        while True:
            try:
                if await self._sweep_once(name):
                    return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sweeping namespace %s failed; retrying", name)
            await asyncio.sleep(SWEEP_INTERVAL)

    async def _sweep_once(self, name: str) -> bool:
        """Delete what is left in the namespace; True once the namespace itself is gone."""
        assert self.api is not None
        left = 0
        for rtype in list(self.registry.all()):
            if not rtype.namespaced or not rtype.storage:
                continue
            page = await self.storage.list(rtype, name)
            for obj in page.items:
                left += 1
                if obj["metadata"].get("deletionTimestamp"):
                    continue  # waiting for its finalizers
                try:
                    await self.api.delete_object(rtype, obj)
                except errors.ApiError as exc:
                    if exc.code not in (404, 409):
                        raise
        if left:
            return False
        ns = await self.storage.get(self.rtype, None, name)
        if ns is None:
            return True
        try:
            await self.storage.delete(self.rtype, ns, int(ns["metadata"]["resourceVersion"]))
        except errors.ApiError as exc:
            if exc.code == 409:
                return False
            if exc.code != 404:
                raise
        return True

    async def stop(self) -> None:
        tasks = [*self._sweeps.values(), *([self._tracker] if self._tracker else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
