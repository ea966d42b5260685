"""What the scheduler needs from one Instance, read once from its plain dict.

An Instance arrives as the API's JSON (a dict). Everything the filters and scores consult is
extracted here into frozen, hashable values, for two reasons: errors in the free-form fields
(affinity is `x-kubernetes-preserve-unknown-fields`) are reported with their field path before
any decision, and equal constraints compare equal, so the scheduler can cache per-constraint
node masks and batch identical replicas together.

Effective requests follow Kubernetes: per container, `requests` falling back to `limits`;
summed over containers; the larger of that sum and any single init container; plus one `pods`.

Replicas of one Workload carry equal specs, and reading a spec (quantities, selectors,
tolerations) costs more than a whole vectorised decision would like to spend on it. `SpecCache`
therefore reads each distinct scheduling-relevant part of a spec once: its key is the `repr` of
just the fields the scheduler reads, which for JSON values is a faithful picture of their
content, and cheaper to build than the parse it saves. What differs per replica (name, labels,
owner) is read every time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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
    "SpecCache",
    "SpreadConstraint",
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
class SpreadConstraint:
    """One `topologySpreadConstraints` entry: keep instances matching `selector` (in the
    instance's namespace) within `max_skew` of each other across `topology_key` domains.

    `selector` None is Kubernetes' nil selector, which matches no instance at all (an empty
    selector, `()`, matches every one). `hard` is `whenUnsatisfiable: DoNotSchedule` (a
    filter); otherwise the constraint only scores (`ScheduleAnyway`).
    """

    max_skew: int
    topology_key: str
    hard: bool
    selector: tuple[Requirement, ...] | None
    min_domains: int | None = None


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
    # Instances of one owner (or one label set) that the implicit zone spread keeps apart.
    spread_group: str | None = None
    node_name: str | None = None
    topology_spread: tuple[SpreadConstraint, ...] = ()

    @property
    def batch_key(self) -> tuple[Any, ...]:
        """Equal for instances of one shape, which a batch decides one after the other: same
        requests, priority, node constraints and spread group (a Workload's replicas)."""
        return (self.requests, self.priority, self.constraints, self.spread_group)


@dataclass(frozen=True, slots=True)
class _SpecPart:
    """What `parse_instance` reads from `spec` alone (given the namespace): `SpecCache`'s value."""

    requests: tuple[tuple[str, int], ...]
    priority: int | None
    priority_class: str | None
    constraints: NodeConstraints
    affinity: tuple[AffinityTerm, ...]
    anti_affinity: tuple[AffinityTerm, ...]
    node_name: str | None
    topology_spread: tuple[SpreadConstraint, ...]


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
    namespace = meta.get("namespace") or "default"
    part = _parse_spec(instance.get("spec") or {}, namespace)
    return _assemble(meta, namespace, part, priority_classes or {})


class SpecCache:
    """`parse_instance` that reads each distinct scheduling part of a spec only once.

    Bounded: when `limit` distinct parts are held it starts again from empty, which costs one
    parse per shape and keeps memory flat however many shapes pass through.
    """

    def __init__(self, priority_classes: Mapping[str, int] | None = None, *, limit: int = 4096):
        self.priority_classes: Mapping[str, int] = priority_classes or {}
        self.limit = limit
        self._parts: dict[tuple[str, str], _SpecPart] = {}

    def parse(self, instance: Mapping[str, Any]) -> InstanceSpec:
        """`parse_instance(instance, priority_classes)`, with the spec part memoised."""
        meta = instance.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        spec = instance.get("spec") or {}
        try:
            key = (namespace, _spec_key(spec))
        except (AttributeError, TypeError):
            # A malformed spec: the uncached parse reports it with its field path.
            key = None
        part = None if key is None else self._parts.get(key)
        if part is None:
            part = _parse_spec(spec, namespace)
            if key is not None:
                if len(self._parts) >= self.limit:
                    self._parts.clear()
                self._parts[key] = part
        return _assemble(meta, namespace, part, self.priority_classes)


def _spec_key(spec: Mapping[str, Any]) -> str:
    # Every spec field `_parse_spec` reads, and nothing else (images, probes and env vary
    # without changing where an instance may go).
    get = spec.get
    containers = get("containers")
    inits = get("initContainers")
    return repr((
        containers and [c.get("resources") for c in containers],
        inits and [c.get("resources") for c in inits],
        get("nodeName"),
        get("nodeSelector"),
        get("tolerations"),
        get("affinity"),
        get("priority"),
        get("priorityClassName"),
        get("topologySpreadConstraints"),
    ))


def _parse_spec(spec: Mapping[str, Any], namespace: str) -> _SpecPart:
    requests = effective_requests(spec)
    priority = spec.get("priority")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
        raise SpecError("spec.priority", priority, "an integer")
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
    return _SpecPart(
        requests=requests,
        priority=priority,
        priority_class=spec.get("priorityClassName") or None,
        constraints=constraints,
        affinity=with_affinity,
        anti_affinity=anti,
        node_name=spec.get("nodeName") or None,
        topology_spread=_topology_spread(spec.get("topologySpreadConstraints")),
    )


def _assemble(
    meta: Mapping[str, Any], namespace: str, part: _SpecPart, classes: Mapping[str, int]
) -> InstanceSpec:
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    if part.priority is not None:
        priority = part.priority
    else:
        priority = int(classes.get(part.priority_class, 0)) if part.priority_class else 0
    return InstanceSpec(
        key=f"{namespace}/{meta.get('name') or ''}",
        namespace=namespace,
        labels=labels,
        requests=part.requests,
        priority=priority,
        constraints=part.constraints,
        affinity=part.affinity,
        anti_affinity=part.anti_affinity,
        spread_group=_spread_group(meta, namespace, labels),
        node_name=part.node_name,
        topology_spread=part.topology_spread,
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


def _topology_spread(value: object) -> tuple[SpreadConstraint, ...]:
    base = "spec.topologySpreadConstraints"
    if not value:
        return ()
    if not isinstance(value, list):
        raise SpecError(base, value, "a list of topology spread constraints")
    found = []
    for i, item in enumerate(value):
        where = f"{base}[{i}]"
        if not isinstance(item, Mapping):
            raise SpecError(where, item, "an object {maxSkew, topologyKey, whenUnsatisfiable, ...}")
        max_skew = item.get("maxSkew")
        if isinstance(max_skew, bool) or not isinstance(max_skew, int) or max_skew < 1:
            raise SpecError(f"{where}.maxSkew", max_skew, "an integer of at least 1")
        topology_key = item.get("topologyKey")
        if not isinstance(topology_key, str) or not topology_key:
            raise SpecError(f"{where}.topologyKey", topology_key, "a node label key")
        when = item.get("whenUnsatisfiable")
        if when not in ("DoNotSchedule", "ScheduleAnyway"):
            raise SpecError(f"{where}.whenUnsatisfiable", when, "DoNotSchedule or ScheduleAnyway")
        min_domains = item.get("minDomains")
        if min_domains is not None:
            if isinstance(min_domains, bool) or not isinstance(min_domains, int) or min_domains < 1:
                raise SpecError(f"{where}.minDomains", min_domains, "an integer of at least 1")
            if when != "DoNotSchedule":
                # Kubernetes' rule: with ScheduleAnyway there is no global minimum to lower.
                raise SpecError(f"{where}.minDomains", min_domains, "only with DoNotSchedule")
        raw_selector = item.get("labelSelector")
        selector = (
            None
            if raw_selector is None
            else label_selector(raw_selector, field=f"{where}.labelSelector")
        )
        found.append(
            SpreadConstraint(max_skew, topology_key, when == "DoNotSchedule", selector, min_domains)
        )
    return tuple(found)


def _spread_group(meta: Mapping[str, Any], namespace: str, labels: Mapping[str, str]) -> str | None:
    for owner in meta.get("ownerReferences") or []:
        # dict first: isinstance against the Mapping ABC is slow, and JSON gives dicts.
        if isinstance(owner, (dict, Mapping)) and (owner.get("uid") or owner.get("name")):
            if owner.get("uid"):
                return f"uid:{owner['uid']}"
            return f"owner:{namespace}/{owner.get('kind')}/{owner['name']}"
    if labels:
        return "labels:" + namespace + "," + ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return None
