"""Node: one machine running a node agent (mirrors crds/node.yaml).

The agent registers its Node and keeps `status` current: capacity, addresses, system info, the
endpoint it serves logs and exec on, and a Ready condition whose `lastHeartbeatTime` is the
heartbeat the nodes controller watches. Node conditions therefore extend the standard condition
shape with that one field.
"""

from __future__ import annotations

import datetime
from typing import Annotated, Literal

from pydantic import Field

from hypermesh.resources.meta import Condition, Model, Quantity, Resource

__all__ = [
    "AgentEndpoint",
    "DaemonEndpoints",
    "Node",
    "NodeAddress",
    "NodeCondition",
    "NodeInfo",
    "NodeSpec",
    "NodeStatus",
    "Taint",
]

TaintEffect = Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]


class Taint(Model):
    key: Annotated[str, Field(min_length=1)]
    value: str | None = None
    effect: TaintEffect
    time_added: datetime.datetime | None = None


class NodeSpec(Model):
    unschedulable: bool | None = None
    taints: list[Taint] | None = None
    instance_cidr: str | None = None


class NodeCondition(Condition):
    """A standard condition plus the time the agent last confirmed it."""

    last_heartbeat_time: datetime.datetime | None = None


class NodeAddress(Model):
    type: Literal["Hostname", "InternalIP", "ExternalIP", "InternalDNS", "ExternalDNS"]
    address: str


class AgentEndpoint(Model):
    """Where the node agent serves logs and exec, and the certificate it answers with.

    Until nodes get certificates from the cluster CA, the agent signs its own serving
    certificate and publishes its SHA-256 here; the API server pins that hash when it proxies
    an Instance's `log` and `exec` subresources to the agent. The hash is written
    `sha256:<64 lower-case hex digits>`, as kubeadm writes CA pins. The schema says only
    "string"; the API server checks the form and refuses to connect on anything else.
    """

    port: Annotated[int, Field(ge=1, le=65535)]
    certificate_hash: str | None = None


class DaemonEndpoints(Model):
    agent_endpoint: AgentEndpoint | None = None


class NodeInfo(Model):
    machine_id: str | None = None
    system_uuid: str | None = None
    boot_id: str | None = None
    kernel_version: str | None = None
    os_image: str | None = None
    operating_system: str | None = None
    architecture: str | None = None
    container_runtime_version: str | None = None
    agent_version: str | None = None


class NodeStatus(Model):
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    conditions: list[NodeCondition] | None = None
    capacity: dict[str, Quantity] | None = None
    allocatable: dict[str, Quantity] | None = None
    addresses: list[NodeAddress] | None = None
    daemon_endpoints: DaemonEndpoints | None = None
    node_info: NodeInfo | None = None


class Node(Resource):
    api_version: Literal["hypermesh.io/v1"] = "hypermesh.io/v1"
    kind: Literal["Node"] = "Node"
    spec: NodeSpec = Field(default_factory=NodeSpec, json_schema_extra={"default": {}})
    status: NodeStatus | None = None
