"""Authorisation in the request path: what a request asks for, and the policy that answers.

`attributes` turns a parsed request into the question RBAC answers (Kubernetes' RequestInfo:
the verb from the method, `list` versus `get` by whether a name is given, `watch` from the
query, `deletecollection` for a DELETE of a collection; non-resource paths keep the lowercased
method as verb).

`PolicySource` keeps the RBAC index equal to the stored Roles and bindings. It follows the four
kinds through the watch cache, so an API server sharing an etcd cluster with others sees their
changes within the watch's latency; and a write through this server refreshes the index before
the write is answered, so a client that creates a RoleBinding and then uses it is never refused
by a stale index on the same server.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hypermesh.api import errors, rbac, rbacdefaults
from hypermesh.api.storage import ObjectStorage
from hypermesh.api.watchcache import CachedEvent, WatchCache
from hypermesh.resources.registry import Registry, ResourceType

log = logging.getLogger(__name__)

GROUP = "rbac.authorization.k8s.io"
KINDS = ("ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding")
PLURALS = {"ClusterRole": "clusterroles", "Role": "roles", "ClusterRoleBinding": "clusterrolebindings", "RoleBinding": "rolebindings"}
# Every authenticated identity is in this group too, as in Kubernetes.
AUTHENTICATED = rbacdefaults.AUTHENTICATED

_METHOD_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


@dataclass(frozen=True, slots=True)
class Caller:
    """Who the request being served comes from (for checks deeper in the write path)."""

    user: str
    groups: tuple[str, ...]


# Set by the app for each authenticated request: admission reads it to check the writer of a
# Role or binding (escalation) or of a Node (NodeRestriction) without the identity being
# passed through every layer. Unset for the server's own writes.
current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("current_caller", default=None)


def groups_of(groups: Iterable[str]) -> tuple[str, ...]:
    """The identity's groups with `system:authenticated` added."""
    groups = tuple(groups)
    return groups if AUTHENTICATED in groups else (*groups, AUTHENTICATED)


def resource_verb(method: str, *, named: bool, watch: bool) -> str:
    """Kubernetes' verb for a resource request."""
    if method in ("GET", "HEAD"):
        if watch:
            return "watch"
        return "get" if named else "list"
    if method == "DELETE":
        return "delete" if named else "deletecollection"
    return _METHOD_VERBS.get(method, method.lower())


def resource_attributes(
    user: str,
    groups: tuple[str, ...],
    method: str,
    rtype: ResourceType,
    *,
    namespace: str | None,
    name: str | None,
    subresource: str | None,
    watch: bool = False,
    field_name: str | None = None,
) -> rbac.Attributes:
    """The question for a request on `rtype`. A watch or list narrowed to one object by
    `fieldSelector=metadata.name=X` counts as a request for X (kubectl's `get NAME -w`), so a
    rule with resourceNames can allow it."""
    verb = resource_verb(method, named=name is not None, watch=watch)
    if name is None and field_name and verb in ("list", "watch"):
        name = field_name
    return rbac.Attributes(
        user, groups, verb, rtype.group, rtype.plural, subresource or "", namespace or "", name or ""
    )


def path_attributes(user: str, groups: tuple[str, ...], method: str, path: str) -> rbac.Attributes:
    """The question for a non-resource request (discovery, version, openapi)."""
    return rbac.Attributes(user, groups, method.lower(), path=path)


def forbidden(attrs: rbac.Attributes) -> errors.ApiError:
    """Kubernetes' Forbidden answer, naming the user and what was refused."""
    return errors.forbidden(f'User "{attrs.user}" cannot {attrs.describe()}')


class PolicySource:
    """The RBAC index, kept in step with the stored Roles and bindings."""

    def __init__(self, storage: ObjectStorage, registry: Registry, watchcache: WatchCache) -> None:
        self.storage = storage
        self.registry = registry
        self.watchcache = watchcache
        self.authorizer = rbac.Authorizer()
        # kind -> (namespace, name) -> object
        self._objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {kind: {} for kind in KINDS}
        self._trackers: list[asyncio.Task[None]] = []

    def rtype(self, kind: str) -> ResourceType:
        rtype = self.registry.by_plural(GROUP, "v1", PLURALS[kind])
        assert rtype is not None, kind
        return rtype

    async def start(self) -> None:
        """Install the default roles, load everything, and follow changes."""
        await self.ensure_defaults()
        for kind in KINDS:
            page = await self.storage.list(self.rtype(kind), None)
            self._objects[kind] = {_key(obj): obj for obj in page.items}
        self.rebuild()
        loop = asyncio.get_running_loop()
        self._trackers = [loop.create_task(self._track(kind), name=f"rbac-tracker:{kind}") for kind in KINDS]

    async def stop(self) -> None:
        for task in self._trackers:
            task.cancel()
        for task in self._trackers:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._trackers = []

    def rebuild(self) -> None:
        objects = self._objects
        self.authorizer.replace(
            rbac.build(
                objects["ClusterRole"].values(),
                objects["Role"].values(),
                objects["ClusterRoleBinding"].values(),
                objects["RoleBinding"].values(),
            )
        )

    def written(self, rtype: ResourceType, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        """A write through this server: apply it to the index now (the watch will repeat it)."""
        if rtype.group != GROUP or rtype.kind not in self._objects:
            return
        objects = self._objects[rtype.kind]
        if new is None:
            if old is not None:
                objects.pop(_key(old), None)
        else:
            objects[_key(new)] = new
        self.rebuild()

    async def _track(self, kind: str) -> None:
        """Follow one kind's watch; rebuild the index after each burst of changes."""
        rtype = self.rtype(kind)
        while True:
            cache = self.watchcache.for_type(rtype)
            subscription = cache.subscribe(lambda obj: True, None)
            assert subscription is not None
            watcher, _, revision = subscription
            try:
                page = await self.storage.list(rtype, None, revision=revision)
                self._objects[kind] = {_key(obj): obj for obj in page.items}
                self.rebuild()
                while not watcher.closed or watcher.items:
                    await watcher.wait(60.0)
                    changed = False
                    while watcher.items:
                        item = watcher.items.popleft()
                        if isinstance(item, CachedEvent):
                            changed = True
                            if item.type == "DELETED":
                                self._objects[kind].pop(_key(item.obj), None)
                            else:
                                self._objects[kind][_key(item.obj)] = item.obj
                    if changed:
                        self.rebuild()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("following %s for RBAC failed; restarting", kind)
                await asyncio.sleep(0.5)
            finally:
                cache.unsubscribe(watcher)

    async def ensure_defaults(self) -> None:
        """Create the default roles and bindings; put back the rules of those still marked
        `autoupdate: "true"` (an upgrade may have added permissions)."""
        from hypermesh.api import objects as object_meta

        wanted = [("ClusterRole", obj) for obj in rbacdefaults.cluster_roles()]
        wanted += [("ClusterRoleBinding", obj) for obj in rbacdefaults.cluster_role_bindings()]
        for kind, obj in wanted:
            rtype = self.rtype(kind)
            name = obj["metadata"]["name"]
            stored = await self.storage.get(rtype, None, name)
            if stored is None:
                meta = obj["metadata"]
                meta.update(uid=object_meta.new_uid(), creationTimestamp=object_meta.now(), generation=1)
                try:
                    await self.storage.create(rtype, obj)
                except errors.ApiError as exc:
                    if exc.reason != "AlreadyExists":
                        raise
                continue
            if (stored["metadata"].get("annotations") or {}).get(rbacdefaults.AUTOUPDATE) != "true":
                continue
            fields = ("rules", "aggregationRule") if kind == "ClusterRole" else ("roleRef", "subjects")
            if all(stored.get(field) == obj.get(field) for field in fields):
                continue
            updated = copy.deepcopy(stored)
            for field in fields:
                if field in obj:
                    updated[field] = obj[field]
                else:
                    updated.pop(field, None)
            await self.storage.update(rtype, updated, int(stored["metadata"]["resourceVersion"]))


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj["metadata"]
    return meta.get("namespace") or "", meta["name"]
