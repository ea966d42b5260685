"""The graceful deletion rule on plain objects (hypermesh/api/graceful.py): which DELETE marks
an Instance, for how long, and which removes it at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hypermesh.api import errors, graceful
from hypermesh.resources.registry import ResourceType

NOW = datetime(2030, 5, 1, 12, 0, 0, tzinfo=UTC)


class _Kind:
    """Just what the rule reads of a ResourceType."""

    def __init__(self, group: str, kind: str) -> None:
        self.group, self.kind = group, kind


INSTANCE: Any = _Kind("hypermesh.io", "Instance")
WORKLOAD: Any = _Kind("hypermesh.io", "Workload")


def instance(*, node: str | None = "n1", phase: str | None = "Running", grace: int | None = None, **meta: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "busybox"}]}
    if node:
        spec["nodeName"] = node
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    obj: dict[str, Any] = {"metadata": {"name": "x", "namespace": "default", **meta}, "spec": spec}
    if phase:
        obj["status"] = {"phase": phase}
    return obj


def at(seconds: float) -> str:
    return graceful.format_time(NOW + timedelta(seconds=seconds))


def plan(obj: dict[str, Any], requested: int | None = None, rtype: ResourceType = INSTANCE) -> graceful.Plan:
    return graceful.plan(rtype, obj, requested=requested, now=NOW)


def test_a_bound_running_instance_gets_its_spec_grace_period() -> None:
    step = plan(instance(grace=45))
    assert step == graceful.Plan("mark", at(45), 45, first=True)


def test_the_default_grace_period_is_thirty_seconds() -> None:
    assert plan(instance()).grace == 30


def test_the_request_overrides_the_spec() -> None:
    assert plan(instance(grace=300), 2) == graceful.Plan("mark", at(2), 2, first=True)


def test_a_negative_request_counts_as_one_second() -> None:
    assert plan(instance(), -5).grace == 1


def test_zero_is_the_force_path_but_still_a_first_mark() -> None:
    assert plan(instance(), 0) == graceful.Plan("mark", at(0), 0, first=True)


@pytest.mark.parametrize("obj", [instance(node=None), instance(phase="Succeeded"), instance(phase="Failed")], ids=["unbound", "succeeded", "failed"])
def test_what_runs_nowhere_goes_at_once(obj: dict[str, Any]) -> None:
    assert plan(obj) == graceful.IMMEDIATE
    assert plan(obj, 10) == graceful.IMMEDIATE


def test_a_bound_instance_not_yet_started_is_graceful() -> None:
    assert plan(instance(phase=None)).action == "mark"


def test_other_kinds_have_no_graceful_deletion() -> None:
    assert plan(instance(), rtype=WORKLOAD) == graceful.IMMEDIATE


def test_a_later_delete_may_shorten_the_period() -> None:
    # Deleted 10 s ago with 30 s: the deadline was NOW+20; asking for 15 makes it NOW+5.
    obj = instance(deletionTimestamp=at(20), deletionGracePeriodSeconds=30)
    assert plan(obj, 15) == graceful.Plan("mark", at(5), 15)


def test_a_shortened_period_never_moves_the_deadline_into_the_past() -> None:
    obj = instance(deletionTimestamp=at(20), deletionGracePeriodSeconds=30)
    assert plan(obj, 5) == graceful.Plan("mark", at(0), 1)
    assert plan(obj, 0) == graceful.Plan("mark", at(0), 0)


@pytest.mark.parametrize("requested", [None, 30, 300])
def test_a_later_delete_never_lengthens_it(requested: int | None) -> None:
    obj = instance(deletionTimestamp=at(20), deletionGracePeriodSeconds=30)
    assert plan(obj, requested) == graceful.PENDING


def test_once_the_period_is_zero_only_finalizers_hold_the_object() -> None:
    obj = instance(deletionTimestamp=at(0), deletionGracePeriodSeconds=0, finalizers=["x/y"])
    assert plan(obj, 10) == graceful.IMMEDIATE


def test_a_deletion_by_finalizers_alone_is_not_made_graceful_later() -> None:
    # Marked by a finalizer-only delete before this rule existed: no grace period recorded.
    obj = instance(deletionTimestamp=at(-60), finalizers=["x/y"])
    assert plan(obj) == graceful.IMMEDIATE


@pytest.mark.parametrize(
    ("meta", "completes"),
    [
        ({"deletionTimestamp": "t", "deletionGracePeriodSeconds": 30}, False),
        ({"deletionTimestamp": "t", "deletionGracePeriodSeconds": 0}, True),
        ({"deletionTimestamp": "t"}, True),
        ({"deletionTimestamp": "t", "deletionGracePeriodSeconds": 0, "finalizers": ["a"]}, False),
        ({}, False),
    ],
)
def test_removing_the_last_finalizer_completes_only_without_a_running_grace_period(meta: dict[str, Any], completes: bool) -> None:
    assert graceful.completes_on_update(meta) is completes


def test_the_grace_period_may_come_as_a_query_parameter() -> None:
    assert graceful.requested_grace({}, {"gracePeriodSeconds": "7"}) == 7
    assert graceful.requested_grace({"gracePeriodSeconds": 3}, {"gracePeriodSeconds": "7"}) == 3
    assert graceful.requested_grace({}, {}) is None


@pytest.mark.parametrize("options", [{"gracePeriodSeconds": "soon"}, {"gracePeriodSeconds": True}, {"gracePeriodSeconds": 1.5}])
def test_a_grace_period_that_is_not_an_integer_is_refused_with_its_field(options: dict[str, Any]) -> None:
    with pytest.raises(errors.ApiError) as caught:
        graceful.requested_grace(options, {})
    assert caught.value.code == 400
    assert "gracePeriodSeconds" in caught.value.message


def test_dry_run_in_the_body_is_understood_and_checked() -> None:
    assert graceful.requested_dry_run({"dryRun": ["All"]}) is True
    assert graceful.requested_dry_run({}) is False
    with pytest.raises(errors.ApiError):
        graceful.requested_dry_run({"dryRun": ["Some"]})
