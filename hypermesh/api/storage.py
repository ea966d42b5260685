"""Objects on top of the key-value state engine.

This is the only module of the API server that reads or writes the store. It owns the mapping
between Kubernetes objects and key-value pairs:

- an object lives at `ResourceType.key(namespace, name)` as JSON;
- `metadata.resourceVersion` is never stored: it *is* the key's `mod_revision`, injected on
  every read, so it cannot disagree with the store and needs no second write;
- every write is a compare-and-swap on that revision, which is what turns a stale
  `resourceVersion` into 409 Conflict and makes concurrent writers safe without locks.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from hypermesh.api import errors
from hypermesh.resources.registry import ResourceType
from hypermesh.store import CompactedError, Compare, Delete, KeyValue, Put, Store


def decode(kv: KeyValue) -> dict[str, Any]:
    """The stored object with its resourceVersion filled in."""
    obj: dict[str, Any] = orjson.loads(kv.value)
    obj["metadata"]["resourceVersion"] = str(kv.mod_revision)
    return obj


def encode(obj: dict[str, Any]) -> bytes:
    """The object as stored: without resourceVersion (the store's revision is the truth)."""
    meta = obj["metadata"]
    if "resourceVersion" in meta:
        meta = {k: v for k, v in meta.items() if k != "resourceVersion"}
        obj = {**obj, "metadata": meta}
    return orjson.dumps(obj)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list."""

    items: list[dict[str, Any]]
    revision: int
    continue_token: str | None
    remaining: int | None


def _encode_continue(revision: int, last_key: str) -> str:
    raw = orjson.dumps({"v": 1, "rv": revision, "start": last_key})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_continue(token: str, prefix: str) -> tuple[int, str]:
    try:
        padded = token + "=" * (-len(token) % 4)
        data = orjson.loads(base64.urlsafe_b64decode(padded))
        revision, start = int(data["rv"]), str(data["start"])
    except Exception:
        raise errors.bad_request(f'invalid continue token "{token}"') from None
    if not start.startswith(prefix):
        raise errors.bad_request("the continue token belongs to another collection")
    return revision, start


class ObjectStorage:
    """Typed CRUD of Kubernetes objects with optimistic concurrency."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def revision(self) -> int:
        return self.store.revision

    async def get(self, rtype: ResourceType, namespace: str | None, name: str) -> dict[str, Any] | None:
        kv = await self.store.get(rtype.key(namespace, name))
        return decode(kv) if kv is not None else None

    async def get_required(self, rtype: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        obj = await self.get(rtype, namespace, name)
        if obj is None:
            raise errors.not_found(rtype.plural, rtype.group, name)
        return obj

    async def list(
        self,
        rtype: ResourceType,
        namespace: str | None,
        *,
        limit: int = 0,
        continue_token: str | None = None,
        revision: int = 0,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
    ) -> Page:
        """A consistent page of the collection: every page of one listing is read at the
        revision of its first page, so a paginated list is a snapshot."""
        prefix = rtype.key_prefix(namespace)
        start_after: str | None = None
        if continue_token:
            revision, start_after = _decode_continue(continue_token, prefix)
        if not revision:
            revision = self.store.revision
        items: list[dict[str, Any]] = []
        # Filtering happens after the range, so read in chunks until the page is full.
        chunk = max(limit, 500) if limit else 0
        while True:
            try:
                result = await self.store.range(prefix, start_after=start_after, limit=chunk, revision=revision)
            except CompactedError:
                raise errors.expired(
                    "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter."
                ) from None
            for position, kv in enumerate(result.kvs):
                obj = decode(kv)
                if predicate is None or predicate(obj):
                    items.append(obj)
                    if limit and len(items) == limit:
                        has_more = result.more or position + 1 < len(result.kvs)
                        if not has_more:
                            return Page(items, revision, None, None)
                        # remainingItemCount is optional; it is exact only for an unfiltered first page.
                        remaining = None
                        if predicate is None and start_after is None:
                            remaining = max(result.count - (position + 1), 0)
                        return Page(items, revision, _encode_continue(revision, kv.key), remaining)
            if not result.more or not result.kvs:
                return Page(items, revision, None, None)
            start_after = result.kvs[-1].key

    async def create(self, rtype: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        key = rtype.key(meta.get("namespace"), meta["name"])
        result = await self.store.txn([Compare(key, 0)], [Put(key, encode(obj))])
        if not result.succeeded:
            raise errors.already_exists(rtype.plural, rtype.group, meta["name"])
        meta["resourceVersion"] = str(result.revision)
        return obj

    async def update(self, rtype: ResourceType, obj: dict[str, Any], expected_revision: int) -> dict[str, Any]:
        """Replace the object if it is still at `expected_revision` (409 otherwise)."""
        meta = obj["metadata"]
        key = rtype.key(meta.get("namespace"), meta["name"])
        result = await self.store.txn([Compare(key, expected_revision)], [Put(key, encode(obj))])
        if not result.succeeded:
            if result.current and result.current[0] is None:
                raise errors.not_found(rtype.plural, rtype.group, meta["name"])
            raise errors.conflict(rtype.plural, rtype.group, meta["name"])
        meta["resourceVersion"] = str(result.revision)
        return obj

    async def delete(self, rtype: ResourceType, obj: dict[str, Any], expected_revision: int) -> dict[str, Any]:
        """Remove the object if it is still at `expected_revision`; returns its last state."""
        meta = obj["metadata"]
        key = rtype.key(meta.get("namespace"), meta["name"])
        result = await self.store.txn([Compare(key, expected_revision)], [Delete(key)])
        if not result.succeeded:
            if result.current and result.current[0] is None:
                raise errors.not_found(rtype.plural, rtype.group, meta["name"])
            raise errors.conflict(rtype.plural, rtype.group, meta["name"])
        meta["resourceVersion"] = str(result.revision)
        return obj
