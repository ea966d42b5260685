"""Write storm for the kill -9 test (`test_store_durability.py`); not a test itself.

Opens the SqliteStore at argv[1] and writes from many concurrent tasks until killed. A line goes
to stdout, flushed, only after the write's `txn()` returned, so every printed line is a write the
store acknowledged and must still hold after any crash:

    put <key> <revision>           a plain put; the value is derived from the key
    pair <n> <revision>            one transaction writing /storm/<round>/pair/<n>/a and /b
    counter <value> <revision>     a compare-and-swap increment of /storm/counter

Usage: python store_storm.py DB_PATH ROUND [WRITERS]
"""

from __future__ import annotations

import asyncio
import sys

from hypermesh.store.base import Compare, Put
from hypermesh.store.sqlite import SqliteStore


def value_of(key: str) -> bytes:
    """The value the storm writes at `key` (the checker recomputes it)."""
    return f"value of {key}".encode()


async def storm(path: str, round_: str, writers: int) -> None:
    store = await SqliteStore.open(path)
    out = sys.stdout

    def ack(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    async def putter(index: int) -> None:
        n = 0
        while True:
            key = f"/storm/{round_}/w{index}/{n:06d}"
            ack(f"put {key} {await store.put(key, value_of(key))}")
            n += 1

    async def pairs() -> None:
        n = 0
        while True:
            base = f"/storm/{round_}/pair/{n:06d}"
            result = await store.txn([], [Put(f"{base}/a", b"a"), Put(f"{base}/b", b"b")])
            ack(f"pair {n} {result.revision}")
            n += 1

    async def counter() -> None:
        while True:
            current = await store.get("/storm/counter")
            value = int(current.value) + 1 if current else 1
            result = await store.txn(
                [Compare("/storm/counter", current.mod_revision if current else 0)],
                [Put("/storm/counter", str(value).encode())],
            )
            if result.succeeded:
                ack(f"counter {value} {result.revision}")

    ack(f"ready {store.revision}")
    await asyncio.gather(pairs(), counter(), counter(), *(putter(i) for i in range(writers)))


if __name__ == "__main__":
    asyncio.run(storm(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 32))
