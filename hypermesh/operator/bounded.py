"""Running many awaitables with a bounded number in flight.

Controllers create and delete objects in bursts (a Workload of 1,000 replicas, the Instances of
a dead node). Waves of fixed size (`gather` 32, then the next 32) leave the pipe empty while the
slowest of each wave finishes; a fixed pool of workers pulling from one iterator keeps exactly
`concurrency` requests in flight and never makes thousands of pending tasks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


async def gather_bounded(
    items: Iterable[T], fn: Callable[[T], Awaitable[None]], concurrency: int
) -> None:
    """Run `fn` over `items` with at most `concurrency` in flight; the first error propagates
    once every worker has stopped taking new items."""
    iterator = iter(items)

    async def worker() -> None:
        for item in iterator:
            await fn(item)

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))


async def run_bounded(jobs: Iterable[Awaitable[None]], concurrency: int) -> None:
    """Await already-made awaitables, at most `concurrency` at a time."""
    await gather_bounded(jobs, _identity, concurrency)


def _identity(job: Awaitable[None]) -> Awaitable[None]:
    return job
