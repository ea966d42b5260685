"""The work queue between informer events and a reconciler, as client-go's workqueue.

Events are only hints that a key (`namespace/name`) may need work; reconcile reads the whole
object anyway. So the queue holds keys, not events, and a key queued ten times runs once. Three
rules keep reconcilers simple to write:

- a key is never processed twice at once: a key added while it runs is marked dirty and runs
  again after, so the second run sees the state the first one left;
- a failing key is retried with its own exponential backoff (base 0.05 s, doubled per failure,
  capped at 30 s, reset by one success), so one broken object neither spins nor slows others;
- at most `concurrency` keys run at once (that many worker tasks).

Delayed adds (`add(key, delay=...)`) keep the earliest deadline per key: a requeue in 60 s does
not postpone an event that wants the key now.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

log = logging.getLogger(__name__)

# What a handler returns: None when done, or seconds after which to run the key again.
Handler = Callable[[Hashable], Awaitable[float | None]]


@dataclass(frozen=True)
class Backoff:
    """Per-key retry delays: base * 2**(failures - 1), at most cap."""

    base: float = 0.05
    cap: float = 30.0

    def delay(self, failures: int) -> float:
        """The wait before retry number `failures` (1 for the first failure)."""
        return float(min(self.cap, self.base * (2 ** max(0, failures - 1))))


class WorkQueue:
    """Deduplicated keys, run by `concurrency` workers through one handler."""

    def __init__(
        self,
        handler: Handler,
        *,
        concurrency: int = 4,
        backoff: Backoff | None = None,
        name: str = "queue",
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.handler = handler
        self.concurrency = concurrency
        self.backoff = backoff or Backoff()
        self.name = name
        self._ready: asyncio.Queue[Hashable] = asyncio.Queue()
        # Keys waiting to run (in `_ready`, or waiting for their running copy to finish).
        self._dirty: set[Hashable] = set()
        self._running: set[Hashable] = set()
        self._delayed: dict[Hashable, asyncio.TimerHandle] = {}
        self._failures: dict[Hashable, int] = {}

    # Adding

    def add(self, key: Hashable, delay: float = 0.0) -> None:
        """Queue `key` now, or after `delay` seconds (the earliest pending deadline wins)."""
        if delay > 0:
            self._add_later(key, delay)
            return
        timer = self._delayed.pop(key, None)
        if timer is not None:
            timer.cancel()
        if key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._running:
            self._ready.put_nowait(key)

    def _add_later(self, key: Hashable, delay: float) -> None:
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        existing = self._delayed.get(key)
        if existing is not None:
            if existing.when() <= when:
                return
            existing.cancel()
        if key in self._dirty:
            return  # already due now
        self._delayed[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: Hashable) -> None:
        self._delayed.pop(key, None)
        self.add(key)

    # Introspection

    def failures(self, key: Hashable) -> int:
        """Consecutive failures of `key` (0 after a success)."""
        return self._failures.get(key, 0)

    def __len__(self) -> int:
        """Keys due now (dirty), not counting delayed ones."""
        return len(self._dirty)

    @property
    def running(self) -> frozenset[Hashable]:
        """Keys being processed right now."""
        return frozenset(self._running)

    # Working

    async def run(self) -> None:
        """Run the workers until cancelled; pending delayed adds are dropped on the way out."""
        workers = [
            asyncio.create_task(self._work(), name=f"{self.name}-worker-{i}")
            for i in range(self.concurrency)
        ]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()
            # Cancel again while any worker is still running (see `_work`).
            pending = set(workers)
            while pending:
                _, pending = await asyncio.wait(pending, timeout=1.0)
                for worker in pending:
                    worker.cancel()
            for timer in self._delayed.values():
                timer.cancel()
            self._delayed.clear()

    async def _work(self) -> None:
        this = asyncio.current_task()
        while True:
            # Python 3.11's asyncio.wait_for can swallow a cancellation that races with its
            # inner result (fixed in 3.12); a handler built on it may then return normally.
            # A cancellation requested of this worker still ends it here.
            if this is not None and this.cancelling():
                raise asyncio.CancelledError
            key = await self._ready.get()
            self._dirty.discard(key)
            self._running.add(key)
            try:
                requeue = await self.handler(key)
            except asyncio.CancelledError:
                raise
            except Exception:
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                delay = self.backoff.delay(failures)
                log.exception("%s: %s failed (attempt %d), retrying in %.2fs", self.name, key, failures, delay)
                self._add_later(key, delay)
            else:
                self._failures.pop(key, None)
                if requeue is not None:
                    self.add(key, max(requeue, 0.0))
            finally:
                self._running.discard(key)
                # Added while it ran: run it again now that this run is over.
                if key in self._dirty:
                    self._ready.put_nowait(key)
