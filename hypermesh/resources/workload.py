"""Workload: N replicas of an Instance template (mirrors crds/workload.yaml).

It reads like a Kubernetes Deployment on purpose, without the ReplicaSet layer: the workloads
controller owns Instances directly and tracks template revisions in `status.currentRevision`
and `status.updateRevision`. `spec.selector` defaults to the template's labels; the API server
fills that in, since a schema default cannot copy one field into another.
"""

from __future__ import annotations

import datetime
from typing import Annotated, Literal

from pydantic import Field

from hypermesh.resources.instance import InstanceSpec
from hypermesh.resources.meta import Condition, LabelSelector, Model, Resource

__all__ = [
    "InstanceTemplate",
    "RollingUpdate",
    "TemplateMetadata",
    "Workload",
    "WorkloadSpec",
    "WorkloadStatus",
    "WorkloadStrategy",
]

NonNegative = Annotated[int, Field(ge=0)]
# An absolute number of replicas, or a percentage such as "25%".
Surge = Annotated[int, Field(ge=0)] | Annotated[str, Field(pattern=r"^[0-9]+%$")]


class TemplateMetadata(Model):
    """The part of ObjectMeta a template may set; the controller fills in the rest."""

    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class InstanceTemplate(Model):
    metadata: TemplateMetadata | None = None
    spec: InstanceSpec


class RollingUpdate(Model):
    """Replicas above and below the desired count during an update; 25% each when unset."""

    max_surge: Surge | None = None
    max_unavailable: Surge | None = None


class WorkloadStrategy(Model):
    type: Literal["RollingUpdate", "Recreate"] = "RollingUpdate"
    rolling_update: RollingUpdate | None = None


class WorkloadSpec(Model):
    replicas: NonNegative = 1
    selector: LabelSelector | None = None
    template: InstanceTemplate
    strategy: WorkloadStrategy = Field(
        default_factory=WorkloadStrategy, json_schema_extra={"default": {}}
    )
    revision_history_limit: NonNegative = 10
    min_ready_seconds: NonNegative | None = None
    progress_deadline_seconds: Annotated[int, Field(ge=1)] = 600
    paused: bool | None = None


class WorkloadCondition(Condition):
    """A condition that also records when what it describes last moved, as a Deployment's
    conditions do (the progress deadline counts from it)."""

    last_update_time: datetime.datetime | None = None


class WorkloadStatus(Model):
    observed_generation: NonNegative | None = None
    conditions: list[WorkloadCondition] | None = None
    replicas: NonNegative | None = None
    ready_replicas: NonNegative | None = None
    updated_replicas: NonNegative | None = None
    available_replicas: NonNegative | None = None
    unavailable_replicas: NonNegative | None = None
    current_revision: str | None = None
    update_revision: str | None = None
    collision_count: NonNegative | None = None


class Workload(Resource):
    api_version: Literal["hypermesh.io/v1"] = "hypermesh.io/v1"
    kind: Literal["Workload"] = "Workload"
    spec: WorkloadSpec
    status: WorkloadStatus | None = None
