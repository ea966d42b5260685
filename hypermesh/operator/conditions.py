"""Progress in `status.conditions` and `status.observedGeneration`, the Kubernetes way.

A reconciler reports what it saw and what it concluded: `observedGeneration` says which spec
the status describes (a client waiting for a rollout compares it with `metadata.generation`),
and each condition says one fact (`Ready`, `Available`, `Progressing`) with a machine reason and
a human message. `lastTransitionTime` moves only when the status value changes, so it tells how
long a fact has been true, not when a controller last looked.

The write is one merge patch to `/status` carrying the whole conditions list (a merge patch
replaces lists), so spec edits made meanwhile are never touched.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any, Literal

from hypermesh.client.aio import AsyncClient
from hypermesh.client.resources import Resource

ConditionStatus = Literal["True", "False", "Unknown"]


def now_rfc3339() -> str:
    """The current time as Kubernetes writes Time fields (seconds, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type: str,
    status: ConditionStatus,
    reason: str,
    message: str = "",
    *,
    observed_generation: int | None = None,
    now: str | None = None,
    update_time: str | None = None,
) -> list[dict[str, Any]]:
    """A new conditions list with `type` set; lastTransitionTime moves only on a status change.
    `update_time` sets `lastUpdateTime` (Deployment-style conditions record when the thing
    they describe last moved, not only when their status flipped)."""
    result = [copy.deepcopy(c) for c in conditions or [] if c.get("type") != type]
    previous = next((c for c in conditions or [] if c.get("type") == type), None)
    changed = previous is None or previous.get("status") != status
    condition: dict[str, Any] = {
        "type": type,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": (now or now_rfc3339())
        if changed or previous is None
        else previous.get("lastTransitionTime") or now or now_rfc3339(),
    }
    if update_time is not None:
        condition["lastUpdateTime"] = update_time
    if observed_generation is not None:
        condition["observedGeneration"] = observed_generation
    result.append(condition)
    return result


def get_condition(obj: dict[str, Any], type: str) -> dict[str, Any] | None:
    """The condition of `type` in `obj`'s status, or None."""
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == type:
            return dict(condition)
    return None


async def report(
    client: AsyncClient,
    resource: Resource,
    obj: dict[str, Any],
    *,
    conditions: list[tuple[str, ConditionStatus, str, str]] = (),  # type: ignore[assignment]
    status: dict[str, Any] | None = None,
    field_manager: str = "hypermesh-operator",
    update_times: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Set conditions (type, status, reason, message), observedGeneration and any other
    `status` fields of `obj` with one merge patch to /status; returns the updated object.
    `update_times` gives some conditions a `lastUpdateTime`, by type."""
    meta = obj["metadata"]
    generation = meta.get("generation")
    current = (obj.get("status") or {}).get("conditions")
    for type, value, reason, message in conditions:
        current = set_condition(
            current, type, value, reason, message, observed_generation=generation,
            update_time=(update_times or {}).get(type),
        )
    patch: dict[str, Any] = dict(status or {})
    if conditions:
        patch["conditions"] = current
    if generation is not None:
        patch["observedGeneration"] = generation
    return await client.update_status(
        resource, meta["name"], meta.get("namespace"), patch, field_manager=field_manager
    )


def status_changes(status: dict[str, Any], patch: dict[str, Any]) -> bool:
    """Whether merging the status `patch` into `status` changes anything, conditions compared
    without their timestamps (which `set_condition` keeps while a condition holds): a controller
    that would write the same status again skips the write."""
    for name, value in patch.items():
        if name == "conditions":
            continue
        if value is None:
            if name in status:
                return True
        elif status.get(name) != value:
            return True
    have = {c.get("type"): c for c in status.get("conditions") or []}
    for condition in patch.get("conditions") or []:
        old = have.get(condition.get("type")) or {}
        for key in ("status", "reason", "message", "observedGeneration"):
            if old.get(key) != condition.get(key):
                return True
    return False
