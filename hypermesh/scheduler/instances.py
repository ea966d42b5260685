"""What the scheduler needs from one Instance, read once from its plain dict.

An Instance arrives as the API's JSON (a dict). Everything the filters and scores consult is
extracted here into frozen, hashable values, for two reasons: errors in the free-form fields
(affinity is `x-kubernetes-preserve-unknown-fields`) are reported with their field path before
any decision, and equal constraints compare equal, so the scheduler can cache per-constraint
node masks and batch identical replicas together.

Effective requests follow Kubernetes: per container, `requests` falling back to `limits`;
summed over containers; the larger of that sum and any single init container; plus one `pods`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hypermesh.scheduler import quantities
from hypermesh.scheduler.selectors import (
    Requirement,
    SpecError,
    label_selector,
    node_selector_requirements,
)

__all__ = [
    "AffinityTerm",
    "InstanceSpec",
    "NodeConstraints",
    "PreferredTerm",
    "Toleration",
    "instance_key",
    "parse_instance",
    "tolerates",
]

HARD_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
_EFFECTS = frozenset({"NoSchedule", "PreferNoSchedule", "NoExecute"})


@dataclass(frozen=True, slots=True)
class Toleration:
    """One toleration; an empty key with `Exists` tolerates every taint (of `effect`, if set)."""

    key: str
    operator: str
    value: str
    effect: str


@dataclass(frozen=True, slots=True)
class PreferredTerm:
    """A preferred node affinity term: `weight` earned by nodes matching `requirements`."""

    weight: int
    requirements: tuple[Requirement, ...]


@dataclass(frozen=True, slots=True)
class NodeConstraints:
    """Everything that depends only on node labels and taints: cacheable per node-set version."""

    node_selector: tuple[Requirement, ...] = ()
    # None: no required node affinity; otherwise ORed terms of ANDed requirements.
    required_terms: tuple[tuple[Requirement, ...], ...] | None = None
    preferred: tuple[PreferredTerm, ...] = ()
    tolerations: tuple[Toleration, ...] = ()


@dataclass(frozen=True, slots=True)
class AffinityTerm:
    """A required instance (anti-)affinity term: instances matching `selector` in `namespaces`
    and the nodes sharing a `topology_key` value with theirs."""

    selector: tuple[Requirement, ...]
    namespaces: frozenset[str]
    topology_key: str


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """The scheduling view of one Instance."""

    key: str
    namespace: str
    labels: Mapping[str, str]
    # (resource, base units) in a stable order, always including ("pods", 1).
    requests: tuple[tuple[str, int], ...]
    priority: int
    constraints: NodeConstraints
    affinity: tuple[AffinityTerm, ...] = ()
    anti_affinity: tuple[AffinityTerm, ...] = ()
    # Instances of one owner (or one label set) that topology spread keeps apart.
    spread_group: str | None = None
    node_name: str | None = None
    batch_key: tuple[Any, ...] = field(default=(), compare=False)


def instance_key(instance: Mapping[str, Any]) -> str:
    """`namespace/name`, the key victims and bindings are reported under."""
    meta = instance.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name') or ''}"


def tolerates(tolerations: tuple[Toleration, ...], key: str, value: str, effect: str) -> bool:
    """Whether any toleration tolerates the taint `key=value:effect` (Kubernetes' rules)."""
    for tol in tolerations:
        if tol.effect and tol.effect != effect:
            continue
        if not tol.key:
            if tol.operator == "Exists":
                return True
            continue
        if tol.key != key:
            continue
        if tol.operator == "Exists" or tol.value == value:
            return True
    return False


def parse_instance(
    instance: Mapping[str, Any], priority_classes: Mapping[str, int] | None = None
) -> InstanceSpec:
    """Read an Instance dict; raises `SpecError` or `QuantityError` naming the bad field."""
    meta = instance.get("metadata") or {}
    spec = instance.get("spec") or {}
    namespace = meta.get("namespace") or "default"
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    requests = effective_requests(spec)
    priority = _priority(spec, priority_classes or {})
    constraints = NodeConstraints(
        node_selector=_node_selector(spec.get("nodeSelector")),
        required_terms=None,
        preferred=(),
        tolerations=_tolerations(spec.get("tolerations")),
    )
    affinity = spec.get("affinity") or {}
    if not isinstance(affinity, Mapping):
        raise SpecError("spec.affinity", affinity, "an object")
    node_affinity = affinity.get("nodeAffinity")
    if node_affinity:
        required, preferred = _node_affinity(node_affinity)
        constraints = NodeConstraints(
            constraints.node_selector, required, preferred, constraints.tolerations
        )
    with_affinity = _affinity_terms(
        affinity.get("instanceAffinity"), "spec.affinity.instanceAffinity", namespace
    )
    anti = _affinity_terms(
        affinity.get("instanceAntiAffinity"), "spec.affinity.instanceAntiAffinity", namespace
    )
    group = _spread_group(meta, namespace, labels)
    return InstanceSpec(
        key=f"{namespace}/{meta.get('name') or ''}",
        namespace=namespace,
        labels=labels,
        requests=requests,
        priority=priority,
        constraints=constraints,
        affinity=with_affinity,
        anti_affinity=anti,
        spread_group=group,
        node_name=spec.get("nodeName") or None,
        batch_key=(requests, priority, constraints, group),
    )


def effective_requests(spec: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
    """Summed container requests (limits when no request), init containers' peak, one pod."""
    total: dict[str, int] = {}
    for i, container in enumerate(spec.get("containers") or []):
        for name, amount in _container_requests(container, f"spec.containers[{i}]").items():
            total[name] = total.get(name, 0) + amount
    for i, container in enumerate(spec.get("initContainers") or []):
        for name, amount in _container_requests(container, f"spec.initContainers[{i}]").items():
            total[name] = max(total.get(name, 0), amount)
    total.pop("pods", None)
    ordered = [("pods", 1)]
    ordered += sorted((name, amount) for name, amount in total.items() if amount > 0)
    return tuple(ordered)


def _container_requests(container: Mapping[str, Any], where: str) -> dict[str, int]:
    resources = container.get("resources") or {}
    merged: dict[str, int] = {}
    for part in ("limits", "requests"):
        values = resources.get(part) or {}
        if not isinstance(values, Mapping):
            raise SpecError(f"{where}.resources.{part}", values, "a map of resource to quantity")
        for name, text in values.items():
            merged[name] = quantities.to_base_units(
                name, text, field=f"{where}.resources.{part}.{name}"
            )
    return merged


def _priority(spec: Mapping[str, Any], classes: Mapping[str, int]) -> int:
    value = spec.get("priority")
    if value is None:
        name = spec.get("priorityClassName")
        return int(classes.get(name, 0)) if name else 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError("spec.priority", value, "an integer")
    return value


def _node_selector(selector: object) -> tuple[Requirement, ...]:
    if not selector:
        return ()
    if not isinstance(selector, Mapping):
        raise SpecError("spec.nodeSelector", selector, "a map of label to value")
    return tuple(Requirement(str(k), "In", (str(v),)) for k, v in sorted(selector.items()))


def _tolerations(tolerations: object) -> tuple[Toleration, ...]:
    if not tolerations:
        return ()
    if not isinstance(tolerations, list):
        raise SpecError("spec.tolerations", tolerations, "a list of tolerations")
    found = []
    for i, tol in enumerate(tolerations):
        where = f"spec.tolerations[{i}]"
        if not isinstance(tol, Mapping):
            raise SpecError(where, tol, "an object {key, operator, value, effect}")
        operator = tol.get("operator") or "Equal"
        if operator not in ("Equal", "Exists"):
            raise SpecError(f"{where}.operator", operator, "Equal or Exists")
        key = str(tol.get("key") or "")
        if not key and operator != "Exists":
            raise SpecError(f"{where}.operator", operator, "Exists when key is empty")
        effect = str(tol.get("effect") or "")
        if effect and effect not in _EFFECTS:
            raise SpecError(f"{where}.effect", effect, "NoSchedule, PreferNoSchedule or NoExecute")
        found.append(Toleration(key, operator, str(tol.get("value") or ""), effect))
    return tuple(found)


def _node_affinity(
    node_affinity: object,
) -> tuple[tuple[tuple[Requirement, ...], ...] | None, tuple[PreferredTerm, ...]]:
    base = "spec.affinity.nodeAffinity"
    if not isinstance(node_affinity, Mapping):
        raise SpecError(base, node_affinity, "an object")
    required: tuple[tuple[Requirement, ...], ...] | None = None
    hard = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
    if hard is not None:
        where = f"{base}.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms"
        terms = hard.get("nodeSelectorTerms") if isinstance(hard, Mapping) else None
        if not isinstance(terms, list):
            raise SpecError(where, terms, "a list of node selector terms")
        required = tuple(_node_selector_term(term, f"{where}[{i}]") for i, term in enumerate(terms))
    preferred = []
    soft = node_affinity.get("preferredDuringSchedulingIgnoredDuringExecution") or []
    where = f"{base}.preferredDuringSchedulingIgnoredDuringExecution"
    if not isinstance(soft, list):
        raise SpecError(where, soft, "a list of {weight, preference}")
    for i, item in enumerate(soft):
        if not isinstance(item, Mapping):
            raise SpecError(f"{where}[{i}]", item, "an object {weight, preference}")
        weight = item.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 100:
            raise SpecError(f"{where}[{i}].weight", weight, "an integer from 1 to 100")
        term = _node_selector_term(item.get("preference") or {}, f"{where}[{i}].preference")
        preferred.append(PreferredTerm(weight, term))
    return required, tuple(preferred)


def _node_selector_term(term: object, where: str) -> tuple[Requirement, ...]:
    if not isinstance(term, Mapping):
        raise SpecError(where, term, "an object {matchExpressions, matchFields}")
    found = node_selector_requirements(term.get("matchExpressions"), field=f"{where}.matchExpressions")
    # matchFields only knows metadata.name; the matrix serves it as a pseudo-label.
    fields = node_selector_requirements(term.get("matchFields"), field=f"{where}.matchFields")
    for i, req in enumerate(fields):
        if req.key != "metadata.name":
            raise SpecError(f"{where}.matchFields[{i}].key", req.key, "metadata.name")
    return found + fields


def _affinity_terms(value: object, base: str, namespace: str) -> tuple[AffinityTerm, ...]:
    if not value:
        return ()
    if not isinstance(value, Mapping):
        raise SpecError(base, value, "an object")
    where = f"{base}.requiredDuringSchedulingIgnoredDuringExecution"
    terms = value.get("requiredDuringSchedulingIgnoredDuringExecution") or []
    if not isinstance(terms, list):
        raise SpecError(where, terms, "a list of {labelSelector, topologyKey}")
    found = []
    for i, term in enumerate(terms):
        if not isinstance(term, Mapping):
            raise SpecError(f"{where}[{i}]", term, "an object {labelSelector, topologyKey}")
        topology_key = term.get("topologyKey")
        if not isinstance(topology_key, str) or not topology_key:
            raise SpecError(f"{where}[{i}].topologyKey", topology_key, "a node label key")
        namespaces = term.get("namespaces") or [namespace]
        selector = label_selector(term.get("labelSelector"), field=f"{where}[{i}].labelSelector")
        found.append(AffinityTerm(selector, frozenset(map(str, namespaces)), topology_key))
    return tuple(found)


def _spread_group(meta: Mapping[str, Any], namespace: str, labels: Mapping[str, str]) -> str | None:
    for owner in meta.get("ownerReferences") or []:
        if isinstance(owner, Mapping) and (owner.get("uid") or owner.get("name")):
            if owner.get("uid"):
                return f"uid:{owner['uid']}"
            return f"owner:{namespace}/{owner.get('kind')}/{owner['name']}"
    if labels:
        return "labels:" + namespace + "," + ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return None
