"""Watch streams: newline-delimited JSON events over one long HTTP response.

A stream starts from one of three places: the current state (no resourceVersion, or `0`, or a
watch-list with `sendInitialEvents=true`: synthetic ADDED events, then changes), a revision still
in the watch cache's ring, or an older revision that only the store still has (a private store
watch). A revision the store has compacted gets the Kubernetes answer: HTTP 200 and one ERROR
event carrying a 410 Expired Status, which clients treat as "relist".

Selectors are applied per event, including transitions: an object that stops matching a label
selector is sent as DELETED, one that starts matching as ADDED, as the Kubernetes API server does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import orjson

from hypermesh.api import errors, tables
from hypermesh.api.http import Request, Send
from hypermesh.api.rest import ResourceAPI
from hypermesh.api.watchcache import CachedEvent, KindCache, Watcher, to_cached
from hypermesh.resources.registry import ResourceType
from hypermesh.store import CompactedError, StoreError

BOOKMARK_INTERVAL = 10.0
_EXPIRED = -2  # queued by a store-fed watch whose revision was compacted
DEFAULT_TIMEOUT = 1800.0
MAX_TIMEOUT = 3600.0


class WatchStream:
    """One client watch, from parameters to the end of the response."""

    def __init__(
        self,
        req: Request,
        send: Send,
        rtype: ResourceType,
        namespace: str | None,
        api: ResourceAPI,
        cache: KindCache,
        shutdown: asyncio.Event,
    ) -> None:
        self.req = req
        self.send = send
        self.rtype = rtype
        self.namespace = namespace
        self.api = api
        self.cache = cache
        self.shutdown = shutdown
        self.table = tables.wants_table(req.accept)
        labels, fields = api.predicate(rtype, req)

        def matches(obj: dict[str, Any]) -> bool:
            meta = obj["metadata"]
            if namespace is not None and meta.get("namespace") != namespace:
                return False
            if labels is not None and not labels.matches(meta.get("labels")):
                return False
            return fields is None or fields.matches(obj)

        self.matches: Callable[[dict[str, Any]], bool] = matches
        # Whether anything beyond the namespace filters (the namespace is the key prefix).
        self.filtered = labels is not None or fields is not None
        self.key_prefix = rtype.key_prefix(namespace)
        self.bookmarks = req.flag("allowWatchBookmarks")
        self.sent_revision = 0

    def _timeout(self) -> float:
        text = self.req.query.get("timeoutSeconds")
        if not text:
            return DEFAULT_TIMEOUT
        try:
            return max(0.0, min(float(int(text)), MAX_TIMEOUT))
        except ValueError:
            raise errors.bad_request(f'timeoutSeconds: invalid value "{text}": must be an integer') from None

    async def run(self) -> None:
        timeout = self._timeout()
        rv_text = self.req.query.get("resourceVersion", "")
        send_initial = self.req.flag("sendInitialEvents")
        if "sendInitialEvents" in self.req.query and self.req.query.get("resourceVersionMatch") != "NotOlderThan":
            raise errors.invalid("ListOptions", "meta.k8s.io", "", [{"type": "FieldValueForbidden", "field": "resourceVersionMatch", "message": "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"}])
        if send_initial and not self.bookmarks:
            raise errors.invalid("ListOptions", "meta.k8s.io", "", [{"type": "FieldValueForbidden", "field": "allowWatchBookmarks", "message": "Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true"}])
        since: int | None = None
        if rv_text and rv_text != "0" and not send_initial:
            try:
                since = int(rv_text)
            except ValueError:
                raise errors.bad_request(f'invalid resourceVersion "{rv_text}": must be an integer') from None
        elif send_initial and rv_text and rv_text != "0":
            await self._catch_up(int(rv_text) if rv_text.isdigit() else 0)

        feeder: asyncio.Task[None] | None = None
        subscription = self.cache.subscribe(self.matches, since)
        if subscription is None:
            # Older than the ring: serve from the store's own history, if it still has it.
            assert since is not None
            watcher = Watcher(self.matches)
            feeder = asyncio.get_running_loop().create_task(self._feed_from_store(watcher, since))
            backlog: list[CachedEvent] = []
            start_revision = since
        else:
            watcher, backlog, start_revision = subscription
        content_type = tables.TABLE_CONTENT_TYPE if self.table else b"application/json"
        await self.send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type), (b"cache-control", b"no-cache, private")]})
        try:
            first: list[bytes] = []
            if since is None:
                # Initial state, read at exactly the revision the cache had when we subscribed.
                page = await self.api.storage.list(self.rtype, self.namespace, revision=start_revision, predicate=None if self.table or not self.filtered else self.matches)
                if self.table:
                    first.extend(self._line("ADDED", obj, None) for obj in page.items if self.matches(obj))
                else:
                    # The stored JSON goes out as it is, without a decode and an encode.
                    first.extend(b'{"type":"ADDED","object":%s}\n' % value for value in page.raw)
                self.sent_revision = start_revision
                if send_initial:
                    first.append(self._bookmark(start_revision, initial_end=True))
            else:
                self.sent_revision = since
                for event in backlog:
                    line = self._event_line(event)
                    if line is not None:
                        first.append(line)
            if first:
                await self._write(b"".join(first))
            await self._stream(watcher, timeout)
        finally:
            self.cache.unsubscribe(watcher)
            if feeder is not None:
                feeder.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await feeder
        with contextlib.suppress(Exception):
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _catch_up(self, revision: int) -> None:
        """A watch-list must start at least at `revision`: wait briefly for the cache."""
        for _ in range(100):
            if self.cache.revision >= revision:
                return
            await asyncio.sleep(0.01)

    async def _feed_from_store(self, watcher: Watcher, since: int) -> None:
        try:
            async for batch in self.api.storage.store.watch(self.rtype.key_prefix(None), start_revision=since + 1):
                for event in batch.events:
                    watcher.offer(to_cached(event))
                if watcher.closed:
                    return
        except CompactedError:
            watcher.offer(_EXPIRED)
            watcher.close()
        except StoreError:
            watcher.close()

    async def _stream(self, watcher: Watcher, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # A client that goes away, or a server that stops, ends the watch by closing it.
        disconnected = loop.create_task(self._wait_disconnect())
        stopping = loop.create_task(self.shutdown.wait())
        for task in (disconnected, stopping):
            task.add_done_callback(lambda _: watcher.close())
        try:
            while True:
                lines: list[bytes] = []
                ended = False
                while watcher.items:
                    item = watcher.items.popleft()
                    if isinstance(item, CachedEvent):
                        line = self._event_line(item)
                        if line is not None:
                            lines.append(line)
                    elif item == _EXPIRED:
                        lines.append(self._expired())
                        ended = True
                        break
                    elif self.bookmarks and item > self.sent_revision:
                        self.sent_revision = item
                        lines.append(self._bookmark(item))
                if lines and not disconnected.done():
                    await self._write(b"".join(lines))
                if ended or watcher.closed and not watcher.items:
                    return
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                woke = await watcher.wait(min(remaining, BOOKMARK_INTERVAL))
                if not woke and self.bookmarks:
                    revision = max(self.cache.revision, self.sent_revision)
                    self.sent_revision = revision
                    await self._write(self._bookmark(revision))
        finally:
            for task in (disconnected, stopping):
                task.cancel()

    async def _wait_disconnect(self) -> None:
        while True:
            message = await self.req.receive()
            if message["type"] == "http.disconnect":
                return

    async def _write(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    def _event_line(self, event: CachedEvent) -> bytes | None:
        """The line for `event` as this watcher sees it (selector transitions included)."""
        if event.revision <= self.sent_revision:
            return None  # already covered by the initial state or the backlog
        self.sent_revision = event.revision
        if self.filtered or self.table:
            now = self.matches(event.obj)
            prev = event.prev
            before = prev is not None and self.matches(prev)
        else:
            # Only the namespace can filter, and the key says it: no decode needed.
            now = event.key.startswith(self.key_prefix)
            before = now and event.has_prev
        if event.type == "ADDED":
            kind = "ADDED" if now else None
        elif event.type == "DELETED":
            kind = "DELETED" if before else None
        elif now and before:
            kind = "MODIFIED"
        elif now:
            kind = "ADDED"
        elif before:
            kind = "DELETED"
        else:
            kind = None
        if kind is None:
            return None
        if not self.table:
            return event.raw_line(kind)
        key = (self.table, kind)
        line = event.lines.get(key)
        if line is None:
            line = self._line(kind, event.obj, None)
            event.lines[key] = line
        return line

    def _line(self, kind: str, obj: dict[str, Any], _: Any) -> bytes:
        if self.table:
            body = tables.table(self.rtype, [obj], resource_version=obj["metadata"].get("resourceVersion", ""))
            return orjson.dumps({"type": kind, "object": body}) + b"\n"
        return orjson.dumps({"type": kind, "object": obj}) + b"\n"

    def _bookmark(self, revision: int, *, initial_end: bool = False) -> bytes:
        meta: dict[str, Any] = {"resourceVersion": str(revision)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        obj = {"kind": self.rtype.kind, "apiVersion": self.rtype.api_version, "metadata": meta}
        return orjson.dumps({"type": "BOOKMARK", "object": obj}) + b"\n"

    def _expired(self) -> bytes:
        rv = self.req.query.get("resourceVersion", "")
        status = errors.expired(f"too old resource version: {rv} ({self.api.storage.store.compact_revision})").status()
        return orjson.dumps({"type": "ERROR", "object": status}) + b"\n"
