"""Service and Endpoints: stable names for ready Instances (mirrors crds/service.yaml and
crds/endpoints.yaml).

A user writes the Service; the services controller writes its Endpoints (same name) from the
Instances that match the selector; every node's mesh proxy reads both and applies the Service's
traffic policy. Endpoints keep their data at the top level, like Kubernetes EndpointSlices,
because it is derived state rather than a wish.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from hypermesh.resources.meta import (
    DNS_LABEL_PATTERN,
    Condition,
    Duration,
    IntOrString,
    Model,
    Resource,
)

__all__ = [
    "CircuitBreaker",
    "Endpoint",
    "EndpointPort",
    "Endpoints",
    "EndpointsStatus",
    "RetryPolicy",
    "Service",
    "ServicePort",
    "ServiceSpec",
    "ServiceStatus",
    "TrafficPolicy",
]

Protocol = Literal["TCP", "UDP"]
PortNumber = Annotated[int, Field(ge=1, le=65535)]
PortName = Annotated[str, Field(max_length=15, pattern=DNS_LABEL_PATTERN)]


class ServicePort(Model):
    name: PortName | None = None
    port: PortNumber
    target_port: IntOrString | None = None
    protocol: Protocol | None = None  # TCP when unset


class RetryPolicy(Model):
    attempts: Annotated[int, Field(ge=0, le=10)] | None = None
    per_try_timeout: Duration | None = None
    retry_on: list[str] | None = None


class CircuitBreaker(Model):
    consecutive_errors: Annotated[int, Field(ge=1)] | None = None
    interval: Duration | None = None
    base_ejection_time: Duration | None = None
    max_ejection_percent: Annotated[int, Field(ge=0, le=100)] | None = None
    max_connections: Annotated[int, Field(ge=1)] | None = None
    max_pending_requests: Annotated[int, Field(ge=1)] | None = None


class TrafficPolicy(Model):
    """What the mesh proxy does with calls to the Service."""

    timeout: Duration | None = None
    load_balancer: Literal["RoundRobin", "LeastRequest", "Random"] | None = None
    retries: RetryPolicy | None = None
    circuit_breaker: CircuitBreaker | None = None


class ServiceSpec(Model):
    type: Literal["ClusterIP", "Headless"] = "ClusterIP"
    selector: dict[str, str] | None = None
    cluster_ip: str | None = None
    ports: list[ServicePort] | None = None
    traffic_policy: TrafficPolicy | None = None


class ServiceStatus(Model):
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    conditions: list[Condition] | None = None


class Service(Resource):
    api_version: Literal["hypermesh.io/v1"] = "hypermesh.io/v1"
    kind: Literal["Service"] = "Service"
    spec: ServiceSpec
    status: ServiceStatus | None = None


class Endpoint(Model):
    """One Instance behind a Service."""

    address: Annotated[str, Field(min_length=1)]
    instance_name: str | None = None
    node_name: str | None = None
    # Not-ready Instances stay listed (ready=False) so that proxies can drain them.
    ready: bool = True


class EndpointPort(Model):
    name: str | None = None
    port: PortNumber
    protocol: Protocol = "TCP"


class EndpointsStatus(Model):
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    conditions: list[Condition] | None = None


class Endpoints(Resource):
    api_version: Literal["hypermesh.io/v1"] = "hypermesh.io/v1"
    kind: Literal["Endpoints"] = "Endpoints"
    endpoints: list[Endpoint] | None = None
    ports: list[EndpointPort] | None = None
    status: EndpointsStatus | None = None
