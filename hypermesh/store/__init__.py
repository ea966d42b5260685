"""The state engine: one etcd-shaped protocol (`base.Store`) and the backends that speak it.

Callers pick a backend by URL with `open_store`, so the API server never names a backend:

- `memory://` is `MemoryStore`, for tests;
- `sqlite:///abs/path/state.db` (or a bare path) is `SqliteStore`, the durable embedded default.

`backup` and `restore` work on store files, not on open stores: an operator runs them against a
data directory, whether or not a server has it open (backup), or while none has (restore).
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
from pathlib import Path

from hypermesh.store import sqlite_file as sqlite_store
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
    StoreError,
    StoreFormatError,
    TxnResult,
    WatchBatch,
    WatchOverflowError,
)
from hypermesh.store.memory import MemoryStore
from hypermesh.store.sqlite import SqliteStore

__all__ = [
    "DB_FILENAME",
    "CompactedError",
    "Compare",
    "Delete",
    "Event",
    "FutureRevisionError",
    "KeyValue",
    "MemoryStore",
    "Op",
    "Put",
    "RangeResult",
    "SqliteStore",
    "Store",
    "StoreClosedError",
    "StoreError",
    "StoreFormatError",
    "TxnResult",
    "WatchBatch",
    "WatchOverflowError",
    "backup",
    "db_path",
    "open_store",
    "restore",
]

# The store file's name inside a data directory.
DB_FILENAME = "state.db"

_SQLITE_SCHEME = "sqlite://"
_MEMORY_URL = "memory://"


async def open_store(url: str) -> Store:
    """Open the store `url` names: `memory://`, `sqlite:///abs/path/state.db`, or a bare path
    (a data directory or a database file, as `db_path` reads it)."""
    if url == _MEMORY_URL:
        return MemoryStore()
    if url.startswith(_SQLITE_SCHEME):
        path = url[len(_SQLITE_SCHEME) :]
        if not path.startswith("/"):
            raise ValueError(
                f"store URL {url!r}: the sqlite path must be absolute, as in "
                "'sqlite:///var/lib/hypermesh/state.db'"
            )
        return await SqliteStore.open(path)
    if "://" in url:
        raise ValueError(
            f"store URL {url!r}: unknown scheme; use 'memory://', "
            "'sqlite:///abs/path/state.db' or a plain path"
        )
    return await SqliteStore.open(db_path(url))


def db_path(data_dir_or_db_path: str | os.PathLike[str]) -> Path:
    """The database file meant by a data directory or a database path.

    An existing directory, or a missing path without a suffix, is a data directory holding
    `state.db`; anything else is the database file itself.
    """
    path = Path(data_dir_or_db_path).expanduser().absolute()
    if path.is_dir() or (not path.exists() and not path.suffix):
        return path / DB_FILENAME
    return path


async def backup(
    data_dir_or_db_path: str | os.PathLike[str], out_file: str | os.PathLike[str]
) -> int:
    """Copy the store to `out_file` (one self-contained SQLite file); returns its revision.

    Safe while a server has the store open: the copy is one consistent read.
    """
    source = db_path(data_dir_or_db_path)
    target = Path(out_file).expanduser().absolute()
    return await asyncio.to_thread(_backup, source, target)


def _backup(source: Path, target: Path) -> int:
    if not source.is_file():
        raise FileNotFoundError(errno.ENOENT, "no store to back up", str(source))
    if source == target:
        raise ValueError(f"the backup file {target} is the store itself")
    conn = _open_existing(source)
    try:
        sqlite_store.read_info(conn, source)
        return sqlite_store.copy_database(conn, source, target)
    finally:
        conn.close()


def restore(
    backup_file: str | os.PathLike[str],
    data_dir_or_db_path: str | os.PathLike[str],
    *,
    force: bool = False,
) -> int:
    """Put the store in `backup_file` in place of the store at `data_dir_or_db_path`.

    Refuses to replace a non-empty store unless `force`, and refuses always while a store has
    the target open. Returns the restored revision.
    """
    source = Path(backup_file).expanduser().absolute()
    target = db_path(data_dir_or_db_path)
    if not source.is_file():
        raise FileNotFoundError(errno.ENOENT, "no backup file", str(source))
    if source == target:
        raise ValueError(f"the backup file {source} is the store to restore into")
    conn = _open_existing(source)
    try:
        sqlite_store.read_info(conn, source)
        if not force and target.exists() and target.stat().st_size > 0:
            raise FileExistsError(
                errno.EEXIST,
                "a store already exists there; pass force=True to replace it",
                str(target),
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        # The lock proves no store has the target open while its file is swapped.
        lock_fd = sqlite_store.acquire_lock(target)
        try:
            return sqlite_store.copy_database(conn, source, target)
        finally:
            os.close(lock_fd)
    finally:
        conn.close()


def _open_existing(path: Path) -> sqlite3.Connection:
    """A connection to an existing database file that never creates one."""
    try:
        return sqlite3.connect(f"{path.as_uri()}?mode=rw", uri=True, isolation_level=None)
    except sqlite3.OperationalError as exc:
        raise StoreFormatError(f"{path} cannot be opened as an SQLite database: {exc}") from exc
