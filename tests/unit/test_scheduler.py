"""The scheduler core: each filter and score, the explanations, preemption, batches."""

from __future__ import annotations

from typing import Any

import pytest

from hypermesh.scheduler import NodeMatrix, Policy, Scheduler, SpecError, parse_instance

ZONE = "topology.hypermesh.io/zone"
COST = "hypermesh.io/cost-per-hour"


def node(
    name: str,
    cpu: str = "4",
    memory: str = "8Gi",
    *,
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
    unschedulable: bool = False,
    extra: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"taints": taints or [], "unschedulable": unschedulable},
        "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": "110", **(extra or {})}},
    }


def instance(
    name: str,
    cpu: str = "1",
    memory: str = "1Gi",
    *,
    labels: dict[str, str] | None = None,
    owner: str | None = None,
    **spec: Any,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "labels": labels or {}}
    if owner:
        meta["ownerReferences"] = [{"kind": "Workload", "name": owner, "uid": owner}]
    container = {"name": "c", "image": "busybox", "resources": {"requests": {"cpu": cpu, "memory": memory}}}
    return {"metadata": meta, "spec": {"containers": [container], **spec}}


def scheduler(*nodes: dict[str, Any], **kwargs: Any) -> Scheduler:
    matrix = NodeMatrix(capacity=2)
    for n in nodes:
        matrix.upsert_node(n)
    return Scheduler(matrix, **kwargs)


# Filters


def test_resources_filter_and_explanation_counts() -> None:
    s = scheduler(node("small-1", memory="1Gi"), node("small-2", memory="1Gi"), node("big", "1", "16Gi"))
    decision = s.decide(instance("a", cpu="2", memory="4Gi"))
    assert decision.node is None
    assert decision.reasons == {"Insufficient memory": 2, "Insufficient cpu": 1}
    assert decision.message.startswith(
        "0/3 nodes are available: 2 Insufficient memory, 1 Insufficient cpu."
    )


def test_pods_and_extended_resources() -> None:
    s = scheduler(node("gpu", extra={"hypermesh.io/gpu": "1", "pods": "1"}), node("plain"))
    gpu = instance("g", cpu="100m", memory="1Mi")
    gpu["spec"]["containers"][0]["resources"]["limits"] = {"hypermesh.io/gpu": "1"}
    assert s.decide(gpu).node == "gpu"  # limits stand in for missing requests
    again = dict(gpu, metadata={"name": "g2", "namespace": "ns"})
    decision = s.decide(again)
    assert decision.node is None
    assert decision.reasons == {"Insufficient hypermesh.io/gpu": 2, "Too many pods": 1}


def test_unknown_extended_resource_fits_nowhere() -> None:
    s = scheduler(node("a"))
    x = instance("x")
    x["spec"]["containers"][0]["resources"]["requests"]["example.com/fpga"] = "1"
    assert s.decide(x).reasons == {"Insufficient example.com/fpga": 1}


def test_node_selector_and_required_node_affinity() -> None:
    s = scheduler(
        node("a", labels={"disk": "ssd", "gen": "3"}),
        node("b", labels={"disk": "hdd", "gen": "5"}),
        node("c", labels={"gen": "7"}),
    )
    assert s.decide(instance("x", nodeSelector={"disk": "ssd"}), assume=False).node == "a"
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["4"]},
                                          {"key": "disk", "operator": "DoesNotExist"}]},
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a"]}]},
                ]
            }
        }
    }
    spreading = Scheduler(s.matrix, policy=Policy(strategy="LeastAllocated"))
    allowed = set()
    for i in range(6):
        y = instance(f"y{i}", cpu="100m", memory="1Mi", affinity=affinity)
        allowed.add(spreading.decide(y).node)
    assert allowed == {"a", "c"}
    none = s.decide(instance("z", nodeSelector={"disk": "nvme"}))
    assert none.reasons == {"node(s) didn't match Instance's node affinity/selector": 3}


def test_taints_tolerations_and_cordon() -> None:
    s = scheduler(
        node("tainted", taints=[{"key": "gpu", "value": "true", "effect": "NoSchedule"}]),
        node("evicting", taints=[{"key": "down", "effect": "NoExecute"}]),
        node("cordoned", unschedulable=True),
        node("soft", taints=[{"key": "spot", "value": "yes", "effect": "PreferNoSchedule"}]),
    )
    assert s.decide(instance("a"), assume=False).node == "soft"  # PreferNoSchedule only scores
    decision = s.decide(instance("b", cpu="8"))
    assert decision.reasons == {
        "node(s) had untolerated taint {gpu: true}": 1,
        "node(s) had untolerated taint {down: }": 1,
        "node(s) were unschedulable": 1,
        "Insufficient cpu": 1,
    }
    tolerant = instance(
        "c", cpu="4", tolerations=[{"key": "gpu", "operator": "Equal", "value": "true",
                                    "effect": "NoSchedule"}]
    )
    s.decide(instance("fill-soft", cpu="4"))
    assert s.decide(tolerant).node == "tainted"
    anything = instance("d", cpu="4", tolerations=[{"operator": "Exists"}])
    assert s.decide(anything).node == "evicting"


def test_instance_anti_affinity_by_host_and_zone() -> None:
    nodes = [node(f"n{i}", labels={ZONE: f"z{i % 2}"}) for i in range(4)]
    s = scheduler(*nodes)
    by_host = {"instanceAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "hypermesh.io/hostname"}]}}
    placed = [
        s.decide(instance(f"db{i}", "100m", "1Mi", labels={"app": "db"}, affinity=by_host)).node
        for i in range(5)
    ]
    assert sorted(p for p in placed[:4] if p) == ["n0", "n1", "n2", "n3"]
    assert placed[4] is None
    by_zone = {"instanceAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]},
         "topologyKey": ZONE}]}}
    zones = [
        s.decide(instance(f"w{i}", "100m", "1Mi", labels={"app": "web"}, affinity=by_zone))
        for i in range(3)
    ]
    assert {s.matrix.node_labels[s.matrix.rows[d.node]][ZONE] for d in zones[:2] if d.node} == {"z0", "z1"}
    assert zones[2].reasons == {"node(s) didn't match instance anti-affinity rules": 4}


def test_required_instance_affinity_colocates() -> None:
    s = scheduler(*(node(f"n{i}") for i in range(3)))
    together = {"instanceAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "hypermesh.io/hostname"}]}}
    lonely = s.decide(instance("orphan", labels={"app": "x"}, affinity=together))
    assert lonely.reasons == {"node(s) didn't match instance affinity rules": 3}
    first = s.decide(instance("c0", "100m", "1Mi", labels={"app": "cache"}, affinity=together))
    second = s.decide(instance("c1", "100m", "1Mi", labels={"app": "cache"}, affinity=together))
    assert first.node is not None and first.node == second.node


def test_invalid_specs_become_error_decisions() -> None:
    s = scheduler(node("a"))
    bad = instance("x", nodeSelector={"a": "b"})
    bad["spec"]["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "k", "operator": "Near"}]}]}}}
    decision = s.decide(bad)
    assert decision.node is None and decision.error
    assert "nodeSelectorTerms[0].matchExpressions[0].operator" in decision.error
    worse = instance("y", memory="lots")
    assert "spec.containers[0].resources.requests.memory" in (s.decide(worse).error or "")
    with pytest.raises(SpecError):
        parse_instance(instance("z", tolerations=[{"key": "", "operator": "Equal"}]))


# Scores


def test_bin_packing_fills_the_fullest_node_and_spreading_the_emptiest() -> None:
    nodes = [node("a"), node("b"), node("c")]
    packer = scheduler(*nodes, policy=Policy(spread_weight=0))
    packer.matrix.bind(instance("pre"), "b")
    assert packer.decide(instance("x"), assume=False).node == "b"
    spreader = scheduler(*nodes, policy=Policy(strategy="LeastAllocated", spread_weight=0))
    spreader.matrix.bind(instance("pre"), "a")
    assert spreader.decide(instance("x"), assume=False).node == "b"


def test_topology_spread_prefers_the_emptiest_zone() -> None:
    s = scheduler(*(node(f"n{i}", "64", "256Gi", labels={ZONE: f"z{i}"}) for i in range(3)))
    placed = [s.decide(instance(f"r{i}", owner="web")).node for i in range(6)]
    assert sorted(placed) == ["n0", "n0", "n1", "n1", "n2", "n2"]
    # Another owner is not counted against these zones.
    assert s.decide(instance("other", owner="api"), assume=False).node == "n0"


def test_cost_prefers_cheap_nodes_when_weighted() -> None:
    nodes = [node("dear", labels={COST: "3.0"}), node("cheap", labels={COST: "0.5"}), node("unknown")]
    s = scheduler(*nodes, policy=Policy(cost_weight=1.0))
    assert s.decide(instance("x"), assume=False).node == "cheap"


def test_preferred_node_affinity_scores() -> None:
    s = scheduler(node("a", labels={"disk": "hdd"}), node("b", labels={"disk": "ssd"}))
    prefer = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 50, "preference": {"matchExpressions": [
            {"key": "disk", "operator": "In", "values": ["ssd"]}]}}]}}
    assert s.decide(instance("x", affinity=prefer), assume=False).node == "b"


# Preemption


def test_preemption_evicts_the_fewest_lowest_priority() -> None:
    s = scheduler(node("a", "4", "8Gi"), node("b", "4", "8Gi"))
    m = s.matrix
    m.bind(instance("a-low1", "2", priority=1), "a")
    m.bind(instance("a-low2", "2", priority=1), "a")
    m.bind(instance("b-mid", "3", priority=5), "b")
    m.bind(instance("b-low", "1", priority=1), "b")
    urgent = instance("urgent", "3", priority=10)
    decision = s.decide(urgent)
    assert decision.node is None
    # On a, both priority-1 instances must go (3 cpu wanted, 2 each). On b, evicting b-mid
    # (priority 5) is enough and b-low is reprieved. The lowest highest-victim priority wins.
    assert decision.nominated_node == "a"
    assert decision.victims == ("ns/a-low1", "ns/a-low2")
    assert "preemption: evicting 2 lower-priority instance(s) from a" in decision.message
    s.matrix.unbind_key("ns/a-low1")
    s.matrix.bind(instance("a-mid", "2", priority=7), "a")
    # Now a needs a priority-7 victim; b needs only b-mid (priority 5), b-low reprieved.
    again = s.decide(urgent)
    assert (again.nominated_node, again.victims) == ("b", ("ns/b-mid",))
    s.matrix.unbind_key("ns/a-low2")
    s.matrix.unbind_key("ns/a-mid")
    assert s.decide(urgent).node == "a"


def test_no_preemption_of_equal_or_higher_priority_or_for_taints() -> None:
    s = scheduler(node("a", "2"), node("t", "8", taints=[{"key": "k", "effect": "NoSchedule"}]))
    s.matrix.bind(instance("same", "2", priority=3), "a")
    decision = s.decide(instance("x", "2", priority=3))
    assert decision.victims == () and decision.nominated_node is None
    assert "no lower-priority instances" in decision.message
    by_class = Scheduler(s.matrix, priority_classes={"critical": 100})
    assert by_class.decide(instance("y", "2", priorityClassName="critical")).victims == ("ns/same",)


# Batches and bookkeeping


def test_batch_never_overcommits_and_explains_the_overflow() -> None:
    s = scheduler(*(node(f"n{i}", "4", "8Gi") for i in range(3)))
    batch = [instance(f"i{k}", "1", "1Gi", owner="w") for k in range(14)]
    decisions = s.decide_batch(batch)
    assert [d.instance for d in decisions] == [f"ns/i{k}" for k in range(14)]
    placed = [d.node for d in decisions if d.node]
    assert len(placed) == 12 and all(placed.count(n) == 4 for n in {"n0", "n1", "n2"})
    assert decisions[-1].reasons == {"Insufficient cpu": 3}
    s.matrix.check()


def test_batch_matches_sequential_decisions() -> None:
    def build() -> Scheduler:
        return scheduler(*(node(f"n{i}", str(2 + i % 3), "16Gi", labels={ZONE: f"z{i % 3}"}) for i in range(9)))

    work = [instance(f"i{k}", ["250m", "500m", "1"][k % 3], "512Mi", owner=f"w{k % 3}") for k in range(40)]
    one, many = build(), build()
    sequential = [one.decide(w).node for w in sorted(work, key=lambda w: w["metadata"]["name"])]
    assert sorted(map(str, sequential)) != []
    batch = many.decide_batch(work)
    assert sum(1 for d in batch if d.node) == sum(1 for n in sequential if n)
    many.matrix.check()


def test_matrix_swap_removal_growth_and_waiting_bindings() -> None:
    m = NodeMatrix(capacity=1)
    m.bind(instance("early"), "late-node")  # the binding arrives before its node
    for i in range(5):
        m.upsert_node(node(f"n{i}", labels={"i": str(i)}))
    m.upsert_node(node("late-node"))
    m.check()
    assert m.used[m.resources["cpu"], m.rows["late-node"]] == 1000
    m.bind(instance("x"), "n4")
    m.remove_node("n1")  # n4 or late-node moves into row 1
    m.check()
    assert "n1" not in m and len(m) == 5
    s = Scheduler(m)
    assert s.decide(instance("sel", nodeSelector={"i": "4"}), assume=False).node == "n4"
    m.remove_node("n4")
    m.upsert_node(node("n4"))  # comes back: its binding is accounted again
    m.check()
    assert m.used[m.resources["cpu"], m.rows["n4"]] == 1000
    m.unbind(instance("x"))
    m.unbind(instance("x"))  # idempotent
    m.check()
