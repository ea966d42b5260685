"""Properties of the scheduler under arbitrary sequences of decisions and informer events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hypermesh.scheduler import NodeMatrix, Policy, Scheduler, filters, parse_instance, scoring

ZONE = "topology.hypermesh.io/zone"
CPUS = ["100m", "250m", "500m", "1", "2", "3"]
MEMORIES = ["64Mi", "256Mi", "1Gi", "3Gi"]


def node(index: int, cpu: int, memory_gi: int, tainted: bool) -> dict[str, Any]:
    taints = [{"key": "t", "value": "v", "effect": "NoSchedule"}] if tainted else []
    return {
        "metadata": {"name": f"n{index}", "labels": {ZONE: f"z{index % 3}"}},
        "spec": {"taints": taints},
        "status": {"allocatable": {"cpu": str(cpu), "memory": f"{memory_gi}Gi", "pods": "6"}},
    }


def instance(index: int, cpu: str, memory: str, owner: int, priority: int, tolerate: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": cpu, "memory": memory}}}],
        "priority": priority,
    }
    if tolerate:
        spec["tolerations"] = [{"key": "t", "operator": "Exists"}]
    meta = {"name": f"i{index}", "namespace": "ns", "labels": {"app": f"w{owner}"},
            "ownerReferences": [{"uid": f"w{owner}", "kind": "Workload", "name": f"w{owner}"}]}
    return {"metadata": meta, "spec": spec}


nodes_strategy = st.lists(
    st.tuples(st.integers(1, 8), st.integers(1, 8), st.booleans()), min_size=1, max_size=8
)
instance_strategy = st.tuples(
    st.sampled_from(CPUS), st.sampled_from(MEMORIES), st.integers(0, 3), st.integers(0, 3), st.booleans()
)
operation = st.one_of(
    st.tuples(st.just("decide"), instance_strategy),
    st.tuples(st.just("batch"), st.lists(instance_strategy, min_size=1, max_size=12)),
    st.tuples(st.just("unbind"), st.integers(0, 200)),
    st.tuples(st.just("remove"), st.integers(0, 7)),
    st.tuples(st.just("readd"), st.integers(0, 7)),
)


@settings(max_examples=60, deadline=None)
@given(nodes_strategy, st.lists(operation, max_size=25), st.sampled_from(["MostAllocated", "LeastAllocated"]))
def test_no_node_is_ever_overcommitted(nodes: list[Any], operations: list[Any], strategy: Any) -> None:
    matrix = NodeMatrix(capacity=1)
    specs = [node(i, *n) for i, n in enumerate(nodes)]
    for n in specs:
        matrix.upsert_node(n)
    scheduler = Scheduler(matrix, policy=Policy(strategy=strategy))
    counter = 0
    placed: list[dict[str, Any]] = []
    for kind, argument in operations:
        if kind == "decide":
            counter += 1
            made = instance(counter, *argument)
            if scheduler.decide(made).node:
                placed.append(made)
        elif kind == "batch":
            batch = []
            for item in argument:
                counter += 1
                batch.append(instance(counter, *item))
            for made, decision in zip(batch, scheduler.decide_batch(batch), strict=True):
                assert decision.instance == f"ns/{made['metadata']['name']}"
                if decision.node:
                    placed.append(made)
                    tainted = specs[int(decision.node[1:])]["spec"]["taints"]
                    assert not tainted or made["spec"].get("tolerations")
        elif kind == "unbind" and placed:
            matrix.unbind(placed.pop(argument % len(placed)))
        elif kind == "remove":
            matrix.remove_node(f"n{argument % len(specs)}")
        elif kind == "readd":
            matrix.upsert_node(specs[argument % len(specs)])
        matrix.check()
        k = len(matrix.resources)
        used = matrix.used[:k, : matrix.n]
        alloc = matrix.alloc[:k, : matrix.n]
        assert np.all(used <= alloc), "a node's bound requests exceed its allocatable"


# The incremental rankings choose exactly what the plain vectorised computation chooses.


def plain_choice(matrix: NodeMatrix, made: dict[str, Any], policy: Policy) -> str | None:
    """The decision as one pass over every node would make it: filter, score, argmax."""
    spec = parse_instance(made)
    static = filters.static_filter(matrix, spec.constraints)
    fit = scoring.fit(matrix, spec.requests, policy, slice(0, matrix.n))
    feasible = fit.feasible & static.mask
    score = fit.score + scoring.static_score(matrix, spec.constraints, policy)
    bonus = scoring.spread_bonus(matrix, spec.spread_group, policy)
    if bonus is not None:
        score += bonus
    if not matrix.n:
        return None
    best = int(np.where(feasible, score, -np.inf).argmax())
    return matrix.names[best] if feasible[best] else None


# Few shapes, so that decisions reuse (and must correctly update) each shape's ranking; and
# resizing a node in place: its row stays, its allocatable changes.
few_shapes = st.tuples(
    st.sampled_from(["250m", "1"]), st.just("256Mi"), st.integers(0, 3), st.integers(0, 3), st.booleans()
)
reusing = st.one_of(
    st.tuples(st.just("decide"), few_shapes),
    st.tuples(st.just("batch"), st.lists(few_shapes, min_size=1, max_size=6)),
    st.tuples(st.just("unbind"), st.integers(0, 200)),
    st.tuples(st.just("remove"), st.integers(0, 7)),
    st.tuples(st.just("readd"), st.integers(0, 7)),
    st.tuples(st.just("resize"), st.tuples(st.integers(0, 7), st.integers(1, 8), st.integers(1, 8))),
)


@settings(max_examples=200, deadline=None)
@given(
    nodes_strategy,
    st.lists(reusing, max_size=30),
    st.sampled_from(["MostAllocated", "LeastAllocated"]),
)
def test_single_decisions_equal_the_plain_computation(
    nodes: list[Any], operations: list[Any], strategy: Any
) -> None:
    matrix = NodeMatrix(capacity=1)
    specs = [node(i, *n) for i, n in enumerate(nodes)]
    for n in specs:
        matrix.upsert_node(n)
    policy = Policy(strategy=strategy)
    scheduler = Scheduler(matrix, policy=policy)
    counter = 0
    placed: list[dict[str, Any]] = []
    for kind, argument in operations:
        if kind == "decide":
            counter += 1
            made = instance(counter, *argument)
            expected = plain_choice(matrix, made, policy)
            decision = scheduler.decide(made)
            assert decision.node == expected
            if decision.node:
                placed.append(made)
        elif kind == "batch":
            batch = [instance(counter + k + 1, *item) for k, item in enumerate(argument)]
            counter += len(batch)
            for made, decision in zip(batch, scheduler.decide_batch(batch), strict=True):
                if decision.node:
                    placed.append(made)
        elif kind == "unbind" and placed:
            matrix.unbind(placed.pop(argument % len(placed)))
        elif kind == "remove":
            matrix.remove_node(f"n{argument % len(specs)}")
        elif kind == "readd":
            matrix.upsert_node(specs[argument % len(specs)])
        elif kind == "resize":
            index, cpu, memory = argument
            index %= len(specs)
            specs[index] = node(index, cpu, memory, bool(specs[index]["spec"]["taints"]))
            matrix.upsert_node(specs[index])


# Topology spread and anti-affinity against a brute-force model of Kubernetes' rules.

HOST = "kubernetes.io/hostname"
APPS = ["a", "b"]
NAMESPACES = ["ns", "other"]


@dataclass
class Placed:
    key: str
    node: str
    namespace: str
    app: str
    avoid: tuple[str, str] | None  # (app, topology key) of a required anti-affinity term


@dataclass
class Newcomer:
    namespace: str
    app: str
    avoid: tuple[str, str] | None
    # (topology key, maxSkew, selected app or None for no selector, minDomains)
    spread: tuple[str, int, str | None, int | None] | None


def domain(zones: dict[str, str | None], name: str, key: str) -> str | None:
    return name if key == HOST else zones[name]


def allowed(zones: dict[str, str | None], pods: dict[str, int], bound: list[Placed], new: Newcomer) -> set[str]:
    """The nodes the rules admit, computed instance by instance."""
    ok = {name for name in zones if sum(1 for p in bound if p.node == name) < pods[name]}
    if new.avoid is not None:
        app, key = new.avoid
        for p in bound:
            if p.namespace == new.namespace and p.app == app:
                home = domain(zones, p.node, key)
                ok -= {n for n in zones if home is not None and domain(zones, n, key) == home}
    for p in bound:
        if p.avoid is not None and p.avoid[0] == new.app and p.namespace == new.namespace:
            home = domain(zones, p.node, p.avoid[1])
            ok -= {n for n in zones if home is not None and domain(zones, n, p.avoid[1]) == home}
    if new.spread is not None:
        key, skew, app, min_domains = new.spread
        eligible = [n for n in zones if domain(zones, n, key) is not None]
        counts = {domain(zones, n, key): 0 for n in eligible}
        for p in bound:
            if p.namespace == new.namespace and app is not None and p.app == app and p.node in eligible:
                counts[domain(zones, p.node, key)] += 1
        lowest = min(counts.values()) if counts else 0
        if min_domains is not None and len(counts) < min_domains:
            lowest = 0
        own = 1 if app == new.app else 0
        ok = {n for n in ok if n in eligible and counts[domain(zones, n, key)] + own - lowest <= skew}
    return ok


def as_instance(key: str, namespace: str, app: str, avoid: tuple[str, str] | None,
                spread: tuple[str, int, str | None, int | None] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "10m"}}}]}
    if avoid is not None:
        spec["affinity"] = {"instanceAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": avoid[0]}}, "topologyKey": avoid[1]}]}}
    if spread is not None:
        key_, skew, selected, min_domains = spread
        item: dict[str, Any] = {"maxSkew": skew, "topologyKey": key_, "whenUnsatisfiable": "DoNotSchedule"}
        if selected is not None:
            item["labelSelector"] = {"matchLabels": {"app": selected}}
        if min_domains is not None:
            item["minDomains"] = min_domains
        spec["topologySpreadConstraints"] = [item]
    return {"metadata": {"name": key, "namespace": namespace, "labels": {"app": app}}, "spec": spec}


keys = st.sampled_from([ZONE, HOST])
avoid_strategy = st.none() | st.tuples(st.sampled_from(APPS), keys)
spread_strategy = st.none() | st.tuples(
    keys, st.integers(1, 2), st.none() | st.sampled_from(APPS), st.none() | st.integers(1, 4)
)
newcomer_strategy = st.builds(
    Newcomer, st.sampled_from(NAMESPACES), st.sampled_from(APPS), avoid_strategy, spread_strategy
)
cluster_strategy = st.lists(
    st.tuples(st.none() | st.sampled_from(["z0", "z1", "z2"]), st.integers(1, 4)), min_size=1, max_size=7
)
step = st.one_of(
    st.tuples(st.just("decide"), newcomer_strategy),
    st.tuples(st.just("batch"), st.lists(newcomer_strategy, min_size=1, max_size=6)),
    st.tuples(st.just("unbind"), st.integers(0, 100)),
)


def batch_order(made: list[tuple[str, Newcomer]], decisions: list[Any]) -> list[tuple[Any, Any]]:
    groups: dict[Any, list[tuple[Any, Any]]] = {}
    for i, pair in enumerate(zip(made, decisions, strict=True)):
        new = pair[0][1]
        plain = new.avoid is None and new.spread is None
        groups.setdefault((new.namespace, new.app) if plain else i, []).append(pair)
    return [pair for members in groups.values() for pair in members]


@settings(max_examples=300, deadline=None)
@given(cluster_strategy, st.lists(step, max_size=25))
def test_spread_and_anti_affinity_follow_the_rules(cluster: list[Any], steps: list[Any]) -> None:
    zones = {f"n{i}": zone for i, (zone, _) in enumerate(cluster)}
    pods = {f"n{i}": capacity for i, (_, capacity) in enumerate(cluster)}
    matrix = NodeMatrix(capacity=1)
    for name, zone in zones.items():
        matrix.upsert_node({
            "metadata": {"name": name, "labels": {ZONE: zone} if zone else {}},
            "status": {"allocatable": {"cpu": "64", "memory": "64Gi", "pods": str(pods[name])}},
        })
    scheduler = Scheduler(matrix)
    bound: list[Placed] = []
    counter = 0
    for kind, argument in steps:
        if kind == "unbind":
            if bound:
                gone = bound.pop(argument % len(bound))
                matrix.unbind_key(f"{gone.namespace}/{gone.key}")
            continue
        newcomers = [argument] if kind == "decide" else argument
        made = []
        for new in newcomers:
            counter += 1
            made.append((f"i{counter}", new))
        objects = [as_instance(key, new.namespace, new.app, new.avoid, new.spread) for key, new in made]
        if kind == "decide":
            decisions = [scheduler.decide(objects[0])]
        else:
            decisions = scheduler.decide_batch(objects)
        # Equal requests and priorities: a batch decides in input order, except that plain
        # instances of one label set are taken together where the first of them stands.
        for (key, new), decision in batch_order(made, decisions):
            admitted = allowed(zones, pods, bound, new)
            if decision.node is None:
                assert not admitted, (decision.message, admitted)
                assert sum(decision.reasons.values()) == len(zones), decision.reasons
            else:
                assert decision.node in admitted, (decision.node, admitted)
                bound.append(Placed(key, decision.node, new.namespace, new.app, new.avoid))
        matrix.check()
