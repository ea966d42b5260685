"""How fast the scheduler controller binds Instances through the API, with 5,000 simulated nodes.

Two figures, both end to end through a real `hypermesh server` and a real `hypermesh controllers`
process (the bench process only creates objects and watches for `spec.nodeName`):

- `workload_1000`: seconds from creating a Workload of 1,000 replicas to all 1,000 Instances
  bound (target <= 2 s). This includes the workloads controller creating the Instances.
- `bind_rate`: Instances created -> bound per second, sustained over `--instances` Instances
  created directly by the bench (target >= 2,000/s over 50,000). The rate is counted from the
  first create to the last bind the watch sees.

The limit beside both is the API server's raw Instance create rate measured in the same run,
with the controllers not yet running, by the same client and concurrency (Instances created
already bound, so no scheduling work is implied). No end-to-end rate can beat it: every bound
Instance costs that create plus a bind write.

Nodes are registered with `hypermesh.cli.simulate.register_nodes` (concurrent creates) and
their Leases renewed every 10 s as real agents would (500 writes/s of background load at 5,000
nodes); they do not report Instances Running, since binding is what is measured.

Run: `.venv/bin/python bench/scheduling_bench.py [--quick] [--instances N] [--nodes N]`.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402
from _common import (  # noqa: E402
    HYPERMESH,
    HypermeshServer,
    code_version,
    limit,
    machine_info,
    measurement,
    now_iso,
    process_cpu_seconds,
    stop_process,
    wait_for_line,
)

from controllers.kinds import WORKLOADS  # noqa: E402
from hypermesh.cli import simulate  # noqa: E402
from hypermesh.client.aio import AsyncClient  # noqa: E402
from hypermesh.client.config import load_config  # noqa: E402
from hypermesh.operator.bounded import gather_bounded  # noqa: E402

TARGET_WORKLOAD_S = 2.0
TARGET_RATE = 2_000.0
CONCURRENCY = 64


def instance(name: str, namespace: str, node: str | None = None) -> dict[str, Any]:
    """A small Instance (100m, 128Mi); pre-bound to `node` when given."""
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "main",
                "image": "busybox",
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
            }
        ]
    }
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "hypermesh.io/v1",
        "kind": "Instance",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


async def create_instances(client: AsyncClient, namespace: str, count: int, node: str | None) -> float:
    """Create `count` Instances, CONCURRENCY at a time; returns the seconds taken."""
    began = time.perf_counter()

    async def create(i: int) -> None:
        await client.create(simulate.INSTANCES, instance(f"i-{i}", namespace, node), namespace)

    await gather_bounded(range(count), create, CONCURRENCY)
    return time.perf_counter() - began


class CpuMeter:
    """CPU seconds each process spent during a phase, as a share of one core: the figure that
    says which process limits an end-to-end rate on a 2-core machine."""

    def __init__(self, processes: dict[str, psutil.Process]) -> None:
        self.processes = processes
        self.began = time.perf_counter()
        self.start = self._sample()

    def _sample(self) -> dict[str, float]:
        # This process's children are the server and the controllers: count only its own time.
        return {
            name: sum(p.cpu_times()[:2]) if p.pid == os.getpid() else process_cpu_seconds(p)
            for name, p in self.processes.items()
        }

    def shares(self) -> dict[str, float]:
        """Per process: CPU seconds / wall seconds since the meter started (1.0 = one core)."""
        wall = time.perf_counter() - self.began
        end = self._sample()
        return {name: round((end[name] - self.start[name]) / wall, 2) for name in end}


class BoundCounter:
    """Watches a namespace's Instances and notes when each first shows a spec.nodeName."""

    def __init__(self, client: AsyncClient, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.bound: set[str] = set()
        self.last_bound = 0.0
        self.target = 0
        self.done = asyncio.Event()
        self.started = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> BoundCounter:
        listing = await self.client.list(simulate.INSTANCES, self.namespace)
        rv = listing["metadata"]["resourceVersion"]
        self._task = asyncio.create_task(self._watch(rv))
        await asyncio.sleep(0.05)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _watch(self, rv: str) -> None:
        stream = self.client.watch(
            simulate.INSTANCES, self.namespace, resource_version=rv, timeout_seconds=3600
        )
        async with contextlib.aclosing(stream):
            async for event in stream:
                obj = event.get("object") or {}
                if event.get("type") in ("ADDED", "MODIFIED") and (obj.get("spec") or {}).get("nodeName"):
                    name = obj["metadata"]["name"]
                    if name not in self.bound:
                        self.bound.add(name)
                        self.last_bound = time.perf_counter()
                        if self.target and len(self.bound) >= self.target:
                            self.done.set()

    async def wait(self, target: int, timeout: float) -> bool:
        """Until `target` Instances are bound (False on timeout)."""
        self.target = target
        if len(self.bound) >= target:
            return True
        try:
            await asyncio.wait_for(self.done.wait(), timeout)
        except TimeoutError:
            return False
        return True


async def ensure_namespaces(client: AsyncClient, *names: str) -> None:
    for name in names:
        await simulate.ensure_namespace(client, name)


async def measure(server: HypermeshServer, args: argparse.Namespace) -> dict[str, Any]:
    kubeconfig = server.data_dir / "admin.kubeconfig"
    client = AsyncClient.from_config(load_config(str(kubeconfig)), pool_size=CONCURRENCY)
    results: dict[str, Any] = {}
    try:
        await ensure_namespaces(client, "raw", "wl", "e2e")
        settings = simulate.SimSettings(count=args.nodes, zones=3, run_instances=False)
        began = time.perf_counter()
        await simulate.register_nodes(client, settings)
        results["node_registration_s"] = round(time.perf_counter() - began, 2)

        # The limit: raw creates, nothing to schedule (pre-bound to a node that does not exist).
        raw_count = min(args.instances, args.raw)
        raw_seconds = await create_instances(client, "raw", raw_count, node="raw-nowhere")
        results["raw_create_rate"] = round(raw_count / raw_seconds)
        results["raw_creates"] = raw_count

        log = open(server.tmp / "controllers.log", "a")
        proc = subprocess.Popen(
            [str(HYPERMESH), "controllers", "--kubeconfig", str(kubeconfig), "--no-leader-election"],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "HYPERMESH_LOG_LEVEL": os.environ.get("HYPERMESH_LOG_LEVEL", "WARNING")},
        )
        log.close()
        heartbeat = asyncio.create_task(heartbeats(client, settings))
        try:
            wait_for_line(proc, "ready", 60, server.tmp / "controllers.log")
            # Let the controllers list 5,000 Nodes and the raw Instances before the clock runs.
            await asyncio.sleep(3.0 if not args.quick else 1.5)
            processes = {
                "server": server.process,
                "controllers": psutil.Process(proc.pid),
                "bench_client": psutil.Process(os.getpid()),
            }
            results.update(await workload_phase(client, args.replicas, processes))
            results.update(await bind_phase(client, args.instances, processes))
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            stop_process(proc)
    finally:
        await client.aclose()
    return results


async def heartbeats(client: AsyncClient, settings: simulate.SimSettings) -> None:
    """Renew every simulated Node's Lease each `lease_interval` (10 s), as 5,000 real node
    agents would: 500 writes/s of background load, and without it the node controller would
    rightly fence every Node 40 s into a long run."""
    names = settings.names()
    # Spread over the interval as independent agents are (a tenth every second), not a burst.
    slices = 10
    while True:
        for i in range(slices):
            began = time.perf_counter()
            await simulate.renew_leases(client, names[i::slices], settings)
            await asyncio.sleep(max(0.0, settings.lease_interval / slices - (time.perf_counter() - began)))


async def workload_phase(client: AsyncClient, replicas: int, processes: dict[str, psutil.Process]) -> dict[str, Any]:
    body = {
        "apiVersion": "hypermesh.io/v1",
        "kind": "Workload",
        "metadata": {"name": "big", "namespace": "wl"},
        "spec": {
            "replicas": replicas,
            "template": {
                "metadata": {"labels": {"app": "big"}},
                "spec": instance("x", "wl")["spec"],
            },
        },
    }
    async with BoundCounter(client, "wl") as counter:
        began = time.perf_counter()
        meter = CpuMeter(processes)
        await client.create(WORKLOADS, body, "wl")
        ok = await counter.wait(replicas, 120)
        seconds = (counter.last_bound - began) if ok else None
        cpu = meter.shares()
    return {
        "workload_seconds": None if seconds is None else round(seconds, 3),
        "workload_replicas": replicas,
        "workload_bound": len(counter.bound),
        "workload_cpu_cores": cpu,
    }


async def bind_phase(client: AsyncClient, count: int, processes: dict[str, psutil.Process]) -> dict[str, Any]:
    async with BoundCounter(client, "e2e") as counter:
        began = time.perf_counter()
        meter = CpuMeter(processes)
        create_seconds = await create_instances(client, "e2e", count, node=None)
        ok = await counter.wait(count, 300)
        seconds = counter.last_bound - began
        cpu = meter.shares()
    return {
        "bind_rate": round(len(counter.bound) / seconds) if seconds > 0 else None,
        "bind_instances": count,
        "bind_bound": len(counter.bound),
        "bind_all_bound": ok,
        "bind_seconds": round(seconds, 2),
        "bind_create_phase_rate": round(count / create_seconds),
        "bind_cpu_cores": cpu,
    }


def main() -> None:
    """Measure and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 500 nodes, small counts")
    parser.add_argument("--nodes", type=int, default=None, help="simulated nodes (5,000)")
    parser.add_argument("--instances", type=int, default=None, help="Instances for the bind rate (50,000)")
    parser.add_argument("--replicas", type=int, default=None, help="Workload replicas (1,000)")
    parser.add_argument("--raw", type=int, default=10_000, help="at most this many raw creates for the limit")
    args = parser.parse_args()
    args.nodes = args.nodes or (500 if args.quick else 5_000)
    args.instances = args.instances or (2_000 if args.quick else 50_000)
    args.replicas = args.replicas or (200 if args.quick else 1_000)
    if args.quick:
        args.raw = min(args.raw, 1_000)
    report: dict[str, Any] = {
        "benchmark": "scheduling",
        "started": now_iso(),
        "machine": machine_info(),
        "code": code_version(),
        "quick": args.quick,
        "nodes": args.nodes,
    }
    began = time.monotonic()
    with HypermeshServer(label="scheduling") as server:
        results = asyncio.run(measure(server, args))
    raw = limit(results["raw_create_rate"], "per s", f"raw Instance creates/s, same client, {CONCURRENCY} in flight")
    notes = []
    if args.instances < 50_000:
        notes.append(f"bind rate measured over {args.instances} Instances, not the 50,000 of the target")
    if args.replicas != 1_000:
        notes.append(f"Workload of {args.replicas} replicas, not 1,000")
    report["measurements"] = {
        "workload_1000": measurement(
            what=f"seconds from Workload apply to {args.replicas} Instances bound, {args.nodes} nodes",
            figure=results["workload_seconds"], unit="s", target=TARGET_WORKLOAD_S, comparison="<=",
            limits={"raw_create_rate": raw},
            details={k: v for k, v in results.items() if k.startswith("workload")},
        ),
        "bind_rate": measurement(
            what=f"Instances created -> bound per s, {args.instances} Instances, {args.nodes} nodes",
            figure=results["bind_rate"], unit="per s", target=TARGET_RATE, comparison=">=",
            limits={"raw_create_rate": raw},
            details={k: v for k, v in results.items() if k.startswith("bind")},
        ),
    }
    report["node_registration_s"] = results["node_registration_s"]
    report["notes"] = notes
    report["all_targets_met"] = all(m["meets_target"] for m in report["measurements"].values())
    report["finished"] = now_iso()
    report["seconds"] = round(time.monotonic() - began, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
