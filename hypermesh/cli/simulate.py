"""`hypermesh simulate-nodes`: many hollow Nodes from one process, for scheduling at scale.

Kubernetes tests its control plane at 5,000 nodes with "hollow" kubelets that speak the API but
run nothing; this is the same idea. One process registers N Node objects, keeps one Lease per
Node fresh (the heartbeat the nodes controller watches), and reports every Instance bound to its
Nodes as Running with a fake address, so the workloads controller sees readiness as it would
from real agents. A deleted Instance stays Terminating until its node says it stopped (see
hypermesh/api/graceful.py); hollow nodes run nothing, so they say so at once: the final DELETE
(`gracePeriodSeconds: 0`, uid precondition) goes out as soon as the Terminating Instance is seen.

What keeps thousands of nodes cheap is that nothing here is per node and sequential: every
round of writes (registration, Lease renewals) goes out as concurrent requests over the pooled
`AsyncClient`, bounded by `concurrency`, and Instances are learnt from one watch (a shared
`Informer`) rather than from a poll per node.

The building blocks (`node_object`, `register_nodes`, `renew_leases`, `NodeSimulator`) are
public so tests and benchmarks can run a simulated node set in their own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from controllers.kinds import INSTANCES, NODES
from hypermesh.client.aio import AsyncClient
from hypermesh.client.errors import ApiError, ClientError
from hypermesh.client.resources import Resource
from hypermesh.operator import deletion
from hypermesh.operator.bounded import gather_bounded
from hypermesh.operator.conditions import set_condition
from hypermesh.operator.informer import Informer, InformerSettings, object_key
from hypermesh.operator.leader import LEASES, format_micro_time

log = logging.getLogger("hypermesh.simulate")

NAMESPACES = Resource(
    group="", version="v1", kind="Namespace", plural="namespaces", singular="namespace",
    namespaced=False,
)
LEASE_NAMESPACE = "hypermesh-node-lease"
SIMULATED_LABEL = "hypermesh.io/simulated"
FIELD_MANAGER = "hypermesh-simulate-nodes"
# Instance addresses: node i owns the /64 fd00:5a::/48 + i; its Instances count up from ::1.
_BASE_NETWORK = ipaddress.IPv6Network("fd00:5a::/48")

T = TypeVar("T")
# A final DELETE that failed for want of the server is tried again after this many seconds.
_FINISH_RETRY = 1.0
# A status report that met a newer object (409) is tried again after this many seconds.
_CONFLICT_RETRY = 0.05


@dataclass(frozen=True)
class SimSettings:
    """What the simulated nodes look like and how often they heartbeat."""

    count: int
    zones: int = 3
    cpu: str = "8"
    memory: str = "32Gi"
    pods: int = 110
    prefix: str = "sim"
    # Index of the first node, so several simulators can share a cluster.
    start: int = 0
    lease_interval: float = 10.0
    lease_duration: int = 40
    # Requests in flight at once for registration, renewals and status reports.
    concurrency: int = 64
    # Report bound Instances as Running (benchmarks of binding alone turn it off).
    run_instances: bool = True
    # Delete the Nodes (and their Leases) when stopping.
    cleanup: bool = False

    def names(self) -> list[str]:
        """The simulated Node names, `<prefix>-<i>`."""
        return [f"{self.prefix}-{i}" for i in range(self.start, self.start + self.count)]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_object(index: int, settings: SimSettings) -> dict[str, Any]:
    """The Node a simulated machine number `index` registers (status included)."""
    name = f"{settings.prefix}-{index}"
    now = _now()
    resources = {"cpu": settings.cpu, "memory": settings.memory, "pods": str(settings.pods)}
    return {
        "apiVersion": "hypermesh.io/v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "hypermesh.io/hostname": name,
                "topology.hypermesh.io/zone": f"zone-{index % max(1, settings.zones)}",
                "kubernetes.io/os": "linux",
                SIMULATED_LABEL: "true",
            },
        },
        "spec": {"instanceCIDR": str(_node_network(index))},
        "status": {
            "capacity": dict(resources),
            "allocatable": dict(resources),
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "SimulatedNodeReady",
                    "message": "simulated by hypermesh simulate-nodes",
                    "lastTransitionTime": now,
                    "lastHeartbeatTime": now,
                }
            ],
        },
    }


def _node_network(index: int) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network((int(_BASE_NETWORK.network_address) + (index << 64), 64))


async def ensure_namespace(client: AsyncClient, name: str) -> None:
    """Create namespace `name` unless it exists."""
    try:
        await client.create(
            NAMESPACES,
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
            field_manager=FIELD_MANAGER,
        )
    except ApiError as exc:
        if exc.status != 409:
            raise


async def register_nodes(client: AsyncClient, settings: SimSettings) -> list[str]:
    """Create (or refresh) every simulated Node, `concurrency` at a time; returns their names.

    A Node's status is a subresource, which a create ignores, so each registration is a create
    followed by a status write; a Node left by an earlier run is refreshed instead.
    """

    async def register(index: int) -> None:
        node = node_object(index, settings)
        name = node["metadata"]["name"]
        try:
            await client.create(NODES, node, field_manager=FIELD_MANAGER)
        except ApiError as exc:
            if exc.status != 409:
                raise
            await client.patch(
                NODES, name, None, {"metadata": {"labels": node["metadata"]["labels"]}},
                field_manager=FIELD_MANAGER,
            )
        await client.update_status(NODES, name, None, node["status"], field_manager=FIELD_MANAGER)

    indexes = range(settings.start, settings.start + settings.count)
    await gather_bounded(indexes, register, settings.concurrency)
    return settings.names()


async def renew_leases(client: AsyncClient, names: list[str], settings: SimSettings) -> int:
    """Renew (or create) one Lease per Node in `hypermesh-node-lease`; returns failures."""
    now = format_micro_time(datetime.now(UTC))
    failures = 0

    async def renew(name: str) -> None:
        nonlocal failures
        try:
            try:
                await client.patch(
                    LEASES, name, LEASE_NAMESPACE, {"spec": {"renewTime": now}},
                    field_manager=FIELD_MANAGER,
                )
            except ApiError as exc:
                if exc.status != 404:
                    raise
                lease = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": name, "namespace": LEASE_NAMESPACE},
                    "spec": {
                        "holderIdentity": name,
                        "leaseDurationSeconds": settings.lease_duration,
                        "renewTime": now,
                    },
                }
                await client.create(LEASES, lease, LEASE_NAMESPACE, field_manager=FIELD_MANAGER)
        except (ApiError, ClientError) as exc:
            # One missed renewal is not fatal (the Lease lasts 4 intervals); count and go on.
            failures += 1
            log.debug("lease of %s not renewed: %s", name, exc)

    await gather_bounded(names, renew, settings.concurrency)
    return failures


async def delete_nodes(client: AsyncClient, names: list[str], settings: SimSettings) -> None:
    """Delete the Nodes and their Leases (missing ones are fine)."""

    async def delete(name: str) -> None:
        for resource, namespace in ((NODES, None), (LEASES, LEASE_NAMESPACE)):
            with contextlib.suppress(ApiError, ClientError):
                await client.delete(resource, name, namespace)

    await gather_bounded(names, delete, settings.concurrency)


class NodeSimulator:
    """Registered Nodes, their heartbeats, and Running reports for what is bound to them."""

    def __init__(
        self,
        client: AsyncClient,
        settings: SimSettings,
        *,
        informer_settings: InformerSettings | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.names = settings.names()
        self._index = {name: settings.start + i for i, name in enumerate(self.names)}
        self._next_ip: dict[str, int] = {}
        self.instances = Informer(client, INSTANCES, settings=informer_settings)
        self.instances.subscribe(self._on_instance)
        self._reported: set[str] = set()
        self._todo: asyncio.Queue[str] = asyncio.Queue()
        # Terminating Instances of these Nodes whose final DELETE is queued or in flight.
        self._finishing: set[str] = set()
        self._finish_todo: asyncio.Queue[str] = asyncio.Queue()
        self.registered = asyncio.Event()

    def _on_instance(self, event: str, obj: dict[str, Any]) -> None:
        key = object_key(obj)
        if event == "DELETED":
            self._reported.discard(key)
            self._finishing.discard(key)
            return
        node = (obj.get("spec") or {}).get("nodeName")
        status = obj.get("status") or {}
        if node in self._index and obj["metadata"].get("deletionTimestamp"):
            if key not in self._finishing:
                self._finishing.add(key)
                self._finish_todo.put_nowait(key)
            return
        if (
            node in self._index
            and key not in self._reported
            and status.get("phase") != "Running"
            and not obj["metadata"].get("deletionTimestamp")
        ):
            self._reported.add(key)
            self._todo.put_nowait(key)

    async def report_running(self, obj: dict[str, Any]) -> None:
        """Write what a node agent writes once an Instance's containers are up."""
        meta = obj["metadata"]
        node = str(obj["spec"]["nodeName"])
        serial = self._next_ip.get(node, 0) + 1
        self._next_ip[node] = serial
        address = _node_network(self._index[node]).network_address + serial
        now = _now()
        conditions = (obj.get("status") or {}).get("conditions")
        for kind in ("Initialized", "ContainersReady", "Ready"):
            conditions = set_condition(conditions, kind, "True", "SimulatedRunning", "", now=now)
        status = {
            "phase": "Running",
            "conditions": conditions,
            "instanceIP": str(address),
            "hostIP": str(_node_network(self._index[node]).network_address + 1),
            "startTime": now,
        }
        # The conditions list is replaced whole, so the write names the version it was made
        # from: a condition someone wrote meanwhile (the scheduler's Scheduled=True) gives a
        # 409 and a retry from the newer object, not a lost update.
        await self.client.patch(
            INSTANCES, meta["name"], meta.get("namespace"),
            {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": status},
            subresource="status", field_manager=FIELD_MANAGER,
        )

    async def _reporter(self) -> None:
        while True:
            key = await self._todo.get()
            obj = self.instances.get_key(key)
            if obj is None or not (obj.get("spec") or {}).get("nodeName") or obj["metadata"].get("deletionTimestamp"):
                continue
            try:
                await self.report_running(obj)
            except ApiError as exc:
                if exc.status == 409:
                    # The cache was behind the server: try again once the watch has caught up.
                    asyncio.get_running_loop().call_later(_CONFLICT_RETRY, self._todo.put_nowait, key)
                elif exc.status != 404:
                    log.warning("could not report %s running: %s", key, exc)
            except ClientError as exc:
                self._reported.discard(key)
                log.warning("could not report %s running: %s", key, exc)

    async def _finisher(self) -> None:
        """Delete Terminating Instances for good: nothing of them runs on a hollow node."""
        while True:
            key = await self._finish_todo.get()
            obj = self.instances.get_key(key)
            if obj is None or not obj["metadata"].get("deletionTimestamp"):
                self._finishing.discard(key)
                continue
            try:
                await deletion.delete_now(self.client, INSTANCES, obj)
            except (ApiError, ClientError) as exc:
                log.warning("could not finish deleting %s: %s", key, exc)
                asyncio.get_running_loop().call_later(_FINISH_RETRY, self._finish_todo.put_nowait, key)
                continue
            # Finalizers may keep it a while longer; DELETED (or an update) says when it is done.
            self._finishing.discard(key)

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        # The first renewal happened during registration.
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.lease_interval)
            if stop.is_set():
                return
            failures = await renew_leases(self.client, self.names, self.settings)
            if failures:
                log.warning("%d of %d leases not renewed", failures, len(self.names))

    async def run(self, stop: asyncio.Event) -> None:
        """Register, then heartbeat and report until `stop` is set; clean up if asked."""
        await ensure_namespace(self.client, LEASE_NAMESPACE)
        await register_nodes(self.client, self.settings)
        await renew_leases(self.client, self.names, self.settings)
        self.registered.set()
        tasks = [asyncio.create_task(self._heartbeat(stop), name="sim-heartbeat")]
        if self.settings.run_instances:
            tasks.append(asyncio.create_task(self.instances.run(), name="sim-instances"))
            tasks += [
                asyncio.create_task(self._reporter(), name=f"sim-reporter-{i}")
                for i in range(min(self.settings.concurrency, 32))
            ]
            tasks += [
                asyncio.create_task(self._finisher(), name=f"sim-finisher-{i}")
                for i in range(min(self.settings.concurrency, 8))
            ]
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self.settings.cleanup:
                await delete_nodes(self.client, self.names, self.settings)


async def run_simulator(kubeconfig: str | None, settings: SimSettings) -> int:
    """`hypermesh simulate-nodes`: run until SIGTERM or SIGINT."""
    from hypermesh.client.config import load_config

    client = AsyncClient.from_config(
        load_config(kubeconfig), pool_size=max(8, min(settings.concurrency, 64))
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    simulator = NodeSimulator(client, settings)
    task = asyncio.create_task(simulator.run(stop))
    from hypermesh.client.following import following_task

    following = following_task(client, kubeconfig, stop)
    try:
        registered = asyncio.ensure_future(simulator.registered.wait())
        await asyncio.wait({registered, task}, return_when=asyncio.FIRST_COMPLETED)
        if simulator.registered.is_set():
            log.info("%d simulated nodes registered against %s", settings.count, client.server)
            print("ready", flush=True)
        await task
    finally:
        if following is not None:
            following.cancel()
        await client.aclose()
    return 0
