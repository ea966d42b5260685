"""One store watch per kind, fanned out to every client watch.

A thousand `kubectl get -w` or controller informers on one kind must not cost a thousand store
watches and a thousand JSON decodes per change. The cache holds one store watch per kind, keeps
a ring of recent events (decoded once), and hands each event to the matching client watchers,
each behind a bounded queue so a slow reader can never stall the others. Serialised event lines
are memoised per event, so N watchers of the same format cost one encode.

A watch that resumes from a revision older than the ring falls back to a private store watch
(still served when the store has the history), and only gets 410 Expired when the store itself
has compacted it.

Values arrive here already decrypted (the store is an `encryptedstore.EncryptedStore`). One that
could not be decrypted becomes an ERROR event carrying a 500 Status that names the object and
the key, as kube-apiserver's watch does on a transform failure: a client relists and reports
it, and no watcher is ever sent ciphertext or a made-up object (selectors are tested on a
placeholder holding only the name and namespace from the key, but what is sent is the ERROR).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import Any

import orjson

from hypermesh.api import errors
from hypermesh.api.storage import decode_at, raw_at
from hypermesh.resources.registry import ResourceType
from hypermesh.store import Event, Store, StoreError

log = logging.getLogger(__name__)

RING_SIZE = 4096
QUEUE_SIZE = 10_000


class CachedEvent:
    """One change of one object, decoded only if someone needs the object.

    `obj` is the new state (for DELETED: the last state, carrying the revision of the delete);
    `prev` is the state before, when there was one. Most watchers (informers: no selector, at
    most a namespace) need neither: they get `raw_line`, the stored JSON with its
    resourceVersion spliced in, so an event costs no decode and no encode at all. Decoding
    both states of every event was a tenth of the API server's time under a create storm.
    """

    __slots__ = ("revision", "type", "key", "_value", "_prev_value", "_obj", "_prev", "lines")

    def __init__(self, revision: int, type: str, key: str, value: bytes, prev_value: bytes | None) -> None:
        self.revision = revision
        self.type = type  # ADDED, MODIFIED, DELETED
        self.key = key
        self._value = value  # the JSON of `obj` as stored (for DELETED: the last state's)
        self._prev_value = prev_value
        self._obj: dict[str, Any] | None = None
        self._prev: dict[str, Any] | None = None
        # Memoised encodings, keyed by event kind (plain JSON lines) or by (True, kind) (the
        # Table lines of `watch.WatchStream`).
        self.lines: dict[Any, bytes] = {}

    @property
    def obj(self) -> dict[str, Any]:
        if self._obj is None:
            try:
                self._obj = decode_at(self._value, self.revision, self.key)
            except errors.ApiError as exc:
                self._obj = self._unreadable(exc)
        return self._obj

    @property
    def prev(self) -> dict[str, Any] | None:
        if self._prev is None and self._prev_value is not None:
            # Its revision is unknown here and never shown: watchers only test it.
            try:
                self._prev = decode_at(self._prev_value, 0, self.key)
            except errors.ApiError:
                self._prev = _placeholder(self.key, 0)
        return self._prev

    @property
    def has_prev(self) -> bool:
        return self._prev_value is not None

    def raw_line(self, kind: str) -> bytes:
        """The watch line `{"type": kind, "object": obj}` built from the stored bytes."""
        line = self.lines.get(kind)
        if line is None:
            try:
                spliced = raw_at(self._value, self.revision, self.key)
            except errors.ApiError as exc:
                self._unreadable(exc)
                return self.lines[kind]
            line = self.lines[kind] = b'{"type":"%s","object":%s}\n' % (kind.encode(), spliced)
        return line

    def _unreadable(self, exc: errors.ApiError) -> dict[str, Any]:
        """Make every line of this event the ERROR event for `exc`; returns the placeholder
        that selectors are tested on (name and namespace only: nothing else is known)."""
        line = orjson.dumps({"type": "ERROR", "object": exc.status()}) + b"\n"
        for kind in ("ADDED", "MODIFIED", "DELETED"):
            self.lines[kind] = line
            self.lines[(True, kind)] = line
        return _placeholder(self.key, self.revision)


def _placeholder(key: str, revision: int) -> dict[str, Any]:
    """The little that the store key says about an object whose value cannot be read."""
    parts = key.split("/")
    metadata: dict[str, Any] = {"name": parts[-1], "resourceVersion": str(revision)}
    if len(parts) == 6:
        metadata["namespace"] = parts[4]
    return {"metadata": metadata}


def to_cached(event: Event) -> CachedEvent:
    """Translate a store event to Kubernetes watch terms."""
    kv = event.kv
    prev = event.prev.value if event.prev is not None else None
    if event.type == "PUT":
        return CachedEvent(kv.mod_revision, "ADDED" if kv.version == 1 else "MODIFIED", kv.key, kv.value, prev)
    assert prev is not None, "a DELETE event carries the last value"
    return CachedEvent(kv.mod_revision, "DELETED", kv.key, prev, prev)


class Watcher:
    """One client watch registered with the cache.

    A bounded deque plus a single future to wake the reader: cheaper than an asyncio.Queue and
    a task per wake-up, which matters when one event wakes a thousand watchers.
    """

    __slots__ = ("items", "matches", "closed", "overflowed", "limit", "_waiter")

    def __init__(self, matches: Callable[[dict[str, Any]], bool], limit: int | None = None) -> None:
        self.items: collections.deque[CachedEvent | int] = collections.deque()
        self.matches = matches
        self.closed = False
        self.overflowed = False
        self.limit = limit or QUEUE_SIZE
        self._waiter: asyncio.Future[None] | None = None

    def offer(self, item: CachedEvent | int) -> None:
        if self.closed:
            return
        if len(self.items) >= self.limit:
            # Too slow to keep up: end this watch; the client resumes from its last revision.
            self.overflowed = True
            self.close()
            return
        self.items.append(item)
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float) -> bool:
        """Until there is something to read or the watch closed (True), or `timeout` (False)."""
        if self.items or self.closed:
            return True
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        return bool(self.items) or self.closed


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class KindCache:
    """The watch cache of one kind."""

    def __init__(self, store: Store, rtype: ResourceType) -> None:
        self.store = store
        self.rtype = rtype
        self.ring: collections.deque[CachedEvent] = collections.deque(maxlen=RING_SIZE)
        self.watchers: set[Watcher] = set()
        self.revision = store.revision  # every event after this one reaches the cache
        self.oldest = self.revision  # a watch from any revision >= oldest is served from here
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"watchcache:{self.rtype.plural}")

    async def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        for watcher in list(self.watchers):
            watcher.close()

    async def _run(self) -> None:
        backoff = 0.1
        while not self._stopped:
            try:
                async for batch in self.store.watch(self.rtype.key_prefix(None), start_revision=self.revision + 1):
                    for event in batch.events:
                        self._publish(to_cached(event))
                    if batch.revision > self.revision:
                        self.revision = batch.revision
                    backoff = 0.1
                return
            except asyncio.CancelledError:
                raise
            except StoreError as exc:
                # The store ended the watch (overflow or compaction): history is gone, so every
                # watcher must resync. Start over from now.
                log.warning("watch cache of %s restarts: %s", self.rtype.plural, exc)
                self._reset()
            except Exception:
                log.exception("watch cache of %s failed", self.rtype.plural)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _reset(self) -> None:
        self.ring.clear()
        self.revision = self.store.revision
        self.oldest = self.revision
        for watcher in list(self.watchers):
            watcher.overflowed = True
            watcher.close()

    def _publish(self, event: CachedEvent) -> None:
        self.ring.append(event)
        self.revision = event.revision
        if len(self.ring) == self.ring.maxlen:
            self.oldest = self.ring[0].revision - 1
        for watcher in self.watchers:
            watcher.offer(event)

    def subscribe(self, matches: Callable[[dict[str, Any]], bool], since: int | None) -> tuple[Watcher, list[CachedEvent], int] | None:
        """Register a watcher. With `since`, also return the retained events after it; None
        when `since` is older than the ring (the caller falls back to the store)."""
        if since is not None and since < self.oldest:
            return None
        watcher = Watcher(matches)
        # No await between reading the ring and registering: the two views meet exactly.
        backlog = [e for e in self.ring if e.revision > since] if since is not None else []
        self.watchers.add(watcher)
        return watcher, backlog, self.revision

    def unsubscribe(self, watcher: Watcher) -> None:
        watcher.close()
        self.watchers.discard(watcher)

    def bookmark_all(self) -> None:
        """Tell every watcher the current revision (used for BOOKMARK events)."""
        for watcher in self.watchers:
            watcher.offer(self.revision)


class WatchCache:
    """All kind caches of the server, created on first use."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.kinds: dict[tuple[str, str], KindCache] = {}

    def for_type(self, rtype: ResourceType) -> KindCache:
        key = (rtype.group, rtype.plural)
        cache = self.kinds.get(key)
        if cache is None or cache.rtype is not rtype and cache.rtype.key_prefix(None) != rtype.key_prefix(None):
            cache = KindCache(self.store, rtype)
            cache.start()
            self.kinds[key] = cache
        return cache

    async def drop(self, rtype: ResourceType) -> None:
        cache = self.kinds.pop((rtype.group, rtype.plural), None)
        if cache is not None:
            await cache.stop()

    async def stop(self) -> None:
        for cache in list(self.kinds.values()):
            await cache.stop()
        self.kinds.clear()
