"""Shared informers: one list+watch per kind per process, and the cache reconcilers read.

Every controller of a kind needs the same stream of changes, so `Informers` hands out one
`Informer` per (resource, namespace) and each feeds any number of subscribers. The cache is a
dict by `namespace/name`, replaced wholesale on every relist, so `get`/`list` never ask the
server.

Watching is where operators quietly die, so each failure mode has an explicit answer:

- the watch ends normally (`timeoutSeconds` elapsed, server restart): watch again from the last
  resourceVersion seen, which bookmarks keep advancing even when nothing changes;
- an ERROR event with 410 (or a 410 answer): the history is gone; relist, this is normal;
- a connection or server error: retry with exponential backoff and jitter, so a fleet of
  controllers does not reconnect in lockstep;
- silence: nothing at all, not even the bookmark the server sends every 10 s when asked. A
  half-open connection or a wedged proxy looks exactly like that, and it is the "handlers
  silently stop" complaint about kopf. After `stall_timeout` seconds without a line the watch is
  torn down and started again from the last resourceVersion.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from hypermesh.client.aio import AsyncClient
from hypermesh.client.errors import ApiError
from hypermesh.client.resources import Resource

log = logging.getLogger(__name__)

# A subscriber gets the event type (ADDED, MODIFIED, DELETED) and the object.
Subscriber = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class InformerSettings:
    """How informers watch; the defaults suit production, tests shorten them."""

    # Asked of the server per watch request; the watch is renewed when it ends.
    watch_timeout: int = 300
    # No line (event or bookmark) for this long means the stream is dead: restart it.
    stall_timeout: float = 30.0
    # Reconnect delays after errors: base * 2**n with full jitter, capped.
    backoff_base: float = 0.2
    backoff_cap: float = 30.0


@dataclass
class InformerStats:
    """Counters tests and metrics read."""

    lists: int = 0
    watches: int = 0
    stalls: int = 0
    expired: int = 0
    errors: int = 0


class _Expired(Exception):
    """The watch's resourceVersion is gone from the server's history."""


def object_key(obj: dict[str, Any]) -> str:
    """`namespace/name`, or `name` for cluster-scoped objects."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    return f"{namespace}/{meta['name']}" if namespace else str(meta["name"])


def split_key(key: str) -> tuple[str | None, str]:
    """The inverse of `object_key`: (namespace or None, name)."""
    namespace, _, name = key.rpartition("/")
    return (namespace or None), name


class Informer:
    """A cached, continuously watched view of one kind (in one namespace or all)."""

    def __init__(
        self,
        client: AsyncClient,
        resource: Resource,
        *,
        namespace: str | None = None,
        settings: InformerSettings | None = None,
        field_selector: str | None = None,
    ) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace
        # A server-side filter (a node agent watches only the Instances bound to it).
        self.field_selector = field_selector
        self.settings = settings or InformerSettings()
        self.cache: dict[str, dict[str, Any]] = {}
        self.synced = asyncio.Event()
        self.resource_version = ""
        self.stats = InformerStats()
        self._subscribers: list[Subscriber] = []

    # Reading the cache

    def get(self, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The cached object, or None."""
        return self.cache.get(f"{namespace}/{name}" if namespace else name)

    def get_key(self, key: str) -> dict[str, Any] | None:
        """The cached object by `namespace/name` key."""
        return self.cache.get(key)

    def list(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """Cached objects, of one namespace or all."""
        if namespace is None:
            return list(self.cache.values())
        return [o for o in self.cache.values() if o["metadata"].get("namespace") == namespace]

    def subscribe(self, subscriber: Subscriber) -> None:
        """Call `subscriber(type, obj)` for every change, relist differences included."""
        self._subscribers.append(subscriber)

    def _notify(self, kind: str, obj: dict[str, Any]) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(kind, obj)
            except Exception:
                log.exception("informer subscriber failed on %s", object_key(obj))

    # Running

    async def run(self) -> None:
        """List and watch until cancelled."""
        failures = 0
        need_list = True
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                await self._watch_once()
                failures = 0
            except _Expired:
                # 410 means the history is gone: relist, this is normal.
                self.stats.expired += 1
                need_list = True
                failures = 0
            except TimeoutError:
                # A stalled stream: restart the watch from where it was.
                self.stats.stalls += 1
                log.warning("watch of %s stalled; restarting it", self.resource.qualified_name)
            except ApiError as exc:
                if exc.status == 410:
                    self.stats.expired += 1
                    need_list = True
                    continue
                failures += 1
                self.stats.errors += 1
                await self._backoff(failures, exc)
            except Exception as exc:  # ClientError, and anything unexpected: never die silently
                failures += 1
                self.stats.errors += 1
                await self._backoff(failures, exc)

    async def _backoff(self, failures: int, exc: Exception) -> None:
        cap = min(self.settings.backoff_cap, self.settings.backoff_base * 2**failures)
        delay = random.uniform(cap / 2, cap)
        log.warning(
            "watch of %s failed (%s); retrying in %.1fs", self.resource.qualified_name, exc, delay
        )
        await asyncio.sleep(delay)

    async def _relist(self) -> None:
        listing = await self.client.list(self.resource, self.namespace, field_selector=self.field_selector)
        self.stats.lists += 1
        fresh = {object_key(obj): obj for obj in listing.get("items") or []}
        for obj in fresh.values():
            # A List's items carry no kind; the cache keeps whole objects.
            obj.setdefault("kind", self.resource.kind)
            obj.setdefault("apiVersion", self.resource.api_version)
        old = self.cache
        self.cache = fresh
        self.resource_version = str((listing.get("metadata") or {}).get("resourceVersion") or "")
        for key, obj in old.items():
            if key not in fresh:
                self._notify("DELETED", obj)
        for key, obj in fresh.items():
            before = old.get(key)
            if before is None:
                self._notify("ADDED", obj)
            elif before["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                self._notify("MODIFIED", obj)
        self.synced.set()

    async def _watch_once(self) -> None:
        self.stats.watches += 1
        events = self.client.watch(
            self.resource,
            self.namespace,
            resource_version=self.resource_version or None,
            timeout_seconds=self.settings.watch_timeout,
            field_selector=self.field_selector,
        )
        async with contextlib.aclosing(events):
            await self._consume(events)

    async def _consume(self, events: AsyncIterator[dict[str, Any]]) -> None:
        while True:
            try:
                event = await asyncio.wait_for(anext(events), self.settings.stall_timeout)
            except StopAsyncIteration:
                return
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise _Expired(obj.get("message", ""))
                raise ApiError(
                    int(obj.get("code") or 500),
                    str(obj.get("reason") or "InternalError"),
                    str(obj.get("message") or "watch error"),
                    obj,
                )
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if kind == "BOOKMARK":
                if rv:
                    self.resource_version = str(rv)
                continue
            if kind not in ("ADDED", "MODIFIED", "DELETED"):
                continue
            key = object_key(obj)
            if kind == "DELETED":
                self.cache.pop(key, None)
            else:
                self.cache[key] = obj
            if rv:
                self.resource_version = str(rv)
            self._notify(str(kind), obj)


class Informers:
    """The informers of one process, one per (resource, namespace), created on first use."""

    def __init__(self, client: AsyncClient, settings: InformerSettings | None = None) -> None:
        self.client = client
        self.settings = settings or InformerSettings()
        self._informers: dict[tuple[Resource, str | None], Informer] = {}
        self._tasks: dict[tuple[Resource, str | None], asyncio.Task[None]] = {}

    def get(self, resource: Resource, namespace: str | None = None) -> Informer:
        """The shared informer of `resource` (created, not yet started, if new)."""
        key = (resource, namespace)
        informer = self._informers.get(key)
        if informer is None:
            informer = Informer(
                self.client, resource, namespace=namespace, settings=self.settings
            )
            self._informers[key] = informer
        return informer

    def start(self) -> None:
        """Start every informer not yet running."""
        for key, informer in self._informers.items():
            task = self._tasks.get(key)
            if task is None or task.done():
                self._tasks[key] = asyncio.create_task(
                    informer.run(), name=f"informer-{key[0].qualified_name}"
                )

    async def wait_synced(self) -> None:
        """Until every informer has listed once."""
        await asyncio.gather(*(i.synced.wait() for i in self._informers.values()))

    async def stop(self) -> None:
        """Cancel every informer."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
