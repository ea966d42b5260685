"""Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection.

Several controller processes may run for availability, but two schedulers binding the same
Instance would fight, so exactly one acts. The Lease object is the lock: its holder renews
`renewTime` every `renew_interval` seconds; anyone may take it once `renewTime +
leaseDurationSeconds` has passed. Every write is a compare-and-swap on the Lease's
resourceVersion (a PUT carrying the version read), so two candidates that both see an expired
Lease cannot both win: the second PUT gets 409.

A leader that cannot renew steps down before its lease runs out (after `renew_deadline`,
shorter than the duration), so it has stopped acting before anyone else may start: the gap
between leaders is the price of never having two. That holds only if every renewal attempt is
cut off at the deadline, because a stalled connection fails by never answering. Expiry compares
the holder's `renewTime` with the candidate's clock, so clocks across machines must agree
(client-go instead times expiry from when it last saw the record change, which needs no such
agreement).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hypermesh.client.aio import AsyncClient
from hypermesh.client.errors import ApiError, ClientError
from hypermesh.client.resources import Resource

log = logging.getLogger(__name__)

LEASES = Resource(
    group="coordination.k8s.io",
    version="v1",
    kind="Lease",
    plural="leases",
    singular="lease",
    namespaced=True,
)


@dataclass(frozen=True)
class LeaderSettings:
    """Where the Lease lives and how fast leadership moves."""

    lease_name: str
    namespace: str = "hypermesh-system"
    identity: str = ""
    # 12 s, not client-go's 15 s: a candidate takes an expired Lease at its next retry, so a
    # dead leader is replaced at most duration + renew_interval after its last renewal, and
    # HyperMesh promises a takeover within 15 s.
    lease_duration: float = 12.0
    renew_interval: float = 2.0
    # A leader that has not renewed for this long steps down (default: 2/3 of the duration).
    renew_deadline: float | None = None
    # Give the Lease up when stopped cleanly, so a successor need not wait for it to expire.
    release_on_stop: bool = True


def format_micro_time(moment: datetime) -> str:
    """A Kubernetes MicroTime: `2026-11-27T03:00:00.123456Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_micro_time(text: str) -> datetime:
    """The inverse of `format_micro_time`; plain RFC 3339 seconds are accepted too."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def default_identity() -> str:
    """Host, process and a random suffix: unique even for two electors in one process."""
    return f"{os.uname().nodename}_{os.getpid()}_{uuid.uuid4().hex[:6]}"


class LeaderElector:
    """Campaigns for one Lease; `leading` is set while this process holds it."""

    def __init__(self, client: AsyncClient, settings: LeaderSettings) -> None:
        self.client = client
        self.settings = settings
        self.identity = settings.identity or default_identity()
        self.leading = asyncio.Event()
        self.following = asyncio.Event()
        self.following.set()
        self._last_renew = 0.0

    @property
    def renew_deadline(self) -> float:
        """Seconds without a successful renewal after which a leader steps down."""
        if self.settings.renew_deadline is not None:
            return self.settings.renew_deadline
        return self.settings.lease_duration * 2 / 3

    async def run(self) -> None:
        """Campaign and renew until cancelled; releases the Lease on the way out if leading."""
        loop = asyncio.get_running_loop()
        this = asyncio.current_task()
        try:
            while True:
                # Python 3.11's wait_for (the client uses it) can swallow a cancellation that
                # races with a response; the elector would then renew forever for a process
                # that has stopped acting. A cancellation asked of this task ends it here.
                if this is not None and this.cancelling():
                    raise asyncio.CancelledError
                # The Lease's renewTime is taken when the attempt starts, so the deadline
                # counts from there, and an attempt may not run past it: a stalled connection
                # raises nothing, and waiting on it would keep this process acting after its
                # Lease expired and another candidate took it.
                started = loop.time()
                budget = self.renew_deadline
                if self.leading.is_set():
                    budget = max(0.0, self._last_renew + self.renew_deadline - started)
                held: bool | None
                try:
                    held = await asyncio.wait_for(self._try_acquire_or_renew(), budget)
                except TimeoutError:
                    log.warning("lease %s: no answer in %.1f s", self.settings.lease_name, budget)
                    held = False if self.leading.is_set() else None  # the deadline has passed
                except ClientError as exc:
                    log.warning("lease %s: %s", self.settings.lease_name, exc)
                    held = None  # unknown: keep leading only until the renew deadline
                now = loop.time()
                if held:
                    self._last_renew = started
                    if not self.leading.is_set():
                        log.info("%s became leader of %s", self.identity, self.settings.lease_name)
                        self._set(True)
                elif self.leading.is_set() and (
                    held is False or now - self._last_renew >= self.renew_deadline
                ):
                    log.warning("%s lost lease %s; stepping down", self.identity, self.settings.lease_name)
                    self._set(False)
                await asyncio.sleep(self.settings.renew_interval)
        finally:
            was_leading = self.leading.is_set()
            self._set(False)
            if was_leading and self.settings.release_on_stop:
                # Bounded: a process told to stop must not hang on a server that does not
                # answer; an unreleased Lease only costs the successor its expiry.
                with contextlib.suppress(Exception):
                    await asyncio.shield(asyncio.wait_for(self._release(), self.renew_deadline))

    def _set(self, leading: bool) -> None:
        if leading:
            self.following.clear()
            self.leading.set()
        else:
            self.leading.clear()
            self.following.set()

    def _spec(self, *, acquire: bool, transitions: int, now: datetime) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.settings.lease_duration)),
            "renewTime": format_micro_time(now),
            "leaseTransitions": transitions,
        }
        if acquire:
            spec["acquireTime"] = format_micro_time(now)
        return spec

    async def _try_acquire_or_renew(self) -> bool:
        """True if this process holds the Lease after the call, False if another does."""
        name, namespace = self.settings.lease_name, self.settings.namespace
        now = datetime.now(UTC)
        try:
            lease = await self.client.get(LEASES, name, namespace)
        except ApiError as exc:
            if exc.status != 404:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": name, "namespace": namespace},
                "spec": self._spec(acquire=True, transitions=0, now=now),
            }
            try:
                await self.client.create(LEASES, body, namespace)
            except ApiError as create_exc:
                if create_exc.status == 409:
                    return False  # another candidate created it first
                raise
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == self.identity:
            new_spec = {**spec, **self._spec(acquire=False, transitions=transitions, now=now)}
        elif not holder or self._expired(spec, now):
            new_spec = self._spec(acquire=True, transitions=transitions + 1, now=now)
        else:
            return False
        lease["spec"] = new_spec
        try:
            await self.client.replace(LEASES, lease)
        except ApiError as exc:
            if exc.status == 409:
                return False  # someone wrote the Lease since we read it
            raise
        return True

    @staticmethod
    def _expired(spec: dict[str, Any], now: datetime) -> bool:
        renew = spec.get("renewTime") or spec.get("acquireTime")
        if not renew:
            return True
        try:
            renewed = parse_micro_time(str(renew))
        except ValueError:
            return True
        duration = float(spec.get("leaseDurationSeconds") or 0)
        return (now - renewed).total_seconds() > duration

    async def _release(self) -> None:
        lease = await self.client.get(LEASES, self.settings.lease_name, self.settings.namespace)
        spec = lease.get("spec") or {}
        if spec.get("holderIdentity") != self.identity:
            return
        lease["spec"] = {
            **spec,
            "holderIdentity": None,
            "leaseDurationSeconds": 1,
            "renewTime": format_micro_time(datetime.now(UTC)),
        }
        await self.client.replace(LEASES, lease)
