"""The Instance collector: finishes the deletions that no node agent will finish.

A bound Instance that is deleted stays Terminating until its node agent has stopped its
containers and deleted it for good (see hypermesh/api/graceful.py). When the agent is gone,
nobody would, and the Instance would stay Terminating for ever, holding its name and, for a
Recreate rollout, the whole rollout. Kubernetes' pod garbage collector has the same job; this
is its counterpart, with two rules:

- the Instance's Node does not exist (deleted, or never registered): deleted at once, since
  there is no agent to wait for. The informer's cache may lag a Node created a moment ago, so
  a missing Node is confirmed with a GET before anything is deleted;
- the Node exists but is not Ready (the nodes controller wrote Ready=Unknown when its
  heartbeat stopped, or the agent never said Ready): deleted once the grace period has passed,
  that is at `metadata.deletionTimestamp`, which the API server set to the request time plus
  the grace period. A Node that comes back in time lets its agent finish the job itself.

Deleting here is the force path (`gracePeriodSeconds: 0`) with the Instance's uid as a
precondition, so a newer Instance of the same name is never taken for the old one. The
containers of an agent that is merely cut off keep running until it reconnects, finds its
Instances gone and stops them: that is the price of not waiting for ever, and the reason the
rule waits for the grace period first.

Only Instances that are terminating, bound and still within a graceful deletion are looked
at; the rest pass the event filter without a queue entry. A Node's events re-queue that Node's
terminating Instances (an index kept from the Instance informer), so a Node turning Unknown or
disappearing is acted on at once rather than at the next timer.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from controllers.kinds import INSTANCES, NODES, NodeIndex
from hypermesh.client.errors import ApiError
from hypermesh.operator import Context, Operator, Result
from hypermesh.operator.conditions import get_condition
from hypermesh.operator.controller import Controller
from hypermesh.operator.deletion import delete_now
from hypermesh.operator.informer import object_key
from hypermesh.operator.leader import parse_micro_time

log = logging.getLogger(__name__)

# How soon a Node that the cache misses but the server has is looked at again.
_RECHECK = 5.0


def terminating_on(instance: dict[str, Any]) -> str | None:
    """The Node a gracefully terminating Instance waits on, or None when it waits on nothing
    (not deleting, unbound, or held only by finalizers with no grace period running)."""
    meta = instance.get("metadata") or {}
    if not meta.get("deletionTimestamp") or not meta.get("deletionGracePeriodSeconds"):
        return None
    node = (instance.get("spec") or {}).get("nodeName")
    return str(node) if node else None


def node_ready(node: dict[str, Any]) -> bool:
    """Whether the Node's agent says it runs things (Ready=True); Unknown, False and no
    condition at all are not ready."""
    return (get_condition(node, "Ready") or {}).get("status") == "True"


def deadline_of(instance: dict[str, Any]) -> datetime | None:
    """When the grace period ends: the deletionTimestamp (None when unreadable)."""
    try:
        return parse_micro_time(str(instance["metadata"].get("deletionTimestamp") or ""))
    except ValueError:
        return None


class InstanceCollector:
    """Force-deletes terminating Instances whose Node is gone, or not Ready past the grace."""

    def __init__(self, op: Operator) -> None:
        self.op = op
        self.instances = op.informer(INSTANCES)
        self.nodes = op.informer(NODES)
        # Node name -> keys of the terminating Instances bound to it.
        self._index = NodeIndex()
        op.reconcile(INSTANCES, deleting=True, events=self._wanted)(self.collect)
        self.controller: Controller = op.controllers[-1]
        self.instances.subscribe(self._on_instance)
        self.nodes.subscribe(self._on_node)

    # Informer subscriptions

    @staticmethod
    def _wanted(event: str, instance: dict[str, Any]) -> bool:
        return event != "DELETED" and terminating_on(instance) is not None

    def _on_instance(self, event: str, instance: dict[str, Any]) -> None:
        self._index.file(object_key(instance), terminating_on(instance) if event != "DELETED" else None)

    def _on_node(self, _event: str, node: dict[str, Any]) -> None:
        # A Node that changed (turned Unknown, came back) or went: its terminating Instances
        # are looked at again.
        queue = self.controller.queue
        if queue is None:
            return
        for key in self._index.keys(str(node["metadata"]["name"])):
            queue.add(key)

    # The reconcile

    async def collect(self, instance: dict[str, Any], ctx: Context) -> Result | None:
        """Force-delete the Instance if its Node cannot finish it; else look again when the
        grace period ends."""
        name = terminating_on(instance)
        if name is None:
            return None
        node = self.nodes.get(name)
        if node is None:
            node = await self._fetch_node(name)
            if node is not None:
                return Result.requeue_after(_RECHECK)  # the cache is behind the server
            await self._force(instance, ctx, f"its node {name} does not exist")
            return None
        if node_ready(node):
            return None  # the agent finishes it; a change of the Node brings us back
        deadline = deadline_of(instance)
        left = (deadline - datetime.now(UTC)).total_seconds() if deadline is not None else 0.0
        if left > 0:
            return Result.requeue_after(left + 0.5)
        grace = instance["metadata"].get("deletionGracePeriodSeconds")
        await self._force(instance, ctx, f"its node {name} is not ready and the grace period ({grace}s) has passed")
        return None

    async def _fetch_node(self, name: str) -> dict[str, Any] | None:
        try:
            return await self.op.client.get(NODES, name)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def _force(self, instance: dict[str, Any], ctx: Context, why: str) -> None:
        if not await delete_now(self.op.client, INSTANCES, instance):
            return  # gone already, or replaced by a newer Instance of the same name
        log.info("force-deleted terminating instance %s: %s", object_key(instance), why)
        await ctx.event(instance, "ForceDeleted", f"Deleted without waiting for its node: {why}", "Warning")


def setup(op: Operator) -> InstanceCollector:
    """Register the Instance collector on `op` (the nodes controller's operator)."""
    return InstanceCollector(op)
