"""How fast and how well the scheduler core places Instances on 5,000 nodes, in process.

Four figures, each next to the limit measured in the same run:

- `decide` decisions/s: one pending Instance at a time (target 20,000/s).
- `decide_batch` decisions/s: the pending queue in batches of 1,000 (target 20,000/s).
  The limit for both is a bare numpy masked argmax over 5,000 rows (`np.where(mask, score,
  -inf).argmax()`), the least any vectorised decision can cost.
- `decide_spread` decisions/s: one at a time, every Instance with two topology spread
  constraints on its Workload's label (zones DoNotSchedule maxSkew 1, hosts ScheduleAnyway),
  which take the path that recounts domains per decision (target 2,000/s: a 1,000-replica
  spread Workload placed in half a second). Its details report the largest zone skew left
  among the Workloads free to use every zone.
- packing quality: nodes used / lower bound on homogeneous nodes, where the lower bound is,
  over cpu, memory and pods, the largest ceil(total requests / per-node capacity) (target <=
  1.05).

The cluster: 5,000 nodes of mixed sizes (4 to 64 cores, 4 GiB per core) in 3 zones, 10% of
them tainted, each with a cost per hour. The workload: Workloads of 5 to 60 replicas with mixed
requests, queued replica after replica as the workloads controller creates them; 10% tolerate
the taint, 10% select a zone.

Run: `.venv/bin/python bench/scheduler_bench.py [--quick]`. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import code_version, limit, machine_info, measurement, now_iso  # noqa: E402

from hypermesh.scheduler import NodeMatrix, Policy, Scheduler  # noqa: E402

TARGET_RATE = 20_000
TARGET_SPREAD_RATE = 2_000
TARGET_PACKING = 1.05
ZONE = "topology.hypermesh.io/zone"
COST = "hypermesh.io/cost-per-hour"
SHAPES = [("100m", "128Mi"), ("250m", "256Mi"), ("500m", "512Mi"), ("500m", "2Gi"),
          ("1", "1Gi"), ("1", "4Gi"), ("2", "2Gi"), ("2", "8Gi"), ("4", "4Gi")]


def cluster(count: int, rng: random.Random) -> list[dict[str, Any]]:
    """`count` nodes of mixed sizes in 3 zones; every tenth tainted; costs by size."""
    nodes = []
    for i in range(count):
        cores = rng.choice([4, 8, 16, 32, 64])
        taints = [{"key": "dedicated", "value": "batch", "effect": "NoSchedule"}] if i % 10 == 0 else []
        cost = round(cores * 0.04 * rng.uniform(0.8, 1.2), 3)
        nodes.append({
            "metadata": {"name": f"node-{i:05d}", "labels": {ZONE: f"zone-{i % 3}", COST: str(cost)}},
            "spec": {"taints": taints},
            "status": {"allocatable": {"cpu": str(cores), "memory": f"{cores * 4}Gi", "pods": "110"}},
        })
    return nodes


def workload(count: int, rng: random.Random, *, constrained: bool = True) -> list[dict[str, Any]]:
    """`count` pending Instances from Workloads of 5-60 replicas, replica after replica."""
    instances: list[dict[str, Any]] = []
    w = 0
    while len(instances) < count:
        w += 1
        cpu, memory = rng.choice(SHAPES)
        spec: dict[str, Any] = {"containers": [{"name": "app", "image": "app:1", "resources": {
            "requests": {"cpu": cpu, "memory": memory}}}]}
        if constrained and w % 10 == 3:
            spec["tolerations"] = [{"key": "dedicated", "operator": "Equal", "value": "batch",
                                    "effect": "NoSchedule"}]
        if constrained and w % 10 == 7:
            spec["nodeSelector"] = {ZONE: f"zone-{w % 3}"}
        for r in range(rng.randint(5, 60)):
            instances.append({
                "metadata": {"name": f"w{w}-{r}", "namespace": "bench", "labels": {"app": f"w{w}"},
                             "ownerReferences": [{"kind": "Workload", "name": f"w{w}", "uid": f"uid-{w}"}]},
                "spec": spec,
            })
    return instances[:count]


def fresh_scheduler(nodes: list[dict[str, Any]], policy: Policy | None = None) -> Scheduler:
    """A scheduler whose matrix holds `nodes` and nothing bound."""
    matrix = NodeMatrix(capacity=len(nodes))
    for n in nodes:
        matrix.upsert_node(n)
    return Scheduler(matrix, policy=policy)


def rate_decide(nodes: list[dict[str, Any]], pending: list[dict[str, Any]]) -> tuple[float, int]:
    """Single decisions per second, and how many were placed."""
    scheduler = fresh_scheduler(nodes)
    began = time.perf_counter()
    placed = sum(1 for inst in pending if scheduler.decide(inst).node)
    return len(pending) / (time.perf_counter() - began), placed


def rate_batch(
    nodes: list[dict[str, Any]], pending: list[dict[str, Any]], size: int
) -> tuple[float, int]:
    """Batched decisions per second (batches of `size`), and how many were placed."""
    scheduler = fresh_scheduler(nodes)
    placed = 0
    began = time.perf_counter()
    for start in range(0, len(pending), size):
        placed += sum(1 for d in scheduler.decide_batch(pending[start : start + size]) if d.node)
    elapsed = time.perf_counter() - began
    scheduler.matrix.check()
    return len(pending) / elapsed, placed


def spread(pending: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`pending` with each Instance spread over zones (hard) and hosts (soft) by its app label."""
    spread_out = []
    for inst in pending:
        selector = {"matchLabels": {"app": inst["metadata"]["labels"]["app"]}}
        constraints = [
            {"maxSkew": 1, "topologyKey": ZONE, "whenUnsatisfiable": "DoNotSchedule",
             "labelSelector": selector},
            {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
             "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": selector},
        ]
        spread_out.append({**inst, "spec": {**inst["spec"], "topologySpreadConstraints": constraints}})
    return spread_out


def rate_spread(nodes: list[dict[str, Any]], pending: list[dict[str, Any]]) -> tuple[float, int, int]:
    """Spread decisions per second, how many were placed, and the largest zone skew left."""
    scheduler = fresh_scheduler(nodes)
    began = time.perf_counter()
    placed = [(inst, scheduler.decide(inst).node) for inst in pending]
    rate = len(pending) / (time.perf_counter() - began)
    zones: dict[str, dict[str, int]] = {}
    matrix = scheduler.matrix
    for inst, node in placed:
        # A Workload pinned to one zone by nodeSelector has that zone as its only domain.
        if node and not inst["spec"].get("nodeSelector"):
            per_zone = zones.setdefault(inst["metadata"]["labels"]["app"], dict.fromkeys(
                ("zone-0", "zone-1", "zone-2"), 0))
            per_zone[matrix.node_labels[matrix.rows[node]][ZONE]] += 1
    skew = max((max(c.values()) - min(c.values()) for c in zones.values()), default=0)
    return rate, sum(1 for _, node in placed if node), skew


def limit_masked_argmax(rows: int, seconds: float) -> float:
    """Bare numpy masked argmaxes per second over `rows` rows: the floor of any decision."""
    rng = np.random.default_rng(0)
    score, mask = rng.random(rows), rng.random(rows) > 0.1
    n = 0
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        for _ in range(100):
            np.where(mask, score, -np.inf).argmax()
        n += 100
    return n / (time.perf_counter() - began)


def packing(count: int, rng: random.Random) -> dict[str, Any]:
    """Nodes used by a mixed workload on homogeneous nodes, over the per-resource lower bound."""
    cores, memory_gi = 16, 64
    pending = workload(count, rng, constrained=False)
    totals = {"cpu": 0.0, "memory": 0.0, "pods": float(len(pending))}
    for inst in pending:
        requests = inst["spec"]["containers"][0]["resources"]["requests"]
        totals["cpu"] += _cores(requests["cpu"])
        totals["memory"] += _gib(requests["memory"])
    bound = max(
        math.ceil(totals["cpu"] / cores),
        math.ceil(totals["memory"] / memory_gi),
        math.ceil(totals["pods"] / 110),
    )
    nodes = [{
        "metadata": {"name": f"h-{i:05d}", "labels": {ZONE: f"zone-{i % 3}"}},
        "status": {"allocatable": {"cpu": str(cores), "memory": f"{memory_gi}Gi", "pods": "110"}},
    } for i in range(int(bound * 1.5) + 3)]
    scheduler = fresh_scheduler(nodes)
    decisions = scheduler.decide_batch(pending)
    used = {d.node for d in decisions if d.node}
    return {
        "ratio": round(len(used) / bound, 4),
        "nodes_used": len(used),
        "lower_bound": bound,
        "instances": len(pending),
        "unplaced": sum(1 for d in decisions if not d.node),
        "node_shape": f"{cores} cpu, {memory_gi} Gi, 110 pods",
    }


def _cores(text: str) -> float:
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _gib(text: str) -> float:
    return float(text[:-2]) / 1024 if text.endswith("Mi") else float(text[:-2])


def main() -> None:
    """Measure and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer decisions")
    parser.add_argument("--nodes", type=int, default=5000)
    args = parser.parse_args()
    report: dict[str, Any] = {
        "benchmark": "scheduler",
        "started": now_iso(),
        "machine": machine_info(),
        "code": code_version(),
        "quick": args.quick,
        "nodes": args.nodes,
    }
    began = time.monotonic()
    rng = random.Random(42)
    nodes = cluster(args.nodes, rng)
    pending = workload(3_000 if args.quick else 30_000, rng)
    argmax = limit_masked_argmax(args.nodes, 0.5 if args.quick else 2.0)
    limits = {"masked_argmax": limit(round(argmax), "per s", f"np.where+argmax over {args.nodes} rows")}
    single, single_placed = rate_decide(nodes, pending[: len(pending) // 2])
    batched, batch_placed = rate_batch(nodes, pending, 1000)
    spread_pending = spread(pending[: len(pending) // 5])
    spreading, spread_placed, skew = rate_spread(nodes, spread_pending)
    quality = packing(2_000 if args.quick else 20_000, rng)
    report["measurements"] = {
        "decide": measurement(
            what=f"decisions/s, one Instance at a time, {args.nodes} nodes",
            figure=round(single), unit="per s", target=TARGET_RATE, comparison=">=",
            limits=limits, details={"decisions": len(pending) // 2, "placed": single_placed},
        ),
        "decide_batch": measurement(
            what=f"decisions/s, batches of 1,000, {args.nodes} nodes",
            figure=round(batched), unit="per s", target=TARGET_RATE, comparison=">=",
            limits=limits, details={"decisions": len(pending), "placed": batch_placed},
        ),
        "decide_spread": measurement(
            what=f"decisions/s, one Instance at a time, 2 topology spread constraints, {args.nodes} nodes",
            figure=round(spreading), unit="per s", target=TARGET_SPREAD_RATE, comparison=">=",
            limits=limits,
            details={"decisions": len(spread_pending), "placed": spread_placed, "max_zone_skew": skew},
        ),
        "packing": measurement(
            what="nodes used / lower bound, mixed workload on homogeneous nodes",
            figure=quality["ratio"], unit="ratio", target=TARGET_PACKING, comparison="<=",
            limits={"lower_bound": limit(1.0, "ratio", "max over resources of ceil(total/capacity)")},
            details=quality,
        ),
    }
    report["all_targets_met"] = all(m["meets_target"] for m in report["measurements"].values())
    report["finished"] = now_iso()
    report["seconds"] = round(time.monotonic() - began, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
