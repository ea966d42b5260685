"""Scores: among the nodes that may take an instance, which one should.

Every score is a float array in [0, 1] per node, higher is better, and the node's total is a
weighted sum set by `Policy`:

- fit (weight `fit_weight`): bin-packing (`MostAllocated`, the default: fill nodes so that
  fewer are used) or spreading (`LeastAllocated`), over the resources in `resource_weights`,
  counting this instance's requests as already placed. The same arithmetic yields the resource
  filter, so `fit` returns both.
- spread (`spread_weight`): prefer the zone (`topology.hypermesh.io/zone`) holding the fewest
  instances of the same spread group (owner, else label set): 1 for the emptiest zone, 0 for
  the fullest, nothing when they are level. Like Kubernetes' default spread constraints, this
  applies only to instances that declare no `topologySpreadConstraints` of their own.
- topology spread constraints (`topology_spread_weight`): the ScheduleAnyway constraints an
  instance declares, scored in `spread` (the 2 to 1 default against fit is Kubernetes' own).
- cost (`cost_weight`): cheap nodes by `hypermesh.io/cost-per-hour`, scaled between the
  cheapest and dearest node; unlabelled nodes score in the middle.
- preferred node affinity (`node_affinity_weight`): matched weight / total weight.
- PreferNoSchedule taints (`taint_weight`): fewer untolerated ones is better.

The last three depend only on node labels and taints, so `static_score` is cached beside the
static filter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from hypermesh.scheduler.instances import NodeConstraints, tolerates
from hypermesh.scheduler.matrix import BoolArray, FloatArray, NodeMatrix

__all__ = [
    "Fit",
    "Policy",
    "RowFit",
    "fit",
    "fit_row",
    "spread_bonus",
    "static_score",
    "zone_bonus",
]

Strategy = Literal["MostAllocated", "LeastAllocated"]


@dataclass(frozen=True)
class Policy:
    """How the scheduler weighs its scores; the defaults pack nodes and tie-break on the rest."""

    strategy: Strategy = "MostAllocated"
    resource_weights: dict[str, float] = field(default_factory=lambda: {"cpu": 1.0, "memory": 1.0})
    fit_weight: float = 1.0
    spread_weight: float = 1.0
    cost_weight: float = 0.1
    node_affinity_weight: float = 1.0
    taint_weight: float = 1.0
    topology_spread_weight: float = 2.0

    def __post_init__(self) -> None:
        if self.strategy not in ("MostAllocated", "LeastAllocated"):
            raise ValueError(f"strategy: {self.strategy!r} is not MostAllocated or LeastAllocated")
        for name in ("fit_weight", "spread_weight", "cost_weight", "node_affinity_weight",
                     "taint_weight", "topology_spread_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: weights must not be negative")
        if any(w < 0 for w in self.resource_weights.values()):
            raise ValueError("resource_weights: weights must not be negative")


@dataclass(slots=True)
class Fit:
    """Which nodes have room for the requests, and the weighted fit score of each."""

    feasible: BoolArray
    score: FloatArray


def fit(
    matrix: NodeMatrix,
    requests: tuple[tuple[str, int], ...],
    policy: Policy,
    rows: slice,
) -> Fit:
    """Room and fit score for `requests` on node rows `rows` (all: `slice(0, matrix.n)`)."""
    free, inv, resources = matrix.free, matrix.inv_alloc, matrix.resources
    feasible: BoolArray | None = None
    for resource, amount in requests:
        index = resources.get(resource)
        if index is None:
            # Nobody offers it: nothing fits.
            feasible = np.zeros(rows.stop - rows.start, dtype=bool)
            continue
        ok = free[index, rows] >= amount
        if feasible is None:
            feasible = ok
        else:
            feasible &= ok
    assert feasible is not None  # requests always include pods
    spare: FloatArray | None = None
    for index, weight, resource in _weighted(matrix, policy):
        # The fraction of the node left free once this instance is placed.
        term = free[index, rows] - _amount(requests, resource)
        term *= inv[index, rows]
        if weight != 1:
            term *= weight
        if spare is None:
            spare = term
        else:
            spare += term
    total = _total_weight(matrix, policy)
    if spare is None:
        score: FloatArray = np.zeros(rows.stop - rows.start)
    elif policy.strategy == "MostAllocated":
        spare /= -total
        spare += 1.0
        score = spare
    else:
        spare /= total
        score = spare
    if policy.fit_weight != 1:
        score *= policy.fit_weight
    return Fit(feasible, score)


def fit_row(
    matrix: NodeMatrix, requests: tuple[tuple[str, int], ...], policy: Policy, row: int
) -> float | None:
    """`fit` for one row in plain floats (same operations, same order): score, or None."""
    return RowFit(matrix, requests, policy).score(row)


class RowFit:
    """`fit_row` for one shape, with the lookups done once.

    Valid while the matrix's resources stay the same (a new resource may change what is
    weighted, and what fits at all); callers that keep one check `len(matrix.resources)`.
    """

    __slots__ = ("matrix", "needed", "weighted", "total", "most", "fit_weight")

    def __init__(
        self, matrix: NodeMatrix, requests: tuple[tuple[str, int], ...], policy: Policy
    ) -> None:
        self.matrix = matrix
        resources = matrix.resources
        # None when some requested resource exists nowhere: then nothing fits.
        self.needed: list[tuple[int, int]] | None = []
        for resource, amount in requests:
            index = resources.get(resource)
            if index is None:
                self.needed = None
                break
            self.needed.append((index, amount))
        self.weighted = [
            (index, weight, _amount(requests, resource))
            for index, weight, resource in _weighted(matrix, policy)
        ]
        self.total = _total_weight(matrix, policy)
        self.most = policy.strategy == "MostAllocated"
        self.fit_weight = policy.fit_weight

    def score(self, row: int) -> float | None:
        """The fit score of `row`, or None if the requests do not fit there."""
        if self.needed is None:
            return None
        free, inv = self.matrix.free, self.matrix.inv_alloc
        for index, amount in self.needed:
            if free.item(index, row) < amount:
                return None
        spare: float | None = None
        for index, weight, amount in self.weighted:
            term = free.item(index, row) - amount
            term *= inv.item(index, row)
            if weight != 1:
                term *= weight
            spare = term if spare is None else spare + term
        if spare is None:
            score = 0.0
        elif self.most:
            score = spare / -self.total + 1.0
        else:
            score = spare / self.total
        if self.fit_weight != 1:
            score *= self.fit_weight
        return score


def _amount(requests: tuple[tuple[str, int], ...], resource: str) -> int:
    for name, amount in requests:
        if name == resource:
            return amount
    return 0


def _weighted(matrix: NodeMatrix, policy: Policy) -> list[tuple[int, float, str]]:
    return [
        (matrix.resources[resource], weight, resource)
        for resource, weight in policy.resource_weights.items()
        if weight and resource in matrix.resources
    ]


def _total_weight(matrix: NodeMatrix, policy: Policy) -> float:
    return float(
        sum(w for r, w in policy.resource_weights.items() if w and r in matrix.resources)
    )


def static_score(matrix: NodeMatrix, constraints: NodeConstraints, policy: Policy) -> FloatArray:
    """Weighted cost, preferred node affinity and PreferNoSchedule scores of every node."""
    n = matrix.n
    score = np.zeros(n)
    if policy.cost_weight and n:
        cost = matrix.cost[:n]
        known = ~np.isnan(cost)
        if known.any():
            low, high = float(cost[known].min()), float(cost[known].max())
            scaled = np.full(n, 0.5)
            if high > low:
                scaled[known] = (high - cost[known]) / (high - low)
            else:
                scaled[known] = 1.0
            score += policy.cost_weight * scaled
    if policy.node_affinity_weight and constraints.preferred:
        earned = np.zeros(n)
        total = 0
        for term in constraints.preferred:
            total += term.weight
            if term.requirements:
                earned += term.weight * matrix.requirements_mask(term.requirements)
        score += policy.node_affinity_weight * earned / total
    if policy.taint_weight:
        count = np.zeros(n)
        for (key, value, effect), column in matrix.taint_columns.items():
            if effect == "PreferNoSchedule" and not tolerates(
                constraints.tolerations, key, value, effect
            ):
                count += column[:n]
        worst = float(count.max()) if n else 0.0
        if worst > 0:
            score += policy.taint_weight * (1.0 - count / worst)
        else:
            score += policy.taint_weight
    return score


def zone_bonus(matrix: NodeMatrix, group: str | None, policy: Policy) -> dict[int, float]:
    """Weighted preference per zone code for one spread group; empty when zones are level."""
    if group is None or not policy.spread_weight:
        return {}
    counts = matrix.zone_counts.get(group)
    if not counts:
        return {}
    in_use = matrix.zones_in_use()
    if len(in_use) < 2:
        return {}
    zones = matrix.zone_values()
    by_code = dict.fromkeys(in_use, 0)
    for zone, count in counts.items():
        code = zones.get(zone)
        if code is not None and code in by_code:
            by_code[code] = count
    low, high = min(by_code.values()), max(by_code.values())
    if low == high:
        return {}
    return {
        code: policy.spread_weight * (high - count) / (high - low)
        for code, count in by_code.items()
    }


def spread_bonus(matrix: NodeMatrix, group: str | None, policy: Policy) -> FloatArray | None:
    """Per-node zone preference for one spread group (`zone_bonus` per row), or None."""
    bonus = zone_bonus(matrix, group, policy)
    if not bonus:
        return None
    per_code = np.zeros(len(matrix.zone_values()) + 1)  # the last slot serves code -1: 0
    for code, value in bonus.items():
        per_code[code] = value
    return per_code[matrix.zone_column()]
