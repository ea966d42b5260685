"""Instance: one replica bound to one Node, the Pod of HyperMesh (mirrors crds/instance.yaml).

`InstanceSpec` is also the template of a Workload, so the containers, probes and scheduling
fields live here and `workload` imports them. Who writes what: the workloads controller creates
Instances from a template, the scheduler sets `spec.nodeName`, and the node agent reports
`status` (phase, addresses, container states, the Ready condition).
"""

from __future__ import annotations

import datetime
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from hypermesh.resources.meta import (
    DNS_LABEL_PATTERN,
    Condition,
    DNSLabel,
    IntOrString,
    LabelSelector,
    Model,
    Quantity,
    Resource,
)

__all__ = [
    "Affinity",
    "Capabilities",
    "Container",
    "ContainerPort",
    "ContainerState",
    "ContainerStateRunning",
    "ContainerStateTerminated",
    "ContainerStateWaiting",
    "ContainerStatus",
    "EnvVar",
    "ExecAction",
    "HTTPGetAction",
    "Instance",
    "InstanceSpec",
    "InstanceStatus",
    "Probe",
    "ResourceRequirements",
    "SecurityContext",
    "TCPSocketAction",
    "Toleration",
    "TopologySpreadConstraint",
    "Volume",
    "VolumeMount",
]

Protocol = Literal["TCP", "UDP"]
PortNumber = Annotated[int, Field(ge=1, le=65535)]
NonNegative = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]
# An IANA service name, referable from probes and from a Service's targetPort.
PortName = Annotated[str, Field(max_length=15, pattern=DNS_LABEL_PATTERN)]


class EnvVar(Model):
    name: Annotated[str, Field(min_length=1)]
    value: str | None = None


class ContainerPort(Model):
    name: PortName | None = None
    container_port: PortNumber
    protocol: Protocol | None = None  # TCP when unset


class ResourceRequirements(Model):
    """Requests drive scheduling; limits are enforced by cgroups."""

    requests: dict[str, Quantity] | None = None
    limits: dict[str, Quantity] | None = None


class ExecAction(Model):
    command: list[str] | None = None


class TCPSocketAction(Model):
    host: str | None = None
    port: IntOrString


class HTTPGetAction(Model):
    path: str | None = None
    port: IntOrString
    host: str | None = None
    scheme: Literal["HTTP", "HTTPS"] | None = None  # HTTP when unset


class Probe(Model):
    """A check the node agent runs against a container; set exactly one handler."""

    exec: ExecAction | None = None
    tcp_socket: TCPSocketAction | None = None
    http_get: HTTPGetAction | None = None
    initial_delay_seconds: NonNegative | None = None
    # Unset means 10 s, 1 s, 3 and 1: applied by the agent, not stored, because a default inside
    # a list item makes every client-side `kubectl apply` of the Workload look like a change.
    period_seconds: Positive | None = None
    timeout_seconds: Positive | None = None
    failure_threshold: Positive | None = None
    success_threshold: Positive | None = None


class Capabilities(Model):
    add: list[str] | None = None
    drop: list[str] | None = None


class SecurityContext(Model):
    run_as_user: NonNegative | None = None
    run_as_group: NonNegative | None = None
    run_as_non_root: bool | None = None
    read_only_root_filesystem: bool | None = None
    privileged: bool | None = None
    allow_privilege_escalation: bool | None = None
    capabilities: Capabilities | None = None


class VolumeMount(Model):
    name: str
    mount_path: Annotated[str, Field(min_length=1)]
    sub_path: str | None = None
    read_only: bool | None = None


class Container(Model):
    name: DNSLabel
    image: Annotated[str, Field(min_length=1)]
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    command: list[str] | None = None
    args: list[str] | None = None
    working_dir: str | None = None
    env: list[EnvVar] | None = None
    ports: list[ContainerPort] | None = None
    resources: ResourceRequirements | None = None
    liveness_probe: Probe | None = None
    readiness_probe: Probe | None = None
    startup_probe: Probe | None = None
    security_context: SecurityContext | None = None
    volume_mounts: list[VolumeMount] | None = None


class Affinity(Model):
    """Scheduling preferences shaped like Kubernetes affinity; the inner terms stay free-form."""

    node_affinity: dict[str, Any] | None = None
    instance_affinity: dict[str, Any] | None = None
    instance_anti_affinity: dict[str, Any] | None = None


class Toleration(Model):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None  # Equal when unset
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class TopologySpreadConstraint(Model):
    """Keep matching Instances within `max_skew` of each other across `topology_key` values.

    Kubernetes' PodTopologySpread: `DoNotSchedule` filters nodes, `ScheduleAnyway` only scores;
    `min_domains` (DoNotSchedule only, which the scheduler checks) counts missing domains as
    empty. No `label_selector` counts no Instances.
    """

    max_skew: Positive
    topology_key: Annotated[str, Field(min_length=1)]
    when_unsatisfiable: Literal["DoNotSchedule", "ScheduleAnyway"]
    label_selector: LabelSelector | None = None
    min_domains: Positive | None = None


class Volume(Model):
    """A volume by name; the source fields (emptyDir, hostPath, secret, ...) follow Kubernetes."""

    # The schema keeps unknown fields here, so the model does too.
    model_config = ConfigDict(extra="allow")

    name: DNSLabel


class InstanceSpec(Model):
    """What one Instance runs and where it may run."""

    containers: Annotated[list[Container], Field(min_length=1)]
    node_name: str | None = None
    node_selector: dict[str, str] | None = None
    affinity: Affinity | None = None
    tolerations: list[Toleration] | None = None
    topology_spread_constraints: list[TopologySpreadConstraint] | None = None
    priority_class_name: str | None = None
    priority: int | None = None
    restart_policy: Literal["Always", "OnFailure", "Never"] = "Always"
    termination_grace_period_seconds: NonNegative = 30
    hostname: DNSLabel | None = None
    # Unset means true, the node's user namespace; not a stored default, so adding the field
    # changes no existing Workload's template (whose hash would otherwise roll its Instances).
    host_users: bool | None = None
    volumes: list[Volume] | None = None


class ContainerStateWaiting(Model):
    reason: str | None = None
    message: str | None = None


class ContainerStateRunning(Model):
    started_at: datetime.datetime | None = None


class ContainerStateTerminated(Model):
    exit_code: int
    signal: int | None = None
    reason: str | None = None
    message: str | None = None
    started_at: datetime.datetime | None = None
    finished_at: datetime.datetime | None = None
    container_id: str | None = None


class ContainerState(Model):
    """At most one of waiting, running and terminated is set."""

    waiting: ContainerStateWaiting | None = None
    running: ContainerStateRunning | None = None
    terminated: ContainerStateTerminated | None = None


class ContainerStatus(Model):
    name: str
    image: str | None = None
    image_id: str | None = None
    container_id: str | None = None
    ready: bool = False
    started: bool | None = None
    restart_count: NonNegative = 0
    state: ContainerState | None = None
    last_state: ContainerState | None = None


class InstanceStatus(Model):
    observed_generation: NonNegative | None = None
    conditions: list[Condition] | None = None
    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Unknown"] | None = None
    reason: str | None = None
    message: str | None = None
    instance_ip: str | None = None
    host_ip: str | None = None
    nominated_node_name: str | None = None
    start_time: datetime.datetime | None = None
    container_statuses: list[ContainerStatus] | None = None


class Instance(Resource):
    api_version: Literal["hypermesh.io/v1"] = "hypermesh.io/v1"
    kind: Literal["Instance"] = "Instance"
    spec: InstanceSpec
    status: InstanceStatus | None = None
