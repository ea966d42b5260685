"""Filters: which nodes may take an instance, as boolean masks, and why the others may not.

Two kinds, split by what they depend on:

- static filters (cordon, nodeSelector, required node affinity, NoSchedule/NoExecute taints)
  depend only on node labels and taints and the instance's `NodeConstraints`. Replicas share
  their constraints, so the scheduler caches `StaticFilter` per constraints until the matrix's
  `static_version` moves.
- dynamic filters depend on what is bound and are computed per decision: the instance's own
  required affinity and anti-affinity, the required anti-affinity of bound instances that the
  newcomer matches (Kubernetes applies those symmetrically), topology spread constraints (in
  `spread`), and resources (in `scoring.fit`, because the same arithmetic gives the
  bin-packing score).

Each failing node is blamed on the first filter it fails, in the orders above (static, then
dynamic, then resources), like the Kubernetes scheduler's per-node status; reasons use
Kubernetes' wording with Pod -> Instance so that `0/5000 nodes are available: ...` reads the
same to people who know kube-scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hypermesh.scheduler import spread
from hypermesh.scheduler.instances import (
    HARD_EFFECTS,
    AffinityTerm,
    InstanceSpec,
    NodeConstraints,
    tolerates,
)
from hypermesh.scheduler.matrix import BoolArray, NodeMatrix
from hypermesh.scheduler.selectors import matches

__all__ = [
    "AFFINITY",
    "ANTI_AFFINITY",
    "EXISTING_ANTI_AFFINITY",
    "NODE_AFFINITY",
    "TOPOLOGY_SPREAD",
    "TOPOLOGY_SPREAD_LABEL",
    "UNSCHEDULABLE",
    "StaticFilter",
    "dynamic_filter",
    "existing_anti_affinity",
    "instance_affinity",
    "insufficient",
    "static_filter",
    "taint_reason",
]

UNSCHEDULABLE = "node(s) were unschedulable"
NODE_AFFINITY = "node(s) didn't match Instance's node affinity/selector"
ANTI_AFFINITY = "node(s) didn't match instance anti-affinity rules"
AFFINITY = "node(s) didn't match instance affinity rules"
EXISTING_ANTI_AFFINITY = "node(s) didn't satisfy existing instances anti-affinity rules"
TOPOLOGY_SPREAD = spread.SKEW
TOPOLOGY_SPREAD_LABEL = spread.MISSING_LABEL
# Tolerating this taint lets an instance onto cordoned nodes, as in Kubernetes.
UNSCHEDULABLE_TAINT = ("node.kubernetes.io/unschedulable", "", "NoSchedule")


def insufficient(resource: str) -> str:
    """The reason for a node without room for `resource`."""
    return "Too many pods" if resource == "pods" else f"Insufficient {resource}"


def taint_reason(key: str, value: str) -> str:
    """The reason for a node with a taint the instance does not tolerate."""
    return f"node(s) had untolerated taint {{{key}: {value}}}"


@dataclass(frozen=True, slots=True)
class StaticFilter:
    """Nodes passing the static filters, and per-reason counts of those that do not.

    `selected` is the nodeSelector and required node affinity part alone (None: no such
    constraint), which topology spread needs to know which nodes count.
    """

    mask: BoolArray
    reasons: dict[str, int]
    version: int
    selected: BoolArray | None = None


def static_filter(matrix: NodeMatrix, constraints: NodeConstraints) -> StaticFilter:
    """Apply cordon, selector, node affinity and hard-taint filters to every node."""
    n = matrix.n
    ok = np.ones(n, dtype=bool)
    reasons: dict[str, int] = {}

    def blame(failing: BoolArray, reason: str) -> None:
        hit = failing & ok
        count = int(np.count_nonzero(hit))
        if count:
            reasons[reason] = reasons.get(reason, 0) + count
            ok[hit] = False

    if not tolerates(constraints.tolerations, *UNSCHEDULABLE_TAINT):
        blame(matrix.unschedulable[:n], UNSCHEDULABLE)
    selected = _node_selection(matrix, constraints)
    if selected is not None:
        blame(~selected, NODE_AFFINITY)
    for (key, value, effect), column in matrix.taint_columns.items():
        if effect in HARD_EFFECTS and not tolerates(constraints.tolerations, key, value, effect):
            blame(column[:n], taint_reason(key, value))
    return StaticFilter(ok, reasons, matrix.static_version, selected)


def _node_selection(matrix: NodeMatrix, constraints: NodeConstraints) -> BoolArray | None:
    # nodeSelector and required node affinity must both hold; affinity terms are ORed, and a
    # term without requirements matches nothing (Kubernetes' rule for empty terms).
    if not constraints.node_selector and constraints.required_terms is None:
        return None
    mask = matrix.requirements_mask(constraints.node_selector)
    if constraints.required_terms is not None:
        any_term = np.zeros(matrix.n, dtype=bool)
        for term in constraints.required_terms:
            if term:
                any_term |= matrix.requirements_mask(term)
        mask &= any_term
    return mask


def instance_affinity(
    matrix: NodeMatrix, spec: InstanceSpec, within: BoolArray | None = None
) -> tuple[BoolArray, dict[str, int]]:
    """Nodes allowed by the instance's required instance affinity and anti-affinity terms.

    Affinity: the node must share the term's topology domain with a matching instance; when no
    instance matches anywhere and the instance matches its own term, any node in some domain
    will do (so the first replica of a co-located set can start). Anti-affinity: the node must
    not share a domain with a matching instance. Reasons count only nodes in `within`.
    """
    n = matrix.n
    ok = np.ones(n, dtype=bool) if within is None else within.copy()
    reasons: dict[str, int] = {}
    for term in spec.affinity:
        rows = matrix.rows_with_matching(term.selector, term.namespaces)
        if rows:
            allowed = matrix.domain_mask(term.topology_key, rows)
        elif spec.namespace in term.namespaces and matches(term.selector, spec.labels):
            allowed = matrix.has_domain(term.topology_key)
        else:
            allowed = np.zeros(n, dtype=bool)
        _blame(ok, ~allowed, AFFINITY, reasons)
    for term in spec.anti_affinity:
        rows = matrix.rows_with_matching(term.selector, term.namespaces)
        if rows:
            _blame(ok, matrix.domain_mask(term.topology_key, rows), ANTI_AFFINITY, reasons)
    return ok, reasons


def existing_anti_affinity(
    matrix: NodeMatrix, spec: InstanceSpec
) -> list[tuple[AffinityTerm, dict[int, int]]]:
    """The required anti-affinity terms of bound instances that `spec` matches, with the rows
    holding those instances: the newcomer must keep out of their topology domains. Cheap when
    nothing matches (a few dict lookups), so every decision asks."""
    return matrix.anti_terms.matching(spec.namespace, spec.labels)


def dynamic_filter(
    matrix: NodeMatrix,
    spec: InstanceSpec,
    static: StaticFilter,
    repelling: list[tuple[AffinityTerm, dict[int, int]]],
) -> tuple[BoolArray, dict[str, int]]:
    """Nodes passing the static filters and every dynamic one but resources, and per-reason
    counts of the statically eligible nodes that fail one (each blamed on the first).

    `repelling` is `existing_anti_affinity(matrix, spec)`, which the caller has already asked
    to choose its path.
    """
    ok, reasons = instance_affinity(matrix, spec, within=static.mask)
    if repelling:
        repelled = np.zeros(matrix.n, dtype=bool)
        for term, rows in repelling:
            repelled |= matrix.domain_mask(term.topology_key, rows)
        _blame(ok, repelled, EXISTING_ANTI_AFFINITY, reasons)
    if spec.topology_spread:
        for failing, reason in spread.failing(matrix, spec, static.selected):
            _blame(ok, failing, reason, reasons)
    return ok, reasons


def _blame(ok: BoolArray, failing: BoolArray, reason: str, reasons: dict[str, int]) -> None:
    hit = failing & ok
    count = int(np.count_nonzero(hit))
    if count:
        reasons[reason] = reasons.get(reason, 0) + count
        ok[hit] = False
