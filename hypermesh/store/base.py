"""The state engine protocol every backend speaks.

The shape follows etcd's v3 API on purpose: keys map to versioned values, every write gets the
next revision of one global counter, the only write path is a transaction guarded by compares
on `mod_revision`, and a watch streams the changes under a prefix from any retained revision.
Keeping the protocol etcd-shaped means the etcd backend is a thin translation, and the API
server above never learns which engine it runs on.

Keys are `str` (the API server only ever stores `/registry/...` paths) and values are opaque
`bytes` (JSON chosen by the caller).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal


class StoreError(Exception):
    """Base class of every error a store raises."""


class CompactedError(StoreError):
    """The asked revision is older than the oldest retained one (the API answers 410)."""

    def __init__(self, revision: int, compact_revision: int) -> None:
        super().__init__(
            f"revision {revision} has been compacted; the oldest retained is {compact_revision}"
        )
        self.revision = revision
        self.compact_revision = compact_revision


class FutureRevisionError(StoreError):
    """The asked revision has not happened yet."""


class StoreClosedError(StoreError):
    """The store was closed while the call waited."""


class WatchOverflowError(StoreError):
    """The watcher fell too far behind and its stream was ended: relist, then watch again.

    A store never lets one slow consumer hold back the writer or the other watchers, so each
    watch buffers a bounded number of batches. When that buffer overflows, the watch ends with
    this error. Treat it like `CompactedError` (the API answers 410): read the current state
    and start a new watch from the revision of that read. `revision` is the last revision the
    consumer was handed, so a consumer that can afford a replay may instead watch again from
    `revision + 1`, as long as that is still retained.
    """

    def __init__(self, prefix: str, revision: int, limit: int) -> None:
        super().__init__(
            f"watch on {prefix!r} fell more than {limit} batches behind after revision "
            f"{revision} and was ended; relist and watch again"
        )
        self.prefix = prefix
        self.revision = revision
        self.limit = limit


class StoreFormatError(StoreError):
    """A file that should hold a store does not (or holds an unknown schema version)."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One version of one key."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int  # 1 on creation, +1 on every later put; reset by a delete


@dataclass(frozen=True, slots=True)
class Compare:
    """Guard of a transaction: the key's current mod_revision compared with `mod_revision`.

    `mod_revision == 0` with op "=" means "the key does not exist".
    """

    key: str
    mod_revision: int
    op: Literal["=", "!=", "<", ">"] = "="


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


Op = Put | Delete


@dataclass(frozen=True, slots=True)
class TxnResult:
    """What a transaction did.

    `revision` is the store revision after the transaction (unchanged when nothing was written).
    `prev` holds, per op of the branch taken, the key's value before the op (None if absent).
    `current` holds, per compare, the key's current value when the compares failed, so a caller
    can report the conflict without another read.
    """

    succeeded: bool
    revision: int
    prev: tuple[KeyValue | None, ...] = ()
    current: tuple[KeyValue | None, ...] = ()


@dataclass(frozen=True, slots=True)
class RangeResult:
    kvs: list[KeyValue]
    revision: int  # the revision the read was served at
    more: bool  # True when `limit` cut the result short
    # Number of keys in the whole range (ignoring limit), counted only when start_after is None
    # (a first page); continuation pages say -1, so paging through a range stays linear.
    count: int = 0


@dataclass(frozen=True, slots=True)
class Event:
    """One change: a PUT carries the new value, a DELETE the key's last value (in `prev`)."""

    type: Literal["PUT", "DELETE"]
    kv: KeyValue  # for DELETE: key, mod_revision = the delete's revision, value = b""
    prev: KeyValue | None = None


@dataclass(slots=True)
class WatchBatch:
    """Events of one or more revisions, in revision order; `revision` is the store revision
    the watcher is caught up to (used for bookmarks and progress)."""

    events: list[Event] = field(default_factory=list)
    revision: int = 0


class Store(abc.ABC):
    """An MVCC key-value store with one global monotonic revision."""

    @property
    @abc.abstractmethod
    def revision(self) -> int:
        """The latest committed revision."""

    @property
    @abc.abstractmethod
    def compact_revision(self) -> int:
        """Revisions at or below this one may be gone (0 when nothing was compacted)."""

    @abc.abstractmethod
    async def get(self, key: str, *, revision: int = 0) -> KeyValue | None:
        """The key's value at `revision` (0 = latest), or None."""

    @abc.abstractmethod
    async def range(
        self,
        prefix: str,
        *,
        start_after: str | None = None,
        limit: int = 0,
        revision: int = 0,
    ) -> RangeResult:
        """Keys starting with `prefix`, in key order, after `start_after`, at most `limit`
        (0 = all), as of `revision` (0 = latest; CompactedError when older than retained)."""

    @abc.abstractmethod
    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        """Atomically: if every compare holds, apply `success`, else `failure`.

        Each transaction that writes anything takes exactly one new revision. The call returns
        only once the write is durable.
        """

    @abc.abstractmethod
    def watch(self, prefix: str, *, start_revision: int = 0) -> AsyncIterator[WatchBatch]:
        """Changes under `prefix` with revision >= `start_revision` (0 = from now on).

        Raises CompactedError (on first iteration) when `start_revision` is older than the
        retained history. Batches arrive in revision order with no gaps and no duplicates.
        """

    @abc.abstractmethod
    async def compact(self, revision: int) -> None:
        """Forget every version superseded at or before `revision`."""

    @abc.abstractmethod
    async def snapshot(self, path: str) -> int:
        """Write a consistent copy of the whole store to `path`; returns its revision."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop accepting calls, finish pending writes, end watches."""

    # Convenience helpers shared by every backend.

    async def put(self, key: str, value: bytes) -> int:
        """Unconditional put; returns the new revision."""
        result = await self.txn([], [Put(key, value)])
        return result.revision

    async def delete(self, key: str) -> int:
        """Unconditional delete; returns the store revision after it."""
        result = await self.txn([], [Delete(key)])
        return result.revision
