"""The decision: filter every node, score the survivors, take the best, or explain why not.

`Scheduler.decide` answers for one Instance dict; `decide_batch` for many pending at once. Both
"assume" each placement into the node matrix immediately (Kubernetes' assume cache), so the next
decision sees it without waiting for the bind write to come back through the informer. If the
write fails, the caller releases the claim with `matrix.unbind(instance)`.

A batch is decided in priority order (highest first, stable). Replicas of one Workload usually
share requests and constraints, so a batch groups instances by `InstanceSpec.batch_key`: each
group evaluates all nodes once, then after each placement re-evaluates only the row it just
used, which is what makes batches several times cheaper than single decisions. Instances with
instance (anti-)affinity depend on each other's placements in ways a single row cannot capture,
so they are decided one by one.

This module and its package are pure: plain dicts in, `Decision`s out, no I/O and no other
HyperMesh imports, so the controller, the simulator and the benchmarks share the same core.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from hypermesh.scheduler import filters, preemption, scoring
from hypermesh.scheduler.instances import InstanceSpec, NodeConstraints, parse_instance
from hypermesh.scheduler.matrix import BoolArray, FloatArray, NodeMatrix
from hypermesh.scheduler.quantities import QuantityError
from hypermesh.scheduler.scoring import Policy
from hypermesh.scheduler.selectors import SpecError

__all__ = ["Decision", "Scheduler", "explain"]

_CACHE_LIMIT = 1024


@dataclass(frozen=True)
class Decision:
    """Where one instance goes, or why it goes nowhere.

    `node` is set when the instance was placed (and assumed into the matrix). Otherwise
    `reasons` counts failing nodes per reason and `message` reads like Kubernetes'
    ("0/5000 nodes are available: 4200 Insufficient memory, ..."); `victims` and
    `nominated_node` say which lower-priority instances to delete to make room, and `error`
    is set when the instance's spec cannot be interpreted at all.
    """

    instance: str
    node: str | None
    reasons: dict[str, int] = field(default_factory=dict)
    message: str = ""
    victims: tuple[str, ...] = ()
    nominated_node: str | None = None
    error: str | None = None


@dataclass(slots=True)
class _Static:
    filter: filters.StaticFilter
    score: FloatArray


class Scheduler:
    """Vectorised filter-and-score over a `NodeMatrix` kept current by the caller."""

    def __init__(
        self,
        matrix: NodeMatrix | None = None,
        *,
        policy: Policy | None = None,
        priority_classes: Mapping[str, int] | None = None,
        preemption: bool = True,
    ) -> None:
        self.matrix = matrix if matrix is not None else NodeMatrix(priority_classes=priority_classes)
        self.policy = policy or Policy()
        self.priority_classes: Mapping[str, int] = priority_classes or self.matrix.priority_classes
        self.preemption = preemption
        self._static_cache: dict[NodeConstraints, _Static] = {}

    def decide(self, instance: Mapping[str, Any], *, assume: bool = True) -> Decision:
        """Place one instance (and assume it into the matrix unless `assume` is False)."""
        try:
            spec = parse_instance(instance, self.priority_classes)
        except (SpecError, QuantityError) as error:
            return _invalid(instance, error)
        return self.decide_spec(spec, assume=assume)

    def decide_batch(self, instances: Sequence[Mapping[str, Any]]) -> list[Decision]:
        """Place many instances, each seeing the placements before it; results in input order."""
        decisions: list[Decision | None] = [None] * len(instances)
        specs: list[tuple[int, InstanceSpec]] = []
        for i, instance in enumerate(instances):
            try:
                specs.append((i, parse_instance(instance, self.priority_classes)))
            except (SpecError, QuantityError) as error:
                decisions[i] = _invalid(instance, error)
        specs.sort(key=lambda item: -item[1].priority)
        groups: dict[tuple[Any, ...], list[tuple[int, InstanceSpec]]] = {}
        for item in specs:
            spec = item[1]
            if spec.affinity or spec.anti_affinity or spec.node_name:
                groups[("single", item[0])] = [item]
            else:
                groups.setdefault(spec.batch_key, []).append(item)
        for members in groups.values():
            if len(members) == 1:
                i, spec = members[0]
                decisions[i] = self.decide_spec(spec)
            else:
                for i, decision in self._place_group(members):
                    decisions[i] = decision
        return [d for d in decisions if d is not None]

    def decide_spec(self, spec: InstanceSpec, *, assume: bool = True) -> Decision:
        """`decide` for an already parsed instance."""
        matrix = self.matrix
        if spec.node_name:
            if assume:
                matrix.bind_spec(spec, spec.node_name)
            return Decision(spec.key, spec.node_name, message="already bound by spec.nodeName")
        static = self._static(spec.constraints)
        fit = scoring.fit(matrix, spec.requests, self.policy, slice(0, matrix.n))
        feasible = fit.feasible & static.filter.mask
        if spec.affinity or spec.anti_affinity:
            allowed, _ = filters.instance_affinity(matrix, spec)
            feasible &= allowed
        score = fit.score + static.score
        bonus = scoring.spread_bonus(matrix, spec.spread_group, self.policy)
        if bonus is not None:
            score += bonus
        if matrix.n:
            best = int(np.where(feasible, score, -np.inf).argmax())
            if feasible[best]:
                return self._place(spec, best, assume)
        return self._fail(spec, static, fit.feasible)

    # Internals

    def _place(self, spec: InstanceSpec, row: int, assume: bool) -> Decision:
        node = self.matrix.names[row]
        if assume:
            self.matrix.bind_spec(spec, node)
        return Decision(spec.key, node, message=f"assigned {spec.key} to {node}")

    def _place_group(
        self, members: list[tuple[int, InstanceSpec]]
    ) -> list[tuple[int, Decision]]:
        # Every member has the same requests, constraints, priority and spread group: evaluate
        # all nodes once, then keep the scores current by re-scoring only the row just used.
        # The spread bonus is constant within a zone, so nodes are kept in one array per zone
        # and the best node is the best of each zone's best plus that zone's bonus.
        matrix, policy = self.matrix, self.policy
        first = members[0][1]
        static = self._static(first.constraints)
        fit = scoring.fit(matrix, first.requests, policy, slice(0, matrix.n))
        masked = np.where(fit.feasible & static.filter.mask, fit.score + static.score, -np.inf)
        zones = _ZoneParts(matrix.zone_column(), masked)
        out: list[tuple[int, Decision]] = []
        for position, (i, spec) in enumerate(members):
            bonus = scoring.zone_bonus(matrix, spec.spread_group, policy)
            best = zones.best(bonus)
            if best is None:
                # Nothing fits this shape any more: the rest get the full explanation (and a
                # chance to preempt) one by one.
                out += [(j, self.decide_spec(s)) for j, s in members[position:]]
                break
            out.append((i, self._place(spec, best, True)))
            score = scoring.fit_row(matrix, spec.requests, policy, best)
            if score is None or not static.filter.mask[best]:
                zones.set(best, -np.inf)
            else:
                zones.set(best, score + float(static.score[best]))
        return out

    def _static(self, constraints: NodeConstraints) -> _Static:
        cached = self._static_cache.get(constraints)
        if cached is not None and cached.filter.version == self.matrix.static_version:
            return cached
        if len(self._static_cache) >= _CACHE_LIMIT:
            self._static_cache.clear()
        fresh = _Static(
            filters.static_filter(self.matrix, constraints),
            scoring.static_score(self.matrix, constraints, self.policy),
        )
        self._static_cache[constraints] = fresh
        return fresh

    def _fail(self, spec: InstanceSpec, static: _Static, room: BoolArray) -> Decision:
        matrix = self.matrix
        reasons = dict(static.filter.reasons)
        eligible = static.filter.mask.copy()
        if spec.affinity or spec.anti_affinity:
            eligible, more = filters.instance_affinity(matrix, spec, within=eligible)
            _merge(reasons, more)
        for resource, amount in spec.requests:
            index = matrix.resources.get(resource)
            if index is None:
                short = eligible
            else:
                short = eligible & (matrix.free[index, : matrix.n] < amount)
            count = int(np.count_nonzero(short))
            if count:
                reasons[filters.insufficient(resource)] = count
        message = explain(matrix.n, reasons)
        if not self.preemption:
            return Decision(spec.key, None, reasons, message)
        found = preemption.find_victims(matrix, spec, eligible & ~room)
        if found is None:
            message += " preemption: no lower-priority instances whose eviction would help."
            return Decision(spec.key, None, reasons, message)
        message += (
            f" preemption: evicting {len(found.victims)} lower-priority instance(s)"
            f" from {found.node} makes room."
        )
        return Decision(spec.key, None, reasons, message, found.victims, found.node)


class _ZoneParts:
    """Scores split by zone code (rows ascending within each), for per-zone argmax."""

    def __init__(self, zone_column: npt.NDArray[np.int32], masked: FloatArray) -> None:
        self.parts: list[tuple[int, npt.NDArray[np.intp], FloatArray]] = []
        self.part_of = np.zeros(len(zone_column), dtype=np.intp)
        self.local_of = np.zeros(len(zone_column), dtype=np.intp)
        for code in np.unique(zone_column).tolist():
            rows = np.flatnonzero(zone_column == code)
            self.part_of[rows] = len(self.parts)
            self.local_of[rows] = np.arange(len(rows))
            self.parts.append((int(code), rows, masked[rows]))

    def best(self, bonus: Mapping[int, float]) -> int | None:
        """The row with the highest score + zone bonus (lowest row on ties), None if none fit."""
        found: tuple[float, int] | None = None
        for code, rows, scores in self.parts:
            if not len(scores):
                continue
            local = int(scores.argmax())
            value = float(scores[local])
            if value == -np.inf:
                continue
            value += bonus.get(code, 0.0)
            row = int(rows[local])
            if found is None or value > found[0] or (value == found[0] and row < found[1]):
                found = (value, row)
        return None if found is None else found[1]

    def set(self, row: int, score: float) -> None:
        """Replace one row's score."""
        self.parts[self.part_of[row]][2][self.local_of[row]] = score


def explain(nodes: int, reasons: Mapping[str, int]) -> str:
    """Kubernetes' summary: "0/N nodes are available: <count> <reason>, ...", largest first."""
    if nodes == 0:
        return "0/0 nodes are available: no nodes are registered."
    parts = ", ".join(
        f"{count} {reason}" for reason, count in sorted(reasons.items(), key=lambda r: (-r[1], r[0]))
    )
    return f"0/{nodes} nodes are available: {parts}."


def _merge(into: dict[str, int], more: Mapping[str, int]) -> None:
    for reason, count in more.items():
        into[reason] = into.get(reason, 0) + count


def _invalid(instance: Mapping[str, Any], error: Exception) -> Decision:
    meta = instance.get("metadata") or {}
    key = f"{meta.get('namespace') or 'default'}/{meta.get('name') or ''}"
    return Decision(key, None, message=f"cannot schedule: {error}", error=str(error))
