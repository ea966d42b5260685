"""The in-memory store, and the engine pieces every in-process backend shares.

`MemoryStore` exists for unit tests: it keeps every version of every key in dictionaries, so a
test of the API server runs in microseconds, yet it has exactly the semantics of the durable
`SqliteStore` (same revisions, same compaction rule, same watch behaviour). The contract suite
in `tests/unit/test_store_contract.py` runs against both and keeps them honest.

What both in-process backends need, and what belongs to neither file format, lives here too:

- `evaluate_txn` decides one transaction against a view of the current state. The SQLite writer
  runs it over a whole batch (each transaction seeing the ones before it) and only then writes,
  so the compare rules exist once.
- `WatchHub` fans committed events out to watchers. Each watcher has a bounded queue, so a slow
  consumer is cut off with `WatchOverflowError` instead of holding back the writer or its peers.

Snapshots of every backend are one SQLite store file, so a snapshot of a test store can be
restored into a durable one; that is why `snapshot` borrows the SQLite module's image writer.
"""

from __future__ import annotations

import asyncio
import bisect
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Self

from hypermesh.store.base import (
    CompactedError,
    Compare,
    Delete,
    Event,
    FutureRevisionError,
    KeyValue,
    Op,
    Put,
    RangeResult,
    Store,
    StoreClosedError,
    TxnResult,
    WatchBatch,
    WatchOverflowError,
)

# How many batches a watcher may have waiting before it is cut off.
DEFAULT_WATCH_QUEUE_SIZE = 1024

# History replayed to a watcher is cut into batches of about this many events (never splitting
# one revision), so a long replay does not arrive as one huge list.
HISTORY_BATCH_EVENTS = 1000

# At most this many ops in one branch of a transaction (etcd's default is 128; the API server
# writes one or two keys per transaction).
MAX_TXN_OPS = 10_000

_COMPARE_OPS = ("=", "!=", "<", ">")


# Key ranges.


def prefix_end(prefix: str) -> str | None:
    """The smallest key above every key that starts with `prefix` (None when unbounded).

    Python orders `str` by code point and SQLite orders UTF-8 text bytewise; both orders agree,
    so this bound works for either backend.
    """
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            following = last + 1
            # Surrogates cannot be encoded to UTF-8, so no key contains one: skip them.
            if 0xD800 <= following <= 0xDFFF:
                following = 0xE000
            return prefix[:-1] + chr(following)
        prefix = prefix[:-1]
    return None


# Transactions.


def check_txn(compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]) -> None:
    """Reject a malformed transaction before it reaches a writer.

    Raises TypeError or ValueError naming the offending compare or op.
    """
    for index, compare in enumerate(compares):
        if not isinstance(compare, Compare):
            raise TypeError(f"compares[{index}] is a {type(compare).__name__}, not a Compare")
        _check_key(compare.key, f"compares[{index}]")
        if compare.op not in _COMPARE_OPS:
            raise ValueError(
                f"compares[{index}] on {compare.key!r}: op {compare.op!r} is not one of "
                f"{', '.join(_COMPARE_OPS)}"
            )
    for branch, ops in (("success", success), ("failure", failure)):
        if len(ops) > MAX_TXN_OPS:
            raise ValueError(f"the {branch} branch has {len(ops)} ops; at most {MAX_TXN_OPS}")
        seen: set[str] = set()
        for index, op in enumerate(ops):
            where = f"{branch}[{index}]"
            if isinstance(op, Put):
                if not isinstance(op.value, bytes):
                    raise TypeError(
                        f"{where} puts {op.key!r} with a {type(op.value).__name__}; "
                        "values are bytes"
                    )
            elif not isinstance(op, Delete):
                raise TypeError(f"{where} is a {type(op).__name__}, not a Put or a Delete")
            _check_key(op.key, where)
            # One revision holds at most one version of a key, as in etcd.
            if op.key in seen:
                raise ValueError(
                    f"{where}: key {op.key!r} appears twice in the {branch} branch; "
                    "a transaction writes each key at most once"
                )
            seen.add(op.key)


def _check_key(key: object, where: str) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError(f"{where}: the key must be a non-empty str, got {key!r}")


def compare_holds(compare: Compare, kv: KeyValue | None) -> bool:
    """Whether `compare` holds for the key's current version (None: the key is absent)."""
    actual = kv.mod_revision if kv is not None else 0
    if compare.op == "=":
        return actual == compare.mod_revision
    if compare.op == "!=":
        return actual != compare.mod_revision
    if compare.op == "<":
        return actual < compare.mod_revision
    return actual > compare.mod_revision


def evaluate_txn(
    current: Callable[[str], KeyValue | None],
    compares: Sequence[Compare],
    success: Sequence[Op],
    failure: Sequence[Op],
    revision: int,
) -> tuple[TxnResult, list[Event]]:
    """Decide one transaction against `current` (the live version of a key, or None).

    `revision` is the store revision before the transaction. Returns the result and the events
    it produces (in key order); the caller applies the events to its state. Deleting an absent
    key changes nothing, and a transaction that changes nothing takes no revision.
    """
    succeeded = all(compare_holds(compare, current(compare.key)) for compare in compares)
    ops = success if succeeded else failure
    new_revision = revision + 1
    prev: list[KeyValue | None] = []
    events: list[Event] = []
    for op in ops:
        old = current(op.key)
        prev.append(old)
        if isinstance(op, Put):
            kv = KeyValue(
                key=op.key,
                value=op.value,
                create_revision=old.create_revision if old is not None else new_revision,
                mod_revision=new_revision,
                version=old.version + 1 if old is not None else 1,
            )
            events.append(Event("PUT", kv, old))
        elif old is not None:
            events.append(Event("DELETE", tombstone(op.key, new_revision), old))
    conflict = () if succeeded else tuple(current(compare.key) for compare in compares)
    if events:
        # Watchers see the changes of one revision in key order, live or replayed.
        events.sort(key=_event_key)
        revision = new_revision
    return TxnResult(succeeded, revision, tuple(prev), conflict), events


def tombstone(key: str, revision: int) -> KeyValue:
    """The `kv` of a DELETE event: no value, no creation, version 0."""
    return KeyValue(key=key, value=b"", create_revision=0, mod_revision=revision, version=0)


def _event_key(event: Event) -> str:
    return event.kv.key


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


# The store.


class _Version(NamedTuple):
    revision: int
    kv: KeyValue | None  # None marks a delete


class MemoryStore(Store):
    """An MVCC store held in dictionaries: every version is kept until `compact`."""

    def __init__(self, *, watch_queue_size: int = DEFAULT_WATCH_QUEUE_SIZE) -> None:
        self._versions: dict[str, list[_Version]] = {}
        # Every key with a retained version, sorted, so a prefix is a slice.
        self._keys: list[str] = []
        self._revision = 0
        self._compact_revision = 0
        self._hub = WatchHub(queue_size=watch_queue_size)
        self._closed = False

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def compact_revision(self) -> int:
        return self._compact_revision

    async def get(self, key: str, *, revision: int = 0) -> KeyValue | None:
        await self._enter()
        return self._value_at(key, self._read_revision(revision))

    async def range(
        self,
        prefix: str,
        *,
        start_after: str | None = None,
        limit: int = 0,
        revision: int = 0,
    ) -> RangeResult:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        await self._enter()
        at = self._read_revision(revision)
        kvs = [
            kv for key in self._keys_under(prefix) if (kv := self._value_at(key, at)) is not None
        ]
        count = len(kvs) if start_after is None else -1
        if start_after is not None:
            kvs = kvs[bisect.bisect_right(kvs, start_after, key=_kv_key) :]
        more = 0 < limit < len(kvs)
        if more:
            kvs = kvs[:limit]
        return RangeResult(kvs=kvs, revision=at, more=more, count=count)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        check_txn(compares, success, failure)
        await self._enter()
        result, events = evaluate_txn(self._live, compares, success, failure, self._revision)
        if events:
            for event in events:
                self._record(event.kv.key, _Version(result.revision, _new_kv(event)))
            self._revision = result.revision
            self._hub.publish(events, self._revision)
        return result

    def watch(self, prefix: str, *, start_revision: int = 0) -> Watch:
        return self._hub.open(
            prefix,
            start_revision=start_revision,
            current_revision=self._revision,
            history=self._history,
        )

    async def compact(self, revision: int) -> None:
        await self._enter()
        if revision > self._revision:
            raise FutureRevisionError(
                f"cannot compact at {revision}: the current revision is {self._revision}"
            )
        if revision <= self._compact_revision:
            return
        for key in list(self._versions):
            versions = self._versions[key]
            keep = bisect.bisect_right(versions, revision, key=_version_revision) - 1
            if keep < 0:
                continue
            # The newest version at or below `revision` survives, unless it is a delete.
            drop = keep + 1 if versions[keep].kv is None else keep
            del versions[:drop]
            if not versions:
                del self._versions[key]
        self._keys = [key for key in self._keys if key in self._versions]
        self._compact_revision = revision

    async def snapshot(self, path: str) -> int:
        # Imported here: the SQLite module imports this one for the watch hub.
        from hypermesh.store import sqlite_file as sqlite_store

        await self._enter()
        versions = [
            (key, version.revision, version.kv)
            for key in self._keys
            for version in self._versions[key]
        ]
        revision = self._revision
        await asyncio.to_thread(
            sqlite_store.write_image, Path(path), versions, revision, self._compact_revision
        )
        return revision

    async def close(self) -> None:
        self._closed = True
        self._hub.close()

    # Internals.

    async def _enter(self) -> None:
        # Yield once, like a real backend would, so concurrent callers really interleave.
        await asyncio.sleep(0)
        if self._closed:
            raise StoreClosedError("the store is closed")

    def _read_revision(self, revision: int) -> int:
        if revision < 0:
            raise ValueError(f"revision must be >= 0, got {revision}")
        if revision == 0:
            return self._revision
        if revision > self._revision:
            raise FutureRevisionError(
                f"revision {revision} is ahead of the current revision {self._revision}"
            )
        if revision < self._compact_revision:
            raise CompactedError(revision, self._compact_revision)
        return revision

    def _keys_under(self, prefix: str) -> list[str]:
        low = bisect.bisect_left(self._keys, prefix)
        end = prefix_end(prefix)
        high = len(self._keys) if end is None else bisect.bisect_left(self._keys, end)
        return self._keys[low:high]

    def _value_at(self, key: str, revision: int) -> KeyValue | None:
        versions = self._versions.get(key)
        if not versions:
            return None
        index = bisect.bisect_right(versions, revision, key=_version_revision)
        return versions[index - 1].kv if index else None

    def _live(self, key: str) -> KeyValue | None:
        versions = self._versions.get(key)
        return versions[-1].kv if versions else None

    def _record(self, key: str, version: _Version) -> None:
        versions = self._versions.get(key)
        if versions is None:
            self._versions[key] = [version]
            bisect.insort(self._keys, key)
        else:
            versions.append(version)

    async def _history(self, prefix: str, first: int, last: int) -> list[Event]:
        await self._enter()
        if first <= self._compact_revision:
            raise CompactedError(first, self._compact_revision)
        events: list[Event] = []
        for key in self._keys_under(prefix):
            prev: KeyValue | None = None
            for version in self._versions[key]:
                if first <= version.revision <= last:
                    if version.kv is None:
                        events.append(Event("DELETE", tombstone(key, version.revision), prev))
                    else:
                        events.append(Event("PUT", version.kv, prev))
                prev = version.kv
        events.sort(key=_event_order)
        return events


def _new_kv(event: Event) -> KeyValue | None:
    return event.kv if event.type == "PUT" else None


def _kv_key(kv: KeyValue) -> str:
    return kv.key


def _version_revision(version: _Version) -> int:
    return version.revision


def _event_order(event: Event) -> tuple[int, str]:
    return (event.kv.mod_revision, event.kv.key)
