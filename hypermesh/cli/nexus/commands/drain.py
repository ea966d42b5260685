"""`nexus cordon|uncordon|drain NODE`: take Nodes out of scheduling, and empty them safely.

Cordoning is one merge patch of a Node's `spec.unschedulable`; the scheduler already leaves
such Nodes out. Draining cordons, then deletes the Instances bound to the Node so that their
controllers start replacements elsewhere. HyperMesh has no PodDisruptionBudget kind and no
eviction subresource, so the budget kubectl would read from a PDB comes from the owning
Workload's own rolling-update rule: an Instance may go while at least
`replicas - maxUnavailable` of the Workload's Instances stay available (the counts come from
`controllers.rollout.surge_and_unavailable`, the same arithmetic the rollouts use).

What counts as "available" is the smaller of two readings: the Workload's
`status.availableReplicas` (the controller's view, which lags a deletion by one reconcile) and
the Workload's Instances that are available right now by their Ready condition and the
Workload's `minReadySeconds`. The fresh count stops a second deletion from slipping through
before the controller has written that the first one happened; the status stops a drain from
running ahead of what the controller believes.

Deleting an Instance lets it stop gracefully (SIGTERM, SIGKILL after its grace period, which
`--grace-period` overrides); it counts as gone for its Workload at once, but the drain waits
until its node agent has stopped it and it has left the Node, as kubectl drain waits for pods.

Like the eviction API's default (`IfHealthyBudget`), an available Instance may go while the
available count is above the floor, and one that is not available (not Ready, or finished)
while it is at least the floor, since deleting it costs nothing that is counted. Instances
without a controller would not come back anywhere, so drain refuses them, as kubectl does for
unmanaged Pods, unless `--force`.

The dispatcher imports this module only to build its sub-parsers, so it imports nothing but
the standard library and nexus' own light modules at the top; the client and the controllers'
rules are imported when a command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from hypermesh.cli.nexus import errors

if TYPE_CHECKING:
    from hypermesh.cli.nexus.session import Session

DEFAULT_TIMEOUT = 300.0
# How often a drain that waits for availability looks again.
POLL_INTERVAL = 0.5
TERMINAL_PHASES = ("Succeeded", "Failed")


# Parsing


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """The `cordon`, `uncordon` and `drain` sub-parsers, with the global flags of `common`."""
    from hypermesh.cli.nexus.dispatch import parse_duration

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        parser.add_argument("nodes", metavar="NODE", nargs="*", help="the Node(s) to act on")
        parser.add_argument("-l", "--selector", help="act on every Node matching this label selector")
        parser.add_argument("--dry-run", nargs="?", const="client", default="none", choices=("none", "client"), help="client: only print what would be done")
        return parser

    command("cordon", "Mark Nodes unschedulable: new Instances are not placed there.")
    command("uncordon", "Mark Nodes schedulable again.")
    drain = command("drain", "Cordon Nodes, then delete their Instances while their Workloads stay available.")
    drain.add_argument("--force", action="store_true", help="also delete Instances that no controller owns (they are not recreated)")
    drain.add_argument("--grace-period", type=int, default=-1, metavar="SECONDS", help="seconds each Instance gets to stop (default -1: its own terminationGracePeriodSeconds)")
    drain.add_argument("--timeout", type=parse_duration, default=DEFAULT_TIMEOUT, metavar="DURATION", help="give up after this long (default 5m; 0 waits for ever)")


def run(args: argparse.Namespace, session: Session) -> int:
    """Run `cordon`, `uncordon` or `drain`, whichever `args.command` names."""
    handlers = {"cordon": cordon, "uncordon": uncordon, "drain": drain}
    return handlers[args.command](args, session)


# cordon and uncordon


def cordon(args: argparse.Namespace, session: Session) -> int:
    """Set `spec.unschedulable` on each Node."""
    for name in _node_names(args, session):
        _set_unschedulable(session, name, True, dry_run=args.dry_run != "none")
    return 0


def uncordon(args: argparse.Namespace, session: Session) -> int:
    """Clear `spec.unschedulable` on each Node."""
    for name in _node_names(args, session):
        _set_unschedulable(session, name, False, dry_run=args.dry_run != "none")
    return 0


def _node_names(args: argparse.Namespace, session: Session) -> list[str]:
    from hypermesh.client.kinds import NODES

    names = list(args.nodes)
    if args.selector:
        if names:
            raise errors.UsageError("give either NODE names or -l SELECTOR, not both")
        listed = session.api.list(NODES, None, label_selector=args.selector)
        names = [str(item["metadata"]["name"]) for item in listed.get("items") or []]
        if not names:
            raise errors.CliError(f'no nodes match the selector "{args.selector}"')
    if not names:
        raise errors.UsageError(f"{args.command} needs a NODE (or -l SELECTOR)")
    return names


def _set_unschedulable(session: Session, name: str, value: bool, *, dry_run: bool) -> None:
    """Patch the Node unless it is already so, and say what happened as kubectl does."""
    from hypermesh.client.kinds import NODES

    verb = "cordoned" if value else "uncordoned"
    node = session.api.get(NODES, name, None)
    if bool((node.get("spec") or {}).get("unschedulable")) == value:
        session.out(f"node/{name} already {verb}\n")
        return
    if not dry_run:
        # null rather than false on uncordon, so the field disappears as it does in Kubernetes.
        session.api.patch(NODES, name, None, {"spec": {"unschedulable": True if value else None}})
    session.out(f"node/{name} {verb}{' (dry run)' if dry_run else ''}\n")


# drain


@dataclasses.dataclass(frozen=True)
class Budget:
    """How many of one Workload's Instances are available, and how many must stay so."""

    workload: str  # namespace/name
    available: int
    floor: int
    replicas: int
    max_unavailable: int
    min_ready_seconds: int

    def allows(self, instance_available: bool) -> bool:
        """Whether one more Instance may go (`IfHealthyBudget`: an unavailable one at the floor)."""
        return self.available > self.floor if instance_available else self.available >= self.floor


def drain(args: argparse.Namespace, session: Session) -> int:
    """Cordon, then delete the Nodes' Instances as their Workloads' budgets allow, until none
    are left or the timeout passes."""
    nodes = _node_names(args, session)
    dry_run = args.dry_run != "none"
    for name in nodes:
        _set_unschedulable(session, name, True, dry_run=dry_run)
    # kubectl's --timeout=0 means "wait for ever".
    deadline = time.monotonic() + args.timeout if args.timeout else math.inf
    last_wait = ""
    while True:
        bound = _instances_on(session, nodes)
        ownerless = [i for i in bound if _controller_of(i) is None and not _deleting(i)]
        if ownerless and not args.force:
            listed = ", ".join(_ref(i) for i in ownerless)
            raise errors.CliError(
                f"cannot drain node{'s' if len(nodes) > 1 else ''} {', '.join(nodes)}: no controller owns "
                f"{listed}, so deleted they would not come back (use --force to delete them anyway)"
            )
        if ownerless:
            session.err(f"Warning: deleting Instances that declare no controller: {', '.join(_ref(i) for i in ownerless)}")
        if dry_run:
            for instance in bound:
                if not _deleting(instance):
                    session.out(f"evicting instance {_ref(instance)} (dry run)\n")
            for name in nodes:
                session.out(f"node/{name} drained (dry run)\n")
            return 0
        if not bound:
            break
        evicted, waits = _evict_round(session, bound, grace_period=args.grace_period)
        if waits and not evicted:
            message = "; ".join(waits)
            if message != last_wait:
                session.out(f"waiting: {message}\n")
                last_wait = message
        if time.monotonic() >= deadline:
            left = ", ".join(_ref(i) for i in bound)
            raise errors.CliError(
                f"timed out after {_duration(args.timeout)} draining {', '.join(nodes)}: still there: {left}"
                + (f" ({'; '.join(waits)})" if waits else "")
            )
        time.sleep(POLL_INTERVAL)
    for name in nodes:
        session.out(f"node/{name} drained\n")
    return 0


def _evict_round(session: Session, bound: list[dict[str, Any]], *, grace_period: int) -> tuple[int, list[str]]:
    """Delete what may go now; returns how many were deleted and what the rest wait for."""
    from hypermesh.client import ApiError

    evicted = 0
    waits: list[str] = []
    budgets: dict[str, Budget | None] = {}
    # Unavailable Instances first: deleting them costs no availability, so they never wait
    # behind a healthy sibling.
    now = datetime.now(UTC)
    for instance in sorted(bound, key=lambda i: (_is_available(i, 0, now), _ref(i))):
        if _deleting(instance):
            waits.append(f"instance {_ref(instance)} is terminating")
            continue
        owner = _controller_of(instance)
        if owner is not None and owner.get("kind") == "Workload":
            key = f"{instance['metadata'].get('namespace')}/{owner.get('name')}"
            if key not in budgets:
                budgets[key] = _budget(session, instance, owner)
            budget = budgets[key]
            if budget is not None:
                available = _is_available(instance, budget.min_ready_seconds, now)
                if not budget.allows(available):
                    waits.append(
                        f"instance {_ref(instance)} stays while workload {budget.workload} has "
                        f"{budget.available} available and keeps at least {budget.floor} "
                        f"(replicas {budget.replicas}, maxUnavailable {budget.max_unavailable})"
                    )
                    continue
                # The next sibling sees this deletion even before the controller does.
                budgets[key] = dataclasses.replace(budget, available=budget.available - int(available))
        session.out(f"evicting instance {_ref(instance)}\n")
        try:
            _delete_instance(session, instance, grace_period)
        except ApiError as exc:
            if exc.status != 404:
                raise
        session.out(f"instance/{instance['metadata']['name']} evicted\n")
        evicted += 1
    return evicted, waits


def _budget(session: Session, instance: dict[str, Any], owner: dict[str, Any]) -> Budget | None:
    """The owning Workload's budget, or None when it is gone or going (nothing to protect)."""
    from controllers.rollout import surge_and_unavailable
    from hypermesh.client import ApiError
    from hypermesh.client.kinds import INSTANCES, WORKLOADS

    namespace = str(instance["metadata"].get("namespace"))
    try:
        workload = session.api.get(WORKLOADS, str(owner.get("name")), namespace)
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise
    meta = workload["metadata"]
    if meta.get("uid") != owner.get("uid") or meta.get("deletionTimestamp"):
        return None
    spec = workload.get("spec") or {}
    replicas = int(spec.get("replicas", 1))
    _, max_unavailable = surge_and_unavailable(spec.get("strategy") or {}, replicas)
    min_ready = int(spec.get("minReadySeconds") or 0)
    match_labels = (spec.get("selector") or {}).get("matchLabels") or {}
    selector = ",".join(f"{k}={v}" for k, v in sorted(match_labels.items())) or None
    siblings = session.api.list(INSTANCES, namespace, label_selector=selector).get("items") or []
    now = datetime.now(UTC)
    live = sum(
        1
        for i in siblings
        if (_controller_of(i) or {}).get("uid") == meta.get("uid")
        and not _deleting(i)
        and _is_available(i, min_ready, now)
    )
    reported = int((workload.get("status") or {}).get("availableReplicas") or 0)
    return Budget(
        workload=f"{namespace}/{meta['name']}",
        available=min(reported, live),
        floor=replicas - max_unavailable,
        replicas=replicas,
        max_unavailable=max_unavailable,
        min_ready_seconds=min_ready,
    )


def _delete_instance(session: Session, instance: dict[str, Any], grace_period: int) -> None:
    """Delete one Instance, with gracePeriodSeconds when one was given (negative: the
    Instance's own terminationGracePeriodSeconds, as kubectl drain says)."""
    from hypermesh.cli.nexus.commands.delete import delete_object
    from hypermesh.client.kinds import INSTANCES

    meta = instance["metadata"]
    delete_object(
        session, INSTANCES, str(meta["name"]), meta.get("namespace"),
        grace=grace_period if grace_period >= 0 else None,
    )


def _instances_on(session: Session, nodes: list[str]) -> list[dict[str, Any]]:
    """Every Instance bound to one of `nodes`, across namespaces."""
    from hypermesh.client.kinds import INSTANCES

    found: list[dict[str, Any]] = []
    for name in nodes:
        listed = session.api.list(INSTANCES, None, field_selector=f"spec.nodeName={name}")
        found += listed.get("items") or []
    return found


def _is_available(instance: dict[str, Any], min_ready_seconds: int, now: datetime) -> bool:
    from controllers.rollout import available_in

    if (instance.get("status") or {}).get("phase") in TERMINAL_PHASES:
        return False
    return available_in(instance, min_ready_seconds, now) == 0


def _controller_of(instance: dict[str, Any]) -> dict[str, Any] | None:
    refs = (instance.get("metadata") or {}).get("ownerReferences") or []
    return next((ref for ref in refs if isinstance(ref, dict) and ref.get("controller")), None)


def _deleting(instance: dict[str, Any]) -> bool:
    return bool(instance["metadata"].get("deletionTimestamp"))


def _ref(instance: dict[str, Any]) -> str:
    meta = instance["metadata"]
    return f"{meta.get('namespace')}/{meta['name']}"


def _duration(seconds: float) -> str:
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{seconds:g}s"
