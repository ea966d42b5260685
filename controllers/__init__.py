"""HyperMesh's controllers: the reconcilers that turn declared state into derived state.

Each concern is one module built only on `hypermesh.operator` (and the client and resource
models): `workloads` (Workload -> Instances, rollouts, revisions), `gc` (ownerReferences ->
cascading deletion), `scheduling` (pending Instance -> Node) and `nodes` (heartbeats ->
Ready/Unknown, unreachable taints, eviction; with it `instancegc`, which finishes the deletion
of Instances whose Node is gone or not Ready), and, in a process that holds the cluster's CA,
`certificates` (Certificate -> TLS Secret) and `csrsigning` (approves and signs nodes' client
certificate requests); `gitsync` (a git repository path -> applied objects). `build` wires them into
operators that share one set of informers, so a process lists and watches each kind once
however many controllers read it; each operator holds its own Lease, so the concerns can fail
over independently.

```python
stop = asyncio.Event()
await controllers.run_all(client, stop)   # until stop is set
```
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from controllers import certificates, csrsigning, gc, gitsync, nodes, scheduling, workloads
from controllers.certificates import CertificateSettings
from controllers.csrsigning import CSRSigningSettings
from controllers.gc import GCSettings
from controllers.gitsync import GitSyncSettings
from controllers.kinds import INSTANCES, OwnerIndex
from controllers.nodes import NodeSettings
from controllers.scheduling import SchedulerSettings
from hypermesh.client.aio import AsyncClient
from hypermesh.client.resources import Resource
from hypermesh.operator import Informers, InformerSettings, LeaderSettings, Operator, Settings
from hypermesh.operator.informer import Subscriber

__all__ = ["ControllerSettings", "build", "run_all"]


@dataclass(frozen=True)
class ControllerSettings:
    """What a controllers process runs and how; the defaults suit production."""

    name: str = "hypermesh-controllers"
    leader_election: bool = True
    lease_namespace: str = "hypermesh-system"
    # Empty: a host-and-process identity chosen by the elector.
    identity: str = ""
    informers: InformerSettings = field(default_factory=InformerSettings)
    gc: GCSettings = field(default_factory=GCSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    nodes: NodeSettings = field(default_factory=NodeSettings)
    # None: no certificates controller. It signs with the cluster's intermediate CA, which only
    # a process given the data dir's pki/ has (the in-process controllers of `hypermesh server`).
    certificates: CertificateSettings | None = None
    # None: no csrsigning controller (it signs with the intermediate CA too).
    csrsigning: CSRSigningSettings | None = None
    # None: no GitSync controller. Its data_dir None: the git caches go to a temporary directory.
    gitsync: GitSyncSettings | None = field(default_factory=GitSyncSettings)


def build(client: AsyncClient, settings: ControllerSettings | None = None) -> list[Operator]:
    """The operators of every controller, sharing one `Informers` (not started)."""
    settings = settings or ControllerSettings()
    informers = Informers(client, settings.informers)
    index = OwnerIndex()
    # One index of ownerReferences serves both the workloads controller and the collector.
    for resource in {INSTANCES, *settings.gc.dependents}:
        informers.get(resource).subscribe(_tracker(index, resource))

    def operator(concern: str, concurrency: int = 4) -> Operator:
        leader = (
            LeaderSettings(
                lease_name=f"{settings.name}-{concern}",
                namespace=settings.lease_namespace,
                identity=settings.identity,
            )
            if settings.leader_election
            else None
        )
        return Operator(
            client,
            name=f"{settings.name}-{concern}",
            concurrency=concurrency,
            settings=Settings(informers=settings.informers, leader=leader),
            informers=informers,
        )

    workloads_op = operator("workloads")
    workloads.setup(workloads_op, index)
    gc_op = operator("gc")
    gc.setup(gc_op, index, settings.gc)
    # The scheduler's reconcile only sorts keys into its batches, so a few more workers keep
    # a burst of thousands of new Instances from queueing behind each other.
    scheduler_op = operator("scheduler", concurrency=8)
    scheduling.setup(scheduler_op, settings.scheduler)
    nodes_op = operator("nodes")
    nodes.setup(nodes_op, settings.nodes)
    operators = [workloads_op, gc_op, scheduler_op, nodes_op]
    if settings.certificates is not None:
        certificates_op = operator("certificates")
        certificates.setup(certificates_op, settings.certificates)
        operators.append(certificates_op)
    if settings.csrsigning is not None:
        csrsigning_op = operator("csrsigning")
        csrsigning.setup(csrsigning_op, settings.csrsigning)
        operators.append(csrsigning_op)
    if settings.gitsync is not None:
        # A sync may wait minutes for a wave's health: a few more workers than the default.
        gitsync_op = operator("gitsync", concurrency=8)
        gitsync.setup(gitsync_op, settings.gitsync)
        operators.append(gitsync_op)
    return operators


def _tracker(index: OwnerIndex, resource: Resource) -> Subscriber:
    def track(event: str, obj: dict[str, Any]) -> None:
        index.track(resource, event, obj)

    return track


async def run_all(
    client: AsyncClient,
    stop: asyncio.Event,
    *,
    leader_election: bool = True,
    settings: ControllerSettings | None = None,
) -> None:
    """Run every controller until `stop` is set."""
    settings = settings or ControllerSettings(leader_election=leader_election)
    operators = build(client, settings)
    await asyncio.gather(*(op.run(stop) for op in operators))
