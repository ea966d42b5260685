"""The SQLite file format of the embedded store: schema, row ids, opening, locking, copying.

`kv` holds every retained version of every key (deletes as tombstone rows), one row per
version. Its row id is `revision << 20 | position of the key in its transaction`, so rows are
appended in revision order, a revision span is an id range (watch replay, compaction), and the
only B-tree that a write touches at scattered places is `latest`. Measured on these machines, a
second scattered tree (an index on `(key, revision)`) halves group-commit throughput, because
every commit then rewrites twice as many pages. Each row links to the version it replaced
(`prev_id`), which gives `Event.prev` and reads at a past revision.

`latest` points each key at its newest row (a delete included, flagged, until compaction), so
listing the current keys under a prefix is an index walk plus a join on the row id. `meta`
holds the format marker, the current revision and the compact revision.

Only one store may have a file open: opening takes an exclusive lock on `<db>.lock`. Backups
and restores write whole images atomically (a temporary file, fsync, rename).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypermesh.store import txn
from hypermesh.store.base import (
    KeyValue,
    StoreError,
    StoreFormatError,
)

FORMAT_MARKER = "hypermesh-store"
SCHEMA_VERSION = 1


# Row ids: the revision, then the key's position within its transaction.
_POSITION_BITS = 20
assert txn.MAX_TXN_OPS < 1 << _POSITION_BITS


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
        # Deleted and overwritten rows are zeroed, so a compacted value sealed under a retired
        # key (or written before encryption was on) does not linger in free pages.
        conn.execute("PRAGMA secure_delete = ON")
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
