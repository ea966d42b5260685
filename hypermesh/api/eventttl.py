"""Events expire: the API server deletes core v1 Events an hour after they last happened.

Controllers record an Event for every notable step (a scheduling failure, a scale-up, an
eviction), so a busy cluster makes thousands an hour; kept forever they would fill the state
engine and slow every list of Events. Kubernetes stores Events in etcd with a one-hour lease
(`--event-ttl`); HyperMesh has no leases in its store, so a sweep every few minutes deletes the
Events whose last occurrence is older than the TTL. An Event that recurs (a series, or a bumped
`count`) carries a fresh timestamp and lives on, as it would with a refreshed lease.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from hypermesh.ages import parse_timestamp
from hypermesh.api import errors
from hypermesh.api.periodic import Periodic
from hypermesh.api.storage import ObjectStorage
from hypermesh.resources.registry import Registry

log = logging.getLogger(__name__)

DEFAULT_TTL = 3600.0
# Events read per store page while sweeping.
_PAGE = 500


def last_seen(event: dict[str, Any]) -> datetime | None:
    """When the Event last happened: the latest of its timestamps (creation as the fallback)."""
    series = event.get("series")
    candidates = (
        event.get("lastTimestamp"),
        event.get("eventTime"),
        series.get("lastObservedTime") if isinstance(series, dict) else None,
        event.get("firstTimestamp"),
        (event.get("metadata") or {}).get("creationTimestamp"),
    )
    times = [t for t in (parse_timestamp(c) for c in candidates) if t is not None]
    return max(times) if times else None


def expired(event: dict[str, Any], now: datetime, ttl: float) -> bool:
    """Whether the Event's last occurrence is more than `ttl` seconds before `now`."""
    seen = last_seen(event)
    return seen is not None and (now - seen).total_seconds() > ttl


class EventExpiry:
    """Deletes expired Events every `interval` seconds (a tenth of the TTL, 1 s to 5 min)."""

    def __init__(self, storage: ObjectStorage, registry: Registry, ttl: float = DEFAULT_TTL) -> None:
        self.storage = storage
        self.registry = registry
        self.ttl = ttl
        self.interval = min(300.0, max(1.0, ttl / 10))
        self._periodic = Periodic("event-expiry", self.interval, self._sweep_now)

    def start(self) -> None:
        if self.ttl > 0:
            self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def _sweep_now(self) -> None:
        removed = await self.sweep(datetime.now(UTC))
        if removed:
            log.info("deleted %d expired events (older than %.0fs)", removed, self.ttl)

    async def sweep(self, now: datetime) -> int:
        """Delete every Event expired at `now`; returns how many went."""
        rtype = self.registry.by_plural("", "v1", "events")
        if rtype is None:
            return 0
        removed = 0
        token: str | None = None
        while True:
            page = await self.storage.list(rtype, None, limit=_PAGE, continue_token=token)
            for event in page.items:
                if not expired(event, now, self.ttl):
                    continue
                try:
                    await self.storage.delete(rtype, event, int(event["metadata"]["resourceVersion"]))
                    removed += 1
                except errors.ApiError:
                    pass  # changed (and so refreshed) or gone meanwhile
            token = page.continue_token
            if not token:
                return removed
