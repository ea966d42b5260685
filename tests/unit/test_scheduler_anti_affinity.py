"""Symmetric anti-affinity: a bound instance's required anti-affinity repels matching newcomers."""

from __future__ import annotations

from typing import Any

from hypermesh.scheduler import NodeMatrix, Policy, Scheduler

ZONE = "topology.hypermesh.io/zone"
HOST = "hypermesh.io/hostname"
EXISTING = "node(s) didn't satisfy existing instances anti-affinity rules"
OWN = "node(s) didn't match instance anti-affinity rules"
PACKING = Policy(spread_weight=0, cost_weight=0)


def node(name: str, zone: str, cpu: str = "8") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {ZONE: zone}},
        "status": {"allocatable": {"cpu": cpu, "memory": "64Gi", "pods": "110"}},
    }


def avoid(app: str, key: str = HOST, namespaces: list[str] | None = None) -> dict[str, Any]:
    term: dict[str, Any] = {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key}
    if namespaces is not None:
        term["namespaces"] = namespaces
    return {"instanceAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}


def instance(
    name: str, app: str, *, namespace: str = "ns", cpu: str = "1", **spec: Any
) -> dict[str, Any]:
    container = {"name": "c", "image": "i", "resources": {"requests": {"cpu": cpu, "memory": "1Gi"}}}
    meta = {"name": name, "namespace": namespace, "labels": {"app": app}}
    return {"metadata": meta, "spec": {"containers": [container], **spec}}


def scheduler(*nodes: dict[str, Any]) -> Scheduler:
    matrix = NodeMatrix(capacity=2)
    for n in nodes:
        matrix.upsert_node(n)
    return Scheduler(matrix, policy=PACKING)


def test_a_bound_instance_repels_matching_newcomers_from_its_host() -> None:
    s = scheduler(node("a", "z0"), node("b", "z0"))
    s.matrix.bind(instance("db", "db", cpu="4", affinity=avoid("web")), "a")
    # Packing alone would choose a (fuller); the db's term keeps web off a.
    assert s.decide(instance("web", "web"), assume=False).node == "b"
    # An instance the term does not match is not repelled.
    assert s.decide(instance("api", "api"), assume=False).node == "a"


def test_a_zone_term_repels_from_the_whole_zone() -> None:
    s = scheduler(node("a", "z0"), node("b", "z0"), node("c", "z1", cpu="64"))
    s.matrix.bind(instance("db", "db", cpu="4", affinity=avoid("web", ZONE)), "a")
    placed = {s.decide(instance(f"web{i}", "web")).node for i in range(3)}
    assert placed == {"c"}
    s.matrix.check()


def test_the_term_applies_in_its_own_namespaces_only() -> None:
    s = scheduler(node("a", "z0"), node("b", "z0"))
    s.matrix.bind(instance("db", "db", cpu="4", affinity=avoid("web")), "a")
    assert s.decide(instance("web", "web", namespace="other"), assume=False).node == "a"
    s.matrix.bind(
        instance("db2", "db", namespace="x", cpu="4", affinity=avoid("web", namespaces=["other"])),
        "b",
    )
    assert s.decide(instance("web", "web", namespace="other"), assume=False).node == "a"
    s.matrix.unbind(instance("db", "db"))
    s.matrix.bind(instance("db", "db", cpu="5"), "a")  # the same instance, without its term
    assert s.decide(instance("web2", "web", namespace="other"), assume=False).node == "a"


def test_repelled_everywhere_is_explained() -> None:
    s = scheduler(node("a", "z0"), node("b", "z0", cpu="1"))
    s.matrix.bind(instance("db", "db", affinity=avoid("web")), "a")
    decision = s.decide(instance("web", "web", cpu="2"))
    assert decision.node is None
    assert decision.reasons == {EXISTING: 1, "Insufficient cpu": 1}
    assert decision.message.startswith(
        f"0/2 nodes are available: 1 Insufficient cpu, 1 {EXISTING}."
    )
    # The newcomer's own anti-affinity is blamed first where both apply.
    both = s.decide(instance("web", "web", cpu="2", affinity=avoid("db")))
    assert both.reasons == {OWN: 1, "Insufficient cpu": 1}


def test_unbinding_the_repelling_instance_lifts_it() -> None:
    s = scheduler(node("a", "z0"), node("b", "z0"))
    s.matrix.bind(instance("db", "db", cpu="4", affinity=avoid("web")), "a")
    assert s.decide(instance("web", "web"), assume=False).node == "b"
    s.matrix.bind(instance("other", "other", cpu="4"), "a")
    s.matrix.unbind(instance("db", "db"))
    assert s.decide(instance("web", "web"), assume=False).node == "a"
    s.matrix.check()


def test_a_removed_node_takes_its_repulsion_along_and_brings_it_back() -> None:
    s = scheduler(node("a", "z0"), node("b", "z1"), node("c", "z1"))
    s.matrix.bind(instance("db", "db", cpu="4", affinity=avoid("web", ZONE)), "b")
    assert s.decide(instance("web", "web"), assume=False).node == "a"
    s.matrix.remove_node("a")  # c moves into a's row
    s.matrix.check()
    assert s.decide(instance("web", "web"), assume=False).node is None
    s.matrix.remove_node("b")
    assert s.decide(instance("web", "web"), assume=False).node == "c"
    s.matrix.upsert_node(node("b", "z1"))
    assert s.decide(instance("web", "web"), assume=False).node is None
    s.matrix.check()


def test_batch_replicas_avoid_an_instance_placed_earlier_in_the_same_batch() -> None:
    s = scheduler(node("a", "z0"), node("b", "z0"), node("c", "z0"))
    db = instance("db", "db", cpu="4", affinity=avoid("web"))
    web = [instance(f"web{i}", "web") for i in range(4)]
    decisions = s.decide_batch([db, *web])
    assert decisions[0].node == "a"
    # The replicas pack together, but never onto the db's node.
    assert {d.node for d in decisions[1:]} == {"b"}
    s.matrix.check()


def test_batch_of_repelled_replicas_explains_each() -> None:
    s = scheduler(node("a", "z0"), node("b", "z0"))
    for name in ("a", "b"):
        s.matrix.bind(instance(f"db-{name}", "db", affinity=avoid("web")), name)
    decisions = s.decide_batch([instance(f"web{i}", "web") for i in range(3)])
    assert all(d.node is None and d.reasons == {EXISTING: 2} for d in decisions)
