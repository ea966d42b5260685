"""What every HyperMesh object shares: the model base, ObjectMeta, conditions, selectors.

The typed models mirror the CRD schemas in `crds/` field for field (a unit test walks both and
compares them), so a controller that builds an object with these models writes exactly what the
API server accepts under Strict validation, and an object read from the server always parses.
That is why models forbid unknown fields: a typo in controller code fails at construction
time instead of being pruned silently by the server. Where a schema deliberately keeps unknown
fields (`x-kubernetes-preserve-unknown-fields`), the model uses a plain dict or allows extras.

Field names are snake_case in Python and camelCase on the wire (`populate_by_name`, so both
spellings are accepted when parsing); `to_dict()` gives the wire form without unset fields.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "DNS_LABEL_PATTERN",
    "DURATION_PATTERN",
    "QUANTITY_PATTERN",
    "Condition",
    "ConditionStatus",
    "DNSLabel",
    "Duration",
    "IntOrString",
    "LabelSelector",
    "LabelSelectorRequirement",
    "ManagedFieldsEntry",
    "Model",
    "ObjectMeta",
    "OwnerReference",
    "Quantity",
    "Resource",
    "get_condition",
    "set_condition",
    "wire_name",
]

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Kubernetes resource.Quantity: 100m, 32Mi, 1.5, 1e3 ...
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# A Go duration as Kubernetes objects write them: 30s, 1h30m, 0.5s.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"
_CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
_CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"

DNSLabel = Annotated[str, StringConstraints(max_length=63, pattern=DNS_LABEL_PATTERN)]
Duration = Annotated[str, StringConstraints(pattern=DURATION_PATTERN)]
# x-kubernetes-int-or-string: a port number or name, a count or a percentage.
IntOrString = int | str
Quantity = int | Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN)]
ConditionStatus = Literal["True", "False", "Unknown"]


# Initialisms Kubernetes spells in capitals inside camelCase names (hostIP, machineID, isCA).
_INITIALISMS = {"ip": "IP", "cidr": "CIDR", "id": "ID", "uuid": "UUID", "ca": "CA"}


def wire_name(field: str) -> str:
    """The camelCase wire name of a snake_case field: `instance_ip` -> `instanceIP`.

    Computed by the alias generator rather than written as per-field aliases, so that type
    checkers (which only see field names) accept `InstanceStatus(instance_ip=...)`.
    """
    first, *rest = field.split("_")
    return first + "".join(_INITIALISMS.get(word, word[:1].upper() + word[1:]) for word in rest)


class Model(BaseModel):
    """Base of every HyperMesh model: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(alias_generator=wire_name, populate_by_name=True, extra="forbid")

    def to_dict(self) -> dict[str, Any]:
        """The wire form: camelCase keys, JSON-ready values, unset (None) fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Parses the wire form (camelCase or snake_case keys)."""
        return cls.model_validate(data)


class OwnerReference(Model):
    """Points at the object this one belongs to; the garbage collector follows it."""

    api_version: str
    kind: str
    name: str
    uid: str
    controller: bool | None = None
    block_owner_deletion: bool | None = None


class ManagedFieldsEntry(Model):
    """Which manager owns which fields (server-side apply bookkeeping)."""

    manager: str | None = None
    operation: Literal["Apply", "Update"] | None = None
    api_version: str | None = None
    time: datetime.datetime | None = None
    fields_type: str | None = None
    fields_v1: dict[str, Any] | None = None
    subresource: str | None = None


class ObjectMeta(Model):
    """metav1.ObjectMeta: identity, labels and lifecycle of every object."""

    name: str | None = None
    generate_name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    finalizers: list[str] | None = None
    owner_references: list[OwnerReference] | None = None
    creation_timestamp: datetime.datetime | None = None
    deletion_timestamp: datetime.datetime | None = None
    deletion_grace_period_seconds: int | None = None
    managed_fields: list[ManagedFieldsEntry] | None = None
    self_link: str | None = None


class Condition(Model):
    """metav1.Condition: one observation of an object's state (Ready, Progressing, ...)."""

    type: Annotated[str, StringConstraints(max_length=316, pattern=_CONDITION_TYPE_PATTERN)]
    status: ConditionStatus
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    last_transition_time: datetime.datetime
    reason: Annotated[
        str, StringConstraints(min_length=1, max_length=1024, pattern=_CONDITION_REASON_PATTERN)
    ]
    message: Annotated[str, StringConstraints(max_length=32768)]


ConditionT = TypeVar("ConditionT", bound=Condition)


class LabelSelectorRequirement(Model):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = None


class LabelSelector(Model):
    """Selects objects by labels: all matchLabels and all matchExpressions must hold."""

    match_labels: dict[str, str] | None = None
    match_expressions: list[LabelSelectorRequirement] | None = None


class Resource(Model):
    """The envelope of every object: apiVersion, kind and metadata."""

    api_version: str
    kind: str
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)


def get_condition(conditions: Sequence[ConditionT] | None, type: str) -> ConditionT | None:
    """The condition of a type in a conditions list, or None."""
    for condition in conditions or ():
        if condition.type == type:
            return condition
    return None


def set_condition(conditions: list[ConditionT], condition: ConditionT) -> bool:
    """Puts a condition into a list in place; returns whether anything changed.

    As Kubernetes' meta.SetStatusCondition does, the lastTransitionTime of an existing condition
    is kept unless its status changes, so the time says when the state last flipped, not when a
    controller last looked.
    """
    for index, existing in enumerate(conditions):
        if existing.type != condition.type:
            continue
        if existing.status == condition.status:
            condition = condition.model_copy(
                update={"last_transition_time": existing.last_transition_time}
            )
        if condition == existing:
            return False
        conditions[index] = condition
        return True
    conditions.append(condition)
    return True
