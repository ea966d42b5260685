"""The decision: filter every node, score the survivors, take the best, or explain why not.

`Scheduler.decide` answers for one Instance dict; `decide_batch` for many pending at once. Both
"assume" each placement into the node matrix immediately (Kubernetes' assume cache), so the next
decision sees it without waiting for the bind write to come back through the informer. If the
write fails, the caller releases the claim with `matrix.unbind(instance)`.

A batch is decided in priority order (highest first, stable), with instances of one shape
(`InstanceSpec.batch_key`: a Workload's replicas, usually) taken together where the first of
them stands.

Most decisions (no instance affinity, no topology spread constraints, no bound instance whose
anti-affinity repels the newcomer) go through a `ranking.Ranking` per shape: every node is
scored once, and each later decision of that shape re-scores only the rows that changed since
(usually the one row just bound), which is what makes single decisions and batches cheap. The
others are decided on a fresh computation over all nodes (`_decide_filtered`) that also
explains each filter; every decision sees all the placements made before it, batch or not.

This module and its package are pure: plain dicts in, `Decision`s out, no I/O and no other
HyperMesh imports, so the controller, the simulator and the benchmarks share the same core.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hypermesh.scheduler import filters, preemption, ranking, scoring, spread
from hypermesh.scheduler.instances import AffinityTerm, InstanceSpec, NodeConstraints, SpecCache
from hypermesh.scheduler.matrix import BoolArray, FloatArray, NodeMatrix
from hypermesh.scheduler.quantities import QuantityError
from hypermesh.scheduler.scoring import Policy
from hypermesh.scheduler.selectors import SpecError

__all__ = ["Decision", "Scheduler", "explain"]

_CACHE_LIMIT = 1024
# Shapes whose rankings are kept: a few Workloads being scaled at once.
_RANKINGS = 16


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
    scores: ranking.Static


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
        self.specs = SpecCache(self.priority_classes)
        self._static_cache: dict[NodeConstraints, _Static] = {}
        # The zone spread bonus by a group's zone counts (per zone code, and per node), valid
        # for one matrix static_version: it depends on nothing else, and replicas share it.
        self._zone_bonus_cache: dict[tuple[tuple[str, int], ...], dict[int, float]] = {}
        self._bonus_cache: dict[tuple[tuple[str, int], ...], FloatArray | None] = {}
        self._bonus_version = -1
        self._rankings: OrderedDict[tuple[Any, ...], ranking.Ranking] = OrderedDict()
        self._layout: ranking.ZoneLayout | None = None

    def decide(self, instance: Mapping[str, Any], *, assume: bool = True) -> Decision:
        """Place one instance (and assume it into the matrix unless `assume` is False)."""
        try:
            spec = self.specs.parse(instance)
        except (SpecError, QuantityError) as error:
            return _invalid(instance, error)
        return self.decide_spec(spec, assume=assume)

    def decide_batch(self, instances: Sequence[Mapping[str, Any]]) -> list[Decision]:
        """Place many instances, each seeing the placements before it; results in input order."""
        decisions: list[Decision | None] = [None] * len(instances)
        specs: list[tuple[int, InstanceSpec]] = []
        for i, instance in enumerate(instances):
            try:
                specs.append((i, self.specs.parse(instance)))
            except (SpecError, QuantityError) as error:
                decisions[i] = _invalid(instance, error)
        specs.sort(key=lambda item: -item[1].priority)
        groups: dict[tuple[Any, ...], list[tuple[int, InstanceSpec]]] = {}
        for item in specs:
            spec = item[1]
            if spec.affinity or spec.anti_affinity or spec.node_name or spec.topology_spread:
                groups[("single", item[0])] = [item]
            else:
                groups.setdefault(spec.batch_key, []).append(item)
        for members in groups.values():
            for i, spec in members:
                decisions[i] = self.decide_spec(spec)
        return [d for d in decisions if d is not None]

    def decide_spec(self, spec: InstanceSpec, *, assume: bool = True) -> Decision:
        """`decide` for an already parsed instance."""
        matrix = self.matrix
        if spec.node_name:
            if assume:
                matrix.bind_spec(spec, spec.node_name)
            return Decision(spec.key, spec.node_name, message="already bound by spec.nodeName")
        repelling = filters.existing_anti_affinity(matrix, spec)
        if spec.affinity or spec.anti_affinity or spec.topology_spread or repelling:
            return self._decide_filtered(spec, repelling, assume)
        ranked = self._ranking(spec)
        if ranked is None:
            return self._decide_filtered(spec, repelling, assume)
        best = ranked.best(self._zone_bonus(spec.spread_group))
        if best is not None:
            return self._place(spec, best, assume)
        static = self._static(spec.constraints)
        fit = scoring.fit(matrix, spec.requests, self.policy, slice(0, matrix.n))
        return self._fail(spec, static, fit.feasible)

    # Internals

    def _decide_filtered(
        self,
        spec: InstanceSpec,
        repelling: list[tuple[AffinityTerm, dict[int, int]]],
        assume: bool,
    ) -> Decision:
        # Everything over all nodes at once, including the filters that depend on what is
        # bound: instance (anti-)affinity, bound instances' anti-affinity, topology spread.
        matrix = self.matrix
        static = self._static(spec.constraints)
        allowed, reasons = filters.dynamic_filter(matrix, spec, static.filter, repelling)
        fit = scoring.fit(matrix, spec.requests, self.policy, slice(0, matrix.n))
        feasible = fit.feasible & allowed
        score = fit.score + static.scores.score
        if spec.topology_spread:
            preference = spread.score(matrix, spec, static.filter.selected, feasible)
            if preference is not None and self.policy.topology_spread_weight:
                score += self.policy.topology_spread_weight * preference
        else:
            bonus = self._bonus(spec.spread_group)
            if bonus is not None:
                score += bonus
        if matrix.n:
            best = int(np.where(feasible, score, -np.inf).argmax())
            if feasible[best]:
                return self._place(spec, best, assume)
        return self._fail(spec, static, fit.feasible, (allowed, reasons))

    def _place(self, spec: InstanceSpec, row: int, assume: bool) -> Decision:
        node = self.matrix.names[row]
        if assume:
            self.matrix.bind_spec(spec, node)
        return Decision(spec.key, node, message=f"assigned {spec.key} to {node}")

    def _ranking(self, spec: InstanceSpec) -> ranking.Ranking | None:
        """The current ranking of `spec`'s shape, or None where rankings do not pay."""
        matrix = self.matrix
        layout = self._layout
        if layout is None or layout.version != matrix.static_version:
            layout = self._layout = ranking.ZoneLayout(matrix)
        if len(layout.zones) > ranking.MAX_ZONES:
            return None
        key = (spec.requests, spec.constraints)
        rankings = self._rankings
        found = rankings.get(key)
        if found is not None and found.current():
            found.sync()
            rankings.move_to_end(key)
            return found
        static = self._static(spec.constraints)
        found = rankings[key] = ranking.Ranking(
            matrix, self.policy, spec.requests, static.scores, layout
        )
        rankings.move_to_end(key)
        if len(rankings) > _RANKINGS:
            rankings.popitem(last=False)
        return found

    def _static(self, constraints: NodeConstraints) -> _Static:
        cached = self._static_cache.get(constraints)
        if cached is not None and cached.filter.version == self.matrix.static_version:
            return cached
        if len(self._static_cache) >= _CACHE_LIMIT:
            self._static_cache.clear()
        passed = filters.static_filter(self.matrix, constraints)
        score = scoring.static_score(self.matrix, constraints, self.policy)
        fresh = _Static(
            passed, ranking.Static(passed.mask, score, np.where(passed.mask, score, -np.inf))
        )
        self._static_cache[constraints] = fresh
        return fresh

    def _zone_bonus(self, group: str | None) -> Mapping[int, float]:
        """`scoring.zone_bonus` for `group`, cached."""
        counts = self._zone_counts(group)
        if counts is None:
            return {}
        key = tuple(counts.items())
        found = self._zone_bonus_cache.get(key)
        if found is None:
            found = scoring.zone_bonus(self.matrix, group, self.policy)
            self._zone_bonus_cache[key] = found
        return found

    def _bonus(self, group: str | None) -> FloatArray | None:
        """`scoring.spread_bonus` for `group`, cached."""
        counts = self._zone_counts(group)
        if counts is None:
            return None
        key = tuple(counts.items())
        try:
            return self._bonus_cache[key]
        except KeyError:
            bonus = self._bonus_cache[key] = scoring.spread_bonus(self.matrix, group, self.policy)
            return bonus

    def _zone_counts(self, group: str | None) -> dict[str, int] | None:
        # The group's zone counts if a zone bonus may apply; clears the bonus caches when the
        # node set or labels moved.
        if group is None or not self.policy.spread_weight:
            return None
        matrix = self.matrix
        counts = matrix.zone_counts.get(group)
        if not counts:
            return None
        if (
            self._bonus_version != matrix.static_version
            or len(self._bonus_cache) + len(self._zone_bonus_cache) >= _CACHE_LIMIT
        ):
            self._bonus_cache.clear()
            self._zone_bonus_cache.clear()
            self._bonus_version = matrix.static_version
        return counts

    def _fail(
        self,
        spec: InstanceSpec,
        static: _Static,
        room: BoolArray,
        dynamic: tuple[BoolArray, dict[str, int]] | None = None,
    ) -> Decision:
        # `dynamic` is what `filters.dynamic_filter` said, when the decision asked it.
        matrix = self.matrix
        reasons = dict(static.filter.reasons)
        if dynamic is None:
            eligible = static.filter.mask
        else:
            eligible = dynamic[0]
            _merge(reasons, dynamic[1])
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
