"""Read queries of the SQLite store; each runs inside one read transaction.

A read at a past revision R starts from `latest` and, for the keys changed after R, takes the
version the first later change replaced: its cost grows with the writes since R, which suits
the rare exact-revision reads of a Kubernetes API server. A continuation page bounds the index
scan by its start key, so paging through a prefix stays linear.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from hypermesh.store import txn
from hypermesh.store.base import (
    CompactedError,
    Event,
    FutureRevisionError,
    KeyValue,
    RangeResult,
)
from hypermesh.store.sqlite_file import _KV, _first_id, _last_id

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


# Read queries; each runs inside one read transaction on a reader connection.


def _key_bounds(column: str, prefix: str) -> tuple[str, dict[str, str]]:
    """An SQL condition selecting the keys under `prefix`, with its named parameters."""
    end = txn.prefix_end(prefix)
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
            events.append(Event("DELETE", txn.tombstone(row[1], row[4]), prev))
        else:
            events.append(Event("PUT", KeyValue(*row[1:6]), prev))
    return events
