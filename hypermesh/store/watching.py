"""Watch fan-out shared by the in-process backends.

`WatchHub` hands committed events to watchers. Each watcher has a bounded queue, so a slow
consumer is cut off with `WatchOverflowError` instead of holding back the writer or its peers.
A watch from a past revision replays history (read through the backend's `HistoryReader`) up to
the revision it registered at, then takes live events: no gap, no duplicate.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import TracebackType
from typing import Self

from hypermesh.store.base import (
    Event,
    StoreClosedError,
    WatchBatch,
    WatchOverflowError,
)

# How many batches a watcher may have waiting before it is cut off.
DEFAULT_WATCH_QUEUE_SIZE = 1024

# History replayed to a watcher is cut into batches of about this many events (never splitting
# one revision), so a long replay does not arrive as one huge list.
HISTORY_BATCH_EVENTS = 1000


# Watches.

HistoryReader = Callable[[str, int, int], Awaitable[list[Event]]]
"""Reads the events under a prefix with first <= revision <= last, in (revision, key) order;
raises CompactedError when `first` is not after the compact revision."""


class Watch(AsyncIterator[WatchBatch]):
    """One watcher: replayed history first, then live batches, without a gap or a duplicate.

    The live queue is registered before the history is read, and the history ends at the
    revision the store had at registration; every live event is newer, so the two meet exactly.
    Close it with `aclose()` (or `async with`) when done; a forgotten watch is dropped by the
    hub once it is garbage.

    Ends with CompactedError (first iteration) when `start_revision` is at or below the compact
    revision, because a delete at that revision is no longer retained; with
    WatchOverflowError when more than `queue_size` batches wait unread; and normally
    (StopAsyncIteration) when the store closes or `aclose()` is called.
    """

    def __init__(
        self,
        hub: WatchHub,
        prefix: str,
        *,
        start_revision: int,
        current_revision: int,
        history: HistoryReader,
        queue_size: int,
    ) -> None:
        self.prefix = prefix
        self._hub = hub
        self._history = history
        self._queue_size = queue_size
        live_from = current_revision + 1
        # Events below `_next` were replayed already (or are older than asked): drop them.
        self._next = max(start_revision, live_from) if start_revision > 0 else live_from
        self._history_span: tuple[int, int] | None = None
        if 0 < start_revision <= current_revision:
            self._history_span = (start_revision, current_revision)
        self._delivered = self._next - 1
        self._backlog: deque[WatchBatch] = deque()
        self._live: deque[WatchBatch] = deque()
        self._error: BaseException | None = None
        self._ended = False
        self._waiter: asyncio.Future[None] | None = None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> WatchBatch:
        if self._history_span is not None:
            first, last = self._history_span
            self._history_span = None
            try:
                events = await self._history(self.prefix, first, last)
            except BaseException:
                self._stop()
                raise
            self._backlog.extend(_history_batches(events, last))
        while True:
            if self._error is not None:
                raise self._error
            if self._backlog:
                batch = self._backlog.popleft()
                self._delivered = batch.revision
                return batch
            if self._live:
                batch = self._live.popleft()
                fresh = [event for event in batch.events if event.kv.mod_revision >= self._next]
                if not fresh:
                    continue
                self._next = fresh[-1].kv.mod_revision + 1
                self._delivered = batch.revision
                batch.events = fresh
                return batch
            if self._ended:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def aclose(self) -> None:
        """Stop watching; a pending or later `__anext__` ends the iteration."""
        self._stop()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()

    # Called by the hub, on the event loop.

    def _push(self, batch: WatchBatch) -> None:
        if self._ended or self._error is not None:
            return
        if len(self._live) >= self._queue_size:
            # Cut the slow consumer off rather than buffer without bound; it has to relist.
            self._live.clear()
            self._backlog.clear()
            self._fail(WatchOverflowError(self.prefix, self._delivered, self._queue_size))
            return
        self._live.append(batch)
        self._wake()

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._hub.discard(self)
        self._wake()

    def _end(self) -> None:
        self._ended = True
        self._wake()

    def _stop(self) -> None:
        self._hub.discard(self)
        self._history_span = None
        self._backlog.clear()
        self._live.clear()
        self._end()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def _history_batches(events: list[Event], last: int) -> Iterator[WatchBatch]:
    """Cut replayed events into batches that never split one revision."""
    batch: list[Event] = []
    for event in events:
        if (
            len(batch) >= HISTORY_BATCH_EVENTS
            and batch[-1].kv.mod_revision != event.kv.mod_revision
        ):
            yield WatchBatch(batch, batch[-1].kv.mod_revision)
            batch = []
        batch.append(event)
    if batch:
        yield WatchBatch(batch, last)


class WatchHub:
    """Fans committed events out to the watchers whose prefix matches, on the event loop."""

    def __init__(self, *, queue_size: int = DEFAULT_WATCH_QUEUE_SIZE) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        self._queue_size = queue_size
        # Weak references: a watch its consumer forgot must not stay registered forever.
        self._by_prefix: dict[str, weakref.WeakSet[Watch]] = {}
        self._closed = False

    def open(
        self,
        prefix: str,
        *,
        start_revision: int,
        current_revision: int,
        history: HistoryReader,
    ) -> Watch:
        """Register a watcher; `current_revision` is the newest revision already published."""
        if start_revision < 0:
            raise ValueError(f"start_revision must be >= 0, got {start_revision}")
        watch = Watch(
            self,
            prefix,
            start_revision=start_revision,
            current_revision=current_revision,
            history=history,
            queue_size=self._queue_size,
        )
        if self._closed:
            watch._fail(StoreClosedError("the store is closed"))
        else:
            self._by_prefix.setdefault(prefix, weakref.WeakSet()).add(watch)
        return watch

    def discard(self, watch: Watch) -> None:
        """Unregister a watcher (no error when it is not registered)."""
        watchers = self._by_prefix.get(watch.prefix)
        if watchers is not None:
            watchers.discard(watch)
            if not watchers:
                del self._by_prefix[watch.prefix]

    def publish(self, events: list[Event], revision: int) -> None:
        """Hand the events of one commit (store revision `revision`) to every matching watcher."""
        for prefix, watchers in list(self._by_prefix.items()):
            if not watchers:
                del self._by_prefix[prefix]
                continue
            matched = [event for event in events if event.kv.key.startswith(prefix)]
            if not matched:
                continue
            for watch in list(watchers):
                watch._push(WatchBatch(list(matched), revision))

    def close(self) -> None:
        """End every watch: each iterator finishes after the batches it already holds."""
        self._closed = True
        for watchers in self._by_prefix.values():
            for watch in list(watchers):
                watch._end()
        self._by_prefix.clear()

    @property
    def watch_count(self) -> int:
        """How many watchers are registered."""
        return sum(len(watchers) for watchers in self._by_prefix.values())
