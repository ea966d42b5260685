"""PriorityClass rules and the priority a new Instance gets from them.

The rules are pure functions and are tested as such first; the last tests run the API server in
process (over a MemoryStore) to check the same rules where users meet them: status codes,
messages, and that a refused create stores nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from hypermesh.api.app import APIServer
from hypermesh.api.priorities import (
    HIGHEST_USER_VALUE,
    SYSTEM_CLASSES,
    ClassInfo,
    Refused,
    keep_resolved,
    pick_default,
    resolve,
    validate_class,
)
from hypermesh.client.aio import AsyncClient
from hypermesh.client.errors import ApiError
from hypermesh.client.resources import Resource
from hypermesh.pki import Identity
from hypermesh.store import MemoryStore

HIGH = ClassInfo("high", 1000)
LOW_DEFAULT = ClassInfo("low", 10, global_default=True, preemption_policy="Never")


def classes(*infos: ClassInfo) -> dict[str, ClassInfo]:
    return {c.name: c for c in infos}


def pc(name: str, value: Any, **fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": name},
        "value": value,
        "globalDefault": False,
        "preemptionPolicy": "PreemptLowerPriority",
        **fields,
    }


# -- resolving an Instance's priority -----------------------------------------------------------


def test_a_named_class_sets_the_priority() -> None:
    spec: dict[str, Any] = {"priorityClassName": "high"}
    resolve(spec, classes(HIGH, LOW_DEFAULT))
    assert spec == {"priorityClassName": "high", "priority": 1000}


def test_an_unknown_class_is_refused_even_with_a_default() -> None:
    spec = {"priorityClassName": "nope"}
    with pytest.raises(Refused, match="^no PriorityClass with name nope was found$"):
        resolve(spec, classes(LOW_DEFAULT))
    assert spec == {"priorityClassName": "nope"}


def test_the_global_default_fills_name_and_priority() -> None:
    spec: dict[str, Any] = {}
    resolve(spec, classes(HIGH, LOW_DEFAULT))
    assert spec == {"priorityClassName": "low", "priority": 10}
    # An empty name is no name.
    spec = {"priorityClassName": ""}
    resolve(spec, classes(LOW_DEFAULT))
    assert spec == {"priorityClassName": "low", "priority": 10}


def test_without_class_or_default_the_spec_is_left_alone() -> None:
    for spec in ({}, {"priority": 7}):
        before = dict(spec)
        resolve(spec, classes(HIGH))
        assert spec == before


def test_an_explicit_priority_must_agree_with_the_class() -> None:
    agreeing = {"priorityClassName": "high", "priority": 1000}
    resolve(agreeing, classes(HIGH))
    assert agreeing["priority"] == 1000
    with pytest.raises(Refused) as caught:
        resolve({"priorityClassName": "high", "priority": 5}, classes(HIGH))
    assert str(caught.value).startswith("the integer value of priority (5) must not be provided")
    assert "computed 1000 from the given PriorityClass name" in str(caught.value)
    # The default class counts as the given class.
    with pytest.raises(Refused, match=r"priority \(5\).*computed 10"):
        resolve({"priority": 5}, classes(LOW_DEFAULT))


def test_preemption_policy_is_filled_only_when_asked() -> None:
    spec: dict[str, Any] = {}
    resolve(spec, classes(LOW_DEFAULT))
    assert "preemptionPolicy" not in spec
    spec = {}
    resolve(spec, classes(LOW_DEFAULT), with_policy=True)
    assert spec["preemptionPolicy"] == "Never"
    with pytest.raises(Refused, match=r"PreemptionPolicy \(PreemptLowerPriority\)"):
        resolve(
            {"preemptionPolicy": "PreemptLowerPriority"}, classes(LOW_DEFAULT), with_policy=True
        )


def test_two_defaults_from_a_race_resolve_to_the_lowest_value() -> None:
    other = ClassInfo("other", 5, global_default=True)
    assert pick_default([LOW_DEFAULT, HIGH, other]) == other
    assert pick_default([HIGH]) is None


def test_updates_keep_what_the_create_resolved() -> None:
    new: dict[str, Any] = {"priorityClassName": "high", "containers": []}
    keep_resolved({"priorityClassName": "high", "priority": 1000}, new)
    assert new["priority"] == 1000
    changed = {"priority": 3}
    keep_resolved({"priority": 1000}, changed)
    assert changed == {"priority": 3}


# -- validating PriorityClasses -----------------------------------------------------------------


def fields_of(causes: list[dict[str, str]]) -> list[str]:
    return [c["field"] for c in causes]


def test_user_classes_stop_at_one_billion() -> None:
    assert validate_class(None, pc("ok", HIGHEST_USER_VALUE)) == []
    assert validate_class(None, pc("negative", -5)) == []
    (cause,) = validate_class(None, pc("big", HIGHEST_USER_VALUE + 1))
    assert cause["field"] == "value"
    assert (
        cause["message"]
        == "Forbidden: maximum allowed value of a user defined priority is 1000000000"
    )


def test_system_names_are_reserved_for_the_built_in_classes() -> None:
    for name, (value, _) in SYSTEM_CLASSES.items():
        assert validate_class(None, pc(name, value)) == []
    (unknown,) = validate_class(None, pc("system-mine", 10))
    assert unknown["field"] == "metadata.name"
    assert "reserved for system use only" in unknown["message"]
    assert "system-mine is not a known system priority class" in unknown["message"]
    (wrong,) = validate_class(None, pc("system-node-critical", 10))
    assert "value of system-node-critical PriorityClass must be 2000001000" in wrong["message"]
    (default,) = validate_class(
        None, pc("system-cluster-critical", 2_000_000_000, globalDefault=True)
    )
    assert (
        "globalDefault of system-cluster-critical PriorityClass must be false" in default["message"]
    )


def test_value_and_preemption_policy_are_immutable() -> None:
    old = pc("c", 10)
    assert validate_class(old, pc("c", 10, description="now documented", globalDefault=True)) == []
    assert fields_of(validate_class(old, pc("c", 11))) == ["value"]
    assert fields_of(validate_class(old, pc("c", 10, preemptionPolicy="Never"))) == [
        "preemptionPolicy"
    ]


# -- through the API ------------------------------------------------------------------------------

PRIORITY_CLASSES = Resource(
    group="scheduling.k8s.io",
    version="v1",
    kind="PriorityClass",
    plural="priorityclasses",
    singular="priorityclass",
    namespaced=False,
)
INSTANCES = Resource(
    group="hypermesh.io",
    version="v1",
    kind="Instance",
    plural="instances",
    singular="instance",
    namespaced=True,
)


def instance(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "hypermesh.io/v1",
        "kind": "Instance",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "main", "image": "busybox"}], **spec},
    }


@pytest.fixture
async def client() -> AsyncIterator[AsyncClient]:
    server = APIServer(MemoryStore())
    await server.start()
    api = AsyncClient.in_process(server, Identity("admin", ("system:masters",)))
    try:
        yield api
    finally:
        await api.aclose()
        await server.stop()


async def refused(call: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await call
    return caught.value


async def test_the_system_classes_exist_and_cannot_be_deleted(client: AsyncClient) -> None:
    listed = (await client.list(PRIORITY_CLASSES))["items"]
    assert {c["metadata"]["name"]: c["value"] for c in listed} == {
        name: value for name, (value, _) in SYSTEM_CLASSES.items()
    }
    error = await refused(client.delete(PRIORITY_CLASSES, "system-node-critical"))
    assert (error.status, error.reason) == (403, "Forbidden")
    assert error.message == (
        'priorityclasses.scheduling.k8s.io "system-node-critical" is forbidden: '
        "this is a system priority class and cannot be deleted"
    )
    await client.get(PRIORITY_CLASSES, "system-node-critical")


async def test_instances_take_their_class_value_and_unknown_classes_store_nothing(
    client: AsyncClient,
) -> None:
    await client.create(PRIORITY_CLASSES, pc("high", 1000))
    created = await client.create(INSTANCES, instance("a", priorityClassName="high"))
    assert created["spec"]["priority"] == 1000
    assert (await client.get(INSTANCES, "a", "default"))["spec"]["priority"] == 1000

    error = await refused(client.create(INSTANCES, instance("b", priorityClassName="missing")))
    assert (error.status, error.reason) == (403, "Forbidden")
    assert error.message == (
        'instances.hypermesh.io "b" is forbidden: no PriorityClass with name missing was found'
    )
    assert (await refused(client.get(INSTANCES, "b", "default"))).status == 404

    error = await refused(
        client.create(INSTANCES, instance("c", priorityClassName="high", priority=3))
    )
    assert error.status == 403 and "computed 1000" in error.message

    # A class deleted later does not change the Instances created from it.
    await client.delete(PRIORITY_CLASSES, "high")
    assert (await client.get(INSTANCES, "a", "default"))["spec"]["priority"] == 1000
    error = await refused(client.create(INSTANCES, instance("d", priorityClassName="high")))
    assert error.status == 403


async def test_one_global_default(client: AsyncClient) -> None:
    plain = await client.create(INSTANCES, instance("before"))
    assert "priority" not in plain["spec"] and "priorityClassName" not in plain["spec"]

    await client.create(PRIORITY_CLASSES, pc("first", 10, globalDefault=True))
    error = await refused(client.create(PRIORITY_CLASSES, pc("second", 20, globalDefault=True)))
    assert (error.status, error.reason) == (403, "Forbidden")
    assert error.message == (
        'priorityclasses.scheduling.k8s.io "second" is forbidden: '
        "PriorityClass first is already marked as default. Only one default can exist"
    )
    await client.create(PRIORITY_CLASSES, pc("second", 20))
    error = await refused(client.patch(PRIORITY_CLASSES, "second", None, {"globalDefault": True}))
    assert error.status == 403
    # The default itself may be written again.
    await client.patch(PRIORITY_CLASSES, "first", None, {"description": "the usual"})

    defaulted = await client.create(INSTANCES, instance("after"))
    assert (defaulted["spec"]["priorityClassName"], defaulted["spec"]["priority"]) == ("first", 10)

    # The default moves once the old one lets go of it.
    await client.patch(PRIORITY_CLASSES, "first", None, {"globalDefault": False})
    await client.patch(PRIORITY_CLASSES, "second", None, {"globalDefault": True})
    moved = await client.create(INSTANCES, instance("later"))
    assert moved["spec"]["priority"] == 20


async def test_invalid_classes_are_422(client: AsyncClient) -> None:
    for body in (
        pc("huge", HIGHEST_USER_VALUE + 1),
        pc("system-x", 1),
        pc("bad", 1, preemptionPolicy="Sometimes"),
    ):
        error = await refused(client.create(PRIORITY_CLASSES, body))
        assert (error.status, error.reason) == (422, "Invalid"), body
    await client.create(PRIORITY_CLASSES, pc("fixed", 5))
    error = await refused(client.patch(PRIORITY_CLASSES, "fixed", None, {"value": 6}))
    assert (
        error.status == 422
        and "value: Forbidden: may not be changed in an update." in error.message
    )
    stored = await client.get(PRIORITY_CLASSES, "fixed")
    assert (stored["value"], stored["globalDefault"], stored["preemptionPolicy"]) == (
        5,
        False,
        "PreemptLowerPriority",
    )
