"""Properties of the scheduler under arbitrary sequences of decisions and informer events."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hypermesh.scheduler import NodeMatrix, Policy, Scheduler

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
