"""Graceful deletion: an Instance that may be running on a node is not removed at once.

Deleting a running Instance must give its processes time to stop cleanly, and the only party
that can stop them is the node agent. So, as Kubernetes does for Pods, a DELETE of such an
Instance only marks it: `metadata.deletionTimestamp` (the time by which it should be gone) and
`metadata.deletionGracePeriodSeconds` (how long the agent gives its containers between SIGTERM
and SIGKILL). Watchers see the Instance Terminating; the agent stops the containers, cleans up,
and then deletes the Instance itself with `gracePeriodSeconds: 0`. An Instance that runs nowhere
(unbound) or has finished (Succeeded, Failed) has nothing to stop and goes at once.

The rule is kube-apiserver's `rest.BeforeDelete` with the pod strategy's `CheckGracefulDelete`:

- the grace period is the request's `gracePeriodSeconds`, else the Instance's
  `spec.terminationGracePeriodSeconds` (default 30); a negative request counts as 1;
- a later DELETE may shorten the period, moving deletionTimestamp earlier by the difference
  (never into the past), but never lengthen it: such a request changes nothing ("pending");
- `gracePeriodSeconds: 0` is the force path: the object goes at once, unless finalizers keep it;
- once the grace period is 0 (a forced or finished deletion), only finalizers hold the object,
  exactly as for kinds without graceful deletion.

This module only decides; `rest.py` writes. It knows nothing about storage, so the rule is
testable on plain dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from hypermesh.api import errors
from hypermesh.resources.registry import ResourceType

# What a Pod gets when neither the request nor its spec says (Kubernetes' default too).
DEFAULT_GRACE_SECONDS = 30
# Instances in these phases run nothing any more.
FINISHED_PHASES = ("Succeeded", "Failed")

Action = Literal["immediate", "mark", "pending"]


@dataclass(frozen=True)
class Plan:
    """What a DELETE does before (or instead of) removing the object.

    - `immediate`: no graceful deletion applies; finalizers (if any) decide, as for any kind;
    - `mark`: set `deletion_timestamp` and `grace`; with a grace of 0 the object then goes at
      once unless finalizers keep it. `first` says the object was not terminating before;
    - `pending`: a graceful deletion is already under way and this request does not shorten
      it; nothing changes.
    """

    action: Action
    deletion_timestamp: str | None = None
    grace: int | None = None
    first: bool = False


IMMEDIATE = Plan("immediate")
PENDING = Plan("pending")


def format_time(moment: datetime) -> str:
    """RFC 3339 in seconds, UTC: how Kubernetes writes metav1.Time."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: Any) -> datetime | None:
    """A metav1.Time as an aware datetime; None when absent or malformed."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def requested_grace(options: dict[str, Any], query: dict[str, str]) -> int | None:
    """DeleteOptions.gracePeriodSeconds from the body, else the `gracePeriodSeconds` query
    parameter (the python client may send either); None when neither is given."""
    value: Any = options.get("gracePeriodSeconds")
    where = "gracePeriodSeconds"
    if value is None and "gracePeriodSeconds" in query:
        value = query["gracePeriodSeconds"]
        try:
            value = int(value)
        except ValueError:
            raise errors.bad_request(f'{where}: Invalid value: "{value}": must be an integer number of seconds') from None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise errors.bad_request(f"{where}: Invalid value: {value!r}: must be an integer number of seconds")
    return value


def requested_dry_run(options: dict[str, Any]) -> bool:
    """DeleteOptions.dryRun: kubectl's `delete --dry-run=server` sends `["All"]` in the body,
    not as a query parameter."""
    value = options.get("dryRun")
    if value in (None, []):
        return False
    if value != ["All"]:
        raise errors.bad_request(f'dryRun: Unsupported value: {value!r}: supported values: "All"')
    return True


def handles(rtype: ResourceType) -> bool:
    """Whether the kind deletes gracefully (only Instances: they are what runs on nodes)."""
    return rtype.group == "hypermesh.io" and rtype.kind == "Instance"


def may_run(obj: dict[str, Any]) -> bool:
    """Bound to a node and not finished: something may be running that must be stopped."""
    spec = obj.get("spec") or {}
    phase = (obj.get("status") or {}).get("phase")
    return bool(spec.get("nodeName")) and phase not in FINISHED_PHASES


def spec_grace(obj: dict[str, Any]) -> int:
    """`spec.terminationGracePeriodSeconds`, or the default."""
    value = (obj.get("spec") or {}).get("terminationGracePeriodSeconds")
    if isinstance(value, bool) or not isinstance(value, int):
        return DEFAULT_GRACE_SECONDS
    return max(0, value)


def plan(rtype: ResourceType, obj: dict[str, Any], *, requested: int | None, now: datetime) -> Plan:
    """Decide what a DELETE asking for `requested` seconds (None: unspecified) does to `obj`."""
    if not handles(rtype):
        return IMMEDIATE
    if requested is not None and requested < 0:
        requested = 1  # Kubernetes treats a negative request as the shortest graceful one
    meta = obj["metadata"]
    current = meta.get("deletionGracePeriodSeconds")
    if meta.get("deletionTimestamp"):
        if not isinstance(current, int) or isinstance(current, bool) or current == 0:
            # Forced, finished or finalizer-only deletion: finalizers alone hold the object.
            return IMMEDIATE
        current = max(1, current)
        if requested is None or requested >= current:
            return PENDING  # only a shorter grace period may be asked for
        started = parse_time(meta["deletionTimestamp"]) or now
        # Move the deadline back by the old period and forward by the new one, never into the
        # past: a graceful request that comes too late still gets one second (and an actor
        # that sees the change), a forced one none.
        deadline = started - timedelta(seconds=current) + timedelta(seconds=requested)
        if deadline < now:
            deadline = now
            if requested != 0:
                requested = 1
        return Plan("mark", format_time(deadline), requested)
    if not may_run(obj):
        return IMMEDIATE
    grace = requested if requested is not None else spec_grace(obj)
    return Plan("mark", format_time(now + timedelta(seconds=grace)), grace, first=True)


def completes_on_update(meta: dict[str, Any]) -> bool:
    """Whether a write that leaves a deleting object without finalizers removes it: only when
    no grace period is running (a graceful deletion ends with the agent's own DELETE)."""
    grace = meta.get("deletionGracePeriodSeconds")
    return bool(meta.get("deletionTimestamp")) and not meta.get("finalizers") and not grace
