"""The node side of graceful deletion, without a node: how long the agent waits before SIGKILL,
and which terminating Instances the Instance collector looks at."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from controllers import instancegc
from hypermesh.runtime import supervisor


def instance(*, spec_grace: int | None = None, deleting: bool = False, grace: int | None = None, node: str | None = "n1") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "x", "namespace": "default", "uid": "u-1"}
    if deleting:
        meta["deletionTimestamp"] = "2030-05-01T12:00:30Z"
    if grace is not None:
        meta["deletionGracePeriodSeconds"] = grace
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "busybox"}]}
    if spec_grace is not None:
        spec["terminationGracePeriodSeconds"] = spec_grace
    if node:
        spec["nodeName"] = node
    return {"metadata": meta, "spec": spec}


@pytest.mark.parametrize(
    ("obj", "seconds"),
    [
        (instance(), 30.0),
        (instance(spec_grace=300), 300.0),
        # The DELETE's period wins over the spec's once the Instance is being deleted.
        (instance(spec_grace=300, deleting=True, grace=5), 5.0),
        # A stale deletionGracePeriodSeconds without a deletion means nothing.
        (instance(spec_grace=300, grace=5), 300.0),
        # kubelet's floor: a forced (0) or tiny period still gets 2 s between the signals.
        (instance(spec_grace=300, deleting=True, grace=0), 2.0),
        (instance(spec_grace=1), 2.0),
    ],
)
def test_the_time_between_sigterm_and_sigkill(obj: dict[str, Any], seconds: float) -> None:
    assert supervisor.grace_of(obj) == seconds


class _NoServices:
    """What a Supervisor's constructor reads of the node's services."""

    data_dir = Path("/nonexistent")


def test_a_shorter_period_brings_the_deadline_forward_never_back() -> None:
    one = supervisor.Supervisor(_NoServices(), instance(spec_grace=300, deleting=True, grace=60))  # type: ignore[arg-type]
    one.terminate()
    assert one.deadline is not None
    first = one.deadline
    assert 59 <= first - time.monotonic() <= 60
    one.update(instance(spec_grace=300, deleting=True, grace=120))
    assert one.deadline == first
    one.update(instance(spec_grace=300, deleting=True, grace=5))
    assert one.deadline is not None and one.deadline - time.monotonic() <= 5
    assert one.deleted.is_set() and not one.gone


def test_a_vanished_instance_is_stopped_with_nothing_left_to_delete() -> None:
    gone = supervisor.Supervisor(_NoServices(), instance(spec_grace=300))  # type: ignore[arg-type]
    gone.delete(instance(spec_grace=300, deleting=True, grace=0))
    assert gone.gone and gone.deleted.is_set()
    assert gone.deadline is not None and gone.deadline - time.monotonic() <= supervisor.MIN_GRACE


@pytest.mark.parametrize(
    ("obj", "node"),
    [
        (instance(deleting=True, grace=30), "n1"),
        (instance(), None),
        (instance(deleting=True, grace=30, node=None), None),
        # Held by finalizers only: their owners finish it, not a node.
        (instance(deleting=True, grace=0), None),
    ],
)
def test_which_terminating_instances_wait_on_a_node(obj: dict[str, Any], node: str | None) -> None:
    assert instancegc.terminating_on(obj) == node


@pytest.mark.parametrize(("status", "ready"), [("True", True), ("Unknown", False), ("False", False), (None, False)])
def test_only_a_node_that_says_ready_is_ready(status: str | None, ready: bool) -> None:
    conditions = [{"type": "Ready", "status": status}] if status else []
    assert instancegc.node_ready({"metadata": {"name": "n1"}, "status": {"conditions": conditions}}) is ready
