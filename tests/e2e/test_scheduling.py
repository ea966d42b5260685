"""The scheduler controller and simulated nodes end to end.

Most tests run the API server in process (APIServer over a MemoryStore, reached through
`AsyncClient.in_process`) with every controller of `controllers.build`, and register a small set
of simulated Nodes with `hypermesh.cli.simulate`, the module behind `hypermesh simulate-nodes`.
One test runs the real commands (`hypermesh controllers`, `hypermesh simulate-nodes`) against a
real server process.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import controllers
from controllers.kinds import INSTANCES, WORKLOADS
from controllers.scheduling import SchedulerSettings
from hypermesh.api.app import APIServer
from hypermesh.cli import simulate
from hypermesh.client.aio import AsyncClient
from hypermesh.client.config import load_config
from hypermesh.client.errors import ApiError
from hypermesh.operator import InformerSettings, get_condition
from hypermesh.operator.events import EVENTS
from hypermesh.pki import Identity
from hypermesh.scheduler import to_base_units
from hypermesh.store import MemoryStore
from tests.e2e.conftest import Server

pytestmark = pytest.mark.timeout(60)

ADMIN = Identity("admin", ("system:masters",))
FAST = InformerSettings(watch_timeout=30, stall_timeout=15.0, backoff_base=0.05, backoff_cap=0.5)
NS = "default"


# -- helpers ----------------------------------------------------------------------------------


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await check():
            return
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def resources(cpu: str, memory: str) -> dict[str, Any]:
    return {"requests": {"cpu": cpu, "memory": memory}}


def instance(name: str, cpu: str = "100m", memory: str = "128Mi", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "hypermesh.io/v1",
        "kind": "Instance",
        "metadata": {"name": name, "namespace": NS, "labels": {"test": name}},
        "spec": {
            "containers": [{"name": "main", "image": "busybox", "resources": resources(cpu, memory)}],
            **spec,
        },
    }


def workload(name: str, replicas: int, cpu: str, memory: str) -> dict[str, Any]:
    return {
        "apiVersion": "hypermesh.io/v1",
        "kind": "Workload",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {"name": "main", "image": "busybox", "resources": resources(cpu, memory)}
                    ]
                },
            },
        },
    }


async def live_instances(client: AsyncClient, selector: str | None = None) -> list[dict[str, Any]]:
    items = (await client.list(INSTANCES, NS, label_selector=selector))["items"]
    return [i for i in items if not i["metadata"].get("deletionTimestamp")]


async def get_or_none(client: AsyncClient, name: str) -> dict[str, Any] | None:
    try:
        return await client.get(INSTANCES, name, NS)
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


def node_of(obj: dict[str, Any] | None) -> str | None:
    return ((obj or {}).get("spec") or {}).get("nodeName")


@pytest.fixture
async def app() -> AsyncIterator[APIServer]:
    server = APIServer(MemoryStore())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def running_controllers(app: APIServer, scheduler: SchedulerSettings) -> AsyncIterator[AsyncClient]:
    """An admin client, with every controller (the scheduler included) running beside it."""
    settings = controllers.ControllerSettings(leader_election=False, informers=FAST, scheduler=scheduler)
    controller_client = AsyncClient.in_process(app, Identity("system:controllers", ("system:masters",)))
    stop = asyncio.Event()
    task = asyncio.create_task(controllers.run_all(controller_client, stop, settings=settings))
    try:
        yield AsyncClient.in_process(app, ADMIN)
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 5)
        except TimeoutError:
            task.cancel()


@pytest.fixture
async def client(app: APIServer) -> AsyncIterator[AsyncClient]:
    """Controllers with quick retries, and an admin client."""
    async with running_controllers(app, SchedulerSettings(retry_base=0.2, retry_cap=2.0)) as admin:
        yield admin


@contextlib.asynccontextmanager
async def simulated(client: AsyncClient, settings: simulate.SimSettings) -> AsyncIterator[simulate.NodeSimulator]:
    """Simulated nodes (registered, heartbeating, reporting Running) for the block's duration."""
    simulator = simulate.NodeSimulator(client, settings, informer_settings=FAST)
    stop = asyncio.Event()
    task = asyncio.create_task(simulator.run(stop))
    try:
        await asyncio.wait_for(simulator.registered.wait(), 10)
        yield simulator
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


# -- in-process tests ------------------------------------------------------------------------------


async def test_workload_is_bound_across_nodes_without_overcommit(client: AsyncClient) -> None:
    # 4 nodes of 2 cpu / 4Gi: 8 replicas of 250m / 512Mi fit per node, 32 in all.
    sim = simulate.SimSettings(count=4, zones=2, cpu="2", memory="4Gi", pods=110)
    async with simulated(client, sim):
        nodes = (await client.list(simulate.NODES))["items"]
        assert {n["metadata"]["name"] for n in nodes} == set(sim.names())
        labels = nodes[0]["metadata"]["labels"]
        assert labels[simulate.SIMULATED_LABEL] == "true" and labels["kubernetes.io/os"] == "linux"
        ready = nodes[0]["status"]["conditions"][0]
        assert (ready["type"], ready["status"]) == ("Ready", "True") and ready["lastHeartbeatTime"]
        leases = (await client.list(simulate.LEASES, simulate.LEASE_NAMESPACE))["items"]
        assert len(leases) == 4

        await client.create(WORKLOADS, workload("web", 20, "250m", "512Mi"))

        async def all_bound() -> bool:
            live = await live_instances(client, "app=web")
            return len(live) == 20 and all(node_of(i) for i in live)

        await eventually(all_bound)
        used: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for item in await live_instances(client, "app=web"):
            used[str(node_of(item))][0] += to_base_units("cpu", "250m")
            used[str(node_of(item))][1] += to_base_units("memory", "512Mi")
        assert len(used) >= 3, used
        for cpu, memory in used.values():
            assert cpu <= to_base_units("cpu", "2") and memory <= to_base_units("memory", "4Gi")

        # The simulated nodes report them Running, so the Workload becomes ready.
        async def ready() -> bool:
            status = (await client.get(WORKLOADS, "web", NS)).get("status") or {}
            return status.get("readyReplicas") == 20

        await eventually(ready, timeout=15)
        running = await live_instances(client, "app=web")
        assert all(i["status"]["phase"] == "Running" for i in running)
        addresses = {i["status"]["instanceIP"] for i in running}
        assert len(addresses) == 20 and all(i["status"]["startTime"] for i in running)


async def test_unschedulable_instance_says_why_with_counts(client: AsyncClient) -> None:
    await simulate.register_nodes(client, simulate.SimSettings(count=5, memory="4Gi"))
    await client.create(INSTANCES, instance("huge", memory="64Gi"))

    async def reported() -> bool:
        condition = get_condition(await client.get(INSTANCES, "huge", NS), "Scheduled") or {}
        return condition.get("status") == "False"

    await eventually(reported)
    obj = await client.get(INSTANCES, "huge", NS)
    condition = get_condition(obj, "Scheduled") or {}
    assert condition["reason"] == "Unschedulable"
    assert condition["message"].startswith("0/5 nodes are available: 5 Insufficient memory."), condition
    assert node_of(obj) is None
    events = (await client.list(EVENTS, NS))["items"]
    warnings = [e for e in events if e["involvedObject"].get("name") == "huge"]
    assert warnings and warnings[0]["type"] == "Warning" and warnings[0]["reason"] == "FailedScheduling"
    assert "5 Insufficient memory" in warnings[0]["message"]


async def test_tainted_node_is_avoided_unless_tolerated(client: AsyncClient) -> None:
    await simulate.register_nodes(client, simulate.SimSettings(count=3))
    taint = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
    await client.patch(simulate.NODES, "sim-0", None, {"spec": {"taints": [taint]}})
    for i in range(6):
        await client.create(INSTANCES, instance(f"plain-{i}"))
    pinned = {"hypermesh.io/hostname": "sim-0"}
    await client.create(INSTANCES, instance("pinned", nodeSelector=pinned))
    toleration = {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
    await client.create(INSTANCES, instance("tolerant", nodeSelector=pinned, tolerations=[toleration]))

    async def settled() -> bool:
        plain = [await get_or_none(client, f"plain-{i}") for i in range(6)]
        tolerant = await get_or_none(client, "tolerant")
        pinned_obj = await get_or_none(client, "pinned")
        return (
            all(node_of(p) for p in plain)
            and node_of(tolerant) == "sim-0"
            and (get_condition(pinned_obj or {}, "Scheduled") or {}).get("status") == "False"
        )

    await eventually(settled)
    plain_nodes = {node_of(await get_or_none(client, f"plain-{i}")) for i in range(6)}
    assert "sim-0" not in plain_nodes
    message = (get_condition(await client.get(INSTANCES, "pinned", NS), "Scheduled") or {})["message"]
    assert "1 node(s) had untolerated taint {dedicated: gpu}" in message, message
    assert "2 node(s) didn't match Instance's node affinity/selector" in message, message


async def test_higher_priority_preempts_lower_when_full(client: AsyncClient) -> None:
    # Running nodes (not just registered ones): a preempted victim is deleted gracefully and
    # holds its room until its node has stopped it and finished the deletion.
    async with simulated(client, simulate.SimSettings(count=2, cpu="1", memory="4Gi")):
        for i in range(2):
            await client.create(INSTANCES, instance(f"low-{i}", cpu="1", priority=0))

        async def low_bound() -> bool:
            return all([node_of(await get_or_none(client, f"low-{i}")) for i in range(2)])

        await eventually(low_bound)
        await client.create(INSTANCES, instance("high", cpu="1", priority=1000))

        async def preempted() -> bool:
            high = await get_or_none(client, "high")
            low = [await get_or_none(client, f"low-{i}") for i in range(2)]
            # The victim's graceful deletion takes a moment more, and the Scheduled condition
            # is written just after the bind: wait for both.
            scheduled = (get_condition(high or {}, "Scheduled") or {}).get("status") == "True"
            return bool(node_of(high)) and scheduled and sum(1 for obj in low if obj is None) == 1

        await eventually(preempted)
    high = await client.get(INSTANCES, "high", NS)
    survivor = next(o for o in [await get_or_none(client, f"low-{i}") for i in range(2)] if o)
    assert node_of(high) != node_of(survivor)
    reasons = {e["reason"] for e in (await client.list(EVENTS, NS))["items"]}
    assert {"Preempted", "Preempting", "FailedScheduling"} <= reasons
    assert (get_condition(high, "Scheduled") or {}).get("status") == "True"


async def test_adding_nodes_binds_pending_instances(client: AsyncClient) -> None:
    await simulate.register_nodes(client, simulate.SimSettings(count=1, cpu="1", memory="4Gi"))
    await client.create(WORKLOADS, workload("grow", 4, "500m", "256Mi"))

    async def two_pending() -> bool:
        live = await live_instances(client, "app=grow")
        bound = [i for i in live if node_of(i)]
        unschedulable = [
            i for i in live if (get_condition(i, "Scheduled") or {}).get("status") == "False"
        ]
        return len(live) == 4 and len(bound) == 2 and len(unschedulable) == 2

    await eventually(two_pending)
    await simulate.register_nodes(client, simulate.SimSettings(count=1, start=1, cpu="1", memory="4Gi"))

    async def all_bound() -> bool:
        live = await live_instances(client, "app=grow")
        return len(live) == 4 and all(node_of(i) for i in live)

    await eventually(all_bound, timeout=5)
    nodes = {node_of(i) for i in await live_instances(client, "app=grow")}
    assert nodes == {"sim-0", "sim-1"}


# -- a real server ------------------------------------------------------------------------------


async def test_simulate_nodes_command_runs_a_workload(server: Server) -> None:
    hypermesh = str(Path(sys.executable).parent / "hypermesh")
    kubeconfig = str(server.kubeconfig)
    procs = [
        subprocess.Popen(
            [hypermesh, "controllers", "--kubeconfig", kubeconfig],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ),
        subprocess.Popen(
            [hypermesh, "simulate-nodes", "--count", "5", "--kubeconfig", kubeconfig, "--cleanup"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ),
    ]
    client = AsyncClient.from_config(load_config(kubeconfig))
    codes: list[int | None] = []
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.to_thread(proc.stdout.readline)
            assert line.strip() == "ready", proc.stderr.read() if proc.stderr else ""
        nodes = (await client.list(simulate.NODES, label_selector="hypermesh.io/simulated=true"))["items"]
        assert len(nodes) == 5
        await client.create(WORKLOADS, workload("remote-sim", 6, "500m", "1Gi"))

        async def ready() -> bool:
            status = (await client.get(WORKLOADS, "remote-sim", NS)).get("status") or {}
            return status.get("readyReplicas") == 6

        await eventually(ready, timeout=30)
        live = await live_instances(client, "app=remote-sim")
        assert all(i["status"]["phase"] == "Running" and node_of(i) for i in live)
        await client.delete(WORKLOADS, "remote-sim", NS)
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            try:
                codes.append(await asyncio.to_thread(proc.wait, 15))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(None)
    try:
        # --cleanup took the simulated nodes away on SIGTERM.
        left = (await client.list(simulate.NODES, label_selector="hypermesh.io/simulated=true"))["items"]
        assert left == []
    finally:
        await client.aclose()
    assert codes == [0, 0], [p.stderr.read() if p.stderr else "" for p in procs]


async def test_spread_blocked_instance_is_retried_when_another_is_placed(app: APIServer) -> None:
    spread = [{
        "maxSkew": 1,
        "topologyKey": "topology.hypermesh.io/zone",
        "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": "s"}},
    }]

    def spread_instance(name: str, **spec: Any) -> dict[str, Any]:
        body = instance(name, topologySpreadConstraints=spread, **spec)
        body["metadata"]["labels"] = {"app": "s"}
        return body

    # A long backoff: without the wake-up on placements the blocked Instance would wait 30 s.
    slow_retries = SchedulerSettings(retry_base=30.0, retry_cap=60.0)
    async with running_controllers(app, slow_retries) as client, simulated(
        client, simulate.SimSettings(count=2, zones=2, cpu="1", memory="2Gi")
    ):
        # zone-1's only node is full, so the first spread Instance lands in zone-0...
        await client.create(INSTANCES, instance("filler", cpu="1", nodeName="sim-1"))
        await client.create(INSTANCES, spread_instance("s1"))

        async def bound(name: str) -> bool:
            return node_of(await get_or_none(client, name)) is not None
        await eventually(lambda: bound("s1"))
        assert node_of(await client.get(INSTANCES, "s1", NS)) == "sim-0"

        # ...and a second one fits nowhere: zone-0 would be 2 ahead of zone-1.
        await client.create(INSTANCES, spread_instance("s2"))

        async def blocked() -> bool:
            condition = get_condition(await client.get(INSTANCES, "s2", NS), "Scheduled") or {}
            return "topology spread" in condition.get("message", "")
        await eventually(blocked)

        # A matching Instance placed in zone-1 evens the count: s2 may now go to zone-0.
        await client.create(INSTANCES, spread_instance("s3", nodeName="sim-1"))
        await eventually(lambda: bound("s2"), timeout=10)
        assert node_of(await client.get(INSTANCES, "s2", NS)) == "sim-0"
