"""The kinds the controllers read and write, and the ownerReference index they share.

The kinds themselves live in `hypermesh.client.kinds` (the node agent needs them too) and are
re-exported here. `OwnerIndex` answers "which objects does this uid own?" without a scan:
it is kept in step by informer subscriptions (which also see relist differences), so a
Workload with three Instances costs three lookups, not a walk over fifty thousand.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from hypermesh.client.kinds import INSTANCES, NODES, WORKLOADS
from hypermesh.client.resources import Resource
from hypermesh.operator.informer import object_key


def owner_references(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The object's ownerReferences (an empty list when it has none)."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return [ref for ref in refs if isinstance(ref, dict)]


def controller_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The ownerReference marked `controller: true`, or None."""
    return next((ref for ref in owner_references(obj) if ref.get("controller")), None)


class OwnerIndex:
    """Dependents by owner uid, for the objects of the informers it subscribes to."""

    def __init__(self) -> None:
        # owner uid -> {(dependent resource, dependent key)}
        self._by_owner: dict[str, set[tuple[Resource, str]]] = defaultdict(set)
        # (resource, dependent key) -> owner uids it was indexed under
        self._owners: dict[tuple[Resource, str], set[str]] = {}

    def track(self, resource: Resource, event: str, obj: dict[str, Any]) -> None:
        """Fold one informer event of `resource` into the index."""
        key = object_key(obj)
        before = self._owners.pop((resource, key), set())
        for uid in before:
            entry = self._by_owner.get(uid)
            if entry is not None:
                entry.discard((resource, key))
                if not entry:
                    del self._by_owner[uid]
        if event == "DELETED":
            return
        uids = {str(ref["uid"]) for ref in owner_references(obj) if ref.get("uid")}
        if uids:
            self._owners[(resource, key)] = uids
            for uid in uids:
                self._by_owner[uid].add((resource, key))

    def dependents(self, uid: str) -> list[tuple[Resource, str]]:
        """(resource, `namespace/name`) of every indexed object owned by `uid`."""
        return sorted(self._by_owner.get(uid, ()), key=lambda entry: entry[1])


class NodeIndex:
    """Instance keys by the node they are filed under (which node is the caller's choice:
    bound to it, or terminating on it)."""

    def __init__(self) -> None:
        self._by_node: dict[str, set[str]] = {}
        self._node_of: dict[str, str] = {}

    def file(self, key: str, node: str | None) -> None:
        """File `key` under `node` (None: under none, e.g. the Instance went)."""
        before = self._node_of.pop(key, None)
        if before is not None:
            keys = self._by_node.get(before)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_node[before]
        if node:
            self._node_of[key] = node
            self._by_node.setdefault(node, set()).add(key)

    def keys(self, node: str) -> list[str]:
        """The keys filed under `node` (a copy: callers may file while iterating)."""
        return list(self._by_node.get(node, ()))


__all__ = ["INSTANCES", "NODES", "WORKLOADS", "NodeIndex", "OwnerIndex", "controller_of", "owner_references"]
