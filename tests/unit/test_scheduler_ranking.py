"""Per-shape rankings and cached specs: every change to the matrix reaches the next decision."""

from __future__ import annotations

from typing import Any

from hypermesh.scheduler import NodeMatrix, Policy, Scheduler, SpecCache, parse_instance
from hypermesh.scheduler.matrix import JOURNAL_LIMIT

PACKING = Policy(spread_weight=0, cost_weight=0)


def node(name: str, cpu: str, *, extra: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {"allocatable": {"cpu": cpu, "memory": "64Gi", "pods": "5000", **(extra or {})}},
    }


def instance(name: str, cpu: str = "1", **limits: str) -> dict[str, Any]:
    resources: dict[str, Any] = {"requests": {"cpu": cpu, "memory": "1Mi"}}
    if limits:
        resources["limits"] = limits
    container = {"name": "c", "image": "i", "resources": resources}
    return {"metadata": {"name": name, "namespace": "ns"}, "spec": {"containers": [container]}}


def scheduler(*nodes: dict[str, Any]) -> Scheduler:
    matrix = NodeMatrix(capacity=2)
    for n in nodes:
        matrix.upsert_node(n)
    return Scheduler(matrix, policy=PACKING)


def test_a_node_resized_in_place_is_rescored() -> None:
    s = scheduler(node("small", "2"), node("big", "16"))
    assert s.decide(instance("a")).node == "small"  # packing: the fuller after placement
    s.matrix.upsert_node(node("small", "1"))  # shrinks under its instance: now full
    assert s.decide(instance("b")).node == "big"
    s.matrix.upsert_node(node("small", "3"))
    assert s.decide(instance("c")).node == "small"


def test_releases_between_decisions_are_seen() -> None:
    s = scheduler(node("a", "2"), node("b", "2"))
    assert [s.decide(instance(f"i{k}")).node for k in range(4)] == ["a", "a", "b", "b"]
    assert s.decide(instance("full")).reasons == {"Insufficient cpu": 2}
    s.matrix.unbind(instance("i3"))
    assert s.decide(instance("again")).node == "b"


def test_more_changes_than_the_journal_holds() -> None:
    s = scheduler(node("a", "10"), node("b", "10"), node("c", "10"))
    assert s.decide(instance("first")).node == "a"
    s.matrix.bind(instance("big", cpu="9"), "c")
    # Then change a and b through the matrix alone, well past what the journal remembers, so
    # that c's change is forgotten by the journal: the next decision must still see it.
    for k in range(JOURNAL_LIMIT + 10):
        s.matrix.bind(instance(f"x{k}", cpu="1m"), "a" if k % 2 else "b")
    assert s.decide(instance("next")).node == "c"
    s.matrix.check()


def test_a_resource_that_appears_later_makes_room() -> None:
    s = scheduler(node("plain", "4"))
    gpu = {"hypermesh.io/gpu": "1"}
    assert s.decide(instance("g0", **gpu)).reasons == {"Insufficient hypermesh.io/gpu": 1}
    s.matrix.upsert_node(node("gpu", "4", extra=gpu))
    assert s.decide(instance("g1", **gpu)).node == "gpu"
    assert s.decide(instance("g2", **gpu)).reasons == {"Insufficient hypermesh.io/gpu": 2}


def test_equal_specs_in_distinct_objects_share_one_parse_and_stay_distinct() -> None:
    s = scheduler(node("a", "4"))
    one, two = instance("one"), instance("two")
    two["metadata"]["labels"] = {"app": "x"}
    first, second = s.specs.parse(one), s.specs.parse(two)
    assert first.requests is second.requests and first.constraints is second.constraints
    assert (first.key, dict(first.labels)) == ("ns/one", {})
    assert (second.key, dict(second.labels)) == ("ns/two", {"app": "x"})
    # A changed request is a different spec, not a cache hit.
    bigger = instance("three", cpu="2")
    assert dict(s.specs.parse(bigger).requests)["cpu"] == 2000


def test_a_new_weighted_resource_rescales_every_node() -> None:
    weights = {"cpu": 1.0, "memory": 1.0, "hypermesh.io/gpu": 1.0}
    matrix = NodeMatrix(capacity=2)
    for n in (node("a", "4"), node("b", "1")):
        matrix.upsert_node(n)
    s = Scheduler(matrix, policy=Policy(spread_weight=0, cost_weight=0, resource_weights=weights))
    # Packing: b would be exactly full, so it wins while cpu and memory are all that count.
    assert s.decide(instance("x"), assume=False).node == "b"
    # Once some node offers gpus, b's idle gpus count against it and a scores higher; a did
    # not change, yet its score must be recomputed with the new total weight.
    matrix.upsert_node(node("b", "1", extra={"hypermesh.io/gpu": "4"}))
    assert s.decide(instance("x"), assume=False).node == "a"


def test_cached_parses_equal_fresh_ones_for_every_field_the_scheduler_reads() -> None:
    cache = SpecCache({"high": 100})
    base = instance("x")
    variants: list[dict[str, Any]] = [
        {"nodeSelector": {"disk": "ssd"}},
        {"tolerations": [{"key": "k", "operator": "Exists"}]},
        {"priority": 7},
        {"priorityClassName": "high"},
        {"nodeName": "a"},
        {"initContainers": [{"name": "i", "image": "i", "resources": {"requests": {"cpu": "3"}}}]},
        {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 5, "preference": {"matchExpressions": [{"key": "k", "operator": "Exists"}]}}]}}},
        {"topologySpreadConstraints": [
            {"maxSkew": 2, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}]},
    ]
    assert cache.parse(base) == parse_instance(base, {"high": 100})
    for change in variants:
        changed = {**base, "spec": {**base["spec"], **change}}
        assert cache.parse(changed) == parse_instance(changed, {"high": 100}), change
        assert cache.parse(changed) != cache.parse(base), change
