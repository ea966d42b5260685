"""The node lifecycle controller: notices Nodes whose agent went silent, fences them, and moves
their Instances elsewhere.

A node agent proves it is alive by renewing a `coordination.k8s.io/v1` Lease named after its
Node in the `hypermesh-node-lease` namespace (a small write every 10 s, instead of rewriting
the whole Node status). This controller reads those Leases from an informer and, per Node:

- heartbeat older than `monitor_grace` (40 s): the Node's Ready condition becomes Unknown and
  it gets the `hypermesh.io/unreachable` taint, NoSchedule (the scheduler stops placing there)
  and NoExecute (what runs there is on notice);
- NoExecute taint older than `eviction_grace` (60 s): the Node's Instances are deleted, and
  their Workloads create replacements that the scheduler places on healthy Nodes. An Instance
  that tolerates the taint with `tolerationSeconds` stays that long instead; one that tolerates
  it without a limit stays;
- heartbeat fresh again: Ready comes back and the taints go. Instances already deleted are not
  recreated here (their replacements exist elsewhere): a returning agent finds them gone and
  stops their containers, so nothing runs twice.

An evicted Instance is deleted gracefully like any other, and its silent agent cannot finish
the deletion: the Instance collector (`controllers.instancegc`, registered with this
controller) removes it once its grace period has passed, and at once if its Node is deleted.

Time comes from two clocks, as in Kubernetes' node lifecycle controller. The Lease's
`renewTime` is compared with this machine's wall clock (so clocks must be roughly in sync, as
for leader election), and a Node must also have been watched by this process for
`monitor_grace` before it is declared Unknown, so a freshly started or newly elected controller
never fences a Node on the strength of a cache it has only just filled. The eviction deadline is
the NoExecute taint's `timeAdded`, written on the Node, so it survives a controller failover.

The check runs on the operator's timer (every `check_interval` seconds per Node) and also
whenever the Node's Lease changes, so a returning Node is untainted without waiting a tick.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from controllers import instancegc
from controllers.kinds import INSTANCES, NODES, NodeIndex
from hypermesh.client.aio import AsyncClient
from hypermesh.client.errors import ApiError
from hypermesh.operator import Context, Informers, Operator, Result, Settings
from hypermesh.operator.bounded import run_bounded
from hypermesh.operator.conditions import get_condition
from hypermesh.operator.controller import Controller
from hypermesh.operator.informer import object_key
from hypermesh.operator.leader import LEASES, parse_micro_time

log = logging.getLogger(__name__)

UNREACHABLE_TAINT = "hypermesh.io/unreachable"
# Our own Ready reasons: only a condition we wrote is one we may take back.
REASON_UNKNOWN = "NodeStatusUnknown"
REASON_RECOVERED = "NodeHeartbeatResumed"
# Deletions of one eviction go out this many at a time.
_CONCURRENCY = 32


@dataclass(frozen=True)
class NodeSettings:
    """How quickly a silent Node is fenced and emptied (seconds); tests shorten them."""

    # No Lease renewal for this long: Ready=Unknown and the unreachable taints.
    monitor_grace: float = 40.0
    # Tainted NoExecute this long: Instances without a toleration are deleted.
    eviction_grace: float = 60.0
    # How often each Node is looked at (Lease changes also trigger a look).
    check_interval: float = 5.0
    lease_namespace: str = "hypermesh-node-lease"


# Pure helpers


def parse_time(text: Any) -> datetime | None:
    """An RFC 3339 time or MicroTime as an aware datetime; None when absent or malformed."""
    if not text:
        return None
    return _parse_time(str(text))


@functools.lru_cache(maxsize=32_768)
def _parse_time(text: str) -> datetime | None:
    # Every Node is checked every few seconds and most of its times (creation, heartbeats
    # between renewals) do not change: at 5,000 Nodes, parsing them again was most of a check.
    try:
        return parse_micro_time(text)
    except ValueError:
        return None


def format_time(moment: datetime) -> str:
    """Seconds-precision RFC 3339, as Kubernetes writes Time fields."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def last_heartbeat(node: dict[str, Any], lease: dict[str, Any] | None) -> datetime | None:
    """The latest sign of life: the Lease's renewTime or the Ready condition's heartbeat.

    A Node that never sent either counts from its creation, so it too gets the full grace.
    """
    candidates = [
        parse_time(((lease or {}).get("spec") or {}).get("renewTime")),
        parse_time((get_condition(node, "Ready") or {}).get("lastHeartbeatTime")),
        parse_time(node["metadata"].get("creationTimestamp")),
    ]
    found = [c for c in candidates if c is not None]
    return max(found) if found else None


def tolerates(toleration: dict[str, Any], taint: dict[str, Any]) -> bool:
    """Whether one toleration matches one taint (Kubernetes' rules: empty key with Exists
    matches every key, an empty effect matches every effect)."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key") or ""
    operator = toleration.get("operator") or "Equal"
    if operator == "Exists":
        return not key or key == taint.get("key")
    return key == taint.get("key") and (toleration.get("value") or "") == (
        taint.get("value") or ""
    )


def eviction_delay(instance: dict[str, Any], taint: dict[str, Any], default: float) -> float | None:
    """Seconds after the taint was added that the Instance is deleted; None: never."""
    matching = [
        t for t in (instance.get("spec") or {}).get("tolerations") or []
        if isinstance(t, dict) and tolerates(t, taint)
    ]
    if not matching:
        return default
    limits = [t.get("tolerationSeconds") for t in matching]
    if any(limit is None for limit in limits):
        return None  # tolerated for good
    # Several tolerations: the most generous one wins.
    return float(max(max(0, int(limit)) for limit in limits if limit is not None))


def _our_taints(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        t for t in (node.get("spec") or {}).get("taints") or []
        if isinstance(t, dict) and t.get("key") == UNREACHABLE_TAINT
    ]


def _deleting(obj: dict[str, Any]) -> bool:
    return bool(obj["metadata"].get("deletionTimestamp"))


# The controller


class NodeLifecycleController:
    """Watches Node heartbeats; taints, marks and empties the Nodes that stopped sending them."""

    def __init__(self, op: Operator, settings: NodeSettings) -> None:
        self.op = op
        self.settings = settings
        self.leases = op.informers.get(LEASES, settings.lease_namespace)
        self.instances = op.informer(INSTANCES)
        # Node name -> keys of the Instances bound to it, kept in step with the informer so an
        # eviction costs the Node's Instances, not a scan of all of them.
        self._index = NodeIndex()
        # Node name -> monotonic time this process first looked at it.
        self._first_seen: dict[str, float] = {}
        op.timer(NODES, settings.check_interval)(self.check)
        self.controller: Controller = op.controllers[-1]
        self.leases.subscribe(self._on_lease)
        self.instances.subscribe(self._on_instance)
        op.informer(NODES).subscribe(self._on_node)

    # Informer subscriptions

    def _on_lease(self, _type: str, lease: dict[str, Any]) -> None:
        # A renewal (or a vanished Lease) is news for the Node of the same name.
        queue = self.controller.queue
        if queue is not None:
            queue.add(str(lease["metadata"]["name"]))

    def _on_node(self, event: str, node: dict[str, Any]) -> None:
        # A Node that comes back under the same name is watched afresh.
        if event == "DELETED":
            self._first_seen.pop(str(node["metadata"]["name"]), None)

    def _on_instance(self, event: str, instance: dict[str, Any]) -> None:
        node = (instance.get("spec") or {}).get("nodeName")
        self._index.file(object_key(instance), str(node) if event != "DELETED" and node else None)

    def instances_on(self, node: str) -> list[dict[str, Any]]:
        """The live Instances bound to `node`, from the cache."""
        found = (self.instances.get_key(key) for key in self._index.keys(node))
        return [i for i in found if i is not None and not _deleting(i)]

    # The check

    async def check(self, node: dict[str, Any], ctx: Context) -> Result | None:
        """Compare one Node's heartbeat with the graces and converge its condition, taints
        and Instances."""
        name = str(node["metadata"]["name"])
        clock = time.monotonic()
        watched_for = clock - self._first_seen.setdefault(name, clock)
        now = datetime.now(UTC)
        heartbeat = last_heartbeat(node, self.leases.get(name, self.settings.lease_namespace))
        silent_for = (now - heartbeat).total_seconds() if heartbeat is not None else float("inf")
        grace = self.settings.monitor_grace

        if silent_for <= grace:
            await self._recover(node, ctx)
            return Result.done()
        if watched_for <= grace and not _our_taints(node):
            return Result.done()  # not yet watched long enough to trust the cache
        node = await self._fence(node, ctx, silent_for, now)
        await self._evict(node, ctx, now)
        return Result.done()

    async def _fence(
        self, node: dict[str, Any], ctx: Context, silent_for: float, now: datetime
    ) -> dict[str, Any]:
        """Ready=Unknown and the unreachable taints, each written once."""
        name = node["metadata"]["name"]
        ready = get_condition(node, "Ready") or {}
        if ready.get("status") != "Unknown":
            message = (
                f"The node agent stopped renewing its heartbeat Lease {silent_for:.0f}s ago "
                f"(grace {self.settings.monitor_grace:.0f}s); the node's state is unknown."
            )
            condition = {
                **ready,
                "type": "Ready",
                "status": "Unknown",
                "reason": REASON_UNKNOWN,
                "message": message,
                "lastTransitionTime": format_time(now),
            }
            node = await self._write_ready(node, condition)
            await ctx.event(node, REASON_UNKNOWN, f"Node {name} status is now: NodeNotReady ({message})", "Warning")
        if {t.get("effect") for t in _our_taints(node)} >= {"NoSchedule", "NoExecute"}:
            return node
        taints = [
            t for t in (node.get("spec") or {}).get("taints") or []
            if t.get("key") != UNREACHABLE_TAINT
        ]
        added = format_time(now)
        kept = {t.get("effect"): t for t in _our_taints(node)}
        for effect in ("NoSchedule", "NoExecute"):
            taints.append(
                kept.get(effect) or {"key": UNREACHABLE_TAINT, "effect": effect, "timeAdded": added}
            )
        node = await self._write_taints(node, taints)
        await ctx.event(
            node,
            "NodeUnreachable",
            f"Tainted {UNREACHABLE_TAINT} (NoSchedule, NoExecute); instances are evicted after "
            f"{self.settings.eviction_grace:.0f}s unless they tolerate the taint",
            "Warning",
        )
        return node

    async def _evict(self, node: dict[str, Any], ctx: Context, now: datetime) -> None:
        """Delete the Node's Instances whose toleration of the NoExecute taint has run out,
        after marking the rest not ready (they are not serving as far as anyone can tell)."""
        name = node["metadata"]["name"]
        taint = next((t for t in _our_taints(node) if t.get("effect") == "NoExecute"), None)
        if taint is None:
            return
        added = parse_time(taint.get("timeAdded")) or now
        tainted_for = (now - added).total_seconds()
        due: list[dict[str, Any]] = []
        for instance in self.instances_on(name):
            delay = eviction_delay(instance, taint, self.settings.eviction_grace)
            if delay is not None and tainted_for >= delay:
                due.append(instance)
            else:
                await self._mark_not_ready(instance)
        if not due:
            return
        await run_bounded((self._delete(i, ctx, name) for i in due), _CONCURRENCY)
        await ctx.event(
            node,
            "EvictedInstances",
            f"Deleted {len(due)} instance(s) from unreachable node {name}",
            "Warning",
        )

    async def _recover(self, node: dict[str, Any], ctx: Context) -> None:
        """A heartbeat again: take back the taints and the Unknown we wrote."""
        name = node["metadata"]["name"]
        ready = get_condition(node, "Ready") or {}
        changed = False
        if ready.get("status") == "Unknown" and ready.get("reason") == REASON_UNKNOWN:
            # The agent reports its own Ready; until it does, the heartbeat is the evidence.
            condition = {
                **ready,
                "status": "True",
                "reason": REASON_RECOVERED,
                "message": "The node agent is renewing its heartbeat Lease again.",
                "lastTransitionTime": format_time(datetime.now(UTC)),
            }
            node = await self._write_ready(node, condition)
            changed = True
        if _our_taints(node):
            taints = [
                t for t in (node.get("spec") or {}).get("taints") or []
                if t.get("key") != UNREACHABLE_TAINT
            ]
            node = await self._write_taints(node, taints)
            changed = True
        if changed:
            await ctx.event(node, "NodeReady", f"Node {name} status is now: NodeReady (heartbeat resumed; taints removed)")

    # Writes

    async def _write_ready(self, node: dict[str, Any], condition: dict[str, Any]) -> dict[str, Any]:
        conditions = [
            c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") != "Ready"
        ]
        return await self.op.client.update_status(
            NODES,
            node["metadata"]["name"],
            None,
            {"conditions": [*conditions, condition]},
            field_manager=self.op.name,
        )

    async def _write_taints(self, node: dict[str, Any], taints: list[dict[str, Any]]) -> dict[str, Any]:
        # A merge patch replaces the whole list, so it carries the resourceVersion it was
        # computed from: a taint someone added meanwhile gives a 409 and a retry, not a loss.
        meta = node["metadata"]
        patch = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "spec": {"taints": taints}}
        return await self.op.client.patch(NODES, meta["name"], None, patch, field_manager=self.op.name)

    async def _mark_not_ready(self, instance: dict[str, Any]) -> None:
        ready = get_condition(instance, "Ready") or {}
        if ready.get("status") == "False" and ready.get("reason") == "NodeUnreachable":
            return
        meta = instance["metadata"]
        others = [
            c for c in (instance.get("status") or {}).get("conditions") or []
            if c.get("type") != "Ready"
        ]
        condition = {
            "type": "Ready",
            "status": "False",
            "reason": "NodeUnreachable",
            "message": f"Node {(instance.get('spec') or {}).get('nodeName')} is unreachable.",
            "lastTransitionTime": format_time(datetime.now(UTC)),
        }
        try:
            await self.op.client.update_status(
                INSTANCES, meta["name"], meta.get("namespace"),
                {"conditions": [*others, condition]}, field_manager=self.op.name,
            )
        except ApiError as exc:
            if exc.status != 404:
                raise

    async def _delete(self, instance: dict[str, Any], ctx: Context, node: str) -> None:
        meta = instance["metadata"]
        try:
            await self.op.client.delete(
                INSTANCES, meta["name"], meta.get("namespace"), propagation="Background"
            )
        except ApiError as exc:
            if exc.status == 404:
                return  # already gone: the goal of an eviction
            raise
        await ctx.event(
            instance,
            "NodeLifecycleEviction",
            f"Deleted from unreachable node {node}; its workload replaces it elsewhere",
            "Warning",
        )


def setup(op: Operator, settings: NodeSettings | None = None) -> NodeLifecycleController:
    """Register the node lifecycle controller on `op`, with the Instance collector that
    finishes the deletions of Instances whose Node is gone or not Ready (controllers.instancegc)."""
    controller = NodeLifecycleController(op, settings or NodeSettings())
    instancegc.setup(op)
    return controller


def build_operator(
    client: AsyncClient,
    *,
    settings: NodeSettings | None = None,
    informers: Informers | None = None,
    operator_settings: Settings | None = None,
    name: str = "hypermesh-controllers-nodes",
) -> Operator:
    """A ready-to-run operator holding only the node lifecycle controller."""
    op = Operator(client, name=name, settings=operator_settings, informers=informers)
    setup(op, settings)
    return op
