"""The node agent: this machine as a Node, its heartbeat, and a supervisor per bound Instance.

`hypermesh agent` (and the local agent of `hypermesh up`) runs one `Agent`:

- at start it prepares the node: the image store (with the built-in busybox image), the OCI
  runtime (crun when it works here without host changes, runc otherwise; `--oci-runtime`
  forces one), and the node bridge for Instance networking;
- it registers its Node (capacity and allocatable from the host, labels for arch, os and zone,
  nodeInfo naming the runtime) or updates it if it exists, and renews its Lease in
  `hypermesh-node-lease` every 10 s: the nodes controller fences a Node whose Lease goes stale;
- it watches only the Instances bound to it (`fieldSelector=spec.nodeName=<node>`) and keeps
  one `Supervisor` per Instance, which runs, restarts, reports and finally cleans up;
- a deleted Instance stays Terminating until its supervisor has stopped it (SIGTERM, SIGKILL
  after the grace period) and deleted it for good; one found Terminating with no supervisor
  (the agent restarted meanwhile) gets one that only stops what is left and finishes the job;
- on start it also removes what belongs to no Instance any more (network namespaces and
  containers of Instances deleted while the agent was down), and adopts what still runs;
- it serves its Instances' logs and exec over HTTPS (`endpoint`) for the API server to proxy,
  and publishes where in the Node's `status.daemonEndpoints.agentEndpoint`;
- it follows the cluster's CertificateRevocations, so its endpoint refuses a revoked client
  certificate (an administrator's, say) and closes the connections it holds, as the API server
  does.

Stopping the agent leaves the containers running, as stopping kubelet does: a restarted agent
takes them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import IPv6Network
from pathlib import Path
from typing import Any

from hypermesh.client.aio import AsyncClient
from hypermesh.client.errors import ApiError, ClientError
from hypermesh.client.kinds import INSTANCES, NODES
from hypermesh.client.resources import Resource
from hypermesh.operator.informer import Informer, InformerSettings, object_key
from hypermesh.operator.leader import LEASES, format_micro_time
from hypermesh.resources.certificaterevocation import RevokedSerials
from hypermesh.runtime import endpoint, hostinfo, images, network, rootfs, runc
from hypermesh.runtime.supervisor import FIELD_MANAGER, NodeServices, Supervisor, container_id

log = logging.getLogger(__name__)

LEASE_NAMESPACE = "hypermesh-node-lease"
# The cluster's ULA /48 (fd + 40 random-looking bits, fixed so every node agrees by default).
DEFAULT_CLUSTER_PREFIX = "fd68:6d65:7368::/48"
REVOCATIONS = Resource(
    group="hypermesh.io",
    version="v1",
    kind="CertificateRevocation",
    plural="certificaterevocations",
    singular="certificaterevocation",
    namespaced=False,
)
# How long a start waits for the revocation list before serving without it (an older server
# may not have the kind; the follower keeps trying).
_REVOCATIONS_SYNC_TIMEOUT = 10.0


@dataclass(frozen=True)
class AgentSettings:
    """How one agent runs; the defaults suit a single-machine cluster."""

    node_name: str
    data_dir: Path
    zone: str | None = None
    oci_runtime: str | None = None
    lease_interval: float = 10.0
    lease_duration: int = 40
    cluster_prefix: str = DEFAULT_CLUSTER_PREFIX
    bridge: str = "hm0"
    host_ip: str = "::1"
    version: str = "0.1.0"
    # Where logs and exec are served; port 0 takes any free port (the Node says which).
    endpoint_host: str = "::"
    endpoint_port: int = 0


def node_prefix(cluster: IPv6Network, node_name: str, wanted: str | None) -> IPv6Network:
    """The node's /64: the Node's spec.instanceCIDR if set, else one derived from its name."""
    if wanted:
        return IPv6Network(wanted)
    # The 16 subnet bits of the /48 from a hash of the name: stable across restarts, and two
    # nodes collide only with probability 1/65536 (a Node's spec.instanceCIDR settles it).
    subnet = int.from_bytes(hashlib.sha256(node_name.encode()).digest()[:2], "big")
    return network.node_prefix(cluster, subnet % (1 << (64 - cluster.prefixlen)))


class Agent:
    """Registers the Node, heartbeats, and supervises the Instances bound to it."""

    def __init__(self, client: AsyncClient, settings: AgentSettings) -> None:
        self.client = client
        self.settings = settings
        self.supervisors: dict[str, Supervisor] = {}
        self.services: NodeServices | None = None
        self.endpoint: endpoint.Endpoint | None = None
        self.ready = asyncio.Event()
        self.informer = Informer(
            client,
            INSTANCES,
            field_selector=f"spec.nodeName={settings.node_name}",
            settings=InformerSettings(watch_timeout=300),
        )
        # The revoked client certificate serials, for the endpoint.
        self.revoked = RevokedSerials()
        self.revocations = Informer(client, REVOCATIONS, settings=InformerSettings(watch_timeout=300))
        self.revocations.subscribe(self._on_revocation)

    # Running

    async def run(self, stop: asyncio.Event) -> None:
        """Prepare, register and supervise until `stop` is set."""
        existing = await self._existing_node()
        prefix = node_prefix(
            IPv6Network(self.settings.cluster_prefix),
            self.settings.node_name,
            ((existing or {}).get("spec") or {}).get("instanceCIDR"),
        )
        self.services = await asyncio.to_thread(self._prepare, prefix)
        follower = asyncio.create_task(self.revocations.run(), name="agent-revocations")
        try:
            await asyncio.wait_for(self.revocations.synced.wait(), _REVOCATIONS_SYNC_TIMEOUT)
        except TimeoutError:
            log.warning("the revocation list did not load within %.0fs; the endpoint serves meanwhile", _REVOCATIONS_SYNC_TIMEOUT)
        try:
            self.endpoint = await self._start_endpoint()
        except BaseException:
            follower.cancel()
            raise
        try:
            await self._register(existing, prefix)
            await self._renew_lease()
        except BaseException:
            follower.cancel()
            await self._stop_endpoint()
            raise
        self.informer.subscribe(self._on_instance)
        tasks = [
            follower,
            asyncio.create_task(self.informer.run(), name="agent-informer"),
            asyncio.create_task(self._heartbeat(stop), name="agent-heartbeat"),
        ]
        try:
            await asyncio.wait_for(self.informer.synced.wait(), 60)
            await self._cleanup_orphans()
            self.ready.set()
            log.info("node %s ready (runtime %s)", self.settings.node_name, self.services.runtime.name)
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self._stop_endpoint()
            # Containers keep running; only the supervisors' watch loops stop.
            for supervisor in self.supervisors.values():
                if supervisor._task is not None:
                    supervisor._task.cancel()

    def _prepare(self, prefix: IPv6Network) -> NodeServices:
        data = self.settings.data_dir
        data.mkdir(parents=True, exist_ok=True)
        os.chmod(data, 0o700)
        # Garbage collection keeps what running containers use even after `nexus image rm`.
        store = images.ImageStore(data / "images", in_use=self._images_in_use)
        store.ensure_busybox()
        runtime = runc.OciRuntime.detect(data / "oci", force=self.settings.oci_runtime)
        log.info("OCI runtime: %s (%s)", runtime.name, runtime.reason)
        node_net = network.NodeNetwork(
            cluster_prefix=IPv6Network(self.settings.cluster_prefix),
            node_prefix=prefix,
            bridge=self.settings.bridge,
            gateway=prefix.network_address + 1,
        )
        manager = network.NetworkManager(node_net, data / "network")
        manager.ensure_bridge()
        return NodeServices(
            client=self.client,
            node_name=self.settings.node_name,
            data_dir=data,
            images=store,
            runtime=runtime,
            network=manager,
            host_ip=str(node_net.gateway),
        )

    def _images_in_use(self) -> list[str]:
        """The image digests the supervised containers run (read from the collector's thread:
        a copy of the dict is taken first, each record read once)."""
        return [
            record.image_id
            for supervisor in list(self.supervisors.values())
            for record in list(supervisor.records)
            if record.image_id
        ]

    async def _start_endpoint(self) -> endpoint.Endpoint | None:
        assert self.services is not None
        ca_pem = self.client.ca_pem
        if not ca_pem:
            # Without the cluster CA no caller can be authenticated: serve nothing.
            log.warning("no cluster CA in the agent's client configuration: no logs or exec on this node")
            return None
        served = await endpoint.start(
            self.services,
            self.informer.get,
            client_ca_pem=ca_pem,
            host=self.settings.endpoint_host,
            port=self.settings.endpoint_port,
            revoked=self.revoked.is_revoked,
        )
        log.info("serving logs and exec on port %d (certificate %s)", served.port, served.serving.hash)
        return served

    def _on_revocation(self, event: str, obj: dict[str, Any]) -> None:
        revoked = self.revoked.apply(event, obj)
        if revoked and self.endpoint is not None:
            closed = self.endpoint.close_revoked(revoked)
            if closed:
                log.info("closed %d endpoint connections of revoked certificates", closed)

    async def _stop_endpoint(self) -> None:
        if self.endpoint is not None:
            await self.endpoint.close()
            self.endpoint = None

    # The Node and its Lease

    async def _existing_node(self) -> dict[str, Any] | None:
        try:
            return await self.client.get(NODES, self.settings.node_name)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def _node_status(self, gateway: str) -> dict[str, Any]:
        assert self.services is not None
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        runtime = self.services.runtime
        # A merge patch writes the status: None removes an endpoint an earlier run published.
        endpoints: dict[str, Any] = {"agentEndpoint": None}
        if self.endpoint is not None:
            endpoints["agentEndpoint"] = {"port": self.endpoint.port, "certificateHash": self.endpoint.serving.hash}
        return {
            "daemonEndpoints": endpoints,
            "capacity": hostinfo.capacity(),
            "allocatable": hostinfo.allocatable(),
            "addresses": [
                {"type": "InternalIP", "address": gateway},
                {"type": "Hostname", "address": self.settings.node_name},
            ],
            "nodeInfo": hostinfo.node_info(runtime.name, runtime.version, self.settings.version),
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "AgentReady",
                    "message": f"node agent is running Instances with {runtime.name}",
                    "lastTransitionTime": now,
                    "lastHeartbeatTime": now,
                }
            ],
        }

    async def _register(self, existing: dict[str, Any] | None, prefix: IPv6Network) -> None:
        assert self.services is not None
        status = self._node_status(self.services.host_ip)
        labels = hostinfo.labels(self.settings.node_name, self.settings.zone)
        if existing is None:
            body = {
                "apiVersion": NODES.api_version,
                "kind": NODES.kind,
                "metadata": {"name": self.settings.node_name, "labels": labels},
                "spec": {"instanceCIDR": str(prefix)},
                "status": status,
            }
            existing = await self.client.create(NODES, body, field_manager=FIELD_MANAGER)
        else:
            await self.client.patch(
                NODES, self.settings.node_name, None,
                {"metadata": {"labels": labels}, "spec": {"instanceCIDR": str(prefix)}},
                field_manager=FIELD_MANAGER,
            )
        # Status is a subresource: a create ignores it, so it is always written here.
        await self.client.update_status(NODES, self.settings.node_name, None, status, field_manager=FIELD_MANAGER)

    async def _renew_lease(self) -> None:
        name = self.settings.node_name
        now = format_micro_time(datetime.now(UTC))
        try:
            await self.client.patch(
                LEASES, name, LEASE_NAMESPACE, {"spec": {"renewTime": now, "holderIdentity": name}},
                field_manager=FIELD_MANAGER,
            )
        except ApiError as exc:
            if exc.status != 404:
                raise
            lease = {
                "apiVersion": LEASES.api_version,
                "kind": LEASES.kind,
                "metadata": {"name": name, "namespace": LEASE_NAMESPACE},
                "spec": {
                    "holderIdentity": name,
                    "leaseDurationSeconds": self.settings.lease_duration,
                    "renewTime": now,
                },
            }
            await self.client.create(LEASES, lease, LEASE_NAMESPACE, field_manager=FIELD_MANAGER)

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.lease_interval)
            if stop.is_set():
                return
            try:
                await self._renew_lease()
            except (ApiError, ClientError) as exc:
                # One missed renewal is not fatal (the Lease lasts four intervals).
                log.warning("lease of node %s not renewed: %s", self.settings.node_name, exc)

    # Instances

    def _on_instance(self, event: str, obj: dict[str, Any]) -> None:
        assert self.services is not None
        uid = str(obj["metadata"].get("uid"))
        supervisor = self.supervisors.get(uid)
        if event == "DELETED":
            if supervisor is not None:
                supervisor.delete(obj)
                self._forget_when_done(uid, supervisor)
            return
        if supervisor is not None:
            supervisor.update(obj)
            return
        deleting = bool(obj["metadata"].get("deletionTimestamp"))
        if not deleting and (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed") and not self._has_state(uid):
            return  # finished before this agent started; nothing left to run
        supervisor = Supervisor(self.services, obj)
        if deleting:
            # Terminating and not supervised here: this agent restarted (or never got to start
            # it). Whatever is left may still run; stop it gently and finish the deletion, or
            # the Instance would stay Terminating for ever.
            supervisor.terminate()
        self.supervisors[uid] = supervisor
        supervisor.start()
        log.info("supervising %s", object_key(obj))

    def _forget_when_done(self, uid: str, supervisor: Supervisor) -> None:
        async def forget() -> None:
            await supervisor.wait()
            if self.supervisors.get(uid) is supervisor:
                del self.supervisors[uid]

        asyncio.get_running_loop().create_task(forget())

    def _has_state(self, uid: str) -> bool:
        assert self.services is not None
        return (self.services.data_dir / "instances" / uid).exists()

    async def _cleanup_orphans(self) -> None:
        """Containers and networks of Instances that no longer exist here go."""
        assert self.services is not None
        live = {str(obj["metadata"].get("uid")) for obj in self.informer.list()}
        removed = await asyncio.to_thread(self.services.network.cleanup_orphans, live)
        known = {container_id(uid, "") for uid in live}
        for cid in self.services.runtime.list():
            if not any(cid.startswith(prefix) for prefix in known):
                await self.services.runtime.delete(cid)
                removed.append(cid)
        instances_dir = self.services.data_dir / "instances"
        for path in sorted(instances_dir.iterdir()) if instances_dir.is_dir() else []:
            if path.name not in live:
                for workdir in path.iterdir():
                    await asyncio.to_thread(rootfs.unmount_rootfs, workdir)
                await asyncio.to_thread(shutil.rmtree, path, True)
                removed.append(f"instances/{path.name}")
        released = await asyncio.to_thread(self.services.id_ranges.release_orphans, live)
        removed += [f"user namespace ids of {uid}" for uid in released]
        if removed:
            log.info("removed leftovers of deleted Instances: %s", ", ".join(removed))
