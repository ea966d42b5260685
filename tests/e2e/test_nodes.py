"""The node lifecycle controller end to end, with graces of about a second.

The API server runs in process (APIServer over a MemoryStore, reached through
`AsyncClient.in_process`); the test plays the node agents by creating Nodes and renewing their
heartbeat Leases, and plays the scheduler by creating Instances already bound to a Node.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from controllers import nodes
from controllers.kinds import INSTANCES
from controllers.nodes import NODES, UNREACHABLE_TAINT, NodeSettings
from hypermesh.api.app import APIServer
from hypermesh.client.aio import AsyncClient
from hypermesh.client.errors import ApiError
from hypermesh.client.resources import Resource
from hypermesh.operator import InformerSettings, Settings, get_condition
from hypermesh.operator.events import EVENTS
from hypermesh.operator.leader import LEASES, format_micro_time
from hypermesh.pki import Identity
from hypermesh.store import MemoryStore

pytestmark = pytest.mark.timeout(60)

ADMIN = Identity("admin", ("system:masters",))
FAST = InformerSettings(watch_timeout=30, stall_timeout=15.0, backoff_base=0.05, backoff_cap=0.5)
GRACES = NodeSettings(monitor_grace=1.0, eviction_grace=1.0, check_interval=0.2)
LEASE_NS = GRACES.lease_namespace
NS = "default"
NAMESPACES = Resource(
    group="", version="v1", kind="Namespace", plural="namespaces", singular="namespace", namespaced=False
)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await check():
            return
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def renew(client: AsyncClient, node: str) -> None:
    """What an agent does every 10 s: create or renew the Lease named after its Node."""
    spec = {
        "holderIdentity": node,
        "leaseDurationSeconds": 40,
        "renewTime": format_micro_time(datetime.now(UTC)),
    }
    try:
        await client.get(LEASES, node, LEASE_NS)
    except ApiError as exc:
        assert exc.status == 404
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": node, "namespace": LEASE_NS},
            "spec": spec,
        }
        await client.create(LEASES, body, LEASE_NS)
        return
    await client.patch(LEASES, node, LEASE_NS, {"spec": spec})


@contextlib.asynccontextmanager
async def agent(client: AsyncClient, node: str, period: float = 0.2) -> AsyncIterator[None]:
    """A live agent: renews the Node's Lease every `period` seconds while the block runs."""

    async def loop() -> None:
        while True:
            await renew(client, node)
            await asyncio.sleep(period)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def register(client: AsyncClient, name: str) -> None:
    body = {"apiVersion": "hypermesh.io/v1", "kind": "Node", "metadata": {"name": name}, "spec": {}}
    await client.create(NODES, body)
    condition = {
        "type": "Ready",
        "status": "True",
        "reason": "AgentReady",
        "message": "agent is posting ready status",
        "lastTransitionTime": "2020-01-01T00:00:00Z",
    }
    await client.update_status(NODES, name, None, {"conditions": [condition]})
    await renew(client, name)


async def bound_instance(
    client: AsyncClient, name: str, node: str, tolerations: list[dict[str, Any]] | None = None
) -> None:
    spec: dict[str, Any] = {
        "containers": [{"name": "main", "image": "busybox:1"}],
        "nodeName": node,
    }
    if tolerations:
        spec["tolerations"] = tolerations
    body = {
        "apiVersion": "hypermesh.io/v1",
        "kind": "Instance",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }
    await client.create(INSTANCES, body)


async def instance_names(client: AsyncClient) -> set[str]:
    items = (await client.list(INSTANCES, NS))["items"]
    return {i["metadata"]["name"] for i in items if not i["metadata"].get("deletionTimestamp")}


def unreachable_taints(node: dict[str, Any]) -> set[str]:
    return {
        t["effect"] for t in (node.get("spec") or {}).get("taints") or []
        if t.get("key") == UNREACHABLE_TAINT
    }


async def event_reasons(client: AsyncClient, name: str) -> set[str]:
    items = (await client.list(EVENTS, NS))["items"]
    return {e["reason"] for e in items if (e.get("involvedObject") or {}).get("name") == name}


@pytest.fixture
async def client() -> AsyncIterator[AsyncClient]:
    """An admin client, with the node lifecycle operator running in process beside it."""
    app = APIServer(MemoryStore())
    await app.start()
    controller_client = AsyncClient.in_process(app, Identity("system:controllers", ("system:masters",)))
    # Where agents keep their heartbeat Leases: the server creates it on first start.
    await controller_client.get(NAMESPACES, LEASE_NS, None)
    op = nodes.build_operator(
        controller_client, settings=GRACES, operator_settings=Settings(informers=FAST)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(op.run(stop))
    try:
        yield AsyncClient.in_process(app, ADMIN)
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 5)
        except TimeoutError:
            task.cancel()
        await app.stop()


async def test_silent_node_is_fenced_then_emptied_and_comes_back_clean(client: AsyncClient) -> None:
    await register(client, "n1")
    await register(client, "n2")
    await bound_instance(client, "a", "n1")
    await bound_instance(client, "b", "n1")
    await bound_instance(client, "c", "n2")

    async with agent(client, "n2"):
        # n1's agent is silent from here on.
        async def fenced() -> bool:
            node = await client.get(NODES, "n1")
            ready = get_condition(node, "Ready") or {}
            return ready.get("status") == "Unknown" and "NoExecute" in unreachable_taints(node)

        await eventually(fenced)
        node = await client.get(NODES, "n1")
        assert (get_condition(node, "Ready") or {})["reason"] == "NodeStatusUnknown"
        assert unreachable_taints(node) == {"NoSchedule", "NoExecute"}
        # Fenced, but not yet past the eviction grace: everything is still there.
        assert await instance_names(client) == {"a", "b", "c"}

        async def emptied() -> bool:
            return await instance_names(client) == {"c"}

        await eventually(emptied)
        assert "EvictedInstances" in await event_reasons(client, "n1")
        assert "NodeLifecycleEviction" in await event_reasons(client, "a")

        # The live node was never touched.
        healthy = await client.get(NODES, "n2")
        assert (get_condition(healthy, "Ready") or {})["status"] == "True"
        assert not unreachable_taints(healthy)

        # n1's agent comes back: Ready again, taints gone, evicted Instances stay gone.
        async with agent(client, "n1"):

            async def recovered() -> bool:
                node = await client.get(NODES, "n1")
                ready = get_condition(node, "Ready") or {}
                return ready.get("status") == "True" and not unreachable_taints(node)

            await eventually(recovered)
            await asyncio.sleep(0.6)  # a few more checks change nothing
            assert await instance_names(client) == {"c"}
            node = await client.get(NODES, "n1")
            assert not unreachable_taints(node)
            assert {"NodeStatusUnknown", "NodeUnreachable", "NodeReady"} <= await event_reasons(client, "n1")


async def test_tolerating_instance_stays_for_its_toleration_seconds(client: AsyncClient) -> None:
    await register(client, "n3")
    toleration = {"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 3}
    await bound_instance(client, "patient", "n3", [toleration])
    await bound_instance(client, "forever", "n3", [{"operator": "Exists"}])
    await bound_instance(client, "plain", "n3")

    async def tainted_at() -> bool:
        return "NoExecute" in unreachable_taints(await client.get(NODES, "n3"))

    await eventually(tainted_at)
    clock = asyncio.get_running_loop().time
    start = clock()

    async def plain_gone() -> bool:
        return "plain" not in await instance_names(client)

    await eventually(plain_gone)
    assert {"patient", "forever"} <= await instance_names(client)
    # The instances that stay are marked not ready: nobody can vouch for them.
    patient = await client.get(INSTANCES, "patient", NS)
    assert (get_condition(patient, "Ready") or {}).get("reason") == "NodeUnreachable"

    async def patient_gone() -> bool:
        return "patient" not in await instance_names(client)

    await eventually(patient_gone)
    # Taint to deletion took about tolerationSeconds (3 s), not the 1 s eviction grace.
    assert clock() - start >= 2.0
    await asyncio.sleep(0.5)
    assert "forever" in await instance_names(client)


def test_tolerations_match_like_kubernetes() -> None:
    taint = {"key": UNREACHABLE_TAINT, "effect": "NoExecute"}
    assert nodes.tolerates({"operator": "Exists"}, taint)
    assert nodes.tolerates({"key": UNREACHABLE_TAINT, "operator": "Exists"}, taint)
    assert not nodes.tolerates({"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoSchedule"}, taint)
    assert not nodes.tolerates({"key": "other", "operator": "Exists"}, taint)
    assert nodes.tolerates({"key": UNREACHABLE_TAINT, "value": ""}, taint)
    assert nodes.eviction_delay({"spec": {}}, taint, 60.0) == 60.0
    assert nodes.eviction_delay({"spec": {"tolerations": [{"operator": "Exists"}]}}, taint, 60.0) is None
    tolerating = {"spec": {"tolerations": [{"operator": "Exists", "tolerationSeconds": 5}]}}
    assert nodes.eviction_delay(tolerating, taint, 60.0) == 5.0
