"""The embedded, durable state engine: an MVCC key-value store in one SQLite file.

The file format lives in `sqlite_file`, the read queries in `sqlite_reads`.

Writes. The file is in WAL mode with `synchronous=FULL`: a commit returns only after the WAL is
fsynced, so an acknowledged write survives kill -9 and power loss. One fsync per transaction
would cap the store at a few thousand writes a second, so one dedicated writer thread takes
every transaction waiting in its queue and commits them together (group commit). Each
transaction is still decided on its own, in queue order, against the state the earlier ones of
the batch left, and takes its own revision; every caller learns its result only after the
COMMIT of its batch returned. The thread uses plain `sqlite3`, not an asyncio wrapper that pays
a thread hop per statement (measured seven times slower).

Reads of the latest version of one key run on the event loop's own connection (a single
statement, ~10 µs, cheaper than a thread hop); everything else runs on a small pool of reader
threads, each with its own connection and inside one read transaction, so it sees one
consistent committed state and never a batch being written.

Watches. After a batch commits, the writer hands its events to the event loop, which advances
the loop's view of the revision and fans the events out through `watching.WatchHub`. A watch from
a past revision replays `kv` rows up to the revision the loop had when the watch registered;
the live events after that meet the replay exactly.

Only one store may have a file open: `open` takes an exclusive lock on `<db>.lock`.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from hypermesh.store import txn, watching
from hypermesh.store.base import (
    Compare,
    Event,
    FutureRevisionError,
    KeyValue,
    Op,
    RangeResult,
    Store,
    StoreClosedError,
    StoreError,
    TxnResult,
)
from hypermesh.store.recent import RecentValues
from hypermesh.store.sqlite_file import (
    _INSERT_KV,
    _LOAD_HEADS,
    _SET_META,
    _UPSERT_LATEST,
    FileInfo,
    _first_id,
    _last_id,
    _open_file,
    connect,
    copy_database,
)
from hypermesh.store.sqlite_reads import _read_get, _read_history, _read_latest, _read_range

DEFAULT_MAX_BATCH = 512
DEFAULT_READERS = 2


# Compaction looks only at the rows written since the previous one (ids in (:done, :upto]):
# older rows were settled then. The order matters: `latest` forgets a key by its tombstone row.
_COMPACT = (
    # Versions replaced by a newer version at or below the compact revision.
    (
        "DELETE FROM kv WHERE id IN "
        "(SELECT prev_id FROM kv WHERE id > :done AND id <= :upto AND prev_id IS NOT NULL)"
    ),
    # Keys whose newest version is a delete at or below it are gone for every retained reader.
    (
        "DELETE FROM latest WHERE deleted = 1 AND id <= :upto AND key IN "
        "(SELECT key FROM kv WHERE id > :done AND id <= :upto AND deleted = 1)"
    ),
    "DELETE FROM kv WHERE id > :done AND id <= :upto AND deleted = 1",
)


# SQLite allows 32766 parameters per statement; stay well below.
_IN_CHUNK = 500


T = TypeVar("T")


# The writer's queue.


@dataclass(slots=True)
class _TxnRequest:
    compares: Sequence[Compare]
    success: Sequence[Op]
    failure: Sequence[Op]
    future: asyncio.Future[TxnResult]


@dataclass(slots=True)
class _CompactRequest:
    revision: int
    future: asyncio.Future[int]


@dataclass(slots=True)
class _StopRequest:
    """Ends the writer thread once everything queued before it is written."""


_Request = _TxnRequest | _CompactRequest | _StopRequest


@dataclass(slots=True)
class _Batch:
    """What the writer decided for one batch, before it is written."""

    rows: list[tuple[Any, ...]]
    results: list[TxnResult]
    events: list[Event]
    revision: int


class SqliteStore(Store):
    """The durable store; create it with `await SqliteStore.open(path)`."""

    def __init__(
        self,
        path: Path,
        writer: sqlite3.Connection,
        info: FileInfo,
        lock_fd: int,
        *,
        loop: asyncio.AbstractEventLoop,
        watch_queue_size: int,
        max_batch: int,
        readers: int,
    ) -> None:
        """Use `SqliteStore.open`: it prepares the file and the writer connection."""
        self.path = path
        self._loop = loop
        self._lock_fd = lock_fd
        self._max_batch = max_batch
        # The loop's view: advanced only when a committed batch is delivered to the loop.
        self._revision = info.revision
        self._compact_revision = info.compact_revision
        self._hub = watching.WatchHub(queue_size=watch_queue_size)
        # The latest values of recently written or read keys (see recent.py).
        self._recent = RecentValues()
        self._closed = False
        self._closing: asyncio.Future[None] | None = None
        self._writer_error: BaseException | None = None
        # The writer thread's own view and connection; nothing else touches them.
        self._writer = writer
        self._writer_revision = info.revision
        self._writer_compact = info.compact_revision
        self._queue: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._write_loop, name=f"hypermesh-store-writer:{path.name}", daemon=True
        )
        # Readers: one connection per pool thread, all closed with the store.
        self._reader_pool = ThreadPoolExecutor(readers, thread_name_prefix="hypermesh-store-read")
        self._reader_local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._loop_conn: sqlite3.Connection | None = None
        self._thread.start()

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        watch_queue_size: int = watching.DEFAULT_WATCH_QUEUE_SIZE,
        max_batch: int = DEFAULT_MAX_BATCH,
        readers: int = DEFAULT_READERS,
    ) -> SqliteStore:
        """Open the store file at `path`, creating it (and its directories) when missing.

        Revisions go on from where the file left them. The store belongs to the running event
        loop: call it only from that loop.
        """
        db = Path(path).expanduser().absolute()
        loop = asyncio.get_running_loop()
        writer, info, lock_fd = await asyncio.to_thread(_open_file, db)
        return cls(
            db,
            writer,
            info,
            lock_fd,
            loop=loop,
            watch_queue_size=watch_queue_size,
            max_batch=max_batch,
            readers=readers,
        )

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def compact_revision(self) -> int:
        return self._compact_revision

    # Reads.

    async def get(self, key: str, *, revision: int = 0) -> KeyValue | None:
        _check_revision(revision)
        # A point read is a few index lookups (~10 µs): cheaper on the loop's own connection
        # than the hop to a reader thread and back (~100 µs under load).
        if self._closed:
            raise StoreClosedError("the store is closed")
        conn = self._loop_connection()
        if revision == 0:
            found, kv = self._recent.lookup(key)
            if found:
                return kv
            # The latest version needs one statement, which is its own consistent snapshot.
            kv = _read_latest(conn, key)
            self._recent.remember(key, kv, delivered_revision=self._revision)
            return kv
        return self._in_read_txn(lambda c: _read_get(c, key, revision), conn)

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
        _check_revision(revision)
        return await self._read(
            lambda conn: _read_range(conn, prefix, start_after, limit, revision)
        )

    def watch(self, prefix: str, *, start_revision: int = 0) -> watching.Watch:
        return self._hub.open(
            prefix,
            start_revision=start_revision,
            current_revision=self._revision,
            history=self._history,
        )

    async def _history(self, prefix: str, first: int, last: int) -> list[Event]:
        return await self._read(lambda conn: _read_history(conn, prefix, first, last))

    async def snapshot(self, path: str) -> int:
        target = Path(path).expanduser().absolute()
        return await self._run_reader(
            lambda: copy_database(self._reader_connection(), self.path, target)
        )

    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run_reader(lambda: self._in_read_txn(query))

    async def _run_reader(self, work: Callable[[], T]) -> T:
        if self._closed:
            raise StoreClosedError("the store is closed")
        return await self._loop.run_in_executor(self._reader_pool, work)

    def _in_read_txn(self, query: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection | None = None) -> T:
        conn = conn or self._reader_connection()
        # One read transaction: every statement of the query sees the same committed state.
        conn.execute("BEGIN")
        try:
            return query(conn)
        finally:
            conn.execute("ROLLBACK")

    def _loop_connection(self) -> sqlite3.Connection:
        """The connection point reads use on the event loop's thread."""
        conn = self._loop_conn
        if conn is None:
            conn = self._loop_conn = connect(self.path)
            conn.execute("PRAGMA query_only = ON")
            with self._reader_lock:
                self._reader_conns.append(conn)
        return conn

    def _reader_connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._reader_local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            conn.execute("PRAGMA query_only = ON")
            self._reader_local.conn = conn
            with self._reader_lock:
                self._reader_conns.append(conn)
        return conn

    # Writes.

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        txn.check_txn(compares, success, failure)
        self._check_writable()
        future: asyncio.Future[TxnResult] = self._loop.create_future()
        self._queue.put(_TxnRequest(tuple(compares), tuple(success), tuple(failure), future))
        return await future

    async def compact(self, revision: int) -> None:
        self._check_writable()
        if revision > self._revision:
            raise FutureRevisionError(
                f"cannot compact at {revision}: the current revision is {self._revision}"
            )
        future: asyncio.Future[int] = self._loop.create_future()
        self._queue.put(_CompactRequest(revision, future))
        await future

    def _check_writable(self) -> None:
        if self._closed:
            raise StoreClosedError("the store is closed")
        if self._writer_error is not None:
            raise StoreError(f"the writer thread died: {self._writer_error!r}")

    async def close(self) -> None:
        if self._closing is not None:
            await asyncio.shield(self._closing)
            return
        self._closed = True
        self._closing = self._loop.create_future()
        try:
            # The writer commits everything queued before the stop, then ends. Joining it from
            # a worker thread also orders this after every result the writer posted to the
            # loop, so every acknowledged write has been delivered when close returns.
            self._queue.put(_StopRequest())
            await asyncio.to_thread(self._thread.join)
            self._hub.close()
            await asyncio.to_thread(self._reader_pool.shutdown, wait=True)
            with self._reader_lock:
                for conn in self._reader_conns:
                    conn.close()
                self._reader_conns.clear()
            os.close(self._lock_fd)
        finally:
            self._closing.set_result(None)

    # The writer thread.

    def _write_loop(self) -> None:
        stop: _StopRequest | None = None
        try:
            while stop is None:
                requests = [self._queue.get()]
                while len(requests) < self._max_batch:
                    try:
                        requests.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                batch: list[_TxnRequest] = []
                for request in requests:
                    if isinstance(request, _TxnRequest):
                        batch.append(request)
                        continue
                    self._commit(batch)
                    batch = []
                    if isinstance(request, _CompactRequest):
                        self._compact(request)
                    else:
                        # Nothing is queued after a stop: `close` refuses new calls first.
                        stop = request
                self._commit(batch)
        except BaseException as exc:
            # A bug, not a failed write (those fail their batch and the writer goes on):
            # refuse further calls rather than leave them waiting for a thread that is gone.
            self._writer_error = exc
            raise
        finally:
            self._writer.close()
            self._fail_queued()

    def _fail_queued(self) -> None:
        while True:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                return
            if not isinstance(request, _StopRequest):
                self._post(_fail, [request.future], StoreClosedError("the store is closed"))

    def _commit(self, requests: list[_TxnRequest]) -> None:
        """Decide and write one batch of transactions as one SQLite transaction."""
        if not requests:
            return
        futures = [request.future for request in requests]
        try:
            batch, heads = self._decide(requests)
            if batch.rows:
                self._persist(batch, heads)
                self._writer_revision = batch.revision
        # Whatever went wrong (disk full, I/O error, a bug in deciding), the batch's callers
        # must hear of it and the writer must go on with the next batch.
        except Exception as exc:  # noqa: BLE001
            error = StoreError(f"writing a batch of {len(requests)} transactions failed: {exc}")
            error.__cause__ = exc
            self._post(_fail, futures, error)
            return
        self._post(self._deliver, futures, batch)

    def _decide(self, requests: list[_TxnRequest]) -> tuple[_Batch, dict[str, tuple[int, int]]]:
        """Evaluate the batch in order; returns the rows to write and each changed key's head
        (row id, deleted flag) for `latest`."""
        state, heads = self._load_heads(requests)
        changed: dict[str, tuple[int, int]] = {}
        batch = _Batch(rows=[], results=[], events=[], revision=self._writer_revision)
        for request in requests:
            result, events = txn.evaluate_txn(
                state.get, request.compares, request.success, request.failure, batch.revision
            )
            for position, event in enumerate(events):
                kv = event.kv
                deleted = 0 if event.type == "PUT" else 1
                version_id = _first_id(kv.mod_revision) | position
                batch.rows.append(
                    (
                        version_id,
                        kv.key,
                        kv.mod_revision,
                        kv.create_revision,
                        kv.version,
                        kv.value,
                        deleted,
                        heads.get(kv.key),
                    )
                )
                heads[kv.key] = version_id
                changed[kv.key] = (version_id, deleted)
                state[kv.key] = None if deleted else kv
            batch.revision = result.revision
            batch.results.append(result)
            batch.events.extend(events)
        return batch, changed

    def _load_heads(
        self, requests: list[_TxnRequest]
    ) -> tuple[dict[str, KeyValue | None], dict[str, int]]:
        """The live version and the newest row id of every key the batch mentions."""
        keys: set[str] = set()
        for request in requests:
            keys.update(compare.key for compare in request.compares)
            keys.update(op.key for op in request.success)
            keys.update(op.key for op in request.failure)
        ordered = list(keys)
        state: dict[str, KeyValue | None] = {}
        heads: dict[str, int] = {}
        for start in range(0, len(ordered), _IN_CHUNK):
            chunk = ordered[start : start + _IN_CHUNK]
            sql = _LOAD_HEADS.format(marks=",".join("?" * len(chunk)))
            for head_id, *columns in self._writer.execute(sql, chunk):
                kv = KeyValue(*columns)
                heads[kv.key] = head_id
                # A head that is a tombstone means the key is absent.
                state[kv.key] = kv if kv.version else None
        return state, heads

    def _persist(self, batch: _Batch, heads: dict[str, tuple[int, int]]) -> None:
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(_INSERT_KV, batch.rows)
            conn.executemany(_UPSERT_LATEST, [(key, *head) for key, head in heads.items()])
            conn.execute(_SET_META, (batch.revision, "revision"))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _compact(self, request: _CompactRequest) -> None:
        conn = self._writer
        try:
            if request.revision > self._writer_compact:
                bounds = {
                    "done": _last_id(self._writer_compact),
                    "upto": _last_id(request.revision),
                }
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in _COMPACT:
                        conn.execute(statement, bounds)
                    conn.execute(_SET_META, (request.revision, "compact_revision"))
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                self._writer_compact = request.revision
        except Exception as exc:  # noqa: BLE001 - the caller must hear of any failure.
            error = StoreError(f"compaction at {request.revision} failed: {exc}")
            error.__cause__ = exc
            self._post(_fail, [request.future], error)
            return
        self._post(self._compacted, request.future, self._writer_compact)

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            # The loop is closed: nobody is left waiting for the answer.
            pass

    # Back on the event loop.

    def _deliver(self, futures: list[asyncio.Future[TxnResult]], batch: _Batch) -> None:
        self._revision = batch.revision
        if batch.events:
            self._recent.apply(batch.events)
            self._hub.publish(batch.events, batch.revision)
        for future, result in zip(futures, batch.results, strict=True):
            if not future.done():
                future.set_result(result)

    def _compacted(self, future: asyncio.Future[int], compact_revision: int) -> None:
        self._compact_revision = compact_revision
        if not future.done():
            future.set_result(compact_revision)


def _fail(futures: list[asyncio.Future[Any]], error: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(error)


def _check_revision(revision: int) -> None:
    if revision < 0:
        raise ValueError(f"revision must be >= 0, got {revision}")
