"""Topology spread constraints: the DoNotSchedule filter, the ScheduleAnyway score, batches."""

from __future__ import annotations

from typing import Any

import pytest

from hypermesh.scheduler import NodeMatrix, Policy, Scheduler, SpecError, parse_instance

ZONE = "topology.hypermesh.io/zone"
HOST = "kubernetes.io/hostname"
SKEW = "node(s) didn't match instance topology spread constraints"
MISSING = "node(s) didn't match instance topology spread constraints (missing required label)"
# No zone preference of its own, so only the constraints under test move instances around.
PACKING = Policy(spread_weight=0, cost_weight=0)


def node(
    name: str, zone: str | None = None, cpu: str = "8", *, labels: dict[str, str] | None = None,
    unschedulable: bool = False,
) -> dict[str, Any]:
    all_labels = dict(labels or {})
    if zone:
        all_labels[ZONE] = zone
    return {
        "metadata": {"name": name, "labels": all_labels},
        "spec": {"unschedulable": unschedulable},
        "status": {"allocatable": {"cpu": cpu, "memory": "64Gi", "pods": "110"}},
    }


def constraint(
    key: str = ZONE,
    skew: int = 1,
    when: str = "DoNotSchedule",
    selector: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    found = {"maxSkew": skew, "topologyKey": key, "whenUnsatisfiable": when, **extra}
    found["labelSelector"] = selector if selector is not None else {"matchLabels": {"app": "web"}}
    return found


def instance(
    name: str,
    *constraints: dict[str, Any],
    labels: dict[str, str] | None = None,
    namespace: str = "ns",
    cpu: str = "1",
    **spec: Any,
) -> dict[str, Any]:
    container = {"name": "c", "image": "i", "resources": {"requests": {"cpu": cpu, "memory": "1Gi"}}}
    body: dict[str, Any] = {"containers": [container], **spec}
    if constraints:
        body["topologySpreadConstraints"] = list(constraints)
    meta = {"name": name, "namespace": namespace, "labels": {"app": "web"} if labels is None else labels}
    return {"metadata": meta, "spec": body}


def scheduler(*nodes: dict[str, Any], policy: Policy = PACKING) -> Scheduler:
    matrix = NodeMatrix(capacity=2)
    for n in nodes:
        matrix.upsert_node(n)
    return Scheduler(matrix, policy=policy)


def zone_of(s: Scheduler, node_name: str | None) -> str:
    assert node_name is not None
    return s.matrix.node_labels[s.matrix.rows[node_name]][ZONE]


# DoNotSchedule


def test_do_not_schedule_keeps_zones_within_max_skew_against_bin_packing() -> None:
    s = scheduler(node("a", "z0"), node("b", "z1"), node("c", "z2"))
    placed = [s.decide(instance(f"w{i}", constraint())).node for i in range(6)]
    # Bin-packing alone would stack all six on one node; the constraint makes rounds of zones.
    assert sorted(placed[:3]) == ["a", "b", "c"] and sorted(placed[3:]) == ["a", "b", "c"]
    s.matrix.check()


def test_skew_counts_only_matching_instances_in_the_namespace() -> None:
    s = scheduler(node("a", "z0"), node("b", "z1"))
    m = s.matrix
    m.bind(instance("web-a", labels={"app": "web"}), "a")
    m.bind(instance("api-a", labels={"app": "api"}), "a")
    m.bind(instance("web-b-other-ns", namespace="other"), "b")
    m.bind(instance("web-b-other-ns-2", namespace="other"), "b")
    # z0 holds one matching instance, z1 none (other namespace, other label): only b is open.
    decision = s.decide(instance("w", constraint()), assume=False)
    assert decision.node == "b"
    m.bind(instance("web-b", labels={"app": "web"}), "b")
    for i in range(2):
        m.bind(instance(f"api-a{i}", labels={"app": "api"}), "a")
    # Level again: both zones are open, and packing picks the fuller node, a.
    assert s.decide(instance("w", constraint()), assume=False).node == "a"


def test_unsatisfiable_spread_is_explained_per_filter() -> None:
    s = scheduler(
        node("a", "z0"),
        node("cordoned", "z1", unschedulable=True),
        node("unlabelled"),
    )
    s.matrix.bind(instance("first"), "a")
    decision = s.decide(instance("second", constraint()))
    # z1 counts as an empty domain even though its only node is cordoned (taints and cordons
    # do not exclude a node from counting), so a second instance in z0 would be 2 ahead.
    assert decision.node is None
    assert decision.reasons == {SKEW: 1, "node(s) were unschedulable": 1, MISSING: 1}
    assert decision.message.startswith("0/3 nodes are available: 1 node(s) didn't match")
    assert f"1 {SKEW}," in decision.message and f"1 {MISSING}" in decision.message


def test_only_nodes_the_selector_admits_define_the_domains() -> None:
    s = scheduler(
        node("a", "z0", labels={"disk": "ssd"}),
        node("b", "z1", labels={"disk": "ssd"}),
        node("c", "z2", labels={"disk": "hdd"}),
    )
    ssd = {"disk": "ssd"}
    placed = [s.decide(instance(f"w{i}", constraint(), nodeSelector=ssd)).node for i in range(4)]
    # z2 has no ssd node: it is no domain of this instance, so its zero does not hold the
    # others back (were it counted, only one instance per zone could ever be placed).
    assert sorted(placed) == ["a", "a", "b", "b"]


def test_min_domains_counts_missing_domains_as_empty() -> None:
    s = scheduler(node("a", "z0"), node("b", "z1"))
    wide = constraint(minDomains=3)
    placed = [s.decide(instance(f"w{i}", wide)) for i in range(3)]
    assert sorted(d.node for d in placed[:2] if d.node) == ["a", "b"]
    # Two domains where three are wanted: the global minimum is 0, so each holds at most one.
    assert placed[2].node is None and placed[2].reasons == {SKEW: 2}
    # Without minDomains the third fits.
    assert s.decide(instance("w3", constraint()), assume=False).node is not None


def test_hostname_spreads_over_nodes_whether_labelled_or_not() -> None:
    s = scheduler(node("a"), node("b"), node("c", labels={HOST: "c"}))
    by_host = constraint(HOST)
    placed = [s.decide(instance(f"w{i}", by_host)).node for i in range(6)]
    assert sorted(placed) == ["a", "a", "b", "b", "c", "c"]
    assert sorted(placed[:3]) == ["a", "b", "c"]


def test_instance_not_matching_its_own_selector_adds_nothing_to_its_domain() -> None:
    s = scheduler(node("a", "z0"), node("b", "z1"))
    s.matrix.bind(instance("web"), "a")
    # The newcomer is not app=web: z0 would stay one ahead, which maxSkew 1 allows.
    other = instance("api", constraint(), labels={"app": "api"})
    assert s.decide(other, assume=False).node == "a"


def test_a_nil_selector_counts_nothing_but_still_needs_the_key() -> None:
    s = scheduler(node("a", "z0", cpu="64"), node("b"))
    nil = {"maxSkew": 1, "topologyKey": ZONE, "whenUnsatisfiable": "DoNotSchedule"}
    placed = [s.decide(instance(f"w{i}", nil)).node for i in range(3)]
    assert placed == ["a", "a", "a"]
    s.matrix.bind(instance("fill", cpu="61"), "a")
    assert s.decide(instance("w", nil)).reasons == {MISSING: 1, "Insufficient cpu": 1}


def test_unbinding_reopens_a_domain() -> None:
    s = scheduler(node("a", "z0"), node("b", "z1", cpu="1"))
    s.matrix.bind(instance("web-a"), "a")
    s.matrix.bind(instance("filler", labels={}), "b")
    blocked = s.decide(instance("w", constraint()))
    assert blocked.reasons == {SKEW: 1, "Insufficient cpu": 1}
    s.matrix.unbind(instance("web-a"))
    assert s.decide(instance("w", constraint())).node == "a"
    s.matrix.check()


def test_every_hard_constraint_must_hold() -> None:
    nodes = [node(f"{z}-{h}", z, labels={"rack": f"{z}-r{h}"}) for z in ("z0", "z1") for h in (0, 1)]
    s = scheduler(*nodes)
    both = (constraint(), constraint("rack"))
    placed = [s.decide(instance(f"w{i}", *both)).node for i in range(4)]
    assert sorted(placed) == ["z0-0", "z0-1", "z1-0", "z1-1"]


# ScheduleAnyway


def test_schedule_anyway_prefers_the_emptier_zone_but_never_rejects() -> None:
    s = scheduler(node("a", "z0", cpu="4"), node("b", "z1", cpu="4"))
    soft = constraint(when="ScheduleAnyway")
    for i in range(2):
        s.matrix.bind(instance(f"pre{i}"), "a")
    # Packing favours the fuller node a; the constraint outweighs it (Kubernetes' 2:1).
    assert s.decide(instance("w0", soft), assume=False).node == "b"
    s.matrix.bind(instance("fill-b", cpu="4", labels={}), "b")
    # b is full: the crowded zone is still acceptable under ScheduleAnyway.
    assert s.decide(instance("w1", soft)).node == "a"


def test_schedule_anyway_weight_zero_leaves_packing_alone() -> None:
    s = scheduler(
        node("a", "z0", cpu="4"), node("b", "z1", cpu="4"),
        policy=Policy(spread_weight=0, cost_weight=0, topology_spread_weight=0),
    )
    s.matrix.bind(instance("pre"), "a")
    soft = constraint(when="ScheduleAnyway")
    assert s.decide(instance("w", soft), assume=False).node == "a"


def test_declared_constraints_replace_the_implicit_zone_spread() -> None:
    # The implicit zone spread (spread_weight) pulls an owner's replicas apart; a declared
    # ScheduleAnyway constraint on another label replaces it, as Kubernetes' defaults do.
    s = scheduler(node("a", "z0"), node("b", "z1"), policy=Policy(cost_weight=0))
    owner = [{"kind": "Workload", "name": "w", "uid": "w"}]
    first = instance("r0", labels={"app": "web"})
    first["metadata"]["ownerReferences"] = owner
    assert s.decide(first).node == "a"
    implicit = instance("r1", labels={"app": "web"})
    implicit["metadata"]["ownerReferences"] = owner
    assert s.decide(implicit, assume=False).node == "b"
    declared = instance("r1", constraint(when="ScheduleAnyway", selector={"matchLabels": {"x": "y"}}))
    declared["metadata"]["ownerReferences"] = owner
    assert s.decide(declared, assume=False).node == "a"


# Batches


def test_batch_counts_placements_made_earlier_in_the_batch() -> None:
    s = scheduler(node("a", "z0", cpu="3"), node("b", "z1", cpu="1"), node("plain", cpu="64"))
    batch = [instance(f"w{i}", constraint()) for i in range(4)]
    decisions = s.decide_batch(batch)
    # Packing fills the small node b first; then z0 may catch up and go one ahead.
    assert [d.node for d in decisions[:3]] == ["b", "a", "a"]
    # z0 two, z1 one and full: a third in z0 would be two ahead of z1.
    assert decisions[3].node is None
    assert decisions[3].reasons == {SKEW: 1, "Insufficient cpu": 1, MISSING: 1}
    s.matrix.check()


def test_batch_mixes_spread_and_plain_instances() -> None:
    s = scheduler(node("a", "z0"), node("b", "z1"), node("c", "z2"))
    plain = [instance(f"p{i}", labels={"app": "web"}) for i in range(3)]
    spread = [instance(f"s{i}", constraint()) for i in range(3)]
    decisions = s.decide_batch(plain + spread)
    # The plain replicas pack onto one node; the spread ones (matching them too) fill the
    # other zones first, since their zone already holds three.
    plain_nodes = {d.node for d in decisions[:3]}
    assert len(plain_nodes) == 1
    assert all(d.node not in plain_nodes for d in decisions[3:5])
    s.matrix.check()


# Parsing


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"maxSkew": 0}, "maxSkew"),
        ({"maxSkew": True}, "maxSkew"),
        ({"topologyKey": ""}, "topologyKey"),
        ({"whenUnsatisfiable": "Sometimes"}, "whenUnsatisfiable"),
        ({"minDomains": 0}, "minDomains"),
        ({"whenUnsatisfiable": "ScheduleAnyway", "minDomains": 2}, "minDomains"),
        ({"labelSelector": {"matchExpressions": [{"key": "a", "operator": "Gt"}]}}, "labelSelector.matchExpressions[0].operator"),
    ],
)
def test_bad_constraints_name_their_field(bad: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_instance(instance("x", {**constraint(), **bad}))
    assert f"spec.topologySpreadConstraints[0].{field}" in caught.value.field
    decision = scheduler(node("a", "z0")).decide(instance("x", {**constraint(), **bad}))
    assert decision.node is None and decision.error
