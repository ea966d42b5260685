"""Periodic compaction of the state engine's history.

Old revisions are what make watches resumable, but kept forever they grow the database
without bound. Like the Kubernetes API server (which compacts etcd every five minutes), the
server keeps a window of recent history: every `interval` seconds it compacts to the revision
that was current one interval ago, so any client that was connected within the last interval can
resume, and older resumptions get 410 Expired and relist.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from hypermesh.api.periodic import Periodic
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
        self._previous = store.revision
        self._periodic = Periodic("compactor", policy.interval, self._compact)

    def start(self) -> None:
        self._previous = self.store.revision
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def _compact(self) -> None:
        target = min(self._previous, self.store.revision - self.policy.min_history)
        self._previous = self.store.revision
        if target > self.store.compact_revision:
            await self.store.compact(target)
            log.info("compacted history up to revision %d", target)
