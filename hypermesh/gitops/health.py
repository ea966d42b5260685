"""Whether an applied object is healthy: what a wave waits for before the next one.

The rules follow kstatus (what Flux and `kubectl wait` use), reduced to what HyperMesh serves:

- an object being deleted is not healthy; one whose controller has not yet seen its latest
  spec (`status.observedGeneration` < `metadata.generation`) is still progressing;
- a Workload is healthy when Available and every replica runs the current template (a
  Deployment's rule); a rollout past its progress deadline has failed;
- a Namespace when Active; a CustomResourceDefinition when Established;
- any other object with a `Ready` condition (Instances, Certificates, GitSyncs, custom kinds)
  when it is True, else with an `Available` condition when that is True; a `Stalled=True`
  condition is a failure;
- everything else (Secrets, Services, ...) as soon as it exists.

`assess` is pure; the waiting loop lives in `hypermesh.gitops.sync`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["CURRENT", "Health", "assess"]

State = Literal["Current", "InProgress", "Failed"]


@dataclass(frozen=True)
class Health:
    """An object's state and, unless Current, why."""

    state: State
    message: str = ""

    @property
    def ready(self) -> bool:
        return self.state == "Current"


CURRENT = Health("Current")


def assess(obj: dict[str, Any] | None) -> Health:
    """The health of `obj` (None: it does not exist)."""
    if obj is None:
        return Health("InProgress", "not found")
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return Health("InProgress", "being deleted")
    status = obj.get("status") or {}
    generation = meta.get("generation")
    observed = status.get("observedGeneration")
    if isinstance(generation, int) and isinstance(observed, int) and observed < generation:
        return Health("InProgress", f"generation {generation} not yet observed (at {observed})")
    conditions = {
        c.get("type"): c for c in status.get("conditions") or [] if isinstance(c, dict)
    }
    stalled = conditions.get("Stalled")
    if stalled is not None and stalled.get("status") == "True":
        return Health("Failed", f"Stalled: {stalled.get('message') or stalled.get('reason')}")
    kind = obj.get("kind")
    api_version = str(obj.get("apiVersion", ""))
    if kind == "Workload" and api_version.startswith("hypermesh.io/"):
        return _workload(obj, status, conditions)
    if kind == "Namespace" and api_version == "v1":
        phase = status.get("phase")
        return CURRENT if phase in (None, "Active") else Health("InProgress", f"phase {phase}")
    if kind == "CustomResourceDefinition":
        return _condition(conditions, "Established") or Health("InProgress", "not yet established")
    if kind == "Instance" and status.get("phase") == "Failed":
        return Health("Failed", f"phase Failed: {status.get('message') or status.get('reason') or ''}".strip())
    for wanted in ("Ready", "Available"):
        found = _condition(conditions, wanted)
        if found is not None:
            return found
    return CURRENT


def _condition(conditions: dict[Any, dict[str, Any]], type_: str) -> Health | None:
    condition = conditions.get(type_)
    if condition is None:
        return None
    if condition.get("status") == "True":
        return CURRENT
    why = condition.get("message") or condition.get("reason") or condition.get("status")
    return Health("InProgress", f"{type_}={condition.get('status')}: {why}")


def _workload(
    obj: dict[str, Any], status: dict[str, Any], conditions: dict[Any, dict[str, Any]]
) -> Health:
    progressing = conditions.get("Progressing") or {}
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return Health("Failed", f"Progressing=False: {progressing.get('message', '')}".strip())
    if "observedGeneration" not in status:
        return Health("InProgress", "not yet observed by the workloads controller")
    wanted = (obj.get("spec") or {}).get("replicas", 1)
    wanted = wanted if isinstance(wanted, int) else 1
    updated = int(status.get("updatedReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    if updated < wanted:
        return Health("InProgress", f"{updated} of {wanted} replicas updated")
    if available < wanted:
        return Health("InProgress", f"{available} of {wanted} replicas available")
    if wanted == 0:
        return CURRENT
    return _condition(conditions, "Available") or Health("InProgress", "no Available condition yet")
