"""The scheduler controller: binds each pending Instance to a Node with a compare-and-swap write.

The decisions themselves are `hypermesh.scheduler`'s (a numpy `NodeMatrix` and `Scheduler`);
this module is the plumbing around them, and its trade-offs are about throughput:

- The matrix is fed by informer subscriptions, not by reconciles: every Node event upserts or
  removes a row and every Instance carrying `spec.nodeName` is bound (idempotently), whether or
  not this process leads, so a standby takes over with a warm matrix.
- A new pending Instance goes from its informer event straight into an ordered pending set
  (no work-queue hop: at thousands per second the hop costs more than the decision). One
  flusher task drains that set in batches (`decide_batch`), because a batch of a Workload's
  identical replicas evaluates all nodes once instead of once per replica. The flusher waits
  `batch_window` seconds after the first key arrives (or until `batch_size` are pending), so a
  burst of creates becomes a few large batches rather than many small ones. The reconcile (fed
  by the work queue) handles only retries and the resync when this process starts leading.
- Binds are Bindings, `bind_batch` per request to the API server's batch form of the
  `binding` subresource, each guarded by the resourceVersion the decision saw; the server
  refuses to bind an Instance that already has a node, so a stale cache or a second scheduler
  can never place one twice. The decision is "assumed" into the matrix at once, so the next
  batch sees it before the watch event comes back; a 409 or 404 releases the claim and the key
  is looked at again from the fresher cache.
- An Instance that fits nowhere gets condition `Scheduled=False/Unschedulable` with the
  decision's per-reason node counts and a Warning Event, both written only when the message
  changes (a full cluster must not turn into a write storm). It is retried after a per-key
  backoff, or at once when the cluster changes in a way that may make room: a Node added or
  changed, or a bound Instance gone.
- Preemption deletes the decision's victims (with Events on both sides) and records
  `status.nominatedNodeName`; the preemptor retries when the victims' deletions arrive.

A successful bind writes nothing else (no `Scheduled=True`, no Event) unless the Instance had
been reported unschedulable: at thousands of binds per second, a second write per Instance
would halve the throughput for information `spec.nodeName` already carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from controllers.kinds import INSTANCES, NODES
from hypermesh.client.errors import ApiError, ClientError
from hypermesh.operator import Context, Operator, Result
from hypermesh.operator.conditions import get_condition, set_condition
from hypermesh.operator.controller import Controller
from hypermesh.operator.informer import object_key
from hypermesh.scheduler import Decision, NodeMatrix, Policy, Scheduler, SpecError, filters
from hypermesh.scheduler.quantities import QuantityError

log = logging.getLogger(__name__)

CONDITION = "Scheduled"
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class SchedulerSettings:
    """How the scheduler batches and retries; the defaults suit production."""

    # Seconds the flusher waits for more pending Instances before deciding a batch.
    batch_window: float = 0.005
    # Decide at once when this many are pending, and never more than this many per batch.
    batch_size: int = 2000
    # Binding requests in flight at once, and Bindings per request.
    write_concurrency: int = 8
    bind_batch: int = 250
    # Unschedulable retry delays: base * 2**(attempt - 1), capped.
    retry_base: float = 1.0
    retry_cap: float = 60.0
    preemption: bool = True


# Reasons that a placement elsewhere can lift: spread skew evens out, and a required affinity
# finds its partner. (Resources, taints and anti-affinity only ease when something goes, and
# removals already wake every unschedulable Instance.)
_WAITS_FOR_PLACEMENTS = frozenset({filters.TOPOLOGY_SPREAD, filters.AFFINITY})


@dataclass
class _Unschedulable:
    """An Instance the last decision could not place, and when to look again."""

    attempts: int
    retry_at: float
    # Whether another Instance being placed may make room (see _WAITS_FOR_PLACEMENTS).
    waits_for_placements: bool = False


def _pending(obj: dict[str, Any]) -> bool:
    """Waiting for a node: no nodeName, not being deleted, not finished."""
    meta = obj.get("metadata") or {}
    return (
        not (obj.get("spec") or {}).get("nodeName")
        and not meta.get("deletionTimestamp")
        and (obj.get("status") or {}).get("phase") not in TERMINAL_PHASES
    )


class SchedulerController:
    """The node matrix kept by the informers, and the loop that binds pending Instances."""

    def __init__(self, op: Operator, settings: SchedulerSettings | None = None) -> None:
        self.op = op
        self.settings = settings or SchedulerSettings()
        self.matrix = NodeMatrix(capacity=1024)
        self.scheduler = Scheduler(
            self.matrix, policy=Policy(), preemption=self.settings.preemption
        )
        self.nodes = op.informer(NODES)
        self.instances = op.informer(INSTANCES)
        self.nodes.subscribe(self._on_node)
        self.instances.subscribe(self._on_instance)
        # Informer events feed `pending` in `_on_instance`; the queue only carries retries and
        # the full resync when this process starts leading.
        op.reconcile(INSTANCES, events=lambda _type, _obj: False)(self.reconcile)
        self.controller: Controller = op.controllers[-1]
        # Keys to decide, in arrival order (a dict is an ordered set).
        self.pending: dict[str, None] = {}
        self.unschedulable: dict[str, _Unschedulable] = {}
        # Keys whose bind write is in flight: the cache still shows them pending.
        self.binding: set[str] = set()
        # Victims whose deletion was asked for, so a retry does not delete them again.
        self.evicting: set[str] = set()
        self.stats = {"bound": 0, "conflicts": 0, "unschedulable": 0, "preempted": 0, "batches": 0}
        self._flusher: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._kick = asyncio.Event()
        self._writes = asyncio.Semaphore(self.settings.write_concurrency)

    # Informer subscriptions: the matrix follows the cluster.

    def _on_node(self, event: str, obj: dict[str, Any]) -> None:
        name = str(obj["metadata"]["name"])
        if event == "DELETED":
            self.matrix.remove_node(name)
            return
        try:
            self.matrix.upsert_node(obj)
        except (QuantityError, ValueError) as exc:
            # A Node with unreadable allocatable cannot take Instances; keep it out.
            log.warning("node %s ignored by the scheduler: %s", name, exc)
            self.matrix.remove_node(name)
            return
        self._cluster_changed()

    def _on_instance(self, event: str, obj: dict[str, Any]) -> None:
        key = object_key(obj)
        node = (obj.get("spec") or {}).get("nodeName")
        if event == "DELETED":
            self.pending.pop(key, None)
            self.unschedulable.pop(key, None)
            self.evicting.discard(key)
            self.binding.discard(key)
            if key in self.matrix.bound:
                self.matrix.unbind_key(key)
                self._cluster_changed()
            return
        if not node:
            # A new pending Instance goes straight into the next batch while this process
            # leads; the reconcile path (a queue hop per key) only covers retries and relists.
            if (
                self.controller.queue is not None
                and key not in self.binding
                and key not in self.unschedulable
                and _pending(obj)
            ):
                self.pending[key] = None
                self._wake()
            return
        if node:
            if (obj.get("status") or {}).get("phase") in TERMINAL_PHASES:
                if key in self.matrix.bound:
                    self.matrix.unbind_key(key)
                    self._cluster_changed()
                return
            self.pending.pop(key, None)
            self.unschedulable.pop(key, None)
            # The bind write came back through the watch: the claim is now the cluster's.
            self.binding.discard(key)
            known = key in self.matrix.bound
            try:
                self.matrix.bind(obj, str(node))
            except (SpecError, QuantityError) as exc:
                log.warning("instance %s bound to %s is not accountable: %s", key, node, exc)
            if not known:
                self._placed_elsewhere()  # bound by someone else (another scheduler, a user)

    def _cluster_changed(self) -> None:
        """Room may have appeared: every unschedulable Instance gets another look now."""
        if not self.unschedulable or self.controller.queue is None:
            return
        for key, state in self.unschedulable.items():
            state.retry_at = 0.0
            self.controller.queue.add(key)

    def _placed_elsewhere(self) -> None:
        """An Instance was placed: the ones waiting on spread or affinity get another look."""
        if self.controller.queue is None:
            return
        for key, state in self.unschedulable.items():
            if state.waits_for_placements:
                state.retry_at = 0.0
                self.controller.queue.add(key)

    # The reconcile: only sorts Instances into "pending" or not.

    async def reconcile(self, obj: dict[str, Any], ctx: Context) -> Result | None:
        """Queue a pending Instance for the next batch, or wait out its backoff."""
        if not _pending(obj):
            return None
        key = object_key(obj)
        if key in self.binding:
            return None
        state = self.unschedulable.get(key)
        if state is not None:
            wait = state.retry_at - time.monotonic()
            if wait > 0:
                return Result.requeue_after(wait)
        self.pending[key] = None
        self._wake()
        return None

    def _wake(self) -> None:
        if len(self.pending) >= self.settings.batch_size:
            self._kick.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush_loop(), name=f"{self.op.name}-flusher"
            )

    # The flusher: batches of decisions, then concurrent CAS writes.

    async def _flush_loop(self) -> None:
        # Runs while there is work and this process acts (the queue exists only while leading).
        # It never awaits the writes: the check of `pending` and the exit happen with no await
        # between them, so a key added meanwhile either is seen here or starts a new flusher.
        while self.pending and self.controller.queue is not None:
            if len(self.pending) < self.settings.batch_size:
                self._kick.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), self.settings.batch_window)
            if self.controller.queue is None:
                break
            for task in self._decide_batch():
                # The set holds the tasks so they are not garbage collected mid-write.
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
            # Let the writes (and the watch events they cause) run before the next batch.
            await asyncio.sleep(0)

    def _decide_batch(self) -> list[asyncio.Task[None]]:
        keys: list[str] = []
        objects: list[dict[str, Any]] = []
        while self.pending and len(keys) < self.settings.batch_size:
            key = next(iter(self.pending))
            del self.pending[key]
            obj = self.instances.get_key(key)
            if obj is None or not _pending(obj) or key in self.binding:
                continue
            keys.append(key)
            objects.append(obj)
        if not objects:
            return []
        self.stats["batches"] += 1
        decisions = self.scheduler.decide_batch(objects)
        by_key = {d.instance: d for d in decisions}
        loop = asyncio.get_running_loop()
        tasks = []
        binds: list[tuple[dict[str, Any], str]] = []
        for key, obj in zip(keys, objects, strict=True):
            decision = by_key.get(key)
            if decision is None:
                continue
            if decision.node:
                self.binding.add(key)
                binds.append((obj, decision.node))
            else:
                tasks.append(loop.create_task(self._unschedulable(obj, decision)))
        if binds:
            self._placed_elsewhere()
        size = self.settings.bind_batch
        for start in range(0, len(binds), size):
            tasks.append(loop.create_task(self._bind(binds[start:start + size])))
        return tasks

    async def _bind(self, binds: list[tuple[dict[str, Any], str]]) -> None:
        """One batch binding request; each item succeeds or fails on its own."""
        request = [
            (obj["metadata"].get("namespace") or "", obj["metadata"]["name"], node, obj["metadata"]["resourceVersion"])
            for obj, node in binds
        ]
        answers: Sequence[dict[str, Any]]
        try:
            async with self._writes:
                answers = await self.op.client.bind_many(request)
        except (ApiError, ClientError) as exc:
            log.warning("binding %d instances failed: %s", len(binds), exc)
            answers = [{"status": "Failure", "code": 0, "message": str(exc)}] * len(binds)
        for (obj, node), answer in zip(binds, answers, strict=True):
            if answer.get("status") == "Success":
                await self._bound(obj, node)
            else:
                self._bind_failed(obj, node, answer)

    def _bind_failed(self, obj: dict[str, Any], node: str, answer: dict[str, Any]) -> None:
        # 409: the cache was behind (or another scheduler won); 404: it is gone. Either way
        # release the claim; the watch brings the newer object and, if still pending, a retry.
        key = object_key(obj)
        self.matrix.unbind_key(key)
        self.binding.discard(key)
        self.stats["conflicts"] += 1
        if answer.get("code") not in (404, 409):
            log.warning("binding %s to %s failed: %s", key, node, answer.get("message"))
        if self.controller.queue is not None:
            self.controller.queue.add(key, 0.05)

    async def _bound(self, obj: dict[str, Any], node: str) -> None:
        # `binding` keeps the key until the watch shows spec.nodeName, so a reconcile woken
        # meanwhile by the stale cache does not decide it a second time.
        key = object_key(obj)
        self.stats["bound"] += 1
        if key in self.unschedulable or get_condition(obj, CONDITION):
            self.unschedulable.pop(key, None)
            await self._write_condition(obj, "True", "Scheduled", f"assigned to {node}")
            await self.op.recorder.record(obj, "Scheduled", f"Successfully assigned {key} to {node}")

    async def _unschedulable(self, obj: dict[str, Any], decision: Decision) -> None:
        key = object_key(obj)
        self.stats["unschedulable"] += 1
        state = self.unschedulable.get(key)
        attempts = state.attempts + 1 if state else 1
        delay = min(self.settings.retry_cap, self.settings.retry_base * 2 ** (attempts - 1))
        waits = any(reason in _WAITS_FOR_PLACEMENTS for reason in decision.reasons)
        self.unschedulable[key] = _Unschedulable(attempts, time.monotonic() + delay, waits)
        if self.controller.queue is not None:
            self.controller.queue.add(key, delay)
        message = decision.message
        current = get_condition(obj, CONDITION) or {}
        if current.get("status") != "False" or current.get("message") != message:
            status: dict[str, Any] = {}
            if decision.nominated_node:
                status["nominatedNodeName"] = decision.nominated_node
            await self._write_condition(obj, "False", "Unschedulable", message, status)
            await self.op.recorder.record(obj, "FailedScheduling", message, "Warning")
        if decision.victims:
            await self._preempt(obj, decision)

    async def _preempt(self, obj: dict[str, Any], decision: Decision) -> None:
        key = object_key(obj)
        for victim in decision.victims:
            if victim in self.evicting:
                continue
            cached = self.instances.get_key(victim)
            if cached is None:
                continue
            self.evicting.add(victim)
            self.stats["preempted"] += 1
            meta = cached["metadata"]
            await self.op.recorder.record(
                cached,
                "Preempted",
                f"Preempted by {key} on node {decision.nominated_node}",
                "Warning",
            )
            try:
                await self.op.client.delete(INSTANCES, meta["name"], meta.get("namespace"))
            except ApiError as exc:
                if exc.status != 404:
                    self.evicting.discard(victim)
                    log.warning("could not preempt %s for %s: %s", victim, key, exc)
        await self.op.recorder.record(
            obj,
            "Preempting",
            f"Preempting {len(decision.victims)} instance(s) on node {decision.nominated_node}",
        )

    async def _write_condition(
        self,
        obj: dict[str, Any],
        status: str,
        reason: str,
        message: str,
        extra: dict[str, Any] | None = None,
    ) -> None:
        meta = obj["metadata"]
        conditions = set_condition(
            (obj.get("status") or {}).get("conditions"),
            CONDITION,
            "True" if status == "True" else "False",
            reason,
            message,
        )
        try:
            await self.op.client.update_status(
                INSTANCES,
                meta["name"],
                meta.get("namespace"),
                {"conditions": conditions, **(extra or {})},
                field_manager=self.op.name,
            )
        except (ApiError, ClientError) as exc:
            log.info("could not report scheduling of %s: %s", object_key(obj), exc)


def setup(op: Operator, settings: SchedulerSettings | None = None) -> SchedulerController:
    """Register the scheduler on `op`."""
    return SchedulerController(op, settings)


__all__ = ["CONDITION", "NODES", "SchedulerController", "SchedulerSettings", "setup"]
