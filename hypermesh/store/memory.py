"""The in-memory store for unit tests.

`MemoryStore` keeps every version of every key in dictionaries, so a test of the API server runs
in microseconds, yet it has exactly the semantics of the durable `SqliteStore` (same revisions,
same compaction rule, same watch behaviour): both use `txn.evaluate_txn` and
`watching.WatchHub`, and the contract suite in `tests/unit/test_store_contract.py` runs against
both.

Snapshots of every backend are one SQLite store file, so a snapshot of a test store can be
restored into a durable one; that is why `snapshot` borrows the SQLite file module's image
writer.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from hypermesh.store.base import (
    CompactedError,
    Compare,
    Event,
    FutureRevisionError,
    KeyValue,
    Op,
    RangeResult,
    Store,
    StoreClosedError,
    TxnResult,
)
from hypermesh.store.txn import check_txn, evaluate_txn, prefix_end, tombstone
from hypermesh.store.watching import DEFAULT_WATCH_QUEUE_SIZE, Watch, WatchHub

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
