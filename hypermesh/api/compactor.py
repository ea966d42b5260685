"""Periodic compaction of the state engine's history.

Old revisions are what make watches resumable, but kept forever they grow the database
without bound. Like the Kubernetes API server (which compacts etcd every five minutes), the
server keeps a window of recent history: every `interval` seconds it compacts to the revision
that was current one interval ago, so any client that was connected within the last interval can
resume, and older resumptions get 410 Expired and relist.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from hypermesh.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompactionPolicy:
    interval: float = 300.0  # seconds between compactions
    min_history: int = 1000  # never compact the newest this-many revisions


class Compactor:
    def __init__(self, store: Store, policy: CompactionPolicy) -> None:
        self.store = store
        self.policy = policy
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="compactor")

    async def _run(self) -> None:
        previous = self.store.revision
        while True:
            await asyncio.sleep(self.policy.interval)
            target = min(previous, self.store.revision - self.policy.min_history)
            previous = self.store.revision
            if target > self.store.compact_revision:
                try:
                    await self.store.compact(target)
                    log.info("compacted history up to revision %d", target)
                except Exception:
                    log.exception("compaction to %d failed", target)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
