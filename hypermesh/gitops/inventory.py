"""What a sync records: who owns an object, what was applied, what changed, what failed.

These are the GitSync's bookkeeping, kept apart from the sync itself (`hypermesh.gitops.sync`)
because the controller reads and writes them too: the inventory in `status.inventory` (each
object with a digest of the configuration applied to it, so that a later difference between it
and the live object can be told apart as drift), the per-object errors in `status.errors`, and
the ownership labels that keep one GitSync's pruning away from everything it did not create.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from hypermesh.gitops import diff

__all__ = [
    "OWNER_NAMESPACE_LABEL",
    "OWNER_NAME_LABEL",
    "Change",
    "InventoryItem",
    "ObjectFailure",
    "Outcome",
    "Owner",
    "SyncFailed",
]

OWNER_NAME_LABEL = "gitsync.hypermesh.io/name"
OWNER_NAMESPACE_LABEL = "gitsync.hypermesh.io/namespace"

Action = Literal["created", "configured", "drifted", "pruned"]


@dataclass(frozen=True)
class Owner:
    """The GitSync a sync works for."""

    namespace: str
    name: str

    @property
    def manager(self) -> str:
        """The server-side apply field manager."""
        return f"gitsync/{self.name}"

    @property
    def labels(self) -> dict[str, str]:
        return {OWNER_NAME_LABEL: self.name, OWNER_NAMESPACE_LABEL: self.namespace}

    def owns(self, obj: dict[str, Any]) -> bool:
        """Whether `obj` carries this GitSync's labels."""
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(labels.get(k) == v for k, v in self.labels.items())

    def other_owner(self, obj: dict[str, Any]) -> str | None:
        """`namespace/name` of another GitSync whose labels `obj` carries, else None."""
        labels = (obj.get("metadata") or {}).get("labels") or {}
        name, namespace = labels.get(OWNER_NAME_LABEL), labels.get(OWNER_NAMESPACE_LABEL)
        if name is None or (name, namespace) == (self.name, self.namespace):
            return None
        return f"{namespace}/{name}"


@dataclass(frozen=True)
class InventoryItem:
    """An object a sync applied, and a digest of the configuration applied to it."""

    api_version: str
    kind: str
    name: str
    namespace: str | None = None
    digest: str | None = None

    @property
    def key(self) -> tuple[str, str, str | None, str]:
        return (_group(self.api_version), self.kind, self.namespace, self.name)

    def describe(self) -> str:
        text = f"{self.kind}/{self.name}"
        return f"{text} (namespace {self.namespace})" if self.namespace else text

    def to_status(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"apiVersion": self.api_version, "kind": self.kind, "name": self.name}
        if self.namespace:
            entry["namespace"] = self.namespace
        if self.digest:
            entry["digest"] = self.digest
        return entry

    @classmethod
    def from_status(cls, entry: dict[str, Any]) -> InventoryItem:
        return cls(
            api_version=str(entry.get("apiVersion") or "v1"),
            kind=str(entry["kind"]),
            name=str(entry["name"]),
            namespace=entry.get("namespace") or None,
            digest=entry.get("digest") or None,
        )


@dataclass(frozen=True)
class Change:
    """Something a sync did to one object (`fields`: the paths that changed)."""

    action: Action
    item: InventoryItem
    fields: tuple[str, ...] = ()

    def describe(self) -> str:
        text = f"{self.item.describe()} {self.action}"
        return f"{text} ({diff.format_paths(list(self.fields))})" if self.fields else text


@dataclass(frozen=True)
class ObjectFailure:
    """An object a sync could not apply, prune or find healthy."""

    item: InventoryItem
    message: str

    def to_status(self) -> dict[str, Any]:
        entry = self.item.to_status()
        entry.pop("digest", None)
        entry["message"] = self.message
        return entry


class SyncFailed(Exception):
    """The sync stopped: a Ready reason, a message, and whether only a new revision can fix it."""

    def __init__(self, reason: str, message: str, *, stalled: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.stalled = stalled


@dataclass
class Outcome:
    """What one sync did; `failure` is None when it completed."""

    changes: list[Change] = field(default_factory=list)
    inventory: list[InventoryItem] = field(default_factory=list)
    errors: list[ObjectFailure] = field(default_factory=list)
    failure: SyncFailed | None = None


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]
