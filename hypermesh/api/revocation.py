"""Revoked client certificates: refused at every request, their open connections closed.

The revocation list is the set of CertificateRevocation objects (`hypermesh.resources.
certificaterevocation` says why one object per serial). `RevocationList` keeps the API server's
copy of it in memory, following the kind through the watch cache exactly as `authz.PolicySource`
follows RBAC, so a revocation written through any API server sharing the store is in force here
within the watch's latency (milliseconds), far inside the 5 s the cluster promises.

Two consequences for a revoked certificate, whichever listener it came in on:

- every request whose identity carries its serial is answered 401 with a message naming the
  serial (`check`, called by the app right after authentication, before authorisation);
- the listeners are told which serials became revoked (`on_revoked`), so the TCP listener can
  close the connections those certificates hold, which ends their watches and log streams; the
  HTTP/3 listener takes the same callback (see the daemon).

A serial is a random 159-bit number, so revoking one from another CA refuses nothing of ours.
Identities without a serial (the in-process controllers, bootstrap tokens) are never refused
here: there is no certificate to revoke.

Entries outlive their use once the certificate has expired (TLS refuses it anyway), so a sweep
every ten minutes deletes those whose `spec.notAfter` is more than an hour past.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Iterable
from typing import Any

from hypermesh.ages import parse_timestamp
from hypermesh.api import errors
from hypermesh.api.periodic import Periodic
from hypermesh.api.storage import ObjectStorage
from hypermesh.api.watchcache import CachedEvent, WatchCache
from hypermesh.pki.identity import Identity
from hypermesh.resources.certificaterevocation import RevokedSerials, serial_hex
from hypermesh.resources.registry import Registry, ResourceType

log = logging.getLogger(__name__)

GROUP = "hypermesh.io"
PLURAL = "certificaterevocations"
# An entry is removed this long after the certificate it revokes expired.
PRUNE_AFTER = 3600.0
SWEEP_INTERVAL = 600.0

# Told the serials that have just become revoked (called on the event loop, must not block);
# what it returns is ignored.
RevokedCallback = Callable[[frozenset[int]], object]


class RevocationList:
    """The revoked serials, kept in step with the stored CertificateRevocations."""

    def __init__(
        self,
        storage: ObjectStorage,
        registry: Registry,
        watchcache: WatchCache,
        *,
        prune_after: float = PRUNE_AFTER,
        sweep_interval: float = SWEEP_INTERVAL,
    ) -> None:
        self.storage = storage
        self.registry = registry
        self.watchcache = watchcache
        self.prune_after = prune_after
        self.serials = RevokedSerials()
        self._callbacks: list[RevokedCallback] = []
        self._tracker: asyncio.Task[None] | None = None
        self._sweeper = Periodic("revocation-expiry", sweep_interval, self._sweep_now)

    def rtype(self) -> ResourceType:
        rtype = self.registry.by_plural(GROUP, "v1", PLURAL)
        assert rtype is not None, "the CertificateRevocation CRD is installed at start"
        return rtype

    # Answering

    def is_revoked(self, serial: int | None) -> bool:
        """Whether the certificate with this serial is revoked (the listeners' question)."""
        return self.serials.is_revoked(serial)

    def check(self, identity: Identity | None) -> None:
        """Raise 401 when `identity` comes from a revoked certificate."""
        if identity is None or not self.serials.is_revoked(identity.serial):
            return
        assert identity.serial is not None
        serial = serial_hex(identity.serial)
        name = self.serials.name_of(identity.serial) or serial
        raise errors.ApiError(
            401, "Unauthorized",
            f'Unauthorized: the client certificate of user "{identity.user}" (serial {serial}) '
            f"has been revoked (certificaterevocation/{name}); ask an administrator for a new one",
        )  # fmt: skip

    def on_revoked(self, callback: RevokedCallback) -> None:
        """Call `callback(serials)` whenever serials become revoked (to close connections)."""
        self._callbacks.append(callback)

    # Following the stored list

    async def start(self) -> None:
        """Load the list, then follow it; start the sweep of expired entries."""
        page = await self.storage.list(self.rtype(), None)
        self._replace(page.items)
        self._tracker = asyncio.get_running_loop().create_task(self._track(), name="revocation-tracker")
        self._sweeper.start()

    async def stop(self) -> None:
        await self._sweeper.stop()
        if self._tracker is not None:
            self._tracker.cancel()
            try:
                await self._tracker
            except asyncio.CancelledError:
                pass
            self._tracker = None

    async def _track(self) -> None:
        rtype = self.rtype()
        while True:
            cache = self.watchcache.for_type(rtype)
            subscription = cache.subscribe(lambda obj: True, None)
            assert subscription is not None
            watcher, _, revision = subscription
            try:
                page = await self.storage.list(rtype, None, revision=revision)
                self._replace(page.items)
                while not watcher.closed or watcher.items:
                    await watcher.wait(60.0)
                    while watcher.items:
                        item = watcher.items.popleft()
                        if isinstance(item, CachedEvent):
                            self._announce(self.serials.apply(item.type, item.obj))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("following certificate revocations failed; restarting")
                await asyncio.sleep(0.5)
            finally:
                cache.unsubscribe(watcher)

    def _replace(self, objects: Iterable[dict[str, Any]]) -> None:
        self._announce(self.serials.replace(objects))

    def _announce(self, revoked: frozenset[int]) -> None:
        if not revoked:
            return
        log.info("certificates revoked: serial %s", ", ".join(sorted(serial_hex(s) for s in revoked)))
        for callback in self._callbacks:
            try:
                callback(revoked)
            except Exception:
                log.exception("a revocation listener failed")

    # Forgetting expired entries

    async def _sweep_now(self) -> None:
        removed = await self.sweep(datetime.datetime.now(datetime.UTC))
        if removed:
            log.info("removed %d revocations of certificates expired over %.0fs ago", removed, self.prune_after)

    async def sweep(self, now: datetime.datetime) -> int:
        """Delete the entries whose certificate expired more than `prune_after` before `now`."""
        rtype = self.rtype()
        removed = 0
        for obj in (await self.storage.list(rtype, None)).items:
            not_after = parse_timestamp((obj.get("spec") or {}).get("notAfter"))
            if not_after is None or (now - not_after).total_seconds() <= self.prune_after:
                continue
            try:
                await self.storage.delete(rtype, obj, int(obj["metadata"]["resourceVersion"]))
                removed += 1
            except errors.ApiError:
                pass  # changed or gone meanwhile
        return removed
