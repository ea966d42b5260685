"""The controller framework: decorators in, converged objects out (kopf's surface,
controller-runtime's design).

```python
op = Operator(client, name="workloads")

@op.reconcile(WORKLOADS)
async def reconcile(obj, ctx):
    ...
    await ctx.report(obj, conditions=[("Ready", "True", "Converged", "")])
    return Result.done()

await op.run(stop_event)
```

`Operator` owns the pieces and their order: startup hooks run first; informers start and list
once; then, if this process leads (or leader election is off), every controller gets a fresh
queue seeded with all cached keys and its workers start. Losing the Lease stops the workers (the
informers keep the cache warm for a fast takeover); winning it again starts them afresh.

Configuration is one `Settings` object passed down, never global state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from hypermesh.client.aio import AsyncClient
from hypermesh.client.resources import Resource
from hypermesh.operator.conditions import get_condition, set_condition
from hypermesh.operator.controller import (
    Context,
    Controller,
    EventFilter,
    Handler,
    HandlerKind,
    Result,
)
from hypermesh.operator.events import EventRecorder
from hypermesh.operator.informer import Informer, Informers, InformerSettings
from hypermesh.operator.leader import LeaderElector, LeaderSettings
from hypermesh.operator.workqueue import Backoff, WorkQueue

log = logging.getLogger(__name__)

StartupHook = Callable[[AsyncClient], Awaitable[None]]


@dataclass(frozen=True)
class Settings:
    """Everything tunable about an operator; the defaults suit production."""

    informers: InformerSettings = field(default_factory=InformerSettings)
    backoff: Backoff = field(default_factory=Backoff)
    # None: no leader election (this process always acts).
    leader: LeaderSettings | None = None


class Operator:
    """A set of handlers over shared informers, run together under one (optional) Lease."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        name: str,
        namespace: str | None = None,
        concurrency: int = 4,
        settings: Settings | None = None,
        informers: Informers | None = None,
    ) -> None:
        self.client = client
        self.name = name
        self.namespace = namespace
        self.concurrency = concurrency
        self.settings = settings or Settings()
        # Pass one `Informers` to several operators of a process to share their watches.
        self.informers = informers or Informers(client, self.settings.informers)
        self.recorder = EventRecorder(client, name)
        self.controllers: list[Controller] = []
        self.elector = (
            LeaderElector(client, self.settings.leader) if self.settings.leader else None
        )
        self._startup: list[StartupHook] = []

    # Registration

    def informer(self, resource: Resource) -> Informer:
        """The shared informer (cache) of `resource` in this operator's namespace."""
        return self.informers.get(resource, self.namespace)

    def _register(
        self,
        kind: HandlerKind,
        resource: Resource,
        fn: Handler,
        *,
        finalizer: str | None = None,
        interval: float | None = None,
        deleting: bool = False,
        events: EventFilter | None = None,
    ) -> None:
        informer = self.informer(resource)
        context = Context(
            client=self.client,
            resource=resource,
            informer=informer,
            recorder=self.recorder,
            operator=self.name,
            logger=logging.getLogger(f"hypermesh.operator.{self.name}"),
        )
        self.controllers.append(
            Controller(
                kind=kind,
                resource=resource,
                handler=fn,
                informer=informer,
                context=context,
                concurrency=self.concurrency,
                backoff=self.settings.backoff,
                finalizer=finalizer,
                interval=interval,
                deleting=deleting,
                events=events,
            )
        )

    def reconcile(
        self, resource: Resource, *, deleting: bool = False, events: EventFilter | None = None
    ) -> Callable[[Handler], Handler]:
        """Register `async def fn(obj, ctx) -> Result | None` to converge each object;
        `deleting=True` also hands it objects that carry a deletionTimestamp. `events(type,
        obj)`, when given, says which informer events queue the key (a controller that reacts
        to most events itself saves the queue hop); explicit `queue.add` and the full resync
        when this process starts leading are not filtered."""

        def decorate(fn: Handler) -> Handler:
            self._register("reconcile", resource, fn, deleting=deleting, events=events)
            return fn

        return decorate

    def on_delete(
        self, resource: Resource, *, finalizer: str | None = None
    ) -> Callable[[Handler], Handler]:
        """Register cleanup run when an object is deleted, held back by a finalizer."""

        def decorate(fn: Handler) -> Handler:
            self._register(
                "delete", resource, fn, finalizer=finalizer or f"hypermesh.io/{self.name}"
            )
            return fn

        return decorate

    def timer(self, resource: Resource, interval: float) -> Callable[[Handler], Handler]:
        """Register `fn(obj, ctx)` to run every `interval` seconds for each live object."""

        def decorate(fn: Handler) -> Handler:
            self._register("timer", resource, fn, interval=interval)
            return fn

        return decorate

    def on_startup(self, fn: StartupHook) -> StartupHook:
        """Register `async def fn(client)` to run once before anything else."""
        self._startup.append(fn)
        return fn

    # Running

    @property
    def leading(self) -> bool:
        """Whether this process acts now."""
        return self.elector is None or self.elector.leading.is_set()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set (or the task is cancelled)."""
        for hook in self._startup:
            await hook(self.client)
        self.informers.start()
        elector_task = asyncio.create_task(self.elector.run()) if self.elector else None
        try:
            await self.informers.wait_synced()
            while not stop.is_set():
                if self.elector is not None:
                    if not await _first(self.elector.leading.wait(), stop.wait()):
                        break
                    await self._act(_first(self.elector.following.wait(), stop.wait()))
                else:
                    await self._act(stop.wait())
        finally:
            if elector_task is not None:
                elector_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await elector_task
            await self.informers.stop()

    async def _act(self, until: Awaitable[object]) -> None:
        """Run every controller's workers until `until` completes."""
        queues: list[WorkQueue] = [c.new_queue() for c in self.controllers]
        workers = [asyncio.create_task(q.run(), name=q.name) for q in queues]
        try:
            await until
        finally:
            for controller in self.controllers:
                controller.drop_queue()
            for worker in workers:
                worker.cancel()
            for worker in workers:
                with contextlib.suppress(asyncio.CancelledError):
                    await worker


async def _first(leading: Awaitable[object], stop: Awaitable[object]) -> bool:
    """Wait for whichever comes first; True if it was `leading`."""
    a = asyncio.ensure_future(leading)
    b = asyncio.ensure_future(stop)
    try:
        done, _ = await asyncio.wait({a, b}, return_when=asyncio.FIRST_COMPLETED)
        return a in done
    finally:
        for task in (a, b):
            task.cancel()


__all__ = [
    "Backoff",
    "Context",
    "EventRecorder",
    "Informer",
    "InformerSettings",
    "Informers",
    "LeaderElector",
    "LeaderSettings",
    "Operator",
    "Result",
    "Settings",
    "WorkQueue",
    "get_condition",
    "set_condition",
]
