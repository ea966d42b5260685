"""The work queue's promises: dedupe, one run per key at a time, per-key backoff, delays, bounds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable

import pytest

from hypermesh.operator.workqueue import Backoff, WorkQueue


@contextlib.asynccontextmanager
async def running(queue: WorkQueue) -> AsyncIterator[WorkQueue]:
    task = asyncio.create_task(queue.run())
    try:
        yield queue
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def recorder(
    delay: float = 0.0,
) -> tuple[list[Hashable], Callable[[Hashable], Awaitable[float | None]]]:
    calls: list[Hashable] = []

    async def handler(key: Hashable) -> float | None:
        calls.append(key)
        if delay:
            await asyncio.sleep(delay)
        return None

    return calls, handler


async def test_dedupes_keys_added_before_they_run() -> None:
    calls, handler = recorder()
    queue = WorkQueue(handler, concurrency=2)
    for _ in range(10):
        queue.add("a")
    queue.add("b")
    async with running(queue):
        await until(lambda: len(calls) >= 2)
        await asyncio.sleep(0.05)
    assert sorted(calls) == ["a", "b"]  # type: ignore[type-var]


async def test_never_runs_one_key_concurrently_and_reruns_after() -> None:
    active: set[Hashable] = set()
    overlaps = 0
    runs = 0

    async def handler(key: Hashable) -> float | None:
        nonlocal overlaps, runs
        if key in active:
            overlaps += 1
        active.add(key)
        runs += 1
        await asyncio.sleep(0.05)
        active.discard(key)
        return None

    queue = WorkQueue(handler, concurrency=4)
    async with running(queue):
        queue.add("k")
        await until(lambda: "k" in queue.running)
        # Added while running: must run again, after, and only once more.
        queue.add("k")
        queue.add("k")
        await until(lambda: runs == 2)
        await asyncio.sleep(0.1)
    assert overlaps == 0
    assert runs == 2


async def test_backoff_grows_per_failure_and_resets_on_success() -> None:
    times: list[float] = []
    outcomes = [False, False, False, True, False, True]

    async def handler(key: Hashable) -> float | None:
        times.append(asyncio.get_running_loop().time())
        ok = outcomes[len(times) - 1]
        if not ok:
            raise RuntimeError("boom")
        return None

    queue = WorkQueue(handler, backoff=Backoff(base=0.05, cap=30.0))
    async with running(queue):
        queue.add("k")
        await until(lambda: len(times) == 4)
        assert queue.failures("k") == 0  # reset by the success
        queue.add("k")
        await until(lambda: len(times) == 6)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # Three failures: waits of 0.05, 0.1, 0.2 s.
    assert 0.04 <= gaps[0] < 0.09
    assert 0.09 <= gaps[1] < 0.16
    assert 0.19 <= gaps[2] < 0.3
    # After the reset, the first failure waits the base again.
    assert 0.04 <= gaps[4] < 0.09


def test_backoff_is_capped() -> None:
    backoff = Backoff(base=0.05, cap=30.0)
    assert [backoff.delay(n) for n in (1, 2, 3)] == [0.05, 0.1, 0.2]
    assert backoff.delay(50) == 30.0


async def test_delayed_add_and_earliest_deadline_wins() -> None:
    calls, handler = recorder()
    queue = WorkQueue(handler)
    async with running(queue):
        start = asyncio.get_running_loop().time()
        queue.add("late", delay=0.2)
        await asyncio.sleep(0.1)
        assert calls == []
        await until(lambda: calls == ["late"])
        assert asyncio.get_running_loop().time() - start >= 0.19
        # A later deadline does not postpone an earlier one; an immediate add wins over both.
        queue.add("x", delay=0.1)
        queue.add("x", delay=5.0)
        await until(lambda: calls.count("x") == 1, timeout=1.0)
        queue.add("y", delay=5.0)
        queue.add("y")
        await until(lambda: "y" in calls, timeout=1.0)


async def test_requeue_after_from_the_handler() -> None:
    times: list[float] = []

    async def handler(key: Hashable) -> float | None:
        times.append(asyncio.get_running_loop().time())
        return 0.1 if len(times) < 3 else None

    queue = WorkQueue(handler)
    async with running(queue):
        queue.add("k")
        await until(lambda: len(times) == 3)
    assert all(b - a >= 0.09 for a, b in zip(times, times[1:], strict=False))


async def test_concurrency_is_bounded() -> None:
    active = 0
    peak = 0
    done = 0

    async def handler(key: Hashable) -> float | None:
        nonlocal active, peak, done
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.02)
        active -= 1
        done += 1
        return None

    queue = WorkQueue(handler, concurrency=3)
    for i in range(20):
        queue.add(i)
    async with running(queue):
        await until(lambda: done == 20)
    assert peak == 3


def test_concurrency_must_be_positive() -> None:
    async def handler(key: Hashable) -> float | None:
        return None

    with pytest.raises(ValueError):
        WorkQueue(handler, concurrency=0)
