"""One registered handler of one kind, driven by a work queue fed from a shared informer.

Reconcile is level-triggered: the handler gets the object as the cache has it now, not the
event that woke it, so a missed or merged event changes nothing. Three handler flavours share
this loop and differ only in what they do with the object:

- `reconcile`: converge; return `Result.requeue_after(s)` to look again later, raise to retry
  with backoff;
- `delete`: cleanup behind a finalizer. The framework adds the finalizer to every live object,
  so the server keeps a deleted object (with `deletionTimestamp`) until the handler has run;
  then the finalizer is removed and the object goes. Finalizers are added and removed
  explicitly, with the object's resourceVersion as a precondition;
- `timer`: run every `interval` seconds per live object.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Literal

from hypermesh.client.aio import AsyncClient
from hypermesh.client.errors import ApiError
from hypermesh.client.resources import Resource
from hypermesh.operator import conditions
from hypermesh.operator.conditions import ConditionStatus
from hypermesh.operator.events import EventRecorder, EventType
from hypermesh.operator.informer import Informer, split_key
from hypermesh.operator.workqueue import Backoff, WorkQueue

log = logging.getLogger(__name__)

HandlerKind = Literal["reconcile", "delete", "timer"]


@dataclass(frozen=True)
class Result:
    """What a reconcile asks for next: nothing, or another look after `delay` seconds."""

    delay: float | None = None

    @classmethod
    def done(cls) -> Result:
        """Converged; run again only when the object changes."""
        return cls(None)

    @classmethod
    def requeue_after(cls, seconds: float) -> Result:
        """Run again after `seconds` even if nothing changes (polling external state)."""
        return cls(float(seconds))


@dataclass
class Context:
    """What a handler may use besides the object: the client, the cache, events, progress."""

    client: AsyncClient
    resource: Resource
    informer: Informer
    recorder: EventRecorder
    operator: str
    logger: logging.Logger = field(default_factory=lambda: log)

    async def event(
        self, obj: dict[str, Any], reason: str, message: str, type: EventType = "Normal"
    ) -> None:
        """Record a core v1 Event about `obj`."""
        await self.recorder.record(obj, reason, message, type)

    async def report(
        self,
        obj: dict[str, Any],
        *,
        conditions: list[tuple[str, ConditionStatus, str, str]] | None = None,
        status: dict[str, Any] | None = None,
        update_times: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Write conditions (type, status, reason, message), observedGeneration and `status`;
        `update_times` gives conditions (by type) a lastUpdateTime."""
        return await _report(
            self.client,
            self.resource,
            obj,
            conditions=conditions or [],
            status=status,
            field_manager=self.operator,
            update_times=update_times,
        )


_report = conditions.report
Handler = Callable[[dict[str, Any], Context], Awaitable[Result | None]]
# Which informer events (type, object) should queue the object's key.
EventFilter = Callable[[str, dict[str, Any]], bool]


class Controller:
    """A handler, its queue and the informer that feeds it."""

    def __init__(
        self,
        *,
        kind: HandlerKind,
        resource: Resource,
        handler: Handler,
        informer: Informer,
        context: Context,
        concurrency: int,
        backoff: Backoff,
        finalizer: str | None = None,
        interval: float | None = None,
        deleting: bool = False,
        events: EventFilter | None = None,
    ) -> None:
        self.kind = kind
        self.events = events
        # A reconcile that also sees objects being deleted (the garbage collector acts on
        # other components' finalizers, which the framework's own `delete` flavour cannot).
        self.deleting = deleting
        self.resource = resource
        self.handler = handler
        self.informer = informer
        self.context = context
        self.concurrency = concurrency
        self.backoff = backoff
        self.finalizer = finalizer
        self.interval = interval
        self.queue: WorkQueue | None = None
        name = getattr(handler, "__name__", kind)
        self.name = f"{context.operator}/{resource.plural}/{name}"
        informer.subscribe(self._on_event)

    def _on_event(self, type_: str, obj: dict[str, Any]) -> None:
        if self.queue is not None and (self.events is None or self.events(type_, obj)):
            self.queue.add(_key(obj))

    def new_queue(self) -> WorkQueue:
        """A fresh queue holding every cached key (used when this process starts acting)."""
        self.queue = WorkQueue(
            self._process, concurrency=self.concurrency, backoff=self.backoff, name=self.name
        )
        for key in list(self.informer.cache):
            self.queue.add(key)
        return self.queue

    def drop_queue(self) -> None:
        """Stop feeding the queue (this process stopped acting)."""
        self.queue = None

    async def _process(self, key: Hashable) -> float | None:
        obj = self.informer.get_key(str(key))
        if obj is None:
            return None  # gone; cleanup, if any, already ran behind the finalizer
        deleting = bool(obj["metadata"].get("deletionTimestamp"))
        if self.kind == "delete":
            return await self._finalize(obj, deleting)
        if deleting and not self.deleting:
            return None
        result = await self.handler(obj, self.context)
        if self.kind == "timer":
            return self.interval
        return result.delay if result is not None else None

    async def _finalize(self, obj: dict[str, Any], deleting: bool) -> float | None:
        assert self.finalizer is not None
        finalizers = list(obj["metadata"].get("finalizers") or [])
        if not deleting:
            if self.finalizer not in finalizers:
                await self._set_finalizers(obj, [*finalizers, self.finalizer])
            return None
        if self.finalizer not in finalizers:
            return None
        await self.handler(obj, self.context)
        await self._set_finalizers(obj, [f for f in finalizers if f != self.finalizer])
        return None

    async def _set_finalizers(self, obj: dict[str, Any], finalizers: list[str]) -> None:
        meta = obj["metadata"]
        patch = {
            "metadata": {"finalizers": finalizers, "resourceVersion": meta["resourceVersion"]}
        }
        try:
            await self.context.client.patch(
                self.resource,
                meta["name"],
                meta.get("namespace"),
                patch,
                field_manager=self.context.operator,
            )
        except ApiError as exc:
            if exc.status == 404:
                return
            # 409: the cache was behind; the watch brings the newer object and a retry.
            raise


def _key(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    namespace = meta.get("namespace")
    return f"{namespace}/{meta['name']}" if namespace else str(meta["name"])


__all__ = ["Context", "Controller", "EventFilter", "Handler", "Result", "split_key"]
