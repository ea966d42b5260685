"""How fast the SQLite state engine writes and lists, next to what SQLite itself allows.

The figures to watch are group-commit puts/s with 64 concurrent writers (target 20,000/s) and a
range over 10,000 current keys (target about 20 ms). The raw `sqlite3` baseline is measured in
the same run, on the same disk, as the physical limit: batches of 100 plain inserts per
`synchronous=FULL` transaction. The machine is small and shared, so every phase is short.

Run: `.venv/bin/python bench/store_bench.py [--seconds 2]`. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import tempfile
import time
from pathlib import Path

from hypermesh.store.sqlite import SqliteStore

TARGET_CONCURRENT_PUTS = 20_000
TARGET_RANGE_MS = 20.0
VALUE = b"x" * 256


async def concurrent_puts(store: SqliteStore, *, writers: int, seconds: float) -> float:
    """Puts per second with `writers` tasks each writing its own keys back to back."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def writer(index: int) -> None:
        nonlocal done
        n = 0
        while time.perf_counter() < deadline:
            await store.put(f"/bench/concurrent/w{index}/{n}", VALUE)
            n += 1
        done += n

    start = time.perf_counter()
    await asyncio.gather(*(writer(i) for i in range(writers)))
    return done / (time.perf_counter() - start)


async def sequential_puts(store: SqliteStore, *, seconds: float) -> float:
    """Puts per second from one caller that waits for each acknowledgement."""
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        await store.put(f"/bench/sequential/{n}", VALUE)
        n += 1
    return n / (time.perf_counter() - start)


async def range_ms(store: SqliteStore, *, keys: int) -> tuple[float, int]:
    """Best-of-5 milliseconds to list `keys` current keys under one prefix."""
    for start in range(0, keys, 500):
        await asyncio.gather(
            *(store.put(f"/bench/range/{i:06d}", VALUE) for i in range(start, start + 500))
        )
    best = float("inf")
    found = 0
    for _ in range(5):
        began = time.perf_counter()
        result = await store.range("/bench/range/")
        best = min(best, (time.perf_counter() - began) * 1000)
        found = len(result.kvs)
    return best, found


def raw_sqlite_limit(path: Path, *, seconds: float) -> float:
    """Rows per second of plain sqlite3: 100-row executemany per synchronous=FULL commit."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE t (key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID")
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        rows = [(f"/raw/{n + i}", VALUE) for i in range(100)]
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t VALUES (?, ?)", rows)
        conn.execute("COMMIT")
        n += 100
    rate = n / (time.perf_counter() - start)
    conn.close()
    return rate


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each write phase")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hypermesh-store-bench-") as tmp:
        limit = raw_sqlite_limit(Path(tmp) / "raw.db", seconds=args.seconds)
        store = await SqliteStore.open(Path(tmp) / "state.db")
        try:
            concurrent = await concurrent_puts(store, writers=64, seconds=args.seconds)
            sequential = await sequential_puts(store, seconds=args.seconds / 2)
            listed_ms, listed = await range_ms(store, keys=10_000)
        finally:
            await store.close()
    print(
        json.dumps(
            {
                "concurrent_puts_per_s": round(concurrent),
                "concurrent_writers": 64,
                "concurrent_target_per_s": TARGET_CONCURRENT_PUTS,
                "concurrent_meets_target": concurrent >= TARGET_CONCURRENT_PUTS,
                "sequential_puts_per_s": round(sequential),
                "range_keys": listed,
                "range_ms": round(listed_ms, 1),
                "range_target_ms": TARGET_RANGE_MS,
                "range_meets_target": listed_ms <= TARGET_RANGE_MS,
                "limit_raw_sqlite_rows_per_s": round(limit),
                "limit_note": "raw sqlite3, WAL, synchronous=FULL, 100 rows per transaction",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
