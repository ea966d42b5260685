"""The contract every state engine backend keeps, run against each of them.

The API server relies on these behaviours without knowing the backend: one revision per writing
transaction, compare-and-swap on mod_revision, reads at past revisions, watches without gaps or
duplicates, compaction, snapshots. Every test here runs on `MemoryStore` and on `SqliteStore`
(in tmp_path); a hypothesis test then drives both with the same random operations and demands
identical answers, so the in-memory test double can never drift from the durable engine.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypermesh import store as store_pkg
from hypermesh.store import (
    CompactedError,
    Compare,
    Delete,
    Event,
    FutureRevisionError,
    KeyValue,
    MemoryStore,
    Put,
    SqliteStore,
    Store,
    StoreClosedError,
    StoreError,
    StoreFormatError,
    WatchBatch,
    WatchOverflowError,
)

StoreFactory = Callable[..., Awaitable[Store]]


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def open_store(backend: str, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Opens stores of the backend under test (keyword options go to the constructor)."""
    stores: list[Store] = []

    async def factory(**options: Any) -> Store:
        if backend == "memory":
            opened: Store = MemoryStore(**options)
        else:
            opened = await SqliteStore.open(
                tmp_path / f"store{len(stores)}" / "state.db", **options
            )
        stores.append(opened)
        return opened

    yield factory
    for opened in stores:
        await opened.close()


@pytest.fixture
async def store(open_store: StoreFactory) -> Store:
    return await open_store()


async def next_batch(watch: AsyncIterator[WatchBatch], timeout: float = 5.0) -> WatchBatch:
    return await asyncio.wait_for(anext(watch), timeout)


async def collect(
    watch: AsyncIterator[WatchBatch], until: int, timeout: float = 10.0
) -> list[Event]:
    """Events from `watch` until a batch reaches revision `until`."""
    events: list[Event] = []
    async with asyncio.timeout(timeout):
        async for batch in watch:
            events.extend(batch.events)
            if batch.revision >= until:
                return events
    return events


def revisions_of(events: list[Event]) -> list[int]:
    return [event.kv.mod_revision for event in events]


# Revisions.


async def test_revision_advances_once_per_writing_txn(store: Store) -> None:
    assert store.revision == 0
    assert await store.put("/r/a", b"1") == 1
    result = await store.txn([], [Put("/r/b", b"2"), Put("/r/c", b"3"), Delete("/r/a")])
    assert result.succeeded and result.revision == 2 == store.revision
    # A failed compare with an empty failure branch writes nothing.
    result = await store.txn([Compare("/r/b", 99)], [Put("/r/b", b"x")])
    assert not result.succeeded and result.revision == 2
    # Deleting an absent key changes nothing, so it takes no revision.
    assert await store.delete("/r/absent") == 2
    # The failure branch writes, so it takes one.
    result = await store.txn([Compare("/r/b", 99)], [], [Put("/r/d", b"4")])
    assert not result.succeeded and result.revision == 3
    assert (await store.get("/r/d")) == KeyValue("/r/d", b"4", 3, 3, 1)


async def test_versions_and_create_revision(store: Store) -> None:
    await store.put("/v/k", b"a")
    await store.put("/v/k", b"b")
    assert await store.get("/v/k") == KeyValue("/v/k", b"b", 1, 2, 2)
    await store.delete("/v/k")
    assert await store.get("/v/k") is None
    await store.put("/v/k", b"c")
    # A delete resets the version; the key is created anew.
    assert await store.get("/v/k") == KeyValue("/v/k", b"c", 4, 4, 1)
    assert await store.get("/v/k", revision=2) == KeyValue("/v/k", b"b", 1, 2, 2)
    assert await store.get("/v/k", revision=3) is None


# Ranges.


async def test_range_isolates_prefixes(store: Store) -> None:
    for key in ["/a", "/a/1", "/a/2", "/ab/1", "/a0", "/b/1"]:
        await store.put(key, key.encode())
    keys = [kv.key for kv in (await store.range("/a/")).kvs]
    assert keys == ["/a/1", "/a/2"]
    assert [kv.key for kv in (await store.range("/ab/")).kvs] == ["/ab/1"]
    assert [kv.key for kv in (await store.range("/a")).kvs] == [
        "/a",
        "/a/1",
        "/a/2",
        "/a0",
        "/ab/1",
    ]
    everything = await store.range("")
    assert everything.count == 6 and len(everything.kvs) == 6 and not everything.more
    assert everything.revision == store.revision
    assert (await store.range("/c/")).kvs == []


async def test_range_pagination(store: Store) -> None:
    keys = [f"/p/{i:02d}" for i in range(10)]
    await store.txn([], [Put(key, b"v") for key in reversed(keys)])
    await store.put("/q/outside", b"v")
    seen: list[str] = []
    start_after: str | None = None
    while True:
        page = await store.range("/p/", start_after=start_after, limit=3)
        assert page.count == (10 if start_after is None else -1)
        seen.extend(kv.key for kv in page.kvs)
        if not page.more:
            break
        assert len(page.kvs) == 3
        start_after = page.kvs[-1].key
    assert seen == keys
    # A limit that exactly fits is not "more".
    exact = await store.range("/p/", start_after="/p/06", limit=3)
    assert [kv.key for kv in exact.kvs] == ["/p/07", "/p/08", "/p/09"] and not exact.more
    with pytest.raises(ValueError):
        await store.range("/p/", limit=-1)


async def test_range_at_past_revisions(store: Store) -> None:
    history: dict[int, list[KeyValue]] = {}
    ops: list[Any] = [
        Put("/h/a", b"1"),
        Put("/h/b", b"1"),
        Put("/h/a", b"2"),
        Delete("/h/b"),
        Put("/h/c", b"1"),
        Put("/h/b", b"2"),
        Delete("/h/a"),
    ]
    for op in ops:
        await store.txn([], [op])
        history[store.revision] = (await store.range("/h/")).kvs
    for revision, kvs in history.items():
        past = await store.range("/h/", revision=revision)
        assert past.kvs == kvs and past.revision == revision and past.count == len(kvs)
        for kv in kvs:
            assert await store.get(kv.key, revision=revision) == kv
    page = await store.range("/h/", revision=3, start_after="/h/a", limit=1)
    assert [kv.key for kv in page.kvs] == ["/h/b"] and not page.more and page.count == -1
    with pytest.raises(FutureRevisionError):
        await store.range("/h/", revision=store.revision + 1)
    with pytest.raises(FutureRevisionError):
        await store.get("/h/a", revision=store.revision + 1)


async def test_compaction_forgets_only_the_old(store: Store) -> None:
    states: dict[int, list[KeyValue]] = {}
    for i in range(12):
        key = f"/c/{i % 3}"
        if i % 4 == 3:
            await store.delete(key)
        else:
            await store.put(key, str(i).encode())
        states[store.revision] = (await store.range("/c/")).kvs
    await store.compact(6)
    assert store.compact_revision == 6
    with pytest.raises(CompactedError) as caught:
        await store.range("/c/", revision=5)
    assert caught.value.revision == 5 and caught.value.compact_revision == 6
    with pytest.raises(CompactedError):
        await store.get("/c/0", revision=1)
    # Every revision from the compact revision on reads exactly as before.
    for revision, kvs in states.items():
        if revision >= 6:
            assert (await store.range("/c/", revision=revision)).kvs == kvs
            for i in range(3):
                expected = next((kv for kv in kvs if kv.key == f"/c/{i}"), None)
                assert await store.get(f"/c/{i}", revision=revision) == expected
    # Compacting again below or at the mark changes nothing; past the head is an error.
    await store.compact(3)
    assert store.compact_revision == 6
    with pytest.raises(FutureRevisionError):
        await store.compact(store.revision + 1)
    await store.compact(store.revision)
    assert (await store.range("/c/")).kvs == states[store.revision]


# Transactions.


async def test_create_if_absent(store: Store) -> None:
    created = await store.txn([Compare("/t/k", 0)], [Put("/t/k", b"first")])
    assert created.succeeded and created.prev == (None,) and created.current == ()
    again = await store.txn([Compare("/t/k", 0)], [Put("/t/k", b"second")])
    assert not again.succeeded and again.revision == created.revision
    assert again.current == (KeyValue("/t/k", b"first", 1, 1, 1),)
    assert again.prev == ()
    assert (await store.get("/t/k")) == KeyValue("/t/k", b"first", 1, 1, 1)


async def test_compare_and_swap(store: Store) -> None:
    rev = await store.put("/t/cas", b"v1")
    other = await store.put("/t/other", b"o")
    swapped = await store.txn(
        [Compare("/t/cas", rev), Compare("/t/other", other)],
        [Put("/t/cas", b"v2"), Delete("/t/other"), Put("/t/new", b"n")],
        [Put("/t/failed", b"x")],
    )
    assert swapped.succeeded
    assert swapped.prev == (
        KeyValue("/t/cas", b"v1", 1, 1, 1),
        KeyValue("/t/other", b"o", 2, 2, 1),
        None,
    )
    stale = await store.txn(
        [Compare("/t/cas", rev)], [Put("/t/cas", b"v3")], [Put("/t/failed", b"x")]
    )
    assert not stale.succeeded and stale.revision == swapped.revision + 1
    assert stale.current == (KeyValue("/t/cas", b"v2", 1, 3, 2),)
    assert stale.prev == (None,)
    assert (await store.get("/t/cas")).value == b"v2"  # type: ignore[union-attr]
    assert (await store.get("/t/failed")).value == b"x"  # type: ignore[union-attr]
    # The other compare operators, against mod_revision 3 of /t/cas.
    checks: list[tuple[Literal["=", "!=", "<", ">"], int, bool]] = [
        ("!=", 3, False),
        ("!=", 2, True),
        ("<", 4, True),
        ("<", 3, False),
        (">", 2, True),
        (">", 3, False),
        ("=", 3, True),
    ]
    for op, target, holds in checks:
        result = await store.txn([Compare("/t/cas", target, op)], [])
        assert result.succeeded is holds, (op, target)
    # An absent key has mod_revision 0.
    assert (await store.txn([Compare("/t/absent", 1, "<")], [])).succeeded


async def test_malformed_txns_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="twice"):
        await store.txn([], [Put("/m/a", b"1"), Delete("/m/a")])
    with pytest.raises(TypeError, match="bytes"):
        await store.txn([], [Put("/m/a", "text")])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        await store.txn([], [Put("", b"1")])
    with pytest.raises(ValueError, match="op"):
        await store.txn([Compare("/m/a", 0, "~")], [])  # type: ignore[arg-type]
    assert store.revision == 0


async def test_concurrent_cas_increments_are_never_lost(store: Store) -> None:
    await store.put("/race/counter", b"0")

    async def increment() -> int:
        attempts = 0
        while True:
            attempts += 1
            current = await store.get("/race/counter")
            assert current is not None
            value = int(current.value) + 1
            result = await store.txn(
                [Compare("/race/counter", current.mod_revision)],
                [Put("/race/counter", str(value).encode())],
            )
            if result.succeeded:
                return attempts

    attempts = await asyncio.gather(*(increment() for _ in range(50)))
    final = await store.get("/race/counter")
    assert final is not None and final.value == b"50" and final.version == 51
    assert max(attempts) > 1  # the tasks really raced


async def test_concurrent_creates_have_one_winner(store: Store) -> None:
    async def create(index: int) -> tuple[int, bool, tuple[KeyValue | None, ...]]:
        result = await store.txn(
            [Compare("/race/leader", 0)], [Put("/race/leader", str(index).encode())]
        )
        return index, result.succeeded, result.current

    outcomes = await asyncio.gather(*(create(i) for i in range(20)))
    winners = [index for index, won, _ in outcomes if won]
    assert len(winners) == 1
    leader = await store.get("/race/leader")
    assert leader is not None and leader.value == str(winners[0]).encode()
    for _, won, current in outcomes:
        if not won:
            assert current == (leader,)


# Watches.


async def test_watch_delivers_prefix_in_order(store: Store) -> None:
    watch = store.watch("/w/")
    await store.put("/w/a", b"1")
    await store.put("/x/a", b"ignored")
    await store.put("/wx", b"ignored")
    await store.txn([], [Put("/w/c", b"1"), Put("/w/b", b"1")])
    await store.put("/w/a", b"2")
    last = await store.delete("/w/a")
    events = await collect(watch, last)
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in events] == [
        ("PUT", "/w/a", 1),
        ("PUT", "/w/b", 4),
        ("PUT", "/w/c", 4),
        ("PUT", "/w/a", 5),
        ("DELETE", "/w/a", 6),
    ]
    assert events[3].prev == KeyValue("/w/a", b"1", 1, 1, 1)
    # A delete carries the last value in `prev`; its kv holds only the key and the revision.
    assert events[4].prev == KeyValue("/w/a", b"2", 1, 5, 2)
    assert events[4].kv == KeyValue("/w/a", b"", 0, 6, 0)
    await watch.aclose()  # type: ignore[attr-defined]


async def test_watch_from_past_revision_replays_then_goes_live(store: Store) -> None:
    for i in range(5):
        await store.put(f"/w/{i}", b"old")
    await store.delete("/w/1")
    watch = store.watch("/w/", start_revision=3)
    head = store.revision
    await store.put("/w/live", b"new")
    events = await collect(watch, head + 1)
    assert [(e.type, e.kv.key) for e in events] == [
        ("PUT", "/w/2"),
        ("PUT", "/w/3"),
        ("PUT", "/w/4"),
        ("DELETE", "/w/1"),
        ("PUT", "/w/live"),
    ]
    assert events[3].prev == KeyValue("/w/1", b"old", 2, 2, 1)
    assert revisions_of(events) == [3, 4, 5, 6, 7]


async def test_watch_started_during_write_storm_has_no_gap_or_duplicate(store: Store) -> None:
    reference = store.watch("/s/")
    writers, per_writer = 8, 40
    started: list[tuple[int, AsyncIterator[WatchBatch]]] = []

    async def writer(index: int) -> None:
        for n in range(per_writer):
            await store.put(f"/s/{index}/{n}", b"v")
            await store.put("/elsewhere", b"v")

    async def open_watches() -> None:
        # Open watches at moments spread over the storm, from the past and from now.
        for _ in range(6):
            await asyncio.sleep(0.005)
            start = max(1, store.revision - 7)
            started.append((start, store.watch("/s/", start_revision=start)))
            started.append((store.revision + 1, store.watch("/s/")))

    await asyncio.gather(open_watches(), *(writer(i) for i in range(writers)))
    last = await store.put("/s/end", b"v")
    expected = await collect(reference, last)
    assert len(expected) == writers * per_writer + 1
    assert revisions_of(expected) == sorted(revisions_of(expected))
    for start, watch in started:
        events = await collect(watch, last)
        wanted = [e for e in expected if e.kv.mod_revision >= start]
        assert events == wanted, f"watch from {start}"


async def test_watch_from_compacted_revision_fails_on_first_iteration(store: Store) -> None:
    for i in range(5):
        await store.put("/k", str(i).encode())
    await store.compact(3)
    watch = store.watch("", start_revision=2)
    with pytest.raises(CompactedError):
        await next_batch(watch)
    # Starting just after the compact revision is still complete.
    events = await collect(store.watch("", start_revision=4), 5)
    assert revisions_of(events) == [4, 5]
    assert events[0].prev == KeyValue("/k", b"2", 1, 3, 3)


async def test_slow_watcher_is_cut_off_without_holding_others(open_store: StoreFactory) -> None:
    store = await open_store(watch_queue_size=4)
    slow = store.watch("/o/")
    fast = store.watch("/o/")
    seen: list[Event] = []

    async def follow() -> None:
        async for batch in fast:
            seen.extend(batch.events)
            if batch.revision >= 20:
                return

    follower = asyncio.create_task(follow())
    for i in range(20):
        await store.put(f"/o/{i}", b"v")
    await asyncio.wait_for(follower, 5)
    assert revisions_of(seen) == list(range(1, 21))
    with pytest.raises(WatchOverflowError) as caught:
        async with asyncio.timeout(5):
            async for _ in slow:
                pass
    assert caught.value.revision == 0 and isinstance(caught.value, StoreError)


async def test_close_ends_watches_and_refuses_calls(store: Store) -> None:
    watch = store.watch("/z/")
    received: list[WatchBatch] = []

    async def consume() -> None:
        async for batch in watch:
            received.append(batch)

    consumer = asyncio.create_task(consume())
    await store.put("/z/a", b"1")
    await asyncio.sleep(0.05)
    await store.close()
    await asyncio.wait_for(consumer, 5)
    assert [e.kv.key for batch in received for e in batch.events] == ["/z/a"]
    with pytest.raises(StoreClosedError):
        await store.put("/z/b", b"2")
    with pytest.raises(StoreClosedError):
        await store.get("/z/a")
    with pytest.raises(StoreClosedError):
        await next_batch(store.watch("/z/"))
    await store.close()  # closing twice is harmless


async def test_close_finishes_pending_writes(store: Store) -> None:
    writes = [asyncio.create_task(store.put(f"/p/{i}", b"v")) for i in range(50)]
    await asyncio.sleep(0)
    await store.close()
    done = await asyncio.gather(*writes, return_exceptions=True)
    # Each write either happened completely or was refused as closed: nothing hangs.
    assert all(isinstance(r, (int, StoreClosedError)) for r in done)


# Snapshots, backup and restore.


async def test_snapshot_restores_into_an_equal_store(store: Store, tmp_path: Path) -> None:
    for i in range(30):
        await store.put(f"/snap/{i % 7}", str(i).encode())
        if i % 5 == 4:
            await store.delete(f"/snap/{i % 3}")
    await store.compact(10)
    # Writes going on during the snapshot are either wholly in it or wholly out.
    storm = asyncio.gather(*(store.put(f"/snap/live/{i}", b"v") for i in range(40)))
    revision = await store.snapshot(str(tmp_path / "snap.db"))
    await storm
    restored_path = tmp_path / "restored" / "state.db"
    assert store_pkg.restore(tmp_path / "snap.db", restored_path) == revision
    restored = await SqliteStore.open(restored_path)
    try:
        assert restored.revision == revision
        assert restored.compact_revision == 10
        for at in range(10, revision + 1):
            assert await restored.range("", revision=at) == await store.range("", revision=at)
        original = await collect(store.watch("", start_revision=11), revision)
        replayed = await collect(restored.watch("", start_revision=11), revision)
        assert replayed == [e for e in original if e.kv.mod_revision <= revision]
        # The restored store goes on from the snapshot's revision.
        assert await restored.put("/after", b"v") == revision + 1
    finally:
        await restored.close()


async def test_backup_and_restore_refuse_what_they_must(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    opened = await store_pkg.open_store(str(data_dir))
    await opened.put("/b/a", b"1")
    # Online: the store stays open (and locked) while it is backed up.
    assert await store_pkg.backup(data_dir, tmp_path / "backup.db") == 1
    with pytest.raises(StoreError, match="open"):
        store_pkg.restore(tmp_path / "backup.db", data_dir, force=True)
    await opened.close()
    with pytest.raises(FileExistsError, match="force"):
        store_pkg.restore(tmp_path / "backup.db", data_dir)
    assert store_pkg.restore(tmp_path / "backup.db", data_dir, force=True) == 1
    # Not a store at all, an SQLite file of something else, a missing file.
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreFormatError, match="not an SQLite database"):
        store_pkg.restore(tmp_path / "junk.db", tmp_path / "other")
    foreign = sqlite3.connect(tmp_path / "foreign.db")
    foreign.execute("CREATE TABLE t (x)")
    foreign.commit()
    foreign.close()
    with pytest.raises(StoreFormatError, match="no meta table"):
        store_pkg.restore(tmp_path / "foreign.db", tmp_path / "other")
    with pytest.raises(StoreFormatError, match="no meta table"):
        await store_pkg.backup(tmp_path / "foreign.db", tmp_path / "out.db")
    with pytest.raises(FileNotFoundError):
        await store_pkg.backup(tmp_path / "missing", tmp_path / "out.db")
    with pytest.raises(StoreFormatError):
        await SqliteStore.open(tmp_path / "foreign.db")
    reopened = await store_pkg.open_store(f"sqlite://{data_dir / 'state.db'}")
    try:
        assert (await reopened.get("/b/a")) == KeyValue("/b/a", b"1", 1, 1, 1)
    finally:
        await reopened.close()


async def test_open_store_urls(tmp_path: Path) -> None:
    memory = await store_pkg.open_store("memory://")
    assert isinstance(memory, MemoryStore)
    await memory.close()
    for url in ["sqlite://relative/state.db", "etcd://localhost:2379"]:
        with pytest.raises(ValueError):
            await store_pkg.open_store(url)


async def test_sqlite_reopen_resumes(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = await SqliteStore.open(path)
    await first.put("/k/a", b"1")
    await first.txn([], [Put("/k/b", b"2"), Put("/k/c", b"3")])
    await first.delete("/k/a")
    await first.compact(2)
    with pytest.raises(StoreError, match="open in another store"):
        await SqliteStore.open(path)
    await first.close()
    second = await SqliteStore.open(path)
    try:
        assert second.revision == 3 and second.compact_revision == 2
        assert [kv.key for kv in (await second.range("/k/")).kvs] == ["/k/b", "/k/c"]
        assert [kv.key for kv in (await second.range("/k/", revision=2)).kvs] == [
            "/k/a",
            "/k/b",
            "/k/c",
        ]
        assert await second.put("/k/d", b"4") == 4
        events = await collect(second.watch("/k/", start_revision=3), 4)
        assert [(e.type, e.kv.key) for e in events] == [("DELETE", "/k/a"), ("PUT", "/k/d")]
    finally:
        await second.close()


# Both backends agree on any sequence of operations.

KEYS = ["/a", "/a/1", "/a/2", "/ab/1", "/b/1", "/b/2"]
PREFIXES = ["", "/", "/a", "/a/", "/ab/", "/b/"]

keys = st.sampled_from(KEYS)
values = st.binary(max_size=4)
write_ops = st.one_of(
    st.builds(lambda k, v: ("put", k, v), keys, values),
    st.builds(lambda k: ("delete", k), keys),
)
compares = st.tuples(
    keys, st.one_of(st.just("current"), st.integers(0, 8)), st.sampled_from(["=", "!=", "<", ">"])
)
operations = st.lists(
    st.one_of(
        write_ops,
        write_ops,
        st.builds(
            lambda c, s, f: ("txn", c, s, f),
            st.lists(compares, max_size=2),
            st.lists(write_ops, max_size=3, unique_by=lambda op: op[1]),
            st.lists(write_ops, max_size=2, unique_by=lambda op: op[1]),
        ),
        st.builds(
            lambda p, a, lim, back: ("range", p, a, lim, back),
            st.sampled_from(PREFIXES),
            st.none() | keys,
            st.integers(0, 3),
            st.integers(0, 6),
        ),
        st.builds(lambda k, back: ("get", k, back), keys, st.integers(0, 6)),
        st.builds(lambda back: ("compact", back), st.integers(0, 6)),
    ),
    max_size=30,
)


def _op(spec: tuple[Any, ...]) -> Put | Delete:
    return Put(spec[1], spec[2]) if spec[0] == "put" else Delete(spec[1])


async def _apply(target: Store, spec: tuple[Any, ...], reference: Store) -> Any:
    """Run one generated operation; returns its result or the type and text of its error."""
    kind = spec[0]
    head = reference.revision
    try:
        if kind in ("put", "delete"):
            return await target.txn([], [_op(spec)])
        if kind == "txn":
            resolved = []
            for key, mod_revision, op in spec[1]:
                if mod_revision == "current":
                    current = await reference.get(key)
                    mod_revision = current.mod_revision if current else 0
                resolved.append(Compare(key, mod_revision, op))
            return await target.txn(resolved, [_op(s) for s in spec[2]], [_op(s) for s in spec[3]])
        if kind == "range":
            _, prefix, after, limit, back = spec
            revision = max(head - back, 0) if back else 0
            return await target.range(prefix, start_after=after, limit=limit, revision=revision)
        if kind == "get":
            return await target.get(spec[1], revision=max(head - spec[2], 0) if spec[2] else 0)
        await target.compact(max(head - spec[1], 0))
        return target.compact_revision
    except (CompactedError, FutureRevisionError) as exc:
        return (type(exc).__name__, str(exc))


async def _compare_backends(ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        memory_store = MemoryStore()
        sqlite_store = await SqliteStore.open(Path(tmp) / "state.db")
        try:
            for spec in ops:
                # The sqlite store runs first: `reference` answers from the state before the op.
                from_sqlite = await _apply(sqlite_store, spec, memory_store)
                from_memory = await _apply(memory_store, spec, memory_store)
                assert from_sqlite == from_memory, spec
                assert sqlite_store.revision == memory_store.revision
            assert sqlite_store.compact_revision == memory_store.compact_revision
            start = memory_store.compact_revision + 1
            if start <= memory_store.revision:
                head = memory_store.revision
                from_memory_watch = await collect(
                    memory_store.watch("", start_revision=start), head
                )
                from_sqlite_watch = await collect(
                    sqlite_store.watch("", start_revision=start), head
                )
                assert from_sqlite_watch == from_memory_watch
        finally:
            await sqlite_store.close()
            await memory_store.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_backends_agree_on_random_operations(ops: list[tuple[Any, ...]]) -> None:
    asyncio.run(_compare_backends(ops))


def test_backends_agree_on_a_long_random_run() -> None:
    rng = random.Random(7)
    ops: list[tuple[Any, ...]] = []
    for _ in range(400):
        roll = rng.random()
        key = rng.choice(KEYS)
        if roll < 0.45:
            ops.append(("put", key, rng.randbytes(3)))
        elif roll < 0.6:
            ops.append(("delete", key))
        elif roll < 0.75:
            ops.append(("txn", [(key, "current", "=")], [("put", key, b"cas")], [("delete", key)]))
        elif roll < 0.9:
            prefix = rng.choice(PREFIXES)
            after = rng.choice([None, key])
            ops.append(("range", prefix, after, rng.randint(0, 3), rng.randint(0, 40)))
        elif roll < 0.97:
            ops.append(("get", key, rng.randint(0, 40)))
        else:
            ops.append(("compact", rng.randint(0, 15)))
    asyncio.run(_compare_backends(ops))
