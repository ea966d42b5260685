"""The watch cache: one store watch per kind, however many client watches."""

from __future__ import annotations

import asyncio
import copy

from hypermesh.api.storage import ObjectStorage
from hypermesh.api.watchcache import CachedEvent, WatchCache, Watcher
from hypermesh.resources.registry import Registry
from hypermesh.store import MemoryStore

REGISTRY = Registry.with_builtins()
WORKLOADS = REGISTRY.by_plural("hypermesh.io", "v1", "workloads")
assert WORKLOADS is not None


def _workload(name: str, namespace: str = "default") -> dict:
    return {"apiVersion": "hypermesh.io/v1", "kind": "Workload", "metadata": {"name": name, "namespace": namespace, "uid": name}, "spec": {}}


async def _next(watcher: Watcher) -> CachedEvent:
    while True:
        assert await watcher.wait(2), "no event within 2 s"
        item = watcher.items.popleft()
        if isinstance(item, CachedEvent):
            return item


async def test_many_watchers_share_one_store_watch() -> None:
    store = MemoryStore()
    storage = ObjectStorage(store)
    cache = WatchCache(store).for_type(WORKLOADS)
    await asyncio.sleep(0)
    watchers = [cache.subscribe(lambda obj: True, None) for _ in range(200)]
    await asyncio.sleep(0.01)
    assert store._hub.watch_count == 1  # one store watch, not 200
    created = await storage.create(WORKLOADS, _workload("a"))
    events = [await _next(w[0]) for w in watchers if w is not None]
    assert {e.type for e in events} == {"ADDED"}
    assert all(e.obj["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"] for e in events)
    # The event is decoded once and shared by every watcher.
    assert len({id(e) for e in events}) == 1
    await cache.stop()
    await store.close()


async def test_backlog_resume_and_deleted_carries_last_state() -> None:
    store = MemoryStore()
    storage = ObjectStorage(store)
    cache = WatchCache(store).for_type(WORKLOADS)
    await asyncio.sleep(0)
    first = await storage.create(WORKLOADS, _workload("a"))
    first_rv = int(first["metadata"]["resourceVersion"])
    second = await storage.update(WORKLOADS, {**copy.deepcopy(first), "spec": {"replicas": 2}}, first_rv)
    await storage.delete(WORKLOADS, second, int(second["metadata"]["resourceVersion"]))
    for _ in range(100):
        if cache.revision >= store.revision:
            break
        await asyncio.sleep(0.01)
    subscription = cache.subscribe(lambda obj: True, first_rv)
    assert subscription is not None
    _, backlog, _ = subscription
    assert [e.type for e in backlog] == ["MODIFIED", "DELETED"]
    deleted = backlog[1]
    assert deleted.obj["spec"] == {"replicas": 2}
    assert int(deleted.obj["metadata"]["resourceVersion"]) == store.revision
    # A revision older than the ring is refused, so the caller falls back to the store.
    assert cache.subscribe(lambda obj: True, cache.oldest - 1) is None
    await cache.stop()
    await store.close()


async def test_slow_watcher_is_closed_not_blocking() -> None:
    from hypermesh.api import watchcache

    store = MemoryStore()
    storage = ObjectStorage(store)
    cache = WatchCache(store).for_type(WORKLOADS)
    await asyncio.sleep(0)
    slow, _, _ = cache.subscribe(lambda obj: True, None)  # type: ignore[misc]
    fast, _, _ = cache.subscribe(lambda obj: True, None)  # type: ignore[misc]
    original = watchcache.QUEUE_SIZE
    for i in range(original + 5):
        slow.offer(i)  # fill the slow one's queue without reading it
    assert slow.closed and slow.overflowed
    await storage.create(WORKLOADS, _workload("b"))
    assert (await _next(fast)).obj["metadata"]["name"] == "b"
    await cache.stop()
    await store.close()
