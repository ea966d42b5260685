"""The pure decisions of the workloads controller: template hashes, readiness, and how many
Instances to create or delete in one step of a scale or a rollout.

Nothing here does I/O, so every rule (surge rounds up, unavailability rounds down, unhealthy
old replicas go first, newest go first on scale-down) is testable without a server and reads
in one place. The controller feeds it what the caches show and carries out the `Plan`.

The rolling rule is Kubernetes' Deployment rule at Instance granularity: create new-template
Instances while the total stays within `replicas + maxSurge`; delete old-template ones while
the available count stays at or above `replicas - maxUnavailable`, counting not-yet-available
new Instances as the unavailability they are.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

TEMPLATE_HASH_LABEL = "hypermesh.io/template-hash"
# Kubernetes' "safe" alphabet: no vowels (no words) and no look-alike characters.
_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
DEFAULT_SURGE = "25%"
DEFAULT_UNAVAILABLE = "25%"


def template_hash(template: dict[str, Any]) -> str:
    """A short, stable hash of a template (canonical JSON), like a pod-template-hash."""
    digest = hashlib.sha256(orjson.dumps(template, option=orjson.OPT_SORT_KEYS)).digest()
    number = int.from_bytes(digest[:8], "big")
    chars = []
    for _ in range(10):
        number, rest = divmod(number, len(_ALPHABET))
        chars.append(_ALPHABET[rest])
    return "".join(chars)


def int_or_percent(value: int | str | None, total: int, *, round_up: bool, default: str) -> int:
    """An absolute count from `3` or `"25%"` of `total`."""
    if value is None:
        value = default
    if isinstance(value, int):
        return max(0, value)
    text = str(value).strip()
    if text.endswith("%"):
        scaled = int(text[:-1]) * total / 100
        return int(math.ceil(scaled) if round_up else math.floor(scaled))
    return max(0, int(text))


def surge_and_unavailable(strategy: dict[str, Any], replicas: int) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) as counts; never both 0, or a rollout could not move."""
    rolling = strategy.get("rollingUpdate") or {}
    surge = int_or_percent(
        rolling.get("maxSurge"), replicas, round_up=True, default=DEFAULT_SURGE
    )
    unavailable = int_or_percent(
        rolling.get("maxUnavailable"), replicas, round_up=False, default=DEFAULT_UNAVAILABLE
    )
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, min(unavailable, replicas) if replicas else unavailable


# Readiness


def format_time(moment: datetime) -> str:
    """Seconds-precision RFC 3339, as Kubernetes writes condition times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 time, or None when absent or malformed."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def ready_since(instance: dict[str, Any]) -> datetime | None:
    """When the Instance's Ready condition became True, or None if it is not ready."""
    for condition in (instance.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            if condition.get("status") != "True":
                return None
            return parse_time(condition.get("lastTransitionTime")) or datetime.min.replace(
                tzinfo=UTC
            )
    return None


def is_ready(instance: dict[str, Any]) -> bool:
    """Whether the Instance reports Ready=True."""
    return ready_since(instance) is not None


def available_in(instance: dict[str, Any], min_ready_seconds: int, now: datetime) -> float | None:
    """Seconds until the Instance counts as available: 0 if it is, None if it is not ready."""
    since = ready_since(instance)
    if since is None:
        return None
    return max(0.0, min_ready_seconds - (now - since).total_seconds())


def deletion_order(instances: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Instances in the order a scale-down takes them: not ready first, then newest first."""

    def rank(instance: dict[str, Any]) -> tuple[bool, str, str]:
        meta = instance["metadata"]
        return (is_ready(instance), meta.get("creationTimestamp") or "", meta["name"])

    # Not ready (False) sorts first; within each group, the latest creation time first.
    not_ready = sorted((i for i in instances if not is_ready(i)), key=rank, reverse=True)
    ready = sorted((i for i in instances if is_ready(i)), key=rank, reverse=True)
    return not_ready + ready


# Plans


@dataclass
class Plan:
    """One step toward the desired state: how many new Instances, which ones to delete."""

    create: int = 0
    delete: list[dict[str, Any]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """Whether the step does nothing."""
        return self.create == 0 and not self.delete


def plan_rolling(
    replicas: int,
    new: list[dict[str, Any]],
    old: list[dict[str, Any]],
    *,
    surge: int,
    unavailable: int,
    available: set[str],
) -> Plan:
    """One rolling step; `available` holds the names of the available Instances."""
    if len(new) > replicas:
        return Plan(delete=deletion_order(new)[: len(new) - replicas])
    total = len(new) + len(old)
    create = max(0, min(replicas - len(new), replicas + surge - total))
    if not old:
        return Plan(create=create)
    # Creating does not change the allowance: each new Instance adds one to the total and one
    # to the unavailable new ones.
    new_unavailable = sum(1 for i in new if i["metadata"]["name"] not in available)
    allowed = total - (replicas - unavailable) - new_unavailable
    delete: list[dict[str, Any]] = []
    if allowed > 0:
        unhealthy = [i for i in old if i["metadata"]["name"] not in available]
        healthy = [i for i in old if i["metadata"]["name"] in available]
        delete = (deletion_order(unhealthy) + deletion_order(healthy))[:allowed]
    return Plan(create=create, delete=delete)


def plan_recreate(
    replicas: int,
    new: list[dict[str, Any]],
    old: list[dict[str, Any]],
    *,
    old_terminating: bool,
) -> Plan:
    """One Recreate step: every old Instance goes, and only once they are gone do new come."""
    if old:
        return Plan(delete=list(old))
    if old_terminating:
        return Plan()
    if len(new) > replicas:
        return Plan(delete=deletion_order(new)[: len(new) - replicas])
    return Plan(create=replicas - len(new))


def plan_paused(replicas: int, live: list[dict[str, Any]], *, can_create: bool) -> Plan:
    """A paused Workload still scales, as a paused Deployment does, but never rolls: extra
    Instances go (newest first, whatever their template) and missing ones are made from the
    template most replicas run, if it is known (`can_create`)."""
    if len(live) > replicas:
        return Plan(delete=deletion_order(live)[: len(live) - replicas])
    if len(live) < replicas and can_create:
        return Plan(create=replicas - len(live))
    return Plan()


@dataclass(frozen=True)
class Progress:
    """The Progressing condition's verdict and when the rollout last moved."""

    exceeded: bool
    last_update: datetime
    # Seconds until the deadline passes if nothing moves (None: no deadline running).
    remaining: float | None


def judge_progress(
    *, moved: bool, complete: bool, previous_update: datetime | None, deadline_seconds: int, now: datetime
) -> Progress:
    """Kubernetes' progress deadline: a rollout that has not moved (more updated, more
    available or fewer old replicas) for `deadline_seconds` is reported as stuck; moving again
    clears that."""
    last = now if moved or previous_update is None else previous_update
    if complete:
        return Progress(False, last, None)
    waited = (now - last).total_seconds()
    if waited > deadline_seconds:
        return Progress(True, last, None)
    return Progress(False, last, deadline_seconds - waited)
