"""Preemption: when nothing fits, which lower-priority instances to evict, and where.

Only nodes that failed for lack of resources are candidates: evicting cannot fix a selector, a
taint or a cordon. On each candidate the algorithm is Kubernetes' (`selectVictimsOnNode`): take
away every instance of lower priority; if the newcomer still does not fit, the node is out;
otherwise give instances back ("reprieve"), highest priority first, while the newcomer still
fits. What was not given back are the victims. Among nodes, the best has the lowest
highest-victim priority, then the lowest sum of victim priorities, then the fewest victims.

This is the rare path (the cluster is full), so it is a plain Python loop over candidate rows.
The caller deletes the victims and retries the instance once they are gone; the space is not
reserved meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hypermesh.scheduler.instances import InstanceSpec
from hypermesh.scheduler.matrix import Binding, BoolArray, NodeMatrix

__all__ = ["Preemption", "find_victims"]


@dataclass(frozen=True, slots=True)
class Preemption:
    """Evict `victims` (instance keys) from `node` and the instance will fit there."""

    node: str
    victims: tuple[str, ...]


def find_victims(matrix: NodeMatrix, spec: InstanceSpec, candidates: BoolArray) -> Preemption | None:
    """The cheapest eviction that makes `spec` fit on one of the `candidates` rows, if any."""
    best: tuple[tuple[int, int, int], int, list[Binding]] | None = None
    wanted: list[tuple[int, int]] = []
    for resource, amount in spec.requests:
        index = matrix.resources.get(resource)
        if index is None:
            return None  # no node offers it, evicting cannot help
        wanted.append((index, amount))
    for row in np.flatnonzero(candidates).tolist():
        lower = [b for b in matrix.iter_bindings(row) if b.priority < spec.priority]
        if not lower:
            continue
        room = {index: float(matrix.free[index, row]) for index, _ in wanted}
        for binding in lower:
            _give(room, matrix, binding, +1)
        if not _fits(room, wanted):
            continue
        victims = []
        # Reprieve the most important first; among equals, the larger (fewer evictions).
        lower.sort(key=lambda b: (-b.priority, -sum(a for _, a in b.requests)))
        for binding in lower:
            _give(room, matrix, binding, -1)
            if not _fits(room, wanted):
                _give(room, matrix, binding, +1)
                victims.append(binding)
        if not victims:
            continue  # it fit without evicting: not a candidate after all
        rank = (
            max(b.priority for b in victims),
            sum(b.priority for b in victims),
            len(victims),
        )
        if best is None or rank < best[0]:
            best = (rank, row, victims)
    if best is None:
        return None
    _, row, victims = best
    return Preemption(matrix.names[row], tuple(sorted(b.key for b in victims)))


def _give(room: dict[int, float], matrix: NodeMatrix, binding: Binding, sign: int) -> None:
    for resource, amount in binding.requests:
        index = matrix.resources[resource]
        if index in room:
            room[index] += sign * amount


def _fits(room: dict[int, float], wanted: list[tuple[int, int]]) -> bool:
    return all(room[index] >= amount for index, amount in wanted)
