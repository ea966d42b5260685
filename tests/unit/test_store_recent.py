"""The in-memory latest values beside the SQLite file: never older than what was delivered."""

from __future__ import annotations

from pathlib import Path

from hypermesh.store import Compare, Delete, Put
from hypermesh.store.base import Event, KeyValue
from hypermesh.store.recent import RecentValues
from hypermesh.store.sqlite import SqliteStore


def kv(key: str, revision: int, value: bytes = b"v") -> KeyValue:
    return KeyValue(key, value, 1, revision, 1)


def test_a_value_newer_than_the_delivered_revision_is_not_remembered() -> None:
    recent = RecentValues()
    recent.remember("a", kv("a", 7), delivered_revision=6)
    assert recent.lookup("a") == (False, None)
    recent.remember("a", kv("a", 6), delivered_revision=6)
    assert recent.lookup("a") == (True, kv("a", 6))
    # Absence read from the file is never remembered (it may be an undelivered delete).
    recent.remember("b", None, delivered_revision=6)
    assert recent.lookup("b") == (False, None)


def test_deliveries_overwrite_and_deletes_are_remembered_as_absent() -> None:
    recent = RecentValues()
    recent.apply([Event("PUT", kv("a", 1)), Event("PUT", kv("b", 2))])
    recent.apply([Event("DELETE", kv("a", 3, b""), prev=kv("a", 1))])
    assert recent.lookup("a") == (True, None)
    assert recent.lookup("b") == (True, kv("b", 2))


def test_the_oldest_entry_goes_first() -> None:
    recent = RecentValues(capacity=2)
    recent.apply([Event("PUT", kv("a", 1)), Event("PUT", kv("b", 2)), Event("PUT", kv("a", 3))])
    recent.apply([Event("PUT", kv("c", 4))])
    # "a" was written again after "b", so "b" is the oldest and goes.
    assert recent.lookup("b") == (False, None)
    assert recent.lookup("a")[0] and recent.lookup("c")[0]
    assert len(recent) == 2


def test_values_are_bounded_by_bytes_too() -> None:
    recent = RecentValues(capacity=100, max_bytes=10)
    recent.apply([Event("PUT", kv("a", 1, b"12345")), Event("PUT", kv("b", 2, b"12345"))])
    assert recent.lookup("a")[0] and recent.lookup("b")[0]
    recent.apply([Event("PUT", kv("c", 3, b"1"))])
    assert recent.lookup("a") == (False, None)  # the oldest went to make room
    recent.apply([Event("PUT", kv("b", 4, b"1"))])  # rewritten smaller: the count follows
    recent.apply([Event("PUT", kv("d", 5, b"12345"))])
    assert recent.lookup("b")[0] and recent.lookup("c")[0] and recent.lookup("d")[0]


async def test_store_reads_follow_writes_through_the_memory(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.db")
    try:
        first = await store.txn([Compare("k", 0)], [Put("k", b"1")])
        assert (await store.get("k")).value == b"1"  # type: ignore[union-attr]
        await store.txn([Compare("k", first.revision)], [Put("k", b"2")])
        assert (await store.get("k")).value == b"2"  # type: ignore[union-attr]
        await store.txn([], [Delete("k")])
        assert await store.get("k") is None
    finally:
        await store.close()
    # A reopened store (empty memory) reads the same from the file.
    again = await SqliteStore.open(tmp_path / "s.db")
    try:
        assert await again.get("k") is None
    finally:
        await again.close()
