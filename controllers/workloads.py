"""The workloads controller: keeps each Workload's Instances at `replicas` copies of its
template, and rolls template changes out without dropping below the availability it promised.

Instances are grouped by template hash (the `hypermesh.io/template-hash` label), which plays
the part of a Deployment's ReplicaSets without a second kind: Instances whose hash is the
current template's are "new", the rest "old". Each reconcile is one level-triggered step
computed by `controllers.rollout` from the informer caches, then carried out.

Caches lag the writes made from them, so a second reconcile right after a create would count
too few Instances and create more (breaking maxSurge). The controller therefore keeps
"expectations", as Kubernetes' ReplicaSet controller does: the Instances it created and has
not yet seen in the cache are counted as existing, the ones it deleted as gone, until the cache
catches up (or the expectation expires).

Revisions: the Workload carries `hypermesh.io/revision` (the current revision number) and
`hypermesh.io/revision-history`, a JSON list of the templates of the latest revisions (the
current one plus `revisionHistoryLimit` previous), so `nexus rollout undo` can put one back by
writing it to `spec.template`; the controller then re-numbers it as the newest revision.
Instances carry the revision number they were made from.

A paused Workload still scales, as a paused Deployment does, but does not roll: new replicas copy
the template most replicas run (from the revision history), and a Workload created paused
starts nothing until resumed. A rollout that does not move for `progressDeadlineSeconds`
(default 600) is reported as Progressing=False/ProgressDeadlineExceeded, as Kubernetes does;
`nexus rollout status` then fails instead of waiting for ever.
"""

from __future__ import annotations

import copy
import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from controllers import adoption, rollout
from controllers.kinds import INSTANCES, WORKLOADS, OwnerIndex, controller_of
from hypermesh.client.errors import ApiError
from hypermesh.operator import Context, Operator, Result
from hypermesh.operator.bounded import run_bounded
from hypermesh.operator.conditions import get_condition
from hypermesh.operator.controller import Controller
from hypermesh.operator.informer import object_key

log = logging.getLogger(__name__)

REVISION_ANNOTATION = "hypermesh.io/revision"
HISTORY_ANNOTATION = "hypermesh.io/revision-history"
# Instance names stay a DNS label (they become hostnames): prefix-hash-suffix <= 63.
_MAX_PREFIX = 63 - 1 - 10 - 1 - 5
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
# An expectation not met within this many seconds is dropped (the watch lost the event).
_EXPECTATION_TTL = 30.0
# Writes of one step go out this many at a time.
_CONCURRENCY = 64
# Seconds Instance events wait for others of the same Workload before its reconcile runs.
_COALESCE = 0.1
# Kubernetes' default progressDeadlineSeconds.
DEFAULT_PROGRESS_DEADLINE = 600
# Status fields whose change means the rollout moved (restarting the progress deadline).
_PROGRESS_FIELDS = ("replicas", "updatedReplicas", "availableReplicas", "updateRevision")
# Events per step beyond which one summary Event is recorded instead of one per Instance.
_EVENTS_PER_STEP = 10


@dataclass
class _Expectations:
    """Writes made but not yet seen in the cache, for one Workload."""

    creates: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    deletes: dict[str, float] = field(default_factory=dict)


def _deleting(obj: dict[str, Any]) -> bool:
    return bool(obj["metadata"].get("deletionTimestamp"))


class WorkloadController:
    """The reconcile of Workloads, over the shared Workload and Instance informers."""

    def __init__(self, op: Operator, index: OwnerIndex) -> None:
        self.op = op
        self.index = index
        self.instances = op.informer(INSTANCES)
        self.workloads = op.informer(WORKLOADS)
        self.orphans = adoption.Orphans(self.instances)
        self._expectations: dict[str, _Expectations] = {}
        op.reconcile(WORKLOADS)(self.reconcile)
        self.controller: Controller = op.controllers[-1]
        self.instances.subscribe(self._on_instance)

    def _on_instance(self, event: str, obj: dict[str, Any]) -> None:
        # An Instance change is news for the Workload that controls it, and an orphan's for
        # every Workload of its namespace that would adopt it.
        queue = self.controller.queue
        if self.orphans.track(event, obj):
            if queue is not None:
                namespace = obj["metadata"].get("namespace")
                for workload in self.workloads.list(namespace):
                    if adoption.selects(adoption.selector_of(workload), obj):
                        queue.add(object_key(workload), _COALESCE)
            return
        ref = controller_of(obj)
        if ref is None or ref.get("kind") != WORKLOADS.kind or queue is None:
            return
        # After a short delay, so a burst of replica events (a thousand Instances created and
        # bound within a second) costs a few reconciles of the Workload, not one per event:
        # each one reads every replica.
        queue.add(f"{obj['metadata'].get('namespace')}/{ref.get('name')}", _COALESCE)

    # Reading the current state

    def _owned(self, workload: dict[str, Any]) -> list[dict[str, Any]]:
        """The Instances the Workload controls, as the cache plus expectations show them."""
        meta = workload["metadata"]
        uid = str(meta.get("uid"))
        found: dict[str, dict[str, Any]] = {}
        for resource, key in self.index.dependents(uid):
            instance = self.instances.get_key(key) if resource == INSTANCES else None
            ref = controller_of(instance) if instance is not None else None
            if instance is not None and ref is not None and ref.get("uid") == uid:
                found[instance["metadata"]["name"]] = instance
        expected = self._expectations.get(object_key(workload))
        if expected is None:
            return list(found.values())
        now = time.monotonic()
        for name, (at, created) in list(expected.creates.items()):
            if name in found or now - at > _EXPECTATION_TTL:
                del expected.creates[name]
            else:
                found[name] = created
        for name, at in list(expected.deletes.items()):
            current = found.get(name)
            if current is None or _deleting(current) or now - at > _EXPECTATION_TTL:
                del expected.deletes[name]
            else:
                # Deleted by us, not yet seen: it is on its way out.
                found[name] = _marked_deleting(current)
        if not expected.creates and not expected.deletes:
            self._expectations.pop(object_key(workload), None)
        return list(found.values())

    async def _claim(self, workload: dict[str, Any], owned: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Adopt the namespace's matching orphans and release owned Instances that stopped
        matching; returns what the Workload controls now (before the watch shows it)."""
        requirements = adoption.selector_of(workload)
        if not requirements:
            return owned
        manager = self.op.name
        kept: list[dict[str, Any]] = []
        for instance in owned:
            if _deleting(instance) or adoption.selects(requirements, instance):
                kept.append(instance)
            elif not await adoption.release(self.op.client, workload, instance, manager):
                kept.append(instance)  # not released (yet): still ours
        for orphan in self.orphans.in_namespace(str(workload["metadata"].get("namespace") or "")):
            if adoption.selects(requirements, orphan) and await adoption.adopt(self.op.client, workload, orphan, manager):
                meta = orphan["metadata"]
                adopted = {**orphan, "metadata": {**meta, "ownerReferences": [*(meta.get("ownerReferences") or []), adoption.owner_reference(workload)]}}
                kept.append(adopted)
        return kept

    # The reconcile

    async def reconcile(self, workload: dict[str, Any], ctx: Context) -> Result | None:
        """Converge one Workload by one step and report its status."""
        spec = workload.get("spec") or {}
        replicas = int(spec.get("replicas", 1))
        template = spec.get("template") or {}
        strategy = spec.get("strategy") or {}
        recreate = strategy.get("type") == "Recreate"
        paused = bool(spec.get("paused"))
        min_ready = int(spec.get("minReadySeconds") or 0)
        current_hash = rollout.template_hash(template)

        if not paused:
            workload = await self._record_revision(workload, current_hash, template)
        revision = (workload["metadata"].get("annotations") or {}).get(REVISION_ANNOTATION, "1")

        owned = await self._claim(workload, self._owned(workload))
        live = [i for i in owned if not _deleting(i)]
        new = [i for i in live if _hash_of(i) == current_hash]
        old = [i for i in live if _hash_of(i) != current_hash]
        now = datetime.now(UTC)
        waits = {i["metadata"]["name"]: rollout.available_in(i, min_ready, now) for i in live}
        available = {name for name, wait in waits.items() if wait == 0}
        surge, unavailable = rollout.surge_and_unavailable(strategy, replicas)
        if recreate:
            surge, unavailable = 0, 0

        if not paused:
            if recreate:
                plan = rollout.plan_recreate(
                    replicas,
                    new,
                    old,
                    old_terminating=any(_deleting(i) and _hash_of(i) != current_hash for i in owned),
                )
            else:
                plan = rollout.plan_rolling(
                    replicas, new, old, surge=surge, unavailable=unavailable, available=available
                )
            if not plan.empty:
                await self._carry_out(workload, plan, current_hash, revision, template, ctx)
        else:
            await self._scale_paused(workload, replicas, live, current_hash, revision, template, ctx)

        remaining = await self._report(
            workload,
            ctx,
            replicas=replicas,
            live=live,
            new=new,
            old=old,
            available=available,
            unavailable=unavailable,
            current_hash=current_hash,
            paused=paused,
        )
        # Look again when the next ready Instance becomes available (minReadySeconds), or when
        # the progress deadline passes if nothing moves before.
        pending = [wait for wait in waits.values() if wait is not None and wait > 0]
        if remaining is not None:
            pending.append(remaining + 0.5)
        return Result.requeue_after(min(pending) + 0.05) if pending else None

    async def _scale_paused(
        self,
        workload: dict[str, Any],
        replicas: int,
        live: list[dict[str, Any]],
        current_hash: str,
        revision: str,
        template: dict[str, Any],
        ctx: Context,
    ) -> None:
        """Scale a paused Workload without rolling it: new replicas copy the template most
        replicas run (found in the revision history), not the paused spec's."""
        hashes = Counter(_hash_of(i) for i in live)
        base = hashes.most_common(1)[0][0] if hashes else current_hash
        source: dict[str, Any] | None = template
        if base != current_hash:
            history = _history((workload["metadata"].get("annotations") or {}).get(HISTORY_ANNOTATION))
            entry = next((e for e in history if e.get("templateHash") == base), None)
            source = entry["template"] if entry is not None else None
            revision = str(entry["revision"]) if entry is not None else revision
        elif not live:
            source = None  # a Workload created paused starts nothing until it is resumed
        plan = rollout.plan_paused(replicas, live, can_create=source is not None)
        if not plan.empty:
            await self._carry_out(workload, plan, base, revision, source or {}, ctx)

    # Revisions

    async def _record_revision(
        self, workload: dict[str, Any], current_hash: str, template: dict[str, Any]
    ) -> dict[str, Any]:
        """Make the current template the newest revision in the Workload's annotations."""
        meta = workload["metadata"]
        annotations = meta.get("annotations") or {}
        history = _history(annotations.get(HISTORY_ANNOTATION))
        latest = max((entry["revision"] for entry in history), default=0)
        entry = next((e for e in history if e["templateHash"] == current_hash), None)
        if entry is not None and entry["revision"] == latest and annotations.get(
            REVISION_ANNOTATION
        ) == str(latest):
            return workload
        history = [e for e in history if e["templateHash"] != current_hash]
        revision = latest + 1
        history.append({"revision": revision, "templateHash": current_hash, "template": template})
        limit = int((workload.get("spec") or {}).get("revisionHistoryLimit", 10))
        history = sorted(history, key=lambda e: e["revision"])[-(limit + 1) :]
        patch = {
            "metadata": {
                "resourceVersion": meta["resourceVersion"],
                "annotations": {
                    REVISION_ANNOTATION: str(revision),
                    HISTORY_ANNOTATION: orjson.dumps(history).decode(),
                },
            }
        }
        # A 409 means the cache was behind; the newer Workload arrives with a retry.
        return await self.op.client.patch(
            WORKLOADS, meta["name"], meta.get("namespace"), patch, field_manager=self.op.name
        )

    # Writing

    async def _carry_out(
        self,
        workload: dict[str, Any],
        plan: rollout.Plan,
        current_hash: str,
        revision: str,
        template: dict[str, Any],
        ctx: Context,
    ) -> None:
        expected = self._expectations.setdefault(object_key(workload), _Expectations())
        created: list[str] = []
        deleted: list[str] = []

        async def create_one() -> None:
            body = _instance_body(workload, current_hash, revision, template)
            for _ in range(3):
                try:
                    instance = await self.op.client.create(
                        INSTANCES, body, field_manager=self.op.name
                    )
                except ApiError as exc:
                    if exc.status == 409:  # a suffix collision: draw another
                        body["metadata"]["name"] = _instance_name(workload, current_hash)
                        continue
                    raise
                name = instance["metadata"]["name"]
                expected.creates[name] = (time.monotonic(), instance)
                created.append(name)
                return

        async def delete_one(instance: dict[str, Any]) -> None:
            meta = instance["metadata"]
            try:
                await self.op.client.delete(
                    INSTANCES, meta["name"], meta.get("namespace"), propagation="Background"
                )
            except ApiError as exc:
                if exc.status != 404:
                    raise
            expected.deletes[meta["name"]] = time.monotonic()
            deleted.append(meta["name"])

        jobs = [delete_one(i) for i in plan.delete] + [create_one() for _ in range(plan.create)]
        try:
            await run_bounded(jobs, _CONCURRENCY)
        finally:
            await self._record_events(workload, ctx, created, deleted)

    async def _record_events(
        self, workload: dict[str, Any], ctx: Context, created: list[str], deleted: list[str]
    ) -> None:
        for verb, names, reason in (
            ("Deleted", deleted, "SuccessfulDelete"),
            ("Created", created, "SuccessfulCreate"),
        ):
            if len(names) > _EVENTS_PER_STEP:
                await ctx.event(workload, reason, f"{verb} {len(names)} instances")
                continue
            for name in names:
                await ctx.event(workload, reason, f"{verb} instance {name}")

    async def _report(
        self,
        workload: dict[str, Any],
        ctx: Context,
        *,
        replicas: int,
        live: list[dict[str, Any]],
        new: list[dict[str, Any]],
        old: list[dict[str, Any]],
        available: set[str],
        unavailable: int,
        current_hash: str,
        paused: bool,
    ) -> float | None:
        """Write status and conditions if they changed; returns the seconds left before the
        progress deadline passes (None when no deadline is running)."""
        name = workload["metadata"]["name"]
        n_available = len(available)
        hashes = Counter(_hash_of(i) for i in live)
        status: dict[str, Any] = {
            "replicas": len(live),
            "readyReplicas": sum(1 for i in live if rollout.is_ready(i)),
            "updatedReplicas": len(new),
            "availableReplicas": n_available,
            "unavailableReplicas": max(0, replicas - n_available),
            "updateRevision": current_hash,
            "currentRevision": hashes.most_common(1)[0][0] if hashes else current_hash,
        }
        if n_available >= replicas - unavailable:
            available_condition: tuple[str, Any, str, str] = (
                "Available", "True", "MinimumReplicasAvailable", "Workload has minimum availability."
            )
        else:
            available_condition = (
                "Available", "False", "MinimumReplicasUnavailable",
                "Workload does not have minimum availability.",
            )
        new_available = sum(1 for i in new if i["metadata"]["name"] in available)
        complete = len(new) == replicas and new_available == replicas and not old
        previous = get_condition(workload, "Progressing") or {}
        current_status = workload.get("status") or {}
        progress = rollout.judge_progress(
            moved=any(current_status.get(k) != status[k] for k in _PROGRESS_FIELDS),
            complete=complete,
            previous_update=rollout.parse_time(previous.get("lastUpdateTime") or previous.get("lastTransitionTime")),
            deadline_seconds=int((workload.get("spec") or {}).get("progressDeadlineSeconds") or DEFAULT_PROGRESS_DEADLINE),
            now=datetime.now(UTC),
        )
        if paused:
            # Kubernetes does not time a paused rollout.
            progressing: tuple[str, Any, str, str] = (
                "Progressing", "Unknown", "WorkloadPaused", "Workload is paused."
            )
        elif complete:
            progressing = (
                "Progressing", "True", "NewReplicaSetAvailable",
                f'Workload "{name}" has successfully progressed.',
            )
        elif progress.exceeded:
            progressing = (
                "Progressing", "False", "ProgressDeadlineExceeded",
                f'Workload "{name}" has timed out progressing: {len(new)} of {replicas} updated, '
                f"{new_available} available, {len(old)} old remaining.",
            )
        else:
            progressing = (
                "Progressing", "True", "ReplicaSetUpdated",
                f'Workload "{name}" is progressing: {len(new)} of {replicas} updated, '
                f"{len(old)} old remaining.",
            )
        conditions = [available_condition, progressing]
        if _status_changed(workload, status, conditions):
            try:
                await ctx.report(
                    workload, conditions=conditions, status=status,
                    update_times={"Progressing": rollout.format_time(progress.last_update)},
                )
            except ApiError as exc:
                if exc.status != 404:  # gone meanwhile: nothing to report on
                    raise
        return None if paused else progress.remaining


# Helpers


def _marked_deleting(instance: dict[str, Any]) -> dict[str, Any]:
    meta = {**instance["metadata"], "deletionTimestamp": "pending"}
    return {**instance, "metadata": meta}


def _hash_of(instance: dict[str, Any]) -> str:
    return str((instance["metadata"].get("labels") or {}).get(rollout.TEMPLATE_HASH_LABEL, ""))


def _history(text: str | None) -> list[dict[str, Any]]:
    """The revision history annotation, tolerant of a hand-edited or missing value."""
    if not text:
        return []
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(value, list):
        return []
    return [
        e for e in value
        if isinstance(e, dict) and isinstance(e.get("revision"), int) and "templateHash" in e
    ]


def _instance_name(workload: dict[str, Any], current_hash: str) -> str:
    prefix = workload["metadata"]["name"][:_MAX_PREFIX].rstrip("-.")
    suffix = "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(5))
    return f"{prefix}-{current_hash}-{suffix}"


def _instance_body(
    workload: dict[str, Any], current_hash: str, revision: str, template: dict[str, Any]
) -> dict[str, Any]:
    """A new Instance of the template, owned and controlled by the Workload."""
    meta = workload["metadata"]
    template_meta = template.get("metadata") or {}
    labels = {**(template_meta.get("labels") or {}), rollout.TEMPLATE_HASH_LABEL: current_hash}
    annotations = {**(template_meta.get("annotations") or {}), REVISION_ANNOTATION: revision}
    return {
        "apiVersion": INSTANCES.api_version,
        "kind": INSTANCES.kind,
        "metadata": {
            "name": _instance_name(workload, current_hash),
            "namespace": meta.get("namespace"),
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [adoption.owner_reference(workload)],
        },
        "spec": copy.deepcopy(template.get("spec") or {}),
    }


def _status_changed(
    workload: dict[str, Any],
    status: dict[str, Any],
    conditions: list[tuple[str, Any, str, str]],
) -> bool:
    """Whether writing would change anything (a no-op write would wake this reconcile again)."""
    current = workload.get("status") or {}
    if current.get("observedGeneration") != workload["metadata"].get("generation"):
        return True
    if any(current.get(k) != v for k, v in status.items()):
        return True
    existing = {c.get("type"): c for c in current.get("conditions") or []}
    for type_, value, reason, message in conditions:
        have = existing.get(type_) or {}
        if (have.get("status"), have.get("reason"), have.get("message")) != (value, reason, message):
            return True
    return False


def setup(op: Operator, index: OwnerIndex) -> WorkloadController:
    """Register the workloads controller on `op`."""
    return WorkloadController(op, index)
