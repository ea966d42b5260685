"""Topology spread constraints (Kubernetes' PodTopologySpread, Pod -> Instance) over all nodes.

For each constraint, the bound instances in the newcomer's namespace that match its selector are
counted per topology domain (a value of `topologyKey`; under a hostname key, each node alone),
over the *eligible* nodes: those the newcomer's nodeSelector and required node affinity admit
and that carry the constraint's key (every hard constraint's key, for the filter; every soft
one's, for the score). Taints and cordons do not matter for counting, as with Kubernetes'
default `nodeTaintsPolicy: Ignore`.

- `whenUnsatisfiable: DoNotSchedule` filters (`failing`): a node without the key fails, and so
  does one where the newcomer would make `count(domain) + self - min(count over eligible
  domains)` exceed `maxSkew`, where `self` is 1 if the newcomer matches the selector itself.
  With fewer than `minDomains` eligible domains the minimum is taken as 0, which forces new
  domains into use before old ones grow past `maxSkew`.
- `ScheduleAnyway` scores (`score`): per constraint `count(domain) * log(domains + 2) +
  maxSkew - 1`, summed, then scaled over the feasible nodes as Kubernetes' NormalizeScore does,
  so the least crowded node scores 1; a node missing a key scores 0.

Counts per node come from `NodeMatrix.matching_counts` (kept up to date by every bind and
unbind) and domains from its label code columns, so per-domain sums are one `bincount` and a
constraint costs a handful of numpy passes over the nodes, not a walk over the instances.
"""

from __future__ import annotations

import math

import numpy as np

from hypermesh.scheduler.instances import InstanceSpec, SpreadConstraint
from hypermesh.scheduler.matrix import (
    HOSTNAME_LABELS,
    BoolArray,
    FloatArray,
    IntArray,
    NodeMatrix,
)
from hypermesh.scheduler.selectors import matches

__all__ = ["MISSING_LABEL", "SKEW", "failing", "score"]

SKEW = "node(s) didn't match instance topology spread constraints"
MISSING_LABEL = "node(s) didn't match instance topology spread constraints (missing required label)"


def failing(
    matrix: NodeMatrix, spec: InstanceSpec, selected: BoolArray | None
) -> list[tuple[BoolArray, str]]:
    """Nodes failing the DoNotSchedule constraints, as (mask, reason) in blame order.

    `selected` is the newcomer's nodeSelector/node affinity mask (None: every node).
    """
    hard = [c for c in spec.topology_spread if c.hard]
    if not hard:
        return []
    domains = [_domains(matrix, c) for c in hard]
    has_keys = _has_all(matrix.n, domains)
    eligible = has_keys if selected is None else has_keys & selected
    skewed = np.zeros(matrix.n, dtype=bool)
    for constraint, domain in zip(hard, domains, strict=True):
        per_node, totals = _count(matrix, spec.namespace, constraint, domain, eligible)
        if not len(totals) or (
            constraint.min_domains is not None and len(totals) < constraint.min_domains
        ):
            lowest = 0.0
        else:
            lowest = float(totals.min())
        own = 1 if _self_match(constraint, spec) else 0
        skewed |= per_node + (own - lowest) > constraint.max_skew
    return [(~has_keys, MISSING_LABEL), (skewed & has_keys, SKEW)]


def score(
    matrix: NodeMatrix, spec: InstanceSpec, selected: BoolArray | None, feasible: BoolArray
) -> FloatArray | None:
    """ScheduleAnyway preference in [0, 1] per node (higher: less crowded), None without any.

    Only `feasible` nodes are compared, so call it once the filters have run.
    """
    soft = [c for c in spec.topology_spread if not c.hard]
    if not soft:
        return None
    n = matrix.n
    domains = [_domains(matrix, c) for c in soft]
    has_keys = _has_all(n, domains)
    eligible = has_keys if selected is None else has_keys & selected
    scored = feasible & has_keys
    if not scored.any():
        return np.zeros(n)
    raw = np.zeros(n)
    for constraint, domain in zip(soft, domains, strict=True):
        per_node, _ = _count(matrix, spec.namespace, constraint, domain, eligible)
        # Kubernetes weighs each constraint by the log of its domain count among the
        # feasible nodes, so a constraint over many domains is not drowned by one over few.
        if domain is None:
            seen = int(np.count_nonzero(scored))
        else:
            codes, count = domain
            seen = int(np.count_nonzero(np.bincount(codes[scored], minlength=count)))
        per_node *= math.log(seen + 2)
        per_node += constraint.max_skew - 1
        raw += per_node
    low, high = float(raw[scored].min()), float(raw[scored].max())
    if high == 0:
        return has_keys.astype(np.float64)
    scaled: FloatArray = (high + low - raw) / high
    scaled[~has_keys] = 0.0
    return scaled


# A constraint's domains: each node's domain code and how many codes there are, or None under
# a hostname key, where every node is a domain of its own and codes would only cost time.
Domains = tuple[IntArray, int] | None


def _domains(matrix: NodeMatrix, constraint: SpreadConstraint) -> Domains:
    if constraint.topology_key in HOSTNAME_LABELS:
        return None
    return matrix.domain_codes(constraint.topology_key)


def _has_all(n: int, domains: list[Domains]) -> BoolArray:
    has = np.ones(n, dtype=bool)
    for domain in domains:
        if domain is not None:
            has &= domain[0] >= 0
    return has


def _self_match(constraint: SpreadConstraint, spec: InstanceSpec) -> bool:
    return constraint.selector is not None and matches(constraint.selector, spec.labels)


def _count(
    matrix: NodeMatrix,
    namespace: str,
    constraint: SpreadConstraint,
    domain: Domains,
    eligible: BoolArray,
) -> tuple[FloatArray, FloatArray]:
    """Per node, the matching instances in its domain (0 without the key); and the totals of
    the domains holding an eligible node (a domain with nodes but no instances counts, as 0).
    Only eligible nodes add to their domain."""
    if constraint.selector is None:
        counts = np.zeros(matrix.n)
    else:
        counts = matrix.matching_counts(namespace, constraint.selector).astype(np.float64)
    if domain is None:
        # A node that is not eligible fails its selector anyway; its own count is harmless.
        return counts, counts[eligible]
    codes, count = domain
    inside = codes[eligible]
    present = np.bincount(inside, minlength=count) > 0
    totals = np.bincount(inside, weights=counts[eligible], minlength=count).astype(np.float64)
    # Code -1 (no key) reads the extra slot at the end: 0.
    per_node: FloatArray = np.append(totals, 0.0)[codes]
    return per_node, totals[present]
