"""The embedded, durable state engine: an MVCC key-value store in one SQLite file.

Layout. `kv` holds every retained version of every key (deletes as tombstone rows), one row
per version. Its row id is `revision << 20 | position of the key in its transaction`, so rows
are appended in revision order, a revision span is an id range (watch replay, compaction), and
the only B-tree that a write touches at scattered places is `latest`. Measured on these
machines, a second scattered tree (an index on `(key, revision)`) halves group-commit
throughput, because every commit then rewrites twice as many pages. Each row links to the
version it replaced (`prev_id`), which gives `Event.prev` and reads at a past revision.

`latest` points each key at its newest row (a delete included, flagged, until compaction), so
listing the current keys under a prefix is an index walk plus a join on the row id. A read at
a past revision R starts from `latest` and, for the keys changed after R, takes the version the
first later change replaced: its cost grows with the writes since R, which suits the rare
exact-revision reads of a Kubernetes API server. `meta` holds the format marker, the current
revision and the compact revision.

Writes. The file is in WAL mode with `synchronous=FULL`: a commit returns only after the WAL is
fsynced, so an acknowledged write survives kill -9 and power loss. One fsync per transaction
would cap the store at a few thousand writes a second, so one dedicated writer thread takes
every transaction waiting in its queue and commits them together (group commit). Each
transaction is still decided on its own, in queue order, against the state the earlier ones of
the batch left, and takes its own revision; every caller learns its result only after the
COMMIT of its batch returned. The thread uses plain `sqlite3`, not an asyncio wrapper that pays
a thread hop per statement (measured seven times slower).

Reads run on a small pool of reader threads, each with its own connection and inside one read
transaction, so they see one consistent committed state and never a batch being written.

Watches. After a batch commits, the writer hands its events to the event loop, which advances
the loop's view of the revision and fans the events out through `memory.WatchHub`. A watch from
a past revision replays `kv` rows up to the revision the loop had when the watch registered;
the live events after that meet the replay exactly.

Only one store may have a file open: `open` takes an exclusive lock on `<db>.lock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from hypermesh.store import memory
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
    StoreError,
    StoreFormatError,
    TxnResult,
)

FORMAT_MARKER = "hypermesh-store"
SCHEMA_VERSION = 1

DEFAULT_MAX_BATCH = 512
DEFAULT_READERS = 2

# Row ids: the revision, then the key's position within its transaction.
_POSITION_BITS = 20
assert memory.MAX_TXN_OPS < 1 << _POSITION_BITS

_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE kv (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    revision INTEGER NOT NULL,
    create_revision INTEGER NOT NULL,
    version INTEGER NOT NULL,
    value BLOB NOT NULL,
    deleted INTEGER NOT NULL,
    prev_id INTEGER
);
CREATE TABLE latest (key TEXT PRIMARY KEY, id INTEGER NOT NULL, deleted INTEGER NOT NULL)
    WITHOUT ROWID;
"""

# The columns of a KeyValue, in constructor order, read from `kv` as `k`.
_KV = "k.key, k.value, k.create_revision, k.revision, k.version"

_LOAD_HEADS = (
    f"SELECT l.id, {_KV} FROM latest AS l JOIN kv AS k ON k.id = l.id WHERE l.key IN ({{marks}})"
)
_INSERT_KV = "INSERT INTO kv VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_UPSERT_LATEST = (
    "INSERT INTO latest VALUES (?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET id = excluded.id, deleted = excluded.deleted"
)
_SET_META = "UPDATE meta SET value = ? WHERE name = ?"

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

# The state at a past revision: keys untouched since then as `latest` has them, and for the
# others the version their first later change replaced. (SQLite takes the bare `prev_id` from
# the row that holds the min(id).)
_AT_REVISION = """
WITH changed AS (
    SELECT key, min(id), prev_id FROM kv AS k WHERE k.id > :upto AND {bounds} GROUP BY key
), visible AS (
    SELECT l.id FROM latest AS l
    WHERE {latest_bounds} AND l.deleted = 0 AND l.key NOT IN (SELECT key FROM changed)
    UNION ALL
    SELECT prev_id FROM changed WHERE prev_id IS NOT NULL
)
"""

# Every change in an id span, with the version it replaced (for `Event.prev`).
_HISTORY = f"""
SELECT k.deleted, {_KV}, p.deleted, {_KV.replace("k.", "p.")}
FROM kv AS k LEFT JOIN kv AS p ON p.id = k.prev_id
WHERE k.id >= :first AND k.id <= :last AND {{bounds}}
ORDER BY k.id
"""

# SQLite allows 32766 parameters per statement; stay well below.
_IN_CHUNK = 500

T = TypeVar("T")


def _first_id(revision: int) -> int:
    return revision << _POSITION_BITS


def _last_id(revision: int) -> int:
    return ((revision + 1) << _POSITION_BITS) - 1


# The file.


def connect(path: Path) -> sqlite3.Connection:
    """A connection with the store's settings (autocommit: transactions are explicit)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(f"{path}: cannot switch the database to WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous = FULL")
        # Checkpoint less often than every 1000 pages: a hot page is then copied back once
        # for many commits.
        conn.execute("PRAGMA wal_autocheckpoint = 10000")
        # ...but give the disk back once a checkpoint has emptied a WAL that grew past 64 MiB.
        conn.execute("PRAGMA journal_size_limit = 67108864")
        conn.execute("PRAGMA cache_size = -65536")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreFormatError(f"{path} is not an SQLite database: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What the meta table of a store file says."""

    revision: int
    compact_revision: int


def read_info(conn: sqlite3.Connection, path: Path | str) -> FileInfo:
    """Check that `conn` holds a HyperMesh store of a known schema and return its meta.

    Raises StoreFormatError naming the file and what is wrong with it.
    """
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if "meta" not in tables:
            raise StoreFormatError(
                f"{path} is not a HyperMesh store: it has no meta table "
                f"(tables: {', '.join(sorted(tables)) or 'none'})"
            )
        meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
    except sqlite3.DatabaseError as exc:
        raise StoreFormatError(f"{path} is not an SQLite database: {exc}") from exc
    if meta.get("format") != FORMAT_MARKER:
        raise StoreFormatError(
            f"{path} is not a HyperMesh store: its meta format is {meta.get('format')!r}, "
            f"expected {FORMAT_MARKER!r}"
        )
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise StoreFormatError(
            f"{path} has store schema version {meta.get('schema_version')!r}; "
            f"this HyperMesh reads version {SCHEMA_VERSION}"
        )
    return FileInfo(int(meta["revision"]), int(meta["compact_revision"]))


def _create_schema(conn: sqlite3.Connection, revision: int, compact_revision: int) -> None:
    # Statement by statement: `executescript` would commit the caller's transaction first.
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.executemany(
        "INSERT INTO meta VALUES (?, ?)",
        [
            ("format", FORMAT_MARKER),
            ("schema_version", SCHEMA_VERSION),
            ("revision", revision),
            ("compact_revision", compact_revision),
        ],
    )


def _open_file(path: Path) -> tuple[sqlite3.Connection, FileInfo, int]:
    """Lock, open and (when empty) initialise the store file; the writer's side of `open`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_fd = acquire_lock(path)
    try:
        conn = connect(path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
                _create_schema(conn, 0, 0)
            info = read_info(conn, path)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()
            raise
    except BaseException:
        os.close(lock_fd)
        raise
    return conn, info, lock_fd


def lock_file(path: Path) -> Path:
    """The lock file that marks the store at `path` as open."""
    return path.with_name(path.name + ".lock")


def acquire_lock(path: Path) -> int:
    """Take the exclusive lock of the store at `path`; returns the lock's file descriptor.

    Raises StoreError when another store (in any process) holds it. The kernel drops the lock
    when its holder dies, so a killed server never leaves a stale one.
    """
    fd = os.open(lock_file(path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(f"{path} is open in another store (lock {lock_file(path)})") from None
    return fd


def write_image(
    path: Path,
    versions: Iterable[tuple[str, int, KeyValue | None]],
    revision: int,
    compact_revision: int,
) -> None:
    """Write a store file holding exactly `versions` ((key, revision, kv, or None for a delete)).

    This is how a store that is not SQLite takes a snapshot in the common format.
    """
    rows: list[tuple[Any, ...]] = []
    heads: dict[str, tuple[int, int]] = {}
    position = 0
    last_revision = -1
    for key, rev, kv in sorted(versions, key=lambda version: (version[1], version[0])):
        position = position + 1 if rev == last_revision else 0
        last_revision = rev
        version_id = _first_id(rev) | position
        prev_id = heads[key][0] if key in heads else None
        if kv is None:
            rows.append((version_id, key, rev, 0, 0, b"", 1, prev_id))
        else:
            rows.append(
                (version_id, key, rev, kv.create_revision, kv.version, kv.value, 0, prev_id)
            )
        heads[key] = (version_id, 1 if kv is None else 0)

    def fill(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN")
        _create_schema(conn, revision, compact_revision)
        conn.executemany(_INSERT_KV, rows)
        conn.executemany(_UPSERT_LATEST, [(key, *head) for key, head in heads.items()])
        conn.execute("COMMIT")

    _write_atomically(path, fill)


def copy_database(source: sqlite3.Connection, source_name: Path | str, target: Path) -> int:
    """Copy the store behind `source` to `target` with SQLite's online backup; returns the
    revision of the copy. Writers may go on meanwhile: the copy is one consistent read."""
    infos: list[FileInfo] = []

    def fill(conn: sqlite3.Connection) -> None:
        # pages=-1 copies everything in one step, inside one read transaction of the source.
        source.backup(conn, pages=-1)
        infos.append(read_info(conn, source_name))

    _write_atomically(target, fill)
    return infos[0].revision


def _write_atomically(target: Path, fill: Callable[[sqlite3.Connection], None]) -> None:
    """Build a single-file database next to `target`, fsync it, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    _remove_database_files(partial)
    conn = sqlite3.connect(partial, isolation_level=None)
    try:
        fill(conn)
        # A copy is one self-contained file: no WAL beside it to lose on the way.
        conn.execute("PRAGMA journal_mode = DELETE")
    except BaseException:
        conn.close()
        _remove_database_files(partial)
        raise
    conn.close()
    _fsync_path(partial)
    # A stale WAL left beside the old file would be replayed onto the new one.
    _remove_database_files(target, main=False)
    os.replace(partial, target)
    _fsync_path(target.parent)


def _remove_database_files(path: Path, *, main: bool = True) -> None:
    suffixes = ("-wal", "-shm", "-journal") + (("",) if main else ())
    for suffix in suffixes:
        with contextlib.suppress(FileNotFoundError):
            os.remove(f"{path}{suffix}")


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        self._hub = memory.WatchHub(queue_size=watch_queue_size)
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
        watch_queue_size: int = memory.DEFAULT_WATCH_QUEUE_SIZE,
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
            # The latest version needs one statement, which is its own consistent snapshot.
            return _read_latest(conn, key)
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

    def watch(self, prefix: str, *, start_revision: int = 0) -> memory.Watch:
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
        memory.check_txn(compares, success, failure)
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
            result, events = memory.evaluate_txn(
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


# Read queries; each runs inside one read transaction on a reader connection.


def _key_bounds(column: str, prefix: str) -> tuple[str, dict[str, str]]:
    """An SQL condition selecting the keys under `prefix`, with its named parameters."""
    end = memory.prefix_end(prefix)
    clauses: list[str] = []
    params: dict[str, str] = {}
    if prefix:
        clauses.append(f"{column} >= :prefix")
        params["prefix"] = prefix
    if end is not None:
        clauses.append(f"{column} < :prefix_end")
        params["prefix_end"] = end
    return " AND ".join(clauses) or "1", params


def _read_meta(conn: sqlite3.Connection) -> tuple[int, int]:
    """The current and the compact revision, as of this read transaction."""
    current, compacted = conn.execute(
        "SELECT (SELECT value FROM meta WHERE name = 'revision'), "
        "(SELECT value FROM meta WHERE name = 'compact_revision')"
    ).fetchone()
    return current, compacted


def _read_revision(conn: sqlite3.Connection, revision: int) -> tuple[int, int]:
    """The revision to read at and the current one, checked against the retained span."""
    current, compacted = _read_meta(conn)
    if revision == 0:
        return current, current
    if revision > current:
        raise FutureRevisionError(f"revision {revision} is ahead of the current revision {current}")
    if revision < compacted:
        raise CompactedError(revision, compacted)
    return revision, current


def _read_latest(conn: sqlite3.Connection, key: str) -> KeyValue | None:
    row = conn.execute(
        f"SELECT {_KV}, l.deleted FROM latest AS l JOIN kv AS k ON k.id = l.id WHERE l.key = ?",
        (key,),
    ).fetchone()
    return None if row is None or row[5] else KeyValue(*row[:5])


def _read_get(conn: sqlite3.Connection, key: str, revision: int) -> KeyValue | None:
    at, _ = _read_revision(conn, revision)
    row = conn.execute(
        f"SELECT {_KV}, k.deleted, k.prev_id FROM latest AS l JOIN kv AS k ON k.id = l.id "
        "WHERE l.key = ?",
        (key,),
    ).fetchone()
    # Walk back from the newest version to the one in force at `at`. A missing row was a
    # delete removed by compaction: the key was absent then.
    while row is not None:
        if row[3] <= at:
            return None if row[5] else KeyValue(*row[:5])
        if row[6] is None:
            return None
        row = conn.execute(
            f"SELECT {_KV}, k.deleted, k.prev_id FROM kv AS k WHERE k.id = ?", (row[6],)
        ).fetchone()
    return None


def _read_range(
    conn: sqlite3.Connection, prefix: str, start_after: str | None, limit: int, revision: int
) -> RangeResult:
    at, current = _read_revision(conn, revision)
    # One row more than asked tells whether the limit cut the result short.
    params: dict[str, Any] = {"after": start_after, "limit": limit + 1 if limit > 0 else -1}
    # The continue point bounds the index scan itself, so page N costs no more than page 1; only
    # the first page pays for the count (a scan of the whole prefix).
    after_l = "" if start_after is None else " AND l.key > :after"
    after_k = "" if start_after is None else " AND k.key > :after"
    if at == current:
        bounds, bound_params = _key_bounds("l.key", prefix)
        params.update(bound_params)
        count_sql = f"SELECT count(*) FROM latest AS l WHERE {bounds} AND l.deleted = 0"
        rows_sql = (
            f"SELECT {_KV} FROM latest AS l JOIN kv AS k ON k.id = l.id "
            f"WHERE {bounds}{after_l} AND l.deleted = 0 ORDER BY l.key LIMIT :limit"
        )
    else:
        bounds, bound_params = _key_bounds("k.key", prefix)
        latest_bounds, _ = _key_bounds("l.key", prefix)
        params.update(bound_params, upto=_last_id(at))
        joined = "FROM visible JOIN kv AS k ON k.id = visible.id WHERE k.deleted = 0"
        whole = _AT_REVISION.format(bounds=bounds, latest_bounds=latest_bounds)
        count_sql = f"{whole} SELECT count(*) {joined}"
        visible = _AT_REVISION.format(bounds=bounds + after_k, latest_bounds=latest_bounds + after_l)
        rows_sql = f"{visible} SELECT {_KV} {joined} ORDER BY k.key LIMIT :limit"
    count = conn.execute(count_sql, params).fetchone()[0] if start_after is None else -1
    rows = conn.execute(rows_sql, params).fetchall()
    more = 0 < limit < len(rows)
    if more:
        rows = rows[:limit]
    return RangeResult(kvs=[KeyValue(*row) for row in rows], revision=at, more=more, count=count)


def _read_history(conn: sqlite3.Connection, prefix: str, first: int, last: int) -> list[Event]:
    _, compacted = _read_meta(conn)
    if first <= compacted:
        raise CompactedError(first, compacted)
    bounds, params = _key_bounds("k.key", prefix)
    rows = conn.execute(
        _HISTORY.format(bounds=bounds),
        {**params, "first": _first_id(first), "last": _last_id(last)},
    ).fetchall()
    events: list[Event] = []
    for row in rows:
        # A replaced version that was a delete (or is gone) means the key was absent.
        prev = KeyValue(*row[7:12]) if row[6] == 0 else None
        if row[0]:
            events.append(Event("DELETE", memory.tombstone(row[1], row[4]), prev))
        else:
            events.append(Event("PUT", KeyValue(*row[1:6]), prev))
    return events
