"""Objects on top of the key-value state engine.

This is the only module of the API server that reads or writes the store. It owns the mapping
between Kubernetes objects and key-value pairs:

- an object lives at `ResourceType.key(namespace, name)` as JSON;
- `metadata.resourceVersion` is never stored: it *is* the key's `mod_revision`, injected on
  every read, so it cannot disagree with the store and needs no second write;
- every write is a compare-and-swap on that revision, which is what turns a stale
  `resourceVersion` into 409 Conflict and makes concurrent writers safe without locks;
- objects are stored with `metadata` first, so reads that only pass an object on (a GET, a
  plain list, a watch's initial state) splice the resourceVersion into the stored bytes instead
  of decoding and re-encoding them. Decoding 10,000 objects to re-encode them costs more than
  everything else in a list.

Values of encrypted resources (Secrets) are sealed and opened below this module, by the store
it is given (`encryptedstore.EncryptedStore`); what reaches it is JSON, or, for a value that
could not be opened, an `encryption.UnreadableValue`, which every decode turns into a 500 that
names the object and the reason instead of a JSON parse error.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import orjson

from hypermesh.api import encryption, errors
from hypermesh.resources.registry import ResourceType
from hypermesh.store import CompactedError, Compare, Delete, KeyValue, Put, Store

_META_OPEN = b'{"metadata":{'


def decode(kv: KeyValue) -> dict[str, Any]:
    """The stored object with its resourceVersion filled in."""
    return decode_at(kv.value, kv.mod_revision, kv.key)


def decode_at(value: bytes, revision: int, key: str = "") -> dict[str, Any]:
    """Stored JSON decoded, with `revision` as its resourceVersion (`key` names the object in
    the error when the value cannot be read)."""
    try:
        obj: dict[str, Any] = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise unreadable(key, value, exc) from None
    obj["metadata"]["resourceVersion"] = str(revision)
    return obj


def raw(kv: KeyValue) -> bytes:
    """The stored object's JSON with its resourceVersion spliced in, without decoding it."""
    return raw_at(kv.value, kv.mod_revision, kv.key)


def raw_at(value: bytes, revision: int, key: str = "") -> bytes:
    """Stored JSON with `revision` spliced in as its resourceVersion."""
    if value.startswith(_META_OPEN):
        rest = value[len(_META_OPEN):]
        separator = b"" if rest[:1] == b"}" else b","
        return b'{"metadata":{"resourceVersion":"%d"%s%s' % (revision, separator, rest)
    return orjson.dumps(decode_at(value, revision, key))


def unreadable(key: str, value: bytes, exc: Exception | None = None) -> errors.ApiError:
    """The 500 for a stored value that is not an object: undecryptable, or corrupt.

    Kubernetes answers an undecryptable object the same way ("Internal error occurred: unable
    to transform key"); the message here also says which key-encryption key and which file.
    """
    if isinstance(value, encryption.UnreadableValue):
        why = value.reason
    elif encryption.is_encrypted(value):
        why = "it is encrypted at rest, but this server runs without encryption keys"
    else:
        why = f"its stored value is not valid JSON ({exc})"
    return errors.ApiError(500, "InternalError", f"{describe_key(key)} cannot be read: {why}")


def describe_key(key: str) -> str:
    """`secrets "db" in namespace "prod"` for `/registry/core/secrets/prod/db`."""
    parts = key.split("/")
    if len(parts) not in (5, 6) or parts[1] != "registry":
        return f"the object stored at {key!r}" if key else "a stored object"
    group, plural = parts[2], parts[3]
    what = f'{errors.qualified(plural, "" if group == "core" else group)} "{parts[-1]}"'
    return f'{what} in namespace "{parts[4]}"' if len(parts) == 6 else what


def encode(obj: dict[str, Any]) -> bytes:
    """The object as stored: metadata first, without resourceVersion (the store's revision is
    the truth)."""
    meta = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
    return orjson.dumps({"metadata": meta, **{k: v for k, v in obj.items() if k != "metadata"}})


class Page:
    """One page of a list: the objects as JSON bytes, decoded only if someone asks."""

    __slots__ = ("raw", "revision", "continue_token", "remaining", "_items")

    def __init__(
        self,
        raw: list[bytes],
        revision: int,
        continue_token: str | None,
        remaining: int | None,
        items: list[dict[str, Any]] | None = None,
    ) -> None:
        self.raw = raw
        self.revision = revision
        self.continue_token = continue_token
        self.remaining = remaining
        self._items = items

    @property
    def items(self) -> list[dict[str, Any]]:
        if self._items is None:
            self._items = [orjson.loads(value) for value in self.raw]
        return self._items


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

    async def get_raw(self, rtype: ResourceType, namespace: str | None, name: str) -> bytes:
        """The object's JSON as a GET returns it (404 when missing)."""
        kv = await self.store.get(rtype.key(namespace, name))
        if kv is None:
            raise errors.not_found(rtype.plural, rtype.group, name)
        return raw(kv)

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
        values: list[bytes] = []
        items: list[dict[str, Any]] | None = [] if predicate is not None else None
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
                if items is not None:
                    obj = decode(kv)
                    if not predicate(obj):  # type: ignore[misc]
                        continue
                    items.append(obj)
                values.append(raw(kv))
                if limit and len(values) == limit:
                    has_more = result.more or position + 1 < len(result.kvs)
                    if not has_more:
                        return Page(values, revision, None, None, items)
                    # remainingItemCount is optional; it is exact only for an unfiltered first page.
                    remaining = None
                    if predicate is None and start_after is None:
                        remaining = max(result.count - (position + 1), 0)
                    return Page(values, revision, _encode_continue(revision, kv.key), remaining, items)
            if not result.more or not result.kvs:
                return Page(values, revision, None, None, items)
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
        key = rtype.key(obj["metadata"].get("namespace"), obj["metadata"]["name"])
        return await self._swap(rtype, obj, expected_revision, Put(key, encode(obj)))

    async def delete(self, rtype: ResourceType, obj: dict[str, Any], expected_revision: int) -> dict[str, Any]:
        """Remove the object if it is still at `expected_revision`; returns its last state."""
        key = rtype.key(obj["metadata"].get("namespace"), obj["metadata"]["name"])
        return await self._swap(rtype, obj, expected_revision, Delete(key))

    async def _swap(self, rtype: ResourceType, obj: dict[str, Any], expected_revision: int, op: Put | Delete) -> dict[str, Any]:
        """Run `op` if the key is still at `expected_revision`: 404 when it is gone, 409 when
        someone else wrote it first. The object's resourceVersion becomes the new revision."""
        meta = obj["metadata"]
        result = await self.store.txn([Compare(op.key, expected_revision)], [op])
        if not result.succeeded:
            if result.current and result.current[0] is None:
                raise errors.not_found(rtype.plural, rtype.group, meta["name"])
            raise errors.conflict(rtype.plural, rtype.group, meta["name"])
        meta["resourceVersion"] = str(result.revision)
        return obj
